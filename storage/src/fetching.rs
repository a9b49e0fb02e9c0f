//! Fetching a block this node does not hold from other nodes: the storage core's `Fetch`
//! driven over the transport's bulk streams (one per request, a few at once to each peer's
//! storage service). Checked groups go to `partial/<id>` as they arrive (written on a thread of
//! the fetch's own, see `partial`) and are recorded every 4 MiB, so a fetch cut short (kill -9
//! included) resumes from them when the block is asked for again. The disk budget is reserved
//! once the size is proven; the block is held under the default lease once complete. Peers are
//! asked in the order of their reputation here (`reputation`).

use crate::core::fetch::{Action, Ask, Fetch, FetchConfig};
use crate::core::verify::GROUP_BYTES;
use crate::core::catalog::Entry;
use crate::server::{add, bump, Refused, Shared};
use crate::serving::{write_request, Status};
use crate::partial::PartialWriter;
use crate::store::Partial;
use netmachine_schema::storage_capnp::{fetch_progress, StorageRefusal};
use netmachine_schema::time::now_ms;
use netmachine_identity_client::locate::locate;
use netmachine_schema::transport_capnp::{transport, StreamKind};
use netmachine_service::bulk::{self, Frame, Opening};
use netmachine_schema::{ContentId, Identity};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

/// Written groups are recorded (after the file is synced) every this many: a crash costs at
/// most this much of the fetch again (4 MiB).
const RECORD_EVERY: usize = 256;
/// Groups between two progress reports (1 MiB).
const PROGRESS_EVERY: usize = 64;

/// What a request's stream says, in order.
enum StreamEvent {
    /// A piece, as the transport relayed it.
    Piece(u64, bytes::Bytes),
    /// The other side finished its answer.
    Ended(u64),
    Failed(u64, String),
}

/// Fetches `id` from the node of `topic`'s publisher (if given) and from `from` (none: every
/// connected node), telling `progress` how far it is, unless another call is fetching it
/// already, in which case this waits for that one.
pub(crate) async fn fetch(shared: Rc<Shared>, id: ContentId, from: Vec<Identity>, topic: Option<Identity>, progress: Option<fetch_progress::Client>) -> Result<(), Refused> {
    let running = shared.fetching.borrow().get(&id).cloned();
    if let Some(mut running) = running {
        let _ = running.wait_for(|done| *done).await;
        return match shared.catalog.borrow().get(&id) {
            Some(_) => Ok(()),
            None => Err(Refused(StorageRefusal::Unknown, format!("block {id} could not be fetched (another request tried)"))),
        };
    }
    let (done, watch) = tokio::sync::watch::channel(false);
    shared.fetching.borrow_mut().insert(id, watch);
    bump(&shared.counters.fetches);
    let fetched = run(&shared, id, from, topic, progress).await;
    shared.fetching.borrow_mut().remove(&id);
    let _ = done.send(true);
    if let Err(Refused(_, detail)) = &fetched {
        bump(&shared.counters.fetches_failed);
        tracing::info!(%id, %detail, "a fetch failed");
    }
    fetched
}

