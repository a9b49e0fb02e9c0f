//! EngineMessage as the services hold it in memory, and its conversion to and from the wire.

use crate::identity::{Identity, IdentityError, SignatureBytes};
use crate::message_capnp::{destination, engine_message, Scope};

/// Where a message goes. v2 kinds (relay, domain) are refused when read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Destination {
    Engine(Identity),
    Node(Identity),
    Topic(Identity),
}

impl Destination {
    /// The identity the destination names.
    pub fn identity(&self) -> Identity {
        match *self {
            Destination::Engine(id) | Destination::Node(id) | Destination::Topic(id) => id,
        }
    }
}

impl From<Identity> for Destination {
    fn from(engine: Identity) -> Self {
        Destination::Engine(engine)
    }
}

/// An engine's message (the specification's EngineMessage), every field of the wire type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineMessage {
    pub src: Identity,
    pub dst: Destination,
    pub id: u64,
    pub reply_to: Option<u64>,
    /// Milliseconds since the Unix epoch after which the message is dropped.
    pub expiry: Option<u64>,
    pub scope: Scope,
    pub ordered: bool,
    pub reliable: bool,
    pub encrypted: bool,
    pub protocol: String,
    pub body: Vec<u8>,
    pub sig: Option<SignatureBytes>,
    /// Where it came in from another node; written by the router that took it, never by an
    /// engine, and not signed.
    pub stamp: Option<Stamp>,
}

/// A message's frame from another node and place in it (`DeliveryStamp` in the schema): an
/// engine drops a delivery whose stamp is not past the last one from the same sender and node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stamp {
    pub node: Identity,
    pub session: u64,
    pub seq: u64,
    pub index: u32,
}

impl Stamp {
    /// Where it stands among the stamps of its node: later frames, and later in a frame.
    pub fn position(&self) -> (u64, u64, u32) {
        (self.session, self.seq, self.index)
    }
}

