//! The blocks on disk, under `$DATA/storage/`. `blocks.redb` holds every block's entry (size,
//! lease, trust), the content of small blocks (up to one 16 KiB chunk group) and the BLAKE3
//! verified-streaming outboard of large ones (pre-order, one hash pair per 16 KiB group, as
//! `bao-tree` lays it out); a large block's content is the file `data/<id>`. A put is written to
//! `tmp/`, checked, synced, renamed into `data/`, and only then committed with its entry and
//! outboard in one transaction: a kill -9 at any point leaves either the whole block or none.
//! What a crash left behind (files in `tmp/`, content with no entry) is removed at start.
//!
//! A block being fetched from other nodes is `partial/<id>`, sized once its size is proven,
//! each group written where it belongs as it checks out; the `partials` table holds its size
//! and which groups are written, so a fetch cut short by a crash resumes from there.

use crate::core::catalog::Entry;
use crate::partial::PartialFile;
use bao_tree::io::outboard::PreOrderOutboard;
use bao_tree::io::sync::CreateOutboard;
use crate::core::verify::{GROUP, GROUP_BYTES};
use crate::put_file::{Handoff, PutFile};
use bao_tree::BaoTree;
use netmachine_schema::ContentId;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Blocks up to one chunk group are kept in the database, whole; larger ones as files.
pub const INLINE_MAX: u64 = GROUP_BYTES;

const ENTRIES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("entries");
const INLINE: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("inline");
const OUTBOARDS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("outboards");
/// A partial block's size (8 bytes, little endian) and a bitmap of its groups written.
pub(crate) const PARTIALS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("partials");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("block database: {0}")]
    Db(#[from] redb::Error),
    #[error("block files: {0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Put(#[from] PutError),
}

/// Why the bytes of a put are not a block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PutError {
    #[error("the put declared {declared} bytes but sent {sent}")]
    SizeMismatch { declared: u64, sent: u64 },
    #[error("the content hashes to {actual}, not to the id {expected} it was put under")]
    WrongId { expected: ContentId, actual: ContentId },
}

pub(crate) fn db_error(error: impl Into<redb::Error>) -> StoreError {
    StoreError::Db(error.into())
}

/// The stored form of an entry: size, expiry (little-endian u64 each), min_trust.
fn encode(entry: &Entry) -> [u8; 17] {
    let mut bytes = [0; 17];
    bytes[..8].copy_from_slice(&entry.size.to_le_bytes());
    bytes[8..16].copy_from_slice(&entry.expiry.to_le_bytes());
    bytes[16] = entry.min_trust;
    bytes
}

fn decode(bytes: &[u8]) -> Option<Entry> {
    let bytes: &[u8; 17] = bytes.try_into().ok()?;
    let size = u64::from_le_bytes(bytes[..8].try_into().ok()?);
    let expiry = u64::from_le_bytes(bytes[8..16].try_into().ok()?);
    Some(Entry { size, expiry, min_trust: bytes[16] })
}

/// The block store's files.
pub struct Store {
    db: std::sync::Arc<redb::Database>,
    data: PathBuf,
    partial: PathBuf,
    tmp: PathBuf,
    next_tmp: std::cell::Cell<u64>,
}

/// What the store holds at start.
pub struct Found {
    pub blocks: Vec<(ContentId, Entry)>,
    pub partials: Vec<Partial>,
}

/// A block being fetched: its proven size and the groups written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partial {
    pub id: ContentId,
    pub size: u64,
    pub written: Vec<u64>,
}

/// A put being written: in memory if small, else to a file in `tmp/`.
pub struct Pending {
    declared: u64,
    written: u64,
    body: Body,
}

enum Body {
    Inline(Vec<u8>),
    /// Written and hashed as the bytes come, on a thread of its own.
    File { path: PathBuf, writing: PutFile },
}

/// A put written and checked, its id known; not yet kept.
pub struct Finished {
    pub id: ContentId,
    pub size: u64,
    body: FinishedBody,
}

enum FinishedBody {
    Inline(Vec<u8>),
    File { path: PathBuf, outboard: Vec<u8> },
}

/// A held block's content, to read from.
pub enum Content {
    Inline(Vec<u8>),
    /// Shared by the reads of it in flight.
    File(std::sync::Arc<File>),
}

