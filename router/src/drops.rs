//! Why the router dropped a message, and how many times each reason happened.

use std::cell::Cell;

/// A reason to drop a message; each has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Its expiry passed before it was delivered.
    Expired,
    /// No engine or node by that identity is known, or it is not reachable from here.
    NoRoute,
    /// The body is over `limits.max_message_bytes`.
    OverLimit,
    /// The destination's queue stayed full for the whole wait.
    QueueFull,
    /// The destination engine detached with the message still queued.
    EngineGone,
    /// The message could not be read, or claimed a source other than its sender.
    Malformed,
    /// A frame or engine signature did not verify (or was missing where required).
    BadSignature,
    /// Transport refused the frame: the node is unknown or banned, or its queue stayed full.
    Unreachable,
}

impl DropReason {
    pub const ALL: [DropReason; 8] = [
        DropReason::Expired,
        DropReason::NoRoute,
        DropReason::OverLimit,
        DropReason::QueueFull,
        DropReason::EngineGone,
        DropReason::Malformed,
        DropReason::BadSignature,
        DropReason::Unreachable,
    ];

    /// The counter's name in status reports.
    pub fn counter(self) -> &'static str {
        match self {
            DropReason::Expired => "dropped_expired",
            DropReason::NoRoute => "dropped_no_route",
            DropReason::OverLimit => "dropped_over_limit",
            DropReason::QueueFull => "dropped_queue_full",
            DropReason::EngineGone => "dropped_engine_gone",
            DropReason::Malformed => "dropped_malformed",
            DropReason::BadSignature => "dropped_bad_signature",
            DropReason::Unreachable => "dropped_unreachable",
        }
    }
}

/// One counter per drop reason.
#[derive(Debug, Default)]
pub struct DropCounters([Cell<u64>; 8]);

impl DropCounters {
    pub fn count(&self, reason: DropReason, n: u64) {
        let cell = &self.0[reason as usize];
        cell.set(cell.get() + n);
    }

    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason as usize].get()
    }

    pub fn report(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        DropReason::ALL.into_iter().map(|r| (r.counter(), self.get(r)))
    }
}
