//! `netmachine-pubsub`: topics across nodes. The decisions live in `core`, free of I/O; the
//! service's shell (`service`) carries them out through two engines attached to the node's
//! router, finds topics on other nodes in the identity store (`netmachine_identity_client`'s
//! `locate`), and tells watchers what happened (`events`).

pub mod core;
pub mod events;
pub mod service;
