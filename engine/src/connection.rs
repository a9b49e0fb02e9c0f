//! The engine's connection to its router, on a thread of its own: attaching (and attaching
//! again after the router restarts), turning commands into RPC calls in order, and taking the
//! router's deliveries, which either answer a waiting request or go to the engine's inbox.

use crate::fast_path::EngineRing;
use crate::delivery_stream::DeliveryStream;
use crate::send_stream::SendStream;
use crate::topics::{Event, RouterRequest, Sequences, TopicAnswer, TopicBook};
use crate::ring::records::Refusal;
use crate::ring::{handoff_socket, Claim, HandoffError, Request, SegmentError, Ticket};
use crate::{EngineError, EngineOptions};
use netmachine_schema::router_capnp::{engine_session, inbox, router, SendRefusal, TopicRefusal};
use netmachine_schema::{signing, time::now_ms, Destination, EngineLocation, EngineMessage, Identity};
use netmachine_rpc::{self as rpc, Backoff};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// The largest RPC message the engine reads: twice the largest body any node may configure.
const WORD_LIMIT: usize = (64 << 20) / 8 * 2 + (64 << 10);
/// Requests awaiting replies at once.
const MAX_PENDING_REPLIES: usize = 65_536;
/// Commands waiting for the engine thread.
const COMMAND_QUEUE: usize = 1024;
/// Sends in one call at most.
const SEND_BATCH: usize = 256;
/// Attaches in a row that may find the router's handoff socket unreachable (the router granting
/// the rings was stopping) before the engine asks for no rings again: each is an attachment
/// the router may deliver into before it is undone.
const HANDOFF_PATIENCE: u32 = 5;

pub(crate) enum Command {
    Send { message: EngineMessage, done: RpcAnswer },
    /// A send that must not wait for room at its destination.
    TrySend { message: EngineMessage, done: RpcAnswer },
    /// A topic request; answered with the topic's last sequence.
    Topic { request: RouterRequest, done: oneshot::Sender<Result<TopicAnswer, EngineError>> },
    Detach { done: oneshot::Sender<()> },
}

/// A send's answer, owed over the RPC connection. While any is owed, new sends do not take the
/// send stream, where they could pass it.
pub(crate) struct RpcAnswer {
    done: Option<oneshot::Sender<Result<(), EngineError>>>,
    shared: Arc<Shared>,
}

impl RpcAnswer {
    pub fn new(shared: &Arc<Shared>, done: oneshot::Sender<Result<(), EngineError>>) -> RpcAnswer {
        shared.owed_over_rpc.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        RpcAnswer { done: Some(done), shared: shared.clone() }
    }

    fn send(mut self, outcome: Result<(), EngineError>) -> Result<(), Result<(), EngineError>> {
        self.done.take().map_or(Ok(()), |done| done.send(outcome))
    }

    fn is_closed(&self) -> bool {
        self.done.as_ref().is_none_or(|done| done.is_closed())
    }
}

