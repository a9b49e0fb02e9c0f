//! Keeps the routing table's cache current: on every (re)connection to the identity store the
//! cache is cleared (notifications may have been missed) and a watcher is registered, which
//! applies each IdentityUpdated to the table.

use crate::attachment::Attachment;
use crate::table::{Known, RoutingTable};
use netmachine_schema::identity_store_capnp::{identity_store, identity_watcher};
use netmachine_schema::service_capnp::subscription;
use netmachine_schema::Identity;
use std::cell::RefCell;
use std::rc::Rc;

/// Receives IdentityUpdated from the identity store.
pub struct TableWatcher {
    table: Rc<RefCell<RoutingTable<Attachment>>>,
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
        self.table.borrow_mut().updated(id, known);
        Ok(())
    }
}

/// What the router runs each time its link to the identity store comes up.
pub fn on_identity_store_connect(
    table: Rc<RefCell<RoutingTable<Attachment>>>,
    subscription: Rc<RefCell<Option<subscription::Client>>>,
) -> impl Fn(identity_store::Client) -> std::pin::Pin<Box<dyn std::future::Future<Output = capnp::Result<()>>>> {
    move |store| {
        let table = table.clone();
        let subscription = subscription.clone();
        Box::pin(async move {
            table.borrow_mut().forget_known();
            let watcher: identity_watcher::Client = capnp_rpc::new_client(TableWatcher { table });
            let mut request = store.watch_request();
            request.get().set_watcher(watcher);
            let answer = request.send().promise.await?;
            *subscription.borrow_mut() = Some(answer.get()?.get_subscription()?);
            Ok(())
        })
    }
}
