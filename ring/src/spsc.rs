//! One single-producer, single-consumer byte ring over shared memory: records of length, kind
//! and body, padded to 8 bytes, never wrapping (a padding record fills the end instead), with
//! `head` and `tail` counters that only grow (RING.md, "Records" and "Memory ordering").
//!
//! The other side may rewrite the ring at any time. The producer copies a record in from the
//! caller's slices; the consumer checks a record's header, then copies its body into a buffer
//! of its own before the caller sees it: a body checked is the body used.

use crate::layout::{record_size, Kind, RECORD_HEADER};
use crate::region::Region;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// One ring within a region: where its data area and its two counters are.
pub(crate) struct RingMemory {
    region: Arc<Region>,
    data: usize,
    capacity: u64,
    head: usize,
    tail: usize,
}

impl RingMemory {
    /// A ring of `capacity` bytes (a power of two, at least 16) at `data` in `region`, with its
    /// counters at `head` and `tail`; panics if any of it lies outside the region.
    pub(crate) fn new(region: Arc<Region>, data: usize, capacity: usize, head: usize, tail: usize) -> Self {
        assert!(capacity.is_power_of_two() && capacity >= 16 && data % 8 == 0);
        assert!(data + capacity <= region.len() && head.max(tail) + 8 <= region.len());
        RingMemory { region, data, capacity: capacity as u64, head, tail }
    }

    #[inline]
    fn head(&self) -> &crate::region::Atomic64 {
        self.region.u64_at(self.head)
    }

    #[inline]
    fn tail(&self) -> &crate::region::Atomic64 {
        self.region.u64_at(self.tail)
    }

    #[inline]
    fn offset(&self, position: u64) -> usize {
        (position & (self.capacity - 1)) as usize
    }

    /// Copies bytes out of the data area at `offset`, which the caller keeps within it.
    #[inline]
    fn read(&self, offset: usize, into: &mut [u8]) {
        debug_assert!(offset + into.len() <= self.capacity as usize);
        self.region.read(self.data + offset, into);
    }

    #[inline]
    fn prefetch(&self, offset: usize) {
        self.region.prefetch(self.data + offset);
    }

    #[inline]
    fn prefetch_for_write(&self, offset: usize) {
        self.region.prefetch_for_write(self.data + offset);
    }

    #[inline]
    fn prefetch_tail_for_write(&self) {
        self.region.prefetch_for_write(self.tail);
    }

    #[inline]
    fn write(&self, offset: usize, from: &[u8]) {
        debug_assert!(offset + from.len() <= self.capacity as usize);
        self.region.write(self.data + offset, from);
    }
}

/// Where `heap_ring` puts a lone ring's counters and data (each counter on a line of its own).
const HEAP_HEAD_AT: usize = 0;
const HEAP_TAIL_AT: usize = 128;
const HEAP_DATA_AT: usize = 256;

/// A lone ring on the heap, for a ring within one process (tests, fuzzing, model checking):
/// its producer and its consumer. `capacity` is a power of two, at least 16.
pub fn heap_ring(capacity: usize) -> (Producer, Consumer) {
    let region = Arc::new(Region::heap(HEAP_DATA_AT + capacity));
    let memory = || RingMemory::new(region.clone(), HEAP_DATA_AT, capacity, HEAP_HEAD_AT, HEAP_TAIL_AT);
    (Producer::new(memory()), Consumer::new(memory()))
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
    /// Where the next record goes: past the records written, published or not.
    tail: u64,
    cached_head: u64,
}

impl Producer {
    /// Takes up writing where the ring's `tail` stands (a fresh ring, or one being adopted).
    pub(crate) fn new(memory: RingMemory) -> Self {
        let tail = memory.tail().load(Ordering::Acquire);
        let cached_head = memory.head().load(Ordering::Acquire);
        Producer { memory, tail, cached_head }
    }

