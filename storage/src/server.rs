//! The storage service's RPC face: put and get whole, write in pieces, open and read by
//! ranges, extend, list and collect; status with its counters. Decisions are the catalog's; the
//! bytes are the store's. Hashing a large put runs on a blocking thread, off the service's.

use crate::core::catalog::{Catalog, Entry, Refusal, Reservation};
use crate::core::Millis;
use crate::reputation::Reputation;
use crate::store::{Content, Finished, Partial, Pending, PutError, Store, StoreError};
use netmachine_schema::identity_store_capnp::identity_store;
use netmachine_schema::transport_capnp::transport;
use netmachine_schema::Identity;
use netmachine_service::Link;
use std::collections::BTreeMap;
use capnp::capability::Rc as CapRc;
use netmachine_schema::service_capnp::service;
use netmachine_schema::storage_capnp::{block_info, block_reader, block_writer, refused, storage, StorageRefusal};
use netmachine_schema::time::now_ms;
use netmachine_schema::ContentId;
use netmachine_service::home::{NodeHome, ServiceKind};
use netmachine_service::rpc::ConnectionStats;
use netmachine_service::status::StatusReport;
use std::cell::{Cell, RefCell};
use std::os::unix::fs::FileExt;
use std::rc::Rc;

/// What one refused call says: a reason the caller can act on, and a sentence.
pub(crate) struct Refused(pub StorageRefusal, pub String);

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Self {
        let reason = match refusal {
            Refusal::TooLarge { .. } => StorageRefusal::TooLarge,
            Refusal::OverBudget { .. } => StorageRefusal::OverBudget,
            Refusal::Expired { .. } => StorageRefusal::Expired,
            Refusal::Unknown(_) => StorageRefusal::Unknown,
        };
        Refused(reason, refusal.to_string())
    }
}

impl From<StoreError> for Refused {
    fn from(error: StoreError) -> Self {
        let reason = match &error {
            StoreError::Put(PutError::WrongId { .. }) => StorageRefusal::WrongId,
            StoreError::Put(PutError::SizeMismatch { .. }) => StorageRefusal::SizeMismatch,
            StoreError::Db(_) | StoreError::Io(_) => {
                tracing::error!(%error, "the block store failed");
                StorageRefusal::Failed
            }
        };
        Refused(reason, error.to_string())
    }
}

impl Refused {
    fn write(&self, mut out: refused::Builder<'_>) {
        out.set_reason(self.0);
        out.set_detail(self.1.as_str());
    }
}

fn write_info(mut out: block_info::Builder<'_>, id: &ContentId, entry: &Entry) {
    out.set_id(&id.0);
    out.set_size(entry.size);
    out.set_expiry(entry.expiry);
    out.set_min_trust(entry.min_trust);
    out.set_complete(true);
}

/// An id as the caller sent it: exactly 32 bytes (or none, where an id is optional).
fn read_id(bytes: &[u8]) -> Result<ContentId, Refused> {
    ContentId::from_slice("id", bytes).map_err(|e| Refused(StorageRefusal::Malformed, e.to_string()))
}

fn optional_id(bytes: &[u8]) -> Result<Option<ContentId>, Refused> {
    if bytes.is_empty() {
        return Ok(None);
    }
    read_id(bytes).map(Some)
}

/// What the service counts, for status.
#[derive(Default)]
pub(crate) struct Counters {
    puts: Cell<u64>,
    puts_existing: Cell<u64>,
    puts_refused: Cell<u64>,
    gets: Cell<u64>,
    gets_missed: Cell<u64>,
    bytes_read: Cell<u64>,
    extended: Cell<u64>,
    pub fetches: Cell<u64>,
    pub fetches_completed: Cell<u64>,
    pub fetches_failed: Cell<u64>,
    pub bytes_fetched: Cell<u64>,
    pub peers_cut: Cell<u64>,
    pub streams_served: Cell<u64>,
    pub bytes_served: Cell<u64>,
    pub serves_refused: Cell<u64>,
}

pub(crate) fn bump(counter: &Cell<u64>) {
    add(counter, 1);
}

pub(crate) fn add(counter: &Cell<u64>, n: u64) {
    counter.set(counter.get() + n);
}

/// A block kept: its id and entry, and whether it is new here (else it was held already and
/// its lease is extended).
pub(crate) struct Kept {
    pub id: ContentId,
    pub entry: Entry,
    pub new: bool,
}

