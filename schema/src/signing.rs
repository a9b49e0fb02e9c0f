//! The exact bytes each signature covers. Every payload starts with a tag naming what is signed
//! and its version, so a signature made for one purpose can never be replayed for another; each
//! field follows in schema order, integers little-endian, byte strings length-prefixed (u32).
//! Another implementation reproduces a payload from this file alone.

use crate::identity::Identity;
use crate::identity_capnp::{node_advert, topic_advert, transport_address};
use crate::message::{Destination, EngineMessage};

struct Payload(Vec<u8>);

impl Payload {
    fn new(tag: &str) -> Self {
        let mut payload = Payload(Vec::with_capacity(128));
        payload.bytes(tag.as_bytes());
        payload
    }
    fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        self.0.extend_from_slice(bytes);
        self
    }
    fn u64(&mut self, value: u64) -> &mut Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }
    fn u8(&mut self, value: u8) -> &mut Self {
        self.0.push(value);
        self
    }
}

/// What an engine signs to prove its key when it attaches: the node it attaches to, its own
/// identity and the router's fresh nonce.
pub fn attach_challenge(node: &Identity, engine: &Identity, nonce: &[u8]) -> Vec<u8> {
    let mut p = Payload::new("netmachine/attach/v1");
    p.bytes(&node.0).bytes(&engine.0).bytes(nonce);
    p.0
}

/// What an engine signs to say where it is attached: itself, the node, and when it attached
/// there (ms since the epoch, by the engine's clock; the later of two locations wins).
pub fn engine_location(engine: &Identity, node: &Identity, at: u64) -> Vec<u8> {
    let mut p = Payload::new("netmachine/engine-location/v1");
    p.bytes(&engine.0).bytes(&node.0).u64(at);
    p.0
}

/// What a node signs in its NodeAdvert: every field but `sig`.
pub fn node_advert(advert: node_advert::Reader<'_>) -> capnp::Result<Vec<u8>> {
    let mut p = Payload::new("netmachine/node-advert/v1");
    p.bytes(advert.get_id()?);
    let addrs = advert.get_addrs()?;
    p.u64(addrs.len() as u64);
    for weighted in addrs.iter() {
        match weighted.get_address()?.which()? {
            transport_address::Quic(quic) => {
                let quic = quic?;
                p.u8(0).bytes(quic.get_ip()?).u64(quic.get_port().into());
                p.bytes(quic.get_cert_issuer()?);
            }
            transport_address::Opaque(bytes) => {
                p.u8(1).bytes(bytes?);
            }
        }
        p.u8(weighted.get_weight());
    }
    p.u64(advert.get_version().into()).u64(advert.get_created());
    let protocols = advert.get_protocols()?;
    p.u64(protocols.len() as u64);
    for protocol in protocols.iter() {
        p.bytes(protocol?.as_bytes());
    }
    Ok(p.0)
}

/// What a topic key signs in its TopicAdvert: every field but `sig`.
pub fn topic_advert(advert: topic_advert::Reader<'_>) -> capnp::Result<Vec<u8>> {
    let mut p = Payload::new("netmachine/topic-advert/v1");
    p.bytes(advert.get_topic()?).bytes(advert.get_publisher()?);
    let tags = advert.get_tags()?;
    p.u64(tags.len() as u64);
    for tag in tags.iter() {
        p.bytes(tag?.as_bytes());
    }
    p.u64(advert.get_created());
    Ok(p.0)
}

/// What a node signs in a P2PFrame: its own identity, the destination node, and the length and
/// BLAKE3 hash of the batch's exact bytes. Signing the hash, not the batch, matters: ed25519
/// hashes what it signs with SHA-512 twice (and verification once more), which at a megabyte
/// frame costs several times what one BLAKE3 pass does, on the router's event loop.
pub fn p2p_frame(src: &Identity, dst: &Identity, batch: &[u8]) -> Vec<u8> {
    let mut p = Payload::new("netmachine/p2p-frame/v2");
    p.bytes(&src.0).bytes(&dst.0).u64(batch.len() as u64).bytes(blake3::hash(batch).as_bytes());
    p.0
}

/// What an engine signs in an EngineMessage: every field but `sig`.
pub fn engine_message(message: &EngineMessage) -> Vec<u8> {
    let mut p = Payload::new("netmachine/engine-message/v1");
    p.bytes(&message.src.0);
    let (kind, id) = match message.dst {
        Destination::Engine(id) => (0, id),
        Destination::Node(id) => (1, id),
        Destination::Topic(id) => (2, id),
    };
    p.u8(kind).bytes(&id.0).u64(message.id);
    match message.reply_to {
        None => p.u8(0),
        Some(id) => p.u8(1).u64(id),
    };
    match message.expiry {
        None => p.u8(0),
        Some(at) => p.u8(1).u64(at),
    };
    p.u8(message.scope as u8);
    p.u8(message.ordered as u8).u8(message.reliable as u8).u8(message.encrypted as u8);
    p.bytes(message.protocol.as_bytes()).bytes(&message.body);
    p.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Keypair;

    #[test]
    fn payloads_differ_by_purpose_and_by_every_field() {
        let node = Keypair::generate().identity();
        let engine = Keypair::generate().identity();
        let a = attach_challenge(&node, &engine, b"nonce");
        assert_ne!(a, attach_challenge(&engine, &node, b"nonce"));
        assert_ne!(a, attach_challenge(&node, &engine, b"nonce2"));

        let message = EngineMessage::new(engine, Destination::Engine(node), 1, b"x".to_vec());
        let mut other = message.clone();
        other.reply_to = Some(0);
        assert_ne!(engine_message(&message), engine_message(&other));
        let mut other = message.clone();
        other.dst = Destination::Node(node);
        assert_ne!(engine_message(&message), engine_message(&other));
    }

    #[test]
    fn node_advert_payload_covers_addresses() {
        let mut wire = capnp::message::Builder::new_default();
        let mut advert = wire.init_root::<node_advert::Builder>();
        advert.set_id(&[1; 32]);
        advert.set_version(2);
        let mut quic = advert.reborrow().init_addrs(1).get(0).init_address().init_quic();
        quic.set_ip(&[127, 0, 0, 1]);
        quic.set_port(4000);
        let before = node_advert(advert.reborrow_as_reader()).unwrap();
        advert.reborrow().get_addrs().unwrap().get(0).get_address().unwrap().init_quic().set_port(4001);
        assert_ne!(before, node_advert(advert.reborrow_as_reader()).unwrap());
    }
}
