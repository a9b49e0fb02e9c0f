//! The identity store's RPC face: lookup, update (checked), delete, list, and watchers that
//! are told of every change. A watcher that falls too far behind is dropped and counted.

use crate::core::{Change, Records};
use crate::db::RecordDb;
use netmachine_schema::identity_capnp::identity_record;
use netmachine_schema::identity_store_capnp::{identity_store, identity_watcher};
use netmachine_schema::service_capnp::service;
use netmachine_schema::Identity;
use netmachine_service::fanout::Fanout;
use netmachine_service::home::{NodeHome, ServiceKind};
use netmachine_service::rpc::ConnectionStats;
use netmachine_service::status::StatusReport;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// Watchers at once; more are refused.
const MAX_WATCHERS: usize = 256;

/// The identity store service.
pub struct IdentityStore {
    records: RefCell<Records>,
    db: RecordDb,
    home: NodeHome,
    stats: Rc<ConnectionStats>,
    watchers: Rc<Fanout<identity_watcher::Client>>,
    accepted: Cell<u64>,
    refused: Cell<u64>,
}

impl IdentityStore {
    /// Opens the store's database in `$DATA` and reads every record from it (one that cannot
    /// be read is left out, with a warning).
    pub fn open(home: NodeHome, stats: Rc<ConnectionStats>) -> Result<Self, redb::Error> {
        let db = RecordDb::open(&home.data_dir().join("identities.redb"))?;
        let mut records = Records::new(home.config.limits.max_records, home.config.rpc_word_limit());
        for (id, record) in db.all()? {
            let id = Identity(id);
            if let Err(error) = records.load(id, record) {
                tracing::warn!(%id, %error, "left out an unreadable record");
            }
        }
        Ok(IdentityStore {
            records: RefCell::new(records),
            db,
            home,
            stats,
            watchers: Fanout::new("identity updates", MAX_WATCHERS),
            accepted: Cell::new(0),
            refused: Cell::new(0),
        })
    }

    /// Makes `change` durable, then holds it and tells the watchers (`record` is what a put
    /// stores, as the caller sent it).
    fn commit(&self, change: Change, record: Option<identity_record::Reader<'_>>) -> capnp::Result<()> {
        let id = match &change {
            Change::Put { id, record } => self.db.put(&id.0, record).map(|()| *id),
            Change::Delete { id } => self.db.delete(&id.0).map(|_| *id),
        }
        .map_err(storage_error)?;
        self.records.borrow_mut().apply(change);
        self.notify(id, record);
        Ok(())
    }

    fn notify(&self, id: Identity, record: Option<identity_record::Reader<'_>>) {
        self.watchers.notify(|watcher| {
            let mut request = watcher.identity_updated_request();
            let mut params = request.get();
            params.set_id(&id.0);
            params.set_deleted(record.is_none());
            let copied = record.map_or(Ok(()), |r| params.set_record(r));
            async move {
                copied?;
                request.send().promise.await.map(|_| ())
            }
        });
    }
}

fn storage_error(e: redb::Error) -> capnp::Error {
    capnp::Error::failed(format!("identity store database: {e}"))
}

fn identity(field: &'static str, bytes: &[u8]) -> capnp::Result<Identity> {
    Identity::from_slice(field, bytes).map_err(|e| capnp::Error::failed(e.to_string()))
}

impl service::Server for IdentityStore {
    async fn status(self: Rc<Self>, _: service::StatusParams, mut results: service::StatusResults) -> capnp::Result<()> {
        let mut counters = vec![
            ("updates_accepted", self.accepted.get()),
            ("updates_refused", self.refused.get()),
            ("watchers_dropped", self.watchers.dropped()),
        ];
        counters.extend(self.stats.counters());
        let mut gauges = vec![("records", self.records.borrow().len()), ("watchers", self.watchers.len() as u64)];
        gauges.extend(self.stats.gauges());
        StatusReport {
            kind: ServiceKind::IdentityStore,
            node: self.home.node_identity().ok().flatten(),
            note: "",
            links: vec![],
            counters,
            gauges,
            labelled: vec![],
            engines: vec![],
        }
        .write(results.get().init_status());
        Ok(())
    }
}

impl identity_store::Server for IdentityStore {
    async fn lookup(self: Rc<Self>, params: identity_store::LookupParams, mut results: identity_store::LookupResults) -> capnp::Result<()> {
        let id = identity("id", params.get()?.get_id()?)?;
        let records = self.records.borrow();
        if let Some(stored) = records.get(&id) {
            let mut out = results.get();
            out.set_found(true);
            out.set_record(records.decode(stored)?.get_root::<identity_record::Reader>()?)?;
        }
        Ok(())
    }

    async fn update(self: Rc<Self>, params: identity_store::UpdateParams, mut results: identity_store::UpdateResults) -> capnp::Result<()> {
        let params = params.get()?;
        let id = identity("id", params.get_id()?)?;
        let record = params.get_record()?;
        let decided = self.records.borrow().update(id, record);
        let mut result = results.get().init_result();
        match decided {
            Ok(change) => {
                self.commit(change, Some(record))?;
                self.accepted.set(self.accepted.get() + 1);
                tracing::info!(%id, "record updated");
                result.set_accepted(());
            }
            Err(refusal) => {
                self.refused.set(self.refused.get() + 1);
                tracing::warn!(%id, reason = ?refusal.reason, detail = %refusal.detail, "update refused");
                let mut refused = result.init_refused();
                refused.set_reason(refusal.reason);
                refused.set_detail(refusal.detail.as_str());
            }
        }
        Ok(())
    }

    async fn delete(self: Rc<Self>, params: identity_store::DeleteParams, mut results: identity_store::DeleteResults) -> capnp::Result<()> {
        let id = identity("id", params.get()?.get_id()?)?;
        let change = self.records.borrow().delete(id);
        results.get().set_existed(change.is_some());
        if let Some(change) = change {
            self.commit(change, None)?;
            tracing::info!(%id, "record deleted");
        }
        Ok(())
    }

    async fn list(self: Rc<Self>, params: identity_store::ListParams, mut results: identity_store::ListResults) -> capnp::Result<()> {
        let params = params.get()?;
        let kind = params.get_kind()?;
        let after = match params.get_after()? {
            [] => None,
            bytes => Some(identity("after", bytes)?),
        };
        let records = self.records.borrow();
        let entries = records.list(kind, after, params.get_limit());
        let mut out = results.get().init_entries(entries.len() as u32);
        for (i, (id, record)) in entries.into_iter().enumerate() {
            let mut entry = out.reborrow().get(i as u32);
            entry.set_id(&id.0);
            entry.set_record(records.decode(record)?.get_root::<identity_record::Reader>()?)?;
        }
        Ok(())
    }

    async fn watch(self: Rc<Self>, params: identity_store::WatchParams, mut results: identity_store::WatchResults) -> capnp::Result<()> {
        let subscription = self.watchers.subscribe(params.get()?.get_watcher()?)?;
        results.get().set_subscription(subscription);
        Ok(())
    }
}