impl Drop for RpcAnswer {
    fn drop(&mut self) {
        self.shared.owed_over_rpc.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

pub(crate) struct AttachLimits {
    pub node: Identity,
    pub max_message_bytes: usize,
}

type ReplyWaiter = (Identity, oneshot::Sender<Result<EngineMessage, EngineError>>);

/// The engine's rings, as loaded for one call.
pub(crate) struct RingRef(arc_swap::Guard<Option<Arc<EngineRing>>>);

impl std::ops::Deref for RingRef {
    type Target = EngineRing;

    fn deref(&self) -> &EngineRing {
        self.0.as_deref().expect("a RingRef is made only from a loaded ring")
    }
}

/// State the caller's side, the engine thread and the ring reader share: requests awaiting
/// their replies, the rings when granted, refusals counted.
#[derive(Default)]
pub(crate) struct Shared {
    replies: std::sync::Mutex<HashMap<u64, ReplyWaiter>>,
    /// Read on every ring send and receive: an `ArcSwapOption`, whose load takes no lock and
    /// touches no shared count (an `RwLock` and an `Arc` clone cost four atomic read-modify-writes
    /// per message).
    ring: arc_swap::ArcSwapOption<EngineRing>,
    /// The send stream, when this engine is on the socket path and the router handed one over.
    stream: arc_swap::ArcSwapOption<SendStream>,
    /// The delivery stream handed over with it.
    delivery: arc_swap::ArcSwapOption<DeliveryStream>,
    /// Sends handed to the engine thread whose answers are still owed (see `RpcAnswer`).
    owed_over_rpc: std::sync::atomic::AtomicU64,
    pub refusals: std::sync::atomic::AtomicU64,
    /// A message written to the ring was refused with no request waiting for it (perhaps an
    /// event): the next publish on each topic asks the router where its sequence stands.
    pub sequences_stale: std::sync::atomic::AtomicBool,
    /// The engine's topics, asked again after it attaches again.
    pub topics: std::sync::Mutex<TopicBook>,
    /// Where each publisher's sequence stands, for `recv_event` (and for subscribing again
    /// from there); and an event held back while the gap before it is reported.
    pub sequences: std::sync::Mutex<(Sequences, Option<Event>)>,
    /// The rings the router granted could not be mapped once (another IPC namespace), or
    /// handed over at `HANDOFF_PATIENCE` attaches in a row: later attaches ask for none. Each refused grant is an attachment the router delivers to
    /// before it is undone, and what it writes into rings nobody maps is lost.
    rings_unusable: std::sync::atomic::AtomicBool,
    /// Attaches in a row whose granted rings could not be handed over.
    handoff_misses: std::sync::atomic::AtomicU32,
    /// Stamps of messages from other nodes taken, to drop a second copy of one.
    delivered: std::sync::Mutex<crate::delivered::Delivered>,
    /// Second copies dropped.
    pub duplicates: std::sync::atomic::AtomicU64,
    /// Why the router detached this engine, when it did.
    pub detached_because: std::sync::Mutex<Option<String>>,
    /// Wakes receivers when the router detaches this engine.
    pub detached: tokio::sync::Notify,
}

impl Shared {
    /// The rings, when this engine has them.
    pub fn ring(&self) -> Option<RingRef> {
        let loaded = self.ring.load();
        loaded.is_some().then(|| RingRef(loaded))
    }

    /// The send stream, when nothing sent over RPC is still unanswered (it could be passed).
    pub fn stream(&self) -> Option<Arc<SendStream>> {
        if self.owed_over_rpc.load(std::sync::atomic::Ordering::Acquire) > 0 {
            return None;
        }
        self.stream.load_full().filter(|stream| !stream.is_broken())
    }

    /// The delivery stream, when the router handed one over.
    pub fn delivery(&self) -> Option<Arc<DeliveryStream>> {
        self.delivery.load_full()
    }

    /// The rings, to keep beyond one call (a sender waiting for room in a blocking thread).
    pub fn ring_owned(&self) -> Option<Arc<EngineRing>> {
        self.ring.load_full()
    }

    /// Hands `message` to the request it answers; gives it back if it answers none.
    /// A second copy of a message from another node (`delivered`) is dropped here.
    pub fn route_reply(&self, message: Box<EngineMessage>) -> Option<Box<EngineMessage>> {
        if message.stamp.is_none() && message.reply_to.is_none() {
            // Neither a copy to drop nor a reply: the usual case, without a look at either.
            return Some(message);
        }
        if message.stamp.is_some() && !self.delivered.lock().unwrap_or_else(|e| e.into_inner()).fresh(&message) {
            self.duplicates.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return None;
        }
        match self.take_reply(&message) {
            Some(waiter) => {
                let _ = waiter.send(Ok(*message));
                None
            }
            None => Some(message),
        }
    }

    /// A message this engine wrote to its ring was refused by the router.
    pub fn refused(&self, refusal: Refusal) {
        self.refusals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let waiter = self.replies.lock().unwrap_or_else(|e| e.into_inner()).remove(&refusal.id);
        match waiter {
            Some((_, waiter)) => {
                let _ = waiter.send(Err(EngineError::Refused { reason: refusal.reason, detail: refusal.detail }));
            }
            None => {
                self.sequences_stale.store(true, std::sync::atomic::Ordering::Release);
                tracing::info!(id = refusal.id, reason = ?refusal.reason, detail = %refusal.detail, "the router refused a message");
            }
        }
    }

    pub fn expect_reply(&self, id: u64, from: Identity) -> Result<oneshot::Receiver<Result<EngineMessage, EngineError>>, EngineError> {
        let mut replies = self.replies.lock().unwrap_or_else(|e| e.into_inner());
        if replies.len() >= MAX_PENDING_REPLIES {
            return Err(EngineError::TooManyRequests(MAX_PENDING_REPLIES));
        }
        let (waiter, answer) = oneshot::channel();
        replies.insert(id, (from, waiter));
        Ok(answer)
    }

    pub fn forget_reply(&self, id: u64) {
        self.replies.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }

    fn take_reply(&self, message: &EngineMessage) -> Option<oneshot::Sender<Result<EngineMessage, EngineError>>> {
        if !matches!(message.dst, Destination::Engine(_)) {
            return None;
        }
        let id = message.reply_to?;
        let mut replies = self.replies.lock().unwrap_or_else(|e| e.into_inner());
        match replies.get(&id) {
            Some((from, _)) if *from == message.src => replies.remove(&id).map(|(_, waiter)| waiter),
            _ => None,
        }
    }
}

pub(crate) type Started = (
    mpsc::Sender<Command>,
    mpsc::Receiver<Box<EngineMessage>>,
    Arc<Shared>,
    oneshot::Receiver<Result<(AttachLimits, tokio::runtime::Handle), EngineError>>,
);

/// Starts the engine thread; the last value resolves once the first attach succeeded or failed.
pub(crate) fn start(options: EngineOptions) -> Result<Started, EngineError> {
    let (commands, command_queue) = mpsc::channel(COMMAND_QUEUE);
    let (incoming, inbox_queue) = mpsc::channel(options.inbox_capacity.max(1));
    let shared = Arc::new(Shared::default());
    let (attached, first_attach) = oneshot::channel();
    let thread_shared = shared.clone();
    std::thread::Builder::new()
        .name(format!("engine-{}", options.keypair.identity().short()))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = attached.send(Err(EngineError::Rpc(format!("cannot start the engine runtime: {e}"))));
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, run(options, command_queue, incoming, thread_shared, attached));
        })
        .map_err(|e| EngineError::Rpc(format!("cannot start the engine thread: {e}")))?;
    Ok((commands, inbox_queue, shared, first_attach))
}

