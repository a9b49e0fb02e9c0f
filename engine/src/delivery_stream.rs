//! The socket path's delivery stream (ring/RING.md, "Data streams"): the router writes each
//! message for an engine on the socket path, framed as a message record, to a Unix stream
//! socket it handed over with the send stream; a thread of the engine's reads them, hands
//! replies to their requests and the rest to the inbox, waiting for room there (the router
//! then holds further deliveries back). It yields a while before it blocks, so that a message
//! soon after another costs no wake-up.

use crate::connection::Shared;
use crate::frame_reader::FrameReader;
use crate::ring::records;
use netmachine_schema::EngineMessage;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long the reader looks for the next message without blocking, yielding between looks:
/// about a round trip through the router on 2 cores.
const LOOK_FOR: Duration = Duration::from_micros(200);

/// Appends the frame that delivers `message`: its length (u32), then its record.
pub fn delivery_frame(out: &mut Vec<u8>, message: &EngineMessage) {
    out.extend_from_slice(&(records::message_length(message) as u32).to_le_bytes());
    records::append_message(out, message);
}

/// Starts the thread that reads the delivery stream `socket` until the router closes it;
/// a frame over `max_frame` bytes, or one that is no message, ends it.
pub(crate) fn start(socket: OwnedFd, max_frame: usize, shared: Arc<Shared>, incoming: mpsc::Sender<Box<EngineMessage>>) -> std::io::Result<()> {
    let frames = FrameReader::new(UnixStream::from(socket), max_frame);
    std::thread::Builder::new().name("deliveries".into()).spawn(move || {
        let why = read_into(frames, &shared, &incoming);
        tracing::debug!(%why, "the delivery stream ended");
    })?;
    Ok(())
}

/// Reads messages and hands them on until the stream ends: why it did.
fn read_into(mut frames: FrameReader, shared: &Shared, incoming: &mpsc::Sender<Box<EngineMessage>>) -> String {
    loop {
        let record = match frames.next(LOOK_FOR) {
            Ok(Some(record)) => record,
            Ok(None) => return "the router closed it".into(),
            Err(error) => return format!("reading it failed: {error}"),
        };
        let message = match records::read_message(record) {
            Ok(message) => message,
            Err(problem) => return format!("the router wrote a message that cannot be read: {problem}"),
        };
        if let Some(message) = shared.route_reply(Box::new(message)) {
            if incoming.blocking_send(message).is_err() {
                return "the engine stopped receiving".into();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmachine_schema::{Destination, Identity};
    use std::io::Write;

    fn message(id: u64, body: &[u8]) -> EngineMessage {
        EngineMessage::new(Identity([1; 32]), Destination::Engine(Identity([2; 32])), id, body.to_vec())
    }

    #[test]
    fn messages_split_across_reads_arrive_whole_in_order_and_a_frame_over_the_limit_ends_the_stream() {
        let (router, engine) = UnixStream::pair().unwrap();
        let (incoming, mut inbox) = mpsc::channel(16);
        start(engine.into(), 1024, Arc::new(Shared::default()), incoming).unwrap();
        let mut bytes = Vec::new();
        for id in 0..10 {
            delivery_frame(&mut bytes, &message(id, &vec![id as u8; 100]));
        }
        // Written a few bytes at a time: frames cut anywhere are put back together.
        let mut writer = &router;
        for piece in bytes.chunks(7) {
            writer.write_all(piece).unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        for id in 0..10 {
            let received = loop {
                match inbox.try_recv() {
                    Ok(received) => break received,
                    Err(_) if std::time::Instant::now() < deadline => std::thread::yield_now(),
                    Err(e) => panic!("message {id} did not arrive: {e}"),
                }
            };
            assert_eq!(*received, message(id, &vec![id as u8; 100]));
        }
        // A frame over the limit: the reader stops, and drops its end of the inbox.
        writer.write_all(&(4096u32).to_le_bytes()).unwrap();
        loop {
            match inbox.try_recv() {
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) if std::time::Instant::now() < deadline => std::thread::yield_now(),
                other => panic!("the reader went on after a frame over the limit: {other:?}"),
            }
        }
    }
}
