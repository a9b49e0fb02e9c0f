//! Blocks, as an engine or a command sees them: a client of the node's storage service
//! (`$RUN/storage.sock`) that runs its Cap'n Proto connection on a thread of its own, so any
//! thread or runtime may call it. Large blocks go in pieces of [`PIECE`] bytes, with a few
//! pieces in flight, so neither side holds a whole block in one message.

use netmachine_schema::storage_capnp::{block_info, block_reader, block_writer, fetch_progress, refused, storage};
pub use netmachine_schema::storage_capnp::StorageRefusal;
use netmachine_schema::{ContentId, Identity};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use tokio::sync::{mpsc, oneshot};

/// The bytes one write or read carries.
pub const PIECE: usize = 256 * 1024;
/// Reads in flight while a block is fetched from the service.
const READS_IN_FLIGHT: usize = 4;

/// A block as the storage service holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockInfo {
    pub id: ContentId,
    pub size: u64,
    /// When it may be collected, in ms since the Unix epoch.
    pub expiry: u64,
    pub min_trust: u8,
    pub complete: bool,
}

/// How long a block is kept, and who may be served it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockPrefs {
    /// ms since the Unix epoch; 0: the node's default lease (`storage.default_lease_ms`).
    pub expiry: u64,
    /// The trust another node needs to be served the block.
    pub min_trust: u8,
}

/// Where a block the node does not hold is fetched from: the node of `topic`'s publisher
/// first (if set), then `nodes` (none: every node the node is connected to).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    pub topic: Option<Identity>,
    pub nodes: Vec<Identity>,
}

/// What collection reclaimed (or would, in a dry run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collected {
    /// Blocks whose lease ended, and partial blocks (`complete` false) left idle past the
    /// partial lease.
    pub reclaimed: Vec<BlockInfo>,
    pub bytes: u64,
    /// Expired blocks passed by because they are being read.
    pub held: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot reach the storage service at {socket}: {source} (is the node running? `netmachine up`)")]
    Unreachable { socket: PathBuf, source: std::io::Error },
    #[error("{detail}")]
    Refused { reason: StorageRefusal, detail: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the storage service failed: {0}")]
    Rpc(String),
    #[error("the block client is closed")]
    Closed,
}

impl From<capnp::Error> for BlockError {
    fn from(e: capnp::Error) -> Self {
        BlockError::Rpc(e.extra)
    }
}

impl From<capnp::NotInSchema> for BlockError {
    fn from(e: capnp::NotInSchema) -> Self {
        BlockError::Rpc(format!("the storage service answered with {e}"))
    }
}

type Reply<T> = oneshot::Sender<Result<T, BlockError>>;

/// Where a put's bytes come from.
pub type Source = Box<dyn Read + Send>;
/// Where a get's bytes go; told of the bytes written so far after each piece.
pub type Sink = Box<dyn Write + Send>;
pub type Progress = Box<dyn FnMut(u64, u64) + Send>;

enum Call {
    Put { source: Source, size: u64, prefs: BlockPrefs, id: Option<ContentId>, done: Reply<BlockInfo> },
    Get { id: ContentId, from: Sources, sink: Sink, progress: Progress, done: Reply<BlockInfo> },
    Fetch { id: ContentId, from: Sources, done: Reply<BlockInfo> },
    Extend { id: ContentId, expiry: u64, done: Reply<BlockInfo> },
    List { done: Reply<Vec<BlockInfo>> },
    Collect { dry_run: bool, done: Reply<Collected> },
}

/// A connection to the node's storage service.
pub struct Blocks {
    calls: mpsc::Sender<Call>,
}

