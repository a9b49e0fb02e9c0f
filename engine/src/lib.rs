//! The SDK an engine links to talk to its node: [`Engine::attach`] proves the engine's key to
//! the router, then [`Engine::send`], [`Engine::request`], [`Engine::reply`] and
//! [`Engine::recv`] move messages, with the same calls whatever node the destination is on.
//!
//! A thread that is not running async code has blocking forms, and for streams of small
//! messages [`Engine::send_all_blocking`] and [`Engine::poll_blocking`] (no lock, wake-up or
//! allocation per message on the rings).
//!
//! The connection to the router runs on a thread of its own (Cap'n Proto RPC is
//! single-threaded), so an [`Engine`] is `Send + Sync` and works from any tokio runtime. If the
//! router restarts, the engine attaches again on its own; sends made meanwhile wait for it.
//!
//! ```no_run
//! # async fn example() -> Result<(), netmachine_engine::EngineError> {
//! use netmachine_engine::{Engine, EngineOptions, Keypair};
//! let engine = Engine::attach(EngineOptions::new("/home/me/.netmachine/run/router.sock", Keypair::generate())).await?;
//! let peer: netmachine_engine::Identity = "1f...".parse().expect("a peer identity");
//! engine.send(peer, b"hello".to_vec()).await?;
//! let answer = engine.request(peer, b"ping".to_vec(), std::time::Duration::from_secs(1)).await?;
//! # Ok(()) }
//! ```

pub mod blocks;
mod channels;
mod connection;
mod delivered;
pub mod delivery_stream;
mod error;
mod fast_path;
pub mod stream_reader;
pub mod ring;
pub mod send_stream;
pub mod topics;
mod view;

pub use error::EngineError;
pub use fast_path::Receiver;
pub use ring::wait::WaitMode;
pub use netmachine_schema::message_capnp::Scope;
pub use netmachine_schema::router_capnp::{SendRefusal, TopicPolicy, TopicRefusal};
pub use netmachine_schema::{ContentId, Destination, EngineMessage, Identity, Keypair, TopicAdvert};
pub use topics::{Event, Gap, Received, TopicAnswer};
pub use view::MessageView;

use connection::{Command, RpcAnswer, Shared};
use ring::wait::Waiter;
use send_stream::SendStream;
use topics::{Fit, RouterRequest};
use rustc_hash::FxHashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Mutex};

/// How an engine attaches.
#[derive(Clone)]
pub struct EngineOptions {
    /// The router's socket: `$RUN/router.sock` of the node.
    pub socket: PathBuf,
    /// The engine's key; its public half is the engine's identity.
    pub keypair: Keypair,
    /// Messages received and not yet taken by [`Engine::recv`]; when full, the router holds
    /// further messages back (backpressure).
    pub inbox_capacity: usize,
    /// How long a send waits for the router (while it restarts, say) before failing.
    pub send_timeout: Duration,
    /// Attach again on our own when the connection to the router is lost.
    pub reattach: bool,
    /// Sign every message with the engine key, so receiving nodes can check it came from this
    /// engine (nodes may require it: `router.require_engine_signatures`).
    pub sign_messages: bool,
    /// Accept messages from nodes connected under the public network rules.
    pub public: bool,
    /// Use the shared-memory rings when the router grants them (ring/RING.md), else the
    /// socket. On the rings a send returns once the message is in the outbox; a refusal comes
    /// back later, fails the request it belongs to and is counted in [`Engine::refused`].
    pub ring: bool,
    /// How the ring reader and blocking sends wait: adaptive (default) or busy-spin.
    pub wait: WaitMode,
    /// Who reads the inbox ring: a reader thread (default), or the thread calling the blocking
    /// calls (lowest latency; for engines that receive with `recv_blocking`).
    pub receiver: Receiver,
}

impl EngineOptions {
    /// Options with defaults: inbox of 1024 messages, 10 s send timeout, re-attach on,
    /// messages unsigned, not public, rings on, adaptive waiting.
    pub fn new(socket: impl Into<PathBuf>, keypair: Keypair) -> Self {
        EngineOptions {
            socket: socket.into(),
            keypair,
            inbox_capacity: 1024,
            send_timeout: Duration::from_secs(10),
            reattach: true,
            sign_messages: false,
            public: false,
            ring: true,
            wait: WaitMode::Adaptive,
            receiver: Receiver::ReaderThread,
        }
    }
}

/// The router's answer to a send handed over with [`Engine::send_pipelined`].
pub type PendingSend = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), EngineError>>>>;

/// An engine attached to its node's router.
pub struct Engine {
    identity: Identity,
    /// Set when messages are signed.
    signer: Option<Keypair>,
    /// Signs events of topics that may leave the node, whether or not messages are signed.
    key: Keypair,
    node: Identity,
    max_message_bytes: usize,
    send_timeout: Duration,
    next_id: AtomicU64,
    commands: mpsc::Sender<Command>,
    incoming: Mutex<mpsc::Receiver<Box<EngineMessage>>>,
    shared: Arc<Shared>,
    /// Held by the one sender waiting for room in a full outbox ring.
    room_wait: Mutex<()>,
    receiver: Receiver,
    /// Messages a calling-thread engine took from its ring while waiting for a reply.
    taken: std::sync::Mutex<std::collections::VecDeque<Box<EngineMessage>>>,
    /// How many `taken` holds, so that `recv_blocking` looks without locking.
    kept: AtomicU64,
    inbox_capacity: usize,
    /// The engine thread's runtime, for the blocking calls.
    runtime: tokio::runtime::Handle,
    /// Per topic this engine publishes on, the sequence of its next event; held while an
    /// event is handed over, so that events leave in sequence.
    publishing: Mutex<FxHashMap<Identity, u64>>,
    /// The node's storage service (`storage.sock` beside the router's socket), connected on
    /// first use and again after it went away.
    storage_socket: std::path::PathBuf,
    blocks: std::sync::Mutex<Option<Arc<blocks::Blocks>>>,
}