/// The state the service and its writers, readers and fetches share.
pub(crate) struct Shared {
    pub catalog: RefCell<Catalog>,
    pub store: Store,
    pub counters: Counters,
    /// The largest block `get` answers whole.
    pub(crate) max_message_bytes: u64,
    /// The nodes connected, to ask for a block.
    pub transport: Link<transport::Client>,
    /// Where the transport takes this service's bulk streams to other nodes' storage services.
    pub transport_bulk: Rc<std::path::Path>,
    /// Where a topic's publisher is, to fetch from its node first.
    pub identity_store: Link<identity_store::Client>,
    /// Blocks being fetched (a second asker waits for the first fetch), and the partial blocks
    /// left by fetches that did not finish, to resume.
    pub fetching: RefCell<BTreeMap<ContentId, tokio::sync::watch::Receiver<bool>>>,
    pub partials: RefCell<BTreeMap<ContentId, Partial>>,
    /// Per node, how its answers went: lowered for each cut, raised for each block it gave.
    pub reputation: RefCell<Reputation>,
    /// The outboard of the block served last (see `serving`).
    pub last_outboard: RefCell<Option<(ContentId, std::sync::Arc<Vec<u8>>)>>,
}

impl Shared {
    /// Reserves room for a put of `size` bytes expiring at `expiry` (0: the default lease).
    fn begin(&self, size: u64, expiry: Millis, min_trust: u8) -> Result<(Reservation, Entry, Pending), Refused> {
        let mut catalog = self.catalog.borrow_mut();
        let expiry = catalog.lease(expiry, now_ms())?;
        let reservation = catalog.reserve(size)?;
        match self.store.pending(size) {
            Ok(pending) => Ok((reservation, Entry { size, expiry, min_trust }, pending)),
            Err(error) => {
                catalog.release(reservation);
                Err(StoreError::Io(error).into())
            }
        }
    }

    /// Checks a written put and keeps it (or, if the block was held already, extends its lease).
    async fn complete(&self, reservation: Reservation, entry: Entry, pending: Pending, expected: Option<ContentId>) -> Result<(ContentId, Entry), Refused> {
        let finished = tokio::task::spawn_blocking(move || pending.finish(expected)).await;
        let kept = self.keep(reservation, entry, finished)?;
        bump(if kept.new { &self.counters.puts } else { &self.counters.puts_existing });
        Ok((kept.id, kept.entry))
    }

    /// Keeps a checked block (a put, or a fetch), or, if it was held already, extends its lease.
    pub fn keep(&self, reservation: Reservation, entry: Entry, finished: Result<Result<Finished, StoreError>, tokio::task::JoinError>) -> Result<Kept, Refused> {
        let finished = match finished {
            Ok(Ok(finished)) => finished,
            Ok(Err(error)) => {
                self.catalog.borrow_mut().release(reservation);
                return Err(error.into());
            }
            Err(join) => {
                self.catalog.borrow_mut().release(reservation);
                return Err(Refused(StorageRefusal::Failed, format!("hashing the block failed: {join}")));
            }
        };
        let id = finished.id;
        let mut catalog = self.catalog.borrow_mut();
        if let Some(held) = catalog.get(&id).copied() {
            self.store.discard(finished);
            let kept = match catalog.commit(reservation, id, entry) {
                crate::core::catalog::Committed::Existing(kept) | crate::core::catalog::Committed::New(kept) => kept,
            };
            if kept != held {
                self.store.update(&id, &kept).map_err(Refused::from)?;
            }
            return Ok(Kept { id, entry: kept, new: false });
        }
        if let Err(error) = self.store.keep(finished, &entry) {
            catalog.release(reservation);
            return Err(error.into());
        }
        catalog.commit(reservation, id, entry);
        tracing::debug!(%id, size = entry.size, "block stored");
        Ok(Kept { id, entry, new: true })
    }

    fn refused(&self, refusal: Refused) -> Refused {
        bump(&self.counters.puts_refused);
        tracing::info!(detail = %refusal.1, "a put was refused");
        refusal
    }

    /// Collects the blocks whose lease ended: removed from the catalog, then from disk.
    fn collect(&self, dry_run: bool) -> Result<crate::core::catalog::Collection, StoreError> {
        let collection = self.catalog.borrow_mut().collect(now_ms(), dry_run);
        if !dry_run && !collection.reclaimed.is_empty() {
            let ids: Vec<ContentId> = collection.reclaimed.iter().map(|(id, _)| *id).collect();
            self.store.remove(&ids)?;
            tracing::info!(blocks = ids.len(), bytes = collection.bytes, "collected expired blocks");
        }
        if !dry_run {
            for (id, _) in &collection.partials {
                self.partials.borrow_mut().remove(id);
                self.store.drop_partial(id)?;
                tracing::info!(%id, "collected a partial block left idle past storage.partial_lease_ms");
            }
        }
        Ok(collection)
    }
}

