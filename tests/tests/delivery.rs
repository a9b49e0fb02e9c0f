//! Delivery between nodes is acknowledged: an engine on node A writes numbered messages to an
//! engine on node B at a steady 500 a second while a service is killed with SIGKILL. When it is
//! either node's transport, every message A accepted arrives exactly once and in order: what the
//! dead transport held or had on the wire goes again from A's router, and what arrives twice is
//! dropped by B's. When it is A's router, killed while B's transport is stalled (SIGSTOP) so that
//! hundreds of frames wait unacknowledged, and B's transport killed next (so what A's transport
//! held for it is lost with the connection), the next router reads them back from its log and
//! sends them again. When it is B's router, every message arrives, in order, and its engine waits
//! for it to attach again; what B's router placed before the kill in frames not yet settled may
//! arrive twice.

use netmachine_engine::Engine;
use nix::sys::signal::Signal;
use netmachine_service::ServiceKind;
use netmachine_tests::{attach_engine, link, with_rpc, Node};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

const MESSAGES: u32 = 3000;
const EVERY: Duration = Duration::from_millis(2);
/// The kill lands after this many messages.
const KILL_AT: u32 = 1000;
/// Everything accepted must have arrived this long after the last was sent.
const SETTLE: Duration = Duration::from_secs(60);

/// Sends greetings until `receiver` gets one: B's engines are announced to A by then.
async fn until_routable(sender: &Engine, receiver: &Engine) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        let _ = sender.send(receiver.identity(), b"hello".to_vec()).await;
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), receiver.recv()).await {
            return;
        }
    }
    panic!("the engine on B never received a greeting from A");
}

/// What the test allows to arrive twice.
#[derive(Clone, Copy)]
enum Twice {
    Never,
    /// Placed by a router killed before it acknowledged: at most this many.
    AtMost(usize),
}

/// How the receiving engine takes its messages.
#[derive(Clone, Copy, PartialEq)]
enum Path {
    Rings,
    Socket,
}

/// Messages sent while B's transport is stalled, before the kill, when A's router is killed.
const STALLED: u32 = 300;

