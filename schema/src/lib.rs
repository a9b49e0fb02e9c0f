//! The wire types of netmachine: the Cap'n Proto code generated from `schema/*.capnp`, and the
//! typed Rust wrappers the services share (identities and keys, signing payloads, EngineMessage).
//!
//! The generated modules are committed (see `scripts/regen-schema`), so a build needs only the
//! Rust toolchain; `tests::generated_code_matches_schemas` fails when they are stale.

#![allow(clippy::all)]

macro_rules! generated {
    ($($name:ident),*) => {$(
        #[allow(unused_parens, unused_imports, missing_docs, clippy::all)]
        pub mod $name {
            include!(concat!("generated/", stringify!($name), ".rs"));
        }
    )*};
}

generated!(
    identity_capnp,
    message_capnp,
    service_capnp,
    identity_store_capnp,
    router_capnp,
    transport_capnp,
    pubsub_capnp,
    storage_capnp
);

pub mod batch;
pub mod content;
pub mod digest;
pub mod identity;
pub mod location;
pub mod message;
pub mod peer;
pub mod signing;
pub mod time;
pub mod topic;

pub use content::{ContentId, ContentIdError};
pub use identity::{Identity, KeyError, Keypair, SignatureBytes};
pub use location::{EngineLocation, LocationError};
pub use message::{Destination, EngineMessage, MessageError, Stamp};
pub use peer::{PeerMessage, Says, PEER_EVENT_OVERHEAD, PUBSUB_BATCH_PROTOCOL, PUBSUB_PROTOCOL};
pub use topic::{gap_marker, AdvertError, TopicAdvert, GAP_PROTOCOL, SEQ_NOT_KNOWN};