/// The storage service.
pub struct StorageService {
    shared: Rc<Shared>,
    home: NodeHome,
    stats: Rc<ConnectionStats>,
}

impl StorageService {
    /// Opens the block store in `$DATA/storage` and collects expired blocks every
    /// `storage.collect_every_ms`. Must run inside a `LocalSet`.
    pub fn open(home: NodeHome, stats: Rc<ConnectionStats>) -> Result<Self, StoreError> {
        let settings = &home.config.storage;
        let config = crate::core::Config { max_bytes: settings.max_bytes, max_block_bytes: settings.max_block_bytes, default_lease: settings.default_lease_ms, partial_lease: settings.partial_lease_ms };
        let (store, found) = Store::open(&home.data_dir().join("storage"))?;
        let mut catalog = Catalog::new(config);
        for (id, entry) in found.blocks {
            catalog.load(id, entry);
        }
        for partial in &found.partials {
            catalog.load_partial(partial.id, partial.size, now_ms());
        }
        tracing::info!(blocks = catalog.len(), bytes = catalog.usage().0, partial = found.partials.len(), "block store open");
        let words = home.config.rpc_word_limit();
        let transport = Link::start(ServiceKind::Transport, home.socket(ServiceKind::Transport), words, |_| async { Ok(()) });
        let identity_store = Link::start(ServiceKind::IdentityStore, home.socket(ServiceKind::IdentityStore), words, |_| async { Ok(()) });
        let shared = Rc::new(Shared {
            catalog: RefCell::new(catalog),
            store,
            counters: Counters::default(),
            max_message_bytes: home.config.limits.max_message_bytes.into(),
            transport,
            transport_bulk: netmachine_service::bulk::socket(&home, ServiceKind::Transport).into(),
            identity_store,
            fetching: RefCell::new(BTreeMap::new()),
            partials: RefCell::new(found.partials.into_iter().map(|p| (p.id, p)).collect()),
            reputation: RefCell::new(Reputation::load(home.data_dir().join("storage").join("reputation"))),
            last_outboard: RefCell::new(None),
        });
        let every = std::time::Duration::from_millis(settings.collect_every_ms);
        let collector = Rc::downgrade(&shared);
        tokio::task::spawn_local(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(shared) = collector.upgrade() else { return };
                if let Err(error) = shared.collect(false) {
                    tracing::error!(%error, "collection failed");
                }
            }
        });
        Ok(StorageService { shared, home, stats })
    }

    /// Answers other nodes' block requests, which the transport relays to `listener`.
    pub fn serve_bulk(&self, listener: netmachine_service::bulk::BulkListener) {
        tokio::task::spawn_local(crate::serving::serve_bulk(self.shared.clone(), listener));
    }
}

impl service::Server for StorageService {
    async fn status(self: CapRc<Self>, _: service::StatusParams, mut results: service::StatusResults) -> capnp::Result<()> {
        let catalog = self.shared.catalog.borrow();
        let counters = &self.shared.counters;
        let (used, reserved) = catalog.usage();
        let mut gauges = vec![
            ("blocks", catalog.len() as u64),
            ("bytes_held", used),
            ("bytes_reserved", reserved),
            ("partial_blocks", self.shared.partials.borrow().len() as u64),
        ];
        gauges.extend(self.stats.gauges());
        let mut counters = vec![
            ("puts", counters.puts.get()),
            ("puts_existing", counters.puts_existing.get()),
            ("puts_refused", counters.puts_refused.get()),
            ("gets", counters.gets.get()),
            ("gets_missed", counters.gets_missed.get()),
            ("bytes_read", counters.bytes_read.get()),
            ("leases_extended", counters.extended.get()),
            ("collected_blocks", catalog.collected.0),
            ("collected_bytes", catalog.collected.1),
            ("fetches", counters.fetches.get()),
            ("fetches_completed", counters.fetches_completed.get()),
            ("fetches_failed", counters.fetches_failed.get()),
            ("bytes_fetched", counters.bytes_fetched.get()),
            ("peers_cut", counters.peers_cut.get()),
            ("streams_served", counters.streams_served.get()),
            ("bytes_served", counters.bytes_served.get()),
            ("serves_refused", counters.serves_refused.get()),
        ];
        counters.extend(self.stats.counters());
        let links = vec![self.shared.transport.state(), self.shared.identity_store.state()];
        let note = self.shared.reputation.borrow().note();
        StatusReport { kind: ServiceKind::Storage, node: self.home.node_identity().ok().flatten(), note: &note, links, counters, gauges, labelled: vec![], engines: vec![] }
            .write(results.get().init_status());
        Ok(())
    }
}

