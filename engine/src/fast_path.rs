//! The engine's side of the shared-memory rings (ring/RING.md): the outbox it writes from any
//! thread (or the direct channel to a message's destination, once granted), and the inbox and
//! the channels other engines write to it, read in turn either by a reader thread of its own
//! (the default: it sleeps on the engine's doorbell when idle and hands messages to the
//! engine's inbox queue, which, when full, stops it: the rings fill and the router holds
//! further messages back) or by the caller's own thread in `recv_blocking` (no thread hop: the
//! lowest latency).

use crate::channels::{FromChannel, InChannel, OutChannel};
use crate::connection::Shared;
use crate::ring::layout::{Kind, CHANNEL_PRODUCER_WAITING_AT, OUTBOX_PRODUCER_WAITING_AT};
use crate::ring::records;
use crate::ring::wait::{WaitMode, Waiter};
use crate::ring::{Claim, Consumer, Doorbell, Full, Handed, Producer, RingSegment, SegmentError, Ticket};
use crate::{EngineError, MessageView};
use netmachine_schema::{Destination, EngineMessage, Identity};
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

/// An engine's mapped rings, and its direct channels.
pub(crate) struct EngineRing {
    engine: Identity,
    /// The segment's device and inode: a router that made a new segment under the same name
    /// (it took the engine for gone) hands over another object.
    object: (u64, u64),
    /// Where and under which ticket the engine takes its channels (renewed at each attach).
    claim: Mutex<Claim>,
    pub segment: RingSegment,
    outbox: Mutex<Outbox>,
    inbox: Mutex<Inbox>,
    /// The router's doorbell.
    doorbell: Doorbell,
    /// This engine's own: it sleeps on it when all its inbound rings are empty.
    bell: Doorbell,
    stop: AtomicBool,
    mode: WaitMode,
}

/// Where messages leave: the outbox, or a direct channel to their destination. The channels
/// are switched to under the outbox's lock, so that a message sent before a switch is in the
/// outbox before the switch record, and one sent after goes by the channel.
struct Outbox {
    producer: Producer,
    /// At most one per slot of the channel table: a short list, looked through faster than hashed.
    channels: Vec<OutChannel>,
    /// The segment's `grants` when its channel table was last taken up.
    grants_seen: u32,
}

/// Where messages arrive: the inbox, then the channels it opened, read in turn.
struct Inbox {
    consumer: Consumer,
    last: LastFrom,
    channels: Vec<InChannel>,
    /// The source to read first next time: 0 the inbox, then each channel.
    turn: usize,
}

impl Inbox {
    fn has_data(&mut self) -> bool {
        self.consumer.has_data() || self.channels.iter_mut().any(InChannel::has_data)
    }
}

/// What `poll` found.
pub(crate) enum Polled {
    /// This many messages were handed to the handler (0: only a reply, a refusal or a skipped
    /// record was taken).
    Handed(usize),
    Empty,
    Done,
}

/// What the next inbox record was.
pub(crate) enum Taken {
    /// A message for the engine (boxed: it is handed on several times).
    Message(Box<EngineMessage>),
    /// A reply or refusal, handed to the request it belongs to, or a record skipped.
    Handled,
    /// Nothing is waiting.
    Empty,
    /// The ring is corrupt or the engine stopped: nothing more can be read.
    Done,
}

