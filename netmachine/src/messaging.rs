//! `netmachine listen`, `send` and `request`: an engine attached from the shell.

use anyhow::{Context, Result};
use netmachine_engine::{Destination, Engine, EngineMessage, EngineOptions, Identity, Keypair};
use crate::node_client::run_local;
use netmachine_service::{NodeHome, ServiceKind};
use std::path::Path;
use std::time::Duration;

/// Attaches as the engine whose key is in `key`. One-shot commands (`send`, `request`) use the
/// socket path, whose sends answer with the router's verdict; `listen` uses the rings.
pub(crate) async fn attach(root: &Path, set: &[String], key: &Path, ring: bool) -> Result<Engine> {
    attach_in(&NodeHome::load(root, set)?, key, ring).await
}

/// `attach` in a home already loaded.
async fn attach_in(home: &NodeHome, key: &Path, ring: bool) -> Result<Engine> {
    let keypair = Keypair::read_file(key)?;
    let mut options = EngineOptions::new(home.socket(ServiceKind::Router), keypair);
    options.ring = ring;
    Ok(Engine::attach(options).await?)
}

/// The body argument's bytes; `-` reads the body from standard input.
fn body_bytes(body: String) -> Result<Vec<u8>> {
    if body != "-" {
        return Ok(body.into_bytes());
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes).context("reading the body from stdin")?;
    Ok(bytes)
}

fn identity(to: &str) -> Result<Identity> {
    to.parse().with_context(|| format!("--to {to}"))
}

/// Where `to` is: this node or another node the identity store knows (its router answers), else
/// an engine.
async fn destination(home: &NodeHome, engine: &Engine, to: Identity) -> Result<Destination> {
    if to == engine.node() {
        return Ok(Destination::Node(to));
    }
    let store = crate::node_client::connect(home, ServiceKind::IdentityStore).await?;
    let is_node = netmachine_identity_client::locate::is_node(&store, to).await.map_err(anyhow::Error::msg)?;
    Ok(if is_node { Destination::Node(to) } else { Destination::Engine(to) })
}

pub fn listen(root: &Path, set: &[String], key: &Path, json: bool, echo: bool) -> Result<()> {
    run_local(async {
        let engine = attach(root, set, key, true).await?;
        eprintln!("listening as {} on node {}", engine.identity(), engine.node());
        loop {
            let message = tokio::select! {
                message = engine.recv() => message,
                _ = netmachine_service::process::stop_requested() => break,
            };
            let Some(message) = message else { break };
            print_message(&message, json);
            if echo && message.reply_to.is_none() {
                if let Err(error) = engine.reply(&message, message.body.clone()).await {
                    eprintln!("netmachine: reply to {} failed: {error}", message.src);
                }
            }
        }
        engine.detach().await;
        Ok(())
    })
}

fn print_message(message: &EngineMessage, json: bool) {
    if !json {
        println!("{}", String::from_utf8_lossy(&message.body));
        return;
    }
    let mut object = serde_json::json!({
        "src": message.src.to_string(),
        "id": message.id,
        "reply_to": message.reply_to,
        "protocol": message.protocol,
    });
    match std::str::from_utf8(&message.body) {
        Ok(text) => object["body"] = text.into(),
        Err(_) => object["body_hex"] = hex::encode(&message.body).into(),
    }
    println!("{object}");
}

pub fn send(root: &Path, set: &[String], key: &Path, to: &str, body: String) -> Result<()> {
    let to = identity(to)?;
    run_local(async {
        let home = NodeHome::load(root, set)?;
        let engine = attach_in(&home, key, false).await?;
        let dst = destination(&home, &engine, to).await?;
        let id = engine.send(dst, body_bytes(body)?).await?;
        eprintln!("accepted: message {id} to {to}");
        engine.detach().await;
        Ok(())
    })
}

pub fn request(root: &Path, set: &[String], key: &Path, to: &str, body: String, timeout_ms: u64) -> Result<()> {
    let to = identity(to)?;
    run_local(async {
        let home = NodeHome::load(root, set)?;
        let engine = attach_in(&home, key, false).await?;
        let dst = destination(&home, &engine, to).await?;
        let started = std::time::Instant::now();
        let reply = engine.request(dst, body_bytes(body)?, Duration::from_millis(timeout_ms)).await?;
        println!("{}", String::from_utf8_lossy(&reply.body));
        eprintln!("reply from {} in {} us", reply.src, started.elapsed().as_micros());
        engine.detach().await;
        Ok(())
    })
}
