//! How a command talks to the services of a running node: a current-thread runtime with a
//! `LocalSet` (Cap'n Proto RPC is single-threaded), and a connection to one service's socket.

use anyhow::{Context, Result};
use netmachine_service::{rpc, NodeHome, ServiceKind};
use std::future::Future;

/// Runs `work` to completion on a fresh single-threaded runtime.
pub fn run_local<T>(work: impl Future<Output = Result<T>>) -> Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    tokio::task::LocalSet::new().block_on(&runtime, work)
}

/// Connects to `kind`'s socket and returns its interface.
pub async fn connect<C: capnp::capability::FromClientHook>(home: &NodeHome, kind: ServiceKind) -> Result<C> {
    let socket = home.socket(kind);
    let (client, _driver) = rpc::connect::<C>(&socket, home.config.rpc_word_limit())
        .await
        .with_context(|| format!("cannot reach {} at {} (is the node running? `netmachine up`)", kind.name(), socket.display()))?;
    Ok(client)
}
