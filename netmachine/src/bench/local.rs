//! `netmachine bench local`: engines in separate processes on one node. One-way latency
//! engine -> engine (half a round trip; past the first messages, by the pair's direct channels)
//! with adaptive waiting and with busy-spin, throughput for 64 B and 1 KiB bodies, the same over
//! the socket path (engine -> router -> engine), and the CPU an idle node with 4 engines uses;
//! against, from the same run, two processes ping-ponging one shared cache line (the floor), the
//! bare ring with no messages or checks (one way, and echoing records the size of a 64-byte
//! message's), and a Unix socket ping-pong.

use super::helpers::cache_line;
use crate::latency::Latencies;
use crate::local_node::{LocalNode, ScratchDir};
use crate::node_client::run_local;
use anyhow::{bail, Context, Result};
use netmachine_engine::ring::layout::Kind;
use netmachine_engine::ring::RingSegment;
use netmachine_engine::{Engine, Identity, Keypair};
use netmachine_service::ServiceKind;
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How `throughput` sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sending {
    /// Over the socket path, many sends in flight.
    Socket,
    /// On the rings, `send_blocking` and `recv_blocking`: a message each call.
    OneByOne,
    /// On the rings, `send_all_blocking` with `BATCH` bodies (one, for latency) and
    /// `poll_blocking`.
    Batched,
}

/// How long a latency round waits for the echo before it asks again.
const ECHO_WAIT: Duration = Duration::from_secs(10);

/// Bodies to a `send_all_blocking` call in the batched throughput figure.
const BATCH: usize = 64;

/// Benchmark nodes listen on a free loopback port: never on the default one a user's node has.
const LISTEN_ANY_PORT: &str = "transport.listen=[\"127.0.0.1:0\"]";

/// A node for benchmarks, and the engines and helper processes attached to it.
pub(super) struct Bench {
    netmachine: PathBuf,
    scratch: ScratchDir,
    pub(super) router: PathBuf,
    keys: usize,
}

/// A helper process, killed on drop.
pub(super) struct HelperProcess(Child);

impl Drop for HelperProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Bench {
    /// A fresh node in a scratch home, running until the returned `LocalNode` stops.
    pub(super) fn start(label: &str) -> Result<(Bench, LocalNode)> {
        let netmachine = std::env::current_exe().context("cannot find this executable")?;
        let scratch = ScratchDir::new(label)?;
        let mut node = LocalNode::start(&netmachine, &scratch.0.join("node"), &[LISTEN_ANY_PORT.to_string()])?;
        run_local(node.wait_ready(Duration::from_secs(30)))?;
        let router = node.home.socket(ServiceKind::Router);
        Ok((Bench { netmachine, scratch, router, keys: 0 }, node))
    }

    /// Another node in the scratch home, its transport on a free loopback port.
    pub(super) fn second_node(&self) -> Result<LocalNode> {
        self.another_node("second", &[])
    }

    /// Another node, in `dir` under the bench's scratch directory, with `set` overrides.
    pub(super) fn another_node(&self, dir: &str, set: &[&str]) -> Result<LocalNode> {
        let set: Vec<String> = std::iter::once(LISTEN_ANY_PORT.to_string()).chain(set.iter().map(|s| s.to_string())).collect();
        let mut node = LocalNode::start(&self.netmachine, &self.scratch.0.join(dir), &set)?;
        run_local(node.wait_ready(Duration::from_secs(30)))?;
        Ok(node)
    }

    fn key(&mut self) -> Result<(PathBuf, Identity)> {
        self.keys += 1;
        let path = self.scratch.0.join(format!("engine-{}.key", self.keys));
        let key = Keypair::generate();
        key.write_new_file(&path)?;
        Ok((path, key.identity()))
    }

