//! Frames on a QUIC stream: a 4-byte little-endian length, then that many bytes. A length over
//! the limit is refused before anything is read or allocated; the bytes must then arrive
//! within a deadline, and memory grows with what arrives, not with what the length claims.

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("a frame of {len} bytes is over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("the stream ended inside a frame")]
    Truncated,
    #[error("{got} of a frame's {len} bytes arrived in {} ms", within.as_millis())]
    Stalled { len: usize, got: usize, within: std::time::Duration },
    #[error("reading the stream failed: {0}")]
    Read(#[from] quinn::ReadError),
}

/// Writes one frame.
pub async fn write_frame(stream: &mut quinn::SendStream, bytes: &[u8]) -> Result<(), quinn::WriteError> {
    stream.write_all(&(bytes.len() as u32).to_le_bytes()).await?;
    stream.write_all(bytes).await
}

/// What a frame's bytes are reserved for up front, at most: more grows as it arrives.
const RESERVE: usize = 64 << 10;

/// Reads one frame of at most `max` bytes, whose bytes arrive `within` its length;
/// `None` when the stream ended cleanly between frames.
pub async fn read_frame(stream: &mut quinn::RecvStream, max: usize, within: std::time::Duration) -> Result<Option<Vec<u8>>, FrameError> {
    let mut length = [0u8; 4];
    if !read_exact_or_end(stream, &mut length).await? {
        return Ok(None);
    }
    let len = u32::from_le_bytes(length) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    // Filled from quinn's own buffers as they arrive: no zeroing first, one copy.
    let mut bytes = Vec::with_capacity(len.min(RESERVE));
    let body = async {
        while bytes.len() < len {
            match stream.read_chunk(len - bytes.len(), true).await? {
                Some(chunk) => bytes.extend_from_slice(&chunk.bytes),
                None => return Err(FrameError::Truncated),
            }
        }
        Ok(())
    };
    match tokio::time::timeout(within, body).await {
        Ok(read) => read.map(|()| Some(bytes)),
        Err(_) => Err(FrameError::Stalled { len, got: bytes.len(), within }),
    }
}

/// Fills `buf`; false if the stream ended before the first byte, an error if it ended after.
async fn read_exact_or_end(stream: &mut quinn::RecvStream, buf: &mut [u8]) -> Result<bool, FrameError> {
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]).await? {
            Some(n) => filled += n,
            None if filled == 0 => return Ok(false),
            None => return Err(FrameError::Truncated),
        }
    }
    Ok(true)
}
