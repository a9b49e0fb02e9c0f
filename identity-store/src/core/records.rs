//! The records the store holds, in identity order, each as its Cap'n Proto encoding, and every
//! decision about them: whether an update or a delete is taken (a `Change`, or a refusal), what
//! a lookup finds and what a `list` returns. The service loads the records from its database at
//! start, and writes each change to the database before it applies it here and answers, so what
//! is held here is always what is on disk.

use super::check::{check_room, check_update, of_kind, Refusal};
use capnp::message::{Builder, Reader};
use capnp::serialize::OwnedSegments;
use netmachine_service::rpc::reader_options;
use netmachine_schema::identity_capnp::{identity_record, RecordKind};
use netmachine_schema::Identity;
use std::collections::BTreeMap;
use std::ops::Bound;

/// Entries one `list` returns at most.
pub const MAX_LIST: u32 = 1000;

/// A change the store has decided on: made durable first, then applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put { id: Identity, record: Vec<u8> },
    Delete { id: Identity },
}

/// Every record of the store.
pub struct Records {
    by_id: BTreeMap<Identity, Vec<u8>>,
    /// Records at most (`limits.max_records`).
    max: u64,
    /// The largest record read, in words.
    word_limit: usize,
}

impl Records {
    pub fn new(max: u64, word_limit: usize) -> Self {
        Records { by_id: BTreeMap::new(), max, word_limit }
    }