impl storage::Server for StorageService {
    async fn put(self: CapRc<Self>, params: storage::PutParams, mut results: storage::PutResults) -> capnp::Result<()> {
        let block = params.get()?.get_block()?;
        let prefs = block.get_prefs()?;
        let content = block.get_content()?;
        let id = block.get_id()?;
        let shared = &self.shared;
        let outcome = async {
            let expected = optional_id(id)?;
            let (reservation, entry, mut pending) = shared.begin(content.len() as u64, prefs.get_expiry(), prefs.get_min_trust())?;
            let written = match pending.write(content) {
                Ok(Some(handoff)) => handoff.send().await.map_err(StoreError::from),
                Ok(None) => Ok(()),
                Err(error) => Err(error),
            };
            if let Err(error) = written {
                pending.abandon();
                shared.catalog.borrow_mut().release(reservation);
                return Err(error.into());
            }
            shared.complete(reservation, entry, pending, expected).await
        };
        let outcome = outcome.await.map_err(|refused| shared.refused(refused));
        let out = results.get().init_result();
        match outcome {
            Ok((id, entry)) => write_info(out.init_stored(), &id, &entry),
            Err(refused) => refused.write(out.init_refused()),
        }
        Ok(())
    }

    async fn get(self: CapRc<Self>, params: storage::GetParams, mut results: storage::GetResults) -> capnp::Result<()> {
        let shared = &self.shared;
        bump(&shared.counters.gets);
        let found = read_id(params.get()?.get_request()?.get_id()?).and_then(|id| {
            let entry = shared.catalog.borrow().get(&id).copied().ok_or(Refusal::Unknown(id))?;
            if entry.size > shared.max_message_bytes {
                let detail = format!("block {id} is {} bytes, more than one message carries ({}): open it and read it by ranges", entry.size, shared.max_message_bytes);
                return Err(Refused(StorageRefusal::TooLarge, detail));
            }
            Ok((id, entry.size, shared.store.content(&id, &entry)?))
        });
        // A file is read off the service's thread: a block is written past the page cache.
        let found = match found {
            Ok((id, _, Content::Inline(bytes))) => Ok((id, bytes)),
            Ok((id, size, Content::File(file))) => match read_file(file, 0, size).await {
                Ok(bytes) => Ok((id, bytes)),
                Err(error) => Err(StoreError::Io(error).into()),
            },
            Err(refused) => Err(refused),
        };
        let out = results.get().init_result();
        match found {
            Ok((id, content)) => {
                shared.counters.bytes_read.set(shared.counters.bytes_read.get() + content.len() as u64);
                let mut response = out.init_found();
                response.set_id(&id.0);
                response.set_content(&content);
            }
            Err(refused) => {
                bump(&shared.counters.gets_missed);
                refused.write(out.init_refused());
            }
        }
        Ok(())
    }

    async fn extend(self: CapRc<Self>, params: storage::ExtendParams, mut results: storage::ExtendResults) -> capnp::Result<()> {
        let params = params.get()?;
        let shared = &self.shared;
        let extended = read_id(params.get_id()?).and_then(|id| {
            let before = shared.catalog.borrow().get(&id).copied();
            let entry = shared.catalog.borrow_mut().extend(id, params.get_expiry(), now_ms())?;
            if before != Some(entry) {
                shared.store.update(&id, &entry)?;
            }
            Ok((id, entry))
        });
        let out = results.get().init_result();
        match extended {
            Ok((id, entry)) => {
                bump(&shared.counters.extended);
                write_info(out.init_extended(), &id, &entry);
            }
            Err(refused) => refused.write(out.init_refused()),
        }
        Ok(())
    }

