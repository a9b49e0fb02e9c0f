//! The socket path's delivery stream (ring/RING.md, "Data streams"): the router writes each
//! message for an engine on the socket path, framed as a message record, to a Unix stream
//! socket it handed over with the send stream. A blocking receive reads it itself; otherwise a
//! thread of the engine's does, handing replies to their requests and the rest to the inbox
//! queue, waiting for room there (the router then holds further deliveries back).

use crate::connection::Shared;
use crate::ring::records;
use crate::stream_reader::{Next, StreamReader};
use netmachine_schema::EngineMessage;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Appends the frame that delivers `message`: its length (u32), then its record.
pub fn delivery_frame(out: &mut Vec<u8>, message: &EngineMessage) {
    out.extend_from_slice(&(records::message_length(message) as u32).to_le_bytes());
    records::append_message(out, message);
}

/// The engine's end of its delivery stream.
pub(crate) struct DeliveryStream {
    pub reader: StreamReader,
}

/// What a frame on the delivery stream carries: the message for the inbox, if it is not a reply
/// handed to its request (or a second copy dropped).
fn take(record: &[u8], shared: &Shared) -> Result<Option<Box<EngineMessage>>, String> {
    let message = records::read_message(record).map_err(|problem| format!("the router wrote a message that cannot be read: {problem}"))?;
    Ok(shared.route_reply(Box::new(message)))
}

impl DeliveryStream {
    /// Takes the delivery stream `socket` and starts the thread that reads it when no blocking
    /// receive does, until the router closes it; a frame over `max_frame` bytes, or one that is
    /// no message, ends it.
    pub fn start(socket: OwnedFd, max_frame: usize, shared: Arc<Shared>, incoming: mpsc::Sender<Box<EngineMessage>>) -> std::io::Result<Arc<DeliveryStream>> {
        let stream = Arc::new(DeliveryStream { reader: StreamReader::new(UnixStream::from(socket), max_frame)? });
        let reading = stream.clone();
        std::thread::Builder::new().name("deliveries".into()).spawn(move || {
            let why = reading.reader.serve(|record| match take(record, &shared)? {
                Some(message) => incoming.blocking_send(message).map_err(|_| "the engine stopped receiving".to_string()),
                None => Ok(()),
            });
            tracing::debug!(%why, "the delivery stream ended");
        })?;
        Ok(stream)
    }

    /// For a blocking receive holding the reading turn: the next message, from `queue` (what the
    /// thread handed on, which came first) or else from the stream; `None` if neither has one
    /// now.
    pub fn next(&self, shared: &Shared, queue: &mut mpsc::Receiver<Box<EngineMessage>>) -> Option<Box<EngineMessage>> {
        if let Ok(message) = queue.try_recv() {
            return Some(message);
        }
        let mut frames = self.reader.try_frames()?;
        // Under the frames' lock the thread hands nothing on: a message it handed on before is
        // taken before any still in the stream.
        if let Ok(message) = queue.try_recv() {
            return Some(message);
        }
        loop {
            match frames.next() {
                Ok(Next::Frame(record)) => match take(record, shared) {
                    Ok(Some(message)) => return Some(message),
                    Ok(None) => {}
                    Err(problem) => tracing::warn!(%problem, "dropped a delivery"),
                },
                // An error stays for the thread, which ends the stream on it.
                Ok(Next::Empty | Next::End) | Err(_) => return None,
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
    fn a_receive_and_the_thread_taking_turns_hand_on_every_message_in_order_and_a_frame_over_the_limit_ends_the_stream() {
        let (router, engine) = UnixStream::pair().unwrap();
        let (incoming, mut inbox) = mpsc::channel(4);
        let shared = Arc::new(Shared::default());
        let stream = DeliveryStream::start(engine.into(), 1024, shared.clone(), incoming).unwrap();
        let mut writer = &router;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut received = Vec::new();
        for round in 0..10u64 {
            let mut bytes = Vec::new();
            for id in round * 10..round * 10 + 10 {
                delivery_frame(&mut bytes, &message(id, &vec![id as u8; 100]));
            }
            // Written a few bytes at a time: frames cut anywhere are put back together.
            for piece in bytes.chunks(7) {
                writer.write_all(piece).unwrap();
            }
            // Every other round a receive holds the turn; in the others the thread reads.
            let turn = (round % 2 == 0).then(|| stream.reader.turn());
            while received.len() < (round as usize + 1) * 10 {
                let next = match turn.is_some() {
                    true => stream.next(&shared, &mut inbox),
                    false => inbox.try_recv().ok(),
                };
                match next {
                    Some(message) => received.push(message.id),
                    None if std::time::Instant::now() < deadline => std::thread::yield_now(),
                    None => panic!("{} of {} messages arrived", received.len(), (round + 1) * 10),
                }
            }
        }
        assert_eq!(received, (0..100).collect::<Vec<_>>());
        // A frame over the limit: the thread stops, and drops its end of the inbox.
        writer.write_all(&(4096u32).to_le_bytes()).unwrap();
        loop {
            match inbox.try_recv() {
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) if std::time::Instant::now() < deadline => std::thread::yield_now(),
                other => panic!("the thread went on after a frame over the limit: {other:?}"),
            }
        }
    }
}
