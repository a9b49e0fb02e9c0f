//! What lets acknowledged delivery between nodes outlive the router process. Every frame the
//! core numbers for another node is appended to that node's log before transport gets it, and
//! let go once the node acknowledges it; how far each node's frames were settled here is
//! recorded before the acknowledgement leaves. A router started again, after SIGKILL too, reads
//! both back (`open`): it goes on numbering in the same session, sends what was not acknowledged
//! again, and takes nothing twice. Written without fsync: the page cache outlives a killed
//! process, not the machine.
//!
//! Under `$DATA/router/delivery/`: `session` (the numbering, in decimal), and per node, named by
//! its identity, segments `<first seq>.sent` of records `[length u32][seq u64][check 8][batch]`
//! (little-endian; the check is the start of the BLAKE3 hash of seq and batch; a torn last record
//! is one the process never finished writing, so its frame never left) and `taken`
//! (`[session u64][through u64]`).

use crate::core::{frame, Outgoing};
use netmachine_schema::Identity;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A segment grows to about this before the next frame starts a new one; acknowledged segments
/// are removed whole.
const SEGMENT_BYTES: u64 = 4 << 20;

/// Bytes before a record's batch: length, seq, check.
const RECORD_HEAD: usize = 4 + 8 + 8;

/// What an earlier run logged, for the core to go on with.
#[derive(Debug, Default)]
pub struct Resumed {
    /// The session the earlier run numbered frames in (a new one if nothing was logged).
    pub session: u64,
    /// Per node: the next number, and the frames not known to be acknowledged, in order.
    pub sending: Vec<(Identity, u64, Vec<(u64, Arc<Vec<Outgoing>>)>)>,
    /// Per node: the session of its frames and every frame up to which was settled here.
    pub receiving: Vec<(Identity, u64, u64)>,
    /// Frames whose logged batch could not be read: they go again empty (their messages lost).
    pub unreadable: u64,
}

/// The log of one node's frames.
struct NodeLog {
    dir: PathBuf,
    /// First numbers of the segments, oldest first; the last is appended to.
    segments: VecDeque<u64>,
    file: File,
    /// Bytes in the segment appended to.
    bytes: u64,
    /// The number the next new frame gets: one below it was logged already (sent again).
    next: u64,
    taken: Option<File>,
}

/// Every node's log.
pub struct DeliveryLog {
    dir: PathBuf,
    nodes: HashMap<Identity, NodeLog>,
}

impl DeliveryLog {
    /// Opens the log under `dir`, reading back what an earlier run logged; `new_session` numbers
    /// frames when there is none.
    pub fn open(dir: &Path, new_session: u64, word_limit: usize) -> io::Result<(DeliveryLog, Resumed)> {
        std::fs::create_dir_all(dir)?;
        let session_file = dir.join("session");
        let logged = std::fs::read_to_string(&session_file).ok().and_then(|text| text.trim().parse::<u64>().ok());
        let mut log = DeliveryLog { dir: dir.to_path_buf(), nodes: HashMap::new() };
        let mut resumed = Resumed { session: logged.unwrap_or(new_session), ..Resumed::default() };
        let mut node_dirs: Vec<(Identity, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            match path.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<Identity>().ok()) {
                Some(node) if path.is_dir() => node_dirs.push((node, path)),
                _ => {}
            }
        }
        if logged.is_none() {
            // Frames of a session nobody knows cannot be numbered on: start afresh.
            for (_, path) in &node_dirs {
                std::fs::remove_dir_all(path)?;
            }
            node_dirs.clear();
            let staged = dir.join("session.new");
            std::fs::write(&staged, resumed.session.to_string())?;
            std::fs::rename(&staged, &session_file)?;
        }
        for (node, path) in node_dirs {
            let (node_log, frames, unreadable) = NodeLog::read(&path, word_limit)?;
            resumed.unreadable += unreadable;
            if let Some((session, through)) = node_log.taken_before()? {
                resumed.receiving.push((node, session, through));
            }
            resumed.sending.push((node, node_log.next, frames));
            log.nodes.insert(node, node_log);
        }
        Ok((log, resumed))
    }

    fn node(&mut self, node: Identity) -> io::Result<&mut NodeLog> {
        if !self.nodes.contains_key(&node) {
            let dir = self.dir.join(node.to_string());
            std::fs::create_dir_all(&dir)?;
            let file = create_segment(&dir, 1)?;
            let log = NodeLog { dir, segments: VecDeque::from([1]), file, bytes: 0, next: 1, taken: None };
            self.nodes.insert(node, log);
        }
        Ok(self.nodes.get_mut(&node).expect("inserted above"))
    }

    /// Frame `seq` for `node` carrying `batch` is about to go: logged first, unless it was
    /// already (it goes again).
    pub fn sent(&mut self, node: Identity, seq: u64, batch: &[Outgoing]) -> io::Result<()> {
        let log = self.node(node)?;
        if seq < log.next {
            return Ok(());
        }
        if log.bytes >= SEGMENT_BYTES {
            log.start_segment(seq)?;
        }
        let record = record(seq, &frame::unsealed(batch));
        log.file.write_all(&record)?;
        log.bytes += record.len() as u64;
        log.next = seq + 1;
        Ok(())
    }

    /// `node` acknowledged every frame before `kept_from`: segments holding only such frames go.
    pub fn acknowledged(&mut self, node: Identity, kept_from: u64) -> io::Result<()> {
        let Some(log) = self.nodes.get_mut(&node) else { return Ok(()) };
        if kept_from >= log.next && log.bytes > 0 {
            log.start_segment(log.next)?;
        }
        while log.segments.len() > 1 && log.segments[1] <= kept_from {
            let first = log.segments.pop_front().expect("two segments at least");
            std::fs::remove_file(segment_path(&log.dir, first))?;
        }
        Ok(())
    }

    /// Every frame of `node`'s `session` up to `through` is settled here.
    pub fn taken(&mut self, node: Identity, session: u64, through: u64) -> io::Result<()> {
        let log = self.node(node)?;
        if log.taken.is_none() {
            log.taken = Some(OpenOptions::new().create(true).truncate(false).write(true).read(true).open(log.dir.join("taken"))?);
        }
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&session.to_le_bytes());
        bytes[8..].copy_from_slice(&through.to_le_bytes());
        log.taken.as_ref().expect("opened above").write_all_at(&bytes, 0)
    }
}

