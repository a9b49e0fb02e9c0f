//! A large put's file in `tmp/`, written and hashed on a thread of its own while the service
//! receives the next bytes (one thread doing all three left a put at a third to half of a plain
//! file's speed). The bytes go to disk with direct I/O, as a fetched block's do (`direct`):
//! through the page cache, a put's copy into fresh pages cost this machine up to three times
//! the whole put once the cache had grown over a few blocks, and the sync at the end waited for
//! all of it. The bytes wait for the thread in a queue bounded in bytes, so a slow disk holds
//! the writer (and, by flow control, the engine putting) back.

use crate::core::verify::{Hashing, GROUP_BYTES};
use crate::direct::DirectWriter;
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Bytes that may wait for the thread (a piece larger than this waits for an empty queue).
const WAITING_BYTES: usize = 16 << 20;

/// A piece and the room it takes in the queue, given back once it is written.
type Piece = (Vec<u8>, OwnedSemaphorePermit);

/// The file being written and the thread writing it.
pub struct PutFile {
    pieces: mpsc::UnboundedSender<Piece>,
    /// Room in the queue, in bytes; closed when the thread stops early.
    room: Arc<Semaphore>,
    thread: std::thread::JoinHandle<io::Result<(File, Hashing)>>,
    /// Why the thread stopped early, for the piece that finds it gone.
    failure: Arc<OnceLock<String>>,
}

/// Bytes of a put on their way to its file's thread: sent once the put is no longer borrowed.
pub struct Handoff {
    pieces: mpsc::UnboundedSender<Piece>,
    room: Arc<Semaphore>,
    bytes: Vec<u8>,
    failure: Arc<OnceLock<String>>,
}

impl Handoff {
    /// Waits for room in the queue; fails, saying why, if the thread stopped.
    pub async fn send(self) -> io::Result<()> {
        let stopped = || io::Error::other(format!("writing the put's file: {}", self.failure.get().map_or("its writer stopped", String::as_str)));
        let taken = self.bytes.len().clamp(1, WAITING_BYTES) as u32;
        let permit = self.room.clone().acquire_many_owned(taken).await.map_err(|_| stopped())?;
        self.pieces.send((self.bytes, permit)).map_err(|_| stopped())
    }

    #[cfg(test)]
    pub fn blocking_send(self) -> io::Result<()> {
        tokio::runtime::Builder::new_current_thread().build()?.block_on(self.send())
    }
}

/// The put's bytes cut into the groups `DirectWriter` takes, whatever pieces they came in.
struct Groups {
    direct: DirectWriter,
    /// The start of a group that has not all arrived.
    partial: Vec<u8>,
    /// Where the next group starts.
    offset: u64,
}

impl Groups {
    fn take(&mut self, mut bytes: &[u8], file: &File) -> io::Result<()> {
        let group = GROUP_BYTES as usize;
        if !self.partial.is_empty() {
            let wanted = (group - self.partial.len()).min(bytes.len());
            self.partial.extend_from_slice(&bytes[..wanted]);
            bytes = &bytes[wanted..];
            if self.partial.len() < group {
                return Ok(());
            }
            self.direct.write(self.offset, &self.partial, file)?;
            self.offset += GROUP_BYTES;
            self.partial.clear();
        }
        while bytes.len() >= group {
            self.direct.write(self.offset, &bytes[..group], file)?;
            self.offset += GROUP_BYTES;
            bytes = &bytes[group..];
        }
        self.partial.extend_from_slice(bytes);
        Ok(())
    }

    /// Writes the last, short group and whatever waits to be written.
    fn flush(&mut self, file: &File) -> io::Result<()> {
        if !self.partial.is_empty() {
            self.direct.write(self.offset, &self.partial, file)?;
            self.partial.clear();
        }
        self.direct.flush(file)
    }
}

impl PutFile {
    /// Starts the thread writing `file` (at `path`, sized already), a block of `declared` bytes.
    pub fn start(file: File, path: &Path, declared: u64) -> io::Result<PutFile> {
        let direct = DirectWriter::open(path, declared);
        // Bounded by `room`: a piece is queued only with its bytes' permits.
        let (pieces, mut waiting) = mpsc::unbounded_channel::<Piece>();
        let room = Arc::new(Semaphore::new(WAITING_BYTES));
        let failure = Arc::new(OnceLock::new());
        let (failed, closing) = (failure.clone(), room.clone());
        let thread = std::thread::Builder::new().name("put-writer".into()).spawn(move || {
            let mut hashing = Hashing::new(declared);
            let mut groups = Groups { direct, partial: Vec::with_capacity(GROUP_BYTES as usize), offset: 0 };
            // The first failure ends the thread: the next piece finds it gone, and `finish` says why.
            let mut written = || {
                while let Some((piece, _room)) = waiting.blocking_recv() {
                    groups.take(&piece, &file)?;
                    hashing.update(&piece);
                }
                groups.flush(&file)
            };
            match written() {
                Ok(()) => Ok((file, hashing)),
                Err(error) => {
                    let _ = failed.set(error.to_string());
                    closing.close();
                    Err(error)
                }
            }
        })?;
        Ok(PutFile { pieces, room, thread, failure })
    }

    /// `bytes` on their way to the thread (sent outside any borrow of the put).
    pub fn handoff(&self, bytes: &[u8]) -> Handoff {
        Handoff { pieces: self.pieces.clone(), room: self.room.clone(), bytes: bytes.to_vec(), failure: self.failure.clone() }
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
        std::fs::File::options().write(true).open(&path).unwrap().set_len(300_000).unwrap();
        let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let writing = PutFile::start(std::fs::OpenOptions::new().write(true).open(&path).unwrap(), &path, content.len() as u64).unwrap();
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
    fn a_disk_that_is_full_fails_the_next_piece_with_the_reason() {
        // Every write to /dev/full fails as a full disk does.
        let path = Path::new("/dev/full");
        let writing = PutFile::start(File::options().write(true).open(path).unwrap(), path, 1 << 20).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        // Groups are written a 1 MiB region at a time: the 16th piece completes the first.
        let piece = vec![1; 64 << 10];
        let refused = runtime.block_on(async {
            for _ in 0..(WAITING_BYTES / piece.len() + 2) * 4 {
                if let Err(error) = writing.handoff(&piece).send().await {
                    return Some(error);
                }
                tokio::task::yield_now().await;
            }
            None
        });
        let refused = refused.expect("pieces kept being taken by a writer that cannot write");
        assert!(refused.to_string().starts_with("writing the put's file: No space left on device"), "{refused}");
        assert!(writing.finish().is_err());
    }
}
