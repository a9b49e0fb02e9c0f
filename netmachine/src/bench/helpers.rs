//! The other processes of `bench local`, run as hidden `netmachine bench helper ...` commands:
//! engines that echo, count, subscribe or idle, and the baselines' far ends (a shared cache line, a bare
//! ring, a Unix socket).

use anyhow::{Context, Result};
use netmachine_engine::ring::layout::Kind;
use netmachine_engine::ring::RingSegment;
use netmachine_engine::{Engine, EngineOptions, Keypair, WaitMode};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(clap::Subcommand)]
pub enum Helper {
    /// An engine that answers every message with its body
    Echo {
        #[command(flatten)]
        engine: EngineArgs,
        /// Take them with poll_blocking and answer with send_all_blocking
        #[arg(long)]
        poll: bool,
    },
    /// An engine that takes COUNT messages, then answers the last one's sender
    Sink {
        #[command(flatten)]
        engine: EngineArgs,
        #[arg(long)]
        count: u64,
        /// Take them with poll_blocking (borrowed) instead of recv_blocking
        #[arg(long)]
        poll: bool,
    },
    /// An engine that attaches and waits
    Idle(EngineArgs),
    /// An engine that subscribes to TOPIC, takes COUNT events (each body starting with its
    /// publish time), then tells the publisher what it got and how late, as JSON
    Subscriber {
        #[command(flatten)]
        engine: EngineArgs,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        count: u64,
    },
    /// The far end of the shared cache line
    Floor {
        #[arg(long)]
        segment: String,
        #[arg(long)]
        rounds: u64,
    },
    /// Answers each record in a bare ring's outbox with the same body in its inbox, ROUNDS times
    RingEcho {
        #[arg(long)]
        segment: String,
        #[arg(long)]
        rounds: u64,
    },
    /// Consumes COUNT records from a bare ring's outbox
    RingSink {
        #[arg(long)]
        segment: String,
        #[arg(long)]
        count: u64,
    },
    /// Echoes 64-byte messages on a Unix socket
    UnixEcho {
        #[arg(long)]
        path: PathBuf,
    },
}

#[derive(clap::Args)]
pub struct EngineArgs {
    #[arg(long)]
    socket: PathBuf,
    #[arg(long)]
    key: PathBuf,
    /// Busy-spin instead of adaptive waiting
    #[arg(long)]
    spin: bool,
    /// Use the socket path instead of the rings
    #[arg(long)]
    no_ring: bool,
}

/// Options for a benchmark engine: the calling thread reads its ring (no thread hop).
pub fn bench_options(socket: &std::path::Path, key: Keypair, ring: bool, spin: bool) -> EngineOptions {
    let mut options = EngineOptions::new(socket, key);
    options.ring = ring;
    options.wait = if spin { WaitMode::BusySpin } else { WaitMode::Adaptive };
    options.receiver = netmachine_engine::Receiver::CallingThread;
    options
}

fn attach(args: &EngineArgs) -> Result<Engine> {
    let engine = attach_quietly(args)?;
    ready()?;
    Ok(engine)
}

fn attach_quietly(args: &EngineArgs) -> Result<Engine> {
    let options = bench_options(&args.socket, Keypair::read_file(&args.key)?, !args.no_ring, args.spin);
    crate::node_client::run_local(async { Ok(Engine::attach(options).await?) })
}

/// Messages a sink takes at a time: `poll_blocking`'s limit, and the run after which the bare
/// ring's sink releases their room.
const RUN: usize = 256;

/// Tells the benchmark this helper is ready.
fn ready() -> Result<()> {
    println!("ready");
    Ok(std::io::stdout().flush()?)
}

/// Nanoseconds since the epoch: the publish time an event's body starts with (the clock that
/// publisher and subscriber processes share).
pub fn wall_nanos() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Takes `count` events of `topic`: how many came, how many were reported missing, and the
/// p50, p99, p99.9 and largest of their publish-to-take latency, for the publisher.
fn subscribe(args: &EngineArgs, topic: &str, count: u64) -> Result<()> {
    let engine = attach_quietly(args)?;
    let topic: netmachine_engine::Identity = topic.parse().context("--topic")?;
    crate::node_client::run_local(async {
        // Scope Any: a topic on another node too (its events come through the pubsub services).
        engine.subscribe(topic, netmachine_engine::Scope::Any).await?;
        ready()?;
        let (mut latencies, mut received, mut missed, mut publisher) = (crate::latency::Latencies::default(), 0, 0, None);
        while received + missed < count {
            match engine.recv_event().await.context("closed")? {
                netmachine_engine::Received::Event(event) => {
                    received += 1;
                    // Only sampled events carry their publish time (0 in the others).
                    let sent = event.body.get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes);
                    if sent != 0 {
                        latencies.add(std::time::Duration::from_nanos(wall_nanos().saturating_sub(sent)));
                    }
                    publisher = Some(event.publisher);
                }
                netmachine_engine::Received::Gap(gap) => missed += gap.to - gap.from + 1,
                netmachine_engine::Received::Message(_) => {}
            }
        }
        let report = serde_json::json!({
            "received": received,
            "missed": missed,
            "p50_ns": latencies.percentile(50.0).as_nanos() as u64,
            "p99_ns": latencies.percentile(99.0).as_nanos() as u64,
            "p999_ns": latencies.percentile(99.9).as_nanos() as u64,
            "max_ns": latencies.percentile(100.0).as_nanos() as u64,
        });
        if let Some(publisher) = publisher {
            engine.send(publisher, report.to_string().into_bytes()).await?;
        }
        engine.detach().await;
        Ok(())
    })
}

