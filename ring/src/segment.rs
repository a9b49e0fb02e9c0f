//! An engine's ring segment (RING.md, "The segment"), what every shared-memory object of the
//! fast path shares (mapping, with the owner checked; the header every segment with rings
//! starts with; taking a side once), and the objects' names. POSIX shared memory, mode 0600.

use crate::layout::*;
use crate::handoff::Handed;
use crate::region::Region;
use crate::spsc::{Consumer, Producer, RingMemory};
use nix::fcntl::OFlag;
use nix::sys::mman::{mmap, shm_open, shm_unlink, MapFlags, ProtFlags};
use nix::sys::stat::Mode;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// An engine's identity, as a segment's header holds it: its ed25519 public key.
pub type EngineKey = [u8; 32];

/// Why a segment could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("shared memory {name}: {source}")]
    System { name: String, source: nix::Error },
    #[error("shared memory {name} is not a netmachine ring: {problem}")]
    Invalid { name: String, problem: String },
    #[error(transparent)]
    SideTaken(#[from] SideTaken),
}

/// A side of a segment was asked for twice: each ring has one producer and one consumer.
#[derive(Debug, thiserror::Error)]
#[error("the {side} side of ring segment {name} was already taken from this mapping")]
pub struct SideTaken {
    pub side: &'static str,
    pub name: String,
}

/// Refuses an object that another user could have made or can write: the rings carry an
/// engine's messages and its identity as their source, so only the router's user (`owner`)
/// may own them, with no access for anyone else (a file another user planted under the
/// expected name would otherwise be adopted, read and written by that user).
fn check_owner(name: &str, stat: &nix::sys::stat::FileStat, owner: u32) -> Result<(), SegmentError> {
    let problem = if stat.st_uid != owner {
        format!("it is owned by user {}, not by the router's user {owner}", stat.st_uid)
    } else if stat.st_mode & 0o077 != 0 {
        format!("its mode {:o} lets other users in", stat.st_mode & 0o777)
    } else {
        return Ok(());
    };
    Err(SegmentError::Invalid { name: name.to_string(), problem })
}

/// Maps a whole shared-memory object by name: created `create_len` bytes long (and new), or
/// existing and checked to be this process's user's alone.
pub(crate) fn map(name: &str, create_len: Option<usize>) -> Result<Region, SegmentError> {
    let system = |source| SegmentError::System { name: name.to_string(), source };
    let flags = match create_len {
        Some(_) => OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL,
        None => OFlag::O_RDWR,
    };
    let fd = shm_open(name, flags, Mode::S_IRUSR | Mode::S_IWUSR).map_err(system)?;
    match create_len {
        Some(len) => {
            nix::unistd::ftruncate(&fd, len as i64).map_err(system)?;
            map_whole(&fd, name, len)
        }
        None => map_handed(Handed { fd, name: name.to_string(), owner: nix::unistd::geteuid().as_raw() }),
    }
}

/// Opens an existing object by name to hand its descriptor over (the router does, to the
/// engines that may use it).
pub fn open_to_hand_over(name: &str) -> Result<std::os::fd::OwnedFd, SegmentError> {
    shm_open(name, OFlag::O_RDWR, Mode::empty()).map_err(|source| SegmentError::System { name: name.to_string(), source })
}

/// Maps a whole object the router handed over, checked to be the router's user's alone.
pub(crate) fn map_handed(handed: Handed) -> Result<Region, SegmentError> {
    let stat = nix::sys::stat::fstat(&handed.fd).map_err(|source| SegmentError::System { name: handed.name.clone(), source })?;
    check_owner(&handed.name, &stat, handed.owner)?;
    map_whole(&handed.fd, &handed.name, stat.st_size as usize)
}

fn map_whole(fd: &std::os::fd::OwnedFd, name: &str, len: usize) -> Result<Region, SegmentError> {
    let system = |source| SegmentError::System { name: name.to_string(), source };
    let length = NonZeroUsize::new(len).ok_or_else(|| SegmentError::Invalid { name: name.to_string(), problem: "it is empty".into() })?;
    // SAFETY: a fresh shared mapping of the whole object; nothing else in this process refers
    // to that address range.
    let base = unsafe { mmap(None, length, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, MapFlags::MAP_SHARED, fd, 0) }.map_err(system)?;
    // SAFETY: the mapping just made, `len` bytes, handed over whole.
    Ok(unsafe { Region::mapped(base.cast(), len) })
}

