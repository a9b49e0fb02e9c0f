//! The router's side of the shared-memory rings (ring/RING.md). A thread of its own forwards
//! what ring engines write to other ring engines on this node, straight from one ring to the
//! other, and releases a record from the sender's outbox only once it is in the receiver's
//! inbox: a router killed at any moment loses nothing one ring engine wrote to another, and the
//! next router adopts the rings. Events of topics whose subscribers are all ring engines go the
//! same way, through the topic's lane (`topic_lane`). Everything else (lookups, other nodes,
//! socket engines, expiry, refusals) goes to the router's main thread and its core
//! (`serve_slow`). The thread spins briefly, yields, then sleeps on the doorbell, which engines
//! ring only while it sleeps.

use crate::channels::Channels;
use crate::handoff::{Handoff, HandedStreams};
use netmachine_engine::ring::handoff::Ticket;
use netmachine_service::engine_access::EngineAccess;
use std::path::{Path, PathBuf};
use netmachine_engine::ring::layout::{Kind, OUTBOX_PRODUCER_WAITING_AT};
use netmachine_engine::ring::records::{self, Envelope, Refusal};
use netmachine_engine::ring::wait::wake_if_sleeping;
use netmachine_engine::ring::segment::{BELL_SUFFIX, CHANNEL_INFIX};
use netmachine_engine::ring::{self, futex, Consumer, Doorbell, Full, Producer, RingSegment, SegmentError};
use crate::core::pacing::{Pacer, Pause, Round};
use crate::core::{check_envelope, Refused};
use crate::shell::RouterState;
use crate::topic_lane::{self, Lane, Offered, SharedLane};
use netmachine_schema::time::now_ms;
use netmachine_schema::{Destination, EngineMessage, Identity};
use std::rc::{Rc, Weak};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::mpsc;

/// Records forwarded from one outbox before the thread looks at the next.
const TURN: usize = 256;

/// One ring-attached engine, as the router sees it.
pub struct RingEndpoint {
    pub engine: Identity,
    generation: AtomicU64,
    pub segment: RingSegment,
    /// The engine's own doorbell, rung after writing its inbox.
    pub bell: Doorbell,
    outbox: Mutex<Consumer>,
    inbox: Mutex<Producer>,
    /// The longest record its inbox can ever take (half the ring, less a record's head).
    pub largest_record: usize,
    /// Detached: nothing more is delivered to it; what its outbox holds is still forwarded.
    closed: AtomicBool,
    /// Its outbox is corrupt: nothing more is read from it.
    corrupt: AtomicBool,
    /// Its messages handed to the main thread and not yet settled there: past
    /// `SLOW_PER_ENGINE`, its outbox waits (only its own: other engines go on).
    slow_in_flight: AtomicUsize,
    /// Messages the main thread queued for its inbox and not yet written there.
    queued: AtomicUsize,
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl RingEndpoint {
    /// Writes `message` into the engine's inbox and wakes the engine if it sleeps.
    pub fn deliver(&self, message: &EngineMessage) -> Result<(), Full> {
        records::write_message(&mut lock(&self.inbox), message)?;
        self.wake();
        Ok(())
    }

    /// Copies a message record, as the sender wrote it, into the engine's inbox; the caller
    /// wakes the engine once it has forwarded what it had for it.
    fn forward(&self, body: &[u8], checked: &Envelope) -> Result<(), Full> {
        records::forward(&mut lock(&self.inbox), body, checked)
    }

    pub(crate) fn wake(&self) {
        wake_if_sleeping(self.bell.sleeping());
    }

    /// Its inbox, to write into.
    pub(crate) fn inbox(&self) -> std::sync::MutexGuard<'_, Producer> {
        lock(&self.inbox)
    }

    pub(crate) fn has_slow_in_flight(&self) -> bool {
        self.slow_in_flight.load(Ordering::Acquire) > 0
    }

