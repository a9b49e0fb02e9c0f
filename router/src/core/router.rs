//! The router's state machine: every routing decision of the node, for messages from engines
//! (socket or ring slow path) and from other nodes alike. It is fed inputs with the time
//! (`handle`), answers with outputs (`poll_output`) and says when it wants a timer
//! (`poll_timeout`); it never blocks and does no I/O, so the tokio/capnp shell and the
//! simulation drive the same code.
//!
//! A message that cannot be placed at once (its destination must be looked up, or its queue is
//! full) waits in its destination's line until it can, or until its deadline: one stuck
//! destination never delays another, and a destination's messages keep their order.

use super::acks::{Arrival, Header, Receiving, Sending, PROBE_AFTER};
use super::attach::AttachRefused;
use super::drops::{DropCounters, DropReason, Refused};
use super::frame::Opened;
use super::outbox::{Announcement, Outbox, Outgoing};
use super::services::{ServeRefused, Services};
use super::table::{Known, Route, RoutingTable};
use super::topics::{Subscribed, Topic, TopicRefused, Topics};
use netmachine_schema::message_capnp::Scope;
use netmachine_schema::router_capnp::{TopicPolicy, TopicRefusal};
use netmachine_schema::{signing, Destination, EngineLocation, EngineMessage, Identity, Keypair, PeerMessage, Says, Stamp, TopicAdvert, PEER_EVENT_OVERHEAD, PUBSUB_PROTOCOL, SEQ_NOT_KNOWN};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

/// Milliseconds since the Unix epoch (virtual in the simulation).
pub type Millis = u64;

/// How long a transport that could not take a batch is given before the next try.
const RETRY_HANDOVER: Millis = 100;

/// How long an acknowledgement may wait for a frame to the same node to carry it before it
/// goes alone.
const ACK_DELAY: Millis = 10;

/// Nodes whose frames this router remembers taking in, past which the idle ones are forgotten.
const MAX_RECEIVING: usize = 4096;

/// The router's limits, from the node's configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_message_bytes: usize,
    /// Messages queued for one attached engine.
    pub engine_queue: usize,
    pub max_engines: usize,
    /// How long a message may wait for room (or for a lookup) before it is refused.
    pub send_wait: Millis,
    /// Messages queued for one other node.
    pub node_queue: usize,
    pub cache_entries: usize,
    /// Estimated bytes of one frame's batch at most.
    pub frame_budget: usize,
    /// How long the identity store has to answer a lookup.
    pub lookup_wait: Millis,
    /// Messages waiting for room or a lookup, across every destination.
    pub max_waiting: usize,
    /// Estimated bytes sent to one other node and kept until it acknowledges them; while that
    /// many are kept, the node's queue waits.
    pub unacked_bytes: usize,
}

impl Limits {
    pub fn from_config(config: &netmachine_service::config::Config) -> Self {
        Limits {
            max_message_bytes: config.limits.max_message_bytes as usize,
            engine_queue: config.limits.engine_queue as usize,
            max_engines: config.limits.max_engines as usize,
            send_wait: config.limits.send_wait_ms,
            node_queue: config.router.node_queue as usize,
            cache_entries: config.router.cache_entries as usize,
            frame_budget: config.max_frame_bytes() - (4 << 10),
            lookup_wait: 2_000,
            max_waiting: 16 * config.limits.engine_queue as usize,
            unacked_bytes: config.router.unacked_bytes as usize,
        }
    }
}

/// Names a message (or a frame's messages) whose outcome the shell waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(pub u64);

/// What the shell tells the router.
#[derive(Debug)]
pub enum Input {
    /// A message from the attached engine `sender`; settled with its outcome. `wait`: it may
    /// wait for room at its destination (else it is refused as back-pressured at once).
    Send { ticket: Ticket, sender: Identity, message: EngineMessage, wait: bool },
    /// A frame from node `src` (connected under the public network rules if `public`), opened
    /// and its signatures checked; settled once each message is queued or dropped.
    Frame { ticket: Ticket, src: Identity, public: bool, frame: Opened },
    /// The identity store's answer to a `Lookup` (`Ok(None)`: no such record).
    LookupAnswer { id: Identity, answer: Result<Option<Known>, String> },
    IdentityUpdated { id: Identity, known: Option<Known> },
    /// The link to the identity store came up: notifications may have been missed.
    IdentityStoreLinked,
    /// The link to transport came up, with the nodes connected now.
    TransportLinked(Vec<Identity>),
    Connected(Identity),
    Disconnected(Identity),
    /// The shell took `n` messages off an engine's queue.
    Taken { engine: Identity, generation: u64, n: usize },
    /// The next `n` messages delivered to an engine reached it: written to its inbox ring, or
    /// answered by it over the socket.
    Delivered { engine: Identity, generation: u64, n: u64 },
    /// Transport's answer to the frame of a `Transmit`.
    HandedOver { node: Identity, outcome: HandOver },
    Timer,
}

/// What became of a batch handed to transport.
#[derive(Debug)]
pub enum HandOver {
    Queued { messages: u64 },
    Refused { messages: u64, detail: String },
    /// Transport is down: the frame is sent again once it is back.
    Unavailable,
}

/// What the router asks the shell to do.
#[derive(Debug, PartialEq)]
pub enum Output {
    /// Put `message` on the queue of the engine attached here (the router counts the room).
    Deliver { engine: Identity, generation: u64, message: EngineMessage },
    /// A ticket's outcome: a frame's is always `Ok` (its drops are counted).
    Settled { ticket: Ticket, outcome: Result<(), Refused> },
    /// Ask the identity store for `id`'s record, and answer with `LookupAnswer`.
    Lookup(Identity),
    /// Seal `batch` for `node`, numbered by `header`, and hand it to transport; answer with
    /// `HandedOver`.
    Transmit { node: Identity, header: Header, batch: Arc<Vec<Outgoing>> },
    /// Record what node `node` announced (its locations verified) in the identity store.
    Record { node: Identity, announcement: Announcement },
    /// `node` acknowledged every frame before `kept_from`: the log of frames sent may let
    /// them go.
    Acknowledged { node: Identity, kept_from: u64 },
    /// Every frame of `node`'s `session` up to `through` is settled here: recorded before the
    /// acknowledgement leaves, so that a restarted router takes none of them again.
    Taken { node: Identity, session: u64, through: u64 },
}

/// An engine attached here.
#[derive(Debug)]
pub struct Attached {
    /// Tells this attachment from a later one of the same engine.
    pub generation: u64,
    /// Messages from nodes on the public network may reach it.
    pub public: bool,
    pub location: EngineLocation,
    /// Room left on its queue.
    credit: usize,
    /// Deliveries to it so far, and how many of them its pump confirmed (`Input::Delivered`).
    delivered: u64,
    confirmed: u64,
    /// Messages from other nodes delivered and not yet confirmed: each one's place among the
    /// deliveries, and its frame's ticket (a frame is acknowledged only once its messages
    /// reached their engines, not while they wait in this router's memory).
    unconfirmed: VecDeque<(u64, Ticket)>,
}

/// Where a message came from.
#[derive(Debug, Clone, Copy)]
enum Origin {
    Engine,
    Node { public: bool },
    /// The router itself (answers to messages for the node).
    Router,
}

/// A message waiting for room or a lookup.
#[derive(Debug)]
struct Waiting {
    ticket: Option<Ticket>,
    origin: Origin,
    /// It may wait for room (a lookup it may always wait for).
    wait: bool,
    message: EngineMessage,
    deadline: Millis,
}

enum Placement {
    Done(Result<(), Refused>),
    Wait(Waiting),
}

/// An outstanding ticket: how many of its messages are not placed yet, and whether it is an
/// engine's send (whose outcome is told) or a frame (settled when all are placed).
#[derive(Debug)]
struct Open {
    left: usize,
    send: bool,
    /// A frame's sender, session and number, acknowledged once the frame settles and each of
    /// its messages placed on an engine's queue reached the engine.
    frame: Option<(Identity, u64, u64)>,
    /// Its messages placed on an engine's queue and not yet confirmed as delivered.
    unconfirmed: usize,
}

/// The router of one node.
pub struct Router {
    key: Keypair,
    limits: Limits,
    table: RoutingTable<Attached>,
    connected: BTreeSet<Identity>,
    outboxes: BTreeMap<Identity, Outbox>,
    /// The numbering of the frames it sends, kept across restarts with the log of them.
    session: u64,
    /// When this run started.
    run: u64,
    /// Per other node, the frames sent and kept until acknowledged, and what was taken in.
    /// A node's `Sending` stays for the run even when nothing is kept (a few dozen bytes):
    /// its numbering must go on where it was, or the node would take new frames for old ones.
    sending: BTreeMap<Identity, Sending>,
    receiving: BTreeMap<Identity, Receiving>,
    /// The time of the input being handled.
    clock: Millis,
    topics: Topics,
    services: Services,
    /// Messages the router sent the pubsub service (numbering them).
    pubsub_notes: u64,
    /// For topics wanted from other nodes, the sequence the first engine asked to start from,
    /// told again to a pubsub service that attaches later.
    wanted_from: BTreeMap<Identity, u64>,
    /// Per destination, the messages waiting for it, in order.
    waiting: BTreeMap<Identity, VecDeque<Waiting>>,
    waiting_count: usize,
    /// Lookups asked of the identity store, with their deadlines.
    lookups: HashMap<Identity, Millis>,
    tickets: HashMap<Ticket, Open>,
    next_deadline: Option<Millis>,
    /// Until when engines' events wait (`hold_events_until`): after a restart, the events ring
    /// engines wrote meanwhile wait for their subscribers to subscribe again.
    events_held_until: Option<Millis>,
    /// Until when announcements to other nodes are partial (`announce_partially_until`).
    partial_until: Option<Millis>,
    /// A batch left some node's queue: what waits for room may go (once the input is handled).
    room_freed: bool,
    outputs: VecDeque<Output>,
    drops: DropCounters,
    accepted: u64,
    remote_sent: u64,
    remote_received: u64,
    frames_resent: u64,
    /// Frames an earlier run logged and did not have acknowledged, kept again.
    frames_resumed: u64,
    /// Messages in frames taken already, dropped.
    duplicates_suppressed: u64,
    /// Frames past a gap, dropped to come again in order.
    frames_out_of_order: u64,
    announcements_refused: u64,
    events_published: u64,
    event_deliveries: u64,
}

impl Router {
    /// A router whose frames to other nodes are numbered in `session` (an earlier run's, resumed
    /// with `resume_sending`, or one larger than any earlier), in its `run` (larger than any
    /// earlier run's: the shell takes the time it starts).
    pub fn new(key: Keypair, limits: Limits, session: u64, run: u64) -> Self {
        Router {
            table: RoutingTable::new(key.identity(), limits.cache_entries),
            key,
            limits,
            connected: BTreeSet::new(),
            outboxes: BTreeMap::new(),
            session,
            run,
            sending: BTreeMap::new(),
            receiving: BTreeMap::new(),
            clock: 0,
            topics: Topics::default(),
            services: Services::default(),
            pubsub_notes: 0,
            wanted_from: BTreeMap::new(),
            waiting: BTreeMap::new(),
            waiting_count: 0,
            lookups: HashMap::new(),
            tickets: HashMap::new(),
            next_deadline: None,
            events_held_until: None,
            partial_until: None,
            room_freed: false,
            outputs: VecDeque::new(),
            drops: DropCounters::default(),
            accepted: 0,
            remote_sent: 0,
            remote_received: 0,
            frames_resent: 0,
            frames_resumed: 0,
            duplicates_suppressed: 0,
            frames_out_of_order: 0,
            announcements_refused: 0,
            events_published: 0,
            event_deliveries: 0,
        }
    }

    /// Frames of this session an earlier run sent `node` and logged, numbered up to `next`:
    /// kept again, to go again before anything new (messages in them that expired meanwhile
    /// are counted as such when they would go).
    pub fn resume_sending(&mut self, node: Identity, next: u64, frames: Vec<(u64, Arc<Vec<Outgoing>>)>, now: Millis) {
        let frames = frames.into_iter().map(|(seq, batch)| {
            let bytes = batch.iter().map(Outgoing::size).sum();
            (seq, batch, bytes)
        });
        let frames: Vec<_> = frames.collect();
        self.frames_resumed += frames.len() as u64;
        self.sending.insert(node, Sending::resumed(next, frames, now));
        self.transmit(node, now);
    }

    /// What an earlier run took in from `node` and settled: frames of `session` up to `through`.
    pub fn resume_receiving(&mut self, node: Identity, session: u64, through: u64) {
        self.receiving.insert(node, Receiving::resumed(session, through));
    }

