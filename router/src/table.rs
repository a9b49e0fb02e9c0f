//! The routing table: which engines are attached here, and what the identity store said about
//! other identities (a bounded cache kept current by IdentityUpdated). `route` decides where a
//! message goes; it does no I/O, so the decisions are tested without sockets.

use crate::drops::DropReason;
use netmachine_schema::identity_capnp::identity_record;
use netmachine_schema::message_capnp::Scope;
use netmachine_schema::{Destination, EngineMessage, Identity};
use std::collections::{HashMap, VecDeque};

/// What the router needs to know of an identity record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// An engine, attached to `node`.
    Engine { node: Identity },
    /// A node, and how far it is trusted (0: banned).
    Node { trust: u8 },
    Topic,
    Domain,
}

impl Known {
    /// The routing-relevant part of an identity record.
    pub fn from_record(record: identity_record::Reader<'_>) -> capnp::Result<Known> {
        Ok(match record.which()? {
            identity_record::Engine(engine) => {
                let node = Identity::from_slice("engine.node", engine?.get_node()?)
                    .map_err(|e| capnp::Error::failed(e.to_string()))?;
                Known::Engine { node }
            }
            identity_record::Node(node) => Known::Node { trust: node?.get_trust() },
            identity_record::Topic(_) => Known::Topic,
            identity_record::Domain(_) => Known::Domain,
        })
    }
}

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// To the engine attached here.
    Local(Identity),
    /// To this node itself: the router answers.
    Node,
    /// To another node, which the transport reaches.
    Remote(Identity),
    /// The table knows nothing of the destination: ask the identity store, then route again.
    Lookup(Identity),
    Drop(DropReason, String),
}

/// The routing table of one node.
pub struct RoutingTable<A> {
    node: Identity,
    attached: HashMap<Identity, A>,
    known: HashMap<Identity, Known>,
    known_order: VecDeque<Identity>,
    known_capacity: usize,
}

impl<A> RoutingTable<A> {
    /// An empty table for `node`, caching at most `known_capacity` identity records.
    pub fn new(node: Identity, known_capacity: usize) -> Self {
        RoutingTable {
            node,
            attached: HashMap::new(),
            known: HashMap::new(),
            known_order: VecDeque::new(),
            known_capacity,
        }
    }

    pub fn node(&self) -> Identity {
        self.node
    }

    /// Attaches `engine`; returns the attachment it replaces, if any.
    pub fn attach(&mut self, engine: Identity, attachment: A) -> Option<A> {
        self.attached.insert(engine, attachment)
    }

    /// Detaches `engine` if `is_current` holds for its present attachment (a later attachment
    /// of the same engine, made after this one was closed, stays).
    pub fn detach(&mut self, engine: &Identity, is_current: impl FnOnce(&A) -> bool) -> Option<A> {
        match self.attached.get(engine) {
            Some(a) if is_current(a) => self.attached.remove(engine),
            _ => None,
        }
    }

    pub fn attachment(&self, engine: &Identity) -> Option<&A> {
        self.attached.get(engine)
    }

    pub fn attached(&self) -> impl Iterator<Item = &Identity> {
        self.attached.keys()
    }

    pub fn attached_count(&self) -> usize {
        self.attached.len()
    }

    /// Records what the identity store says of `id`, evicting the oldest entry when full.
    pub fn learn(&mut self, id: Identity, known: Known) {
        if self.known.insert(id, known).is_none() {
            self.known_order.push_back(id);
            while self.known.len() > self.known_capacity {
                match self.known_order.pop_front() {
                    Some(oldest) => {
                        self.known.remove(&oldest);
                    }
                    None => break,
                }
            }
        }
    }

    /// Follows an IdentityUpdated: replaces a cached record, or forgets a deleted one.
    /// Another node announced `engine` as one of its own: learned, unless the id is known as
    /// something other than an engine (a node or a topic), which an announcement cannot change.
    pub fn learn_engine(&mut self, engine: Identity, node: Identity) {
        if matches!(self.known.get(&engine), None | Some(Known::Engine { .. })) {
            self.learn(engine, Known::Engine { node });
        }
    }