/// Why a wire EngineMessage could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("destination kind '{0}' is v2 and not routed by this node")]
    UnsupportedDestination(&'static str),
    #[error("malformed message: {0}")]
    Capnp(#[from] capnp::Error),
    #[error("malformed message: protocol is not UTF-8")]
    ProtocolNotUtf8,
    #[error("malformed message: {0}")]
    UnknownEnumValue(#[from] capnp::NotInSchema),
}

impl EngineMessage {
    /// A one-way message with default preferences and no expiry.
    pub fn new(src: Identity, dst: Destination, id: u64, body: Vec<u8>) -> Self {
        EngineMessage {
            src,
            dst,
            id,
            reply_to: None,
            expiry: None,
            scope: Scope::Any,
            ordered: true,
            reliable: true,
            encrypted: false,
            protocol: String::new(),
            body,
            sig: None,
            stamp: None,
        }
    }

    /// A message whose every field differs from its default, for tests that check each one
    /// survives a conversion.
    #[cfg(any(test, feature = "fixtures"))]
    pub fn with_every_field() -> Self {
        let mut message = EngineMessage::new(
            crate::Keypair::generate().identity(),
            Destination::Topic(crate::Keypair::generate().identity()),
            7,
            b"body".to_vec(),
        );
        message.reply_to = Some(3);
        message.expiry = Some(1_700_000_000_000);
        message.scope = Scope::Local;
        message.ordered = false;
        message.encrypted = true;
        message.protocol = "chat/1".into();
        message.sig = Some([9; 64]);
        message.stamp = Some(Stamp { node: crate::Keypair::generate().identity(), session: 5, seq: 6, index: 7 });
        message
    }

    /// Whether the message is unsigned, or signed by `src` over it.
    pub fn signature_holds(&self) -> bool {
        self.sig.is_none_or(|sig| self.src.verify(&crate::signing::engine_message(self), &sig).is_ok())
    }

    /// True when the message's expiry is at or before `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expiry.is_some_and(|at| at <= now_ms)
    }

    /// Reads a message from the wire, checking every identity's length.
    pub fn read(reader: engine_message::Reader<'_>) -> Result<Self, MessageError> {
        let dst = match reader.get_dst()?.which()? {
            destination::Engine(id) => Destination::Engine(Identity::from_slice("dst", id?)?),
            destination::Node(id) => Destination::Node(Identity::from_slice("dst", id?)?),
            destination::Topic(id) => Destination::Topic(Identity::from_slice("dst", id?)?),
            destination::Relay(_) => return Err(MessageError::UnsupportedDestination("relay")),
            destination::Domain(_) => return Err(MessageError::UnsupportedDestination("domain")),
        };
        let reply_to = match reader.get_reply_to().which()? {
            engine_message::reply_to::None(()) => None,
            engine_message::reply_to::Id(id) => Some(id),
        };
        let expiry = match reader.get_expiry().which()? {
            engine_message::expiry::Never(()) => None,
            engine_message::expiry::At(at) => Some(at),
        };
        let transport = reader.get_transport()?;
        let sig = reader.get_sig()?;
        let sig = match sig.len() {
            0 => None,
            _ => Some(sig.try_into().map_err(|_| IdentityError::SignatureLength(sig.len()))?),
        };
        Ok(EngineMessage {
            src: Identity::from_slice("src", reader.get_src()?)?,
            dst,
            id: reader.get_id(),
            reply_to,
            expiry,
            scope: reader.get_routing()?.get_scope()?,
            ordered: transport.get_ordered(),
            reliable: transport.get_reliable(),
            encrypted: transport.get_security()?
                == crate::identity_capnp::transport_prefs::Security::Encrypted,
            protocol: reader
                .get_protocol()?
                .to_string()
                .map_err(|_| MessageError::ProtocolNotUtf8)?,
            body: reader.get_body()?.to_vec(),
            sig,
            stamp: match reader.has_stamp() {
                true => {
                    let stamp = reader.get_stamp()?;
                    Some(Stamp { node: Identity::from_slice("stamp", stamp.get_node()?)?, session: stamp.get_session(), seq: stamp.get_seq(), index: stamp.get_index() })
                }
                false => None,
            },
        })
    }

    /// Writes the message into a wire builder.
    pub fn write(&self, mut builder: engine_message::Builder<'_>) {
        builder.set_src(&self.src.0);
        let mut dst = builder.reborrow().init_dst();
        match self.dst {
            Destination::Engine(id) => dst.set_engine(&id.0),
            Destination::Node(id) => dst.set_node(&id.0),
            Destination::Topic(id) => dst.set_topic(&id.0),
        }
        builder.set_id(self.id);
        match self.reply_to {
            None => builder.reborrow().init_reply_to().set_none(()),
            Some(id) => builder.reborrow().init_reply_to().set_id(id),
        }
        match self.expiry {
            None => builder.reborrow().init_expiry().set_never(()),
            Some(at) => builder.reborrow().init_expiry().set_at(at),
        }
        builder.reborrow().init_routing().set_scope(self.scope);
        let mut transport = builder.reborrow().init_transport();
        transport.set_ordered(self.ordered);
        transport.set_reliable(self.reliable);
        transport.set_security(if self.encrypted {
            crate::identity_capnp::transport_prefs::Security::Encrypted
        } else {
            crate::identity_capnp::transport_prefs::Security::Authenticated
        });
        builder.set_protocol(self.protocol.as_str());
        builder.set_body(&self.body);
        builder.set_sig(self.sig.as_ref().map_or(&[][..], |s| &s[..]));
        if let Some(stamp) = &self.stamp {
            let mut into = builder.init_stamp();
            into.set_node(&stamp.node.0);
            into.set_session(stamp.session);
            into.set_seq(stamp.seq);
            into.set_index(stamp.index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(message: &EngineMessage) -> EngineMessage {
        let mut wire = capnp::message::Builder::new_default();
        message.write(wire.init_root());
        let reader = wire.get_root_as_reader::<engine_message::Reader>().unwrap();
        EngineMessage::read(reader).unwrap()
    }

    #[test]
    fn every_field_survives_the_wire() {
        let message = EngineMessage::with_every_field();
        assert_eq!(round_trip(&message), message);
        let plain = EngineMessage::new(message.src, Destination::Node(message.src), 1, vec![]);
        assert_eq!(round_trip(&plain), plain);
    }

    #[test]
    fn short_identities_and_v2_destinations_are_refused() {
        let mut wire = capnp::message::Builder::new_default();
        let mut builder = wire.init_root::<engine_message::Builder>();
        builder.set_src(&[1; 5]);
        builder.reborrow().init_dst().set_engine(&[2; 32]);
        let reader = wire.get_root_as_reader::<engine_message::Reader>().unwrap();
        let err = EngineMessage::read(reader).unwrap_err();
        assert_eq!(err.to_string(), "src must be 32 bytes (an ed25519 public key), got 5");

        let mut wire = capnp::message::Builder::new_default();
        let mut builder = wire.init_root::<engine_message::Builder>();
        builder.set_src(&[1; 32]);
        builder.reborrow().init_dst().set_relay(&[0; 4]);
        let reader = wire.get_root_as_reader::<engine_message::Reader>().unwrap();
        assert!(matches!(
            EngineMessage::read(reader),
            Err(MessageError::UnsupportedDestination("relay"))
        ));
    }
}
