//! A subscriber node's side of a topic published on another node: it finds the topic's advert
//! and its publisher's node, subscribes there (and again whenever the publisher goes silent or
//! forgets it), checks each event's publisher signature, hands the router events strictly in
//! sequence, keeps the genuine events that arrive after a loss (within the window) and asks the
//! publisher to resend just the lost ones (or, when a heartbeat shows a lost tail, the tail),
//! and acknowledges what the router accepted, which opens the publisher's window. Events the publisher can no longer send are skipped as missing: the
//! engines see the gap in the sequence.

use super::notice::Notice;
use super::{Config, Counters, Millis, Output};
use netmachine_schema::peer::PeerRefusal;
use netmachine_schema::router_capnp::TopicPolicy;
use netmachine_schema::identity::Key;
use netmachine_schema::{gap_marker, signing, Destination, EngineMessage, Identity, PeerMessage, Says, TopicAdvert};
use super::history::event_size;
use std::collections::{BTreeMap, VecDeque};

/// Where a subscription stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Waiting for the topic's advert and its publisher's node.
    Locating { since: Millis },
    /// Subscribe sent to `node`'s pubsub service.
    Subscribing { node: Identity, since: Millis },
    /// Events flow from `peer`, the pubsub service of `node`.
    Subscribed { node: Identity, peer: Identity },
}

/// A topic this node receives from another.
#[derive(Debug)]
pub struct Subscription {
    topic: Identity,
    pub stage: Stage,
    advert: Option<TopicAdvert>,
    /// The seq expected next (0: whatever the publisher sends next).
    pub next: u64,
    /// The highest seq the router accepted, and the highest acknowledged to the publisher.
    accepted: u64,
    acked: u64,
    unacked_bytes: usize,
    /// When an ack is due, if one is.
    ack_due: Option<Millis>,
    /// When the publisher's node was last told anything: an ack goes at least every heartbeat,
    /// even one that acknowledges nothing new, so that a node whose engines are slow is not
    /// taken for gone (`reader_timeout`).
    last_told: Millis,
    /// Genuine events that arrived after a loss, waiting for the lost ones; and their bytes.
    early: BTreeMap<u64, EngineMessage>,
    early_bytes: usize,
    /// The resends asked and not yet answered: first seq, to last seq and when asked.
    resends: BTreeMap<u64, (u64, Millis)>,
    /// Since when resends have been outstanding: a repair that gets nowhere (the publisher's
    /// node cannot answer, though events still come) subscribes again from the next expected.
    repairing_since: Option<Millis>,
    /// When the publisher was last heard from.
    last_heard: Millis,
    /// Whether the router holds the topic for this node's engines yet.
    mirrored: bool,
    /// The publisher's key (from the advert), decompressed once.
    publisher_key: Option<Key>,
    /// The refusal last told to watchers, so that retries refused alike are told once.
    refusal_told: Option<PeerRefusal>,
}

impl Subscription {
    /// Engines here want `topic`, from `from` (0: the next event): the router's mirror after a
    /// restart of the service, or engines that subscribe again after a restart of the node.
    /// The mirror is put on the router either way (again, if it is there: that changes nothing).
    pub fn wanted(topic: Identity, from: u64, now: Millis, out: &mut VecDeque<Output>) -> Self {
        out.push_back(Output::Locate(topic));
        Subscription {
            topic,
            stage: Stage::Locating { since: now },
            advert: None,
            next: from,
            accepted: from.saturating_sub(1),
            acked: from.saturating_sub(1),
            unacked_bytes: 0,
            ack_due: None,
            last_told: now,
            early: BTreeMap::new(),
            early_bytes: 0,
            resends: BTreeMap::new(),
            repairing_since: None,
            last_heard: now,
            mirrored: false,
            refusal_told: None,
            publisher_key: None,
        }
    }

    fn to_node(&self, node: Identity, says: Says, out: &mut VecDeque<Output>) {
        out.push_back(Output::Send { to: Destination::Node(node), message: PeerMessage::new(self.topic, says) });
    }

    /// Subscribes once more where events came from: to the publisher node's service engine
    /// itself, which answers even while that service takes no new events (its window to some
    /// node is full). If it does not answer, the retry goes to the node.
    fn subscribe_again(&mut self, node: Identity, peer: Identity, counters: &mut Counters, now: Millis, out: &mut VecDeque<Output>) {
        out.push_back(Output::Send { to: Destination::Engine(peer), message: PeerMessage::new(self.topic, Says::Subscribe(self.next)) });
        counters.subscribes_sent += 1;
        self.stage = Stage::Subscribing { node, since: now };
    }

