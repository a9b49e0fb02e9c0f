//! The storage service's decisions, free of I/O: which blocks the node holds and until when,
//! what a new block may take of the disk budget, and what collection reclaims (`catalog`).
//! The service's shell (`store`, `server`) writes and reads the bytes and persists what the
//! catalog decides.

pub mod catalog;
pub mod fetch;
pub mod verify;

/// Milliseconds since the Unix epoch (the wire's `Time`).
pub type Millis = u64;

/// The service's settings (`[storage]` in the node's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Bytes of block content the node holds at most (puts in progress included).
    pub max_bytes: u64,
    /// The largest block accepted.
    pub max_block_bytes: u64,
    /// The lifetime of a block put with no expiry (expiry 0).
    pub default_lease: Millis,
    /// How long a partial block left by a stopped fetch is kept for a later fetch to resume.
    pub partial_lease: Millis,
}

impl Default for Config {
    fn default() -> Self {
        Config { max_bytes: 8 << 30, max_block_bytes: 1 << 30, default_lease: 7 * 24 * 3600 * 1000, partial_lease: 24 * 3600 * 1000 }
    }
}