async fn run(
    options: EngineOptions,
    mut commands: mpsc::Receiver<Command>,
    incoming: mpsc::Sender<Box<EngineMessage>>,
    shared: Arc<Shared>,
    attached: oneshot::Sender<Result<(AttachLimits, tokio::runtime::Handle), EngineError>>,
) {
    let (session_tx, mut session) = watch::channel::<Option<engine_session::Client>>(None);
    let attacher = tokio::task::spawn_local(keep_attached(options, incoming, shared, attached, session_tx));
    let mut next = None;
    loop {
        // A command held back from the last batch goes first.
        let command = match next.take() {
            Some(command) => command,
            None => match commands.recv().await {
                Some(command) => command,
                None => break,
            },
        };
        let (mut batch, mut detach) = (Vec::new(), None);
        match command {
            Command::Send { message, done } => batch.push((message, done)),
            Command::Detach { done } => detach = Some(done),
            other => {
                if let Some(current) = attached_session(&mut session).await {
                    call(&current, other);
                }
                continue;
            }
        }
        // Sends already waiting go in the same call; anything else waits for the next turn.
        while detach.is_none() && !batch.is_empty() && batch.len() < SEND_BATCH {
            match commands.try_recv() {
                Ok(Command::Send { message, done }) => batch.push((message, done)),
                Ok(Command::Detach { done }) => detach = Some(done),
                Ok(other) => {
                    next = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            let current = attached_session(&mut session).await;
            // A caller that gave up waiting (the router was away) was told its send failed:
            // sending it now would make a retry a duplicate.
            batch.retain(|(_, done)| !done.is_closed());
            match current {
                Some(_) if batch.is_empty() => {}
                Some(current) => send_batch(&current, batch),
                None => batch.into_iter().for_each(|(_, done)| {
                    let _ = done.send(Err(EngineError::Closed));
                }),
            }
        }
        if let Some(done) = detach {
            let current = session.borrow().clone();
            if let Some(current) = current {
                let _ = current.detach_request().send().promise.await;
            }
            let _ = done.send(());
            break;
        }
    }
    attacher.abort();
}

type Pending = (EngineMessage, RpcAnswer);

/// Makes a call other than a plain send, in order with the sends; its answer comes on its own.
fn call(session: &engine_session::Client, command: Command) {
    match command {
        Command::TrySend { message, done } => {
            let mut request = session.try_send_request();
            message.write(request.get().init_message());
            let promise = request.send().promise;
            tokio::task::spawn_local(async move {
                let answer = promise.await.map_err(EngineError::from);
                let _ = done.send(answer.and_then(|a| send_outcome(a.get()?.get_result()?)));
            });
        }
        Command::Topic { request, done } => {
            let answer = router_request(session, &request);
            tokio::task::spawn_local(async move {
                let _ = done.send(answer.await);
            });
        }
        Command::Send { .. } | Command::Detach { .. } => unreachable!("sends and detach are batched by `run`"),
    }
}

/// Sends one topic request; the answer is where the topic's sequence stands, and its policy.
fn router_request(session: &engine_session::Client, request: &RouterRequest) -> impl std::future::Future<Output = Result<TopicAnswer, EngineError>> + 'static {
    use netmachine_schema::router_capnp::topic_result;
    macro_rules! answer {
        ($request:expr) => {{
            let promise = $request.send().promise;
            let answer: std::pin::Pin<Box<dyn std::future::Future<Output = Result<TopicAnswer, EngineError>>>> = Box::pin(async move {
                let answer = promise.await?;
                let result = answer.get()?.get_result()?;
                match result.which()? {
                    topic_result::Done(done) => {
                        let replay = done.get_replay()?.iter().map(|m| EngineMessage::read(m)).collect::<Result<Vec<_>, _>>().map_err(|e| capnp::Error::failed(e.to_string()))?;
                        Ok(TopicAnswer { last_seq: done.get_last_seq(), policy: done.get_policy()?, replay })
                    }
                    topic_result::Refused(refused) => Err(EngineError::TopicRefused {
                        reason: refused.get_reason()?,
                        detail: refused.get_detail()?.to_string().unwrap_or_default(),
                    }),
                }
            });
            answer
        }};
    }
    match request {
        RouterRequest::Create(creation) => {
            let mut call = session.create_topic_request();
            creation.advert.write(call.get().init_advert());
            call.get().set_scope(creation.scope);
            call.get().set_policy(creation.policy);
            call.get().set_after(creation.after);
            answer!(call)
        }
        RouterRequest::Delete(topic) => {
            let mut call = session.delete_topic_request();
            call.get().set_topic(&topic.0);
            answer!(call)
        }
        RouterRequest::Subscribe { topic, scope, from } => {
            let mut call = session.subscribe_request();
            call.get().set_topic(&topic.0);
            call.get().set_scope(*scope);
            call.get().set_from(*from);
            answer!(call)
        }
        RouterRequest::Unsubscribe(topic) => {
            let mut call = session.unsubscribe_request();
            call.get().set_topic(&topic.0);
            answer!(call)
        }
        RouterRequest::LastSeq(topic) => {
            let mut call = session.last_seq_request();
            call.get().set_topic(&topic.0);
            answer!(call)
        }
        RouterRequest::Serve(protocol) => {
            let mut call = session.serve_request();
            call.get().set_protocol(protocol.as_str());
            answer!(call)
        }
    }
}

/// Sends `batch` now, in order, in one call; each sender hears its own message's outcome.
fn send_batch(session: &engine_session::Client, batch: Vec<Pending>) {
    if let [(message, _)] = batch.as_slice() {
        let mut request = session.send_request();
        message.write(request.get().init_message());
        let promise = request.send().promise;
        let done = batch.into_iter().map(|(_, done)| done).next();
        tokio::task::spawn_local(async move {
            let outcome = match promise.await {
                Ok(answer) => answer.get().and_then(|a| a.get_result()).map_err(EngineError::from).and_then(send_outcome),
                Err(e) => Err(e.into()),
            };
            if let Some(done) = done {
                let _ = done.send(outcome);
            }
        });
        return;
    }
    let mut request = session.send_batch_request();
    let mut list = request.get().init_messages(batch.len() as u32);
    for (i, (message, _)) in batch.iter().enumerate() {
        message.write(list.reborrow().get(i as u32));
    }
    let promise = request.send().promise;
    let dones: Vec<_> = batch.into_iter().map(|(_, done)| done).collect();
    tokio::task::spawn_local(async move {
        let answer = promise.await;
        let results = answer.as_ref().map_err(|e| e.to_string()).and_then(|a| {
            a.get().and_then(|r| r.get_results()).map_err(|e| e.to_string())
        });
        for (i, done) in dones.into_iter().enumerate() {
            let outcome = match &results {
                Ok(results) if (i as u32) < results.len() => send_outcome(results.get(i as u32)),
                Ok(_) => Err(EngineError::Rpc("the router answered fewer results than messages".into())),
                Err(e) => Err(EngineError::Rpc(e.clone())),
            };
            let _ = done.send(outcome);
        }
    });
}

async fn attached_session(session: &mut watch::Receiver<Option<engine_session::Client>>) -> Option<engine_session::Client> {
    loop {
        if let Some(current) = session.borrow_and_update().clone() {
            return Some(current);
        }
        session.changed().await.ok()?;
    }
}

fn send_outcome(result: netmachine_schema::router_capnp::send_result::Reader<'_>) -> Result<(), EngineError> {
    use netmachine_schema::router_capnp::send_result;
    match result.which()? {
        send_result::Accepted(()) => Ok(()),
        send_result::Refused(refused) => {
            let (reason, detail) = (refused.get_reason()?, refused.get_detail()?.to_string().unwrap_or_default());
            match Identity::from_slice("slowest", refused.get_slowest()?) {
                Ok(slowest) if reason == SendRefusal::BackPressured => Err(EngineError::BackPressured { slowest, detail }),
                _ => Err(EngineError::Refused { reason, detail }),
            }
        }
    }
}

/// Attaches, publishes the session, and whenever the connection is lost attaches again with
/// capped backoff (if the options say so).
async fn keep_attached(
    options: EngineOptions,
    incoming: mpsc::Sender<Box<EngineMessage>>,
    shared: Arc<Shared>,
    attached: oneshot::Sender<Result<(AttachLimits, tokio::runtime::Handle), EngineError>>,
    session: watch::Sender<Option<engine_session::Client>>,
) {
    let (mut current, mut driver, mut stream) = match attach_once(&options, &incoming, &shared, false).await.map_err(AttachFailed::into_error) {
        Ok((current, driver, limits, stream)) => {
            let _ = attached.send(Ok((limits, tokio::runtime::Handle::current())));
            (current, driver, stream)
        }
        Err(error) => {
            let _ = attached.send(Err(error));
            return;
        }
    };
    loop {
        // What the engine created and subscribed to goes back before anything else is sent.
        let replay = {
            let sequences = shared.sequences.lock().unwrap_or_else(|e| e.into_inner());
            shared.topics.lock().unwrap_or_else(|e| e.into_inner()).replay(|topic| sequences.0.next_expected(topic))
        };
        let mut not_there_yet = Vec::new();
        for request in replay {
            match router_request(&current, &request).await {
                Ok(_) => {}
                // Its creator has not attached again yet: subscribe once it has.
                Err(EngineError::TopicRefused { reason: TopicRefusal::Unknown, .. }) => not_there_yet.push(request),
                Err(error) => tracing::warn!(?request, %error, "a topic request made again after attaching again was refused"),
            }
        }
        if !not_there_yet.is_empty() {
            tokio::task::spawn_local(subscribe_when_there(current.clone(), shared.clone(), not_there_yet));
        }
        if let Some(claim) = stream.take() {
            open_streams(&claim, &shared, &options, incoming.clone());
        }
        session.send_replace(Some(current));
        let _ = driver.await;
        session.send_replace(None);
        if let Some(stream) = shared.stream.swap(None) {
            stream.close("the connection to the router was lost");
        }
        shared.delivery.store(None);
        if !options.reattach || incoming.is_closed() {
            return;
        }
        tracing::warn!("lost the router; attaching again");
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        loop {
            tokio::time::sleep(backoff.next_delay()).await;
            match attach_once(&options, &incoming, &shared, true).await {
                Ok((fresh, fresh_driver, _, fresh_stream)) => {
                    tracing::info!("attached again");
                    (current, driver, stream) = (fresh, fresh_driver, fresh_stream);
                    break;
                }
                Err(AttachFailed::HandoffMissed(reason)) => {
                    tracing::info!(%reason, "the router granted rings it could not hand over (it was stopping?); attaching again");
                }
                Err(AttachFailed::Error(error)) => tracing::debug!(%error, "attach failed; retrying"),
            }
        }
    }
}

/// Subscribes again to topics that were not on the restarted router yet, as they come back,
/// for as long as the engine still wants them and this session lasts.
async fn subscribe_when_there(session: engine_session::Client, shared: Arc<Shared>, mut waiting: Vec<RouterRequest>) {
    while !waiting.is_empty() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut still = Vec::new();
        for request in waiting {
            let RouterRequest::Subscribe { topic, .. } = &request else { continue };
            if !shared.topics.lock().unwrap_or_else(|e| e.into_inner()).subscribed.contains_key(topic) {
                continue;
            }
            match router_request(&session, &request).await {
                Ok(_) => tracing::info!(%topic, "subscribed again"),
                Err(EngineError::TopicRefused { reason: TopicRefusal::Unknown, .. }) => still.push(request),
                Err(error) => {
                    tracing::warn!(%topic, %error, "could not subscribe again");
                    return;
                }
            }
        }
        waiting = still;
    }
}

