//! The transport's decisions, free of I/O: which certificates prove which node (`tls`), the
//! connect handshake and its version negotiation (`handshake`), which peer adverts are good and
//! kept (`advert`), which nodes may connect (`book`), which of two connections to one node stays
//! (`settle`), each peer's queue of frames (`queue`), and the connection pool (`pool`): one
//! connection per peer, dialing across every advertised address, backoff, redial and idle
//! close; and which peers' counts to report (`report`). The quinn/capnp shell in
//! `connections.rs` feeds the pool what happened, with the time, and carries out what it
//! answers; the simulation in `sim/` feeds many pools through a fake network instead.

pub mod advert;
pub mod book;
pub mod handshake;
pub mod pool;
pub mod queue;
pub mod report;
pub mod settle;
pub mod tls;

pub use book::{Admission, PeerBook, PeerInfo};
pub use pool::{CloseReason, ConnId, Counters, Input, Millis, Next, Output, Policy, Pool, Unsendable};
pub use queue::{Expiring, Queued};
pub use settle::Direction;
