//! The records on disk: one redb table from identity to the record's Cap'n Proto encoding,
//! read whole at start (`core::Records` holds them from then on) and written through.
//! redb is a pure-Rust, copy-on-write B-tree with checksummed, fsync'd commits, so a record is
//! on disk before the update is acknowledged and survives kill -9 or power loss.

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;

const RECORDS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("records");

/// A record as stored: its identity and its Cap'n Proto encoding.
pub type StoredRecord = ([u8; 32], Vec<u8>);

/// The persistent record table.
pub struct RecordDb {
    db: redb::Database,
}

impl RecordDb {
    /// Opens (or creates) the database file at `path`.
    pub fn open(path: &Path) -> Result<Self, redb::Error> {
        let db = redb::Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(RECORDS)?;
        txn.commit()?;
        Ok(RecordDb { db })
    }

    /// Stores `record` under `id`; durable when this returns.
    pub fn put(&self, id: &[u8; 32], record: &[u8]) -> Result<(), redb::Error> {
        let txn = self.db.begin_write()?;
        txn.open_table(RECORDS)?.insert(id, record)?;
        txn.commit()?;
        Ok(())
    }

    /// Removes `id`; true if it was there.
    pub fn delete(&self, id: &[u8; 32]) -> Result<bool, redb::Error> {
        let txn = self.db.begin_write()?;
        let existed = txn.open_table(RECORDS)?.remove(id)?.is_some();
        txn.commit()?;
        Ok(existed)
    }

    /// Every record, in identity order (read once, at start).
    pub fn all(&self) -> Result<Vec<StoredRecord>, redb::Error> {
        let table = self.db.begin_read()?.open_table(RECORDS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (id, record) = entry?;
            out.push((*id.value(), record.value().to_vec()));
        }
        Ok(out)
    }
}