/// An attachment: its session, the RPC connection's driver, the limits, and for an engine on
/// the socket path, its claim on a send stream (when the router has a handoff socket).
type Attached = (engine_session::Client, tokio::task::JoinHandle<Result<(), capnp::Error>>, AttachLimits, Option<Claim>);

/// Why granted rings were not taken up (the attachment was undone).
enum RingsNotTaken {
    /// The handoff socket could not be reached, or broke off: the router is stopping, as a
    /// rule (it removes the socket first), and the next router hands the same rings over.
    HandoffUnreachable(String),
    /// What was handed over cannot be mapped as this engine's rings: they never will be.
    Unmappable(String),
}

/// Why an attach failed.
enum AttachFailed {
    /// The router granted rings and could not hand them over (`RingsNotTaken::HandoffUnreachable`).
    HandoffMissed(String),
    Error(EngineError),
}

impl AttachFailed {
    fn into_error(self) -> EngineError {
        match self {
            AttachFailed::HandoffMissed(reason) => EngineError::AttachRefused(reason),
            AttachFailed::Error(error) => error,
        }
    }
}

impl From<EngineError> for AttachFailed {
    fn from(error: EngineError) -> Self {
        AttachFailed::Error(error)
    }
}

/// Attaches, over the rings if asked and possible, else over the socket: from now on if the
/// granted rings cannot be mapped, or could not be handed over `HANDOFF_PATIENCE` times in a
/// row; for this attachment only if they could not be handed over, unless `patient`, when
/// that attach fails (to be made again later, to the next router, which hands over the same
/// rings: the engine's channels then go on undisturbed).
async fn attach_once(options: &EngineOptions, incoming: &mpsc::Sender<Box<EngineMessage>>, shared: &Arc<Shared>, patient: bool) -> Result<Attached, AttachFailed> {
    use std::sync::atomic::Ordering::Relaxed;
    let ring = options.ring && !shared.rings_unusable.load(Relaxed);
    let reason = match attach_with(options, incoming, shared, ring).await? {
        Ok(attached) => return Ok(attached),
        Err(RingsNotTaken::HandoffUnreachable(reason)) => {
            let misses = shared.handoff_misses.fetch_add(1, Relaxed) + 1;
            if misses >= HANDOFF_PATIENCE {
                tracing::warn!(%reason, misses, "the router's handoff socket could not be reached at any of the last attaches; falling back to the socket path");
                shared.rings_unusable.store(true, Relaxed);
            } else if patient {
                return Err(AttachFailed::HandoffMissed(reason));
            } else {
                tracing::warn!(%reason, "the router's handoff socket cannot be reached; this attachment uses the socket path");
            }
            reason
        }
        Err(RingsNotTaken::Unmappable(reason)) => {
            tracing::warn!(%reason, "the granted rings cannot be used; falling back to the socket path");
            shared.rings_unusable.store(true, Relaxed);
            reason
        }
    };
    attach_with(options, incoming, shared, false).await?.map_err(|_| AttachFailed::Error(EngineError::AttachRefused(format!("rings granted on an attach that asked for none, after: {reason}"))))
}

