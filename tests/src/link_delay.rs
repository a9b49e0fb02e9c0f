//! Delay on a link, for kernels without `netem`: the UDP packets a network namespace sends and
//! receives are queued to user space (iptables' NFQUEUE, legacy tables, in that namespace) and a
//! thread of this process, moved into the namespace, lets each one go after the delay plus a
//! random jitter. Packets are released by due time, so jitter reorders them as a real path does.
//! The rules go and every held packet is released when the `LinkDelay` is dropped.

use nix::sched::{setns, CloneFlags};
use std::collections::BinaryHeap;
use std::cmp::Reverse;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The netfilter queue the rules send packets to (one per namespace: namespaces do not share).
const QUEUE: u16 = 0;

/// Packets held at most; past that the kernel drops them (loss, as a full router queue).
const HELD_MAX: u32 = 16_384;

/// How long the releasing thread sleeps when nothing is due or arriving.
const IDLE: Duration = Duration::from_millis(1);

/// Delay on every UDP packet in and out of one network namespace while it lives.
pub struct LinkDelay {
    pid: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<DelayFigures>>,
}

/// What a `LinkDelay` did.
#[derive(Debug, Clone, Copy, Default)]
pub struct DelayFigures {
    pub packets: u64,
    pub reordered: u64,
}

/// Whether this machine can delay a namespace's packets: `iptables-legacy` with the NFQUEUE
/// target and `nsenter`.
pub fn link_delay_possible() -> bool {
    let present = |tool: &str| Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
    present("iptables-legacy") && present("nsenter")
}

impl LinkDelay {
    /// Delays the packets of the network namespace of process `pid` by `delay` plus up to
    /// `jitter`, each way.
    pub fn start(pid: &str, delay: Duration, jitter: Duration) -> LinkDelay {
        let namespace = std::fs::File::open(format!("/proc/{pid}/ns/net")).expect("the process's network namespace");
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            setns(&namespace, CloneFlags::CLONE_NEWNET).expect("enter the network namespace");
            let mut queue = nfq::Queue::open().expect("open a netfilter queue");
            queue.bind(QUEUE).expect("bind the netfilter queue");
            queue.set_copy_range(QUEUE, 0).expect("copy packets' metadata only");
            queue.set_queue_max_len(QUEUE, HELD_MAX).expect("set the queue's length");
            queue.set_nonblocking(true);
            ready_tx.send(()).expect("the starting thread waits");
            release_late(&mut queue, &stopping, delay, jitter)
        });
        ready.recv_timeout(Duration::from_secs(10)).expect("the delaying thread bound its queue");
        let link = LinkDelay { pid: pid.to_string(), stop, thread: Some(thread) };
        link.rules("-I");
        link
    }

    /// Adds (`-I`) or deletes (`-D`) the rules that queue the namespace's UDP packets.
    fn rules(&self, op: &str) {
        for chain in ["INPUT", "OUTPUT"] {
            let queue = QUEUE.to_string();
            let args = ["-t", &self.pid, "-n", "iptables-legacy", op, chain, "-p", "udp", "-j", "NFQUEUE", "--queue-num", &queue, "--queue-bypass"];
            let out = Command::new("nsenter").args(args).output().expect("nsenter runs");
            assert!(out.status.success(), "iptables {op} {chain}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }

    /// Removes the delay: the rules go, then every held packet is let through.
    pub fn stop(mut self) -> DelayFigures {
        self.finish()
    }

    fn finish(&mut self) -> DelayFigures {
        let Some(thread) = self.thread.take() else { return DelayFigures::default() };
        self.rules("-D");
        self.stop.store(true, Ordering::Release);
        thread.join().unwrap_or_default()
    }
}

impl Drop for LinkDelay {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Takes packets from `queue` and accepts each once its time has come; when told to stop, accepts
/// whatever is still held.
fn release_late(queue: &mut nfq::Queue, stop: &AtomicBool, delay: Duration, jitter: Duration) -> DelayFigures {
    let mut held: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut packets: std::collections::HashMap<u64, nfq::Message> = std::collections::HashMap::new();
    let (mut figures, mut seed, mut last_released) = (DelayFigures::default(), 0x9e37_79b9_7f4a_7c15u64, 0u64);
    loop {
        let stopping = stop.load(Ordering::Acquire);
        let mut arrived = false;
        while let Ok(mut packet) = queue.recv() {
            arrived = true;
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let extra = jitter.mul_f64((seed % 1000) as f64 / 1000.0);
            figures.packets += 1;
            packet.set_verdict(nfq::Verdict::Accept);
            held.push(Reverse((Instant::now() + delay + extra, figures.packets)));
            packets.insert(figures.packets, packet);
        }
        let now = Instant::now();
        while let Some(Reverse((due, n))) = held.peek().copied() {
            if due > now && !stopping {
                break;
            }
            held.pop();
            if n < last_released {
                figures.reordered += 1;
            }
            last_released = last_released.max(n);
            if let Some(packet) = packets.remove(&n) {
                let _ = queue.verdict(packet);
            }
        }
        if stopping {
            return figures;
        }
        if !arrived {
            std::thread::sleep(IDLE);
        }
    }
}