/// The nodes to ask, best first: the publisher's node of `topic` (if found), then `from` (or
/// every connected node) by reputation.
async fn peers(shared: &Shared, transport: &transport::Client, from: Vec<Identity>, topic: Option<Identity>) -> Result<Vec<Identity>, String> {
    let mut publisher = None;
    if let Some(topic) = topic {
        let store = shared.identity_store.client_within(Duration::from_secs(5)).await.ok_or("the identity store is unreachable, so the topic cannot be found")?;
        match locate(&store, topic).await? {
            Some((_, node)) => publisher = Some(node),
            None => tracing::info!(%topic, "the topic's publisher is not known here; asking the other nodes"),
        }
    }
    let mut others = from;
    if others.is_empty() {
        let answer = transport.connected_nodes_request().send().promise.await.map_err(|e| e.to_string())?;
        for node in answer.get().map_err(|e| e.to_string())?.get_nodes().map_err(|e| e.to_string())? {
            others.push(Identity::from_slice("node", node.get_node().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?);
        }
    }
    let reputation = shared.reputation.borrow();
    others.sort_by_key(|peer| std::cmp::Reverse(reputation.of(peer)));
    let mut seen = BTreeSet::new();
    Ok(publisher.into_iter().chain(others).filter(|peer| seen.insert(*peer)).collect())
}

async fn run(shared: &Rc<Shared>, id: ContentId, from: Vec<Identity>, topic: Option<Identity>, progress: Option<fetch_progress::Client>) -> Result<(), Refused> {
    let transport = shared.transport.client_within(Duration::from_secs(5)).await.ok_or_else(|| failed("the transport is unreachable, so no other node can be asked".into()))?;
    let peers = peers(shared, &transport, from, topic).await.map_err(failed)?;
    if peers.is_empty() {
        return Err(Refused(StorageRefusal::Unknown, format!("no block {id} is held here, and no other node is connected to ask")));
    }
    let start = tokio::time::Instant::now();
    let now = || start.elapsed().as_millis() as u64;
    let config = FetchConfig::default();
    let resumed = shared.partials.borrow().get(&id).cloned();
    let mut driver = Driver { shared: shared.clone(), id, writer: None, written: BTreeSet::new(), unrecorded: 0, size: 0, progress, telling: Rc::default() };
    let mut fetch = match resumed {
        Some(Partial { size, written, .. }) => {
            driver.written.extend(written.iter().copied());
            driver.sized(size)?;
            tracing::info!(%id, size, groups = written.len(), "resuming a fetch");
            Fetch::resume(id, config, size, written)
        }
        None => Fetch::new(id, config),
    };
    fetch.add_peers(peers, now());
    let (events_in, mut events) = mpsc::channel(64);
    let mut streams: BTreeMap<u64, tokio::task::JoinHandle<()>> = BTreeMap::new();
    // Per request under way: whether its status byte was seen.
    let mut received: BTreeMap<u64, bool> = BTreeMap::new();
    let outcome = 'fetching: loop {
        while let Some(action) = fetch.poll_action() {
            match action {
                Action::Request { request, peer, ask } => {
                    let groups = match ask {
                        Ask::Last => None,
                        Ask::Groups { first, end } => Some((first, end)),
                    };
                    let asked = write_request(&id, groups);
                    streams.insert(request, tokio::task::spawn_local(open(shared.transport_bulk.clone(), peer, request, asked, events_in.clone())));
                    received.insert(request, false);
                }
                Action::Cancel { request } => {
                    if let Some(stream) = streams.remove(&request) {
                        stream.abort();
                    }
                    received.remove(&request);
                }
                Action::Sized { size } => {
                    if let Err(refused) = driver.sized(size) {
                        break 'fetching Err(refused);
                    }
                }
                Action::Store { offset, bytes } => {
                    if let Err(refused) = driver.store(offset, bytes).await {
                        break 'fetching Err(refused);
                    }
                }
                Action::Cut { peer, reason } => {
                    bump(&shared.counters.peers_cut);
                    shared.reputation.borrow_mut().cut(peer, &reason);
                    tracing::warn!(%id, %peer, ?reason, "cut a peer from a fetch");
                }
                Action::Complete { outboard, .. } => {
                    for (peer, _) in fetch.received.iter().filter(|(_, bytes)| **bytes > 0) {
                        shared.reputation.borrow_mut().gave(*peer);
                    }
                    break 'fetching driver.complete(outboard).await;
                }
                Action::Failed { missing } => {
                    let missing = if missing == u64::MAX { "its size".to_string() } else { format!("{missing} of its 16 KiB groups") };
                    break 'fetching Err(Refused(StorageRefusal::Unknown, format!("block {id} is not held here and no node asked gave {missing}")));
                }
            }
        }
        let deadline = fetch.next_deadline().map(|at| start + Duration::from_millis(at));
        let event = match deadline {
            Some(at) => tokio::time::timeout_at(at, events.recv()).await.ok().flatten(),
            None => events.recv().await,
        };
        match event {
            None => fetch.tick(now()),
            Some(StreamEvent::Piece(request, piece)) => {
                let Some(status_seen) = received.get_mut(&request) else { continue };
                let mut bytes = &piece[..];
                if !*status_seen {
                    *status_seen = true;
                    match bytes.first().copied().and_then(Status::from_byte) {
                        Some(Status::Served) => bytes = &bytes[1..],
                        status => {
                            tracing::info!(%id, ?status, "a peer did not serve the block");
                            received.remove(&request);
                            fetch.failed(request, now());
                            continue;
                        }
                    }
                }
                fetch.answered(request, bytes, now());
            }
            // A stream's pieces come before its end, on one connection and one channel.
            Some(StreamEvent::Ended(request)) => {
                if received.remove(&request).is_some() {
                    fetch.ended(request, now());
                }
            }
            Some(StreamEvent::Failed(request, reason)) => {
                tracing::info!(%id, %reason, "a block stream failed");
                if received.remove(&request).is_some() {
                    fetch.failed(request, now());
                }
            }
        }
    };
    for (_, stream) in streams {
        stream.abort();
    }
    if outcome.is_err() {
        driver.give_up().await;
    }
    outcome
}

