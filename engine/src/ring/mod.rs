//! The shared-memory fast path as the engine SDK and the router use it: the ring crate
//! (`netmachine-ring`, whose `RING.md` is the language-neutral contract) re-exported, and what
//! its records carry (`records`).

pub mod records;

pub use netmachine_ring::*;