    /// The largest body this ring can ever take.
    #[inline]
    pub fn max_body(&self) -> usize {
        self.memory.capacity as usize / 2 - RECORD_HEADER
    }

    /// Whether `needed` bytes fit. A `head` past `tail`, which only a broken or hostile
    /// consumer writes, wraps to a huge distance and so reads as no room, never as room.
    #[inline]
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
    #[inline]
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

    /// The longest body, up to `wanted` bytes, that a record written now can have (at most
    /// [`Producer::max_body`]); `None` when not even an empty record fits. For a producer
    /// that fills a record to the room there is. The consumer's `head` is loaded again only
    /// when the one last seen leaves less than `wanted`.
    #[inline]
    pub fn longest_fit(&mut self, wanted: usize) -> Option<usize> {
        if self.tail % 8 != 0 {
            return None;
        }
        let longest = |producer: &Self| {
            // A `head` past `tail` (broken or hostile) wraps to a huge distance: no room.
            let free = producer.memory.capacity.saturating_sub(producer.tail.wrapping_sub(producer.cached_head));
            let to_end = producer.memory.capacity - producer.memory.offset(producer.tail) as u64;
            // Here, before the end, or from the start once padding fills the end.
            let size = free.min(to_end).max(free.saturating_sub(to_end)) & !7;
            (size >= RECORD_HEADER as u64).then(|| (size as usize - RECORD_HEADER).min(producer.max_body()).min(wanted))
        };
        match longest(self) {
            Some(longest) if longest == wanted => Some(longest),
            _ => {
                self.cached_head = self.memory.head().load(Ordering::Acquire);
                longest(self)
            }
        }
    }

    /// Writes one record whose body is `parts`, one after another, and publishes it; `Full` if
    /// there is no room now. Bodies over [`Producer::max_body`] never fit.
    #[inline]
    pub fn try_write(&mut self, kind: Kind, parts: &[&[u8]]) -> Result<(), Full> {
        self.batch().try_write(kind, parts)
    }

