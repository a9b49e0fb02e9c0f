//! The pubsub service's decisions, free of I/O: which topics this node receives from other
//! nodes (`subscription`: sequence, repair, acknowledgements), which of its own topics it
//! feeds to other nodes (`publication`: readers and their windows, from a bounded `history`),
//! and the state machine that joins them to what the router and peers say (`PubSub`). The
//! service's shell feeds it what happened and carries out what it answers; the simulation in
//! `sim/` drives one on each of many nodes.

pub mod history;
pub mod notice;
pub mod publication;
pub mod subscription;

use history::HistoryLimits;
use notice::Notice;
use netmachine_schema::peer::PeerRefusal;
use netmachine_schema::router_capnp::TopicPolicy;
use netmachine_schema::{Destination, EngineMessage, Identity, PeerMessage, Says, TopicAdvert};
use publication::Publication;
use std::collections::{BTreeMap, VecDeque};
use subscription::Subscription;

/// Milliseconds on the service's clock.
pub type Millis = u64;

/// The service's settings (`[pubsub]` in the node's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Bytes each subscriber node may have unacknowledged: the backpressure window.
    pub window_bytes: usize,
    pub history: HistoryLimits,
    /// An idle publication tells its readers its last seq this often.
    pub heartbeat: Millis,
    /// How long a locate, a subscribe or a resend waits for an answer before it is tried again.
    pub retry: Millis,
    /// How long an accepted event may wait to be acknowledged.
    pub ack_delay: Millis,
    /// A reader node that says nothing for this long while events wait for it is dropped
    /// (subscriber nodes acknowledge at least every heartbeat, even when their engines are slow).
    pub reader_timeout: Millis,
    /// Subscriber nodes one topic is fed to at most.
    pub max_readers: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            window_bytes: 1 << 20,
            history: HistoryLimits { events: 100_000, bytes: 64 << 20, age: 600_000 },
            heartbeat: 1_000,
            retry: 500,
            ack_delay: 5,
            reader_timeout: 30_000,
            max_readers: 1024,
        }
    }
}

impl Config {
    /// A publisher silent this long (no event, no heartbeat) is subscribed to again.
    pub fn silence(&self) -> Millis {
        3 * self.heartbeat
    }
}

/// What happened, for the core.
#[derive(Debug)]
pub enum Input {
    /// A pubsub message from engine `from`: another node's pubsub service, or this node's
    /// router (Want, Unwant).
    Peer { from: Identity, message: PeerMessage },
    /// Several from one service, in order (a batch): the events' signatures are checked
    /// together, as one ed25519 batch.
    Peers { from: Identity, messages: Vec<PeerMessage> },
    /// The topic's advert and the node its publisher is attached to.
    Located { advert: TopicAdvert, node: Identity },
    /// The router subscribed the service to its topic, with what it kept of the topic's events
    /// for the service (a service that restarted loses nothing its readers had not taken).
    SubscribedLocally { topic: Identity, policy: TopicPolicy, last_seq: u64, kept: Vec<EngineMessage> },
    /// The router refused to subscribe the service to its topic.
    RefusedLocally { topic: Identity, reason: PeerRefusal, detail: String },
    /// An event of a topic on this node, from the service's subscription.
    Published(EngineMessage),
    /// The router took an event handed over with [`Output::Deliver`] (or refused it).
    Accepted { topic: Identity, seq: u64, size: usize },
    NotAccepted { topic: Identity, seq: u64 },
    Timer,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send to another node's pubsub service: to a node (its router hands the message to the
    /// engine serving the pubsub protocol) or to the service's engine.
    Send { to: Destination, message: PeerMessage },
    /// Find the topic's advert and its publisher's node (answer with [`Input::Located`]).
    Locate(Identity),
    /// Subscribe the service to a topic on this node.
    SubscribeLocal(Identity),
    UnsubscribeLocal(Identity),
    /// Put the topic on this node's router for the engines that want it, with the policy it
    /// has at its publisher's node (a slow engine here is cut, or holds the rest, as there);
    /// events follow.
    Mirror { advert: TopicAdvert, policy: TopicPolicy, after: u64 },
    Unmirror(Identity),
    /// Hand an event of a topic from another node to this node's router.
    Deliver(EngineMessage),
    /// Tell those who watch the service.
    Notify(Notice),
}

