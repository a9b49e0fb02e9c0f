//! One attached engine's delivery queue and the pump that delivers it in order, to the engine's
//! inbox ring, or over the socket to its Inbox capability (keeping a window of deliveries in
//! flight). The core counts the queue's room: the pump tells it what it took (`Input::Taken`)
//! and what reached the engine (`Input::Delivered`: written to its ring, or answered over the
//! socket), and when the engine is gone, what was still queued is counted as dropped.

use tracing::Instrument;
use crate::core::delivery::{self, DELIVERY_BATCH};
use crate::core::{DropReason, Input};
use crate::rings::RingEndpoint;
use crate::shell::RouterState;
use futures::stream::{FuturesOrdered, StreamExt};
use futures::FutureExt;
use netmachine_engine::delivery_stream;
use netmachine_engine::ring::records;
use netmachine_schema::router_capnp::inbox;
use netmachine_schema::{time::now_ms, EngineMessage, Identity};
use std::rc::Weak;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

/// Deliveries to one engine awaiting its answer at once.
const DELIVERY_WINDOW: usize = 64;

/// A delivery awaiting the engine's answer, with how many messages it carried.
type Delivery = std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, (capnp::Error, u64)>>>>;

/// An engine attached to this router.
pub struct Attachment {
    /// Tells this attachment from a later one of the same engine.
    pub generation: u64,
    /// The engine's Inbox capability (on either path): where it is told why it was detached.
    pub inbox: inbox::Client,
    queue: mpsc::UnboundedSender<EngineMessage>,
    /// The engine's rings, which count what waits in the queue for them (topic lanes pass an
    /// engine by while it has some, so that no event overtakes one queued here).
    ring: Option<Arc<RingEndpoint>>,
    /// The task serving the engine's send stream, ended with the attachment.
    send_stream: std::cell::Cell<Option<tokio::task::AbortHandle>>,
    /// Where the pump of an engine on the socket path takes its delivery stream, once.
    delivery_stream: std::cell::Cell<Option<oneshot::Sender<UnixStream>>>,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if let Some(serving) = self.send_stream.take() {
            serving.abort();
        }
    }
}

impl Attachment {
    /// Starts delivering to `sink`.
    pub fn start(engine: Identity, generation: u64, sink: Sink, inbox: inbox::Client, state: Weak<RouterState>) -> Self {
        // Bounded by the core, which delivers only against `limits.engine_queue` credits.
        let (queue, pending) = mpsc::unbounded_channel();
        let pump = Pump { engine, generation, state };
        let span = tracing::info_span!("engine", id = %engine.short(), generation);
        let (delivery_stream, stream) = oneshot::channel();
        let ring = match sink {
            Sink::Socket(inbox) => {
                tokio::task::spawn_local(pump.to_socket(inbox, pending, stream).instrument(span));
                None
            }
            Sink::Ring(endpoint) => {
                tokio::task::spawn_local(pump.to_ring(endpoint.clone(), pending).instrument(span));
                Some(endpoint)
            }
        };
        let delivery_stream = std::cell::Cell::new(ring.is_none().then_some(delivery_stream));
        Attachment { generation, inbox, queue, ring, send_stream: std::cell::Cell::new(None), delivery_stream }
    }

    /// The engine's send stream is served by `serving` (an earlier one of this attachment
    /// ends), and its messages are delivered to `deliveries` from now on (the first time only:
    /// a later one is closed).
    pub fn set_streams(&self, serving: tokio::task::AbortHandle, deliveries: UnixStream) {
        if let Some(earlier) = self.send_stream.replace(Some(serving)) {
            earlier.abort();
        }
        if let Some(pump) = self.delivery_stream.take() {
            let _ = pump.send(deliveries);
        }
    }

