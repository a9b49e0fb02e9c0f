//! Content ids: a block is named by the BLAKE3 hash of its bytes (32 bytes, shown as lowercase
//! hex), so whoever holds the id can check what it was given.

use std::fmt;
use std::str::FromStr;

/// The BLAKE3 hash of a block's content.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentId(pub [u8; 32]);

impl ContentId {
    /// The id of `content`.
    pub fn of(content: &[u8]) -> Self {
        ContentId(*blake3::hash(content).as_bytes())
    }

    /// Reads an id from a wire `Data` field, which must hold exactly 32 bytes.
    pub fn from_slice(field: &'static str, bytes: &[u8]) -> Result<Self, ContentIdError> {
        bytes.try_into().map(ContentId).map_err(|_| ContentIdError::Length { field, got: bytes.len() })
    }

    /// The first 8 hex digits, for logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Display for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentId({})", self.short())
    }
}

impl FromStr for ContentId {
    type Err = ContentIdError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bytes = hex::decode(text.trim()).map_err(|_| ContentIdError::NotHex(text.to_string()))?;
        ContentId::from_slice("id", &bytes).map_err(|_| ContentIdError::NotHex(text.to_string()))
    }
}

/// Why bytes or text are not a content id.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ContentIdError {
    #[error("{field} must be 32 bytes (a BLAKE3 hash), got {got}")]
    Length { field: &'static str, got: usize },
    #[error("'{0}' is not a block id: expected 64 hex digits")]
    NotHex(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_reads_back_from_its_hex_and_a_wrong_length_is_refused() {
        let id = ContentId::of(b"hello");
        assert_eq!(id.to_string().parse::<ContentId>(), Ok(id));
        assert_eq!(id.to_string(), blake3::hash(b"hello").to_hex().to_string());
        assert!(matches!("abcd".parse::<ContentId>(), Err(ContentIdError::NotHex(_))));
        assert!(matches!("zz".repeat(32).parse::<ContentId>(), Err(ContentIdError::NotHex(_))));
        assert_eq!(ContentId::from_slice("id", &[0; 31]), Err(ContentIdError::Length { field: "id", got: 31 }));
    }
}