impl Store {
    /// Opens the store in `dir` (creating it): the blocks whose entry and content are both
    /// there, after removing what a crash left half-done.
    pub fn open(dir: &Path) -> Result<(Store, Found), StoreError> {
        let (data, tmp, partial) = (dir.join("data"), dir.join("tmp"), dir.join("partial"));
        std::fs::create_dir_all(&data)?;
        std::fs::create_dir_all(&partial)?;
        // Puts in progress when the service stopped never completed.
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        let db = redb::Database::create(dir.join("blocks.redb")).map_err(db_error)?;
        let txn = db.begin_write().map_err(db_error)?;
        for table in [ENTRIES, INLINE, OUTBOARDS, PARTIALS] {
            txn.open_table(table).map_err(db_error)?;
        }
        txn.commit().map_err(db_error)?;
        let store = Store { db: std::sync::Arc::new(db), data, partial, tmp, next_tmp: std::cell::Cell::new(0) };
        let mut held = Vec::new();
        let mut lost = Vec::new();
        {
            let read = store.db.begin_read().map_err(db_error)?;
            let entries = read.open_table(ENTRIES).map_err(db_error)?;
            for row in entries.iter().map_err(db_error)? {
                let (id, bytes) = row.map_err(db_error)?;
                let id = ContentId(*id.value());
                match decode(bytes.value()) {
                    Some(entry) if entry.size <= INLINE_MAX || store.file(&id).exists() => held.push((id, entry)),
                    _ => lost.push(id),
                }
            }
        }
        if !lost.is_empty() {
            tracing::warn!(blocks = lost.len(), "left out blocks whose entry or content cannot be read");
            store.remove(&lost)?;
        }
        // Content renamed into place whose entry was never committed.
        let known: std::collections::BTreeSet<String> = held.iter().map(|(id, _)| id.to_string()).collect();
        for file in std::fs::read_dir(&store.data)? {
            let file = file?;
            if !known.contains(file.file_name().to_string_lossy().as_ref()) {
                tracing::info!(file = %file.path().display(), "removed content with no entry (a put interrupted)");
                std::fs::remove_file(file.path())?;
            }
        }
        let partials = store.partials()?;
        Ok((store, Found { blocks: held, partials }))
    }

    /// The partial blocks whose file is there (the others are forgotten, and files with no
    /// row removed).
    fn partials(&self) -> Result<Vec<Partial>, StoreError> {
        let mut found = Vec::new();
        let mut lost = Vec::new();
        {
            let read = self.db.begin_read().map_err(db_error)?;
            let table = read.open_table(PARTIALS).map_err(db_error)?;
            for row in table.iter().map_err(db_error)? {
                let (id, bytes) = row.map_err(db_error)?;
                let id = ContentId(*id.value());
                let bytes = bytes.value();
                let size = bytes.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
                match size {
                    Some(size) if self.partial_file(&id).exists() => {
                        let written = bytes[8..].iter().enumerate().flat_map(|(i, byte)| (0..8).filter(move |bit| byte & (1 << bit) != 0).map(move |bit| (i * 8 + bit) as u64)).collect();
                        found.push(Partial { id, size, written });
                    }
                    _ => lost.push(id),
                }
            }
        }
        let txn = self.db.begin_write().map_err(db_error)?;
        {
            let mut table = txn.open_table(PARTIALS).map_err(db_error)?;
            for id in &lost {
                table.remove(&id.0).map_err(db_error)?;
            }
        }
        txn.commit().map_err(db_error)?;
        let known: std::collections::BTreeSet<String> = found.iter().map(|p| p.id.to_string()).collect();
        for file in std::fs::read_dir(&self.partial)? {
            let file = file?;
            if !known.contains(file.file_name().to_string_lossy().as_ref()) {
                std::fs::remove_file(file.path())?;
            }
        }
        Ok(found)
    }

    /// Starts (or reopens) the partial file of block `id`, `size` bytes.
    pub fn open_partial(&self, id: &ContentId, size: u64) -> Result<PartialFile, StoreError> {
        PartialFile::open(self.db.clone(), self.partial_file(id), *id, size)
    }

