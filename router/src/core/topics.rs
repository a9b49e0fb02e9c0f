//! The topics held on this node: each one's signed advert (which names the one engine that may
//! publish on it), the engine that created it (the only one that may delete it), its scope and
//! backpressure policy, the sequence of its last event, and its subscribers. The rules of topic
//! requests (SPEC.md "Router") and of who may publish live here; the router core routes events
//! through them. A topic on another node that engines here subscribe to is *wanted* until the
//! pubsub service puts it here as a *mirror* (a topic the service created, whose events it
//! hands over from the publisher's node); its subscribers move onto the mirror then.

use super::drops::Refused;
use netmachine_schema::message_capnp::Scope;
use netmachine_schema::router_capnp::{TopicPolicy, TopicRefusal};
use netmachine_schema::{EngineMessage, Identity, TopicAdvert, PEER_EVENT_OVERHEAD, SEQ_NOT_KNOWN};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// A topic on this node.
#[derive(Debug, Clone)]
pub struct Topic {
    pub advert: TopicAdvert,
    pub creator: Identity,
    pub scope: Scope,
    pub policy: TopicPolicy,
    /// The sequence of the last event routed (0: none yet).
    pub last_seq: u64,
    pub subscribers: BTreeSet<Identity>,
    /// Deliveries skipped because a subscriber had no room (policy CutSlow).
    pub events_cut: u64,
    /// The pubsub service reads the topic (or did): its latest events are kept for it.
    pub carried: bool,
    /// The latest events, kept for the pubsub service (`KEPT_EVENTS`, `KEPT_BYTES` at most),
    /// so that a service that restarted, or its readers, lose nothing it had not passed on.
    pub kept: VecDeque<EngineMessage>,
    kept_bytes: usize,
}

/// Events kept per topic the pubsub service reads, at most, and their bytes.
const KEPT_EVENTS: usize = 16_384;
const KEPT_BYTES: usize = 16 << 20;

impl Topic {
    /// Keeps `event` for the pubsub service, if it reads the topic; the oldest go past the bounds.
    pub fn keep(&mut self, event: &EngineMessage) {
        if !self.carried {
            return;
        }
        self.kept_bytes += event.body.len();
        self.kept.push_back(event.clone());
        while self.kept.len() > KEPT_EVENTS || self.kept_bytes > KEPT_BYTES {
            let Some(old) = self.kept.pop_front() else { break };
            self.kept_bytes -= old.body.len();
        }
    }

    /// The kept events from sequence `from` on, in order.
    pub fn kept_from(&self, from: u64) -> impl DoubleEndedIterator<Item = &EngineMessage> {
        let start = self.kept.partition_point(|e| e.id < from);
        self.kept.range(start..)
    }
}

/// A topic request refused, with what the engine is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct TopicRefused {
    pub reason: TopicRefusal,
    pub detail: String,
}

impl TopicRefused {
    fn new(reason: TopicRefusal, detail: impl Into<String>) -> Self {
        TopicRefused { reason, detail: detail.into() }
    }

    pub fn unknown(topic: Identity) -> Self {
        TopicRefused::new(TopicRefusal::Unknown, format!("topic {topic} is not on this node"))
    }
}

/// Every topic on this node, and which topics each engine subscribes to.
#[derive(Debug, Default)]
pub struct Topics {
    topics: BTreeMap<Identity, Topic>,
    subscriptions: BTreeMap<Identity, BTreeSet<Identity>>,
    /// Topics on other nodes that engines here subscribed to, not mirrored here yet.
    wanted: BTreeMap<Identity, BTreeSet<Identity>>,
    /// Topics created, deleted, or whose subscribers or sequence changed since the shell last
    /// took them (`take_touched`): the ring thread's copy of them is brought up to date.
    touched: BTreeSet<Identity>,
    /// The topics deleted last, newest at the back (`DELETED_KEPT` at most): an event for one
    /// is refused at once, while one for a topic never seen waits for it to be created.
    deleted: VecDeque<Identity>,
}

/// Deleted topics remembered.
const DELETED_KEPT: usize = 1024;

/// What a subscription did, beyond adding the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscribed {
    /// To a topic here: the sequence of its last event.
    Here(u64),
    /// To a topic on another node: `first` if no engine here wanted it before.
    Wanted { first: bool },
}

impl Topics {
    pub fn get(&self, topic: &Identity) -> Option<&Topic> {
        self.topics.get(topic)
    }

    /// The topic, to change: it counts as touched.
    pub fn get_mut(&mut self, topic: &Identity) -> Option<&mut Topic> {
        self.touched.insert(*topic);
        self.topics.get_mut(topic)
    }

    /// Whether `topic` was deleted here lately (and not created again).
    pub fn was_deleted(&self, topic: &Identity) -> bool {
        !self.topics.contains_key(topic) && self.deleted.contains(topic)
    }

