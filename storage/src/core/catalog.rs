//! The catalog: every block the node holds, its size and lease, and the disk budget. A put
//! reserves its size before a byte is written (refused over the block limit or the budget, so
//! no block is ever half-written for lack of room); a lease is only ever extended; a block
//! being read or fetched is held, and collection passes it by until it is let go. A partial
//! block (being fetched, or left by a fetch that stopped) keeps its whole size set aside until
//! it completes or, untouched for the partial lease, is collected.

use super::{Config, Millis};
use netmachine_schema::ContentId;
use std::collections::BTreeMap;

/// What the node holds of one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub size: u64,
    /// When the block may be collected, in ms since the epoch.
    pub expiry: Millis,
    /// The trust another node needs to be served this block.
    pub min_trust: u8,
}

/// Why a put or an extension is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the block is {size} bytes, over the node's largest block of {max} bytes (storage.max_block_bytes)")]
    TooLarge { size: u64, max: u64 },
    #[error("the block is {size} bytes and only {free} of the node's {budget} bytes are free (storage.max_bytes)")]
    OverBudget { size: u64, free: u64, budget: u64 },
    #[error("the expiry {expiry} is already past (now {now}, in ms since the epoch)")]
    Expired { expiry: Millis, now: Millis },
    #[error("no block {0} is held here")]
    Unknown(ContentId),
}

/// Room set aside for one put in progress.
#[derive(Debug, PartialEq, Eq)]
pub struct Reservation {
    ticket: u64,
    pub size: u64,
}

/// What a committed put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// A new block: its bytes are to be kept.
    New(Entry),
    /// The block was already held (its bytes are not needed again); its lease is now the later
    /// of the two.
    Existing(Entry),
}

/// A partial block's room, and whether a fetch is filling it (else since when it lies idle).
#[derive(Debug)]
struct PartialRoom {
    reservation: Reservation,
    idle_since: Option<Millis>,
}

/// What collection reclaimed (or, in a dry run, would reclaim).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Collection {
    pub reclaimed: Vec<(ContentId, u64)>,
    /// Partial blocks idle past the partial lease (their files are the shell's to delete).
    pub partials: Vec<(ContentId, u64)>,
    pub bytes: u64,
    /// Expired blocks passed by because they are being read or fetched.
    pub held: u64,
}

/// Every block held, the budget, and the holds.
#[derive(Debug)]
pub struct Catalog {
    config: Config,
    entries: BTreeMap<ContentId, Entry>,
    /// Bytes of the blocks held.
    used: u64,
    /// Bytes set aside by puts in progress, by ticket.
    reservations: BTreeMap<u64, u64>,
    next_ticket: u64,
    /// Readers and fetches of each block that must not be collected under them.
    holds: BTreeMap<ContentId, u32>,
    partials: BTreeMap<ContentId, PartialRoom>,
    /// Blocks and bytes collection reclaimed since the start.
    pub collected: (u64, u64),
}

impl Catalog {
    pub fn new(config: Config) -> Self {
        Catalog { config, entries: BTreeMap::new(), used: 0, reservations: BTreeMap::new(), next_ticket: 0, holds: BTreeMap::new(), partials: BTreeMap::new(), collected: (0, 0) }
    }

    /// Takes a partial block found on disk at start, idle from `now` (its room was taken before
    /// the restart, so it is set aside whatever the budget says now).
    pub fn load_partial(&mut self, id: ContentId, size: u64, now: Millis) {
        let reservation = self.set_aside(size);
        self.partials.insert(id, PartialRoom { reservation, idle_since: Some(now) });
    }

    /// A fetch of `id`, `size` bytes, fills it from now: room is set aside for it, unless it was
    /// already (a fetch resumed).
    pub fn fetch_partial(&mut self, id: ContentId, size: u64) -> Result<(), Refusal> {
        if let Some(room) = self.partials.get_mut(&id) {
            room.idle_since = None;
            return Ok(());
        }
        let reservation = self.reserve(size)?;
        self.partials.insert(id, PartialRoom { reservation, idle_since: None });
        Ok(())
    }

    /// The fetch of partial block `id` stopped: it lies idle from `now`, to resume.
    pub fn stop_partial(&mut self, id: ContentId, now: Millis) {
        if let Some(room) = self.partials.get_mut(&id) {
            room.idle_since = Some(now);
        }
    }

    /// Partial block `id` is complete: its room, to commit as a put's.
    pub fn complete_partial(&mut self, id: ContentId) -> Option<Reservation> {
        self.partials.remove(&id).map(|room| room.reservation)
    }

    /// Partial block `id` is dropped: its room is free.
    pub fn drop_partial(&mut self, id: ContentId) {
        if let Some(room) = self.partials.remove(&id) {
            self.release(room.reservation);
        }
    }

    /// Takes a block found on disk at start.
    pub fn load(&mut self, id: ContentId, entry: Entry) {
        if let Some(old) = self.entries.insert(id, entry) {
            self.used -= old.size;
        }
        self.used += entry.size;
    }

