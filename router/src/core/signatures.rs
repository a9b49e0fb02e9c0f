//! Engine signatures on messages from other nodes, verified as one ed25519 batch (much cheaper
//! per signature than one by one); when a batch fails, one by one to find the bad ones.

use netmachine_schema::{signing, EngineMessage, Identity};
use std::collections::hash_map::{Entry, HashMap};

/// What checking a frame's engine signatures kept and dropped.
#[derive(Debug)]
pub struct Verified {
    /// The messages that pass, in the order they came.
    pub kept: Vec<EngineMessage>,
    /// Messages whose signature does not verify.
    pub forged: u64,
    /// Unsigned messages, dropped because the node requires signatures.
    pub unsigned: u64,
}

/// Keeps, in their order, the messages whose signature verifies, and the unsigned ones unless
/// `require_signatures`.
pub fn verify_all(messages: Vec<EngineMessage>, require_signatures: bool) -> Verified {
    let all_verify = batch_verifies(messages.iter().filter(|m| m.sig.is_some()));
    let mut verified = Verified { kept: Vec::with_capacity(messages.len()), forged: 0, unsigned: 0 };
    for message in messages {
        match &message.sig {
            None if require_signatures => verified.unsigned += 1,
            Some(sig) if !all_verify && message.src.verify(&signing::engine_message(&message), sig).is_err() => verified.forged += 1,
            _ => verified.kept.push(message),
        }
    }
    verified
}

/// Whether every signature of `signed` verifies, checked as one batch. Each sender's key is
/// decompressed once per batch, not once per message: decompressing a point is a square root,
/// and cost as much as the rest of a message's share of the batch.
fn batch_verifies<'a>(signed: impl Iterator<Item = &'a EngineMessage>) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use netmachine_schema::{Destination, Keypair};

    fn signed(key: &Keypair, n: u8) -> EngineMessage {
        let mut m = EngineMessage::new(key.identity(), Destination::Engine(key.identity()), n.into(), vec![n]);
        m.sig = Some(key.sign(&signing::engine_message(&m)));
        m
    }

    #[test]
    fn a_good_batch_passes_whole_and_forgeries_are_picked_out_in_order() {
        let key = Keypair::generate();
        let mut batch: Vec<_> = (0..8).map(|n| signed(&key, n)).collect();
        batch[6].sig = None;
        let ids = |verified: &Verified| verified.kept.iter().map(|m| m.id).collect::<Vec<_>>();
        let verified = verify_all(batch.clone(), false);
        assert_eq!((ids(&verified), verified.forged, verified.unsigned), (vec![0, 1, 2, 3, 4, 5, 6, 7], 0, 0));
        let mut forged = batch;
        forged[3].body = b"tampered".to_vec();
        forged[5].sig = Some([0; 64]);
        let verified = verify_all(forged.clone(), false);
        assert_eq!((ids(&verified), verified.forged, verified.unsigned), (vec![0, 1, 2, 4, 6, 7], 2, 0));
        let verified = verify_all(forged, true);
        assert_eq!((ids(&verified), verified.forged, verified.unsigned), (vec![0, 1, 2, 4, 7], 2, 1));
    }
}
