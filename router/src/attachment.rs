//! One attached engine: its bounded queue and the pump that delivers the queue to the engine's
//! Inbox in order, keeping a window of deliveries in flight. A full queue makes senders wait
//! (backpressure); when the engine is gone, what was still queued is counted as dropped.

use crate::drops::{DropCounters, DropReason};
use futures::stream::{FuturesOrdered, StreamExt};
use netmachine_schema::router_capnp::inbox;
use netmachine_schema::{time::now_ms, EngineMessage, Identity};
use std::rc::Rc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Deliveries to one engine awaiting its answer at once.
const DELIVERY_WINDOW: usize = 64;

/// An engine attached to this router.
pub struct Attachment {
    /// Tells this attachment from a later one of the same engine.
    pub generation: u64,
    /// Messages from nodes on the public network may reach it.
    pub public: bool,
    queue: mpsc::Sender<EngineMessage>,
}

impl Attachment {
    /// Starts delivering to `inbox`. `on_gone` runs once the engine stops answering.
    pub fn start(
        engine: Identity,
        generation: u64,
        public: bool,
        inbox: inbox::Client,
        capacity: usize,
        drops: Rc<DropCounters>,
        on_gone: impl FnOnce() + 'static,
    ) -> Self {
        let (queue, pending) = mpsc::channel(capacity);
        tokio::task::spawn_local(pump(engine, inbox, pending, drops, on_gone));
        Attachment { generation, public, queue }
    }

    /// A handle for putting messages on this engine's queue.
    pub fn queue(&self) -> mpsc::Sender<EngineMessage> {
        self.queue.clone()
    }
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
    let mut in_flight = FuturesOrdered::new();
    let failure = loop {
        tokio::select! {
            biased;
            Some(answer) = in_flight.next(), if !in_flight.is_empty() => {
                if let Err(error) = answer {
                    break error;
                }
            }
            next = pending.recv(), if in_flight.len() < DELIVERY_WINDOW => {
                let Some(message) = next else {
                    // Detached and drained: wait for the last answers.
                    while let Some(answer) = in_flight.next().await {
                        if let Err(error) = answer {
                            drops.count(DropReason::EngineGone, 1 + in_flight.len() as u64);
                            tracing::info!(engine = %engine.short(), %error, "engine gone");
                            break;
                        }
                    }
                    return;
                };
                if message.is_expired(now_ms()) {
                    drops.count(DropReason::Expired, 1);
                    continue;
                }
                let mut request = inbox.deliver_request();
                message.write(request.get().init_message());
                in_flight.push_back(async move { request.send().promise.await.map(|_| ()) });
            }
        }
    };
    // The engine stopped answering: the failed delivery, those behind it, and the queue are lost.
    pending.close();
    let mut lost = 1 + in_flight.len() as u64;
    while pending.recv().await.is_some() {
        lost += 1;
    }
    drops.count(DropReason::EngineGone, lost);
    tracing::info!(engine = %engine.short(), %failure, lost, "engine gone");
    on_gone();
}
