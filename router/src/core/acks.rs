//! Acknowledged delivery between nodes, without I/O. Each router numbers the frames it sends
//! another node within its session and keeps each one (`Sending`) until the receiving router
//! acknowledges it. The shell logs each frame before transport gets it, so a router killed with
//! SIGKILL goes on in the same session where it was (`Sending::resumed`); a session changes only
//! when that log is gone, and frames carry the run (when their router started) as well. The receiver (`Receiving`) takes
//! frames strictly in order: one it has taken already is a duplicate, dropped; one past a gap is
//! dropped too, to come again in order. It acknowledges a frame once every message in it is
//! placed or counted as dropped, cumulatively with ranges for frames settled out of order, and
//! says which it has taken in, so that a frame whose messages wait for room is not sent again.
//! After a lost connection, a restarted transport or a restarted receiver (a later run), the
//! sender goes back to its first unacknowledged frame and sends everything kept again, in order. A frame the
//! receiver has not taken in after `PROBE_AFTER` (its router did not take it from transport, or
//! the connection is silently gone) is sent again alone, as a probe, backing off up to
//! `PROBE_AFTER_MAX`; once the receiver answers, everything after it goes again.

use super::outbox::Outgoing;
use super::router::Millis;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// How long a frame the receiver has not taken in may go unanswered before it is probed.
pub const PROBE_AFTER: Millis = 1_000;

/// The longest wait between probes of a receiver that does not answer.
pub const PROBE_AFTER_MAX: Millis = 30_000;

/// Ranges carried in one acknowledgement at most; frames settled beyond them are acknowledged
/// by a later one.
pub const MAX_RANGES: usize = 64;

/// Frames taken in but not settled, per node, at most: a frame past that is dropped, to come
/// again once earlier ones settle.
const MAX_UNSETTLED: u64 = 1 << 16;

/// Which frames of a node's session a router accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ack {
    pub session: u64,
    /// Every frame up to this one.
    pub through: u64,
    /// And these, beyond `through` (first, last).
    pub ranges: Vec<(u64, u64)>,
    /// The highest frame taken in.
    pub received: u64,
}

/// The numbering of a frame, and the acknowledgement it carries back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    /// The sender's numbering; 0: not numbered (a frame from a node of an earlier version).
    pub session: u64,
    /// When the sender's router started: a later run took in nothing of what was sent before.
    pub run: u64,
    /// 0: the frame carries only an acknowledgement.
    pub seq: u64,
    /// The sender keeps frames from this number on: every earlier one was acknowledged.
    pub kept_from: u64,
    pub ack: Option<Ack>,
}

/// A frame sent and not yet acknowledged.
#[derive(Debug)]
struct Kept {
    batch: Arc<Vec<Outgoing>>,
    bytes: usize,
    sent_at: Millis,
    /// Transport took it at least once.
    queued: bool,
}

/// A frame to send again, as it was first sent: each message keeps its place in it, which its
/// receiver stamps it with (a message that expired meanwhile is dropped and counted there).
#[derive(Debug)]
pub struct Resend {
    pub seq: u64,
    pub batch: Arc<Vec<Outgoing>>,
}

/// What this router sent one node and keeps until it is acknowledged.
#[derive(Debug)]
pub struct Sending {
    next: u64,
    kept: BTreeMap<u64, Kept>,
    bytes: usize,
    /// After a loss: the frames kept from this number on go again before anything new...
    resend_from: Option<u64>,
    /// ...up to this one (a probe), or all of them.
    resend_through: Option<u64>,
    /// A probe went: once the receiver answers, what follows it goes again.
    probing: bool,
    /// How long an unanswered frame waits before the next probe.
    probe_after: Millis,
    /// The highest frame the receiver said it took in.
    received: u64,
    /// When the receiver last showed progress, or frames were last sent again.
    progress_at: Millis,
}

impl Sending {
    pub fn new(now: Millis) -> Self {
        Sending::resumed(1, Vec::new(), now)
    }

    /// What an earlier run of this router numbered up to `next` and logged, kept again: every
    /// frame goes again, in order, before anything new.
    pub fn resumed(next: u64, frames: Vec<(u64, Arc<Vec<Outgoing>>, usize)>, now: Millis) -> Self {
        let bytes = frames.iter().map(|(_, _, bytes)| bytes).sum();
        let kept: BTreeMap<u64, Kept> = frames.into_iter().map(|(seq, batch, bytes)| (seq, Kept { batch, bytes, sent_at: now, queued: false })).collect();
        let next = next.max(kept.keys().next_back().map_or(1, |last| last + 1));
        let mut sending = Sending {
            next,
            kept,
            bytes,
            resend_from: None,
            resend_through: None,
            probing: false,
            probe_after: PROBE_AFTER,
            received: 0,
            progress_at: now,
        };
        sending.go_back(now);
        sending
    }

