//! The router's RPC face: engines attach (challenge, then proof of key), send through their
//! session, and receive through the Inbox they handed over. Sends are routed by the table;
//! a destination the table does not know is looked up in the identity store.

use crate::attachment::{enqueue, Attachment, Sink};
use crate::rings::{Rings, Slow};
use netmachine_engine::ring::records::Refusal;
use crate::drops::{DropCounters, DropReason};
use crate::table::{Known, Route, RoutingTable};
use crate::watcher::on_identity_store_connect;
use crate::remote::{Announcement, Outgoing};
use netmachine_schema::identity_store_capnp::identity_store;
use netmachine_schema::router_capnp::{attachment, engine_session, router, SendRefusal};
use netmachine_schema::service_capnp::{service, subscription};
use netmachine_schema::transport_capnp::transport;
use netmachine_service::queue::ExpiringQueue;
use std::collections::{HashMap, HashSet};
use netmachine_schema::{signing, time::now_ms, EngineMessage, Identity, Keypair, MessageError};
use netmachine_service::home::{NodeHome, ServiceKind};
use netmachine_service::rpc::ConnectionStats;
use netmachine_service::status::StatusReport;
use netmachine_service::Link;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

/// How long a send waits for the identity store to answer a lookup.
const LOOKUP_WAIT: Duration = Duration::from_secs(2);

/// Everything the router's interfaces share.
pub struct RouterState {
    pub(crate) key: Keypair,
    pub(crate) home: NodeHome,
    stats: Rc<ConnectionStats>,
    pub(crate) table: Rc<RefCell<RoutingTable<Attachment>>>,
    pub(crate) drops: Rc<DropCounters>,
    pub(crate) identity_store: Link<identity_store::Client>,
    _watch: Rc<RefCell<Option<subscription::Client>>>,
    pub(crate) transport: Link<transport::Client>,
    pub(crate) transport_events: RefCell<Option<subscription::Client>>,
    /// Nodes transport is connected to: engine announcements go to them.
    pub(crate) connected: RefCell<HashSet<Identity>>,
    pub(crate) outboxes: RefCell<HashMap<Identity, Rc<ExpiringQueue<Outgoing>>>>,
    pub(crate) arrival_orders: RefCell<HashMap<Identity, Rc<tokio::sync::Mutex<()>>>>,
    generations: Cell<u64>,
    accepted: Cell<u64>,
    attach_refused: Cell<u64>,
    pub(crate) remote_sent: Cell<u64>,
    pub(crate) remote_received: Cell<u64>,
    /// The shared-memory rings; `None` when turned off (`router.ring_bytes = 0`) or unavailable.
    pub(crate) rings: Option<Rings>,
    refusals_lost: Cell<u64>,
}

impl RouterState {
    /// The router of the node whose home is `home`, holding the node key.
    pub fn new(home: NodeHome, key: Keypair, stats: Rc<ConnectionStats>) -> Rc<Self> {
        let table = Rc::new(RefCell::new(RoutingTable::new(
            key.identity(),
            home.config.router.cache_entries as usize,
        )));
        let watch = Rc::new(RefCell::new(None));
        let identity_store = Link::start(
            ServiceKind::IdentityStore,
            home.socket(ServiceKind::IdentityStore),
            home.config.rpc_word_limit(),
            on_identity_store_connect(table.clone(), watch.clone()),
        );
        let transport_socket = home.socket(ServiceKind::Transport);
        let words = home.config.rpc_word_limit();
        let (slow_tx, slow) = tokio::sync::mpsc::channel(1024);
        let rings = match home.config.router.ring_bytes {
            0 => None,
            bytes => {
                let max_body = home.config.limits.max_message_bytes as usize;
                match Rings::start(key.identity(), bytes as usize, max_body, slow_tx) {
                    Ok(rings) => Some(rings),
                    Err(error) => {
                        tracing::warn!(%error, "shared-memory rings unavailable; engines use the socket path");
                        None
                    }
                }
            }
        };
        let state = Rc::new_cyclic(|weak| RouterState {
            key,
            home,
            stats,
            table,
            drops: Rc::new(DropCounters::default()),
            identity_store,
            _watch: watch,
            transport: Link::start(
                ServiceKind::Transport,
                transport_socket,
                words,
                crate::transport_link::on_transport_connect(weak.clone()),
            ),
            transport_events: RefCell::new(None),
            connected: RefCell::new(HashSet::new()),
            outboxes: RefCell::new(HashMap::new()),
            arrival_orders: RefCell::new(HashMap::new()),
            generations: Cell::new(0),
            accepted: Cell::new(0),
            attach_refused: Cell::new(0),
            remote_sent: Cell::new(0),
            remote_received: Cell::new(0),
            rings,
            refusals_lost: Cell::new(0),
        });
        tokio::task::spawn_local(serve_slow(Rc::downgrade(&state), slow));
        state
    }

