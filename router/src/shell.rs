//! The router's shell: it owns the core (`core::Router`) and everything with I/O around it, the
//! links to the identity store and transport, the engines' delivery queues and the rings. Every
//! event is fed to the core with the time (`feed`), and the core's outputs are carried out at
//! once: deliveries onto engine queues, outcomes to the callers waiting on them, lookups, frames
//! to transport and records for the identity store as tasks of their own, and one timer.

use tracing::Instrument;
use crate::attachment::{Attachment, Sink};
use crate::delivery_log::DeliveryLog;
use crate::core::{AttachRefused, DropReason, Input, Limits, Millis, Output, Refused, Router, Ticket};
use crate::rings::Rings;
use netmachine_schema::identity_store_capnp::identity_store;
use netmachine_schema::router_capnp::inbox;
use netmachine_schema::service_capnp::subscription;
use netmachine_schema::transport_capnp::transport;
use netmachine_schema::{time::now_ms, Destination, EngineLocation, EngineMessage, Identity, Keypair};
use netmachine_service::engine_access::EngineAccess;
use netmachine_service::home::{NodeHome, ServiceKind};
use netmachine_service::rpc::ConnectionStats;
use netmachine_service::Link;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use tokio::sync::{oneshot, Notify};

/// How long after a restart under live ring engines their events wait for them to attach and
/// subscribe again (they do within tens of milliseconds).
const ADOPTED_ENGINES_GRACE: Millis = 1_000;
/// How long after it starts the router tells other nodes only of the engines attached so far,
/// never that they are all (`Router::announce_partially_until`).
const ENGINES_RETURN: Millis = 5_000;

/// A message's outcome, once the core has placed or refused it.
pub(crate) struct Settled(oneshot::Receiver<Result<(), Refused>>);

impl Settled {
    pub(crate) async fn outcome(self) -> Result<(), Refused> {
        self.0.await.unwrap_or_else(|_| Err(Refused::no_route("the router stopped")))
    }

    /// The outcome if it is known already.
    pub(crate) fn now(&mut self) -> Option<Result<(), Refused>> {
        self.0.try_recv().ok()
    }
}

/// Everything the router's interfaces share.
pub struct RouterState {
    pub(crate) key: Keypair,
    pub(crate) home: NodeHome,
    pub(crate) stats: Rc<ConnectionStats>,
    core: RefCell<Router>,
    /// Callers waiting for a ticket's outcome.
    waiters: RefCell<HashMap<Ticket, oneshot::Sender<Result<(), Refused>>>>,
    next_ticket: Cell<u64>,
    /// Each attached engine's delivery queue (its room is counted by the core).
    pub(crate) attachments: RefCell<HashMap<Identity, Attachment>>,
    pub(crate) identity_store: Link<identity_store::Client>,
    pub(crate) store_watch: RefCell<Option<subscription::Client>>,
    pub(crate) transport: Link<transport::Client>,
    pub(crate) transport_events: RefCell<Option<subscription::Client>>,
    pub(crate) arrival_orders: RefCell<HashMap<Identity, Rc<tokio::sync::Mutex<()>>>>,
    /// Announcements are recorded in the identity store one after another, in the order they
    /// came: an engine that left and came back is stored, not deleted by the older news.
    pub(crate) records_in_order: tokio::sync::Mutex<()>,
    generations: Cell<u64>,
    pub(crate) attach_refused: Cell<u64>,
    /// Which Unix users may attach engines.
    pub(crate) engine_access: EngineAccess,
    /// The shared-memory rings; `None` when turned off (`router.ring_bytes = 0`) or unavailable.
    pub(crate) rings: Option<Rings>,
    pub(crate) refusals_lost: Cell<u64>,
    /// The log of frames sent other nodes and of theirs taken in (`None` if it cannot be
    /// written: delivery between nodes then outlives transport and peers, not this process).
    delivery: RefCell<Option<DeliveryLog>>,
    /// The log failed the last time it was written (said once, until it works again).
    delivery_failing: Cell<bool>,
    /// Writes to the log that failed (each one a frame or a record not kept for a restart).
    pub(crate) delivery_log_failures: Cell<u64>,
    timer: Rc<Notify>,
    /// The time the timer task sleeps until (`None`: until it is told).
    timer_armed: Cell<Option<Millis>>,
    /// The topic whose lane the main thread holds locked now (`with_topic`).
    lane_held: Cell<Option<Identity>>,
}

