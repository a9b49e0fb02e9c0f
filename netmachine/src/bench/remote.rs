//! `netmachine bench remote`: two nodes on loopback. Engines on node A send to an engine on
//! node B as fast as the node accepts (64 B, 256 B and 4 KiB bodies, and 256 B with engine
//! signatures), requests measure the round trip; the baselines are raw quinn on one stream with
//! the same message sizes, and, for signed messages, a two-thread pipeline that signs and
//! batch-verifies the same messages (the crypto floor: a sender must sign what a receiver
//! verifies).

use crate::latency::Latencies;
use crate::local_node::LocalNode;
use crate::node_client::{connect, run_local};
use crate::peers;
use crate::routable::probe_until_routable;
use super::receiving::ReceivingEngine;
use anyhow::{bail, Context, Result};
use futures::stream::{self, StreamExt};
use netmachine_engine::{Engine, EngineOptions, Keypair};
use netmachine_router::core::signatures::verify_all;
use netmachine_schema::transport_capnp::transport;
use netmachine_schema::{signing, Destination, EngineMessage};
use netmachine_service::ServiceKind;
use netmachine_transport::{framing, tls::NodeTls};
use serde_json::json;
use std::time::{Duration, Instant};

const SIZES: [usize; 3] = [64, 256, 4096];
/// Sends the benchmark keeps waiting for the router's acceptance at once.
const IN_FLIGHT: usize = 256;

pub(super) struct Throughput {
    pub(super) msgs_per_s: f64,
    mb_per_s: f64,
}

pub fn run(messages: usize, requests: usize, json_output: bool, set: &[String]) -> Result<()> {
    super::two_nodes("netmachine-bench", set, json_output, print_report, |a, b, _| run_local(async { measure(a, b, messages, requests).await }))
}

async fn measure(a: &mut LocalNode, b: &mut LocalNode, messages: usize, requests: usize) -> Result<serde_json::Value> {
    link_nodes(a, b).await?;
    let options = |node: &LocalNode| EngineOptions::new(node.home.socket(ServiceKind::Router), Keypair::generate());
    let receiver = ReceivingEngine::attach(b.home.socket(ServiceKind::Router))?;
    let sender = Engine::attach(options(a)).await?;
    let mut signed = options(a);
    signed.sign_messages = true;
    let signing_sender = Engine::attach(signed).await?;
    for engine in [&sender, &signing_sender] {
        probe_until_routable(engine, receiver.identity()).await?;
    }

    let mut report = serde_json::Map::new();
    report.insert("messages".into(), json!(messages));
    for size in SIZES {
        let ours = match node_to_node(&sender, &receiver, size, messages).await {
            Ok(ours) => ours,
            Err(error) => return Err(error.context(where_messages_went(a, b).await)),
        };
        let raw = raw_quinn(size, messages).await?;
        report.insert(format!("msgs_per_s_{size}"), json!(ours.msgs_per_s.round()));
        report.insert(format!("mb_per_s_{size}"), json!((ours.mb_per_s * 10.0).round() / 10.0));
        report.insert(format!("raw_quinn_msgs_per_s_{size}"), json!(raw.msgs_per_s.round()));
        report.insert(format!("raw_quinn_mb_per_s_{size}"), json!((raw.mb_per_s * 10.0).round() / 10.0));
    }
    let signed = node_to_node(&signing_sender, &receiver, 256, messages).await?;
    report.insert("signed_msgs_per_s_256".into(), json!(signed.msgs_per_s.round()));
    report.insert("sign_and_verify_per_s".into(), json!(sign_and_verify_rate(messages.max(4096)).round()));

    let mut latencies = round_trips(&sender, &receiver, requests).await?;
    report.insert("requests".into(), json!(latencies.len()));
    report.insert("rtt_us_p50".into(), json!(latencies.percentile(50.0).as_micros() as u64));
    report.insert("rtt_us_p99".into(), json!(latencies.percentile(99.0).as_micros() as u64));

    let ratio = |ours: &str, base: &str| {
        let (o, b) = (report[ours].as_f64().unwrap_or(0.0), report[base].as_f64().unwrap_or(0.0));
        if b > 0.0 { ((o / b) * 1000.0).round() / 1000.0 } else { 0.0 }
    };
    let ratio_quinn = ratio("msgs_per_s_256", "raw_quinn_msgs_per_s_256");
    let ratio_crypto = ratio("signed_msgs_per_s_256", "sign_and_verify_per_s");
    report.insert("ratio_to_raw_quinn_256".into(), json!(ratio_quinn));
    report.insert("ratio_signed_to_sign_and_verify".into(), json!(ratio_crypto));
    for engine in [sender, signing_sender] {
        engine.detach().await;
    }
    Ok(serde_json::Value::Object(report))
}