    pub fn node(&self) -> Identity {
        self.key.identity()
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Attaches the engine of `location`, which it signed for this node; the announcement goes
    /// to every connected node.
    pub fn attach(&mut self, location: EngineLocation, generation: u64, public: bool, now: Millis) -> Result<(), AttachRefused> {
        let engine = location.engine;
        if self.table.attachment(&engine).is_some() {
            return Err(AttachRefused::AlreadyAttached(engine));
        }
        if self.table.attached_count() >= self.limits.max_engines {
            return Err(AttachRefused::Full(self.limits.max_engines));
        }
        if location.node != self.node() {
            return Err(AttachRefused::WrongLocation { engine });
        }
        location.verify()?;
        let credit = self.limits.engine_queue;
        self.table.attach(engine, Attached { generation, public, location: location.clone(), credit, delivered: 0, confirmed: 0, unconfirmed: VecDeque::new() });
        self.announce_to_all(Announcement { attached: vec![location], ..Announcement::default() }, now);
        self.retry(engine, now, None);
        Ok(())
    }

    /// Detaches `engine` if `generation` is its current attachment: what waits for it is
    /// refused, and every connected node is told. Whether it was attached.
    pub fn detach(&mut self, engine: Identity, generation: u64, now: Millis) -> bool {
        let Some(gone) = self.table.detach(&engine, |a| a.generation == generation) else {
            return false;
        };
        // What its pump had not confirmed was lost with it (and counted by the pump): the
        // frames it came in are acknowledged.
        for (_, ticket) in gone.unconfirmed {
            self.confirmed(ticket);
        }
        self.refuse_waiting(engine, || Refused::engine_gone("the destination engine detached"));
        self.services.detached(engine);
        for (topic, left) in self.topics.detached(engine) {
            self.retry(topic, now, None);
            if left {
                self.no_longer_wanted(topic, now);
            }
        }
        self.announce_to_all(Announcement { detached: vec![engine], ..Announcement::default() }, now);
        true
    }

    /// Refuses everything waiting for `key`.
    fn refuse_waiting(&mut self, key: Identity, refused: impl Fn() -> Refused) {
        for waiting in self.waiting.remove(&key).unwrap_or_default() {
            self.waiting_count -= 1;
            self.settle(waiting.ticket, waiting.origin, Err(refused()));
        }
    }

    /// `engine` serves `protocol` for the node: messages to the node in it go to the engine.
    /// The pubsub service is told which topics on other nodes engines here want.
    pub fn serve(&mut self, engine: Identity, protocol: &str, now: Millis) -> Result<(), ServeRefused> {
        self.services.serve(engine, protocol)?;
        if protocol == PUBSUB_PROTOCOL {
            let wanted: Vec<(Identity, u64)> = self.topics.wanted().map(|(topic, _)| (*topic, self.wanted_from.get(topic).copied().unwrap_or(0))).collect();
            // A mirror is wanted from the event after its last, or after where its subscription
            // began if none came yet (the service may have restarted).
            let mirrors = self.topics.iter().filter(|t| t.creator == engine && !t.subscribers.is_empty());
            let mirrors: Vec<(Identity, u64)> = mirrors.map(|t| (t.advert.topic, t.last_seq + 1)).collect();
            for (topic, from) in wanted.into_iter().chain(mirrors) {
                self.tell_pubsub(topic, Says::Want(from), now);
            }
        }
        Ok(())
    }

    /// The engine of the node's pubsub service, if one is attached.
    fn pubsub(&self) -> Option<Identity> {
        self.services.engine(PUBSUB_PROTOCOL)
    }

    /// Sends the pubsub service a message from the router (Want, Unwant).
    fn tell_pubsub(&mut self, topic: Identity, says: Says, now: Millis) {
        let Some(engine) = self.pubsub() else { return };
        self.pubsub_notes += 1;
        let mut message = EngineMessage::new(self.node(), Destination::Engine(engine), self.pubsub_notes, PeerMessage::new(topic, says).encode());
        message.protocol = PUBSUB_PROTOCOL.into();
        self.admit(None, Origin::Router, message, true, now);
    }

    /// No engine here receives `topic` any more: if it came from another node, the pubsub
    /// service stops receiving it.
    fn no_longer_wanted(&mut self, topic: Identity, now: Millis) {
        self.wanted_from.remove(&topic);
        let pubsub = self.pubsub();
        if self.topics.get(&topic).is_none_or(|t| Some(t.creator) == pubsub) {
            self.tell_pubsub(topic, Says::Unwant, now);
        }
    }

    /// TopicCreate from the attached engine `creator`. A mirror (created by the pubsub service)
    /// takes events after `after`, where its subscription began.
    pub fn create_topic(&mut self, creator: Identity, advert: TopicAdvert, scope: Scope, policy: TopicPolicy, after: u64, now: Millis) -> Result<u64, TopicRefused> {
        let after = if Some(creator) == self.pubsub() { after } else { 0 };
        self.topics.create(creator, advert.clone(), scope, policy, after)?;
        self.wanted_from.remove(&advert.topic);
        self.retry(advert.topic, now, None);
        // A mirror is not announced: other nodes find a topic at the node that holds it.
        if scope == Scope::Any && Some(creator) != self.pubsub() {
            self.announce_to_all(Announcement { topics: vec![advert], ..Announcement::default() }, now);
        }
        Ok(0)
    }

    /// TopicDelete: what waits to be published on the topic is refused. A mirror deleted under
    /// engines that still subscribe is wanted again.
    pub fn delete_topic(&mut self, requester: Identity, topic: Identity, now: Millis) -> Result<u64, TopicRefused> {
        let deleted = self.topics.delete(requester, topic)?;
        self.refuse_waiting(topic, || Refused::no_route(format!("topic {topic} was deleted")));
        if Some(deleted.creator) == self.pubsub() && !deleted.subscribers.is_empty() {
            for engine in &deleted.subscribers {
                self.topics.subscribe(*engine, topic, Scope::Any, true)?;
            }
            self.tell_pubsub(topic, Says::Want(0), now);
        }
        Ok(deleted.last_seq)
    }

    /// TopicSub: the sequence of the topic's last event, after which events come
    /// (`SEQ_NOT_KNOWN` for a topic on another node, which the pubsub service is asked for,
    /// from `from` if the engine subscribes again after a restart: 0 for the next event).
    /// The pubsub service may not carry a topic of scope Local off the node.
    pub fn subscribe(&mut self, engine: Identity, topic: Identity, scope: Scope, from: u64, now: Millis) -> Result<u64, TopicRefused> {
        let pubsub = self.pubsub();
        if pubsub == Some(engine) && self.topics.get(&topic).is_some_and(|t| t.scope == Scope::Local) {
            let detail = format!("topic {topic} has scope local: its events do not leave this node");
            return Err(TopicRefused { reason: TopicRefusal::Denied, detail });
        }
        // The service subscribes only to topics here: it never wants one from itself. Those
        // topics' events are kept for it from then on.
        let remote = pubsub.is_some_and(|service| service != engine);
        if pubsub == Some(engine) {
            if let Some(found) = self.topics.get_mut(&topic) {
                found.carried = true;
            }
        }
        match self.topics.subscribe(engine, topic, scope, remote)? {
            Subscribed::Here(last_seq) => Ok(last_seq),
            Subscribed::Wanted { first } => {
                if first {
                    self.wanted_from.insert(topic, from);
                    self.tell_pubsub(topic, Says::Want(from), now);
                }
                Ok(SEQ_NOT_KNOWN)
            }
        }
    }

    /// TopicUnsub: events that waited for this subscriber's room may go.
    pub fn unsubscribe(&mut self, engine: Identity, topic: Identity, now: Millis) -> Result<u64, TopicRefused> {
        let (last_seq, left) = self.topics.unsubscribe(engine, topic)?;
        self.retry(topic, now, None);
        if left {
            self.no_longer_wanted(topic, now);
        }
        Ok(last_seq)
    }

    /// Until `until`, what this node tells other nodes of its engines is never whole: after a
    /// restart its engines are attaching again, and a whole list without them would make the
    /// other nodes forget them (and drop what they send them as having no route). Then the
    /// whole list goes to every connected node.
    pub fn announce_partially_until(&mut self, until: Millis) {
        self.partial_until = Some(until);
        self.wake_at(until);
    }

    /// What this node tells a node of its engines and topics when it connects.
    fn whole(&self) -> Announcement {
        whole_announcement(&self.table, &self.topics, self.pubsub(), self.partial_until.is_none())
    }

    /// Whether engines' events are held (`hold_events_until`).
    pub fn events_held(&self) -> bool {
        self.events_held_until.is_some()
    }

    /// Engines' events wait until `until` (then go in order): a router that restarted under
    /// engines still running gives them that long to attach again and subscribe again, so that
    /// the events they wrote to their rings meanwhile reach the subscribers they had.
    pub fn hold_events_until(&mut self, until: Millis) {
        self.events_held_until = Some(until);
        self.wake_at(until);
    }

    /// The sequence of the last event on `topic`, for its publisher `engine` (about to publish):
    /// another engine is denied, as its events would be.
    pub fn last_seq(&self, engine: Identity, topic: Identity) -> Result<u64, TopicRefused> {
        let found = self.topics.get(&topic).ok_or_else(|| TopicRefused::unknown(topic))?;
        if found.advert.publisher != engine {
            let detail = format!("engine {engine} is not the publisher of topic {topic}; its advert names {}", found.advert.publisher);
            return Err(TopicRefused { reason: TopicRefusal::Denied, detail });
        }
        Ok(found.last_seq)
    }

    pub fn topics(&self) -> impl Iterator<Item = &Topic> {
        self.topics.iter()
    }

    pub fn topic(&self, topic: &Identity) -> Option<&Topic> {
        self.topics.get(topic)
    }

    /// The events of `topic` kept for the pubsub service, from sequence `from` on (none for 0),
    /// the newest that fit in one answer (`max_message_bytes`, each event counted with its
    /// envelope).
    pub fn kept_from(&self, topic: &Identity, from: u64) -> Vec<EngineMessage> {
        let Some(found) = self.topics.get(topic).filter(|_| from > 0) else { return Vec::new() };
        let mut room = self.limits.max_message_bytes;
        let mut newest: Vec<EngineMessage> = Vec::new();
        for event in found.kept_from(from).rev() {
            let size = event.body.len() + PEER_EVENT_OVERHEAD / 4;
            if size > room {
                break;
            }
            room -= size;
            newest.push(event.clone());
        }
        newest.reverse();
        newest
    }

    /// The most an event's body on `topic` may be.
    pub fn event_limit(&self, topic: &Topic) -> usize {
        Topics::event_limit(topic, self.limits.max_message_bytes)
    }

    /// The topics created, deleted, or whose subscribers or sequence changed since the last call.
    pub fn take_touched_topics(&mut self) -> BTreeSet<Identity> {
        self.topics.take_touched()
    }

    /// Events of `topic` routed without the core, ring to ring (the shell's topic lane): the
    /// sequence is at least `last_seq` now, and the counts grow by what the lane did.
    pub fn lane_advanced(&mut self, topic: Identity, last_seq: u64, published: u64, deliveries: u64, cut: u64) {
        self.events_published += published;
        self.event_deliveries += deliveries;
        let Some(found) = self.topics.get(&topic) else { return };
        if last_seq <= found.last_seq && cut == 0 {
            return;
        }
        let found = self.topics.get_mut(&topic).expect("found above");
        found.last_seq = found.last_seq.max(last_seq);
        found.events_cut += cut;
    }

    /// The subscribers of `topic` with no room for another event now.
    pub fn slow_subscribers(&self, topic: &Topic) -> Vec<Identity> {
        topic.subscribers.iter().copied().filter(|s| self.table.attachment(s).is_none_or(|a| a.credit == 0)).collect()
    }

    pub fn attachment(&self, engine: &Identity) -> Option<&Attached> {
        self.table.attachment(engine)
    }

    pub fn attached(&self) -> Vec<Identity> {
        let mut engines: Vec<Identity> = self.table.attached().copied().collect();
        engines.sort();
        engines
    }

    /// Counts drops the shell saw (unreadable input, an engine gone with messages queued).
    pub fn count(&mut self, reason: DropReason, n: u64) {
        self.drops.count(reason, n);
    }

    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    /// The router's counts, which only grow, for status reports.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let mut counters = vec![
            ("messages_accepted", self.accepted),
            ("remote_messages_sent", self.remote_sent),
            ("remote_messages_received", self.remote_received),
            ("remote_frames_resent", self.frames_resent),
            ("remote_frames_resumed", self.frames_resumed),
            ("remote_duplicates_suppressed", self.duplicates_suppressed),
            ("remote_frames_out_of_order", self.frames_out_of_order),
            ("announcements_refused", self.announcements_refused),
            ("topic_events_published", self.events_published),
            ("topic_event_deliveries", self.event_deliveries),
            ("topic_events_cut", self.topics.iter().map(|t| t.events_cut).sum()),
        ];
        counters.extend(self.drops.report());
        counters
    }

    /// What the router holds now, for status reports.
    pub fn gauges(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("engines_attached", self.table.attached_count() as u64),
            ("messages_waiting", self.waiting_count as u64),
            ("identities_cached", self.table.known_count() as u64),
            ("remote_unacked_bytes", self.sending.values().map(|s| s.bytes() as u64).sum()),
            ("nodes_connected", self.connected.len() as u64),
            ("topics", self.topics.len() as u64),
        ]
    }

    /// Each attached engine's queue depth: messages given to it that have not reached it yet
    /// (its pump has not written them to its ring or had them answered).
    pub fn engine_queues(&self) -> Vec<(Identity, u64)> {
        let mut queues: Vec<(Identity, u64)> = self
            .table
            .attached()
            .filter_map(|engine| {
                let attached = self.attachment(engine)?;
                Some((*engine, attached.delivered.saturating_sub(attached.confirmed)))
            })
            .collect();
        queues.sort();
        queues
    }

    /// Each node's bytes kept for it until it acknowledges them.
    pub fn peer_unacked_bytes(&self) -> Vec<(Identity, u64)> {
        self.sending.iter().filter(|(_, s)| s.bytes() > 0).map(|(node, s)| (*node, s.bytes() as u64)).collect()
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When the router wants `Input::Timer` at the latest.
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.next_deadline
    }

    pub fn handle(&mut self, input: Input, now: Millis) {
        self.clock = now;
        self.apply(input, now);
        while std::mem::take(&mut self.room_freed) {
            for key in self.waiting.keys().copied().collect::<Vec<_>>() {
                self.retry(key, now, None);
            }
        }
    }

    fn apply(&mut self, input: Input, now: Millis) {
        match input {
            Input::Send { ticket, sender, message, wait } => {
                self.tickets.insert(ticket, Open { left: 1, send: true, frame: None, unconfirmed: 0 });
                // The pubsub service hands over its mirrors' events as their publisher sent them.
                let mirrored = matches!(message.dst, Destination::Topic(topic) if self.pubsub() == Some(sender) && self.topics.get(&topic).is_some_and(|t| t.creator == sender));
                let signer = if mirrored { message.src } else { sender };
                let checked = check_send(signer, &message, self.limits.max_message_bytes, now);
                match checked {
                    // A mirror's event waits for its subscribers' room as long as they take, up
                    // to a day (Block across nodes: the publisher's node holds the rest back).
                    Ok(()) if mirrored => self.admit_until(Some(ticket), Origin::Engine, message, wait, now + MIRROR_WAIT, now),
                    Ok(()) => self.admit(Some(ticket), Origin::Engine, message, wait, now),
                    Err(refused) => self.settle(Some(ticket), Origin::Engine, Err(refused)),
                }
            }
            Input::Frame { ticket, src, public, frame } => self.frame(ticket, src, public, frame, now),
            Input::LookupAnswer { id, answer } => {
                self.lookups.remove(&id);
                match answer {
                    Ok(Some(known)) => {
                        self.table.learn(id, known);
                        self.retry(id, now, None);
                    }
                    Ok(None) => {
                        let detail = format!("no engine or node {id} is attached here or known to the identity store");
                        self.retry(id, now, Some(&detail));
                    }
                    Err(error) => self.retry(id, now, Some(&format!("cannot look up {id}: {error}"))),
                }
            }
            Input::IdentityUpdated { id, known } => {
                self.table.updated(id, known);
                self.retry(id, now, None);
            }
            Input::IdentityStoreLinked => self.table.forget_known(),
            Input::TransportLinked(nodes) => {
                self.connected = nodes.into_iter().collect();
                // Nodes the transport connected before this router linked to it (after a start
                // or a restart of either) heard no announcement from it: each is told the whole
                // of what is here, as a node that connects now is.
                let whole = self.whole();
                for node in self.connected.iter().copied().collect::<Vec<_>>() {
                    self.enqueue_announcement(node, whole.clone(), now);
                }
                // What the old transport held may be lost: everything kept goes again.
                for sending in self.sending.values_mut() {
                    sending.go_back(now);
                }
                let nodes: BTreeSet<Identity> = self.outboxes.keys().chain(self.sending.keys()).copied().collect();
                for node in nodes {
                    if let Some(outbox) = self.outboxes.get_mut(&node) {
                        outbox.retry_at = None;
                    }
                    self.transmit(node, now);
                }
            }
            Input::Connected(node) => {
                self.connected.insert(node);
                // What went on the connection before may be lost with it.
                if let Some(sending) = self.sending.get_mut(&node) {
                    sending.go_back(now);
                }
                let whole = self.whole();
                self.enqueue_announcement(node, whole, now);
            }
            Input::Disconnected(node) => {
                self.connected.remove(&node);
            }
            Input::Taken { engine, generation, n } => {
                let capacity = self.limits.engine_queue;
                if let Some(attached) = self.table.attachment_mut(&engine).filter(|a| a.generation == generation) {
                    attached.credit = (attached.credit + n).min(capacity);
                    self.retry(engine, now, None);
                    for topic in self.topics.subscribed_by(&engine) {
                        self.retry(topic, now, None);
                    }
                }
            }
            Input::Delivered { engine, generation, n } => {
                let Some(attached) = self.table.attachment_mut(&engine).filter(|a| a.generation == generation) else { return };
                attached.confirmed += n;
                let confirmed = attached.confirmed;
                let mut reached = Vec::new();
                while attached.unconfirmed.front().is_some_and(|(at, _)| *at <= confirmed) {
                    reached.extend(attached.unconfirmed.pop_front());
                }
                for (_, ticket) in reached {
                    self.confirmed(ticket);
                }
            }
            Input::HandedOver { node, outcome } => self.handed_over(node, outcome, now),
            Input::Timer => self.timer(now),
        }
    }

    /// Places `message`, or queues it behind what already waits for its destination.
    fn admit(&mut self, ticket: Option<Ticket>, origin: Origin, message: EngineMessage, wait: bool, now: Millis) {
        let deadline = now + self.limits.send_wait;
        self.admit_until(ticket, origin, message, wait, deadline, now)
    }

    /// `admit`, waiting for room at most until `deadline` (or the message's expiry).
    fn admit_until(&mut self, ticket: Option<Ticket>, origin: Origin, message: EngineMessage, wait: bool, deadline: Millis, now: Millis) {
        let deadline = message.expiry.map_or(deadline, |at| at.min(deadline));
        let waiting = Waiting { ticket, origin, wait, message, deadline };
        let key = waiting.message.dst.identity();
        let placement = match self.waiting.contains_key(&key) {
            true => Placement::Wait(waiting),
            false => self.place(waiting, now, None),
        };
        match placement {
            Placement::Done(outcome) => self.settle(ticket, origin, outcome),
            Placement::Wait(waiting) if !waiting.wait && !self.lookups.contains_key(&key) => {
                let refused = self.back_pressure(key);
                self.settle(waiting.ticket, origin, Err(refused));
            }
            Placement::Wait(waiting) if self.waiting_count >= self.limits.max_waiting => {
                let detail = format!("{} messages already wait for room or a lookup on this node", self.waiting_count);
                self.settle(waiting.ticket, origin, Err(Refused::queue_full(detail)));
            }
            Placement::Wait(waiting) => {
                self.wake_at(waiting.deadline);
                self.waiting_count += 1;
                self.waiting.entry(key).or_default().push_back(waiting);
            }
        }
    }

    /// Why a message for `key` that would not wait is refused: who has no room.
    fn back_pressure(&self, key: Identity) -> Refused {
        let lined_up = self.waiting.get(&key).map_or(0, VecDeque::len);
        match self.topics.get(&key) {
            Some(topic) => {
                let slowest = self.slow_subscribers(topic).first().copied().unwrap_or(key);
                Refused::back_pressured(slowest, format!("subscriber {slowest} of topic {key} has no room ({lined_up} events already wait)"))
            }
            None => Refused::back_pressured(key, format!("{key} has no room ({lined_up} messages already wait)")),
        }
    }

    /// Places what waits for `key`, in order, until one must wait again. `failed`: the lookup
    /// of `key` failed, so a message that still needs it is refused with this sentence.
    fn retry(&mut self, key: Identity, now: Millis, failed: Option<&str>) {
        while let Some(waiting) = self.waiting.get_mut(&key).and_then(VecDeque::pop_front) {
            self.waiting_count -= 1;
            let (ticket, origin) = (waiting.ticket, waiting.origin);
            match self.place(waiting, now, failed) {
                Placement::Done(outcome) => self.settle(ticket, origin, outcome),
                Placement::Wait(waiting) => {
                    self.waiting_count += 1;
                    self.waiting.entry(key).or_default().push_front(waiting);
                    return;
                }
            }
        }
        self.waiting.remove(&key);
    }

    /// Decides where a message goes, and puts it there if there is room.
    fn place(&mut self, waiting: Waiting, now: Millis, failed: Option<&str>) -> Placement {
        let message = &waiting.message;
        let route = match waiting.origin {
            Origin::Node { public } => self.route_from_node(message, public, now),
            Origin::Engine | Origin::Router => self.table.route(message, now),
        };
        let route = match route {
            Route::Node => self.service_route(message, waiting.origin),
            other => other,
        };
        match route {
            Route::Local(engine) => {
                let Some(attached) = self.table.attachment_mut(&engine) else {
                    return Placement::Done(Err(Refused::no_route(format!("engine {engine} detached"))));
                };
                if attached.credit == 0 {
                    return Placement::Wait(waiting);
                }
                // A signature is verified before an engine here gets it (one from another node
                // was, with its frame; another node's router verifies what goes there).
                if matches!(waiting.origin, Origin::Engine) && !waiting.message.signature_holds() {
                    return Placement::Done(Err(Refused::bad_signature(format!("the signature is not {}'s over the message", waiting.message.src))));
                }
                attached.credit -= 1;
                attached.delivered += 1;
                let generation = attached.generation;
                self.outputs.push_back(Output::Deliver { engine, generation, message: waiting.message });
                if let (Origin::Node { .. }, Some(ticket)) = (waiting.origin, waiting.ticket) {
                    attached.unconfirmed.push_back((attached.delivered, ticket));
                    if let Some(open) = self.tickets.get_mut(&ticket) {
                        open.unconfirmed += 1;
                    }
                }
                Placement::Done(Ok(()))
            }
            Route::Remote(node) => {
                let outbox = self.outboxes.entry(node).or_default();
                if outbox.messages() >= self.limits.node_queue {
                    return Placement::Wait(waiting);
                }
                outbox.push(Outgoing::Message(waiting.message));
                self.transmit(node, now);
                Placement::Done(Ok(()))
            }
            Route::Node => {
                self.answer_node(waiting.message, now);
                Placement::Done(Ok(()))
            }
            Route::Topic(topic) => self.publish(topic, waiting),
            Route::Lookup(id) => match failed {
                Some(detail) => Placement::Done(Err(Refused::no_route(detail))),
                None => {
                    if !self.lookups.contains_key(&id) {
                        let deadline = now + self.limits.lookup_wait;
                        self.lookups.insert(id, deadline);
                        self.wake_at(deadline);
                        self.outputs.push_back(Output::Lookup(id));
                    }
                    Placement::Wait(waiting)
                }
            },
            // Its sending node cannot be told: it waits for the engine until its deadline
            // (`limits.send_wait_ms`), as engines attach again after this router restarts.
            Route::Absent(_) => Placement::Wait(waiting),
            Route::Drop(refused) => Placement::Done(Err(refused)),
        }
    }

    /// Routes an event to every subscriber of `topic` here, if its publisher may publish it.
    /// A subscriber with no room holds the event back (policy Block) or misses it (CutSlow: it
    /// sees the gap in the sequence).
    fn publish(&mut self, topic: Identity, waiting: Waiting) -> Placement {
        if self.events_held_until.is_some() && waiting.wait && matches!(waiting.origin, Origin::Engine) {
            return Placement::Wait(waiting);
        }
        // An engine's event for a topic not here (nor deleted lately) waits for it to be
        // created: after a restart of the router, engines create their topics again, while the
        // events they wrote to their rings meanwhile are already being routed.
        if self.topics.get(&topic).is_none() && waiting.wait && matches!(waiting.origin, Origin::Engine) && !self.topics.was_deleted(&topic) {
            return Placement::Wait(waiting);
        }
        let policy = match self.topics.check_event(topic, &waiting.message, self.limits.max_message_bytes) {
            Ok(found) => found.policy,
            Err(refused) => return Placement::Done(Err(refused)),
        };
        let found = self.topics.get(&topic).expect("checked above");
        let slow = self.slow_subscribers(found);
        if policy == TopicPolicy::Block && !slow.is_empty() {
            return Placement::Wait(waiting);
        }
        let subscribers: Vec<Identity> = found.subscribers.iter().copied().filter(|s| !slow.contains(s)).collect();
        let found = self.topics.get_mut(&topic).expect("checked above");
        found.last_seq = waiting.message.id;
        found.events_cut += slow.len() as u64;
        found.keep(&waiting.message);
        self.events_published += 1;
        self.event_deliveries += subscribers.len() as u64;
        for engine in subscribers {
            let attached = self.table.attachment_mut(&engine).expect("subscribers are attached");
            attached.credit -= 1;
            attached.delivered += 1;
            let generation = attached.generation;
            self.outputs.push_back(Output::Deliver { engine, generation, message: waiting.message.clone() });
        }
        Placement::Done(Ok(()))
    }

    /// A message from another node goes only to an engine attached here (one that takes public
    /// traffic, if it came from the public network) or to this node itself: never onwards.
    fn route_from_node(&self, message: &EngineMessage, public: bool, now: Millis) -> Route {
        if message.is_expired(now) {
            return Route::Drop(Refused::expired("expired on arrival"));
        }
        if message.body.len() > self.limits.max_message_bytes {
            return Route::Drop(Refused::over_limit(message.body.len(), self.limits.max_message_bytes));
        }
        match message.dst {
            Destination::Engine(engine) => match self.table.attachment(&engine) {
                Some(attached) if public && !attached.public => {
                    Route::Drop(Refused::no_route(format!("engine {engine} takes no messages from the public network")))
                }
                Some(_) => Route::Local(engine),
                None => Route::Absent(engine),
            },
            Destination::Node(node) if node == self.node() => Route::Node,
            _ => Route::Drop(Refused::no_route("a message for another node or a topic arrived here")),
        }
    }

    /// A message to this node goes to the engine serving its protocol, if one does (and takes
    /// what came from the public network, if it did); else the router answers it.
    fn service_route(&self, message: &EngineMessage, origin: Origin) -> Route {
        let Some(engine) = self.services.engine(&message.protocol) else { return Route::Node };
        match self.table.attachment(&engine) {
            Some(attached) if matches!(origin, Origin::Node { public: true }) && !attached.public => {
                Route::Drop(Refused::no_route(format!("the service of protocol {} takes no messages from the public network", message.protocol)))
            }
            _ => Route::Local(engine),
        }
    }

    /// Counts a message's outcome, and tells its ticket.
    fn settle(&mut self, ticket: Option<Ticket>, origin: Origin, outcome: Result<(), Refused>) {
        match &outcome {
            Ok(()) if matches!(origin, Origin::Engine) => self.accepted += 1,
            Ok(()) => {}
            Err(refused) => {
                self.drops.count(refused.reason, 1);
                tracing::debug!(reason = ?refused.reason, detail = %refused.detail, "message dropped");
            }
        }
        let Some(ticket) = ticket else { return };
        let Some(open) = self.tickets.get_mut(&ticket) else { return };
        open.left -= 1;
        if open.left > 0 {
            return;
        }
        let send = open.send;
        // The shell's waiter hears now (the frame's sender may go on); its acknowledgement waits
        // for the deliveries to be confirmed.
        self.finish(ticket);
        let outcome = if send { outcome } else { Ok(()) };
        self.outputs.push_back(Output::Settled { ticket, outcome });
    }

    /// Forgets `ticket` once every message is placed and every delivery confirmed; a frame is
    /// then acknowledged.
    fn finish(&mut self, ticket: Ticket) {
        let Some(open) = self.tickets.get(&ticket).filter(|open| open.left == 0 && open.unconfirmed == 0) else { return };
        let frame = open.frame;
        self.tickets.remove(&ticket);
        if let Some((src, session, seq)) = frame {
            self.frame_settled(src, session, seq);
        }
    }

    /// A delivery of `ticket`'s frame reached its engine (or the engine is gone).
    fn confirmed(&mut self, ticket: Ticket) {
        if let Some(open) = self.tickets.get_mut(&ticket) {
            open.unconfirmed -= 1;
            self.finish(ticket);
        }
    }

    /// The router answers a message to the node with the node's information, signed.
    fn answer_node(&mut self, message: EngineMessage, now: Millis) {
        if message.reply_to.is_some() {
            // A reply to the node itself: nothing waits for it.
            return;
        }
        let node = self.node();
        let info = format!(
            "{{\"node\":\"{node}\",\"engines_attached\":{},\"protocol\":\"netmachine/1\",\"version\":\"{}\"}}",
            self.table.attached_count(),
            env!("CARGO_PKG_VERSION")
        );
        let mut answer = EngineMessage::new(node, Destination::Engine(message.src), message.id, info.into_bytes());
        answer.reply_to = Some(message.id);
        answer.expiry = message.expiry;
        answer.protocol = "netmachine/node-info".into();
        answer.sig = Some(self.key.sign(&signing::engine_message(&answer)));
        self.admit(None, Origin::Router, answer, true, now);
    }

    fn frame(&mut self, ticket: Ticket, src: Identity, public: bool, frame: Opened, now: Millis) {
        if let Some(ack) = frame.header.ack.as_ref().filter(|ack| ack.session == self.session) {
            let freed = self.sending.get_mut(&src).and_then(|sending| sending.acknowledged(ack, now).then(|| sending.kept_from()));
            if let Some(kept_from) = freed {
                self.outputs.push_back(Output::Acknowledged { node: src, kept_from });
                self.room_freed = !self.waiting.is_empty();
                self.transmit(src, now);
            }
        }
        if self.receiving.len() >= MAX_RECEIVING && !self.receiving.contains_key(&src) {
            // Many nodes sent frames: forget what is idle, as a restarted router would.
            self.receiving.retain(|_, receiving| !receiving.is_idle());
        }
        let (arrival, restarted) = self.receiving.entry(src).or_default().arrive(&frame.header, now);
        if restarted {
            // A new run of the sender's router knows nothing this one sent the last: all of
            // it goes again.
            if let Some(sending) = self.sending.get_mut(&src) {
                sending.go_back(now);
                self.transmit(src, now);
            }
        }
        let numbered = match arrival {
            Arrival::Take => Some((src, frame.header.session, frame.header.seq)),
            Arrival::Unnumbered => None,
            Arrival::Duplicate | Arrival::Gap => {
                match arrival {
                    Arrival::Duplicate => self.duplicates_suppressed += frame.messages.len() as u64,
                    _ => self.frames_out_of_order += 1,
                }
                self.wake_at(now + ACK_DELAY);
                self.outputs.push_back(Output::Settled { ticket, outcome: Ok(()) });
                return;
            }
        };
        self.drops.count(DropReason::Malformed, frame.unreadable);
        self.drops.count(DropReason::BadSignature, frame.forged + frame.unsigned);
        if frame.forged > 0 {
            tracing::warn!(peer = %src, bad = frame.forged, "dropped messages with bad engine signatures");
        }
        for announcement in frame.announcements {
            self.announced(src, public, announcement, now);
        }
        self.remote_received += frame.messages.len() as u64;
        if frame.messages.is_empty() {
            if let Some((src, session, seq)) = numbered {
                self.frame_settled(src, session, seq);
            }
            self.outputs.push_back(Output::Settled { ticket, outcome: Ok(()) });
            return;
        }
        self.tickets.insert(ticket, Open { left: frame.messages.len(), send: false, frame: numbered, unconfirmed: 0 });
        for (index, mut message) in frame.messages.into_iter().enumerate() {
            // Where it came in, for its engine to drop it should a later run of this router
            // place it again; whatever the sending node wrote there is not taken.
            message.stamp = numbered.map(|(node, session, seq)| Stamp { node, session, seq, index: index as u32 });
            self.admit(Some(ticket), Origin::Node { public }, message, true, now);
        }
    }

    /// Node `src` says which of its engines came and went. A location is taken only from a
    /// node admitted as a member (not from the public network), only for `src` itself, only
    /// signed by the engine, and only if later than the one known.
    fn announced(&mut self, src: Identity, public: bool, announcement: Announcement, now: Millis) {
        if public {
            self.announcements_refused += 1;
            tracing::warn!(peer = %src, "refused an engine announcement from a node on the public network");
            return;
        }
        let mut learned = Vec::new();
        for location in announcement.attached {
            let engine = location.engine;
            if location.node != src || location.verify().is_err() {
                self.announcements_refused += 1;
                tracing::warn!(peer = %src, engine = %engine, "refused an announcement of an engine whose signed location is not on that node");
                continue;
            }
            if self.table.attachment(&engine).is_none() && self.table.learn_engine(engine, src, location.at) {
                learned.push(location);
            }
        }
        if announcement.full {
            for engine in self.table.engines_on(src) {
                if !learned.iter().any(|l| l.engine == engine) {
                    self.table.forget_engine(engine, src);
                }
            }
        }
        for engine in &announcement.detached {
            self.table.forget_engine(*engine, src);
        }
        for engine in learned.iter().map(|l| l.engine).collect::<Vec<_>>() {
            self.retry(engine, now, None);
        }
        let (topics, forged): (Vec<_>, Vec<_>) = announcement.topics.into_iter().partition(|advert| advert.verify().is_ok());
        if !forged.is_empty() {
            self.announcements_refused += forged.len() as u64;
            tracing::warn!(peer = %src, topics = forged.len(), "refused announced topic adverts not signed by their topic key");
        }
        let recorded = Announcement { full: announcement.full, attached: learned, detached: announcement.detached, topics };
        if recorded.full || !recorded.attached.is_empty() || !recorded.detached.is_empty() || !recorded.topics.is_empty() {
            self.outputs.push_back(Output::Record { node: src, announcement: recorded });
        }
    }

    fn announce_to_all(&mut self, announcement: Announcement, now: Millis) {
        for node in self.connected.iter().copied().collect::<Vec<_>>() {
            self.enqueue_announcement(node, announcement.clone(), now);
        }
    }

    fn enqueue_announcement(&mut self, node: Identity, announcement: Announcement, now: Millis) {
        let (table, topics, pubsub, full) = (&self.table, &self.topics, self.services.engine(PUBSUB_PROTOCOL), self.partial_until.is_none());
        self.outboxes.entry(node).or_default().announce(announcement, || whole_announcement(table, topics, pubsub, full));
        self.transmit(node, now);
    }

    /// Every message of frame `seq` from `src` is placed or dropped: it is acknowledged soon.
    fn frame_settled(&mut self, src: Identity, session: u64, seq: u64) {
        if let Some(receiving) = self.receiving.get_mut(&src) {
            let before = receiving.through();
            receiving.settled(session, seq, self.clock);
            let (session, through) = receiving.through();
            if (session, through) != before {
                self.outputs.push_back(Output::Taken { node: src, session, through });
            }
            self.wake_at(self.clock + ACK_DELAY);
        }
    }

    /// Asks for the timer at `at`, unless it is asked for sooner already.
    fn wake_at(&mut self, at: Millis) {
        self.next_deadline = Some(self.next_deadline.map_or(at, |d| d.min(at)));
    }

    /// Hands `node`'s next frame to transport, unless one is with it already: what is kept for
    /// it to go again first, then a new batch while the kept bytes leave room, else an
    /// acknowledgement alone once it has waited `ACK_DELAY` for a frame to carry it.
    fn transmit(&mut self, node: Identity, now: Millis) {
        let outbox = self.outboxes.entry(node).or_default();
        if outbox.handed.is_some() || outbox.retry_at.is_some_and(|at| at > now) {
            return;
        }
        outbox.retry_at = None;
        let sending = self.sending.entry(node).or_insert_with(|| Sending::new(now));
        let ack_due = self.receiving.get(&node).and_then(Receiving::owed_since).is_some_and(|since| since + ACK_DELAY <= now);
        let mut frame = None;
        if let Some(resend) = sending.next_resend(now) {
            self.frames_resent += 1;
            frame = Some((resend.seq, resend.batch));
        } else if sending.bytes() < self.limits.unacked_bytes {
            let (batch, expired) = outbox.take_batch(now, self.limits.frame_budget);
            self.drops.count(DropReason::Expired, expired);
            if !batch.is_empty() {
                let bytes = batch.iter().map(Outgoing::size).sum();
                let batch = Arc::new(batch);
                frame = Some((sending.keep(batch.clone(), bytes, now), batch));
            }
        }
        let (seq, batch) = match frame {
            Some(frame) => frame,
            None if ack_due => (0, Arc::new(Vec::new())),
            None => {
                if outbox.is_empty() {
                    self.outboxes.remove(&node);
                }
                return;
            }
        };
        outbox.handed = Some(seq);
        let kept_from = sending.kept_from();
        let ack = self.receiving.get_mut(&node).and_then(Receiving::take_ack);
        let header = Header { session: self.session, run: self.run, seq, kept_from, ack };
        self.outputs.push_back(Output::Transmit { node, header, batch });
        self.room_freed = !self.waiting.is_empty();
        if seq != 0 {
            self.wake_at(now + PROBE_AFTER);
        }
    }

    fn handed_over(&mut self, node: Identity, outcome: HandOver, now: Millis) {
        let outbox = self.outboxes.entry(node).or_default();
        let seq = outbox.handed.take().unwrap_or(0);
        match outcome {
            HandOver::Queued { messages } => {
                if self.sending.get_mut(&node).is_some_and(|s| s.queued(seq)) {
                    self.remote_sent += messages;
                }
            }
            HandOver::Refused { detail, .. } => {
                let messages = self.sending.get_mut(&node).map_or(0, |s| s.refused(seq));
                tracing::warn!(peer = %node, %detail, messages, "transport refused a frame");
                self.drops.count(DropReason::Unreachable, messages);
            }
            HandOver::Unavailable => {
                let at = now + RETRY_HANDOVER;
                outbox.retry_at = Some(at);
                match seq {
                    0 => self.receiving.entry(node).or_default().owe(now),
                    _ => self.sending.entry(node).or_insert_with(|| Sending::new(now)).go_back(now),
                }
                self.wake_at(at);
                return;
            }
        }
        self.transmit(node, now);
    }

    fn timer(&mut self, now: Millis) {
        if self.partial_until.is_some_and(|until| until <= now) {
            self.partial_until = None;
            let whole = self.whole();
            self.announce_to_all(whole, now);
        }
        if self.events_held_until.is_some_and(|until| until <= now) {
            self.events_held_until = None;
            self.topics.touch_all();
            let held: Vec<Identity> = self.waiting.keys().copied().filter(|key| self.topics.get(key).is_some()).collect();
            for topic in held {
                self.retry(topic, now, None);
            }
        }
        let late: Vec<Identity> = self.lookups.iter().filter(|(_, at)| **at <= now).map(|(id, _)| *id).collect();
        for id in late {
            self.lookups.remove(&id);
            self.retry(id, now, Some(&format!("cannot look up {id}: the identity store did not answer in time")));
        }
        let keys: Vec<Identity> = self.waiting.keys().copied().collect();
        for key in keys {
            let line = self.waiting.remove(&key).unwrap_or_default();
            let (late, kept): (VecDeque<Waiting>, VecDeque<Waiting>) = line.into_iter().partition(|w| w.deadline <= now);
            if !kept.is_empty() {
                self.waiting.insert(key, kept);
            }
            for waiting in late {
                self.waiting_count -= 1;
                let refused = if waiting.message.is_expired(now) {
                    Refused::expired("the message expired while waiting for its destination")
                } else if self.lookups.contains_key(&key) {
                    Refused::no_route(format!("the identity store had not said where {key} is within {} ms", self.limits.send_wait))
                } else if matches!(waiting.message.dst, Destination::Engine(_)) && self.table.attachment(&key).is_none() {
                    Refused::no_route(format!("engine {key} was not attached here within {} ms", self.limits.send_wait))
                } else if matches!(waiting.message.dst, Destination::Topic(_)) && self.topics.get(&key).is_none() {
                    Refused::no_route(format!("topic {key} was not created on this node within {} ms", self.limits.send_wait))
                } else {
                    Refused::queue_full(format!("the destination's queue stayed full for {} ms", self.limits.send_wait))
                };
                self.settle(waiting.ticket, waiting.origin, Err(refused));
            }
        }
        for (node, sending) in self.sending.iter_mut() {
            if sending.probe(now) {
                tracing::info!(peer = %node, "a frame that node has not taken in goes again");
            }
        }
        let retries = self.outboxes.iter().filter(|(_, o)| o.retry_at.is_some_and(|at| at <= now)).map(|(n, _)| *n);
        let resends = self.sending.iter().filter(|(_, s)| s.resending()).map(|(n, _)| *n);
        let acks = self.receiving.iter().filter(|(_, r)| r.owed_since().is_some_and(|since| since + ACK_DELAY <= now)).map(|(n, _)| *n);
        let due: BTreeSet<Identity> = retries.chain(resends).chain(acks).collect();
        for node in due {
            self.transmit(node, now);
        }
        let deadlines = self.waiting.values().flatten().map(|w| w.deadline);
        let deadlines = deadlines.chain(self.lookups.values().copied()).chain(self.outboxes.values().filter_map(|o| o.retry_at)).chain(self.events_held_until).chain(self.partial_until);
        // An acknowledgement owed to a node whose frame is with transport goes with the next.
        let free = |node: &Identity| self.outboxes.get(node).is_none_or(|o| o.handed.is_none() && o.retry_at.is_none());
        let acks = self.receiving.iter().filter(|(node, _)| free(node)).filter_map(|(_, r)| r.owed_since()).map(|since| since + ACK_DELAY);
        let stalls = self.sending.values().filter_map(Sending::probe_at);
        self.next_deadline = deadlines.chain(acks).chain(stalls).min();
    }
}