impl RouterState {
    /// The router of the node whose home is `home`, holding the node key.
    pub fn new(home: NodeHome, key: Keypair, stats: Rc<ConnectionStats>) -> Rc<Self> {
        let words = home.config.rpc_word_limit();
        let (slow_tx, slow) = tokio::sync::mpsc::channel(1024);
        let (streams, handed_streams) = tokio::sync::mpsc::channel(crate::handoff::STREAMS_WAITING);
        let engine_access = home.config.engine_access().unwrap_or_default();
        let rings = match home.config.router.ring_bytes {
            0 => None,
            bytes => {
                let max_body = home.config.limits.max_message_bytes as usize;
                let handoff = netmachine_engine::ring::handoff_socket(&home.socket(ServiceKind::Router));
                match Rings::start(key.identity(), bytes as usize, max_body, home.config.router.direct_channels, slow_tx, (&handoff, engine_access.clone(), streams)) {
                    Ok(rings) => Some(rings),
                    Err(error) => {
                        tracing::warn!(%error, "shared-memory rings unavailable; engines use the socket path");
                        None
                    }
                }
            }
        };
        let run = run_started();
        let (delivery, resumed) = match DeliveryLog::open(&home.data_dir().join("router").join("delivery"), run, words) {
            Ok((log, resumed)) => (Some(log), resumed),
            Err(error) => {
                tracing::error!(%error, "cannot keep a log of frames sent to other nodes: a router killed loses what they had not acknowledged");
                (None, crate::delivery_log::Resumed { session: run, ..Default::default() })
            }
        };
        let state = Rc::new_cyclic(|weak| RouterState {
            core: RefCell::new(Router::new(key.clone(), Limits::from_config(&home.config), resumed.session, run)),
            key,
            stats,
            waiters: RefCell::new(HashMap::new()),
            next_ticket: Cell::new(0),
            attachments: RefCell::new(HashMap::new()),
            identity_store: Link::start(
                ServiceKind::IdentityStore,
                home.socket(ServiceKind::IdentityStore),
                words,
                crate::watcher::on_identity_store_connect(weak.clone()),
            ),
            store_watch: RefCell::new(None),
            transport: Link::start(
                ServiceKind::Transport,
                home.socket(ServiceKind::Transport),
                words,
                crate::transport_link::on_transport_connect(weak.clone()),
            ),
            transport_events: RefCell::new(None),
            arrival_orders: RefCell::new(HashMap::new()),
            records_in_order: tokio::sync::Mutex::new(()),
            generations: Cell::new(0),
            attach_refused: Cell::new(0),
            engine_access,
            rings,
            refusals_lost: Cell::new(0),
            delivery: RefCell::new(delivery),
            delivery_failing: Cell::new(false),
            delivery_log_failures: Cell::new(0),
            timer: Rc::new(Notify::new()),
            timer_armed: Cell::new(None),
            lane_held: Cell::new(None),
            home,
        });
        // Engines attached to the previous run attach again meanwhile.
        state.core.borrow_mut().announce_partially_until(now_ms() + ENGINES_RETURN);
        if state.rings.as_ref().is_some_and(|rings| rings.counters().0 > 0) {
            // Engines outlived the previous router: their events wait for them to subscribe again.
            state.core.borrow_mut().hold_events_until(now_ms() + ADOPTED_ENGINES_GRACE);
        }
        {
            let mut core = state.core.borrow_mut();
            for (node, session, through) in resumed.receiving {
                core.resume_receiving(node, session, through);
            }
            for (node, next, frames) in resumed.sending {
                if !frames.is_empty() {
                    tracing::info!(peer = %node.short(), frames = frames.len(), "frames the last run did not have acknowledged go again");
                }
                core.resume_sending(node, next, frames, now_ms());
            }
            core.count(DropReason::Malformed, resumed.unreadable);
        }
        tokio::task::spawn_local(crate::rings::serve_slow(Rc::downgrade(&state), slow));
        tokio::task::spawn_local(run_timer(Rc::downgrade(&state), state.timer.clone()));
        tokio::task::spawn_local(crate::send_stream::take_handed(Rc::downgrade(&state), handed_streams));
        state.carry_out();
        state
    }