/// Both nodes' drop and frame counters, to say where missing messages went.
async fn where_messages_went(a: &LocalNode, b: &LocalNode) -> String {
    let mut out = String::new();
    for (name, node) in [("A", a), ("B", b)] {
        let status = crate::status::node_status(&node.home).await;
        for service in status["services"].as_array().into_iter().flatten() {
            if service["name"] == "router" || service["name"] == "transport" {
                out.push_str(&format!("node {name} {}: {}\n", service["name"], service["counters"]));
            }
        }
    }
    out
}

/// Waits until both nodes are up, makes each a peer of the other, and waits until they are
/// connected.
pub(super) async fn link_nodes(a: &mut LocalNode, b: &mut LocalNode) -> Result<()> {
    a.wait_ready(Duration::from_secs(30)).await?;
    b.wait_ready(Duration::from_secs(30)).await?;
    let (advert_a, advert_b) = (peers::own_advert(&a.home).await?, peers::own_advert(&b.home).await?);
    peers::add(&a.home, &advert_b, 128, true).await?;
    peers::add(&b.home, &advert_a, 128, true).await?;
    wait_connected(a, b).await
}

pub(super) async fn wait_connected(a: &LocalNode, b: &LocalNode) -> Result<()> {
    let transport: transport::Client = connect(&a.home, ServiceKind::Transport).await?;
    let node_b = b.identity()?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        let answer = transport.connected_nodes_request().send().promise.await?;
        if answer.get()?.get_nodes()?.iter().any(|n| n.get_node().is_ok_and(|id| id == node_b.0)) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the two nodes did not connect within 15 s")
}

/// Sends `count` bodies of `size` bytes from `sender` to `receiver`; the clock runs until the
/// last one has arrived.
async fn node_to_node(sender: &Engine, receiver: &ReceivingEngine, size: usize, count: usize) -> Result<Throughput> {
    let body = vec![0x5a; size];
    let dst = receiver.identity();
    // Queued before the first send, so the receiver counts from the first message.
    let taking = receiver.take(count);
    let start = Instant::now();
    let sending = async {
        let mut sends = stream::iter(0..count).map(|_| sender.send(dst, body.clone())).buffer_unordered(IN_FLIGHT);
        while let Some(sent) = sends.next().await {
            sent?;
        }
        Ok::<_, anyhow::Error>(())
    };
    let (sent, received) = tokio::join!(sending, taking);
    sent?;
    received?;
    Ok(rate(count, size, start.elapsed()))
}

fn rate(count: usize, size: usize, elapsed: Duration) -> Throughput {
    let secs = elapsed.as_secs_f64().max(1e-9);
    Throughput { msgs_per_s: count as f64 / secs, mb_per_s: (count * size) as f64 / secs / 1e6 }
}

async fn round_trips(sender: &Engine, receiver: &ReceivingEngine, requests: usize) -> Result<Latencies> {
    let echoing = receiver.echo(requests);
    let ask = async {
        let mut latencies = Latencies::default();
        for _ in 0..requests {
            let start = Instant::now();
            sender.request(receiver.identity(), vec![0x11; 64], Duration::from_secs(10)).await?;
            latencies.add(start.elapsed());
        }
        Ok::<_, anyhow::Error>(latencies)
    };
    let (echoed, latencies) = tokio::join!(echoing, ask);
    echoed?;
    latencies
}