/// How long an event of a mirror may wait for its subscribers' room.
const MIRROR_WAIT: Millis = 24 * 3600 * 1000;

/// What every message from an engine must be, whichever way it came: from the engine that sent
/// it, within the node's size limit, not expired. The ring fast lane asks the same.
pub fn check_send(sender: Identity, message: &EngineMessage, max_body: usize, now: Millis) -> Result<(), Refused> {
    if message.stamp.is_some() {
        return Err(Refused::malformed("a delivery stamp, which only the router writes"));
    }
    check_envelope(sender, message.src, message.body.len(), message.expiry, max_body, now)
}

/// `check_send` on a message's envelope alone.
pub fn check_envelope(sender: Identity, src: Identity, body: usize, expiry: Option<u64>, max_body: usize, now: Millis) -> Result<(), Refused> {
    if src != sender {
        return Err(Refused::bad_source(format!("src is {src}, but the message came from engine {sender}")));
    }
    if body > max_body {
        return Err(Refused::over_limit(body, max_body));
    }
    if expiry.is_some_and(|at| at <= now) {
        return Err(Refused::expired("the message expired before it was routed"));
    }
    Ok(())
}

/// Every engine attached here and every topic held here that other nodes may subscribe to (not
/// the mirrors `pubsub` created).
fn whole_announcement(table: &RoutingTable<Attached>, topics: &Topics, pubsub: Option<Identity>, full: bool) -> Announcement {
    let attached = table.attachments().map(|a| a.location.clone()).collect();
    let topics = topics.iter().filter(|t| t.scope == Scope::Any && Some(t.creator) != pubsub).map(|t| t.advert.clone()).collect();
    Announcement { full, attached, detached: vec![], topics }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::acks::Ack;
    use netmachine_schema::router_capnp::SendRefusal;

    const SESSION: u64 = 1_000;

    fn limits() -> Limits {
        Limits {
            max_message_bytes: 4000,
            engine_queue: 2,
            max_engines: 8,
            send_wait: 5_000,
            node_queue: 2,
            cache_entries: 64,
            frame_budget: 1 << 20,
            lookup_wait: 2_000,
            max_waiting: 64,
            unacked_bytes: 1 << 20,
        }
    }

    struct Bench {
        router: Router,
        next: u64,
    }

    impl Bench {
        fn new() -> Self {
            Bench { router: Router::new(Keypair::generate(), limits(), SESSION, 1), next: 0 }
        }

        /// Attaches a fresh engine; its key.
        fn attach(&mut self, public: bool) -> Keypair {
            let key = Keypair::generate();
            self.attach_key(&key, public, 0);
            key
        }

        /// `out` and what follows once every delivery in it is confirmed by its pump.
        fn confirmed(&mut self, mut out: Vec<Output>, now: Millis) -> Vec<Output> {
            let deliveries: Vec<(Identity, u64)> = out.iter().filter_map(|o| match o { Output::Deliver { engine, generation, .. } => Some((*engine, *generation)), _ => None }).collect();
            for (engine, generation) in deliveries {
                self.router.handle(Input::Delivered { engine, generation, n: 1 }, now);
                out.extend(self.outputs());
            }
            out
        }

        /// Attaches `key`'s engine at `now`; the outputs that follow.
        fn attach_key(&mut self, key: &Keypair, public: bool, now: Millis) -> Vec<Output> {
            let location = EngineLocation::sign(key, self.router.node(), 1);
            self.router.attach(location, self.next, public, now).unwrap();
            self.next += 1;
            self.outputs()
        }

        fn send(&mut self, from: &Keypair, dst: Identity, now: Millis) -> Ticket {
            self.send_to(from, Destination::Engine(dst), now)
        }

        fn send_to(&mut self, from: &Keypair, dst: Destination, now: Millis) -> Ticket {
            self.next += 1;
            let ticket = Ticket(self.next);
            let message = EngineMessage::new(from.identity(), dst, self.next, b"hi".to_vec());
            self.router.handle(Input::Send { ticket, sender: from.identity(), message, wait: true }, now);
            ticket
        }

        fn outputs(&mut self) -> Vec<Output> {
            std::iter::from_fn(|| self.router.poll_output()).collect()
        }

        fn drops(&self, reason: DropReason) -> u64 {
            self.router.drops().get(reason)
        }
    }

    fn settled(outputs: &[Output]) -> Vec<(Ticket, Result<(), SendRefusal>)> {
        outputs.iter().filter_map(|o| match o {
            Output::Settled { ticket, outcome } => Some((*ticket, outcome.clone().map_err(|r| r.refusal))),
            _ => None,
        }).collect()
    }

    fn delivered(outputs: &[Output]) -> usize {
        outputs.iter().filter(|o| matches!(o, Output::Deliver { .. })).count()
    }

    #[test]
    fn a_full_engine_queue_makes_senders_wait_until_room_or_their_deadline() {
        let mut bench = Bench::new();
        let (sender, receiver) = (bench.attach(false), bench.attach(false));
        let generation = bench.router.attachment(&receiver.identity()).unwrap().generation;
        let tickets: Vec<Ticket> = (0..4).map(|_| bench.send(&sender, receiver.identity(), 0)).collect();
        let out = bench.outputs();
        assert_eq!((delivered(&out), settled(&out)), (2, vec![(tickets[0], Ok(())), (tickets[1], Ok(()))]), "two fit, two wait");
        bench.router.handle(Input::Taken { engine: receiver.identity(), generation, n: 1 }, 10);
        let out = bench.outputs();
        assert_eq!((delivered(&out), settled(&out)), (1, vec![(tickets[2], Ok(()))]), "room for one more, in order");
        assert_eq!(bench.router.poll_timeout(), Some(5_000));
        bench.router.handle(Input::Timer, 5_000);
        assert_eq!(settled(&bench.outputs()), vec![(tickets[3], Err(SendRefusal::QueueFull))]);
        assert_eq!(bench.drops(DropReason::QueueFull), 1);
    }

    #[test]
    fn a_destination_waiting_for_a_lookup_does_not_hold_up_another() {
        let mut bench = Bench::new();
        let (sender, receiver) = (bench.attach(false), bench.attach(false));
        let unknown = Keypair::generate().identity();
        let stuck = bench.send(&sender, unknown, 0);
        let flowing = bench.send(&sender, receiver.identity(), 0);
        let out = bench.outputs();
        assert!(out.contains(&Output::Lookup(unknown)));
        assert_eq!(settled(&out), vec![(flowing, Ok(()))]);
        let behind = bench.send(&sender, unknown, 1);
        assert!(bench.outputs().is_empty(), "one lookup per destination, and its line keeps order");
        bench.router.handle(Input::LookupAnswer { id: unknown, answer: Ok(None) }, 2);
        assert_eq!(settled(&bench.outputs()), vec![(stuck, Err(SendRefusal::NoRoute)), (behind, Err(SendRefusal::NoRoute))]);
    }

    #[test]
    fn a_lookup_the_identity_store_never_answers_is_refused_at_its_deadline() {
        let mut bench = Bench::new();
        let sender = bench.attach(false);
        let ticket = bench.send(&sender, Keypair::generate().identity(), 0);
        bench.outputs();
        assert_eq!(bench.router.poll_timeout(), Some(2_000));
        bench.router.handle(Input::Timer, 2_000);
        let out = bench.outputs();
        assert_eq!(settled(&out), vec![(ticket, Err(SendRefusal::NoRoute))]);
        assert!(matches!(&out[0], Output::Settled { outcome: Err(r), .. } if r.detail.contains("did not answer in time")));
    }

    #[test]
    fn messages_to_another_node_are_batched_while_transport_holds_the_previous_batch() {
        let mut bench = Bench::new();
        let sender = bench.attach(false);
        let node = Keypair::generate().identity();
        bench.send_to(&sender, Destination::Node(node), 0);
        bench.router.handle(Input::LookupAnswer { id: node, answer: Ok(Some(Known::Node { trust: 128 })) }, 0);
        let out = bench.outputs();
        let Some(Output::Transmit { batch, .. }) = out.iter().find(|o| matches!(o, Output::Transmit { .. })) else { panic!("{out:?}") };
        assert_eq!(batch.len(), 1);
        // While the first batch is with transport, two more queue; a third waits for room.
        let waiting: Vec<Ticket> = (0..3).map(|_| bench.send_to(&sender, Destination::Node(node), 1)).collect();
        let out = bench.outputs();
        assert_eq!(settled(&out), vec![(waiting[0], Ok(())), (waiting[1], Ok(()))]);
        bench.router.handle(Input::HandedOver { node, outcome: HandOver::Queued { messages: 1 } }, 2);
        let out = bench.outputs();
        let batch = out.iter().find_map(|o| match o { Output::Transmit { batch, .. } => Some(batch.len()), _ => None });
        assert_eq!((batch, settled(&out)), (Some(2), vec![(waiting[2], Ok(()))]), "the next batch takes both, and the waiting one gets room");
        // Transport down: after a pause, every frame not acknowledged goes again, in order,
        // before the batch queued since.
        bench.router.handle(Input::HandedOver { node, outcome: HandOver::Unavailable }, 3);
        assert!(bench.outputs().is_empty());
        assert_eq!(bench.router.poll_timeout(), Some(3 + RETRY_HANDOVER));
        bench.router.handle(Input::Timer, 3 + RETRY_HANDOVER);
        let mut sent = Vec::new();
        for _ in 0..3 {
            let [(_, header, batch)] = &transmits(&bench.outputs())[..] else { panic!("one frame at a time") };
            sent.push((header.seq, batch.len()));
            bench.router.handle(Input::HandedOver { node, outcome: HandOver::Queued { messages: batch.len() as u64 } }, 4);
        }
        assert_eq!(sent, vec![(1, 1), (2, 2), (3, 1)], "frames 1 and 2 again, then the batch queued since");
        assert_eq!(counter(&bench.router, "remote_frames_resent"), 2);
        assert_eq!(counter(&bench.router, "remote_messages_sent"), 1 + 2 + 1, "each message counted once");
    }

    fn counter(router: &Router, name: &str) -> u64 {
        router.counters().into_iter().chain(router.gauges()).find(|(n, _)| *n == name).map(|(_, v)| v).unwrap_or_else(|| panic!("no counter {name}"))
    }

    /// The transmits in `out`: their node, header and batch.
    fn transmits(out: &[Output]) -> Vec<(Identity, Header, Arc<Vec<Outgoing>>)> {
        out.iter().filter_map(|o| match o { Output::Transmit { node, header, batch } => Some((*node, header.clone(), batch.clone())), _ => None }).collect()
    }

    /// An engine attached to the bench's router that a peer node writes to: the peer and a
    /// frame maker for numbered frames with one message each.
    fn peer_writing_to(bench: &mut Bench) -> (Identity, impl Fn(u64, u64) -> Opened) {
        let receiver = bench.attach(false);
        let peer = Keypair::generate().identity();
        let dst = receiver.identity();
        let numbered = move |session: u64, seq: u64| {
            let mut message = EngineMessage::new(peer, Destination::Engine(dst), seq, vec![seq as u8]);
            // What the sending node writes here is not taken: the receiver stamps it.
            message.stamp = Some(Stamp { node: dst, session: 1, seq: 1, index: 1 });
            Opened { header: Header { session, run: 1, seq, kept_from: 1, ack: None }, ..frame(vec![], vec![message]) }
        };
        (peer, numbered)
    }

    #[test]
    fn frames_from_a_node_are_taken_once_in_order_and_acknowledged_soon() {
        let mut bench = Bench::new();
        let (peer, numbered) = peer_writing_to(&mut bench);
        let mut delivered = Vec::new();
        for (ticket, seq) in [(1, 1), (2, 1), (3, 3), (4, 2), (5, 3)] {
            bench.router.handle(Input::Frame { ticket: Ticket(ticket), src: peer, public: false, frame: numbered(9, seq) }, 10);
            let out = bench.outputs();
            if ticket == 1 {
                // Placed on the engine's queue, not yet delivered: not acknowledged.
                bench.router.handle(Input::Timer, 10 + ACK_DELAY);
                assert!(transmits(&bench.outputs()).is_empty(), "a frame is acknowledged once its message reached the engine, not before");
            }
            let out = bench.confirmed(out, 10);
            for message in out.iter().filter_map(|o| match o { Output::Deliver { message, .. } => Some(message), _ => None }) {
                assert_eq!(message.stamp, Some(Stamp { node: peer, session: 9, seq: message.id, index: 0 }), "stamped where it came in");
                delivered.push(message.id);
            }
            let settled = out.iter().any(|o| matches!(o, Output::Settled { ticket: t, outcome: Ok(()) } if t.0 == ticket));
            assert_eq!(settled, ticket != 5, "every frame settles but the last, whose message waits for room");
        }
        assert_eq!(delivered, vec![1, 2], "frame 1 once, frame 3 only after 2 (its engine queue holds two)");
        assert_eq!((counter(&bench.router, "remote_duplicates_suppressed"), counter(&bench.router, "remote_frames_out_of_order")), (1, 1));
        assert!(transmits(&bench.outputs()).is_empty(), "the acknowledgement waits a little for a frame to carry it");
        assert_eq!(bench.router.poll_timeout(), Some(10 + ACK_DELAY));
        bench.router.handle(Input::Timer, 10 + ACK_DELAY);
        let sent = transmits(&bench.outputs());
        let [(node, header, batch)] = &sent[..] else { panic!("{sent:?}") };
        assert_eq!((*node, header.seq, batch.len()), (peer, 0, 0), "an acknowledgement alone");
        // Frame 3's message waits for room in the engine's queue: taken in, not acknowledged.
        assert_eq!(header.ack, Some(Ack { session: 9, through: 2, ranges: vec![], received: 3 }));
    }

    #[test]
    fn frames_to_another_node_are_kept_until_acknowledged_and_go_again_on_a_new_connection() {
        let mut bench = Bench::new();
        let sender = bench.attach(false);
        let node = Keypair::generate().identity();
        bench.router.handle(Input::LookupAnswer { id: node, answer: Ok(Some(Known::Node { trust: 128 })) }, 0);
        bench.send_to(&sender, Destination::Node(node), 0);
        let sent = transmits(&bench.outputs());
        assert_eq!(sent.iter().map(|(_, h, _)| (h.session, h.seq, h.kept_from)).collect::<Vec<_>>(), vec![(SESSION, 1, 1)]);
        bench.router.handle(Input::HandedOver { node, outcome: HandOver::Queued { messages: 1 } }, 1);
        assert!(counter(&bench.router, "remote_unacked_bytes") > 0);
        // The connection breaks and comes back: frame 1 goes again.
        bench.router.handle(Input::Disconnected(node), 2);
        bench.router.handle(Input::Connected(node), 3);
        let again = transmits(&bench.outputs());
        assert_eq!(again.iter().map(|(_, h, b)| (h.seq, b.len())).collect::<Vec<_>>(), vec![(1, 1)]);
        bench.router.handle(Input::HandedOver { node, outcome: HandOver::Queued { messages: 1 } }, 3);
        let announced = transmits(&bench.outputs());
        assert_eq!(announced.iter().map(|(_, h, _)| h.seq).collect::<Vec<_>>(), vec![2], "then this node's engines, as to every new connection");
        bench.router.handle(Input::HandedOver { node, outcome: HandOver::Queued { messages: 0 } }, 3);
        // The node acknowledges both, on a frame of its own.
        let ack = Ack { session: SESSION, through: 2, ranges: vec![], received: 2 };
        let carrier = Opened { header: Header { session: 77, run: 1, seq: 0, kept_from: 0, ack: Some(ack) }, ..frame(vec![], vec![]) };
        bench.router.handle(Input::Frame { ticket: Ticket(50), src: node, public: false, frame: carrier }, 4);
        assert_eq!(counter(&bench.router, "remote_unacked_bytes"), 0);
        bench.router.handle(Input::Connected(node), 5);
        let after = transmits(&bench.outputs());
        assert_eq!(after.iter().map(|(_, h, _)| h.seq).collect::<Vec<_>>(), vec![3], "nothing acknowledged goes again, only the announcement");
    }

    #[test]
    fn a_node_that_does_not_acknowledge_holds_back_what_waits_for_it() {
        let mut bench = Bench::new();
        bench.router.limits.unacked_bytes = 1;
        let sender = bench.attach(false);
        let node = Keypair::generate().identity();
        bench.router.handle(Input::LookupAnswer { id: node, answer: Ok(Some(Known::Node { trust: 128 })) }, 0);
        bench.send_to(&sender, Destination::Node(node), 0);
        assert_eq!(transmits(&bench.outputs()).len(), 1);
        bench.router.handle(Input::HandedOver { node, outcome: HandOver::Queued { messages: 1 } }, 1);
        bench.send_to(&sender, Destination::Node(node), 1);
        assert!(transmits(&bench.outputs()).is_empty(), "the window is full");
        // Not taken in within PROBE_AFTER: it goes again, alone.
        bench.router.handle(Input::Timer, 1 + PROBE_AFTER);
        let again = transmits(&bench.outputs());
        assert_eq!(again.iter().map(|(_, h, _)| h.seq).collect::<Vec<_>>(), vec![1]);
        bench.router.handle(Input::HandedOver { node, outcome: HandOver::Queued { messages: 1 } }, 1 + PROBE_AFTER);
        let ack = Ack { session: SESSION, through: 1, ranges: vec![], received: 1 };
        let carrier = Opened { header: Header { session: 77, run: 1, seq: 0, kept_from: 0, ack: Some(ack) }, ..frame(vec![], vec![]) };
        bench.router.handle(Input::Frame { ticket: Ticket(50), src: node, public: false, frame: carrier }, 2 + PROBE_AFTER);
        let next = transmits(&bench.outputs());
        assert_eq!(next.iter().map(|(_, h, b)| (h.seq, b.len())).collect::<Vec<_>>(), vec![(2, 1)], "the acknowledgement opens the window");
    }

    fn frame(announcements: Vec<Announcement>, messages: Vec<EngineMessage>) -> Opened {
        Opened { messages, announcements, ..Opened::default() }
    }

    fn announced(location: EngineLocation) -> Vec<Announcement> {
        vec![Announcement { attached: vec![location], ..Announcement::default() }]
    }

    #[test]
    fn only_the_engine_can_move_its_route_and_only_forward_in_time() {
        let mut bench = Bench::new();
        let sender = bench.attach(false);
        let (engine, b, thief) = (Keypair::generate(), Keypair::generate().identity(), Keypair::generate());
        let on_b = EngineLocation::sign(&engine, b, 100);
        bench.router.handle(Input::Frame { ticket: Ticket(1000), src: b, public: false, frame: frame(announced(on_b.clone()), vec![]) }, 0);
        let out = bench.outputs();
        assert!(out.iter().any(|o| matches!(o, Output::Record { node, announcement } if *node == b && announcement.attached == vec![on_b.clone()])));
        bench.send(&sender, engine.identity(), 0);
        assert!(bench.outputs().iter().any(|o| matches!(o, Output::Transmit { node, .. } if *node == b)));
        // The thief replays the engine's location, signs one itself, and announces from the public network.
        let signed_by_thief = EngineLocation { engine: engine.identity(), ..EngineLocation::sign(&thief, thief.identity(), 200) };
        let genuine_from_public = EngineLocation::sign(&engine, thief.identity(), 300);
        bench.router.handle(Input::Frame { ticket: Ticket(1001), src: thief.identity(), public: false, frame: frame(announced(on_b.clone()), vec![]) }, 1);
        bench.router.handle(Input::Frame { ticket: Ticket(1002), src: thief.identity(), public: false, frame: frame(announced(signed_by_thief), vec![]) }, 1);
        bench.router.handle(Input::Frame { ticket: Ticket(1003), src: thief.identity(), public: true, frame: frame(announced(genuine_from_public), vec![]) }, 1);
        assert_eq!(bench.router.counters().iter().find(|(n, _)| *n == "announcements_refused").map(|c| c.1), Some(3));
        bench.outputs();
        bench.router.handle(Input::HandedOver { node: b, outcome: HandOver::Queued { messages: 1 } }, 2);
        bench.send(&sender, engine.identity(), 2);
        let out = bench.outputs();
        assert!(out.iter().any(|o| matches!(o, Output::Transmit { node, .. } if *node == b)), "still routed to B: {out:?}");
        // The engine really moves to C, later: routed there. An older location does not move it back.
        let c = Keypair::generate().identity();
        bench.router.handle(Input::Frame { ticket: Ticket(1004), src: c, public: false, frame: frame(announced(EngineLocation::sign(&engine, c, 400)), vec![]) }, 3);
        bench.router.handle(Input::Frame { ticket: Ticket(1005), src: b, public: false, frame: frame(announced(on_b), vec![]) }, 3);
        bench.outputs();
        bench.send(&sender, engine.identity(), 4);
        assert!(bench.outputs().iter().any(|o| matches!(o, Output::Transmit { node, .. } if *node == c)));
    }

    #[test]
    fn topics_for_other_nodes_are_announced_and_only_adverts_their_topic_key_signed_are_recorded() {
        let mut bench = Bench::new();
        let creator = bench.attach(false);
        let (peer, late) = (Keypair::generate().identity(), Keypair::generate().identity());
        bench.router.handle(Input::Connected(peer), 0);
        bench.router.handle(Input::HandedOver { node: peer, outcome: HandOver::Queued { messages: 0 } }, 0);
        bench.outputs();
        let shared = TopicAdvert::sign(&Keypair::generate(), creator.identity(), vec![], 1);
        let local = TopicAdvert::sign(&Keypair::generate(), creator.identity(), vec![], 1);
        bench.router.create_topic(creator.identity(), shared.clone(), Scope::Any, TopicPolicy::Block, 0, 1).unwrap();
        bench.router.create_topic(creator.identity(), local, Scope::Local, TopicPolicy::Block, 0, 1).unwrap();
        let announced_topics = |out: &[Output]| -> Vec<TopicAdvert> {
            let batches = out.iter().filter_map(|o| match o { Output::Transmit { batch, .. } => Some(batch.iter()), _ => None });
            batches.flatten().filter_map(|item| match item { Outgoing::Engines(a) => Some(a.topics.clone()), _ => None }).flatten().collect()
        };
        assert_eq!(announced_topics(&bench.outputs()), vec![shared.clone()], "scope Local stays on the node");
        bench.router.handle(Input::Connected(late), 2);
        assert_eq!(announced_topics(&bench.outputs()), vec![shared.clone()], "a node that connects later learns it with the engines");
        // Another node's announcement: the advert its topic key signed is recorded, a forged one refused.
        let mut forged = TopicAdvert::sign(&Keypair::generate(), creator.identity(), vec![], 1);
        forged.publisher = Keypair::generate().identity();
        let announcement = Announcement { topics: vec![shared.clone(), forged], ..Announcement::default() };
        bench.router.handle(Input::Frame { ticket: Ticket(9), src: peer, public: false, frame: frame(vec![announcement], vec![]) }, 3);
        let out = bench.outputs();
        assert!(out.iter().any(|o| matches!(o, Output::Record { node, announcement } if *node == peer && announcement.topics == vec![shared.clone()])), "{out:?}");
        assert_eq!(bench.router.counters().iter().find(|(n, _)| *n == "announcements_refused").map(|c| c.1), Some(1));
    }

    #[test]
    fn a_restarted_router_tells_other_nodes_its_whole_list_of_engines_only_once_they_had_time_to_attach_again() {
        let mut bench = Bench::new();
        bench.router.announce_partially_until(100);
        bench.attach(false);
        let peer = Keypair::generate().identity();
        bench.router.handle(Input::Connected(peer), 0);
        let announced = |out: &[Output]| -> Vec<(bool, usize)> {
            let items = transmits(out).into_iter().flat_map(|(_, _, batch)| batch.iter().cloned().collect::<Vec<_>>());
            items.filter_map(|item| match item { Outgoing::Engines(a) => Some((a.full, a.attached.len())), _ => None }).collect()
        };
        assert_eq!(announced(&bench.outputs()), vec![(false, 1)], "the engines attached so far, not as the whole list");
        bench.router.handle(Input::HandedOver { node: peer, outcome: HandOver::Queued { messages: 0 } }, 1);
        bench.router.handle(Input::Timer, 100);
        assert_eq!(announced(&bench.outputs()), vec![(true, 1)], "then the whole list");
    }

    #[test]
    fn messages_from_other_nodes_reach_only_engines_attached_here_that_take_them() {
        let mut bench = Bench::new();
        let (private, public) = (bench.attach(false), bench.attach(true));
        let src = Keypair::generate().identity();
        let to = |dst: Identity| EngineMessage::new(src, Destination::Engine(dst), 1, b"x".to_vec());
        let (late, never) = (Keypair::generate(), Keypair::generate());
        let messages = vec![to(private.identity()), to(public.identity()), to(late.identity())];
        bench.router.handle(Input::Frame { ticket: Ticket(7), src, public: true, frame: frame(vec![], messages) }, 0);
        let out = bench.outputs();
        let out = bench.confirmed(out, 0);
        assert_eq!(delivered(&out), 1, "only the engine that takes public traffic");
        assert_eq!(bench.drops(DropReason::NoRoute), 1);
        assert!(out.iter().all(|o| !matches!(o, Output::Lookup(_) | Output::Transmit { .. })), "never looked up or sent on");
        // The third waits for its engine, which attaches (again, after a restart of the router).
        assert_eq!(settled(&out), vec![], "the frame waits for its last message");
        let out = bench.attach_key(&late, true, 100);
        let out = bench.confirmed(out, 100);
        assert_eq!((delivered(&out), settled(&out)), (1, vec![(Ticket(7), Ok(()))]), "a frame is settled once each message is placed or dropped");
        // One whose engine never attaches is dropped once its wait is over, saying why.
        bench.router.handle(Input::Frame { ticket: Ticket(8), src, public: false, frame: frame(vec![], vec![to(never.identity())]) }, 200);
        assert_eq!(settled(&bench.outputs()), vec![]);
        bench.router.handle(Input::Timer, 200 + limits().send_wait);
        assert_eq!(settled(&bench.outputs()), vec![(Ticket(8), Ok(()))]);
        assert_eq!(bench.drops(DropReason::NoRoute), 2);
    }

    #[test]
    fn a_message_claiming_another_source_or_over_the_limit_is_refused_before_routing() {
        let mut bench = Bench::new();
        let (sender, receiver) = (bench.attach(false), bench.attach(false));
        let mut forged = EngineMessage::new(receiver.identity(), Destination::Engine(receiver.identity()), 1, vec![]);
        bench.router.handle(Input::Send { ticket: Ticket(1), sender: sender.identity(), message: forged.clone(), wait: true }, 0);
        forged.src = sender.identity();
        forged.body = vec![0; 4001];
        bench.router.handle(Input::Send { ticket: Ticket(2), sender: sender.identity(), message: forged.clone(), wait: true }, 0);
        forged.body = vec![];
        forged.stamp = Some(Stamp { node: receiver.identity(), session: 1, seq: 1, index: 0 });
        bench.router.handle(Input::Send { ticket: Ticket(3), sender: sender.identity(), message: forged, wait: true }, 0);
        let out = bench.outputs();
        let refused = vec![(Ticket(1), Err(SendRefusal::BadSource)), (Ticket(2), Err(SendRefusal::OverLimit)), (Ticket(3), Err(SendRefusal::Malformed))];
        assert_eq!(settled(&out), refused, "a delivery stamp is the router's to write");
        assert_eq!(delivered(&out), 0);
    }

    #[test]
    fn a_message_to_the_node_is_answered_by_the_router_signed() {
        let mut bench = Bench::new();
        let sender = bench.attach(false);
        let node = bench.router.node();
        let message = EngineMessage::new(sender.identity(), Destination::Node(node), 9, vec![]);
        bench.router.handle(Input::Send { ticket: Ticket(1), sender: sender.identity(), message, wait: true }, 0);
        let out = bench.outputs();
        let answer = out.iter().find_map(|o| match o { Output::Deliver { message, .. } => Some(message.clone()), _ => None }).expect("an answer");
        assert_eq!((answer.src, answer.reply_to), (node, Some(9)));
        assert!(node.verify(&signing::engine_message(&answer), &answer.sig.unwrap()).is_ok());
    }

    #[test]
    fn a_detached_engines_waiting_messages_are_refused_and_the_other_nodes_told() {
        let mut bench = Bench::new();
        let (sender, receiver) = (bench.attach(false), bench.attach(false));
        let peer = Keypair::generate().identity();
        bench.router.handle(Input::Connected(peer), 0);
        let full = bench.outputs();
        assert!(matches!(&full[..], [Output::Transmit { batch, .. }] if matches!(&batch[..], [Outgoing::Engines(a)] if a.full && a.attached.len() == 2)));
        bench.router.handle(Input::HandedOver { node: peer, outcome: HandOver::Queued { messages: 0 } }, 0);
        let tickets: Vec<Ticket> = (0..3).map(|_| bench.send(&sender, receiver.identity(), 0)).collect();
        bench.outputs();
        let generation = bench.router.attachment(&receiver.identity()).unwrap().generation;
        assert!(bench.router.detach(receiver.identity(), generation, 1));
        let out = bench.outputs();
        assert_eq!(settled(&out), vec![(tickets[2], Err(SendRefusal::NoRoute))]);
        assert_eq!(bench.drops(DropReason::EngineGone), 1);
        assert!(out.iter().any(|o| matches!(o, Output::Transmit { batch, .. } if matches!(&batch[..], [Outgoing::Engines(a)] if a.detached == vec![receiver.identity()]))));
    }

    /// A topic on `bench.router` created by `creator`, published on by `publisher`.
    fn topic(bench: &mut Bench, creator: &Keypair, publisher: &Keypair, policy: TopicPolicy) -> Identity {
        let advert = TopicAdvert::sign(&Keypair::generate(), publisher.identity(), vec![], 1);
        let topic = advert.topic;
        bench.router.create_topic(creator.identity(), advert, Scope::Any, policy, 0, 0).unwrap();
        topic
    }

    fn publish(bench: &mut Bench, publisher: &Keypair, topic: Identity, seq: u64, wait: bool, now: Millis) -> Ticket {
        bench.next += 1;
        let ticket = Ticket(bench.next);
        let message = EngineMessage::new(publisher.identity(), Destination::Topic(topic), seq, b"event".to_vec());
        bench.router.handle(Input::Send { ticket, sender: publisher.identity(), message, wait }, now);
        ticket
    }

    fn delivered_to(outputs: &[Output]) -> Vec<(Identity, u64)> {
        outputs.iter().filter_map(|o| match o {
            Output::Deliver { engine, message, .. } => Some((*engine, message.id)),
            _ => None,
        }).collect()
    }

    #[test]
    fn an_event_goes_to_every_subscriber_and_under_block_the_slowest_sets_the_pace() {
        let mut bench = Bench::new();
        let (publisher, fast, slow) = (bench.attach(false), bench.attach(false), bench.attach(false));
        let topic = topic(&mut bench, &publisher, &publisher, TopicPolicy::Block);
        for subscriber in [&fast, &slow] {
            assert_eq!(bench.router.subscribe(subscriber.identity(), topic, Scope::Local, 0, 0), Ok(0));
        }
        // Queues of two: two events reach both, the third waits for the slow one.
        let tickets: Vec<Ticket> = (1..=3).map(|seq| publish(&mut bench, &publisher, topic, seq, true, 0)).collect();
        let out = bench.outputs();
        assert_eq!(settled(&out), vec![(tickets[0], Ok(())), (tickets[1], Ok(()))]);
        assert_eq!(delivered_to(&out).len(), 4);
        let fast_generation = bench.router.attachment(&fast.identity()).unwrap().generation;
        bench.router.handle(Input::Taken { engine: fast.identity(), generation: fast_generation, n: 2 }, 1);
        assert!(bench.outputs().is_empty(), "the fast subscriber's room alone does not release the event");
        // A publish that will not wait is refused, naming the slow subscriber.
        let tried = publish(&mut bench, &publisher, topic, 4, false, 1);
        let out = bench.outputs();
        assert!(matches!(&out[..], [Output::Settled { ticket, outcome: Err(r) }] if *ticket == tried && r.refusal == SendRefusal::BackPressured && r.slowest == Some(slow.identity())), "{out:?}");
        let slow_generation = bench.router.attachment(&slow.identity()).unwrap().generation;
        bench.router.handle(Input::Taken { engine: slow.identity(), generation: slow_generation, n: 1 }, 2);
        let out = bench.outputs();
        assert_eq!(settled(&out), vec![(tickets[2], Ok(()))]);
        let mut released = delivered_to(&out);
        released.sort();
        let mut expected = vec![(fast.identity(), 3), (slow.identity(), 3)];
        expected.sort();
        assert_eq!(released, expected, "the held event goes to both");
    }

    #[test]
    fn under_cut_slow_a_full_subscriber_misses_events_and_the_others_get_them() {
        let mut bench = Bench::new();
        let (publisher, fast, slow) = (bench.attach(false), bench.attach(false), bench.attach(false));
        let topic = topic(&mut bench, &publisher, &publisher, TopicPolicy::CutSlow);
        bench.router.subscribe(fast.identity(), topic, Scope::Local, 0, 0).unwrap();
        bench.router.subscribe(slow.identity(), topic, Scope::Local, 0, 0).unwrap();
        let fast_generation = bench.router.attachment(&fast.identity()).unwrap().generation;
        for seq in 1..=4 {
            publish(&mut bench, &publisher, topic, seq, false, 0);
            bench.router.handle(Input::Taken { engine: fast.identity(), generation: fast_generation, n: 1 }, 0);
        }
        let out = bench.outputs();
        assert_eq!(settled(&out).iter().filter(|(_, r)| r.is_ok()).count(), 4, "never back-pressured");
        let to_slow: Vec<u64> = delivered_to(&out).into_iter().filter(|(e, _)| *e == slow.identity()).map(|(_, seq)| seq).collect();
        assert_eq!(to_slow, vec![1, 2], "the slow subscriber got what fitted; 3 and 4 it sees as a gap");
        assert_eq!(delivered_to(&out).len(), 6);
        assert_eq!(bench.router.counters().iter().find(|(n, _)| *n == "topic_events_cut").map(|c| c.1), Some(2));
    }

    #[test]
    fn events_from_an_engine_other_than_the_publisher_or_out_of_sequence_are_refused() {
        let mut bench = Bench::new();
        let (creator, publisher, subscriber) = (bench.attach(false), bench.attach(false), bench.attach(false));
        let topic = topic(&mut bench, &creator, &publisher, TopicPolicy::Block);
        bench.router.subscribe(subscriber.identity(), topic, Scope::Local, 0, 0).unwrap();
        let denied = publish(&mut bench, &creator, topic, 1, true, 0);
        let first = publish(&mut bench, &publisher, topic, 7, true, 0);
        let replayed = publish(&mut bench, &publisher, topic, 7, true, 0);
        let out = bench.outputs();
        assert_eq!(settled(&out), vec![(denied, Err(SendRefusal::Denied)), (first, Ok(())), (replayed, Err(SendRefusal::Malformed))]);
        assert_eq!(delivered_to(&out), vec![(subscriber.identity(), 7)]);
        assert_eq!(bench.drops(DropReason::Denied), 1);
        assert_eq!(bench.router.subscribe(creator.identity(), topic, Scope::Local, 0, 0), Ok(7), "a new subscriber learns the last sequence");
    }

    #[test]
    fn an_event_for_a_topic_not_created_yet_waits_for_it_and_one_for_a_deleted_topic_is_refused() {
        let mut bench = Bench::new();
        let (publisher, subscriber) = (bench.attach(false), bench.attach(false));
        // A restarted router: the publisher's events come before it creates its topic again.
        let advert = TopicAdvert::sign(&Keypair::generate(), publisher.identity(), vec![], 1);
        let topic = advert.topic;
        let tried = publish(&mut bench, &publisher, topic, 6, false, 0);
        assert_eq!(settled(&bench.outputs()), vec![(tried, Err(SendRefusal::NoRoute))], "a try does not wait");
        let early: Vec<Ticket> = (7..=8).map(|seq| publish(&mut bench, &publisher, topic, seq, true, 0)).collect();
        let tried = publish(&mut bench, &publisher, topic, 9, false, 0);
        assert_eq!(settled(&bench.outputs()), vec![(tried, Err(SendRefusal::BackPressured))], "nor goes before those waiting");
        bench.router.create_topic(publisher.identity(), advert, Scope::Local, TopicPolicy::Block, 0, 10).unwrap();
        bench.router.subscribe(subscriber.identity(), topic, Scope::Local, 0, 10).unwrap();
        let outputs = bench.outputs();
        assert_eq!(settled(&outputs), vec![(early[0], Ok(())), (early[1], Ok(()))], "taken once the topic is there");
        bench.router.delete_topic(publisher.identity(), topic, 20).unwrap();
        let late = publish(&mut bench, &publisher, topic, 10, true, 20);
        assert_eq!(settled(&bench.outputs()), vec![(late, Err(SendRefusal::NoRoute))], "a deleted topic's event is refused at once");
        let never = Keypair::generate().identity();
        let lost = publish(&mut bench, &publisher, never, 1, true, 30);
        assert!(bench.outputs().is_empty());
        bench.router.handle(Input::Timer, 30 + 5_000);
        assert_eq!(settled(&bench.outputs()), vec![(lost, Err(SendRefusal::NoRoute))], "a topic never created: refused after the send wait");
    }

    #[test]
    fn after_a_restart_under_live_engines_events_wait_for_their_subscribers_to_come_back() {
        let mut bench = Bench::new();
        bench.router.hold_events_until(1_000);
        let (publisher, subscriber) = (bench.attach(false), bench.attach(false));
        let topic = topic(&mut bench, &publisher, &publisher, TopicPolicy::Block);
        let held = publish(&mut bench, &publisher, topic, 41, true, 10);
        bench.router.subscribe(subscriber.identity(), topic, Scope::Local, 0, 500).unwrap();
        assert!(bench.outputs().is_empty(), "held until the grace ends");
        assert_eq!(bench.router.poll_timeout(), Some(1_000));
        bench.router.handle(Input::Timer, 1_000);
        let outputs = bench.outputs();
        assert_eq!((settled(&outputs), delivered_to(&outputs)), (vec![(held, Ok(()))], vec![(subscriber.identity(), 41)]), "the subscriber that came back gets it");
    }

    #[test]
    fn the_latest_events_of_a_topic_the_pubsub_service_reads_are_kept_for_it() {
        let mut bench = Bench::new();
        let (publisher, service) = (bench.attach(false), bench.attach(false));
        bench.router.serve(service.identity(), PUBSUB_PROTOCOL, 0).unwrap();
        // CutSlow: a service that takes nothing (as here) holds no event back, and misses none
        // of those kept for it.
        let topic = topic(&mut bench, &publisher, &publisher, TopicPolicy::CutSlow);
        publish(&mut bench, &publisher, topic, 1, true, 0);
        assert!(bench.router.kept_from(&topic, 1).is_empty(), "nothing kept before the service reads it");
        bench.router.subscribe(service.identity(), topic, Scope::Any, 1, 0).unwrap();
        for seq in 2..=6 {
            publish(&mut bench, &publisher, topic, seq, true, 0);
        }
        let kept = |bench: &Bench, from| bench.router.kept_from(&topic, from).iter().map(|e| e.id).collect::<Vec<_>>();
        assert_eq!(kept(&bench, 1), vec![2, 3, 4, 5, 6]);
        assert_eq!(kept(&bench, 4), vec![4, 5, 6], "from the sequence asked");
        assert!(kept(&bench, 0).is_empty(), "0 asks for none");
        // The service gone, events are still kept for the one that comes back.
        let generation = bench.router.attachment(&service.identity()).unwrap().generation;
        bench.router.detach(service.identity(), generation, 1);
        publish(&mut bench, &publisher, topic, 7, true, 1);
        assert_eq!(kept(&bench, 6), vec![6, 7]);
    }

    #[test]
    fn a_waiting_event_is_released_when_the_slow_subscriber_leaves_and_refused_when_the_topic_goes() {
        let mut bench = Bench::new();
        let (publisher, slow) = (bench.attach(false), bench.attach(false));
        let topic = topic(&mut bench, &publisher, &publisher, TopicPolicy::Block);
        bench.router.subscribe(slow.identity(), topic, Scope::Local, 0, 0).unwrap();
        let tickets: Vec<Ticket> = (1..=4).map(|seq| publish(&mut bench, &publisher, topic, seq, true, 0)).collect();
        bench.outputs();
        bench.router.unsubscribe(slow.identity(), topic, 1).unwrap();
        assert_eq!(settled(&bench.outputs()), vec![(tickets[2], Ok(())), (tickets[3], Ok(()))], "no subscribers: nothing holds them");
        bench.router.subscribe(slow.identity(), topic, Scope::Local, 0, 0).unwrap();
        let waiting = publish(&mut bench, &publisher, topic, 5, true, 2);
        assert!(bench.outputs().is_empty());
        assert_eq!(bench.router.delete_topic(slow.identity(), topic, 1).map_err(|e| e.reason), Err(netmachine_schema::router_capnp::TopicRefusal::Denied));
        assert_eq!(bench.router.delete_topic(publisher.identity(), topic, 1), Ok(4));
        assert_eq!(settled(&bench.outputs()), vec![(waiting, Err(SendRefusal::NoRoute))]);
    }

    /// What the router told the pubsub service `service`, in order.
    fn told_pubsub(outputs: &[Output], service: Identity) -> Vec<Says> {
        outputs.iter().filter_map(|o| match o {
            Output::Deliver { engine, message, .. } if *engine == service => Some(PeerMessage::decode(&message.body, 1 << 16).unwrap().says),
            _ => None,
        }).collect()
    }

    #[test]
    fn the_pubsub_service_gets_messages_to_the_node_and_mirrors_topics_wanted_from_other_nodes() {
        let mut bench = Bench::new();
        let (subscriber, service) = (bench.attach(false), bench.attach(false));
        let publisher = Keypair::generate();
        let advert = TopicAdvert::sign(&Keypair::generate(), publisher.identity(), vec![], 1);
        let topic = advert.topic;
        let refused = bench.router.subscribe(subscriber.identity(), topic, Scope::Any, 0, 0).map_err(|e| e.reason);
        assert_eq!(refused, Err(TopicRefusal::Unknown), "no pubsub service: a topic elsewhere is unknown");

        // A peer's pubsub message to this node reaches the service once it serves the protocol.
        let peer = Keypair::generate().identity();
        let mut subscribe = EngineMessage::new(peer, Destination::Node(bench.router.node()), 1, PeerMessage::new(topic, Says::Subscribe(0)).encode());
        subscribe.protocol = PUBSUB_PROTOCOL.into();
        bench.router.serve(service.identity(), PUBSUB_PROTOCOL, 0).unwrap();
        assert!(bench.router.serve(subscriber.identity(), PUBSUB_PROTOCOL, 0).is_err(), "one engine per protocol");
        bench.router.handle(Input::Frame { ticket: Ticket(50), src: peer, public: false, frame: frame(vec![], vec![subscribe]) }, 0);
        assert_eq!(told_pubsub(&bench.outputs(), service.identity()), vec![Says::Subscribe(0)]);

        // The first engine wanting the topic makes the router ask the service for it.
        assert_eq!(bench.router.subscribe(subscriber.identity(), topic, Scope::Any, 0, 0), Ok(SEQ_NOT_KNOWN));
        assert_eq!(told_pubsub(&bench.outputs(), service.identity()), vec![Says::Want(0)]);
        // The service mirrors it; the events it hands over keep their publisher as source.
        bench.router.create_topic(service.identity(), advert.clone(), Scope::Any, TopicPolicy::Block, 0, 0).unwrap();
        let mut event = EngineMessage::new(publisher.identity(), Destination::Topic(topic), 41, b"e".to_vec());
        event.sig = Some(publisher.sign(&signing::engine_message(&event)));
        bench.router.handle(Input::Send { ticket: Ticket(51), sender: service.identity(), message: event.clone(), wait: true }, 1);
        let out = bench.outputs();
        assert_eq!(delivered_to(&out), vec![(subscriber.identity(), 41)]);
        let mut stolen = event.clone();
        stolen.id = 42;
        bench.router.handle(Input::Send { ticket: Ticket(52), sender: subscriber.identity(), message: stolen, wait: true }, 1);
        assert_eq!(settled(&bench.outputs()), vec![(Ticket(52), Err(SendRefusal::BadSource))], "only the mirror's creator hands over its events");

        // A restarted service is told what the node wants, from the event after the last.
        let generation = bench.router.attachment(&service.identity()).unwrap().generation;
        bench.router.detach(service.identity(), generation, 2);
        bench.router.attach(EngineLocation::sign(&service, bench.router.node(), 3), 99, false, 3).unwrap();
        bench.router.serve(service.identity(), PUBSUB_PROTOCOL, 3).unwrap();
        assert_eq!(told_pubsub(&bench.outputs(), service.identity()), vec![Says::Want(42)]);
        // The last subscriber leaving: the service stops receiving the topic.
        bench.router.unsubscribe(subscriber.identity(), topic, 4).unwrap();
        assert_eq!(told_pubsub(&bench.outputs(), service.identity()), vec![Says::Unwant]);

        // The service is refused a topic not here, rather than asked to find it elsewhere.
        let refused = bench.router.subscribe(service.identity(), Keypair::generate().identity(), Scope::Any, 0, 5).map_err(|e| e.reason);
        assert_eq!(refused, Err(TopicRefusal::Unknown));
        assert!(told_pubsub(&bench.outputs(), service.identity()).is_empty());
        // The service never carries a local topic off the node.
        let local = TopicAdvert::sign(&Keypair::generate(), publisher.identity(), vec![], 1);
        bench.router.create_topic(subscriber.identity(), local.clone(), Scope::Local, TopicPolicy::Block, 0, 0).unwrap();
        let refused = bench.router.subscribe(service.identity(), local.topic, Scope::Any, 0, 5).map_err(|e| e.reason);
        assert_eq!(refused, Err(TopicRefusal::Denied));

        // A node restarted whole: an engine subscribing again asks from where it stands, and a
        // service that attaches after it is told so too.
        let elsewhere = TopicAdvert::sign(&Keypair::generate(), publisher.identity(), vec![], 1).topic;
        let generation = bench.router.attachment(&service.identity()).unwrap().generation;
        bench.router.detach(service.identity(), generation, 6);
        bench.outputs();
        bench.router.attach(EngineLocation::sign(&service, bench.router.node(), 7), 100, false, 7).unwrap();
        assert_eq!(bench.router.subscribe(subscriber.identity(), elsewhere, Scope::Any, 1001, 7).map_err(|e| e.reason), Err(TopicRefusal::Unknown), "no service yet");
        bench.router.serve(service.identity(), PUBSUB_PROTOCOL, 8).unwrap();
        let other = bench.attach(false);
        assert_eq!(bench.router.subscribe(other.identity(), elsewhere, Scope::Any, 1001, 8), Ok(SEQ_NOT_KNOWN));
        assert_eq!(told_pubsub(&bench.outputs(), service.identity()), vec![Says::Want(1001)]);
        bench.router.detach(service.identity(), 100, 9);
        bench.router.attach(EngineLocation::sign(&service, bench.router.node(), 10), 101, false, 10).unwrap();
        bench.router.serve(service.identity(), PUBSUB_PROTOCOL, 10).unwrap();
        assert_eq!(told_pubsub(&bench.outputs(), service.identity()), vec![Says::Want(1001)], "a restarted service is told from where");
    }

    #[test]
    fn a_mirror_with_no_event_yet_is_wanted_again_from_where_its_subscription_began() {
        let mut bench = Bench::new();
        let (subscriber, service) = (bench.attach(false), bench.attach(false));
        let advert = TopicAdvert::sign(&Keypair::generate(), Keypair::generate().identity(), vec![], 1);
        bench.router.serve(service.identity(), PUBSUB_PROTOCOL, 0).unwrap();
        bench.router.subscribe(subscriber.identity(), advert.topic, Scope::Any, 0, 0).unwrap();
        bench.outputs();
        // The subscription began after event 40 at the publisher's node; the service dies
        // before any event reached the mirror. Its successor resumes after 40, not at the next.
        bench.router.create_topic(service.identity(), advert.clone(), Scope::Any, TopicPolicy::Block, 40, 1).unwrap();
        let generation = bench.router.attachment(&service.identity()).unwrap().generation;
        bench.router.detach(service.identity(), generation, 2);
        bench.router.attach(EngineLocation::sign(&service, bench.router.node(), 3), 99, false, 3).unwrap();
        bench.outputs();
        bench.router.serve(service.identity(), PUBSUB_PROTOCOL, 3).unwrap();
        assert_eq!(told_pubsub(&bench.outputs(), service.identity()), vec![Says::Want(41)]);
        // Only the service's mirrors start elsewhere than at the beginning.
        let own = TopicAdvert::sign(&Keypair::generate(), subscriber.identity(), vec![], 1);
        bench.router.create_topic(subscriber.identity(), own.clone(), Scope::Any, TopicPolicy::Block, 40, 4).unwrap();
        assert_eq!(bench.router.subscribe(service.identity(), own.topic, Scope::Any, 0, 4), Ok(0));
    }

    #[test]
    fn a_node_the_transport_connected_before_the_router_linked_hears_what_is_attached_here() {
        let mut bench = Bench::new();
        let engine = bench.attach(false);
        bench.outputs();
        // The transport (re)started and connected to `early` before this router linked to it.
        let early = Keypair::generate().identity();
        bench.router.handle(Input::TransportLinked(vec![early]), 1);
        let out = bench.outputs();
        let attached = out.iter().filter_map(|o| match o {
            Output::Transmit { node, batch, .. } if *node == early => Some(batch.iter()),
            _ => None,
        });
        let attached: Vec<Identity> = attached.flatten().filter_map(|item| match item { Outgoing::Engines(a) if a.full => Some(a.attached.iter().map(|l| l.engine).collect::<Vec<_>>()), _ => None }).flatten().collect();
        assert_eq!(attached, vec![engine.identity()], "{out:?}");
    }
}
