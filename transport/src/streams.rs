//! Bulk streams: a bidirectional QUIC stream of its own for each request between two nodes'
//! services (a block request today), so that bulk bytes travel with QUIC's per-stream flow
//! control, beside the frames and never inside them. The opening side writes one frame (the
//! stream's kind, then the request) and finishes its half; the answer flows back until the
//! other side finishes. Both ends hand the bytes on through Cap'n Proto streaming calls
//! (`ByteSink`), so a slow reader at either end holds the writer at the other back.

use crate::connections::Transport;
use crate::framing::{read_frame, write_frame};
use netmachine_schema::service_capnp::byte_sink;
use netmachine_schema::transport_capnp::StreamKind;
use netmachine_schema::Identity;
use std::rc::Rc;
use std::time::Duration;

/// The largest request on a stream (the kind byte included).
pub const MAX_REQUEST: usize = 4096;
/// How long the opening side has to send its request.
const REQUEST_WAIT: Duration = Duration::from_secs(10);
/// QUIC error code of a stream the serving side gave up.
const STREAM_FAILED: u32 = 0x51;

impl Transport {
    /// Opens a stream of `kind` to `node` (connecting first if need be), sends `request`, and
    /// writes the answer into `sink`; the answer's length once the other side finished it.
    pub async fn open_stream(self: &Rc<Self>, node: Identity, kind: StreamKind, request: &[u8], sink: byte_sink::Client) -> Result<u64, String> {
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
        let mut answered = 0u64;
        let piece_bytes = netmachine_service::rpc::bulk_piece(self.home.config.rpc_word_limit());
        loop {
            // Whole pieces (QUIC hands out a packet's worth at a time): fewer, larger calls,
            // read straight into the call's message.
            let mut write = sink.write_request();
            let piece = write.get().init_bytes(piece_bytes as u32);
            let mut filled = 0;
            while filled < piece_bytes {
                match recv.read(&mut piece[filled..]).await.map_err(|e| format!("the answer broke off: {e}"))? {
                    Some(n) => filled += n,
                    None => break,
                }
            }
            if filled == 0 {
                break;
            }
            answered += filled as u64;
            if filled < piece_bytes {
                // The last piece: a call of its own size.
                let last = piece[..filled].to_vec();
                write = sink.write_request();
                write.get().set_bytes(&last);
            }
            write.send().await.map_err(|e| format!("the answer's reader failed: {e}"))?;
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
        let Some(storage) = self.storage.client_within(Duration::from_secs(5)).await else {
            tracing::info!(peer = %node, "no storage service to answer a block request");
            let _ = send.reset(STREAM_FAILED.into());
            return;
        };
        let trust = self.trust(&node);
        let sink = Rc::new(QuicSink { send: tokio::sync::Mutex::new(send), written: tokio::sync::watch::channel(0).0 });
        let mut call = storage.serve_request();
        call.get().set_node(&node.0);
        call.get().set_trust(trust);
        call.get().set_request(&request[1..]);
        call.get().set_sink(capnp_rpc::new_client(QuicSinkRef(sink.clone())));
        let served = call.send().promise.await;
        let served = match served {
            Ok(answer) => answer.get().map(|answer| answer.get_bytes()),
            Err(error) => Err(error),
        };
        match served {
            Ok(bytes) => {
                // Every piece the service wrote goes out before the stream ends.
                let mut written = sink.written.subscribe();
                let all_out = tokio::time::timeout(REQUEST_WAIT, written.wait_for(|n| *n >= bytes)).await;
                let mut send = sink.send.lock().await;
                match all_out {
                    Ok(Ok(_)) => {
                        self.counters.streams_served.set(self.counters.streams_served.get() + 1);
                        let _ = send.finish();
                    }
                    _ => {
                        let _ = send.reset(STREAM_FAILED.into());
                    }
                }
            }
            Err(error) => {
                tracing::info!(peer = %node, %error, "the storage service did not answer a block request");
                let _ = sink.send.lock().await.reset(STREAM_FAILED.into());
            }
        }
    }
}

/// The answering half of a stream. Writes take the lock in the order they were called, so
/// pieces go out in order; `written` counts the bytes out.
struct QuicSink {
    send: tokio::sync::Mutex<quinn::SendStream>,
    written: tokio::sync::watch::Sender<u64>,
}

struct QuicSinkRef(Rc<QuicSink>);

impl byte_sink::Server for QuicSinkRef {
    async fn write(self: Rc<Self>, params: byte_sink::WriteParams) -> capnp::Result<()> {
        let bytes = params.get()?.get_bytes()?;
        let mut send = self.0.send.lock().await;
        send.write_all(bytes).await.map_err(|e| capnp::Error::failed(format!("the asking node stopped reading: {e}")))?;
        self.0.written.send_modify(|n| *n += bytes.len() as u64);
        Ok(())
    }
}
