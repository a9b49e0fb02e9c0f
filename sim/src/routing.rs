//! Routers in the simulated world: each node runs the router core (`netmachine_router::core`)
//! with engines attached, an identity store that knows every node, and a minimal shell that
//! seals the core's batches into real signed frames for the node's transport pool and opens
//! what arrives. Engines number their messages per destination, so loss, duplicates and
//! reordering show in `Traffic`, and what the simulated transport loses shows the routers'
//! acknowledgements at work; a thief node can announce an engine it does not host; an
//! engine can move from one node to another.

use crate::world::{Event, World};
use netmachine_router::core::{frame, Announcement, HandOver, Header, Input, Known, Limits, Output, Outgoing, Router, Ticket};
use netmachine_schema::{signing, Destination, EngineLocation, EngineMessage, Identity, Keypair, TopicAdvert};
use netmachine_service::config::Config;
use netmachine_transport::core::Millis;
use std::collections::BTreeMap;
use std::rc::Rc;

/// What the engines sent and what reached them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Traffic {
    pub sent: u64,
    /// Refused back to the sending engine.
    pub refused: u64,
    /// Reached the engine it was for, the first time.
    pub delivered: u64,
    pub duplicates: u64,
    /// Arrived after a later message between the same two engines.
    pub out_of_order: u64,
    /// Inside frames the simulated transport lost (written to a connection that died, or queued
    /// in a transport that crashed): the sending router sends them again, unacknowledged.
    pub in_lost_frames: u64,
}

/// A node's router and what its shell keeps.
pub struct NodeRouter {
    core: Router,
    /// The node's identity store: every node, and the engine locations recorded.
    store: BTreeMap<Identity, Known>,
    /// The identity store's topic records: adverts other nodes announced, and which node did.
    adverts: BTreeMap<Identity, (TopicAdvert, Identity)>,
    engines: BTreeMap<Identity, (Keypair, u64)>,
    next_ticket: u64,
    next_generation: u64,
    timer_at: Option<Millis>,
    /// Inputs that wait while the router's outputs are carried out (a shell feeds one at a
    /// time; a chain of frames handed over would otherwise nest without bound).
    inputs: std::collections::VecDeque<Input>,
    feeding: bool,
}

impl World {
    /// `n` nodes as `World::new` makes them, each with a router and `engines` engines attached.
    pub fn with_routers(seed: u64, n: usize, delay: Millis, loss: f64, engines: usize) -> World {
        let mut world = World::new(seed, n, delay, loss);
        let limits = Limits::from_config(&Config::default());
        let nodes: Vec<Identity> = world.nodes.iter().map(|n| n.key).collect();
        for node in 0..n {
            let store = nodes.iter().map(|id| (*id, Known::Node { trust: 128 })).collect();
            let core = Router::new(world.nodes[node].keypair.clone(), limits.clone(), 1, 1);
            world.nodes[node].router = Some(NodeRouter { core, store, adverts: BTreeMap::new(), engines: BTreeMap::new(), next_ticket: 0, next_generation: 0, timer_at: None, inputs: Default::default(), feeding: false });
            for _ in 0..engines {
                let key = Keypair::from_seed(world.rng.bytes32());
                world.attach(node, key);
            }
        }
        world
    }

    /// Where `node`'s identity store says `topic` is: its advert and the node that announced it.
    pub(crate) fn locate_topic(&mut self, node: usize, topic: Identity) -> Option<(TopicAdvert, Identity)> {
        self.router(node).adverts.get(&topic).cloned()
    }

    fn router(&mut self, node: usize) -> &mut NodeRouter {
        self.nodes[node].router.as_mut().expect("the world runs routers")
    }

    /// The router core of `node`, for requests its engines make directly (carry out what it
    /// answers with `carry_out_router`).
    pub(crate) fn router_core(&mut self, node: usize) -> &mut Router {
        &mut self.router(node).core
    }

    /// A new attachment generation on `node`.
    pub(crate) fn next_generation(&mut self, node: usize) -> u64 {
        let router = self.router(node);
        router.next_generation += 1;
        router.next_generation
    }

    /// A new ticket on `node`.
    pub(crate) fn ticket(&mut self, node: usize) -> Ticket {
        let router = self.router(node);
        router.next_ticket += 1;
        Ticket(router.next_ticket)
    }

