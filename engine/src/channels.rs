//! The engine's direct channels (RING.md, "Direct channels"): rings of their own to and from
//! other engines on the node, which the router grants so that a steady conversation skips it.
//! Writing, the engine is the router's stand-in: it checks what the router would (the body's
//! length) and wakes the receiver. Reading, it checks what the router would have checked for
//! it: that the record is from the channel's producer, not expired, and, when signed, signed
//! by it; anything else is dropped and counted in the channel, for the router's status.

use crate::ring::layout::{Kind, CHANNEL_DROPPED_AT, CHANNEL_PRODUCER_WAITING_AT, CHANNEL_READ_AT, CHANNEL_WRITTEN_AT};
use crate::ring::records;
use crate::ring::wait::wake_if_sleeping;
use crate::ring::{ChannelSegment, Claim, Consumer, Doorbell, Full, Producer, Request, SegmentError};
use crate::{EngineError, MessageView};
use netmachine_schema::time::now_ms;
use netmachine_schema::{EngineMessage, Identity};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Records a receiver takes between two full checks for a sender waiting for room (a fence
/// each); between them it looks at the sender's word without one, and it always checks fully
/// when it finds the channel empty (RING.md, "Waking").
const FULL_CHECK_EVERY: u32 = 64;

/// A channel this engine writes to another engine (under the engine's outbox lock).
pub(crate) struct OutChannel {
    /// The receiving engine.
    pub peer: Identity,
    segment: Arc<ChannelSegment>,
    producer: Producer,
    /// The receiving engine's doorbell.
    bell: Doorbell,
}

impl OutChannel {
    /// Takes the channel the router granted from `engine` to `peer`, and the receiver's
    /// doorbell, from the handoff socket, and maps them.
    pub fn open(claim: &Claim, engine: Identity, peer: Identity) -> Result<OutChannel, SegmentError> {
        let mut handed = claim.take(Request::ChannelTo(peer.0))?.into_iter();
        let (channel, bell) = (handed.next().expect("two objects"), handed.next().expect("two objects"));
        let segment = ChannelSegment::handed(channel, &engine.0, &peer.0)?;
        let bell = Doorbell::handed(bell)?;
        let producer = segment.producer_side()?;
        Ok(OutChannel { peer, segment: Arc::new(segment), producer, bell })
    }

    /// The router revoked it: messages go through the router again.
    pub fn is_closed(&self) -> bool {
        self.segment.is_closed()
    }

    /// Says so in the channel: the receiver can let it go once it has read it to the end.
    pub fn leave(&self) {
        self.segment.leave();
    }

    /// Writes `message` and wakes the receiver if it sleeps: `Full` if there is no room now.
    pub fn try_send(&mut self, message: &EngineMessage) -> Result<(), EngineError> {
        self.admit(message.body.len(), records::message_length(message))?;
        records::write_message(&mut self.producer, message).map_err(|Full| EngineError::Full)?;
        self.written(1);
        Ok(())
    }

    /// Writes as many of `bodies` as there is room for now, each the message `template` with
    /// that body, as runs (`records::write_runs`), and wakes the receiver once: how many, or
    /// `Full` if none. The longest body is the one checked: if it passes, all do.
    pub fn try_send_bodies(&mut self, template: &EngineMessage, first_id: u64, bodies: &[&[u8]]) -> Result<usize, EngineError> {
        let longest = bodies.iter().map(|body| body.len()).max().unwrap_or(0);
        self.admit(longest, records::run_length(template, longest))?;
        match records::write_runs(&mut self.producer, template, first_id, bodies) {
            0 => Err(EngineError::Full),
            written => {
                self.written(written);
                Ok(written)
            }
        }
    }

    /// What the router would check of a message of a `body`-byte body in a `record`-byte
    /// record: the node's limit, and the channel's room for it ever.
    fn admit(&self, body: usize, record: usize) -> Result<(), EngineError> {
        let max_body = self.segment.max_body();
        if body > max_body {
            return Err(EngineError::Refused { reason: crate::SendRefusal::OverLimit, detail: format!("a body of {body} bytes is over the node's limit of {max_body}") });
        }
        let max = self.producer.max_body();
        if record > max {
            return Err(EngineError::TooLargeForRing { len: record, max });
        }
        Ok(())
    }

    /// Counts `written` records and wakes the receiver if it sleeps.
    fn written(&self, written: usize) {
        self.segment.count(CHANNEL_WRITTEN_AT, written as u64);
        wake_if_sleeping(self.bell.sleeping());
    }

    /// The channel, to wait on its `producer_waiting` for room without the outbox lock.
    pub fn segment(&self) -> Arc<ChannelSegment> {
        self.segment.clone()
    }

}

/// A channel another engine writes to this one.
pub(crate) struct InChannel {
    segment: ChannelSegment,
    consumer: Consumer,
    producer: Identity,
    /// This engine: what the messages must be for.
    engine: Identity,
    /// Records taken since the last full check for a waiting sender.
    unchecked: u32,
    /// Reads the plain messages from `producer` to `engine`.
    plain: records::PlainReader,
    /// Messages of the run at the front already taken: a run is consumed once all of its
    /// messages are.
    run_taken: usize,
}

/// What the next record of a channel was.
pub(crate) enum FromChannel {
    Message(Box<EngineMessage>),
    /// A record that was dropped (and counted).
    Dropped,
    Empty,
    /// Closed by the router, left by its producer and read to the end, or corrupt: nothing more
    /// comes from it.
    Ended,
}

impl InChannel {
    /// Takes the channel the router opened to this engine from the handoff socket, and maps it.
    pub fn open(claim: &Claim, engine: Identity, open: &records::ChannelOpen) -> Result<InChannel, SegmentError> {
        let channel = claim.take(Request::ChannelFrom(open.peer.0))?.remove(0);
        let segment = ChannelSegment::handed(channel, &open.peer.0, &engine.0)?;
        let consumer = segment.consumer_side()?;
        Ok(InChannel { segment, consumer, producer: open.peer, engine, unchecked: 0, plain: records::PlainReader::new(&open.peer, &engine), run_taken: 0 })
    }

    pub fn name(&self) -> &str {
        &self.segment.name
    }

    /// Whether a record may be waiting; the room of records taken and held is given back when
    /// none is, so that a receiver about to sleep holds none from its sender.
    pub fn has_data(&mut self) -> bool {
        let has_data = self.consumer.has_data();
        if !has_data {
            self.consumer.release();
        }
        has_data
    }

    /// Revoked by the router (what is left in it is still read, before anything newer).
    pub fn is_closed(&self) -> bool {
        self.segment.is_closed()
    }

    /// Takes the next record.
    pub fn take(&mut self) -> FromChannel {
        // Finished (closed, its producer gone from it) before the ring is found empty: nothing
        // more can come.
        let finished = self.segment.is_finished();
        // The message taken or why it was dropped, and how many messages that was.
        let (checked, messages) = match self.consumer.peek() {
            Ok(None) => {
                self.consumer.release();
                self.wake_sender(true);
                return if finished { FromChannel::Ended } else { FromChannel::Empty };
            }
            Ok(Some(record)) if record.kind == Kind::Message => (
                records::read_view(record.body).and_then(|view| {
                    check(self.producer, self.engine, &view)?;
                    let message = view.to_message();
                    match message.sig.is_some() && !message.signature_holds() {
                        true => Err("its signature is not its sender's".to_string()),
                        false => Ok(Box::new(message)),
                    }
                }),
                1,
            ),
            Ok(Some(record)) if record.kind == Kind::Run => match take_from_run(record.body, self.producer, self.engine, self.run_taken) {
                Ok((message, false)) => {
                    // The record stays until the run's last message is taken.
                    self.run_taken += 1;
                    self.segment.count(CHANNEL_READ_AT, 1);
                    return FromChannel::Message(message);
                }
                Ok((message, true)) => (Ok(message), 1),
                Err((problem, dropped)) => (Err(problem), dropped),
            },
            Ok(Some(record)) => (Err(format!("a {:?} record, which no engine writes to a channel", record.kind)), 1),
            Err(corrupt) => {
                tracing::error!(channel = %self.segment.name, %corrupt, "a direct channel is corrupt; nothing more is read from it");
                return FromChannel::Ended;
            }
        };
        // Counted before the record is released, so that a drained channel's counts are whole.
        self.segment.count(if checked.is_ok() { CHANNEL_READ_AT } else { CHANNEL_DROPPED_AT }, messages as u64);
        // Its room goes back with the next run's, once `FULL_CHECK_EVERY` are held, or when the
        // channel is found empty.
        self.run_taken = 0;
        self.consumer.consume_held();
        self.unchecked += 1;
        if self.unchecked >= FULL_CHECK_EVERY {
            self.consumer.release();
            self.wake_sender(true);
        }
        match checked {
            Ok(message) => FromChannel::Message(message),
            Err(problem) => {
                tracing::warn!(channel = %self.segment.name, from = %self.producer, %problem, "dropped a message from a direct channel");
                FromChannel::Dropped
            }
        }
    }

    /// Wakes the sender if it waits for room: with `full`, after a fence (as RING.md says);
    /// else only if its word already shows it waiting.
    fn wake_sender(&mut self, full: bool) {
        let waiting = self.segment.word(CHANNEL_PRODUCER_WAITING_AT);
        if full {
            self.unchecked = 0;
            wake_if_sleeping(waiting);
        } else if waiting.load(Ordering::Relaxed) == 1 {
            wake_if_sleeping(waiting);
        }
    }

    /// Hands `handle` the messages at the front of the channel, up to `limit` of them, for as
    /// long as they are plain ([`MessageView::is_plain`]) and from the channel's producer to
    /// this engine: each borrowed from the consumer's copy of its record, with no allocation.
    /// A run's messages are handed one by one; a run the limit cuts stays at the front, its
    /// rest for the next call. Each is counted in `read` once handed on (a run's, together,
    /// unless a handler panics); their room goes back to the sender once, at the end of the
    /// call (if a handler panics, with the next call or record taken). How many; whatever
    /// stopped it (another record, a check that fails, the channel's end) is left to
    /// [`InChannel::take`].
    pub fn take_plain<F: FnMut(MessageView<'_>)>(&mut self, limit: usize, handle: &mut F) -> usize {
        let mut taken = 0;
        while taken < limit {
            let Ok(Some(record)) = self.consumer.peek() else { break };
            match record.kind {
                Kind::Message => {
                    let Some(view) = self.plain.read(record.body) else { break };
                    handle(view);
                    self.segment.count(CHANNEL_READ_AT, 1);
                    taken += 1;
                }
                Kind::Run => {
                    let Ok(run) = records::read_run(record.body) else { break };
                    if check(self.producer, self.engine, run.first()).is_err() {
                        break;
                    }
                    let from = self.run_taken;
                    for body in run.bodies().skip(from).take(limit - taken) {
                        handle(run.message(body));
                        self.run_taken += 1;
                    }
                    // Counted once for the part of the run handed on, not per message.
                    self.segment.count(CHANNEL_READ_AT, (self.run_taken - from) as u64);
                    taken += self.run_taken - from;
                    if self.run_taken < run.count() {
                        break;
                    }
                    self.run_taken = 0;
                }
                _ => break,
            }
            self.consumer.consume_held();
        }
        if taken > 0 {
            self.consumer.release();
            self.unchecked += taken as u32;
            self.wake_sender(self.unchecked >= FULL_CHECK_EVERY);
        }
        taken
    }
}

/// The `taken`-th message of the run `body`, and whether it is the run's last; or why the
/// rest of the run is dropped, and how many messages that is (one for a run that cannot be
/// read, whose count means nothing).
fn take_from_run(body: &[u8], producer: Identity, engine: Identity, taken: usize) -> Result<(Box<EngineMessage>, bool), (String, usize)> {
    let run = records::read_run(body).map_err(|problem| (problem, 1))?;
    check(producer, engine, run.first()).map_err(|problem| (problem, run.count().saturating_sub(taken).max(1)))?;
    let Some(message) = run.messages().nth(taken) else { return Err((format!("a run of {} has no message {taken}", run.count()), 1)) };
    Ok((Box::new(message.to_message()), taken + 1 >= run.count()))
}

/// What the router checks of a message from an engine on its rings, but its signature (which
/// the caller checks on the message it then owns): from the channel's `producer`, for its
/// consumer `engine`.
fn check(producer: Identity, engine: Identity, message: &MessageView) -> Result<(), String> {
    if message.src != producer {
        return Err(format!("its source is {}, not the channel's producer", message.src));
    }
    if message.dst != netmachine_schema::Destination::Engine(engine) {
        return Err("it is not for this engine".into());
    }
    if message.expiry.is_some_and(|expiry| expiry <= now_ms()) {
        return Err("it expired".into());
    }
    if message.stamp.is_some() {
        return Err("a delivery stamp, which only the router writes".into());
    }
    Ok(())
}

