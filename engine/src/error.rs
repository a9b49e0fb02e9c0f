//! What can go wrong for an engine, in terms the caller can act on.

use crate::SendRefusal;
use std::path::PathBuf;
use std::time::Duration;

/// An engine operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot reach the router at {}: {} (is the node running? `netmachine up`)", .socket.display(), netmachine_rpc::without_os_error_number(&.source.to_string()))]
    RouterUnreachable { socket: PathBuf, source: std::io::Error },
    #[error("the router refused to attach this engine: {0}")]
    AttachRefused(String),
    #[error("the body is {len} bytes, over the node's limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("the router refused the message ({reason:?}): {detail}")]
    Refused { reason: SendRefusal, detail: String },
    #[error("back-pressured: {detail}")]
    BackPressured { slowest: crate::Identity, detail: String },
    #[error("the router refused the topic request ({reason:?}): {detail}")]
    TopicRefused { reason: crate::TopicRefusal, detail: String },
    #[error("the router was unavailable for {0:?}")]
    RouterUnavailable(Duration),
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("too many requests await replies ({0}); wait for some to finish")]
    TooManyRequests(usize),
    #[error("the message takes {len} bytes in a ring, over the ring's limit of {max} (half of the node's router.ring_bytes)")]
    TooLargeForRing { len: usize, max: usize },
    #[error("the outbox ring is full")]
    Full,
    #[error("the engine is closed")]
    Closed,
    #[error("the call to the router failed: {0}")]
    Rpc(String),
}

impl From<capnp::Error> for EngineError {
    fn from(e: capnp::Error) -> Self {
        EngineError::Rpc(netmachine_rpc::reason(&e))
    }
}

impl From<capnp::NotInSchema> for EngineError {
    fn from(e: capnp::NotInSchema) -> Self {
        EngineError::Rpc(format!("the router answered with {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_router_is_said_in_words_without_the_os_error_number() {
        let error = EngineError::RouterUnreachable { socket: PathBuf::from("/run/nm/router.sock"), source: std::io::Error::from_raw_os_error(2) };
        assert_eq!(error.to_string(), "cannot reach the router at /run/nm/router.sock: No such file or directory (is the node running? `netmachine up`)");
    }
}
