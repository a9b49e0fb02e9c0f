//! `netmachine-pubsub`: topics across nodes. The decisions live in `core`, free of I/O; the
//! service binary carries them out.

pub mod core;
