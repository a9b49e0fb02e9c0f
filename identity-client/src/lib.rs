//! For the identity store's clients (router, transport, pubsub, storage): walking every record of
//! a kind, a page at a time, and finding a topic's publisher node (`locate`). A crate of its
//! own, so that clients do not pull in the store's database.

pub mod locate;

use netmachine_schema::identity_capnp::{identity_record, RecordKind};
use netmachine_schema::identity_store_capnp::identity_store;
use netmachine_schema::Identity;

/// Records one `list` call asks for.
const PAGE: u32 = 1000;

/// Calls `visit` with every record of `kind`, in identity order.
pub async fn for_each_record(
    store: &identity_store::Client,
    kind: RecordKind,
    mut visit: impl FnMut(Identity, identity_record::Reader<'_>) -> capnp::Result<()>,
) -> capnp::Result<()> {
    let mut after: Option<Identity> = None;
    loop {
        let mut request = store.list_request();
        request.get().set_kind(kind);
        request.get().set_limit(PAGE);
        if let Some(after) = after {
            request.get().set_after(&after.0);
        }
        let answer = request.send().promise.await?;
        let entries = answer.get()?.get_entries()?;
        for entry in entries.iter() {
            let id = Identity::from_slice("id", entry.get_id()?).map_err(|e| capnp::Error::failed(e.to_string()))?;
            visit(id, entry.get_record()?)?;
            after = Some(id);
        }
        if entries.len() < PAGE {
            return Ok(());
        }
    }
}