    /// Queues `message` (the core made sure there is room); false if the pump has stopped.
    pub fn deliver(&self, message: EngineMessage) -> bool {
        if let Some(ring) = &self.ring {
            ring.queued_one();
        }
        let queued = self.queue.send(message).is_ok();
        if let (Some(ring), false) = (&self.ring, queued) {
            ring.written_one();
        }
        queued
    }
}

/// Where an engine takes its messages.
pub enum Sink {
    Socket(inbox::Client),
    Ring(Arc<RingEndpoint>),
}

/// What a pump tells the router.
struct Pump {
    engine: Identity,
    generation: u64,
    state: Weak<RouterState>,
}

impl Pump {
    fn taken(&self, n: usize) {
        if let Some(state) = self.state.upgrade() {
            state.feed(Input::Taken { engine: self.engine, generation: self.generation, n });
        }
    }

    fn delivered(&self, n: u64) {
        if let (Some(state), true) = (self.state.upgrade(), n > 0) {
            state.feed(Input::Delivered { engine: self.engine, generation: self.generation, n });
        }
    }

    fn dropped(&self, reason: DropReason, n: u64) {
        if let (Some(state), true) = (self.state.upgrade(), n > 0) {
            state.count(reason, n);
        }
    }

    /// The engine stopped answering: what is queued is lost, and the engine detached.
    async fn gone(&self, mut pending: mpsc::UnboundedReceiver<EngineMessage>, mut lost: u64, failure: &str) {
        pending.close();
        while pending.recv().await.is_some() {
            lost += 1;
        }
        self.dropped(DropReason::EngineGone, lost);
        tracing::info!(engine = %self.engine.short(), %failure, lost, "engine gone");
        if let Some(state) = self.state.upgrade() {
            state.detach(self.engine, self.generation);
        }
    }

