//! Attaching an engine: the router hands out a challenge; the engine answers once, with its
//! signature over the challenge (proving it holds the engine's key) and a location record it
//! signed (engine, this node, time). What the answer must be, and why an attach is refused.

use netmachine_schema::{signing, EngineLocation, Identity, LocationError};

/// Why an engine could not attach.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachRefused {
    #[error("this challenge was already answered; call attach again")]
    ChallengeUsed,
    #[error("the challenge signature does not prove the key of engine {engine} ({detail})")]
    KeyNotProven { engine: Identity, detail: String },
    #[error("the location record is for engine {location}, not {engine}")]
    OtherEngine { engine: Identity, location: Identity },
    #[error("engine {0} is attached already, by another process with its key: a key attaches once at a time, so `send` and `request` beside a `listen` need a key of their own")]
    AlreadyAttached(Identity),
    #[error("{0} engines are attached (limits.max_engines)")]
    Full(usize),
    #[error("the engine's location record is not for engine {engine} on this node")]
    WrongLocation { engine: Identity },
    #[error(transparent)]
    Location(#[from] LocationError),
}

/// One attach in progress.
#[derive(Debug)]
pub struct Challenge {
    node: Identity,
    engine: Identity,
    nonce: [u8; 32],
    answered: bool,
}

impl Challenge {
    /// `engine` asks to attach to `node`; `nonce` is fresh randomness.
    pub fn new(node: Identity, engine: Identity, nonce: [u8; 32]) -> Self {
        Challenge { node, engine, nonce, answered: false }
    }

    pub fn nonce(&self) -> &[u8; 32] {
        &self.nonce
    }

    pub fn engine(&self) -> Identity {
        self.engine
    }

    /// Checks the engine's answer: only the first counts, its signature must be the engine's
    /// over this challenge, and its location must be the engine's (the router core checks
    /// the node and the location's own signature when it attaches).
    pub fn answer(&mut self, signature: &[u8], location: Result<EngineLocation, LocationError>) -> Result<EngineLocation, AttachRefused> {
        if std::mem::replace(&mut self.answered, true) {
            return Err(AttachRefused::ChallengeUsed);
        }
        let payload = signing::attach_challenge(&self.node, &self.engine, &self.nonce);
        self.engine
            .verify(&payload, signature)
            .map_err(|e| AttachRefused::KeyNotProven { engine: self.engine, detail: e.to_string() })?;
        let location = location?;
        if location.engine != self.engine {
            return Err(AttachRefused::OtherEngine { engine: self.engine, location: location.engine });
        }
        Ok(location)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmachine_schema::Keypair;

    fn challenge(engine: &Keypair) -> (Challenge, Vec<u8>) {
        let node = Keypair::generate().identity();
        let challenge = Challenge::new(node, engine.identity(), [7; 32]);
        let proof = engine.sign(&signing::attach_challenge(&node, &engine.identity(), challenge.nonce()));
        (challenge, proof.to_vec())
    }

    #[test]
    fn the_first_answer_with_the_engines_signature_and_location_is_taken() {
        let engine = Keypair::generate();
        let (mut challenge, proof) = challenge(&engine);
        let location = EngineLocation::sign(&engine, challenge.node, 1);
        assert_eq!(challenge.answer(&proof, Ok(location.clone())).unwrap(), location);
        assert!(matches!(challenge.answer(&proof, Ok(location)), Err(AttachRefused::ChallengeUsed)));
    }

    #[test]
    fn another_keys_signature_or_another_engines_location_is_refused() {
        let (engine, impostor) = (Keypair::generate(), Keypair::generate());
        let (mut challenge, _) = challenge(&engine);
        let (_, wrong_proof) = self::challenge(&impostor);
        let location = EngineLocation::sign(&engine, challenge.node, 1);
        assert!(matches!(challenge.answer(&wrong_proof, Ok(location)), Err(AttachRefused::KeyNotProven { .. })));
        let (mut challenge, proof) = self::challenge(&engine);
        let elsewhere = EngineLocation::sign(&impostor, challenge.node, 1);
        assert!(matches!(challenge.answer(&proof, Ok(elsewhere)), Err(AttachRefused::OtherEngine { .. })));
    }
}
