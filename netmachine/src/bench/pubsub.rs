//! `netmachine bench pubsub`: one publisher to 1, 4 and 16 subscribers (each a process of its
//! own, on the rings), with 64 B and 256 B events: events delivered per second in total, and
//! publish-to-take latency under that load (sampled on one event in 8); on one node, and with
//! the subscribers on a second node (through both nodes' pubsub services). Baselines from the
//! same run: on one node, local unicast through the router at the same size (engine to engine
//! on the rings); across nodes, raw quinn on one stream with the same bytes. Then repair: the
//! latency of every event at a steady pace to a node that drops 1% of them on arrival (each
//! repaired from the publisher's history), against the same to a node that drops none.

use super::helpers::wall_nanos;
use super::local::Bench;
use crate::node_client::run_local;
use anyhow::{bail, Context, Result};
use crate::local_node::LocalNode;
use netmachine_engine::{Keypair, Scope, TopicAdvert, TopicPolicy};
use netmachine_service::ServiceKind;

/// The latency is sampled on one event in this many (at full speed).
const LATENCY_SAMPLE: u64 = 8;
/// Events dropped on arrival at the subscribers' node (per mille) to measure repair.
const LOSS_PERMILLE: u64 = 10;
/// The pace of the repair measurement (below what the nodes carry, so that the latency is the
/// repair's, not a queue's).
const PACED_PER_S: u64 = 10_000;

/// How the publisher publishes: every `sample`th event stamped; as fast as it can, or paced.
#[derive(Clone, Copy)]
struct Publishing {
    sample: u64,
    per_s: Option<u64>,
}

const FULL_SPEED: Publishing = Publishing { sample: LATENCY_SAMPLE, per_s: None };

/// One fan-out figure: events delivered in total per second, and latency.
struct Fanout {
    delivered_per_s: f64,
    p50_ns: u64,
    p99_ns: u64,
    p999_ns: u64,
    max_ns: u64,
    missed: u64,
}

/// Where the subscribers are: beside the publisher, or on a second node.
enum Place<'a> {
    Here,
    Across { publisher_node: &'a LocalNode, subscriber_node: &'a LocalNode },
}

/// Publishes `events` of `size` bytes to `subscribers` subscriber processes; counted until
/// the last subscriber took its last event.
fn fanout(bench: &mut Bench, place: &Place, subscribers: usize, size: usize, events: u64, publishing: Publishing) -> Result<Fanout> {
    let publisher = bench.attach(false, true)?;
    let advert = TopicAdvert::sign(&Keypair::generate(), publisher.identity(), vec!["bench".into()], 1);
    let topic = advert.topic;
    // A topic that leaves its node has its events signed by their publisher.
    let scope = match place {
        Place::Here => Scope::Local,
        Place::Across { .. } => Scope::Any,
    };
    run_local(async { Ok(publisher.create_topic(advert, scope, TopicPolicy::Block).await?) })?;
    let topic_arg = topic.to_string();
    let count = events.to_string();
    let mut helpers = Vec::new();
    for _ in 0..subscribers {
        let args = ["--topic", topic_arg.as_str(), "--count", count.as_str()];
        let helper = match place {
            Place::Here => bench.engine("subscriber", false, true, &args)?,
            Place::Across { subscriber_node, .. } => bench.engine_at(&subscriber_node.home.socket(ServiceKind::Router), "subscriber", false, true, &args)?,
        };
        helpers.push(helper.0);
    }
    if let Place::Across { publisher_node, .. } = place {
        run_local(subscribed_across(publisher_node))?;
    }
    let start = std::time::Instant::now();
    // On the rings a publish returns once the event is in the outbox: one after another is
    // the fastest way (a publish waits only while the outbox is full).
    run_local(async {
        let paced_from = tokio::time::Instant::now();
        for n in 0..events {
            if let Some(per_s) = publishing.per_s.filter(|_| n % 100 == 0) {
                tokio::time::sleep_until(paced_from + std::time::Duration::from_micros(n * 1_000_000 / per_s)).await;
            }
            let mut body = vec![0x5a; size.max(8)];
            // At full speed one event in LATENCY_SAMPLE carries its publish time: reading the
            // clock for every event would weigh on the figure being measured.
            let stamp = if n % publishing.sample == 0 { wall_nanos() } else { 0 };
            body[..8].copy_from_slice(&stamp.to_le_bytes());
            publisher.publish(topic, body).await?;
        }
        Ok(())
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
        p999_ns: reports.iter().map(|r| field(r, "p999_ns")).max().unwrap_or(0),
        max_ns: reports.iter().map(|r| field(r, "max_ns")).max().unwrap_or(0),
        missed: reports.iter().map(|r| field(r, "missed")).sum(),
    })
}

