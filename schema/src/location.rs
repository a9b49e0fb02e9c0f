//! An engine's location: the node it is attached to and since when, signed by the engine. It is
//! what other nodes route by, so only the engine can move its own route; of two locations the
//! later one wins.

use crate::identity::{Identity, IdentityError, Keypair, SignatureBytes};
use crate::identity_capnp::engine_record;
use crate::signing;

/// A signed engine location (the wire's EngineRecord).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineLocation {
    pub engine: Identity,
    pub node: Identity,
    /// When the engine attached to `node`, in ms since the epoch by the engine's clock.
    pub at: u64,
    pub sig: SignatureBytes,
}

/// Why a location record cannot be used.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LocationError {
    #[error("engine location: {0}")]
    Identity(#[from] IdentityError),
    #[error("engine location: {0}")]
    Capnp(String),
    #[error("the location of engine {engine} is not signed by it")]
    NotSignedByEngine { engine: Identity },
}

impl EngineLocation {
    /// The engine `key` says it attached to `node` at `at`.
    pub fn sign(key: &Keypair, node: Identity, at: u64) -> Self {
        let engine = key.identity();
        EngineLocation { engine, node, at, sig: key.sign(&signing::engine_location(&engine, &node, at)) }
    }

    /// Checks the engine's signature.
    pub fn verify(&self) -> Result<(), LocationError> {
        self.engine
            .verify(&signing::engine_location(&self.engine, &self.node, self.at), &self.sig)
            .map_err(|_| LocationError::NotSignedByEngine { engine: self.engine })
    }

    /// Reads a record, checking every field's length (not the signature: see `verify`).
    pub fn read(reader: engine_record::Reader<'_>) -> Result<Self, LocationError> {
        let capnp = |e: capnp::Error| LocationError::Capnp(e.to_string());
        let sig = reader.get_sig().map_err(capnp)?;
        Ok(EngineLocation {
            engine: Identity::from_slice("engine.id", reader.get_id().map_err(capnp)?)?,
            node: Identity::from_slice("engine.node", reader.get_node().map_err(capnp)?)?,
            at: reader.get_at(),
            sig: sig.try_into().map_err(|_| IdentityError::SignatureLength(sig.len()))?,
        })
    }

    pub fn write(&self, mut builder: engine_record::Builder<'_>) {
        builder.set_id(&self.engine.0);
        builder.set_node(&self.node.0);
        builder.set_at(self.at);
        builder.set_sig(&self.sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_location_verifies_only_as_the_engine_signed_it() {
        let (engine, node, other) = (Keypair::generate(), Keypair::generate().identity(), Keypair::generate().identity());
        let location = EngineLocation::sign(&engine, node, 7);
        assert_eq!(location.verify(), Ok(()));
        let mut wire = capnp::message::Builder::new_default();
        location.write(wire.init_root());
        assert_eq!(EngineLocation::read(wire.get_root_as_reader().unwrap()), Ok(location.clone()));
        let moved = EngineLocation { node: other, ..location.clone() };
        assert_eq!(moved.verify(), Err(LocationError::NotSignedByEngine { engine: engine.identity() }));
        let later = EngineLocation { at: 8, ..location };
        assert!(later.verify().is_err());
    }
}
