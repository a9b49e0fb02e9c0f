//! Engines' send streams (ring/RING.md, "Data streams"): an engine on the socket path writes
//! its messages, framed, to a Unix stream socket the handoff socket handed it; the router reads
//! them in order, gives each to the core as the RPC `send` and `trySend` do, and writes each
//! outcome back in the same order. Its delivery stream, handed over with it, goes to the
//! attachment's pump. Both last as long as the attachment they were handed to.

use crate::core::{DropReason, Refused};
use crate::handoff::HandedStream;
use crate::shell::{RouterState, Settled};
use netmachine_engine::ring::records::{self, MESSAGE_HEAD};
use netmachine_engine::stream_reader::FRAME_HEAD;
use netmachine_engine::send_stream;
use netmachine_schema::Identity;
use std::os::fd::OwnedFd;
use std::rc::{Rc, Weak};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

/// Messages read whose outcomes are not written yet, at most: past that the stream is not read
/// until some are (and the engine's writes wait).
const OUTCOMES_IN_FLIGHT: usize = 1024;

/// What a send frame may carry beyond the body: its kind, the head, a protocol name and a
/// signature.
const FRAME_OVERHEAD: usize = 1 + MESSAGE_HEAD + (64 << 10);

/// Starts serving each send stream the handoff thread hands over, for as long as the router runs.
pub(crate) async fn take_handed(state: Weak<RouterState>, mut handed: mpsc::Receiver<HandedStream>) {
    while let Some((engine, sends, deliveries)) = handed.recv().await {
        let Some(state) = state.upgrade() else { return };
        state.serve_streams(engine, sends, deliveries);
    }
}

impl RouterState {
    /// Serves `engine`'s new data streams for as long as its current attachment lasts (an
    /// engine that detached meanwhile sees them closed).
    fn serve_streams(self: &Rc<Self>, engine: Identity, sends: OwnedFd, deliveries: OwnedFd) {
        let attachments = self.attachments.borrow();
        let Some(attachment) = attachments.get(&engine) else { return };
        let (sends, deliveries) = match (asynchronous(sends), asynchronous(deliveries)) {
            (Ok(sends), Ok(deliveries)) => (sends, deliveries),
            (Err(error), _) | (_, Err(error)) => {
                tracing::warn!(engine = %engine.short(), %error, "cannot serve data streams; the engine goes on over RPC");
                return;
            }
        };
        let max_frame = self.core().limits().max_message_bytes + FRAME_OVERHEAD;
        let serving = serve(Rc::downgrade(self), engine, sends, max_frame);
        attachment.set_streams(tokio::task::spawn_local(serving).abort_handle(), deliveries);
    }

    /// A frame from `engine`'s send stream, given to the core: its outcome to come, or why it
    /// was refused at once (counted).
    fn submit_frame(self: &Rc<Self>, engine: Identity, frame: &[u8]) -> Result<Settled, Refused> {
        let (wait, record) = match frame.split_first() {
            Some((&send_stream::SEND, record)) => (true, record),
            Some((&send_stream::TRY_SEND, record)) => (false, record),
            Some((kind, _)) => return Err(self.refused_at_once(Refused::malformed(format!("a send frame of unknown kind {kind}")))),
            None => return Err(self.refused_at_once(Refused::malformed("an empty send frame"))),
        };
        match records::read_message(record) {
            Ok(message) => Ok(self.submit(engine, message, wait)),
            Err(detail) => Err(self.refused_at_once(Refused::malformed(detail))),
        }
    }

    fn refused_at_once(&self, refused: Refused) -> Refused {
        self.count(refused.reason, 1);
        refused
    }
}

/// A socket the handoff thread made, on the router's runtime.
fn asynchronous(socket: OwnedFd) -> std::io::Result<tokio::net::UnixStream> {
    let socket = std::os::unix::net::UnixStream::from(socket);
    socket.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(socket)
}

async fn serve(state: Weak<RouterState>, engine: Identity, socket: tokio::net::UnixStream, max_frame: usize) {
    let (read, write) = socket.into_split();
    let (outcomes, to_write) = mpsc::channel(OUTCOMES_IN_FLIGHT);
    let (ended, ()) = tokio::join!(read_sends(state, engine, read, outcomes, max_frame), write_outcomes(write, to_write));
    tracing::debug!(engine = %engine.short(), %ended, "a send stream ended");
}

/// Reads frames and gives them to the core until the stream ends: why it did.
async fn read_sends(state: Weak<RouterState>, engine: Identity, read: OwnedReadHalf, outcomes: mpsc::Sender<Result<Settled, Refused>>, max_frame: usize) -> String {
    let mut reader = BufReader::new(read);
    let mut frame = Vec::new();
    loop {
        let mut head = [0u8; FRAME_HEAD];
        if let Err(error) = reader.read_exact(&mut head).await {
            return match error.kind() {
                std::io::ErrorKind::UnexpectedEof => "the engine closed it".into(),
                _ => format!("reading it failed: {error}"),
            };
        }
        let length = u32::from_le_bytes(head) as usize;
        let Some(state) = state.upgrade() else { return "the router stopped".into() };
        if length > max_frame {
            // The frames after it cannot be found: the stream ends (the engine's sends then go
            // as RPC calls, where a body over the limit is refused).
            state.count(DropReason::OverLimit, 1);
            tracing::warn!(engine = %engine.short(), length, max_frame, "closed a send stream that sent a frame over the limit");
            return format!("a {length}-byte frame, over the {max_frame}-byte limit");
        }
        frame.resize(length, 0);
        if let Err(error) = reader.read_exact(&mut frame).await {
            return format!("cut off inside a frame: {error}");
        }
        if outcomes.send(state.submit_frame(engine, &frame)).await.is_err() {
            return "its outcomes could not be written".into();
        }
    }
}

/// Writes each outcome as it settles, in order, flushing whenever the next is not known yet.
async fn write_outcomes(write: OwnedWriteHalf, mut outcomes: mpsc::Receiver<Result<Settled, Refused>>) {
    let mut writer = BufWriter::new(write);
    let mut frame = Vec::new();
    while let Some(outcome) = outcomes.recv().await {
        let outcome = match outcome {
            Ok(mut settled) => match settled.now() {
                Some(outcome) => outcome,
                None => {
                    if writer.flush().await.is_err() {
                        return;
                    }
                    settled.outcome().await
                }
            },
            Err(refused) => Err(refused),
        };
        frame.clear();
        send_stream::outcome_frame(&mut frame, outcome.as_ref().err().map(|r| (r.refusal, r.slowest, r.detail.as_str())));
        if writer.write_all(&frame).await.is_err() || (outcomes.is_empty() && writer.flush().await.is_err()) {
            return;
        }
    }
}
