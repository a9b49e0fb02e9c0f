//! The peer book: what the identity store says of other nodes (trust, addresses, whether to
//! keep a connection), who may connect, and which address to dial. Pure logic; no I/O.

use netmachine_schema::identity_capnp::{node_record, transport_address};
use netmachine_schema::transport_capnp::ConnectRefusal;
use netmachine_schema::Identity;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// What the transport needs to know of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub trust: u8,
    pub permanent: bool,
    pub advert_version: u32,
    /// QUIC addresses from the node's advert, with their weights.
    pub addrs: Vec<(SocketAddr, u8)>,
}

impl PeerInfo {
    pub fn from_record(record: node_record::Reader<'_>) -> capnp::Result<PeerInfo> {
        let advert = record.get_advert()?;
        let mut addrs = Vec::new();
        for weighted in advert.get_addrs()?.iter() {
            if let transport_address::Quic(quic) = weighted.get_address()?.which()? {
                let quic = quic?;
                let ip = match quic.get_ip()? {
                    bytes if bytes.len() == 4 => IpAddr::from(<[u8; 4]>::try_from(bytes).expect("4 bytes")),
                    bytes if bytes.len() == 16 => IpAddr::from(<[u8; 16]>::try_from(bytes).expect("16 bytes")),
                    _ => continue,
                };
                addrs.push((SocketAddr::new(ip, quic.get_port()), weighted.get_weight()));
            }
        }
        Ok(PeerInfo {
            trust: record.get_trust(),
            permanent: record.get_connection_prefs()?.get_permanent(),
            advert_version: advert.get_version(),
            addrs,
        })
    }
}

/// How a node that passed admission is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A node the identity store trusts.
    Private,
    /// Any node, under the public network rules: its messages reach only public engines.
    Public,
}

/// The nodes this transport knows.
#[derive(Debug, Default)]
pub struct PeerBook {
    peers: BTreeMap<Identity, PeerInfo>,
}

impl PeerBook {
    pub fn get(&self, id: &Identity) -> Option<&PeerInfo> {
        self.peers.get(id)
    }

    /// Follows the identity store: a node's record added or changed, or removed (`None`).
    pub fn update(&mut self, id: Identity, info: Option<PeerInfo>) {
        match info {
            Some(info) => self.peers.insert(id, info),
            None => self.peers.remove(&id),
        };
    }

    pub fn clear(&mut self) {
        self.peers.clear();
    }

    /// The nodes to keep connected.
    pub fn permanent(&self) -> impl Iterator<Item = Identity> + '_ {
        self.peers.iter().filter(|(_, p)| p.permanent && p.trust > 0).map(|(id, _)| *id)
    }

    /// Whether `node` may connect, with `connected` connections open of at most `max`.
    pub fn admit(&self, node: &Identity, public_network: bool, connected: usize, max: usize) -> Result<Admission, (ConnectRefusal, String)> {
        let admission = match self.peers.get(node) {
            Some(peer) if peer.trust == 0 => {
                return Err((ConnectRefusal::Denied, format!("node {node} is banned here (trust 0)")));
            }
            Some(_) => Admission::Private,
            None if public_network => Admission::Public,
            None => {
                return Err((
                    ConnectRefusal::Denied,
                    format!("node {node} is not known here: its advert must be added first (`netmachine peer add`)"),
                ));
            }
        };
        if connected >= max {
            return Err((ConnectRefusal::OverCapacity, format!("{max} nodes are connected (transport.max_peers)")));
        }
        Ok(admission)
    }

    /// Where to dial `node`, best first: addresses this endpoint can reach, by advert weight,
    /// then by the round-trip time measured to them.
    pub fn dial_order(&self, node: &Identity, reachable: impl Fn(&SocketAddr) -> bool, rtt: impl Fn(&SocketAddr) -> Option<Duration>) -> Vec<SocketAddr> {
        let Some(peer) = self.peers.get(node) else { return vec![] };
        let mut addrs: Vec<(SocketAddr, u8)> = peer.addrs.iter().copied().filter(|(a, _)| reachable(a)).collect();
        addrs.sort_by_key(|(addr, weight)| (std::cmp::Reverse(*weight), rtt(addr).unwrap_or(Duration::MAX)));
        addrs.into_iter().map(|(a, _)| a).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmachine_schema::Keypair;

    fn peer(trust: u8, addrs: &[(&str, u8)]) -> PeerInfo {
        PeerInfo {
            trust,
            permanent: true,
            advert_version: 1,
            addrs: addrs.iter().map(|(a, w)| (a.parse().unwrap(), *w)).collect(),
        }
    }

    #[test]
    fn known_nodes_are_admitted_banned_and_unknown_ones_denied() {
        let mut book = PeerBook::default();
        let (known, banned, stranger) = (Keypair::generate().identity(), Keypair::generate().identity(), Keypair::generate().identity());
        book.update(known, Some(peer(128, &[])));
        book.update(banned, Some(peer(0, &[])));
        assert_eq!(book.admit(&known, false, 0, 8), Ok(Admission::Private));
        let (reason, detail) = book.admit(&banned, false, 0, 8).unwrap_err();
        assert_eq!(reason, ConnectRefusal::Denied);
        assert!(detail.contains("banned"));
        assert_eq!(book.admit(&stranger, false, 0, 8).unwrap_err().0, ConnectRefusal::Denied);
        assert_eq!(book.admit(&banned, true, 0, 8).unwrap_err().0, ConnectRefusal::Denied);
        assert_eq!(book.permanent().collect::<Vec<_>>(), vec![known]);
    }

    #[test]
    fn public_networks_admit_strangers_as_public_and_capacity_is_enforced() {
        let book = PeerBook::default();
        let stranger = Keypair::generate().identity();
        assert_eq!(book.admit(&stranger, true, 0, 8), Ok(Admission::Public));
        assert_eq!(book.admit(&stranger, true, 8, 8).unwrap_err().0, ConnectRefusal::OverCapacity);
    }

    #[test]
    fn addresses_are_dialed_by_weight_then_round_trip_time() {
        let mut book = PeerBook::default();
        let node = Keypair::generate().identity();
        book.update(node, Some(peer(128, &[("127.0.0.1:1", 1), ("127.0.0.2:2", 5), ("127.0.0.3:3", 5), ("[::1]:4", 9)])));
        let order = book.dial_order(
            &node,
            |a| a.is_ipv4(),
            |a| (a.port() == 3).then_some(Duration::from_millis(1)),
        );
        let ports: Vec<u16> = order.iter().map(|a| a.port()).collect();
        assert_eq!(ports, [3, 2, 1]);
        assert!(book.dial_order(&Keypair::generate().identity(), |_| true, |_| None).is_empty());
    }
}