    /// The main thread queued a message for its inbox (`written` once it is there, or dropped).
    pub(crate) fn queued_one(&self) {
        self.queued.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn written_one(&self) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn has_queued(&self) -> bool {
        self.queued.load(Ordering::Acquire) > 0
    }

    /// Tells the engine a message it wrote was not routed.
    pub fn refuse(&self, refusal: &Refusal) -> Result<(), Full> {
        records::write_refusal(&mut lock(&self.inbox), refusal)?;
        self.wake();
        Ok(())
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The attachment these rings serve now.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// What the ring thread hands to the main thread.
pub enum Slow {
    /// A message the fast path does not take: route it, and refuse it to `from` if it fails.
    Route { from: Arc<RingEndpoint>, message: EngineMessage },
    /// A record that is not a readable message: drop it, and say so to `from`.
    /// `id` is the record's message id when it is long enough to hold one, else 0.
    Unreadable { from: Arc<RingEndpoint>, id: u64, detail: String },
    /// The engine's ring is corrupt: detach it.
    Corrupt { engine: Identity, generation: u64, problem: String },
    /// A detached engine's segment was removed with `unread` messages in its inbox, which it
    /// never took: count them as lost with it.
    Unread { engine: Identity, unread: u64 },
}

struct Shared {
    endpoints: RwLock<HashMap<Identity, Arc<RingEndpoint>>>,
    /// Detached engines whose outbox is still being forwarded; removed once it is empty.
    draining: Mutex<Vec<Arc<RingEndpoint>>>,
    /// Each topic's lane, by topic.
    lanes: RwLock<HashMap<Identity, SharedLane>>,
    version: AtomicU64,
    doorbell: Doorbell,
    forwarded: AtomicU64,
    /// Events forwarded by their topic's lane.
    events_forwarded: AtomicU64,
    handed_over: AtomicU64,
    max_body: usize,
    /// The router is stopping: every segment stays for the next router to adopt.
    kept_for_next_router: AtomicBool,
    channels: Channels,
}

/// The router's rings: the endpoints, the thread that forwards between them, and the handoff
/// socket that gives each engine its own.
pub struct Rings {
    node: Identity,
    capacity: usize,
    shared: Arc<Shared>,
    handoff: Arc<Handoff>,
    handoff_socket: PathBuf,
}

impl Rings {
    /// Opens the doorbell, removes the segments of engines that died while no router ran,
    /// starts the ring thread, and hands rings over at `handoff_socket` to the users `access`
    /// lets in.
    pub fn start(node: Identity, capacity: usize, max_body: usize, direct_channels: bool, slow: mpsc::Sender<Slow>, handoff: (&Path, EngineAccess, HandedStreams)) -> Result<Rings, SegmentError> {
        let (handoff_socket, access, streams) = handoff;
        let handoff = Handoff::start(handoff_socket, node, access, streams)?;
        let doorbell = Doorbell::open_or_create(&ring::doorbell_name(&node.0))?;
        let shared = Arc::new(Shared {
            endpoints: RwLock::new(HashMap::new()),
            draining: Mutex::new(Vec::new()),
            lanes: RwLock::new(HashMap::new()),
            version: AtomicU64::new(0),
            doorbell,
            forwarded: AtomicU64::new(0),
            events_forwarded: AtomicU64::new(0),
            handed_over: AtomicU64::new(0),
            max_body,
            kept_for_next_router: AtomicBool::new(false),
            channels: Channels::new(node, capacity, max_body, direct_channels),
        });
        let rings = Rings { node, capacity, shared, handoff, handoff_socket: handoff_socket.to_path_buf() };
        rings.adopt_or_reclaim();
        let thread_shared = rings.shared.clone();
        std::thread::Builder::new()
            .name("rings".into())
            .spawn(move || forward(&thread_shared, &slow))
            .map_err(|e| SegmentError::Invalid { name: "rings".into(), problem: format!("cannot start the ring thread: {e}") })?;
        Ok(rings)
    }

    /// At start: adopts the rings of this node's engines still alive (their outboxes are
    /// forwarded, and messages for them delivered, before they attach again), removes those of
    /// engines that are gone, and sweeps what stopped nodes left behind.
    fn adopt_or_reclaim(&self) {
        let swept = ring::sweep_orphans(ring::SEGMENT_PREFIX);
        if swept > 0 {
            tracing::info!(swept, "removed shared memory that stopped nodes and engines left behind");
        }
        let prefix = format!("netmachine-{}-", &self.node.to_string()[..16]);
        let Ok(entries) = std::fs::read_dir("/dev/shm") else { return };
        // Channels after the rings: one is adopted with its producer's.
        let mut channels = Vec::new();
        for entry in entries.filter_map(Result::ok) {
            let file = entry.file_name().to_string_lossy().into_owned();
            if !file.starts_with(&prefix) || file.ends_with("-doorbell") || file.ends_with(BELL_SUFFIX) {
                continue;
            }
            if file.contains(CHANNEL_INFIX) {
                channels.push(file);
                continue;
            }
            let name = format!("/{file}");
            let segment = RingSegment::open(&name, None).ok().filter(|segment| ring::process_alive(segment.engine_pid()));
            match segment {
                Some(segment) => {
                    tracing::info!(segment = %name, engine = %Identity(segment.engine()), "adopted the rings of a live engine");
                    if let Err(error) = self.insert(segment, 0) {
                        tracing::warn!(segment = %name, %error, "cannot adopt these rings");
                    }
                }
                None => {
                    tracing::info!(segment = %name, "removed the rings of an engine that is gone");
                    let _ = RingSegment::unlink(&name);
                    let _ = RingSegment::unlink(&format!("{name}{BELL_SUFFIX}"));
                }
            }
        }
        for file in channels {
            self.shared.channels.adopt(&file, |engine| self.endpoint(engine));
        }
    }

    fn insert(&self, segment: RingSegment, generation: u64) -> Result<Arc<RingEndpoint>, SegmentError> {
        segment.set_router_pid(std::process::id());
        let bell = Doorbell::open_or_create(&format!("{}{BELL_SUFFIX}", segment.name))?;
        let (outbox, inbox) = segment.router_side()?;
        let largest_record = inbox.max_body();
        let endpoint = Arc::new(RingEndpoint {
            engine: Identity(segment.engine()),
            generation: AtomicU64::new(generation),
            segment,
            bell,
            outbox: Mutex::new(outbox),
            inbox: Mutex::new(inbox),
            largest_record,
            closed: AtomicBool::new(false),
            corrupt: AtomicBool::new(false),
            slow_in_flight: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
        });
        self.shared.endpoints.write().unwrap_or_else(|p| p.into_inner()).insert(endpoint.engine, endpoint.clone());
        self.changed();
        Ok(endpoint)
    }

    /// The engine's rings: a fresh segment, or the one it already has (after a router restart).
    pub fn open(&self, engine: Identity, generation: u64) -> Result<Arc<RingEndpoint>, SegmentError> {
        let adopted = self.shared.endpoints.read().unwrap_or_else(|p| p.into_inner()).get(&engine).cloned();
        if let Some(endpoint) = adopted.filter(|e| !e.corrupt.load(Ordering::Acquire)) {
            // Adopted at start (or still open): the engine takes its rings back.
            endpoint.generation.store(generation, Ordering::Release);
            return Ok(endpoint);
        }
        {
            // Attached again while its old attachment's outbox is still being forwarded: take
            // those rings back (a second reader of the same outbox would break it).
            let mut draining = lock(&self.shared.draining);
            if let Some(at) = draining.iter().position(|e| e.engine == engine && !e.corrupt.load(Ordering::Acquire)) {
                let endpoint = draining.remove(at);
                endpoint.generation.store(generation, Ordering::Release);
                endpoint.closed.store(false, Ordering::Release);
                self.shared.endpoints.write().unwrap_or_else(|p| p.into_inner()).insert(engine, endpoint.clone());
                drop(draining);
                self.changed();
                return Ok(endpoint);
            }
        }
        let name = ring::segment_name(&self.node.0, &engine.0);
        let segment = match RingSegment::open(&name, Some(&engine.0)) {
            Ok(segment) => {
                tracing::info!(engine = %engine, "adopting the engine's existing rings");
                segment
            }
            Err(SegmentError::System { source: nix::Error::ENOENT, .. }) => RingSegment::create(&name, &engine.0, self.capacity)?,
            Err(error) => {
                // A segment we cannot use stands in the way: replace it.
                tracing::warn!(engine = %engine, %error, "replacing an unusable ring segment");
                let _ = RingSegment::unlink(&name);
                RingSegment::create(&name, &engine.0, self.capacity)?
            }
        };
        self.insert(segment, generation)
    }

    /// The router is stopping: from now on no segment is removed, so that the engines, which
    /// live on, keep the rings the next router adopts (as after a kill -9). Removing them here
    /// stranded an engine on a deleted segment that a new one of the same name replaced.
    pub fn keep_for_next_router(&self) {
        self.shared.kept_for_next_router.store(true, Ordering::Release);
        let _ = std::fs::remove_file(&self.handoff_socket);
    }

    /// The ticket under which `engine`'s attachment takes its rings and channels from the
    /// handoff socket; its earlier one is void.
    pub fn ticket(&self, engine: Identity) -> Ticket {
        self.handoff.issue(engine)
    }

    /// `engine` detached: its ticket is void.
    pub fn withdraw_ticket(&self, engine: &Identity) {
        self.handoff.withdraw(engine);
    }

    /// Handoff requests refused.
    pub fn handoffs_refused(&self) -> u64 {
        self.handoff.refused.load(Ordering::Relaxed)
    }

    /// Detaches the engine's rings (if `generation` is current): nothing more is delivered to
    /// it, what it already wrote is still forwarded, then the segment is removed; its direct
    /// channels are revoked. Returns the messages lost with it in channels it never read.
    pub fn close(&self, engine: &Identity, generation: u64) -> u64 {
        if self.shared.kept_for_next_router.load(Ordering::Acquire) {
            return 0;
        }
        let removed = {
            let mut endpoints = self.shared.endpoints.write().unwrap_or_else(|p| p.into_inner());
            match endpoints.get(engine) {
                Some(endpoint) if endpoint.generation() == generation => endpoints.remove(engine),
                _ => None,
            }
        };
        let Some(endpoint) = removed else { return 0 };
        self.handoff.withdraw(engine);
        endpoint.closed.store(true, Ordering::Release);
        lock(&self.shared.draining).push(endpoint);
        self.changed();
        self.shared.channels.revoke(engine)
    }

    /// The doorbell's name, for engines.
    pub fn doorbell_name(&self) -> &str {
        &self.shared.doorbell.name
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// (direct channels open, messages their receivers read, messages their receivers dropped)
    pub fn channel_counters(&self) -> (u64, u64, u64) {
        self.shared.channels.counters()
    }

    /// (engines on rings, messages forwarded ring to ring, events forwarded by topic lanes,
    /// messages handed to the main thread)
    pub fn counters(&self) -> (u64, u64, u64, u64) {
        let attached = self.shared.endpoints.read().unwrap_or_else(|p| p.into_inner()).len() as u64;
        let shared = &self.shared;
        (attached, shared.forwarded.load(Ordering::Relaxed), shared.events_forwarded.load(Ordering::Relaxed), shared.handed_over.load(Ordering::Relaxed))
    }

    /// The lane of `topic`, made (closed) if it has none.
    pub fn lane(&self, topic: Identity) -> SharedLane {
        if let Some(lane) = self.existing_lane(&topic) {
            return lane;
        }
        let lane = self.shared.lanes.write().unwrap_or_else(|p| p.into_inner()).entry(topic).or_insert_with(Lane::closed).clone();
        self.changed();
        lane
    }

    /// The rings of `engine`, if it is on rings.
    pub fn endpoint(&self, engine: &Identity) -> Option<Arc<RingEndpoint>> {
        self.shared.endpoints.read().unwrap_or_else(|p| p.into_inner()).get(engine).cloned()
    }

    pub fn existing_lane(&self, topic: &Identity) -> Option<SharedLane> {
        self.shared.lanes.read().unwrap_or_else(|p| p.into_inner()).get(topic).cloned()
    }

    /// Every lane, with its topic.
    pub fn lanes(&self) -> Vec<(Identity, SharedLane)> {
        self.shared.lanes.read().unwrap_or_else(|p| p.into_inner()).iter().map(|(topic, lane)| (*topic, lane.clone())).collect()
    }

    /// Removes the lane of a topic that is gone (closed first, under its lock).
    pub fn remove_lane(&self, topic: &Identity) {
        if self.shared.lanes.write().unwrap_or_else(|p| p.into_inner()).remove(topic).is_some() {
            self.changed();
        }
    }

    /// Makes the ring thread look at the endpoints again (waking it if it sleeps).
    fn changed(&self) {
        self.shared.version.fetch_add(1, Ordering::Release);
        self.shared.doorbell.rings().fetch_add(1, Ordering::SeqCst);
        futex::wake(self.shared.doorbell.rings(), 1);
    }
}

/// The ring thread.
fn forward(shared: &Shared, slow: &mpsc::Sender<Slow>) {
    let mut seen = u64::MAX;
    let mut endpoints: Vec<Arc<RingEndpoint>> = Vec::new();
    let mut by_engine: HashMap<Identity, Arc<RingEndpoint>> = HashMap::new();
    let mut lanes: HashMap<Identity, SharedLane> = HashMap::new();
    let mut pacer = Pacer::default();
    loop {
        let version = shared.version.load(Ordering::Acquire);
        if version != seen {
            by_engine = shared.endpoints.read().unwrap_or_else(|p| p.into_inner()).clone();
            lanes = shared.lanes.read().unwrap_or_else(|p| p.into_inner()).clone();
            endpoints = by_engine.values().cloned().collect();
            endpoints.extend(lock(&shared.draining).iter().cloned());
            seen = version;
        }
        let (mut progressed, mut blocked) = (false, false);
        let mut drained = Vec::new();
        for endpoint in &endpoints {
            let turn = if endpoint.corrupt.load(Ordering::Acquire) { Turn::Idle } else { forward_from(shared, endpoint, &by_engine, &lanes, slow) };
            match turn {
                Turn::Moved => progressed = true,
                Turn::Blocked(moved) => {
                    blocked = true;
                    progressed |= moved;
                }
                Turn::Idle if endpoint.is_closed() => drained.push(endpoint.clone()),
                Turn::Idle => {}
                Turn::Stop => return,
            }
        }
        if !drained.is_empty() {
            // Under the lock `open` takes to reactivate: only rings still detached are removed.
            let mut unread_at_removal = Vec::new();
            lock(&shared.draining).retain(|e| {
                let done = e.is_closed() && drained.iter().any(|d| Arc::ptr_eq(d, e));
                if done && !shared.kept_for_next_router.load(Ordering::Acquire) {
                    unread_at_removal.push((e.engine, lock(&e.inbox).unread_messages()));
                    let _ = RingSegment::unlink(&e.segment.name);
                    let _ = RingSegment::unlink(&e.bell.name);
                }
                !done
            });
            shared.version.fetch_add(1, Ordering::Release);
            // Sent once the lock is released: the router thread takes it to reactivate rings,
            // and it is the one that empties this channel.
            for (engine, unread) in unread_at_removal.into_iter().filter(|(_, unread)| *unread > 0) {
                if slow.blocking_send(Slow::Unread { engine, unread }).is_err() {
                    return;
                }
            }
        }
        let round = match (progressed, blocked) {
            (true, _) => Round::Progressed,
            (false, true) => Round::Blocked,
            (false, false) => Round::Idle,
        };
        match pacer.after(round) {
            Pause::None => {}
            Pause::Spin => std::hint::spin_loop(),
            Pause::Yield => std::thread::yield_now(),
            // A receiver is full: its engine is slow. Wait for it without spinning.
            Pause::Sleep(pause) => std::thread::sleep(pause),
            Pause::Doorbell => shared.doorbell.sleep(|| {
                shared.version.load(Ordering::Acquire) != seen
                    || endpoints.iter().any(|e| !e.corrupt.load(Ordering::Acquire) && lock(&e.outbox).has_data())
            }),
        }
    }
}

enum Turn {
    Moved,
    /// A receiver or the main thread had no room; whether anything moved before.
    Blocked(bool),
    Idle,
    Stop,
}

/// Forwards up to a turn's worth of records from one engine's outbox.
fn forward_from(shared: &Shared, from: &Arc<RingEndpoint>, by_engine: &HashMap<Identity, Arc<RingEndpoint>>, lanes: &HashMap<Identity, SharedLane>, slow: &mpsc::Sender<Slow>) -> Turn {
    let mut outbox = lock(&from.outbox);
    let mut moved = 0;
    // The engine the latest records went to, woken when the records start going elsewhere or
    // the turn ends: one fence per run of records, not per record, and no allocation.
    let mut unwoken: Option<&Arc<RingEndpoint>> = None;
    let turn = loop {
        if moved == TURN {
            break Turn::Moved;
        }
        let record = match outbox.peek() {
            Ok(Some(record)) => record,
            Ok(None) => break if moved > 0 { Turn::Moved } else { Turn::Idle },
            Err(corrupt) => {
                from.corrupt.store(true, Ordering::Release);
                let problem = corrupt.to_string();
                if slow.blocking_send(Slow::Corrupt { engine: from.engine, generation: from.generation(), problem }).is_err() {
                    return Turn::Stop;
                }
                break Turn::Moved;
            }
        };
        if record.kind == Kind::Message {
            let envelope = records::read_envelope(record.body).ok();
            let lane = envelope.as_ref().and_then(|e| match e.dst {
                Destination::Topic(topic) => lanes.get(&topic).map(|lane| (lane, e)),
                _ => None,
            });
            if let Some((lane, envelope)) = lane {
                match topic_lane::offer(lane, from, envelope, record.body, by_engine, shared.max_body) {
                    Offered::Forwarded => {
                        shared.events_forwarded.fetch_add(1, Ordering::Relaxed);
                        outbox.consume();
                        moved += 1;
                        continue;
                    }
                    Offered::Blocked => break Turn::Blocked(moved > 0),
                    Offered::Elsewhere => {}
                }
            }
            // A signed message goes straight to its engine only once its signature verifies;
            // else the main thread refuses it.
            let verified = |e: &records::Envelope| !e.signed || records::read_message(record.body).is_ok_and(|m| m.signature_holds());
            let lane = envelope.and_then(|e| Some((fast_lane(from, &e, record.body.len(), by_engine, shared.max_body)?, e))).filter(|(_, e)| verified(e));
            if let Some((to, envelope)) = lane {
                match to.forward(record.body, &envelope) {
                    Ok(()) => {
                        shared.forwarded.fetch_add(1, Ordering::Relaxed);
                        shared.channels.forwarded(from, to);
                        outbox.consume();
                        moved += 1;
                        if let Some(previous) = unwoken.replace(to).filter(|previous| !Arc::ptr_eq(previous, to)) {
                            previous.wake();
                        }
                        continue;
                    }
                    Err(Full) => break Turn::Blocked(moved > 0),
                }
            }
        }
        if record.kind == Kind::ChannelSwitch {
            let switched = match records::read_channel_switch(record.body) {
                Some(peer) => shared.channels.switched(from, peer, by_engine.get(&peer)),
                None => Ok(tracing::warn!(engine = %from.engine, "skipped an unreadable channel switch")),
            };
            match switched {
                Ok(()) => {
                    outbox.consume();
                    moved += 1;
                    continue;
                }
                Err(Full) => break Turn::Blocked(moved > 0),
            }
        }
        if from.slow_in_flight.load(Ordering::Acquire) >= SLOW_PER_ENGINE {
            break Turn::Blocked(moved > 0);
        }
        let handover = match record.kind {
            Kind::Message => match records::read_message(record.body) {
                Ok(message) => Slow::Route { from: from.clone(), message },
                Err(detail) => Slow::Unreadable { from: from.clone(), id: records::message_id(record.body).unwrap_or(0), detail },
            },
            other => Slow::Unreadable { from: from.clone(), id: 0, detail: format!("engines do not write {other:?} records") },
        };
        // Counted before it is handed over: the main thread may settle it at once.
        from.slow_in_flight.fetch_add(1, Ordering::AcqRel);
        match slow.try_send(handover) {
            Ok(()) => {
                shared.handed_over.fetch_add(1, Ordering::Relaxed);
                outbox.consume();
                moved += 1;
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                from.slow_in_flight.fetch_sub(1, Ordering::AcqRel);
                break Turn::Blocked(moved > 0);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Turn::Stop,
        }
    };
    drop(outbox);
    if let Some(receiver) = unwoken {
        receiver.wake();
    }
    if moved > 0 {
        wake_if_sleeping(from.segment.word(OUTBOX_PRODUCER_WAITING_AT));
    }
    turn
}

/// The receiving ring engine, when the message can go straight there: it passes the checks
/// every engine's message must pass (`core::check_envelope`), and is for an engine on rings
/// here. Anything else takes the slow path, where the core decides, counts and refuses.
fn fast_lane<'a>(from: &RingEndpoint, envelope: &Envelope, record_len: usize, by_engine: &'a HashMap<Identity, Arc<RingEndpoint>>, max_body: usize) -> Option<&'a Arc<RingEndpoint>> {
    let Destination::Engine(dst) = envelope.dst else { return None };
    check_envelope(from.engine, envelope.src, envelope.body_len, envelope.expiry, max_body, now_ms()).ok()?;
    // A record its inbox can never take goes to the main thread, which drops it and counts.
    by_engine.get(&dst).filter(|to| !to.is_closed() && record_len <= to.largest_record)
}

/// Messages of one engine the main thread may hold at once (waiting for a lookup or for room);
/// past that, the ring thread leaves that engine's outbox, which fills and makes it wait.
const SLOW_PER_ENGINE: usize = 256;

/// Takes what the ring thread hands over: gives it to the core and tells the sending engine,
/// through its inbox ring, when a message was refused.
pub async fn serve_slow(state: Weak<RouterState>, mut slow: mpsc::Receiver<Slow>) {
    while let Some(item) = slow.recv().await {
        let Some(state) = state.upgrade() else { return };
        match item {
            Slow::Route { from, message } => {
                let id = message.id;
                let mut settled = state.submit_via(from.engine, message, true, true);
                match settled.now() {
                    Some(outcome) => state.tell_outcome(&from, id, outcome),
                    None => {
                        let state = Rc::downgrade(&state);
                        tokio::task::spawn_local(async move {
                            let outcome = settled.outcome().await;
                            if let Some(state) = state.upgrade() {
                                state.tell_outcome(&from, id, outcome);
                            }
                        });
                    }
                }
            }
            Slow::Unreadable { from, id, detail } => {
                let refused = Refused::malformed(detail);
                state.count(refused.reason, 1);
                state.tell_outcome(&from, id, Err(refused));
            }
            Slow::Corrupt { engine, generation, problem } => {
                tracing::warn!(engine = %engine, %problem, "detaching an engine whose ring is corrupt");
                state.detach_because(engine, generation, format!("its outbox ring is corrupt ({problem})"));
            }
            Slow::Unread { engine, unread } => {
                tracing::info!(engine = %engine, unread, "a detached engine's inbox ring held messages it never read");
                state.count(crate::core::DropReason::EngineGone, unread);
            }
        }
    }
}

impl RouterState {
    /// Settles a message a ring engine wrote: tells the engine if it was refused.
    fn tell_outcome(&self, to: &RingEndpoint, id: u64, outcome: Result<(), Refused>) {
        to.slow_in_flight.fetch_sub(1, Ordering::AcqRel);
        let Err(refused) = outcome else { return };
        tracing::debug!(engine = %to.engine.short(), id, detail = %refused.detail, "refused a ring message");
        if to.refuse(&Refusal { id, reason: refused.refusal, detail: refused.detail }).is_err() {
            // The engine's inbox is full: the drop is counted; the refusal cannot be told.
            self.refusals_lost.set(self.refusals_lost.get() + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment_exists(node: &Identity, engine: &Identity) -> bool {
        std::path::Path::new(&format!("/dev/shm{}", ring::segment_name(&node.0, &engine.0))).exists()
    }

    #[test]
    fn a_detached_engines_rings_are_removed_but_a_stopping_router_leaves_them_for_the_next() {
        let node = netmachine_schema::Keypair::generate().identity();
        let (slow, _slow) = mpsc::channel(16);
        let socket = std::env::temp_dir().join(format!("nm-rings-{}.sock", node.short()));
        let (streams, _handed) = tokio::sync::mpsc::channel(crate::handoff::STREAMS_WAITING);
        let rings = Rings::start(node, 4096, 1024, true, slow, (&socket, EngineAccess::default(), streams)).expect("rings");
        let (gone, staying) = (netmachine_schema::Keypair::generate().identity(), netmachine_schema::Keypair::generate().identity());
        rings.open(gone, 1).expect("rings of the engine that detaches");
        rings.open(staying, 1).expect("rings of the engine that stays");
        // An engine that detaches while the router runs: its drained rings are removed.
        rings.close(&gone, 1);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while segment_exists(&node, &gone) {
            assert!(std::time::Instant::now() < deadline, "the detached engine's segment was never removed");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // Stopping, the router drops every session: the rings stay, where the engine still
        // maps them and the next router adopts them.
        rings.keep_for_next_router();
        rings.close(&staying, 1);
        assert!(lock(&rings.shared.draining).is_empty(), "nothing is set to be removed");
        assert!(segment_exists(&node, &staying));
        let _ = RingSegment::unlink(&ring::segment_name(&node.0, &staying.0));
        let _ = RingSegment::unlink(&ring::doorbell_name(&node.0));
    }
}
