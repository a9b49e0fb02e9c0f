//! Bulk sockets: how a node's storage service and its transport hand each other the bytes of a
//! block stream, beside their Cap'n Proto sockets. Each of the two listens on
//! `$RUN/<service>.bulk.sock` (mode 0600, the node's user alone), and one connection carries
//! one stream: the transport's takes storage's request for another node and relays that node's
//! answer; storage's takes a request another node sent and answers it.
//!
//! Bytes cross this socket once each way, read and written in place. Through Cap'n Proto
//! streaming calls, each piece was also built into a fresh zeroed message and read back into
//! another, which cost more of the two cores than QUIC itself on a fetch between two nodes.
//!
//! The wire, little endian throughout:
//! - the opening, from the connecting side: magic `NMB1`, the stream's kind (1 byte), the other
//!   node (32 bytes), the trust this node gives it (1 byte; 0 where it does not matter), the
//!   request's length (2 bytes, at most `MAX_REQUEST`) and the request;
//! - the answer, from the listening side: frames of a 4-byte length (1 to `MAX_FRAME`) and that
//!   many bytes, then an end: a length of 0 and an outcome byte, 0 for complete, or 1 for failed
//!   followed by a reason (2-byte length, at most `MAX_REASON`, UTF-8).
//!
//! A connection that ends before its end frame broke off: the answer is not complete.

use crate::home::{NodeHome, ServiceKind};
use bytes::{Bytes, BytesMut};
use netmachine_schema::Identity;
use std::io::{self, IoSlice};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

pub const MAGIC: [u8; 4] = *b"NMB1";
/// The longest request an opening carries.
pub const MAX_REQUEST: usize = 4096;
/// The most bytes one frame carries (1 MiB and 64 KiB: a whole answer to a block request).
pub const MAX_FRAME: usize = (1 << 20) + (64 << 10);
/// The longest reason a failed end gives.
pub const MAX_REASON: usize = 1024;
/// How long the listening side waits for an opening.
pub const OPENING_WAIT: Duration = Duration::from_secs(5);

const OPENING_HEAD: usize = 4 + 1 + 32 + 1 + 2;

/// Where `kind` takes bulk streams.
pub fn socket(home: &NodeHome, kind: ServiceKind) -> PathBuf {
    home.run_dir().join(format!("{}.bulk.sock", kind.name()))
}

/// Binds `kind`'s bulk socket for the node's user alone (a stale socket is replaced, a live one
/// refused). The socket is removed when the listener is dropped.
pub async fn bind(home: &NodeHome, kind: ServiceKind) -> io::Result<BulkListener> {
    let path = socket(home, kind);
    let listener = netmachine_rpc::bind(&path).await.map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(BulkListener { listener, path })
}

/// A bound bulk socket.
pub struct BulkListener {
    listener: UnixListener,
    path: PathBuf,
}

impl BulkListener {
    /// Hands each connection to `handle`, on a task of its own, until the process stops. Must
    /// run inside a `LocalSet`.
    pub async fn serve<F: std::future::Future<Output = ()> + 'static>(self, handle: impl Fn(UnixStream) -> F) {
        loop {
            match self.listener.accept().await {
                Ok((connection, _)) => {
                    tokio::task::spawn_local(handle(connection));
                }
                Err(error) => {
                    tracing::warn!(socket = %self.path.display(), %error, "accepting on a bulk socket failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

impl Drop for BulkListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What went wrong on a bulk connection.
#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    #[error("the bulk connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("the other side broke off before the end of the answer")]
    BrokeOff,
    #[error("no opening within {0:?}")]
    Silent(Duration),
    #[error("malformed: {0}")]
    Malformed(String),
}

/// Reads exactly `buf.len()` bytes; an end of the connection first is `BrokeOff`.
async fn read_exact(stream: &mut UnixStream, buf: &mut [u8]) -> Result<(), BulkError> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => Err(BulkError::BrokeOff),
        Err(error) => Err(error.into()),
    }
}

/// What a connection asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opening {
    pub kind: u8,
    pub node: Identity,
    pub trust: u8,
    pub request: Vec<u8>,
}

impl Opening {
    pub async fn write_to(&self, stream: &mut UnixStream) -> Result<(), BulkError> {
        if self.request.len() > MAX_REQUEST {
            return Err(BulkError::Malformed(format!("a request of {} bytes is over the limit of {MAX_REQUEST}", self.request.len())));
        }
        let mut bytes = Vec::with_capacity(OPENING_HEAD + self.request.len());
        bytes.extend_from_slice(&MAGIC);
        bytes.push(self.kind);
        bytes.extend_from_slice(&self.node.0);
        bytes.push(self.trust);
        bytes.extend_from_slice(&(self.request.len() as u16).to_le_bytes());
        bytes.extend_from_slice(&self.request);
        Ok(stream.write_all(&bytes).await?)
    }

