//! `netmachine-router`: routes every message of the node; engines attach on `$RUN/router.sock`.

use netmachine_router::shell::RouterState;
use netmachine_service::{process, ServiceKind};

fn main() -> std::process::ExitCode {
    process::run(
        ServiceKind::Router,
        "netmachine router: attaches engines and routes their messages",
        |context| async move {
            let key = context.home.node_key()?;
            tracing::info!(node = %key.identity(), "node key loaded");
            let state = RouterState::new(context.home, key, context.stats);
            Ok(state.client().client.into())
        },
    )
}