    /// `node` announced that `engine` left it: forgotten only if it was known on that node, so
    /// that one node cannot unroute another's engines.
    pub fn forget_engine(&mut self, engine: Identity, node: Identity) {
        if self.known.get(&engine) == Some(&Known::Engine { node }) {
            self.updated(engine, None);
        }
    }

    pub fn updated(&mut self, id: Identity, known: Option<Known>) {
        match known {
            Some(known) if self.known.contains_key(&id) => {
                self.known.insert(id, known);
            }
            Some(_) => {}
            None => {
                self.known.remove(&id);
                self.known_order.retain(|k| *k != id);
            }
        }
    }

    /// Forgets every cached record (the identity store's notifications may have been missed).
    pub fn forget_known(&mut self) {
        self.known.clear();
        self.known_order.clear();
    }

    pub fn known_count(&self) -> usize {
        self.known.len()
    }

    /// Decides where `message` goes at time `now_ms`.
    pub fn route(&self, message: &EngineMessage, now_ms: u64) -> Route {
        if message.is_expired(now_ms) {
            return Route::Drop(DropReason::Expired, "the message expired before it was routed".into());
        }
        let remote = |node: Identity| match message.scope {
            Scope::Local => Route::Drop(
                DropReason::NoRoute,
                format!("the destination is on node {node}, but the message's scope is local"),
            ),
            _ => Route::Remote(node),
        };
        match message.dst {
            Destination::Engine(engine) => {
                if self.attached.contains_key(&engine) {
                    return Route::Local(engine);
                }
                match self.known.get(&engine) {
                    None => Route::Lookup(engine),
                    Some(Known::Engine { node }) if *node == self.node => Route::Drop(
                        DropReason::NoRoute,
                        format!("engine {engine} belongs to this node but is not attached"),
                    ),
                    Some(Known::Engine { node }) => remote(*node),
                    Some(other) => Route::Drop(
                        DropReason::NoRoute,
                        format!("{engine} is a {other:?} record, not an engine"),
                    ),
                }
            }
            Destination::Node(node) if node == self.node => Route::Node,
            Destination::Node(node) => match self.known.get(&node) {
                None => Route::Lookup(node),
                Some(Known::Node { trust: 0 }) => {
                    Route::Drop(DropReason::NoRoute, format!("node {node} is banned (trust 0)"))
                }
                Some(Known::Node { .. }) => remote(node),
                Some(other) => Route::Drop(
                    DropReason::NoRoute,
                    format!("{node} is a {other:?} record, not a node"),
                ),
            },
            Destination::Topic(topic) => Route::Drop(
                DropReason::NoRoute,
                format!("topic {topic}: topics are not routed by this version"),
            ),
        }
    }