/// One attach; the inner error says the rings were granted but not taken up (the attachment
/// was undone).
async fn attach_with(options: &EngineOptions, incoming: &mpsc::Sender<Box<EngineMessage>>, shared: &Arc<Shared>, ring: bool) -> Result<Result<Attached, RingsNotTaken>, EngineError> {
    let (router, driver) = rpc::connect::<router::Client>(&options.socket, WORD_LIMIT)
        .await
        .map_err(|source| EngineError::RouterUnreachable { socket: options.socket.clone(), source })?;
    let engine = options.keypair.identity();
    let mut request = router.attach_request();
    request.get().set_engine(&engine.0);
    let answer = request.send().promise.await?;
    let answer = answer.get()?;
    let node = Identity::from_slice("node", answer.get_node()?).map_err(|e| EngineError::Rpc(e.to_string()))?;
    let payload = signing::attach_challenge(&node, &engine, answer.get_challenge()?);
    let mut prove = answer.get_attachment()?.prove_request();
    prove.get().set_signature(&options.keypair.sign(&payload));
    prove.get().set_public(options.public);
    prove.get().set_ring(ring);
    prove.get().set_inbox(capnp_rpc::new_client(InboxServer { incoming: incoming.clone(), shared: shared.clone(), in_order: tokio::sync::Mutex::new(()) }));
    // Where this engine is now, signed by it: other nodes route to it here on this proof alone.
    EngineLocation::sign(&options.keypair, node, now_ms()).write(prove.get().init_location());
    let proven = prove.send().promise.await.map_err(|e| EngineError::AttachRefused(netmachine_rpc::reason(&e)))?;
    let proven = proven.get()?;
    let limits = proven.get_limits()?;
    let limits = AttachLimits { node, max_message_bytes: limits.get_max_message_bytes() as usize };
    let grant = proven.get_ring()?;
    let session = proven.get_session()?;
    if grant.get_granted() {
        let name = grant.get_segment()?.to_string().map_err(|e| EngineError::Rpc(e.to_string()))?;
        let ticket: Ticket = grant.get_ticket()?.try_into().map_err(|_| EngineError::Rpc("a ring grant without a 32-byte ticket".into()))?;
        let claim = Claim { socket: handoff_socket(&options.socket), ticket };
        let handed = match claim.take(Request::Rings) {
            Err(error @ HandoffError::System { .. }) => {
                let _ = session.detach_request().send().promise.await;
                return Ok(Err(RingsNotTaken::HandoffUnreachable(format!("rings {name}: {error}"))));
            }
            handed => {
                shared.handoff_misses.store(0, std::sync::atomic::Ordering::Relaxed);
                handed.map_err(SegmentError::from)
            }
        };
        match (shared.ring(), handed) {
            // After a router restart the new router adopts the same segment: keep the mapping
            // (a segment made afresh under the same name is another object, mapped anew).
            (Some(ring), Ok(handed)) if ring.maps(&handed[0]) => ring.renew(ticket),
            (_, handed) => {
                let reader = (options.receiver == crate::Receiver::ReaderThread).then(|| (shared.clone(), incoming.clone()));
                match handed.and_then(|handed| EngineRing::open(engine, claim, handed, options.wait, reader)) {
                    Ok(ring) => {
                        if let Some(old) = shared.ring.swap(Some(ring)) {
                            old.stop();
                        }
                    }
                    Err(error) => {
                        let _ = session.detach_request().send().promise.await;
                        return Ok(Err(RingsNotTaken::Unmappable(format!("cannot map {name}: {error}"))));
                    }
                }
            }
        }
        Ok(Ok((session, driver, limits, None)))
    } else {
        if ring {
            let reason = grant.get_reason()?.to_string().unwrap_or_default();
            tracing::info!(%reason, "no shared-memory rings; using the socket path");
        }
        if let Some(old) = shared.ring.swap(None) {
            old.stop();
        }
        // A router with a handoff socket hands an engine on the socket path its send stream.
        let stream = <Ticket>::try_from(grant.get_ticket()?).ok().map(|ticket| Claim { socket: handoff_socket(&options.socket), ticket });
        Ok(Ok((session, driver, limits, stream)))
    }
}

