//! Topics as an engine sees them: the topic requests it makes of the router, what it created and
//! subscribed to (asked again after the router restarts), and the sequence it expects next from
//! each publisher, so that an event it never got is reported as a gap and none reaches it twice.

use netmachine_schema::message_capnp::Scope;
use netmachine_schema::router_capnp::TopicPolicy;
use netmachine_schema::{Destination, EngineMessage, Identity, TopicAdvert, GAP_PROTOCOL, SEQ_NOT_KNOWN};
use rustc_hash::FxHashMap;
use std::collections::{BTreeMap, BTreeSet};

/// A topic the engine creates: `after` is where its events continue (0 but for the pubsub
/// service's mirrors of topics on other nodes).
#[derive(Debug, Clone)]
pub(crate) struct Creation {
    pub advert: TopicAdvert,
    pub scope: Scope,
    pub policy: TopicPolicy,
    pub after: u64,
}

/// A topic request (or a service), as the engine thread sends it.
#[derive(Debug, Clone)]
pub(crate) enum RouterRequest {
    Serve(String),
    Create(Creation),
    Delete(Identity),
    /// `from`: the sequence the engine expects next, when it subscribes again (0: the next).
    Subscribe { topic: Identity, scope: Scope, from: u64 },
    Unsubscribe(Identity),
    LastSeq(Identity),
}

/// The router's answer to a topic request: the sequence of the topic's last event, and (for a
/// subscription to a topic on this node) what its events do when a subscriber has no room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicAnswer {
    pub last_seq: u64,
    pub policy: TopicPolicy,
    /// For [`crate::Engine::subscribe_from`]: the events the router kept from there, in order.
    pub replay: Vec<EngineMessage>,
}

/// What the engine serves, created and subscribes to: asked of the router again when the engine
/// attaches again (a restarted router holds no topics).
#[derive(Debug, Default)]
pub(crate) struct TopicBook {
    /// The protocols the engine serves for the node.
    pub served: BTreeSet<String>,
    pub created: BTreeMap<Identity, Creation>,
    pub subscribed: BTreeMap<Identity, Scope>,
}

impl TopicBook {
    /// The requests that put the engine's services and topics back: services, creations, then
    /// subscriptions, each from the sequence `resume` says the engine expects next.
    pub fn replay(&self, resume: impl Fn(Identity) -> u64) -> Vec<RouterRequest> {
        let served = self.served.iter().map(|protocol| RouterRequest::Serve(protocol.clone()));
        let created = self.created.values().map(|creation| RouterRequest::Create(creation.clone()));
        let subscribed = self.subscribed.iter().map(|(topic, scope)| RouterRequest::Subscribe { topic: *topic, scope: *scope, from: resume(*topic) });
        served.chain(created).chain(subscribed).collect()
    }
}

/// An event on a topic this engine subscribes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub topic: Identity,
    pub publisher: Identity,
    pub seq: u64,
    pub body: Vec<u8>,
}

/// Events this engine will never get: `from..=to` of `publisher` on `topic` (the router cut a
/// slow subscriber, or the events were refused to their publisher).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub topic: Identity,
    pub publisher: Identity,
    pub from: u64,
    pub to: u64,
}

/// What [`crate::Engine::recv_event`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A message to this engine (or a reply that came after its request gave up).
    Message(EngineMessage),
    Event(Event),
    Gap(Gap),
}

/// How an event fits the sequence of its publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    Next,
    /// Events before it were missed.
    After(Gap),
    /// Its sequence was taken already: a repeat, never handed to the engine twice.
    Repeat,
    /// Of a topic the engine left (it was in the inbox when it unsubscribed): dropped.
    Left,
}

