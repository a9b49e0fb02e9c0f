//! The engine's side of the shared-memory rings (ring/RING.md): the outbox it writes from
//! any thread, and the inbox, read either by a reader thread of its own (the default: it sleeps
//! on the inbox futex when idle and hands messages to the engine's inbox queue, which, when
//! full, stops it: the ring fills and the router holds further messages back) or by the
//! caller's own thread in `recv_blocking` (no thread hop: the lowest latency).

use crate::connection::Shared;
use crate::ring::layout::{Kind, INBOX_CONSUMER_SLEEPING_AT, OUTBOX_PRODUCER_WAITING_AT};
use crate::ring::records;
use crate::ring::wait::{wait_a_while, WaitMode};
use crate::ring::{Consumer, Doorbell, Full, Producer, RingSegment, SegmentError};
use crate::EngineError;
use netmachine_schema::{EngineMessage, Identity};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Who reads the inbox ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Receiver {
    /// A reader thread of the engine's own: works with async `recv`.
    #[default]
    ReaderThread,
    /// The thread calling `recv_blocking` or `request_blocking`: no thread hop, the lowest
    /// latency, for engines that use the blocking calls.
    CallingThread,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// An engine's mapped rings.
pub(crate) struct EngineRing {
    pub segment: RingSegment,
    outbox: Mutex<Producer>,
    inbox: Mutex<Inbox>,
    doorbell: Doorbell,
    stop: AtomicBool,
    mode: WaitMode,
}

struct Inbox {
    consumer: Consumer,
    last: LastFrom,
}

/// What the next inbox record was.
pub(crate) enum Taken {
    /// A message for the engine.
    Message(EngineMessage),
    /// A reply or refusal, handed to the request it belongs to, or a record skipped.
    Handled,
    /// Nothing is waiting.
    Empty,
    /// The ring is corrupt or the engine stopped: nothing more can be read.
    Done,
}

impl EngineRing {
    /// Maps the granted segment and doorbell; with `reader`, starts the reader thread.
    pub fn open(
        engine: Identity,
        segment: &str,
        doorbell: &str,
        mode: WaitMode,
        reader: Option<(Arc<Shared>, mpsc::Sender<EngineMessage>)>,
    ) -> Result<Arc<EngineRing>, SegmentError> {
        let segment = RingSegment::open(segment, Some(&engine.0))?;
        let doorbell = Doorbell::open(doorbell)?;
        segment.set_engine_pid(std::process::id());
        let (outbox, inbox) = segment.engine_side()?;
        let ring = Arc::new(EngineRing {
            segment,
            outbox: Mutex::new(outbox),
            inbox: Mutex::new(Inbox { consumer: inbox, last: LastFrom::default() }),
            doorbell,
            stop: AtomicBool::new(false),
            mode,
        });
        if let Some((shared, incoming)) = reader {
            let ring = ring.clone();
            std::thread::Builder::new()
                .name(format!("ring-{}", engine.short()))
                .spawn(move || ring.read(&shared, &incoming))
                .map_err(|e| SegmentError::Invalid { name: "reader".into(), problem: e.to_string() })?;
        }
        Ok(ring)
    }

    /// Writes `message` into the outbox and rings the router if it sleeps: `Full` if there is
    /// no room now, `TooLargeForRing` if there never will be.
    pub fn try_send(&self, message: &EngineMessage) -> Result<(), EngineError> {
        let mut outbox = lock(&self.outbox);
        let (len, max) = (records::message_length(message), outbox.max_body());
        if len > max {
            return Err(EngineError::TooLargeForRing { len, max });
        }
        records::write_message(&mut outbox, message).map_err(|Full| EngineError::Full)?;
        drop(outbox);
        self.doorbell.ring();
        Ok(())
    }

    /// Like `try_send`, waiting for room as the RING.md waking protocol says, for at most
    /// `timeout` (the router may be gone and not drain the outbox).
    pub fn send_blocking(&self, message: &EngineMessage, timeout: Duration) -> Result<(), EngineError> {
        let mut sent = self.try_send(message);
        if !matches!(sent, Err(EngineError::Full)) {
            // The usual case, without reading the clock.
            return sent;
        }
        let deadline = Instant::now() + timeout;
        let word = self.segment.word(OUTBOX_PRODUCER_WAITING_AT);
        while matches!(sent, Err(EngineError::Full)) {
            if self.stopped() {
                return Err(EngineError::Closed);
            }
            if Instant::now() >= deadline {
                return Err(self.outbox_stayed_full(timeout));
            }
            wait_a_while(self.mode, word, || {
                sent = self.try_send(message);
                !matches!(sent, Err(EngineError::Full)) || self.stopped()
            });
        }
        sent
    }

    /// Why the outbox stayed full for `timeout`: a router that runs but takes nothing from it
    /// is holding this engine's messages while their destinations' queues are full, which the
    /// socket path reports as `QueueFull` too; a router that is gone is unavailable.
    fn outbox_stayed_full(&self, timeout: Duration) -> EngineError {
        if !crate::ring::process_alive(self.segment.router_pid()) {
            return EngineError::RouterUnavailable(timeout);
        }
        EngineError::Refused {
            reason: crate::SendRefusal::QueueFull,
            detail: format!(
                "the outbox stayed full for {} ms: the router is up but holds this engine's messages while their destinations' queues are full",
                timeout.as_millis()
            ),
        }
    }

    /// Whether the router has taken everything written to the outbox.
    pub fn is_drained(&self) -> bool {
        lock(&self.outbox).is_drained()
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Stops reading (and wakes whoever sleeps on the inbox).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        crate::ring::futex::wake(self.segment.word(INBOX_CONSUMER_SLEEPING_AT), i32::MAX);
    }

    /// Waits (as the engine's wait mode says) until the inbox may hold a record, or for at
    /// most one sleep, so that callers keep their deadlines.
    pub fn wait_for_records(&self) {
        let sleeping = self.segment.word(INBOX_CONSUMER_SLEEPING_AT);
        wait_a_while(self.mode, sleeping, || self.stopped() || lock(&self.inbox).consumer.has_data());
    }

    /// Takes the next inbox record: replies and refusals go to their requests here.
    pub fn take(&self, shared: &Shared) -> Taken {
        if self.stopped() {
            return Taken::Done;
        }
        let mut inbox = lock(&self.inbox);
        let read = match inbox.consumer.peek() {
            Ok(None) => return Taken::Empty,
            Ok(Some(record)) => match record.kind {
                Kind::Message => records::read_message(record.body).map(Ok),
                Kind::Refusal => records::read_refusal(record.body).map(Err).ok_or_else(|| "an unreadable refusal".to_string()),
                Kind::Padding => Err("padding surfaced".to_string()),
            },
            Err(corrupt) => {
                tracing::error!(%corrupt, "the inbox ring is corrupt; no more messages will be read from it");
                drop(inbox);
                // Said once: every later read, and the reader thread, sees a stopped ring.
                self.stop();
                return Taken::Done;
            }
        };
        inbox.consumer.consume();
        let repeated = matches!(&read, Ok(Ok(message)) if inbox.last.repeats(message));
        drop(inbox);
        match read {
            Ok(Ok(_)) if repeated => Taken::Handled,
            Ok(Ok(message)) => shared.route_reply(message).map_or(Taken::Handled, Taken::Message),
            Ok(Err(refusal)) => {
                shared.refused(refusal);
                Taken::Handled
            }
            Err(problem) => {
                tracing::warn!(%problem, "skipped an unreadable inbox record");
                Taken::Handled
            }
        }
    }

    /// The reader thread.
    fn read(&self, shared: &Shared, incoming: &mpsc::Sender<EngineMessage>) {
        loop {
            match self.take(shared) {
                Taken::Message(message) => {
                    if incoming.blocking_send(message).is_err() {
                        return;
                    }
                }
                Taken::Handled => {}
                Taken::Empty => self.wait_for_records(),
                Taken::Done => return,
            }
        }
    }
}

/// The last message id seen from each sender. A router killed between delivering a record and
/// releasing it from the sender's outbox delivers it again after its restart, right after the
/// first copy (RING.md, "Attaching and detaching"); a repeated (src, id) is that copy.
///
/// The sender of the latest message is kept apart from the table, so that a run of messages
/// from one sender costs no hashing.
#[derive(Default)]
struct LastFrom {
    latest: Option<(Identity, u64)>,
    others: std::collections::HashMap<Identity, u64>,
}

/// Senders remembered at most; beyond, the table starts over (a duplicate can then slip by only
/// for a sender not heard from in that long).
const SENDERS: usize = 65_536;

impl LastFrom {
    fn repeats(&mut self, message: &EngineMessage) -> bool {
        let previous = match self.latest.replace((message.src, message.id)) {
            Some((src, id)) if src == message.src => Some(id),
            Some((src, id)) => {
                if self.others.len() >= SENDERS {
                    self.others.clear();
                }
                self.others.insert(src, id);
                self.others.remove(&message.src)
            }
            None => None,
        };
        previous == Some(message.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmachine_schema::{Destination, Keypair};

    #[test]
    fn only_the_copy_right_after_a_message_from_the_same_sender_repeats() {
        let (a, b, to) = (Keypair::generate().identity(), Keypair::generate().identity(), Keypair::generate().identity());
        let message = |src, id| EngineMessage::new(src, Destination::Engine(to), id, vec![]);
        let mut last = LastFrom::default();
        let seen: Vec<bool> = [(a, 1), (a, 1), (a, 2), (b, 2), (a, 2), (b, 2), (b, 3), (a, 3), (a, 2)]
            .into_iter()
            .map(|(src, id)| last.repeats(&message(src, id)))
            .collect();
        assert_eq!(seen, [false, true, false, false, true, true, false, false, false]);
    }
}
