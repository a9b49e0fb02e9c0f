//! A direct channel (RING.md, "Direct channels"): one ring from one engine to another on the
//! same node, which the router grants so that a steady conversation has two parties, not
//! three. The router makes it and can close it; the producer writes, the consumer reads, and
//! both count what passed, for the router's status.

use crate::layout::*;
use crate::region::Region;
use crate::handoff::Handed;
use crate::segment::{check_key, check_segment, create_segment, key_at, map, map_handed, take_once, EngineKey, SegmentError, SideTaken};
use crate::spsc::{Consumer, Producer, RingMemory};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// A channel's segment, mapped.
pub struct ChannelSegment {
    region: Arc<Region>,
    pub name: String,
    pub capacity: usize,
    producer_taken: AtomicBool,
    consumer_taken: AtomicBool,
}

impl ChannelSegment {
    /// Makes the channel from `producer` to `consumer` (the router does), whose messages carry
    /// bodies of at most `max_body` bytes.
    pub fn create(name: &str, producer: &EngineKey, consumer: &EngineKey, capacity: usize, max_body: u32) -> Result<ChannelSegment, SegmentError> {
        let region = create_segment(name, CHANNEL_MAGIC, capacity, channel_size(capacity), |region| {
            region.write(CHANNEL_PRODUCER_AT, producer);
            region.write(CHANNEL_CONSUMER_AT, consumer);
            region.u32_at(CHANNEL_ROUTER_PID_AT).store(std::process::id(), Ordering::Relaxed);
            region.u32_at(CHANNEL_MAX_BODY_AT).store(max_body, Ordering::Relaxed);
        })?;
        Ok(ChannelSegment::new(region, name, capacity))
    }

    /// Opens a channel by name (the router does, after its restart), checking its owner, its
    /// header and, where given, its two ends.
    pub fn open(name: &str, producer: Option<&EngineKey>, consumer: Option<&EngineKey>) -> Result<ChannelSegment, SegmentError> {
        ChannelSegment::checked(map(name, None)?, name, producer, consumer)
    }

    /// Maps the channel the router handed over (its engines do), checking it likewise.
    pub fn handed(handed: Handed, producer: &EngineKey, consumer: &EngineKey) -> Result<ChannelSegment, SegmentError> {
        let name = handed.name.clone();
        ChannelSegment::checked(map_handed(handed)?, &name, Some(producer), Some(consumer))
    }

    fn checked(region: Region, name: &str, producer: Option<&EngineKey>, consumer: Option<&EngineKey>) -> Result<ChannelSegment, SegmentError> {
        let capacity = check_segment(&region, name, CHANNEL_MAGIC, channel_size)?;
        check_key(&region, name, CHANNEL_PRODUCER_AT, "producer", producer)?;
        check_key(&region, name, CHANNEL_CONSUMER_AT, "consumer", consumer)?;
        Ok(ChannelSegment::new(region, name, capacity))
    }

    fn new(region: Region, name: &str, capacity: usize) -> ChannelSegment {
        let (producer_taken, consumer_taken) = (AtomicBool::new(false), AtomicBool::new(false));
        ChannelSegment { region: Arc::new(region), name: name.to_string(), capacity, producer_taken, consumer_taken }
    }

    fn ring(&self) -> RingMemory {
        RingMemory::new(self.region.clone(), HEADER_SIZE, self.capacity, CHANNEL_HEAD_AT, CHANNEL_TAIL_AT)
    }

    /// The writing end, once per mapping. (The router records the producer's process id, as
    /// it sees it, when it hands the channel over.)
    pub fn producer_side(&self) -> Result<Producer, SideTaken> {
        take_once(&self.producer_taken, "producer", &self.name)?;
        // A producer (again, after its engine attached anew) has not left.
        self.word(CHANNEL_LEFT_AT).store(0, Ordering::Release);
        Ok(Producer::new(self.ring()))
    }

    /// The reading end, once per mapping.
    pub fn consumer_side(&self) -> Result<Consumer, SideTaken> {
        take_once(&self.consumer_taken, "consumer", &self.name)?;
        Ok(Consumer::new(self.ring()))
    }