impl Blocks {
    /// Connects to the storage service at `socket` (`$RUN/storage.sock`); `word_limit` bounds
    /// what one answer may hold, as the node's services do.
    pub fn connect(socket: &Path, word_limit: usize) -> Result<Blocks, BlockError> {
        let (calls, receive) = mpsc::channel(16);
        let (connected, ready) = std::sync::mpsc::channel();
        let socket = socket.to_path_buf();
        std::thread::Builder::new().name("blocks".into()).spawn(move || serve(socket, word_limit, receive, connected))?;
        ready.recv().map_err(|_| BlockError::Closed)??;
        Ok(Blocks { calls })
    }

    /// True once the connection to the service ended (a new `Blocks` connects again).
    pub fn is_closed(&self) -> bool {
        self.calls.is_closed()
    }

    async fn call<T>(&self, call: impl FnOnce(Reply<T>) -> Call) -> Result<T, BlockError> {
        let (done, answer) = oneshot::channel();
        self.calls.send(call(done)).await.map_err(|_| BlockError::Closed)?;
        answer.await.map_err(|_| BlockError::Closed)?
    }

    /// Stores `content` (kept under `prefs`); its info, id included.
    pub async fn put(&self, content: Vec<u8>, prefs: BlockPrefs) -> Result<BlockInfo, BlockError> {
        let size = content.len() as u64;
        self.put_from(Box::new(std::io::Cursor::new(content)), size, prefs, None).await
    }

    /// Stores the `size` bytes read from `source`; if `id` is given, the content must hash to it.
    pub async fn put_from(&self, source: Source, size: u64, prefs: BlockPrefs, id: Option<ContentId>) -> Result<BlockInfo, BlockError> {
        self.call(|done| Call::Put { source, size, prefs, id, done }).await
    }

    /// The content of block `id`; if the node does not hold it, fetched first from the nodes
    /// it is connected to.
    pub async fn get(&self, id: ContentId) -> Result<Vec<u8>, BlockError> {
        let (sink, content) = SharedBuffer::new();
        self.get_into(id, Sources::default(), Box::new(sink), Box::new(|_, _| {})).await?;
        Ok(content.take())
    }

    /// Writes the content of block `id` into `sink`, telling `progress` (bytes done, size) as
    /// pieces arrive. A block the node does not hold is fetched first, from `from`; `progress`
    /// hears of the fetch too (then of the reading, from 0 again).
    pub async fn get_into(&self, id: ContentId, from: Sources, sink: Sink, progress: Progress) -> Result<BlockInfo, BlockError> {
        self.call(|done| Call::Get { id, from, sink, progress, done }).await
    }

    /// Makes the node hold block `id`, fetching it from `from` if it does not; its info.
    /// Nothing is read back.
    pub async fn fetch(&self, id: ContentId, from: Sources) -> Result<BlockInfo, BlockError> {
        self.call(|done| Call::Fetch { id, from, done }).await
    }

    /// Extends block `id`'s lease to `expiry` (ms since the epoch; never shortened).
    pub async fn extend(&self, id: ContentId, expiry: u64) -> Result<BlockInfo, BlockError> {
        self.call(|done| Call::Extend { id, expiry, done }).await
    }

    /// Every block the node holds.
    pub async fn list(&self) -> Result<Vec<BlockInfo>, BlockError> {
        self.call(|done| Call::List { done }).await
    }

    /// Collects the blocks whose lease ended, or in a dry run says which it would.
    pub async fn collect(&self, dry_run: bool) -> Result<Collected, BlockError> {
        self.call(|done| Call::Collect { dry_run, done }).await
    }
}

