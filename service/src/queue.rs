//! A bounded queue of things waiting to be sent (a peer's frames, a node's outgoing messages).
//! A full queue makes senders wait, up to a limit; items whose expiry passes while they wait
//! are dropped and counted by whoever takes them out.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};

/// Something that may expire while it waits.
pub trait Expiring {
    /// Milliseconds since the epoch after which it is worthless; `None`: never.
    fn expiry(&self) -> Option<u64>;

    fn expired(&self, now_ms: u64) -> bool {
        self.expiry().is_some_and(|at| at <= now_ms)
    }
}

/// A bounded, single-threaded queue with backpressure and expiry.
pub struct ExpiringQueue<T> {
    frames: RefCell<VecDeque<T>>,
    room: Semaphore,
    ready: Notify,
    /// Items put back beyond the capacity; their pops return no room to senders.
    over: Cell<usize>,
}

impl<T: Expiring> ExpiringQueue<T> {
    pub fn new(capacity: usize) -> Self {
        ExpiringQueue {
            frames: RefCell::new(VecDeque::new()),
            room: Semaphore::new(capacity),
            ready: Notify::new(),
            over: Cell::new(0),
        }
    }

    /// Queues `frame`, waiting up to `wait` for room; gives it back if there was none.
    pub async fn push(&self, frame: T, wait: Duration) -> Result<(), T> {
        match tokio::time::timeout(wait, self.room.acquire()).await {
            Ok(Ok(permit)) => permit.forget(),
            _ => return Err(frame),
        }
        self.frames.borrow_mut().push_back(frame);
        self.ready.notify_one();
        Ok(())
    }

    /// The next item that has not expired, and how many expired ones were dropped first.
    pub fn pop_live(&self, now_ms: u64) -> (Option<T>, u64) {
        self.pop_live_if(now_ms, |_| true)
    }

    /// Like [`ExpiringQueue::pop_live`], but leaves the next live item queued unless `take`
    /// accepts it.
    pub fn pop_live_if(&self, now_ms: u64, take: impl FnOnce(&T) -> bool) -> (Option<T>, u64) {
        let mut expired = 0;
        let mut frames = self.frames.borrow_mut();
        while frames.front().is_some_and(|f| f.expired(now_ms)) {
            frames.pop_front();
            self.release(1);
            expired += 1;
        }
        if !frames.front().is_some_and(take) {
            return (None, expired);
        }
        let frame = frames.pop_front();
        self.release(1);
        (frame, expired)
    }

    /// Puts an item that could not be sent back at the front. It always goes back, even into
    /// a full queue (which then holds one more than its capacity until it drains).
    pub fn put_back(&self, frame: T) {
        match self.room.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(_) => self.over.set(self.over.get() + 1),
        }
        self.frames.borrow_mut().push_front(frame);
        self.ready.notify_one();
    }

    /// Returns room for `n` removed items to senders (after settling put-backs over capacity).
    fn release(&self, n: usize) {
        let settled = n.min(self.over.get());
        self.over.set(self.over.get() - settled);
        self.room.add_permits(n - settled);
    }

    /// Drops every expired frame; returns how many.
    pub fn drop_expired(&self, now_ms: u64) -> u64 {
        let mut frames = self.frames.borrow_mut();
        let before = frames.len();
        frames.retain(|f| !f.expired(now_ms));
        let dropped = before - frames.len();
        self.release(dropped);
        dropped as u64
    }

    /// The earliest expiry of a queued item.
    pub fn next_expiry(&self) -> Option<u64> {
        self.frames.borrow().iter().filter_map(Expiring::expiry).min()
    }

    /// Resolves once an item may be waiting (spurious wake-ups are possible).
    pub async fn ready(&self) {
        if self.frames.borrow().is_empty() {
            self.ready.notified().await;
        }
    }

    /// Resolves at the next push (or put-back), or at once if one came since the last wait.
    pub async fn pushed(&self) {
        self.ready.notified().await;
    }

    pub fn len(&self) -> usize {
        self.frames.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.borrow().is_empty()
    }

    /// Drops everything queued; returns how many.
    pub fn clear(&self) -> u64 {
        let dropped = self.frames.borrow_mut().drain(..).count();
        self.release(dropped);
        dropped as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Queued {
        bytes: Vec<u8>,
        expiry: u64,
    }

    impl Expiring for Queued {
        fn expiry(&self) -> Option<u64> {
            (self.expiry != 0).then_some(self.expiry)
        }
    }

    fn frame(n: u8, expiry: u64) -> Queued {
        Queued { bytes: vec![n], expiry }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_queue_makes_senders_wait_then_refuses() {
        let queue = ExpiringQueue::new(2);
        assert!(queue.push(frame(1, 0), Duration::ZERO).await.is_ok());
        assert!(queue.push(frame(2, 0), Duration::ZERO).await.is_ok());
        let refused = queue.push(frame(3, 0), Duration::from_millis(20)).await.unwrap_err();
        assert_eq!(refused.bytes, [3]);
        assert_eq!(queue.pop_live(0).0.unwrap().bytes, [1]);
        assert!(queue.push(frame(3, 0), Duration::ZERO).await.is_ok());
        assert_eq!(queue.len(), 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_put_back_item_is_never_lost_even_when_a_sender_took_its_room() {
        let queue = ExpiringQueue::new(1);
        queue.push(frame(1, 0), Duration::ZERO).await.unwrap();
        let waiting = queue.push(frame(2, 0), Duration::from_secs(5));
        let popping = async {
            tokio::task::yield_now().await;
            let (first, _) = queue.pop_live(0);
            tokio::task::yield_now().await;
            first
        };
        let (pushed, first) = tokio::join!(waiting, popping);
        assert!(pushed.is_ok(), "the waiting sender took the freed room");
        queue.put_back(first.unwrap());
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.pop_live(0).0.unwrap().bytes, [1]);
        assert_eq!(queue.pop_live(0).0.unwrap().bytes, [2]);
        // The overshoot is settled: the queue holds its capacity again, no more.
        queue.push(frame(3, 0), Duration::ZERO).await.unwrap();
        assert!(queue.push(frame(4, 0), Duration::ZERO).await.is_err());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn pop_live_if_leaves_an_item_it_does_not_take() {
        let queue = ExpiringQueue::new(4);
        queue.push(frame(1, 10), Duration::ZERO).await.unwrap();
        queue.push(frame(2, 0), Duration::ZERO).await.unwrap();
        let (none, expired) = queue.pop_live_if(20, |f| f.bytes == [9]);
        assert!(none.is_none());
        assert_eq!((expired, queue.len()), (1, 1));
        assert_eq!(queue.pop_live_if(20, |f| f.bytes == [2]).0.unwrap().bytes, [2]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn expired_frames_are_skipped_counted_and_make_room() {
        let queue = ExpiringQueue::new(3);
        for (n, expiry) in [(1, 10), (2, 0), (3, 30)] {
            queue.push(frame(n, expiry), Duration::ZERO).await.unwrap();
        }
        assert_eq!(queue.next_expiry(), Some(10));
        let (next, expired) = queue.pop_live(20);
        assert_eq!((next.unwrap().bytes, expired), (vec![2], 1));
        assert_eq!(queue.drop_expired(40), 1);
        assert!(queue.is_empty());
        for n in 0..3 {
            queue.push(frame(n, 0), Duration::ZERO).await.unwrap();
        }
        assert_eq!(queue.clear(), 3);
        queue.push(frame(9, 0), Duration::ZERO).await.unwrap();
    }
}
