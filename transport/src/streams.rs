//! Bulk streams: a bidirectional QUIC stream of its own for each request between two nodes'
//! services (a block request today), so that bulk bytes travel with QUIC's per-stream flow
//! control, beside the frames and never inside them. The opening side writes one frame (the
//! stream's kind, then the request) and finishes its half; the answer flows back until the
//! other side finishes. On this node the bytes go to and from the storage service over the
//! bulk sockets (`netmachine_service::bulk`), one connection per stream: a slow reader at
//! either end holds the writer at the other back, through the socket and QUIC's windows.

use crate::connections::Transport;
use crate::framing::{read_frame, write_frame};
use netmachine_schema::transport_capnp::StreamKind;
use netmachine_schema::Identity;
use netmachine_service::bulk::{self, BulkListener, Frame, Opening};
use netmachine_service::ServiceKind;
use std::rc::Rc;
use std::time::Duration;
use tokio::net::UnixStream;

/// The largest request on a stream (the kind byte included).
pub const MAX_REQUEST: usize = 4096;
/// How long the opening side has to send its request.
const REQUEST_WAIT: Duration = Duration::from_secs(10);
/// QUIC error code of a stream the serving side gave up.
const STREAM_FAILED: u32 = 0x51;
/// What the answer is relayed to the storage service in (as QUIC hands bytes out a packet's
/// worth at a time, they are gathered into frames this large).
const RELAY_FRAME: usize = 256 << 10;

impl Transport {
    /// Takes the storage service's streams on this transport's bulk socket until the process
    /// stops: each connection opens one stream to another node and carries its answer back.
    pub async fn serve_bulk(self: Rc<Self>, listener: BulkListener) {
        listener.serve(|local| self.clone().relay_opened(local)).await
    }

    async fn relay_opened(self: Rc<Self>, mut local: UnixStream) {
        let refused = |why: &dyn std::fmt::Display| {
            tracing::info!(%why, "refused a bulk connection");
            self.counters.streams_refused.set(self.counters.streams_refused.get() + 1);
        };
        let opening = match Opening::read_from(&mut local, bulk::OPENING_WAIT).await {
            Ok(opening) if opening.kind == StreamKind::Block as u8 => opening,
            Ok(opening) => {
                let why = format!("no stream of kind {} is known", opening.kind);
                refused(&why);
                let _ = bulk::write_end(&mut local, Err(&why)).await;
                return;
            }
            Err(error) => return refused(&error),
        };
        let outcome = self.open_stream(opening.node, StreamKind::Block, &opening.request, &mut local).await;
        let _ = bulk::write_end(&mut local, outcome.as_ref().map(|_| ()).map_err(String::as_str)).await;
    }

    /// Opens a stream of `kind` to `node` (connecting first if need be), sends `request`, and
    /// relays the answer to `local` in frames; the answer's length once the other side
    /// finished it.
    pub async fn open_stream(self: &Rc<Self>, node: Identity, kind: StreamKind, request: &[u8], local: &mut UnixStream) -> Result<u64, String> {
        if request.len() + 1 > MAX_REQUEST {
            return Err(format!("a stream request of {} bytes is over the limit of {MAX_REQUEST}", request.len()));
        }
        if self.connection(&node).is_none() {
            self.connect(node).await?;
        }
        let connection = self.connection(&node).ok_or_else(|| format!("node {node} is not connected"))?;
        let (mut send, mut recv) = connection.connection.open_bi().await.map_err(|e| e.to_string())?;
        let mut framed = vec![kind as u8];
        framed.extend_from_slice(request);
        write_frame(&mut send, &framed).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        let (mut answered, mut gathered) = (0u64, 0);
        let mut pieces = Vec::new();
        let stopped = |e: bulk::BulkError| format!("the answer's reader stopped: {e}");
        // QUIC's own buffers, as they arrived, sent on as frames of about `RELAY_FRAME`.
        while let Some(chunk) = recv.read_chunk(RELAY_FRAME - gathered, true).await.map_err(|e| format!("the answer broke off: {e}"))? {
            answered += chunk.bytes.len() as u64;
            gathered += chunk.bytes.len();
            pieces.push(chunk.bytes);
            if gathered == RELAY_FRAME {
                bulk::write_frame_of(local, &pieces).await.map_err(stopped)?;
                pieces.clear();
                gathered = 0;
            }
        }
        if gathered > 0 {
            bulk::write_frame_of(local, &pieces).await.map_err(stopped)?;
        }
        self.counters.streams_opened.set(self.counters.streams_opened.get() + 1);
        Ok(answered)
    }

    /// Serves the streams `node` opens on `connection` until it closes.
    pub async fn accept_streams(self: Rc<Self>, node: Identity, connection: quinn::Connection) {
        while let Ok((send, recv)) = connection.accept_bi().await {
            tokio::task::spawn_local(self.clone().serve_stream(node, send, recv));
        }
    }

    async fn serve_stream(self: Rc<Self>, node: Identity, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
        let request = match tokio::time::timeout(REQUEST_WAIT, read_frame(&mut recv, MAX_REQUEST, REQUEST_WAIT)).await {
            Ok(Ok(Some(request))) if request.first() == Some(&(StreamKind::Block as u8)) => request,
            refused => {
                tracing::info!(peer = %node, ?refused, "refused a stream with no block request");
                self.counters.streams_refused.set(self.counters.streams_refused.get() + 1);
                let _ = send.reset(STREAM_FAILED.into());
                return;
            }
        };
        match self.relay_served(node, &request[1..], &mut send).await {
            Ok(()) => {
                self.counters.streams_served.set(self.counters.streams_served.get() + 1);
                let _ = send.finish();
            }
            Err(reason) => {
                tracing::info!(peer = %node, %reason, "a block request was not answered");
                let _ = send.reset(STREAM_FAILED.into());
            }
        }
    }

    /// Has the storage service answer `node`'s `request`, and sends the answer on `send`.
    async fn relay_served(&self, node: Identity, request: &[u8], send: &mut quinn::SendStream) -> Result<(), String> {
        let socket = bulk::socket(&self.home, ServiceKind::Storage);
        let mut local = UnixStream::connect(&socket).await.map_err(|e| format!("no storage service to answer at {}: {e}", socket.display()))?;
        let opening = Opening { kind: StreamKind::Block as u8, node, trust: self.trust(&node), request: request.to_vec() };
        opening.write_to(&mut local).await.map_err(|e| e.to_string())?;
        loop {
            match bulk::read_frame(&mut local).await.map_err(|e| format!("the storage service's answer: {e}"))? {
                // Handed to QUIC as it is: no copy.
                Frame::Bytes(bytes) => send.write_chunk(bytes).await.map_err(|e| format!("the asking node stopped reading: {e}"))?,
                Frame::Complete => return Ok(()),
                Frame::Failed(reason) => return Err(format!("the storage service failed: {reason}")),
            }
        }
    }
}
