//! PubSub in the simulated world: each node runs the pubsub core (`netmachine_pubsub::core`)
//! behind an engine attached to its router that serves the pubsub protocol, with a minimal
//! shell that does what the real service does through its engine: peer messages go out as
//! signed engine messages through the router (and transport), mirrors and local subscriptions
//! are topic requests, and events are handed to the router, acknowledged when it took them.
//! The shell can lose a share of the pubsub messages it sends (`PubSubWorld::loss`), a loss
//! the core must repair. A topic is located as the real service does: its advert, which the
//! routers announce to connected nodes, and its publisher's location, from the node's store.

use crate::world::{Event, World};
use netmachine_pubsub::core::notice::Notice;
use netmachine_pubsub::core::{self as pubsub, Config, Input, Output, PubSub};
use netmachine_router::core::{Input as RouterInput, Ticket};
use netmachine_schema::message_capnp::Scope;
use netmachine_schema::peer::PeerRefusal;
use netmachine_schema::router_capnp::{TopicPolicy, TopicRefusal};
use netmachine_schema::{signing, Destination, EngineLocation, EngineMessage, Identity, Keypair, PeerMessage, TopicAdvert, PUBSUB_PROTOCOL};
use netmachine_transport::core::Millis;
use std::collections::BTreeMap;

/// A node's pubsub service and what its shell keeps.
pub struct NodePubSub {
    pub core: PubSub,
    key: Keypair,
    generation: u64,
    /// Events handed to the router, by ticket: (topic, seq, size).
    handed: BTreeMap<Ticket, (Identity, u64, usize)>,
    /// Peer messages sent (numbering them).
    notes: u64,
    timer_at: Option<Millis>,
}

/// What the pubsub layer of the world keeps beside the nodes.
#[derive(Default)]
pub struct PubSubWorld {
    /// The share of pubsub messages the shells lose on sending.
    pub loss: f64,
    pub lost: u64,
    /// Per engine, the seq of each event it received, in order.
    pub received: BTreeMap<Identity, Vec<u64>>,
    /// Events a publisher engine had refused.
    pub refused: u64,
    /// What each node's service told its watchers, by node.
    pub notices: Vec<(usize, Notice)>,
}

impl World {
    /// `n` nodes with routers, each with a pubsub service of `config`.
    pub fn with_pubsub(seed: u64, n: usize, delay: Millis, loss: f64, config: Config) -> World {
        let mut world = World::with_routers(seed, n, delay, loss, 0);
        for node in 0..n {
            let key = Keypair::from_seed(world.rng.bytes32());
            let core = PubSub::new(world.nodes[node].key, config);
            world.nodes[node].pubsub = Some(NodePubSub { core, key, generation: 0, handed: BTreeMap::new(), notes: 0, timer_at: None });
            world.start_pubsub(node);
        }
        world
    }

    fn pubsub(&mut self, node: usize) -> &mut NodePubSub {
        self.nodes[node].pubsub.as_mut().expect("the world runs pubsub")
    }

    /// Attaches the node's pubsub engine and serves the protocol.
    fn start_pubsub(&mut self, node: usize) {
        let (now, node_id) = (self.now, self.nodes[node].key);
        let key = self.pubsub(node).key.clone();
        let generation = self.next_generation(node);
        self.pubsub(node).generation = generation;
        let router = self.router_core(node);
        router.attach(EngineLocation::sign(&key, node_id, now), generation, false, now).expect("the pubsub engine attaches");
        router.serve(key.identity(), PUBSUB_PROTOCOL, now).expect("the node serves pubsub");
        self.carry_out_router(node);
    }

    /// Kills `node`'s pubsub service and starts a new one (its state is lost; the router's
    /// stays, and tells the new one what the node wants).
    pub fn restart_pubsub(&mut self, node: usize, config: Config) {
        let (now, node_id) = (self.now, self.nodes[node].key);
        let (engine, generation) = (self.pubsub(node).key.identity(), self.pubsub(node).generation);
        self.router_core(node).detach(engine, generation, now);
        let service = self.pubsub(node);
        service.core = PubSub::new(node_id, config);
        service.handed.clear();
        service.timer_at = None;
        self.start_pubsub(node);
    }

