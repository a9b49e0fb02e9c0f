//! `netmachine-identity-store`: serves the node's identity records on `$RUN/identity-store.sock`.

use netmachine_identity_store::server::IdentityStore;
use netmachine_schema::identity_store_capnp::identity_store;
use netmachine_service::{process, ServiceKind};

fn main() -> std::process::ExitCode {
    process::run(
        ServiceKind::IdentityStore,
        "netmachine identity store: node, topic and engine records, persisted and watched",
        |context| async move {
            let store = IdentityStore::open(context.home, context.stats)?;
            let client: identity_store::Client = capnp_rpc::new_client(store);
            Ok(client.client.into())
        },
    )
}