/// A `Write` whose bytes the caller takes afterwards.
#[derive(Clone, Default)]
struct SharedBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl SharedBuffer {
    fn new() -> (SharedBuffer, SharedBuffer) {
        let buffer = SharedBuffer::default();
        (buffer.clone(), buffer)
    }

    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Write for SharedBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The client's thread: connects, then serves calls one at a time until the handle is dropped.
fn serve(socket: PathBuf, word_limit: usize, mut calls: mpsc::Receiver<Call>, connected: std::sync::mpsc::Sender<Result<(), BlockError>>) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = connected.send(Err(error.into()));
            return;
        }
    };
    tokio::task::LocalSet::new().block_on(&runtime, async move {
        let (service, mut driver): (storage::Client, _) = match netmachine_rpc::connect(&socket, word_limit).await {
            Ok(connected) => connected,
            Err(source) => {
                let _ = connected.send(Err(BlockError::Unreachable { socket, source }));
                return;
            }
        };
        let _ = connected.send(Ok(()));
        loop {
            let call = tokio::select! {
                call = calls.recv() => call,
                // The connection ended: calls still queued are answered Closed as they drop.
                _ = &mut driver => None,
            };
            let Some(call) = call else { return };
            match call {
                Call::Put { source, size, prefs, id, done } => {
                    let _ = done.send(put(&service, source, size, prefs, id).await);
                }
                Call::Get { id, from, sink, progress, done } => {
                    let _ = done.send(get(&service, id, &from, sink, progress).await);
                }
                Call::Fetch { id, from, done } => {
                    let _ = done.send(open(&service, id, &from, None).await.map(|(_, info)| info));
                }
                Call::Extend { id, expiry, done } => {
                    let _ = done.send(extend(&service, id, expiry).await);
                }
                Call::List { done } => {
                    let _ = done.send(list(&service).await);
                }
                Call::Collect { dry_run, done } => {
                    let _ = done.send(collect(&service, dry_run).await);
                }
            }
        }
    });
}

fn read_info(info: block_info::Reader<'_>) -> Result<BlockInfo, BlockError> {
    let id = ContentId::from_slice("id", info.get_id()?).map_err(|e| BlockError::Rpc(e.to_string()))?;
    Ok(BlockInfo { id, size: info.get_size(), expiry: info.get_expiry(), min_trust: info.get_min_trust(), complete: info.get_complete() })
}

fn refusal(refused: refused::Reader<'_>) -> Result<BlockError, BlockError> {
    Ok(BlockError::Refused { reason: refused.get_reason()?, detail: refused.get_detail()?.to_string().map_err(|e| BlockError::Rpc(e.to_string()))? })
}

async fn put(service: &storage::Client, mut source: Source, size: u64, prefs: BlockPrefs, id: Option<ContentId>) -> Result<BlockInfo, BlockError> {
    let mut request = service.write_request();
    {
        let mut params = request.get();
        params.set_size(size);
        params.set_id(id.as_ref().map_or(&[][..], |id| &id.0[..]));
        let mut wanted = params.init_prefs();
        wanted.set_expiry(prefs.expiry);
        wanted.set_min_trust(prefs.min_trust);
    }
    let answer = request.send().promise.await?;
    let writer: block_writer::Client = match answer.get()?.get_result()?.which()? {
        netmachine_schema::storage_capnp::write_result::Writer(writer) => writer?,
        netmachine_schema::storage_capnp::write_result::Refused(refused) => return Err(refusal(refused?)?),
    };
    let mut left = size;
    while left > 0 {
        let n = (left as usize).min(PIECE);
        let mut write = writer.write_request();
        // Read straight into the call's message: no copy of our own.
        source.read_exact(write.get().init_bytes(n as u32))?;
        // Resolves once flow control lets the next piece go; a failure shows here or at finish.
        write.send().await?;
        left -= n as u64;
    }
    let answer = writer.finish_request().send().promise.await?;
    match answer.get()?.get_result()?.which()? {
        netmachine_schema::storage_capnp::put_result::Stored(info) => read_info(info?),
        netmachine_schema::storage_capnp::put_result::Refused(refused) => Err(refusal(refused?)?),
    }
}