    /// The engine `publisher` on `node` creates a topic it publishes on; its id.
    pub fn create_topic(&mut self, node: usize, publisher: &Keypair, policy: TopicPolicy) -> Identity {
        let advert = TopicAdvert::sign(&Keypair::from_seed(self.rng.bytes32()), publisher.identity(), vec![], self.now);
        let topic = advert.topic;
        let now = self.now;
        self.router_core(node).create_topic(publisher.identity(), advert.clone(), Scope::Any, policy, 0, now).expect("the topic is created");
        self.carry_out_router(node);
        topic
    }

    /// The engine `engine` on `node` subscribes to `topic`.
    pub fn subscribe(&mut self, node: usize, engine: Identity, topic: Identity) {
        let now = self.now;
        self.router_core(node).subscribe(engine, topic, Scope::Any, 0, now).expect("the subscription is taken");
        self.topics.received.entry(engine).or_default();
        self.carry_out_router(node);
    }

    /// The engine `publisher` on `node` publishes event `seq` on `topic`.
    pub fn publish(&mut self, node: usize, publisher: &Keypair, topic: Identity, seq: u64) {
        let mut message = EngineMessage::new(publisher.identity(), Destination::Topic(topic), seq, seq.to_le_bytes().repeat(8));
        message.sig = Some(publisher.sign(&signing::engine_message(&message)));
        let ticket = self.ticket(node);
        self.router_input(node, RouterInput::Send { ticket, sender: publisher.identity(), message, wait: true });
    }

    /// A delivery by `node`'s router to `engine`: taken by the pubsub shell if it is the
    /// node's pubsub engine, recorded if it is an event for another engine.
    pub(crate) fn delivered_to(&mut self, node: usize, engine: Identity, message: &EngineMessage) {
        match self.nodes[node].pubsub.as_ref() {
            Some(service) if service.key.identity() == engine => {
                let input = match message.dst {
                    Destination::Topic(_) => Input::Published(message.clone()),
                    _ => match PeerMessage::decode(&message.body, 1 << 24) {
                        Ok(peer) => Input::Peer { from: message.src, message: peer },
                        Err(_) => return,
                    },
                };
                self.schedule(self.now, Event::PubSub { node, input });
            }
            _ => {
                // Gap markers are not events (none are expected: the history holds what is lost).
                if matches!(message.dst, Destination::Topic(_)) && message.protocol != netmachine_schema::GAP_PROTOCOL {
                    self.topics.received.entry(engine).or_default().push(message.id);
                }
            }
        }
    }

    /// The router settled `ticket`: whether it was the pubsub shell's (an event it handed over,
    /// answered to the core, or a peer message).
    pub(crate) fn pubsub_settled(&mut self, node: usize, ticket: Ticket, accepted: bool) -> bool {
        let Some(service) = self.nodes[node].pubsub.as_mut() else { return false };
        let Some((topic, seq, size)) = service.handed.remove(&ticket) else { return false };
        let input = if accepted { Input::Accepted { topic, seq, size } } else { Input::NotAccepted { topic, seq } };
        self.schedule(self.now, Event::PubSub { node, input });
        true
    }

    pub(crate) fn pubsub_input(&mut self, node: usize, input: Input) {
        let now = self.now;
        self.pubsub(node).core.handle(input, now);
        self.carry_out_pubsub(node);
    }

    pub(crate) fn pubsub_timer(&mut self, node: usize) {
        let now = self.now;
        if self.pubsub(node).timer_at.is_some_and(|at| at <= now) {
            self.pubsub(node).timer_at = None;
            self.pubsub_input(node, Input::Timer);
        }
    }

