//! The transport's QUIC side: endpoints, the accept and dial paths (TLS, then the connect
//! handshake, then admission), one send driver per peer (connect with capped backoff, stream
//! its queue, close when idle unless permanent) and one reader per connection (frames to the
//! router, a bounded window in flight, so a slow router slows the peer via QUIC flow control).

use crate::events::{emit, Event};
use crate::framing::{read_frame, write_frame, FrameError};
use crate::handshake::{self, Answer};
use crate::peers::{Admission, PeerBook};
use crate::tls::{self, NodeTls};
use futures::stream::{FuturesOrdered, StreamExt};
use netmachine_schema::identity_store_capnp::identity_store;
use netmachine_schema::router_capnp::router;
use netmachine_schema::service_capnp::subscription;
use netmachine_schema::time::now_ms;
use netmachine_schema::transport_capnp::{transport_events, ConnectRefusal};
use netmachine_schema::Identity;
use netmachine_service::fanout::Fanout;
use netmachine_service::queue::{Expiring, ExpiringQueue};
use netmachine_service::rpc::ConnectionStats;
use netmachine_service::{Backoff, Link, NodeHome};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Frames handed to the router and not yet answered, per stream.
const ROUTER_WINDOW: usize = 16;
/// Largest handshake message.
const MAX_HANDSHAKE: usize = 64 << 10;
/// QUIC application close codes.
const CLOSE_IDLE: u32 = 0;
const CLOSE_REFUSED: u32 = 1;
const CLOSE_FRAME_OVER_LIMIT: u32 = 2;
const CLOSE_REQUESTED: u32 = 3;

/// Counters for the status report.
#[derive(Default)]
pub struct Counters {
    pub frames_sent: Cell<u64>,
    pub frames_received: Cell<u64>,
    pub frames_expired: Cell<u64>,
    pub frames_refused: Cell<u64>,
    pub frames_over_limit: Cell<u64>,
    pub connections_refused: Cell<u64>,
    pub connect_failures: Cell<u64>,
}

fn bump(counter: &Cell<u64>, n: u64) {
    counter.set(counter.get() + n);
}

/// A frame waiting to be sent.
#[derive(Debug)]
pub struct Queued {
    pub bytes: Vec<u8>,
    /// Milliseconds since the epoch; 0: never expires.
    pub expiry: u64,
}

impl Expiring for Queued {
    fn expiry(&self) -> Option<u64> {
        (self.expiry != 0).then_some(self.expiry)
    }
}

/// A connection to a peer that passed the handshake.
#[derive(Clone)]
pub struct PeerConnection {
    pub connection: quinn::Connection,
    pub admission: Admission,
}

/// One other node: its queue, its current connection, its driver.
pub struct Peer {
    pub id: Identity,
    pub queue: ExpiringQueue<Queued>,
    current: RefCell<Option<PeerConnection>>,
    changed: Notify,
    pub frames_sent: Cell<u64>,
    pub frames_received: Cell<u64>,
    /// An operator asked for this connection (`connect`).
    pub wanted: Cell<bool>,
}

impl Peer {
    pub fn current(&self) -> Option<PeerConnection> {
        let current = self.current.borrow().clone();
        current.filter(|c| c.connection.close_reason().is_none())
    }
}

