//! The socket path's send stream (ring/RING.md, "The send stream"): a Unix stream socket the
//! router hands an engine that has no rings, on which the calling thread writes each message
//! itself, framed as a message record, instead of handing it to the engine thread for an RPC
//! call; the router answers every frame with its outcome, in the order they came, and a thread
//! of the stream's own reads those and tells each sender. The framing of both directions is
//! here, for the router's end too.

use crate::ring::records;
use crate::EngineError;
use netmachine_schema::router_capnp::SendRefusal;
use netmachine_schema::{EngineMessage, Identity};
use std::collections::VecDeque;
use crate::frame_reader::{FrameReader, FRAME_HEAD};
use std::io::Write;
use std::os::fd::OwnedFd;
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
/// How long the reader looks for an owed answer without blocking, yielding between looks: about
/// a round trip through the router on 2 cores.
const LOOK_FOR: Duration = Duration::from_micros(200);
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

/// The engine's end of its send stream.
pub(crate) struct SendStream {
    /// Written by the calling threads, one frame at a time, under the lock; a write waits at
    /// most the engine's send timeout.
    socket: Mutex<UnixStream>,
    /// The answers owed, in the order their frames were written.
    owed: Mutex<VecDeque<Owed>>,
    broken: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl SendStream {
    /// Takes the socket the router handed over, and starts the thread that reads its outcomes
    /// until the router closes it; `on_end` is called then.
    pub fn start(socket: OwnedFd, send_timeout: Duration, on_end: impl FnOnce(&Arc<SendStream>) + Send + 'static) -> std::io::Result<Arc<SendStream>> {
        let socket = UnixStream::from(socket);
        socket.set_write_timeout(Some(send_timeout))?;
        let reader = socket.try_clone()?;
        let stream = Arc::new(SendStream { socket: Mutex::new(socket), owed: Mutex::new(VecDeque::new()), broken: AtomicBool::new(false) });
        let reading = stream.clone();
        std::thread::Builder::new().name("send-stream".into()).spawn(move || {
            let why = reading.read_outcomes(reader);
            tracing::debug!(%why, "the send stream ended");
            reading.close(&why);
            on_end(&reading);
        })?;
        Ok(stream)
    }

    /// Writes `message` (`wait`: as `send`, else as `trySend`); the router's answer comes on
    /// the returned receiver. `Closed` if the stream had ended: nothing was written.
    pub fn send(&self, message: &EngineMessage, wait: bool, timeout: Duration) -> Result<oneshot::Receiver<Result<(), EngineError>>, EngineError> {
        let mut frame = Vec::with_capacity(FRAME_HEAD + 1 + records::message_length(message));
        send_frame(&mut frame, message, wait);
        let (done, answer) = oneshot::channel();
        let mut socket = lock(&self.socket);
        if self.broken.load(Ordering::Acquire) {
            return Err(EngineError::Closed);
        }
        lock(&self.owed).push_back(done);
        if let Err(error) = socket.write_all(&frame) {
            // Part of a frame may have gone: nothing more can be written after it.
            let _ = socket.shutdown(std::net::Shutdown::Both);
            drop(socket);
            let timed_out = matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut);
            self.close(&format!("writing to the send stream failed: {error}"));
            return Err(if timed_out { EngineError::RouterUnavailable(timeout) } else { EngineError::Rpc(format!("the send stream failed: {error}")) });
        }
        Ok(answer)
    }

    /// Reads outcomes until the stream ends: why it did. While answers are owed it looks for
    /// them without blocking a while; with none owed it blocks at once.
    fn read_outcomes(&self, socket: UnixStream) -> String {
        let mut frames = FrameReader::new(socket, MAX_OUTCOME);
        loop {
            let look_for = if lock(&self.owed).is_empty() { Duration::ZERO } else { LOOK_FOR };
            let frame = match frames.next(look_for) {
                Ok(Some(frame)) => frame,
                Ok(None) => return "the router closed it".into(),
                Err(e) => return format!("reading it failed: {e}"),
            };
            let outcome = match read_outcome(frame) {
                Ok(outcome) => outcome,
                Err(problem) => return format!("the router wrote {problem}"),
            };
            let Some(done) = lock(&self.owed).pop_front() else { return "the router answered a message never sent".into() };
            let _ = done.send(outcome);
        }
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