/// What the fetch of one block keeps on this node.
struct Driver {
    shared: Rc<Shared>,
    id: ContentId,
    size: u64,
    writer: Option<PartialWriter>,
    /// The groups checked and handed to the writer.
    written: BTreeSet<u64>,
    unrecorded: usize,
    /// Told how far the fetch is, every 1 MiB; one call at a time (a slow listener misses
    /// steps, never holds the fetch back).
    progress: Option<fetch_progress::Client>,
    telling: Rc<std::cell::Cell<bool>>,
}

fn failed(detail: String) -> Refused {
    Refused(StorageRefusal::Failed, detail)
}

impl Driver {
    fn tell_progress(&self) {
        let Some(progress) = &self.progress else { return };
        if self.telling.get() {
            return;
        }
        let done = (self.written.len() as u64 * GROUP_BYTES).min(self.size);
        let mut call = progress.fetched_request();
        call.get().set_done(done);
        call.get().set_size(self.size);
        self.telling.set(true);
        let telling = self.telling.clone();
        tokio::task::spawn_local(async move {
            let _ = call.send().promise.await;
            telling.set(false);
        });
    }

    /// The size is proven: room is set aside (unless it was, when resuming), and the partial
    /// file made and recorded (with the groups written before, when resuming).
    fn sized(&mut self, size: u64) -> Result<(), Refused> {
        self.size = size;
        self.shared.catalog.borrow_mut().fetch_partial(self.id, size)?;
        let started = self.shared.store.open_partial(&self.id, size).and_then(|partial| {
            partial.record(&self.written)?;
            PartialWriter::start(partial)
        });
        match started {
            Ok(writer) => self.writer = Some(writer),
            Err(error) => {
                self.shared.catalog.borrow_mut().drop_partial(self.id);
                return Err(error.into());
            }
        }
        self.remember();
        Ok(())
    }

    async fn store(&mut self, offset: u64, bytes: Vec<u8>) -> Result<(), Refused> {
        let writer = self.writer.as_ref().ok_or_else(|| failed("a group came before the size".into()))?;
        add(&self.shared.counters.bytes_fetched, bytes.len() as u64);
        if writer.write(offset, bytes).await.is_err() {
            return Err(self.writer_failed().await);
        }
        self.written.insert(offset / GROUP_BYTES);
        if self.written.len().is_multiple_of(PROGRESS_EVERY) {
            self.tell_progress();
        }
        self.unrecorded += 1;
        if self.unrecorded >= RECORD_EVERY {
            self.record().await?;
        }
        Ok(())
    }

    /// Has the groups written so far recorded, once they are on disk.
    async fn record(&mut self) -> Result<(), Refused> {
        let Some(writer) = &self.writer else { return Ok(()) };
        if writer.record(self.written.clone()).await.is_err() {
            return Err(self.writer_failed().await);
        }
        self.unrecorded = 0;
        self.remember();
        Ok(())
    }

    /// Lists the partial block as it stands (for `blocks`, and to resume from in this run).
    fn remember(&self) {
        let partial = Partial { id: self.id, size: self.size, written: self.written.iter().copied().collect() };
        self.shared.partials.borrow_mut().insert(self.id, partial);
    }