    pub fn get(&self, id: &ContentId) -> Option<&Entry> {
        self.entries.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ContentId, &Entry)> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held, and bytes set aside for puts in progress.
    pub fn usage(&self) -> (u64, u64) {
        (self.used, self.reservations.values().sum())
    }

    /// The expiry a put asks for: 0 is the node's default lease.
    pub fn lease(&self, expiry: Millis, now: Millis) -> Result<Millis, Refusal> {
        match expiry {
            0 => Ok(now.saturating_add(self.config.default_lease)),
            past if past <= now => Err(Refusal::Expired { expiry, now }),
            later => Ok(later),
        }
    }

    /// Sets aside `size` bytes for a put, before any is written.
    pub fn reserve(&mut self, size: u64) -> Result<Reservation, Refusal> {
        if size > self.config.max_block_bytes {
            return Err(Refusal::TooLarge { size, max: self.config.max_block_bytes });
        }
        let (used, reserved) = self.usage();
        let free = self.config.max_bytes.saturating_sub(used + reserved);
        if size > free {
            return Err(Refusal::OverBudget { size, free, budget: self.config.max_bytes });
        }
        Ok(self.set_aside(size))
    }

    fn set_aside(&mut self, size: u64) -> Reservation {
        self.next_ticket += 1;
        self.reservations.insert(self.next_ticket, size);
        Reservation { ticket: self.next_ticket, size }
    }

    /// A put that did not complete gives its room back.
    pub fn release(&mut self, reservation: Reservation) {
        self.reservations.remove(&reservation.ticket);
    }

    /// A put whose bytes were written and checked: the block is held from now on (its
    /// reservation becomes its size), or, if it already was, keeps the later lease.
    pub fn commit(&mut self, reservation: Reservation, id: ContentId, entry: Entry) -> Committed {
        self.reservations.remove(&reservation.ticket);
        match self.entries.get_mut(&id) {
            Some(held) => {
                held.expiry = held.expiry.max(entry.expiry);
                held.min_trust = held.min_trust.min(entry.min_trust);
                Committed::Existing(*held)
            }
            None => {
                self.entries.insert(id, entry);
                self.used += entry.size;
                Committed::New(entry)
            }
        }
    }

    /// Extends `id`'s lease to `expiry` (a lease is never shortened).
    pub fn extend(&mut self, id: ContentId, expiry: Millis, now: Millis) -> Result<Entry, Refusal> {
        let expiry = self.lease(expiry, now)?;
        let held = self.entries.get_mut(&id).ok_or(Refusal::Unknown(id))?;
        held.expiry = held.expiry.max(expiry);
        Ok(*held)
    }

    /// Keeps `id` from collection until [`Catalog::let_go`]; false if it is not held.
    pub fn hold(&mut self, id: ContentId) -> bool {
        if !self.entries.contains_key(&id) {
            return false;
        }
        *self.holds.entry(id).or_default() += 1;
        true
    }

    pub fn let_go(&mut self, id: ContentId) {
        if let Some(count) = self.holds.get_mut(&id) {
            *count -= 1;
            if *count == 0 {
                self.holds.remove(&id);
            }
        }
    }