    /// Routes again after the identity store answered a `Lookup` (with `None`: not found).
    pub fn route_after_lookup(&mut self, message: &EngineMessage, id: Identity, found: Option<Known>, now_ms: u64) -> Route {
        match found {
            Some(known) => {
                self.learn(id, known);
                self.route(message, now_ms)
            }
            None => Route::Drop(
                DropReason::NoRoute,
                format!("no engine or node {id} is attached here or known to the identity store"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmachine_schema::Keypair;

    fn id() -> Identity {
        Keypair::generate().identity()
    }

    fn to(dst: Destination) -> EngineMessage {
        EngineMessage::new(id(), dst, 1, b"hi".to_vec())
    }

    #[test]
    fn attached_engines_route_locally_and_unknown_ones_need_a_lookup() {
        let mut table = RoutingTable::new(id(), 16);
        let (a, b) = (id(), id());
        table.attach(a, ());
        assert_eq!(table.route(&to(Destination::Engine(a)), 0), Route::Local(a));
        assert_eq!(table.route(&to(Destination::Engine(b)), 0), Route::Lookup(b));
        let routed = table.route_after_lookup(&to(Destination::Engine(b)), b, None, 0);
        assert!(matches!(routed, Route::Drop(DropReason::NoRoute, _)));
    }

    #[test]
    fn expired_messages_are_dropped_before_anything_else() {
        let mut table = RoutingTable::new(id(), 16);
        let a = id();
        table.attach(a, ());
        let mut message = to(Destination::Engine(a));
        message.expiry = Some(100);
        assert_eq!(table.route(&message, 99), Route::Local(a));
        assert!(matches!(table.route(&message, 100), Route::Drop(DropReason::Expired, _)));
    }

    #[test]
    fn engines_known_on_other_nodes_route_remotely_unless_scope_is_local() {
        let mut table: RoutingTable<()> = RoutingTable::new(id(), 16);
        let (engine, node) = (id(), id());
        let message = to(Destination::Engine(engine));
        assert_eq!(table.route_after_lookup(&message, engine, Some(Known::Engine { node }), 0), Route::Remote(node));
        let mut local = message.clone();
        local.scope = Scope::Local;
        assert!(matches!(table.route(&local, 0), Route::Drop(DropReason::NoRoute, _)));
    }

    #[test]
    fn announcements_change_only_the_announcing_nodes_engines() {
        let mut table: RoutingTable<()> = RoutingTable::new(id(), 16);
        let (engine, node, other, topic) = (id(), id(), id(), id());
        table.learn(topic, Known::Topic);
        table.learn_engine(topic, other);
        assert_eq!(table.route(&to(Destination::Engine(topic)), 0), Route::Drop(DropReason::NoRoute, format!("{topic} is a Topic record, not an engine")));
        table.learn_engine(engine, node);
        table.forget_engine(engine, other);
        assert_eq!(table.route(&to(Destination::Engine(engine)), 0), Route::Remote(node));
        table.forget_engine(engine, node);
        assert_eq!(table.route(&to(Destination::Engine(engine)), 0), Route::Lookup(engine));
    }

    #[test]
    fn banned_nodes_are_not_routed_to_and_updates_are_followed() {
        let mut table: RoutingTable<()> = RoutingTable::new(id(), 16);
        let node = id();
        table.learn(node, Known::Node { trust: 128 });
        assert_eq!(table.route(&to(Destination::Node(node)), 0), Route::Remote(node));
        table.updated(node, Some(Known::Node { trust: 0 }));
        assert!(matches!(table.route(&to(Destination::Node(node)), 0), Route::Drop(DropReason::NoRoute, d) if d.contains("banned")));
        table.updated(node, None);
        assert_eq!(table.route(&to(Destination::Node(node)), 0), Route::Lookup(node));
        let own = table.node();
        assert_eq!(table.route(&to(Destination::Node(own)), 0), Route::Node);
    }

    #[test]
    fn the_cache_stays_within_its_bound_evicting_the_oldest() {
        let mut table: RoutingTable<()> = RoutingTable::new(id(), 16);
        let ids: Vec<_> = (0..40).map(|_| id()).collect();
        for id in &ids {
            table.learn(*id, Known::Topic);
        }
        assert_eq!(table.known_count(), 16);
        assert_eq!(table.route(&to(Destination::Node(ids[0])), 0), Route::Lookup(ids[0]));
    }

    #[test]
    fn a_replaced_attachment_is_not_detached_by_its_predecessor() {
        let mut table = RoutingTable::new(id(), 16);
        let a = id();
        table.attach(a, 1u64);
        assert_eq!(table.attach(a, 2u64), Some(1));
        assert_eq!(table.detach(&a, |g| *g == 1), None);
        assert_eq!(table.attachment(&a), Some(&2));
        assert_eq!(table.detach(&a, |g| *g == 2), Some(2));
    }
}