    fn subscribe_at(&mut self, node: Identity, counters: &mut Counters, now: Millis, out: &mut VecDeque<Output>) {
        self.to_node(node, Says::Subscribe(self.next), out);
        counters.subscribes_sent += 1;
        self.stage = Stage::Subscribing { node, since: now };
    }

    /// The topic's advert, and the node its publisher is attached to.
    pub fn located(&mut self, advert: TopicAdvert, node: Identity, counters: &mut Counters, now: Millis, out: &mut VecDeque<Output>) {
        if advert.topic != self.topic || advert.verify().is_err() {
            counters.adverts_refused += 1;
            return;
        }
        self.publisher_key = advert.publisher.key().ok();
        self.advert = Some(advert);
        if matches!(self.stage, Stage::Locating { .. }) {
            self.subscribe_at(node, counters, now, out);
        }
    }

    /// The publisher's node answered Subscribe: events follow from `peer`.
    pub fn subscribed(&mut self, peer: Identity, last_seq: u64, policy: TopicPolicy, now: Millis, out: &mut VecDeque<Output>) {
        let Stage::Subscribing { node, .. } = self.stage else { return };
        self.stage = Stage::Subscribed { node, peer };
        self.refusal_told = None;
        out.push_back(Output::Notify(Notice::Subscribed { topic: self.topic, node, peer }));
        self.last_heard = now;
        self.resends.clear();
        self.repairing_since = None;
        if self.next == 0 {
            self.next = last_seq + 1;
            self.accepted = last_seq;
            self.acked = last_seq;
        }
        if !self.mirrored {
            self.mirrored = true;
            let after = self.next.saturating_sub(1);
            out.push_back(Output::Mirror { advert: self.advert.clone().expect("located before subscribing"), policy, after });
        }
    }

    /// The publisher's node refused: one that forgot this node is asked again at once; any
    /// other refusal is retried after a while (the topic may yet appear there), and told.
    pub fn refused(&mut self, reason: PeerRefusal, detail: &str, counters: &mut Counters, now: Millis, out: &mut VecDeque<Output>) {
        counters.subscribes_refused += 1;
        match (reason, self.stage) {
            (PeerRefusal::NotSubscribed, Stage::Subscribed { node, peer }) => self.subscribe_again(node, peer, counters, now, out),
            (_, stage) => {
                if matches!(stage, Stage::Subscribed { .. }) || self.refusal_told != Some(reason) {
                    self.refusal_told = Some(reason);
                    let reason = format!("refused by the publisher's node ({reason:?}): {detail}");
                    out.push_back(Output::Notify(Notice::Unsubscribed { topic: self.topic, reason }));
                }
                self.stage = Stage::Locating { since: now };
            }
        }
    }

    /// The peer that events must come from, if subscribed.
    fn peer(&self) -> Option<Identity> {
        match self.stage {
            Stage::Subscribed { peer, .. } => Some(peer),
            _ => None,
        }
    }

    /// Whether events of this topic from `from` are taken, and `message` claims to be one:
    /// its publisher's signature is all that is left to check (`batch_verified`).
    pub fn expects(&self, from: Identity, message: &EngineMessage) -> bool {
        self.peer() == Some(from) && self.advert.as_ref().is_some_and(|a| a.publisher == message.src) && message.dst == Destination::Topic(self.topic)
    }

    /// Whether `message` is a genuine event of this topic: from its advertised publisher,
    /// signed by it (`signed`: its signature was verified already, in a batch).
    fn genuine(&self, message: &EngineMessage, signed: bool) -> bool {
        let Some(advert) = &self.advert else { return false };
        if message.src != advert.publisher || message.dst != Destination::Topic(self.topic) {
            return false;
        }
        let Some(sig) = &message.sig else { return false };
        signed || self.publisher_key.is_some_and(|key| key.verify(&signing::engine_message(message), sig).is_ok())
    }