    async fn write(self: CapRc<Self>, params: storage::WriteParams, mut results: storage::WriteResults) -> capnp::Result<()> {
        let params = params.get()?;
        let prefs = params.get_prefs()?;
        let shared = &self.shared;
        let begun = optional_id(params.get_id()?).and_then(|expected| Ok((expected, shared.begin(params.get_size(), prefs.get_expiry(), prefs.get_min_trust())?)));
        let mut out = results.get().init_result();
        match begun {
            Ok((expected, (reservation, entry, pending))) => {
                let writer = BlockWriter { shared: shared.clone(), put: RefCell::new(Some((reservation, entry, pending))), expected, failed: RefCell::new(None) };
                out.set_writer(capnp_rpc::new_client(writer));
            }
            Err(refused) => shared.refused(refused).write(out.init_refused()),
        }
        Ok(())
    }

    async fn open(self: CapRc<Self>, params: storage::OpenParams, mut results: storage::OpenResults) -> capnp::Result<()> {
        let params = params.get()?;
        let shared = &self.shared;
        bump(&shared.counters.gets);
        let from = params.get_from()?.iter().map(|node| Identity::from_slice("from", node?).map_err(|e| capnp::Error::failed(e.to_string()))).collect::<capnp::Result<Vec<_>>>()?;
        let topic = match params.get_topic()? {
            [] => None,
            bytes => Some(Identity::from_slice("topic", bytes).map_err(|e| capnp::Error::failed(e.to_string()))?),
        };
        let progress = params.has_progress().then(|| params.get_progress()).transpose()?;
        let wanted = read_id(params.get_id()?);
        let fetched = match wanted {
            Ok(id) if shared.catalog.borrow().get(&id).is_none() && !params.get_local_only() => crate::fetching::fetch(shared.clone(), id, from, topic, progress).await,
            _ => Ok(()),
        };
        let opened = wanted.and_then(|id| {
            fetched?;
            let entry = shared.catalog.borrow().get(&id).copied().ok_or(Refusal::Unknown(id))?;
            let content = shared.store.content(&id, &entry)?;
            shared.catalog.borrow_mut().hold(id);
            Ok((id, entry, content))
        });
        let out = results.get().init_result();
        match opened {
            Ok((id, entry, content)) => {
                let reader = BlockReader { shared: shared.clone(), id, size: entry.size, content };
                let mut opened = out.init_opened();
                opened.set_reader(capnp_rpc::new_client(reader));
                write_info(opened.init_info(), &id, &entry);
            }
            Err(refused) => {
                bump(&shared.counters.gets_missed);
                refused.write(out.init_refused());
            }
        }
        Ok(())
    }

    async fn blocks(self: CapRc<Self>, _: storage::BlocksParams, mut results: storage::BlocksResults) -> capnp::Result<()> {
        let catalog = self.shared.catalog.borrow();
        let partials = self.shared.partials.borrow();
        let mut out = results.get().init_blocks((catalog.len() + partials.len()) as u32);
        for (i, (id, entry)) in catalog.iter().enumerate() {
            write_info(out.reborrow().get(i as u32), id, entry);
        }
        // Blocks being fetched, or whose fetch stopped: what they will be once complete.
        for (i, partial) in partials.values().enumerate() {
            let mut info = out.reborrow().get((catalog.len() + i) as u32);
            info.set_id(&partial.id.0);
            info.set_size(partial.size);
            info.set_complete(false);
        }
        Ok(())
    }

    async fn collect(self: CapRc<Self>, params: storage::CollectParams, mut results: storage::CollectResults) -> capnp::Result<()> {
        let collection = self.shared.collect(params.get()?.get_dry_run()).map_err(|e| capnp::Error::failed(e.to_string()))?;
        let mut out = results.get();
        out.set_bytes(collection.bytes);
        out.set_held(collection.held);
        let blocks = collection.reclaimed.iter().map(|(id, size)| (id, size, true));
        let partials = collection.partials.iter().map(|(id, size)| (id, size, false));
        let mut reclaimed = out.init_reclaimed((collection.reclaimed.len() + collection.partials.len()) as u32);
        for (i, (id, size, complete)) in blocks.chain(partials).enumerate() {
            let mut info = reclaimed.reborrow().get(i as u32);
            info.set_id(&id.0);
            info.set_size(*size);
            info.set_complete(complete);
        }
        Ok(())
    }
}

/// A put being written in pieces. Dropped unfinished, it gives its room back and leaves no file.
struct BlockWriter {
    shared: Rc<Shared>,
    put: RefCell<Option<(Reservation, Entry, Pending)>>,
    expected: Option<ContentId>,
    /// The first refusal, said again by `finish`.
    failed: RefCell<Option<String>>,
}