    /// Writes records to be published together, when the batch is dropped: one store of `tail`
    /// for all of them rather than one for each, which sends `tail`'s line to a consumer that
    /// keeps up once per record.
    #[inline]
    pub fn batch(&mut self) -> Batch<'_> {
        Batch { from: self.tail, producer: self, tail_asked: false }
    }

    #[inline]
    fn write_header(&mut self, at: usize, length: u32, kind: Kind) {
        let mut header = [0u8; RECORD_HEADER];
        header[..4].copy_from_slice(&length.to_le_bytes());
        header[4..].copy_from_slice(&(kind as u32).to_le_bytes());
        self.memory.write(at, &header);
    }

    /// Asks the CPU to take the lines the next record will go to for writing now, while the
    /// consumer reads what was just published. Those lines were last read by the consumer a lap
    /// ago and sit in its cache: a write to one waits until that copy is given up, and the `tail`
    /// store that publishes the record waits for the write, so every message paid one more trip
    /// between the cores (measured on an Intel host: a bare ring echo 370-380 -> 300-320 ns, an
    /// engine's send_all/poll 525-555 -> 480-520 ns one way). Only free room is asked for (up to
    /// the `head` last seen, plus the capacity): a record the consumer has not read is never
    /// taken from it. A hint: nothing is written.
    #[inline]
    fn prepare_room(&self) {
        let room_end = self.cached_head.wrapping_add(self.memory.capacity);
        self.prefetch_for_write(self.tail, self.tail.saturating_add(PREPARE).min(room_end));
    }

    /// Asks for every line between ring positions `from` and `end` for writing at once: the
    /// lines come in together rather than as each store reaches them.
    #[inline]
    fn prefetch_for_write(&self, from: u64, end: u64) {
        let mut line = from & !(LINE - 1);
        while line < end {
            self.memory.prefetch_for_write(self.memory.offset(line));
            line += LINE;
        }
    }

    /// How many message records the consumer has not taken yet (what is lost with a consumer
    /// that is gone). The walk stops at anything a consumer could have scribbled over.
    pub fn unread_messages(&self) -> u64 {
        let mut at = self.memory.head().load(Ordering::Acquire);
        let mut unread = 0;
        while at < self.tail && self.tail - at <= self.memory.capacity && at % 8 == 0 {
            let offset = self.memory.offset(at);
            let (length, kind) = read_header(&self.memory, offset);
            let size = record_size(length) as u64;
            if offset as u64 + size > self.memory.capacity {
                break;
            }
            if Kind::from_u32(kind) == Some(Kind::Message) {
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

/// Records written by [`Producer::batch`], published when it is dropped.
pub struct Batch<'p> {
    producer: &'p mut Producer,
    /// `tail` when the batch began: a batch that wrote nothing stores nothing.
    from: u64,
    /// Whether the line of `tail` was asked for, for writing (once, at the batch's first record).
    tail_asked: bool,
}

impl Batch<'_> {
    /// Writes one record whose body is `parts`, one after another, to be published with the
    /// batch; `Full` if there is no room now. Bodies over [`Producer::max_body`] never fit.
    #[inline]
    pub fn try_write(&mut self, kind: Kind, parts: &[&[u8]]) -> Result<(), Full> {
        let producer = &mut *self.producer;
        let length: usize = parts.iter().map(|part| part.len()).sum();
        // A `tail` taken over that is not a multiple of 8 (a broken or hostile peer wrote it)
        // places nothing: the ring stays full.
        if length > producer.max_body() || producer.tail % 8 != 0 {
            return Err(Full);
        }
        let (padding, size) = producer.placement(length);
        if !producer.room(padding + size) {
            return Err(Full);
        }
        // The consumer waiting for this record reads `tail`'s line over and over: the store that
        // publishes the record needs it back, and asked for now, it comes while the record is
        // copied rather than after (measured on an Intel host: send_all/poll 402-430 -> 361-377
        // ns one way, the bare ring echo 2.24-2.56 -> 2.06-2.22 of the floor). Once a batch: a
        // consumer reading along would otherwise lose the line to every record.
        if !self.tail_asked {
            producer.memory.prefetch_tail_for_write();
            self.tail_asked = true;
        }
        if padding > 0 {
            producer.write_header(producer.memory.offset(producer.tail), (padding as usize - RECORD_HEADER) as u32, Kind::Padding);
            producer.tail += padding;
        }
        // A record never crosses the end (padding was written otherwise), and the bytes between
        // tail and head + capacity are the producer's until `tail` is published.
        // Every line of the record, asked for before any is written. Lines asked for ahead
        // (`prepare_room`) may have been read back by the time the next record comes (a round
        // trip later, in an engine's request and answer): asked for again here, an engine's
        // send_all/poll went from 480-520 to 399-410 ns one way on an Intel host, where the bare
        // ring echo, whose turns are shorter, did not move.
        producer.prefetch_for_write(producer.tail, producer.tail + size);
        let mut at = producer.memory.offset(producer.tail);
        producer.write_header(at, length as u32, kind);
        at += RECORD_HEADER;
        for part in parts {
            producer.memory.write(at, part);
            at += part.len();
        }
        producer.tail += size;
        Ok(())
    }
}

impl Drop for Batch<'_> {
    #[inline]
    fn drop(&mut self) {
        if self.producer.tail != self.from {
            self.producer.memory.tail().store(self.producer.tail, Ordering::Release);
            self.producer.prepare_room();
        }
    }
}

/// The length and kind of the record at `offset` (a multiple of 8 below the capacity), copied.
#[inline]
fn read_header(memory: &RingMemory, offset: usize) -> (usize, u32) {
    let mut header = [0u8; RECORD_HEADER];
    memory.read(offset, &mut header);
    let length = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    (length, u32::from_le_bytes(header[4..].try_into().expect("4 bytes")))
}