/// Waits until the publisher's node feeds the topic to the subscribers' node (its pubsub
/// service has a reader), so that no event goes before the subscription.
async fn subscribed_across(publisher_node: &LocalNode) -> Result<()> {
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(30) {
        let status = crate::status::node_status(&publisher_node.home).await;
        let services = status["services"].as_array().cloned().unwrap_or_default();
        if services.iter().any(|s| s["name"] == "pubsub" && s["gauges"]["readers"].as_u64().unwrap_or(0) >= 1) {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    bail!("the subscribers' node did not subscribe at the publisher's node within 30 s")
}

/// The figures of one place under `prefix` (`local`, `remote`).
fn measure(bench: &mut Bench, place: &Place, prefix: &str, events: u64, report: &mut serde_json::Map<String, serde_json::Value>) -> Result<()> {
    for size in [64, 256] {
        for subscribers in [1, 4, 16] {
            let figure = fanout(bench, place, subscribers, size, events, FULL_SPEED)?;
            let key = |what: &str| format!("{prefix}_fanout{subscribers}_{what}_{size}");
            report.insert(key("delivered_per_s"), figure.delivered_per_s.round().into());
            report.insert(key("p50_us"), (figure.p50_ns / 1000).into());
            report.insert(key("p99_us"), (figure.p99_ns / 1000).into());
            report.insert(key("missed"), figure.missed.into());
        }
    }
    Ok(())
}

/// Repair: fan-out to 4 at 256 B, paced, every event stamped, to the subscribers' node that
/// drops `LOSS_PERMILLE` of the events on arrival (`lossy`) and, as the baseline, to the one
/// that drops none (`lossless`). Keys `repair_*` and `paced_*`.
fn repair(bench: &mut Bench, publisher_node: &LocalNode, lossless: &LocalNode, lossy: &LocalNode, events: u64, report: &mut serde_json::Map<String, serde_json::Value>) -> Result<()> {
    let paced = Publishing { sample: 1, per_s: Some(PACED_PER_S) };
    for (prefix, node) in [("paced", lossless), ("repair", lossy)] {
        let figure = fanout(bench, &Place::Across { publisher_node, subscriber_node: node }, 4, 256, events, paced)?;
        for (what, ns) in [("p50", figure.p50_ns), ("p99", figure.p99_ns), ("p999", figure.p999_ns), ("max", figure.max_ns)] {
            report.insert(format!("{prefix}_{what}_us"), (ns / 1000).into());
        }
        report.insert(format!("{prefix}_missed"), figure.missed.into());
    }
    let counters = run_local(async { Ok(crate::status::node_status(&lossy.home).await) })?;
    let pubsub = counters["services"].as_array().into_iter().flatten().find(|s| s["name"] == "pubsub").map(|s| s["counters"].clone()).unwrap_or_default();
    report.insert("repair_dropped".into(), pubsub["events_dropped_injected"].clone());
    report.insert("repair_resends_asked".into(), pubsub["resends_asked"].clone());
    report.insert("repair_loss_permille".into(), LOSS_PERMILLE.into());
    report.insert("repair_paced_per_s".into(), PACED_PER_S.into());
    Ok(())
}

/// Starts a node that drops `LOSS_PERMILLE` of the pubsub events it receives, linked to `node`.
fn lossy_node(bench: &Bench, node: &LocalNode) -> Result<LocalNode> {
    let lossy = bench.another_node("lossy", &[&format!("pubsub.drop_received_permille={LOSS_PERMILLE}")])?;
    run_local(link(node, &lossy))?;
    Ok(lossy)
}

/// Each node trusts the other's advert; waits until they are connected.
async fn link(a: &LocalNode, b: &LocalNode) -> Result<()> {
    let (advert_a, advert_b) = (crate::peers::own_advert(&a.home).await?, crate::peers::own_advert(&b.home).await?);
    crate::peers::add(&a.home, &advert_b, 128, true).await?;
    crate::peers::add(&b.home, &advert_a, 128, true).await?;
    super::remote::wait_connected(a, b).await
}

pub fn run(events: u64, json_output: bool, set: &[String]) -> Result<()> {
    let (mut bench, mut node) = Bench::start("netmachine-bench-pubsub", set)?;
    let mut report = serde_json::Map::new();
    measure(&mut bench, &Place::Here, "local", events, &mut report)?;
    for size in [64, 256] {
        report.insert(format!("local_unicast_per_s_{size}"), bench.throughput(size, super::local::Sending::OneByOne, events * 4)?.round().into());
    }
    let mut second = bench.second_node()?;
    let across = run_local(link(&node, &second)).and_then(|()| measure(&mut bench, &Place::Across { publisher_node: &node, subscriber_node: &second }, "remote", events, &mut report));
    let repaired = across.and_then(|()| {
        let mut lossy = lossy_node(&bench, &node)?;
        let repaired = repair(&mut bench, &node, &second, &lossy, (events / 10).max(1000), &mut report);
        lossy.stop();
        repaired
    });
    second.stop();
    node.stop();
    repaired?;
    for size in [64, 256] {
        let raw = run_local(super::remote::raw_quinn(size, (events * 4) as usize))?;
        report.insert(format!("raw_quinn_msgs_per_s_{size}"), raw.msgs_per_s.round().into());
    }
    // The keys: fan-out to 4 and unicast at 256 B.
    report.insert("local_fanout4_delivered_per_s".into(), report["local_fanout4_delivered_per_s_256"].clone());
    report.insert("local_unicast_per_s".into(), report["local_unicast_per_s_256"].clone());
    report.insert("remote_fanout4_delivered_per_s".into(), report["remote_fanout4_delivered_per_s_256"].clone());
    report.insert("events".into(), events.into());
    let report = serde_json::Value::Object(report);
    if json_output {
        println!("{report}");
        return Ok(());
    }
    let f = |key: String| report[&key].as_f64().unwrap_or(0.0);
    println!("netmachine bench pubsub: one publisher, subscribers in separate processes (policy Block)");
    for (prefix, place) in [("local", "on the publisher's node"), ("remote", "on a second node")] {
        println!("subscribers {place}:");
        for size in [64, 256] {
            for subscribers in [1, 4, 16] {
                let what = format!("fan-out to {subscribers}, {size} B, delivered in total");
                let (baseline, baseline_key) = match prefix {
                    "local" => (format!("local unicast, rings, {size} B"), format!("local_unicast_per_s_{size}")),
                    _ => (format!("raw quinn one stream, {size} B"), format!("raw_quinn_msgs_per_s_{size}")),
                };
                println!("{}", super::ratio_line(&what, f(format!("{prefix}_fanout{subscribers}_delivered_per_s_{size}")), &baseline, f(baseline_key), "ev/s"));
                println!(
                    "    latency under that load (1 in 8 events): p50 {} us, p99 {} us; missed {}",
                    report[format!("{prefix}_fanout{subscribers}_p50_us_{size}")],
                    report[format!("{prefix}_fanout{subscribers}_p99_us_{size}")],
                    report[format!("{prefix}_fanout{subscribers}_missed_{size}")],
                );
            }
        }
    }
    println!(
        "repair: the second node drops {LOSS_PERMILLE} in 1000 events on arrival ({} dropped, {} resends asked), fan-out to 4, 256 B, paced at {PACED_PER_S} ev/s, every event timed:",
        report["repair_dropped"], report["repair_resends_asked"]
    );
    for (what, key) in [("p50", "p50_us"), ("p99", "p99_us"), ("p99.9", "p999_us"), ("largest", "max_us")] {
        let line = super::ratio_line(&format!("latency {what}, with loss"), f(format!("repair_{key}")), "the same without loss", f(format!("paced_{key}")), "us");
        println!("{line}");
    }
    println!("    missed with loss {}, without {}", report["repair_missed"], report["paced_missed"]);
    Ok(())
}