    pub fn producer(&self) -> EngineKey {
        key_at(&self.region, CHANNEL_PRODUCER_AT)
    }

    pub fn consumer(&self) -> EngineKey {
        key_at(&self.region, CHANNEL_CONSUMER_AT)
    }

    /// The largest message body the node takes (its `limits.max_message_bytes`).
    #[inline]
    pub fn max_body(&self) -> usize {
        self.word(CHANNEL_MAX_BODY_AT).load(Ordering::Relaxed) as usize
    }

    /// The router revokes the channel: the producer writes no more to it, the consumer reads
    /// what is left.
    pub fn close(&self) {
        self.word(CHANNEL_CLOSED_AT).store(1, Ordering::Release);
    }

    #[inline]
    pub fn is_closed(&self) -> bool {
        self.word(CHANNEL_CLOSED_AT).load(Ordering::Acquire) != 0
    }

    /// The producer, having seen `closed`: it writes no more.
    pub fn leave(&self) {
        self.word(CHANNEL_LEFT_AT).store(1, Ordering::Release);
    }

    /// Whether nothing more can be written: closed, and the producer has left (or is gone). A
    /// producer that read `closed` as 0 just before the router closed it may still publish one
    /// record; it leaves only after.
    #[inline]
    pub fn is_finished(&self) -> bool {
        self.is_closed() && (self.word(CHANNEL_LEFT_AT).load(Ordering::Acquire) != 0 || !crate::process_alive(self.word(CHANNEL_PRODUCER_PID_AT).load(Ordering::Relaxed)))
    }

    /// A u32 of the header (a process id, `producer_waiting`, `closed`).
    #[inline]
    pub fn word(&self, at: usize) -> &AtomicU32 {
        self.region.u32_at(at)
    }

    /// A counter of the header (`written`, `read`, `dropped`, `head`, `tail`).
    #[inline]
    pub fn counter(&self, at: usize) -> &AtomicU64 {
        self.region.u64_at(at)
    }

    /// Adds one to a counter only this side writes (no read-modify-write across processes).
    #[inline]
    pub fn count(&self, at: usize, by: u64) {
        let counter = self.counter(at);
        counter.store(counter.load(Ordering::Relaxed).wrapping_add(by), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random_key as key;
    use crate::segment::{channel_name, RingSegment};

    #[test]
    fn a_channel_carries_records_from_its_producer_and_is_closed_by_the_router() {
        let (node, a, b) = (key(), key(), key());
        let name = channel_name(&node, &a, &b);
        let router = ChannelSegment::create(&name, &a, &b, 4096, 1000).unwrap();
        assert!(ChannelSegment::open(&name, Some(&b), None).is_err(), "the ends are checked");
        let (at_a, at_b) = (ChannelSegment::open(&name, Some(&a), Some(&b)).unwrap(), ChannelSegment::open(&name, Some(&a), Some(&b)).unwrap());
        let mut producer = at_a.producer_side().unwrap();
        let mut consumer = at_b.consumer_side().unwrap();
        // What the router records when it hands the channel to its producer.
        router.word(CHANNEL_PRODUCER_PID_AT).store(std::process::id(), Ordering::Relaxed);
        assert!(at_a.producer_side().is_err(), "one producer per mapping");
        producer.try_write(Kind::Message, &[b"direct"]).unwrap();
        at_a.count(CHANNEL_WRITTEN_AT, 1);
        assert_eq!(consumer.peek().unwrap().unwrap().body, b"direct");
        consumer.consume();
        assert_eq!((router.counter(CHANNEL_WRITTEN_AT).load(Ordering::Relaxed), router.max_body()), (1, 1000));
        assert_eq!(router.word(CHANNEL_PRODUCER_PID_AT).load(Ordering::Relaxed), std::process::id());
        assert!(!at_a.is_closed());
        router.close();
        assert!(at_a.is_closed() && at_b.is_closed());
        assert!(!at_b.is_finished(), "closed, but its producer (alive) has not left");
        at_a.leave();
        assert!(at_b.is_finished());
        RingSegment::unlink(&name).unwrap();
    }
}