    /// Whether frames to other nodes are logged (the log could be opened).
    pub(crate) fn delivery_logged(&self) -> bool {
        self.delivery.borrow().is_some()
    }

    /// Writes to the delivery log; a failure is counted, and said once until a write works again.
    fn log_delivery(&self, write: impl FnOnce(&mut DeliveryLog) -> std::io::Result<()>) {
        let Some(log) = self.delivery.borrow_mut().as_mut().map(write) else { return };
        match log {
            Ok(()) => self.delivery_failing.set(false),
            Err(error) => {
                self.delivery_log_failures.set(self.delivery_log_failures.get() + 1);
                if !self.delivery_failing.replace(true) {
                    tracing::error!(%error, "cannot write the log of frames to other nodes: a router killed now may lose what they had not acknowledged");
                }
            }
        }
    }

    /// Tells the core what happened, and carries out what it answers.
    pub(crate) fn feed(self: &Rc<Self>, input: Input) {
        self.core.borrow_mut().handle(input, now_ms());
        self.carry_out();
    }

    /// A fresh ticket whose outcome `settled` will hold.
    pub(crate) fn ticket(&self) -> (Ticket, Settled) {
        let ticket = Ticket(self.next_ticket.get());
        self.next_ticket.set(ticket.0 + 1);
        let (tx, rx) = oneshot::channel();
        self.waiters.borrow_mut().insert(ticket, tx);
        (ticket, Settled(rx))
    }

    /// Gives one message from the attached engine `sender` to the core; the receiver holds its
    /// outcome (`Ok` once it is queued for its destination). `wait`: it may wait for room.
    pub(crate) fn submit(self: &Rc<Self>, sender: Identity, message: EngineMessage, wait: bool) -> Settled {
        self.submit_via(sender, message, wait, false)
    }

    /// `submit`, for a message `sender` wrote to its outbox ring (`from_ring`) or sent over the
    /// socket.
    pub(crate) fn submit_via(self: &Rc<Self>, sender: Identity, message: EngineMessage, wait: bool, from_ring: bool) -> Settled {
        let (ticket, settled) = self.ticket();
        let Destination::Topic(topic) = message.dst else {
            self.feed(Input::Send { ticket, sender, message, wait });
            return settled;
        };
        self.with_topic(topic, || {
            // An event over the socket from a ring engine whose earlier events (from its rings)
            // the main thread still holds: taking it now could put it before them.
            let busy = !from_ring && self.rings.as_ref().and_then(|rings| rings.endpoint(&sender)).is_some_and(|ring| ring.has_slow_in_flight());
            if busy {
                let slowest = self.core().topic(&topic).and_then(|t| self.core().slow_subscribers(t).first().copied()).unwrap_or(topic);
                let refused = Refused::back_pressured(slowest, format!("events engine {sender} wrote to its ring earlier still wait to be routed"));
                self.count(refused.reason, 1);
                if let Some(waiter) = self.waiters.borrow_mut().remove(&ticket) {
                    let _ = waiter.send(Err(refused));
                }
                return;
            }
            self.feed(Input::Send { ticket, sender, message, wait });
        });
        settled
    }

