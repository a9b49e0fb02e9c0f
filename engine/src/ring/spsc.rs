//! One single-producer, single-consumer byte ring over shared memory: records of length, kind
//! and body, padded to 8 bytes, never wrapping (a padding record fills the end instead), with
//! `head` and `tail` counters that only grow (RING.md, "Records" and "Memory ordering").
//!
//! This is the only module with unsafe code for the ring's data: every access goes through
//! `RingMemory`, whose constructor's contract is what makes the rest sound.

use super::layout::{record_size, Kind, RECORD_HEADER};
use std::sync::atomic::{AtomicU64, Ordering};

/// One ring's shared memory: its data area and its two counters.
#[derive(Clone, Copy)]
pub struct RingMemory {
    data: *mut u8,
    capacity: u64,
    head: *const AtomicU64,
    tail: *const AtomicU64,
}

// SAFETY: the pointers refer to shared memory that every side accesses only through atomics
// (the counters) or under the ring protocol (the data), from whichever thread holds the
// Producer or the Consumer.
unsafe impl Send for RingMemory {}

impl RingMemory {
    /// # Safety
    /// `data` must point to `capacity` bytes and `head`/`tail` to 8-aligned u64s, all valid for
    /// as long as any Producer or Consumer made from this exists; `capacity` must be a power of
    /// two and a multiple of 8; there must be at most one Producer and one Consumer per ring.
    pub unsafe fn new(data: *mut u8, capacity: usize, head: *mut u64, tail: *mut u64) -> Self {
        RingMemory { data, capacity: capacity as u64, head: head as *const AtomicU64, tail: tail as *const AtomicU64 }
    }

    fn head(&self) -> &AtomicU64 {
        // SAFETY: valid and aligned by the constructor's contract; AtomicU64 has u64's layout.
        unsafe { &*self.head }
    }

    fn tail(&self) -> &AtomicU64 {
        // SAFETY: as for `head`.
        unsafe { &*self.tail }
    }

    fn offset(&self, position: u64) -> usize {
        (position & (self.capacity - 1)) as usize
    }
}

/// The ring has no room for the record now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// The ring holds something no conforming producer writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt ring at position {position}: {problem}")]
pub struct Corrupt {
    pub position: u64,
    pub problem: String,
}

/// The writing side of a ring.
pub struct Producer {
    memory: RingMemory,
    tail: u64,
    cached_head: u64,
}

impl Producer {
    /// Takes up writing where the ring's `tail` stands (a fresh ring, or one being adopted).
    pub fn new(memory: RingMemory) -> Self {
        let tail = memory.tail().load(Ordering::Acquire);
        let cached_head = memory.head().load(Ordering::Acquire);
        Producer { memory, tail, cached_head }
    }

    /// The largest body this ring can ever take.
    pub fn max_body(&self) -> usize {
        self.memory.capacity as usize / 2 - RECORD_HEADER
    }

    /// Whether `needed` bytes fit. A `head` past `tail`, which only a broken or hostile
    /// consumer writes, wraps to a huge distance and so reads as no room, never as room.
    fn room(&mut self, needed: u64) -> bool {
        let (tail, capacity) = (self.tail, self.memory.capacity);
        let fits = |head: u64| tail.wrapping_sub(head).saturating_add(needed) <= capacity;
        if fits(self.cached_head) {
            return true;
        }
        self.cached_head = self.memory.head().load(Ordering::Acquire);
        fits(self.cached_head)
    }

    /// The padding before, and the size of, a record of a `length`-byte body written now.
    fn placement(&self, length: usize) -> (u64, u64) {
        let size = record_size(length) as u64;
        let offset = self.memory.offset(self.tail) as u64;
        let to_end = self.memory.capacity - offset;
        (if size > to_end { to_end } else { 0 }, size)
    }

    /// Whether a record of a `length`-byte body fits now (the consumer only makes more room).
    pub fn fits(&mut self, length: usize) -> bool {
        let (padding, size) = self.placement(length);
        length <= self.max_body() && self.room(padding + size)
    }

