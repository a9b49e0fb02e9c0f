//! The storage service: content-addressed blocks, held under a lease and a disk budget.

pub mod core;
pub mod store;
pub mod partial;
pub mod put_file;
pub mod direct;
pub mod reputation;
pub mod fetching;
pub mod server;
pub mod serving;
