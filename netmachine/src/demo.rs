//! `netmachine demo`: two nodes on loopback in a temporary home, connected by exchanging
//! adverts; engines on both exchange one-way messages and requests both ways (and one request
//! stays on its node, for comparison), and an engine on one node gets another's topic; it prints
//! what happened with latencies, and stops.

use crate::latency::{micros, Latencies};
use crate::local_node::{LocalNode, ScratchDir};
use crate::node_client::{connect, run_local};
use crate::peers;
use crate::routable::{wait_until_routable, PROBE};
use anyhow::{bail, Context, Result};
use netmachine_engine::{Engine, EngineOptions, Identity, Keypair, Received, Scope, TopicAdvert, TopicPolicy};
use netmachine_schema::transport_capnp::transport;
use netmachine_service::ServiceKind;
use std::sync::Arc;
use std::time::{Duration, Instant};

const REQUESTS: usize = 200;

pub fn run() -> Result<()> {
    let netmachine = std::env::current_exe().context("cannot find this executable")?;
    let scratch = ScratchDir::new("netmachine-demo")?;
    let listen = "transport.listen=[\"127.0.0.1:0\"]".to_string();
    println!("netmachine demo: two nodes on loopback, homes in {}", scratch.0.display());
    let mut a = LocalNode::start(&netmachine, &scratch.0.join("a"), std::slice::from_ref(&listen))?;
    let mut b = LocalNode::start(&netmachine, &scratch.0.join("b"), &[listen])?;
    let outcome = run_local(async { demo(&mut a, &mut b).await });
    let (stopped_a, stopped_b) = (a.stop(), b.stop());
    println!("stopped both nodes ({stopped_a}, {stopped_b})");
    outcome
}

async fn demo(a: &mut LocalNode, b: &mut LocalNode) -> Result<()> {
    a.wait_ready(Duration::from_secs(30)).await?;
    b.wait_ready(Duration::from_secs(30)).await?;
    let advert_a = peers::own_advert(&a.home).await?;
    let advert_b = peers::own_advert(&b.home).await?;
    println!("node A {} listens on {}", advert_a["node"].as_str().unwrap_or(""), advert_a["addrs"]);
    println!("node B {} listens on {}", advert_b["node"].as_str().unwrap_or(""), advert_b["addrs"]);
    peers::add(&a.home, &advert_b, 128, true).await?;
    peers::add(&b.home, &advert_a, 128, true).await?;
    let rtt = wait_connected(a, b.identity()?).await?;
    println!("adverts exchanged; A and B connected over QUIC (rtt {})", micros(rtt));

    let attach = |node: &LocalNode| EngineOptions::new(node.home.socket(ServiceKind::Router), Keypair::generate());
    let alice = Arc::new(Engine::attach(attach(a)).await?);
    let carol = Arc::new(Engine::attach(attach(a)).await?);
    let bob = Arc::new(Engine::attach(attach(b)).await?);
    println!("engines: alice {} and carol {} on A, bob {} on B", alice.identity().short(), carol.identity().short(), bob.identity().short());

    wait_until_routable(&alice, &bob).await?;
    wait_until_routable(&bob, &alice).await?;
    one_way(&alice, "alice@A", &bob, "bob@B").await?;
    one_way(&bob, "bob@B", &alice, "alice@A").await?;
    requests(&alice, "alice@A", &bob, "bob@B").await?;
    requests(&bob, "bob@B", &alice, "alice@A").await?;
    requests(&alice, "alice@A", &carol, "carol@A (same node)").await?;

    let node_b = b.identity()?;
    let answer = alice.request(netmachine_engine::Destination::Node(node_b), b"who are you?".to_vec(), Duration::from_secs(5)).await?;
    println!("alice@A asked node B itself; it answered {}", String::from_utf8_lossy(&answer.body));
    topic(&alice, &bob).await?;

    for engine in [alice, carol, bob] {
        if let Ok(engine) = Arc::try_unwrap(engine) {
            engine.detach().await;
        }
    }
    Ok(())
}

