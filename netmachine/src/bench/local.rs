//! `netmachine bench local`: engines in separate processes on one node. One-way latency
//! engine -> engine (half a round trip; past the first messages, by the pair's direct channels)
//! with adaptive waiting and with busy-spin, throughput for 64 B and 1 KiB bodies, the same over
//! the socket path (engine -> router -> engine), and the CPU an idle node with 4 engines uses;
//! against, from the same run, two processes ping-ponging one shared cache line (the floor), the
//! bare ring with no messages or checks (one way, and echoing records the size of a 64-byte
//! message's), and a Unix socket ping-pong. Each figure and its baseline are measured in turns,
//! `CHUNKS` chunks each, and the median chunk is the figure (see `run`). The two sides of every
//! latency pair, figure and baseline alike, run one on each of two cores (`cores`).

use super::cores::Cores;
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

/// Turns in which each figure and its baseline are measured (see `run`).
const CHUNKS: usize = 10;

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
    /// Where the two sides of a latency pair run.
    cores: Cores,
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
    /// A fresh node in a scratch home (with `set` besides a free port), running until the
    /// returned `LocalNode` stops.
    pub(super) fn start(label: &str, set: &[String]) -> Result<(Bench, LocalNode)> {
        let netmachine = std::env::current_exe().context("cannot find this executable")?;
        let scratch = ScratchDir::new(label)?;
        let set: Vec<String> = std::iter::once(LISTEN_ANY_PORT.to_string()).chain(set.iter().cloned()).collect();
        let mut node = LocalNode::start(&netmachine, &scratch.0.join("node"), &set)?;
        run_local(node.wait_ready(Duration::from_secs(30)))?;
        let router = node.home.socket(ServiceKind::Router);
        Ok((Bench { netmachine, scratch, router, keys: 0, cores: Cores::find() }, node))
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

    /// An engine of this process and an echoing engine helper, both sending as `sending` says
    /// and waiting as `spin` says; kept for the whole run (an adaptive echo sleeps in between).
    fn echo_pair(&mut self, spin: bool, sending: Sending) -> Result<EchoPair> {
        let ring = sending != Sending::Socket;
        let (echo_process, echo) = self.engine("echo", spin, ring, if sending == Sending::Batched { &["--poll"] } else { &[] })?;
        self.cores.place_far(echo_process.0.id());
        let engine = self.attach(spin, ring)?;
        Ok(EchoPair { _echo_process: echo_process, echo, engine, sending })
    }

    /// Messages per second from one engine to another, counted until the last arrived. On the
    /// rings the sender writes as fast as the outbox takes, one message per call (`Sending::
    /// OneByOne`) or `BATCH` (`send_all_blocking`, and the receiver takes them with
    /// `poll_blocking`); on the socket it keeps many sends in flight, as an engine that cares
    /// about throughput would.
    pub(super) fn throughput(&mut self, size: usize, sending: Sending, count: u64) -> Result<f64> {
        Ok(count as f64 / self.time_throughput(size, sending, count)?.as_secs_f64())
    }

    /// How long `count` messages took, as `throughput` sends them.
    fn time_throughput(&mut self, size: usize, sending: Sending, count: u64) -> Result<Duration> {
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
        Ok(start.elapsed())
    }

    fn segment(&self, label: &str, capacity: usize) -> Result<(String, RingSegment)> {
        let mut suffix = [0u8; 6];
        getrandom::fill(&mut suffix).map_err(|e| anyhow::anyhow!("{e}"))?;
        let name = format!("/netmachine-bench-{}-{label}", hex::encode(suffix));
        let segment = RingSegment::create(&name, &Keypair::generate().identity().0, capacity)?;
        Ok((name, segment))
    }

    /// The floor: two processes ping-ponging one shared cache line, half a round trip, for
    /// `rounds` (the first tenth not counted).
    fn floor(&self, rounds: u64, samples: &mut Latencies) -> Result<()> {
        let (name, segment) = self.segment("floor", 4096)?;
        let far = self.helper(&["floor", "--segment", &name, "--rounds", &rounds.to_string()], false)?;
        self.cores.place_far(far.0.id());
        let word = cache_line(&segment);
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
        Ok(())
    }

    /// The bare ring between two processes, both spinning: a record of a 64-byte message's size
    /// (its 104-byte head and the body) each way, raw, no engine code; half a round trip, for
    /// `rounds` (the first tenth not counted).
    fn ring_echo(&self, rounds: u64, samples: &mut Latencies) -> Result<()> {
        let (name, segment) = self.segment("echo", 1 << 16)?;
        let far = self.helper(&["ring-echo", "--segment", &name, "--rounds", &rounds.to_string()], false)?;
        self.cores.place_far(far.0.id());
        let (mut outbox, mut inbox) = segment.engine_side()?;
        let record = vec![0x42; netmachine_engine::ring::records::MESSAGE_HEAD + 64];
        for round in 0..rounds {
            let start = Instant::now();
            while outbox.try_write(Kind::Message, &[&record]).is_err() {
                std::hint::spin_loop();
            }
            while !inbox.published() || inbox.peek()?.is_none() {
                std::hint::spin_loop();
            }
            inbox.consume();
            if round >= rounds / 10 {
                samples.add(start.elapsed() / 2);
            }
        }
        let _ = RingSegment::unlink(&name);
        Ok(())
    }

    /// The bare ring between two processes, no router: how long `count` records took.
    fn bare_ring(&self, size: usize, count: u64) -> Result<Duration> {
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
        let took = start.elapsed();
        let _ = RingSegment::unlink(&name);
        Ok(took)
    }

    /// A Unix socket echo, for a ping-pong of 64 bytes.
    fn unix_echo(&self) -> Result<UnixEcho> {
        let path = self.scratch.0.join("pingpong.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path)?;
        let far = self.helper(&["unix-echo", "--path", path.to_str().unwrap_or("")], false)?;
        self.cores.place_far(far.0.id());
        let (stream, _) = listener.accept()?;
        Ok(UnixEcho { _far: far, stream })
    }

    /// Percent of one core used by the node (its supervisor and five services) and 4 idle
    /// engines over 10 s. The node's processes are found as the supervisor's children, not by
    /// asking for its status: a status call counts a connection in every service, which each
    /// would then write to its tally file within the window. Of two counts, the larger: the
    /// processes' clock ticks (10 ms each: an idle node uses less than one in 10 s) and their
    /// threads' run time in nanoseconds (which misses a thread that ends within the window).
    fn idle_cpu(&mut self, node: &LocalNode) -> Result<f64> {
        let mut engines = Vec::new();
        for _ in 0..4 {
            engines.push(self.engine("idle", false, true, &[])?.0);
        }
        let mut pids = vec![node.pid()];
        pids.extend(children_of(node.pid()));
        if pids.len() < 6 {
            bail!("found {} processes of the node, not its supervisor and five services", pids.len());
        }
        pids.extend(engines.iter().map(|e| e.0.id()));
        std::thread::sleep(Duration::from_secs(1));
        let (ticks, run) = (cpu_ticks(&pids), run_times(&pids));
        let window = Duration::from_secs(10);
        std::thread::sleep(window);
        let by_ticks = (cpu_ticks(&pids) - ticks) as f64 / clock_ticks_per_second();
        let by_run = run_times(&pids).iter().map(|(thread, ns)| ns.saturating_sub(run.get(thread).copied().unwrap_or(0))).sum::<u64>() as f64 / 1e9;
        Ok(by_ticks.max(by_run) / window.as_secs_f64() * 100.0)
    }
}

/// An engine of this process and the echoing engine it measures round trips to.
struct EchoPair {
    _echo_process: HelperProcess,
    echo: Identity,
    engine: Engine,
    sending: Sending,
}

impl EchoPair {
    /// Half of each of `rounds` round trips, after a tenth more not counted: `Sending::Batched`
    /// sends with `send_all_blocking` (a batch of one) and takes with `poll_blocking`, both ends.
    fn measure(&self, rounds: usize, samples: &mut Latencies) -> Result<()> {
        let body = vec![0x42; 64];
        round_trips(rounds, samples, || {
            if self.sending == Sending::Batched {
                self.engine.send_all_blocking(self.echo, &[&body])?;
                while self.engine.poll_blocking(1, ECHO_WAIT, |_| {}).context("the echo engine closed")? == 0 {}
            } else {
                self.engine.send_blocking(self.echo, body.clone())?;
                self.engine.recv_blocking().context("the echo engine closed")?;
            }
            Ok(())
        })
    }
}

/// A Unix socket to an echoing helper process.
struct UnixEcho {
    _far: HelperProcess,
    stream: std::os::unix::net::UnixStream,
}

impl UnixEcho {
    /// Half of each of `rounds` round trips of 64 bytes, after a tenth more not counted.
    fn measure(&mut self, rounds: usize, samples: &mut Latencies) -> Result<()> {
        let mut buffer = [0x42u8; 64];
        round_trips(rounds, samples, || {
            self.stream.write_all(&buffer)?;
            Ok(self.stream.read_exact(&mut buffer)?)
        })
    }
}

/// Half of each of `rounds` round trips that `round_trip` makes, after a tenth more not counted
/// (to warm up).
fn round_trips(rounds: usize, samples: &mut Latencies, mut round_trip: impl FnMut() -> Result<()>) -> Result<()> {
    for round in 0..rounds + rounds / 10 {
        let start = Instant::now();
        round_trip()?;
        if round >= rounds / 10 {
            samples.add(start.elapsed() / 2);
        }
    }
    Ok(())
}

/// A latency figure measured in chunks: every sample, and each chunk's median.
#[derive(Default)]
struct Chunked {
    samples: Latencies,
    medians: Vec<Duration>,
}

impl Chunked {
    /// Measures one more chunk.
    fn chunk(&mut self, measure: impl FnOnce(&mut Latencies) -> Result<()>) -> Result<()> {
        let mut chunk = Latencies::default();
        measure(&mut chunk)?;
        self.medians.push(chunk.percentile(50.0));
        self.samples.extend(chunk);
        Ok(())
    }

    /// The median of the chunks' medians: what the placement most chunks ran on gave, where a
    /// median of all the samples would mix placements in their proportions.
    fn p50(&self) -> Duration {
        median(self.medians.clone())
    }

    /// Of all the samples: a tail is whatever caused it.
    fn p99(&mut self) -> Duration {
        self.samples.percentile(99.0)
    }
}

/// Messages per second of each chunk of a throughput figure.
#[derive(Default)]
struct Rates(Vec<f64>);

impl Rates {
    /// Measures one more chunk of `messages`, which `measure` says how long took.
    fn chunk(&mut self, messages: u64, measure: impl FnOnce(u64) -> Result<Duration>) -> Result<()> {
        let took = measure(messages)?;
        self.0.push(messages as f64 / took.as_secs_f64().max(f64::MIN_POSITIVE));
        Ok(())
    }

    /// The median chunk's rate.
    fn per_second(&self) -> f64 {
        median(self.0.clone())
    }
}

/// The middle one of `values` (the upper of the two middle ones of an even number).
fn median<T: Copy + Default + PartialOrd>(mut values: Vec<T>) -> T {
    values.sort_unstable_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    values.get(values.len() / 2).copied().unwrap_or_default()
}

/// The processes whose parent is `parent` (from /proc/PID/stat).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // After the command's closing parenthesis: state, then the parent's pid.
            stat.rsplit_once(')').and_then(|(_, fields)| fields.split_whitespace().nth(1)?.parse::<u32>().ok()) == Some(parent)
        })
        .collect()
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

