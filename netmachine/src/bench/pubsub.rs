//! `netmachine bench pubsub`: one publisher to 1, 4 and 16 subscribers (each a process of its
//! own, on the rings) on one node, with 64 B and 256 B events: events delivered per second in
//! total, and publish-to-take latency under that load. The baseline from the same run is local
//! unicast through the router at the same size (engine to engine on the rings). Across nodes
//! the figures wait for the pubsub service to carry topics between nodes.

use super::helpers::wall_nanos;
use super::local::Bench;
use crate::node_client::run_local;
use anyhow::{bail, Context, Result};
use futures::stream::{self, StreamExt, TryStreamExt};
use netmachine_engine::{Keypair, Scope, TopicAdvert, TopicPolicy};

/// One fan-out figure: events delivered in total per second, and latency.
struct Fanout {
    delivered_per_s: f64,
    p50_ns: u64,
    p99_ns: u64,
    missed: u64,
}

/// Events a publisher keeps in flight.
const IN_FLIGHT: usize = 256;

/// Publishes `events` of `size` bytes to `subscribers` subscriber processes; counted until
/// the last subscriber took its last event.
fn fanout(bench: &mut Bench, subscribers: usize, size: usize, events: u64) -> Result<Fanout> {
    let publisher = bench.attach(false, true)?;
    let advert = TopicAdvert::sign(&Keypair::generate(), publisher.identity(), vec!["bench".into()], 1);
    let topic = advert.topic;
    run_local(async { Ok(publisher.create_topic(advert, Scope::Local, TopicPolicy::Block).await?) })?;
    let topic_arg = topic.to_string();
    let count = events.to_string();
    let mut helpers = Vec::new();
    for _ in 0..subscribers {
        helpers.push(bench.engine("subscriber", false, true, &["--topic", &topic_arg, "--count", &count])?.0);
    }
    let start = std::time::Instant::now();
    run_local(async {
        let publishes = stream::iter(0..events).map(|_| {
            let mut body = vec![0x5a; size.max(8)];
            body[..8].copy_from_slice(&wall_nanos().to_le_bytes());
            publisher.publish(topic, body)
        });
        Ok(publishes.buffer_unordered(IN_FLIGHT).try_for_each(|_| async { Ok(()) }).await?)
    })?;
    let mut reports = Vec::new();
    for _ in 0..subscribers {
        let report = publisher.recv_blocking().context("a subscriber's report")?;
        reports.push(serde_json::from_slice::<serde_json::Value>(&report.body).context("a subscriber's report is JSON")?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    drop(helpers);
    let field = |report: &serde_json::Value, key: &str| report[key].as_u64().unwrap_or(0);
    let received: u64 = reports.iter().map(|r| field(r, "received")).sum();
    if received + reports.iter().map(|r| field(r, "missed")).sum::<u64>() != events * subscribers as u64 {
        bail!("the subscribers accounted for {received} events of {}", events * subscribers as u64);
    }
    let mut p50s: Vec<u64> = reports.iter().map(|r| field(r, "p50_ns")).collect();
    p50s.sort_unstable();
    Ok(Fanout {
        delivered_per_s: received as f64 / elapsed,
        p50_ns: p50s[p50s.len() / 2],
        p99_ns: reports.iter().map(|r| field(r, "p99_ns")).max().unwrap_or(0),
        missed: reports.iter().map(|r| field(r, "missed")).sum(),
    })
}

pub fn run(events: u64, json_output: bool) -> Result<()> {
    let (mut bench, mut node) = Bench::start("netmachine-bench-pubsub")?;
    let mut report = serde_json::Map::new();
    for size in [64, 256] {
        for subscribers in [1, 4, 16] {
            let figure = fanout(&mut bench, subscribers, size, events)?;
            let key = |what: &str| format!("local_fanout{subscribers}_{what}_{size}");
            report.insert(key("delivered_per_s"), figure.delivered_per_s.round().into());
            report.insert(key("p50_us"), (figure.p50_ns / 1000).into());
            report.insert(key("p99_us"), (figure.p99_ns / 1000).into());
            report.insert(key("missed"), figure.missed.into());
        }
        report.insert(format!("local_unicast_per_s_{size}"), bench.throughput(size, true, events * 4)?.round().into());
    }
    node.stop();
    // The keys: fan-out to 4 and unicast at 256 B.
    report.insert("local_fanout4_delivered_per_s".into(), report["local_fanout4_delivered_per_s_256"].clone());
    report.insert("local_unicast_per_s".into(), report["local_unicast_per_s_256"].clone());
    report.insert("events".into(), events.into());
    let report = serde_json::Value::Object(report);
    if json_output {
        println!("{report}");
        return Ok(());
    }
    let f = |key: String| report[&key].as_f64().unwrap_or(0.0);
    println!("netmachine bench pubsub: one publisher, subscribers in separate processes on one node (policy Block)");
    for size in [64, 256] {
        for subscribers in [1, 4, 16] {
            let what = format!("fan-out to {subscribers}, {size} B, delivered in total");
            let baseline = format!("local unicast, rings, {size} B");
            println!("{}", super::ratio_line(&what, f(format!("local_fanout{subscribers}_delivered_per_s_{size}")), &baseline, f(format!("local_unicast_per_s_{size}")), "ev/s"));
            println!(
                "    latency under that load: p50 {} us, p99 {} us; missed {}",
                report[format!("local_fanout{subscribers}_p50_us_{size}")],
                report[format!("local_fanout{subscribers}_p99_us_{size}")],
                report[format!("local_fanout{subscribers}_missed_{size}")],
            );
        }
    }
    println!("across nodes: not measured yet (events between nodes need the pubsub service)");
    Ok(())
}
