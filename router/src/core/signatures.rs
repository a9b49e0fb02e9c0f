//! Engine signatures on messages from other nodes, verified as one ed25519 batch
//! (`netmachine_schema::batch`); when a batch fails, one by one to find the bad ones.

use netmachine_schema::{batch, EngineMessage};

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
    let all_verify = batch::all_verify(messages.iter().filter(|m| m.sig.is_some()));
    let mut verified = Verified { kept: Vec::with_capacity(messages.len()), forged: 0, unsigned: 0 };
    for message in messages {
        match &message.sig {
            None if require_signatures => verified.unsigned += 1,
            Some(_) if !all_verify && !message.signature_holds() => verified.forged += 1,
            _ => verified.kept.push(message),
        }
    }
    verified
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmachine_schema::{signing, Destination, Keypair};

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
