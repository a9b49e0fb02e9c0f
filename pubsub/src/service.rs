//! The pubsub service's shell: it attaches to its node's router as two engines and runs the
//! pubsub core (`core`) on what they receive.
//!
//! - The *topics* engine serves the pubsub protocol for the node. It is the router's "pubsub
//!   engine": it gets Want and Unwant from the router and first contact (Subscribe) from other
//!   nodes. It subscribes to this node's topics that other nodes read, and it creates the mirrors
//!   of other nodes' topics and hands their events to the router.
//! - The *peers* engine sends every message to other nodes' services, so that their answers
//!   (acknowledgements, resends, events) come back to it.
//!
//! The topics engine's inbox is read only while the core has room: under policy Block a reader
//! node whose window is full stops the events of this node's topics at the router, so the
//! publisher waits, while acknowledgements keep arriving through the peers engine. Work for the
//! topics engine (local subscriptions, mirrors, events handed over) runs in order in one task;
//! peer messages go out in order in another; both keep many sends in flight. Both queues are
//! bounded: when one is full the service stops reading its inboxes until it has room.

use crate::core::{self, Config, Input, Output, PubSub};
use crate::events::Events;
use netmachine_identity_client::locate;
use futures::stream::{FuturesOrdered, StreamExt};
use futures::FutureExt;
use netmachine_engine::{Engine, EngineError, EngineOptions, PendingSend, Scope, SendRefusal, TopicPolicy, TopicRefusal};
use netmachine_schema::identity_store_capnp::identity_store;
use netmachine_schema::peer::PeerRefusal;
use netmachine_schema::{Destination, EngineMessage, Identity, Keypair, PeerMessage, Says, TopicAdvert, PEER_EVENT_OVERHEAD, PUBSUB_BATCH_PROTOCOL, PUBSUB_PROTOCOL};
use netmachine_service::home::{NodeHome, ServiceKind};
use netmachine_service::link::Link;
use netmachine_service::Backoff;
use std::cell::{Cell, RefCell};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

/// What the shell counted beside the core.
#[derive(Debug, Default)]
pub struct ShellCounters {
    /// Messages to the service that were neither topic events nor readable pubsub messages.
    pub messages_unreadable: Cell<u64>,
    /// Peer messages the router would not take (the destination unknown or gone, say).
    pub sends_refused: Cell<u64>,
    /// Locates the identity store could not answer.
    pub locates_failed: Cell<u64>,
    /// Events dropped on arrival by `pubsub.drop_received_permille`.
    pub events_dropped_injected: Cell<u64>,
}

/// `pubsub.drop_received_permille`: drops that share of the events from other nodes, spread
/// evenly (a fixed pseudo-random sequence), as a lossy link would.
pub struct Lossy {
    permille: u64,
    state: Cell<u64>,
}

impl Lossy {
    pub fn new(permille: u64) -> Self {
        Lossy { permille, state: Cell::new(0x9e37_79b9_7f4a_7c15) }
    }

    fn drops(&self) -> bool {
        if self.permille == 0 {
            return false;
        }
        let mut x = self.state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state.set(x);
        x % 1000 < self.permille
    }
}

fn count(counter: &Cell<u64>) {
    counter.set(counter.get() + 1);
}

/// The running service, as its status report sees it.
pub struct Shared {
    pub core: RefCell<PubSub>,
    pub counters: ShellCounters,
    /// The engines, once attached: (topics, peers).
    pub engines: RefCell<Option<(Identity, Identity)>>,
    pub store: Link<identity_store::Client>,
    pub events: Rc<Events>,
    pub stop: Notify,
    pub lossy: Lossy,
}

/// Work the topics engine does, in order.
enum TopicsWork {
    Subscribe(Identity),
    Unsubscribe(Identity),
    /// A topic on another node, mirrored here after the given sequence.
    Mirror(TopicAdvert, TopicPolicy, u64),
    Unmirror(Identity),
    Deliver(EngineMessage),
}