/// alice publishes on a topic of her own; bob on the other node subscribes (through both nodes'
/// pubsub services) and gets the news in order.
async fn topic(alice: &Engine, bob: &Engine) -> Result<()> {
    let advert = TopicAdvert::sign(&Keypair::generate(), alice.identity(), vec!["news".into()], 1);
    let topic = advert.topic;
    alice.create_topic(advert, Scope::Any, TopicPolicy::Block).await?;
    let start = Instant::now();
    bob.subscribe(topic, Scope::Any).await?;
    // Until B's pubsub service subscribed at A's, what alice publishes does not reach bob: she
    // publishes a greeting now and then until one arrives.
    let greeted = loop {
        if start.elapsed() > Duration::from_secs(15) {
            bail!("bob@B got nothing on topic {} within 15 s", topic.short());
        }
        alice.publish(topic, b"hello".to_vec()).await?;
        match tokio::time::timeout(Duration::from_millis(200), bob.recv_event()).await {
            Ok(Some(Received::Event(event))) => break event.seq,
            Ok(None) => bail!("bob's engine closed"),
            _ => continue,
        }
    };
    println!("topic {} by alice@A: bob@B subscribed through B's pubsub service in {} ms", topic.short(), start.elapsed().as_millis());
    let news = ["news 1", "news 2", "news 3"];
    for line in news {
        alice.publish(topic, line.as_bytes().to_vec()).await?;
    }
    let mut got = Vec::new();
    while got.len() < news.len() {
        match tokio::time::timeout(Duration::from_secs(5), bob.recv_event()).await.context("no event within 5 s")? {
            Some(Received::Event(event)) if event.seq > greeted && event.body != b"hello" => got.push(String::from_utf8_lossy(&event.body).to_string()),
            Some(Received::Gap(gap)) => bail!("bob@B was told events {}..={} are missing", gap.from, gap.to),
            Some(_) => continue,
            None => bail!("bob's engine closed"),
        }
    }
    println!("alice@A published {:?}; bob@B got {:?}, in order, no gap", news, got);
    Ok(())
}

/// Waits until A is connected to `node`; returns the measured round-trip time.
async fn wait_connected(a: &LocalNode, node: Identity) -> Result<Duration> {
    let transport: transport::Client = connect(&a.home, ServiceKind::Transport).await?;
    let start = Instant::now();
    loop {
        let answer = transport.connected_nodes_request().send().promise.await?;
        for entry in answer.get()?.get_nodes()?.iter() {
            if entry.get_node()? == node.0 {
                return Ok(Duration::from_micros(entry.get_rtt_micros()));
            }
        }
        if start.elapsed() > Duration::from_secs(15) {
            bail!("A did not connect to B within 15 s; see {}", a.root().with_extension("log").display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Takes the next message that is not a probe.
async fn next_message(engine: &Engine) -> Result<netmachine_engine::EngineMessage> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), engine.recv()).await.context("no message within 5 s")?;
        let message = message.context("the engine closed")?;
        if message.protocol != PROBE {
            return Ok(message);
        }
    }
}

async fn one_way(from: &Engine, from_name: &str, to: &Engine, to_name: &str) -> Result<()> {
    let body = format!("hello {to_name}, from {from_name}");
    let start = Instant::now();
    from.send(to.identity(), body.clone().into_bytes()).await?;
    let message = next_message(to).await?;
    let elapsed = start.elapsed();
    if message.body != body.as_bytes() {
        bail!("{to_name} got {:?}, expected {body:?}", String::from_utf8_lossy(&message.body));
    }
    println!("{from_name} -> {to_name}: one-way \"{body}\" delivered in {}", micros(elapsed));
    Ok(())
}

async fn requests(from: &Engine, from_name: &str, to: &Arc<Engine>, to_name: &str) -> Result<()> {
    let responder = to.clone();
    let echo = tokio::task::spawn_local(async move {
        while let Ok(message) = next_message(&responder).await {
            if message.reply_to.is_none() && responder.reply(&message, message.body.clone()).await.is_err() {
                break;
            }
        }
    });
    let mut latencies = Latencies::default();
    for n in 0..REQUESTS {
        let body = format!("request {n}").into_bytes();
        let start = Instant::now();
        let reply = from.request(to.identity(), body.clone(), Duration::from_secs(5)).await?;
        latencies.add(start.elapsed());
        if reply.body != body {
            bail!("request {n} got a wrong reply");
        }
    }
    echo.abort();
    println!(
        "{from_name} -> {to_name}: {REQUESTS} requests, latency p50 {} p99 {}",
        micros(latencies.percentile(50.0)),
        micros(latencies.percentile(99.0))
    );
    Ok(())
}