/// How long a blocking call on the socket path looks for what it waits for (a message, the
/// router's answer) without blocking, yielding between looks, before it blocks: about a round
/// trip through the router on 2 cores. Waking a blocked thread costs tens of microseconds there.
const LOOK_FOR: Duration = Duration::from_micros(200);

/// Yields an event sent over the socket waits, at least, for the router to take the events
/// in the outbox ring.
const OUTBOX_DRAIN_YIELDS: u32 = 64;

/// How long `try_publish` waits for the router to take the events in the outbox ring (which
/// it does at once unless a subscriber has no room).
const TRY_PUBLISH_DRAIN: Duration = Duration::from_millis(20);

/// Where a request's answer, or the router's answer to a send, arrives.
type Answer<T = EngineMessage> = tokio::sync::oneshot::Receiver<Result<T, EngineError>>;

/// The answer, if it has come.
fn answered(answer: &mut Answer) -> Option<Result<EngineMessage, EngineError>> {
    match answer.try_recv() {
        Ok(result) => Some(result),
        Err(tokio::sync::oneshot::error::TryRecvError::Closed) => Some(Err(EngineError::Closed)),
        Err(tokio::sync::oneshot::error::TryRecvError::Empty) => None,
    }
}

/// How async code waits on a ring it reads itself: yields a few times, then sleeps a little
/// longer each time, up to a millisecond.
#[derive(Default)]
struct IdleWait(u32);

impl IdleWait {
    fn reset(&mut self) {
        self.0 = 0;
    }

    async fn wait(&mut self) {
        self.0 += 1;
        if self.0 < 16 {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(Duration::from_micros(u64::from(self.0.min(64)) * 16)).await;
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(ring) = self.shared.ring() {
            ring.stop();
        }
    }
}

impl Engine {
    /// Connects to the router, proves the engine's key, and starts receiving. Fails if the
    /// router cannot be reached or refuses the key.
    pub async fn attach(options: EngineOptions) -> Result<Engine, EngineError> {
        let identity = options.keypair.identity();
        let (commands, incoming, shared, attached) = connection::start(options.clone())?;
        let (limits, runtime) = attached.await.map_err(|_| EngineError::Closed)??;
        let mut first_id = [0u8; 8];
        getrandom::fill(&mut first_id).map_err(|e| EngineError::Rpc(format!("no randomness: {e}")))?;
        Ok(Engine {
            identity,
            signer: options.sign_messages.then(|| options.keypair.clone()),
            key: options.keypair.clone(),
            node: limits.node,
            max_message_bytes: limits.max_message_bytes,
            send_timeout: options.send_timeout,
            // Random start, so ids stay unique per (src, dst) across restarts of the engine.
            next_id: AtomicU64::new(u64::from_le_bytes(first_id) >> 1),
            commands,
            incoming: Mutex::new(incoming),
            shared,
            room_wait: Mutex::new(()),
            receiver: options.receiver,
            taken: std::sync::Mutex::new(std::collections::VecDeque::new()),
            kept: AtomicU64::new(0),
            inbox_capacity: options.inbox_capacity.max(1),
            runtime,
            publishing: Mutex::new(FxHashMap::default()),
            storage_socket: options.socket.with_file_name("storage.sock"),
            blocks: std::sync::Mutex::new(None),
        })
    }

    /// Whether messages go through the shared-memory rings (else the socket).
    pub fn on_ring(&self) -> bool {
        self.shared.ring().is_some()
    }

