//! The reading end of a data stream (ring/RING.md, "Data streams"): frames (a u32 length, then
//! that many bytes) read without blocking, and whose turn it is to read them. A blocking call
//! waiting for what comes on the stream (a message, the router's answer) reads it itself,
//! looking without blocking and yielding between looks, so that what comes costs no thread
//! wake-up; the stream's own thread reads when no call has for a while, blocking until
//! something comes, and hands what it reads on (for `recv`, and for replies to async requests).

use std::io::{Error, ErrorKind};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Bytes before each frame: the length of what follows, a u32 (little-endian).
pub const FRAME_HEAD: usize = 4;
/// Bytes asked of the socket at a time, at least.
const READ_AHEAD: usize = 64 << 10;
/// How long a call that read the stream keeps its turn after it returns (it usually comes back
/// at once, for the next message), before the thread reads again.
const LEASE: Duration = Duration::from_millis(5);

/// What a read without blocking found.
pub(crate) enum Next<'a> {
    Frame(&'a [u8]),
    /// Nothing whole yet.
    Empty,
    /// The stream ended between frames.
    End,
}

/// One direction of a data stream, as its reader sees it: what was read and not yet taken.
pub(crate) struct FrameReader {
    socket: UnixStream,
    /// Room to read into, zeroed once (filling it again per read cost as much as the read).
    buffer: Vec<u8>,
    /// Where the first frame not yet handed out starts, and where what was read ends.
    start: usize,
    end: usize,
    max_frame: usize,
    ended: bool,
}

impl FrameReader {
    /// Reads frames of at most `max_frame` bytes from `socket`.
    pub fn new(socket: UnixStream, max_frame: usize) -> FrameReader {
        FrameReader { socket, buffer: Vec::new(), start: 0, end: 0, max_frame, ended: false }
    }

    /// The next frame, if it has come whole, reading what has come without blocking. A frame
    /// over the limit, or one the end of the stream cut off, is an error.
    pub fn next(&mut self) -> std::io::Result<Next<'_>> {
        if let Some(frame) = self.whole_frame()? {
            self.start = frame.end;
            return Ok(Next::Frame(&self.buffer[frame]));
        }
        if !self.ended {
            self.ended = self.read_more()?;
            if let Some(frame) = self.whole_frame()? {
                self.start = frame.end;
                return Ok(Next::Frame(&self.buffer[frame]));
            }
        }
        match (self.ended, self.end - self.start) {
            (false, _) => Ok(Next::Empty),
            (true, 0) => Ok(Next::End),
            (true, left) => Err(Error::new(ErrorKind::UnexpectedEof, format!("the stream ended {left} bytes into a frame"))),
        }
    }

    /// Where the first frame not handed out lies in the buffer, if it is there whole.
    fn whole_frame(&self) -> std::io::Result<Option<Range<usize>>> {
        let Some(head) = self.buffer[..self.end].get(self.start..self.start + FRAME_HEAD) else { return Ok(None) };
        let length = u32::from_le_bytes(head.try_into().expect("4 bytes")) as usize;
        if length > self.max_frame {
            return Err(Error::new(ErrorKind::InvalidData, format!("a {length}-byte frame, over the {}-byte limit", self.max_frame)));
        }
        let frame = self.start + FRAME_HEAD..self.start + FRAME_HEAD + length;
        Ok((frame.end <= self.end).then_some(frame))
    }

    /// Reads what has come without blocking: whether the stream has ended.
    fn read_more(&mut self) -> std::io::Result<bool> {
        use nix::sys::socket::{recv, MsgFlags};
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
        if self.end == self.buffer.len() {
            // Full: what is left moves to the front, or the buffer grows (up to a frame whole).
            match self.start {
                0 => self.buffer.resize((2 * self.buffer.len()).max(READ_AHEAD), 0),
                start => {
                    self.buffer.copy_within(start..self.end, 0);
                    (self.start, self.end) = (0, self.end - start);
                }
            }
        }
        let read = loop {
            match recv(self.socket.as_raw_fd(), &mut self.buffer[self.end..], MsgFlags::MSG_DONTWAIT) {
                Err(nix::Error::EINTR) => {}
                read => break read,
            }
        };
        match read {
            Ok(0) => Ok(true),
            Ok(read) => {
                self.end += read;
                Ok(false)
            }
            Err(nix::Error::EAGAIN) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }
}

