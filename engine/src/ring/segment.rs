//! The shared-memory objects of the fast path: one ring segment per attached engine, and the
//! router's doorbell (RING.md, "The segment" and "Waking"). POSIX shared memory, mode 0600.

use super::layout::*;
use super::spsc::{Consumer, Producer, RingMemory};
use netmachine_schema::Identity;
use nix::fcntl::OFlag;
use nix::sys::mman::{mmap, munmap, shm_open, shm_unlink, MapFlags, ProtFlags};
use nix::sys::stat::Mode;
use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Why a segment could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("shared memory {name}: {source}")]
    System { name: String, source: nix::Error },
    #[error("shared memory {name} is not a netmachine ring: {problem}")]
    Invalid { name: String, problem: String },
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

/// A mapping of a whole shared-memory object, unmapped on drop.
struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; all concurrent access goes through atomics or the
// ring protocol.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    fn open(name: &str, create_len: Option<usize>) -> Result<Mapping, SegmentError> {
        let system = |source| SegmentError::System { name: name.to_string(), source };
        let flags = match create_len {
            Some(_) => OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL,
            None => OFlag::O_RDWR,
        };
        let fd = shm_open(name, flags, Mode::S_IRUSR | Mode::S_IWUSR).map_err(system)?;
        if create_len.is_none() {
            check_owner(name, &nix::sys::stat::fstat(&fd).map_err(system)?)?;
        }
        let len = match create_len {
            Some(len) => {
                nix::unistd::ftruncate(&fd, len as i64).map_err(system)?;
                len
            }
            None => nix::sys::stat::fstat(&fd).map_err(system)?.st_size as usize,
        };
        let length = NonZeroUsize::new(len).ok_or_else(|| SegmentError::Invalid {
            name: name.to_string(),
            problem: "it is empty".into(),
        })?;
        // SAFETY: a fresh shared mapping of the whole object; nothing else in this process
        // refers to that address range.
        let base = unsafe { mmap(None, length, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, MapFlags::MAP_SHARED, &fd, 0) }
            .map_err(system)?;
        Ok(Mapping { base: base.cast(), len })
    }

    fn u32_at(&self, at: usize) -> &AtomicU32 {
        assert!(at + 4 <= self.len && at % 4 == 0);
        // SAFETY: in bounds and aligned (checked); the mapping lives as long as `self`.
        unsafe { &*(self.base.as_ptr().add(at) as *const AtomicU32) }
    }

    fn u64_at(&self, at: usize) -> &AtomicU64 {
        assert!(at + 8 <= self.len && at % 8 == 0);
        // SAFETY: as for `u32_at`.
        unsafe { &*(self.base.as_ptr().add(at) as *const AtomicU64) }
    }

    fn bytes(&self, at: usize, len: usize) -> &[u8] {
        assert!(at + len <= self.len);
        // SAFETY: in bounds; these header bytes are written once, before the other side maps.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(at), len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `open` mapped; no reference into it outlives `self`.
        let _ = unsafe { munmap(self.base.cast(), self.len) };
    }
}

/// One engine's pair of rings.
pub struct RingSegment {
    mapping: Mapping,
    pub name: String,
    pub capacity: usize,
}

impl RingSegment {
    /// The segment's name for `engine` attached to `node`.
    pub fn name_for(node: &Identity, engine: &Identity) -> String {
        format!("/netmachine-{}-{engine}", &node.to_string()[..16])
    }

