//! A peer's node advert, as the transport checks and keeps it: an advert must be the peer's
//! own and signed by it; a newer version of a known peer's advert replaces the stored one,
//! keeping the trust and preferences the operator gave. It also decides which addresses this
//! node advertises, and writes them as the advert carries them.

use netmachine_schema::identity_capnp::{identity_record, node_advert, weighted_address};
use netmachine_schema::{signing, Identity};
use std::net::{IpAddr, SocketAddr};

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

/// The addresses to advertise: the configured ones (`transport.advertise`) that parse, else
/// the `bound` ones that name a host (not 0.0.0.0 or ::).
pub fn addresses_to_advertise(configured: &[String], bound: &[SocketAddr]) -> Vec<SocketAddr> {
    let configured: Vec<SocketAddr> = configured.iter().filter_map(|a| a.parse().ok()).collect();
    if !configured.is_empty() {
        return configured;
    }
    bound.iter().copied().filter(|a| !a.ip().is_unspecified()).collect()
}

/// Writes `addrs` into an advert's address list, each a QUIC address of equal weight whose
/// certificate `node` issues.
pub fn set_addresses(mut list: capnp::struct_list::Builder<'_, weighted_address::Owned>, addrs: &[SocketAddr], node: Identity) {
    for (i, addr) in addrs.iter().enumerate() {
        let mut weighted = list.reborrow().get(i as u32);
        weighted.set_weight(100);
        let mut quic = weighted.init_address().init_quic();
        match addr.ip() {
            IpAddr::V4(ip) => quic.set_ip(&ip.octets()),
            IpAddr::V6(ip) => quic.set_ip(&ip.octets()),
        }
        quic.set_port(addr.port());
        quic.set_cert_issuer(&node.0);
    }
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

    #[test]
    fn the_configured_addresses_win_else_the_bound_ones_that_name_a_host() {
        let bound: Vec<SocketAddr> = ["0.0.0.0:4000", "127.0.0.1:4001", "[::]:4002", "[::1]:4003"].iter().map(|a| a.parse().unwrap()).collect();
        let named = |list: &[&str]| list.iter().map(|a| a.parse().unwrap()).collect::<Vec<SocketAddr>>();
        assert_eq!(addresses_to_advertise(&[], &bound), named(&["127.0.0.1:4001", "[::1]:4003"]));
        let configured = ["127.0.0.2:4000".to_string(), "not an address".to_string()];
        assert_eq!(addresses_to_advertise(&configured, &bound), named(&["127.0.0.2:4000"]));
    }

    #[test]
    fn written_addresses_read_back_as_the_peer_book_reads_them() {
        let key = Keypair::generate();
        let addrs: Vec<SocketAddr> = ["127.0.0.1:4001", "[::1]:4003"].iter().map(|a| a.parse().unwrap()).collect();
        let mut message = capnp::message::Builder::new_default();
        let mut record = message.init_root::<identity_record::Builder>().init_node();
        let mut written = record.reborrow().init_advert();
        written.set_id(&key.identity().0);
        set_addresses(written.init_addrs(addrs.len() as u32), &addrs, key.identity());
        let read = crate::core::PeerInfo::from_record(record.into_reader()).unwrap();
        assert_eq!(read.addrs, vec![(addrs[0], 100), (addrs[1], 100)]);
    }
}