/// Starts the service: attaches its engines (retrying until the router takes them) and runs the
/// core until `shared.stop` is notified. Must run inside a `LocalSet`.
pub fn start(home: &NodeHome, config: Config) -> Result<Rc<Shared>, Box<dyn std::error::Error>> {
    let node = home.node_identity()?.ok_or("the node has no key yet: start the router first")?;
    let keys = home.data_dir().join("pubsub");
    std::fs::create_dir_all(&keys).map_err(|e| format!("{}: {e}", keys.display()))?;
    let topics_key = engine_key(&keys.join("topics.key"))?;
    let peers_key = engine_key(&keys.join("peers.key"))?;
    let events = Events::new(node);
    let watching = events.clone();
    let store = Link::start(ServiceKind::IdentityStore, home.socket(ServiceKind::IdentityStore), home.config.rpc_word_limit(), move |store| watching.clone().watch_store(store));
    let shared = Rc::new(Shared {
        core: RefCell::new(PubSub::new(node, config)),
        counters: ShellCounters::default(),
        engines: RefCell::new(None),
        store,
        events,
        stop: Notify::new(),
        lossy: Lossy::new(home.config.pubsub.drop_received_permille),
    });
    let socket = home.socket(ServiceKind::Router);
    tokio::task::spawn_local(run(shared.clone(), socket, topics_key, peers_key));
    Ok(shared)
}

/// The engine key kept at `path`, made the first time: the same identities after a restart, so
/// the router gives back the mirrors the service created.
fn engine_key(path: &Path) -> Result<Keypair, Box<dyn std::error::Error>> {
    if !path.exists() {
        Keypair::generate().write_new_file(path)?;
    }
    Ok(Keypair::read_file(path)?)
}

