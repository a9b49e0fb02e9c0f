//! The socket path's send stream (ring/RING.md, "Data streams"): a Unix stream socket the
//! router hands an engine that has no rings, on which the calling thread writes each message
//! itself, framed as a message record, instead of handing it to the engine thread for an RPC
//! call; the router answers every frame with its outcome, in the order they came. A blocking
//! send waiting for its answer reads them itself; otherwise a thread of the stream's own does,
//! telling each sender. The framing of both directions is here, for the router's end too.

use crate::ring::records;
use crate::stream_reader::{look_a_while, Next, StreamReader};
use crate::EngineError;
use netmachine_schema::router_capnp::SendRefusal;
use netmachine_schema::{EngineMessage, Identity};
use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// A send frame's first byte: route it, waiting (within the node's send wait) for room at the
/// destination, as `send` does.
pub const SEND: u8 = 1;
/// A send frame's first byte: route it only if the destination has room now, as `trySend`.
pub const TRY_SEND: u8 = 2;
/// An outcome frame's first byte: the message was taken.
pub const ACCEPTED: u8 = 0;
/// An outcome frame's first byte: it was refused; a u16 reason (`SendRefusal`), the 32-byte
/// identity of the slowest subscriber (zeros unless back-pressured), then the detail in UTF-8.
pub const REFUSED: u8 = 1;
/// The longest outcome frame either end writes or reads.
pub const MAX_OUTCOME: usize = 4096;
/// Where a refused outcome's detail starts.
const DETAIL_AT: usize = 1 + 2 + 32;

/// Appends the frame that sends `message` (`wait`: as `send`, else as `trySend`).
pub fn send_frame(out: &mut Vec<u8>, message: &EngineMessage, wait: bool) {
    let length = 1 + records::message_length(message);
    out.extend_from_slice(&(length as u32).to_le_bytes());
    out.push(if wait { SEND } else { TRY_SEND });
    records::append_message(out, message);
}