    /// Waits (up to the send wait) until the main thread holds no message `engine` wrote to its
    /// rings: what it sends over the socket after them about a topic (an event, LastSeq) must
    /// not go before them.
    pub(crate) async fn ring_settled(&self, engine: &Identity) {
        let Some(ring) = self.rings.as_ref().and_then(|rings| rings.endpoint(engine)) else { return };
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(self.core().limits().send_wait);
        while ring.has_slow_in_flight() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// Runs `work`, which may route events of `topic` or change it, with the topic's lane
    /// locked, after giving the core what the lane routed, and brings the lane up to date after.
    pub(crate) fn with_topic<T>(self: &Rc<Self>, topic: Identity, work: impl FnOnce() -> T) -> T {
        let Some(lane) = self.rings.as_ref().and_then(|rings| rings.existing_lane(&topic)) else { return work() };
        let mut lane = crate::rings::lock(&lane);
        lane.report(&mut self.core.borrow_mut(), topic);
        self.lane_held.set(Some(topic));
        let answer = work();
        self.lane_held.set(None);
        lane.update(&self.core.borrow(), &topic);
        drop(lane);
        if self.core().topic(&topic).is_none() {
            if let Some(rings) = &self.rings {
                rings.remove_lane(&topic);
            }
        }
        answer
    }

    /// A topic request (`change`) with the topic's lane held (`with_topic`).
    pub(crate) fn change_topic<T>(self: &Rc<Self>, topic: Identity, request: impl FnOnce(&mut Router, Millis) -> T) -> T {
        self.with_topic(topic, || self.change(request))
    }

    /// Gives the core what every lane routed, for status reports.
    pub(crate) fn report_lanes(&self) {
        let Some(rings) = &self.rings else { return };
        for (topic, lane) in rings.lanes() {
            crate::rings::lock(&lane).report(&mut self.core.borrow_mut(), topic);
        }
    }

    /// Brings the lanes of the topics the core touched up to date (the one `with_topic` holds
    /// is brought up to date there): made for a new topic, closed and removed for one gone.
    fn update_lanes(&self) {
        let Some(rings) = &self.rings else { return };
        let touched = self.core.borrow_mut().take_touched_topics();
        for topic in touched {
            if self.lane_held.get() == Some(topic) {
                continue;
            }
            let core = self.core.borrow();
            match core.topic(&topic) {
                Some(_) => crate::rings::lock(&rings.lane(topic)).update(&core, &topic),
                None => {
                    drop(core);
                    if let Some(lane) = rings.existing_lane(&topic) {
                        let mut lane = crate::rings::lock(&lane);
                        lane.report(&mut self.core.borrow_mut(), topic);
                        lane.update(&self.core.borrow(), &topic);
                        drop(lane);
                        rings.remove_lane(&topic);
                    }
                }
            }
        }
    }

    /// Counts a drop the shell saw itself.
    pub(crate) fn count(&self, reason: DropReason, n: u64) {
        self.core.borrow_mut().count(reason, n);
    }

    pub(crate) fn core(&self) -> std::cell::Ref<'_, Router> {
        self.core.borrow()
    }

    /// Asks the core something that may change what it routes (a topic request), with the
    /// time, and carries out what it answers.
    pub(crate) fn change<T>(self: &Rc<Self>, request: impl FnOnce(&mut Router, Millis) -> T) -> T {
        let answer = request(&mut self.core.borrow_mut(), now_ms());
        self.carry_out();
        answer
    }

    fn carry_out(self: &Rc<Self>) {
        loop {
            let Some(output) = self.core.borrow_mut().poll_output() else { break };
            match output {
                Output::Deliver { engine, generation, message } => {
                    let delivered = self.attachments.borrow().get(&engine).filter(|a| a.generation == generation).is_some_and(|a| a.deliver(message));
                    if !delivered {
                        self.count(DropReason::EngineGone, 1);
                    }
                }
                Output::Settled { ticket, outcome } => {
                    if let Some(waiter) = self.waiters.borrow_mut().remove(&ticket) {
                        let _ = waiter.send(outcome);
                    }
                }
                Output::Lookup(id) => {
                    tokio::task::spawn_local(self.clone().lookup(id));
                }
                Output::Transmit { node, header, batch } => {
                    if header.seq != 0 {
                        self.log_delivery(|log| log.sent(node, header.seq, &batch));
                    }
                    let span = tracing::debug_span!("peer", node = %node.short(), seq = header.seq, messages = batch.len());
                    tokio::task::spawn_local(self.clone().hand_over(node, header, batch).instrument(span));
                }
                Output::Acknowledged { node, kept_from } => self.log_delivery(|log| log.acknowledged(node, kept_from)),
                Output::Taken { node, session, through } => self.log_delivery(|log| log.taken(node, session, through)),
                Output::Record { node, announcement } => {
                    let span = tracing::info_span!("peer", node = %node.short());
                    tokio::task::spawn_local(self.clone().record_announcement(node, announcement).instrument(span));
                }
            }
        }
        // After the deliveries are queued: a lane passes a subscriber with some queued, so an
        // event the lane may now take cannot reach it before them.
        self.update_lanes();
        let wanted = self.core.borrow().poll_timeout();
        if wanted.is_some_and(|at| self.timer_armed.get().is_none_or(|armed| at < armed)) {
            self.timer.notify_one();
        }
    }