    /// Creates the segment (the router does), empty, for `engine`.
    pub fn create(name: &str, engine: &Identity, capacity: usize) -> Result<RingSegment, SegmentError> {
        if !valid_capacity(capacity) {
            return Err(SegmentError::Invalid { name: name.into(), problem: format!("capacity {capacity} is not a power of two >= 4096") });
        }
        let mapping = Mapping::open(name, Some(segment_size(capacity)))?;
        // SAFETY: the object was just created (O_EXCL) and is not yet known to anyone else.
        unsafe {
            let base = mapping.base.as_ptr();
            std::ptr::copy_nonoverlapping(engine.0.as_ptr(), base.add(ENGINE_AT), 32);
        }
        mapping.u64_at(CAPACITY_AT).store(capacity as u64, Ordering::Relaxed);
        mapping.u32_at(HEADER_SIZE_AT).store(HEADER_SIZE as u32, Ordering::Relaxed);
        mapping.u32_at(VERSION_AT).store(VERSION, Ordering::Relaxed);
        mapping.u32_at(ROUTER_PID_AT).store(std::process::id(), Ordering::Relaxed);
        mapping.u64_at(MAGIC_AT).store(MAGIC, Ordering::Release);
        Ok(RingSegment { mapping, name: name.to_string(), capacity })
    }

    /// Opens an existing segment, checking its header (and that it is `engine`'s, if given).
    pub fn open(name: &str, engine: Option<&Identity>) -> Result<RingSegment, SegmentError> {
        let mapping = Mapping::open(name, None)?;
        let invalid = |problem: String| SegmentError::Invalid { name: name.to_string(), problem };
        if mapping.len < HEADER_SIZE {
            return Err(invalid(format!("{} bytes is smaller than the header", mapping.len)));
        }
        if mapping.u64_at(MAGIC_AT).load(Ordering::Acquire) != MAGIC {
            return Err(invalid("bad magic".into()));
        }
        let version = mapping.u32_at(VERSION_AT).load(Ordering::Relaxed);
        if version != VERSION {
            return Err(invalid(format!("layout version {version}, this side speaks {VERSION}")));
        }
        let header = mapping.u32_at(HEADER_SIZE_AT).load(Ordering::Relaxed) as usize;
        let capacity = mapping.u64_at(CAPACITY_AT).load(Ordering::Relaxed) as usize;
        if header != HEADER_SIZE || !valid_capacity(capacity) || mapping.len != segment_size(capacity) {
            return Err(invalid(format!("header size {header}, capacity {capacity} and {} bytes do not agree", mapping.len)));
        }
        let segment = RingSegment { mapping, name: name.to_string(), capacity };
        if let Some(engine) = engine {
            if segment.engine() != *engine {
                return Err(invalid(format!("it belongs to engine {}, not {engine}", segment.engine())));
            }
        }
        Ok(segment)
    }

    /// Removes the segment's name; mappings stay valid until dropped.
    pub fn unlink(name: &str) -> Result<(), SegmentError> {
        shm_unlink(name).map_err(|source| SegmentError::System { name: name.to_string(), source })
    }

    pub fn engine(&self) -> Identity {
        Identity(self.mapping.bytes(ENGINE_AT, 32).try_into().expect("32 bytes"))
    }

    pub fn engine_pid(&self) -> u32 {
        self.mapping.u32_at(ENGINE_PID_AT).load(Ordering::Relaxed)
    }

    pub fn router_pid(&self) -> u32 {
        self.mapping.u32_at(ROUTER_PID_AT).load(Ordering::Relaxed)
    }

    pub fn set_engine_pid(&self, pid: u32) {
        self.mapping.u32_at(ENGINE_PID_AT).store(pid, Ordering::Relaxed);
    }

    pub fn set_router_pid(&self, pid: u32) {
        self.mapping.u32_at(ROUTER_PID_AT).store(pid, Ordering::Relaxed);
    }

    fn ring(&self, data_at: usize, head_at: usize, tail_at: usize) -> RingMemory {
        let base = self.mapping.base.as_ptr();
        // SAFETY: the header was checked (or written) to describe this mapping: both data areas
        // and counters lie within it, aligned; the ring protocol allows one producer and one
        // consumer per ring, which `engine_side`/`router_side` hand out to the two processes.
        unsafe {
            RingMemory::new(base.add(data_at), self.capacity, base.add(head_at) as *mut u64, base.add(tail_at) as *mut u64)
        }
    }

