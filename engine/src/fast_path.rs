//! The engine's side of the shared-memory rings (engine/RING.md): the outbox it writes from
//! any thread, and a reader thread that sleeps on the inbox futex when idle and hands what
//! arrives to waiting requests or to the engine's inbox queue (which, when full, stops the
//! reader: the ring fills and the router holds further messages back).

use crate::connection::Shared;
use crate::ring::layout::{Kind, INBOX_CONSUMER_SLEEPING_AT, OUTBOX_PRODUCER_WAITING_AT};
use crate::ring::records::{self, Refusal};
use crate::ring::wait::{wait_for, WaitMode};
use crate::ring::{Doorbell, Full, Producer, RingSegment, SegmentError};
use crate::EngineError;
use netmachine_schema::{EngineMessage, Identity};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Largest RPC-equivalent message read from the inbox ring, in words.
const WORD_LIMIT: usize = (64 << 20) / 8 * 2 + (64 << 10);

/// An engine's mapped rings.
pub(crate) struct EngineRing {
    pub segment: RingSegment,
    outbox: Mutex<Producer>,
    doorbell: Doorbell,
    stop: AtomicBool,
}

impl EngineRing {
    /// Maps the granted segment and doorbell and starts the reader thread.
    pub fn open(
        engine: Identity,
        segment: &str,
        doorbell: &str,
        mode: WaitMode,
        shared: Arc<Shared>,
        incoming: mpsc::Sender<EngineMessage>,
    ) -> Result<Arc<EngineRing>, SegmentError> {
        let segment = RingSegment::open(segment, Some(&engine))?;
        let doorbell = Doorbell::open(doorbell)?;
        segment.set_engine_pid(std::process::id());
        let (outbox, inbox) = segment.engine_side();
        let ring = Arc::new(EngineRing { segment, outbox: Mutex::new(outbox), doorbell, stop: AtomicBool::new(false) });
        let reader = ring.clone();
        std::thread::Builder::new()
            .name(format!("ring-{}", engine.short()))
            .spawn(move || reader.read(inbox, mode, &shared, &incoming))
            .map_err(|e| SegmentError::Invalid { name: "reader".into(), problem: e.to_string() })?;
        Ok(ring)
    }

    /// Writes `message` into the outbox and rings the router if it sleeps; `Full` if there is
    /// no room now.
    pub fn try_send(&self, message: &EngineMessage) -> Result<(), Full> {
        records::write_message(&mut self.outbox.lock().unwrap_or_else(|p| p.into_inner()), message)?;
        self.doorbell.ring();
        Ok(())
    }

    /// Like `try_send`, waiting for room as the RING.md waking protocol says.
    pub fn send_blocking(&self, message: &EngineMessage, mode: WaitMode) -> Result<(), EngineError> {
        let mut sent = self.try_send(message);
        if sent.is_ok() {
            return Ok(());
        }
        let word = self.segment.word(OUTBOX_PRODUCER_WAITING_AT);
        wait_for(mode, word, || {
            sent = self.try_send(message);
            sent.is_ok() || self.stop.load(Ordering::Acquire)
        });
        sent.map_err(|Full| EngineError::Closed)
    }

    /// Whether the router has taken everything written to the outbox.
    pub fn is_drained(&self) -> bool {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner()).is_drained()
    }

    /// Stops the reader thread.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        crate::ring::futex::wake(self.segment.word(INBOX_CONSUMER_SLEEPING_AT), 1);
    }

    fn read(&self, mut inbox: crate::ring::Consumer, mode: WaitMode, shared: &Shared, incoming: &mpsc::Sender<EngineMessage>) {
        let sleeping = self.segment.word(INBOX_CONSUMER_SLEEPING_AT);
        let mut last = LastFrom::default();
        loop {
            wait_for(mode, sleeping, || self.stop.load(Ordering::Acquire) || inbox.has_data());
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            let taken = match inbox.peek() {
                Ok(Some(record)) => match record.kind {
                    Kind::Message => records::read_message(record.body, WORD_LIMIT).map(Taken::Message),
                    Kind::Refusal => records::read_refusal(record.body).map(Taken::Refusal).ok_or_else(|| "unreadable refusal".to_string()),
                    Kind::Padding => Err("padding surfaced".to_string()),
                },
                Ok(None) => continue,
                Err(corrupt) => {
                    tracing::error!(%corrupt, "the inbox ring is corrupt; no more messages will be read from it");
                    return;
                }
            };
            inbox.consume();
            crate::ring::wait::wake_if_sleeping(self.segment.word(crate::ring::layout::INBOX_PRODUCER_WAITING_AT));
            match taken {
                Ok(Taken::Message(message)) if last.repeats(&message) => {
                    tracing::debug!(src = %message.src.short(), id = message.id, "dropped a message the router delivered twice");
                }
                Ok(Taken::Message(message)) => {
                    if let Some(message) = shared.route_reply(message) {
                        if incoming.blocking_send(message).is_err() {
                            return;
                        }
                    }
                }
                Ok(Taken::Refusal(refusal)) => shared.refused(refusal),
                Err(problem) => tracing::warn!(%problem, "skipped an unreadable inbox record"),
            }
        }
    }
}

/// The last message id seen from each sender. A router killed between delivering a record and
/// releasing it from the sender's outbox delivers it again after its restart, right after the
/// first copy (RING.md, "Attaching and detaching"); a repeated (src, id) is that copy.
#[derive(Default)]
struct LastFrom(std::collections::HashMap<Identity, u64>);

/// Senders remembered at most; beyond, the table starts over (a duplicate can then slip by only
/// for a sender not heard from in that long).
const SENDERS: usize = 65_536;

impl LastFrom {
    fn repeats(&mut self, message: &EngineMessage) -> bool {
        if self.0.len() >= SENDERS && !self.0.contains_key(&message.src) {
            self.0.clear();
        }
        self.0.insert(message.src, message.id) == Some(message.id)
    }
}

enum Taken {
    Message(EngineMessage),
    Refusal(Refusal),
}

impl Drop for EngineRing {
    fn drop(&mut self) {
        self.stop();
    }
}