    /// The opening on `stream`, within `wait` (`OPENING_WAIT` for a service).
    pub async fn read_from(stream: &mut UnixStream, wait: Duration) -> Result<Opening, BulkError> {
        let reading = async {
            let mut head = [0u8; OPENING_HEAD];
            read_exact(stream, &mut head).await?;
            if head[..4] != MAGIC {
                return Err(BulkError::Malformed(format!("the opening starts with {:02x?}, not the magic {:02x?}", &head[..4], MAGIC)));
            }
            let length = u16::from_le_bytes([head[38], head[39]]) as usize;
            if length > MAX_REQUEST {
                return Err(BulkError::Malformed(format!("a request of {length} bytes is over the limit of {MAX_REQUEST}")));
            }
            let mut request = vec![0u8; length];
            read_exact(stream, &mut request).await?;
            let node = Identity(head[5..37].try_into().expect("32 bytes"));
            Ok(Opening { kind: head[4], node, trust: head[37], request })
        };
        tokio::time::timeout(wait, reading).await.map_err(|_| BulkError::Silent(wait))?
    }
}

/// One piece of an answer, as read.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Bytes(Bytes),
    Complete,
    Failed(String),
}

/// Reads the next frame of an answer.
pub async fn read_frame(stream: &mut UnixStream) -> Result<Frame, BulkError> {
    let mut length = [0u8; 4];
    read_exact(stream, &mut length).await?;
    let length = u32::from_le_bytes(length) as usize;
    if length == 0 {
        let mut outcome = [0u8; 1];
        read_exact(stream, &mut outcome).await?;
        return match outcome[0] {
            0 => Ok(Frame::Complete),
            1 => {
                let mut length = [0u8; 2];
                read_exact(stream, &mut length).await?;
                let length = u16::from_le_bytes(length) as usize;
                if length > MAX_REASON {
                    return Err(BulkError::Malformed(format!("a reason of {length} bytes is over the limit of {MAX_REASON}")));
                }
                let mut reason = vec![0u8; length];
                read_exact(stream, &mut reason).await?;
                String::from_utf8(reason).map(Frame::Failed).map_err(|_| BulkError::Malformed("a reason that is not UTF-8".into()))
            }
            other => Err(BulkError::Malformed(format!("an end with outcome {other}, neither 0 (complete) nor 1 (failed)"))),
        };
    }
    if length > MAX_FRAME {
        return Err(BulkError::Malformed(format!("a frame of {length} bytes is over the limit of {MAX_FRAME}")));
    }
    // Read into memory that is not zeroed first: each byte is written once, by the kernel.
    let mut bytes = BytesMut::with_capacity(length);
    while bytes.len() < length {
        if stream.read_buf(&mut bytes).await? == 0 {
            return Err(BulkError::BrokeOff);
        }
    }
    Ok(Frame::Bytes(bytes.freeze()))
}