    /// The engine's ends: it produces into the outbox and consumes the inbox.
    pub fn engine_side(&self) -> (Producer, Consumer) {
        (
            Producer::new(self.ring(outbox_data_at(), OUTBOX_HEAD_AT, OUTBOX_TAIL_AT)),
            Consumer::new(self.ring(inbox_data_at(self.capacity), INBOX_HEAD_AT, INBOX_TAIL_AT)),
        )
    }

    /// The router's ends: it consumes the outbox and produces into the inbox.
    pub fn router_side(&self) -> (Consumer, Producer) {
        (
            Consumer::new(self.ring(outbox_data_at(), OUTBOX_HEAD_AT, OUTBOX_TAIL_AT)),
            Producer::new(self.ring(inbox_data_at(self.capacity), INBOX_HEAD_AT, INBOX_TAIL_AT)),
        )
    }

    /// A futex word of the header (`*_WAITING_AT` or `*_SLEEPING_AT`).
    pub fn word(&self, at: usize) -> &AtomicU32 {
        self.mapping.u32_at(at)
    }

    /// A counter of the header (`*_HEAD_AT` or `*_TAIL_AT`), for tools and benchmarks.
    pub fn counter(&self, at: usize) -> &AtomicU64 {
        self.mapping.u64_at(at)
    }
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
    mapping: Mapping,
    pub name: String,
}

impl Doorbell {
    pub fn name_for(node: &Identity) -> String {
        format!("/netmachine-{}-doorbell", &node.to_string()[..16])
    }

