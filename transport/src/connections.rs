//! The transport's QUIC shell around the connection pool (`core::pool`): it binds the
//! endpoints, dials and accepts (TLS, then the connect handshake, then admission), writes the
//! frames the pool queued for a peer on the connection it chose (a sender waits while the queue
//! is full, up to `limits.send_wait_ms`), reads frames into the router (a bounded
//! window in flight, so a slow router slows the peer via QUIC flow control), and tells the pool
//! what happened, with the time. Every decision about connections is the pool's.

use tracing::Instrument;
use crate::core::book::Admission;
use crate::core::pool::{ConnId, Input, Millis, Next, Output, Policy, Pool, Unsendable};
use crate::core::queue::{self, Outgoing};
use crate::core::report::{CountReport, FrameCounts};
use crate::core::settle::Direction;
use crate::events::{emit, Event};
use crate::framing::{read_frame, write_frame, FrameError};
use crate::handshake::{self, Answer};
use crate::core::tls::{node_of_certificate, NodeTls};
use futures::stream::{FuturesOrdered, StreamExt};
use netmachine_schema::identity_store_capnp::identity_store;
use netmachine_schema::router_capnp::router;
use netmachine_schema::storage_capnp::storage;
use netmachine_schema::service_capnp::subscription;
use netmachine_schema::time::now_ms;
use netmachine_schema::transport_capnp::{transport_events, ConnectRefusal};
use netmachine_schema::Identity;
use netmachine_service::fanout::Fanout;
use netmachine_service::rpc::ConnectionStats;
use netmachine_service::{Link, NodeHome};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// Frames handed to the router and not yet answered, per stream.
const ROUTER_WINDOW: usize = 16;
/// Largest handshake message.
const MAX_HANDSHAKE: usize = 64 << 10;
/// QUIC application close codes of the shell's own (the pool's are `CloseReason::code`).
const CLOSE_REFUSED: u32 = 1;
const CLOSE_FRAME_OVER_LIMIT: u32 = 2;
const CLOSE_STOPPING: u32 = 0;
const CLOSE_WRITE_FAILED: u32 = 7;
/// The QUIC stop code of a stream whose frame stalled.
const STOP_STALLED: u32 = 1;

/// Counters for the status report.
#[derive(Default)]
pub struct Counters {
    pub frames_sent: Cell<u64>,
    pub frames_received: Cell<u64>,
    pub frames_refused: Cell<u64>,
    pub frames_over_limit: Cell<u64>,
    /// Frames handed over before the peer book was read, that waited for it.
    pub frames_held_for_book: Cell<u64>,
    /// Streams stopped because a frame's bytes did not arrive in time.
    pub frames_stalled: Cell<u64>,
    pub connections_refused: Cell<u64>,
    pub connect_failures: Cell<u64>,
    /// Connections closed because another one to the same node stayed or replaced them.
    pub connections_replaced: Cell<u64>,
    /// Bulk streams this node opened and finished reading, served to others, and refused.
    pub streams_opened: Cell<u64>,
    pub streams_served: Cell<u64>,
    pub streams_refused: Cell<u64>,
}

fn bump(counter: &Cell<u64>, n: u64) {
    counter.set(counter.get() + n);
}

/// A connection to a peer that passed the handshake.
#[derive(Clone)]
pub struct PeerConnection {
    pub connection: quinn::Connection,
    pub admission: Admission,
    /// This node dialed it (its round-trip time then says something about the address).
    pub dialed: bool,
}

/// One other node, as the shell keeps it: wake-ups for the task writing its frames and for
/// senders waiting for room in its queue, and its counts.
pub struct Peer {
    pub id: Identity,
    /// Rung when a frame is queued for it.
    queued: Notify,
    /// Rung when a frame leaves its queue while `waiting` senders wait for room.
    room: Notify,
    waiting: Cell<usize>,
    pub frames_sent: Cell<u64>,
    pub frames_received: Cell<u64>,
}