    /// The number the next new frame gets.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Bytes kept (estimated as the outbox cuts batches).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The first frame kept; every earlier one was acknowledged.
    pub fn kept_from(&self) -> u64 {
        self.kept.keys().next().copied().unwrap_or(self.next)
    }

    /// Keeps a new frame carrying `batch` of `bytes`: its number.
    pub fn keep(&mut self, batch: Arc<Vec<Outgoing>>, bytes: usize, now: Millis) -> u64 {
        let seq = self.next;
        self.next += 1;
        if self.kept.is_empty() {
            self.progress_at = now;
        }
        self.kept.insert(seq, Kept { batch, bytes, sent_at: now, queued: false });
        self.bytes += bytes;
        seq
    }

    /// Sends everything kept again, from the first, before anything new.
    pub fn go_back(&mut self, now: Millis) {
        self.resend_from = (!self.kept.is_empty()).then(|| self.kept_from());
        self.resend_through = None;
        self.probing = false;
        self.progress_at = now;
    }

    /// The first frame kept that the receiver has not taken in.
    fn first_unreceived(&self) -> Option<u64> {
        self.kept.range(self.received + 1..).next().map(|(seq, _)| *seq)
    }

    /// Whether frames wait to be sent again.
    pub fn resending(&self) -> bool {
        self.resend_from.is_some()
    }

    /// The next kept frame to send again.
    pub fn next_resend(&mut self, now: Millis) -> Option<Resend> {
        let from = self.resend_from?;
        let next = self.kept.range_mut(from..).next().filter(|(seq, _)| self.resend_through.is_none_or(|last| **seq <= last));
        let Some((&seq, kept)) = next else {
            self.resend_from = None;
            return None;
        };
        self.resend_from = Some(seq + 1);
        kept.sent_at = now;
        Some(Resend { seq, batch: kept.batch.clone() })
    }

    /// Takes in what the receiver acknowledged: whether it freed room.
    pub fn acknowledged(&mut self, ack: &Ack, now: Millis) -> bool {
        let before = self.bytes;
        let answered = ack.received > self.received;
        self.received = self.received.max(ack.received);
        let later = self.kept.split_off(&ack.through.saturating_add(1));
        let through = std::mem::replace(&mut self.kept, later);
        self.bytes -= through.values().map(|kept| kept.bytes).sum::<usize>();
        for &(first, last) in &ack.ranges {
            let acked: Vec<u64> = self.kept.range(first..=last.max(first)).map(|(seq, _)| *seq).collect();
            for seq in acked {
                self.bytes -= self.kept.remove(&seq).map_or(0, |kept| kept.bytes);
            }
        }
        if answered || self.bytes < before {
            self.progress_at = now;
            self.probe_after = PROBE_AFTER;
            if std::mem::take(&mut self.probing) {
                // The probe was taken in: what followed it was dropped past a gap, or lost.
                self.resend_from = self.first_unreceived();
                self.resend_through = None;
            }
        }
        self.bytes < before
    }

    /// Transport took frame `seq`: whether for the first time.
    pub fn queued(&mut self, seq: u64) -> bool {
        self.kept.get_mut(&seq).is_some_and(|kept| !std::mem::replace(&mut kept.queued, true))
    }

    /// Forgets frame `seq`, which transport refused: its messages.
    pub fn refused(&mut self, seq: u64) -> u64 {
        let Some(kept) = self.kept.remove(&seq) else { return 0 };
        self.bytes -= kept.bytes;
        messages(&kept.batch)
    }

    /// When the first frame the receiver has not taken in is to be probed: it went without
    /// an answer for `probe_after`.
    pub fn probe_at(&self) -> Option<Millis> {
        if self.resending() {
            return None;
        }
        let (_, kept) = self.kept.range(self.received + 1..).next()?;
        Some(kept.sent_at.max(self.progress_at) + self.probe_after)
    }

    /// Sends the first frame the receiver has not taken in again, alone, if its `probe_at` has
    /// come: whether it does.
    pub fn probe(&mut self, now: Millis) -> bool {
        let Some(seq) = self.first_unreceived().filter(|_| self.probe_at().is_some_and(|at| at <= now)) else { return false };
        self.resend_from = Some(seq);
        self.resend_through = Some(seq);
        self.probing = true;
        self.progress_at = now;
        self.probe_after = (self.probe_after * 2).min(PROBE_AFTER_MAX);
        true
    }
}

