//! The `netmachine` command's library: each subcommand's implementation, and what the demo,
//! the benchmarks and the cross-process tests share (starting local nodes, talking to their
//! services).

pub mod bench;
pub mod blocks;
pub mod demo;
pub mod events;
pub mod key;
pub mod latency;
pub mod local_node;
pub mod messaging;
pub mod node_client;
pub mod peers;
pub mod routable;
pub mod status;
pub mod topics;
pub mod up;