    /// Attaches the engine `key` to `node`, located there from now.
    pub fn attach(&mut self, node: usize, key: Keypair) {
        let (now, node_id) = (self.now, self.nodes[node].key);
        let generation = self.next_generation(node);
        let location = EngineLocation::sign(&key, node_id, now);
        let router = self.router(node);
        router.core.attach(location, generation, false, now).expect("the engine attaches");
        router.engines.insert(key.identity(), (key, generation));
        self.carry_out_router(node);
    }

    /// Detaches `engine` from `node`; its key, to attach it elsewhere.
    pub fn detach(&mut self, node: usize, engine: Identity) -> Keypair {
        let now = self.now;
        let router = self.router(node);
        let (key, generation) = router.engines.remove(&engine).expect("attached there");
        router.core.detach(engine, generation, now);
        self.carry_out_router(node);
        key
    }

    /// The engines attached to `node`.
    pub fn engines(&self, node: usize) -> Vec<Identity> {
        self.nodes[node].router.as_ref().map_or_else(Vec::new, |r| r.engines.keys().copied().collect())
    }

    /// The engine `src` on `node` sends the next numbered message to engine `dst`.
    pub fn engine_send(&mut self, node: usize, src: Identity, dst: Identity) {
        let seq = self.traffic_seq.entry((src, dst)).or_insert(0);
        *seq += 1;
        let message = EngineMessage::new(src, Destination::Engine(dst), *seq, seq.to_le_bytes().to_vec());
        self.traffic.sent += 1;
        let ticket = self.ticket(node);
        self.router_input(node, Input::Send { ticket, sender: src, message, wait: true });
    }

    /// Every engine sends one message to every other engine.
    pub fn send_between_all_engines(&mut self) {
        let all: Vec<(usize, Identity)> = (0..self.len()).flat_map(|n| self.engines(n).into_iter().map(move |e| (n, e))).collect();
        for &(node, src) in &all {
            for &(_, dst) in &all {
                if src != dst {
                    self.engine_send(node, src, dst);
                }
            }
        }
    }

    /// The node `thief` tells every other node that it hosts `victim`, with a location it signs
    /// itself (it cannot sign as the engine).
    pub fn forge_announcement(&mut self, thief: usize, victim: Identity) {
        let keypair = self.nodes[thief].keypair.clone();
        let at = self.now + 60_000;
        let location = EngineLocation { engine: victim, node: keypair.identity(), at, sig: keypair.sign(&signing::engine_location(&victim, &keypair.identity(), at)) };
        let batch = vec![Outgoing::Engines(Announcement { attached: vec![location], ..Announcement::default() })];
        for node in (0..self.len()).filter(|n| *n != thief) {
            let sealed = frame::seal(&keypair, self.nodes[node].key, &Header::default(), &batch);
            self.send_bytes(thief, node, Some(Rc::new(sealed.bytes)));
        }
    }

    /// A router counter or gauge summed over every node.
    pub fn router_counter(&self, name: &str) -> u64 {
        let routers = self.nodes.iter().filter_map(|n| n.router.as_ref());
        let counters = routers.flat_map(|r| r.core.counters().into_iter().chain(r.core.gauges()));
        counters.filter(|(n, _)| *n == name).map(|(_, v)| v).sum()
    }


    pub(crate) fn connection_event(&mut self, node: usize, peer: Identity, event: netmachine_transport::events::Event) {
        if self.nodes[node].router.is_none() {
            return;
        }
        match event {
            netmachine_transport::events::Event::Connected => self.router_input(node, Input::Connected(peer)),
            netmachine_transport::events::Event::Disconnected(_) => self.router_input(node, Input::Disconnected(peer)),
            _ => {}
        }
    }

    /// A restarted transport: the router links to it again, with nothing connected yet.
    pub(crate) fn transport_restarted(&mut self, node: usize) {
        if self.nodes[node].router.is_some() {
            self.router_input(node, Input::TransportLinked(Vec::new()));
        }
    }

    pub(crate) fn frame_arrives(&mut self, dst: usize, src: usize, bytes: &[u8]) {
        let (node, peer) = (self.nodes[dst].key, self.nodes[src].key);
        let opened = frame::open(node, peer, bytes, 1 << 24).expect("frames between simulated nodes open");
        let opened = frame::verify_signatures(opened, false);
        let ticket = self.ticket(dst);
        self.router_input(dst, Input::Frame { ticket, src: peer, public: false, frame: opened });
    }