/// How long each thread of `pids` has run, in nanoseconds (from /proc/PID/task/TID/schedstat),
/// by thread id.
fn run_times(pids: &[u32]) -> std::collections::HashMap<u32, u64> {
    pids.iter()
        .filter_map(|pid| std::fs::read_dir(format!("/proc/{pid}/task")).ok())
        .flatten()
        .filter_map(|task| {
            let task = task.ok()?;
            let thread = task.file_name().to_str()?.parse::<u32>().ok()?;
            let schedstat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            Some((thread, schedstat.split_whitespace().next()?.parse::<u64>().ok()?))
        })
        .collect()
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

pub fn run(rounds: usize, messages: u64, json_output: bool, set: &[String]) -> Result<()> {
    let (mut bench, mut node) = Bench::start("netmachine-bench-local", set)?;
    let ns = |d: Duration| d.as_nanos() as u64;

    // Each figure and its baseline are measured in turns, a chunk at a time: this machine's host
    // moves its cores about (a shared line's ping-pong goes between about 40 and 240 ns from one
    // second to the next), and a figure measured a phase apart from its baseline could be
    // compared with another machine's.
    let chunk = |total: usize| (total / CHUNKS).max(1);
    let (adaptive_pair, poll_pair, socket_pair) =
        (bench.echo_pair(false, Sending::OneByOne)?, bench.echo_pair(false, Sending::Batched)?, bench.echo_pair(false, Sending::Socket)?);
    let mut unix_echo = bench.unix_echo()?;
    let [mut adaptive, mut borrowed, mut spin, mut socket, mut floor, mut ring_echo, mut unix] = std::array::from_fn(|_| Chunked::default());
    let [mut msgs_64, mut msgs_1024, mut batched_64, mut batched_1024, mut socket_64, mut bare_64, mut bare_1024] = std::array::from_fn(|_| Rates::default());
    let per_chunk = chunk(messages as usize) as u64;
    for _ in 0..CHUNKS {
        // Each latency pair measured with this thread on one core and its far side on the other.
        let near = |measure: &mut dyn FnMut() -> Result<()>| bench.cores.near(measure);
        floor.chunk(|samples| near(&mut || bench.floor(chunk(rounds * 10) as u64, samples)))?;
        adaptive.chunk(|samples| near(&mut || adaptive_pair.measure(chunk(rounds), samples)))?;
        borrowed.chunk(|samples| near(&mut || poll_pair.measure(chunk(rounds), samples)))?;
        ring_echo.chunk(|samples| near(&mut || bench.ring_echo(chunk(rounds * 10) as u64, samples)))?;
        socket.chunk(|samples| near(&mut || socket_pair.measure(chunk(rounds / 4), samples)))?;
        unix.chunk(|samples| near(&mut || unix_echo.measure(chunk(rounds), samples)))?;
        // A busy-spinning echo takes a core even when idle: it lives for its chunk only (and is
        // made before this thread is placed, so that no thread of its engine stays there).
        let spin_pair = bench.echo_pair(true, Sending::OneByOne)?;
        spin.chunk(|samples| bench.cores.near(|| spin_pair.measure(chunk(rounds), samples)))?;
        drop(spin_pair);
        for (size, bare, one_by_one, batched) in [(64, &mut bare_64, &mut msgs_64, &mut batched_64), (1024, &mut bare_1024, &mut msgs_1024, &mut batched_1024)] {
            bare.chunk(per_chunk * 4, |count| bench.bare_ring(size, count))?;
            one_by_one.chunk(per_chunk, |count| bench.time_throughput(size, Sending::OneByOne, count))?;
            batched.chunk(per_chunk, |count| bench.time_throughput(size, Sending::Batched, count))?;
        }
        socket_64.chunk((per_chunk / 4).max(1), |count| bench.time_throughput(64, Sending::Socket, count))?;
    }
    drop((adaptive_pair, poll_pair, socket_pair, unix_echo));
    let idle = bench.idle_cpu(&node)?;
    node.stop();

    let report = json!({
        "latency_ns_p50": ns(adaptive.p50()),
        "latency_ns_p99": ns(adaptive.p99()),
        "borrowed_latency_ns_p50": ns(borrowed.p50()),
        "borrowed_latency_ns_p99": ns(borrowed.p99()),
        "spin_latency_ns_p50": ns(spin.p50()),
        "spin_latency_ns_p99": ns(spin.p99()),
        "floor_ns_p50": ns(floor.p50()),
        "ring_echo_ns_p50": ns(ring_echo.p50()),
        "socket_latency_ns_p50": ns(socket.p50()),
        "unix_socket_ns_p50": ns(unix.p50()),
        "msgs_per_s_64": msgs_64.per_second().round(),
        "msgs_per_s_1024": msgs_1024.per_second().round(),
        "batched_msgs_per_s_64": batched_64.per_second().round(),
        "batched_msgs_per_s_1024": batched_1024.per_second().round(),
        "socket_msgs_per_s_64": socket_64.per_second().round(),
        "bare_ring_msgs_per_s_64": bare_64.per_second().round(),
        "bare_ring_msgs_per_s_1024": bare_1024.per_second().round(),
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
