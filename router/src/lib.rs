//! The router service: engines attach to it (proving their key and signing their location),
//! and it routes every message by its destination: to attached engines, or in signed P2P frames
//! through transport to other nodes. Every routing decision is made in the I/O-free `core`; the
//! rest is the shell that feeds it and carries out what it decides. Every drop is counted with
//! its reason; every queue is bounded.

pub mod advert;
pub mod attachment;
pub mod channels;
pub mod core;
pub mod delivery_log;
pub mod handoff;
pub mod inbound;
pub mod remote;
pub mod rings;
pub mod send_stream;
pub mod server;
pub mod shell;
pub mod topic_lane;
pub mod transport_link;
pub mod watcher;