/// Writes `bytes` (at most `MAX_FRAME`, at least one) as a frame.
pub async fn write_frame(stream: &mut UnixStream, bytes: &[u8]) -> Result<(), BulkError> {
    if bytes.is_empty() || bytes.len() > MAX_FRAME {
        return Err(BulkError::Malformed(format!("a frame of {} bytes (1 to {MAX_FRAME})", bytes.len())));
    }
    stream.write_all(&(bytes.len() as u32).to_le_bytes()).await?;
    Ok(stream.write_all(bytes).await?)
}

/// Writes `pieces` as one frame (1 to `MAX_FRAME` bytes in all), in place: a relay need not
/// gather what it received into one buffer first.
pub async fn write_frame_of(stream: &mut UnixStream, pieces: &[impl AsRef<[u8]>]) -> Result<(), BulkError> {
    let total: usize = pieces.iter().map(|piece| piece.as_ref().len()).sum();
    if total == 0 || total > MAX_FRAME {
        return Err(BulkError::Malformed(format!("a frame of {total} bytes (1 to {MAX_FRAME})")));
    }
    let length = (total as u32).to_le_bytes();
    let mut slices: Vec<IoSlice> = std::iter::once(IoSlice::new(&length)).chain(pieces.iter().map(|piece| IoSlice::new(piece.as_ref()))).collect();
    let mut unwritten = &mut slices[..];
    while !unwritten.is_empty() {
        // Within the kernel's limit of 1024 slices per call.
        let written = stream.write_vectored(&unwritten[..unwritten.len().min(512)]).await?;
        if written == 0 {
            return Err(BulkError::Io(io::ErrorKind::WriteZero.into()));
        }
        IoSlice::advance_slices(&mut unwritten, written);
    }
    Ok(())
}

