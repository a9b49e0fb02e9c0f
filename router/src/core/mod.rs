//! The router's decisions, free of I/O: this node's signed advert (`advert`), what an
//! attaching engine must prove (`attach`), the
//! routing table (`table`), why messages are dropped
//! and what the sender is told (`drops`), what waits for each other node (`outbox`), which
//! frames between nodes were acknowledged and go again (`acks`), frames
//! sealed and opened (`frame`, with engine signatures checked as a batch in `signatures`), what
//! one delivery to an engine carries (`delivery`), how the ring thread waits (`pacing`), which
//! engines serve a protocol for the node (`services`), and
//! the state machine that makes every routing decision (`router`). The tokio/capnp shell feeds
//! it what happened and carries out what it answers; the simulation in `sim/` drives many.

pub mod acks;
pub mod advert;
pub mod attach;
pub mod delivery;
pub mod drops;
pub mod frame;
pub mod outbox;
pub mod pacing;
pub mod router;
pub mod services;
pub mod signatures;
pub mod table;
pub mod topics;

pub use attach::{AttachRefused, Challenge};
pub use drops::{DropReason, Refused};
pub use frame::FrameRefused;
pub use outbox::{Announcement, Outgoing};
pub use acks::{Ack, Header};
pub use router::{check_envelope, check_send, HandOver, Input, Limits, Millis, Output, Router, Ticket};
pub use table::Known;
pub use services::ServeRefused;
pub use topics::{Topic, TopicRefused};
