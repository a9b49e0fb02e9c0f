//! The connection pool, as a state machine: one connection per peer; dials that fall back
//! across every address of the peer's advert; capped, jittered backoff between rounds;
//! redials of permanent and wanted peers; idle close of the others; the choice between two
//! connections to one node (`settle`); the node's peer book; and each peer's queue of frames
//! (`queue`), which the shell writes out on the connection the pool chose. It is fed `Input`s with the
//! time in milliseconds and queues `Output`s for the shell; `poll_timeout` says when it wants a
//! `Timer`. It never reads a clock or touches a socket.

use super::book::{Admission, PeerBook, PeerInfo};
use super::queue::{Expiring, FrameQueue, Queued};
use super::settle::{self, Direction, Keep, Side};
use crate::events::Event;
use netmachine_schema::transport_capnp::ConnectRefusal;
use netmachine_schema::Identity;
use netmachine_service::Backoff;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

/// Milliseconds on the shell's monotonic clock (virtual in the simulation).
pub type Millis = u64;

/// A connection, as the shell numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// The pool's configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    pub reconnect_initial: Millis,
    pub reconnect_max: Millis,
    pub idle_timeout: Millis,
    /// How long one dial may take; also the window in which two connections count as a
    /// simultaneous dial (`settle`).
    pub connect_timeout: Millis,
    pub max_peers: usize,
    /// Frames waiting for one peer before the queue refuses more.
    pub peer_queue: usize,
    /// Accept nodes the book does not know, under the public network rules.
    pub public: bool,
    /// Which address families this node's endpoints can reach (IPv4, IPv6).
    pub ipv4: bool,
    pub ipv6: bool,
}

/// Something that happened, as the shell tells the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The identity store's record of a node changed (`None`: removed).
    Book { node: Identity, info: Option<PeerInfo> },
    /// The identity store's node records, all of them (after (re)connecting to it).
    BookLoaded(Vec<(Identity, PeerInfo)>),
    /// The round-trip time measured on a connection to `addr`, for choosing among addresses.
    Rtt { addr: SocketAddr, rtt: Duration },
    /// A frame was received from `node`.
    Activity { node: Identity },
    /// Close the connection to `node` and stop keeping it (the operator, or a misbehaving peer).
    Disconnect { node: Identity, reason: String },
    /// A dial the pool asked for failed.
    DialFailed { node: Identity, addr: SocketAddr, reason: String },
    /// A connection passed TLS, the handshake and admission.
    Established { node: Identity, conn: ConnId, direction: Direction, incarnation: u64 },
    /// A connection closed, for whatever reason.
    Closed { conn: ConnId, reason: String },
    /// The time `poll_timeout` named has come.
    Timer,
}

/// What the shell is to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Connect to `node` at `addr` (TLS, then the handshake), and report `Established` or
    /// `DialFailed`.
    Dial { node: Identity, addr: SocketAddr },
    /// Send `node`'s frames on `conn` from now on.
    Use { node: Identity, conn: ConnId },
    /// Close `conn`, telling the peer `detail`.
    Close { conn: ConnId, reason: CloseReason, detail: String },
    Event { node: Identity, event: Event },
    /// Nothing more will be sent to `node`: `dropped` frames that waited for it were dropped
    /// (and counted as unreachable).
    Forget { node: Identity, dropped: u64 },
}

/// Why a frame cannot be queued for a node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsendable {
    #[error("node {0} is not known here: add its advert (`netmachine peer add`)")]
    Unknown(Identity),
    /// For now only: the book has not been read from the identity store since this transport
    /// started, so a node it does not hold may yet be in it.
    #[error("the peer book is not loaded from the identity store yet")]
    BookNotLoaded,
    #[error("node {0} is banned (trust 0)")]
    Banned(Identity),
    #[error("the queue for node {0} is full")]
    Full(Identity),
}

/// What the shell writes next on a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<F> {
    Frame(F),
    /// Nothing waits: wait for a frame to be queued.
    Empty,
    /// The connection no longer carries the node's frames: stop writing on it.
    NotCurrent,
}

/// What the pool counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Frames whose expiry passed while they waited.
    pub frames_expired: u64,
    /// Frames dropped because their node could no longer be reached (unknown or banned).
    pub frames_unreachable: u64,
}

/// Why the pool closes a connection; the QUIC application close code tells the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Idle,
    /// Another connection to the same node stays (`settle`).
    Duplicate,
    /// A newer connection to the same node replaced it.
    Replaced,
    Requested,
    Banned,
}