/// The baseline: `count` length-prefixed messages of `size` bytes on one raw quinn stream over
/// loopback, with the same TLS configuration the nodes use.
pub(super) async fn raw_quinn(size: usize, count: usize) -> Result<Throughput> {
    let (server_key, client_key) = (Keypair::generate(), Keypair::generate());
    let server_tls = NodeTls::new(&server_key)?;
    let client_tls = NodeTls::new(&client_key)?;
    let (server, client) = raw_endpoints(server_tls.server_config()?)?;
    let address = server.local_addr()?;
    let receiving = tokio::task::spawn_local(async move {
        let connection = server.accept().await.context("no connection")?.await?;
        let mut stream = connection.accept_uni().await?;
        for _ in 0..count {
            framing::read_frame(&mut stream, size + 16, Duration::from_secs(30)).await?.context("stream ended early")?;
        }
        Ok::<_, anyhow::Error>(connection)
    });
    let connection = client.connect_with(client_tls.client_config(server_key.identity())?, address, "netmachine")?.await?;
    let mut stream = connection.open_uni().await?;
    let body = vec![0x5a; size];
    let start = Instant::now();
    for _ in 0..count {
        framing::write_frame(&mut stream, &body).await?;
    }
    let _server_side = receiving.await??;
    let elapsed = start.elapsed();
    connection.close(0u32.into(), b"done");
    Ok(rate(count, size, elapsed))
}

/// The two ends of a raw quinn baseline on loopback, bound as quinn binds them (the kernel's
/// UDP buffers: larger ones made raw quinn's small messages half as fast here, and did nothing
/// for its bulk stream).
pub(super) fn raw_endpoints(server_config: quinn::ServerConfig) -> Result<(quinn::Endpoint, quinn::Endpoint)> {
    let loopback = "127.0.0.1:0".parse()?;
    Ok((quinn::Endpoint::server(server_config, loopback)?, quinn::Endpoint::client(loopback)?))
}

/// Messages per batch the verifier checks at once (a frame carries from one to over a thousand).
const VERIFY_BATCH: usize = 64;

/// The crypto floor for signed messages on this machine: one thread signs `count` messages of
/// 256 B (as a sending engine does) and hands them on in batches; a second verifies each batch
/// with the receiving router's own check (`verify_all`). Messages per second through both, the
/// clock running until the last batch is verified.
fn sign_and_verify_rate(count: usize) -> f64 {
    let key = Keypair::generate();
    let (batches, verifier_input) = std::sync::mpsc::sync_channel::<Vec<EngineMessage>>(4);
    let start = Instant::now();
    let verifier = std::thread::spawn(move || {
        let mut verified = 0;
        for batch in verifier_input {
            verified += verify_all(batch, true).kept.len();
        }
        verified
    });
    for first in (0..count).step_by(VERIFY_BATCH) {
        let batch = (first..count.min(first + VERIFY_BATCH))
            .map(|n| {
                let mut m = EngineMessage::new(key.identity(), Destination::Engine(key.identity()), n as u64, vec![0x5a; 256]);
                m.sig = Some(key.sign(&signing::engine_message(&m)));
                m
            })
            .collect();
        if batches.send(batch).is_err() {
            break;
        }
    }
    drop(batches);
    let verified = verifier.join().unwrap_or(0);
    if verified < count {
        return 0.0;
    }
    count as f64 / start.elapsed().as_secs_f64().max(1e-9)
}

fn print_report(report: &serde_json::Value) {
    let f = |key: &str| report[key].as_f64().unwrap_or(0.0);
    println!("netmachine bench remote: two nodes on loopback, {} messages per figure", report["messages"]);
    for size in SIZES {
        println!(
            "{}",
            super::ratio_line(&format!("node->node {size} B"), f(&format!("msgs_per_s_{size}")), &format!("raw quinn one stream {size} B"), f(&format!("raw_quinn_msgs_per_s_{size}")), "msg/s")
        );
        println!(
            "{}",
            super::ratio_line(&format!("node->node {size} B"), f(&format!("mb_per_s_{size}")), &format!("raw quinn one stream {size} B"), f(&format!("raw_quinn_mb_per_s_{size}")), "MB/s")
        );
    }
    println!("{}", super::ratio_line("node->node 256 B with engine signatures", f("signed_msgs_per_s_256"), "sign + batch verify, two threads", f("sign_and_verify_per_s"), "msg/s"));
    println!("request/response node->node ({} requests): p50 {} us, p99 {} us", report["requests"], report["rtt_us_p50"], report["rtt_us_p99"]);
}