/// Ends an answer: complete, or failed with `reason` (cut to `MAX_REASON` bytes).
pub async fn write_end(stream: &mut UnixStream, outcome: Result<(), &str>) -> Result<(), BulkError> {
    let mut bytes = vec![0, 0, 0, 0];
    match outcome {
        Ok(()) => bytes.push(0),
        Err(reason) => {
            let mut end = reason.len().min(MAX_REASON);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            bytes.push(1);
            bytes.extend_from_slice(&(end as u16).to_le_bytes());
            bytes.extend_from_slice(&reason.as_bytes()[..end]);
        }
    }
    stream.write_all(&bytes).await?;
    Ok(stream.flush().await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opening() -> Opening {
        Opening { kind: 0, node: Identity([7; 32]), trust: 3, request: b"which groups".to_vec() }
    }

    #[tokio::test]
    async fn an_opening_frames_and_ends_cross_intact() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        opening().write_to(&mut a).await.unwrap();
        write_frame(&mut a, b"first").await.unwrap();
        write_frame_of(&mut a, &[&b"sec"[..], b"", b"ond"]).await.unwrap();
        write_end(&mut a, Err("the peer reset the stream")).await.unwrap();
        write_end(&mut a, Ok(())).await.unwrap();
        assert_eq!(Opening::read_from(&mut b, OPENING_WAIT).await.unwrap(), opening());
        assert_eq!(read_frame(&mut b).await.unwrap(), Frame::Bytes(Bytes::from_static(b"first")));
        assert_eq!(read_frame(&mut b).await.unwrap(), Frame::Bytes(Bytes::from_static(b"second")));
        assert_eq!(read_frame(&mut b).await.unwrap(), Frame::Failed("the peer reset the stream".into()));
        assert_eq!(read_frame(&mut b).await.unwrap(), Frame::Complete);
    }

    #[tokio::test]
    async fn a_frame_of_thousands_of_pieces_arrives_whole() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let pieces: Vec<Vec<u8>> = (0..3000u32).map(|i| vec![(i % 251) as u8; 1 + (i as usize % 300)]).collect();
        let expected: Vec<u8> = pieces.concat();
        let writer = tokio::spawn(async move { write_frame_of(&mut a, &pieces).await.map(|_| a) });
        assert_eq!(read_frame(&mut b).await.unwrap(), Frame::Bytes(Bytes::from(expected)));
        let mut a = writer.await.unwrap().unwrap();
        assert!(matches!(write_frame_of(&mut a, &[&b""[..]]).await, Err(BulkError::Malformed(_))));
    }

    #[tokio::test]
    async fn a_large_frame_arrives_whole() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let bytes: Vec<u8> = (0..MAX_FRAME).map(|i| (i % 251) as u8).collect();
        let sent = bytes.clone();
        let writer = tokio::spawn(async move { write_frame(&mut a, &sent).await.map(|_| a) });
        assert_eq!(read_frame(&mut b).await.unwrap(), Frame::Bytes(Bytes::from(bytes)));
        writer.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_wrong_magic_an_oversized_request_or_frame_and_a_bad_end_are_refused() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        a.write_all(b"HTTP/1.1 GET / and more bytes than the head has").await.unwrap();
        assert!(matches!(Opening::read_from(&mut b, OPENING_WAIT).await, Err(BulkError::Malformed(why)) if why.contains("magic")));

        let (mut a, mut b) = UnixStream::pair().unwrap();
        let mut head = MAGIC.to_vec();
        head.extend_from_slice(&[0; 34]);
        head.extend_from_slice(&(MAX_REQUEST as u16 + 1).to_le_bytes());
        a.write_all(&head).await.unwrap();
        assert!(matches!(Opening::read_from(&mut b, OPENING_WAIT).await, Err(BulkError::Malformed(why)) if why.contains("over the limit")));
        let too_long = Opening { request: vec![0; MAX_REQUEST + 1], ..opening() };
        assert!(matches!(too_long.write_to(&mut a).await, Err(BulkError::Malformed(_))));

        let (mut a, mut b) = UnixStream::pair().unwrap();
        a.write_all(&(MAX_FRAME as u32 + 1).to_le_bytes()).await.unwrap();
        assert!(matches!(read_frame(&mut b).await, Err(BulkError::Malformed(why)) if why.contains("over the limit")));
        assert!(matches!(write_frame(&mut a, &[]).await, Err(BulkError::Malformed(_))));

        let (mut a, mut b) = UnixStream::pair().unwrap();
        a.write_all(&[0, 0, 0, 0, 9]).await.unwrap();
        assert!(matches!(read_frame(&mut b).await, Err(BulkError::Malformed(why)) if why.contains("outcome 9")));
        a.write_all(&[0, 0, 0, 0, 1, 2, 0, 0xff, 0xfe]).await.unwrap();
        assert!(matches!(read_frame(&mut b).await, Err(BulkError::Malformed(why)) if why.contains("UTF-8")));
    }

    #[tokio::test]
    async fn an_answer_cut_short_broke_off() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        a.write_all(&100u32.to_le_bytes()).await.unwrap();
        a.write_all(&[1; 40]).await.unwrap();
        drop(a);
        assert!(matches!(read_frame(&mut b).await, Err(BulkError::BrokeOff)));
        let (a, mut b) = UnixStream::pair().unwrap();
        drop(a);
        assert!(matches!(read_frame(&mut b).await, Err(BulkError::BrokeOff)));
        assert!(matches!(Opening::read_from(&mut b, OPENING_WAIT).await, Err(BulkError::BrokeOff)));
    }

    #[tokio::test]
    async fn a_silent_connection_is_given_up() {
        let (_a, mut b) = UnixStream::pair().unwrap();
        assert!(matches!(Opening::read_from(&mut b, Duration::from_millis(50)).await, Err(BulkError::Silent(_))));
    }

    #[tokio::test]
    async fn a_long_reason_is_cut_on_a_character_boundary() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let reason = "é".repeat(MAX_REASON);
        write_end(&mut a, Err(&reason)).await.unwrap();
        match read_frame(&mut b).await.unwrap() {
            Frame::Failed(cut) => assert!(cut.len() <= MAX_REASON && reason.starts_with(&cut) && !cut.is_empty()),
            other => panic!("{other:?}"),
        }
    }
}