impl CloseReason {
    pub fn code(self) -> u32 {
        match self {
            CloseReason::Idle => 0,
            CloseReason::Requested => 3,
            CloseReason::Duplicate => 4,
            CloseReason::Replaced => 5,
            CloseReason::Banned => 6,
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            CloseReason::Idle => "idle",
            CloseReason::Duplicate => "duplicate connection",
            CloseReason::Replaced => "replaced by a newer connection",
            CloseReason::Requested => "disconnected on request",
            CloseReason::Banned => "banned or removed by the operator",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Current {
    conn: ConnId,
    side: Side,
}

#[derive(Debug, Clone)]
enum Dial {
    Idle,
    /// Trying `order[next]`; `failures` says what the earlier addresses answered.
    Dialing { order: Vec<SocketAddr>, next: usize, failures: Vec<String> },
    /// A round failed: the next one starts at `until`.
    Waiting { until: Millis },
}

#[derive(Debug)]
struct Peer<F> {
    /// An operator asked to keep it connected (`connect`).
    wanted: bool,
    queue: FrameQueue<F>,
    current: Option<Current>,
    dial: Dial,
    backoff: Backoff,
    last_activity: Millis,
    failed_rounds: u64,
    last_failure: Option<String>,
}

/// Addresses whose round-trip time is remembered, per allowed peer.
const RTTS_PER_PEER: usize = 4;

/// The connection pool of one node, queueing frames of type `F`.
pub struct Pool<F = Queued> {
    node: Identity,
    incarnation: u64,
    policy: Policy,
    book: PeerBook,
    /// Whether the book was read from the identity store (`Input::BookLoaded`) at least once.
    book_loaded: bool,
    rtts: HashMap<SocketAddr, Duration>,
    /// Ordered, so that the same inputs give the same outputs in the same order.
    peers: BTreeMap<Identity, Peer<F>>,
    conns: HashMap<ConnId, Identity>,
    out: VecDeque<Output>,
    rng: u64,
    counters: Counters,
}

impl<F: Expiring> Pool<F> {
    /// The pool of `node`, whose transport tells peers it is `incarnation` (random per
    /// process); `seed` drives the backoff jitter.
    pub fn new(node: Identity, incarnation: u64, policy: Policy, seed: u64) -> Pool<F> {
        Pool {
            node,
            incarnation,
            policy,
            book: PeerBook::default(),
            book_loaded: false,
            rtts: HashMap::new(),
            peers: BTreeMap::new(),
            conns: HashMap::new(),
            out: VecDeque::new(),
            rng: seed | 1,
            counters: Counters::default(),
        }
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    pub fn book(&self) -> &PeerBook {
        &self.book
    }

    /// The next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When the pool next wants a `Timer`.
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.peers
            .iter()
            .filter_map(|(node, peer)| {
                let redial = match peer.dial {
                    Dial::Waiting { until } => Some(until),
                    _ => None,
                };
                let (idle, expiry) = match peer.current {
                    Some(_) if !self.needs(node, peer) => (Some(peer.last_activity + self.policy.idle_timeout), None),
                    Some(_) => (None, None),
                    // Unsent, frames expire on the pool's timer; sent, as the shell takes them.
                    None => (None, peer.queue.next_expiry()),
                };
                redial.into_iter().chain(idle).chain(expiry).min()
            })
            .min()
    }

    /// The connection `node`'s frames go on.
    pub fn current(&self, node: &Identity) -> Option<ConnId> {
        self.peers.get(node).and_then(|p| p.current.map(|c| c.conn))
    }

    pub fn connected_count(&self) -> usize {
        self.peers.values().filter(|p| p.current.is_some()).count()
    }

    /// Rounds of dialing `node` that failed, and what the last one said.
    pub fn failures(&self, node: &Identity) -> (u64, Option<&str>) {
        self.peers.get(node).map_or((0, None), |p| (p.failed_rounds, p.last_failure.as_deref()))
    }

    /// Whether `node` may connect to this node now.
    pub fn admit(&self, node: &Identity) -> Result<Admission, (ConnectRefusal, String)> {
        if !self.book_loaded {
            // Not yet known whether it is banned, or known at all: it may dial again soon.
            return Err((ConnectRefusal::OverCapacity, Unsendable::BookNotLoaded.to_string()));
        }
        let connected = self.connected_count() - usize::from(self.current(node).is_some());
        self.book.admit(node, self.policy.public, connected, self.policy.max_peers)
    }

    /// Whether the book lets this node reach `node`.
    fn reachable(&self, node: Identity) -> Result<(), Unsendable> {
        match self.book.get(&node) {
            None if !self.book_loaded => Err(Unsendable::BookNotLoaded),
            None => Err(Unsendable::Unknown(node)),
            Some(info) if info.trust == 0 => Err(Unsendable::Banned(node)),
            Some(_) => Ok(()),
        }
    }

    /// An operator asks to connect to `node` and keep it connected: refused for a node the
    /// book does not know or has banned (nothing is kept for it then).
    pub fn connect(&mut self, node: Identity, now: Millis) -> Result<(), Unsendable> {
        self.reachable(node)?;
        let peer = self.peer(node, now);
        peer.wanted = true;
        if matches!(peer.dial, Dial::Waiting { .. }) {
            peer.dial = Dial::Idle;
        }
        self.step(node, now);
        Ok(())
    }

    /// Queues `frame` for `node`, dialing it if it has no connection: refused (and given back)
    /// for a node the book bans, or does not know and that is not connected (a public peer), or
    /// before the book is loaded, and while `node`'s queue is full.
    pub fn queue(&mut self, node: Identity, frame: F, now: Millis) -> Result<(), (Unsendable, F)> {
        match self.reachable(node) {
            Err(Unsendable::Unknown(_)) if self.current(&node).is_some() => {}
            Err(refusal) => return Err((refusal, frame)),
            Ok(()) => {}
        }
        let peer = self.peer(node, now);
        peer.queue.push(frame).map_err(|frame| (Unsendable::Full(node), frame))?;
        self.step(node, now);
        Ok(())
    }

    /// The next frame to write on `conn` for `node`; what expired on the way is dropped and
    /// counted.
    pub fn next_frame(&mut self, node: Identity, conn: ConnId, now: Millis) -> Next<F> {
        let Some(peer) = self.peers.get_mut(&node).filter(|p| p.current.is_some_and(|c| c.conn == conn)) else {
            return Next::NotCurrent;
        };
        let (frame, expired) = peer.queue.pop_live(now);
        self.counters.frames_expired += expired;
        match frame {
            Some(frame) => {
                peer.last_activity = now;
                Next::Frame(frame)
            }
            None => Next::Empty,
        }
    }

    /// Gives back a frame whose write failed: it goes first when `node` is connected again.
    pub fn put_back(&mut self, node: Identity, frame: F) {
        match self.peers.get_mut(&node) {
            Some(peer) => peer.queue.put_back(frame),
            None => self.counters.frames_unreachable += 1,
        }
    }

    /// Frames waiting for any peer.
    pub fn queued(&self) -> usize {
        self.peers.values().map(|p| p.queue.len()).sum()
    }

    /// Each peer with frames waiting, and how many.
    pub fn queued_by_peer(&self) -> Vec<(Identity, usize)> {
        self.peers.iter().filter(|(_, p)| p.queue.len() > 0).map(|(node, p)| (*node, p.queue.len())).collect()
    }

    /// Takes every queued frame (the node is stopping): they will not be sent.
    pub fn take_queued(&mut self) -> Vec<F> {
        self.peers.values_mut().flat_map(|p| p.queue.take_all()).collect()
    }

    pub fn handle(&mut self, input: Input, now: Millis) {
        match input {
            Input::Book { node, info } => {
                let banned_or_gone = info.as_ref().is_none_or(|i| i.trust == 0);
                self.book.update(node, info);
                if banned_or_gone {
                    self.drop_current(node, CloseReason::Banned);
                    if let Some(peer) = self.peers.get_mut(&node) {
                        peer.wanted = false;
                    }
                }
                self.step(node, now);
            }
            Input::BookLoaded(records) => {
                self.book_loaded = true;
                self.book.clear();
                for (node, info) in records {
                    self.book.update(node, Some(info));
                }
                let nodes: Vec<Identity> = self.book.permanent().chain(self.peers.keys().copied()).collect();
                for node in nodes {
                    self.step(node, now);
                }
            }
            Input::Rtt { addr, rtt } => {
                if self.rtts.contains_key(&addr) || self.rtts.len() < RTTS_PER_PEER * self.policy.max_peers {
                    self.rtts.insert(addr, rtt);
                }
            }
            Input::Activity { node } => {
                if let Some(peer) = self.peers.get_mut(&node) {
                    peer.last_activity = now;
                }
            }
            Input::Disconnect { node, reason } => {
                let Some(peer) = self.peers.get_mut(&node) else { return };
                peer.wanted = false;
                if let Some(current) = peer.current.take() {
                    self.out.push_back(Output::Close { conn: current.conn, reason: CloseReason::Requested, detail: reason.clone() });
                    self.out.push_back(Output::Event { node, event: Event::Disconnected(reason) });
                }
                // Not redialed at once, even if permanent: the disconnect had a reason.
                let until = now + self.backoff(node);
                if let Some(peer) = self.peers.get_mut(&node) {
                    peer.dial = Dial::Waiting { until };
                }
                self.step(node, now);
            }
            Input::DialFailed { node, addr, reason } => self.dial_failed(node, addr, reason, now),
            Input::Established { node, conn, direction, incarnation } => {
                self.established(node, conn, Side { direction, incarnation, since: now }, now)
            }
            Input::Closed { conn, reason } => {
                let Some(node) = self.conns.remove(&conn) else { return };
                let Some(peer) = self.peers.get_mut(&node) else { return };
                if peer.current.is_some_and(|c| c.conn == conn) {
                    peer.current = None;
                    self.out.push_back(Output::Event { node, event: Event::Disconnected(reason) });
                    self.step(node, now);
                }
            }
            Input::Timer => {
                let nodes: Vec<Identity> = self.peers.keys().copied().collect();
                for node in nodes {
                    let Some(peer) = self.peers.get(&node) else { continue };
                    let idle = peer.current.is_some()
                        && !self.needs(&node, peer)
                        && now >= peer.last_activity + self.policy.idle_timeout;
                    if idle {
                        self.drop_current(node, CloseReason::Idle);
                    }
                    if let Some(peer) = self.peers.get_mut(&node) {
                        if matches!(peer.dial, Dial::Waiting { until } if until <= now) {
                            peer.dial = Dial::Idle;
                        }
                        if peer.current.is_none() {
                            self.counters.frames_expired += peer.queue.drop_expired(now);
                        }
                    }
                    self.step(node, now);
                }
            }
        }
    }

    fn peer(&mut self, node: Identity, now: Millis) -> &mut Peer<F> {
        let backoff = Backoff::new(
            Duration::from_millis(self.policy.reconnect_initial),
            Duration::from_millis(self.policy.reconnect_max),
        );
        let queue = FrameQueue::new(self.policy.peer_queue);
        self.peers.entry(node).or_insert_with(|| Peer {
            wanted: false,
            queue,
            current: None,
            dial: Dial::Idle,
            backoff,
            last_activity: now,
            failed_rounds: 0,
            last_failure: None,
        })
    }

    fn is_permanent(&self, node: &Identity) -> bool {
        self.book.get(node).is_some_and(|p| p.permanent && p.trust > 0)
    }

    /// Whether the pool keeps a connection to `node`, or dials one.
    fn needs(&self, node: &Identity, peer: &Peer<F>) -> bool {
        peer.wanted || !peer.queue.is_empty() || self.is_permanent(node)
    }

    /// Stops keeping `node`: what waits for it is dropped and counted.
    fn forget(&mut self, node: Identity) {
        let Some(mut peer) = self.peers.remove(&node) else { return };
        let dropped = peer.queue.take_all().len() as u64;
        self.counters.frames_unreachable += dropped;
        self.out.push_back(Output::Forget { node, dropped });
    }

    /// Closes `node`'s current connection, if any, and says it is disconnected.
    fn drop_current(&mut self, node: Identity, reason: CloseReason) {
        let Some(peer) = self.peers.get_mut(&node) else { return };
        if let Some(current) = peer.current.take() {
            self.out.push_back(Output::Close { conn: current.conn, reason, detail: reason.text().to_string() });
            self.out.push_back(Output::Event { node, event: Event::Disconnected(reason.text().to_string()) });
        }
    }

    /// Moves `node` on: starts a round of dials if it needs a connection and has none, or
    /// forgets it if it needs nothing.
    fn step(&mut self, node: Identity, now: Millis) {
        if !self.peers.contains_key(&node) {
            if !self.is_permanent(&node) {
                return;
            }
            self.peer(node, now);
        }
        let Some(peer) = self.peers.get(&node) else { return };
        if peer.current.is_some() || !matches!(peer.dial, Dial::Idle) {
            return;
        }
        if !self.needs(&node, peer) {
            return self.forget(node);
        }
        let reachable = |a: &SocketAddr| if a.is_ipv4() { self.policy.ipv4 } else { self.policy.ipv6 };
        let order = self.book.dial_order(&node, reachable, |a| self.rtts.get(a).copied());
        if let Err(refusal) = self.reachable(node) {
            // Nothing can ever be sent to it: say why, and let go of what waits for it.
            self.out.push_back(Output::Event { node, event: Event::ConnectFailed(refusal.to_string()) });
            return self.forget(node);
        }
        if order.is_empty() {
            return self.round_failed(node, format!("node {node}'s advert has no address this node can reach"), now);
        }
        let engaged = self.peers.values().filter(|p| p.current.is_some() || matches!(p.dial, Dial::Dialing { .. })).count();
        if engaged >= self.policy.max_peers {
            let reason = format!("{} nodes are connected or being dialed (transport.max_peers)", self.policy.max_peers);
            return self.round_failed(node, reason, now);
        }
        let addr = order[0];
        if let Some(peer) = self.peers.get_mut(&node) {
            peer.dial = Dial::Dialing { order, next: 0, failures: Vec::new() };
        }
        self.out.push_back(Output::Dial { node, addr });
    }

    fn dial_failed(&mut self, node: Identity, addr: SocketAddr, reason: String, now: Millis) {
        let Some(peer) = self.peers.get_mut(&node) else { return };
        let Dial::Dialing { order, next, failures } = &mut peer.dial else { return };
        if order.get(*next) != Some(&addr) {
            return;
        }
        failures.push(format!("{addr}: {reason}"));
        if peer.current.is_some() {
            // Connected meanwhile (the peer dialed us): the round is over.
            peer.dial = Dial::Idle;
            return;
        }
        *next += 1;
        match order.get(*next) {
            Some(addr) => self.out.push_back(Output::Dial { node, addr: *addr }),
            None => {
                let reason = failures.join("; ");
                self.round_failed(node, reason, now);
            }
        }
    }

    /// Every address failed: say so, and wait before the next round.
    fn round_failed(&mut self, node: Identity, reason: String, now: Millis) {
        let until = now + self.backoff(node);
        let Some(peer) = self.peers.get_mut(&node) else { return };
        peer.failed_rounds += 1;
        peer.last_failure = Some(reason.clone());
        peer.dial = Dial::Waiting { until };
        self.out.push_back(Output::Event { node, event: Event::ConnectFailed(reason) });
    }

    fn established(&mut self, node: Identity, conn: ConnId, side: Side, now: Millis) {
        self.conns.insert(conn, node);
        let window = self.policy.connect_timeout;
        let local = self.node;
        let peer = self.peer(node, now);
        let dialing = matches!(peer.dial, Dial::Dialing { .. });
        if !dialing || side.direction == Direction::Dialed {
            peer.dial = Dial::Idle;
        }
        peer.backoff.reset();
        peer.last_activity = now;
        let candidate = Current { conn, side };
        match peer.current {
            None => {
                peer.current = Some(candidate);
                self.out.push_back(Output::Use { node, conn });
                self.out.push_back(Output::Event { node, event: Event::Connected });
            }
            Some(current) => match settle::keep(&local, &node, &current.side, &side, window) {
                Keep::Current => self.out.push_back(Output::Close { conn, reason: CloseReason::Duplicate, detail: CloseReason::Duplicate.text().into() }),
                Keep::New => {
                    peer.current = Some(candidate);
                    self.out.push_back(Output::Close { conn: current.conn, reason: CloseReason::Replaced, detail: CloseReason::Replaced.text().into() });
                    self.out.push_back(Output::Use { node, conn });
                    // The peer's transport restarted, or a simultaneous dial settled on the
                    // other connection: what was written on the old one may be lost, so to the
                    // node this is a new connection (the router announces its engines again).
                    self.out.push_back(Output::Event { node, event: Event::Connected });
                }
            },
        }
    }

    /// The delay before `node`'s next round (`Backoff`: doubling to the cap, less up to a
    /// quarter so that many nodes do not redial in step), its jitter drawn from the pool's seed.
    fn backoff(&mut self, node: Identity) -> Millis {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let noise = (self.rng >> 48) as u16;
        let Some(peer) = self.peers.get_mut(&node) else { return self.policy.reconnect_max };
        peer.backoff.next_delay_with(noise).as_millis() as Millis
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmachine_schema::Keypair;

    fn policy() -> Policy {
        Policy {
            reconnect_initial: 200,
            reconnect_max: 30_000,
            idle_timeout: 30_000,
            connect_timeout: 5_000,
            max_peers: 8,
            peer_queue: 4,
            public: false,
            ipv4: true,
            ipv6: true,
        }
    }

    fn info(permanent: bool, ports: &[u16]) -> PeerInfo {
        PeerInfo {
            trust: 128,
            permanent,
            advert_version: 1,
            addrs: ports.iter().map(|p| (SocketAddr::from(([127, 0, 0, 1], *p)), 100 - *p as u8)).collect(),
        }
    }

    fn frame(n: u8, expiry: Option<Millis>) -> Queued {
        Queued { bytes: vec![n], expiry }
    }

    fn outputs(pool: &mut Pool) -> Vec<Output> {
        std::iter::from_fn(|| pool.poll_output()).collect()
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn pool_knowing(peer: Identity, permanent: bool, ports: &[u16]) -> Pool {
        let mut pool = Pool::new(Keypair::generate().identity(), 1, policy(), 7);
        pool.handle(Input::Book { node: peer, info: Some(info(permanent, ports)) }, 0);
        pool
    }

    #[test]
    fn a_connect_dials_once_however_often_it_is_asked() {
        let peer = Keypair::generate().identity();
        let mut pool = pool_knowing(peer, false, &[1]);
        pool.connect(peer, 0).unwrap();
        pool.connect(peer, 1).unwrap();
        pool.queue(peer, frame(1, None), 2).unwrap();
        assert_eq!(outputs(&mut pool), vec![Output::Dial { node: peer, addr: addr(1) }]);
        pool.handle(Input::Established { node: peer, conn: ConnId(1), direction: Direction::Dialed, incarnation: 9 }, 3);
        pool.connect(peer, 4).unwrap();
        assert_eq!(
            outputs(&mut pool),
            vec![Output::Use { node: peer, conn: ConnId(1) }, Output::Event { node: peer, event: Event::Connected }]
        );
    }

    #[test]
    fn dials_fall_back_across_every_address_then_back_off_and_start_over() {
        let peer = Keypair::generate().identity();
        let mut pool = pool_knowing(peer, true, &[1, 2, 3]);
        assert_eq!(outputs(&mut pool), vec![Output::Dial { node: peer, addr: addr(1) }]);
        pool.handle(Input::DialFailed { node: peer, addr: addr(1), reason: "timed out".into() }, 10);
        assert_eq!(outputs(&mut pool), vec![Output::Dial { node: peer, addr: addr(2) }]);
        pool.handle(Input::DialFailed { node: peer, addr: addr(2), reason: "refused".into() }, 20);
        pool.handle(Input::DialFailed { node: peer, addr: addr(3), reason: "unreachable".into() }, 30);
        let out = outputs(&mut pool);
        assert_eq!(out[0], Output::Dial { node: peer, addr: addr(3) });
        let Output::Event { event: Event::ConnectFailed(reason), .. } = &out[1] else { panic!("{out:?}") };
        assert!(reason.contains("127.0.0.1:1: timed out") && reason.contains("127.0.0.1:3: unreachable"), "{reason}");
        assert_eq!(pool.failures(&peer).0, 1);
        let at = pool.poll_timeout().unwrap();
        assert!((30 + 150..=30 + 200).contains(&at), "first backoff within 200 ms less a quarter: {at}");
        pool.handle(Input::Timer, at - 1);
        assert!(outputs(&mut pool).is_empty());
        pool.handle(Input::Timer, at);
        assert_eq!(outputs(&mut pool), vec![Output::Dial { node: peer, addr: addr(1) }]);
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets_on_a_connection() {
        let peer = Keypair::generate().identity();
        let mut pool = pool_knowing(peer, true, &[1]);
        let mut now = 0;
        let mut delays = Vec::new();
        for _ in 0..12 {
            outputs(&mut pool);
            pool.handle(Input::DialFailed { node: peer, addr: addr(1), reason: "no".into() }, now);
            let at = pool.poll_timeout().unwrap();
            delays.push(at - now);
            now = at;
            pool.handle(Input::Timer, now);
        }
        for (delay, base) in delays.iter().zip([200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]) {
            assert!(*delay <= base && *delay >= base * 3 / 4, "{delay} vs {base}");
        }
        outputs(&mut pool);
        pool.handle(Input::Established { node: peer, conn: ConnId(1), direction: Direction::Dialed, incarnation: 1 }, now);
        pool.handle(Input::Closed { conn: ConnId(1), reason: "lost".into() }, now);
        pool.handle(Input::DialFailed { node: peer, addr: addr(1), reason: "no".into() }, now);
        assert!(pool.poll_timeout().unwrap() - now <= 200);
    }

    #[test]
    fn a_connection_from_a_restarted_peer_retires_the_old_one_at_once() {
        let peer = Keypair::generate().identity();
        let mut pool = pool_knowing(peer, true, &[1]);
        outputs(&mut pool);
        pool.handle(Input::Established { node: peer, conn: ConnId(1), direction: Direction::Dialed, incarnation: 11 }, 5);
        outputs(&mut pool);
        // The peer's transport was killed and came back: it dials with a new incarnation, long
        // before QUIC would time the old connection out.
        pool.handle(Input::Established { node: peer, conn: ConnId(2), direction: Direction::Accepted, incarnation: 12 }, 900);
        assert_eq!(
            outputs(&mut pool),
            vec![
                Output::Close { conn: ConnId(1), reason: CloseReason::Replaced, detail: "replaced by a newer connection".into() },
                Output::Use { node: peer, conn: ConnId(2) },
                Output::Event { node: peer, event: Event::Connected },
            ]
        );
        assert_eq!(pool.current(&peer), Some(ConnId(2)));
        // The old connection's close, when it comes, changes nothing.
        pool.handle(Input::Closed { conn: ConnId(1), reason: "replaced".into() }, 901);
        assert!(outputs(&mut pool).is_empty());
        assert_eq!(pool.current(&peer), Some(ConnId(2)));
    }

    #[test]
    fn a_lost_connection_to_a_permanent_peer_is_redialed_at_once() {
        let peer = Keypair::generate().identity();
        let mut pool = pool_knowing(peer, true, &[1]);
        outputs(&mut pool);
        pool.handle(Input::Established { node: peer, conn: ConnId(1), direction: Direction::Dialed, incarnation: 1 }, 5);
        outputs(&mut pool);
        pool.handle(Input::Closed { conn: ConnId(1), reason: "timed out".into() }, 50);
        assert_eq!(
            outputs(&mut pool),
            vec![
                Output::Event { node: peer, event: Event::Disconnected("timed out".into()) },
                Output::Dial { node: peer, addr: addr(1) },
            ]
        );
    }

    #[test]
    fn a_requested_disconnect_waits_a_backoff_before_redialing_a_permanent_peer() {
        let peer = Keypair::generate().identity();
        let mut pool = pool_knowing(peer, true, &[1]);
        outputs(&mut pool);
        pool.handle(Input::Established { node: peer, conn: ConnId(1), direction: Direction::Dialed, incarnation: 1 }, 0);
        outputs(&mut pool);
        pool.handle(Input::Disconnect { node: peer, reason: "bad frame signature".into() }, 10);
        assert_eq!(
            outputs(&mut pool),
            vec![
                Output::Close { conn: ConnId(1), reason: CloseReason::Requested, detail: "bad frame signature".into() },
                Output::Event { node: peer, event: Event::Disconnected("bad frame signature".into()) },
            ]
        );
        let at = pool.poll_timeout().unwrap();
        assert!(at > 10);
        pool.handle(Input::Timer, at);
        assert_eq!(outputs(&mut pool), vec![Output::Dial { node: peer, addr: addr(1) }]);
    }

    #[test]
    fn an_idle_ephemeral_connection_closes_and_the_peer_is_forgotten() {
        let peer = Keypair::generate().identity();
        let mut pool = pool_knowing(peer, false, &[1]);
        pool.queue(peer, frame(1, None), 0).unwrap();
        outputs(&mut pool);
        pool.handle(Input::Established { node: peer, conn: ConnId(1), direction: Direction::Dialed, incarnation: 1 }, 10);
        assert_eq!(pool.poll_timeout(), None, "a peer with frames waiting is not idle");
        assert_eq!(pool.next_frame(peer, ConnId(1), 20), Next::Frame(frame(1, None)));
        assert_eq!(pool.next_frame(peer, ConnId(1), 20), Next::Empty);
        pool.handle(Input::Activity { node: peer }, 100);
        outputs(&mut pool);
        assert_eq!(pool.poll_timeout(), Some(100 + 30_000));
        pool.handle(Input::Timer, 30_099);
        assert!(outputs(&mut pool).is_empty());
        pool.handle(Input::Timer, 30_100);
        assert_eq!(
            outputs(&mut pool),
            vec![
                Output::Close { conn: ConnId(1), reason: CloseReason::Idle, detail: "idle".into() },
                Output::Event { node: peer, event: Event::Disconnected("idle".into()) },
                Output::Forget { node: peer, dropped: 0 },
            ]
        );
        assert_eq!(pool.poll_timeout(), None);
    }

    #[test]
    fn until_the_book_is_loaded_no_node_is_refused_as_unknown_nor_admitted() {
        let mut pool = Pool::new(Keypair::generate().identity(), 1, Policy { public: true, ..policy() }, 7);
        let (peer, banned) = (Keypair::generate().identity(), Keypair::generate().identity());
        // A restarted transport is handed frames, and dialed, before it has read the identity
        // store: whether a node is known, or banned, is not known yet.
        assert_eq!(pool.queue(peer, frame(1, None), 0), Err((Unsendable::BookNotLoaded, frame(1, None))));
        assert_eq!(pool.connect(peer, 0), Err(Unsendable::BookNotLoaded));
        assert!(matches!(pool.admit(&banned), Err((ConnectRefusal::OverCapacity, _))), "a public node admits no one yet");
        assert!(outputs(&mut pool).is_empty());
        let banned_info = PeerInfo { trust: 0, ..info(false, &[2]) };
        pool.handle(Input::BookLoaded(vec![(peer, info(false, &[1])), (banned, banned_info)]), 1);
        pool.queue(peer, frame(1, None), 2).unwrap();
        assert_eq!(outputs(&mut pool), vec![Output::Dial { node: peer, addr: addr(1) }]);
        assert!(matches!(pool.admit(&banned), Err((ConnectRefusal::Denied, _))));
        assert_eq!(pool.admit(&Keypair::generate().identity()), Ok(Admission::Public));
    }

    #[test]
    fn unknown_nodes_cannot_be_connected_and_leave_nothing_behind() {
        let mut pool = Pool::new(Keypair::generate().identity(), 1, policy(), 7);
        pool.handle(Input::BookLoaded(Vec::new()), 0);
        let stranger = Keypair::generate().identity();
        assert_eq!(pool.connect(stranger, 0), Err(Unsendable::Unknown(stranger)));
        assert_eq!(pool.queue(stranger, frame(1, None), 0), Err((Unsendable::Unknown(stranger), frame(1, None))));
        assert!(outputs(&mut pool).is_empty());
        // A stranger connected from the public network can be sent to while it stays; when it
        // goes, what waits for it is let go and counted, with the reason.
        pool.handle(Input::Established { node: stranger, conn: ConnId(1), direction: Direction::Accepted, incarnation: 1 }, 0);
        pool.queue(stranger, frame(2, None), 1).unwrap();
        outputs(&mut pool);
        pool.handle(Input::Closed { conn: ConnId(1), reason: "gone".into() }, 2);
        let out = outputs(&mut pool);
        assert!(matches!(&out[1], Output::Event { event: Event::ConnectFailed(r), .. } if r.contains("not known")), "{out:?}");
        assert_eq!(out[2], Output::Forget { node: stranger, dropped: 1 });
        assert_eq!(pool.counters().frames_unreachable, 1);
        assert_eq!(pool.poll_timeout(), None);
    }

    #[test]
    fn frames_waiting_for_a_connection_expire_on_the_pools_timer_and_are_counted() {
        let peer = Keypair::generate().identity();
        let mut pool = pool_knowing(peer, false, &[1]);
        pool.queue(peer, frame(1, Some(50)), 0).unwrap();
        pool.queue(peer, frame(2, None), 0).unwrap();
        assert_eq!(pool.poll_timeout(), Some(50));
        pool.handle(Input::Timer, 50);
        assert_eq!(pool.counters().frames_expired, 1);
        assert_eq!(pool.poll_timeout(), None, "the frame left never expires; the dial is under way");
        pool.handle(Input::Established { node: peer, conn: ConnId(1), direction: Direction::Dialed, incarnation: 1 }, 60);
        assert_eq!(pool.next_frame(peer, ConnId(1), 60), Next::Frame(frame(2, None)));
    }

    #[test]
    fn a_full_queue_refuses_and_a_frame_whose_write_failed_goes_first_on_the_next_connection() {
        let peer = Keypair::generate().identity();
        let mut pool = pool_knowing(peer, true, &[1]);
        for n in 0..policy().peer_queue as u8 {
            pool.queue(peer, frame(n, None), 0).unwrap();
        }
        assert_eq!(pool.queue(peer, frame(99, None), 0), Err((Unsendable::Full(peer), frame(99, None))));
        pool.handle(Input::Established { node: peer, conn: ConnId(1), direction: Direction::Dialed, incarnation: 1 }, 1);
        assert_eq!(pool.next_frame(peer, ConnId(2), 2), Next::NotCurrent, "only the chosen connection carries frames");
        let Next::Frame(first) = pool.next_frame(peer, ConnId(1), 2) else { panic!("a frame waits") };
        pool.queue(peer, frame(99, None), 2).unwrap();
        pool.handle(Input::Closed { conn: ConnId(1), reason: "reset".into() }, 3);
        pool.put_back(peer, first);
        assert_eq!(pool.next_frame(peer, ConnId(1), 3), Next::NotCurrent);
        pool.handle(Input::Established { node: peer, conn: ConnId(2), direction: Direction::Dialed, incarnation: 2 }, 4);
        assert_eq!(pool.next_frame(peer, ConnId(2), 4), Next::Frame(frame(0, None)));
    }

    #[test]
    fn dials_stop_at_max_peers() {
        let mut policy = policy();
        policy.max_peers = 2;
        let mut pool = Pool::new(Keypair::generate().identity(), 1, policy, 7);
        let peers: Vec<Identity> = (0..3).map(|_| Keypair::generate().identity()).collect();
        for peer in &peers {
            pool.handle(Input::Book { node: *peer, info: Some(info(true, &[1])) }, 0);
        }
        let dials = outputs(&mut pool).into_iter().filter(|o| matches!(o, Output::Dial { .. })).count();
        assert_eq!(dials, 2);
        assert_eq!(pool.failures(&peers[2]).0, 1);
        assert!(pool.failures(&peers[2]).1.unwrap().contains("max_peers"));
    }

    #[test]
    fn a_banned_peer_is_disconnected_and_not_redialed() {
        let peer = Keypair::generate().identity();
        let mut pool = pool_knowing(peer, true, &[1]);
        outputs(&mut pool);
        pool.handle(Input::Established { node: peer, conn: ConnId(1), direction: Direction::Dialed, incarnation: 1 }, 0);
        outputs(&mut pool);
        let mut banned = info(true, &[1]);
        banned.trust = 0;
        pool.handle(Input::Book { node: peer, info: Some(banned) }, 5);
        let out = outputs(&mut pool);
        assert!(matches!(out[0], Output::Close { conn: ConnId(1), reason: CloseReason::Banned, .. }), "{out:?}");
        assert!(!out.iter().any(|o| matches!(o, Output::Dial { .. })), "{out:?}");
        assert_eq!(pool.current(&peer), None);
    }
}
