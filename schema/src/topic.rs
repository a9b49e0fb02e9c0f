//! A topic's advert: the topic key's signed statement of which engine may publish on it. The
//! topic's identity is that key, so only its holder can name the publisher; routers and pubsub
//! services accept events from that engine alone. And the gap marker, which tells subscribers
//! that events will never come.

use crate::identity::{Identity, IdentityError, Keypair, SignatureBytes};
use crate::identity_capnp::topic_advert;
use crate::signing;

/// The last sequence a subscription answers for a topic on another node that this node does
/// not carry yet: not known, so the first event that arrives sets each publisher's place.
pub const SEQ_NOT_KNOWN: u64 = u64::MAX;

/// The protocol of a topic message that carries no event: its id is the last of a run of the
/// publisher's events that will never come (from the one after the last delivered). A node's
/// pubsub service hands one to its router when the publisher's node no longer has events, so
/// that subscribers hear of the gap without waiting for the next event.
pub const GAP_PROTOCOL: &str = "netmachine/gap/1";

/// A gap marker: `publisher`'s events on `topic` up to `to` will never come.
pub fn gap_marker(topic: Identity, publisher: Identity, to: u64) -> crate::EngineMessage {
    let mut marker = crate::EngineMessage::new(publisher, crate::Destination::Topic(topic), to, Vec::new());
    marker.protocol = GAP_PROTOCOL.into();
    marker
}

/// A signed topic advert (the wire's TopicAdvert).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicAdvert {
    pub topic: Identity,
    pub publisher: Identity,
    pub tags: Vec<String>,
    /// When the topic key signed it, in ms since the epoch.
    pub created: u64,
    pub sig: SignatureBytes,
}

/// Why an advert cannot be used.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AdvertError {
    #[error("topic advert: {0}")]
    Identity(#[from] IdentityError),
    #[error("topic advert: {0}")]
    Capnp(String),
    #[error("the advert of topic {topic} is not signed by the topic key")]
    NotSignedByTopic { topic: Identity },
}

impl TopicAdvert {
    /// The topic `key` names `publisher` as the engine that publishes on it.
    pub fn sign(key: &Keypair, publisher: Identity, tags: Vec<String>, created: u64) -> Self {
        let mut advert = TopicAdvert { topic: key.identity(), publisher, tags, created, sig: [0; 64] };
        advert.sig = key.sign(&advert.signed_bytes());
        advert
    }

    /// What the topic key signs (`signing::topic_advert`).
    fn signed_bytes(&self) -> Vec<u8> {
        let mut wire = capnp::message::Builder::new_default();
        self.write(wire.init_root());
        let reader = wire.get_root_as_reader::<topic_advert::Reader<'_>>().expect("an advert just written reads back");
        signing::topic_advert(reader).expect("an advert just written reads back")
    }

    /// Checks the topic key's signature.
    pub fn verify(&self) -> Result<(), AdvertError> {
        self.topic.verify(&self.signed_bytes(), &self.sig).map_err(|_| AdvertError::NotSignedByTopic { topic: self.topic })
    }

    /// Reads an advert, checking every field's length (not the signature: see `verify`).
    pub fn read(reader: topic_advert::Reader<'_>) -> Result<Self, AdvertError> {
        let capnp = |e: capnp::Error| AdvertError::Capnp(e.to_string());
        let sig = reader.get_sig().map_err(capnp)?;
        let mut tags = Vec::new();
        for tag in reader.get_tags().map_err(capnp)?.iter() {
            tags.push(tag.map_err(capnp)?.to_string().map_err(|e| AdvertError::Capnp(e.to_string()))?);
        }
        Ok(TopicAdvert {
            topic: Identity::from_slice("advert.topic", reader.get_topic().map_err(capnp)?)?,
            publisher: Identity::from_slice("advert.publisher", reader.get_publisher().map_err(capnp)?)?,
            tags,
            created: reader.get_created(),
            sig: sig.try_into().map_err(|_| IdentityError::SignatureLength(sig.len()))?,
        })
    }

    pub fn write(&self, mut builder: topic_advert::Builder<'_>) {
        builder.set_topic(&self.topic.0);
        builder.set_publisher(&self.publisher.0);
        let mut tags = builder.reborrow().init_tags(self.tags.len() as u32);
        for (i, tag) in self.tags.iter().enumerate() {
            tags.set(i as u32, tag.as_str());
        }
        builder.set_created(self.created);
        builder.set_sig(&self.sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_advert_verifies_only_as_the_topic_key_signed_it() {
        let (topic, publisher) = (Keypair::generate(), Keypair::generate().identity());
        let advert = TopicAdvert::sign(&topic, publisher, vec!["prices".into()], 7);
        assert_eq!(advert.verify(), Ok(()));
        let mut wire = capnp::message::Builder::new_default();
        advert.write(wire.init_root());
        assert_eq!(TopicAdvert::read(wire.get_root_as_reader().unwrap()), Ok(advert.clone()));
        let hijacked = TopicAdvert { publisher: Keypair::generate().identity(), ..advert.clone() };
        assert_eq!(hijacked.verify(), Err(AdvertError::NotSignedByTopic { topic: topic.identity() }));
        let retagged = TopicAdvert { tags: vec![], ..advert };
        assert!(retagged.verify().is_err());
    }
}
