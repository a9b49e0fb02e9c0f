//! Messages to other nodes: one bounded outbox per destination node, drained by a task that
//! seals what has built up into one P2P frame (batched while the previous frame was being
//! handed over, so batches grow with load and latency stays low when idle), signs it with the
//! node key and hands it to transport. While transport is down the batch waits; what expires
//! meanwhile is dropped and counted.

use crate::drops::DropReason;
use crate::server::RouterState;
use netmachine_schema::message_capnp::{p2_p_batch, p2_p_frame};
use netmachine_schema::time::now_ms;
use netmachine_schema::transport_capnp::send_outcome;
use netmachine_schema::{signing, EngineMessage, Identity};
use netmachine_service::queue::{Expiring, ExpiringQueue};
use std::rc::Rc;
use std::time::Duration;

/// Which engines are attached here, as told to other nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Announcement {
    pub full: bool,
    pub attached: Vec<Identity>,
    pub detached: Vec<Identity>,
}

/// What waits in a node's outbox.
pub enum Outgoing {
    Message(EngineMessage),
    Engines(Announcement),
}

impl Expiring for Outgoing {
    fn expiry(&self) -> Option<u64> {
        match self {
            Outgoing::Message(message) => message.expiry,
            Outgoing::Engines(_) => None,
        }
    }
}

impl Outgoing {
    /// A generous estimate of its encoded size, for cutting batches to the frame limit.
    fn size(&self) -> usize {
        match self {
            Outgoing::Message(m) => m.body.len() + m.protocol.len() + 256,
            Outgoing::Engines(a) => (a.attached.len() + a.detached.len()) * 40 + 64,
        }
    }
}

/// Messages in a batch at most, whatever their size.
const MAX_BATCH: usize = 1024;

/// A sealed frame: the bytes transport sends, and the messages inside for accounting.
struct Sealed {
    bytes: Vec<u8>,
    messages: u64,
    expiry: u64,
}

impl RouterState {
    /// Queues `item` for `node`, waiting up to `wait` for room.
    pub async fn send_remote(self: &Rc<Self>, node: Identity, item: Outgoing, wait: Duration) -> Result<(), (DropReason, String)> {
        let outbox = self.outbox(node);
        let wait = match item.expiry() {
            Some(at) => wait.min(Duration::from_millis(at.saturating_sub(now_ms()))),
            None => wait,
        };
        outbox.push(item, wait).await.map_err(|_| {
            (DropReason::QueueFull, format!("the queue for node {node} stayed full for {} ms", wait.as_millis()))
        })
    }

    fn outbox(self: &Rc<Self>, node: Identity) -> Rc<ExpiringQueue<Outgoing>> {
        if let Some(outbox) = self.outboxes.borrow().get(&node) {
            return outbox.clone();
        }
        let outbox = Rc::new(ExpiringQueue::new(self.home.config.router.node_queue as usize));
        self.outboxes.borrow_mut().insert(node, outbox.clone());
        tokio::task::spawn_local(self.clone().flush(node, outbox.clone()));
        outbox
    }

    /// Drains one node's outbox until it is empty, then retires it.
    async fn flush(self: Rc<Self>, node: Identity, outbox: Rc<ExpiringQueue<Outgoing>>) {
        let budget = self.home.config.max_frame_bytes() - (4 << 10);
        loop {
            let mut batch = Vec::new();
            let mut size = 0;
            while batch.len() < MAX_BATCH {
                let first = batch.is_empty();
                let (item, expired) = outbox.pop_live_if(now_ms(), |item| first || size + item.size() <= budget);
                self.drops.count(DropReason::Expired, expired);
                let Some(item) = item else { break };
                size += item.size();
                batch.push(item);
            }
            if batch.is_empty() {
                let mut outboxes = self.outboxes.borrow_mut();
                if outbox.is_empty() {
                    if outboxes.get(&node).is_some_and(|o| Rc::ptr_eq(o, &outbox)) {
                        outboxes.remove(&node);
                    }
                    return;
                }
                continue;
            }
            self.hand_over(node, batch).await;
        }
    }