    /// Counts every topic as touched (what the lanes may do changed for all).
    pub fn touch_all(&mut self) {
        self.touched.extend(self.topics.keys().copied());
    }

    /// The topics touched since the last call.
    pub fn take_touched(&mut self) -> BTreeSet<Identity> {
        std::mem::take(&mut self.touched)
    }

    /// The most an event's body may be: a topic whose events may leave the node leaves room
    /// for the pubsub message that carries them.
    pub fn event_limit(topic: &Topic, max_body: usize) -> usize {
        match topic.scope {
            Scope::Any => max_body.saturating_sub(PEER_EVENT_OVERHEAD),
            _ => max_body,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Topic> {
        self.topics.values()
    }

    pub fn len(&self) -> usize {
        self.topics.len()
    }

    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// The topics `engine` subscribes to.
    pub fn subscribed_by(&self, engine: &Identity) -> Vec<Identity> {
        self.subscriptions.get(engine).map(|topics| topics.iter().copied().collect()).unwrap_or_default()
    }

    /// The topics wanted from other nodes, with their subscribers here.
    pub fn wanted(&self) -> impl Iterator<Item = (&Identity, &BTreeSet<Identity>)> {
        self.wanted.iter()
    }

    /// TopicCreate: `creator` puts the topic of `advert` on this node; the engines that wanted
    /// it subscribe to it. Refused if another engine's topic is here already or the advert is
    /// not signed by the topic key; the creator's own topic is created again as it is (an
    /// engine that attached again after a restart of the router asks once more).
    pub fn create(&mut self, creator: Identity, advert: TopicAdvert, scope: Scope, policy: TopicPolicy, after: u64) -> Result<(), TopicRefused> {
        let topic = advert.topic;
        if let Some(found) = self.topics.get(&topic) {
            if found.creator == creator && found.advert == advert {
                return Ok(());
            }
            return Err(TopicRefused::new(TopicRefusal::Exists, format!("topic {topic} is already on this node")));
        }
        advert.verify().map_err(|e| TopicRefused::new(TopicRefusal::BadAdvert, e.to_string()))?;
        let subscribers = self.wanted.remove(&topic).unwrap_or_default();
        for engine in &subscribers {
            self.subscriptions.entry(*engine).or_default().insert(topic);
        }
        let topic = Topic { advert, creator, scope, policy, last_seq: after, subscribers, events_cut: 0, carried: false, kept: VecDeque::new(), kept_bytes: 0 };
        self.touched.insert(topic.advert.topic);
        self.topics.insert(topic.advert.topic, topic);
        Ok(())
    }

    /// TopicDelete, by the engine that created the topic only: the topic as it was.
    pub fn delete(&mut self, requester: Identity, topic: Identity) -> Result<Topic, TopicRefused> {
        let found = self.topics.get(&topic).ok_or_else(|| TopicRefused::unknown(topic))?;
        if found.creator != requester {
            return Err(TopicRefused::new(TopicRefusal::Denied, format!("topic {topic} was created by engine {}, not by {requester}", found.creator)));
        }
        let removed = self.topics.remove(&topic).expect("found above");
        self.touched.insert(topic);
        if self.deleted.len() == DELETED_KEPT {
            self.deleted.pop_front();
        }
        self.deleted.push_back(topic);
        for subscriber in &removed.subscribers {
            self.forget_subscription(*subscriber, topic);
        }
        Ok(removed)
    }

    /// TopicSub: `engine` receives the topic's events from the next one on. A topic not on
    /// this node is wanted from another node if the scope allows and `remote` (a pubsub service
    /// is attached); else refused.
    pub fn subscribe(&mut self, engine: Identity, topic: Identity, scope: Scope, remote: bool) -> Result<Subscribed, TopicRefused> {
        let Some(found) = self.topics.get_mut(&topic) else {
            let detail = match scope {
                Scope::Local => format!("topic {topic} is not on this node, and the subscription's scope is local"),
                _ if !remote => format!("topic {topic} is not on this node, and no pubsub service is attached to find it on another"),
                _ => {
                    let wanting = self.wanted.entry(topic).or_default();
                    let first = wanting.is_empty();
                    wanting.insert(engine);
                    self.subscriptions.entry(engine).or_default().insert(topic);
                    return Ok(Subscribed::Wanted { first });
                }
            };
            return Err(TopicRefused::new(TopicRefusal::Unknown, detail));
        };
        found.subscribers.insert(engine);
        self.subscriptions.entry(engine).or_default().insert(topic);
        self.touched.insert(topic);
        Ok(Subscribed::Here(found.last_seq))
    }

    /// TopicUnsub: the sequence of the topic's last event (`SEQ_NOT_KNOWN` for one still
    /// wanted), and whether no engine here receives the topic any more.
    pub fn unsubscribe(&mut self, engine: Identity, topic: Identity) -> Result<(u64, bool), TopicRefused> {
        let not_subscribed = || TopicRefused::new(TopicRefusal::NotSubscribed, format!("engine {engine} does not subscribe to topic {topic}"));
        let (last_seq, left) = match (self.topics.get_mut(&topic), self.wanted.get_mut(&topic)) {
            (Some(found), _) => {
                if !found.subscribers.remove(&engine) {
                    return Err(not_subscribed());
                }
                self.touched.insert(topic);
                (found.last_seq, found.subscribers.is_empty())
            }
            (None, Some(wanting)) => {
                if !wanting.remove(&engine) {
                    return Err(not_subscribed());
                }
                (SEQ_NOT_KNOWN, wanting.is_empty())
            }
            (None, None) => return Err(TopicRefused::unknown(topic)),
        };
        if left {
            self.wanted.remove(&topic);
        }
        self.forget_subscription(engine, topic);
        Ok((last_seq, left))
    }

    /// `engine` detached: its subscriptions end (it subscribes again when it attaches again).
    /// The topics it subscribed to, each with whether no engine here receives it any more.
    pub fn detached(&mut self, engine: Identity) -> Vec<(Identity, bool)> {
        let topics = self.subscriptions.remove(&engine).unwrap_or_default();
        let mut left = Vec::new();
        for topic in topics {
            let empty = match (self.topics.get_mut(&topic), self.wanted.get_mut(&topic)) {
                (Some(found), _) => {
                    self.touched.insert(topic);
                    found.subscribers.remove(&engine) && found.subscribers.is_empty()
                }
                (None, Some(wanting)) => wanting.remove(&engine) && wanting.is_empty(),
                (None, None) => false,
            };
            if empty {
                self.wanted.remove(&topic);
            }
            left.push((topic, empty));
        }
        left
    }

    fn forget_subscription(&mut self, engine: Identity, topic: Identity) {
        if let Some(topics) = self.subscriptions.get_mut(&engine) {
            topics.remove(&topic);
            if topics.is_empty() {
                self.subscriptions.remove(&engine);
            }
        }
    }

    /// Whether `message` may be published on `topic`: the topic is here, the message comes from
    /// the publisher its advert names, and its sequence (the message id) is above the last one.
    pub fn check_event(&self, topic: Identity, message: &EngineMessage, max_body: usize) -> Result<&Topic, Refused> {
        let found = self.topics.get(&topic).ok_or_else(|| Refused::no_route(format!("topic {topic} is not on this node")))?;
        // Carried to other nodes inside a pubsub message, it must leave room for that.
        let limit = Topics::event_limit(found, max_body);
        if message.body.len() > limit {
            return Err(Refused::over_limit(message.body.len(), limit));
        }
        if message.src != found.advert.publisher {
            let detail = format!("engine {} is not the publisher of topic {topic}; its advert names {}", message.src, found.advert.publisher);
            return Err(Refused::denied(detail));
        }
        if message.id <= found.last_seq {
            let detail = format!("event sequence {} is not above the last one on topic {topic} ({})", message.id, found.last_seq);
            return Err(Refused::malformed(detail));
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmachine_schema::router_capnp::SendRefusal;
    use netmachine_schema::{Destination, Keypair};

    fn topic(publisher: Identity) -> (Keypair, TopicAdvert) {
        let key = Keypair::generate();
        let advert = TopicAdvert::sign(&key, publisher, vec![], 1);
        (key, advert)
    }

    fn event(src: Identity, topic: Identity, seq: u64) -> EngineMessage {
        EngineMessage::new(src, Destination::Topic(topic), seq, b"e".to_vec())
    }

    #[test]
    fn a_topic_is_created_once_with_a_genuine_advert_and_deleted_only_by_its_creator() {
        let mut topics = Topics::default();
        let (creator, other, publisher) = (Keypair::generate().identity(), Keypair::generate().identity(), Keypair::generate().identity());
        let (_, advert) = topic(publisher);
        let forged = TopicAdvert { publisher: other, ..advert.clone() };
        fn refusal<T>(result: Result<T, TopicRefused>) -> Result<(), TopicRefusal> {
            result.map(|_| ()).map_err(|e| e.reason)
        }
        assert_eq!(refusal(topics.create(creator, forged, Scope::Any, TopicPolicy::Block, 0)), Err(TopicRefusal::BadAdvert));
        assert_eq!(refusal(topics.create(creator, advert.clone(), Scope::Any, TopicPolicy::Block, 0)), Ok(()));
        assert_eq!(refusal(topics.create(other, advert.clone(), Scope::Any, TopicPolicy::Block, 0)), Err(TopicRefusal::Exists));
        topics.subscribe(other, advert.topic, Scope::Local, false).unwrap();
        assert_eq!(refusal(topics.delete(other, advert.topic)), Err(TopicRefusal::Denied));
        assert_eq!(refusal(topics.delete(creator, advert.topic)), Ok(()));
        assert!(topics.subscribed_by(&other).is_empty(), "a deleted topic's subscriptions go with it");
        assert_eq!(refusal(topics.delete(creator, advert.topic)), Err(TopicRefusal::Unknown));
    }

    #[test]
    fn subscriptions_need_the_topic_here_and_end_when_the_engine_detaches() {
        let mut topics = Topics::default();
        let (engine, publisher) = (Keypair::generate().identity(), Keypair::generate().identity());
        let (_, advert) = topic(publisher);
        let elsewhere = Keypair::generate().identity();
        for (scope, remote) in [(Scope::Local, true), (Scope::Any, false)] {
            assert_eq!(topics.subscribe(engine, elsewhere, scope, remote).map_err(|e| e.reason), Err(TopicRefusal::Unknown));
        }
        topics.create(publisher, advert.clone(), Scope::Any, TopicPolicy::CutSlow, 0).unwrap();
        assert_eq!(topics.unsubscribe(engine, advert.topic).map_err(|e| e.reason), Err(TopicRefusal::NotSubscribed));
        assert_eq!(topics.subscribe(engine, advert.topic, Scope::Local, false), Ok(Subscribed::Here(0)));
        assert_eq!(topics.detached(engine), vec![(advert.topic, true)]);
        assert!(topics.get(&advert.topic).unwrap().subscribers.is_empty());
    }

    #[test]
    fn only_the_advertised_publisher_publishes_and_each_sequence_rises() {
        let mut topics = Topics::default();
        let (publisher, intruder) = (Keypair::generate().identity(), Keypair::generate().identity());
        let (_, advert) = topic(publisher);
        let id = advert.topic;
        topics.create(intruder, advert, Scope::Any, TopicPolicy::Block, 0).unwrap();
        let refusal = |topics: &Topics, message: EngineMessage| topics.check_event(id, &message, 1 << 20).map(|_| ()).map_err(|r| r.refusal);
        assert_eq!(refusal(&topics, event(intruder, id, 1)), Err(SendRefusal::Denied), "the creator is not the publisher");
        assert_eq!(refusal(&topics, event(publisher, id, 1)), Ok(()));
        topics.get_mut(&id).unwrap().last_seq = 5;
        assert_eq!(refusal(&topics, event(publisher, id, 5)), Err(SendRefusal::Malformed), "a replayed sequence");
        assert_eq!(refusal(&topics, event(publisher, id, 6)), Ok(()));
        let mut large = event(publisher, id, 7);
        large.body = vec![0; (1 << 20) - PEER_EVENT_OVERHEAD + 1];
        assert_eq!(refusal(&topics, large.clone()), Err(SendRefusal::OverLimit), "too large to be carried to other nodes");
        topics.get_mut(&id).unwrap().scope = Scope::Local;
        assert_eq!(refusal(&topics, large), Ok(()), "a topic that stays on its node takes the node's limit");
        let elsewhere = Keypair::generate().identity();
        assert_eq!(topics.check_event(elsewhere, &event(publisher, elsewhere, 7), 1 << 20).map(|_| ()).map_err(|r| r.refusal), Err(SendRefusal::NoRoute));
    }

    #[test]
    fn a_topic_wanted_from_another_node_is_subscribed_when_its_mirror_arrives() {
        let mut topics = Topics::default();
        let (a, b, service, publisher) = (Keypair::generate().identity(), Keypair::generate().identity(), Keypair::generate().identity(), Keypair::generate().identity());
        let (_, advert) = topic(publisher);
        let id = advert.topic;
        assert_eq!(topics.subscribe(a, id, Scope::Any, true), Ok(Subscribed::Wanted { first: true }));
        assert_eq!(topics.subscribe(b, id, Scope::Any, true), Ok(Subscribed::Wanted { first: false }));
        assert_eq!(topics.unsubscribe(b, id), Ok((SEQ_NOT_KNOWN, false)));
        topics.create(service, advert.clone(), Scope::Any, TopicPolicy::Block, 0).unwrap();
        topics.create(service, advert.clone(), Scope::Any, TopicPolicy::Block, 0).expect("the creator creates its topic again");
        assert_eq!(topics.create(a, advert, Scope::Any, TopicPolicy::Block, 0).map_err(|e| e.reason), Err(TopicRefusal::Exists));
        assert_eq!(topics.get(&id).unwrap().subscribers.iter().collect::<Vec<_>>(), vec![&a], "the wanting engine moved onto the mirror");
        assert_eq!(topics.wanted().count(), 0);
        assert_eq!(topics.detached(a), vec![(id, true)], "the last subscriber left");
    }
}
