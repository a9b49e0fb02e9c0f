//! Delivery between nodes is acknowledged: an engine on node A writes numbered messages to an
//! engine on node B at a steady 500 a second while a service is killed with SIGKILL. When it is
//! either node's transport, every message A accepted arrives exactly once and in order: what the
//! dead transport held or had on the wire goes again from A's router, and what arrives twice is
//! dropped by B's; when A's transport comes back while A's identity store is stalled, it holds
//! the frames it is handed until it has read its peers. When it is A's router, killed while B's
//! transport is stalled (SIGSTOP) so that hundreds of frames wait unacknowledged, and B's
//! transport killed next (so what A's transport held for it is lost with the connection), the
//! next router reads them back from its log and sends them again. When it is B's router, every
//! message arrives, once, in order, and its engine waits for it to attach again: what B's router
//! placed before the kill in frames not yet settled is placed again by the next one, and B's
//! engine drops that second copy by its stamp.
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

/// How the receiving engine takes its messages.
#[derive(Clone, Copy, PartialEq)]
enum Path {
    Rings,
    Socket,
}

/// Messages sent while B's transport is stalled, before the kill, when A's router is killed.
const STALLED: u32 = 300;

/// How long A's identity store stays stalled after A's next transport is up.
const STORE_STALLED: Duration = Duration::from_millis(600);

/// What is stalled (SIGSTOP, as a hung process would be) around the kill.
#[derive(Clone, Copy, PartialEq)]
enum Stall {
    Nothing,
    /// B's transport, `STALLED` messages before the kill, so that A's router holds frames B has
    /// not acknowledged; it is killed right after the kill.
    ReceiversTransport,
    /// A's identity store, from the kill of A's transport until `STORE_STALLED` after the next
    /// transport is up: that one is handed frames before it can read its peers.
    SendersIdentityStore,
}

/// Messages B's engine leaves unread before the kill, sent in a burst, when B's router is killed
/// with frames half placed (`Backlog::Unread`): its inbox ring (`RING_BYTES`) and the SDK's queue (16) hold about
/// a hundred of them, the rest wait in frames not settled.
const UNREAD: u32 = 600;
const RING_BYTES: u32 = 16 << 10;

/// What B's engine does before the kill.
#[derive(Clone, Copy, PartialEq)]
enum Backlog {
    /// It reads throughout.
    None,
    /// It stops reading `UNREAD` messages before the kill and goes on right after it.
    Unread,
}

fn signal(pid: u64, signal: Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap_or_else(|e| panic!("{signal} to {pid}: {e}"));
}

fn nothing_accepted_is_lost_or_doubled_when_killed(killed_node: usize, kind: ServiceKind, path: Path) {
    // Killing the sending router matters when it holds frames B has not acknowledged.
    let stall = if killed_node == 0 && kind == ServiceKind::Router { Stall::ReceiversTransport } else { Stall::Nothing };
    nothing_accepted_is_lost_or_doubled(killed_node, kind, path, Backlog::None, stall);
}

