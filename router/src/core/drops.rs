//! Why the router drops a message: the reason (one counter each), what the sending engine is
//! told (`SendRefusal`), and a sentence for the operator, made in one place so that the socket
//! path, the ring slow path and frames from other nodes refuse alike.

use netmachine_schema::router_capnp::SendRefusal;
use netmachine_schema::Identity;

/// A reason to drop a message; each has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Its expiry passed before it was delivered.
    Expired,
    /// No engine or node by that identity is known, or it is not reachable from here.
    NoRoute,
    /// The body is over `limits.max_message_bytes`, or the message is longer than the
    /// receiving engine's inbox ring can ever take.
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
    /// An event on a topic from an engine that is not the topic's publisher.
    Denied,
    /// A send that would not wait found no room (`trySend`); the sender keeps its message.
    BackPressured,
}

impl DropReason {
    pub const ALL: [DropReason; 10] = [
        DropReason::Expired,
        DropReason::NoRoute,
        DropReason::OverLimit,
        DropReason::QueueFull,
        DropReason::EngineGone,
        DropReason::Malformed,
        DropReason::BadSignature,
        DropReason::Unreachable,
        DropReason::Denied,
        DropReason::BackPressured,
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
            DropReason::Denied => "dropped_denied",
            DropReason::BackPressured => "refused_back_pressured",
        }
    }
}

/// A message the router did not take or could not deliver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct Refused {
    /// The counter it is counted under.
    pub reason: DropReason,
    /// What the sending engine is told.
    pub refusal: SendRefusal,
    pub detail: String,
    /// BackPressured: the engine that has no room.
    pub slowest: Option<Identity>,
}

impl Refused {
    fn new(reason: DropReason, refusal: SendRefusal, detail: impl Into<String>) -> Self {
        Refused { reason, refusal, detail: detail.into(), slowest: None }
    }
    pub fn expired(detail: impl Into<String>) -> Self {
        Refused::new(DropReason::Expired, SendRefusal::Expired, detail)
    }
    pub fn no_route(detail: impl Into<String>) -> Self {
        Refused::new(DropReason::NoRoute, SendRefusal::NoRoute, detail)
    }
    /// A destination kind this version does not route.
    pub fn unsupported(detail: impl Into<String>) -> Self {
        Refused::new(DropReason::NoRoute, SendRefusal::Unsupported, detail)
    }
    pub fn over_limit(body: usize, limit: usize) -> Self {
        let detail = format!("the body is {body} bytes, over this node's limit of {limit} (limits.max_message_bytes)");
        Refused::new(DropReason::OverLimit, SendRefusal::OverLimit, detail)
    }
    pub fn queue_full(detail: impl Into<String>) -> Self {
        Refused::new(DropReason::QueueFull, SendRefusal::QueueFull, detail)
    }
    pub fn engine_gone(detail: impl Into<String>) -> Self {
        Refused::new(DropReason::EngineGone, SendRefusal::NoRoute, detail)
    }
    pub fn malformed(detail: impl Into<String>) -> Self {
        Refused::new(DropReason::Malformed, SendRefusal::Malformed, detail)
    }
    /// An event from an engine that may not publish on the topic.
    pub fn denied(detail: impl Into<String>) -> Self {
        Refused::new(DropReason::Denied, SendRefusal::Denied, detail)
    }
    /// No room now at `slowest`, for a send that would not wait.
    pub fn back_pressured(slowest: Identity, detail: impl Into<String>) -> Self {
        Refused { slowest: Some(slowest), ..Refused::new(DropReason::BackPressured, SendRefusal::BackPressured, detail) }
    }
    /// The message carries a signature that is not its source's.
    pub fn bad_signature(detail: impl Into<String>) -> Self {
        Refused::new(DropReason::BadSignature, SendRefusal::BadSignature, detail)
    }
    /// The message claims a source other than the engine that sent it.
    pub fn bad_source(detail: impl Into<String>) -> Self {
        Refused::new(DropReason::Malformed, SendRefusal::BadSource, detail)
    }
}

/// One counter per drop reason.
#[derive(Debug, Default, Clone)]
pub struct DropCounters([u64; DropReason::ALL.len()]);

impl DropCounters {
    pub fn count(&mut self, reason: DropReason, n: u64) {
        self.0[reason as usize] += n;
    }

    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason as usize]
    }

    pub fn report(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        DropReason::ALL.into_iter().map(|r| (r.counter(), self.get(r)))
    }
}
