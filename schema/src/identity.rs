//! Identities and keys: an identity is a 32-byte ed25519 public key, shown as lowercase hex; a
//! keypair is kept in a file holding the hex of its 32-byte secret seed, mode 0600.

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// An ed25519 signature as it travels: 64 bytes.
pub type SignatureBytes = [u8; 64];

/// An engine, node, topic or domain identity: an ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity(pub [u8; 32]);

impl Identity {
    /// Reads an identity from a wire `Data` field, which must hold exactly 32 bytes.
    pub fn from_slice(field: &'static str, bytes: &[u8]) -> Result<Self, IdentityError> {
        let array: [u8; 32] = bytes.try_into().map_err(|_| IdentityError::Length {
            field,
            got: bytes.len(),
        })?;
        Ok(Identity(array))
    }

    /// Checks `signature` over `payload` against this identity's key (strict verification:
    /// no small-order keys, no malleable signatures).
    pub fn verify(&self, payload: &[u8], signature: &[u8]) -> Result<(), IdentityError> {
        self.key()?.verify(payload, signature)
    }

    /// This identity's key, decompressed once for checking many signatures by it.
    pub fn key(&self) -> Result<Key, IdentityError> {
        VerifyingKey::from_bytes(&self.0).map(Key).map_err(|_| IdentityError::NotAKey)
    }

    /// The first 8 hex digits, for logs where the whole identity would be noise.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

/// An identity's public key, ready to check signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key(VerifyingKey);

impl Key {
    /// Checks `signature` over `payload` (strict verification, as [`Identity::verify`]).
    pub fn verify(&self, payload: &[u8], signature: &[u8]) -> Result<(), IdentityError> {
        let signature: &SignatureBytes = signature.try_into().map_err(|_| IdentityError::SignatureLength(signature.len()))?;
        self.0.verify_strict(payload, &ed25519_dalek::Signature::from_bytes(signature)).map_err(|_| IdentityError::BadSignature)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.short())
    }
}

impl FromStr for Identity {
    type Err = IdentityError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bytes = hex::decode(text.trim()).map_err(|_| IdentityError::NotHex(text.to_string()))?;
        Identity::from_slice("identity", &bytes)
    }
}

/// Why bytes are not a usable identity or signature.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("{field} must be 32 bytes (an ed25519 public key), got {got}")]
    Length { field: &'static str, got: usize },
    #[error("'{0}' is not an identity: expected 64 hex digits")]
    NotHex(String),
    #[error("the identity is not a valid ed25519 public key")]
    NotAKey,
    #[error("a signature must be 64 bytes, got {0}")]
    SignatureLength(usize),
    #[error("the signature does not verify")]
    BadSignature,
}

/// An ed25519 keypair: an engine's or a node's secret.
#[derive(Clone)]
pub struct Keypair {
    signing: SigningKey,
}

impl Keypair {
    /// A new keypair from the operating system's random source.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).expect("the operating system's random source failed");
        Keypair::from_seed(seed)
    }

    /// The keypair whose secret seed is `seed`.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Keypair { signing: SigningKey::from_bytes(&seed) }
    }

    /// This keypair's public identity.
    pub fn identity(&self) -> Identity {
        Identity(self.signing.verifying_key().to_bytes())
    }

    /// Signs `payload`.
    pub fn sign(&self, payload: &[u8]) -> SignatureBytes {
        self.signing.sign(payload).to_bytes()
    }

    /// The key as PKCS#8 v1 DER (RFC 8410), the form TLS libraries load.
    pub fn to_pkcs8_der(&self) -> Vec<u8> {
        // SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING seed } }
        let mut der = vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
        der.extend_from_slice(&self.signing.to_bytes());
        der
    }

    /// Reads a key file. Refuses one that other users can read, as ssh does.
    pub fn read_file(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io { path: path.to_path_buf(), source };
        let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(KeyError::Exposed { path: path.to_path_buf(), mode: mode & 0o777 });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let seed: [u8; 32] = hex::decode(text.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| KeyError::Format { path: path.to_path_buf() })?;
        Ok(Keypair::from_seed(seed))
    }

    /// Writes this keypair to a new file with mode 0600; never overwrites an existing file.
    pub fn write_new_file(&self, path: &Path) -> Result<(), KeyError> {
        let io = |source| KeyError::Io { path: path.to_path_buf(), source };
        // Written whole under a private name, then linked into place: a process that starts at
        // the same moment sees no key file or a complete one, never an empty one, and the link
        // fails if another process made the key first.
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let staged = path.with_file_name(format!(".{file_name}.{}.{:?}.tmp", std::process::id(), std::thread::current().id()));
        let written = (|| {
            let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&staged)?;
            writeln!(file, "{}", hex::encode(self.signing.to_bytes()))?;
            file.sync_all()?;
            std::fs::hard_link(&staged, path)
        })();
        let _ = std::fs::remove_file(&staged);
        written.map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => KeyError::Exists { path: path.to_path_buf() },
            _ => io(source),
        })
    }
}

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("key file {path} exists already, and a new key never replaces one: `netmachine key show {path}` prints its identity")]
    Exists { path: PathBuf },
    #[error("key file {path} must hold 64 hex digits (a 32-byte ed25519 seed)")]
    Format { path: PathBuf },
    #[error("key file {path} has mode {mode:o}, readable by others: run `chmod 600 {path}`")]
    Exposed { path: PathBuf, mode: u32 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips_through_hex() {
        let id = Keypair::generate().identity();
        assert_eq!(id.to_string().parse::<Identity>().unwrap(), id);
        assert_eq!(id.to_string().len(), 64);
    }

    #[test]
    fn wrong_length_identity_is_refused_with_the_field_name() {
        let err = Identity::from_slice("dst", &[1, 2, 3]).unwrap_err();
        assert_eq!(err.to_string(), "dst must be 32 bytes (an ed25519 public key), got 3");
        assert!("zz".parse::<Identity>().is_err());
    }

    #[test]
    fn signatures_verify_only_for_the_signed_payload_and_key() {
        let key = Keypair::generate();
        let sig = key.sign(b"payload");
        assert_eq!(key.identity().verify(b"payload", &sig), Ok(()));
        assert_eq!(key.identity().verify(b"other", &sig), Err(IdentityError::BadSignature));
        let stranger = Keypair::generate().identity();
        assert_eq!(stranger.verify(b"payload", &sig), Err(IdentityError::BadSignature));
        assert_eq!(key.identity().verify(b"payload", &sig[..10]), Err(IdentityError::SignatureLength(10)));
    }

    #[test]
    fn key_file_round_trips_and_refuses_exposed_or_existing_files() {
        let dir = std::env::temp_dir().join(format!("nm-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("engine.key");
        let _ = std::fs::remove_file(&path);
        let key = Keypair::generate();
        key.write_new_file(&path).unwrap();
        assert_eq!(Keypair::read_file(&path).unwrap().identity(), key.identity());
        assert!(matches!(key.write_new_file(&path), Err(KeyError::Exists { .. })));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(Keypair::read_file(&path), Err(KeyError::Exposed { mode: 0o644, .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