/// What the service counted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counters {
    pub events_forwarded: u64,
    pub events_received: u64,
    pub events_duplicate: u64,
    /// Arrived after a gap: something before was lost, and a resend was asked.
    pub events_early: u64,
    /// Not signed by the topic's publisher: dropped, never handed on.
    pub events_forged: u64,
    /// From an engine that is not the topic's publisher node.
    pub events_unexpected: u64,
    /// Gone from the publisher's history before this node had them: the engines see a gap.
    pub events_missing: u64,
    pub events_not_accepted: u64,
    pub resends_asked: u64,
    /// Repairs that got nowhere for a while: the subscriber node subscribed again.
    pub repairs_stuck: u64,
    pub resends_served: u64,
    pub heartbeats_sent: u64,
    pub subscribes_sent: u64,
    pub subscribes_refused: u64,
    pub publishers_silent: u64,
    pub readers_dropped: u64,
    /// Subscriber nodes refused because the topic went to `max_readers` already.
    pub readers_refused: u64,
    pub adverts_refused: u64,
    pub malformed: u64,
}

impl Counters {
    /// Every counter by name, for status reports.
    pub fn report(&self) -> [(&'static str, u64); 19] {
        [
            ("events_forwarded", self.events_forwarded),
            ("events_received", self.events_received),
            ("events_duplicate", self.events_duplicate),
            ("events_early", self.events_early),
            ("events_forged", self.events_forged),
            ("events_unexpected", self.events_unexpected),
            ("events_missing", self.events_missing),
            ("events_not_accepted", self.events_not_accepted),
            ("resends_asked", self.resends_asked),
            ("repairs_stuck", self.repairs_stuck),
            ("resends_served", self.resends_served),
            ("heartbeats_sent", self.heartbeats_sent),
            ("subscribes_sent", self.subscribes_sent),
            ("subscribes_refused", self.subscribes_refused),
            ("publishers_silent", self.publishers_silent),
            ("readers_dropped", self.readers_dropped),
            ("readers_refused", self.readers_refused),
            ("adverts_refused", self.adverts_refused),
            ("malformed", self.malformed),
        ]
    }
}

/// One node's pubsub state machine.
#[derive(Debug)]
pub struct PubSub {
    node: Identity,
    config: Config,
    subscriptions: BTreeMap<Identity, Subscription>,
    publications: BTreeMap<Identity, Publication>,
    counters: Counters,
    outputs: VecDeque<Output>,
}

impl PubSub {
    /// The service of `node` (whose router alone may say Want and Unwant).
    pub fn new(node: Identity, config: Config) -> Self {
        PubSub { node, config, subscriptions: BTreeMap::new(), publications: BTreeMap::new(), counters: Counters::default(), outputs: VecDeque::new() }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When the core next wants [`Input::Timer`].
    pub fn poll_timeout(&self) -> Option<Millis> {
        let subscriptions = self.subscriptions.values().map(|s| s.next_tick(&self.config));
        let publications = self.publications.values().filter_map(|p| p.next_tick(&self.config));
        subscriptions.chain(publications).min()
    }

    /// Whether the service may take another event from its router: under policy Block, not
    /// while a subscriber node's window is full.
    pub fn has_room(&self) -> bool {
        self.publications.values().all(|p| p.has_room(&self.config))
    }

    /// The topics received from other nodes, with the seq each expects next.
    pub fn subscriptions(&self) -> impl Iterator<Item = (&Identity, &Subscription)> {
        self.subscriptions.iter()
    }

    /// The topics fed to other nodes.
    pub fn publications(&self) -> impl Iterator<Item = (&Identity, &Publication)> {
        self.publications.iter()
    }

    pub fn handle(&mut self, input: Input, now: Millis) {
        let (config, counters, out) = (&self.config, &mut self.counters, &mut self.outputs);
        match input {
            Input::Peer { from, message } => self.peer(from, message, false, now),
            Input::Peers { from, messages } => {
                let signed = self.batch_signed(from, &messages);
                for message in messages {
                    self.peer(from, message, signed, now);
                }
            }
            Input::Located { advert, node } => {
                if let Some(subscription) = self.subscriptions.get_mut(&advert.topic) {
                    subscription.located(advert, node, counters, now, out);
                }
            }
            Input::SubscribedLocally { topic, policy, last_seq, kept } => {
                if let Some(publication) = self.publications.get_mut(&topic) {
                    publication.subscribed_locally(policy, last_seq, kept, config, now, out);
                }
            }
            Input::RefusedLocally { topic, reason, detail } => {
                if let Some(publication) = self.publications.remove(&topic) {
                    publication.refused_locally(Says::Refused { reason, detail }, out);
                }
            }
            Input::Published(message) => {
                let Destination::Topic(topic) = message.dst else { return };
                if let Some(publication) = self.publications.get_mut(&topic) {
                    let readers = publication.readers.len() as u64;
                    publication.published(message, config, now, out);
                    counters.events_forwarded += readers;
                }
            }
            Input::Accepted { topic, seq, size } => {
                if let Some(subscription) = self.subscriptions.get_mut(&topic) {
                    subscription.accepted(seq, size, config, now, out);
                }
            }
            Input::NotAccepted { topic, seq } => {
                if let Some(subscription) = self.subscriptions.get_mut(&topic) {
                    subscription.not_accepted(seq, counters, now);
                }
            }
            Input::Timer => {
                for subscription in self.subscriptions.values_mut() {
                    subscription.tick(config, counters, now, out);
                }
                for publication in self.publications.values_mut() {
                    publication.tick(config, counters, now, out);
                }
                self.leave_unread();
            }
        }
    }

    /// Whether every event in `messages` that a subscription here takes from `from` carries a
    /// good signature by its publisher, checked as one batch (else each is checked alone).
    fn batch_signed(&self, from: Identity, messages: &[PeerMessage]) -> bool {
        let expected = messages.iter().filter_map(|m| match &m.says {
            Says::Event(event) => self.subscriptions.get(&m.topic).filter(|s| s.expects(from, event)).map(|_| event),
            _ => None,
        });
        let expected: Vec<&EngineMessage> = expected.collect();
        expected.len() > 1 && netmachine_schema::batch::all_verify(expected.into_iter())
    }

    /// `signed`: every event in it that a subscription here expects from `from` was verified.
    fn peer(&mut self, from: Identity, message: PeerMessage, signed: bool, now: Millis) {
        let (config, counters, out) = (&self.config, &mut self.counters, &mut self.outputs);
        let topic = message.topic;
        let from_router = from == self.node;
        match message.says {
            Says::Want(from_seq) if from_router => {
                self.subscriptions.entry(topic).or_insert_with(|| Subscription::wanted(topic, from_seq, now, out));
            }
            Says::Unwant if from_router => {
                if let Some(subscription) = self.subscriptions.remove(&topic) {
                    subscription.unwanted(out);
                }
            }
            Says::Want(_) | Says::Unwant => counters.malformed += 1,
            Says::Subscribe(from_seq) => match self.publications.get_mut(&topic) {
                Some(publication) => publication.subscribe(from, from_seq, config, counters, now, out),
                None => {
                    self.publications.insert(topic, Publication::asked(topic, from, from_seq, config, out));
                }
            },
            Says::Unsubscribe => {
                let was = self.publications.get_mut(&topic).is_some_and(|p| p.unsubscribe(from, out));
                if was {
                    let reason = "it unsubscribed".to_string();
                    out.push_back(Output::Notify(Notice::ReaderLeft { topic, reader: from, reason }));
                }
                if !was {
                    let detail = format!("{from} does not subscribe to topic {topic} here");
                    let refused = Says::Refused { reason: PeerRefusal::NotSubscribed, detail };
                    out.push_back(Output::Send { to: Destination::Engine(from), message: PeerMessage::new(topic, refused) });
                }
                self.leave_unread();
            }
            Says::Ack(upto) => self.on_publication(topic, from, |p, config, _, out| p.ack(from, upto, config, now, out)),
            Says::Resend { from: first, to } => self.on_publication(topic, from, |p, _, counters, out| p.resend(from, first, to, counters, now, out)),
            Says::Subscribed { last_seq, policy } => {
                if let Some(subscription) = self.subscriptions.get_mut(&topic) {
                    subscription.subscribed(from, last_seq, policy, now, out);
                }
            }
            Says::Refused { reason, detail } => {
                if let Some(subscription) = self.subscriptions.get_mut(&topic) {
                    subscription.refused(reason, &detail, counters, now, out);
                }
            }
            Says::Unsubscribed => {}
            Says::Event(event) => match self.subscriptions.get_mut(&topic) {
                Some(subscription) => subscription.event(from, event, signed, config, counters, now, out),
                None => counters.events_unexpected += 1,
            },
            Says::Missing { from: first, to } => {
                if let Some(subscription) = self.subscriptions.get_mut(&topic) {
                    subscription.missing(from, first, to, counters, now, out);
                }
            }
            Says::Heartbeat(last_seq) => {
                if let Some(subscription) = self.subscriptions.get_mut(&topic) {
                    subscription.heartbeat(from, last_seq, config, counters, now, out);
                }
            }
        }
    }

    /// Runs `act` on the publication of `topic`, or tells `from` it reads no such topic here.
    fn on_publication(&mut self, topic: Identity, from: Identity, act: impl FnOnce(&mut Publication, &Config, &mut Counters, &mut VecDeque<Output>)) {
        match self.publications.get_mut(&topic) {
            Some(publication) => act(publication, &self.config, &mut self.counters, &mut self.outputs),
            None => {
                let detail = format!("topic {topic} is not sent from this node");
                let refused = Says::Refused { reason: PeerRefusal::NotSubscribed, detail };
                self.outputs.push_back(Output::Send { to: Destination::Engine(from), message: PeerMessage::new(topic, refused) });
            }
        }
    }

    /// Publications no node reads any more: the service leaves their topics.
    fn leave_unread(&mut self) {
        let unread: Vec<Identity> = self.publications.iter().filter(|(_, p)| p.is_unread()).map(|(t, _)| *t).collect();
        for topic in unread {
            self.publications.remove(&topic);
            self.outputs.push_back(Output::UnsubscribeLocal(topic));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmachine_schema::{signing, Keypair};

    /// A publisher node's service (`a`) and a subscriber node's (`b`), joined by a wire that
    /// can lose what is on it; `b`'s router accepts every event at once.
    struct Pair {
        a: PubSub,
        b: PubSub,
        a_engine: Identity,
        b_engine: Identity,
        b_node: Identity,
        publisher: Keypair,
        advert: TopicAdvert,
        seq: u64,
        now: Millis,
        /// Events the subscriber node handed its router, by seq.
        delivered: Vec<u64>,
        /// The last seq of each gap marker handed over.
        gaps: Vec<u64>,
        /// What goes on the wire is dropped while this says so.
        lose: Box<dyn FnMut(&Says) -> bool>,
        /// What each service told its watchers.
        a_notices: Vec<Notice>,
        b_notices: Vec<Notice>,
    }

    impl Pair {
        fn new(config: Config) -> Pair {
            let (a_node, b_node) = (Keypair::generate().identity(), Keypair::generate().identity());
            let publisher = Keypair::generate();
            let advert = TopicAdvert::sign(&Keypair::generate(), publisher.identity(), vec![], 1);
            Pair {
                a: PubSub::new(a_node, config),
                b: PubSub::new(b_node, config),
                a_engine: Keypair::generate().identity(),
                b_engine: Keypair::generate().identity(),
                b_node,
                publisher,
                advert,
                seq: 0,
                now: 0,
                delivered: Vec::new(),
                gaps: Vec::new(),
                lose: Box::new(|_| false),
                a_notices: Vec::new(),
                b_notices: Vec::new(),
            }
        }

        fn topic(&self) -> Identity {
            self.advert.topic
        }

        /// Engines on `b` want the topic; `b` subscribes at `a`, which subscribes locally.
        fn subscribe(&mut self) {
            let want = PeerMessage::new(self.topic(), Says::Want(0));
            self.b.handle(Input::Peer { from: self.b_node, message: want }, self.now);
            self.run();
        }

        fn event(&mut self, signer: &Keypair) -> EngineMessage {
            self.seq += 1;
            let mut message = EngineMessage::new(self.publisher.identity(), Destination::Topic(self.topic()), self.seq, vec![7; 200]);
            message.sig = Some(signer.sign(&signing::engine_message(&message)));
            message
        }

        fn publish(&mut self, n: usize) {
            for _ in 0..n {
                let event = self.event(&self.publisher.clone());
                self.a.handle(Input::Published(event), self.now);
            }
            self.run();
        }

        /// Carries out both cores' outputs until neither has any.
        fn run(&mut self) {
            loop {
                let mut any = false;
                while let Some(output) = self.a.poll_output() {
                    any = true;
                    match output {
                        Output::SubscribeLocal(topic) => {
                            self.a.handle(Input::SubscribedLocally { topic, policy: TopicPolicy::Block, last_seq: self.seq, kept: Vec::new() }, self.now)
                        }
                        Output::Send { message, .. } if !(self.lose)(&message.says) => {
                            self.b.handle(Input::Peer { from: self.a_engine, message }, self.now)
                        }
                        Output::Notify(notice) => self.a_notices.push(notice),
                        _ => {}
                    }
                }
                while let Some(output) = self.b.poll_output() {
                    any = true;
                    match output {
                        Output::Locate(_) => self.b.handle(Input::Located { advert: self.advert.clone(), node: Keypair::generate().identity() }, self.now),
                        Output::Send { message, .. } if !(self.lose)(&message.says) => {
                            self.a.handle(Input::Peer { from: self.b_engine, message }, self.now)
                        }
                        Output::Deliver(message) => {
                            match message.protocol == netmachine_schema::GAP_PROTOCOL {
                                true => self.gaps.push(message.id),
                                false => self.delivered.push(message.id),
                            }
                            let size = history::event_size(&message);
                            self.b.handle(Input::Accepted { topic: self.topic(), seq: message.id, size }, self.now);
                        }
                        Output::Notify(notice) => self.b_notices.push(notice),
                        _ => {}
                    }
                }
                if !any {
                    return;
                }
            }
        }

        /// Advances the clock to each core's next timer, up to `until`.
        fn run_until(&mut self, until: Millis) {
            while let Some(at) = [self.a.poll_timeout(), self.b.poll_timeout()].into_iter().flatten().min().filter(|at| *at <= until) {
                self.now = at.max(self.now);
                self.a.handle(Input::Timer, self.now);
                self.b.handle(Input::Timer, self.now);
                self.run();
            }
            self.now = until;
        }
    }

    #[test]
    fn events_flow_in_order_and_a_full_window_holds_the_publisher_until_acknowledged() {
        let config = Config { window_bytes: 10 * 328, ..Config::default() };
        let mut pair = Pair::new(config);
        pair.publish(3);
        pair.subscribe();
        assert_eq!(pair.b.subscriptions().next().unwrap().1.next, 4, "a new subscriber starts after the last event");
        // The ack waits for its delay or a quarter of the window: the window fills first.
        pair.lose = Box::new(|says| matches!(says, Says::Ack(_)));
        pair.publish(12);
        assert_eq!(pair.delivered, (4..=13).collect::<Vec<_>>(), "ten events fill the window");
        assert!(!pair.a.has_room(), "under Block, a full window stops the service taking events");
        pair.lose = Box::new(|_| false);
        pair.run_until(pair.now + config.ack_delay);
        assert!(pair.a.has_room());
        assert_eq!(pair.delivered, (4..=15).collect::<Vec<_>>(), "the rest follows the ack");
    }

    #[test]
    fn watchers_are_told_of_subscriptions_readers_and_full_windows_once_each() {
        let config = Config { window_bytes: 10 * 328, ..Config::default() };
        let mut pair = Pair::new(config);
        let (topic, reader) = (pair.topic(), pair.b_engine);
        pair.subscribe();
        assert!(matches!(pair.b_notices.as_slice(), [Notice::Subscribed { topic: t, peer, .. }] if *t == topic && *peer == pair.a_engine), "{:?}", pair.b_notices);
        assert_eq!(pair.a_notices, vec![Notice::ReaderAdded { topic, reader }]);
        pair.lose = Box::new(|says| matches!(says, Says::Ack(_)));
        pair.publish(15);
        let full = Notice::ReaderFull { topic, reader };
        assert_eq!(pair.a_notices[1..], [full.clone()], "told once while the window stays full");
        pair.lose = Box::new(|_| false);
        pair.run_until(pair.now + config.ack_delay);
        pair.lose = Box::new(|says| matches!(says, Says::Ack(_)));
        pair.publish(15);
        assert_eq!(pair.a_notices[1..], [full.clone(), full], "full again after it had room");
        pair.lose = Box::new(|_| false);

        let unwant = PeerMessage::new(topic, Says::Unwant);
        pair.b.handle(Input::Peer { from: pair.b_node, message: unwant }, pair.now);
        pair.run();
        assert!(matches!(pair.b_notices.last(), Some(Notice::Unsubscribed { topic: t, .. }) if *t == topic), "{:?}", pair.b_notices);
        assert!(matches!(pair.a_notices.last(), Some(Notice::ReaderLeft { reader: r, .. }) if *r == reader), "{:?}", pair.a_notices);
    }

    #[test]
    fn a_lost_event_and_a_lost_tail_are_resent_and_nothing_arrives_twice() {
        let config = Config::default();
        let mut pair = Pair::new(config);
        pair.subscribe();
        let mut lost = 0;
        pair.lose = Box::new(move |says| {
            let drop = matches!(says, Says::Event(e) if e.id % 4 == 0 && e.id < 40);
            lost += u64::from(drop);
            drop && lost < 12
        });
        pair.publish(50);
        pair.lose = Box::new(|_| false);
        pair.run_until(pair.now + 3 * config.heartbeat);
        assert_eq!(pair.delivered, (1..=50).collect::<Vec<_>>());
        let counters = pair.b.counters();
        assert!(counters.resends_asked >= 1 && counters.events_early >= 1, "{counters:?}");

        // The tail: the last three events are lost, and the publisher goes quiet.
        pair.lose = Box::new(|says| matches!(says, Says::Event(e) if e.id > 50));
        pair.publish(3);
        pair.lose = Box::new(|_| false);
        pair.run_until(pair.now + 2 * config.heartbeat);
        assert_eq!(pair.delivered, (1..=53).collect::<Vec<_>>(), "the heartbeat shows the lost tail");
    }

    #[test]
    fn a_repair_the_publisher_never_answers_while_events_still_come_subscribes_again() {
        let config = Config::default();
        let mut pair = Pair::new(config);
        pair.subscribe();
        // Event 5 is lost once and so is every resend asked; later events keep the publisher heard.
        let mut lost_once = false;
        pair.lose = Box::new(move |says| match says {
            Says::Event(e) if e.id == 5 && !lost_once => {
                lost_once = true;
                true
            }
            says => matches!(says, Says::Resend { .. }),
        });
        pair.publish(5);
        for _ in 0..10 {
            pair.publish(1);
            pair.run_until(pair.now + config.heartbeat / 2);
        }
        assert_eq!(pair.delivered, (1..=15).collect::<Vec<_>>(), "subscribed again from the hole, every event arrives once");
        let counters = pair.b.counters();
        assert!(counters.repairs_stuck >= 1 && counters.publishers_silent == 0, "{counters:?}");
    }

    #[test]
    fn events_gone_from_history_are_reported_missing_and_forged_ones_are_dropped() {
        let config = Config { history: HistoryLimits { events: 5, bytes: 1 << 20, age: 60_000 }, ..Config::default() };
        let mut pair = Pair::new(config);
        pair.subscribe();
        pair.lose = Box::new(|says| matches!(says, Says::Event(e) if e.id <= 10));
        pair.publish(10);
        pair.lose = Box::new(|_| false);
        pair.publish(1);
        pair.run_until(pair.now + 3 * config.heartbeat);
        assert_eq!(pair.delivered, (7..=11).collect::<Vec<_>>(), "only the five the history holds");
        assert_eq!((pair.b.counters().events_missing, pair.gaps.clone()), (6, vec![6]), "the engines are told of 1..=6 at once");

        let intruder = Keypair::generate();
        let forged = pair.event(&intruder);
        let message = PeerMessage::new(pair.topic(), Says::Event(forged));
        pair.b.handle(Input::Peer { from: pair.a_engine, message }, pair.now);
        pair.run();
        assert_eq!((pair.b.counters().events_forged, pair.delivered.len()), (1, 5), "a forged event is dropped");
    }

    #[test]
    fn a_batch_of_events_is_verified_as_one_and_a_forged_event_in_it_is_still_dropped() {
        let mut pair = Pair::new(Config::default());
        pair.subscribe();
        let topic = pair.topic();
        let publisher = pair.publisher.clone();
        let events = |pair: &mut Pair, forge: Option<u64>| -> Vec<PeerMessage> {
            (0..8).map(|_| {
                let signer = match forge == Some(pair.seq + 1) { true => Keypair::generate(), false => publisher.clone() };
                PeerMessage::new(topic, Says::Event(pair.event(&signer)))
            }).collect()
        };
        let good = events(&mut pair, None);
        pair.b.handle(Input::Peers { from: pair.a_engine, messages: good }, pair.now);
        pair.run();
        assert_eq!(pair.delivered, (1..=8).collect::<Vec<_>>(), "a good batch is taken whole");
        let forged = events(&mut pair, Some(12));
        pair.b.handle(Input::Peers { from: pair.a_engine, messages: forged }, pair.now);
        pair.run();
        assert_eq!(pair.b.counters().events_forged, 1, "the forged one is found and dropped");
        assert_eq!(pair.delivered, (1..=11).collect::<Vec<_>>(), "those before it are taken; after it, they wait for it");
        let from_elsewhere = events(&mut pair, None);
        pair.b.handle(Input::Peers { from: Keypair::generate().identity(), messages: from_elsewhere }, pair.now);
        assert_eq!(pair.b.counters().events_unexpected, 8, "a batch from an engine that does not feed the topic is dropped");
    }

    #[test]
    fn a_restarted_publisher_service_is_subscribed_to_again() {
        let config = Config::default();
        let mut pair = Pair::new(config);
        pair.subscribe();
        pair.publish(5);
        pair.a = PubSub::new(Keypair::generate().identity(), config);
        pair.publish(5);
        pair.run_until(pair.now + 2 * config.silence());
        assert_eq!(pair.gaps, vec![10], "the engines hear of the gap before any later event");
        pair.publish(2);
        assert_eq!(pair.delivered, (1..=5).chain(11..=12).collect::<Vec<_>>(), "what the new service never saw is missing");
        // The pending ack reached the new service, which refused it: the refusal resubscribed.
        let counters = pair.b.counters();
        assert_eq!((counters.subscribes_refused, counters.subscribes_sent, counters.events_missing), (1, 2, 5));
    }

    #[test]
    fn a_topic_goes_to_max_readers_nodes_and_the_next_is_refused_with_a_reason() {
        let config = Config { max_readers: 2, ..Config::default() };
        let mut pair = Pair::new(config);
        pair.subscribe();
        let topic = pair.topic();
        let mut refusals = Vec::new();
        for _ in 0..2 {
            let reader = Keypair::generate().identity();
            pair.a.handle(Input::Peer { from: reader, message: PeerMessage::new(topic, Says::Subscribe(0)) }, pair.now);
            while let Some(output) = pair.a.poll_output() {
                if let Output::Send { message: PeerMessage { says: Says::Refused { reason, .. }, .. }, .. } = output {
                    refusals.push(reason);
                }
            }
        }
        assert_eq!(refusals, vec![PeerRefusal::Denied], "the second reader fits, the third does not");
        assert_eq!((pair.a.counters().readers_refused, pair.a.publications().next().unwrap().1.readers.len()), (1, 2));
        pair.publish(1);
        assert_eq!(pair.delivered, vec![1], "the readers taken are still fed");
    }
}
