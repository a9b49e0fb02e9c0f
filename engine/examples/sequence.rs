//! Numbered messages between engines in separate processes, to check that none is lost or
//! reordered (the cross-process ring tests run it):
//!
//! ```text
//! sequence receive KEY COUNT   # prints {"received":N,"in_order":B,"ended":E}: N counted as they came, once
//!                              # COUNT arrived or nothing came for 20 s
//! sequence send KEY TO COUNT   # sends 0..COUNT as 8-byte bodies; prints {"sent":N}, N the
//!                              # sends that succeeded (it stops at the first failure)
//! ```
//!
//! COUNT `-`: the sender sends until its standard input closes, then an end mark; the receiver
//! takes messages until the end mark (so a test can keep traffic flowing as long as it needs).
//!
//! The node is the one in `$NETMACHINE_HOME`. `NETMACHINE_SEQUENCE_SOCKET=1` uses the socket
//! path instead of the rings.

use netmachine_engine::{Engine, EngineOptions, Identity, Keypair};
use netmachine_service::{home::default_home, NodeHome, ServiceKind};
use std::path::Path;
use std::time::Duration;

/// How long a receiver waits for the next message before it reports what it has.
const IDLE: Duration = Duration::from_secs(20);
/// The body that ends a sequence of unknown length.
const END: u64 = u64::MAX;

/// A COUNT argument: a number, or `-` for a sequence that ends with `END`.
fn count_of(arg: &str) -> Result<u64, std::num::ParseIntError> {
    if arg == "-" {
        Ok(END)
    } else {
        arg.parse()
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    netmachine_service::process::init_logging(netmachine_service::process::LogFormat::Text);
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
                let count = count_of(&args[3])?;
                let engine = attach(&args[2]).await?;
                eprintln!("ready {} ring={}", engine.identity(), engine.on_ring());
                // What arrived, counted; a sequence that stops short ends after IDLE.
                let (mut received, mut in_order, mut ended) = (0u64, true, false);
                while received < count {
                    let Ok(message) = tokio::time::timeout(IDLE, engine.recv()).await else {
                        eprintln!("nothing for {} s after {received} messages", IDLE.as_secs());
                        break;
                    };
                    let message = message.ok_or("the engine closed")?;
                    let got = u64::from_le_bytes(message.body.as_slice().try_into().unwrap_or([0xfe; 8]));
                    if got == END && count == END {
                        ended = true;
                        break;
                    }
                    if got != received && in_order {
                        in_order = false;
                        eprintln!("expected {received}, got {got}");
                    }
                    received += 1;
                }
                println!("{{\"received\":{received},\"in_order\":{in_order},\"ended\":{ended}}}");
                engine.detach().await;
            }
            Some("send") => {
                let to: Identity = args[3].parse()?;
                let count = count_of(&args[4])?;
                let engine = attach(&args[2]).await?;
                let input_closed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                if count == END {
                    let closed = input_closed.clone();
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
                        closed.store(true, std::sync::atomic::Ordering::Release);
                    });
                }
                let mut sent = 0u64;
                let mut failed = false;
                while sent < count && !input_closed.load(std::sync::atomic::Ordering::Acquire) {
                    if let Err(error) = engine.send(to, sent.to_le_bytes().to_vec()).await {
                        eprintln!("send {sent} failed: {error}");
                        failed = true;
                        break;
                    }
                    sent += 1;
                }
                if count == END && !failed {
                    engine.send(to, END.to_le_bytes().to_vec()).await?;
                }
                println!("{{\"sent\":{sent}}}");
                engine.detach().await;
            }
            _ => return Err("usage: sequence receive KEY COUNT | sequence send KEY TO COUNT".into()),
        }
        Ok(())
    })
}