/// Appends an outcome frame: `None` when the message was taken, else its refusal.
pub fn outcome_frame(out: &mut Vec<u8>, refused: Option<(SendRefusal, Option<Identity>, &str)>) {
    let Some((reason, slowest, detail)) = refused else {
        out.extend_from_slice(&1u32.to_le_bytes());
        out.push(ACCEPTED);
        return;
    };
    let detail = truncated(detail, MAX_OUTCOME - DETAIL_AT);
    out.extend_from_slice(&((DETAIL_AT + detail.len()) as u32).to_le_bytes());
    out.push(REFUSED);
    out.extend_from_slice(&(reason as u16).to_le_bytes());
    out.extend_from_slice(&slowest.map_or([0; 32], |s| s.0));
    out.extend_from_slice(detail.as_bytes());
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncated(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Reads an outcome frame (without its length): what the sender is told, or why the frame is
/// not an outcome.
pub fn read_outcome(frame: &[u8]) -> Result<Result<(), EngineError>, String> {
    match frame.first() {
        Some(&ACCEPTED) if frame.len() == 1 => Ok(Ok(())),
        Some(&REFUSED) if frame.len() >= DETAIL_AT => {
            let code = u16::from_le_bytes([frame[1], frame[2]]);
            let reason = SendRefusal::try_from(code).map_err(|_| format!("an unknown refusal {code}"))?;
            let slowest = Identity(frame[3..DETAIL_AT].try_into().expect("32 bytes"));
            let detail = String::from_utf8_lossy(&frame[DETAIL_AT..]).into_owned();
            Ok(Err(match reason {
                SendRefusal::BackPressured => EngineError::BackPressured { slowest, detail },
                reason => EngineError::Refused { reason, detail },
            }))
        }
        _ => Err(format!("a {}-byte frame that is no outcome", frame.len())),
    }
}

/// A sender's answer, owed by the router.
type Owed = oneshot::Sender<Result<(), EngineError>>;
/// Where it comes.
pub(crate) type Answer = oneshot::Receiver<Result<(), EngineError>>;

/// The engine's end of its send stream.
pub(crate) struct SendStream {
    /// Written by the calling threads, one frame at a time, under the lock; a write waits at
    /// most the engine's send timeout.
    socket: Mutex<UnixStream>,
    /// The answers owed, in the order their frames were written.
    owed: Mutex<VecDeque<Owed>>,
    broken: AtomicBool,
    /// The router's answers, read by a blocking send waiting for its own, else by the thread.
    outcomes: StreamReader,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl SendStream {
    /// Takes the socket the router handed over, and starts the thread that reads its outcomes
    /// when no blocking send does, until the router closes it; `on_end` is called then.
    pub fn start(socket: OwnedFd, send_timeout: Duration, on_end: impl FnOnce(&Arc<SendStream>) + Send + 'static) -> std::io::Result<Arc<SendStream>> {
        let socket = UnixStream::from(socket);
        socket.set_write_timeout(Some(send_timeout))?;
        let outcomes = StreamReader::new(socket.try_clone()?, MAX_OUTCOME)?;
        let stream = Arc::new(SendStream { socket: Mutex::new(socket), owed: Mutex::new(VecDeque::new()), broken: AtomicBool::new(false), outcomes });
        let reading = stream.clone();
        std::thread::Builder::new().name("send-stream".into()).spawn(move || {
            let why = reading.outcomes.serve(|frame| reading.answer(frame));
            tracing::debug!(%why, "the send stream ended");
            reading.close(&why);
            on_end(&reading);
        })?;
        Ok(stream)
    }

    /// Writes `frame` (made by `send_frame`) if the socket has room for any of it, without
    /// waiting for room: the router's answer comes on the returned receiver; `None` if nothing
    /// could be written (the router is not reading: try again later). A frame the socket took
    /// part of is finished blocking, for at most `timeout`. `Closed` if the stream had ended:
    /// nothing was written.
    pub fn try_send(&self, frame: &[u8], timeout: Duration) -> Result<Option<Answer>, EngineError> {
        use nix::sys::socket::{send, MsgFlags};
        let (done, answer) = oneshot::channel();
        let mut socket = lock(&self.socket);
        if self.broken.load(Ordering::Acquire) {
            return Err(EngineError::Closed);
        }
        // Owed before it is written: its answer may come at once.
        lock(&self.owed).push_back(done);
        let written = loop {
            match send(socket.as_raw_fd(), frame, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL) {
                Err(nix::Error::EINTR) => {}
                written => break written,
            }
        };
        let failed = match written {
            Ok(all) if all == frame.len() => return Ok(Some(answer)),
            Err(nix::Error::EAGAIN) => {
                // Nothing went: it is owed nothing (the last owed, under the socket's lock).
                lock(&self.owed).pop_back();
                return Ok(None);
            }
            Ok(part) => match socket.write_all(&frame[part..]) {
                Ok(()) => return Ok(Some(answer)),
                Err(error) => error,
            },
            Err(error) => error.into(),
        };
        // Part of a frame may have gone: nothing more can be written after it.
        drop(socket);
        let timed_out = matches!(failed.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut);
        self.close(&format!("writing to the send stream failed: {failed}"));
        Err(if timed_out { EngineError::RouterUnavailable(timeout) } else { EngineError::Rpc(format!("the send stream failed: {failed}")) })
    }

    /// Tells the sender of the oldest frame unanswered the router's answer in `frame`.
    fn answer(&self, frame: &[u8]) -> Result<(), String> {
        let outcome = read_outcome(frame).map_err(|problem| format!("the router wrote {problem}"))?;
        let done = lock(&self.owed).pop_front().ok_or("the router answered a message never sent")?;
        let _ = done.send(outcome);
        Ok(())
    }

    /// For a blocking send: its answer, looking for it (reading the stream itself) for up to
    /// `look_for`; `None` if it has not come by then.
    pub fn answered(&self, answer: &mut Answer, look_for: Duration) -> Option<Result<(), EngineError>> {
        let mut turn = self.outcomes.turn();
        let found = look_a_while(look_for, || {
            match answer.try_recv() {
                Ok(outcome) => return Some(outcome),
                Err(oneshot::error::TryRecvError::Closed) => return Some(Err(EngineError::Closed)),
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            let mut frames = self.outcomes.try_frames()?;
            while let Ok(Next::Frame(frame)) = frames.next() {
                if let Err(why) = self.answer(frame) {
                    drop(frames);
                    self.close(&why);
                    break;
                }
            }
            None
        });
        turn.came = found.is_some();
        found
    }

    /// Nothing more is written; every answer still owed fails: whether the router took those
    /// messages is not known.
    pub fn close(&self, why: &str) {
        let socket = lock(&self.socket);
        self.broken.store(true, Ordering::Release);
        let _ = socket.shutdown(std::net::Shutdown::Both);
        drop(socket);
        for done in lock(&self.owed).drain(..) {
            let _ = done.send(Err(EngineError::Rpc(format!("the send stream ended before the router answered ({why})"))));
        }
    }

    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream_reader::FRAME_HEAD;
    use netmachine_schema::Destination;

    fn read_back(bytes: &[u8]) -> Vec<u8> {
        let (head, frame) = bytes.split_at(FRAME_HEAD);
        assert_eq!(u32::from_le_bytes(head.try_into().unwrap()) as usize, frame.len());
        frame.to_vec()
    }

    #[test]
    fn a_send_frame_carries_the_message_record_and_an_outcome_frame_the_refusal_with_its_slowest() {
        let mut message = EngineMessage::new(Identity([1; 32]), Destination::Topic(Identity([2; 32])), 7, b"body".to_vec());
        message.protocol = "p/1".into();
        let mut bytes = Vec::new();
        send_frame(&mut bytes, &message, false);
        let frame = read_back(&bytes);
        assert_eq!(frame[0], TRY_SEND);
        assert_eq!(records::read_message(&frame[1..]).unwrap(), message);

        let mut bytes = Vec::new();
        outcome_frame(&mut bytes, Some((SendRefusal::BackPressured, Some(Identity([9; 32])), "no room")));
        match read_outcome(&read_back(&bytes)).unwrap() {
            Err(EngineError::BackPressured { slowest, detail }) => assert_eq!((slowest, detail.as_str()), (Identity([9; 32]), "no room")),
            other => panic!("{other:?}"),
        }
        let mut bytes = Vec::new();
        outcome_frame(&mut bytes, None);
        assert!(read_outcome(&read_back(&bytes)).unwrap().is_ok());
        // A detail too long for an outcome is cut, on a character boundary.
        let mut bytes = Vec::new();
        outcome_frame(&mut bytes, Some((SendRefusal::NoRoute, None, &"é".repeat(MAX_OUTCOME))));
        match read_outcome(&read_back(&bytes)).unwrap() {
            Err(EngineError::Refused { reason: SendRefusal::NoRoute, detail }) => assert!(detail.len() <= MAX_OUTCOME - DETAIL_AT && detail.chars().all(|c| c == 'é')),
            other => panic!("{other:?}"),
        }
    }

    /// The router's end: reads one frame whole (blocking).
    fn router_reads(router: &mut UnixStream) -> Vec<u8> {
        use std::io::Read;
        let mut head = [0u8; FRAME_HEAD];
        router.read_exact(&mut head).unwrap();
        let mut frame = vec![0; u32::from_le_bytes(head) as usize];
        router.read_exact(&mut frame).unwrap();
        frame
    }

    #[test]
    fn a_stream_the_router_does_not_read_takes_frames_while_it_has_room_and_every_frame_taken_is_answered_in_order() {
        let (engine, mut router) = UnixStream::pair().unwrap();
        router.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let stream = SendStream::start(engine.into(), Duration::from_secs(10), |_| {}).unwrap();
        let mut frame = Vec::new();
        send_frame(&mut frame, &EngineMessage::new(Identity([1; 32]), Destination::Engine(Identity([2; 32])), 1, vec![7; 100]), true);
        let mut answers = Vec::new();
        while let Some(answer) = stream.try_send(&frame, Duration::from_secs(10)).unwrap() {
            answers.push(answer);
            assert!(answers.len() < 1_000_000, "the socket never filled");
        }
        // Nothing of the refused frame went: the router reads whole frames, one per answer owed,
        // and answers them.
        let mut outcomes = Vec::new();
        for at in 0..answers.len() {
            assert_eq!(router_reads(&mut router), frame[FRAME_HEAD..]);
            outcome_frame(&mut outcomes, (at % 2 == 1).then_some((SendRefusal::QueueFull, None, "full")));
        }
        router.set_nonblocking(true).unwrap();
        assert_eq!(std::io::Read::read(&mut router, &mut [0u8; 1]).unwrap_err().kind(), std::io::ErrorKind::WouldBlock);
        router.write_all(&outcomes).unwrap();
        for (at, answer) in answers.into_iter().enumerate() {
            match answer.blocking_recv().unwrap() {
                Ok(()) => assert_eq!(at % 2, 0),
                Err(EngineError::Refused { reason: SendRefusal::QueueFull, .. }) => assert_eq!(at % 2, 1),
                other => panic!("answer {at}: {other:?}"),
            }
        }
        // A frame larger than the socket holds goes in part, then the rest as the router reads.
        router.set_nonblocking(false).unwrap();
        let mut large = Vec::new();
        send_frame(&mut large, &EngineMessage::new(Identity([1; 32]), Destination::Engine(Identity([2; 32])), 2, vec![9; 4 << 20]), true);
        let reading = std::thread::spawn(move || router_reads(&mut router));
        assert!(stream.try_send(&large, Duration::from_secs(10)).unwrap().is_some());
        assert_eq!(reading.join().unwrap(), large[FRAME_HEAD..]);
    }

    #[test]
    fn frames_that_are_no_outcome_are_errors() {
        assert!(read_outcome(&[]).is_err());
        assert!(read_outcome(&[ACCEPTED, 0]).is_err());
        assert!(read_outcome(&[REFUSED, 0]).is_err());
        let mut unknown = vec![REFUSED, 0xff, 0xff];
        unknown.extend_from_slice(&[0; 32]);
        assert!(read_outcome(&unknown).unwrap_err().contains("unknown refusal"));
    }
}
