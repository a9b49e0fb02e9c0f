//! `netmachine-transport`: the node's connections to other nodes (QUIC/TLS). This version runs,
//! links to the router and the identity store, and reports status; it carries no traffic yet.

use netmachine_schema::transport_capnp::transport;
use netmachine_service::standby::Standby;
use netmachine_service::{process, ServiceKind};

fn main() -> std::process::ExitCode {
    process::run(ServiceKind::Transport, "netmachine transport: connections to other nodes", |context| async move {
        let standby = Standby::new(
            context,
            &[ServiceKind::Router, ServiceKind::IdentityStore],
            "not yet: QUIC connections to other nodes; this version carries no inter-node traffic",
        );
        Ok(capnp_rpc::new_client::<transport::Client, _>(standby).client)
    })
}