    /// Counts the engine messages inside a frame the simulated transport lost.
    pub(crate) fn frame_lost(&mut self, lost: &crate::world::Frame) {
        let Some(bytes) = &lost.bytes else { return };
        let (node, peer) = (self.nodes[lost.dst].key, self.nodes[lost.src].key);
        let opened = frame::open(node, peer, bytes, 1 << 24).expect("frames between simulated nodes open");
        self.traffic.in_lost_frames += opened.messages.len() as u64;
    }

    pub(crate) fn answer_lookup(&mut self, node: usize, id: Identity) {
        let answer = self.router(node).store.get(&id).copied();
        self.router_input(node, Input::LookupAnswer { id, answer: Ok(answer) });
    }

    pub(crate) fn router_timer(&mut self, node: usize) {
        let now = self.now;
        let router = self.router(node);
        if router.timer_at.is_some_and(|at| at <= now) {
            router.timer_at = None;
            self.router_input(node, Input::Timer);
        }
    }

    pub(crate) fn router_input(&mut self, node: usize, input: Input) {
        let now = self.now;
        self.router(node).inputs.push_back(input);
        if std::mem::replace(&mut self.router(node).feeding, true) {
            return;
        }
        while let Some(input) = self.router(node).inputs.pop_front() {
            self.router(node).core.handle(input, now);
            self.carry_out_router(node);
        }
        self.router(node).feeding = false;
    }

    pub(crate) fn carry_out_router(&mut self, node: usize) {
        while let Some(output) = self.router(node).core.poll_output() {
            match output {
                Output::Deliver { engine, generation, message } => {
                    self.delivered(&message);
                    self.delivered_to(node, engine, &message);
                    self.router_input(node, Input::Taken { engine, generation, n: 1 });
                    self.router_input(node, Input::Delivered { engine, generation, n: 1 });
                }
                Output::Settled { ticket, outcome } => {
                    if !self.pubsub_settled(node, ticket, outcome.is_ok()) {
                        self.traffic.refused += u64::from(outcome.is_err());
                    }
                }
                Output::Lookup(id) => {
                    let at = self.now + 1;
                    self.schedule(at, Event::Lookup { node, id });
                }
                Output::Transmit { node: peer, header, batch } => {
                    let sealed = frame::seal(&self.nodes[node].keypair, peer, &header, &batch);
                    let taken = self.index_of(&peer).is_some_and(|to| self.send_bytes(node, to, Some(Rc::new(sealed.bytes))));
                    let outcome = if taken { HandOver::Queued { messages: sealed.messages } } else { HandOver::Unavailable };
                    self.router_input(node, Input::HandedOver { node: peer, outcome });
                }
                // Routers are not killed in the simulation: their delivery log is not modelled.
                Output::Acknowledged { .. } | Output::Taken { .. } => {}
                Output::Record { node: from, announcement } => {
                    let store = &mut self.router(node).store;
                    for location in announcement.attached {
                        store.insert(location.engine, Known::Engine { node: location.node, at: location.at });
                    }
                    for engine in announcement.detached {
                        store.remove(&engine);
                    }
                    for advert in announcement.topics {
                        self.router(node).adverts.insert(advert.topic, (advert, from));
                    }
                }
            }
        }
        let wanted = self.router(node).core.poll_timeout();
        if wanted.is_some() && wanted != self.router(node).timer_at {
            self.router(node).timer_at = wanted;
            let at = wanted.unwrap_or_default().max(self.now);
            self.schedule(at, Event::RouterTimer { node });
        }
    }

    fn delivered(&mut self, message: &EngineMessage) {
        let Destination::Engine(dst) = message.dst else { return };
        let last = self.traffic_last.entry((message.src, dst)).or_insert(0);
        match message.id.cmp(last) {
            std::cmp::Ordering::Greater => {
                *last = message.id;
                self.traffic.delivered += 1;
            }
            std::cmp::Ordering::Equal => self.traffic.duplicates += 1,
            std::cmp::Ordering::Less => {
                self.traffic.out_of_order += 1;
                self.traffic.delivered += 1;
            }
        }
    }
}
