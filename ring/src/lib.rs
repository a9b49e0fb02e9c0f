//! The netmachine ring (`RING.md`, the language-neutral contract): two single-producer,
//! single-consumer byte rings per shared-memory segment, the doorbell, and the futex wake-up
//! protocol that lets either side sleep without the other paying a system call per message.
//!
//! The other side of a ring is another process, which may be broken or hostile: it can rewrite
//! any byte of the segment at any time. The safe API holds against that. Each ring has one
//! [`Producer`] and one [`Consumer`] per mapping, taken once from the segment and keeping its
//! mapping alive; no Rust reference into the shared bytes is ever handed out: records are
//! copied in from the caller's slices and copied out (after their header is checked) into the
//! consumer's own buffer, so what the caller reads cannot change under it.
//!
//! Under `--cfg netmachine_loom` (`scripts/loom`) only the ring protocol and the wake-up
//! protocol are built, over memory the model checker tracks.

#[cfg(not(netmachine_loom))]
pub mod channel;
#[cfg(not(netmachine_loom))]
pub mod doorbell;
pub mod futex;
#[cfg(not(netmachine_loom))]
pub mod handoff;
pub mod layout;
mod region;
#[cfg(not(netmachine_loom))]
pub mod segment;
pub mod spsc;
#[cfg(not(netmachine_loom))]
pub mod sweep;
pub mod wait;

#[cfg(not(netmachine_loom))]
pub use channel::ChannelSegment;
#[cfg(not(netmachine_loom))]
pub use doorbell::Doorbell;
#[cfg(not(netmachine_loom))]
pub use handoff::{handoff_socket, Claim, Handed, HandoffError, Request, Ticket};
#[cfg(not(netmachine_loom))]
pub use segment::{bell_name, channel_name, doorbell_name, open_to_hand_over, segment_name, EngineKey, RingSegment, SegmentError, SideTaken, SEGMENT_PREFIX};
pub use spsc::{heap_ring, Batch, Consumer, Corrupt, Full, Producer, Record};
#[cfg(not(netmachine_loom))]
pub use sweep::{process_alive, sweep_orphans};

/// A fresh random key, for tests: an engine's or a node's identity.
#[cfg(all(test, not(netmachine_loom)))]
pub(crate) fn random_key() -> EngineKey {
    let mut key = [0; 32];
    getrandom::fill(&mut key).expect("randomness");
    key
}