/// The messages in a batch.
pub fn messages(batch: &[Outgoing]) -> u64 {
    batch.iter().filter(|item| matches!(item, Outgoing::Message(_))).count() as u64
}

/// What to do with a frame that arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Take it in: the next in order.
    Take,
    /// Taken already: drop it (and acknowledge again).
    Duplicate,
    /// An earlier frame is missing: drop it; it comes again in order.
    Gap,
    /// Not numbered (an acknowledgement alone, or a frame from an earlier run of the sender
    /// or an earlier version): take it in without ordering.
    Unnumbered,
}

/// What this router took in from one node's current session.
#[derive(Debug, Default)]
pub struct Receiving {
    session: u64,
    /// The sender's latest run seen.
    run: u64,
    /// The highest frame taken in; all before it were.
    taken: u64,
    /// Every frame up to this one settled.
    through: u64,
    /// Frames settled beyond `through`.
    settled: BTreeSet<u64>,
    /// Since when an acknowledgement is owed.
    owed_since: Option<Millis>,
}

impl Receiving {
    /// What an earlier run of this router took in from a node and settled, up to `through` of
    /// `session`: frames up to it are duplicates.
    pub fn resumed(session: u64, through: u64) -> Self {
        Receiving { session, taken: through, through, ..Receiving::default() }
    }

    /// Frames settled so far: every one up to this, of this session.
    pub fn through(&self) -> (u64, u64) {
        (self.session, self.through)
    }

    /// A frame numbered by `header` arrived: whether to take it. `restarted` is set when it
    /// comes from a later run of the sender than the frames before (which took in nothing this
    /// router sent the earlier one), or numbers frames afresh.
    pub fn arrive(&mut self, header: &Header, now: Millis) -> (Arrival, bool) {
        if header.session == 0 || header.seq == 0 || header.session < self.session {
            return (Arrival::Unnumbered, false);
        }
        let restarted = header.session > self.session || header.run > self.run;
        if header.session > self.session {
            *self = Receiving { session: header.session, ..Receiving::default() };
        }
        self.run = self.run.max(header.run);
        // The sender had every frame before `kept_from` acknowledged.
        let acknowledged = header.kept_from.saturating_sub(1);
        if acknowledged > self.taken {
            self.taken = acknowledged;
        }
        if acknowledged > self.through {
            self.through = acknowledged;
            self.settled = self.settled.split_off(&(acknowledged + 1));
        }
        let arrival = if header.seq <= self.taken {
            Arrival::Duplicate
        } else if header.seq > self.taken + 1 || self.taken - self.through >= MAX_UNSETTLED {
            Arrival::Gap
        } else {
            self.taken = header.seq;
            Arrival::Take
        };
        if arrival != Arrival::Take {
            self.owe(now);
        }
        (arrival, restarted)
    }

    /// Every message of frame `seq` of `session` is placed or counted as dropped.
    pub fn settled(&mut self, session: u64, seq: u64, now: Millis) {
        if session != self.session || seq <= self.through {
            return;
        }
        self.settled.insert(seq);
        while self.settled.remove(&(self.through + 1)) {
            self.through += 1;
        }
        self.owe(now);
    }

    /// An acknowledgement is owed (again: the one sent was not taken by transport).
    pub fn owe(&mut self, now: Millis) {
        self.owed_since.get_or_insert(now);
    }

    /// Nothing taken in waits to settle or to be acknowledged: forgetting this costs nothing
    /// (the sender's `kept_from` says where to start again).
    pub fn is_idle(&self) -> bool {
        self.taken == self.through && self.owed_since.is_none()
    }

    /// Since when an acknowledgement is owed.
    pub fn owed_since(&self) -> Option<Millis> {
        self.owed_since
    }