    /// Opens the doorbell, creating it if it does not exist (the router does).
    pub fn open_or_create(name: &str) -> Result<Doorbell, SegmentError> {
        match Mapping::open(name, Some(DOORBELL_SIZE)) {
            Ok(mapping) => {
                // The owner first: a sweep never sees a valid doorbell without one.
                mapping.u32_at(DOORBELL_ROUTER_PID_AT).store(std::process::id(), Ordering::Relaxed);
                mapping.u32_at(VERSION_AT).store(DOORBELL_VERSION, Ordering::Relaxed);
                mapping.u64_at(MAGIC_AT).store(DOORBELL_MAGIC, Ordering::Release);
                Ok(Doorbell { mapping, name: name.to_string() })
            }
            Err(SegmentError::System { source: nix::Error::EEXIST, .. }) => match Doorbell::open(name) {
                Ok(doorbell) => {
                    doorbell.mapping.u32_at(DOORBELL_ROUTER_PID_AT).store(std::process::id(), Ordering::Relaxed);
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
        self.mapping.u32_at(DOORBELL_ROUTER_PID_AT).load(Ordering::Relaxed)
    }

    /// Opens an existing doorbell (engines do).
    pub fn open(name: &str) -> Result<Doorbell, SegmentError> {
        let mapping = Mapping::open(name, None)?;
        if mapping.len < DOORBELL_SIZE || mapping.u64_at(MAGIC_AT).load(Ordering::Acquire) != DOORBELL_MAGIC {
            return Err(SegmentError::Invalid { name: name.to_string(), problem: "not a netmachine doorbell".into() });
        }
        let version = mapping.u32_at(VERSION_AT).load(Ordering::Relaxed);
        if version != DOORBELL_VERSION {
            return Err(SegmentError::Invalid { name: name.to_string(), problem: format!("doorbell layout version {version}, this side speaks {DOORBELL_VERSION}") });
        }
        Ok(Doorbell { mapping, name: name.to_string() })
    }

    pub fn router_sleeping(&self) -> &AtomicU32 {
        self.mapping.u32_at(DOORBELL_ROUTER_SLEEPING_AT)
    }

    pub fn rings(&self) -> &AtomicU32 {
        self.mapping.u32_at(DOORBELL_RINGS_AT)
    }

    /// An engine, after writing to its outbox: rings if the router sleeps.
    pub fn ring(&self) {
        super::wait::ring_doorbell(self.router_sleeping(), self.rings());
    }

    /// The router, with nothing to do: sleeps until an engine rings (or for a while).
    pub fn sleep(&self, anything_waiting: impl FnMut() -> bool) {
        super::wait::sleep_on_doorbell(self.router_sleeping(), self.rings(), anything_waiting);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmachine_schema::Keypair;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_created_segment_is_private_opens_checked_and_carries_records() {
        let (node, engine) = (Keypair::generate().identity(), Keypair::generate().identity());
        let name = RingSegment::name_for(&node, &engine);
        let created = RingSegment::create(&name, &engine, 8192).unwrap();
        let file = format!("/dev/shm{name}");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(RingSegment::create(&name, &engine, 8192), Err(SegmentError::System { .. })));

        let opened = RingSegment::open(&name, Some(&engine)).unwrap();
        assert_eq!((opened.capacity, opened.engine()), (8192, engine));
        let stranger = Keypair::generate().identity();
        assert!(matches!(RingSegment::open(&name, Some(&stranger)), Err(SegmentError::Invalid { .. })));

        // The engine writes through its mapping; the router reads through its own.
        let (mut outbox, _) = opened.engine_side();
        outbox.try_write(Kind::Message, 5, |b| b.copy_from_slice(b"hello")).unwrap();
        let (mut from_engine, mut inbox) = created.router_side();
        assert_eq!(from_engine.peek().unwrap().unwrap().body, b"hello");
        from_engine.consume();
        inbox.try_write(Kind::Message, 3, |b| b.copy_from_slice(b"hey")).unwrap();
        let (_, mut engine_inbox) = opened.engine_side();
        assert_eq!(engine_inbox.peek().unwrap().unwrap().body, b"hey");

        RingSegment::unlink(&name).unwrap();
        assert!(!std::path::Path::new(&file).exists());
        assert!(RingSegment::open(&name, None).is_err());
    }

    #[test]
    fn a_segment_with_a_damaged_header_is_refused() {
        let engine = Keypair::generate().identity();
        let name = RingSegment::name_for(&Keypair::generate().identity(), &engine);
        let created = RingSegment::create(&name, &engine, 4096).unwrap();
        created.mapping.u32_at(VERSION_AT).store(99, Ordering::Relaxed);
        let err = RingSegment::open(&name, None).err().unwrap().to_string();
        assert!(err.contains("layout version 99"), "{err}");
        created.mapping.u64_at(MAGIC_AT).store(0, Ordering::Relaxed);
        assert!(RingSegment::open(&name, None).err().unwrap().to_string().contains("bad magic"));
        RingSegment::unlink(&name).unwrap();
    }

    #[test]
    fn orphans_are_swept_and_what_a_live_process_holds_is_kept() {
        let node = Keypair::generate().identity();
        let (live, dead) = (Keypair::generate().identity(), Keypair::generate().identity());
        let live_name = RingSegment::name_for(&node, &live);
        let dead_name = RingSegment::name_for(&node, &dead);
        let kept = RingSegment::create(&live_name, &live, 4096).unwrap();
        kept.set_engine_pid(std::process::id());
        kept.set_router_pid(0);
        let orphan = RingSegment::create(&dead_name, &dead, 4096).unwrap();
        orphan.set_router_pid(0);
        orphan.set_engine_pid(0);
        let bell_name = Doorbell::name_for(&node);
        let bell = Doorbell::open_or_create(&bell_name).unwrap();
        bell.mapping.u32_at(DOORBELL_ROUTER_PID_AT).store(0, Ordering::Relaxed);
        // Only this test's node: other tests' (and other nodes') segments are left alone.
        let this_node = format!("netmachine-{}-", &node.to_string()[..16]);
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
        let name = Doorbell::name_for(&Keypair::generate().identity());
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
