//! A peer's node advert, as the transport checks and keeps it: an advert must be the peer's
//! own and signed by it; a newer version of a known peer's advert replaces the stored one,
//! keeping the trust and preferences the operator gave.

use netmachine_schema::identity_capnp::{identity_record, node_advert};
use netmachine_schema::{signing, Identity};

type Record = capnp::message::Builder<capnp::message::HeapAllocator>;

/// Reads a message of the handshake (or an advert in it): at most 64 Ki words.
pub fn read_message(bytes: &[u8]) -> capnp::Result<capnp::message::Reader<capnp::serialize::OwnedSegments>> {
    capnp::serialize::read_message(&mut &bytes[..], netmachine_service::rpc::reader_options(64 << 10))
}

/// Reads a standalone advert message.
pub fn read(advert: &[u8]) -> Result<capnp::message::Reader<capnp::serialize::OwnedSegments>, String> {
    read_message(advert).map_err(|e| format!("unreadable advert: {e}"))
}

/// Checks that a standalone advert message is `node`'s and is signed by it.
pub fn check_bytes(node: Identity, advert: &[u8]) -> Result<(), String> {
    let message = read(advert)?;
    check(node, message.get_root::<node_advert::Reader>().map_err(|e| e.to_string())?)
}

/// Checks that `advert` is `node`'s and is signed by it.
pub fn check(node: Identity, advert: node_advert::Reader<'_>) -> Result<(), String> {
    let id = Identity::from_slice("advert.id", advert.get_id().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    if id != node {
        return Err(format!("the advert is node {id}'s, but the peer is node {node}"));
    }
    let payload = signing::node_advert(advert).map_err(|e| e.to_string())?;
    node.verify(&payload, advert.get_sig().map_err(|e| e.to_string())?)
        .map_err(|e| format!("the advert's signature by {node}: {e}"))
}

/// A node record holding `advert`.
pub fn node_record(advert: node_advert::Reader<'_>, trust: u8, permanent: bool) -> capnp::Result<Record> {
    let mut message = capnp::message::Builder::new_default();
    let mut node = message.init_root::<identity_record::Builder>().init_node();
    node.set_id(advert.get_id()?);
    node.set_trust(trust);
    node.reborrow().init_connection_prefs().set_permanent(permanent);
    node.set_advert(advert)?;
    Ok(message)
}

/// The record to store when a peer shows `advert` and the store holds `stored` for it: none
/// unless the store knows the peer (as a node) and holds an older version.
pub fn replacement(stored: identity_record::Reader<'_>, advert: node_advert::Reader<'_>) -> capnp::Result<Option<Record>> {
    let identity_record::Node(stored) = stored.which()? else { return Ok(None) };
    let stored = stored?;
    if stored.get_advert()?.get_version() >= advert.get_version() {
        return Ok(None);
    }
    let permanent = stored.get_connection_prefs()?.get_permanent();
    node_record(advert, stored.get_trust(), permanent).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmachine_schema::Keypair;

    fn advert(key: &Keypair, signer: &Keypair, version: u32) -> Record {
        let mut message = capnp::message::Builder::new_default();
        let mut advert = message.init_root::<node_advert::Builder>();
        advert.set_id(&key.identity().0);
        advert.set_version(version);
        let signature = signer.sign(&signing::node_advert(advert.reborrow_as_reader()).unwrap());
        advert.set_sig(&signature);
        message
    }

    fn bytes(message: &Record) -> Vec<u8> {
        capnp::serialize::write_message_to_words(message)
    }

    #[test]
    fn an_advert_must_be_the_peers_own_and_signed_by_it() {
        let (peer, other) = (Keypair::generate(), Keypair::generate());
        assert_eq!(check_bytes(peer.identity(), &bytes(&advert(&peer, &peer, 1))), Ok(()));
        assert!(check_bytes(other.identity(), &bytes(&advert(&peer, &peer, 1))).unwrap_err().contains("but the peer is"));
        assert!(check_bytes(peer.identity(), &bytes(&advert(&peer, &other, 1))).unwrap_err().contains("signature"));
        assert!(check_bytes(peer.identity(), b"not an advert").unwrap_err().contains("unreadable"));
    }

    #[test]
    fn only_a_newer_advert_replaces_the_stored_one_keeping_trust_and_preferences() {
        let peer = Keypair::generate();
        let stored = node_record(advert(&peer, &peer, 2).get_root_as_reader().unwrap(), 77, true).unwrap();
        let stored = stored.get_root_as_reader::<identity_record::Reader>().unwrap();
        let older = advert(&peer, &peer, 2);
        assert!(replacement(stored, older.get_root_as_reader().unwrap()).unwrap().is_none());
        let newer = advert(&peer, &peer, 3);
        let replaced = replacement(stored, newer.get_root_as_reader().unwrap()).unwrap().expect("replaced");
        let identity_record::Node(node) = replaced.get_root_as_reader::<identity_record::Reader>().unwrap().which().unwrap() else { panic!("a node record") };
        let node = node.unwrap();
        assert_eq!((node.get_trust(), node.get_connection_prefs().unwrap().get_permanent()), (77, true));
        assert_eq!(node.get_advert().unwrap().get_version(), 3);
    }
}
