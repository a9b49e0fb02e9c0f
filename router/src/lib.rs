//! The router service: engines attach to it (proving their key), and it routes every message by
//! its destination through a routing table backed by the identity store. Every drop is counted
//! with its reason; every queue is bounded.

pub mod attachment;
pub mod drops;
pub mod server;
pub mod table;
pub mod watcher;