/// The transport of one node.
pub struct Transport {
    pub home: NodeHome,
    pub node: Identity,
    tls: NodeTls,
    endpoints: Vec<quinn::Endpoint>,
    /// The buffers of the endpoints' sockets, in the same order.
    pub sockets: Vec<crate::udp_socket::SocketBuffers>,
    pool: RefCell<Pool>,
    conns: RefCell<HashMap<ConnId, PeerConnection>>,
    next_conn: Cell<u64>,
    /// The pool's clock starts here.
    started: tokio::time::Instant,
    /// Rung when the pool's next timer moved earlier than the one the timer task waits for.
    timer: Notify,
    /// The time the timer task waits for.
    timer_armed: Cell<Option<Millis>>,
    /// Rung when the peer book was read from the identity store.
    book_loaded: Notify,
    /// Counts the pool's answers that `connect` callers wait for: a connection put to use, or
    /// a failed round of dials.
    answers: watch::Sender<u64>,
    pub peers: RefCell<HashMap<Identity, Rc<Peer>>>,
    pub advert: watch::Sender<Option<Vec<u8>>>,
    pub router: Link<router::Client>,
    pub identity_store: Link<identity_store::Client>,
    /// Answers the block requests of other nodes' bulk streams.
    pub storage: Link<storage::Client>,
    pub identity_watch: RefCell<Option<subscription::Client>>,
    pub events: Rc<Fanout<transport_events::Client>>,
    pub stats: Rc<ConnectionStats>,
    pub counters: Counters,
}

/// Why `send_frame` did not queue a frame.
#[derive(Debug)]
pub enum NotQueued {
    /// For good: the router drops the frame's messages and counts them.
    Refused(String),
    /// For now (the peer book is not read yet): the router hands the frame over again later.
    NotReady(String),
}

/// Randomness for the incarnation (which must differ at every start) and the backoff jitter.
fn random_u64() -> Result<u64, String> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for the transport's incarnation: {e}"))?;
    Ok(u64::from_le_bytes(bytes))
}

