//! The identity store's RPC face: lookup, update (checked), delete, list, and watchers that
//! are told of every change. A watcher that falls too far behind is dropped and counted.

use crate::check::{check_room, check_update, of_kind, Refusal};
use crate::db::RecordDb;
use capnp::message::{Builder, HeapAllocator, Reader};
use capnp::serialize::OwnedSegments;
use netmachine_schema::identity_capnp::identity_record;
use netmachine_schema::identity_store_capnp::{identity_store, identity_watcher};
use netmachine_schema::service_capnp::service;
use netmachine_schema::Identity;
use netmachine_service::fanout::Fanout;
use netmachine_service::home::{NodeHome, ServiceKind};
use netmachine_service::rpc::{reader_options, ConnectionStats};
use netmachine_service::status::StatusReport;
use std::cell::Cell;
use std::rc::Rc;

/// Watchers at once; more are refused.
const MAX_WATCHERS: usize = 256;
/// Entries one `list` call returns at most.
const MAX_LIST: u32 = 1000;

/// The identity store service.
pub struct IdentityStore {
    db: RecordDb,
    home: NodeHome,
    stats: Rc<ConnectionStats>,
    watchers: Rc<Fanout<identity_watcher::Client>>,
    accepted: Cell<u64>,
    refused: Cell<u64>,
}

impl IdentityStore {
    /// Opens the store's database in `$DATA`.
    pub fn open(home: NodeHome, stats: Rc<ConnectionStats>) -> Result<Self, redb::Error> {
        let db = RecordDb::open(&home.data_dir().join("identities.redb"))?;
        Ok(IdentityStore {
            db,
            home,
            stats,
            watchers: Fanout::new("identity updates", MAX_WATCHERS),
            accepted: Cell::new(0),
            refused: Cell::new(0),
        })
    }

    fn decode(&self, bytes: &[u8]) -> capnp::Result<Reader<OwnedSegments>> {
        capnp::serialize::read_message(&mut &bytes[..], reader_options(self.home.config.rpc_word_limit()))
    }

    fn stored(&self, id: &[u8; 32]) -> capnp::Result<Option<Reader<OwnedSegments>>> {
        match self.db.get(id).map_err(storage_error)? {
            Some(bytes) => Ok(Some(self.decode(&bytes)?)),
            None => Ok(None),
        }
    }

    fn apply(&self, id: Identity, record: identity_record::Reader<'_>) -> capnp::Result<Result<(), Refusal>> {
        let existing = self.stored(&id.0)?;
        let existing_root = existing.as_ref().map(|m| m.get_root::<identity_record::Reader>()).transpose()?;
        if let Err(refusal) = check_update(&id, record, existing_root) {
            return Ok(Err(refusal));
        }
        if existing.is_none() {
            if let Err(refusal) = check_room(self.db.count().map_err(storage_error)?, self.home.config.limits.max_records) {
                return Ok(Err(refusal));
            }
        }
        let mut copy = Builder::new_default();
        copy.set_root(record)?;
        self.db.put(&id.0, &capnp::serialize::write_message_to_words(&copy)).map_err(storage_error)?;
        self.notify(id, Some(&copy));
        Ok(Ok(()))
    }

    fn notify(&self, id: Identity, record: Option<&Builder<HeapAllocator>>) {
        let record = record.and_then(|r| r.get_root_as_reader::<identity_record::Reader>().ok());
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
            ("records", self.db.count().map_err(storage_error)?),
            ("updates_accepted", self.accepted.get()),
            ("updates_refused", self.refused.get()),
            ("watchers", self.watchers.len() as u64),
            ("watchers_dropped", self.watchers.dropped()),
        ];
        counters.extend(self.stats.counters());
        StatusReport {
            kind: ServiceKind::IdentityStore,
            node: self.home.node_identity().ok().flatten(),
            note: "",
            links: vec![],
            counters,
            engines: vec![],
        }
        .write(results.get().init_status());
        Ok(())
    }
}

impl identity_store::Server for IdentityStore {
    async fn lookup(self: Rc<Self>, params: identity_store::LookupParams, mut results: identity_store::LookupResults) -> capnp::Result<()> {
        let id = identity("id", params.get()?.get_id()?)?;
        if let Some(stored) = self.stored(&id.0)? {
            let mut out = results.get();
            out.set_found(true);
            out.set_record(stored.get_root::<identity_record::Reader>()?)?;
        }
        Ok(())
    }

    async fn update(self: Rc<Self>, params: identity_store::UpdateParams, mut results: identity_store::UpdateResults) -> capnp::Result<()> {
        let params = params.get()?;
        let id = identity("id", params.get_id()?)?;
        let outcome = self.apply(id, params.get_record()?)?;
        let mut result = results.get().init_result();
        match outcome {
            Ok(()) => {
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
        let existed = self.db.delete(&id.0).map_err(storage_error)?;
        if existed {
            tracing::info!(%id, "record deleted");
            self.notify(id, None);
        }
        results.get().set_existed(existed);
        Ok(())
    }

    async fn list(self: Rc<Self>, params: identity_store::ListParams, mut results: identity_store::ListResults) -> capnp::Result<()> {
        let params = params.get()?;
        let kind = params.get_kind()?;
        let after = match params.get_after()? {
            [] => None,
            bytes => Some(identity("after", bytes)?.0),
        };
        let limit = match params.get_limit() {
            0 => MAX_LIST,
            n => n.min(MAX_LIST),
        };
        let word_limit = self.home.config.rpc_word_limit();
        let entries = self
            .db
            .scan(after, limit as usize, |bytes| {
                let Ok(message) = capnp::serialize::read_message(&mut &bytes[..], reader_options(word_limit)) else {
                    return false;
                };
                message.get_root::<identity_record::Reader>().and_then(|r| Ok(r.which()?)).is_ok_and(|which| of_kind(kind, &which))
            })
            .map_err(storage_error)?;
        let mut out = results.get().init_entries(entries.len() as u32);
        for (i, (id, bytes)) in entries.iter().enumerate() {
            let mut entry = out.reborrow().get(i as u32);
            entry.set_id(id);
            entry.set_record(self.decode(bytes)?.get_root::<identity_record::Reader>()?)?;
        }
        Ok(())
    }

    async fn watch(self: Rc<Self>, params: identity_store::WatchParams, mut results: identity_store::WatchResults) -> capnp::Result<()> {
        let subscription = self.watchers.subscribe(params.get()?.get_watcher()?)?;
        results.get().set_subscription(subscription);
        Ok(())
    }
}