    /// Delivers over the socket, as calls to the engine's Inbox, until the engine hands over a
    /// delivery stream: once every call in flight is answered, to the stream.
    async fn to_socket(self, inbox: inbox::Client, mut pending: mpsc::UnboundedReceiver<EngineMessage>, mut stream: oneshot::Receiver<UnixStream>) {
        // Each delivery in flight resolves to the number of messages it carried.
        let mut in_flight: FuturesOrdered<Delivery> = FuturesOrdered::new();
        let mut stream_to_come = true;
        let (failure, mut lost) = 'pumping: loop {
            tokio::select! {
                biased;
                Some(answer) = in_flight.next(), if !in_flight.is_empty() => {
                    match answer {
                        Ok(carried) => self.delivered(carried),
                        Err((error, carried)) => break (error, carried),
                    }
                }
                handed = &mut stream, if stream_to_come => match handed {
                    Ok(stream) => {
                        // What is in flight reaches the engine before anything on the stream.
                        while let Some(answer) = in_flight.next().await {
                            match answer {
                                Ok(carried) => self.delivered(carried),
                                Err((error, carried)) => break 'pumping (error, carried),
                            }
                        }
                        return self.to_stream(stream, pending).await;
                    }
                    Err(_) => stream_to_come = false,
                },
                next = pending.recv(), if in_flight.len() < DELIVERY_WINDOW => {
                    let Some(first) = next else {
                        // Detached and drained: wait for the last answers.
                        while let Some(answer) = in_flight.next().await {
                            match answer {
                                Ok(carried) => self.delivered(carried),
                                Err((error, carried)) => {
                                    self.dropped(DropReason::EngineGone, carried);
                                    tracing::info!(engine = %self.engine.short(), %error, "engine gone");
                                }
                            }
                        }
                        return;
                    };
                    if let Some(delivery) = self.batch(&inbox, first, &mut pending) {
                        in_flight.push_back(delivery);
                    }
                }
            }
        };
        // The failed delivery, those behind it, and the queue are lost.
        while let Some(answer) = in_flight.next().await {
            lost += answer.unwrap_or_else(|(_, carried)| carried);
        }
        self.gone(pending, lost, &failure.to_string()).await;
    }

    /// Sends `first` and whatever else is already waiting (up to a batch) in one call.
    fn batch(&self, inbox: &inbox::Client, first: EngineMessage, pending: &mut mpsc::UnboundedReceiver<EngineMessage>) -> Option<Delivery> {
        let delivery::Cut { batch, taken, expired } = delivery::cut(first, || pending.try_recv().ok(), now_ms());
        self.dropped(DropReason::Expired, expired);
        self.taken(taken);
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

    /// Writes the queue to the engine's delivery stream, in order, flushing whenever the queue
    /// is empty (or every `DELIVERY_BATCH` messages): what is flushed is delivered. The engine
    /// reads it as it has room in its inbox, so a full inbox holds the pump here, and its
    /// queue fills. A stream that fails means the engine is gone.
    async fn to_stream(self, stream: UnixStream, mut pending: mpsc::UnboundedReceiver<EngineMessage>) {
        let mut writer = BufWriter::new(stream);
        let mut frame = Vec::new();
        let mut taken = 0;
        while let Some(message) = pending.recv().await {
            taken += 1;
            let written = match message.is_expired(now_ms()) {
                true => {
                    self.dropped(DropReason::Expired, 1);
                    Ok(())
                }
                false => {
                    frame.clear();
                    delivery_stream::delivery_frame(&mut frame, &message);
                    writer.write_all(&frame).await
                }
            };
            let flushed = match written {
                Ok(()) if pending.is_empty() || taken == DELIVERY_BATCH => writer.flush().await.map(|()| true),
                Ok(()) => Ok(false),
                Err(error) => Err(error),
            };
            match flushed {
                Ok(false) => {}
                Ok(true) => {
                    self.delivered(taken as u64);
                    self.taken(std::mem::take(&mut taken));
                }
                Err(error) => {
                    self.taken(taken);
                    return self.gone(pending, taken as u64, &format!("its delivery stream failed: {error}")).await;
                }
            }
        }
    }

    /// Writes the queue into the engine's inbox ring; while the ring is full (a slow engine),
    /// waits for room without spinning. A message longer than the ring can ever take is dropped
    /// and counted as over the limit. Room is reported once the queue is empty, or every
    /// `DELIVERY_BATCH` messages.
    async fn to_ring(self, endpoint: Arc<RingEndpoint>, mut pending: mpsc::UnboundedReceiver<EngineMessage>) {
        let mut taken = 0;
        while let Some(message) = pending.recv().await {
            let _written = Written(&endpoint);
            taken += 1;
            let length = records::message_length(&message);
            if message.is_expired(now_ms()) {
                self.dropped(DropReason::Expired, 1);
            } else if length > endpoint.largest_record {
                // Within the node's limit, but over what this engine's inbox ring can ever take.
                tracing::warn!(engine = %self.engine.short(), length, largest = endpoint.largest_record, "dropped a message too long for the engine's inbox ring");
                self.dropped(DropReason::OverLimit, 1);
            } else {
                let mut wait = Duration::from_micros(50);
                while endpoint.deliver(&message).is_err() {
                    if endpoint.is_closed() {
                        pending.close();
                        let mut lost = 1;
                        while pending.recv().await.is_some() {
                            endpoint.written_one();
                            lost += 1;
                        }
                        return self.gone(pending, lost, "its rings were closed").await;
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(2));
                }
            }
            if pending.is_empty() || taken == DELIVERY_BATCH {
                // Written to the ring, or dropped and counted: each one went, in order.
                self.delivered(taken as u64);
                self.taken(std::mem::take(&mut taken));
            }
        }
    }
}

/// A message taken off an engine's queue: counted as written to its rings (or dropped) when it
/// goes, whichever way the pump leaves it.
struct Written<'a>(&'a RingEndpoint);

impl Drop for Written<'_> {
    fn drop(&mut self) {
        self.0.written_one();
    }
}