/// Takes the data streams `claim` names from the router's handoff socket: sends go over the
/// send stream from now on, and the router delivers over the other; if the router cannot hand
/// them over, both go as RPC calls, as before.
fn open_streams(claim: &Claim, shared: &Arc<Shared>, options: &EngineOptions, incoming: mpsc::Sender<Box<EngineMessage>>) {
    let (sends, deliveries) = match claim.take(Request::Streams).map(<[_; 2]>::try_from) {
        Ok(Ok([sends, deliveries])) => (sends.fd, deliveries.fd),
        // `take` checks the count; nothing is lost if it did not.
        Ok(Err(handed)) => {
            tracing::warn!(handed = handed.len(), "not two data streams; messages go as RPC calls");
            return;
        }
        Err(error) => {
            tracing::info!(%error, "no data streams; messages go as RPC calls");
            return;
        }
    };
    let forget = Arc::downgrade(shared);
    let ended = move |stream: &Arc<SendStream>| {
        if let Some(shared) = forget.upgrade() {
            shared.stream.compare_and_swap(&Some(stream.clone()), None::<Arc<SendStream>>);
        }
    };
    // The same bound as an RPC delivery: twice the largest body any node may configure.
    let max_frame = WORD_LIMIT * 8;
    let started = DeliveryStream::start(deliveries, max_frame, shared.clone(), incoming).and_then(|delivery| Ok((delivery, SendStream::start(sends, options.send_timeout, ended)?)));
    match started {
        Ok((delivery, stream)) => {
            shared.delivery.store(Some(delivery));
            shared.stream.store(Some(stream));
        }
        Err(error) => tracing::warn!(%error, "cannot use the data streams; sends go as RPC calls"),
    }
}

