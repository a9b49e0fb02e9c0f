//! One attached engine: its bounded queue and the pump that delivers the queue in order, to the
//! engine's inbox ring, or over the socket to its Inbox capability (keeping a window of
//! deliveries in flight). A full queue makes senders wait (backpressure); when the engine is
//! gone, what was still queued is counted as dropped.

use crate::drops::{DropCounters, DropReason};
use crate::rings::RingEndpoint;
use futures::stream::{FuturesOrdered, StreamExt};
use futures::FutureExt;
use netmachine_schema::router_capnp::inbox;
use netmachine_schema::{time::now_ms, EngineMessage, Identity};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Deliveries to one engine awaiting its answer at once.
const DELIVERY_WINDOW: usize = 64;
/// Messages in one delivery at most.
const DELIVERY_BATCH: usize = 256;

/// A delivery awaiting the engine's answer, with how many messages it carried.
type Delivery = std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, (capnp::Error, u64)>>>>;

/// An engine attached to this router.
pub struct Attachment {
    /// Tells this attachment from a later one of the same engine.
    pub generation: u64,
    /// Messages from nodes on the public network may reach it.
    pub public: bool,
    queue: mpsc::Sender<EngineMessage>,
}

impl Attachment {
    /// Starts delivering to `sink`. `on_gone` runs once the engine stops answering.
    pub fn start(
        engine: Identity,
        generation: u64,
        public: bool,
        sink: Sink,
        capacity: usize,
        drops: Rc<DropCounters>,
        on_gone: impl FnOnce() + 'static,
    ) -> Self {
        let (queue, pending) = mpsc::channel(capacity);
        match sink {
            Sink::Socket(inbox) => tokio::task::spawn_local(pump(engine, inbox, pending, drops, on_gone)),
            Sink::Ring(endpoint) => tokio::task::spawn_local(pump_ring(endpoint, pending, drops, on_gone)),
        };
        Attachment { generation, public, queue }
    }

    /// A handle for putting messages on this engine's queue.
    pub fn queue(&self) -> mpsc::Sender<EngineMessage> {
        self.queue.clone()
    }
}

/// Where an engine takes its messages.
pub enum Sink {
    Socket(inbox::Client),
    Ring(Arc<RingEndpoint>),
}

/// Puts `message` on an engine's queue, waiting up to `wait` (and never past the message's
/// expiry) for room.
pub async fn enqueue(
    queue: mpsc::Sender<EngineMessage>,
    message: EngineMessage,
    wait: Duration,
) -> Result<(), (DropReason, String)> {
    let wait = match message.expiry {
        Some(at) => wait.min(Duration::from_millis(at.saturating_sub(now_ms()))),
        None => wait,
    };
    match queue.send_timeout(message, wait).await {
        Ok(()) => Ok(()),
        Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err((
            DropReason::QueueFull,
            format!("the destination's queue stayed full for {} ms", wait.as_millis()),
        )),
        Err(mpsc::error::SendTimeoutError::Closed(_)) => {
            Err((DropReason::EngineGone, "the destination engine detached".into()))
        }
    }
}

async fn pump(
    engine: Identity,
    inbox: inbox::Client,
    mut pending: mpsc::Receiver<EngineMessage>,
    drops: Rc<DropCounters>,
    on_gone: impl FnOnce(),
) {
    // Each delivery in flight resolves to the number of messages it carried.
    let mut in_flight: FuturesOrdered<Delivery> = FuturesOrdered::new();
    let (failure, mut lost) = loop {
        tokio::select! {
            biased;
            Some(answer) = in_flight.next(), if !in_flight.is_empty() => {
                if let Err((error, carried)) = answer {
                    break (error, carried);
                }
            }
            next = pending.recv(), if in_flight.len() < DELIVERY_WINDOW => {
                let Some(first) = next else {
                    // Detached and drained: wait for the last answers.
                    while let Some(answer) = in_flight.next().await {
                        if let Err((error, carried)) = answer {
                            drops.count(DropReason::EngineGone, carried);
                            tracing::info!(engine = %engine.short(), %error, "engine gone");
                        }
                    }
                    return;
                };
                if let Some(delivery) = deliver(&inbox, first, &mut pending, &drops) {
                    in_flight.push_back(delivery);
                }
            }
        }
    };
    // The engine stopped answering: the failed delivery, those behind it, and the queue are lost.
    pending.close();
    while let Some(answer) = in_flight.next().await {
        lost += answer.unwrap_or_else(|(_, carried)| carried);
    }
    while pending.recv().await.is_some() {
        lost += 1;
    }
    drops.count(DropReason::EngineGone, lost);
    tracing::info!(engine = %engine.short(), %failure, lost, "engine gone");
    on_gone();
}

/// Writes the queue into the engine's inbox ring; while the ring is full (a slow engine), waits
/// for room without spinning.
async fn pump_ring(endpoint: Arc<RingEndpoint>, mut pending: mpsc::Receiver<EngineMessage>, drops: Rc<DropCounters>, on_gone: impl FnOnce()) {
    while let Some(message) = pending.recv().await {
        if message.is_expired(now_ms()) {
            drops.count(DropReason::Expired, 1);
            continue;
        }
        let mut wait = Duration::from_micros(50);
        while endpoint.deliver(&message).is_err() {
            if endpoint.is_closed() {
                pending.close();
                let mut lost = 1;
                while pending.recv().await.is_some() {
                    lost += 1;
                }
                drops.count(DropReason::EngineGone, lost);
                tracing::info!(engine = %endpoint.engine.short(), lost, "engine gone");
                on_gone();
                return;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(2));
        }
    }
}

/// Sends `first` and whatever else is already waiting (up to a batch) in one call.
fn deliver(inbox: &inbox::Client, first: EngineMessage, pending: &mut mpsc::Receiver<EngineMessage>, drops: &DropCounters) -> Option<Delivery> {
    let now = now_ms();
    let mut batch = Vec::new();
    let mut next = Some(first);
    while let Some(message) = next {
        if message.is_expired(now) {
            drops.count(DropReason::Expired, 1);
        } else {
            batch.push(message);
        }
        next = if batch.len() < DELIVERY_BATCH { pending.try_recv().ok() } else { None };
    }
    let carried = batch.len() as u64;
    let answer: futures::future::LocalBoxFuture<'static, capnp::Result<()>> = match batch.as_slice() {
        [] => return None,
        [message] => {
            let mut request = inbox.deliver_request();
            message.write(request.get().init_message());
            request.send().promise.map(|r| r.map(|_| ())).boxed_local()
        }
        messages => {
            let mut request = inbox.deliver_batch_request();
            let mut list = request.get().init_messages(messages.len() as u32);
            for (i, message) in messages.iter().enumerate() {
                message.write(list.reborrow().get(i as u32));
            }
            request.send().promise.map(|r| r.map(|_| ())).boxed_local()
        }
    };
    Some(Box::pin(async move { answer.await.map(|()| carried).map_err(|e| (e, carried)) }))
}