    /// Messages written to the rings that the router then refused.
    pub fn refused(&self) -> u64 {
        self.shared.refusals.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Messages from other nodes dropped as second copies: placed again by a router restarted
    /// before the frame that carried them was settled.
    pub fn duplicates_dropped(&self) -> u64 {
        self.shared.duplicates.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Why the router detached this engine, if it did (its ring was corrupt, say); `recv` then
    /// returns `None`.
    pub fn detached_because(&self) -> Option<String> {
        self.shared.detached_because.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// This engine's identity.
    pub fn identity(&self) -> Identity {
        self.identity
    }

    /// The identity of the node (its router) this engine is attached to.
    pub fn node(&self) -> Identity {
        self.node
    }

    /// The largest body the node accepts.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// A new message from this engine to `dst` with a fresh id, for callers that want to set
    /// more fields (expiry, protocol, scope) before [`Engine::send_message`].
    pub fn message(&self, dst: impl Into<Destination>, body: Vec<u8>) -> EngineMessage {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        EngineMessage::new(self.identity, dst.into(), id, body)
    }

    /// Sends `body` to `dst`; returns the message id once the router has accepted it.
    pub async fn send(&self, dst: impl Into<Destination>, body: Vec<u8>) -> Result<u64, EngineError> {
        let mut message = self.message(dst, body);
        let id = message.id;
        self.prepare(&mut message)?;
        // Written in place when the ring has room: the message is not moved into the futures
        // that wait (288 bytes each time).
        if let Some(sent) = self.try_ring(&message) {
            return sent.map(|()| id);
        }
        self.send_prepared(message).await?;
        Ok(id)
    }

    /// Checks `message` and signs it, if the engine signs its messages.
    fn prepare(&self, message: &mut EngineMessage) -> Result<(), EngineError> {
        if message.body.len() > self.max_message_bytes {
            return Err(EngineError::TooLarge { len: message.body.len(), max: self.max_message_bytes });
        }
        if let Some(signer) = &self.signer {
            message.sig = Some(signer.sign(&netmachine_schema::signing::engine_message(message)));
        }
        Ok(())
    }

    /// Writes a prepared message into the rings if they have room now; `None` if it must wait
    /// for room or go over the socket.
    fn try_ring(&self, message: &EngineMessage) -> Option<Result<(), EngineError>> {
        match self.shared.ring()?.try_send(message) {
            Err(EngineError::Full) => None,
            sent => Some(sent),
        }
    }

    /// Sends a message without waiting: `Full` when the outbox ring has no room now. Engines
    /// on the socket path wait as [`Engine::send`] does.
    pub async fn try_send(&self, dst: impl Into<Destination>, body: Vec<u8>) -> Result<u64, EngineError> {
        let mut message = self.message(dst, body);
        self.prepare(&mut message)?;
        let id = message.id;
        match self.shared.ring() {
            Some(ring) => ring.try_send(&message)?,
            None => self.send_prepared(message).await?,
        }
        Ok(id)
    }

    /// Sends from a thread that is not running async code, waiting (without burning CPU, unless
    /// the engine busy-spins) while the outbox is full. Do not call it from async code.
    pub fn send_blocking(&self, dst: impl Into<Destination>, body: Vec<u8>) -> Result<u64, EngineError> {
        let mut message = self.message(dst, body);
        self.prepare(&mut message)?;
        let id = message.id;
        self.send_prepared_blocking(message)?;
        Ok(id)
    }

    fn send_prepared_blocking(&self, message: EngineMessage) -> Result<(), EngineError> {
        if let Some(ring) = self.shared.ring() {
            return ring.send_blocking(&message, self.send_timeout);
        }
        let timeout = self.send_timeout;
        let unavailable = || EngineError::RouterUnavailable(timeout);
        let (mut answer, stream) = self.runtime.block_on(async { tokio::time::timeout(timeout, self.hand_over_by(message, true)).await }).map_err(|_| unavailable())??;
        if let Some(outcome) = stream.and_then(|stream| stream.answered(&mut answer, LOOK_FOR)) {
            return outcome;
        }
        self.runtime.block_on(async { tokio::time::timeout(timeout, answer).await }).map_err(|_| unavailable())?.map_err(|_| EngineError::Closed)?
    }

    /// Sends each of `bodies` to `dst` as a message of its own, in order, from a thread that is
    /// not running async code: on the rings, as many at a time as there is room for, under one
    /// lock and with one wake-up of the receiver (the way to stream many small messages); an
    /// engine that signs its messages, or is on the socket path, sends them one by one. Their
    /// ids are the one returned and those after it. A body over the node's limit refuses them
    /// all, before any is sent.
    pub fn send_all_blocking(&self, dst: impl Into<Destination>, bodies: &[&[u8]]) -> Result<u64, EngineError> {
        if let Some(body) = bodies.iter().find(|body| body.len() > self.max_message_bytes) {
            return Err(EngineError::TooLarge { len: body.len(), max: self.max_message_bytes });
        }
        let first = self.next_id.fetch_add(bodies.len() as u64, Ordering::Relaxed);
        let template = EngineMessage::new(self.identity, dst.into(), first, Vec::new());
        match self.shared.ring() {
            Some(ring) if self.signer.is_none() => ring.send_bodies_blocking(&template, first, bodies, self.send_timeout)?,
            _ => {
                for (at, body) in bodies.iter().enumerate() {
                    let mut message = EngineMessage { id: first + at as u64, body: body.to_vec(), ..template.clone() };
                    self.prepare(&mut message)?;
                    self.send_prepared_blocking(message)?;
                }
            }
        }
        Ok(first)
    }

    /// The inbox ring, when this engine reads it on the calling thread.
    fn own_ring(&self) -> Option<connection::RingRef> {
        (self.receiver == Receiver::CallingThread).then(|| self.shared.ring()).flatten()
    }

    fn take_kept(&self) -> Option<EngineMessage> {
        if self.kept.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        let message = taken.pop_front();
        self.kept.store(taken.len() as u64, Ordering::Release);
        message.map(|message| *message)
    }

    /// Takes one inbox record on this thread, keeping a message for `recv` when `keep`; `None`
    /// when nothing is waiting (or room to keep it is lacking).
    fn pump(&self, ring: &fast_path::EngineRing, keep: bool) -> Option<fast_path::Taken> {
        if keep && self.kept.load(Ordering::Acquire) >= self.inbox_capacity as u64 {
            return None;
        }
        match ring.take(&self.shared) {
            fast_path::Taken::Message(message) if keep => {
                let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
                taken.push_back(message);
                self.kept.store(taken.len() as u64, Ordering::Release);
                Some(fast_path::Taken::Handled)
            }
            fast_path::Taken::Empty => None,
            taken => Some(taken),
        }
    }

    /// Receives from a thread that is not running async code. Do not call it from async code.
    pub fn recv_blocking(&self) -> Option<EngineMessage> {
        let Some(ring) = self.own_ring() else { return self.recv_queued_blocking(None).ok().flatten() };
        if let Some(message) = self.take_kept() {
            return Some(message);
        }
        let mut waiter = Waiter::without_deadline();
        loop {
            match self.pump(&ring, false) {
                Some(fast_path::Taken::Message(message)) => return Some(*message),
                Some(fast_path::Taken::Handled) => {}
                Some(fast_path::Taken::Done) => return None,
                Some(fast_path::Taken::Empty) | None => ring.wait_for_records(&mut waiter),
            }
        }
    }

    /// Hands up to `limit` received messages to `handle`, waiting (as the engine's wait mode
    /// says) up to `timeout` for the first: how many (0 if none came), or `None` once the engine
    /// is closed. An engine that reads its rings on the calling thread hands plain messages
    /// (see [`MessageView::is_plain`]) from a direct channel straight from its copy of each
    /// record, with no allocation: the way to take a stream of small messages. Replies go to
    /// their requests, as with `recv`. A `limit` of 0 is taken as 1. `handle` may send, but
    /// must not receive on this engine (the inbox is held while it runs). Do not call it from
    /// async code.
    pub fn poll_blocking(&self, limit: usize, timeout: Duration, mut handle: impl FnMut(MessageView<'_>)) -> Option<usize> {
        let mut handed = |message: EngineMessage| {
            handle(MessageView::of(&message));
            Some(1)
        };
        let Some(ring) = self.own_ring() else {
            return match self.recv_queued_blocking(Some(timeout)) {
                Ok(message) => handed(message?),
                Err(_) => Some(0),
            };
        };
        if let Some(message) = self.take_kept() {
            return handed(message);
        }
        // The clock is read once the ring is found empty: a message already waiting is taken
        // without it (a clock read is tens of nanoseconds in a VM).
        let mut deadline = None;
        let mut waiter = Waiter::default();
        loop {
            match ring.poll(&self.shared, limit.max(1), &mut handle) {
                fast_path::Polled::Handed(0) => {}
                fast_path::Polled::Handed(count) => return Some(count),
                fast_path::Polled::Empty if *deadline.get_or_insert_with(|| std::time::Instant::now() + timeout) <= std::time::Instant::now() => return Some(0),
                fast_path::Polled::Empty => ring.wait_for_records(&mut waiter),
                fast_path::Polled::Done => return None,
            }
        }
    }

    /// The next message on the socket path, for a thread that is not running async code: for a
    /// while it looks for one without blocking, yielding between looks, in what was queued and
    /// (holding the reading turn) in the delivery stream itself, since waking a blocked thread
    /// costs tens of microseconds; then it blocks on the queue. `Elapsed` if nothing came within
    /// `timeout` (if given); `None` once the engine is closed.
    fn recv_queued_blocking(&self, timeout: Option<Duration>) -> Result<Option<EngineMessage>, tokio::time::error::Elapsed> {
        let delivery = self.shared.delivery();
        let mut turn = delivery.as_ref().map(|delivery| delivery.reader.turn());
        let found = stream_reader::look_a_while(LOOK_FOR, || {
            let mut incoming = self.incoming.try_lock().ok()?;
            let next = match &delivery {
                Some(delivery) => delivery.next(&self.shared, &mut incoming).map(Some),
                None => match incoming.try_recv() {
                    Ok(message) => Some(Some(message)),
                    Err(mpsc::error::TryRecvError::Disconnected) => Some(None),
                    Err(mpsc::error::TryRecvError::Empty) => None,
                },
            };
            next.map(|message| message.map(|message| *message))
        });
        if let Some(turn) = &mut turn {
            turn.came = found.is_some();
        }
        drop(turn);
        if let Some(found) = found {
            return Ok(found);
        }
        match timeout {
            // The timer is made within the runtime, whose clock it needs.
            Some(timeout) => self.runtime.block_on(async { tokio::time::timeout(timeout, self.recv()).await }),
            None => Ok(self.runtime.block_on(self.recv())),
        }
    }

    /// Answers `request` from a thread that is not running async code.
    pub fn reply_blocking(&self, request: &EngineMessage, body: Vec<u8>) -> Result<(), EngineError> {
        let mut message = self.message(Destination::Engine(request.src), body);
        message.reply_to = Some(request.id);
        self.prepare(&mut message)?;
        match self.shared.ring() {
            Some(ring) => ring.send_blocking(&message, self.send_timeout),
            None => self.runtime.block_on(self.send_prepared(message)),
        }
    }

    /// A request from a thread that is not running async code. Do not call it from async code.
    pub fn request_blocking(&self, dst: impl Into<Destination>, body: Vec<u8>, timeout: Duration) -> Result<EngineMessage, EngineError> {
        let Some(ring) = self.own_ring() else { return self.runtime.block_on(self.request(dst, body, timeout)) };
        let (message, mut answer) = self.start_request(self.message(dst, body), timeout)?;
        let id = message.id;
        let deadline = std::time::Instant::now() + timeout;
        let mut waiter = Waiter::default();
        let outcome = ring.send_blocking(&message, self.send_timeout).and_then(|()| loop {
            if let Some(result) = answered(&mut answer) {
                break result;
            }
            if std::time::Instant::now() >= deadline {
                break Err(EngineError::Timeout(timeout));
            }
            match self.pump(&ring, true) {
                Some(fast_path::Taken::Done) => break Err(EngineError::Closed),
                Some(_) => {}
                None => ring.wait_for_records(&mut waiter),
            }
        });
        self.shared.forget_reply(id);
        outcome
    }

    /// A request's message (expiring with the timeout) and where its answer will come.
    fn start_request(&self, mut message: EngineMessage, timeout: Duration) -> Result<(EngineMessage, Answer), EngineError> {
        message.expiry = Some(netmachine_schema::time::now_ms() + timeout.as_millis() as u64);
        // Checked and signed before the answer is awaited, so a refused message leaves no waiter.
        self.prepare(&mut message)?;
        let answer = self.shared.expect_reply(message.id, message.dst.identity())?;
        Ok((message, answer))
    }

    /// Sends a message built by [`Engine::message`] (or by hand, with this engine as `src`),
    /// signing it first if the engine signs its messages.
    pub async fn send_message(&self, mut message: EngineMessage) -> Result<(), EngineError> {
        self.prepare(&mut message)?;
        self.send_prepared(message).await
    }

    /// Hands `message` over to be sent and returns once it is queued, in order behind what was
    /// handed over before; the returned future says whether the router took it. Lets a caller
    /// keep many sends in flight on the socket path, in order (on the rings a send is queued
    /// when it returns anyway).
    pub async fn send_pipelined(&self, mut message: EngineMessage) -> Result<PendingSend, EngineError> {
        self.prepare(&mut message)?;
        if self.shared.ring().is_some() {
            let outcome = self.send_prepared(message).await;
            return Ok(Box::pin(async move { outcome }));
        }
        let accepted = self.hand_over(message, true).await?;
        let timeout = self.send_timeout;
        Ok(Box::pin(async move {
            tokio::time::timeout(timeout, accepted).await.map_err(|_| EngineError::RouterUnavailable(timeout))?.map_err(|_| EngineError::Closed)?
        }))
    }

    /// Sends a message [`Engine::prepare`] already checked and signed.
    async fn send_prepared(&self, message: EngineMessage) -> Result<(), EngineError> {
        if self.shared.ring().is_none() {
            return self.send_over_socket(message).await;
        }
        match self.try_ring(&message) {
            Some(sent) => sent,
            None => self.send_when_room(message).await,
        }
    }

    async fn send_over_socket(&self, message: EngineMessage) -> Result<(), EngineError> {
        let work = async { self.hand_over(message, true).await?.await.map_err(|_| EngineError::Closed)? };
        tokio::time::timeout(self.send_timeout, work)
            .await
            .map_err(|_| EngineError::RouterUnavailable(self.send_timeout))?
    }

    /// Hands a prepared message to the router on the socket path (`wait`: as `send`, else as
    /// `trySend`): this thread writes it to the send stream when there is one (while the router
    /// is not reading it, the caller waits without blocking its runtime, within the send
    /// timeout), else the engine thread makes the RPC call. The router's answer comes on the
    /// returned receiver.
    async fn hand_over(&self, message: EngineMessage, wait: bool) -> Result<Answer<()>, EngineError> {
        self.hand_over_by(message, wait).await.map(|(answer, _)| answer)
    }

    /// `hand_over`, saying which send stream the message went on, if it did.
    async fn hand_over_by(&self, message: EngineMessage, wait: bool) -> Result<(Answer<()>, Option<Arc<SendStream>>), EngineError> {
        if let Some(stream) = self.shared.stream() {
            let mut frame = Vec::with_capacity(stream_reader::FRAME_HEAD + 1 + ring::records::message_length(&message));
            send_stream::send_frame(&mut frame, &message, wait);
            let deadline = tokio::time::Instant::now() + self.send_timeout;
            let mut pause = Duration::from_micros(50);
            loop {
                match stream.try_send(&frame, self.send_timeout) {
                    Ok(Some(answer)) => return Ok((answer, Some(stream))),
                    Ok(None) if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_millis(2));
                    }
                    Ok(None) => return Err(EngineError::RouterUnavailable(self.send_timeout)),
                    // The stream had ended: nothing was written, the call goes instead.
                    Err(EngineError::Closed) => break,
                    Err(error) => return Err(error),
                }
            }
        }
        let (done, accepted) = oneshot::channel();
        let done = RpcAnswer::new(&self.shared, done);
        let command = if wait { Command::Send { message, done } } else { Command::TrySend { message, done } };
        self.commands.send(command).await.map_err(|_| EngineError::Closed)?;
        Ok((accepted, None))
    }

    /// Waits for room in the full outbox ring without holding up the caller's runtime (nor
    /// polling it): one sender at a time, in the order they came, sleeps on the ring's waking
    /// word in a blocking thread until the router has taken records; the others wait their turn.
    /// Within the send timeout, whole: a send that gives up was not written.
    async fn send_when_room(&self, message: EngineMessage) -> Result<(), EngineError> {
        let unavailable = EngineError::RouterUnavailable(self.send_timeout);
        let deadline = std::time::Instant::now() + self.send_timeout;
        let _turn = tokio::time::timeout(self.send_timeout, self.room_wait.lock()).await.map_err(|_| unavailable)?;
        let Some(ring) = self.shared.ring_owned() else { return self.send_over_socket(message).await };
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        tokio::task::spawn_blocking(move || ring.send_blocking(&message, left)).await.map_err(|_| EngineError::Closed)?
    }

    /// Sends `body` to `dst` and waits up to `timeout` for its reply. The message expires with
    /// the timeout, so the router drops it rather than deliver it late.
    pub async fn request(&self, dst: impl Into<Destination>, body: Vec<u8>, timeout: Duration) -> Result<EngineMessage, EngineError> {
        self.request_message(self.message(dst, body), timeout).await
    }

    /// A request built by [`Engine::message`] (to set its protocol or scope, say); its expiry
    /// is set to the timeout.
    pub async fn request_message(&self, message: EngineMessage, timeout: Duration) -> Result<EngineMessage, EngineError> {
        let (message, mut answer) = self.start_request(message, timeout)?;
        let id = message.id;
        let outcome = async {
            self.send_prepared(message).await?;
            let Some(ring) = self.own_ring() else { return answer.await.map_err(|_| EngineError::Closed)? };
            // This engine reads its own ring: take records until the answer is among them.
            let mut idle = IdleWait::default();
            loop {
                if let Some(result) = answered(&mut answer) {
                    return result;
                }
                match self.pump(&ring, true) {
                    Some(fast_path::Taken::Done) => return Err(EngineError::Closed),
                    Some(_) => idle.reset(),
                    None => idle.wait().await,
                }
            }
        };
        let result = tokio::time::timeout(timeout, outcome).await;
        self.shared.forget_reply(id);
        result.map_err(|_| EngineError::Timeout(timeout))?
    }

    /// Answers `request` with `body`.
    pub async fn reply(&self, request: &EngineMessage, body: Vec<u8>) -> Result<(), EngineError> {
        let mut message = self.message(Destination::Engine(request.src), body);
        message.reply_to = Some(request.id);
        self.send_message(message).await
    }

    /// The next message for this engine (requests and one-way messages; replies to
    /// [`Engine::request`] go to their caller, or here if they arrive after it gave up).
    /// `None` once the engine is closed.
    pub async fn recv(&self) -> Option<EngineMessage> {
        let Some(ring) = self.own_ring() else {
            let mut incoming = self.incoming.lock().await;
            // One waiting already: taken without setting up the wait below.
            if let Ok(message) = incoming.try_recv() {
                return Some(*message);
            }
            // What was delivered before the router detached this engine is still received.
            let detached = self.shared.detached.notified();
            tokio::pin!(detached);
            detached.as_mut().enable();
            if self.detached_because().is_some() {
                return incoming.try_recv().ok().map(|message| *message);
            }
            return tokio::select! {
                biased;
                message = incoming.recv() => message.map(|message| *message),
                () = detached => incoming.try_recv().ok().map(|message| *message),
            };
        };
        let mut idle = IdleWait::default();
        loop {
            if let Some(message) = self.take_kept() {
                return Some(message);
            }
            match self.pump(&ring, false) {
                Some(fast_path::Taken::Message(message)) => return Some(*message),
                Some(fast_path::Taken::Done) => return None,
                Some(_) => idle.reset(),
                None => idle.wait().await,
            }
        }
    }

    /// Asks the router something of a topic (or a service); the topic's last sequence.
    async fn router_request(&self, request: RouterRequest) -> Result<TopicAnswer, EngineError> {
        let (done, answer) = oneshot::channel();
        let work = async {
            self.commands.send(Command::Topic { request, done }).await.map_err(|_| EngineError::Closed)?;
            answer.await.map_err(|_| EngineError::Closed)?
        };
        tokio::time::timeout(self.send_timeout, work).await.map_err(|_| EngineError::RouterUnavailable(self.send_timeout))?
    }

    fn topic_book(&self) -> std::sync::MutexGuard<'_, topics::TopicBook> {
        self.shared.topics.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts the topic of `advert` (signed by the topic key; it names the one engine that may
    /// publish) on this node. `scope` Local keeps it to this node; `policy` says what an event
    /// does when a subscriber has no room. The topic stays after this engine detaches, until
    /// it deletes it; the engine puts it back if the router restarts.
    pub async fn create_topic(&self, advert: TopicAdvert, scope: Scope, policy: TopicPolicy) -> Result<(), EngineError> {
        self.create(topics::Creation { advert, scope, policy, after: 0 }).await
    }

    /// Puts a mirror of a topic on another node on this node, taking events after `after` (the
    /// last event before its subscription began). For the node's pubsub service.
    pub async fn create_mirror(&self, advert: TopicAdvert, policy: TopicPolicy, after: u64) -> Result<(), EngineError> {
        self.create(topics::Creation { advert, scope: Scope::Any, policy, after }).await
    }

    async fn create(&self, creation: topics::Creation) -> Result<(), EngineError> {
        let topic = creation.advert.topic;
        let last_seq = self.router_request(RouterRequest::Create(creation.clone())).await?.last_seq;
        self.topic_book().created.insert(topic, creation);
        self.publishing.lock().await.insert(topic, last_seq + 1);
        Ok(())
    }

    /// Serves `protocol` for the node: messages to this engine's node in that protocol come
    /// to this engine (through [`Engine::recv`]), until it detaches; served again after the
    /// engine attaches again. One engine per protocol on a node.
    pub async fn serve(&self, protocol: &str) -> Result<(), EngineError> {
        self.router_request(RouterRequest::Serve(protocol.to_string())).await?;
        self.topic_book().served.insert(protocol.to_string());
        Ok(())
    }

    /// Deletes a topic this engine created.
    pub async fn delete_topic(&self, topic: Identity) -> Result<(), EngineError> {
        self.router_request(RouterRequest::Delete(topic)).await?;
        self.topic_book().created.remove(&topic);
        Ok(())
    }

    /// Receives the topic's events from its next one on, through [`Engine::recv_event`] (or as
    /// messages to [`Destination::Topic`] through [`Engine::recv`]). The answer says where the
    /// topic's sequence stood (`SEQ_NOT_KNOWN` for a topic on another node) and its policy.
    pub async fn subscribe(&self, topic: Identity, scope: Scope) -> Result<TopicAnswer, EngineError> {
        self.subscribe_from(topic, scope, 0).await
    }

    /// `subscribe`, for a service that keeps a copy of a topic's events (the pubsub service):
    /// the answer also carries the events of a topic here that the router kept for it, from
    /// sequence `from` on (none for `from` 0).
    pub async fn subscribe_from(&self, topic: Identity, scope: Scope, from: u64) -> Result<TopicAnswer, EngineError> {
        // Events may come before the answer does.
        self.shared.sequences.lock().unwrap_or_else(|e| e.into_inner()).0.subscribing(topic);
        let answer = match self.router_request(RouterRequest::Subscribe { topic, scope, from }).await {
            Ok(answer) => answer,
            Err(error) => {
                if !self.topic_book().subscribed.contains_key(&topic) {
                    self.shared.sequences.lock().unwrap_or_else(|e| e.into_inner()).0.unsubscribed(topic);
                }
                return Err(error);
            }
        };
        self.topic_book().subscribed.insert(topic, scope);
        self.shared.sequences.lock().unwrap_or_else(|e| e.into_inner()).0.subscribed(topic, answer.last_seq);
        Ok(answer)
    }

    /// Stops the topic's events; a later `subscribe` starts from the topic's last event then,
    /// with no gap reported for the events in between.
    pub async fn unsubscribe(&self, topic: Identity) -> Result<(), EngineError> {
        self.topic_book().subscribed.remove(&topic);
        self.shared.sequences.lock().unwrap_or_else(|e| e.into_inner()).0.unsubscribed(topic);
        self.router_request(RouterRequest::Unsubscribe(topic)).await.map(|_| ())
    }

    /// The next event on `topic` from this engine, its sequence set.
    /// The router's answer to LastSeq says whether this engine may publish on the topic: on the
    /// rings, the first event's refusal is answered here, as over the socket.
    async fn event(&self, next: &mut FxHashMap<Identity, u64>, topic: Identity, body: Vec<u8>) -> Result<EngineMessage, EngineError> {
        if self.shared.sequences_stale.swap(false, Ordering::AcqRel) {
            next.clear();
        }
        let seq = match next.get(&topic) {
            Some(seq) => *seq,
            None => {
                // What the outbox ring still holds moves the sequence on: the router takes it first.
                self.outbox_drained(topic, self.send_timeout).await?;
                let asked = self.router_request(RouterRequest::LastSeq(topic)).await;
                let refused = |reason, detail| EngineError::Refused { reason, detail };
                match asked {
                    Ok(answer) => answer.last_seq + 1,
                    Err(EngineError::TopicRefused { reason: TopicRefusal::Unknown, detail }) => return Err(refused(SendRefusal::NoRoute, detail)),
                    Err(EngineError::TopicRefused { reason: TopicRefusal::Denied, detail }) => return Err(refused(SendRefusal::Denied, detail)),
                    Err(other) => return Err(other),
                }
            }
        };
        let mut message = EngineMessage::new(self.identity, Destination::Topic(topic), seq, body);
        self.prepare(&mut message)?;
        // Other nodes' pubsub services take only events their publisher signed; an event of a
        // topic this engine created with scope Local never leaves the node, and goes unsigned.
        let local = self.topic_book().created.get(&topic).is_some_and(|creation| creation.scope == Scope::Local);
        if message.sig.is_none() && !local {
            message.sig = Some(self.key.sign(&netmachine_schema::signing::engine_message(&message)));
        }
        Ok(message)
    }

    /// Publishes `body` on `topic`, whose advert names this engine; its sequence once the router
    /// took it. Under policy Block it waits while a subscriber has no room (up to the node's
    /// send wait): the slowest subscriber sets the pace. Events go in sequence: on the rings
    /// when the engine has them (taken once in the outbox; the router copies each into every
    /// subscriber's inbox, and a refusal is logged, as for `send`), else over the socket. An
    /// event too large to be carried to other nodes goes over the socket, once the router took
    /// what the rings hold, so that its refusal (or, for a topic that stays on its node, its
    /// acceptance) is answered here.
    pub async fn publish(&self, topic: Identity, body: Vec<u8>) -> Result<u64, EngineError> {
        let carried_max = self.max_message_bytes.saturating_sub(netmachine_schema::PEER_EVENT_OVERHEAD);
        if self.shared.ring().is_some() && body.len() <= carried_max {
            let mut next = self.publishing.lock().await;
            let message = self.event(&mut next, topic, body).await?;
            let seq = message.id;
            self.send_prepared(message).await?;
            next.insert(topic, seq + 1);
            return Ok(seq);
        }
        let mut next = self.publishing.lock().await;
        self.outbox_drained(topic, self.send_timeout).await?;
        let message = self.event(&mut next, topic, body).await?;
        let seq = message.id;
        let accepted = self.hand_over(message, true).await?;
        // Taken now: a refused event is a gap its subscribers see, and its publisher is told.
        next.insert(topic, seq + 1);
        // An engine on the rings publishes its next events there: they must not pass this one,
        // so it is answered before they are written.
        let next = if self.shared.ring().is_some() { Some(next) } else { None };
        let answer = tokio::time::timeout(self.send_timeout, accepted).await;
        drop(next);
        answer.map_err(|_| EngineError::RouterUnavailable(self.send_timeout))?.map_err(|_| EngineError::Closed)??;
        Ok(seq)
    }

    /// Publishes without waiting: [`EngineError::BackPressured`] names the subscriber with no
    /// room, and the sequence is not used up. It goes over the socket, for the router's answer;
    /// on an engine with rings, only once the router has taken every event published there
    /// before (if it has not within 20 ms, it is back-pressured, naming the topic).
    pub async fn try_publish(&self, topic: Identity, body: Vec<u8>) -> Result<u64, EngineError> {
        let mut next = self.publishing.lock().await;
        self.outbox_drained(topic, TRY_PUBLISH_DRAIN).await?;
        let message = self.event(&mut next, topic, body).await?;
        let seq = message.id;
        let accepted = self.hand_over(message, false).await?;
        let outcome = tokio::time::timeout(self.send_timeout, accepted)
            .await
            .map_err(|_| EngineError::RouterUnavailable(self.send_timeout))?
            .map_err(|_| EngineError::Closed)?;
        match outcome {
            Ok(()) => {
                next.insert(topic, seq + 1);
                Ok(seq)
            }
            Err(error @ EngineError::BackPressured { .. }) => Err(error),
            // Whether the router took it is not known here: the next event asks it.
            Err(error) => {
                next.remove(&topic);
                Err(error)
            }
        }
    }

    /// Waits up to `limit` (yielding a while at least) until the router has taken everything
    /// in the outbox ring, so that an event sent over the socket comes after those; else it is
    /// back-pressured, naming the topic.
    async fn outbox_drained(&self, topic: Identity, limit: Duration) -> Result<(), EngineError> {
        let Some(ring) = self.shared.ring() else { return Ok(()) };
        let deadline = tokio::time::Instant::now() + limit;
        let mut yields = 0;
        while !ring.is_drained() {
            if yields < OUTBOX_DRAIN_YIELDS {
                yields += 1;
                tokio::task::yield_now().await;
            } else if tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            } else {
                let detail = format!("events published earlier on topic {topic} still wait in this engine's outbox ring");
                return Err(EngineError::BackPressured { slowest: topic, detail });
            }
        }
        Ok(())
    }

    /// The next message, event or gap: events of each publisher come in sequence, none twice;
    /// events this engine will never get are reported as a [`Gap`] before the event after them.
    /// `None` once the engine is closed.
    pub async fn recv_event(&self) -> Option<Received> {
        loop {
            if let Some(event) = self.shared.sequences.lock().unwrap_or_else(|e| e.into_inner()).1.take() {
                return Some(Received::Event(event));
            }
            let message = self.recv().await?;
            let event = match topics::topic_message(message) {
                Err(message) => return Some(Received::Message(message)),
                Ok(topics::TopicMessage::Gap { topic, publisher, to }) => {
                    match self.shared.sequences.lock().unwrap_or_else(|e| e.into_inner()).0.skip(topic, publisher, to) {
                        Some(gap) => return Some(Received::Gap(gap)),
                        None => continue,
                    }
                }
                Ok(topics::TopicMessage::Event(event)) => event,
            };
            let mut sequences = self.shared.sequences.lock().unwrap_or_else(|e| e.into_inner());
            match sequences.0.take(event.topic, event.publisher, event.seq) {
                Fit::Next => return Some(Received::Event(event)),
                Fit::After(gap) => {
                    sequences.1 = Some(event);
                    return Some(Received::Gap(gap));
                }
                Fit::Repeat | Fit::Left => continue,
            }
        }
    }

    fn blocks(&self) -> Result<Arc<blocks::Blocks>, blocks::BlockError> {
        let mut cached = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        match cached.as_ref() {
            Some(connected) if !connected.is_closed() => Ok(connected.clone()),
            _ => {
                let connected = Arc::new(blocks::Blocks::connect(&self.storage_socket, netmachine_rpc::word_limit(self.max_message_bytes))?);
                *cached = Some(connected.clone());
                Ok(connected)
            }
        }
    }

    /// Stores `content` as a block in the node's storage, kept under `prefs`; its id is the
    /// BLAKE3 hash of the content.
    pub async fn put_block(&self, content: Vec<u8>, prefs: blocks::BlockPrefs) -> Result<blocks::BlockInfo, blocks::BlockError> {
        self.blocks()?.put(content, prefs).await
    }

    /// The content of block `id`, from the node's storage, which fetches it first from the
    /// nodes it is connected to if it does not hold it.
    pub async fn get_block(&self, id: ContentId) -> Result<Vec<u8>, blocks::BlockError> {
        self.blocks()?.get(id).await
    }

    /// Writes the content of block `id` into `sink` piece by piece, for blocks too large to
    /// hold in memory at once.
    pub async fn read_block(&self, id: ContentId, sink: blocks::Sink) -> Result<blocks::BlockInfo, blocks::BlockError> {
        self.blocks()?.get_into(id, blocks::Sources::default(), sink, Box::new(|_, _| {})).await
    }

    /// Extends block `id`'s lease to `expiry` (ms since the Unix epoch); a lease is never
    /// shortened.
    pub async fn extend_block(&self, id: ContentId, expiry: u64) -> Result<blocks::BlockInfo, blocks::BlockError> {
        self.blocks()?.extend(id, expiry).await
    }

    /// Events `recv_event` skipped as repeats, and events it reported missing.
    pub fn event_counts(&self) -> (u64, u64) {
        self.shared.sequences.lock().unwrap_or_else(|e| e.into_inner()).0.counts()
    }

    /// Detaches from the router, delivering what was already accepted, and stops.
    pub async fn detach(self) {
        if let Some(ring) = self.shared.ring() {
            // What is still in the outbox goes first.
            let deadline = tokio::time::Instant::now() + self.send_timeout;
            while !ring.is_drained() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
        let (done, detached) = oneshot::channel();
        if self.commands.send(Command::Detach { done }).await.is_ok() {
            let _ = detached.await;
        }
    }
}