    /// Seals `batch` and gives it to transport, waiting for transport while it is down.
    async fn hand_over(&self, node: Identity, mut batch: Vec<Outgoing>) {
        loop {
            let before = batch.len();
            batch.retain(|item| !item.expired(now_ms()));
            self.drops.count(DropReason::Expired, (before - batch.len()) as u64);
            if batch.is_empty() {
                return;
            }
            let sealed = match self.seal(node, &batch) {
                Ok(sealed) => sealed,
                Err(error) => {
                    tracing::error!(%error, "cannot encode a frame");
                    self.drops.count(DropReason::Malformed, batch.len() as u64);
                    return;
                }
            };
            let Some(transport) = self.transport.client_within(Duration::from_secs(1)).await else {
                continue;
            };
            let mut request = transport.send_frame_request();
            request.get().set_dst(&node.0);
            request.get().set_frame(&sealed.bytes);
            request.get().set_expiry(sealed.expiry);
            let answer = match request.send().promise.await {
                Ok(answer) => answer,
                Err(error) => {
                    tracing::info!(%error, "transport did not take a frame; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let refusal = answer
                .get()
                .and_then(|a| a.get_outcome())
                .and_then(|o| Ok(o.which()?))
                .map(|which| match which {
                    send_outcome::Queued(()) => None,
                    send_outcome::Refused(reason) => Some(reason.ok().and_then(|r| r.to_string().ok()).unwrap_or_default()),
                });
            match refusal {
                Ok(None) => {
                    self.remote_sent.set(self.remote_sent.get() + sealed.messages);
                }
                Ok(Some(reason)) | Err(capnp::Error { extra: reason, .. }) => {
                    tracing::warn!(peer = %node, %reason, messages = sealed.messages, "transport refused a frame");
                    self.drops.count(DropReason::Unreachable, sealed.messages);
                }
            }
            return;
        }
    }

    fn seal(&self, node: Identity, batch: &[Outgoing]) -> capnp::Result<Sealed> {
        let mut message = capnp::message::Builder::new_default();
        let mut payloads = message.init_root::<p2_p_batch::Builder>().init_payloads(batch.len() as u32);
        let mut messages = 0;
        let mut expiry = Some(0u64);
        for (i, item) in batch.iter().enumerate() {
            let payload = payloads.reborrow().get(i as u32);
            match item {
                Outgoing::Message(m) => {
                    messages += 1;
                    expiry = match (expiry, m.expiry) {
                        (Some(latest), Some(at)) => Some(latest.max(at)),
                        _ => None,
                    };
                    m.write(payload.init_engine());
                }
                Outgoing::Engines(a) => {
                    let mut engines = payload.init_engines();
                    engines.set_full(a.full);
                    let mut attached = engines.reborrow().init_attached(a.attached.len() as u32);
                    for (j, id) in a.attached.iter().enumerate() {
                        attached.set(j as u32, &id.0);
                    }
                    let mut detached = engines.init_detached(a.detached.len() as u32);
                    for (j, id) in a.detached.iter().enumerate() {
                        detached.set(j as u32, &id.0);
                    }
                }
            }
        }
        let batch_bytes = capnp::serialize::write_message_to_words(&message);
        let src = self.key.identity();
        let signature = self.key.sign(&signing::p2p_frame(&src, &node, &batch_bytes));
        let mut frame = capnp::message::Builder::new_default();
        let mut root = frame.init_root::<p2_p_frame::Builder>();
        root.set_src(&src.0);
        root.set_dst(&node.0);
        root.set_batch(&batch_bytes);
        root.set_sig(&signature);
        Ok(Sealed { bytes: capnp::serialize::write_message_to_words(&frame), messages, expiry: expiry.unwrap_or(0) })
    }

    /// Tells the connected nodes (or one of them) which engines are attached here.
    pub fn announce(self: &Rc<Self>, to: Option<Identity>, announcement: Announcement) {
        let nodes: Vec<Identity> = match to {
            Some(node) => vec![node],
            None => self.connected.borrow().iter().copied().collect(),
        };
        for node in nodes {
            let state = self.clone();
            let item = Outgoing::Engines(announcement.clone());
            tokio::task::spawn_local(async move {
                if let Err((_, detail)) = state.send_remote(node, item, Duration::from_secs(5)).await {
                    tracing::warn!(peer = %node, %detail, "could not announce engines");
                }
            });
        }
    }
}
