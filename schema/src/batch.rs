//! Engine signatures checked as one ed25519 batch: much cheaper per signature than one by one,
//! and each signer's key is decompressed once per batch, not once per message (decompressing a
//! point is a square root, and costs as much as the rest of a message's share of the batch).
//! A batch that fails says only that some signature is bad: callers then check one by one.

use crate::identity::Identity;
use crate::message::EngineMessage;
use crate::signing;
use std::collections::hash_map::{Entry, HashMap};

/// Whether every signature of `signed` verifies (a message with no signature fails the batch).
pub fn all_verify<'a>(signed: impl Iterator<Item = &'a EngineMessage>) -> bool {
    let mut payloads = Vec::new();
    let (mut keys, mut sigs) = (Vec::new(), Vec::new());
    let mut senders: HashMap<Identity, ed25519_dalek::VerifyingKey> = HashMap::new();
    for message in signed {
        let key = match senders.entry(message.src) {
            Entry::Occupied(known) => *known.get(),
            Entry::Vacant(new) => match ed25519_dalek::VerifyingKey::from_bytes(&message.src.0) {
                Ok(key) => *new.insert(key),
                Err(_) => return false,
            },
        };
        let Some(sig) = message.sig.as_ref() else { return false };
        payloads.push(signing::engine_message(message));
        keys.push(key);
        sigs.push(ed25519_dalek::Signature::from_bytes(sig));
    }
    let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    ed25519_dalek::verify_batch(&refs, &sigs, &keys).is_ok()
}