/// Bytes past the record being read that a consumer asks the CPU to load ahead.
const PREFETCH: u64 = 512;

/// Bytes past `tail` a producer asks the CPU to take for writing once it has published: a
/// record of a 64-byte message (176 bytes) wherever it starts in a line.
const PREPARE: u64 = 256;

/// A cache line.
const LINE: u64 = 64;

/// A record, copied out of the ring: the producer cannot change it any more.
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
    /// Its kind and its body's length: a `peek` before it is consumed returns the same copy.
    peeked_kind: Kind,
    peeked_length: usize,
    /// Where the last record's body was copied (as long as the longest body seen).
    copy: Vec<u8>,
}

impl Consumer {
    /// Takes up reading where the ring's `head` stands (a fresh ring, or one being adopted).
    pub(crate) fn new(memory: RingMemory) -> Self {
        let head = memory.head().load(Ordering::Acquire);
        Consumer { memory, head, cached_tail: head, peeked: 0, peeked_kind: Kind::Padding, peeked_length: 0, copy: Vec::new() }
    }

    /// Whether the producer has published past what this consumer took, by loads alone: what a
    /// side spins on while it waits (no store in the loop, no prefetch; [`Consumer::peek`]
    /// then takes the record).
    #[inline]
    pub fn published(&self) -> bool {
        self.memory.tail().load(Ordering::Acquire) != self.head
    }

    /// Whether a record may be waiting.
    #[inline]
    pub fn has_data(&mut self) -> bool {
        if self.head != self.cached_tail {
            return true;
        }
        let tail = self.memory.tail().load(Ordering::Acquire);
        if self.head == tail {
            return false;
        }
        self.cached_tail = tail;
        // New records: their lines start coming from the producer's core now, while the
        // caller goes on to read them, rather than one miss after the other once it does.
        self.prefetch_from(self.head);
        true
    }

    /// The next record, its header checked and its body copied out, left in the ring until
    /// [`Consumer::consume`]; padding is skipped. `Ok(None)` when the ring is empty. Until it
    /// is consumed, every `peek` returns the same copy, without reading the ring again: a
    /// caller that takes a record in several visits reads what it checked the first time.
    #[inline]
    pub fn peek(&mut self) -> Result<Option<Record<'_>>, Corrupt> {
        if self.peeked > 0 {
            return Ok(Some(Record { kind: self.peeked_kind, body: &self.copy[..self.peeked_length] }));
        }
        loop {
            if !self.has_data() {
                return Ok(None);
            }
            if self.head % 8 != 0 {
                return Err(self.corrupt(format!("head {} is not a multiple of 8", self.head)));
            }
            let available = self.cached_tail.wrapping_sub(self.head);
            if available > self.memory.capacity || available < RECORD_HEADER as u64 {
                return Err(self.corrupt(format!("tail is {} bytes past head", available)));
            }
            // `at` is a multiple of 8 below the capacity: the header lies within the data, and
            // the bytes between head and tail were published by the producer.
            let at = self.memory.offset(self.head);
            let (length, kind) = read_header(&self.memory, at);
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
            if self.copy.len() < length {
                self.copy.resize(length, 0);
            }
            self.memory.read(at + RECORD_HEADER, &mut self.copy[..length]);
            self.prefetch_after(size);
            (self.peeked, self.peeked_kind, self.peeked_length) = (size, kind, length);
            return Ok(Some(Record { kind, body: &self.copy[..length] }));
        }
    }

    /// Starts loading the published bytes after the record at `head` (of `size` bytes), up to
    /// `PREFETCH` of them: the next records' lines come from the producer's core while this one
    /// is handled, instead of one miss after another.
    #[inline]
    fn prefetch_after(&self, size: u64) {
        self.prefetch_from(self.head + size);
    }

    /// Starts loading the published bytes from position `from`, up to `PREFETCH` of them.
    #[inline]
    fn prefetch_from(&self, from: u64) {
        let published = self.cached_tail.wrapping_sub(from).min(PREFETCH);
        for ahead in (0..published).step_by(64) {
            self.memory.prefetch(self.memory.offset(from + ahead));
        }
    }

    /// Releases the record returned by the last [`Consumer::peek`] to the producer.
    #[inline]
    pub fn consume(&mut self) {
        self.consume_held();
        self.release();
    }

    /// Moves past the record returned by the last [`Consumer::peek`], holding its bytes from
    /// the producer until [`Consumer::release`]. A consumer taking a run of records releases
    /// them once: a producer waiting for room reloads `head`, and a `head` stored per record
    /// would send its cache line back and forth for every record.
    #[inline]
    pub fn consume_held(&mut self) {
        self.head += std::mem::take(&mut self.peeked);
    }

    /// Gives the producer the room of every record consumed so far (stores `head`).
    #[inline]
    pub fn release(&mut self) {
        self.memory.head().store(self.head, Ordering::Release);
    }

    #[inline]
    fn advance(&mut self, size: u64) {
        self.head += size;
        self.release();
    }

    fn corrupt(&self, problem: String) -> Corrupt {
        Corrupt { position: self.head, problem }
    }
}

