//! Engine signatures on messages from other nodes, verified as one ed25519 batch (much cheaper
//! per signature than one by one); when a batch fails, one by one to find the bad ones.

use netmachine_schema::{signing, EngineMessage};

/// Splits `messages` (all signed) into those whose signature verifies, and a count of the rest.
pub fn verify_all(messages: Vec<EngineMessage>) -> (Vec<EngineMessage>, u64) {
    let payloads: Vec<Vec<u8>> = messages.iter().map(signing::engine_message).collect();
    let parsed: Option<Vec<(ed25519_dalek::VerifyingKey, ed25519_dalek::Signature)>> = messages
        .iter()
        .map(|m| {
            let key = ed25519_dalek::VerifyingKey::from_bytes(&m.src.0).ok()?;
            Some((key, ed25519_dalek::Signature::from_bytes(m.sig.as_ref()?)))
        })
        .collect();
    if let Some(parsed) = &parsed {
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        let (keys, sigs): (Vec<_>, Vec<_>) = parsed.iter().copied().unzip();
        if ed25519_dalek::verify_batch(&refs, &sigs, &keys).is_ok() {
            return (messages, 0);
        }
    }
    let total = messages.len() as u64;
    let good: Vec<EngineMessage> = messages
        .into_iter()
        .zip(&payloads)
        .filter(|(m, payload)| m.sig.as_ref().is_some_and(|sig| m.src.verify(payload, sig).is_ok()))
        .map(|(m, _)| m)
        .collect();
    let bad = total - good.len() as u64;
    (good, bad)
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
    fn a_good_batch_passes_whole_and_forgeries_are_picked_out() {
        let key = Keypair::generate();
        let batch: Vec<_> = (0..8).map(|n| signed(&key, n)).collect();
        let (good, bad) = verify_all(batch.clone());
        assert_eq!((good.len(), bad), (8, 0));
        let mut forged = batch;
        forged[3].body = b"tampered".to_vec();
        forged[5].sig = Some([0; 64]);
        let (good, bad) = verify_all(forged);
        assert_eq!(bad, 2);
        assert_eq!(good.iter().map(|m| m.id).collect::<Vec<_>>(), [0, 1, 2, 4, 6, 7]);
    }
}