/// Creates a segment with rings of `capacity` bytes, `size` bytes in all, whose header starts
/// with `magic`: the common fields, then what `fill` writes, then the magic last, so that
/// whoever sees the magic sees the rest.
pub(crate) fn create_segment(name: &str, magic: u64, capacity: usize, size: usize, fill: impl FnOnce(&Region)) -> Result<Region, SegmentError> {
    if !valid_capacity(capacity) {
        return Err(SegmentError::Invalid { name: name.into(), problem: format!("capacity {capacity} is not a power of two >= 4096") });
    }
    let region = map(name, Some(size))?;
    region.u64_at(CAPACITY_AT).store(capacity as u64, Ordering::Relaxed);
    region.u32_at(HEADER_SIZE_AT).store(HEADER_SIZE as u32, Ordering::Relaxed);
    region.u32_at(VERSION_AT).store(VERSION, Ordering::Relaxed);
    fill(&region);
    region.u64_at(MAGIC_AT).store(magic, Ordering::Release);
    Ok(region)
}

/// Checks that the mapped `region` is a segment whose header starts with `magic`, with sound
/// common fields; returns its capacity (read once: its ends use that value, whatever the
/// header says later).
pub(crate) fn check_segment(region: &Region, name: &str, magic: u64, size: fn(usize) -> usize) -> Result<usize, SegmentError> {
    let invalid = |problem: String| SegmentError::Invalid { name: name.to_string(), problem };
    if region.len() < HEADER_SIZE {
        return Err(invalid(format!("{} bytes is smaller than the header", region.len())));
    }
    if region.u64_at(MAGIC_AT).load(Ordering::Acquire) != magic {
        return Err(invalid("bad magic".into()));
    }
    let version = region.u32_at(VERSION_AT).load(Ordering::Relaxed);
    if version != VERSION {
        return Err(invalid(format!("layout version {version}, this side speaks {VERSION}")));
    }
    let header = region.u32_at(HEADER_SIZE_AT).load(Ordering::Relaxed) as usize;
    let capacity = region.u64_at(CAPACITY_AT).load(Ordering::Relaxed) as usize;
    if header != HEADER_SIZE || !valid_capacity(capacity) || region.len() != size(capacity) {
        return Err(invalid(format!("header size {header}, capacity {capacity} and {} bytes do not agree", region.len())));
    }
    Ok(capacity)
}

/// Marks a side of the segment `name` taken; `SideTaken` if it already was.
pub(crate) fn take_once(taken: &AtomicBool, side: &'static str, name: &str) -> Result<(), SideTaken> {
    match taken.swap(true, Ordering::AcqRel) {
        false => Ok(()),
        true => Err(SideTaken { side, name: name.to_string() }),
    }
}

/// The 32-byte key at `at` of a segment's header.
pub(crate) fn key_at(region: &Region, at: usize) -> EngineKey {
    let mut key = [0; 32];
    region.read(at, &mut key);
    key
}

/// Refuses a segment whose key at `at` is not `expected`.
pub(crate) fn check_key(region: &Region, name: &str, at: usize, role: &str, expected: Option<&EngineKey>) -> Result<(), SegmentError> {
    match expected {
        Some(expected) if key_at(region, at) != *expected => Err(SegmentError::Invalid {
            name: name.to_string(),
            problem: format!("its {role} is {}, not {}", hex(&key_at(region, at)), hex(expected)),
        }),
        _ => Ok(()),
    }
}

/// One engine's pair of rings.
pub struct RingSegment {
    region: Arc<Region>,
    pub name: String,
    pub capacity: usize,
    engine_side_taken: AtomicBool,
    router_side_taken: AtomicBool,
}

impl RingSegment {
    /// Creates the segment (the router does), empty, for `engine`.
    pub fn create(name: &str, engine: &EngineKey, capacity: usize) -> Result<RingSegment, SegmentError> {
        let region = create_segment(name, MAGIC, capacity, segment_size(capacity), |region| {
            region.write(ENGINE_AT, engine);
            region.u32_at(ROUTER_PID_AT).store(std::process::id(), Ordering::Relaxed);
        })?;
        Ok(RingSegment::new(region, name, capacity))
    }

    fn new(region: Region, name: &str, capacity: usize) -> RingSegment {
        let (engine_side_taken, router_side_taken) = (AtomicBool::new(false), AtomicBool::new(false));
        RingSegment { region: Arc::new(region), name: name.to_string(), capacity, engine_side_taken, router_side_taken }
    }

    /// Opens an existing segment by name (the router does, after its restart), checking its
    /// owner, its header and that it is `engine`'s, if given.
    pub fn open(name: &str, engine: Option<&EngineKey>) -> Result<RingSegment, SegmentError> {
        RingSegment::checked(map(name, None)?, name, engine)
    }

    /// Maps the segment the router handed over (the engine does), checking it likewise.
    pub fn handed(handed: Handed, engine: &EngineKey) -> Result<RingSegment, SegmentError> {
        let name = handed.name.clone();
        RingSegment::checked(map_handed(handed)?, &name, Some(engine))
    }

