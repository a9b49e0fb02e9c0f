//! What waits to go to one other node: engine messages and announcements of this node's
//! engines and topics, in order. A batch is cut from the front when the previous frame has been
//! handed to transport, so batches grow with load and latency stays low when idle; once cut, a
//! batch is kept until acknowledged (`acks`).

use netmachine_schema::{EngineLocation, EngineMessage, Identity, TopicAdvert};
use std::collections::VecDeque;

/// Which engines are attached to a node, as it tells other nodes: all of them (`full`) or what
/// changed. Each attached engine comes with the location it signed; each topic created there
/// for other nodes too (scope Any) with the advert its topic key signed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Announcement {
    pub full: bool,
    pub attached: Vec<EngineLocation>,
    pub detached: Vec<Identity>,
    pub topics: Vec<TopicAdvert>,
}

/// An item of a batch to another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    Message(EngineMessage),
    Engines(Announcement),
}

impl Outgoing {
    fn expired(&self, now: u64) -> bool {
        matches!(self, Outgoing::Message(m) if m.is_expired(now))
    }

    /// A generous estimate of its encoded size, for cutting batches to the frame limit.
    pub fn size(&self) -> usize {
        match self {
            Outgoing::Message(m) => m.body.len() + m.protocol.len() + 256,
            Outgoing::Engines(a) => a.attached.len() * 160 + a.detached.len() * 40 + a.topics.len() * 200 + 64,
        }
    }
}

/// Items in a batch at most, whatever their size.
const MAX_BATCH: usize = 1024;

/// One node's outbox.
#[derive(Debug, Default)]
pub struct Outbox {
    items: VecDeque<Outgoing>,
    /// Messages in `items` (announcements do not count against the node's queue).
    messages: usize,
    /// A frame is with transport, numbered so (0: an acknowledgement alone): the next waits
    /// for its answer.
    pub handed: Option<u64>,
    /// Transport was unavailable: try again at this time.
    pub retry_at: Option<u64>,
}

impl Outbox {
    pub fn messages(&self) -> usize {
        self.messages
    }

    /// Queues an announcement, unless one already waits: then what waits becomes
    /// `whole()` (every engine attached and topic created now, `full`), where the first one was, so that at most
    /// one announcement waits, however fast engines come and go.
    pub fn announce(&mut self, announcement: Announcement, whole: impl FnOnce() -> Announcement) {
        let is_announcement = |item: &Outgoing| matches!(item, Outgoing::Engines(_));
        let Some(first) = self.items.iter().position(is_announcement) else {
            return self.items.push_back(Outgoing::Engines(announcement));
        };
        self.items[first] = Outgoing::Engines(whole());
        let mut at = 0;
        self.items.retain(|item| {
            at += 1;
            at - 1 == first || !is_announcement(item)
        });
    }

    pub fn push(&mut self, item: Outgoing) {
        self.messages += usize::from(matches!(item, Outgoing::Message(_)));
        self.items.push_back(item);
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Cuts a batch of at most `budget` estimated bytes (at least one item) from the front;
    /// with the number of expired messages dropped on the way.
    pub fn take_batch(&mut self, now: u64, budget: usize) -> (Vec<Outgoing>, u64) {
        let (mut batch, mut size, mut expired) = (Vec::new(), 0, 0);
        while batch.len() < MAX_BATCH {
            let Some(front) = self.items.front() else { break };
            if !front.expired(now) && !batch.is_empty() && size + front.size() > budget {
                break;
            }
            let item = self.items.pop_front().expect("a front item");
            if matches!(item, Outgoing::Message(_)) {
                self.messages -= 1;
            }
            if item.expired(now) {
                expired += 1;
                continue;
            }
            size += item.size();
            batch.push(item);
        }
        (batch, expired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmachine_schema::{Destination, Keypair};

    fn message(body: usize, expiry: Option<u64>) -> Outgoing {
        let id = Keypair::generate().identity();
        let mut m = EngineMessage::new(id, Destination::Node(id), 1, vec![0; body]);
        m.expiry = expiry;
        Outgoing::Message(m)
    }

    #[test]
    fn batches_are_cut_to_the_budget_and_expired_messages_dropped() {
        let mut outbox = Outbox::default();
        outbox.push(message(1000, Some(5)));
        outbox.push(message(1000, None));
        outbox.push(Outgoing::Engines(Announcement::default()));
        outbox.push(message(1000, None));
        assert_eq!(outbox.messages(), 3);
        let (batch, expired) = outbox.take_batch(10, 2000);
        assert_eq!((batch.len(), expired), (2, 1), "the expired one is dropped, the third message waits");
        assert_eq!(outbox.messages(), 1);
        // One item over the budget still goes, alone.
        let (alone, _) = outbox.take_batch(10, 10);
        assert_eq!(alone.len(), 1);
        assert!(outbox.is_empty());
        assert_eq!(outbox.take_batch(10, 2000).0, vec![], "nothing is left");
    }

    #[test]
    fn at_most_one_announcement_waits_however_often_engines_come_and_go() {
        let mut outbox = Outbox::default();
        let engine = Keypair::generate().identity();
        let whole = || Announcement { full: true, detached: vec![engine], ..Announcement::default() };
        outbox.announce(Announcement { detached: vec![engine], ..Announcement::default() }, whole);
        outbox.push(message(10, None));
        for _ in 0..1000 {
            outbox.announce(Announcement { detached: vec![engine], ..Announcement::default() }, whole);
        }
        let (batch, _) = outbox.take_batch(0, 1 << 20);
        assert_eq!(batch.len(), 2, "{batch:?}");
        assert_eq!(batch[0], Outgoing::Engines(whole()), "the first announcement's place, with the whole list");
        assert!(matches!(batch[1], Outgoing::Message(_)));
    }
}