    /// The router's bootstrap interface.
    pub fn client(self: &Rc<Self>) -> router::Client {
        capnp_rpc::new_client(RouterServer(self.clone()))
    }

    async fn lookup(&self, id: Identity) -> Result<Option<Known>, String> {
        let store = self
            .identity_store
            .client_within(LOOKUP_WAIT)
            .await
            .ok_or("the identity store is unreachable")?;
        let mut request = store.lookup_request();
        request.get().set_id(&id.0);
        let answer = tokio::time::timeout(LOOKUP_WAIT, request.send().promise)
            .await
            .map_err(|_| "the identity store did not answer in time".to_string())?
            .map_err(|e| format!("identity store lookup failed: {e}"))?;
        let answer = answer.get().map_err(|e| e.to_string())?;
        if !answer.get_found() {
            return Ok(None);
        }
        let record = answer.get_record().map_err(|e| e.to_string())?;
        Known::from_record(record).map(Some).map_err(|e| e.to_string())
    }

    /// Routes one message from an attached engine; `Ok` once it is queued for its destination.
    pub(crate) async fn route(self: &Rc<Self>, message: EngineMessage) -> Result<(), (DropReason, SendRefusal, String)> {
        if message.body.len() > self.home.config.limits.max_message_bytes as usize {
            return Err((
                DropReason::OverLimit,
                SendRefusal::OverLimit,
                format!(
                    "the body is {} bytes, over this node's limit of {} (limits.max_message_bytes)",
                    message.body.len(),
                    self.home.config.limits.max_message_bytes
                ),
            ));
        }
        let mut route = self.table.borrow().route(&message, now_ms());
        if let Route::Lookup(id) = route {
            let found = self.lookup(id).await.map_err(|detail| {
                (DropReason::NoRoute, SendRefusal::NoRoute, format!("cannot look up {id}: {detail}"))
            })?;
            route = self.table.borrow_mut().route_after_lookup(&message, id, found, now_ms());
        }
        match route {
            Route::Local(engine) => {
                let queue = self.table.borrow().attachment(&engine).map(Attachment::queue);
                let queue = queue.ok_or((DropReason::NoRoute, SendRefusal::NoRoute, format!("engine {engine} detached")))?;
                let wait = Duration::from_millis(self.home.config.limits.send_wait_ms);
                enqueue(queue, message, wait).await.map_err(|(reason, detail)| {
                    let refusal = match reason {
                        DropReason::QueueFull => SendRefusal::QueueFull,
                        DropReason::Expired => SendRefusal::Expired,
                        _ => SendRefusal::NoRoute,
                    };
                    (reason, refusal, detail)
                })
            }
            Route::Remote(node) => {
                let wait = Duration::from_millis(self.home.config.limits.send_wait_ms);
                self.send_remote(node, Outgoing::Message(message), wait).await.map_err(|(reason, detail)| {
                    let refusal = match reason {
                        DropReason::QueueFull => SendRefusal::QueueFull,
                        _ => SendRefusal::NoRoute,
                    };
                    (reason, refusal, detail)
                })
            }
            Route::Node => Box::pin(self.answer_node_message(message))
                .await
                .map_err(|(reason, detail)| (reason, SendRefusal::NoRoute, detail)),
            Route::Lookup(id) => Err((DropReason::NoRoute, SendRefusal::NoRoute, format!("no route to {id}"))),
            Route::Drop(reason, detail) => {
                let refusal = match reason {
                    DropReason::Expired => SendRefusal::Expired,
                    _ => SendRefusal::NoRoute,
                };
                Err((reason, refusal, detail))
            }
        }
    }

