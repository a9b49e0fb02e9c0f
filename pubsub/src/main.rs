//! `netmachine-pubsub`: topics across nodes. This version runs, links to the router and the
//! identity store, and reports status; it subscribes and disseminates nothing yet.

use netmachine_schema::pubsub_capnp::pub_sub;
use netmachine_service::standby::Standby;
use netmachine_service::{process, ServiceKind};

fn main() -> std::process::ExitCode {
    process::run(ServiceKind::PubSub, "netmachine pubsub: topics across nodes", |context| async move {
        let standby = Standby::new(
            context,
            &[ServiceKind::Router, ServiceKind::IdentityStore],
            "not yet: inter-node topic subscriptions and event dissemination",
        );
        Ok(capnp_rpc::new_client::<pub_sub::Client, _>(standby).client.into())
    })
}