    /// An event from `from`: handed on if it is the next one (with the kept ones it lets
    /// follow); a later one means something was lost: it is kept, and the lost ones asked for.
    /// `signed`: its signature was verified already.
    pub fn event(&mut self, from: Identity, message: EngineMessage, signed: bool, config: &Config, counters: &mut Counters, now: Millis, out: &mut VecDeque<Output>) {
        if self.peer() != Some(from) {
            counters.events_unexpected += 1;
            return;
        }
        self.last_heard = now;
        let seq = message.id;
        if seq < self.next || self.early.contains_key(&seq) {
            counters.events_duplicate += 1;
            return;
        }
        if !self.genuine(&message, signed) {
            counters.events_forged += 1;
            return;
        }
        if seq > self.next {
            counters.events_early += 1;
            // The lost ones: from after the kept event before this one.
            let from = self.early.range(..seq).next_back().map_or(self.next, |(kept, _)| kept + 1);
            let size = event_size(&message);
            if self.early_bytes + size <= config.window_bytes {
                self.early_bytes += size;
                self.early.insert(seq, message);
            }
            if from < seq {
                self.ask_resend(from, seq - 1, config, counters, now, out);
            }
            return;
        }
        self.hand_on(message, counters, out);
        self.hand_on_kept(counters, out);
    }

    fn hand_on(&mut self, message: EngineMessage, counters: &mut Counters, out: &mut VecDeque<Output>) {
        self.next = message.id + 1;
        counters.events_received += 1;
        out.push_back(Output::Deliver(message));
    }

    /// Hands on the kept events that follow on from the next expected.
    fn hand_on_kept(&mut self, counters: &mut Counters, out: &mut VecDeque<Output>) {
        while let Some(entry) = self.early.first_entry() {
            if *entry.key() > self.next {
                return;
            }
            let message = entry.remove();
            self.early_bytes -= event_size(&message);
            if message.id == self.next {
                self.hand_on(message, counters, out);
            }
        }
    }

    /// Events `from..=to` will never come: the next expected moves past them.
    pub fn missing(&mut self, peer: Identity, from: u64, to: u64, counters: &mut Counters, now: Millis, out: &mut VecDeque<Output>) {
        if self.peer() != Some(peer) || to < self.next || from > self.next {
            return;
        }
        self.last_heard = now;
        counters.events_missing += to + 1 - self.next;
        self.next = to + 1;
        self.accepted = self.accepted.max(to);
        if !self.early.contains_key(&self.next) {
            // No event here shows the gap yet: the engines are told it at once.
            let publisher = self.advert.as_ref().map(|a| a.publisher).expect("subscribed after locating");
            out.push_back(Output::Deliver(gap_marker(self.topic, publisher, to)));
        }
        self.hand_on_kept(counters, out);
    }

    /// The publisher's last seq: a lost tail shows.
    pub fn heartbeat(&mut self, peer: Identity, last_seq: u64, config: &Config, counters: &mut Counters, now: Millis, out: &mut VecDeque<Output>) {
        if self.peer() != Some(peer) {
            return;
        }
        self.last_heard = now;
        let from = self.early.keys().next_back().map_or(self.next, |last| last + 1);
        if last_seq >= from {
            self.ask_resend(from, last_seq, config, counters, now, out);
        }
    }

    /// Asks for the events `from..=to`, unless they were just asked for.
    fn ask_resend(&mut self, from: u64, to: u64, config: &Config, counters: &mut Counters, now: Millis, out: &mut VecDeque<Output>) {
        let Stage::Subscribed { peer, .. } = self.stage else { return };
        if self.resends.get(&from).is_some_and(|(_, at)| now < at + config.retry) {
            return;
        }
        self.resends.insert(from, (to, now));
        self.repairing_since.get_or_insert(now);
        counters.resends_asked += 1;
        out.push_back(Output::Send { to: Destination::Engine(peer), message: PeerMessage::new(self.topic, Says::Resend { from, to }) });
    }

    /// The router took the event of `seq` (of `size`) into its queue.
    pub fn accepted(&mut self, seq: u64, size: usize, config: &Config, now: Millis, out: &mut VecDeque<Output>) {
        self.accepted = self.accepted.max(seq);
        self.unacked_bytes += size;
        if self.unacked_bytes >= config.window_bytes / 4 {
            self.send_ack(now, out);
        } else if self.ack_due.is_none() {
            self.ack_due = Some(now + config.ack_delay);
        }
    }

    /// The router refused the event of `seq`: it and what followed are asked for again after
    /// a while (`tick`).
    pub fn not_accepted(&mut self, seq: u64, counters: &mut Counters, now: Millis) {
        counters.events_not_accepted += 1;
        if seq < self.next {
            self.resends = BTreeMap::from([(seq, (self.next - 1, now))]);
            self.next = seq;
            self.accepted = self.accepted.min(seq - 1);
            self.early.clear();
            self.early_bytes = 0;
        }
    }