    /// The acknowledgement to send now (none owed any more).
    pub fn take_ack(&mut self) -> Option<Ack> {
        if self.session == 0 {
            return None;
        }
        self.owed_since = None;
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for &seq in &self.settled {
            let full = ranges.len() == MAX_RANGES;
            match ranges.last_mut() {
                Some((_, last)) if *last + 1 == seq => *last = seq,
                _ if full => break,
                _ => ranges.push((seq, seq)),
            }
        }
        Some(Ack { session: self.session, through: self.through, ranges, received: self.taken })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmachine_schema::{Destination, EngineMessage, Keypair};

    fn batch(expiries: &[Option<u64>]) -> Arc<Vec<Outgoing>> {
        let id = Keypair::generate().identity();
        let message = |expiry| {
            let mut m = EngineMessage::new(id, Destination::Node(id), 1, vec![0; 8]);
            m.expiry = expiry;
            Outgoing::Message(m)
        };
        Arc::new(expiries.iter().map(|e| message(*e)).collect())
    }

    fn header(session: u64, seq: u64, kept_from: u64) -> Header {
        Header { session, run: 1, seq, kept_from, ack: None }
    }

    #[test]
    fn frames_are_taken_once_and_in_order_and_acknowledged_as_they_settle() {
        let mut receiving = Receiving::default();
        assert_eq!(receiving.arrive(&header(7, 1, 1), 0), (Arrival::Take, true));
        assert_eq!(receiving.arrive(&header(7, 3, 1), 0).0, Arrival::Gap, "frame 2 is missing");
        assert_eq!(receiving.arrive(&header(7, 2, 1), 0).0, Arrival::Take);
        assert_eq!(receiving.arrive(&header(7, 1, 1), 0).0, Arrival::Duplicate);
        assert_eq!(receiving.arrive(&header(7, 3, 1), 0).0, Arrival::Take);
        receiving.settled(7, 2, 5);
        assert_eq!(receiving.owed_since(), Some(0), "owed since the gap");
        assert_eq!(receiving.take_ack(), Some(Ack { session: 7, through: 0, ranges: vec![(2, 2)], received: 3 }));
        assert_eq!(receiving.owed_since(), None);
        receiving.settled(7, 1, 6);
        receiving.settled(6, 3, 6);
        assert_eq!(receiving.take_ack().unwrap().through, 2, "frame 3's settling was for an earlier session");
        receiving.settled(7, 3, 7);
        assert_eq!(receiving.take_ack(), Some(Ack { session: 7, through: 3, ranges: vec![], received: 3 }));
    }

    #[test]
    fn a_restarted_receiver_starts_where_the_sender_keeps_and_a_restarted_sender_starts_afresh() {
        let mut receiving = Receiving::default();
        // This router restarted: the sender had frames up to 40 acknowledged by its last run.
        assert_eq!(receiving.arrive(&header(7, 45, 41), 0).0, Arrival::Gap);
        assert_eq!(receiving.arrive(&header(7, 41, 41), 0).0, Arrival::Take);
        assert_eq!(receiving.take_ack().map(|a| (a.through, a.received)), Some((40, 41)));
        // The sender restarted: its new session counts from 1 again; its old frames still in
        // some queue are taken without ordering.
        assert_eq!(receiving.arrive(&header(9, 1, 1), 0), (Arrival::Take, true));
        assert_eq!(receiving.arrive(&header(7, 42, 41), 0).0, Arrival::Unnumbered);
        assert_eq!(receiving.arrive(&header(0, 0, 0), 0).0, Arrival::Unnumbered);
    }

    #[test]
    fn a_sender_resumed_from_its_log_goes_on_numbering_and_its_receiver_takes_nothing_twice() {
        let mut receiving = Receiving::default();
        for seq in 1..=3 {
            assert_eq!(receiving.arrive(&header(7, seq, 1), 0).0, Arrival::Take);
            receiving.settled(7, seq, 0);
        }
        // The sender was killed before frames 2 and 3 were acknowledged; its next run resumes
        // them from its log, in the same session, and the receiver sees a later run.
        let mut sending = Sending::resumed(4, vec![(2, batch(&[None]), 10), (3, batch(&[None]), 10)], 5);
        assert_eq!((sending.kept_from(), sending.next(), sending.bytes()), (2, 4, 20));
        let resent: Vec<u64> = std::iter::from_fn(|| sending.next_resend(5)).map(|r| r.seq).collect();
        assert_eq!(resent, vec![2, 3]);
        let again = |seq| Header { run: 2, ..header(7, seq, 2) };
        assert_eq!(receiving.arrive(&again(2), 6), (Arrival::Duplicate, true), "the receiver learns of the new run and sends its own frames again");
        assert_eq!(receiving.arrive(&again(3), 6), (Arrival::Duplicate, false));
        assert_eq!(sending.keep(batch(&[None]), 10, 7), 4, "new frames go on from the logged numbering");
        assert_eq!(receiving.arrive(&again(4), 7).0, Arrival::Take);
        // A receiver resumed from what it recorded settled takes nothing up to it again.
        let mut resumed = Receiving::resumed(7, 3);
        assert_eq!(resumed.arrive(&header(7, 3, 2), 8).0, Arrival::Duplicate);
        assert_eq!(resumed.arrive(&header(7, 4, 2), 8).0, Arrival::Take);
    }

    #[test]
    fn acknowledgements_carry_at_most_their_ranges() {
        let mut receiving = Receiving::default();
        for seq in 1..=300 {
            assert_eq!(receiving.arrive(&header(1, seq, 1), 0).0, Arrival::Take);
        }
        for seq in (2..=300).step_by(2) {
            receiving.settled(1, seq, 0);
        }
        let ack = receiving.take_ack().unwrap();
        assert_eq!((ack.through, ack.ranges.len(), ack.ranges[0], ack.ranges[63]), (0, MAX_RANGES, (2, 2), (128, 128)));
    }

    #[test]
    fn the_sender_keeps_frames_until_acknowledged_and_resends_them_in_order_as_first_sent() {
        let mut sending = Sending::new(0);
        let sizes = [100, 200, 300];
        for (i, bytes) in sizes.iter().enumerate() {
            let expiry = if i == 1 { Some(50) } else { None };
            assert_eq!(sending.keep(batch(&[expiry, None]), *bytes, 10), i as u64 + 1);
        }
        assert_eq!((sending.bytes(), sending.kept_from()), (600, 1));
        assert!(sending.acknowledged(&Ack { session: 1, through: 0, ranges: vec![(2, 2)], received: 3 }, 20));
        assert_eq!((sending.bytes(), sending.kept_from()), (400, 1));
        assert!(!sending.acknowledged(&Ack { session: 1, through: 0, ranges: vec![(2, 2)], received: 3 }, 20), "nothing more");
        sending.go_back(30);
        let resent: Vec<(u64, usize)> = std::iter::from_fn(|| sending.next_resend(60)).map(|r| (r.seq, r.batch.len())).collect();
        assert_eq!(resent, vec![(1, 2), (3, 2)]);
        assert!(!sending.resending());
        sending.keep(batch(&[Some(50), Some(70)]), 10, 60);
        sending.go_back(61);
        sending.next_resend(61);
        sending.next_resend(61);
        let last = sending.next_resend(61).unwrap();
        assert_eq!((last.seq, last.batch.len()), (4, 2), "the message expired at 50 goes too, keeping the places of those after it");
        assert!(sending.acknowledged(&Ack { session: 1, through: 4, ranges: vec![], received: 4 }, 62));
        assert_eq!(sending.bytes(), 0);
        assert_eq!(sending.kept_from(), 5);
    }

    #[test]
    fn a_frame_the_receiver_never_took_in_is_probed_with_backoff_and_what_follows_goes_once_it_answers() {
        let mut sending = Sending::new(0);
        for _ in 0..3 {
            sending.keep(batch(&[None]), 10, 0);
        }
        assert_eq!(sending.probe_at(), Some(PROBE_AFTER));
        assert!(!sending.probe(PROBE_AFTER - 1));
        sending.acknowledged(&Ack { session: 1, through: 0, ranges: vec![], received: 1 }, 500);
        assert_eq!(sending.probe_at(), Some(500 + PROBE_AFTER), "frame 1 was taken in: its messages wait for room");
        // Frames 2 and 3 go unanswered: frame 2 alone is probed, then again after twice as long.
        assert!(sending.probe(1500));
        let probed: Vec<u64> = std::iter::from_fn(|| sending.next_resend(1500)).map(|r| r.seq).collect();
        assert_eq!(probed, vec![2]);
        assert_eq!(sending.probe_at(), Some(1500 + 2 * PROBE_AFTER));
        assert!(!sending.probe(1500 + 2 * PROBE_AFTER - 1) && sending.probe(1500 + 2 * PROBE_AFTER));
        sending.next_resend(3500);
        // The receiver takes the probe in: frame 3 goes again after it.
        sending.acknowledged(&Ack { session: 1, through: 0, ranges: vec![], received: 2 }, 3600);
        let rest: Vec<u64> = std::iter::from_fn(|| sending.next_resend(3600)).map(|r| r.seq).collect();
        assert_eq!(rest, vec![3]);
        assert_eq!(sending.probe_at(), Some(3600 + PROBE_AFTER), "the backoff starts over");
        assert_eq!(sending.refused(3), 1);
        assert_eq!(sending.probe_at(), None, "everything left was taken in");
    }
}