/// Who reads a data stream, and the frames read.
pub(crate) struct StreamReader {
    frames: Mutex<FrameReader>,
    /// Waits for something to come, without taking it (the stream's thread, blocking).
    watch: UnixStream,
    turns: Mutex<Turns>,
    thread_turn: Condvar,
}

/// Calls reading the stream themselves now, and until when the last one keeps its turn.
#[derive(Default)]
struct Turns {
    reading: u32,
    kept_until: Option<Instant>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A caller's turn at reading, given back when dropped: kept a while if what it waited for came
/// (`came`), else handed to the thread at once.
pub(crate) struct Turn<'a> {
    reader: &'a StreamReader,
    pub came: bool,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut turns = lock(&self.reader.turns);
        turns.reading -= 1;
        match self.came {
            true => turns.kept_until = Some(Instant::now() + LEASE),
            false => {
                turns.kept_until = None;
                self.reader.thread_turn.notify_one();
            }
        }
    }
}

impl StreamReader {
    /// Reads frames of at most `max_frame` bytes from `socket`.
    pub fn new(socket: UnixStream, max_frame: usize) -> std::io::Result<StreamReader> {
        let watch = socket.try_clone()?;
        Ok(StreamReader { frames: Mutex::new(FrameReader::new(socket, max_frame)), watch, turns: Mutex::default(), thread_turn: Condvar::new() })
    }

    /// A blocking call's turn at reading: the thread stays off the stream until it is given back.
    pub fn turn(&self) -> Turn<'_> {
        lock(&self.turns).reading += 1;
        Turn { reader: self, came: false }
    }

    /// The frames, if no one else is reading them (for a call with its turn).
    pub fn try_frames(&self) -> Option<MutexGuard<'_, FrameReader>> {
        self.frames.try_lock().ok()
    }

    /// The stream's thread: reads whenever no call has the turn, handing each frame to `handle`,
    /// until the stream ends or `handle` fails: why it ended.
    pub fn serve(&self, mut handle: impl FnMut(&[u8]) -> Result<(), String>) -> String {
        loop {
            self.wait_for_thread_turn();
            // Until something comes, without the frames' lock: a call may take the turn meanwhile.
            let mut byte = [0u8; 1];
            match nix::sys::socket::recv(self.watch.as_raw_fd(), &mut byte, nix::sys::socket::MsgFlags::MSG_PEEK) {
                Err(nix::Error::EINTR) | Ok(_) => {}
                Err(error) => return format!("reading it failed: {error}"),
            }
            if lock(&self.turns).reading > 0 {
                // A call took the turn meanwhile: what came is its to read.
                continue;
            }
            let mut frames = lock(&self.frames);
            loop {
                match frames.next() {
                    Ok(Next::Frame(frame)) => {
                        if let Err(why) = handle(frame) {
                            return why;
                        }
                    }
                    Ok(Next::Empty) => break,
                    Ok(Next::End) => return "the router closed it".into(),
                    Err(error) => return format!("reading it failed: {error}"),
                }
            }
        }
    }

    fn wait_for_thread_turn(&self) {
        let mut turns = lock(&self.turns);
        loop {
            let now = Instant::now();
            match (turns.reading, turns.kept_until) {
                (0, None) => return,
                (0, Some(until)) if until <= now => {
                    turns.kept_until = None;
                    return;
                }
                (0, Some(until)) => turns = self.thread_turn.wait_timeout(turns, until - now).unwrap_or_else(|p| p.into_inner()).0,
                _ => turns = self.thread_turn.wait_timeout(turns, LEASE).unwrap_or_else(|p| p.into_inner()).0,
            }
        }
    }
}

