//! A block being fetched, on disk: its file `partial/<id>` and the record of which of its
//! groups are written (the store's `partials` table). A fetch hands its checked groups to a
//! thread of its own, which writes them (with direct I/O: `direct`), and every so often syncs
//! the file and records them,
//! so the service's thread (receiving and checking the next groups) never waits for the disk.
//! A group is recorded only once its bytes are synced: after a crash of the machine, every
//! recorded group is on disk.

use crate::direct::DirectWriter;
use crate::store::{db_error, finish_file, Finished, StoreError, INLINE_MAX, PARTIALS};
use netmachine_schema::ContentId;
use std::collections::BTreeSet;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Groups' worth of writes that may wait for the disk before the fetch waits too (16 MiB).
const WAITING_WRITES: usize = 1024;

/// The file of a block being fetched, and its record.
pub struct PartialFile {
    pub id: ContentId,
    pub size: u64,
    pub path: PathBuf,
    file: File,
    db: Arc<redb::Database>,
}

impl PartialFile {
    /// Starts (or reopens) the file of block `id` at `path`, `size` bytes.
    pub(crate) fn open(db: Arc<redb::Database>, path: PathBuf, id: ContentId, size: u64) -> Result<PartialFile, StoreError> {
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        file.set_len(size)?;
        Ok(PartialFile { id, size, path, file, db })
    }

    /// Syncs the file, then records `written` as its groups on disk, durably.
    pub fn record(&self, written: &BTreeSet<u64>) -> Result<(), StoreError> {
        self.file.sync_data()?;
        let mut row = self.size.to_le_bytes().to_vec();
        row.resize(8 + crate::core::verify::groups(self.size).div_ceil(8) as usize, 0);
        for group in written {
            row[8 + (group / 8) as usize] |= 1 << (group % 8);
        }
        let txn = self.db.begin_write().map_err(db_error)?;
        txn.open_table(PARTIALS).map_err(db_error)?.insert(&self.id.0, row.as_slice()).map_err(db_error)?;
        txn.commit().map_err(db_error)?;
        Ok(())
    }

    /// The block complete, ready to keep as a put is: synced, with `outboard` if the fetch put
    /// it together; else (a fetch resumed after a restart) read and hashed again. Reads the
    /// whole file in that case: run it off the service's thread.
    pub fn finish(self, outboard: Option<Vec<u8>>) -> Result<Finished, StoreError> {
        match outboard {
            Some(outboard) if self.size > INLINE_MAX => {
                self.file.sync_data()?;
                Ok(Finished::fetched(self.id, self.size, self.path, outboard))
            }
            _ => finish_file(self.path, self.size),
        }
    }
}

enum Order {
    Write { offset: u64, bytes: Vec<u8> },
    Record(BTreeSet<u64>),
}

/// The thread writing one partial block, in the order its orders were given.
pub struct PartialWriter {
    orders: mpsc::Sender<Order>,
    closed: oneshot::Receiver<Result<PartialFile, StoreError>>,
}

impl PartialWriter {
    pub fn start(partial: PartialFile) -> Result<PartialWriter, StoreError> {
        let (orders, mut waiting) = mpsc::channel(WAITING_WRITES);
        let (close, closed) = oneshot::channel();
        std::thread::Builder::new()
            .name("partial-writer".into())
            .spawn(move || {
                let mut direct = DirectWriter::open(&partial.path, partial.size);
                // The first failure ends the thread: the fetch's next order fails, and `close`
                // tells why.
                while let Some(order) = waiting.blocking_recv() {
                    let done = match order {
                        Order::Write { offset, bytes } => direct.write(offset, &bytes, &partial.file).map_err(StoreError::from),
                        Order::Record(written) => direct.flush(&partial.file).map_err(StoreError::from).and_then(|()| partial.record(&written)),
                    };
                    if let Err(error) = done {
                        let _ = close.send(Err(error));
                        return;
                    }
                }
                let _ = close.send(direct.flush(&partial.file).map(|()| partial).map_err(StoreError::from));
            })?;
        Ok(PartialWriter { orders, closed })
    }

    /// Writes checked `bytes` at `offset`; waits only if many writes wait for the disk.
    pub async fn write(&self, offset: u64, bytes: Vec<u8>) -> Result<(), ()> {
        self.orders.send(Order::Write { offset, bytes }).await.map_err(|_| ())
    }

    /// Records `written` once every write before it is synced.
    pub async fn record(&self, written: BTreeSet<u64>) -> Result<(), ()> {
        self.orders.send(Order::Record(written)).await.map_err(|_| ())
    }

    /// Waits for every order given so far: the file, or the first failure.
    pub async fn close(self) -> Result<PartialFile, StoreError> {
        drop(self.orders);
        self.closed.await.map_err(|_| StoreError::Io(std::io::Error::other("the partial block's writer stopped")))?
    }
}