    pub(super) fn helper(&self, args: &[&str], wait_ready: bool) -> Result<HelperProcess> {
        let mut child = Command::new(&self.netmachine)
            .args(["bench", "helper"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a bench helper")?;
        if wait_ready {
            let stdout = child.stdout.take().context("helper stdout")?;
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line)?;
            if line.trim() != "ready" {
                bail!("a bench helper did not start: {args:?}");
            }
        }
        Ok(HelperProcess(child))
    }

    /// An engine helper of `kind` (echo, sink, idle) with its own key.
    pub(super) fn engine(&mut self, kind: &str, spin: bool, ring: bool, extra: &[&str]) -> Result<(HelperProcess, Identity)> {
        let router = self.router.clone();
        self.engine_at(&router, kind, spin, ring, extra)
    }

    /// An engine helper attached to the router at `router` (of another node, say).
    pub(super) fn engine_at(&mut self, router: &Path, kind: &str, spin: bool, ring: bool, extra: &[&str]) -> Result<(HelperProcess, Identity)> {
        let (key, identity) = self.key()?;
        let mut args = vec![kind, "--socket", router.to_str().unwrap_or(""), "--key", key.to_str().unwrap_or("")];
        if spin {
            args.push("--spin");
        }
        if !ring {
            args.push("--no-ring");
        }
        args.extend_from_slice(extra);
        Ok((self.helper(&args, true)?, identity))
    }

    pub(super) fn attach(&mut self, spin: bool, ring: bool) -> Result<Engine> {
        let (key, _) = self.key()?;
        let options = super::helpers::bench_options(&self.router, Keypair::read_file(&key)?, ring, spin);
        crate::node_client::run_local(async { Ok(Engine::attach(options).await?) })
    }

    /// Half the round trip to an echoing engine, in nanoseconds: `Sending::Batched` sends with
    /// `send_all_blocking` (a batch of one) and takes with `poll_blocking`, both ends.
    fn latency(&mut self, spin: bool, sending: Sending, rounds: usize) -> Result<Latencies> {
        let (ring, borrowed) = (sending != Sending::Socket, sending == Sending::Batched);
        let (_echo, echo) = self.engine("echo", spin, ring, if borrowed { &["--poll"] } else { &[] })?;
        let engine = self.attach(spin, ring)?;
        let body = vec![0x42; 64];
        let mut samples = Latencies::default();
        for round in 0..rounds + rounds / 10 {
            let start = Instant::now();
            if borrowed {
                engine.send_all_blocking(echo, &[&body])?;
                while engine.poll_blocking(1, ECHO_WAIT, |_| {}).context("the echo engine closed")? == 0 {}
            } else {
                engine.send_blocking(echo, body.clone())?;
                engine.recv_blocking().context("the echo engine closed")?;
            }
            if round >= rounds / 10 {
                samples.add(start.elapsed() / 2);
            }
        }
        Ok(samples)
    }

    /// Messages per second from one engine to another, counted until the last arrived. On the
    /// rings the sender writes as fast as the outbox takes, one message per call (`Sending::
    /// OneByOne`) or `BATCH` (`send_all_blocking`, and the receiver takes them with
    /// `poll_blocking`); on the socket it keeps many sends in flight, as an engine that cares
    /// about throughput would.
    pub(super) fn throughput(&mut self, size: usize, sending: Sending, count: u64) -> Result<f64> {
        let ring = sending != Sending::Socket;
        let count_arg = count.to_string();
        let mut sink_args = vec!["--count", count_arg.as_str()];
        if sending == Sending::Batched {
            sink_args.push("--poll");
        }
        let (_sink, sink) = self.engine("sink", false, ring, &sink_args)?;
        let engine = self.attach(false, ring)?;
        let body = vec![0x5a; size];
        let start = Instant::now();
        if sending == Sending::Batched {
            let batch = vec![body.as_slice(); BATCH];
            let mut sent = 0;
            while sent < count {
                let now = BATCH.min((count - sent) as usize);
                engine.send_all_blocking(sink, &batch[..now])?;
                sent += now as u64;
            }
        } else if ring {
            for _ in 0..count {
                engine.send_blocking(sink, body.clone())?;
            }
        } else {
            use futures::stream::{self, StreamExt, TryStreamExt};
            crate::node_client::run_local(async {
                let sends = stream::iter(0..count).map(|_| engine.send(sink, body.clone())).buffer_unordered(256);
                Ok(sends.try_for_each(|_| async { Ok(()) }).await?)
            })?;
        }
        engine.recv_blocking().context("the sink closed")?;
        Ok(count as f64 / start.elapsed().as_secs_f64())
    }

    fn segment(&self, label: &str, capacity: usize) -> Result<(String, RingSegment)> {
        let mut suffix = [0u8; 6];
        getrandom::fill(&mut suffix).map_err(|e| anyhow::anyhow!("{e}"))?;
        let name = format!("/netmachine-bench-{}-{label}", hex::encode(suffix));
        let segment = RingSegment::create(&name, &Keypair::generate().identity().0, capacity)?;
        Ok((name, segment))
    }

    /// The floor: two processes ping-ponging one shared cache line, half a round trip.
    fn floor(&self, rounds: u64) -> Result<Latencies> {
        let (name, segment) = self.segment("floor", 4096)?;
        let _far = self.helper(&["floor", "--segment", &name, "--rounds", &rounds.to_string()], false)?;
        let word = cache_line(&segment);
        let mut samples = Latencies::default();
        for round in 0..rounds {
            let ping = 2 * round + 1;
            let start = Instant::now();
            word.store(ping, Ordering::Release);
            while word.load(Ordering::Acquire) != ping + 1 {
                std::hint::spin_loop();
            }
            if round >= rounds / 10 {
                samples.add(start.elapsed() / 2);
            }
        }
        let _ = RingSegment::unlink(&name);
        Ok(samples)
    }

    /// The bare ring between two processes, both spinning: a record of a 64-byte message's size
    /// (its 104-byte head and the body) each way, raw, no engine code; half a round trip.
    fn ring_echo(&self, rounds: u64) -> Result<Latencies> {
        let (name, segment) = self.segment("echo", 1 << 16)?;
        let _far = self.helper(&["ring-echo", "--segment", &name, "--rounds", &rounds.to_string()], false)?;
        let (mut outbox, mut inbox) = segment.engine_side()?;
        let record = vec![0x42; netmachine_engine::ring::records::MESSAGE_HEAD + 64];
        let mut samples = Latencies::default();
        for round in 0..rounds {
            let start = Instant::now();
            while outbox.try_write(Kind::Message, &[&record]).is_err() {
                std::hint::spin_loop();
            }
            while inbox.peek()?.is_none() {
                std::hint::spin_loop();
            }
            inbox.consume();
            if round >= rounds / 10 {
                samples.add(start.elapsed() / 2);
            }
        }
        let _ = RingSegment::unlink(&name);
        Ok(samples)
    }

    /// The bare ring between two processes, no router: messages per second.
    fn bare_ring(&self, size: usize, count: u64) -> Result<f64> {
        let (name, segment) = self.segment("ring", 1 << 20)?;
        let mut far = self.helper(&["ring-sink", "--segment", &name, "--count", &count.to_string()], false)?;
        let (mut outbox, _) = segment.engine_side()?;
        let body = vec![0x5a; size];
        let start = Instant::now();
        for _ in 0..count {
            while outbox.try_write(Kind::Message, &[&body]).is_err() {
                std::hint::spin_loop();
            }
        }
        far.0.wait()?;
        let rate = count as f64 / start.elapsed().as_secs_f64();
        let _ = RingSegment::unlink(&name);
        Ok(rate)
    }

    /// A Unix socket ping-pong of 64 bytes, half a round trip.
    fn unix_socket(&self, rounds: usize) -> Result<Latencies> {
        let path = self.scratch.0.join("pingpong.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path)?;
        let _far = self.helper(&["unix-echo", "--path", path.to_str().unwrap_or("")], false)?;
        let (mut stream, _) = listener.accept()?;
        let mut buffer = [0x42u8; 64];
        let mut samples = Latencies::default();
        for round in 0..rounds + rounds / 10 {
            let start = Instant::now();
            stream.write_all(&buffer)?;
            stream.read_exact(&mut buffer)?;
            if round >= rounds / 10 {
                samples.add(start.elapsed() / 2);
            }
        }
        Ok(samples)
    }

    /// Percent of one core used by the node's five services and 4 idle engines over 10 s.
    fn idle_cpu(&mut self, node: &LocalNode) -> Result<f64> {
        let mut engines = Vec::new();
        for _ in 0..4 {
            engines.push(self.engine("idle", false, true, &[])?.0);
        }
        let status = run_local(async { Ok(crate::status::node_status(&node.home).await) })?;
        let mut pids: Vec<u32> = status["services"].as_array().into_iter().flatten().filter_map(|s| s["pid"].as_u64().map(|p| p as u32)).collect();
        pids.extend(engines.iter().map(|e| e.0.id()));
        std::thread::sleep(Duration::from_secs(1));
        let before = cpu_ticks(&pids);
        let window = Duration::from_secs(10);
        std::thread::sleep(window);
        let used = (cpu_ticks(&pids) - before) as f64 / clock_ticks_per_second();
        Ok(used / window.as_secs_f64() * 100.0)
    }
}

/// User and system CPU ticks of `pids` (from /proc/PID/stat).
fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

pub fn run(rounds: usize, messages: u64, json_output: bool) -> Result<()> {
    let (mut bench, mut node) = Bench::start("netmachine-bench-local")?;
    let ns = |d: Duration| d.as_nanos() as u64;

    let mut adaptive = bench.latency(false, Sending::OneByOne, rounds)?;
    let mut borrowed = bench.latency(false, Sending::Batched, rounds)?;
    let mut spin = bench.latency(true, Sending::OneByOne, rounds)?;
    let mut socket = bench.latency(false, Sending::Socket, rounds / 4)?;
    let mut floor = bench.floor(rounds as u64 * 10)?;
    let mut ring_echo = bench.ring_echo(rounds as u64 * 10)?;
    let mut unix = bench.unix_socket(rounds)?;
    let msgs_64 = bench.throughput(64, Sending::OneByOne, messages)?;
    let msgs_1024 = bench.throughput(1024, Sending::OneByOne, messages)?;
    let batched_64 = bench.throughput(64, Sending::Batched, messages)?;
    let batched_1024 = bench.throughput(1024, Sending::Batched, messages)?;
    let socket_64 = bench.throughput(64, Sending::Socket, messages / 4)?;
    let bare_64 = bench.bare_ring(64, messages * 4)?;
    let bare_1024 = bench.bare_ring(1024, messages * 4)?;
    let idle = bench.idle_cpu(&node)?;
    node.stop();

    let report = json!({
        "latency_ns_p50": ns(adaptive.percentile(50.0)),
        "latency_ns_p99": ns(adaptive.percentile(99.0)),
        "borrowed_latency_ns_p50": ns(borrowed.percentile(50.0)),
        "borrowed_latency_ns_p99": ns(borrowed.percentile(99.0)),
        "spin_latency_ns_p50": ns(spin.percentile(50.0)),
        "spin_latency_ns_p99": ns(spin.percentile(99.0)),
        "floor_ns_p50": ns(floor.percentile(50.0)),
        "ring_echo_ns_p50": ns(ring_echo.percentile(50.0)),
        "socket_latency_ns_p50": ns(socket.percentile(50.0)),
        "unix_socket_ns_p50": ns(unix.percentile(50.0)),
        "msgs_per_s_64": msgs_64.round(),
        "msgs_per_s_1024": msgs_1024.round(),
        "batched_msgs_per_s_64": batched_64.round(),
        "batched_msgs_per_s_1024": batched_1024.round(),
        "socket_msgs_per_s_64": socket_64.round(),
        "bare_ring_msgs_per_s_64": bare_64.round(),
        "bare_ring_msgs_per_s_1024": bare_1024.round(),
        "idle_cpu_percent": (idle * 100.0).round() / 100.0,
        "rounds": rounds,
        "messages": messages,
    });
    if json_output {
        println!("{report}");
        return Ok(());
    }
    let f = |key: &str| report[key].as_f64().unwrap_or(0.0);
    println!("netmachine bench local: engines in separate processes on one node");
    println!("{}", super::ratio_line("one-way latency p50, adaptive", f("latency_ns_p50"), "floor: shared cache line p50", f("floor_ns_p50"), "ns"));
    println!("{}", super::ratio_line("one-way latency p99, adaptive", f("latency_ns_p99"), "floor: shared cache line p50", f("floor_ns_p50"), "ns"));
    println!("{}", super::ratio_line("one-way latency p50, send_all/poll", f("borrowed_latency_ns_p50"), "floor: shared cache line p50", f("floor_ns_p50"), "ns"));
    println!("{}", super::ratio_line("one-way latency p99, send_all/poll", f("borrowed_latency_ns_p99"), "floor: shared cache line p50", f("floor_ns_p50"), "ns"));
    println!("{}", super::ratio_line("one-way latency p50, busy-spin", f("spin_latency_ns_p50"), "floor: shared cache line p50", f("floor_ns_p50"), "ns"));
    println!("{}", super::ratio_line("one-way latency p99, busy-spin", f("spin_latency_ns_p99"), "floor: shared cache line p50", f("floor_ns_p50"), "ns"));
    println!("{}", super::ratio_line("one-way latency p50, bare ring echo", f("ring_echo_ns_p50"), "floor: shared cache line p50", f("floor_ns_p50"), "ns"));
    println!("{}", super::ratio_line("one-way latency p50, socket path", f("socket_latency_ns_p50"), "Unix socket ping-pong p50", f("unix_socket_ns_p50"), "ns"));
    println!("{}", super::ratio_line("throughput 64 B, engine to engine", f("msgs_per_s_64"), "bare ring, no messages, 64 B", f("bare_ring_msgs_per_s_64"), "msg/s"));
    println!("{}", super::ratio_line("throughput 1 KiB, engine to engine", f("msgs_per_s_1024"), "bare ring, no messages, 1 KiB", f("bare_ring_msgs_per_s_1024"), "msg/s"));
    println!("{}", super::ratio_line("throughput 64 B, batched", f("batched_msgs_per_s_64"), "bare ring, no messages, 64 B", f("bare_ring_msgs_per_s_64"), "msg/s"));
    println!("{}", super::ratio_line("throughput 1 KiB, batched", f("batched_msgs_per_s_1024"), "bare ring, no messages, 1 KiB", f("bare_ring_msgs_per_s_1024"), "msg/s"));
    println!("{}", super::ratio_line("throughput 64 B, socket path", f("socket_msgs_per_s_64"), "engine to engine, rings", f("msgs_per_s_64"), "msg/s"));
    println!("idle node with 4 engines attached, 10 s: {:.2}% of one core", f("idle_cpu_percent"));
    Ok(())
}
