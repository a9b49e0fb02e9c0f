//! The shared-memory objects of the fast path: one ring segment per attached engine, and the
//! router's doorbell (RING.md, "The segment" and "Waking"). POSIX shared memory, mode 0600.
//! A segment hands out each side's ends once, each keeping the mapping alive.

use crate::layout::*;
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
/// engine's messages and its identity as their source, so only this process's own user may
/// own them, with no access for anyone else (a file another user planted under the expected
/// name would otherwise be adopted, read and written by that user).
fn check_owner(name: &str, stat: &nix::sys::stat::FileStat) -> Result<(), SegmentError> {
    let me = nix::unistd::geteuid().as_raw();
    let problem = if stat.st_uid != me {
        format!("it is owned by user {}, not by this process's user {me}", stat.st_uid)
    } else if stat.st_mode & 0o077 != 0 {
        format!("its mode {:o} lets other users in", stat.st_mode & 0o777)
    } else {
        return Ok(());
    };
    Err(SegmentError::Invalid { name: name.to_string(), problem })
}

/// Maps a whole shared-memory object: created `create_len` bytes long (and new), or existing
/// and checked for its owner.
fn map(name: &str, create_len: Option<usize>) -> Result<Region, SegmentError> {
    let system = |source| SegmentError::System { name: name.to_string(), source };
    let flags = match create_len {
        Some(_) => OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL,
        None => OFlag::O_RDWR,
    };
    let fd = shm_open(name, flags, Mode::S_IRUSR | Mode::S_IWUSR).map_err(system)?;
    let len = match create_len {
        Some(len) => {
            nix::unistd::ftruncate(&fd, len as i64).map_err(system)?;
            len
        }
        None => {
            let stat = nix::sys::stat::fstat(&fd).map_err(system)?;
            check_owner(name, &stat)?;
            stat.st_size as usize
        }
    };
    let length = NonZeroUsize::new(len).ok_or_else(|| SegmentError::Invalid { name: name.to_string(), problem: "it is empty".into() })?;
    // SAFETY: a fresh shared mapping of the whole object; nothing else in this process refers
    // to that address range.
    let base = unsafe { mmap(None, length, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, MapFlags::MAP_SHARED, &fd, 0) }.map_err(system)?;
    // SAFETY: the mapping just made, `len` bytes, handed over whole.
    Ok(unsafe { Region::mapped(base.cast(), len) })
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
        if !valid_capacity(capacity) {
            return Err(SegmentError::Invalid { name: name.into(), problem: format!("capacity {capacity} is not a power of two >= 4096") });
        }
        let region = map(name, Some(segment_size(capacity)))?;
        region.write(ENGINE_AT, engine);
        region.u64_at(CAPACITY_AT).store(capacity as u64, Ordering::Relaxed);
        region.u32_at(HEADER_SIZE_AT).store(HEADER_SIZE as u32, Ordering::Relaxed);
        region.u32_at(VERSION_AT).store(VERSION, Ordering::Relaxed);
        region.u32_at(ROUTER_PID_AT).store(std::process::id(), Ordering::Relaxed);
        region.u64_at(MAGIC_AT).store(MAGIC, Ordering::Release);
        Ok(RingSegment::new(region, name, capacity))
    }

    fn new(region: Region, name: &str, capacity: usize) -> RingSegment {
        let (engine_side_taken, router_side_taken) = (AtomicBool::new(false), AtomicBool::new(false));
        RingSegment { region: Arc::new(region), name: name.to_string(), capacity, engine_side_taken, router_side_taken }
    }

    /// Opens an existing segment, checking its owner, its header (the capacity is read once:
    /// the ends use that value, whatever the header says later) and that it is `engine`'s, if
    /// given.
    pub fn open(name: &str, engine: Option<&EngineKey>) -> Result<RingSegment, SegmentError> {
        let region = map(name, None)?;
        let invalid = |problem: String| SegmentError::Invalid { name: name.to_string(), problem };
        if region.len() < HEADER_SIZE {
            return Err(invalid(format!("{} bytes is smaller than the header", region.len())));
        }
        if region.u64_at(MAGIC_AT).load(Ordering::Acquire) != MAGIC {
            return Err(invalid("bad magic".into()));
        }
        let version = region.u32_at(VERSION_AT).load(Ordering::Relaxed);
        if version != VERSION {
            return Err(invalid(format!("layout version {version}, this side speaks {VERSION}")));
        }
        let header = region.u32_at(HEADER_SIZE_AT).load(Ordering::Relaxed) as usize;
        let capacity = region.u64_at(CAPACITY_AT).load(Ordering::Relaxed) as usize;
        if header != HEADER_SIZE || !valid_capacity(capacity) || region.len() != segment_size(capacity) {
            return Err(invalid(format!("header size {header}, capacity {capacity} and {} bytes do not agree", region.len())));
        }
        let segment = RingSegment::new(region, name, capacity);
        if let Some(engine) = engine {
            if segment.engine() != *engine {
                return Err(invalid(format!("it belongs to engine {}, not {}", hex(&segment.engine()), hex(engine))));
            }
        }
        Ok(segment)
    }

    /// Removes the segment's name; mappings stay valid until dropped.
    pub fn unlink(name: &str) -> Result<(), SegmentError> {
        shm_unlink(name).map_err(|source| SegmentError::System { name: name.to_string(), source })
    }

    pub fn engine(&self) -> EngineKey {
        let mut engine = [0; 32];
        self.region.read(ENGINE_AT, &mut engine);
        engine
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

    fn take(&self, taken: &AtomicBool, side: &'static str) -> Result<(), SideTaken> {
        match taken.swap(true, Ordering::AcqRel) {
            false => Ok(()),
            true => Err(SideTaken { side, name: self.name.clone() }),
        }
    }

    /// The engine's ends, once per mapping: it produces into the outbox and consumes the inbox.
    pub fn engine_side(&self) -> Result<(Producer, Consumer), SideTaken> {
        self.take(&self.engine_side_taken, "engine")?;
        Ok((
            Producer::new(self.ring(outbox_data_at(), OUTBOX_HEAD_AT, OUTBOX_TAIL_AT)),
            Consumer::new(self.ring(inbox_data_at(self.capacity), INBOX_HEAD_AT, INBOX_TAIL_AT)),
        ))
    }

    /// The router's ends, once per mapping: it consumes the outbox and produces into the inbox.
    pub fn router_side(&self) -> Result<(Consumer, Producer), SideTaken> {
        self.take(&self.router_side_taken, "router")?;
        Ok((
            Consumer::new(self.ring(outbox_data_at(), OUTBOX_HEAD_AT, OUTBOX_TAIL_AT)),
            Producer::new(self.ring(inbox_data_at(self.capacity), INBOX_HEAD_AT, INBOX_TAIL_AT)),
        ))
    }

    /// A futex word of the header (`*_WAITING_AT` or `*_SLEEPING_AT`).
    pub fn word(&self, at: usize) -> &AtomicU32 {
        self.region.u32_at(at)
    }

    /// A counter of the header (`*_HEAD_AT` or `*_TAIL_AT`), for tools and benchmarks.
    pub fn counter(&self, at: usize) -> &AtomicU64 {
        self.region.u64_at(at)
    }
}

