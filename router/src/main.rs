//! `netmachine-router`: routes every message of the node; engines attach on `$RUN/router.sock`.
//! It also serves the node's metrics endpoint when `metrics.listen` is set.

use netmachine_router::shell::RouterState;
use netmachine_service::process::Misconfigured;
use netmachine_service::{metrics, process, ServiceKind};

fn main() -> std::process::ExitCode {
    process::run(
        ServiceKind::Router,
        "netmachine router: attaches engines and routes their messages",
        |context| async move {
            let key = context.home.node_key()?;
            tracing::info!(node = %key.identity(), "node key loaded");
            if let Some(addr) = context.home.config.metrics.listen {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| Misconfigured(format!("metrics.listen {addr}: {}", process::io_reason(&e))))?;
                tracing::info!(%addr, "metrics at /metrics");
                tokio::task::spawn_local(metrics::serve(listener, context.home.clone()));
            }
            let state = RouterState::new(context.home, key, context.stats);
            let open_to_others = state.open_to_other_users();
            let serving = state.clone();
            let bootstrap = Box::new(move |peer| serving.client(peer).client);
            // Stopping, the router leaves its engines' rings for the next one, as a kill -9 does.
            let on_stop = Box::pin(async move { state.keep_rings_for_next_router() });
            Ok(process::Running { bootstrap, on_stop: Some(on_stop), open_to_others })
        },
    )
}
