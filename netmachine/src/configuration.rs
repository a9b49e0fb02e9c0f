//! `netmachine config`: `check` loads the node's configuration as the services will (the file,
//! then `NETMACHINE_<SECTION>__<KEY>` variables, then `--set` flags) and says whether it is
//! good; `show` prints every effective setting with where its value came from.

use clap::Subcommand;
use netmachine_service::config::Config;
use netmachine_service::NodeHome;
use std::path::Path;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Check the configuration; exit 0 if the services would accept it, 2 if not
    Check,
    /// Print every effective setting and where its value came from
    Show {
        /// One JSON object per setting, in an array
        #[arg(long)]
        json: bool,
    },
}

pub fn run(root: &Path, set: &[String], command: ConfigCommand) -> ExitCode {
    let file = root.join("config.toml");
    let loaded = NodeHome::overrides(set).and_then(|overrides| Ok((Config::load(&file, &overrides)?, overrides)));
    let (config, overrides) = match loaded {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("netmachine: {error}");
            return ExitCode::from(2);
        }
    };
    let settings = config.settings(&file, &overrides);
    match command {
        ConfigCommand::Check => {
            let from = |prefix: &str| settings.iter().filter(|s| s.origin.starts_with(prefix)).count();
            let file_state = if file.exists() { "" } else { " (absent: defaults apply)" };
            println!(
                "configuration good: {}{file_state}; {} settings from the file, {} from the environment, {} from --set, {} defaults",
                file.display(),
                from("file"),
                from("environment"),
                from("--set"),
                from("default")
            );
        }
        ConfigCommand::Show { json: true } => {
            let list: Vec<serde_json::Value> = settings
                .iter()
                .map(|s| serde_json::json!({"setting": s.field, "value": s.value, "from": s.origin}))
                .collect();
            println!("{}", serde_json::Value::Array(list));
        }
        ConfigCommand::Show { json: false } => {
            let mut section = "";
            for s in &settings {
                let (this, key) = s.field.split_once('.').unwrap_or(("", &s.field));
                if this != section {
                    println!("{}[{this}]", if section.is_empty() { "" } else { "\n" });
                    section = this;
                }
                println!("{:<44} # {}", format!("{key} = {}", s.value), s.origin);
            }
        }
    }
    ExitCode::SUCCESS
}