fn hex(key: &EngineKey) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// The ring segment's name for `engine` attached to `node` (RING.md, "The segment").
pub fn segment_name(node: &EngineKey, engine: &EngineKey) -> String {
    format!("/{SEGMENT_PREFIX}{}-{}", &hex(node)[..16], hex(engine))
}

/// The name of `node`'s doorbell.
pub fn doorbell_name(node: &EngineKey) -> String {
    format!("/{SEGMENT_PREFIX}{}-doorbell", &hex(node)[..16])
}

/// Whether process `pid` exists (0: no process was recorded).
pub fn process_alive(pid: u32) -> bool {
    pid != 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

/// What every netmachine segment's name (in /dev/shm) starts with.
pub const SEGMENT_PREFIX: &str = "netmachine-";

/// Removes the netmachine segments whose names start with `prefix` (`SEGMENT_PREFIX`: of any
/// node) that nobody can use any more: ring segments whose router and engine are both gone, and
/// doorbells whose router is gone and for whose node no ring segment is left (RING.md, "The
/// segment"). Returns how many it removed.
pub fn sweep_orphans(prefix: &str) -> usize {
    let Ok(entries) = std::fs::read_dir("/dev/shm") else { return 0 };
    let names: Vec<String> = entries
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|f| f.starts_with(SEGMENT_PREFIX) && f.starts_with(prefix))
        .collect();
    // Something unreadable may be in the middle of being made by a router starting right now:
    // it is left alone until it is old enough to be sure.
    let settled = |file: &str| {
        std::fs::metadata(format!("/dev/shm/{file}"))
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > std::time::Duration::from_secs(60)))
    };
    let mut removed = 0;
    let mut rings_left = std::collections::HashSet::new();
    for file in names.iter().filter(|f| !f.ends_with("-doorbell")) {
        let name = format!("/{file}");
        let orphan = match RingSegment::open(&name, None) {
            Ok(segment) => !process_alive(segment.router_pid()) && !process_alive(segment.engine_pid()),
            Err(_) => settled(file),
        };
        if orphan && RingSegment::unlink(&name).is_ok() {
            removed += 1;
        } else if !orphan {
            rings_left.insert(file.rsplit_once('-').map(|(node, _)| node.to_string()).unwrap_or_default());
        }
    }
    for file in names.iter().filter(|f| f.ends_with("-doorbell")) {
        let node = file.trim_end_matches("-doorbell");
        let name = format!("/{file}");
        let orphan = match Doorbell::open(&name) {
            Ok(doorbell) => !process_alive(doorbell.router_pid()),
            Err(_) => settled(file),
        };
        if orphan && !rings_left.contains(node) && RingSegment::unlink(&name).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// The router's doorbell: engines ring it after writing to an outbox while the router sleeps.
pub struct Doorbell {
    region: Region,
    pub name: String,
}

impl Doorbell {
    /// Opens the doorbell, creating it if it does not exist (the router does).
    pub fn open_or_create(name: &str) -> Result<Doorbell, SegmentError> {
        match map(name, Some(DOORBELL_SIZE)) {
            Ok(region) => {
                // The owner first: a sweep never sees a valid doorbell without one.
                region.u32_at(DOORBELL_ROUTER_PID_AT).store(std::process::id(), Ordering::Relaxed);
                region.u32_at(VERSION_AT).store(DOORBELL_VERSION, Ordering::Relaxed);
                region.u64_at(MAGIC_AT).store(DOORBELL_MAGIC, Ordering::Release);
                Ok(Doorbell { region, name: name.to_string() })
            }
            Err(SegmentError::System { source: nix::Error::EEXIST, .. }) => match Doorbell::open(name) {
                Ok(doorbell) => {
                    doorbell.region.u32_at(DOORBELL_ROUTER_PID_AT).store(std::process::id(), Ordering::Relaxed);
                    Ok(doorbell)
                }
                // Not a doorbell this router may use (another user's, or not a doorbell at
                // all): removed and made afresh, or the error says why it cannot be.
                Err(unusable @ SegmentError::Invalid { .. }) => {
                    RingSegment::unlink(name).map_err(|_| unusable)?;
                    Doorbell::open_or_create(name)
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// The process id of the router that last opened it.
    pub fn router_pid(&self) -> u32 {
        self.region.u32_at(DOORBELL_ROUTER_PID_AT).load(Ordering::Relaxed)
    }

    /// Opens an existing doorbell (engines do).
    pub fn open(name: &str) -> Result<Doorbell, SegmentError> {
        let region = map(name, None)?;
        if region.len() < DOORBELL_SIZE || region.u64_at(MAGIC_AT).load(Ordering::Acquire) != DOORBELL_MAGIC {
            return Err(SegmentError::Invalid { name: name.to_string(), problem: "not a netmachine doorbell".into() });
        }
        let version = region.u32_at(VERSION_AT).load(Ordering::Relaxed);
        if version != DOORBELL_VERSION {
            return Err(SegmentError::Invalid { name: name.to_string(), problem: format!("doorbell layout version {version}, this side speaks {DOORBELL_VERSION}") });
        }
        Ok(Doorbell { region, name: name.to_string() })
    }

    pub fn router_sleeping(&self) -> &AtomicU32 {
        self.region.u32_at(DOORBELL_ROUTER_SLEEPING_AT)
    }

    pub fn rings(&self) -> &AtomicU32 {
        self.region.u32_at(DOORBELL_RINGS_AT)
    }

    /// An engine, after writing to its outbox: rings if the router sleeps.
    pub fn ring(&self) {
        crate::wait::ring_doorbell(self.router_sleeping(), self.rings());
    }

    /// The router, with nothing to do: sleeps until an engine rings (or for a while).
    pub fn sleep(&self, anything_waiting: impl FnMut() -> bool) {
        crate::wait::sleep_on_doorbell(self.router_sleeping(), self.rings(), anything_waiting);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A fresh random key, as an engine's or a node's identity.
    fn key() -> EngineKey {
        let mut key = [0; 32];
        getrandom::fill(&mut key).expect("randomness");
        key
    }


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

    #[test]
    fn orphans_are_swept_and_what_a_live_process_holds_is_kept() {
        let node = key();
        let (live, dead) = (key(), key());
        let live_name = segment_name(&node, &live);
        let dead_name = segment_name(&node, &dead);
        let kept = RingSegment::create(&live_name, &live, 4096).unwrap();
        kept.set_engine_pid(std::process::id());
        kept.set_router_pid(0);
        let orphan = RingSegment::create(&dead_name, &dead, 4096).unwrap();
        orphan.set_router_pid(0);
        orphan.set_engine_pid(0);
        let bell_name = doorbell_name(&node);
        let bell = Doorbell::open_or_create(&bell_name).unwrap();
        bell.region.u32_at(DOORBELL_ROUTER_PID_AT).store(0, Ordering::Relaxed);
        // Only this test's node: other tests' (and other nodes') segments are left alone.
        let this_node = format!("netmachine-{}-", &hex(&node)[..16]);
        assert_eq!(sweep_orphans(&this_node), 1);
        assert!(RingSegment::open(&dead_name, None).is_err(), "the orphan is removed");
        assert!(RingSegment::open(&live_name, None).is_ok(), "a live engine's rings stay");
        assert!(Doorbell::open(&bell_name).is_ok(), "the doorbell stays while its node has rings");
        RingSegment::unlink(&live_name).unwrap();
        assert_eq!(sweep_orphans(&this_node), 1);
        assert!(Doorbell::open(&bell_name).is_err(), "then it goes too");
    }

    #[test]
    fn the_doorbell_is_shared_by_name() {
        let name = doorbell_name(&key());
        let router = Doorbell::open_or_create(&name).unwrap();
        let engine = Doorbell::open(&name).unwrap();
        engine.ring();
        assert_eq!(router.rings().load(Ordering::SeqCst), 0, "no ring while the router is awake");
        router.router_sleeping().store(1, Ordering::SeqCst);
        engine.ring();
        assert_eq!(router.rings().load(Ordering::SeqCst), 1);
        let again = Doorbell::open_or_create(&name).unwrap();
        assert_eq!(again.rings().load(Ordering::SeqCst), 1, "reopening keeps the doorbell");
        RingSegment::unlink(&name).unwrap();
    }
}