fn nothing_accepted_is_lost_or_doubled(killed_node: usize, kind: ServiceKind, path: Path, backlog: Backlog, stall: Stall) {
    let ring = format!("router.ring_bytes={RING_BYTES}");
    let nodes = [Node::up(), if backlog == Backlog::Unread { Node::up_with(&[&ring]) } else { Node::up() }];
    link(&nodes[0], &nodes[1]);
    with_rpc(async {
        let sender = attach_engine(&nodes[0], |_| {}).await;
        let receiver = Rc::new(
            attach_engine(&nodes[1], |options| {
                options.ring = path == Path::Rings;
                if backlog == Backlog::Unread {
                    options.inbox_capacity = 16;
                }
            })
            .await,
        );
        until_routable(&sender, &receiver).await;
        let received = Rc::new(RefCell::new(Vec::new()));
        let reading = Rc::new(std::cell::Cell::new(true));
        let (collect, into, read) = (receiver.clone(), received.clone(), reading.clone());
        tokio::task::spawn_local(async move {
            loop {
                if !read.get() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                let Some(message) = collect.recv().await else { break };
                if let Ok(n) = <[u8; 4]>::try_from(&message.body[..]) {
                    into.borrow_mut().push(u32::from_le_bytes(n));
                }
            }
        });
        let (mut accepted, mut refused) = (Vec::new(), 0);
        let mut tick = tokio::time::interval(EVERY);
        let mut killed: Option<(u64, Instant)> = None;
        let mut stalled = None;
        let mut store_stalled = None;
        let mut transport_up_at = None;
        for n in 0..MESSAGES {
            // The unread ones go in one burst, so that frames carry many messages each.
            if backlog == Backlog::None || !(KILL_AT - UNREAD..KILL_AT).contains(&n) {
                tick.tick().await;
            }
            if backlog == Backlog::Unread && n == KILL_AT - UNREAD {
                reading.set(false);
            }
            if stall == Stall::ReceiversTransport && n == KILL_AT - STALLED {
                stalled = Some(nodes[1].signal(ServiceKind::Transport, Signal::SIGSTOP));
            }
            if let (Some(store), Some((old, at))) = (store_stalled, killed) {
                // A's next transport is up once the old one is gone and the socket takes a
                // connection.
                let gone = nix::sys::signal::kill(nix::unistd::Pid::from_raw(old as i32), None).is_err();
                if transport_up_at.is_none() && gone && std::os::unix::net::UnixStream::connect(nodes[0].socket(ServiceKind::Transport)).is_ok() {
                    transport_up_at = Some(Instant::now());
                }
                if transport_up_at.is_none() && at.elapsed() > Duration::from_secs(5) {
                    signal(store, Signal::SIGCONT);
                    panic!("A's transport was not started again within 5 s");
                }
                if transport_up_at.is_some_and(|up| up.elapsed() >= STORE_STALLED) {
                    signal(store, Signal::SIGCONT);
                    store_stalled = None;
                }
            }
            if n == KILL_AT {
                if backlog == Backlog::Unread {
                    // The kill lands once B's router holds messages its engine has no room for.
                    let start = Instant::now();
                    let held = || {
                        let router = nodes[1].service(ServiceKind::Router);
                        let queues = router["labelled"].as_array().cloned().unwrap_or_default();
                        queues.iter().filter(|q| q["name"] == "engine_queue_depth").filter_map(|q| q["value"].as_u64()).sum::<u64>()
                    };
                    while held() < u64::from(UNREAD) / 2 {
                        assert!(start.elapsed() < Duration::from_secs(20), "B's router never held messages back");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                // The pids are read first: a status report waits for a stalled service.
                let victim = nodes[killed_node].pid(kind).unwrap_or_else(|| panic!("{} has no pid", kind.name()));
                if stall == Stall::SendersIdentityStore {
                    let store = nodes[0].pid(ServiceKind::IdentityStore).expect("the identity store's pid");
                    signal(store, Signal::SIGSTOP);
                    store_stalled = Some(store);
                }
                signal(victim, Signal::SIGKILL);
                killed = Some((victim, Instant::now()));
                reading.set(true);
                if let Some(pid) = stalled.take() {
                    // What A's transport held for B's stalled one dies with the connection.
                    signal(pid, Signal::SIGKILL);
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
            "node {killed_node}'s {} killed after {KILL_AT} of {MESSAGES}{}: {} accepted, {refused} refused, {} received, {} missing, {duplicates} duplicates; all in {complete_after:?} from the kill; A resumed {} frames from its log and resent {}, B suppressed {} duplicate messages and {} frames out of order, B's engine dropped {} second copies",
            kind.name(),
            match stall {
                Stall::Nothing => String::new(),
                Stall::ReceiversTransport => format!(", the last {STALLED} while B's transport was stalled"),
                Stall::SendersIdentityStore => format!(", A's identity store stalled until {STORE_STALLED:?} after its next transport was up"),
            },
            accepted.len(),
            received.len(),
            missing.len(),
            a.router_counter("remote_frames_resumed"),
            a.router_counter("remote_frames_resent"),
            b.router_counter("remote_duplicates_suppressed"),
            b.router_counter("remote_frames_out_of_order"),
            receiver.duplicates_dropped(),
        );
        let reasons = ["expired", "no_route", "queue_full", "engine_gone", "malformed", "bad_signature", "unreachable"];
        let drops: Vec<String> = reasons.iter().map(|r| format!("{r} {}/{}", a.router_counter(&format!("dropped_{r}")), b.router_counter(&format!("dropped_{r}")))).collect();
        eprintln!("drops counted on A/B: {}", drops.join(", "));
        assert_ne!(nodes[killed_node].pid(kind), Some(old_pid), "the service was restarted");
        assert!(missing.is_empty(), "{} accepted messages never arrived, the first {:?}", missing.len(), &missing[..missing.len().min(10)]);
        let mut first = std::collections::BTreeSet::new();
        let once: Vec<u32> = received.iter().copied().filter(|n| first.insert(*n)).collect();
        assert_eq!(once, accepted, "in the order they were sent");
        assert_eq!(duplicates, 0, "messages arrived twice");
        assert!(accepted.len() as u32 > MESSAGES * 9 / 10, "A accepted most of what its engine sent ({refused} refused)");
        if stall == Stall::ReceiversTransport {
            assert!(a.router_counter("remote_frames_resumed") > 0, "the restarted router sent frames again from its log");
        }
        if stall == Stall::SendersIdentityStore {
            assert!(a.counter(ServiceKind::Transport, "frames_held_for_book") > 0, "A's next transport was handed frames before it read its peers");
        }
        if backlog == Backlog::Unread {
            assert!(receiver.duplicates_dropped() > 0, "the restarted router placed messages of frames not settled again");
        }
    });
}

#[test]
fn nothing_accepted_is_lost_or_doubled_when_the_receiving_nodes_transport_is_killed() {
    nothing_accepted_is_lost_or_doubled_when_killed(1, ServiceKind::Transport, Path::Rings);
}

#[test]
fn nothing_accepted_is_lost_or_doubled_when_the_sending_nodes_transport_is_killed() {
    nothing_accepted_is_lost_or_doubled_when_killed(0, ServiceKind::Transport, Path::Rings);
}

/// A transport started again is handed the frames its router kept before it has read its peers
/// from the identity store (stalled here, so that the reading waits): it holds them rather than
/// refusing them as frames for an unknown node, which would drop them.
#[test]
fn nothing_accepted_is_lost_or_doubled_when_the_sending_nodes_transport_is_killed_and_comes_back_before_its_peers_are_read() {
    nothing_accepted_is_lost_or_doubled(0, ServiceKind::Transport, Path::Rings, Backlog::None, Stall::SendersIdentityStore);
}

/// Frames a router numbered for another node are logged before transport gets them: the next
/// router sends what was not acknowledged again, in the same numbering, so B takes none twice.
#[test]
fn nothing_accepted_is_lost_or_doubled_when_the_sending_nodes_router_is_killed_holding_unacknowledged_frames() {
    nothing_accepted_is_lost_or_doubled_when_killed(0, ServiceKind::Router, Path::Rings);
}

/// Frames settled are recorded before they are acknowledged, and what was placed from a frame
/// not yet settled is placed again with the same stamp: the engine drops that copy.
#[test]
fn nothing_accepted_is_lost_or_doubled_when_the_receiving_nodes_router_is_killed() {
    nothing_accepted_is_lost_or_doubled_when_killed(1, ServiceKind::Router, Path::Rings);
}

/// The same, the receiving engine on the socket path: a message counts as delivered once the
/// engine answered its delivery.
/// B's engine leaves its queue full, so that frames wait half placed when its router is killed:
/// the next router places them again whole, and the engine drops the copies by their stamps.
#[test]
fn nothing_accepted_is_lost_or_doubled_when_the_receiving_nodes_router_is_killed_with_frames_half_placed() {
    nothing_accepted_is_lost_or_doubled(1, ServiceKind::Router, Path::Rings, Backlog::Unread, Stall::Nothing);
}

#[test]
fn nothing_accepted_is_lost_or_doubled_when_the_receiving_nodes_router_is_killed_under_a_socket_engine() {
    nothing_accepted_is_lost_or_doubled_when_killed(1, ServiceKind::Router, Path::Socket);
}
