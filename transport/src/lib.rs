//! The transport service: QUIC/TLS connections to other nodes. Nodes are authenticated by the
//! key in their certificate, admitted by the identity store's trust (or the public network
//! rules), and carry signed P2P frames between routers, and bulk streams between services.

pub mod connections;
pub mod core;
pub mod events;
pub mod framing;
pub mod peer_sync;
pub mod server;
pub mod streams;
pub mod udp_socket;

pub use core::{handshake, tls};