fn nothing_accepted_is_lost_when_killed(killed_node: usize, kind: ServiceKind, twice: Twice, path: Path) {
    // Killing the sending router matters when it holds frames B has not acknowledged.
    let stall = killed_node == 0 && kind == ServiceKind::Router;
    let nodes = [Node::up(), Node::up()];
    link(&nodes[0], &nodes[1]);
    with_rpc(async {
        let sender = attach_engine(&nodes[0], |_| {}).await;
        let receiver = Rc::new(attach_engine(&nodes[1], |options| options.ring = path == Path::Rings).await);
        until_routable(&sender, &receiver).await;
        let received = Rc::new(RefCell::new(Vec::new()));
        let (collect, into) = (receiver.clone(), received.clone());
        tokio::task::spawn_local(async move {
            while let Some(message) = collect.recv().await {
                if let Ok(n) = <[u8; 4]>::try_from(&message.body[..]) {
                    into.borrow_mut().push(u32::from_le_bytes(n));
                }
            }
        });
        let (mut accepted, mut refused) = (Vec::new(), 0);
        let mut tick = tokio::time::interval(EVERY);
        let mut killed = None;
        let mut stalled = None;
        for n in 0..MESSAGES {
            tick.tick().await;
            if stall && n == KILL_AT - STALLED {
                stalled = Some(nodes[1].signal(ServiceKind::Transport, Signal::SIGSTOP));
            }
            if n == KILL_AT {
                killed = Some((nodes[killed_node].kill9(kind), Instant::now()));
                if let Some(pid) = stalled.take() {
                    // What A's transport held for B's stalled one dies with the connection.
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill -9");
                }
            }
            match sender.send(receiver.identity(), n.to_le_bytes().to_vec()).await {
                Ok(_) => accepted.push(n),
                Err(_) => refused += 1,
            }
        }
        let (old_pid, killed_at) = killed.expect("the kill happened");
        let sent_at = Instant::now();
        let arrived = |received: &Vec<u32>| received.iter().collect::<std::collections::BTreeSet<_>>().len();
        while arrived(&received.borrow()) < accepted.len() && sent_at.elapsed() < SETTLE {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let complete_after = killed_at.elapsed();
        let received = received.borrow().clone();
        let mut seen = std::collections::BTreeSet::new();
        let duplicates = received.iter().filter(|n| !seen.insert(**n)).count();
        let missing: Vec<u32> = accepted.iter().copied().filter(|n| !seen.contains(n)).collect();
        let (a, b) = (&nodes[0], &nodes[1]);
        eprintln!(
            "node {killed_node}'s {} killed after {KILL_AT} of {MESSAGES}{}: {} accepted, {refused} refused, {} received, {} missing, {duplicates} duplicates; all in {complete_after:?} from the kill; A resumed {} frames from its log and resent {}, B suppressed {} duplicate messages and {} frames out of order",
            kind.name(),
            if stall { format!(", the last {STALLED} while B's transport was stalled") } else { String::new() },
            accepted.len(),
            received.len(),
            missing.len(),
            a.router_counter("remote_frames_resumed"),
            a.router_counter("remote_frames_resent"),
            b.router_counter("remote_duplicates_suppressed"),
            b.router_counter("remote_frames_out_of_order"),
        );
        let reasons = ["expired", "no_route", "queue_full", "engine_gone", "malformed", "bad_signature", "unreachable"];
        let drops: Vec<String> = reasons.iter().map(|r| format!("{r} {}/{}", a.router_counter(&format!("dropped_{r}")), b.router_counter(&format!("dropped_{r}")))).collect();
        eprintln!("drops counted on A/B: {}", drops.join(", "));
        assert_ne!(nodes[killed_node].pid(kind), Some(old_pid), "the service was restarted");
        assert!(missing.is_empty(), "{} accepted messages never arrived, the first {:?}", missing.len(), &missing[..missing.len().min(10)]);
        let mut first = std::collections::BTreeSet::new();
        let once: Vec<u32> = received.iter().copied().filter(|n| first.insert(*n)).collect();
        assert_eq!(once, accepted, "in the order they were sent");
        match twice {
            Twice::Never => assert_eq!(duplicates, 0, "messages arrived twice"),
            Twice::AtMost(bound) => assert!(duplicates <= bound, "{duplicates} messages arrived twice, over {bound}"),
        }
        assert!(accepted.len() as u32 > MESSAGES * 9 / 10, "A accepted most of what its engine sent ({refused} refused)");
        if stall {
            assert!(a.router_counter("remote_frames_resumed") > 0, "the restarted router sent frames again from its log");
        }
    });
}

#[test]
fn nothing_accepted_is_lost_or_doubled_when_the_receiving_nodes_transport_is_killed() {
    nothing_accepted_is_lost_when_killed(1, ServiceKind::Transport, Twice::Never, Path::Rings);
}

#[test]
fn nothing_accepted_is_lost_or_doubled_when_the_sending_nodes_transport_is_killed() {
    nothing_accepted_is_lost_when_killed(0, ServiceKind::Transport, Twice::Never, Path::Rings);
}

/// Frames a router numbered for another node are logged before transport gets them: the next
/// router sends what was not acknowledged again, in the same numbering, so B takes none twice.
#[test]
fn nothing_accepted_is_lost_or_doubled_when_the_sending_nodes_router_is_killed_holding_unacknowledged_frames() {
    nothing_accepted_is_lost_when_killed(0, ServiceKind::Router, Twice::Never, Path::Rings);
}

/// At 500 messages a second, what is placed in frames that had not settled when the router
/// was killed (settled frames are recorded before they are acknowledged).
#[test]
fn nothing_accepted_is_lost_when_the_receiving_nodes_router_is_killed() {
    nothing_accepted_is_lost_when_killed(1, ServiceKind::Router, Twice::AtMost(50), Path::Rings);
}

/// The same, the receiving engine on the socket path: a message counts as delivered once the
/// engine answered its delivery.
#[test]
fn nothing_accepted_is_lost_when_the_receiving_nodes_router_is_killed_under_a_socket_engine() {
    nothing_accepted_is_lost_when_killed(1, ServiceKind::Router, Twice::AtMost(50), Path::Socket);
}
