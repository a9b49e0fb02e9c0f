//! The simulated world: N nodes, each a transport connection pool (`netmachine_transport::core`)
//! (and, with `World::with_routers`, a router core: see `routing`) with a minimal shell that
//! sends the frames the pool queued on the connection it chose, joined by a fake network with per-link delay, packet loss (QUIC retransmits: a lost
//! packet costs a probe timeout, not the frame), partitions, and node crashes and restarts.
//! Time is virtual and every choice comes from one seeded `Rng`: a seed replays a run exactly.
//!
//! What a real shell learns late, the world tells late: a peer that crashed or was cut off is
//! noticed only when QUIC's idle timeout would notice it (`QUIC_IDLE`), unless a connection from
//! it arrives first. Frames written to a connection whose other end is gone are lost, and
//! counted as such (`Report::lost_in_flight`).

use crate::rng::Rng;
use netmachine_schema::{Identity, Keypair};
use netmachine_transport::core::{ConnId, Direction, Expiring, Input, Millis, Next, Output, PeerInfo, Policy, Pool};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;

/// How long QUIC takes to declare a silent peer gone (its idle timeout, keep-alives on).
pub const QUIC_IDLE: Millis = 30_000;

/// A frame, numbered per sender and destination so that loss, order and duplicates show; with
/// the sealed bytes of a router frame when the nodes run routers.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    pub src: usize,
    pub dst: usize,
    pub seq: u64,
    pub bytes: Option<Rc<Vec<u8>>>,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Frame({}->{} #{}, {} bytes)", self.src, self.dst, self.seq, self.bytes.as_ref().map_or(0, |b| b.len()))
    }
}

impl Expiring for Frame {
    fn expiry(&self) -> Option<Millis> {
        None
    }
}

/// What a run counted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub sent: u64,
    /// Frames the sender's pool would not queue (a full queue, or a node it cannot reach).
    pub refused: u64,
    /// Frames a pool dropped because their node could no longer be reached.
    pub unreachable: u64,
    pub delivered: u64,
    pub duplicates: u64,
    /// Frames that arrived after a gap in their sender's numbering (something before was lost).
    pub gaps: u64,
    /// Written to a connection whose other end was gone or cut off.
    pub lost_in_flight: u64,
    /// Waiting in a node's queue when it crashed.
    pub lost_in_crash: u64,
    pub dials: u64,
    pub dial_failures: u64,
    /// Connections closed because another one to the same node stayed or replaced them.
    pub connections_settled: u64,
}

#[derive(Debug)]
pub(crate) enum Event {
    /// An input for `node`'s pool, if the node still runs the same incarnation.
    Input { node: usize, incarnation: u64, input: Input },
    /// A dial from `from` reaches `to`.
    DialArrives { from: usize, incarnation: u64, to: usize, addr: SocketAddr },
    /// A dial answer reaches the dialer, establishing the connection there.
    AnswerArrives { conn: u64 },
    FrameArrives { conn: u64, frame: Frame },
    /// The close of `conn` by one side reaches the other.
    CloseArrives { conn: u64, to: usize, reason: String },
    /// QUIC's idle timeout on `conn`, cut off since: both ends close if it is still cut.
    IdleTimeout { conn: u64 },
    Timer { node: usize, incarnation: u64 },
    /// The identity store of `node` answers its router's lookup of `id`.
    Lookup { node: usize, id: Identity },
    RouterTimer { node: usize },
    /// An input for `node`'s pubsub core.
    PubSub { node: usize, input: netmachine_pubsub::core::Input },
    PubSubTimer { node: usize },
}

/// A simulated connection: its two ends, and whether each is still open.
#[derive(Debug)]
struct Connection {
    dialer: usize,
    answerer: usize,
    open: [bool; 2],
    /// When the last frame each side sent arrives: a stream delivers in order.
    last_arrival: [Millis; 2],
}

impl Connection {
    fn side(&self, node: usize) -> usize {
        usize::from(node == self.answerer)
    }

