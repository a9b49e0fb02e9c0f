//! The router's side of the identity store: lookups the core asks for, and a watcher registered
//! on every (re)connection, which tells the core each IdentityUpdated (the core first forgets
//! its cache, as notifications may have been missed while the link was down).

use crate::core::{Input, Known};
use crate::shell::RouterState;
use netmachine_schema::identity_store_capnp::{identity_store, identity_watcher};
use netmachine_schema::Identity;
use std::rc::{Rc, Weak};
use std::time::Duration;

impl RouterState {
    /// Asks the identity store for `id`, and tells the core the answer.
    pub(crate) async fn lookup(self: Rc<Self>, id: Identity) {
        let answer = self.ask_store(id).await;
        self.feed(Input::LookupAnswer { id, answer });
    }

    /// Waits no longer than the core does (`Limits::lookup_wait`), for the link and the answer
    /// together.
    async fn ask_store(&self, id: Identity) -> Result<Option<Known>, String> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.core().limits().lookup_wait);
        let store = self.identity_store.client_within(deadline - tokio::time::Instant::now()).await;
        let store = store.ok_or("the identity store is unreachable")?;
        let mut request = store.lookup_request();
        request.get().set_id(&id.0);
        let answer = tokio::time::timeout_at(deadline, request.send().promise)
            .await
            .map_err(|_| "the identity store did not answer in time".to_string())?
            .map_err(|e| format!("identity store lookup failed: {e}"))?;
        let answer = answer.get().map_err(|e| e.to_string())?;
        if !answer.get_found() {
            return Ok(None);
        }
        let record = answer.get_record().map_err(|e| e.to_string())?;
        Known::from_record(record).map(Some).map_err(|e| e.to_string())
    }
}

/// Receives IdentityUpdated from the identity store.
struct TableWatcher {
    state: Weak<RouterState>,
}

impl identity_watcher::Server for TableWatcher {
    async fn identity_updated(
        self: Rc<Self>,
        params: identity_watcher::IdentityUpdatedParams,
        _: identity_watcher::IdentityUpdatedResults,
    ) -> capnp::Result<()> {
        let params = params.get()?;
        let id = Identity::from_slice("id", params.get_id()?).map_err(|e| capnp::Error::failed(e.to_string()))?;
        let known = if params.get_deleted() { None } else { Some(Known::from_record(params.get_record()?)?) };
        tracing::debug!(%id, ?known, "identity updated");
        if let Some(state) = self.state.upgrade() {
            state.feed(Input::IdentityUpdated { id, known });
        }
        Ok(())
    }
}

/// What the router runs each time its link to the identity store comes up.
pub fn on_identity_store_connect(
    state: Weak<RouterState>,
) -> impl Fn(identity_store::Client) -> std::pin::Pin<Box<dyn std::future::Future<Output = capnp::Result<()>>>> {
    move |store| {
        let state = state.clone();
        Box::pin(async move {
            if let Some(state) = state.upgrade() {
                state.feed(Input::IdentityStoreLinked);
            }
            let watcher: identity_watcher::Client = capnp_rpc::new_client(TableWatcher { state: state.clone() });
            let mut request = store.watch_request();
            request.get().set_watcher(watcher);
            let answer = request.send().promise.await?;
            if let Some(state) = state.upgrade() {
                *state.store_watch.borrow_mut() = Some(answer.get()?.get_subscription()?);
            }
            Ok(())
        })
    }
}
