//! The shell every netmachine service process shares: the node home and its config, serving
//! and calling Cap'n Proto RPC over Unix sockets, links to other services that reconnect with
//! capped backoff, status reports, logging and clean shutdown on SIGTERM.

pub mod allocator;
pub mod bulk;
pub mod config;
pub mod engine_access;
pub mod fanout;
pub mod home;
pub mod link;
pub mod metrics;
pub mod process;
pub mod snapshot;
pub mod status;
pub mod systemd;
pub mod tally;

pub use netmachine_rpc::{self as rpc, Backoff};
pub use config::{Config, ConfigError};
pub use home::{NodeHome, ServiceKind};
pub use link::Link;
