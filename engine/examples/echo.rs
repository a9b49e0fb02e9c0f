//! An engine that answers every message with the same body.
//!
//! ```text
//! netmachine up &                                  # a node, in ~/.netmachine
//! cargo run -p netmachine-engine --example echo    # prints the engine's identity
//! netmachine key new me.key
//! netmachine request --key me.key --to <identity printed above> hello
//! ```
//!
//! Set `NETMACHINE_HOME` to use another node home.

use netmachine_engine::{Engine, EngineOptions, Keypair};
use netmachine_service::{home::default_home, NodeHome, ServiceKind};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let home = NodeHome::load(&default_home(), &[])?;
    let engine = Engine::attach(EngineOptions::new(home.socket(ServiceKind::Router), Keypair::generate())).await?;
    println!("echo engine {} attached to node {}", engine.identity(), engine.node());
    while let Some(message) = engine.recv().await {
        if message.reply_to.is_none() {
            engine.reply(&message, message.body.clone()).await?;
        }
    }
    Ok(())
}
