//! The router service: engines attach to it (proving their key), and it routes every message by
//! its destination through a routing table backed by the identity store: to attached engines,
//! or in signed P2P frames through transport to other nodes. Every drop is counted with its
//! reason; every queue is bounded.

pub mod advert;
pub mod attachment;
pub mod drops;
pub mod inbound;
pub mod node_engine;
pub mod remote;
pub mod rings;
pub mod server;
pub mod signatures;
pub mod table;
pub mod transport_link;
pub mod watcher;