    /// The blocks whose lease ended by `now` and that nobody reads: removed from the catalog
    /// (their bytes are the shell's to delete), unless `dry_run`.
    pub fn collect(&mut self, now: Millis, dry_run: bool) -> Collection {
        let mut collection = Collection::default();
        for (id, entry) in &self.entries {
            if entry.expiry > now {
                continue;
            }
            if self.holds.contains_key(id) {
                collection.held += 1;
                continue;
            }
            collection.reclaimed.push((*id, entry.size));
            collection.bytes += entry.size;
        }
        for (id, room) in &self.partials {
            if room.idle_since.is_some_and(|since| since.saturating_add(self.config.partial_lease) <= now) {
                collection.partials.push((*id, room.reservation.size));
                collection.bytes += room.reservation.size;
            }
        }
        if !dry_run {
            for (id, size) in &collection.reclaimed {
                self.entries.remove(id);
                self.used -= size;
            }
            for (id, _) in &collection.partials {
                self.drop_partial(*id);
            }
            self.collected.0 += (collection.reclaimed.len() + collection.partials.len()) as u64;
            self.collected.1 += collection.bytes;
        }
        collection
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = 1_000_000;

    fn catalog(max_bytes: u64) -> Catalog {
        Catalog::new(Config { max_bytes, max_block_bytes: 600, default_lease: 5_000, partial_lease: 2_000 })
    }

    fn entry(size: u64, expiry: Millis) -> Entry {
        Entry { size, expiry, min_trust: 0 }
    }

    fn put(catalog: &mut Catalog, name: &[u8], size: u64, expiry: Millis) -> ContentId {
        let id = ContentId::of(name);
        let reservation = catalog.reserve(size).unwrap();
        catalog.commit(reservation, id, entry(size, expiry));
        id
    }

    #[test]
    fn a_put_is_refused_over_the_block_limit_or_the_budget_and_puts_in_progress_count() {
        let mut catalog = catalog(1_000);
        assert_eq!(catalog.reserve(601), Err(Refusal::TooLarge { size: 601, max: 600 }));
        let first = catalog.reserve(500).unwrap();
        assert_eq!(catalog.reserve(501), Err(Refusal::OverBudget { size: 501, free: 500, budget: 1_000 }), "a put in progress holds its room");
        catalog.commit(first, ContentId::of(b"a"), entry(500, NOW + 10));
        let second = catalog.reserve(500).unwrap();
        catalog.release(second);
        assert_eq!(catalog.usage(), (500, 0), "a put given up gives its room back");
    }

    #[test]
    fn the_same_block_put_twice_is_held_once_with_the_later_lease() {
        let mut catalog = catalog(1_000);
        let id = put(&mut catalog, b"a", 100, NOW + 10);
        let again = catalog.reserve(100).unwrap();
        assert_eq!(catalog.commit(again, id, entry(100, NOW + 50)), Committed::Existing(entry(100, NOW + 50)));
        let earlier = catalog.reserve(100).unwrap();
        assert_eq!(catalog.commit(earlier, id, entry(100, NOW + 20)), Committed::Existing(entry(100, NOW + 50)));
        assert_eq!((catalog.len(), catalog.usage()), (1, (100, 0)));
    }

    #[test]
    fn a_lease_is_extended_never_shortened_and_expiry_zero_is_the_default_lease() {
        let mut catalog = catalog(1_000);
        let id = put(&mut catalog, b"a", 100, NOW + 10);
        assert_eq!(catalog.extend(id, NOW + 100, NOW).map(|e| e.expiry), Ok(NOW + 100));
        assert_eq!(catalog.extend(id, NOW + 50, NOW).map(|e| e.expiry), Ok(NOW + 100));
        assert_eq!(catalog.extend(id, 0, NOW).map(|e| e.expiry), Ok(NOW + 5_000));
        assert_eq!(catalog.extend(id, NOW - 1, NOW), Err(Refusal::Expired { expiry: NOW - 1, now: NOW }));
        let unknown = ContentId::of(b"nothing");
        assert_eq!(catalog.extend(unknown, NOW + 1, NOW), Err(Refusal::Unknown(unknown)));
        assert_eq!(catalog.lease(0, NOW), Ok(NOW + 5_000));
    }

    #[test]
    fn collection_reclaims_expired_blocks_but_not_one_being_read_and_a_dry_run_changes_nothing() {
        let mut catalog = catalog(1_000);
        let old = put(&mut catalog, b"old", 100, NOW - 1);
        let read = put(&mut catalog, b"read", 200, NOW);
        let live = put(&mut catalog, b"live", 300, NOW + 1);
        assert!(catalog.hold(read));
        let dry = catalog.collect(NOW, true);
        assert_eq!((dry.reclaimed, dry.bytes, dry.held), (vec![(old, 100)], 100, 1));
        assert_eq!(catalog.len(), 3, "a dry run removes nothing");
        assert_eq!(catalog.collect(NOW, false).reclaimed, vec![(old, 100)]);
        catalog.let_go(read);
        assert_eq!(catalog.collect(NOW, false).reclaimed, vec![(read, 200)], "let go, it is collected");
        assert_eq!((catalog.len(), catalog.usage(), catalog.collected), (1, (300, 0), (2, 300)));
        assert!(catalog.get(&live).is_some());
        assert!(!catalog.hold(old), "a block gone cannot be held");
    }

    #[test]
    fn a_partial_block_keeps_its_room_until_it_completes_or_lies_idle_past_the_partial_lease() {
        let mut catalog = catalog(1000);
        let id = ContentId::of(b"partial");
        catalog.fetch_partial(id, 600).unwrap();
        assert!(matches!(catalog.reserve(500), Err(Refusal::OverBudget { free: 400, .. })), "its room is taken");
        assert!(catalog.collect(NOW + 10_000, false).partials.is_empty(), "a partial block being fetched is never collected");
        catalog.stop_partial(id, NOW);
        assert!(catalog.collect(NOW + 1_999, false).partials.is_empty(), "idle within the partial lease, it is kept");
        // Resumed, it takes no second room.
        catalog.fetch_partial(id, 600).unwrap();
        assert_eq!(catalog.usage(), (0, 600));
        catalog.stop_partial(id, NOW);
        assert_eq!(catalog.collect(NOW + 2_000, true).partials, vec![(id, 600)], "a dry run lists it");
        assert_eq!(catalog.usage(), (0, 600), "and keeps it");
        let collection = catalog.collect(NOW + 2_000, false);
        assert_eq!((collection.partials, collection.bytes), (vec![(id, 600)], 600));
        assert_eq!(catalog.usage(), (0, 0));
        // Completed, its room becomes the block's.
        catalog.fetch_partial(id, 600).unwrap();
        let reservation = catalog.complete_partial(id).unwrap();
        catalog.commit(reservation, id, entry(600, NOW + 5_000));
        assert_eq!(catalog.usage(), (600, 0));
        // One found at start had its room before: it is set aside whatever the budget is now.
        let mut smaller = self::catalog(100);
        smaller.load_partial(id, 600, NOW);
        assert_eq!(smaller.usage(), (0, 600));
        assert!(smaller.collect(NOW + 2_000, false).partials == vec![(id, 600)]);
    }
}