/// The transport of one node.
pub struct Transport {
    pub home: NodeHome,
    pub node: Identity,
    tls: NodeTls,
    endpoints: Vec<quinn::Endpoint>,
    pub book: RefCell<PeerBook>,
    pub peers: RefCell<HashMap<Identity, Rc<Peer>>>,
    pub advert: watch::Sender<Option<Vec<u8>>>,
    pub router: Link<router::Client>,
    pub identity_store: Link<identity_store::Client>,
    pub identity_watch: RefCell<Option<subscription::Client>>,
    pub events: Rc<Fanout<transport_events::Client>>,
    pub stats: Rc<ConnectionStats>,
    pub counters: Counters,
    /// Round-trip times last measured to each address dialed, for choosing among addresses.
    rtts: RefCell<HashMap<SocketAddr, Duration>>,
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
    ) -> Result<Rc<Self>, String> {
        let server = tls.server_config().map_err(|e| e.to_string())?;
        let mut endpoints = Vec::new();
        for addr in &home.config.transport.listen {
            let addr: SocketAddr = addr.parse().map_err(|_| format!("transport.listen: '{addr}' is not ip:port"))?;
            let endpoint = quinn::Endpoint::server(server.clone(), addr)
                .map_err(|e| format!("cannot bind {addr} (transport.listen): {e}"))?;
            endpoints.push(endpoint);
        }
        Ok(Rc::new_cyclic(|weak| Transport {
            home,
            node,
            tls,
            endpoints,
            book: RefCell::new(PeerBook::default()),
            peers: RefCell::new(HashMap::new()),
            advert: watch::channel(None).0,
            router: router(weak.clone()),
            identity_store: identity_store(weak.clone()),
            identity_watch: RefCell::new(None),
            events: Fanout::new("transport events", crate::events::MAX_SUBSCRIBERS),
            stats,
            counters: Counters::default(),
            rtts: RefCell::new(HashMap::new()),
        }))
    }

    /// The addresses the endpoints are bound to.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.endpoints.iter().filter_map(|e| e.local_addr().ok()).collect()
    }

    /// Starts accepting connections on every endpoint.
    pub fn start(self: &Rc<Self>) {
        for endpoint in &self.endpoints {
            let endpoint = endpoint.clone();
            let transport = self.clone();
            tokio::task::spawn_local(async move {
                while let Some(incoming) = endpoint.accept().await {
                    tokio::task::spawn_local(transport.clone().accept(incoming));
                }
            });
        }
    }

    /// Closes every connection and endpoint, for a clean stop.
    pub async fn shut_down(&self) {
        for endpoint in &self.endpoints {
            endpoint.close(CLOSE_IDLE.into(), b"node stopping");
        }
        for endpoint in &self.endpoints {
            let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        }
    }

    fn max_frame(&self) -> usize {
        self.home.config.max_frame_bytes()
    }

    pub fn connected_count(&self) -> usize {
        self.peers.borrow().values().filter(|p| p.current().is_some()).count()
    }

    /// This node's signed advert, waiting up to 5 s for the router to sign it.
    pub async fn own_advert(&self) -> Option<Vec<u8>> {
        let mut advert = self.advert.subscribe();
        let ready = tokio::time::timeout(Duration::from_secs(5), advert.wait_for(|a| a.is_some())).await;
        ready.ok().and_then(|a| a.ok()).and_then(|a| a.clone())
    }

    /// The peer's entry, made (with its driver) if it has none.
    pub fn peer(self: &Rc<Self>, id: Identity) -> Rc<Peer> {
        if let Some(peer) = self.peers.borrow().get(&id) {
            return peer.clone();
        }
        let peer = Rc::new(Peer {
            id,
            queue: ExpiringQueue::new(self.home.config.transport.peer_queue as usize),
            current: RefCell::new(None),
            changed: Notify::new(),
            frames_sent: Cell::new(0),
            frames_received: Cell::new(0),
            wanted: Cell::new(false),
        });
        self.peers.borrow_mut().insert(id, peer.clone());
        tokio::task::spawn_local(self.clone().drive(peer.clone()));
        peer
    }

    fn is_permanent(&self, id: &Identity) -> bool {
        self.book.borrow().get(id).is_some_and(|p| p.permanent && p.trust > 0)
    }

    /// Sends what `peer` has queued, connecting as needed, until it is neither wanted nor has
    /// anything to send.
    async fn drive(self: Rc<Self>, peer: Rc<Peer>) {
        let config = &self.home.config.transport;
        let mut backoff = Backoff::new(
            Duration::from_millis(config.reconnect_initial_ms),
            Duration::from_millis(config.reconnect_max_ms),
        );
        loop {
            let connection = match peer.current() {
                Some(connection) => connection,
                None => {
                    bump(&self.counters.frames_expired, peer.queue.drop_expired(now_ms()));
                    if peer.queue.is_empty() && !peer.wanted.get() && !self.is_permanent(&peer.id) {
                        self.retire(&peer);
                        return;
                    }
                    match self.dial(peer.id).await {
                        Ok(connection) => {
                            backoff.reset();
                            connection
                        }
                        Err(reason) => {
                            bump(&self.counters.connect_failures, 1);
                            tracing::info!(peer = %peer.id, %reason, "connect failed");
                            emit(&self.events, peer.id, Event::ConnectFailed(reason));
                            self.wait_before_redial(&peer, backoff.next_delay()).await;
                            continue;
                        }
                    }
                }
            };
            match self.pump(&peer, &connection).await {
                Ok(()) => {
                    connection.connection.close(CLOSE_IDLE.into(), b"idle");
                    tracing::info!(peer = %peer.id, "closed an idle connection");
                }
                Err(reason) => tracing::info!(peer = %peer.id, %reason, "connection lost"),
            }
        }
    }

    /// Waits `delay` before dialing again, dropping frames that expire meanwhile, and waking
    /// early if the peer connects to us.
    async fn wait_before_redial(&self, peer: &Peer, delay: Duration) {
        let deadline = tokio::time::Instant::now() + delay;
        loop {
            let next_expiry = peer.queue.next_expiry().map(|at| {
                tokio::time::Instant::now() + Duration::from_millis(at.saturating_sub(now_ms()))
            });
            let wake = next_expiry.map_or(deadline, |e| e.min(deadline));
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = peer.changed.notified() => return,
            }
            bump(&self.counters.frames_expired, peer.queue.drop_expired(now_ms()));
            if tokio::time::Instant::now() >= deadline {
                return;
            }
        }
    }

    fn retire(&self, peer: &Rc<Peer>) {
        let mut peers = self.peers.borrow_mut();
        if peers.get(&peer.id).is_some_and(|p| Rc::ptr_eq(p, peer)) {
            peers.remove(&peer.id);
        }
    }

    /// Streams the peer's queue over `connection`: `Ok` when it went idle (ephemeral peers),
    /// `Err` when the connection was lost.
    async fn pump(&self, peer: &Peer, connection: &PeerConnection) -> Result<(), String> {
        let quic = &connection.connection;
        let mut stream = quic.open_uni().await.map_err(|e| e.to_string())?;
        let idle = Duration::from_millis(self.home.config.transport.idle_timeout_ms);
        loop {
            let (frame, expired) = peer.queue.pop_live(now_ms());
            bump(&self.counters.frames_expired, expired);
            if let Some(frame) = frame {
                if let Err(error) = write_frame(&mut stream, &frame.bytes).await {
                    peer.queue.put_back(frame);
                    return Err(error.to_string());
                }
                bump(&self.counters.frames_sent, 1);
                peer.frames_sent.set(peer.frames_sent.get() + 1);
                continue;
            }
            let ephemeral = !self.is_permanent(&peer.id) && !peer.wanted.get();
            tokio::select! {
                _ = peer.queue.ready() => {}
                reason = quic.closed() => return Err(reason.to_string()),
                _ = tokio::time::sleep(idle), if ephemeral => return Ok(()),
            }
        }
    }

    /// Dials `node` at the best address of its advert and runs the handshake.
    pub async fn dial(self: &Rc<Self>, node: Identity) -> Result<PeerConnection, String> {
        let order = {
            let book = self.book.borrow();
            match book.get(&node) {
                None => return Err(format!("node {node} is not known here: add its advert (`netmachine peer add`)")),
                Some(peer) if peer.trust == 0 => return Err(format!("node {node} is banned (trust 0)")),
                Some(_) => {}
            }
            let families: Vec<bool> = self.local_addrs().iter().map(SocketAddr::is_ipv4).collect();
            let rtts = self.rtts.borrow();
            book.dial_order(&node, |a| families.contains(&a.is_ipv4()), |a| rtts.get(a).copied())
        };
        let Some(addr) = order.first().copied() else {
            return Err(format!("node {node}'s advert has no address this node can reach"));
        };
        let advert = self.own_advert().await.ok_or("this node has no signed advert yet (is the router up?)")?;
        let endpoint = self
            .endpoints
            .iter()
            .find(|e| e.local_addr().is_ok_and(|l| l.is_ipv4() == addr.is_ipv4()))
            .ok_or("no endpoint for that address family")?;
        let timeout = Duration::from_millis(self.home.config.transport.connect_timeout_ms);
        let client = self.tls.client_config(node).map_err(|e| e.to_string())?;
        let connecting = endpoint.connect_with(client, addr, "netmachine").map_err(|e| format!("{addr}: {e}"))?;
        let quic = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| format!("{addr}: no answer within {} ms", timeout.as_millis()))?
            .map_err(|e| format!("{addr}: {e}"))?;
        let answer = tokio::time::timeout(timeout, async {
            let (mut send, mut recv) = quic.open_bi().await.map_err(|e| e.to_string())?;
            let hello = handshake::hello(&advert, 0).map_err(|e| e.to_string())?;
            write_frame(&mut send, &hello).await.map_err(|e| e.to_string())?;
            let _ = send.finish();
            let bytes = read_frame(&mut recv, MAX_HANDSHAKE).await.map_err(|e| e.to_string())?;
            handshake::read_answer(&bytes.ok_or("the peer closed the handshake")?).map_err(|e| e.to_string())
        })
        .await
        .map_err(|_| format!("{addr}: handshake timed out"))??;
        match answer {
            Answer::Accepted { version, advert } => {
                tracing::info!(peer = %node, %addr, version, "connected");
                self.note_rtt(addr, quic.rtt());
                crate::peer_sync::learn_advert(self, node, advert);
                Ok(self.register(node, quic, Admission::Private))
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
        let Some(node) = tls::peer_node(&quic) else {
            return quic.close(CLOSE_REFUSED.into(), b"no node certificate");
        };
        let Ok(Ok((mut send, mut recv))) = tokio::time::timeout(timeout, quic.accept_bi()).await else {
            return quic.close(CLOSE_REFUSED.into(), b"no handshake");
        };
        let hello = match tokio::time::timeout(timeout, read_frame(&mut recv, MAX_HANDSHAKE)).await {
            Ok(Ok(Some(bytes))) => handshake::read_hello(&bytes).map_err(|e| e.to_string()),
            Ok(Ok(None)) => Err("the handshake stream ended".to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no hello in time".to_string()),
        };
        let decision = hello.map(|hello| {
            let version = handshake::negotiate(hello.version_min, hello.version_max).ok_or_else(|| {
                format!(
                    "no common protocol version: peer speaks {}..={}, this node {}..={}",
                    hello.version_min, hello.version_max, handshake::VERSION_MIN, handshake::VERSION_MAX
                )
            });
            (hello, version)
        });
        let (hello, version) = match decision {
            Ok((hello, Ok(version))) => (hello, version),
            Ok((_, Err(detail))) | Err(detail) => {
                return self.refuse(node, quic, send, ConnectRefusal::Incompatible, detail).await;
            }
        };
        if let Err(detail) = crate::peer_sync::check_advert(node, &hello.advert) {
            return self.refuse(node, quic, send, ConnectRefusal::Denied, detail).await;
        }
        let config = &self.home.config.transport;
        let admitted = self.book.borrow().admit(&node, config.public, self.connected_count(), config.max_peers as usize);
        let admission = match admitted {
            Ok(admission) => admission,
            Err((reason, detail)) => return self.refuse(node, quic, send, reason, detail).await,
        };
        let Some(advert) = self.own_advert().await else {
            let detail = "this node has no signed advert yet".to_string();
            return self.refuse(node, quic, send, ConnectRefusal::OverCapacity, detail).await;
        };
        let answer = match handshake::accepted(version, &advert) {
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
        self.register(node, quic, admission);
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

    /// Makes `quic` the peer's current connection and starts reading from it.
    fn register(self: &Rc<Self>, node: Identity, quic: quinn::Connection, admission: Admission) -> PeerConnection {
        let connection = PeerConnection { connection: quic, admission };
        let peer = self.peer(node);
        *peer.current.borrow_mut() = Some(connection.clone());
        peer.changed.notify_waiters();
        emit(&self.events, node, Event::Connected);
        tokio::task::spawn_local(self.clone().read_connection(peer, connection.clone()));
        connection
    }

    /// Remembers the round-trip time measured to an address this node dials, for choosing
    /// among a peer's addresses. Known addresses are always updated; new ones are taken while
    /// the table holds fewer than four per allowed peer.
    fn note_rtt(&self, addr: SocketAddr, rtt: Duration) {
        let mut rtts = self.rtts.borrow_mut();
        if rtts.contains_key(&addr) || rtts.len() < 4 * self.home.config.transport.max_peers as usize {
            rtts.insert(addr, rtt);
        }
    }

    /// Closes every connection to `node`.
    pub fn disconnect(&self, node: &Identity, reason: &str) -> bool {
        let peer = self.peers.borrow().get(node).cloned();
        let Some(peer) = peer else { return false };
        peer.wanted.set(false);
        let current = peer.current.borrow_mut().take();
        match current {
            Some(connection) => {
                connection.connection.close(CLOSE_REQUESTED.into(), reason.as_bytes());
                true
            }
            None => false,
        }
    }

    async fn read_connection(self: Rc<Self>, peer: Rc<Peer>, connection: PeerConnection) {
        let quic = connection.connection.clone();
        loop {
            let stream = match quic.accept_uni().await {
                Ok(stream) => stream,
                Err(reason) => {
                    if self.rtts.borrow().contains_key(&quic.remote_address()) {
                        self.note_rtt(quic.remote_address(), quic.rtt());
                    }
                    let was_current = peer.current.borrow().as_ref().is_some_and(|c| c.connection.stable_id() == quic.stable_id());
                    if was_current {
                        peer.current.borrow_mut().take();
                        peer.changed.notify_waiters();
                        emit(&self.events, peer.id, Event::Disconnected(reason.to_string()));
                        emit(&self.events, peer.id, Event::Counts {
                            frames_sent: peer.frames_sent.get(),
                            frames_received: peer.frames_received.get(),
                        });
                    }
                    return;
                }
            };
            tokio::task::spawn_local(self.clone().read_stream(peer.clone(), connection.clone(), stream));
        }
    }

    async fn read_stream(self: Rc<Self>, peer: Rc<Peer>, connection: PeerConnection, mut stream: quinn::RecvStream) {
        let public = connection.admission == Admission::Public;
        let mut in_flight = FuturesOrdered::new();
        loop {
            // A read is never raced against anything: cancelling it midway would lose the
            // stream's framing. Requests are on their way once sent; only answers are awaited
            // here, when the window is full.
            while in_flight.len() >= ROUTER_WINDOW {
                in_flight.next().await;
            }
            let read = read_frame(&mut stream, self.max_frame()).await;
            let frame = match read {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(FrameError::TooLarge { len, max }) => {
                    bump(&self.counters.frames_over_limit, 1);
                    tracing::warn!(peer = %peer.id, len, max, "frame over the limit; disconnecting");
                    connection.connection.close(CLOSE_FRAME_OVER_LIMIT.into(), b"frame over the limit");
                    break;
                }
                Err(error) => {
                    tracing::debug!(peer = %peer.id, %error, "stream ended");
                    break;
                }
            };
            bump(&self.counters.frames_received, 1);
            peer.frames_received.set(peer.frames_received.get() + 1);
            let Some(router) = self.router_client().await else { break };
            let mut request = router.receive_frame_request();
            let mut params = request.get();
            params.set_src(&peer.id.0);
            params.set_frame(&frame);
            params.set_public(public);
            let node = peer.id;
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

    /// Queues a frame for `dst`.
    pub async fn send_frame(self: &Rc<Self>, dst: Identity, frame: Vec<u8>, expiry: u64) -> Result<(), String> {
        if frame.len() > self.max_frame() {
            bump(&self.counters.frames_over_limit, 1);
            return Err(format!("the frame is {} bytes, over the limit of {}", frame.len(), self.max_frame()));
        }
        let known = self.book.borrow().get(&dst).map(|p| p.trust);
        let connected = self.peers.borrow().get(&dst).is_some_and(|p| p.current().is_some());
        match known {
            Some(0) => {
                bump(&self.counters.frames_refused, 1);
                return Err(format!("node {dst} is banned (trust 0)"));
            }
            None if !connected => {
                bump(&self.counters.frames_refused, 1);
                return Err(format!("node {dst} is not known here: add its advert (`netmachine peer add`)"));
            }
            _ => {}
        }
        let peer = self.peer(dst);
        let wait = Duration::from_millis(self.home.config.limits.send_wait_ms);
        let wait = match expiry {
            0 => wait,
            at => wait.min(Duration::from_millis(at.saturating_sub(now_ms()))),
        };
        peer.queue.push(Queued { bytes: frame, expiry }, wait).await.map_err(|_| {
            bump(&self.counters.frames_refused, 1);
            format!("the queue for node {dst} stayed full for {} ms", wait.as_millis())
        })
    }

    /// Makes sure permanent peers have drivers (which keep them connected).
    pub fn keep_permanent_peers(self: &Rc<Self>) {
        let permanent: Vec<Identity> = self.book.borrow().permanent().collect();
        for id in permanent {
            self.peer(id);
        }
    }

    /// Emits message counts for connected peers whose counts changed, every few seconds, while
    /// anyone subscribes to events.
    pub async fn report_counts(self: Rc<Self>) {
        let mut reported: HashMap<Identity, (u64, u64)> = HashMap::new();
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            if self.events.is_empty() {
                continue;
            }
            let peers: Vec<Rc<Peer>> = self.peers.borrow().values().cloned().collect();
            reported.retain(|id, _| peers.iter().any(|p| p.id == *id));
            for peer in peers {
                let counts = (peer.frames_sent.get(), peer.frames_received.get());
                if reported.insert(peer.id, counts) != Some(counts) {
                    emit(&self.events, peer.id, Event::Counts { frames_sent: counts.0, frames_received: counts.1 });
                }
            }
        }
    }
}
