//! `netmachine-storage`: content-addressed blocks, served on `$RUN/storage.sock`; other nodes'
//! block requests arrive, through the transport, on `$RUN/storage.bulk.sock`.

use netmachine_schema::storage_capnp::storage;
use netmachine_service::{process, ServiceKind};
use netmachine_storage::server::StorageService;

fn main() -> std::process::ExitCode {
    process::run(ServiceKind::Storage, "netmachine storage: content-addressed blocks", |context| async move {
        let bulk = netmachine_service::bulk::bind(&context.home, ServiceKind::Storage).await?;
        let service = StorageService::open(context.home, context.stats)?;
        service.serve_bulk(bulk);
        Ok(capnp_rpc::new_client::<storage::Client, _>(service).client.into())
    })
}