    /// Takes a record read from the database at start; an unreadable one is refused (and stays
    /// out of lookups and lists).
    pub fn load(&mut self, id: Identity, record: Vec<u8>) -> capnp::Result<()> {
        self.decode(&record)?.get_root::<identity_record::Reader>()?.which()?;
        self.by_id.insert(id, record);
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.by_id.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Reads a stored encoding (every record held was read once already).
    pub fn decode(&self, record: &[u8]) -> capnp::Result<Reader<OwnedSegments>> {
        capnp::serialize::read_message(&mut &record[..], reader_options(self.word_limit))
    }

    /// The record under `id`, encoded.
    pub fn get(&self, id: &Identity) -> Option<&[u8]> {
        self.by_id.get(id).map(Vec::as_slice)
    }

    /// Whether `record` may be stored under `id`: the change to make, or why not.
    pub fn update(&self, id: Identity, record: identity_record::Reader<'_>) -> Result<Change, Refusal> {
        let existing = self.get(&id).map(|bytes| self.decode(bytes)).transpose()?;
        let existing = existing.as_ref().map(|m| m.get_root::<identity_record::Reader>()).transpose()?;
        check_update(&id, record, existing)?;
        if existing.is_none() {
            check_room(self.len(), self.max)?;
        }
        let mut copy = Builder::new_default();
        copy.set_root(record)?;
        Ok(Change::Put { id, record: capnp::serialize::write_message_to_words(&copy) })
    }

    /// The change that deletes `id`, if the store holds it.
    pub fn delete(&self, id: Identity) -> Option<Change> {
        self.by_id.contains_key(&id).then_some(Change::Delete { id })
    }

    /// Applies a change once it is durable.
    pub fn apply(&mut self, change: Change) {
        match change {
            Change::Put { id, record } => self.by_id.insert(id, record),
            Change::Delete { id } => self.by_id.remove(&id),
        };
    }

    fn is_of_kind(&self, record: &[u8], kind: RecordKind) -> bool {
        let Ok(message) = self.decode(record) else { return false };
        message.get_root::<identity_record::Reader>().and_then(|r| Ok(r.which()?)).is_ok_and(|which| of_kind(kind, &which))
    }

    /// Up to `limit` records of `kind` (0, or over `MAX_LIST`: `MAX_LIST`) in identity order,
    /// after `after` (from the first when `None`).
    pub fn list(&self, kind: RecordKind, after: Option<Identity>, limit: u32) -> Vec<(Identity, &[u8])> {
        let limit = match limit {
            0 => MAX_LIST,
            n => n.min(MAX_LIST),
        };
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.by_id
            .range((start, Bound::Unbounded))
            .filter(|(_, record)| self.is_of_kind(record, kind))
            .take(limit as usize)
            .map(|(id, record)| (*id, record.as_slice()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::check::tests::{engine_record, node_record, read};
    use netmachine_schema::identity_store_capnp::RefusalReason;
    use netmachine_schema::{EngineLocation, Keypair};

    fn records(max: u64) -> Records {
        Records::new(max, 1 << 20)
    }

    fn put(records: &mut Records, id: Identity, wire: &Builder<capnp::message::HeapAllocator>) -> Result<(), Refusal> {
        let change = records.update(id, read(wire))?;
        records.apply(change);
        Ok(())
    }

    #[test]
    fn an_update_is_held_once_applied_and_a_lookup_finds_the_newer_record() {
        let mut records = records(10);
        let key = Keypair::generate();
        let id = key.identity();
        let change = records.update(id, read(&node_record(&key, 1, 4000, false))).unwrap();
        assert!(matches!(&change, Change::Put { id: put, .. } if *put == id));
        assert_eq!(records.get(&id), None, "nothing is held before the change is durable");
        records.apply(change);
        put(&mut records, id, &node_record(&key, 2, 4001, false)).unwrap();
        let held = records.decode(records.get(&id).unwrap()).unwrap();
        let identity_record::Which::Node(node) = held.get_root::<identity_record::Reader>().unwrap().which().unwrap() else { panic!("a node record") };
        assert_eq!(node.unwrap().get_advert().unwrap().get_version(), 2);
        let older = records.update(id, read(&node_record(&key, 1, 4000, false))).unwrap_err();
        assert_eq!(older.reason, RefusalReason::OlderVersion);
        assert_eq!(records.len(), 1);
    }

    #[test]
    fn a_full_store_refuses_new_ids_but_still_takes_newer_records_of_those_it_holds() {
        let mut records = records(1);
        let key = Keypair::generate();
        put(&mut records, key.identity(), &node_record(&key, 1, 4000, false)).unwrap();
        let other = Keypair::generate();
        let refusal = records.update(other.identity(), read(&node_record(&other, 1, 4000, false))).unwrap_err();
        assert_eq!(refusal.reason, RefusalReason::Full);
        put(&mut records, key.identity(), &node_record(&key, 2, 4000, false)).unwrap();
        assert_eq!(records.len(), 1);
    }

    #[test]
    fn only_held_records_can_be_deleted() {
        let mut records = records(10);
        let key = Keypair::generate();
        assert_eq!(records.delete(key.identity()), None);
        put(&mut records, key.identity(), &node_record(&key, 1, 4000, false)).unwrap();
        let change = records.delete(key.identity()).unwrap();
        records.apply(change);
        assert!(records.is_empty() && records.get(&key.identity()).is_none());
    }

    #[test]
    fn lists_filter_by_kind_go_in_identity_order_and_resume_after_a_given_id() {
        let mut records = records(100);
        let mut nodes: Vec<Identity> = Vec::new();
        for _ in 0..5 {
            let key = Keypair::generate();
            put(&mut records, key.identity(), &node_record(&key, 1, 4000, false)).unwrap();
            nodes.push(key.identity());
        }
        let engine = Keypair::generate();
        put(&mut records, engine.identity(), &engine_record(&EngineLocation::sign(&engine, nodes[0], 1))).unwrap();
        nodes.sort();
        let ids = |list: Vec<(Identity, &[u8])>| list.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
        assert_eq!(ids(records.list(RecordKind::Node, None, 100)), nodes);
        assert_eq!(ids(records.list(RecordKind::Engine, None, 100)), vec![engine.identity()]);
        assert_eq!(records.list(RecordKind::Any, None, 100).len(), 6);
        assert_eq!(ids(records.list(RecordKind::Node, None, 2)), nodes[..2]);
        assert_eq!(ids(records.list(RecordKind::Node, Some(nodes[1]), 100)), nodes[2..]);
        assert!(records.list(RecordKind::Topic, None, 100).is_empty());
        assert_eq!(records.list(RecordKind::Node, None, 0).len(), 5, "0 asks for as many as a list holds");
    }

    #[test]
    fn one_list_holds_at_most_max_list_entries() {
        let mut records = records(2000);
        for _ in 0..=MAX_LIST {
            let key = Keypair::generate();
            put(&mut records, key.identity(), &node_record(&key, 1, 4000, false)).unwrap();
        }
        for asked in [0, MAX_LIST + 1, u32::MAX] {
            assert_eq!(records.list(RecordKind::Node, None, asked).len(), MAX_LIST as usize);
        }
    }

    #[test]
    fn an_unreadable_stored_record_is_not_loaded() {
        let mut records = records(10);
        let id = Keypair::generate().identity();
        assert!(records.load(id, vec![0xff; 13]).is_err());
        assert!(records.is_empty());
        let key = Keypair::generate();
        let mut good = Builder::new_default();
        good.set_root(read(&node_record(&key, 1, 4000, false))).unwrap();
        records.load(key.identity(), capnp::serialize::write_message_to_words(&good)).unwrap();
        assert_eq!(records.len(), 1);
    }
}