impl Transport {
    /// Binds the configured addresses. Must run inside a `LocalSet`.
    pub fn bind(
        home: NodeHome,
        tls: NodeTls,
        node: Identity,
        stats: Rc<ConnectionStats>,
        router: impl FnOnce(std::rc::Weak<Transport>) -> Link<router::Client>,
        identity_store: impl FnOnce(std::rc::Weak<Transport>) -> Link<identity_store::Client>,
        storage: Link<storage::Client>,
    ) -> Result<Rc<Self>, Box<dyn std::error::Error>> {
        let server = tls.server_config().map_err(|e| e.to_string())?;
        let mut endpoints = Vec::new();
        let mut sockets = Vec::new();
        for addr in &home.config.transport.listen {
            let addr: SocketAddr = addr.parse().map_err(|_| format!("transport.listen: '{addr}' is not ip:port"))?;
            let misconfigured = |e: std::io::Error| {
                let reason = netmachine_service::process::io_reason(&e);
                netmachine_service::process::Misconfigured(format!("transport.listen {addr}: {reason}"))
            };
            let (socket, buffers) = crate::udp_socket::bind(addr, home.config.transport.udp_buffer_bytes as usize).map_err(misconfigured)?;
            let runtime = quinn::default_runtime().ok_or("no async runtime for QUIC")?;
            let endpoint = quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(server.clone()), socket, runtime).map_err(misconfigured)?;
            endpoints.push(endpoint);
            sockets.push(buffers);
        }
        let bound: Vec<SocketAddr> = endpoints.iter().filter_map(|e| e.local_addr().ok()).collect();
        let config = &home.config.transport;
        let policy = Policy {
            peer_queue: config.peer_queue as usize,
            reconnect_initial: config.reconnect_initial_ms,
            reconnect_max: config.reconnect_max_ms,
            idle_timeout: config.idle_timeout_ms,
            connect_timeout: config.connect_timeout_ms,
            max_peers: config.max_peers as usize,
            public: config.public,
            ipv4: bound.iter().any(SocketAddr::is_ipv4),
            ipv6: bound.iter().any(SocketAddr::is_ipv6),
        };
        let pool = Pool::new(node, random_u64()?, policy, random_u64()?);
        Ok(Rc::new_cyclic(|weak| Transport {
            home,
            node,
            tls,
            endpoints,
            sockets,
            pool: RefCell::new(pool),
            conns: RefCell::new(HashMap::new()),
            next_conn: Cell::new(0),
            started: tokio::time::Instant::now(),
            timer: Notify::new(),
            book_loaded: Notify::new(),
            timer_armed: Cell::new(None),
            answers: watch::channel(0).0,
            peers: RefCell::new(HashMap::new()),
            advert: watch::channel(None).0,
            router: router(weak.clone()),
            identity_store: identity_store(weak.clone()),
            storage,
            identity_watch: RefCell::new(None),
            events: Fanout::new("transport events", crate::events::MAX_SUBSCRIBERS),
            stats,
            counters: Counters::default(),
        }))
    }

    /// The addresses the endpoints are bound to.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.endpoints.iter().filter_map(|e| e.local_addr().ok()).collect()
    }

    /// Starts accepting connections on every endpoint, and the pool's timer.
    pub fn start(self: &Rc<Self>) {
        for endpoint in &self.endpoints {
            let endpoint = endpoint.clone();
            let transport = self.clone();
            tokio::task::spawn_local(async move {
                while let Some(incoming) = endpoint.accept().await {
                    let span = tracing::info_span!("accept", remote = %incoming.remote_address());
                    tokio::task::spawn_local(transport.clone().accept(incoming).instrument(span));
                }
            });
        }
        tokio::task::spawn_local(self.clone().run_timer());
    }

    /// Closes every connection and endpoint, for a clean stop.
    pub async fn shut_down(&self) {
        let unsent = self.pool.borrow_mut().take_queued().len();
        if unsent > 0 {
            tracing::info!(frames = unsent, "stopping with frames unsent");
        }
        for endpoint in &self.endpoints {
            endpoint.close(CLOSE_STOPPING.into(), b"node stopping");
        }
        for endpoint in &self.endpoints {
            let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        }
    }

    fn max_frame(&self) -> usize {
        self.home.config.max_frame_bytes()
    }

    fn now(&self) -> Millis {
        self.started.elapsed().as_millis() as Millis
    }

    pub fn connected_count(&self) -> usize {
        self.pool.borrow().connected_count()
    }

    /// Frames waiting for any peer.
    pub fn queued(&self) -> usize {
        self.pool.borrow().queued()
    }

    /// Each peer's frames waiting, as gauges labelled with the node.
    pub fn peer_queues(&self) -> Vec<netmachine_service::status::Labelled> {
        let queued = self.pool.borrow().queued_by_peer();
        queued.into_iter().map(|(node, n)| ("peer_frames_queued", "node", node.to_string(), n as u64)).collect()
    }

    pub fn pool_counters(&self) -> crate::core::Counters {
        self.pool.borrow().counters()
    }

    /// The trust the identity store gives `node` (0 for a node it does not know).
    pub fn trust(&self, node: &Identity) -> u8 {
        self.pool.borrow().book().get(node).map_or(0, |peer| peer.trust)
    }

    /// The connection `node`'s frames go on.
    pub fn connection(&self, node: &Identity) -> Option<PeerConnection> {
        let conn = self.pool.borrow().current(node)?;
        self.conns.borrow().get(&conn).cloned()
    }

    /// Tells the pool what happened, and carries out what it answers.
    pub fn handle(self: &Rc<Self>, input: Input) {
        let book_loaded = matches!(input, Input::BookLoaded(_));
        self.pool.borrow_mut().handle(input, self.now());
        if book_loaded {
            self.book_loaded.notify_waiters();
        }
        self.carry_out();
    }

    fn carry_out(self: &Rc<Self>) {
        loop {
            let Some(output) = self.pool.borrow_mut().poll_output() else { break };
            match output {
                Output::Dial { node, addr } => {
                    let span = tracing::info_span!("peer", node = %node.short(), %addr);
                    tokio::task::spawn_local(self.clone().dial(node, addr).instrument(span));
                }
                Output::Use { node, conn } => {
                    let Some(connection) = self.conns.borrow().get(&conn).cloned() else { continue };
                    let span = tracing::info_span!("peer", node = %node.short(), conn = conn.0);
                    tokio::task::spawn_local(self.clone().write_connection(node, conn, connection).instrument(span));
                    self.answers.send_modify(|n| *n += 1);
                }
                Output::Close { conn, reason, detail } => {
                    if matches!(reason, crate::core::CloseReason::Duplicate | crate::core::CloseReason::Replaced) {
                        bump(&self.counters.connections_replaced, 1);
                    }
                    let connection = self.conns.borrow().get(&conn).cloned();
                    if let Some(connection) = connection {
                        tracing::info!(remote = %connection.connection.remote_address(), %detail, "closing a connection");
                        connection.connection.close(reason.code().into(), detail.as_bytes());
                    }
                }
                Output::Event { node, event } => {
                    match &event {
                        Event::ConnectFailed(reason) => {
                            tracing::info!(peer = %node, %reason, "connect failed");
                            self.answers.send_modify(|n| *n += 1);
                        }
                        Event::Disconnected(reason) => {
                            tracing::info!(peer = %node, %reason, "disconnected");
                            if let Some(peer) = self.peers.borrow().get(&node) {
                                let counts = Event::Counts { frames_sent: peer.frames_sent.get(), frames_received: peer.frames_received.get() };
                                emit(&self.events, node, event.clone());
                                emit(&self.events, node, counts);
                                continue;
                            }
                        }
                        _ => {}
                    }
                    emit(&self.events, node, event);
                }
                Output::Forget { node, dropped } => {
                    if dropped > 0 {
                        tracing::warn!(peer = %node, frames = dropped, "dropped frames for a node that can no longer be reached");
                    }
                    if let Some(peer) = self.peers.borrow_mut().remove(&node) {
                        peer.room.notify_waiters();
                    }
                }
            }
        }
        self.arm_timer();
    }

    /// Wakes the timer task if the pool's next timer is earlier than the one it waits for.
    fn arm_timer(&self) {
        let next = self.pool.borrow().poll_timeout();
        if next.is_some_and(|at| self.timer_armed.get().is_none_or(|armed| at < armed)) {
            self.timer.notify_one();
        }
    }

    /// A frame came from `node` (the pool notes frames sent itself). This only postpones the pool's idle deadline, so
    /// it needs no outputs and no timer change (a timer firing early just re-arms): the
    /// per-frame cost stays one map lookup.
    fn note_activity(&self, node: Identity) {
        self.pool.borrow_mut().handle(Input::Activity { node }, self.now());
    }

    /// Gives the pool its timers.
    async fn run_timer(self: Rc<Self>) {
        loop {
            let at = self.pool.borrow().poll_timeout();
            self.timer_armed.set(at);
            match at {
                Some(at) => {
                    let deadline = self.started + Duration::from_millis(at);
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => {
                            self.handle(Input::Timer);
                            // Frames that expired waiting for a connection left room.
                            for peer in self.peers.borrow().values().filter(|p| p.waiting.get() > 0) {
                                peer.room.notify_waiters();
                            }
                        }
                        _ = self.timer.notified() => {}
                    }
                }
                None => self.timer.notified().await,
            }
        }
    }

    /// This node's signed advert, waiting up to 5 s for the router to sign it.
    pub async fn own_advert(&self) -> Option<Vec<u8>> {
        let mut advert = self.advert.subscribe();
        let ready = tokio::time::timeout(Duration::from_secs(5), advert.wait_for(|a| a.is_some())).await;
        ready.ok().and_then(|a| a.ok()).and_then(|a| a.clone())
    }

    /// The peer's entry, made if it has none.
    fn peer(&self, id: Identity) -> Rc<Peer> {
        let mut peers = self.peers.borrow_mut();
        let peer = peers.entry(id).or_insert_with(|| {
            Rc::new(Peer { id, queued: Notify::new(), room: Notify::new(), waiting: Cell::new(0), frames_sent: Cell::new(0), frames_received: Cell::new(0) })
        });
        peer.clone()
    }

    /// Writes what the pool queued for `node` on `conn`, while it is the connection the pool
    /// chose; a frame whose write failed goes back to the pool, first in line.
    async fn write_connection(self: Rc<Self>, node: Identity, conn: ConnId, connection: PeerConnection) {
        let peer = self.peer(node);
        let quic = &connection.connection;
        let mut stream = match quic.open_uni().await {
            Ok(stream) => stream,
            Err(error) => return tracing::debug!(peer = %node, %error, "cannot open a stream"),
        };
        loop {
            let next = self.pool.borrow_mut().next_frame(node, conn, self.now());
            match next {
                Next::Frame(frame) => {
                    if peer.waiting.get() > 0 {
                        peer.room.notify_waiters();
                    }
                    if let Err(error) = write_frame(&mut stream, &frame.bytes).await {
                        // Closed, the connection's reader tells the pool, which chooses or dials
                        // another; the frame goes first on it.
                        self.pool.borrow_mut().put_back(node, frame);
                        tracing::info!(peer = %node, %error, "a write failed; closing the connection");
                        return quic.close(CLOSE_WRITE_FAILED.into(), b"write failed");
                    }
                    bump(&self.counters.frames_sent, 1);
                    peer.frames_sent.set(peer.frames_sent.get() + 1);
                }
                Next::Empty => {
                    // Drained (expired frames too may have left): room for senders, and the
                    // peer may close when idle from now on.
                    if peer.waiting.get() > 0 {
                        peer.room.notify_waiters();
                    }
                    self.arm_timer();
                    tokio::select! {
                        _ = peer.queued.notified() => {}
                        _ = quic.closed() => return,
                    }
                }
                Next::NotCurrent => {
                    // The wake-up this task may have taken belongs to the current connection's.
                    return peer.queued.notify_one();
                }
            }
        }
    }

    /// Dials `node` at `addr`, as the pool asked, and tells it how that went.
    async fn dial(self: Rc<Self>, node: Identity, addr: SocketAddr) {
        match self.connect_to(node, addr).await {
            Ok((quic, incarnation)) => {
                self.handle(Input::Rtt { addr, rtt: quic.rtt() });
                self.register(node, quic, Admission::Private, Direction::Dialed, incarnation);
            }
            Err(reason) => {
                bump(&self.counters.connect_failures, 1);
                tracing::debug!(peer = %node, %addr, %reason, "dial failed");
                self.handle(Input::DialFailed { node, addr, reason });
            }
        }
    }

    /// TLS and the handshake with `node` at `addr`: the connection and the peer's incarnation.
    async fn connect_to(self: &Rc<Self>, node: Identity, addr: SocketAddr) -> Result<(quinn::Connection, u64), String> {
        let advert = self.own_advert().await.ok_or("this node has no signed advert yet (is the router up?)")?;
        let endpoint = self
            .endpoints
            .iter()
            .find(|e| e.local_addr().is_ok_and(|l| l.is_ipv4() == addr.is_ipv4()))
            .ok_or("no endpoint for that address family")?;
        let timeout = Duration::from_millis(self.home.config.transport.connect_timeout_ms);
        let client = self.tls.client_config(node).map_err(|e| e.to_string())?;
        let connecting = endpoint.connect_with(client, addr, "netmachine").map_err(|e| e.to_string())?;
        let quic = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| format!("no answer within {} ms", timeout.as_millis()))?
            .map_err(|e| e.to_string())?;
        let incarnation = self.pool.borrow().incarnation();
        let answer = tokio::time::timeout(timeout, async {
            let (mut send, mut recv) = quic.open_bi().await.map_err(|e| e.to_string())?;
            let hello = handshake::hello(&advert, 0, incarnation).map_err(|e| e.to_string())?;
            write_frame(&mut send, &hello).await.map_err(|e| e.to_string())?;
            let _ = send.finish();
            let bytes = read_frame(&mut recv, MAX_HANDSHAKE, timeout).await.map_err(|e| e.to_string())?;
            handshake::read_answer(&bytes.ok_or("the peer closed the handshake")?).map_err(|e| e.to_string())
        })
        .await
        .map_err(|_| "handshake timed out".to_string())??;
        match answer {
            Answer::Accepted { version, advert, incarnation } => {
                tracing::info!(peer = %node, %addr, version, "connected");
                crate::peer_sync::learn_advert(self, node, advert);
                Ok((quic, incarnation))
            }
            Answer::Refused { reason, detail } => {
                quic.close(CLOSE_REFUSED.into(), b"refused");
                Err(format!("refused by {node} ({reason:?}): {detail}"))
            }
        }
    }

    /// Takes an incoming connection through TLS, the handshake and admission.
    async fn accept(self: Rc<Self>, incoming: quinn::Incoming) {
        let timeout = Duration::from_millis(self.home.config.transport.connect_timeout_ms);
        let quic = match tokio::time::timeout(timeout, incoming).await {
            Ok(Ok(quic)) => quic,
            Ok(Err(error)) => return tracing::info!(%error, "incoming connection failed in TLS"),
            Err(_) => return tracing::info!("incoming connection timed out in TLS"),
        };
        let Some(node) = peer_node(&quic) else {
            return quic.close(CLOSE_REFUSED.into(), b"no node certificate");
        };
        let Ok(Ok((mut send, mut recv))) = tokio::time::timeout(timeout, quic.accept_bi()).await else {
            return quic.close(CLOSE_REFUSED.into(), b"no handshake");
        };
        let hello = match tokio::time::timeout(timeout, read_frame(&mut recv, MAX_HANDSHAKE, timeout)).await {
            Ok(Ok(Some(bytes))) => handshake::check_hello(node, &bytes),
            Ok(Ok(None)) => Err((ConnectRefusal::Incompatible, "the handshake stream ended".to_string())),
            Ok(Err(e)) => Err((ConnectRefusal::Incompatible, e.to_string())),
            Err(_) => Err((ConnectRefusal::Incompatible, "no hello in time".to_string())),
        };
        let (hello, version) = match hello {
            Ok(checked) => checked,
            Err((reason, detail)) => return self.refuse(node, quic, send, reason, detail).await,
        };
        let admitted = self.pool.borrow().admit(&node);
        let admission = match admitted {
            Ok(admission) => admission,
            Err((reason, detail)) => return self.refuse(node, quic, send, reason, detail).await,
        };
        let Some(advert) = self.own_advert().await else {
            let detail = "this node has no signed advert yet".to_string();
            return self.refuse(node, quic, send, ConnectRefusal::OverCapacity, detail).await;
        };
        let answer = match handshake::accepted(version, &advert, self.pool.borrow().incarnation()) {
            Ok(answer) => answer,
            Err(error) => return tracing::warn!(%error, "cannot encode the handshake answer"),
        };
        if write_frame(&mut send, &answer).await.is_err() {
            return;
        }
        let _ = send.finish();
        tracing::info!(peer = %node, remote = %quic.remote_address(), ?admission, "accepted");
        if admission == Admission::Private {
            crate::peer_sync::learn_advert(&self, node, hello.advert);
        }
        self.register(node, quic, admission, Direction::Accepted, hello.incarnation);
    }

    async fn refuse(&self, node: Identity, quic: quinn::Connection, mut send: quinn::SendStream, reason: ConnectRefusal, detail: String) {
        bump(&self.counters.connections_refused, 1);
        tracing::warn!(peer = %node, ?reason, %detail, "refused a node");
        emit(&self.events, node, Event::Refused(reason));
        if write_frame(&mut send, &handshake::refused(reason, &detail)).await.is_ok() {
            let _ = send.finish();
            // Let the refusal reach the peer, which closes the connection once it has read it.
            let _ = tokio::time::timeout(Duration::from_secs(1), quic.closed()).await;
        }
        quic.close(CLOSE_REFUSED.into(), b"refused");
    }

    /// Numbers a connection that passed the handshake, starts reading from it, and tells the
    /// pool, which decides whether it carries the peer's frames.
    fn register(self: &Rc<Self>, node: Identity, quic: quinn::Connection, admission: Admission, direction: Direction, incarnation: u64) {
        let conn = ConnId(self.next_conn.get());
        self.next_conn.set(conn.0 + 1);
        let connection = PeerConnection { connection: quic, admission, dialed: direction == Direction::Dialed };
        self.conns.borrow_mut().insert(conn, connection.clone());
        let span = tracing::info_span!("peer", node = %node.short(), conn = conn.0);
        tokio::task::spawn_local(self.clone().accept_streams(node, connection.connection.clone()).instrument(span.clone()));
        tokio::task::spawn_local(self.clone().read_connection(node, conn, connection).instrument(span));
        self.handle(Input::Established { node, conn, direction, incarnation });
    }

    /// Closes the connection to `node` and stops keeping it; whether there was one.
    pub fn disconnect(self: &Rc<Self>, node: &Identity, reason: &str) -> bool {
        let connected = self.pool.borrow().current(node).is_some();
        self.handle(Input::Disconnect { node: *node, reason: reason.to_string() });
        connected
    }

    /// Connects to `node` (if it is not connected) and keeps it connected: `Ok` once it is, or
    /// the reason a whole round of dials failed.
    pub async fn connect(self: &Rc<Self>, node: Identity) -> Result<(), String> {
        let mut answers = self.answers.subscribe();
        let failed_before = self.pool.borrow().failures(&node).0;
        self.pool.borrow_mut().connect(node, self.now()).map_err(|e| e.to_string())?;
        self.carry_out();
        let addrs = self.pool.borrow().book().get(&node).map_or(1, |p| p.addrs.len().max(1)) as u32;
        let patience = Duration::from_millis(self.home.config.transport.connect_timeout_ms) * (addrs + 1);
        let outcome = tokio::time::timeout(patience, async {
            loop {
                if self.pool.borrow().current(&node).is_some() {
                    return Ok(());
                }
                let failed = {
                    let pool = self.pool.borrow();
                    let (failed, reason) = pool.failures(&node);
                    (failed > failed_before).then(|| reason.unwrap_or("connect failed").to_string())
                };
                if let Some(reason) = failed {
                    return Err(reason);
                }
                if answers.changed().await.is_err() {
                    return Err("the transport is stopping".to_string());
                }
            }
        })
        .await;
        outcome.unwrap_or_else(|_| Err(format!("not connected within {} ms; still trying", patience.as_millis())))
    }

    async fn read_connection(self: Rc<Self>, node: Identity, conn: ConnId, connection: PeerConnection) {
        let quic = connection.connection.clone();
        let reason = loop {
            match quic.accept_uni().await {
                Ok(stream) => {
                    tokio::task::spawn_local(self.clone().read_stream(node, connection.clone(), stream).in_current_span());
                }
                Err(reason) => break reason,
            }
        };
        if connection.dialed {
            self.handle(Input::Rtt { addr: quic.remote_address(), rtt: quic.rtt() });
        }
        self.conns.borrow_mut().remove(&conn);
        self.handle(Input::Closed { conn, reason: reason.to_string() });
    }

    async fn read_stream(self: Rc<Self>, node: Identity, connection: PeerConnection, mut stream: quinn::RecvStream) {
        let public = connection.admission == Admission::Public;
        let mut in_flight = FuturesOrdered::new();
        loop {
            // A read is never raced against anything: cancelling it midway would lose the
            // stream's framing. Requests are on their way once sent; only answers are awaited
            // here, when the window is full.
            while in_flight.len() >= ROUTER_WINDOW {
                in_flight.next().await;
            }
            let read = read_frame(&mut stream, self.max_frame(), Duration::from_millis(self.home.config.transport.frame_read_ms)).await;
            let frame = match read {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(FrameError::TooLarge { len, max }) => {
                    bump(&self.counters.frames_over_limit, 1);
                    tracing::warn!(peer = %node, len, max, "frame over the limit; disconnecting");
                    connection.connection.close(CLOSE_FRAME_OVER_LIMIT.into(), b"frame over the limit");
                    break;
                }
                Err(error @ FrameError::Stalled { .. }) => {
                    bump(&self.counters.frames_stalled, 1);
                    tracing::warn!(peer = %node, %error, "a frame stalled; its stream is stopped");
                    let _ = stream.stop(STOP_STALLED.into());
                    break;
                }
                Err(error) => {
                    tracing::debug!(peer = %node, %error, "stream ended");
                    break;
                }
            };
            bump(&self.counters.frames_received, 1);
            if let Some(peer) = self.peers.borrow().get(&node) {
                peer.frames_received.set(peer.frames_received.get() + 1);
            }
            self.note_activity(node);
            let Some(router) = self.router_client().await else { break };
            let mut request = router.receive_frame_request();
            let mut params = request.get();
            params.set_src(&node.0);
            params.set_frame(&frame);
            params.set_public(public);
            let answer = request.send().promise;
            in_flight.push_back(async move {
                if let Err(error) = answer.await {
                    tracing::info!(peer = %node, %error, "the router did not take a frame");
                }
            });
        }
        while in_flight.next().await.is_some() {}
    }

    /// The router, waiting for it while it restarts.
    async fn router_client(&self) -> Option<router::Client> {
        loop {
            if let Some(router) = self.router.client_within(Duration::from_secs(5)).await {
                return Some(router);
            }
            tracing::warn!("waiting for the router to deliver received frames");
        }
    }

    /// Queues a frame for `dst`, waiting while its queue is full or the peer book is not loaded
    /// yet, up to `limits.send_wait_ms` or the frame's `expiry` (milliseconds since the epoch;
    /// 0: never).
    pub async fn send_frame(self: &Rc<Self>, dst: Identity, bytes: Vec<u8>, expiry: u64) -> Result<(), NotQueued> {
        let send_wait = self.home.config.limits.send_wait_ms;
        let Outgoing { mut frame, wait } = queue::outgoing(bytes, expiry, self.max_frame(), send_wait, now_ms(), self.now()).map_err(|over| {
            bump(&self.counters.frames_over_limit, 1);
            NotQueued::Refused(over.to_string())
        })?;
        let deadline = Instant::now() + Duration::from_millis(wait);
        let mut held_for_book = false;
        loop {
            let queued = self.pool.borrow_mut().queue(dst, frame, self.now());
            match queued {
                Ok(()) => {
                    // A connected peer's frame changes nothing else in the pool (no dial, no
                    // timer): skip carrying out, which looks at every peer's timers.
                    if self.pool.borrow().current(&dst).is_none() {
                        self.carry_out();
                    }
                    self.peer(dst).queued.notify_one();
                    return Ok(());
                }
                Err((Unsendable::Full(_), back)) => {
                    frame = back;
                    let peer = self.peer(dst);
                    peer.waiting.set(peer.waiting.get() + 1);
                    let room = tokio::time::timeout_at(deadline, peer.room.notified()).await;
                    peer.waiting.set(peer.waiting.get() - 1);
                    if room.is_err() {
                        bump(&self.counters.frames_refused, 1);
                        return Err(NotQueued::Refused(format!("the queue for node {dst} stayed full for {wait} ms")));
                    }
                }
                Err((Unsendable::BookNotLoaded, back)) => {
                    frame = back;
                    if !std::mem::replace(&mut held_for_book, true) {
                        bump(&self.counters.frames_held_for_book, 1);
                    }
                    if tokio::time::timeout_at(deadline, self.book_loaded.notified()).await.is_err() {
                        return Err(NotQueued::NotReady(format!("{} after {wait} ms", Unsendable::BookNotLoaded)));
                    }
                }
                Err((refusal, _)) => {
                    bump(&self.counters.frames_refused, 1);
                    return Err(NotQueued::Refused(refusal.to_string()));
                }
            }
        }
    }

    /// Emits message counts for connected peers whose counts changed, every few seconds, while
    /// anyone subscribes to events.
    pub async fn report_counts(self: Rc<Self>) {
        let mut report = CountReport::default();
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            if self.events.is_empty() {
                continue;
            }
            let current: Vec<_> = self.peers.borrow().values().map(|p| (p.id, FrameCounts { sent: p.frames_sent.get(), received: p.frames_received.get() })).collect();
            for (node, counts) in report.changed(current) {
                emit(&self.events, node, Event::Counts { frames_sent: counts.sent, frames_received: counts.received });
            }
        }
    }
}

/// The node identity a QUIC connection's peer proved in TLS.
fn peer_node(connection: &quinn::Connection) -> Option<Identity> {
    let certs = connection.peer_identity()?.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok()?;
    node_of_certificate(certs.first()?).ok()
}