    /// Why the writer stopped.
    async fn writer_failed(&mut self) -> Refused {
        match self.writer.take().map(PartialWriter::close) {
            Some(closed) => match closed.await {
                Err(error) => failed(format!("writing the fetched block: {error}")),
                Ok(_) => failed("the fetched block's writer stopped".into()),
            },
            None => failed("the fetched block's writer stopped".into()),
        }
    }

    /// Every group is in: the block is kept as a put is, under the default lease.
    async fn complete(&mut self, outboard: Option<Vec<u8>>) -> Result<(), Refused> {
        let writer = self.writer.take().ok_or_else(|| failed("complete before the size".into()))?;
        let partial = writer.close().await.map_err(|error| failed(format!("writing the fetched block: {error}")))?;
        let finished = tokio::task::spawn_blocking(move || partial.finish(outboard)).await;
        // Every group was checked as it came; a file hashed again after a resume that differs
        // (damaged on disk by a crash of the machine) is fetched again, not kept under another id.
        if let Ok(Ok(finished)) = &finished {
            if finished.id != self.id {
                self.shared.catalog.borrow_mut().drop_partial(self.id);
                self.shared.partials.borrow_mut().remove(&self.id);
                self.shared.store.drop_partial(&self.id)?;
                return Err(failed(format!("the fetched copy of block {} changed on disk (it hashes to {}): it was dropped; ask again", self.id, finished.id)));
            }
        }
        let expiry = self.shared.catalog.borrow().lease(0, now_ms())?;
        let entry = Entry { size: self.size, expiry, min_trust: 0 };
        let reservation = self.shared.catalog.borrow_mut().complete_partial(self.id).ok_or_else(|| failed("the partial block's room is gone".into()))?;
        self.shared.keep(reservation, entry, finished)?;
        bump(&self.shared.counters.fetches_completed);
        self.shared.partials.borrow_mut().remove(&self.id);
        tracing::info!(id = %self.id, size = self.size, "fetched a block");
        Ok(())
    }

    /// The fetch failed: what it wrote stays, recorded, with its room, to resume from until
    /// the partial lease ends.
    async fn give_up(&mut self) {
        if self.unrecorded > 0 {
            if let Err(Refused(_, detail)) = self.record().await {
                tracing::warn!(id = %self.id, %detail, "cannot record a fetch's progress");
            }
        }
        if let Some(writer) = self.writer.take() {
            if let Err(error) = writer.close().await {
                tracing::warn!(id = %self.id, %error, "cannot write a fetch's progress");
            }
        }
        self.shared.catalog.borrow_mut().stop_partial(self.id, now_ms());
    }
}

/// One request's stream, through the transport's bulk socket at `socket`: its pieces and its
/// end go to the fetch, in order. A full channel holds the stream (and the peer) back.
async fn open(socket: Rc<Path>, peer: Identity, request: u64, asked: Vec<u8>, events: mpsc::Sender<StreamEvent>) {
    let event = match relay(&socket, peer, request, asked, &events).await {
        Ok(()) => StreamEvent::Ended(request),
        Err(reason) => StreamEvent::Failed(request, reason),
    };
    let _ = events.send(event).await;
}

async fn relay(socket: &Path, peer: Identity, request: u64, asked: Vec<u8>, events: &mpsc::Sender<StreamEvent>) -> Result<(), String> {
    let mut transport = UnixStream::connect(socket).await.map_err(|e| format!("the transport's bulk socket {}: {e}", socket.display()))?;
    let opening = Opening { kind: StreamKind::Block as u8, node: peer, trust: 0, request: asked };
    opening.write_to(&mut transport).await.map_err(|e| e.to_string())?;
    loop {
        match bulk::read_frame(&mut transport).await.map_err(|e| format!("the transport's relay: {e}"))? {
            Frame::Bytes(bytes) => events.send(StreamEvent::Piece(request, bytes)).await.map_err(|_| "the fetch is over".to_string())?,
            Frame::Complete => return Ok(()),
            Frame::Failed(reason) => return Err(reason),
        }
    }
}
