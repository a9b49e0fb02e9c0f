//! The routing table: which engines are attached here, and what is known of other identities
//! (a bounded cache of identity-store records and of engine locations other nodes announced,
//! kept current by IdentityUpdated). `route` decides where an engine's message goes.

use super::drops::Refused;
use netmachine_schema::identity_capnp::identity_record;
use netmachine_schema::message_capnp::Scope;
use netmachine_schema::{Destination, EngineMessage, Identity};
use std::collections::{HashMap, VecDeque};

/// What the router needs to know of an identity record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// An engine, attached to `node` since `at` (its signed location's time).
    Engine { node: Identity, at: u64 },
    /// A node, and how far it is trusted (0: banned).
    Node { trust: u8 },
    Topic,
    Domain,
}

impl Known {
    /// What the record is, in words.
    pub fn kind(&self) -> &'static str {
        match self {
            Known::Engine { .. } => "an engine",
            Known::Node { .. } => "a node",
            Known::Topic => "a topic",
            Known::Domain => "a domain",
        }
    }
}

impl Known {
    /// The routing-relevant part of an identity record.
    pub fn from_record(record: identity_record::Reader<'_>) -> capnp::Result<Known> {
        Ok(match record.which()? {
            identity_record::Engine(engine) => {
                let engine = engine?;
                let node = Identity::from_slice("engine.node", engine.get_node()?)
                    .map_err(|e| capnp::Error::failed(e.to_string()))?;
                Known::Engine { node, at: engine.get_at() }
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
    /// To the subscribers of a topic on this node.
    Topic(Identity),
    /// The table knows nothing of the destination: ask the identity store, then route again.
    Lookup(Identity),
    /// An engine not attached here that a message from another node is for: it may be
    /// attaching again (this router restarted), so the message waits for it.
    Absent(Identity),
    Drop(Refused),
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

    pub fn attachment_mut(&mut self, engine: &Identity) -> Option<&mut A> {
        self.attached.get_mut(engine)
    }

    pub fn attached(&self) -> impl Iterator<Item = &Identity> {
        self.attached.keys()
    }

    pub fn attachments(&self) -> impl Iterator<Item = &A> {
        self.attached.values()
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

    /// A verified location of `engine` (on `node` since `at`): learned if it is later than the
    /// one known, unless the id is known as something other than an engine (a node or a topic),
    /// which a location cannot change. Whether it was learned.
    pub fn learn_engine(&mut self, engine: Identity, node: Identity, at: u64) -> bool {
        let later = match self.known.get(&engine) {
            None => true,
            Some(Known::Engine { at: known, .. }) => at >= *known,
            Some(_) => false,
        };
        if later {
            self.learn(engine, Known::Engine { node, at });
        }
        later
    }

    /// `node` announced that `engine` left it: forgotten only if it was known on that node, so
    /// that one node cannot unroute another's engines.
    pub fn forget_engine(&mut self, engine: Identity, node: Identity) {
        if matches!(self.known.get(&engine), Some(Known::Engine { node: on, .. }) if *on == node) {
            self.updated(engine, None);
        }
    }

    /// The engines known to be attached to `node`.
    pub fn engines_on(&self, node: Identity) -> Vec<Identity> {
        let mut engines: Vec<Identity> = self.known.iter().filter(|(_, k)| matches!(k, Known::Engine { node: on, .. } if *on == node)).map(|(id, _)| *id).collect();
        engines.sort();
        engines
    }

    /// Follows an IdentityUpdated: replaces a cached record, or forgets a deleted one.
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
            return Route::Drop(Refused::expired("the message expired before it was routed"));
        }
        let remote = |node: Identity| match message.scope {
            Scope::Local => Route::Drop(Refused::no_route(format!(
                "the destination is on node {node}, but the message's scope is local"
            ))),
            _ => Route::Remote(node),
        };
        match message.dst {
            Destination::Engine(engine) => {
                if self.attached.contains_key(&engine) {
                    return Route::Local(engine);
                }
                match self.known.get(&engine) {
                    None => Route::Lookup(engine),
                    Some(Known::Engine { node, .. }) if *node == self.node => Route::Drop(Refused::no_route(format!(
                        "engine {engine} belongs to this node but is not attached"
                    ))),
                    Some(Known::Engine { node, .. }) => remote(*node),
                    Some(other) => Route::Drop(Refused::no_route(format!("{engine} is {}, not an engine", other.kind()))),
                }
            }
            Destination::Node(node) if node == self.node => Route::Node,
            Destination::Node(node) => match self.known.get(&node) {
                None => Route::Lookup(node),
                Some(Known::Node { trust: 0 }) => Route::Drop(Refused::no_route(format!("node {node} is banned (trust 0)"))),
                Some(Known::Node { .. }) => remote(node),
                Some(other) => Route::Drop(Refused::no_route(format!("{node} is {}, not a node", other.kind()))),
            },
            Destination::Topic(topic) => Route::Topic(topic),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::drops::DropReason;
    use netmachine_schema::Keypair;

    fn dropped(route: Route) -> Option<(DropReason, String)> {
        match route {
            Route::Drop(refused) => Some((refused.reason, refused.detail)),
            _ => None,
        }
    }

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
    }

    #[test]
    fn expired_messages_are_dropped_before_anything_else() {
        let mut table = RoutingTable::new(id(), 16);
        let a = id();
        table.attach(a, ());
        let mut message = to(Destination::Engine(a));
        message.expiry = Some(100);
        assert_eq!(table.route(&message, 99), Route::Local(a));
        assert!(matches!(dropped(table.route(&message, 100)), Some((DropReason::Expired, _))));
    }

    #[test]
    fn engines_known_on_other_nodes_route_remotely_unless_scope_is_local() {
        let mut table: RoutingTable<()> = RoutingTable::new(id(), 16);
        let (engine, node) = (id(), id());
        let message = to(Destination::Engine(engine));
        table.learn(engine, Known::Engine { node, at: 1 });
        assert_eq!(table.route(&message, 0), Route::Remote(node));
        let mut local = message.clone();
        local.scope = Scope::Local;
        assert!(matches!(dropped(table.route(&local, 0)), Some((DropReason::NoRoute, _))));
    }

    #[test]
    fn locations_change_only_engines_and_only_to_a_later_place() {
        let mut table: RoutingTable<()> = RoutingTable::new(id(), 16);
        let (engine, node, other, topic) = (id(), id(), id(), id());
        table.learn(topic, Known::Topic);
        assert!(!table.learn_engine(topic, other, 5));
        assert_eq!(dropped(table.route(&to(Destination::Engine(topic)), 0)), Some((DropReason::NoRoute, format!("{topic} is a topic, not an engine"))));
        assert!(table.learn_engine(engine, node, 10));
        assert!(!table.learn_engine(engine, other, 9), "an older location does not move the engine");
        assert_eq!(table.engines_on(node), vec![engine]);
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
        assert!(matches!(dropped(table.route(&to(Destination::Node(node)), 0)), Some((DropReason::NoRoute, d)) if d.contains("banned")));
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