    /// Writes one record whose `length`-byte body `fill` writes, and publishes it; `Full` if
    /// there is no room now. Bodies over [`Producer::max_body`] never fit.
    pub fn try_write(&mut self, kind: Kind, length: usize, fill: impl FnOnce(&mut [u8])) -> Result<(), Full> {
        if length > self.max_body() {
            return Err(Full);
        }
        let (padding, size) = self.placement(length);
        if !self.room(padding + size) {
            return Err(Full);
        }
        if padding > 0 {
            self.write_header(self.memory.offset(self.tail), (padding as usize - RECORD_HEADER) as u32, Kind::Padding);
            self.tail += padding;
        }
        let at = self.memory.offset(self.tail);
        self.write_header(at, length as u32, kind);
        // SAFETY: `at + size <= capacity` (a record never crosses the end: padding was written
        // otherwise), and the bytes between tail and head + capacity belong to the producer
        // until `tail` is published.
        let body = unsafe { std::slice::from_raw_parts_mut(self.memory.data.add(at + RECORD_HEADER), length) };
        fill(body);
        self.tail += size;
        self.memory.tail().store(self.tail, Ordering::Release);
        Ok(())
    }

    fn write_header(&mut self, at: usize, length: u32, kind: Kind) {
        let mut header = [0u8; RECORD_HEADER];
        header[..4].copy_from_slice(&length.to_le_bytes());
        header[4..].copy_from_slice(&(kind as u32).to_le_bytes());
        // SAFETY: `at + 8 <= capacity` since `at` is a multiple of 8 below the capacity, and the
        // bytes are the producer's until `tail` is published.
        unsafe { std::ptr::copy_nonoverlapping(header.as_ptr(), self.memory.data.add(at), RECORD_HEADER) };
    }

    /// How many message records the consumer has not taken yet (what is lost with a consumer
    /// that is gone). The walk stops at anything a consumer could have scribbled over.
    pub fn unread_messages(&self) -> u64 {
        let mut at = self.memory.head().load(Ordering::Acquire);
        let mut unread = 0;
        while at < self.tail && self.tail - at <= self.memory.capacity {
            let offset = self.memory.offset(at);
            let mut header = [0u8; RECORD_HEADER];
            // SAFETY: `offset + 8 <= capacity` (a multiple of 8 below it); the bytes are plain
            // shared memory, read as a copy.
            unsafe { std::ptr::copy_nonoverlapping(self.memory.data.add(offset), header.as_mut_ptr(), RECORD_HEADER) };
            let length = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
            let size = record_size(length) as u64;
            if offset as u64 + size > self.memory.capacity {
                break;
            }
            if Kind::from_u32(u32::from_le_bytes(header[4..].try_into().expect("4 bytes"))) == Some(Kind::Message) {
                unread += 1;
            }
            at += size;
        }
        unread
    }

    /// Whether the consumer has taken everything written.
    pub fn is_drained(&self) -> bool {
        self.memory.head().load(Ordering::Acquire) == self.tail
    }
}

/// A record read in place.
pub struct Record<'a> {
    pub kind: Kind,
    pub body: &'a [u8],
}

/// The reading side of a ring.
pub struct Consumer {
    memory: RingMemory,
    head: u64,
    cached_tail: u64,
    /// The size of the record the last `peek` returned: `consume` advances by it rather than
    /// read the length again from memory the producer shares.
    peeked: u64,
}

impl Consumer {
    /// Takes up reading where the ring's `head` stands (a fresh ring, or one being adopted).
    pub fn new(memory: RingMemory) -> Self {
        let head = memory.head().load(Ordering::Acquire);
        Consumer { memory, head, cached_tail: head, peeked: 0 }
    }

    /// Whether a record may be waiting.
    pub fn has_data(&mut self) -> bool {
        if self.head != self.cached_tail {
            return true;
        }
        self.cached_tail = self.memory.tail().load(Ordering::Acquire);
        self.head != self.cached_tail
    }