/// Runs `look` until it finds what it looks for or `look_for` has passed, yielding between
/// looks.
pub(crate) fn look_a_while<T>(look_for: Duration, mut look: impl FnMut() -> Option<T>) -> Option<T> {
    let until = Instant::now() + look_for;
    loop {
        if let Some(found) = look() {
            return Some(found);
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn frame(body: &[u8]) -> Vec<u8> {
        [&(body.len() as u32).to_le_bytes()[..], body].concat()
    }

    fn next_frame(frames: &mut FrameReader) -> Option<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match frames.next().unwrap() {
                Next::Frame(frame) => return Some(frame.to_vec()),
                Next::End => return None,
                Next::Empty if Instant::now() < deadline => std::thread::yield_now(),
                Next::Empty => panic!("no frame within 10 s"),
            }
        }
    }

    #[test]
    fn frames_cut_anywhere_are_read_whole_and_the_end_is_told_from_a_frame_cut_off() {
        let (mut writer, reader) = UnixStream::pair().unwrap();
        let mut frames = FrameReader::new(reader, 64);
        let bytes: Vec<u8> = (0..20u8).flat_map(|n| frame(&vec![n; n as usize])).collect();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for piece in bytes.chunks(3) {
                    writer.write_all(piece).unwrap();
                }
                writer.write_all(&frame(b"cut")[..5]).unwrap();
                writer.shutdown(std::net::Shutdown::Write).unwrap();
            });
            for n in 0..20u8 {
                assert_eq!(next_frame(&mut frames).unwrap(), vec![n; n as usize]);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            let cut = loop {
                match frames.next() {
                    Ok(Next::Empty) if Instant::now() < deadline => std::thread::yield_now(),
                    Ok(_) => panic!("the cut frame was not told"),
                    Err(error) => break error,
                }
            };
            assert_eq!(cut.kind(), ErrorKind::UnexpectedEof);
        });
        let (mut writer, reader) = UnixStream::pair().unwrap();
        let mut frames = FrameReader::new(reader, 64);
        writer.write_all(&frame(b"last")).unwrap();
        drop(writer);
        assert_eq!(next_frame(&mut frames).unwrap(), b"last");
        assert_eq!(next_frame(&mut frames), None);
    }

    #[test]
    fn frames_larger_than_the_room_read_at_a_time_arrive_whole_among_small_ones() {
        let (mut writer, reader) = UnixStream::pair().unwrap();
        let mut frames = FrameReader::new(reader, 1 << 20);
        let sizes = [40 << 10, 3, 300 << 10, 50 << 10, 7, 64 << 10, 1 << 20];
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for (n, size) in sizes.iter().enumerate() {
                    writer.write_all(&frame(&vec![n as u8; *size])).unwrap();
                }
            });
            for (n, size) in sizes.iter().enumerate() {
                assert_eq!(next_frame(&mut frames).unwrap(), vec![n as u8; *size]);
            }
        });
    }

    #[test]
    fn a_frame_over_the_limit_is_an_error_before_its_bytes_are_read() {
        let (mut writer, reader) = UnixStream::pair().unwrap();
        let mut frames = FrameReader::new(reader, 64);
        writer.write_all(&65u32.to_le_bytes()).unwrap();
        assert_eq!(frames.next().err().map(|e| e.kind()), Some(ErrorKind::InvalidData));
    }

    #[test]
    fn the_thread_reads_only_when_no_call_holds_the_turn_and_takes_over_when_it_is_given_back() {
        let (mut writer, reader) = UnixStream::pair().unwrap();
        let reader = std::sync::Arc::new(StreamReader::new(reader, 64).unwrap());
        let (handed, by_thread) = std::sync::mpsc::channel();
        let turn = reader.turn();
        let serving = reader.clone();
        std::thread::spawn(move || serving.serve(|frame| handed.send(frame.to_vec()).map_err(|e| e.to_string())));
        writer.write_all(&frame(b"for the call")).unwrap();
        // The call holds the turn: it reads the frame, and the thread hands nothing on.
        let mut frames = reader.try_frames().unwrap();
        assert_eq!(next_frame(&mut frames).unwrap(), b"for the call");
        drop(frames);
        drop(turn);
        writer.write_all(&frame(b"for the thread")).unwrap();
        assert_eq!(by_thread.recv_timeout(Duration::from_secs(10)).unwrap(), b"for the thread");
    }
}