    /// Attaches the engine whose signed `location` is on this node, delivering to `sink`; its
    /// `inbox` is told if the router detaches it.
    pub(crate) fn attach(self: &Rc<Self>, location: EngineLocation, public: bool, inbox: inbox::Client, sink: impl FnOnce(u64) -> Sink) -> Result<u64, AttachRefused> {
        let generation = self.generations.get() + 1;
        self.generations.set(generation);
        let engine = location.engine;
        self.core.borrow_mut().attach(location, generation, public, now_ms())?;
        let attachment = Attachment::start(engine, generation, sink(generation), inbox, Rc::downgrade(self));
        self.attachments.borrow_mut().insert(engine, attachment);
        tracing::info!(engine = %engine, public, "engine attached");
        self.carry_out();
        Ok(generation)
    }

    /// The router is stopping: its engines' rings stay for the next router to adopt.
    pub fn keep_rings_for_next_router(&self) {
        if let Some(rings) = &self.rings {
            rings.keep_for_next_router();
        }
    }

    /// Detaches `engine` for `reason` (the router's decision, not the engine's), and tells the
    /// engine why, within a second, if it still listens.
    pub(crate) fn detach_because(self: &Rc<Self>, engine: Identity, generation: u64, reason: String) {
        let inbox = self.attachments.borrow().get(&engine).filter(|a| a.generation == generation).map(|a| a.inbox.clone());
        self.detach(engine, generation);
        if let Some(inbox) = inbox {
            let mut told = inbox.detached_request();
            told.get().set_reason(reason.as_str());
            tokio::task::spawn_local(async move {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), told.send().promise).await;
            });
        }
    }

    /// Detaches `engine` if `generation` is its current attachment, and tells the other nodes.
    pub(crate) fn detach(self: &Rc<Self>, engine: Identity, generation: u64) {
        if let Some(rings) = &self.rings {
            let lost = rings.close(&engine, generation);
            if lost > 0 {
                tracing::info!(engine = %engine, lost, "the engine's direct channels held messages it never read");
                self.count(crate::core::DropReason::EngineGone, lost);
            }
        }
        if self.core.borrow_mut().detach(engine, generation, now_ms()) {
            let mut attachments = self.attachments.borrow_mut();
            if attachments.get(&engine).is_some_and(|a| a.generation == generation) {
                attachments.remove(&engine);
                if let Some(rings) = &self.rings {
                    rings.withdraw_ticket(&engine);
                }
            }
            drop(attachments);
            tracing::info!(engine = %engine, "engine detached");
            self.carry_out();
        }
    }
}

/// This run (and the session for the frames it sends other nodes, when no earlier one was
/// logged): the time it started, in nanoseconds, larger than any earlier run's.
fn run_started() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
}

/// Feeds the core its timer: sleeps until the time it asked for, or until told it asks sooner.
async fn run_timer(state: std::rc::Weak<RouterState>, told: Rc<Notify>) {
    loop {
        let wanted = {
            let Some(state) = state.upgrade() else { return };
            let wanted = state.core.borrow().poll_timeout();
            state.timer_armed.set(wanted);
            if wanted.is_some_and(|at| at <= now_ms()) {
                state.feed(Input::Timer);
                continue;
            }
            wanted
        };
        match wanted {
            Some(at) => {
                let sleep = tokio::time::sleep(std::time::Duration::from_millis(at.saturating_sub(now_ms())));
                tokio::select! {
                    _ = sleep => {}
                    _ = told.notified() => {}
                }
            }
            None => told.notified().await,
        }
    }
}