/// The sequence expected next from each publisher on each topic, advanced only as events are
/// taken.
#[derive(Debug, Default)]
pub struct Sequences {
    /// Per topic, the last sequence when the engine subscribed: where an unseen publisher starts.
    /// Looked up for every event taken: hashed with Fx, as the keys are the engine's own
    /// subscriptions and their one publisher each, not chosen by another party.
    start: FxHashMap<Identity, u64>,
    expected: FxHashMap<(Identity, Identity), u64>,
    repeats: u64,
    missed: u64,
}

impl Sequences {
    /// The engine subscribed to `topic` after event `last_seq`. A publisher already seen keeps
    /// its place (the router restarted and forgot the sequence, the engine did not).
    pub fn subscribed(&mut self, topic: Identity, last_seq: u64) {
        self.start.insert(topic, last_seq);
    }

    /// The lowest sequence expected next on `topic` from a publisher already seen (0: none seen):
    /// where a subscription made again resumes, so that what was missed meanwhile is repaired.
    pub fn next_expected(&self, topic: Identity) -> u64 {
        self.expected.iter().filter(|((t, _), _)| *t == topic).map(|(_, next)| *next).min().unwrap_or(0)
    }

    /// The engine left `topic`: where its publishers stood is forgotten.
    pub fn unsubscribed(&mut self, topic: Identity) {
        self.start.remove(&topic);
        self.expected.retain(|(t, _), _| *t != topic);
    }

    /// The engine asks the router for `topic`: an event that comes before the answer starts
    /// the sequence, as on a topic whose sequence is not known.
    pub fn subscribing(&mut self, topic: Identity) {
        self.start.entry(topic).or_insert(SEQ_NOT_KNOWN);
    }

    /// Where `seq` from `publisher` on `topic` fits; advances the sequence past it.
    pub fn take(&mut self, topic: Identity, publisher: Identity, seq: u64) -> Fit {
        let Some(&start) = self.start.get(&topic) else { return Fit::Left };
        // A topic on another node starts wherever its first event does.
        let first = if start == SEQ_NOT_KNOWN { seq } else { start + 1 };
        let expected = self.expected.entry((topic, publisher)).or_insert(first);
        if seq < *expected {
            self.repeats += 1;
            return Fit::Repeat;
        }
        let fit = match seq == *expected {
            true => Fit::Next,
            false => {
                self.missed += seq - *expected;
                Fit::After(Gap { topic, publisher, from: *expected, to: seq - 1 })
            }
        };
        *expected = seq + 1;
        fit
    }

    /// A gap marker: `publisher`'s events on `topic` up to `to` will never come. The gap from the
    /// next expected, if any is left.
    pub fn skip(&mut self, topic: Identity, publisher: Identity, to: u64) -> Option<Gap> {
        let start = *self.start.get(&topic)?;
        let first = if start == SEQ_NOT_KNOWN { to + 1 } else { start + 1 };
        let expected = self.expected.entry((topic, publisher)).or_insert(first);
        if to < *expected {
            return None;
        }
        let gap = Gap { topic, publisher, from: *expected, to };
        self.missed += to + 1 - *expected;
        *expected = to + 1;
        Some(gap)
    }

    /// Events skipped as repeats, and events reported missing.
    pub fn counts(&self) -> (u64, u64) {
        (self.repeats, self.missed)
    }
}

/// What a message to a topic carries.
pub enum TopicMessage {
    Event(Event),
    /// A gap marker: the publisher's events up to `to` will never come.
    Gap { topic: Identity, publisher: Identity, to: u64 },
}