    /// Forgets partial block `id` (its fetch failed for good, or completed).
    pub fn drop_partial(&self, id: &ContentId) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_error)?;
        txn.open_table(PARTIALS).map_err(db_error)?.remove(&id.0).map_err(db_error)?;
        txn.commit().map_err(db_error)?;
        let _ = std::fs::remove_file(self.partial_file(id));
        Ok(())
    }

    /// Where partial block `id` is written.
    pub fn partial_file(&self, id: &ContentId) -> PathBuf {
        self.partial.join(id.to_string())
    }

    /// A held block's outboard (empty for a block of one group).
    pub fn outboard(&self, id: &ContentId) -> Result<Vec<u8>, StoreError> {
        let read = self.db.begin_read().map_err(db_error)?;
        let table = read.open_table(OUTBOARDS).map_err(db_error)?;
        let outboard = table.get(&id.0).map_err(db_error)?.map(|bytes| bytes.value().to_vec());
        Ok(outboard.unwrap_or_default())
    }

    fn file(&self, id: &ContentId) -> PathBuf {
        self.data.join(id.to_string())
    }

    /// Starts a put of `declared` bytes.
    pub fn pending(&self, declared: u64) -> io::Result<Pending> {
        let body = if declared <= INLINE_MAX {
            Body::Inline(Vec::with_capacity(declared as usize))
        } else {
            let n = self.next_tmp.get() + 1;
            self.next_tmp.set(n);
            let path = self.tmp.join(format!("put-{n}"));
            let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
            let writing = file.set_len(declared).and_then(|()| PutFile::start(file, &path, declared));
            match writing {
                Ok(writing) => Body::File { writing, path },
                Err(error) => {
                    let _ = std::fs::remove_file(&path);
                    return Err(error);
                }
            }
        };
        Ok(Pending { declared, written: 0, body })
    }

    /// Keeps a finished put as block `finished.id` with `entry`, durably.
    pub fn keep(&self, finished: Finished, entry: &Entry) -> Result<(), StoreError> {
        let id = finished.id;
        let txn = self.db.begin_write().map_err(db_error)?;
        match finished.body {
            FinishedBody::Inline(content) => {
                txn.open_table(INLINE).map_err(db_error)?.insert(&id.0, content.as_slice()).map_err(db_error)?;
            }
            FinishedBody::File { path, outboard } => {
                std::fs::rename(&path, self.file(&id))?;
                File::open(&self.data)?.sync_all()?;
                txn.open_table(OUTBOARDS).map_err(db_error)?.insert(&id.0, outboard.as_slice()).map_err(db_error)?;
            }
        }
        txn.open_table(ENTRIES).map_err(db_error)?.insert(&id.0, encode(entry).as_slice()).map_err(db_error)?;
        // A fetched block was partial until now.
        txn.open_table(PARTIALS).map_err(db_error)?.remove(&id.0).map_err(db_error)?;
        txn.commit().map_err(db_error)?;
        Ok(())
    }

    /// Gives up a finished put (its block was already held).
    pub fn discard(&self, finished: Finished) {
        if let FinishedBody::File { path, .. } = finished.body {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Writes a changed entry (an extended lease).
    pub fn update(&self, id: &ContentId, entry: &Entry) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_error)?;
        txn.open_table(ENTRIES).map_err(db_error)?.insert(&id.0, encode(entry).as_slice()).map_err(db_error)?;
        txn.commit().map_err(db_error)?;
        Ok(())
    }

    /// Removes blocks: their entries first (durably), then their content.
    pub fn remove(&self, ids: &[ContentId]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_error)?;
        for table in [ENTRIES, INLINE, OUTBOARDS, PARTIALS] {
            let mut table = txn.open_table(table).map_err(db_error)?;
            for id in ids {
                table.remove(&id.0).map_err(db_error)?;
            }
        }
        txn.commit().map_err(db_error)?;
        for id in ids {
            match std::fs::remove_file(self.file(id)) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error.into()),
                _ => {}
            }
        }
        Ok(())
    }

    /// The content of a held block.
    pub fn content(&self, id: &ContentId, entry: &Entry) -> Result<Content, StoreError> {
        if entry.size > INLINE_MAX {
            return Ok(Content::File(std::sync::Arc::new(File::open(self.file(id))?)));
        }
        let read = self.db.begin_read().map_err(db_error)?;
        let table = read.open_table(INLINE).map_err(db_error)?;
        let content = table.get(&id.0).map_err(db_error)?.map(|bytes| bytes.value().to_vec());
        content.map(Content::Inline).ok_or_else(|| StoreError::Io(io::Error::new(io::ErrorKind::NotFound, format!("the content of block {id} is missing"))))
    }
}