impl NodeLog {
    /// Reads the segments in `dir`: the log, ready to append to, and its frames in order.
    #[allow(clippy::type_complexity)]
    fn read(dir: &Path, word_limit: usize) -> io::Result<(NodeLog, Vec<(u64, Arc<Vec<Outgoing>>)>, u64)> {
        let mut firsts: Vec<u64> = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name();
            if let Some(first) = name.to_str().and_then(|n| n.strip_suffix(".sent")).and_then(|n| n.parse().ok()) {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let mut frames: BTreeMap<u64, Arc<Vec<Outgoing>>> = BTreeMap::new();
        let (mut unreadable, mut next, mut end) = (0, firsts.last().copied().unwrap_or(1), 0);
        for first in &firsts {
            let bytes = std::fs::read(segment_path(dir, *first))?;
            end = 0;
            while let Some((seq, batch, length)) = read_record(&bytes[end..]) {
                end += length;
                next = next.max(seq + 1);
                let items = frame::read_unsealed(batch, word_limit).unwrap_or_else(|error| {
                    tracing::error!(%error, seq, "a logged frame cannot be read: it goes again empty");
                    unreadable += 1;
                    Vec::new()
                });
                frames.insert(seq, Arc::new(items));
            }
        }
        let newest = match firsts.last() {
            Some(first) => *first,
            None => create_segment(dir, next).map(|_| next)?,
        };
        // Appends go after the last whole record of the newest segment.
        let file = OpenOptions::new().write(true).open(segment_path(dir, newest))?;
        file.set_len(end as u64)?;
        let mut file = file;
        std::io::Seek::seek(&mut file, io::SeekFrom::End(0))?;
        let segments = if firsts.is_empty() { VecDeque::from([next]) } else { firsts.into() };
        let log = NodeLog { dir: dir.to_path_buf(), segments, file, bytes: end as u64, next, taken: None };
        Ok((log, frames.into_iter().collect(), unreadable))
    }

    /// What the `taken` file recorded, if anything.
    fn taken_before(&self) -> io::Result<Option<(u64, u64)>> {
        match std::fs::read(self.dir.join("taken")) {
            Ok(bytes) if bytes.len() >= 16 => {
                let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
                Ok(Some((word(0), word(8))))
            }
            Ok(_) => Ok(None),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Appends from now on go to a new segment whose first frame is `first`.
    fn start_segment(&mut self, first: u64) -> io::Result<()> {
        if self.segments.back() == Some(&first) {
            return Ok(());
        }
        self.file = create_segment(&self.dir, first)?;
        self.segments.push_back(first);
        self.bytes = 0;
        Ok(())
    }
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.sent"))
}

fn create_segment(dir: &Path, first: u64) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(segment_path(dir, first))
}

fn check(seq: u64, batch: &[u8]) -> [u8; 8] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(batch);
    hasher.finalize().as_bytes()[..8].try_into().expect("8 bytes")
}

fn record(seq: u64, batch: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(RECORD_HEAD + batch.len());
    record.extend_from_slice(&(batch.len() as u32).to_le_bytes());
    record.extend_from_slice(&seq.to_le_bytes());
    record.extend_from_slice(&check(seq, batch));
    record.extend_from_slice(batch);
    record
}

/// The record at the start of `bytes`: its seq, its batch and its whole length; none if it is
/// torn or does not check.
fn read_record(bytes: &[u8]) -> Option<(u64, &[u8], usize)> {
    let head = bytes.get(..RECORD_HEAD)?;
    let length = u32::from_le_bytes(head[..4].try_into().ok()?) as usize;
    let seq = u64::from_le_bytes(head[4..12].try_into().ok()?);
    let batch = bytes.get(RECORD_HEAD..RECORD_HEAD + length)?;
    (head[12..20] == check(seq, batch)).then_some((seq, batch, RECORD_HEAD + length))
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmachine_schema::{Destination, EngineMessage, Keypair};

    fn batch(n: u8) -> Vec<Outgoing> {
        let id = Keypair::generate().identity();
        vec![Outgoing::Message(EngineMessage::new(id, Destination::Node(id), 1, vec![n; 100]))]
    }

    #[test]
    fn what_was_not_acknowledged_comes_back_after_a_restart_and_numbering_goes_on() {
        let dir = std::env::temp_dir().join(format!("nm-delivery-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let node = Keypair::generate().identity();
        let (mut log, resumed) = DeliveryLog::open(&dir, 42, 1 << 20).unwrap();
        assert_eq!((resumed.session, resumed.sending.len()), (42, 0));
        let batches: Vec<Vec<Outgoing>> = (1..=5).map(batch).collect();
        for (i, b) in batches.iter().enumerate() {
            log.sent(node, i as u64 + 1, b).unwrap();
        }
        log.sent(node, 2, &batches[1][..0]).unwrap();
        log.acknowledged(node, 3).unwrap();
        log.taken(node, 9, 17).unwrap();
        drop(log);
        // A torn record at the end: the process was killed while writing it, before it left.
        let segment = segment_path(&dir.join(node.to_string()), 1);
        let mut torn = OpenOptions::new().append(true).open(&segment).unwrap();
        torn.write_all(&record(6, &frame::unsealed(&batch(6)))[..30]).unwrap();

        let (mut log, resumed) = DeliveryLog::open(&dir, 43, 1 << 20).unwrap();
        assert_eq!(resumed.session, 42, "the numbering goes on");
        let (logged_node, next, frames) = &resumed.sending[0];
        assert_eq!((*logged_node, *next), (node, 6));
        let seqs: Vec<u64> = frames.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5], "one segment holds them all: none of it goes before it is all acknowledged");
        assert_eq!(*frames[1].1, batches[1], "a frame sent again is not logged twice");
        assert_eq!(resumed.receiving, vec![(node, 9, 17)]);
        // Everything acknowledged: the next run has nothing to send again, and goes on at 7.
        log.sent(node, 6, &batch(6)).unwrap();
        log.acknowledged(node, 7).unwrap();
        drop(log);
        let (_, resumed) = DeliveryLog::open(&dir, 44, 1 << 20).unwrap();
        assert_eq!((resumed.sending[0].1, resumed.sending[0].2.len()), (7, 0));
        let segments = std::fs::read_dir(dir.join(node.to_string())).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".sent")).count();
        assert_eq!(segments, 1, "acknowledged segments are removed");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_log_that_cannot_be_made_is_an_error_not_a_panic() {
        let file = std::env::temp_dir().join(format!("nm-delivery-log-file-{}", std::process::id()));
        std::fs::write(&file, b"not a directory").unwrap();
        assert!(DeliveryLog::open(&file, 1, 1 << 20).is_err());
        std::fs::remove_file(&file).unwrap();
    }

    #[test]
    fn without_its_session_a_log_is_not_resumed() {
        let dir = std::env::temp_dir().join(format!("nm-delivery-log-lost-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let node = Keypair::generate().identity();
        let (mut log, _) = DeliveryLog::open(&dir, 1, 1 << 20).unwrap();
        log.sent(node, 1, &batch(1)).unwrap();
        drop(log);
        std::fs::remove_file(dir.join("session")).unwrap();
        let (_, resumed) = DeliveryLog::open(&dir, 2, 1 << 20).unwrap();
        assert_eq!((resumed.session, resumed.sending.len()), (2, 0));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