/// Attaches with `options`, retrying while the router is not there or still holds the engine of
/// a service that died.
async fn attach(options: EngineOptions) -> Engine {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    loop {
        match Engine::attach(options.clone()).await {
            Ok(engine) => return engine,
            Err(error) => tracing::info!(%error, "cannot attach to the router yet"),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

async fn run(shared: Rc<Shared>, socket: std::path::PathBuf, topics_key: Keypair, peers_key: Keypair) {
    let options = |key: Keypair, sign_messages: bool| EngineOptions { sign_messages, ring: false, ..EngineOptions::new(&socket, key) };
    // The topics engine hands events over as their publisher signed them: it signs nothing. It
    // waits for its router's answer however long that takes (the router refuses an event that
    // waited `limits.send_wait_ms` for a subscriber's room): a send given up on here could
    // still be taken there, and asked for again it would then be refused as a replay.
    let topics = Rc::new(attach(EngineOptions { send_timeout: Duration::from_secs(24 * 3600), ..options(topics_key, false) }).await);
    let peers = Rc::new(attach(options(peers_key, true)).await);
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    while let Err(error) = topics.serve(PUBSUB_PROTOCOL).await {
        // The engine of a service that died may still serve it until its router notices.
        tracing::info!(%error, "cannot serve the pubsub protocol yet");
        tokio::time::sleep(backoff.next_delay()).await;
    }
    *shared.engines.borrow_mut() = Some((topics.identity(), peers.identity()));
    tracing::info!(topics = %topics.identity(), peers = %peers.identity(), "serving topics across nodes");

    let started = Instant::now();
    let now = move || started.elapsed().as_millis() as u64;
    // Answers are bounded by the work and locates asked for; the work and the sends are bounded
    // here: when either queue is full the loop waits, and stops reading its engines' inboxes,
    // so a peer that ignores its window is held back through its router, not buffered.
    let (inputs, mut answers) = mpsc::unbounded_channel::<Input>();
    let (topics_work, work) = mpsc::channel::<TopicsWork>(QUEUE);
    let (peer_sends, sends) = mpsc::channel::<EngineMessage>(QUEUE);
    tokio::task::spawn_local(do_topics_work(topics.clone(), work, inputs.clone()));
    tokio::task::spawn_local(send_to_peers(shared.clone(), peers.clone(), sends));
    let max_body = peers.max_message_bytes().max(topics.max_message_bytes()) + 4096;
    let batch_bytes = peers.max_message_bytes() - PEER_EVENT_OVERHEAD;
    loop {
        let wake = shared.core.borrow().poll_timeout().map(|at| started + Duration::from_millis(at));
        let has_room = shared.core.borrow().has_room();
        let mut inputs_now = tokio::select! {
            _ = shared.stop.notified() => break,
            Some(input) = answers.recv() => vec![input],
            Some(message) = peers.recv() => received(&shared, message, max_body),
            Some(message) = topics.recv(), if has_room => received(&shared, message, max_body),
            _ = sleep_until(wake) => vec![Input::Timer],
        };
        // What else is ready goes in the same round, so that what it sends to one engine goes
        // as one batch.
        let (mut outgoing, mut work_now): (Vec<(Destination, Vec<PeerMessage>)>, Vec<TopicsWork>) = (Vec::new(), Vec::new());
        for round in 1.. {
            for input in inputs_now.drain(..) {
                shared.core.borrow_mut().handle(input, now());
                carry_out(&shared, &inputs, &mut work_now, &mut outgoing);
            }
            if round == ROUND {
                break;
            }
            if let Ok(input) = answers.try_recv() {
                inputs_now.push(input);
            } else if let Some(Some(message)) = peers.recv().now_or_never() {
                inputs_now = received(&shared, message, max_body);
            } else if let Some(Some(message)) = shared.core.borrow().has_room().then(|| topics.recv().now_or_never()).flatten() {
                inputs_now = received(&shared, message, max_body);
            } else {
                break;
            }
        }
        for item in work_now {
            let _ = topics_work.send(item).await;
        }
        for (to, messages) in outgoing {
            for sent in batches(&peers, to, messages, batch_bytes) {
                let _ = peer_sends.send(sent).await;
            }
        }
    }
}

/// Inputs taken in one round at most before what they send goes out.
const ROUND: usize = 64;

/// Work items, and messages to other nodes, waiting at most (more than the core's windows give
/// honest peers).
const QUEUE: usize = 16_384;

/// Carries out what the core answered; work for the topics engine waits in `work`, and
/// messages to other nodes in `outgoing`, per destination, in order.
fn carry_out(shared: &Rc<Shared>, inputs: &mpsc::UnboundedSender<Input>, work: &mut Vec<TopicsWork>, outgoing: &mut Vec<(Destination, Vec<PeerMessage>)>) {
    loop {
        let output = shared.core.borrow_mut().poll_output();
        let Some(output) = output else { break };
        match output {
            Output::Send { to, message } => {
                if !matches!(message.says, Says::Event(_)) {
                    tracing::debug!(?to, topic = %message.topic, says = ?message.says, "to a peer");
                }
                match outgoing.iter_mut().find(|(dst, _)| *dst == to) {
                    Some((_, messages)) => messages.push(message),
                    None => outgoing.push((to, vec![message])),
                }
            }
            Output::Locate(topic) => {
                tokio::task::spawn_local(find(shared.clone(), topic, inputs.clone()));
            }
            Output::SubscribeLocal(topic) => work.push(TopicsWork::Subscribe(topic)),
            Output::UnsubscribeLocal(topic) => work.push(TopicsWork::Unsubscribe(topic)),
            Output::Mirror { advert, policy, after } => work.push(TopicsWork::Mirror(advert, policy, after)),
            Output::Unmirror(topic) => work.push(TopicsWork::Unmirror(topic)),
            Output::Deliver(message) => work.push(TopicsWork::Deliver(message)),
            Output::Notify(notice) => {
                tracing::debug!(?notice, "told the watchers");
                shared.events.notice(&notice);
            }
        }
    }
}

/// The messages for `to` as engine messages: to a node (first contact, which its router hands
/// to the engine serving the protocol) one by one; to an engine in batches of at most
/// `batch_bytes`, one signature each.
fn batches(peers: &Engine, to: Destination, messages: Vec<PeerMessage>, batch_bytes: usize) -> Vec<EngineMessage> {
    let single = |message: &PeerMessage| {
        let mut sent = peers.message(to, message.encode());
        sent.protocol = PUBSUB_PROTOCOL.into();
        sent
    };
    if !matches!(to, Destination::Engine(_)) || messages.len() == 1 {
        return messages.iter().map(single).collect();
    }
    let size = |message: &PeerMessage| match &message.says {
        Says::Event(event) => event.body.len() + PEER_EVENT_OVERHEAD,
        _ => 256,
    };
    let mut sent = Vec::new();
    let (mut batch, mut bytes) = (Vec::new(), 0);
    for message in messages {
        if !batch.is_empty() && bytes + size(&message) > batch_bytes {
            sent.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += size(&message);
        batch.push(message);
    }
    sent.push(batch);
    sent.into_iter()
        .map(|batch| match batch.as_slice() {
            [message] => single(message),
            _ => {
                let mut carried = peers.message(to, PeerMessage::encode_batch(&batch));
                carried.protocol = PUBSUB_BATCH_PROTOCOL.into();
                carried
            }
        })
        .collect()
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// What a message to one of the service's engines is for the core: an event of a topic here, or
/// pubsub messages (from another node's service, one or a batch, or Want and Unwant from the
/// router).
fn received(shared: &Shared, message: EngineMessage, max_body: usize) -> Vec<Input> {
    if let Destination::Topic(_) = message.dst {
        return vec![Input::Published(message)];
    }
    let (decoded, batch) = match message.protocol.as_str() {
        PUBSUB_PROTOCOL => (PeerMessage::decode(&message.body, max_body).map(|one| vec![one]), false),
        PUBSUB_BATCH_PROTOCOL => (PeerMessage::decode_batch(&message.body, max_body), true),
        _ => {
            count(&shared.counters.messages_unreadable);
            tracing::debug!(from = %message.src, protocol = %message.protocol, "dropped a message in another protocol");
            return Vec::new();
        }
    };
    match decoded {
        Ok(mut peer) => {
            peer.retain(|said| {
                let dropped = matches!(said.says, Says::Event(_)) && shared.lossy.drops();
                if dropped {
                    count(&shared.counters.events_dropped_injected);
                }
                !dropped
            });
            for said in peer.iter().filter(|p| !matches!(p.says, Says::Event(_))) {
                tracing::debug!(from = %message.src, says = ?said.says, "from a peer");
            }
            match batch {
                true => vec![Input::Peers { from: message.src, messages: peer }],
                false => peer.into_iter().map(|peer| Input::Peer { from: message.src, message: peer }).collect(),
            }
        }
        Err(error) => {
            count(&shared.counters.messages_unreadable);
            tracing::debug!(from = %message.src, %error, "dropped an unreadable pubsub message");
            Vec::new()
        }
    }
}

/// Looks the topic up in the identity store; the core asks again later if it is not there yet.
async fn find(shared: Rc<Shared>, topic: Identity, inputs: mpsc::UnboundedSender<Input>) {
    let Some(store) = shared.store.client_within(Duration::from_secs(1)).await else {
        return count(&shared.counters.locates_failed);
    };
    match locate::locate(&store, topic).await {
        Ok(Some((advert, node))) => drop(inputs.send(Input::Located { advert, node })),
        Ok(None) => tracing::debug!(%topic, "topic not known here yet"),
        Err(error) => {
            count(&shared.counters.locates_failed);
            tracing::warn!(%topic, %error, "cannot locate topic");
        }
    }
}

/// Sends and events handed to the router kept in flight at once, in order.
const IN_FLIGHT: usize = 256;

/// Sends the core's messages to other nodes' services, in order, many in flight.
async fn send_to_peers(shared: Rc<Shared>, peers: Rc<Engine>, mut sends: mpsc::Receiver<EngineMessage>) {
    let refused = |error: EngineError| {
        // The core repairs what does not arrive: a lost message is asked for again.
        count(&shared.counters.sends_refused);
        tracing::debug!(%error, "a pubsub message was not sent");
    };
    let mut in_flight: FuturesOrdered<PendingSend> = FuturesOrdered::new();
    loop {
        tokio::select! {
            Some(outcome) = in_flight.next(), if !in_flight.is_empty() => {
                if let Err(error) = outcome {
                    refused(error);
                }
            }
            message = sends.recv(), if in_flight.len() < IN_FLIGHT => {
                let Some(message) = message else { break };
                match peers.send_pipelined(message).await {
                    Ok(pending) => in_flight.push_back(pending),
                    Err(error) => refused(error),
                }
            }
        }
    }
}

/// The router's answer to an event handed over, for the core.
type Handed = std::pin::Pin<Box<dyn std::future::Future<Output = Input>>>;

/// The topics engine's work, in order; answers go back to the core. Events go to the router
/// many in flight. Once it refused one, the events not yet handed over after it are not (the
/// router would take them past the hole): they are answered as not accepted, until the core
/// hands the refused one over again.
async fn do_topics_work(topics: Rc<Engine>, mut work: mpsc::Receiver<TopicsWork>, inputs: mpsc::UnboundedSender<Input>) {
    let mut refused_from: std::collections::HashMap<Identity, u64> = std::collections::HashMap::new();
    let mut in_flight: FuturesOrdered<Handed> = FuturesOrdered::new();
    loop {
        let item = tokio::select! {
            Some(answer) = in_flight.next(), if !in_flight.is_empty() => {
                if let Input::NotAccepted { topic, seq } = answer {
                    let first = refused_from.entry(topic).or_insert(seq);
                    *first = (*first).min(seq);
                }
                let _ = inputs.send(answer);
                continue;
            }
            item = work.recv(), if in_flight.len() < IN_FLIGHT => match item {
                Some(item) => item,
                None => break,
            },
        };
        let answer = match item {
            TopicsWork::Deliver(message) => {
                let Destination::Topic(topic) = message.dst else { continue };
                let (seq, size) = (message.id, core::history::event_size(&message));
                if refused_from.get(&topic).is_some_and(|first| seq > *first) {
                    let _ = inputs.send(Input::NotAccepted { topic, seq });
                    continue;
                }
                refused_from.remove(&topic);
                match topics.send_pipelined(message).await {
                    Ok(pending) => in_flight.push_back(Box::pin(async move { handed(topic, seq, size, pending.await) })),
                    Err(error) => {
                        refused_from.insert(topic, seq);
                        let _ = inputs.send(handed(topic, seq, size, Err(error)));
                    }
                }
                continue;
            }
            // With every event the router kept of the topic for this service (from sequence 1).
            TopicsWork::Subscribe(topic) => Some(match topics.subscribe_from(topic, Scope::Any, 1).await {
                Ok(answer) => Input::SubscribedLocally { topic, policy: answer.policy, last_seq: answer.last_seq, kept: answer.replay },
                Err(error) => {
                    let (reason, detail) = match error {
                        EngineError::TopicRefused { reason: TopicRefusal::Unknown, detail } => (PeerRefusal::Unknown, detail),
                        EngineError::TopicRefused { detail, .. } => (PeerRefusal::Denied, detail),
                        other => (PeerRefusal::Unknown, other.to_string()),
                    };
                    Input::RefusedLocally { topic, reason, detail }
                }
            }),
            TopicsWork::Unsubscribe(topic) => {
                if let Err(error) = topics.unsubscribe(topic).await {
                    tracing::debug!(%topic, %error, "unsubscribe refused");
                }
                None
            }
            TopicsWork::Mirror(advert, policy, after) => {
                let topic = advert.topic;
                if let Err(error) = topics.create_mirror(advert, policy, after).await {
                    tracing::warn!(%topic, %error, "cannot mirror topic");
                }
                None
            }
            TopicsWork::Unmirror(topic) => {
                if let Err(error) = topics.delete_topic(topic).await {
                    tracing::debug!(%topic, %error, "cannot delete mirror");
                }
                None
            }
        };
        if let Some(answer) = answer {
            let _ = inputs.send(answer);
        }
    }
}

/// What the router's answer to an event handed over means for the core. A refusal as a replay
/// means the mirror is past it already (an event after it was taken while it was refused, and
/// the engines were told of the gap), so it counts as taken.
fn handed(topic: Identity, seq: u64, size: usize, outcome: Result<(), EngineError>) -> Input {
    match outcome {
        Ok(()) | Err(EngineError::Refused { reason: SendRefusal::Malformed, .. }) => Input::Accepted { topic, seq, size },
        Err(error) => {
            tracing::debug!(%topic, seq, %error, "the router did not take an event");
            Input::NotAccepted { topic, seq }
        }
    }
}