impl EngineRing {
    /// Maps the granted segment, the engine's own doorbell and the router's, as the handoff
    /// socket handed them over under `claim` (`Request::Rings`); with `reader`, starts the
    /// reader thread.
    pub fn open(
        engine: Identity,
        claim: Claim,
        handed: Vec<Handed>,
        mode: WaitMode,
        reader: Option<(Arc<Shared>, mpsc::Sender<Box<EngineMessage>>)>,
    ) -> Result<Arc<EngineRing>, SegmentError> {
        let mut handed = handed.into_iter();
        let mut next = || handed.next().expect("three objects");
        let (segment, bell, doorbell) = (next(), next(), next());
        let object = segment.object().map_err(|source| SegmentError::System { name: segment.name.clone(), source })?;
        let segment = RingSegment::handed(segment, &engine.0)?;
        let (bell, doorbell) = (Doorbell::handed(bell)?, Doorbell::handed(doorbell)?);
        let (outbox, inbox) = segment.engine_side()?;
        let ring = Arc::new(EngineRing {
            engine,
            object,
            claim: Mutex::new(claim),
            segment,
            outbox: Mutex::new(Outbox { producer: outbox, channels: Vec::new(), grants_seen: 0 }),
            inbox: Mutex::new(Inbox { consumer: inbox, last: LastFrom::default(), channels: Vec::new(), turn: 0 }),
            doorbell,
            bell,
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

    fn claim(&self) -> Claim {
        lock(&self.claim).clone()
    }

    /// Whether `segment`, handed over at a later attach, is the segment this ring maps.
    pub fn maps(&self, segment: &Handed) -> bool {
        segment.object().is_ok_and(|object| object == self.object)
    }

    /// Attached again (the router restarted, and adopted these rings): channels are taken
    /// under the new attachment's ticket.
    pub fn renew(&self, ticket: Ticket) {
        lock(&self.claim).ticket = ticket;
    }

    /// Writes `message` into its destination's direct channel, or else into the outbox and
    /// rings the router if it sleeps: `Full` if there is no room now, `TooLargeForRing` if
    /// there never will be.
    pub fn try_send(&self, message: &EngineMessage) -> Result<(), EngineError> {
        let mut outbox = lock(&self.outbox);
        if let Some(channel) = self.route(&mut outbox, message) {
            return channel.try_send(message);
        }
        let (len, max) = (records::message_length(message), outbox.producer.max_body());
        if len > max {
            return Err(EngineError::TooLargeForRing { len, max });
        }
        records::write_message(&mut outbox.producer, message).map_err(|Full| EngineError::Full)?;
        drop(outbox);
        self.doorbell.ring();
        Ok(())
    }

    /// Writes as many of `bodies` as there is room for now, each the message `template` with
    /// that body and its id counting up from `first_id`, into `template.dst`'s channel or
    /// else the outbox, under one lock and with one wake-up: how many, `Full` if none.
    pub fn try_send_bodies(&self, template: &EngineMessage, first_id: u64, bodies: &[&[u8]]) -> Result<usize, EngineError> {
        let mut outbox = lock(&self.outbox);
        if let Some(channel) = self.route(&mut outbox, template) {
            return channel.try_send_bodies(template, first_id, bodies);
        }
        // The longest body is the one checked: if it fits, all do.
        let (len, max) = (records::message_length(template) + bodies.iter().map(|body| body.len()).max().unwrap_or(0), outbox.producer.max_body());
        if len > max {
            return Err(EngineError::TooLargeForRing { len, max });
        }
        let written = records::write_bodies(&mut outbox.producer, template, first_id, bodies);
        drop(outbox);
        if written == 0 {
            return Err(EngineError::Full);
        }
        self.doorbell.ring();
        Ok(written)
    }

    /// The channel `message` leaves by now, or `None` for the outbox: channels the router
    /// granted since the last send are switched to first, and a channel the router revoked is
    /// forgotten.
    fn route<'o>(&self, outbox: &'o mut Outbox, message: &EngineMessage) -> Option<&'o mut OutChannel> {
        let grants = self.segment.grants();
        if grants != outbox.grants_seen {
            self.switch_to_granted(outbox, grants);
        }
        let Destination::Engine(dst) = message.dst else { return None };
        let at = outbox.channels.iter().position(|channel| channel.peer == dst)?;
        if outbox.channels[at].is_closed() {
            outbox.channels.swap_remove(at).leave();
            return None;
        }
        Some(&mut outbox.channels[at])
    }

    /// Like `try_send`, waiting for room as the RING.md waking protocol says, for at most
    /// `timeout` (the router may be gone and not drain the outbox, or the receiver not read
    /// its channel).
    pub fn send_blocking(&self, message: &EngineMessage, timeout: Duration) -> Result<(), EngineError> {
        self.until_sent(message, timeout, || self.try_send(message))
    }

    /// Like `try_send_bodies`, for all of `bodies`, waiting for room as `send_blocking` does.
    pub fn send_bodies_blocking(&self, template: &EngineMessage, first_id: u64, bodies: &[&[u8]], timeout: Duration) -> Result<(), EngineError> {
        let mut sent = 0;
        self.until_sent(template, timeout, || {
            while sent < bodies.len() {
                sent += self.try_send_bodies(template, first_id + sent as u64, &bodies[sent..])?;
            }
            Ok(())
        })
    }

    /// Calls `send` until it is done or fails for another reason than `Full`, waiting for room
    /// between calls where messages to `routed`'s destination leave.
    fn until_sent(&self, routed: &EngineMessage, timeout: Duration, mut send: impl FnMut() -> Result<(), EngineError>) -> Result<(), EngineError> {
        let mut sent = send();
        if !matches!(sent, Err(EngineError::Full)) {
            // The usual case, without reading the clock.
            return sent;
        }
        let deadline = Instant::now() + timeout;
        let mut waiter = Waiter::default();
        while matches!(sent, Err(EngineError::Full)) {
            if self.stopped() {
                return Err(EngineError::Closed);
            }
            // The channel (kept, to wait on its word without the outbox lock), or the outbox.
            let channel = {
                let mut outbox = lock(&self.outbox);
                self.route(&mut outbox, routed).map(|channel| channel.segment())
            };
            if Instant::now() >= deadline {
                return Err(self.stayed_full(channel.is_some(), timeout));
            }
            let word = match &channel {
                Some(channel) => channel.word(CHANNEL_PRODUCER_WAITING_AT),
                None => self.segment.word(OUTBOX_PRODUCER_WAITING_AT),
            };
            waiter.wait_a_while(self.mode, word, || {
                sent = send();
                !matches!(sent, Err(EngineError::Full)) || self.stopped()
            });
        }
        sent
    }

    /// Why a send found no room for `timeout`: a router that runs but takes nothing from the
    /// outbox is holding this engine's messages while their destinations' queues are full, and
    /// a channel that stays full is a receiver that does not read, which the socket path
    /// reports as `QueueFull` too; a router that is gone is unavailable.
    fn stayed_full(&self, on_channel: bool, timeout: Duration) -> EngineError {
        let ms = timeout.as_millis();
        let detail = match on_channel {
            false if !crate::ring::process_alive(self.segment.router_pid()) => return EngineError::RouterUnavailable(timeout),
            false => format!("the outbox stayed full for {ms} ms: the router is up but holds this engine's messages while their destinations' queues are full"),
            true => format!("the direct channel to the destination stayed full for {ms} ms: the destination does not read"),
        };
        EngineError::Refused { reason: crate::SendRefusal::QueueFull, detail }
    }

    /// Whether the router has taken everything written to the outbox (what went by channel is
    /// the receivers' to take, whoever else comes or goes).
    pub fn is_drained(&self) -> bool {
        lock(&self.outbox).producer.is_drained()
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Stops reading (and wakes whoever sleeps on the engine's doorbell), and leaves the
    /// channels it writes: their receivers let them go once read to the end.
    pub fn stop(&self) {
        for channel in &lock(&self.outbox).channels {
            channel.leave();
        }
        self.stop.store(true, Ordering::Release);
        crate::ring::futex::wake(self.bell.sleeping(), i32::MAX);
    }

    /// Waits (as the engine's wait mode says, and `waiter` found the last time) until an inbound
    /// ring may hold a record, or for at most one sleep, so that callers keep their deadlines.
    pub fn wait_for_records(&self, waiter: &mut Waiter) {
        waiter.wait_a_while(self.mode, self.bell.sleeping(), || self.stopped() || lock(&self.inbox).has_data());
    }

    /// Takes the next record of the inbox or a channel, in turn: replies and refusals go to
    /// their requests here, and channel records are acted on.
    pub fn take(&self, shared: &Shared) -> Taken {
        if self.stopped() {
            return Taken::Done;
        }
        let mut inbox = lock(&self.inbox);
        let taken = self.in_turn(&mut inbox, |inbox, source| match self.take_from(inbox, source, shared) {
            Taken::Empty => None,
            taken => Some(taken),
        });
        taken.unwrap_or(Taken::Empty)
    }

    /// Like `take`, but hands the messages to `handle`: from the next source in turn that has
    /// any, up to `limit` of the plain messages at the front of a channel, borrowed and with
    /// no allocation, then at most one record the way `take` takes it. How many messages were
    /// handed; `Handed(0)` when only a reply, refusal or skipped record was taken.
    pub fn poll<F: FnMut(MessageView<'_>)>(&self, shared: &Shared, limit: usize, handle: &mut F) -> Polled {
        if self.stopped() {
            return Polled::Done;
        }
        let mut inbox = lock(&self.inbox);
        let polled = self.in_turn(&mut inbox, |inbox, source| {
            let mut handed = match source {
                0 => 0,
                channel => inbox.channels[channel - 1].take_plain(limit, handle),
            };
            if handed < limit {
                match self.take_from(inbox, source, shared) {
                    Taken::Message(message) => {
                        handle(MessageView::of(&message));
                        handed += 1;
                    }
                    Taken::Done => return Some(Polled::Done),
                    Taken::Empty if handed == 0 => return None,
                    Taken::Empty | Taken::Handled => {}
                }
            }
            Some(Polled::Handed(handed))
        });
        polled.unwrap_or(Polled::Empty)
    }

    /// Visits the inbox (source 0) and each channel (source 1 on), starting where the last
    /// visit that found something stopped, until `visit` finds something.
    fn in_turn<R>(&self, inbox: &mut Inbox, mut visit: impl FnMut(&mut Inbox, usize) -> Option<R>) -> Option<R> {
        let sources = 1 + inbox.channels.len();
        for step in 0..sources {
            let source = (inbox.turn + step) % sources;
            if let Some(found) = visit(inbox, source) {
                inbox.turn = source + 1;
                return Some(found);
            }
        }
        None
    }

    fn take_from(&self, inbox: &mut Inbox, source: usize, shared: &Shared) -> Taken {
        match source {
            0 => self.take_from_inbox(inbox, shared),
            channel => self.take_from_channel(inbox, channel - 1, shared),
        }
    }

    fn take_from_channel(&self, inbox: &mut Inbox, at: usize, shared: &Shared) -> Taken {
        match inbox.channels[at].take() {
            FromChannel::Message(message) => shared.route_reply(message).map_or(Taken::Handled, Taken::Message),
            FromChannel::Dropped => Taken::Handled,
            FromChannel::Empty => Taken::Empty,
            FromChannel::Ended => {
                inbox.channels.remove(at);
                Taken::Handled
            }
        }
    }

    fn take_from_inbox(&self, inbox: &mut Inbox, shared: &Shared) -> Taken {
        // A revoked channel is read to the end before any inbox record seen after its closing
        // (its producer's later messages come through the router): the inbox's `tail` is
        // loaded first, then the channels' `closed`.
        if inbox.consumer.has_data() && inbox.channels.iter_mut().any(|channel| channel.is_closed() && channel.has_data()) {
            return Taken::Empty;
        }
        let read = match inbox.consumer.peek() {
            Ok(None) => return Taken::Empty,
            Ok(Some(record)) => match record.kind {
                Kind::Message => records::read_message(record.body).map(|message| Inbound::Message(Box::new(message))),
                Kind::Refusal => records::read_refusal(record.body).map(Inbound::Refusal).ok_or_else(|| "an unreadable refusal".to_string()),
                Kind::ChannelOpen => records::read_channel_open(record.body).map(Inbound::Open).ok_or_else(|| "an unreadable channel opening".to_string()),
                other => Err(format!("a {other:?} record, which the router does not write")),
            },
            Err(corrupt) => {
                tracing::error!(%corrupt, "the inbox ring is corrupt; no more messages will be read from it");
                // Said once: every later read, and the reader thread, sees a stopped ring.
                self.stop();
                return Taken::Done;
            }
        };
        inbox.consumer.consume();
        match read {
            Ok(Inbound::Message(message)) if inbox.last.repeats(&message) => Taken::Handled,
            Ok(Inbound::Message(message)) => shared.route_reply(message).map_or(Taken::Handled, Taken::Message),
            Ok(Inbound::Refusal(refusal)) => {
                shared.refused(refusal);
                Taken::Handled
            }
            Ok(Inbound::Open(open)) => {
                // Again for a channel it reads: a repeat after a router restart. A closed one of
                // that name is an earlier channel, still read to its end beside the new one.
                if !inbox.channels.iter().any(|channel| channel.name() == open.channel && !channel.is_closed()) {
                    match InChannel::open(&self.claim(), self.engine, &open) {
                        Ok(channel) => inbox.channels.push(channel),
                        Err(error) => tracing::warn!(%error, from = %open.peer, "cannot read the direct channel the router opened; its messages will not arrive"),
                    }
                }
                Taken::Handled
            }
            Err(problem) => {
                tracing::warn!(%problem, "skipped an unreadable inbox record");
                Taken::Handled
            }
        }
    }

    /// Takes up the channels the router added to the engine's table: maps each and tells the
    /// router, in the outbox, that messages to its peer go by it from here on. A channel that
    /// cannot be used is left (messages to its peer keep going through the router); one whose
    /// switch finds the outbox full is taken up at a later send.
    fn switch_to_granted(&self, outbox: &mut Outbox, grants: u32) {
        let mut switched = false;
        let mut done = true;
        for peer in self.segment.granted().into_iter().map(Identity) {
            if outbox.channels.iter().any(|channel| channel.peer == peer && !channel.is_closed()) {
                continue;
            }
            let channel = match OutChannel::open(&self.claim(), self.engine, peer) {
                Ok(channel) => channel,
                Err(error) => {
                    tracing::warn!(%error, to = %peer, "cannot use a direct channel the router granted; messages go through the router");
                    continue;
                }
            };
            if records::write_channel_switch(&mut outbox.producer, &peer).is_err() {
                done = false;
                break;
            }
            outbox.channels.retain(|channel| channel.peer != peer);
            outbox.channels.push(channel);
            switched = true;
        }
        // A table the router changed while it was read is read again at the next send.
        if done && self.segment.grants() == grants {
            outbox.grants_seen = grants;
        }
        if switched {
            self.doorbell.ring();
        }
    }

    /// The reader thread.
    fn read(&self, shared: &Shared, incoming: &mpsc::Sender<Box<EngineMessage>>) {
        let mut waiter = Waiter::without_deadline();
        loop {
            match self.take(shared) {
                // Queued at once while there is room (blocking_send enters a runtime each time).
                Taken::Message(message) => match incoming.try_send(message) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(message)) => {
                        if incoming.blocking_send(message).is_err() {
                            return;
                        }
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                },
                Taken::Handled => {}
                Taken::Empty => self.wait_for_records(&mut waiter),
                Taken::Done => return,
            }
        }
    }
}

/// An inbox record, read.
enum Inbound {
    Message(Box<EngineMessage>),
    Refusal(records::Refusal),
    Open(records::ChannelOpen),
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