impl Pending {
    /// Appends bytes; more than were declared is refused. A large block's bytes come back as
    /// a handoff to its file's thread, to send once the put is no longer borrowed.
    pub fn write(&mut self, bytes: &[u8]) -> Result<Option<Handoff>, StoreError> {
        let sent = self.written + bytes.len() as u64;
        if sent > self.declared {
            return Err(PutError::SizeMismatch { declared: self.declared, sent }.into());
        }
        self.written = sent;
        match &mut self.body {
            Body::Inline(content) => {
                content.extend_from_slice(bytes);
                Ok(None)
            }
            Body::File { writing, .. } => Ok(Some(writing.handoff(bytes))),
        }
    }

    /// Gives up the put, leaving no file.
    pub fn abandon(self) {
        if let Body::File { path, .. } = self.body {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Checks the size and the id (`expected`, if the put named one), and syncs a large block's
    /// file (its id and outboard were computed as it was written). Syncing waits for the disk:
    /// run it off the service's thread.
    pub fn finish(self, expected: Option<ContentId>) -> Result<Finished, StoreError> {
        if self.written != self.declared {
            if let Body::File { path, .. } = &self.body {
                let _ = std::fs::remove_file(path);
            }
            return Err(PutError::SizeMismatch { declared: self.declared, sent: self.written }.into());
        }
        let (id, body) = match self.body {
            Body::Inline(content) => (ContentId::of(&content), FinishedBody::Inline(content)),
            Body::File { path, writing } => {
                let written = writing.finish();
                let checked = written.and_then(|(file, hashing)| {
                    let (id, outboard) = hashing.finish().ok_or_else(|| io::Error::other("the put's bytes were not all hashed"))?;
                    file.sync_data()?;
                    Ok((id, outboard))
                });
                match checked {
                    Ok((id, outboard)) => (id, FinishedBody::File { path, outboard }),
                    Err(error) => {
                        let _ = std::fs::remove_file(&path);
                        return Err(error.into());
                    }
                }
            }
        };
        let finished = Finished { id, size: self.declared, body };
        match expected {
            Some(expected) if expected != id => {
                if let FinishedBody::File { path, .. } = &finished.body {
                    let _ = std::fs::remove_file(path);
                }
                Err(PutError::WrongId { expected, actual: id }.into())
            }
            _ => Ok(finished),
        }
    }
}

impl Finished {
    /// A fetched block's file (synced), every group checked as it came, with the outboard put
    /// together from the parents checked.
    pub(crate) fn fetched(id: ContentId, size: u64, path: PathBuf, outboard: Vec<u8>) -> Finished {
        Finished { id, size, body: FinishedBody::File { path, outboard } }
    }
}

/// A completed partial block at `path`, `size` bytes, made ready to keep as a put is: its
/// content read (one group or less) or its outboard computed and its file synced. Reads the
/// whole file: run it off the service's thread.
pub fn finish_file(path: PathBuf, size: u64) -> Result<Finished, StoreError> {
    let file = File::open(&path)?;
    if size <= INLINE_MAX {
        let mut content = Vec::new();
        (&file).read_to_end(&mut content)?;
        let _ = std::fs::remove_file(&path);
        return Ok(Finished { id: ContentId::of(&content), size, body: FinishedBody::Inline(content) });
    }
    let (id, outboard) = outboard_of(&file, size)?;
    file.sync_data()?;
    Ok(Finished { id, size, body: FinishedBody::File { path, outboard } })
}

/// The BLAKE3 hash of `size` bytes of `file` and their pre-order outboard.
fn outboard_of(file: &File, size: u64) -> io::Result<(ContentId, Vec<u8>)> {
    let mut reader = io::BufReader::with_capacity(1 << 20, file);
    io::Seek::rewind(&mut reader)?;
    let mut outboard = PreOrderOutboard { root: blake3::hash(&[]), tree: BaoTree::new(size, GROUP), data: Vec::new() };
    outboard.init_from(reader.by_ref().take(size))?;
    Ok((ContentId(*outboard.root.as_bytes()), outboard.data))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of its own for one test, removed after it.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("nm-store-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Writes `bytes`, handing a large block's to its file's thread as the service does.
    fn write(pending: &mut Pending, bytes: &[u8]) {
        if let Some(handoff) = pending.write(bytes).unwrap() {
            handoff.blocking_send().unwrap();
        }
    }

    fn put(store: &Store, content: &[u8], expiry: u64) -> ContentId {
        let mut pending = store.pending(content.len() as u64).unwrap();
        for piece in content.chunks(7_000) {
            write(&mut pending, piece);
        }
        let finished = pending.finish(None).unwrap();
        let id = finished.id;
        store.keep(finished, &Entry { size: content.len() as u64, expiry, min_trust: 0 }).unwrap();
        id
    }

    fn read(store: &Store, id: &ContentId, entry: &Entry) -> Vec<u8> {
        match store.content(id, entry).unwrap() {
            Content::Inline(bytes) => bytes,
            Content::File(file) => {
                let mut bytes = Vec::new();
                (&*file).read_to_end(&mut bytes).unwrap();
                bytes
            }
        }
    }

    #[test]
    fn small_and_large_blocks_read_back_under_their_blake3_id_after_reopening() {
        let dir = TempDir::new();
        let small = b"a small block".to_vec();
        let large: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        {
            let (store, found) = Store::open(dir.path()).unwrap();
            assert!(found.blocks.is_empty());
            assert_eq!(put(&store, &small, 5), ContentId::of(&small));
            assert_eq!(put(&store, &large, 6), ContentId::of(&large), "the bao root is the BLAKE3 hash");
        }
        let (store, found) = Store::open(dir.path()).unwrap();
        let mut held = found.blocks;
        held.sort_by_key(|(_, entry)| entry.size);
        assert_eq!(held.iter().map(|(_, e)| (e.size, e.expiry)).collect::<Vec<_>>(), vec![(small.len() as u64, 5), (large.len() as u64, 6)]);
        assert_eq!(read(&store, &held[0].0, &held[0].1), small);
        assert_eq!(read(&store, &held[1].0, &held[1].1), large);
        store.remove(&[held[1].0]).unwrap();
        assert_eq!(std::fs::read_dir(dir.path().join("data")).unwrap().count(), 0, "removing a block removes its file");
    }

    #[test]
    fn a_wrong_id_or_size_is_refused_and_leaves_nothing_behind() {
        let dir = TempDir::new();
        let (store, _) = Store::open(dir.path()).unwrap();
        let large = vec![9u8; 100_000];
        let mut pending = store.pending(large.len() as u64).unwrap();
        write(&mut pending, &large);
        let wrong = ContentId::of(b"something else");
        assert!(matches!(pending.finish(Some(wrong)), Err(StoreError::Put(PutError::WrongId { .. }))));
        let mut short = store.pending(10).unwrap();
        assert!(matches!(short.write(&[0; 11]), Err(StoreError::Put(PutError::SizeMismatch { declared: 10, sent: 11 }))));
        let mut unfinished = store.pending(100_000).unwrap();
        write(&mut unfinished, &[1; 10]);
        assert!(matches!(unfinished.finish(None), Err(StoreError::Put(PutError::SizeMismatch { declared: 100_000, sent: 10 }))));
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn what_a_crash_left_half_done_is_removed_at_start() {
        let dir = TempDir::new();
        let kept = {
            let (store, _) = Store::open(dir.path()).unwrap();
            let kept = put(&store, &[3u8; 50_000], 9);
            // A put that was renamed into place but never committed, and one still in tmp/.
            std::fs::write(dir.path().join("data").join(ContentId::of(b"orphan").to_string()), b"orphan").unwrap();
            std::fs::write(dir.path().join("tmp").join("put-7"), b"half").unwrap();
            kept
        };
        let (_, found) = Store::open(dir.path()).unwrap();
        assert_eq!(found.blocks.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![kept]);
        let files: Vec<_> = std::fs::read_dir(dir.path().join("data")).unwrap().map(|f| f.unwrap().file_name()).collect();
        assert_eq!(files, vec![std::ffi::OsString::from(kept.to_string())]);
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