    fn other(&self, node: usize) -> usize {
        if node == self.dialer { self.answerer } else { self.dialer }
    }
}

pub(crate) struct Node {
    pub(crate) keypair: Keypair,
    pub(crate) key: Identity,
    addr: SocketAddr,
    pub(crate) up: bool,
    incarnation: u64,
    pool: Pool<Frame>,
    using: BTreeMap<usize, u64>,
    timer_at: Option<Millis>,
    next_seq: BTreeMap<usize, u64>,
    last_seen: BTreeMap<usize, u64>,
    /// The node's router, when the world runs routers (`World::with_routers`).
    pub(crate) router: Option<crate::routing::NodeRouter>,
    /// The node's pubsub service, when the world runs it (`World::with_pubsub`).
    pub(crate) pubsub: Option<crate::pubsub::NodePubSub>,
}

/// The simulation.
pub struct World {
    pub now: Millis,
    pub seed: u64,
    pub(crate) rng: Rng,
    pub delay: Millis,
    pub loss: f64,
    pub policy: Policy,
    events: BinaryHeap<Reverse<(Millis, u64)>>,
    pending: HashMap<u64, Event>,
    next_event: u64,
    pub(crate) nodes: Vec<Node>,
    conns: BTreeMap<u64, Connection>,
    next_conn: u64,
    cut: BTreeSet<(usize, usize)>,
    pub report: Report,
    /// What the routers' engines sent and received, when the world runs routers.
    pub traffic: crate::routing::Traffic,
    /// The last number each engine gave a message to each other engine, and the last that arrived.
    pub(crate) traffic_seq: HashMap<(Identity, Identity), u64>,
    pub(crate) traffic_last: HashMap<(Identity, Identity), u64>,
    /// Topics, and the events the engines received, when the world runs pubsub.
    pub topics: crate::pubsub::PubSubWorld,
    /// Dials sent and not yet answered (or failed).
    dials_in_flight: u64,
    /// A running hash of every event dispatched, with its time: equal for a replayed seed.
    pub fingerprint: u64,
}

/// The policy the simulated pools run with: the node's defaults.
pub fn default_policy() -> Policy {
    Policy {
        reconnect_initial: 200,
        reconnect_max: 30_000,
        idle_timeout: 30_000,
        connect_timeout: 5_000,
        max_peers: 256,
        peer_queue: 1024,
        public: false,
        ipv4: true,
        ipv6: false,
    }
}

