//! A large put's file in `tmp/`, written and hashed on a thread of its own while the service
//! receives the next bytes: writing through the page cache and hashing take about as long as
//! receiving them, and one thread doing all three left a put at a third to half of a plain
//! file's speed. The bytes wait for the thread in a bounded queue, so a slow disk holds the
//! writer (and, by flow control, the engine putting) back.

use crate::core::verify::Hashing;
use std::fs::File;
use std::io::{self, Write};
use std::sync::{Arc, OnceLock};
use tokio::sync::mpsc;

/// Pieces that may wait for the thread (up to 16 MiB at the SDK's 1 MiB pieces).
const WAITING_PIECES: usize = 16;

/// Bytes written between two starts of their writeback to disk (8 MiB).
const WRITEBACK_EVERY: u64 = 8 << 20;

/// Has the kernel start writing `len` bytes at `offset` to disk without waiting for them, so
/// that the disk works while the rest of the put arrives and the sync at its end has only the
/// tail left (the sync then took some 100 ms of a 256 MiB put). Only a hint: a failure here
/// shows at the sync.
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain system call on a descriptor this thread owns; no memory is passed.
    unsafe { libc::sync_file_range(file.as_raw_fd(), offset as libc::off64_t, len as libc::off64_t, libc::SYNC_FILE_RANGE_WRITE) };
}

/// The file being written and the thread writing it.
pub struct PutFile {
    pieces: mpsc::Sender<Vec<u8>>,
    thread: std::thread::JoinHandle<io::Result<(File, Hashing)>>,
    /// Why the thread stopped early, for the piece that finds it gone.
    failure: Arc<OnceLock<String>>,
}

/// Bytes of a put on their way to its file's thread: sent once the put is no longer borrowed.
pub struct Handoff {
    pieces: mpsc::Sender<Vec<u8>>,
    bytes: Vec<u8>,
    failure: Arc<OnceLock<String>>,
}

impl Handoff {
    /// Waits for room in the queue; fails, saying why, if the thread stopped.
    pub async fn send(self) -> io::Result<()> {
        let failure = self.failure;
        self.pieces.send(self.bytes).await.map_err(|_| {
            io::Error::other(format!("writing the put's file: {}", failure.get().map_or("its writer stopped", String::as_str)))
        })
    }

    #[cfg(test)]
    pub fn blocking_send(self) -> io::Result<()> {
        self.pieces.blocking_send(self.bytes).map_err(|_| io::Error::other("the put's writer stopped"))
    }
}

impl PutFile {
    /// Starts the thread writing `file`, hashing as a block of `declared` bytes.
    pub fn start(mut file: File, declared: u64) -> io::Result<PutFile> {
        let (pieces, mut waiting) = mpsc::channel::<Vec<u8>>(WAITING_PIECES);
        let failure = Arc::new(OnceLock::new());
        let failed = failure.clone();
        let thread = std::thread::Builder::new().name("put-writer".into()).spawn(move || {
            let mut hashing = Hashing::new(declared);
            let (mut written, mut flushing) = (0u64, 0u64);
            // The first failure ends the thread: the next piece finds it gone, and `finish` says why.
            while let Some(piece) = waiting.blocking_recv() {
                if let Err(error) = file.write_all(&piece) {
                    let _ = failed.set(error.to_string());
                    return Err(error);
                }
                written += piece.len() as u64;
                if written - flushing >= WRITEBACK_EVERY {
                    start_writeback(&file, flushing, written - flushing);
                    flushing = written;
                }
                hashing.update(&piece);
            }
            Ok((file, hashing))
        })?;
        Ok(PutFile { pieces, thread, failure })
    }

    /// `bytes` on their way to the thread (sent outside any borrow of the put).
    pub fn handoff(&self, bytes: &[u8]) -> Handoff {
        Handoff { pieces: self.pieces.clone(), bytes: bytes.to_vec(), failure: self.failure.clone() }
    }

    /// Waits for every piece to be written and hashed: the file and its hashing, or the
    /// first failure. Blocks: run it off the service's thread.
    pub fn finish(self) -> io::Result<(File, Hashing)> {
        drop(self.pieces);
        self.thread.join().map_err(|_| io::Error::other("the put's writer panicked"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_in_tmp(name: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("netmachine-put-file-{}-{name}", std::process::id()));
        std::fs::write(&path, b"").unwrap();
        path
    }

    #[test]
    fn the_bytes_are_written_and_hashed_in_order_whatever_their_pieces() {
        let path = file_in_tmp("ok");
        let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let writing = PutFile::start(std::fs::OpenOptions::new().write(true).open(&path).unwrap(), content.len() as u64).unwrap();
        for piece in content.chunks(70_001) {
            writing.handoff(piece).blocking_send().unwrap();
        }
        let (_, hashing) = writing.finish().unwrap();
        let (id, _) = hashing.finish().unwrap();
        assert_eq!(id, netmachine_schema::ContentId::of(&content));
        assert_eq!(std::fs::read(&path).unwrap(), content);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_file_that_cannot_be_written_fails_the_next_piece_with_the_reason() {
        let path = file_in_tmp("read-only");
        // Opened for reading only: the first write fails (EBADF).
        let writing = PutFile::start(File::open(&path).unwrap(), 1 << 20).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let refused = runtime.block_on(async {
            for _ in 0..(WAITING_PIECES + 2) * 4 {
                if let Err(error) = writing.handoff(&[1; 4096]).send().await {
                    return Some(error);
                }
                tokio::task::yield_now().await;
            }
            None
        });
        let refused = refused.expect("pieces kept being taken by a writer that cannot write");
        assert!(refused.to_string().starts_with("writing the put's file: Bad file descriptor"), "{refused}");
        assert!(writing.finish().is_err());
        std::fs::remove_file(path).unwrap();
    }
}