/// Where the router delivers this engine's messages.
struct InboxServer {
    incoming: mpsc::Sender<Box<EngineMessage>>,
    shared: Arc<Shared>,
    /// The router keeps several deliveries in flight: while the inbox is full they all wait,
    /// and each takes its turn whole, in the order they came (the lock is fair), so messages
    /// reach the engine in the order the router sent them.
    in_order: tokio::sync::Mutex<()>,
}

impl inbox::Server for InboxServer {
    async fn deliver(self: Rc<Self>, params: inbox::DeliverParams, _: inbox::DeliverResults) -> capnp::Result<()> {
        let _turn = self.in_order.lock().await;
        self.take(params.get()?.get_message()?).await
    }

    async fn deliver_batch(self: Rc<Self>, params: inbox::DeliverBatchParams, _: inbox::DeliverBatchResults) -> capnp::Result<()> {
        let _turn = self.in_order.lock().await;
        for message in params.get()?.get_messages()?.iter() {
            self.take(message).await?;
        }
        Ok(())
    }

    async fn detached(self: Rc<Self>, params: inbox::DetachedParams, _: inbox::DetachedResults) -> capnp::Result<()> {
        let reason = params.get()?.get_reason()?.to_string().unwrap_or_else(|_| "a reason that is not UTF-8".into());
        tracing::warn!(%reason, "the router detached this engine");
        if let Some(ring) = self.shared.ring() {
            ring.stop();
        }
        *self.shared.detached_because.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
        self.shared.detached.notify_waiters();
        Ok(())
    }
}

impl InboxServer {
    /// Hands one delivered message to its waiting request, or to the engine's inbox.
    async fn take(&self, message: netmachine_schema::message_capnp::engine_message::Reader<'_>) -> capnp::Result<()> {
        let message = EngineMessage::read(message)
            .map_err(|e| capnp::Error::failed(format!("undeliverable message: {e}")))?;
        let Some(message) = self.shared.route_reply(Box::new(message)) else { return Ok(()) };
        // Waiting here is the backpressure: the router holds further deliveries back.
        self.incoming
            .send(message)
            .await
            .map_err(|_| capnp::Error::disconnected("the engine stopped receiving".into()))
    }
}