#[cfg(all(test, not(netmachine_loom)))]
pub(crate) mod tests {
    use super::*;

    /// A lone ring on the heap whose memory a test can scribble over.
    pub struct HeapRing {
        region: Arc<Region>,
        capacity: usize,
    }

    impl HeapRing {
        pub fn new(capacity: usize) -> Self {
            HeapRing { region: Arc::new(Region::heap(HEAP_DATA_AT + capacity)), capacity }
        }

        fn memory(&self) -> RingMemory {
            RingMemory::new(self.region.clone(), HEAP_DATA_AT, self.capacity, HEAP_HEAD_AT, HEAP_TAIL_AT)
        }

        pub fn producer(&self) -> Producer {
            Producer::new(self.memory())
        }

        pub fn consumer(&self) -> Consumer {
            Consumer::new(self.memory())
        }

        /// Writes raw bytes into the data area, to make corrupt rings.
        pub fn poke(&self, at: usize, bytes: &[u8]) {
            self.region.write(HEAP_DATA_AT + at, bytes);
        }

        pub fn set_tail(&self, tail: u64) {
            self.region.u64_at(HEAP_TAIL_AT).store(tail, Ordering::Relaxed);
        }

        pub fn set_head(&self, head: u64) {
            self.region.u64_at(HEAP_HEAD_AT).store(head, Ordering::Relaxed);
        }
    }

