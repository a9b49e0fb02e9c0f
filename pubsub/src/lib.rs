//! `netmachine-pubsub`: topics across nodes. The decisions live in `core`, free of I/O; the
//! service's shell (`service`) carries them out through two engines attached to the node's
//! router, and finds topics on other nodes in the identity store (`locate`).

pub mod core;
pub mod locate;
pub mod service;
