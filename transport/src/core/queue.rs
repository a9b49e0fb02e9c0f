//! A peer's frames waiting to be sent, as the pool keeps them: in order, bounded (a full queue
//! refuses the frame, and the shell makes its sender wait for room), dropping what expires
//! unsent. A frame whose write failed goes back to the front even past the bound: none is lost
//! to a failed write. `outgoing` takes a frame in as the router hands it over.

use super::pool::Millis;
use std::collections::VecDeque;

/// Something that may expire while it waits.
pub trait Expiring {
    /// When it becomes worthless, on the pool's clock; `None`: never.
    fn expiry(&self) -> Option<Millis>;

    fn expired(&self, now: Millis) -> bool {
        self.expiry().is_some_and(|at| at <= now)
    }
}

/// A frame for another node, as the transport queues it.
#[derive(Debug, PartialEq, Eq)]
pub struct Queued {
    pub bytes: Vec<u8>,
    /// On the pool's clock; `None`: never expires.
    pub expiry: Option<Millis>,
}

impl Expiring for Queued {
    fn expiry(&self) -> Option<Millis> {
        self.expiry
    }
}

/// Why the transport refuses a frame outright.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the frame is {len} bytes, over the limit of {max}")]
pub struct OverLimit {
    pub len: usize,
    pub max: usize,
}

/// A frame handed over for sending, as the pool will queue it, and how long its sender may
/// wait for room in a full queue.
#[derive(Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub frame: Queued,
    pub wait: Millis,
}

/// Takes a frame of at most `max` bytes whose `expiry` is in milliseconds since the epoch (0:
/// never), `wall` being that clock now and `now` the pool's: its expiry moves onto the pool's
/// clock, and its sender may wait `send_wait`, or less if the frame expires first.
pub fn outgoing(bytes: Vec<u8>, expiry: u64, max: usize, send_wait: Millis, wall: u64, now: Millis) -> Result<Outgoing, OverLimit> {
    if bytes.len() > max {
        return Err(OverLimit { len: bytes.len(), max });
    }
    let left = (expiry != 0).then(|| expiry.saturating_sub(wall));
    let wait = send_wait.min(left.unwrap_or(Millis::MAX));
    Ok(Outgoing { frame: Queued { bytes, expiry: left.map(|left| now + left) }, wait })
}

/// One peer's queue.
#[derive(Debug)]
pub struct FrameQueue<F> {
    frames: VecDeque<F>,
    capacity: usize,
}

impl<F: Expiring> FrameQueue<F> {
    pub fn new(capacity: usize) -> Self {
        FrameQueue { frames: VecDeque::new(), capacity }
    }

    /// Queues `frame` behind the others, or gives it back if the queue is full.
    pub fn push(&mut self, frame: F) -> Result<(), F> {
        if self.is_full() {
            return Err(frame);
        }
        self.frames.push_back(frame);
        Ok(())
    }

    /// The next frame that has not expired, and how many expired ones were dropped first.
    pub fn pop_live(&mut self, now: Millis) -> (Option<F>, u64) {
        let mut expired = 0;
        while self.frames.front().is_some_and(|f| f.expired(now)) {
            self.frames.pop_front();
            expired += 1;
        }
        (self.frames.pop_front(), expired)
    }

    /// Puts a frame that could not be written back at the front, even into a full queue
    /// (which then holds more than its capacity until it drains).
    pub fn put_back(&mut self, frame: F) {
        self.frames.push_front(frame);
    }

    /// Drops every expired frame; how many.
    pub fn drop_expired(&mut self, now: Millis) -> u64 {
        let before = self.frames.len();
        self.frames.retain(|f| !f.expired(now));
        (before - self.frames.len()) as u64
    }

    /// The earliest expiry of a queued frame.
    pub fn next_expiry(&self) -> Option<Millis> {
        self.frames.iter().filter_map(Expiring::expiry).min()
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_full(&self) -> bool {
        self.frames.len() >= self.capacity
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Takes everything queued, in order.
    pub fn take_all(&mut self) -> VecDeque<F> {
        std::mem::take(&mut self.frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u8, expiry: Option<Millis>) -> Queued {
        Queued { bytes: vec![n], expiry }
    }

    #[test]
    fn an_outgoing_frame_is_checked_and_its_expiry_moves_onto_the_pools_clock() {
        assert_eq!(outgoing(vec![0; 9], 0, 8, 500, 0, 0), Err(OverLimit { len: 9, max: 8 }));
        let never = outgoing(vec![0; 8], 0, 8, 500, 1_000_000, 70).unwrap();
        assert_eq!((never.frame.expiry, never.wait), (None, 500));
        let soon = outgoing(vec![1], 1_000_200, 8, 500, 1_000_000, 70).unwrap();
        assert_eq!((soon.frame.expiry, soon.wait), (Some(270), 200));
        let gone = outgoing(vec![1], 999_000, 8, 500, 1_000_000, 70).unwrap();
        assert_eq!((gone.frame.expiry, gone.wait), (Some(70), 0));
    }

    #[test]
    fn a_full_queue_refuses_until_a_frame_leaves() {
        let mut queue = FrameQueue::new(2);
        queue.push(frame(1, None)).unwrap();
        queue.push(frame(2, None)).unwrap();
        assert_eq!(queue.push(frame(3, None)).unwrap_err().bytes, [3]);
        assert_eq!(queue.pop_live(0).0.unwrap().bytes, [1]);
        queue.push(frame(3, None)).unwrap();
        assert!(queue.is_full());
    }

    #[test]
    fn a_frame_put_back_goes_first_even_into_a_full_queue() {
        let mut queue = FrameQueue::new(1);
        queue.push(frame(1, None)).unwrap();
        let first = queue.pop_live(0).0.unwrap();
        queue.push(frame(2, None)).unwrap();
        queue.put_back(first);
        assert_eq!(queue.pop_live(0).0.unwrap().bytes, [1]);
        assert_eq!(queue.pop_live(0).0.unwrap().bytes, [2]);
        assert!(queue.is_empty());
    }

    #[test]
    fn expired_frames_are_skipped_counted_and_make_room() {
        let mut queue = FrameQueue::new(3);
        for (n, expiry) in [(1, Some(10)), (2, None), (3, Some(30))] {
            queue.push(frame(n, expiry)).unwrap();
        }
        assert_eq!(queue.next_expiry(), Some(10));
        let (next, expired) = queue.pop_live(20);
        assert_eq!((next.unwrap().bytes, expired), (vec![2], 1));
        assert_eq!(queue.drop_expired(40), 1);
        assert!(queue.is_empty() && queue.next_expiry().is_none());
    }
}