    fn attach(
        self: &Rc<Self>,
        engine: Identity,
        public: bool,
        inbox: netmachine_schema::router_capnp::inbox::Client,
        want_ring: bool,
        mut grant: netmachine_schema::router_capnp::ring_grant::Builder<'_>,
    ) -> Result<engine_session::Client, capnp::Error> {
        let mut table = self.table.borrow_mut();
        if table.attachment(&engine).is_some() {
            return Err(capnp::Error::failed(format!(
                "attach refused: engine {engine} is already attached (another process holds its key)"
            )));
        }
        let max = self.home.config.limits.max_engines as usize;
        if table.attached_count() >= max {
            return Err(capnp::Error::overloaded(format!(
                "attach refused: {max} engines are attached (limits.max_engines)"
            )));
        }
        let generation = self.generations.get() + 1;
        self.generations.set(generation);
        let state = Rc::downgrade(self);
        let on_gone = move || {
            if let Some(state) = state.upgrade() {
                state.detach(engine, generation);
            }
        };
        let sink = match (&self.rings, want_ring) {
            (Some(rings), true) => match rings.open(engine, generation) {
                Ok(endpoint) => {
                    grant.set_granted(true);
                    grant.set_segment(endpoint.segment.name.as_str());
                    grant.set_doorbell(rings.doorbell_name());
                    grant.set_capacity(rings.capacity() as u32);
                    Sink::Ring(endpoint)
                }
                Err(error) => {
                    tracing::warn!(engine = %engine, %error, "no rings for this engine; it uses the socket path");
                    grant.set_reason(error.to_string().as_str());
                    Sink::Socket(inbox)
                }
            },
            (None, true) => {
                grant.set_reason("this router runs without shared-memory rings");
                Sink::Socket(inbox)
            }
            (_, false) => Sink::Socket(inbox),
        };
        let capacity = self.home.config.limits.engine_queue as usize;
        let attachment = Attachment::start(engine, generation, public, sink, capacity, self.drops.clone(), on_gone);
        table.attach(engine, attachment);
        drop(table);
        tracing::info!(engine = %engine, public, "engine attached");
        self.announce(None, Announcement { full: false, attached: vec![engine], detached: vec![] });
        Ok(capnp_rpc::new_client(Session { state: self.clone(), engine, generation }))
    }
}

impl RouterState {
    /// Detaches `engine` if `generation` is its current attachment, and tells the other nodes.
    fn detach(self: &Rc<Self>, engine: Identity, generation: u64) {
        if let Some(rings) = &self.rings {
            rings.close(&engine, generation);
        }
        let gone = self.table.borrow_mut().detach(&engine, |a| a.generation == generation);
        if gone.is_some() {
            tracing::info!(engine = %engine, "engine detached");
            self.announce(None, Announcement { full: false, attached: vec![], detached: vec![engine] });
        }
    }
}

/// Takes what the ring thread hands over: routes it (waiting where needed) and tells the
/// sending engine, through its inbox ring, when a message was refused.
async fn serve_slow(state: std::rc::Weak<RouterState>, mut slow: tokio::sync::mpsc::Receiver<Slow>) {
    while let Some(item) = slow.recv().await {
        let Some(state) = state.upgrade() else { return };
        match item {
            Slow::Route { from, message } => {
                let id = message.id;
                let outcome = if message.src != from.engine {
                    Err((
                        DropReason::Malformed,
                        SendRefusal::BadSource,
                        format!("src is {}, but this ring belongs to engine {}", message.src, from.engine),
                    ))
                } else {
                    state.route(message).await
                };
                match outcome {
                    Ok(()) => state.accepted.set(state.accepted.get() + 1),
                    Err((reason, refusal, detail)) => {
                        state.drops.count(reason, 1);
                        state.tell_refusal(&from, Refusal { id, reason: refusal, detail });
                    }
                }
            }
            Slow::Unreadable { from, id, detail } => {
                state.drops.count(DropReason::Malformed, 1);
                state.tell_refusal(&from, Refusal { id, reason: SendRefusal::Malformed, detail });
            }
            Slow::Corrupt { engine, generation, problem } => {
                tracing::warn!(engine = %engine, %problem, "detaching an engine whose ring is corrupt");
                state.detach(engine, generation);
            }
        }
    }
}