/// Opens block `id` (fetched first from `from` if the node does not hold it): its reader and
/// info.
async fn open(service: &storage::Client, id: ContentId, from: &Sources, progress: Option<fetch_progress::Client>) -> Result<(block_reader::Client, BlockInfo), BlockError> {
    let mut request = service.open_request();
    request.get().set_id(&id.0);
    if let Some(progress) = progress {
        request.get().set_progress(progress);
    }
    if let Some(topic) = &from.topic {
        request.get().set_topic(&topic.0);
    }
    let mut nodes = request.get().init_from(from.nodes.len() as u32);
    for (i, node) in from.nodes.iter().enumerate() {
        nodes.set(i as u32, &node.0);
    }
    let answer = request.send().promise.await?;
    match answer.get()?.get_result()?.which()? {
        netmachine_schema::storage_capnp::open_result::Opened(opened) => Ok((opened.get_reader()?, read_info(opened.get_info()?)?)),
        netmachine_schema::storage_capnp::open_result::Refused(refused) => Err(refusal(refused?)?),
    }
}

/// Hands the storage service's reports of a fetch to the caller's progress.
struct Fetched(std::rc::Rc<std::cell::RefCell<Progress>>);

impl fetch_progress::Server for Fetched {
    async fn fetched(self: std::rc::Rc<Self>, params: fetch_progress::FetchedParams, _: fetch_progress::FetchedResults) -> capnp::Result<()> {
        let params = params.get()?;
        (self.0.borrow_mut())(params.get_done(), params.get_size());
        Ok(())
    }
}

/// Reads block `id` into `sink`. `progress` hears of the fetch first, if the block is fetched,
/// then of the reading.
async fn get(service: &storage::Client, id: ContentId, from: &Sources, mut sink: Sink, progress: Progress) -> Result<BlockInfo, BlockError> {
    let progress = std::rc::Rc::new(std::cell::RefCell::new(progress));
    let (reader, info) = open(service, id, from, Some(capnp_rpc::new_client(Fetched(progress.clone())))).await?;
    let read = |offset: u64| {
        let mut request = reader.read_request();
        request.get().set_offset(offset);
        request.get().set_length(PIECE as u32);
        request.send().promise
    };
    let mut in_flight = std::collections::VecDeque::new();
    let mut asked = 0;
    let mut done = 0;
    while done < info.size {
        while in_flight.len() < READS_IN_FLIGHT && asked < info.size {
            in_flight.push_back(read(asked));
            asked += PIECE as u64;
        }
        let Some(next) = in_flight.pop_front() else { break };
        let answer = next.await?;
        let bytes = answer.get()?.get_bytes()?;
        if bytes.is_empty() {
            return Err(BlockError::Rpc(format!("block {id} ended at {done} of {} bytes", info.size)));
        }
        sink.write_all(bytes)?;
        done += bytes.len() as u64;
        (progress.borrow_mut())(done, info.size);
    }
    sink.flush()?;
    Ok(info)
}

async fn extend(service: &storage::Client, id: ContentId, expiry: u64) -> Result<BlockInfo, BlockError> {
    let mut request = service.extend_request();
    request.get().set_id(&id.0);
    request.get().set_expiry(expiry);
    let answer = request.send().promise.await?;
    match answer.get()?.get_result()?.which()? {
        netmachine_schema::storage_capnp::extend_result::Extended(info) => read_info(info?),
        netmachine_schema::storage_capnp::extend_result::Refused(refused) => Err(refusal(refused?)?),
    }
}

async fn list(service: &storage::Client) -> Result<Vec<BlockInfo>, BlockError> {
    let answer = service.blocks_request().send().promise.await?;
    answer.get()?.get_blocks()?.iter().map(read_info).collect()
}

async fn collect(service: &storage::Client, dry_run: bool) -> Result<Collected, BlockError> {
    let mut request = service.collect_request();
    request.get().set_dry_run(dry_run);
    let answer = request.send().promise.await?;
    let answer = answer.get()?;
    let reclaimed = answer.get_reclaimed()?.iter().map(read_info).collect::<Result<_, _>>()?;
    Ok(Collected { reclaimed, bytes: answer.get_bytes(), held: answer.get_held() })
}