/// What a topic message carries, if it is one (else the message, given back).
pub fn topic_message(message: EngineMessage) -> Result<TopicMessage, EngineMessage> {
    let Destination::Topic(topic) = message.dst else { return Err(message) };
    if message.protocol == GAP_PROTOCOL {
        return Ok(TopicMessage::Gap { topic, publisher: message.src, to: message.id });
    }
    Ok(TopicMessage::Event(Event { topic, publisher: message.src, seq: message.id, body: message.body }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmachine_schema::Keypair;

    #[test]
    fn a_skipped_sequence_is_one_gap_and_a_repeat_is_never_taken_twice() {
        let mut sequences = Sequences::default();
        let (topic, publisher) = (Keypair::generate().identity(), Keypair::generate().identity());
        sequences.subscribed(topic, 4);
        assert_eq!(sequences.take(topic, publisher, 5), Fit::Next, "the first event after subscribing");
        assert_eq!(sequences.take(topic, publisher, 9), Fit::After(Gap { topic, publisher, from: 6, to: 8 }));
        assert_eq!(sequences.take(topic, publisher, 7), Fit::Repeat);
        assert_eq!(sequences.take(topic, publisher, 9), Fit::Repeat);
        assert_eq!(sequences.take(topic, publisher, 10), Fit::Next);
        sequences.subscribed(topic, 0);
        assert_eq!(sequences.take(topic, publisher, 11), Fit::Next, "subscribing again keeps a seen publisher's place");
        assert_eq!(sequences.counts(), (2, 3));
        sequences.unsubscribed(topic);
        sequences.subscribed(topic, 40);
        assert_eq!(sequences.take(topic, publisher, 41), Fit::Next, "what was published while away is no gap");
        let remote = Keypair::generate().identity();
        sequences.subscribed(remote, SEQ_NOT_KNOWN);
        assert_eq!(sequences.take(remote, publisher, 900), Fit::Next, "a topic on another node starts at its first event");
        assert_eq!(sequences.take(remote, publisher, 901), Fit::Next);
        sequences.unsubscribed(topic);
        assert_eq!(sequences.take(topic, publisher, 42), Fit::Left, "an event of a topic left is no gap, and is dropped");
        assert_eq!(sequences.skip(topic, publisher, 50), None);
        let early = Keypair::generate().identity();
        sequences.subscribing(early);
        assert_eq!(sequences.take(early, publisher, 77), Fit::Next, "an event before the router's answer starts the sequence");
        sequences.subscribed(early, 75);
        assert_eq!(sequences.take(early, publisher, 78), Fit::Next, "and the answer does not move it back");
        assert_eq!(sequences.counts(), (2, 3));
    }

    #[test]
    fn a_gap_marker_reports_what_is_left_of_its_run_once() {
        let mut sequences = Sequences::default();
        let (topic, publisher) = (Keypair::generate().identity(), Keypair::generate().identity());
        sequences.subscribed(topic, 0);
        assert_eq!(sequences.take(topic, publisher, 1), Fit::Next);
        assert_eq!(sequences.skip(topic, publisher, 5), Some(Gap { topic, publisher, from: 2, to: 5 }));
        assert_eq!(sequences.skip(topic, publisher, 5), None, "a repeated marker says nothing new");
        assert_eq!(sequences.take(topic, publisher, 6), Fit::Next, "the event after the run fits");
        assert_eq!(sequences.counts(), (0, 4));
    }

    #[test]
    fn the_replay_creates_before_it_subscribes_from_where_the_engine_stands() {
        let mut book = TopicBook::default();
        let advert = TopicAdvert::sign(&Keypair::generate(), Keypair::generate().identity(), vec![], 1);
        let topic = advert.topic;
        book.subscribed.insert(topic, Scope::Local);
        book.created.insert(topic, Creation { advert: advert.clone(), scope: Scope::Any, policy: TopicPolicy::Block, after: 0 });
        let mut sequences = Sequences::default();
        sequences.subscribed(topic, SEQ_NOT_KNOWN);
        assert_eq!(sequences.next_expected(topic), 0, "nothing taken yet: from the next event");
        sequences.take(topic, advert.publisher, 41);
        let replay = book.replay(|t| sequences.next_expected(t));
        assert!(matches!(&replay[..], [RouterRequest::Create(_), RouterRequest::Subscribe { from: 42, .. }]), "{replay:?}");
    }
}