impl BlockWriter {
    fn fail(&self, refused: Refused) -> capnp::Error {
        let detail = refused.1.clone();
        self.failed.borrow_mut().get_or_insert(detail.clone());
        if let Some((reservation, _, pending)) = self.put.borrow_mut().take() {
            pending.abandon();
            self.shared.catalog.borrow_mut().release(reservation);
        }
        capnp::Error::failed(detail)
    }
}

impl block_writer::Server for BlockWriter {
    async fn write(self: CapRc<Self>, params: block_writer::WriteParams) -> capnp::Result<()> {
        let bytes = params.get()?.get_bytes()?;
        let taken = match self.put.borrow_mut().as_mut() {
            Some((_, _, pending)) => pending.write(bytes),
            None => return Err(capnp::Error::failed(self.failed.borrow().clone().unwrap_or_else(|| "the put is already finished".into()))),
        };
        let written = match taken {
            Ok(Some(handoff)) => handoff.send().await.map_err(StoreError::from),
            Ok(None) => Ok(()),
            Err(error) => Err(error),
        };
        written.map_err(|error| self.fail(error.into()))
    }

    async fn finish(self: CapRc<Self>, _: block_writer::FinishParams, mut results: block_writer::FinishResults) -> capnp::Result<()> {
        let put = self.put.borrow_mut().take();
        let failed = self.failed.borrow().clone();
        let outcome = match (put, failed) {
            (Some((reservation, entry, pending)), _) => self.shared.complete(reservation, entry, pending, self.expected).await,
            (None, Some(detail)) => Err(Refused(StorageRefusal::SizeMismatch, detail)),
            (None, None) => Err(Refused(StorageRefusal::Malformed, "the put is already finished".into())),
        };
        let out = results.get().init_result();
        match outcome.map_err(|refused| self.shared.refused(refused)) {
            Ok((id, entry)) => write_info(out.init_stored(), &id, &entry),
            Err(refused) => refused.write(out.init_refused()),
        }
        Ok(())
    }
}

impl Drop for BlockWriter {
    fn drop(&mut self) {
        if let Some((reservation, _, pending)) = self.put.get_mut().take() {
            pending.abandon();
            self.shared.catalog.borrow_mut().release(reservation);
        }
    }
}

/// An open block: held, so not collected, until the reader is dropped.
struct BlockReader {
    shared: Rc<Shared>,
    id: ContentId,
    size: u64,
    content: Content,
}

/// The largest piece one read returns.
pub const MAX_READ: u32 = 1 << 20;

/// How far past a read of a block's file the kernel is asked to read ahead (8 MiB).
const READ_AHEAD: i64 = 8 << 20;

/// Reads `len` bytes of a block's file at `offset`, off the service's thread: a block is written
/// past the page cache, so reading it waits for the disk, and the reads the SDK keeps in flight
/// go at once. They come in any order, which the kernel's readahead takes for random reads, so
/// each asks for what follows (a hint; cold gets went from about 600 to 1300 MB/s here).
async fn read_file(file: std::sync::Arc<std::fs::File>, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    let read = tokio::task::spawn_blocking(move || {
        let _ = nix::fcntl::posix_fadvise(&*file, (offset + len) as i64, READ_AHEAD, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED);
        let mut bytes = vec![0; len as usize];
        file.read_exact_at(&mut bytes, offset).map(|()| bytes)
    });
    read.await.map_err(std::io::Error::other)?
}

impl block_reader::Server for BlockReader {
    async fn read(self: CapRc<Self>, params: block_reader::ReadParams, mut results: block_reader::ReadResults) -> capnp::Result<()> {
        let params = params.get()?;
        let offset = params.get_offset();
        if offset > self.size {
            return Err(capnp::Error::failed(format!("offset {offset} is past the end of block {} ({} bytes)", self.id, self.size)));
        }
        let length = params.get_length().min(MAX_READ) as u64;
        let end = self.size.min(offset + length);
        match &self.content {
            Content::Inline(bytes) => results.get().set_bytes(&bytes[offset as usize..end as usize]),
            Content::File(file) => {
                let bytes = read_file(file.clone(), offset, end - offset).await.map_err(|e| capnp::Error::failed(format!("reading block {}: {e}", self.id)))?;
                results.get().set_bytes(&bytes);
            }
        }
        let counter = &self.shared.counters.bytes_read;
        counter.set(counter.get() + end - offset);
        Ok(())
    }
}

impl Drop for BlockReader {
    fn drop(&mut self) {
        self.shared.catalog.borrow_mut().let_go(self.id);
    }
}