impl World {
    /// `n` nodes that all know each other as permanent peers, started at time 0, with links of
    /// `delay` ms one way.
    pub fn new(seed: u64, n: usize, delay: Millis, loss: f64) -> World {
        let mut rng = Rng::new(seed);
        let policy = default_policy();
        let keypairs: Vec<Keypair> = (0..n).map(|_| Keypair::from_seed(rng.bytes32())).collect();
        let keys: Vec<Identity> = keypairs.iter().map(Keypair::identity).collect();
        let addrs: Vec<SocketAddr> = (0..n).map(|i| SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 4010))).collect();
        let mut world = World {
            now: 0,
            seed,
            rng,
            delay,
            loss,
            policy,
            events: BinaryHeap::new(),
            pending: HashMap::new(),
            next_event: 0,
            nodes: Vec::new(),
            conns: BTreeMap::new(),
            next_conn: 1,
            cut: BTreeSet::new(),
            report: Report::default(),
            traffic: Default::default(),
            traffic_seq: HashMap::new(),
            traffic_last: HashMap::new(),
            topics: Default::default(),
            fingerprint: 0,
            dials_in_flight: 0,
        };
        for i in 0..n {
            let incarnation = world.rng.next_u64();
            let pool = Pool::new(keys[i], incarnation, world.policy.clone(), world.rng.next_u64());
            world.nodes.push(Node {
                keypair: keypairs[i].clone(),
                key: keys[i],
                addr: addrs[i],
                up: true,
                incarnation,
                pool,
                using: BTreeMap::new(),
                timer_at: None,
                next_seq: BTreeMap::new(),
                last_seen: BTreeMap::new(),
                router: None,
                pubsub: None,
            });
        }
        for i in 0..n {
            world.load_book(i);
        }
        world
    }

    /// The identity of node `node`.
    pub fn node_identity(&self, node: usize) -> Identity {
        self.nodes[node].key
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn load_book(&mut self, node: usize) {
        let records: Vec<(Identity, PeerInfo)> = (0..self.nodes.len())
            .filter(|&j| j != node)
            .map(|j| (self.nodes[j].key, PeerInfo { trust: 128, permanent: true, advert_version: 1, addrs: vec![(self.nodes[j].addr, 100)] }))
            .collect();
        self.input(node, Input::BookLoaded(records));
    }

    pub(crate) fn schedule(&mut self, at: Millis, event: Event) {
        let id = self.next_event;
        self.next_event += 1;
        self.pending.insert(id, event);
        self.events.push(Reverse((at, id)));
    }

    /// One way across a link: the delay, plus a probe timeout for each lost packet.
    fn transit(&mut self) -> Millis {
        let mut time = self.delay;
        while self.rng.chance(self.loss) {
            time += 3 * self.delay.max(1);
        }
        time
    }

    fn cut_between(&self, a: usize, b: usize) -> bool {
        self.cut.contains(&(a.min(b), a.max(b)))
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        self.nodes[a].up && self.nodes[b].up && !self.cut_between(a, b)
    }

    pub(crate) fn index_of(&self, id: &Identity) -> Option<usize> {
        self.nodes.iter().position(|n| n.key == *id)
    }

    /// Feeds `node`'s pool and carries out what it answers.
    fn input(&mut self, node: usize, input: Input) {
        if !self.nodes[node].up {
            return;
        }
        let now = self.now;
        self.nodes[node].pool.handle(input, now);
        self.carry_out(node);
    }

    fn carry_out(&mut self, node: usize) {
        while let Some(output) = self.nodes[node].pool.poll_output() {
            match output {
                Output::Dial { node: peer, addr } => {
                    self.report.dials += 1;
                    self.dials_in_flight += 1;
                    let incarnation = self.nodes[node].incarnation;
                    let to = self.index_of(&peer).expect("a known node");
                    let at = self.now + self.transit();
                    self.schedule(at, Event::DialArrives { from: node, incarnation, to, addr });
                }
                Output::Use { node: peer, conn } => {
                    let peer = self.index_of(&peer).expect("a known node");
                    self.nodes[node].using.insert(peer, conn.0);
                    self.flush(node, peer);
                }
                Output::Close { conn, reason, detail } => {
                    if matches!(reason, netmachine_transport::core::CloseReason::Duplicate | netmachine_transport::core::CloseReason::Replaced) {
                        self.report.connections_settled += 1;
                    }
                    self.close(node, conn.0, detail);
                }
                Output::Event { node: peer, event } => self.connection_event(node, peer, event),
                Output::Forget { dropped, .. } => self.report.unreachable += dropped,
            }
        }
        self.using_only_current(node);
        let wanted = self.nodes[node].pool.poll_timeout();
        if wanted.is_some() && wanted != self.nodes[node].timer_at {
            self.nodes[node].timer_at = wanted;
            let incarnation = self.nodes[node].incarnation;
            self.schedule(wanted.unwrap_or_default().max(self.now), Event::Timer { node, incarnation });
        }
    }

    /// The shell sends only on the connection the pool says is current.
    fn using_only_current(&mut self, node: usize) {
        let peers: Vec<usize> = self.nodes[node].using.keys().copied().collect();
        for peer in peers {
            let current = self.nodes[node].pool.current(&self.nodes[peer].key);
            if current.map(|c| c.0) != self.nodes[node].using.get(&peer).copied() {
                self.nodes[node].using.remove(&peer);
            }
        }
    }

    /// Closes `node`'s end of `conn`; the other end hears of it one transit later, or when QUIC
    /// times out if the link is cut.
    fn close(&mut self, node: usize, conn: u64, reason: String) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let side = c.side(node);
        if !c.open[side] {
            return;
        }
        c.open[side] = false;
        let other = c.other(node);
        let at = if self.reachable(node, other) { self.now + self.transit() } else { self.now + QUIC_IDLE };
        self.schedule(at, Event::CloseArrives { conn, to: other, reason });
        self.input(node, Input::Closed { conn: ConnId(conn), reason: "closed here".into() });
    }

    /// Sends what `node`'s pool queued for `peer` on the connection in use.
    fn flush(&mut self, node: usize, peer: usize) {
        let Some(&conn) = self.nodes[node].using.get(&peer) else { return };
        let key = self.nodes[peer].key;
        let mut sent = false;
        while let Next::Frame(frame) = self.nodes[node].pool.next_frame(key, ConnId(conn), self.now) {
            sent = true;
            let at = self.now + self.transit();
            let Some(c) = self.conns.get_mut(&conn) else { return };
            let side = c.side(node);
            let at = at.max(c.last_arrival[side]);
            c.last_arrival[side] = at;
            self.schedule(at, Event::FrameArrives { conn, frame });
        }
        if sent {
            // Drained: the pool's idle timer may start.
            self.carry_out(node);
        }
    }

    /// `src` sends a frame to `dst` (queued until the pool has a connection for it).
    pub fn send(&mut self, src: usize, dst: usize) {
        self.send_bytes(src, dst, None);
    }

    /// `src`'s transport takes a frame for `dst`, with a router frame's `bytes`; false if its
    /// transport is down.
    pub(crate) fn send_bytes(&mut self, src: usize, dst: usize, bytes: Option<Rc<Vec<u8>>>) -> bool {
        if !self.nodes[src].up {
            return false;
        }
        let seq = self.nodes[src].next_seq.entry(dst).or_insert(0);
        *seq += 1;
        let frame = Frame { src, dst, seq: *seq, bytes };
        self.report.sent += 1;
        let key = self.nodes[dst].key;
        if let Err((_, frame)) = self.nodes[src].pool.queue(key, frame, self.now) {
            self.report.refused += 1;
            self.frame_lost(&frame);
            return true;
        }
        self.carry_out(src);
        self.flush(src, dst);
        true
    }

    /// Every node sends one frame to every other.
    pub fn send_all_pairs(&mut self) {
        for src in 0..self.nodes.len() {
            for dst in 0..self.nodes.len() {
                if src != dst {
                    self.send(src, dst);
                }
            }
        }
    }

    /// Cuts (or heals) the links between `node` and every other node. Connections across a
    /// cut close at both ends when QUIC's idle timeout passes, unless it healed by then.
    pub fn isolate(&mut self, node: usize, cut: bool) {
        if cut {
            let across: Vec<u64> = self.conns.iter().filter(|(_, c)| c.dialer == node || c.answerer == node).map(|(id, _)| *id).collect();
            for conn in across {
                self.schedule(self.now + QUIC_IDLE, Event::IdleTimeout { conn });
            }
        }
        for other in 0..self.nodes.len() {
            if other != node {
                let pair = (node.min(other), node.max(other));
                if cut {
                    self.cut.insert(pair);
                } else {
                    self.cut.remove(&pair);
                }
            }
        }
    }

    /// Kills `node`'s transport: its connections go silent (peers notice only when QUIC times
    /// out, or when it comes back), its queued frames are lost.
    pub fn crash(&mut self, node: usize) {
        let lost = self.nodes[node].pool.take_queued();
        self.report.lost_in_crash += lost.len() as u64;
        for frame in &lost {
            self.frame_lost(frame);
        }
        let n = &mut self.nodes[node];
        n.up = false;
        n.using.clear();
        let mut silent = Vec::new();
        for (id, c) in self.conns.iter_mut() {
            if c.dialer == node || c.answerer == node {
                let side = c.side(node);
                if c.open[side] {
                    c.open[side] = false;
                    silent.push((*id, c.other(node)));
                }
            }
        }
        for (conn, other) in silent {
            let at = self.now + QUIC_IDLE;
            self.schedule(at, Event::CloseArrives { conn, to: other, reason: "timed out".into() });
        }
    }

    /// Starts `node`'s transport again: a new incarnation with an empty pool that loads the book.
    pub fn restart(&mut self, node: usize) {
        let incarnation = self.rng.next_u64();
        let seed = self.rng.next_u64();
        let n = &mut self.nodes[node];
        n.up = true;
        n.incarnation = incarnation;
        n.pool = Pool::new(n.key, incarnation, self.policy.clone(), seed);
        n.timer_at = None;
        self.load_book(node);
        self.transport_restarted(node);
    }

    /// Runs events until virtual time `until`.
    pub fn run_until(&mut self, until: Millis) {
        while let Some(Reverse((at, id))) = self.events.peek().copied() {
            if at > until {
                break;
            }
            self.events.pop();
            self.now = at;
            let event = self.pending.remove(&id).expect("a scheduled event");
            self.dispatch(event);
        }
        self.now = self.now.max(until);
    }

    /// Runs until `condition` holds (checked after each event), or until `limit`; the time it
    /// first held.
    pub fn run_until_true(&mut self, limit: Millis, mut condition: impl FnMut(&World) -> bool) -> Option<Millis> {
        loop {
            if condition(self) {
                return Some(self.now);
            }
            let Reverse((at, id)) = self.events.peek().copied()?;
            if at > limit {
                self.now = limit;
                return condition(self).then_some(self.now);
            }
            self.events.pop();
            self.now = at;
            let event = self.pending.remove(&id).expect("a scheduled event");
            self.dispatch(event);
        }
    }

    fn dispatch(&mut self, event: Event) {
        let mut hasher = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(&(self.fingerprint, self.now, format!("{event:?}")), &mut hasher);
        self.fingerprint = std::hash::Hasher::finish(&hasher);
        match event {
            Event::Input { node, incarnation, input } => {
                if self.nodes[node].incarnation == incarnation {
                    self.input(node, input);
                }
            }
            Event::Timer { node, incarnation } => {
                let n = &mut self.nodes[node];
                if n.incarnation == incarnation && n.timer_at == Some(self.now) {
                    n.timer_at = None;
                    self.input(node, Input::Timer);
                }
            }
            Event::DialArrives { from, incarnation, to, addr } => self.dial_arrives(from, incarnation, to, addr),
            Event::Lookup { node, id } => self.answer_lookup(node, id),
            Event::RouterTimer { node } => self.router_timer(node),
            Event::PubSub { node, input } => self.pubsub_input(node, input),
            Event::PubSubTimer { node } => self.pubsub_timer(node),
            Event::AnswerArrives { conn } => {
                self.dials_in_flight -= 1;
                let Some(c) = self.conns.get(&conn) else { return };
                let (dialer, answerer) = (c.dialer, c.answerer);
                if !c.open[0] || !self.reachable(dialer, answerer) {
                    return;
                }
                let (node, incarnation) = (self.nodes[answerer].key, self.nodes[answerer].incarnation);
                self.input(dialer, Input::Established { node, conn: ConnId(conn), direction: Direction::Dialed, incarnation });
            }
            Event::FrameArrives { conn, frame } => {
                let Some(c) = self.conns.get(&conn) else { return };
                if !(c.open[0] && c.open[1]) || self.cut_between(frame.src, frame.dst) || !self.nodes[frame.dst].up {
                    self.report.lost_in_flight += 1;
                    self.frame_lost(&frame);
                    return;
                }
                self.receive(frame);
            }
            Event::IdleTimeout { conn } => {
                let Some(c) = self.conns.get(&conn) else { return };
                let ends = [c.dialer, c.answerer];
                if self.cut_between(ends[0], ends[1]) {
                    for (side, node) in ends.into_iter().enumerate() {
                        let c = self.conns.get_mut(&conn).expect("still there");
                        if c.open[side] {
                            c.open[side] = false;
                            self.input(node, Input::Closed { conn: ConnId(conn), reason: "timed out".into() });
                        }
                    }
                }
            }
            Event::CloseArrives { conn, to, reason } => {
                let Some(c) = self.conns.get_mut(&conn) else { return };
                let side = c.side(to);
                if c.open[side] {
                    c.open[side] = false;
                    self.input(to, Input::Closed { conn: ConnId(conn), reason });
                }
            }
        }
    }

    fn dial_arrives(&mut self, from: usize, incarnation: u64, to: usize, addr: SocketAddr) {
        let failed = |world: &mut World, reason: &str, after: Millis| {
            world.report.dial_failures += 1;
            world.dials_in_flight -= 1;
            let node = world.nodes[to].key;
            let at = world.now + after;
            world.schedule(at, Event::Input { node: from, incarnation, input: Input::DialFailed { node, addr, reason: reason.into() } });
        };
        if self.nodes[from].incarnation != incarnation || !self.nodes[from].up {
            self.dials_in_flight -= 1;
            return;
        }
        if !self.reachable(from, to) {
            let timeout = self.policy.connect_timeout.saturating_sub(self.delay);
            return failed(self, "no answer", timeout);
        }
        let dialer = self.nodes[from].key;
        if self.nodes[to].pool.admit(&dialer).is_err() {
            let back = self.transit();
            return failed(self, "refused", back);
        }
        let conn = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(conn, Connection { dialer: from, answerer: to, open: [true, true], last_arrival: [0, 0] });
        self.input(to, Input::Established { node: dialer, conn: ConnId(conn), direction: Direction::Accepted, incarnation });
        let at = self.now + self.transit();
        self.schedule(at, Event::AnswerArrives { conn });
    }

    fn receive(&mut self, frame: Frame) {
        let dst = &mut self.nodes[frame.dst];
        let last = dst.last_seen.entry(frame.src).or_insert(0);
        let fresh = frame.seq > *last;
        if fresh {
            if frame.seq != *last + 1 {
                self.report.gaps += 1;
            }
            *last = frame.seq;
            self.report.delivered += 1;
        } else {
            self.report.duplicates += 1;
        }
        let key = self.nodes[frame.src].key;
        self.input(frame.dst, Input::Activity { node: key });
        if let (true, Some(bytes)) = (fresh, frame.bytes) {
            self.frame_arrives(frame.dst, frame.src, &bytes);
        }
    }

    /// Whether every pair of running, linked nodes uses one connection, the same one on both
    /// sides, open at both ends, with no dial in flight and no other connection open.
    pub fn settled(&self) -> bool {
        let only_used = self.conns.iter().all(|(id, c)| {
            let used = |node: usize, peer: usize| self.nodes[node].pool.current(&self.nodes[peer].key) == Some(ConnId(*id));
            c.open == [false, false] || (c.open == [true, true] && used(c.dialer, c.answerer) && used(c.answerer, c.dialer))
        });
        self.dials_in_flight == 0 && only_used && (0..self.nodes.len()).all(|a| {
            (a + 1..self.nodes.len()).all(|b| {
                if !self.reachable(a, b) {
                    return true;
                }
                let here = self.nodes[a].pool.current(&self.nodes[b].key);
                let there = self.nodes[b].pool.current(&self.nodes[a].key);
                match (here, there) {
                    (Some(x), Some(y)) if x == y => self.conns.get(&x.0).is_some_and(|c| c.open == [true, true]),
                    _ => false,
                }
            })
        })
    }

    /// Whether `a`'s pool has a connection to `b`.
    pub fn connected(&self, a: usize, b: usize) -> bool {
        self.nodes[a].pool.current(&self.nodes[b].key).is_some()
    }

    /// Frames still waiting in some node's queue.
    pub fn queued(&self) -> u64 {
        self.nodes.iter().map(|n| n.pool.queued() as u64).sum()
    }
}
