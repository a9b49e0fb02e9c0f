//! `netmachine key`: make an engine key, or show a key's identity.

use anyhow::Result;
use netmachine_engine::Keypair;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum KeyCommand {
    /// Write a new engine key to FILE (mode 0600; never overwrites) and print its identity
    New {
        /// Where to write the key
        file: PathBuf,
    },
    /// Print the identity of the key in FILE
    Show {
        /// The key file
        file: PathBuf,
    },
}

pub fn run(command: KeyCommand) -> Result<()> {
    let key = match command {
        KeyCommand::New { file } => {
            let key = Keypair::generate();
            key.write_new_file(&file)?;
            key
        }
        KeyCommand::Show { file } => Keypair::read_file(&file)?,
    };
    println!("{}", key.identity());
    Ok(())
}
