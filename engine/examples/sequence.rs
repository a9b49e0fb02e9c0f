//! Numbered messages between engines in separate processes, to check that none is lost or
//! reordered (the cross-process ring tests run it):
//!
//! ```text
//! sequence receive KEY COUNT        # prints {"received":COUNT,"in_order":true} when done
//! sequence send KEY TO COUNT        # sends 0..COUNT as 8-byte bodies; prints {"sent":COUNT}
//! ```
//!
//! The node is the one in `$NETMACHINE_HOME`. `NETMACHINE_SEQUENCE_SOCKET=1` uses the socket
//! path instead of the rings.

use netmachine_engine::{Engine, EngineOptions, Identity, Keypair};
use netmachine_service::{home::default_home, NodeHome, ServiceKind};
use std::path::Path;
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let home = NodeHome::load(&default_home(), &[])?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let attach = |key: &str| {
            let mut options = EngineOptions::new(home.socket(ServiceKind::Router), Keypair::read_file(Path::new(key)).expect("key file"));
            options.ring = std::env::var_os("NETMACHINE_SEQUENCE_SOCKET").is_none();
            options.send_timeout = Duration::from_secs(60);
            Engine::attach(options)
        };
        match args.get(1).map(String::as_str) {
            Some("receive") => {
                let count: u64 = args[3].parse()?;
                let engine = attach(&args[2]).await?;
                eprintln!("ready {} ring={}", engine.identity(), engine.on_ring());
                let mut in_order = true;
                for expected in 0..count {
                    let message = engine.recv().await.ok_or("the engine closed")?;
                    let got = u64::from_le_bytes(message.body.as_slice().try_into().unwrap_or([0xff; 8]));
                    if got != expected {
                        in_order = false;
                        eprintln!("expected {expected}, got {got}");
                        break;
                    }
                }
                println!("{{\"received\":{count},\"in_order\":{in_order}}}");
                engine.detach().await;
            }
            Some("send") => {
                let to: Identity = args[3].parse()?;
                let count: u64 = args[4].parse()?;
                let engine = attach(&args[2]).await?;
                for n in 0..count {
                    engine.send(to, n.to_le_bytes().to_vec()).await?;
                }
                println!("{{\"sent\":{count}}}");
                engine.detach().await;
            }
            _ => return Err("usage: sequence receive KEY COUNT | sequence send KEY TO COUNT".into()),
        }
        Ok(())
    })
}
