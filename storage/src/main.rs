//! `netmachine-storage`: content-addressed blocks. This version runs, links to the router, and
//! reports status; it stores and fetches no blocks yet.

use netmachine_schema::storage_capnp::storage;
use netmachine_service::standby::Standby;
use netmachine_service::{process, ServiceKind};

fn main() -> std::process::ExitCode {
    process::run(ServiceKind::Storage, "netmachine storage: content-addressed blocks", |context| async move {
        let standby = Standby::new(
            context,
            &[ServiceKind::Router],
            "not yet: storing blocks and fetching them from peers",
        );
        Ok(capnp_rpc::new_client::<storage::Client, _>(standby).client.into())
    })
}