    fn send_ack(&mut self, now: Millis, out: &mut VecDeque<Output>) {
        self.ack_due = None;
        self.unacked_bytes = 0;
        let Stage::Subscribed { peer, .. } = self.stage else { return };
        if self.accepted > self.acked {
            self.acked = self.accepted;
            self.last_told = now;
            out.push_back(Output::Send { to: Destination::Engine(peer), message: PeerMessage::new(self.topic, Says::Ack(self.acked)) });
        }
    }

    /// Time passes: a due ack goes; an unanswered locate or subscribe is tried again; a
    /// publisher silent for too long is subscribed to again; a refused event is asked for.
    pub fn tick(&mut self, config: &Config, counters: &mut Counters, now: Millis, out: &mut VecDeque<Output>) {
        if self.ack_due.is_some_and(|at| at <= now) {
            self.send_ack(now, out);
        }
        if let Stage::Subscribed { peer, .. } = self.stage {
            if now >= self.last_told + config.heartbeat {
                self.last_told = now;
                out.push_back(Output::Send { to: Destination::Engine(peer), message: PeerMessage::new(self.topic, Says::Ack(self.acked)) });
            }
        }
        match self.stage {
            Stage::Locating { since } if now >= since + config.retry => {
                self.stage = Stage::Locating { since: now };
                out.push_back(Output::Locate(self.topic));
            }
            Stage::Subscribing { node, since } if now >= since + config.retry => self.subscribe_at(node, counters, now, out),
            Stage::Subscribed { node, peer } if now >= self.last_heard + config.silence() => {
                counters.publishers_silent += 1;
                self.subscribe_again(node, peer, counters, now, out);
            }
            Stage::Subscribed { node, peer } if self.repairing_since.is_some_and(|since| now >= since + config.silence()) && self.next_missing() => {
                counters.repairs_stuck += 1;
                self.repairing_since = None;
                self.resends.clear();
                self.subscribe_again(node, peer, counters, now, out);
            }
            Stage::Subscribed { .. } => {
                // Resends answered (or overtaken) go; unanswered ones are asked again.
                let next = self.next;
                self.resends.retain(|_, (to, _)| *to >= next);
                if self.resends.is_empty() {
                    self.repairing_since = None;
                }
                let late: Vec<(u64, u64)> = self.resends.iter().filter(|(_, (_, at))| now >= at + config.retry).map(|(from, (to, _))| (*from, *to)).collect();
                for (from, to) in late {
                    self.resends.remove(&from);
                    if let Some(first_lost) = (from.max(next)..=to).find(|seq| !self.early.contains_key(seq)) {
                        self.ask_resend(first_lost, to, config, counters, now, out);
                    }
                }
                // A hole before the kept events that nothing asks for (its resend was answered
                // by events lost again, and those after it come only as repeats now).
                if let Some(&first_kept) = self.early.keys().next() {
                    if first_kept > next && !self.resends.values().any(|(to, _)| *to >= next) {
                        self.ask_resend(next, first_kept - 1, config, counters, now, out);
                    }
                }
            }
            _ => {}
        }
    }

    /// Whether an asked-for event is still missing (not answered, nor overtaken).
    fn next_missing(&self) -> bool {
        self.resends.values().any(|(to, _)| *to >= self.next)
    }

    /// When `tick` next has something to do.
    pub fn next_tick(&self, config: &Config) -> Millis {
        let stage = match self.stage {
            Stage::Locating { since } | Stage::Subscribing { since, .. } => since + config.retry,
            Stage::Subscribed { .. } => {
                let resend = self.resends.values().map(|(_, at)| at + config.retry).min().unwrap_or(Millis::MAX);
                let stuck = self.repairing_since.map_or(Millis::MAX, |since| since + config.silence());
                resend.min(stuck).min(self.last_heard + config.silence()).min(self.last_told + config.heartbeat)
            }
        };
        self.ack_due.map_or(stage, |at| at.min(stage))
    }

    /// No engine here wants the topic any more: the publisher's node is told.
    pub fn unwanted(self, out: &mut VecDeque<Output>) {
        if let Stage::Subscribing { node, .. } | Stage::Subscribed { node, .. } = self.stage {
            self.to_node(node, Says::Unsubscribe, out);
        }
        if let Stage::Subscribed { .. } = self.stage {
            let reason = "no engine on this node subscribes any more".to_string();
            out.push_back(Output::Notify(Notice::Unsubscribed { topic: self.topic, reason }));
        }
        if self.mirrored {
            out.push_back(Output::Unmirror(self.topic));
        }
    }
}
