//! The identity store service: engine, node, topic and domain records, checked on update,
//! persisted in `$DATA/identities.redb`, and pushed to watchers as IdentityUpdated.

pub mod core;
pub mod db;
pub mod server;
