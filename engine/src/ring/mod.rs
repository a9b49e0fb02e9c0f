//! The shared-memory fast path between an engine and its router: two single-producer,
//! single-consumer byte rings in one segment, and the futex doorbells that let either side
//! sleep without the other paying a system call per message. `engine/RING.md` is the
//! language-neutral contract this module implements.

pub mod futex;
pub mod layout;
pub mod records;
pub mod segment;
pub mod spsc;
pub mod wait;

pub use segment::{process_alive, sweep_orphans, Doorbell, RingSegment, SegmentError, SEGMENT_PREFIX};
pub use spsc::{Consumer, Corrupt, Full, Producer, Record};