    fn carry_out_pubsub(&mut self, node: usize) {
        let now = self.now;
        let engine = self.pubsub(node).key.identity();
        while let Some(output) = self.pubsub(node).core.poll_output() {
            match output {
                Output::Send { to, message } => {
                    if self.rng.chance(self.topics.loss) {
                        self.topics.lost += 1;
                        continue;
                    }
                    let service = self.pubsub(node);
                    service.notes += 1;
                    let mut sent = EngineMessage::new(engine, to, service.notes, message.encode());
                    sent.protocol = PUBSUB_PROTOCOL.into();
                    sent.sig = Some(service.key.sign(&signing::engine_message(&sent)));
                    let ticket = self.ticket(node);
                    self.router_input(node, RouterInput::Send { ticket, sender: engine, message: sent, wait: true });
                }
                Output::Locate(topic) => {
                    if let Some((advert, publisher_node)) = self.locate_topic(node, topic) {
                        self.schedule(now + 1, Event::PubSub { node, input: Input::Located { advert, node: publisher_node } });
                    }
                }
                Output::SubscribeLocal(topic) => {
                    let answer = self.router_core(node).subscribe(engine, topic, Scope::Any, 0, now);
                    let input = match answer {
                        Ok(last_seq) => {
                            let policy = self.router_core(node).topics().find(|t| t.advert.topic == topic).map_or(TopicPolicy::Block, |t| t.policy);
                            let kept = self.router_core(node).kept_from(&topic, 1);
                            Input::SubscribedLocally { topic, policy, last_seq, kept }
                        }
                        Err(refused) => {
                            let reason = match refused.reason {
                                TopicRefusal::Unknown => PeerRefusal::Unknown,
                                _ => PeerRefusal::Denied,
                            };
                            Input::RefusedLocally { topic, reason, detail: refused.detail }
                        }
                    };
                    self.carry_out_router(node);
                    self.schedule(now, Event::PubSub { node, input });
                }
                Output::UnsubscribeLocal(topic) => {
                    let _ = self.router_core(node).unsubscribe(engine, topic, now);
                    self.carry_out_router(node);
                }
                Output::Mirror { advert, policy, after } => {
                    self.router_core(node).create_topic(engine, advert, Scope::Any, policy, after, now).expect("the mirror is created");
                    self.carry_out_router(node);
                }
                Output::Unmirror(topic) => {
                    let _ = self.router_core(node).delete_topic(engine, topic, now);
                    self.carry_out_router(node);
                }
                Output::Deliver(message) => {
                    let Destination::Topic(topic) = message.dst else { continue };
                    let ticket = self.ticket(node);
                    let size = pubsub::history::event_size(&message);
                    self.pubsub(node).handed.insert(ticket, (topic, message.id, size));
                    self.router_input(node, RouterInput::Send { ticket, sender: engine, message, wait: true });
                }
                Output::Notify(notice) => self.topics.notices.push((node, notice)),
            }
        }
        let wanted = self.pubsub(node).core.poll_timeout();
        if wanted.is_some() && wanted != self.pubsub(node).timer_at {
            self.pubsub(node).timer_at = wanted;
            self.schedule(wanted.unwrap_or_default().max(now), Event::PubSubTimer { node });
        }
    }

    /// `node`'s pubsub core, to look at its state.
    pub fn pubsub_core(&self, node: usize) -> Option<&PubSub> {
        self.nodes[node].pubsub.as_ref().map(|p| &p.core)
    }

    /// A pubsub counter summed over every node.
    pub fn pubsub_counter(&self, name: &str) -> u64 {
        let counters = self.nodes.iter().filter_map(|n| n.pubsub.as_ref()).flat_map(|p| p.core.counters().report());
        counters.filter(|(n, _)| *n == name).map(|(_, v)| v).sum()
    }

    /// How many nodes receive `topic` from its publisher's node (events flowing).
    pub fn nodes_subscribed(&self, topic: Identity) -> usize {
        let services = self.nodes.iter().filter_map(|n| n.pubsub.as_ref());
        services.filter(|p| p.core.subscriptions().any(|(t, s)| *t == topic && matches!(s.stage, pubsub::subscription::Stage::Subscribed { .. }))).count()
    }
}