    fn checked(region: Region, name: &str, engine: Option<&EngineKey>) -> Result<RingSegment, SegmentError> {
        let capacity = check_segment(&region, name, MAGIC, segment_size)?;
        check_key(&region, name, ENGINE_AT, "engine", engine)?;
        Ok(RingSegment::new(region, name, capacity))
    }

    /// Removes a shared-memory object's name; mappings stay valid until dropped.
    pub fn unlink(name: &str) -> Result<(), SegmentError> {
        shm_unlink(name).map_err(|source| SegmentError::System { name: name.to_string(), source })
    }

    pub fn engine(&self) -> EngineKey {
        key_at(&self.region, ENGINE_AT)
    }

    pub fn engine_pid(&self) -> u32 {
        self.region.u32_at(ENGINE_PID_AT).load(Ordering::Relaxed)
    }

    pub fn router_pid(&self) -> u32 {
        self.region.u32_at(ROUTER_PID_AT).load(Ordering::Relaxed)
    }

    pub fn set_engine_pid(&self, pid: u32) {
        self.region.u32_at(ENGINE_PID_AT).store(pid, Ordering::Relaxed);
    }

    pub fn set_router_pid(&self, pid: u32) {
        self.region.u32_at(ROUTER_PID_AT).store(pid, Ordering::Relaxed);
    }

    fn ring(&self, data_at: usize, head_at: usize, tail_at: usize) -> RingMemory {
        RingMemory::new(self.region.clone(), data_at, self.capacity, head_at, tail_at)
    }

    /// The engine's ends, once per mapping: it produces into the outbox and consumes the inbox.
    pub fn engine_side(&self) -> Result<(Producer, Consumer), SideTaken> {
        take_once(&self.engine_side_taken, "engine", &self.name)?;
        Ok((
            Producer::new(self.ring(outbox_data_at(), OUTBOX_HEAD_AT, OUTBOX_TAIL_AT)),
            Consumer::new(self.ring(inbox_data_at(self.capacity), INBOX_HEAD_AT, INBOX_TAIL_AT)),
        ))
    }

    /// The router's ends, once per mapping: it consumes the outbox and produces into the inbox.
    pub fn router_side(&self) -> Result<(Consumer, Producer), SideTaken> {
        take_once(&self.router_side_taken, "router", &self.name)?;
        Ok((
            Consumer::new(self.ring(outbox_data_at(), OUTBOX_HEAD_AT, OUTBOX_TAIL_AT)),
            Producer::new(self.ring(inbox_data_at(self.capacity), INBOX_HEAD_AT, INBOX_TAIL_AT)),
        ))
    }

    /// The router: lets the engine write to `peer` by direct channel, in a free slot of its
    /// channel table; false if the table is full.
    pub fn grant(&self, peer: &EngineKey) -> bool {
        let Some(slot) = (0..CHANNEL_SLOTS).find(|&slot| self.slot(slot) == [0; 32]) else { return false };
        self.region.write(slot_at(slot), peer);
        self.region.u32_at(GRANTS_AT).fetch_add(1, Ordering::Release);
        true
    }

    /// The router: takes `peer` out of the engine's channel table.
    pub fn withdraw(&self, peer: &EngineKey) {
        for slot in (0..CHANNEL_SLOTS).filter(|&slot| self.slot(slot) == *peer) {
            self.region.write(slot_at(slot), &[0; 32]);
            self.region.u32_at(GRANTS_AT).fetch_add(1, Ordering::Release);
        }
    }

    /// How many times the router changed the channel table: the engine reads the table again
    /// when this moves.
    #[inline]
    pub fn grants(&self) -> u32 {
        self.region.u32_at(GRANTS_AT).load(Ordering::Acquire)
    }

    /// The engines this one may write to by direct channel (as the table holds them now: read
    /// `grants` before and after, and again if it moved).
    pub fn granted(&self) -> Vec<EngineKey> {
        (0..CHANNEL_SLOTS).map(|slot| self.slot(slot)).filter(|peer| *peer != [0; 32]).collect()
    }

    fn slot(&self, slot: usize) -> EngineKey {
        key_at(&self.region, slot_at(slot))
    }

    /// A futex word of the header (`OUTBOX_PRODUCER_WAITING_AT`).
    #[inline]
    pub fn word(&self, at: usize) -> &AtomicU32 {
        self.region.u32_at(at)
    }

    /// A counter of the header (`*_HEAD_AT` or `*_TAIL_AT`), for tools and benchmarks.
    #[inline]
    pub fn counter(&self, at: usize) -> &AtomicU64 {
        self.region.u64_at(at)
    }
}