impl RouterState {
    fn tell_refusal(&self, to: &crate::rings::RingEndpoint, refusal: Refusal) {
        tracing::debug!(engine = %to.engine.short(), id = refusal.id, detail = %refusal.detail, "refused a ring message");
        if to.refuse(&refusal).is_err() {
            // The engine's inbox is full: the drop is counted; the refusal cannot be told.
            self.refusals_lost.set(self.refusals_lost.get() + 1);
        }
    }
}

struct RouterServer(Rc<RouterState>);

impl service::Server for RouterServer {
    async fn status(self: Rc<Self>, _: service::StatusParams, mut results: service::StatusResults) -> capnp::Result<()> {
        let state = &self.0;
        let table = state.table.borrow();
        let mut engines: Vec<Identity> = table.attached().copied().collect();
        engines.sort();
        let mut counters = vec![
            ("engines_attached", engines.len() as u64),
            ("messages_accepted", state.accepted.get()),
            ("attach_refused", state.attach_refused.get()),
            ("identities_cached", table.known_count() as u64),
            ("remote_messages_sent", state.remote_sent.get()),
            ("remote_messages_received", state.remote_received.get()),
            ("nodes_connected", state.connected.borrow().len() as u64),
        ];
        if let Some(rings) = &state.rings {
            let (on_rings, forwarded, handed_over) = rings.counters();
            counters.extend([
                ("engines_on_rings", on_rings),
                ("ring_messages_forwarded", forwarded),
                ("ring_messages_handed_over", handed_over),
                ("ring_refusals_lost", state.refusals_lost.get()),
            ]);
        }
        counters.extend(state.drops.report());
        counters.extend(state.stats.counters());
        StatusReport {
            kind: ServiceKind::Router,
            node: Some(state.key.identity()),
            note: "",
            links: vec![state.identity_store.state(), state.transport.state()],
            counters,
            engines,
        }
        .write(results.get().init_status());
        Ok(())
    }
}

impl router::Server for RouterServer {
    async fn attach(self: Rc<Self>, params: router::AttachParams, mut results: router::AttachResults) -> capnp::Result<()> {
        let engine = Identity::from_slice("engine", params.get()?.get_engine()?)
            .map_err(|e| capnp::Error::failed(format!("attach refused: {e}")))?;
        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce).map_err(|e| capnp::Error::failed(format!("no randomness: {e}")))?;
        let mut out = results.get();
        out.set_challenge(&nonce);
        out.set_node(&self.0.key.identity().0);
        out.set_attachment(capnp_rpc::new_client(Challenge {
            state: self.0.clone(),
            engine,
            nonce,
            used: Cell::new(false),
        }));
        Ok(())
    }

    async fn receive_frame(self: Rc<Self>, params: router::ReceiveFrameParams, _: router::ReceiveFrameResults) -> capnp::Result<()> {
        let params = params.get()?;
        let src = Identity::from_slice("src", params.get_src()?).map_err(|e| capnp::Error::failed(e.to_string()))?;
        let state = &self.0;
        match state.receive_frame(src, params.get_frame()?, params.get_public()).await {
            Ok(()) => Ok(()),
            Err(refused) => {
                state.drops.count(refused.reason, 1);
                tracing::warn!(peer = %src, reason = ?refused.reason, detail = %refused.detail, "refused a frame");
                if refused.disconnect {
                    if let Some(transport) = state.transport.client() {
                        let mut request = transport.disconnect_request();
                        request.get().set_node(&src.0);
                        request.get().set_reason(refused.detail.as_str());
                        let _ = request.send().promise.await;
                    }
                }
                Err(capnp::Error::failed(format!("frame refused: {}", refused.detail)))
            }
        }
    }

    async fn sign_advert(self: Rc<Self>, params: router::SignAdvertParams, mut results: router::SignAdvertResults) -> capnp::Result<()> {
        let params = params.get()?;
        let advert = self.0.sign_advert(params.get_addrs()?, params.get_protocols()?).await?;
        results.get().set_advert(advert.get_root_as_reader()?)?;
        Ok(())
    }
}

/// An attach in progress: the engine must sign the challenge with its key.
struct Challenge {
    state: Rc<RouterState>,
    engine: Identity,
    nonce: [u8; 32],
    used: Cell<bool>,
}

