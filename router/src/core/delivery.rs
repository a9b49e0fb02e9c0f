//! What one delivery to an attached engine carries: the messages waiting in its queue, in
//! order, up to a batch, less those that expired while they waited (dropped and counted as
//! expired). Every message taken off the queue returns a credit to the core, delivered or not.

use netmachine_schema::EngineMessage;

/// Messages in one delivery at most (and, on the ring path, between two returns of credits).
pub const DELIVERY_BATCH: usize = 256;

/// A delivery cut from an engine's queue.
#[derive(Debug, Default)]
pub struct Cut {
    pub batch: Vec<EngineMessage>,
    /// Messages taken off the queue: the batch and the expired.
    pub taken: usize,
    pub expired: u64,
}

/// Cuts a delivery that starts with `first`, taking more from `waiting` while it has some and
/// the batch has room.
pub fn cut(first: EngineMessage, mut waiting: impl FnMut() -> Option<EngineMessage>, now: u64) -> Cut {
    let mut cut = Cut::default();
    let mut next = Some(first);
    while let Some(message) = next {
        cut.taken += 1;
        if message.is_expired(now) {
            cut.expired += 1;
        } else {
            cut.batch.push(message);
        }
        next = if cut.batch.len() < DELIVERY_BATCH { waiting() } else { None };
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmachine_schema::{Destination, Keypair};

    fn message(n: u64, expiry: Option<u64>) -> EngineMessage {
        let id = Keypair::generate().identity();
        let mut m = EngineMessage::new(id, Destination::Engine(id), n, vec![]);
        m.expiry = expiry;
        m
    }

    #[test]
    fn a_delivery_takes_what_waits_in_order_and_drops_the_expired() {
        let mut queue: std::collections::VecDeque<EngineMessage> = (1..5).map(|n| message(n, (n % 2 == 0).then_some(10))).collect();
        let cut = cut(message(0, None), || queue.pop_front(), 20);
        assert_eq!(cut.taken, 5);
        assert_eq!(cut.expired, 2);
        assert_eq!(cut.batch.iter().map(|m| m.id).collect::<Vec<_>>(), vec![0, 1, 3]);
        assert!(queue.is_empty());
    }

    #[test]
    fn a_delivery_stops_at_a_batch_and_leaves_the_rest_waiting() {
        let mut queue: std::collections::VecDeque<EngineMessage> = (1..1000).map(|n| message(n, None)).collect();
        let cut = cut(message(0, None), || queue.pop_front(), 0);
        assert_eq!((cut.batch.len(), cut.taken, cut.expired), (DELIVERY_BATCH, DELIVERY_BATCH, 0));
        assert_eq!(queue.front().map(|m| m.id), Some(DELIVERY_BATCH as u64));
    }
}