    /// The next record, read in place and left in the ring until [`Consumer::consume`];
    /// padding is skipped. `Ok(None)` when the ring is empty.
    pub fn peek(&mut self) -> Result<Option<Record<'_>>, Corrupt> {
        loop {
            if !self.has_data() {
                return Ok(None);
            }
            let available = self.cached_tail.wrapping_sub(self.head);
            if available > self.memory.capacity || available < RECORD_HEADER as u64 {
                return Err(self.corrupt(format!("tail is {} bytes past head", available)));
            }
            let at = self.memory.offset(self.head);
            let mut header = [0u8; RECORD_HEADER];
            // SAFETY: `at + 8 <= capacity` (`at` is a multiple of 8 below it) and the bytes
            // between head and tail were published by the producer.
            unsafe { std::ptr::copy_nonoverlapping(self.memory.data.add(at), header.as_mut_ptr(), RECORD_HEADER) };
            let length = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
            let kind = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
            let size = record_size(length) as u64;
            if at as u64 + size > self.memory.capacity {
                return Err(self.corrupt(format!("a {length}-byte record runs past the end of the ring")));
            }
            if size > available {
                return Err(self.corrupt(format!("a {length}-byte record runs past tail")));
            }
            let Some(kind) = Kind::from_u32(kind) else {
                return Err(self.corrupt(format!("unknown record kind {kind}")));
            };
            if kind == Kind::Padding {
                self.advance(size);
                continue;
            }
            // SAFETY: checked above to lie within the data area and before tail; the producer
            // does not touch published bytes until head passes them.
            let body = unsafe { std::slice::from_raw_parts(self.memory.data.add(at + RECORD_HEADER), length) };
            self.peeked = size;
            return Ok(Some(Record { kind, body }));
        }
    }

    /// Releases the record returned by the last [`Consumer::peek`] to the producer.
    pub fn consume(&mut self) {
        let size = std::mem::take(&mut self.peeked);
        self.advance(size);
    }

    fn advance(&mut self, size: u64) {
        self.head += size;
        self.memory.head().store(self.head, Ordering::Release);
    }

    fn corrupt(&self, problem: String) -> Corrupt {
        Corrupt { position: self.head, problem }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Ring memory on the heap, for tests: the counters and the data in one aligned buffer.
    pub struct HeapRing {
        words: Vec<u64>,
        capacity: usize,
    }

    impl HeapRing {
        pub fn new(capacity: usize) -> Self {
            HeapRing { words: vec![0; 2 + capacity / 8], capacity }
        }

        pub fn memory(&mut self) -> RingMemory {
            let base = self.words.as_mut_ptr();
            // SAFETY: the buffer holds two counters then `capacity` bytes, all aligned, and
            // outlives the test's producer and consumer.
            unsafe { RingMemory::new(base.add(2) as *mut u8, self.capacity, base, base.add(1)) }
        }

        /// Writes raw bytes into the data area, to make corrupt rings.
        pub fn poke(&mut self, at: usize, bytes: &[u8]) {
            let data = &mut self.words[2..];
            // SAFETY: `data` is `capacity` bytes of u64s; the test writes within it.
            let data = unsafe { std::slice::from_raw_parts_mut(data.as_mut_ptr() as *mut u8, self.capacity) };
            data[at..at + bytes.len()].copy_from_slice(bytes);
        }

        pub fn set_tail(&mut self, tail: u64) {
            self.words[1] = tail;
        }

        pub fn set_head(&mut self, head: u64) {
            self.words[0] = head;
        }
    }

    /// A small deterministic generator, so failures replay.
    pub struct XorShift(pub u64);

    impl XorShift {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn body_for(n: u64, length: usize) -> Vec<u8> {
        (0..length).map(|i| (n as usize * 31 + i) as u8).collect()
    }

    #[test]
    fn records_of_random_sizes_survive_wrap_around_in_order() {
        for seed in 1..=20u64 {
            let mut ring = HeapRing::new(4096);
            let (mut producer, mut consumer) = (Producer::new(ring.memory()), Consumer::new(ring.memory()));
            let mut random = XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let (mut written, mut read) = (0u64, 0u64);
            let mut lengths = std::collections::VecDeque::new();
            while read < 3000 {
                // Write a random number of records, then read a random number.
                for _ in 0..random.next() % 8 {
                    let length = (random.next() % 700) as usize;
                    let body = body_for(written, length);
                    if producer.try_write(Kind::Message, length, |b| b.copy_from_slice(&body)).is_err() {
                        break;
                    }
                    lengths.push_back(length);
                    written += 1;
                }
                for _ in 0..random.next() % 8 {
                    let Some(record) = consumer.peek().expect("not corrupt") else { break };
                    let length = lengths.pop_front().expect("a record was written");
                    assert_eq!(record.kind, Kind::Message);
                    assert_eq!(record.body, body_for(read, length), "seed {seed}, record {read}");
                    consumer.consume();
                    read += 1;
                }
            }
        }
    }

    #[test]
    fn a_full_ring_refuses_and_takes_again_once_read() {
        let mut ring = HeapRing::new(4096);
        let (mut producer, mut consumer) = (Producer::new(ring.memory()), Consumer::new(ring.memory()));
        let mut n = 0;
        while producer.try_write(Kind::Message, 1000, |b| b.fill(n)).is_ok() {
            n += 1;
        }
        assert_eq!(n, 4, "four 1008-byte records leave 64 of 4096 bytes");
        assert_eq!(producer.try_write(Kind::Message, 100, |_| {}), Err(Full));
        assert!(producer.try_write(Kind::Message, producer.max_body() + 1, |_| {}).is_err());
        assert_eq!(consumer.peek().unwrap().unwrap().body[0], 0);
        consumer.consume();
        assert!(producer.try_write(Kind::Message, 1000, |b| b.fill(9)).is_ok());
    }

    #[test]
    fn the_producer_counts_the_messages_not_yet_taken_across_padding_and_wrap() {
        let mut ring = HeapRing::new(4096);
        let (mut producer, mut consumer) = (Producer::new(ring.memory()), Consumer::new(ring.memory()));
        for _ in 0..3 {
            producer.try_write(Kind::Message, 1000, |_| {}).unwrap();
        }
        for _ in 0..2 {
            consumer.peek().unwrap().unwrap();
            consumer.consume();
        }
        // The next record does not fit before the end: padding, then the record at the start.
        producer.try_write(Kind::Message, 1500, |_| {}).unwrap();
        producer.try_write(Kind::Refusal, 10, |_| {}).unwrap();
        assert_eq!(producer.unread_messages(), 2, "two messages unread; padding and a refusal are not messages");
        consumer.peek().unwrap().unwrap();
        consumer.consume();
        assert_eq!(producer.unread_messages(), 1);
    }

    #[test]
    fn a_head_past_tail_reads_as_no_room_not_as_room() {
        let mut ring = HeapRing::new(4096);
        ring.set_head(1 << 40);
        let mut producer = Producer::new(ring.memory());
        assert_eq!(producer.try_write(Kind::Message, 8, |_| {}), Err(Full));
    }

    #[test]
    fn impossible_lengths_and_kinds_are_reported_not_followed() {
        let mut ring = HeapRing::new(4096);
        ring.poke(0, &[0xff, 0xff, 0, 0, 1, 0, 0, 0]);
        ring.set_tail(64);
        let err = Consumer::new(ring.memory()).peek().err().expect("corrupt");
        assert!(err.problem.contains("runs past"), "{err}");

        let mut ring = HeapRing::new(4096);
        ring.poke(0, &[8, 0, 0, 0, 77, 0, 0, 0]);
        ring.set_tail(16);
        let err = Consumer::new(ring.memory()).peek().err().expect("corrupt");
        assert!(err.problem.contains("unknown record kind 77"), "{err}");

        let mut ring = HeapRing::new(4096);
        ring.set_tail(1 << 40);
        assert!(Consumer::new(ring.memory()).peek().is_err());
    }

    #[test]
    fn a_million_messages_cross_threads_in_order() {
        let mut ring = HeapRing::new(1 << 16);
        let memory = ring.memory();
        let count = 1_000_000u64;
        let producer = std::thread::spawn(move || {
            let mut producer = Producer::new(memory);
            for n in 0..count {
                while producer.try_write(Kind::Message, 8, |b| b.copy_from_slice(&n.to_le_bytes())).is_err() {
                    std::hint::spin_loop();
                }
            }
        });
        let mut consumer = Consumer::new(ring.memory());
        let mut expected = 0;
        while expected < count {
            let Some(record) = consumer.peek().expect("not corrupt") else {
                std::hint::spin_loop();
                continue;
            };
            assert_eq!(u64::from_le_bytes(record.body.try_into().unwrap()), expected);
            consumer.consume();
            expected += 1;
        }
        producer.join().unwrap();
        drop(ring);
    }
}
