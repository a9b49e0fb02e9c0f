//! This node's advert, signed with the node key for the addresses transport bound. The stored
//! advert is kept while its content does not change; otherwise a new one is made with a version
//! above both the stored one and the current time in seconds, so versions only grow even if the
//! identity store lost the old advert.

use netmachine_schema::identity_capnp::{identity_record, node_advert, weighted_address};
use netmachine_schema::{signing, Keypair};

pub type Advert = capnp::message::Builder<capnp::message::HeapAllocator>;

/// The advert for `addrs` and `protocols`, and whether it is new (to be stored): the stored
/// one if it says the same, else one signed now (`now_ms`, milliseconds since the epoch).
pub fn sign(
    key: &Keypair,
    addrs: capnp::struct_list::Reader<'_, weighted_address::Owned>,
    protocols: capnp::text_list::Reader<'_>,
    stored: Option<node_advert::Reader<'_>>,
    now_ms: u64,
) -> capnp::Result<(Advert, bool)> {
    let mut advert = Advert::new_default();
    let mut root = advert.init_root::<node_advert::Builder>();
    root.set_id(&key.identity().0);
    root.set_addrs(addrs)?;
    root.set_protocols(protocols)?;
    if let Some(stored) = stored {
        root.set_version(stored.get_version());
        root.set_created(stored.get_created());
        if signing::node_advert(root.reborrow_as_reader())? == signing::node_advert(stored)? {
            root.set_sig(stored.get_sig()?);
            return Ok((advert, false));
        }
    }
    let previous = stored.map_or(0, |s| s.get_version());
    root.set_version(previous.saturating_add(1).max((now_ms / 1000) as u32));
    root.set_created(now_ms);
    let signature = key.sign(&signing::node_advert(root.reborrow_as_reader())?);
    root.set_sig(&signature);
    Ok((advert, true))
}

/// The identity record of this node, fully trusted, holding `advert`.
pub fn own_record(advert: node_advert::Reader<'_>) -> capnp::Result<Advert> {
    let mut record = Advert::new_default();
    let mut own = record.init_root::<identity_record::Builder>().init_node();
    own.set_id(advert.get_id()?);
    own.set_trust(255);
    own.set_advert(advert)?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(port: u16) -> capnp::message::Builder<capnp::message::HeapAllocator> {
        let mut message = capnp::message::Builder::new_default();
        let mut list = message.initn_root::<capnp::struct_list::Builder<weighted_address::Owned>>(1);
        let mut quic = list.reborrow().get(0).init_address().init_quic();
        quic.set_ip(&[127, 0, 0, 1]);
        quic.set_port(port);
        message
    }

    fn sign_for(key: &Keypair, port: u16, stored: Option<node_advert::Reader<'_>>, now_ms: u64) -> (Advert, bool) {
        let addrs = addrs(port);
        let mut protocols = capnp::message::Builder::new_default();
        protocols.initn_root::<capnp::text_list::Builder>(1).set(0, "netmachine/1");
        let addrs = addrs.get_root_as_reader().unwrap();
        sign(key, addrs, protocols.get_root_as_reader().unwrap(), stored, now_ms).unwrap()
    }

    #[test]
    fn the_same_addresses_keep_the_advert_and_new_ones_get_a_higher_version() {
        let key = Keypair::generate();
        let (first, new) = sign_for(&key, 4000, None, 5_000_000);
        let first = first.get_root_as_reader::<node_advert::Reader>().unwrap();
        assert!(new);
        assert_eq!(first.get_version(), 5_000);
        let (same, new) = sign_for(&key, 4000, Some(first), 9_000_000);
        assert!(!new);
        assert_eq!(same.get_root_as_reader::<node_advert::Reader>().unwrap().get_sig().unwrap(), first.get_sig().unwrap());
        // The clock went back (or the version ran ahead of it): the version still grows.
        let (moved, new) = sign_for(&key, 4001, Some(first), 1_000);
        let moved = moved.get_root_as_reader::<node_advert::Reader>().unwrap();
        assert!(new);
        assert_eq!(moved.get_version(), 5_001);
        let payload = signing::node_advert(moved).unwrap();
        assert!(key.identity().verify(&payload, moved.get_sig().unwrap()).is_ok());
    }
}
