//! The node's services: engines attached here that serve a protocol for the whole node. A
//! message to this node in a served protocol goes to its engine (the pubsub service takes the
//! `netmachine/pubsub/1` messages other nodes' pubsub services send to this node); any other
//! message to the node the router answers itself. One engine per protocol; a service ends
//! when its engine detaches.

use netmachine_schema::Identity;
use std::collections::BTreeMap;

/// Why an engine may not serve a protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServeRefused {
    #[error("protocol {protocol} is served on this node by engine {engine}")]
    Taken { protocol: String, engine: Identity },
    #[error("a protocol name must be 1 to 64 bytes")]
    BadName,
}

/// Which engine serves each protocol here.
#[derive(Debug, Default)]
pub struct Services {
    by_protocol: BTreeMap<String, Identity>,
}

impl Services {
    /// `engine` serves `protocol` from now (again, if it served it before).
    pub fn serve(&mut self, engine: Identity, protocol: &str) -> Result<(), ServeRefused> {
        if protocol.is_empty() || protocol.len() > 64 {
            return Err(ServeRefused::BadName);
        }
        match self.by_protocol.get(protocol) {
            Some(other) if *other != engine => Err(ServeRefused::Taken { protocol: protocol.into(), engine: *other }),
            _ => {
                self.by_protocol.insert(protocol.into(), engine);
                Ok(())
            }
        }
    }

    /// The engine serving `protocol`.
    pub fn engine(&self, protocol: &str) -> Option<Identity> {
        self.by_protocol.get(protocol).copied()
    }

    /// `engine` detached: the protocols it served are served no more.
    pub fn detached(&mut self, engine: Identity) {
        self.by_protocol.retain(|_, e| *e != engine);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmachine_schema::Keypair;

    #[test]
    fn one_engine_serves_a_protocol_until_it_detaches() {
        let (a, b) = (Keypair::generate().identity(), Keypair::generate().identity());
        let mut services = Services::default();
        assert_eq!(services.serve(a, ""), Err(ServeRefused::BadName));
        services.serve(a, "p/1").unwrap();
        services.serve(a, "p/1").unwrap();
        assert_eq!(services.serve(b, "p/1"), Err(ServeRefused::Taken { protocol: "p/1".into(), engine: a }));
        services.detached(a);
        assert_eq!(services.engine("p/1"), None);
        services.serve(b, "p/1").unwrap();
        assert_eq!(services.engine("p/1"), Some(b));
    }
}
