//! A publisher node's bounded history of one topic's events, kept so that subscriber nodes can
//! repair what they missed: the newest events, within a count, a byte total and an age. What
//! falls out is gone for good; a reader that asks for it is told it is missing.

use super::Millis;
use netmachine_schema::EngineMessage;
use std::collections::VecDeque;

/// How much history a topic keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    pub events: usize,
    pub bytes: usize,
    pub age: Millis,
}

/// An event kept, with when it was published.
#[derive(Debug, Clone)]
pub struct Kept {
    pub seq: u64,
    pub at: Millis,
    pub message: EngineMessage,
}

impl Kept {
    /// What the event counts against a window or the history's bytes.
    pub fn size(&self) -> usize {
        event_size(&self.message)
    }
}

/// What one event counts against a window or a history: its body and a fixed overhead.
pub fn event_size(message: &EngineMessage) -> usize {
    message.body.len() + 128
}

/// One step of a [`History::read`].
#[derive(Debug)]
pub enum Read<'a> {
    Event(&'a Kept),
    Missing { from: u64, to: u64 },
}

/// A read of a range of the history.
pub struct Reading<'a> {
    history: &'a History,
    next: u64,
    to: u64,
}

impl<'a> Iterator for Reading<'a> {
    type Item = Read<'a>;

    fn next(&mut self) -> Option<Read<'a>> {
        if self.next > self.to {
            return None;
        }
        let from = self.next;
        match self.history.at_or_after(from) {
            Some(kept) if kept.seq == from => {
                self.next += 1;
                Some(Read::Event(kept))
            }
            Some(kept) if kept.seq <= self.to => {
                self.next = kept.seq;
                Some(Read::Missing { from, to: kept.seq - 1 })
            }
            _ => {
                self.next = self.to + 1;
                Some(Read::Missing { from, to: self.to })
            }
        }
    }
}

/// The kept events, in ascending seq (not always contiguous: an event the service never saw
/// leaves a hole).
#[derive(Debug)]
pub struct History {
    limits: HistoryLimits,
    kept: VecDeque<Kept>,
    bytes: usize,
}

impl History {
    pub fn new(limits: HistoryLimits) -> Self {
        History { limits, kept: VecDeque::new(), bytes: 0 }
    }

    /// Keeps the event of `seq` (above every seq kept), dropping the oldest past the limits.
    pub fn push(&mut self, seq: u64, message: EngineMessage, now: Millis) {
        let kept = Kept { seq, at: now, message };
        self.bytes += kept.size();
        self.kept.push_back(kept);
        while self.kept.len() > self.limits.events || (self.bytes > self.limits.bytes && self.kept.len() > 1) {
            self.drop_oldest();
        }
    }

    /// Takes in events older than every one kept (`older`, ascending: what the router kept of
    /// the topic for a service that restarted), the newest first, while the limits allow.
    pub fn fill_older(&mut self, older: Vec<EngineMessage>, now: Millis) {
        let first = self.kept.front().map_or(u64::MAX, |k| k.seq);
        for message in older.into_iter().rev().filter(|m| m.id < first) {
            let kept = Kept { seq: message.id, at: now, message };
            if self.kept.len() >= self.limits.events || self.bytes + kept.size() > self.limits.bytes {
                return;
            }
            self.bytes += kept.size();
            self.kept.push_front(kept);
        }
    }

    /// Drops what is older than the age limit.
    pub fn expire(&mut self, now: Millis) {
        while self.kept.front().is_some_and(|k| k.at + self.limits.age <= now) {
            self.drop_oldest();
        }
    }

    /// When the oldest event kept expires.
    pub fn next_expiry(&self) -> Option<Millis> {
        self.kept.front().map(|k| k.at + self.limits.age)
    }

    fn drop_oldest(&mut self) {
        if let Some(kept) = self.kept.pop_front() {
            self.bytes -= kept.size();
        }
    }

    /// The first event kept whose seq is `seq` or later.
    pub fn at_or_after(&self, seq: u64) -> Option<&Kept> {
        let index = self.kept.partition_point(|k| k.seq < seq);
        self.kept.get(index)
    }

    /// What the history holds of `from..=to`, in order: each event kept, and each range of
    /// seqs it does not hold.
    pub fn read(&self, from: u64, to: u64) -> Reading<'_> {
        Reading { history: self, next: from, to }
    }

    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmachine_schema::{Destination, Keypair};

    fn event(seq: u64, len: usize) -> EngineMessage {
        let id = Keypair::generate().identity();
        EngineMessage::new(id, Destination::Topic(id), seq, vec![0; len])
    }

    #[test]
    fn the_history_keeps_the_newest_events_within_count_bytes_and_age() {
        let mut history = History::new(HistoryLimits { events: 3, bytes: 1 << 20, age: 1_000 });
        for seq in 1..=5 {
            history.push(seq, event(seq, 10), seq * 100);
        }
        assert_eq!((history.len(), history.at_or_after(0).unwrap().seq), (3, 3), "by count");
        assert_eq!(history.at_or_after(4).unwrap().seq, 4);
        assert!(history.at_or_after(6).is_none());
        history.expire(1_350);
        assert_eq!(history.at_or_after(0).unwrap().seq, 4, "by age: the event at 300 ms is gone at 1350 ms");

        let mut history = History::new(HistoryLimits { events: 100, bytes: 3 * (100 + 128), age: 1_000 });
        for seq in [1, 2, 4, 5] {
            history.push(seq, event(seq, 100), 0);
        }
        assert_eq!((history.len(), history.bytes()), (3, 3 * 228), "by bytes");
        assert_eq!(history.at_or_after(3).unwrap().seq, 4, "a hole is skipped to the next event kept");
    }

    #[test]
    fn older_events_kept_elsewhere_fill_the_history_in_front_within_its_limits() {
        let mut history = History::new(HistoryLimits { events: 4, bytes: 1 << 20, age: 1_000 });
        history.push(7, event(7, 10), 0);
        // What the router kept: some the history holds already, some older.
        history.fill_older((3..=8).map(|seq| event(seq, 10)).collect(), 0);
        let seqs: Vec<u64> = history.read(1, 8).filter_map(|r| match r { Read::Event(k) => Some(k.seq), _ => None }).collect();
        assert_eq!(seqs, vec![4, 5, 6, 7], "the newest older ones, up to the count, in order");
    }
}