impl attachment::Server for Challenge {
    async fn prove(self: Rc<Self>, params: attachment::ProveParams, mut results: attachment::ProveResults) -> capnp::Result<()> {
        let params = params.get()?;
        let state = &self.state;
        let payload = signing::attach_challenge(&state.key.identity(), &self.engine, &self.nonce);
        if self.used.replace(true) {
            state.attach_refused.set(state.attach_refused.get() + 1);
            return Err(capnp::Error::failed("attach refused: this challenge was already answered; call attach again".into()));
        }
        if let Err(e) = self.engine.verify(&payload, params.get_signature()?) {
            state.attach_refused.set(state.attach_refused.get() + 1);
            tracing::warn!(engine = %self.engine, error = %e, "attach refused: key not proven");
            return Err(capnp::Error::failed(format!(
                "attach refused: the challenge signature does not prove the key of engine {} ({e})",
                self.engine
            )));
        }
        let mut out = results.get();
        let session = state
            .attach(self.engine, params.get_public(), params.get_inbox()?, params.get_ring(), out.reborrow().init_ring())
            .inspect_err(|_| {
                state.attach_refused.set(state.attach_refused.get() + 1);
            })?;
        out.set_session(session);
        let mut limits = out.init_limits();
        limits.set_node(&state.key.identity().0);
        limits.set_max_message_bytes(state.home.config.limits.max_message_bytes);
        Ok(())
    }
}

/// An attached engine's session. Dropping it (the engine detached or its connection closed)
/// detaches the engine.
struct Session {
    state: Rc<RouterState>,
    engine: Identity,
    generation: u64,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.state.detach(self.engine, self.generation);
    }
}

type SendOutcome = Result<(), (DropReason, SendRefusal, String)>;

impl Session {
    /// Reads, checks and routes one message from this session's engine.
    async fn send_one(&self, message: netmachine_schema::message_capnp::engine_message::Reader<'_>) -> SendOutcome {
        let outcome = match EngineMessage::read(message) {
            Err(MessageError::UnsupportedDestination(kind)) => Err((
                DropReason::NoRoute,
                SendRefusal::Unsupported,
                format!("destination kind '{kind}' is v2 and not routed by this node"),
            )),
            Err(e) => Err((DropReason::Malformed, SendRefusal::Malformed, e.to_string())),
            Ok(message) if message.src != self.engine => Err((
                DropReason::Malformed,
                SendRefusal::BadSource,
                format!("src is {}, but this session belongs to engine {}", message.src, self.engine),
            )),
            Ok(message) => self.state.route(message).await,
        };
        match &outcome {
            Ok(()) => self.state.accepted.set(self.state.accepted.get() + 1),
            Err((reason, _, detail)) => {
                self.state.drops.count(*reason, 1);
                tracing::debug!(engine = %self.engine.short(), ?reason, %detail, "message dropped");
            }
        }
        outcome
    }
}

fn write_outcome(outcome: SendOutcome, mut result: netmachine_schema::router_capnp::send_result::Builder<'_>) {
    match outcome {
        Ok(()) => result.set_accepted(()),
        Err((_, refusal, detail)) => {
            let mut refused = result.init_refused();
            refused.set_reason(refusal);
            refused.set_detail(detail.as_str());
        }
    }
}

impl engine_session::Server for Session {
    async fn send(self: Rc<Self>, params: engine_session::SendParams, mut results: engine_session::SendResults) -> capnp::Result<()> {
        let outcome = self.send_one(params.get()?.get_message()?).await;
        write_outcome(outcome, results.get().init_result());
        Ok(())
    }

    async fn send_batch(self: Rc<Self>, params: engine_session::SendBatchParams, mut results: engine_session::SendBatchResults) -> capnp::Result<()> {
        let messages = params.get()?.get_messages()?;
        let mut outcomes = Vec::with_capacity(messages.len() as usize);
        for message in messages.iter() {
            outcomes.push(self.send_one(message).await);
        }
        let mut list = results.get().init_results(outcomes.len() as u32);
        for (i, outcome) in outcomes.into_iter().enumerate() {
            write_outcome(outcome, list.reborrow().get(i as u32));
        }
        Ok(())
    }

    async fn detach(self: Rc<Self>, _: engine_session::DetachParams, _: engine_session::DetachResults) -> capnp::Result<()> {
        self.state.detach(self.engine, self.generation);
        Ok(())
    }
}
