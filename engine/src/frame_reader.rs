//! Reading a data stream's frames (ring/RING.md, "Data streams"): each is a u32 length
//! (little-endian) and that many bytes. A reader about to wait for the next looks for it without
//! blocking a while, yielding between looks, before it blocks: a frame that comes soon after the
//! last then costs no wake-up, and a reader with nothing coming sleeps.

use std::io::{Error, ErrorKind};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Bytes before each frame: the length of what follows, a u32 (little-endian).
pub const FRAME_HEAD: usize = 4;
/// Bytes asked of the socket at a time, at least.
const READ_AHEAD: usize = 64 << 10;

/// One direction of a data stream, as its reader sees it.
pub(crate) struct FrameReader {
    socket: UnixStream,
    buffer: Vec<u8>,
    /// Where the first frame not yet handed out starts.
    start: usize,
    max_frame: usize,
}

impl FrameReader {
    /// Reads frames of at most `max_frame` bytes from `socket` (left blocking).
    pub fn new(socket: UnixStream, max_frame: usize) -> FrameReader {
        FrameReader { socket, buffer: Vec::new(), start: 0, max_frame }
    }

    /// The next frame, reading as needed: for up to `look_for` it looks without blocking,
    /// yielding between looks, then it blocks. `None` at a clean end of the stream (between
    /// frames); a frame over the limit, or one cut off, is an error.
    pub fn next(&mut self, look_for: Duration) -> std::io::Result<Option<&[u8]>> {
        loop {
            if let Some(frame) = self.whole_frame()? {
                self.start = frame.end;
                return Ok(Some(&self.buffer[frame]));
            }
            self.buffer.drain(..self.start);
            self.start = 0;
            if self.read_more(look_for)? == 0 {
                return match self.buffer.is_empty() {
                    true => Ok(None),
                    false => Err(Error::new(ErrorKind::UnexpectedEof, format!("the stream ended {} bytes into a frame", self.buffer.len()))),
                };
            }
        }
    }

    /// Where the first frame not handed out lies in the buffer, if it is there whole.
    fn whole_frame(&self) -> std::io::Result<Option<Range<usize>>> {
        let Some(head) = self.buffer.get(self.start..self.start + FRAME_HEAD) else { return Ok(None) };
        let length = u32::from_le_bytes(head.try_into().expect("4 bytes")) as usize;
        if length > self.max_frame {
            return Err(Error::new(ErrorKind::InvalidData, format!("a {length}-byte frame, over the {}-byte limit", self.max_frame)));
        }
        let frame = self.start + FRAME_HEAD..self.start + FRAME_HEAD + length;
        Ok((frame.end <= self.buffer.len()).then_some(frame))
    }

    /// Reads what has come (0 bytes at the end of the stream).
    fn read_more(&mut self, look_for: Duration) -> std::io::Result<usize> {
        use nix::sys::socket::{recv, MsgFlags};
        let filled = self.buffer.len();
        self.buffer.resize(filled + READ_AHEAD, 0);
        let until = Instant::now() + look_for;
        let read = loop {
            let looking = !look_for.is_zero() && Instant::now() < until;
            let flags = if looking { MsgFlags::MSG_DONTWAIT } else { MsgFlags::empty() };
            match recv(self.socket.as_raw_fd(), &mut self.buffer[filled..], flags) {
                Err(nix::Error::EINTR) => {}
                Err(nix::Error::EAGAIN) if looking => std::thread::yield_now(),
                read => break read.map_err(Error::from),
            }
        };
        self.buffer.truncate(filled + *read.as_ref().unwrap_or(&0));
        read
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn frame(body: &[u8]) -> Vec<u8> {
        [&(body.len() as u32).to_le_bytes()[..], body].concat()
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
                assert_eq!(frames.next(Duration::from_micros(50)).unwrap().unwrap(), vec![n; n as usize]);
            }
            assert_eq!(frames.next(Duration::ZERO).unwrap_err().kind(), ErrorKind::UnexpectedEof);
        });
        let (mut writer, reader) = UnixStream::pair().unwrap();
        let mut frames = FrameReader::new(reader, 64);
        writer.write_all(&frame(b"last")).unwrap();
        drop(writer);
        assert_eq!(frames.next(Duration::ZERO).unwrap(), Some(&b"last"[..]));
        assert_eq!(frames.next(Duration::ZERO).unwrap(), None);
    }

    #[test]
    fn a_frame_over_the_limit_is_an_error_before_its_bytes_are_read() {
        let (mut writer, reader) = UnixStream::pair().unwrap();
        let mut frames = FrameReader::new(reader, 64);
        writer.write_all(&65u32.to_le_bytes()).unwrap();
        assert_eq!(frames.next(Duration::ZERO).unwrap_err().kind(), ErrorKind::InvalidData);
    }
}
