//! `netmachine advert`, `peer add|remove`, `peers`, `connect`, `disconnect`: setting up and
//! inspecting connections to other nodes. An advert travels as a small JSON document whose
//! `advert` field is the signed Cap'n Proto NodeAdvert in hex.

use crate::node_client::{connect, run_local};
use anyhow::{Context, Result};
use netmachine_schema::identity_capnp::{node_advert, transport_address};
use netmachine_schema::transport_capnp::transport;
use netmachine_schema::Identity;
use netmachine_service::{NodeHome, ServiceKind};
use serde_json::json;
use std::path::Path;

#[derive(clap::Subcommand)]
pub enum PeerCommand {
    /// Trust a node: put the advert in FILE (from its `netmachine advert`) into the identity store
    Add {
        /// The node's advert file
        file: std::path::PathBuf,
        /// 1..=255; 0 bans the node
        #[arg(long, default_value_t = 128)]
        trust: u8,
        /// Connect only when there is something to send, instead of keeping a connection
        #[arg(long)]
        ephemeral: bool,
    },
    /// Forget a node and disconnect from it
    Remove {
        /// The node's identity (hex)
        node: String,
    },
}

fn options() -> capnp::message::ReaderOptions {
    netmachine_service::rpc::reader_options(64 << 10)
}

/// The advert as a JSON document a person can read and `peer add` can take.
pub fn advert_document(advert: node_advert::Reader<'_>) -> Result<serde_json::Value> {
    let mut addrs = Vec::new();
    for weighted in advert.get_addrs()?.iter() {
        if let transport_address::Quic(quic) = weighted.get_address()?.which()? {
            let quic = quic?;
            let ip: std::net::IpAddr = match quic.get_ip()? {
                b if b.len() == 4 => <[u8; 4]>::try_from(b)?.into(),
                b => <[u8; 16]>::try_from(b).context("an address of neither 4 nor 16 bytes")?.into(),
            };
            addrs.push(std::net::SocketAddr::new(ip, quic.get_port()).to_string());
        }
    }
    let mut message = capnp::message::Builder::new_default();
    message.set_root(advert)?;
    Ok(json!({
        "node": Identity::from_slice("id", advert.get_id()?)?.to_string(),
        "version": advert.get_version(),
        "addrs": addrs,
        "advert": hex::encode(capnp::serialize::write_message_to_words(&message)),
    }))
}

/// This node's signed advert, from transport.
pub async fn own_advert(home: &NodeHome) -> Result<serde_json::Value> {
    let transport: transport::Client = connect(home, ServiceKind::Transport).await?;
    let answer = transport.advert_request().send().promise.await?;
    advert_document(answer.get()?.get_advert()?)
}

pub fn advert(root: &Path, set: &[String]) -> Result<()> {
    let home = NodeHome::load(root, set)?;
    let document = run_local(own_advert(&home))?;
    println!("{document}");
    Ok(())
}

/// Adds the node whose advert document is `document`.
pub async fn add(home: &NodeHome, document: &serde_json::Value, trust: u8, permanent: bool) -> Result<Identity> {
    let bytes = hex::decode(document["advert"].as_str().context("the advert document has no \"advert\" field")?)
        .context("the \"advert\" field is not hex")?;
    let message = capnp::serialize::read_message(&mut &bytes[..], options()).context("the advert is not a Cap'n Proto NodeAdvert")?;
    let advert = message.get_root::<node_advert::Reader>()?;
    let node = Identity::from_slice("advert.id", advert.get_id()?)?;
    let transport: transport::Client = connect(home, ServiceKind::Transport).await?;
    let mut request = transport.add_peer_request();
    request.get().set_advert(advert)?;
    request.get().set_trust(trust);
    request.get().set_permanent(permanent);
    request.send().promise.await.with_context(|| format!("adding node {node}"))?;
    Ok(node)
}

pub fn peer(root: &Path, set: &[String], command: PeerCommand) -> Result<()> {
    let home = NodeHome::load(root, set)?;
    match command {
        PeerCommand::Add { file, trust, ephemeral } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let document: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{} is not an advert document", file.display()))?;
            let node = run_local(add(&home, &document, trust, !ephemeral))?;
            println!("{node}");
        }
        PeerCommand::Remove { node } => {
            let node: Identity = node.parse()?;
            run_local(async {
                let transport: transport::Client = connect(&home, ServiceKind::Transport).await?;
                let mut request = transport.remove_peer_request();
                request.get().set_node(&node.0);
                request.send().promise.await?;
                Ok(())
            })?;
        }
    }
    Ok(())
}

pub fn connect_to(root: &Path, set: &[String], node: &str, disconnect: bool) -> Result<()> {
    let home = NodeHome::load(root, set)?;
    let node: Identity = node.parse()?;
    run_local(async {
        let transport: transport::Client = connect(&home, ServiceKind::Transport).await?;
        if disconnect {
            let mut request = transport.disconnect_request();
            request.get().set_node(&node.0);
            request.get().set_reason("operator request");
            request.send().promise.await?;
        } else {
            let mut request = transport.connect_request();
            request.get().set_node(&node.0);
            request.send().promise.await.with_context(|| format!("connecting to {node}"))?;
        }
        Ok(())
    })
}

pub fn peers(root: &Path, set: &[String], json_output: bool) -> Result<()> {
    let home = NodeHome::load(root, set)?;
    let nodes = run_local(async {
        let transport: transport::Client = connect(&home, ServiceKind::Transport).await?;
        let answer = transport.connected_nodes_request().send().promise.await?;
        let mut nodes = Vec::new();
        for entry in answer.get()?.get_nodes()?.iter() {
            nodes.push(json!({
                "node": Identity::from_slice("node", entry.get_node()?)?.to_string(),
                "address": entry.get_address()?.to_string()?,
                "public": entry.get_public(),
                "rtt_us": entry.get_rtt_micros(),
                "frames_sent": entry.get_frames_sent(),
                "frames_received": entry.get_frames_received(),
            }));
        }
        Ok(nodes)
    })?;
    if json_output {
        println!("{}", serde_json::Value::Array(nodes));
        return Ok(());
    }
    if nodes.is_empty() {
        println!("no connected nodes");
    }
    for node in nodes {
        println!(
            "{} {} rtt {} us, frames sent {} received {}{}",
            node["node"].as_str().unwrap_or(""),
            node["address"].as_str().unwrap_or(""),
            node["rtt_us"],
            node["frames_sent"],
            node["frames_received"],
            if node["public"] == true { " (public)" } else { "" }
        );
    }
    Ok(())
}