    /// A small deterministic generator, so failures replay.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
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
            let ring = HeapRing::new(4096);
            let (mut producer, mut consumer) = (ring.producer(), ring.consumer());
            let mut random = XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let (mut written, mut read) = (0u64, 0u64);
            let mut lengths = std::collections::VecDeque::new();
            while read < 3000 {
                // Write a random number of records, then read a random number.
                for _ in 0..random.next() % 8 {
                    let length = (random.next() % 700) as usize;
                    let body = body_for(written, length);
                    if producer.try_write(Kind::Message, &[&body]).is_err() {
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
    fn a_batch_publishes_its_records_together_when_dropped_even_across_the_end() {
        let ring = HeapRing::new(4096);
        let (mut producer, mut consumer) = (ring.producer(), ring.consumer());
        // 3 records of 1008 bytes leave 1072 bytes before the end: the batch's second record
        // goes after padding, at the start.
        for n in 0..3u8 {
            producer.try_write(Kind::Message, &[&[n; 1000]]).unwrap();
            consumer.peek().unwrap().unwrap();
            consumer.consume();
        }
        let mut batch = producer.batch();
        batch.try_write(Kind::Message, &[&[10; 600], &[11; 400]]).unwrap();
        batch.try_write(Kind::Message, &[&[12; 1000]]).unwrap();
        batch.try_write(Kind::Refusal, &[&[13; 8]]).unwrap();
        assert!(consumer.peek().unwrap().is_none(), "nothing is published before the batch ends");
        let mut more = 0;
        while batch.try_write(Kind::Message, &[&[14; 1000]]).is_ok() {
            more += 1;
        }
        assert_eq!(more, 1, "the ring fills within a batch as without one");
        drop(batch);
        let mut read = Vec::new();
        while let Some(record) = consumer.peek().unwrap() {
            read.push((record.kind, record.body.len(), record.body[0], record.body[record.body.len() - 1]));
            consumer.consume();
        }
        let (message, refusal) = (Kind::Message, Kind::Refusal);
        assert_eq!(read, [(message, 1000, 10, 11), (message, 1000, 12, 12), (refusal, 8, 13, 13), (message, 1000, 14, 14)]);
        let empty = producer.batch();
        drop(empty);
        assert!(consumer.peek().unwrap().is_none());
        assert!(producer.is_drained());
    }

    #[test]
    fn published_says_whether_records_wait_until_all_are_taken() {
        let ring = HeapRing::new(4096);
        let (mut producer, mut consumer) = (ring.producer(), ring.consumer());
        assert!(!consumer.published());
        producer.try_write(Kind::Message, &[b"one"]).unwrap();
        producer.try_write(Kind::Message, &[b"two"]).unwrap();
        assert!(consumer.published());
        assert_eq!(consumer.peek().unwrap().unwrap().body, b"one");
        consumer.consume();
        assert!(consumer.published(), "one record is still waiting");
        consumer.peek().unwrap().unwrap();
        consumer.consume_held();
        assert!(!consumer.published(), "taken, though not yet released");
    }

    #[test]
    fn a_full_ring_refuses_and_takes_again_once_read() {
        let ring = HeapRing::new(4096);
        let (mut producer, mut consumer) = (ring.producer(), ring.consumer());
        let mut n = 0;
        while producer.try_write(Kind::Message, &[&[n; 1000]]).is_ok() {
            n += 1;
        }
        assert_eq!(n, 4, "four 1008-byte records leave 64 of 4096 bytes");
        assert_eq!(producer.try_write(Kind::Message, &[&[0; 100]]), Err(Full));
        assert!(producer.try_write(Kind::Message, &[&vec![0; producer.max_body() + 1]]).is_err());
        assert_eq!(consumer.peek().unwrap().unwrap().body[0], 0);
        consumer.consume();
        assert!(producer.try_write(Kind::Message, &[&[9; 1000]]).is_ok());
    }

    #[test]
    fn the_longest_fit_is_a_body_that_fits_now_and_one_byte_more_does_not() {
        for seed in 1..=10u64 {
            let ring = HeapRing::new(4096);
            let (mut producer, mut consumer) = (ring.producer(), ring.consumer());
            let mut random = XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut fills = 0;
            for _ in 0..400 {
                match producer.longest_fit(usize::MAX) {
                    Some(longest) => {
                        assert!(producer.fits(longest), "seed {seed}: the longest fit {longest} does not fit");
                        assert!(longest == producer.max_body() || !producer.fits(longest + 1), "seed {seed}: {} fits too", longest + 1);
                        assert_eq!(producer.longest_fit(100), Some(longest.min(100)), "seed {seed}: what is wanted, if there is room for it");
                    }
                    None => assert!(!producer.fits(0), "seed {seed}: no fit, yet an empty record fits"),
                }
                // Now and then fill the ring to the last byte the way a run is written.
                if random.next() % 8 == 0 {
                    if let Some(longest) = producer.longest_fit(usize::MAX) {
                        producer.try_write(Kind::Message, &[&vec![7; longest]]).expect("the longest fit is written");
                        fills += 1;
                    }
                }
                for _ in 0..random.next() % 3 {
                    let _ = producer.try_write(Kind::Message, &[&vec![1; (random.next() % 900) as usize]]);
                }
                for _ in 0..random.next() % 3 {
                    if consumer.peek().unwrap().is_some() {
                        consumer.consume();
                    }
                }
            }
            assert!(fills > 10, "seed {seed}: the ring was filled to the end {fills} times");
        }
        // A consumer's head past the producer's tail is no room at all.
        let ring = HeapRing::new(4096);
        ring.set_head(64);
        assert_eq!(ring.producer().longest_fit(8), None);
    }

    #[test]
    fn records_consumed_and_held_give_room_only_once_released() {
        let ring = HeapRing::new(4096);
        let (mut producer, mut consumer) = (ring.producer(), ring.consumer());
        while producer.try_write(Kind::Message, &[&[1; 1000]]).is_ok() {}
        for _ in 0..2 {
            assert_eq!(consumer.peek().unwrap().unwrap().body, [1; 1000]);
            consumer.consume_held();
        }
        assert_eq!(producer.try_write(Kind::Message, &[&[2; 1000]]), Err(Full), "held: no room yet");
        assert_eq!(consumer.peek().unwrap().unwrap().body, [1; 1000], "the consumer has moved past what it holds");
        consumer.release();
        assert!(producer.try_write(Kind::Message, &[&[2; 1000]]).is_ok());
        assert!(producer.try_write(Kind::Message, &[&[3; 1000]]).is_ok());
    }

    #[test]
    fn the_producer_counts_the_messages_not_yet_taken_across_padding_and_wrap() {
        let ring = HeapRing::new(4096);
        let (mut producer, mut consumer) = (ring.producer(), ring.consumer());
        for _ in 0..3 {
            producer.try_write(Kind::Message, &[&[0; 1000]]).unwrap();
        }
        for _ in 0..2 {
            consumer.peek().unwrap().unwrap();
            consumer.consume();
        }
        // The next record does not fit before the end: padding, then the record at the start.
        producer.try_write(Kind::Message, &[&[0; 1500]]).unwrap();
        producer.try_write(Kind::Refusal, &[&[0; 10]]).unwrap();
        assert_eq!(producer.unread_messages(), 2, "two messages unread; padding and a refusal are not messages");
        consumer.peek().unwrap().unwrap();
        consumer.consume();
        assert_eq!(producer.unread_messages(), 1);
    }

    #[test]
    fn counters_a_peer_set_off_the_8_byte_grid_are_refused_not_followed() {
        let ring = HeapRing::new(4096);
        // A consumer's head three bytes short of the producer's tail, at the end of the data:
        // the producer's walk stops there instead of reading past the ring.
        ring.set_tail(4096);
        ring.set_head(4093);
        assert_eq!(ring.producer().unread_messages(), 0);
        // A tail taken over off the grid.
        ring.set_tail(4093);
        assert_eq!(ring.producer().try_write(Kind::Message, &[&[0; 8]]), Err(Full), "a tail off the grid places nothing");
        ring.set_tail(4093 + 64);
        let err = ring.consumer().peek().err().expect("corrupt");
        assert!(err.problem.contains("not a multiple of 8"), "{err}");
    }

    #[test]
    fn a_head_past_tail_reads_as_no_room_not_as_room() {
        let ring = HeapRing::new(4096);
        ring.set_head(1 << 40);
        let mut producer = ring.producer();
        assert_eq!(producer.try_write(Kind::Message, &[&[0; 8]]), Err(Full));
    }

    #[test]
    fn impossible_lengths_and_kinds_are_reported_not_followed() {
        let ring = HeapRing::new(4096);
        ring.poke(0, &[0xff, 0xff, 0, 0, 1, 0, 0, 0]);
        ring.set_tail(64);
        let err = ring.consumer().peek().err().expect("corrupt");
        assert!(err.problem.contains("runs past"), "{err}");

        let ring = HeapRing::new(4096);
        ring.poke(0, &[8, 0, 0, 0, 77, 0, 0, 0]);
        ring.set_tail(16);
        let err = ring.consumer().peek().err().expect("corrupt");
        assert!(err.problem.contains("unknown record kind 77"), "{err}");

        let ring = HeapRing::new(4096);
        ring.set_tail(1 << 40);
        assert!(ring.consumer().peek().is_err());
    }

    #[test]
    fn a_million_messages_cross_threads_in_order() {
        let (mut producer, mut consumer) = heap_ring(1 << 16);
        let count = 1_000_000u64;
        let producer = std::thread::spawn(move || {
            for n in 0..count {
                while producer.try_write(Kind::Message, &[&n.to_le_bytes()]).is_err() {
                    std::hint::spin_loop();
                }
            }
        });
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
    }

    #[test]
    fn a_record_read_does_not_change_when_the_producer_rewrites_the_ring() {
        let ring = HeapRing::new(4096);
        let (mut producer, mut consumer) = (ring.producer(), ring.consumer());
        producer.try_write(Kind::Message, &[b"checked", b" body"]).unwrap();
        let record = consumer.peek().unwrap().unwrap();
        // A hostile producer rewrites the record's body and length after it was peeked.
        ring.poke(0, &[200, 0, 0, 0, 1, 0, 0, 0]);
        ring.poke(8, b"swapped body");
        assert_eq!(record.body, b"checked body", "the consumer holds the bytes it checked");
        // Peeked again before it is consumed: the same copy, not the ring's bytes read anew.
        assert_eq!(consumer.peek().unwrap().unwrap().body, b"checked body");
        consumer.consume();
        producer.try_write(Kind::Refusal, &[b"next"]).unwrap();
        let next = consumer.peek().unwrap().unwrap();
        assert_eq!((next.kind, next.body), (Kind::Refusal, &b"next"[..]), "once consumed, the next record is read");
    }
}

/// Head and tail publication under loom: every interleaving of a producer and a consumer, with
/// the ring's bytes as relaxed atomics. A tail published before its record's bytes shows up as
/// a consumer reading a stale record (a corrupt ring, or the wrong body); a head published
/// before the consumer's copy as a body the producer already overwrote.
#[cfg(all(test, netmachine_loom))]
mod model {
    use super::*;

    #[test]
    fn every_record_published_is_read_whole_across_padding_and_reused_room() {
        let mut model = loom::model::Builder::new();
        model.preemption_bound = Some(3);
        model.check(|| {
            // Three 24-byte records in a 64-byte ring: the first two published together by a
            // batch, the third alone, which needs padding at the end and the room the first
            // one's consumption released.
            let (mut producer, mut consumer) = heap_ring(64);
            let body = |n: u64| [n.to_le_bytes(), (n * 7).to_le_bytes()].concat();
            let writer = loom::thread::spawn(move || {
                let mut batch = producer.batch();
                batch.try_write(Kind::Message, &[&body(1)]).expect("an empty ring has room");
                batch.try_write(Kind::Message, &[&body(2)]).expect("and room for a second");
                drop(batch);
                while producer.try_write(Kind::Message, &[&body(3)]).is_err() {
                    loom::thread::yield_now();
                }
            });
            // The consumer holds the room of the first record until it has taken the second (a
            // run), and releases whenever it finds the ring empty.
            let mut expected = 1;
            while expected <= 3 {
                match consumer.peek().expect("a conforming producer's ring is never corrupt") {
                    Some(record) => {
                        assert_eq!(record.body, body(expected));
                        consumer.consume_held();
                        if expected != 1 {
                            consumer.release();
                        }
                        expected += 1;
                    }
                    None => {
                        consumer.release();
                        loom::thread::yield_now();
                    }
                }
            }
            writer.join().unwrap();
        });
    }
}