pub fn run(helper: Helper) -> Result<()> {
    match helper {
        Helper::Echo { engine: args, poll: false } => {
            let engine = attach(&args)?;
            while let Some(message) = engine.recv_blocking() {
                engine.send_blocking(message.src, message.body)?;
            }
        }
        Helper::Echo { engine: args, poll: true } => {
            let engine = attach(&args)?;
            let (mut body, mut from) = (Vec::new(), None);
            while let Some(taken) = engine.poll_blocking(1, std::time::Duration::from_secs(60), |message| {
                body.clear();
                body.extend_from_slice(message.body);
                from = Some(message.src);
            }) {
                if let (1, Some(to)) = (taken, from) {
                    engine.send_all_blocking(to, &[&body])?;
                }
            }
        }
        Helper::Sink { engine: args, count, poll } => {
            let engine = attach(&args)?;
            let (mut taken, mut last) = (0, None);
            while taken < count {
                if poll {
                    taken += engine.poll_blocking(RUN, std::time::Duration::from_secs(60), |message| last = Some(message.src)).context("closed")? as u64;
                } else {
                    last = Some(engine.recv_blocking().context("closed")?.src);
                    taken += 1;
                }
            }
            if let Some(last) = last {
                engine.send_blocking(last, b"done".to_vec())?;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        Helper::Subscriber { engine, topic, count } => subscribe(&engine, &topic, count)?,
        Helper::Idle(args) => {
            let engine = attach(&args)?;
            while engine.recv_blocking().is_some() {}
        }
        Helper::Floor { segment, rounds } => {
            let segment = RingSegment::open(&segment, None)?;
            let word = cache_line(&segment);
            for round in 0..rounds {
                let ping = 2 * round + 1;
                while word.load(Ordering::Acquire) != ping {
                    std::hint::spin_loop();
                }
                word.store(ping + 1, Ordering::Release);
            }
        }
        Helper::RingEcho { segment, rounds } => {
            let segment = RingSegment::open(&segment, None)?;
            let (mut outbox, mut inbox) = segment.router_side()?;
            let mut answered = 0;
            while answered < rounds {
                // Spinning on loads alone, as a raw ring user would (`Consumer::published`).
                while !outbox.published() {
                    std::hint::spin_loop();
                }
                let Some(record) = outbox.peek()? else { continue };
                while inbox.try_write(record.kind, &[record.body]).is_err() {
                    std::hint::spin_loop();
                }
                outbox.consume();
                answered += 1;
            }
        }
        Helper::RingSink { segment, count } => {
            let segment = RingSegment::open(&segment, None)?;
            let (mut outbox, _) = segment.router_side()?;
            let mut taken = 0;
            // As the engine's sink takes a channel's records: in runs, their room released once.
            let mut held = 0;
            while taken < count {
                match outbox.peek()? {
                    Some(record) => {
                        taken += u64::from(record.kind == Kind::Message);
                        outbox.consume_held();
                        held += 1;
                        if held == RUN {
                            outbox.release();
                            held = 0;
                        }
                    }
                    None => {
                        outbox.release();
                        held = 0;
                        std::hint::spin_loop();
                    }
                }
            }
        }
        Helper::UnixEcho { path } => {
            let mut stream = std::os::unix::net::UnixStream::connect(path)?;
            let mut buffer = [0u8; 64];
            while stream.read_exact(&mut buffer).is_ok() {
                stream.write_all(&buffer)?;
            }
        }
    }
    Ok(())
}

/// The word the floor ping-pongs: a bare segment's inbox `tail`, on a cache line of its own.
pub fn cache_line(segment: &RingSegment) -> &AtomicU64 {
    segment.counter(netmachine_engine::ring::layout::INBOX_TAIL_AT)
}