fn slot_at(slot: usize) -> usize {
    CHANNEL_TABLE_AT + 32 * slot
}

pub(crate) fn hex(key: &EngineKey) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// What every netmachine shared-memory object's name (in /dev/shm) starts with.
pub const SEGMENT_PREFIX: &str = "netmachine-";

/// The ring segment's name for `engine` attached to `node` (RING.md, "The segment").
pub fn segment_name(node: &EngineKey, engine: &EngineKey) -> String {
    format!("/{SEGMENT_PREFIX}{}-{}", &hex(node)[..16], hex(engine))
}

/// The name of `node`'s doorbell, the router's.
pub fn doorbell_name(node: &EngineKey) -> String {
    format!("/{SEGMENT_PREFIX}{}-doorbell", &hex(node)[..16])
}

/// The name of `engine`'s own doorbell, which whoever writes into its rings rings.
pub fn bell_name(node: &EngineKey, engine: &EngineKey) -> String {
    format!("{}{BELL_SUFFIX}", segment_name(node, engine))
}

/// What an engine's doorbell's name ends with.
pub const BELL_SUFFIX: &str = "-bell";

/// The name of the direct channel from `producer` to `consumer` (RING.md, "Direct channels").
pub fn channel_name(node: &EngineKey, producer: &EngineKey, consumer: &EngineKey) -> String {
    format!("/{SEGMENT_PREFIX}{}{CHANNEL_INFIX}{}-{}", &hex(node)[..16], hex(producer), hex(consumer))
}

/// What follows the node in a channel's name.
pub const CHANNEL_INFIX: &str = "-chan-";

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    use crate::random_key as key;

    #[test]
    fn a_created_segment_is_private_opens_checked_and_carries_records() {
        let (node, engine) = (key(), key());
        let name = segment_name(&node, &engine);
        let created = RingSegment::create(&name, &engine, 8192).unwrap();
        let file = format!("/dev/shm{name}");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(RingSegment::create(&name, &engine, 8192), Err(SegmentError::System { .. })));

        let opened = RingSegment::open(&name, Some(&engine)).unwrap();
        assert_eq!((opened.capacity, opened.engine()), (8192, engine));
        let stranger = key();
        assert!(matches!(RingSegment::open(&name, Some(&stranger)), Err(SegmentError::Invalid { .. })));

        // The engine writes through its mapping; the router reads through its own.
        let (mut outbox, mut engine_inbox) = opened.engine_side().unwrap();
        outbox.try_write(Kind::Message, &[b"hello"]).unwrap();
        let (mut from_engine, mut inbox) = created.router_side().unwrap();
        assert_eq!(from_engine.peek().unwrap().unwrap().body, b"hello");
        from_engine.consume();
        inbox.try_write(Kind::Message, &[b"hey"]).unwrap();
        assert_eq!(engine_inbox.peek().unwrap().unwrap().body, b"hey");
        // The router grants channels in the engine's table, which the engine reads.
        let (peer, other) = (key(), key());
        let before = opened.grants();
        assert!(created.grant(&peer) && created.grant(&other));
        assert_eq!((opened.granted(), opened.grants()), (vec![peer, other], before + 2));
        created.withdraw(&peer);
        assert_eq!(opened.granted(), vec![other]);
        let more = (0..CHANNEL_SLOTS).filter(|_| created.grant(&key())).count();
        assert_eq!(more, CHANNEL_SLOTS - 1, "the table holds {CHANNEL_SLOTS}");
        // Each side's ends are taken once per mapping: a second producer is never handed out.
        assert!(opened.engine_side().is_err() && created.router_side().is_err());
        // The ends keep the mapping: they work after the segment is dropped.
        drop((opened, created));
        outbox.try_write(Kind::Message, &[b"still mapped"]).unwrap();
        assert_eq!(from_engine.peek().unwrap().unwrap().body, b"still mapped");

        RingSegment::unlink(&name).unwrap();
        assert!(!std::path::Path::new(&file).exists());
        assert!(RingSegment::open(&name, None).is_err());
    }

    #[test]
    fn a_segment_with_a_damaged_header_is_refused() {
        let engine = key();
        let name = segment_name(&key(), &engine);
        let created = RingSegment::create(&name, &engine, 4096).unwrap();
        created.region.u32_at(VERSION_AT).store(99, Ordering::Relaxed);
        let err = RingSegment::open(&name, None).err().unwrap().to_string();
        assert!(err.contains("layout version 99"), "{err}");
        created.region.u64_at(MAGIC_AT).store(0, Ordering::Relaxed);
        assert!(RingSegment::open(&name, None).err().unwrap().to_string().contains("bad magic"));
        RingSegment::unlink(&name).unwrap();
    }
}
