//! Topic lanes: an event a ring engine publishes on a topic here whose subscribers are all ring
//! engines goes from its outbox straight into each subscriber's inbox, on the ring thread,
//! without the main thread. The core stays the authority on topics. The shell copies each
//! topic's publisher, subscribers, policy, size limit and sequence into its lane whenever the
//! core touched the topic (`Lane::update`), and gives the core back the sequence and counts
//! before the core looks at the topic again (`Lane::report`); both under the lane's lock, which
//! the ring thread holds while it forwards an event. So a subscriber answered with the topic's
//! last sequence gets every event after it, and a replayed sequence is refused either way.
//!
//! An event the lane cannot take as it is goes to the main thread, where the core decides, in
//! order: the lane takes nothing while the publisher has messages there unsettled, nor for a
//! subscriber with deliveries still queued by the main thread, so no event overtakes another.
//! Under policy Block an event waits in the outbox until every subscriber has room (the
//! publisher's outbox fills, and it waits); under CutSlow a subscriber with no room misses it,
//! counted, and sees the gap in the sequence.

use crate::core::{check_envelope, Router};
use crate::rings::RingEndpoint;
use netmachine_engine::ring::records::{self, Envelope};
use netmachine_schema::router_capnp::TopicPolicy;
use netmachine_schema::time::now_ms;
use netmachine_schema::Identity;
use std::collections::HashMap;
use crate::rings::lock;
use std::sync::{Arc, Mutex};

/// What the ring thread knows of one topic.
#[derive(Debug)]
pub struct Lane {
    publisher: Identity,
    subscribers: Vec<Identity>,
    policy: TopicPolicy,
    max_body: usize,
    /// The last sequence routed, by the lane or by the core.
    last_seq: u64,
    /// Not (or no longer) a topic here: nothing goes by the lane.
    gone: bool,
    /// What the lane did since the core last took it.
    published: u64,
    deliveries: u64,
    cut: u64,
}

pub type SharedLane = Arc<Mutex<Lane>>;

impl Lane {
    /// A lane that takes nothing until `update` finds its topic.
    pub fn closed() -> SharedLane {
        let nobody = Identity([0; 32]);
        let lane = Lane { publisher: nobody, subscribers: Vec::new(), policy: TopicPolicy::Block, max_body: 0, last_seq: 0, gone: true, published: 0, deliveries: 0, cut: 0 };
        Arc::new(Mutex::new(lane))
    }

    /// Takes the core's view of `topic` (or closes the lane if the topic is gone, or while the
    /// core holds engines' events).
    pub fn update(&mut self, core: &Router, topic: &Identity) {
        let Some(found) = core.topic(topic) else {
            self.gone = true;
            return;
        };
        // The core holds engines' events after a restart, or keeps the topic's events for the
        // pubsub service: the lane takes none.
        if core.events_held() || found.carried {
            self.gone = true;
            return;
        }
        self.publisher = found.advert.publisher;
        self.subscribers.clear();
        self.subscribers.extend(found.subscribers.iter().copied());
        self.policy = found.policy;
        self.max_body = core.event_limit(found);
        self.last_seq = self.last_seq.max(found.last_seq);
        self.gone = false;
    }

    /// Gives the core the sequence and the counts of what the lane routed.
    pub fn report(&mut self, core: &mut Router, topic: Identity) {
        let (published, deliveries, cut) = (std::mem::take(&mut self.published), std::mem::take(&mut self.deliveries), std::mem::take(&mut self.cut));
        core.lane_advanced(topic, self.last_seq, published, deliveries, cut);
    }
}

/// What became of an event offered to its lane.
pub enum Offered {
    /// In every subscriber's inbox (under CutSlow: in those with room).
    Forwarded,
    /// A subscriber has no room and the policy is Block: it waits in the outbox.
    Blocked,
    /// Not for the lane: the main thread routes it.
    Elsewhere,
}

/// Forwards the event `record` (checked as `envelope`) from the engine `from` by `lane`, if
/// the lane can take it now. Runs on the ring thread, which holds `from`'s outbox.
pub fn offer(lane: &Mutex<Lane>, from: &RingEndpoint, envelope: &Envelope, record: &[u8], by_engine: &HashMap<Identity, Arc<RingEndpoint>>, max_body: usize) -> Offered {
    let mut lane = lock(lane);
    let publisher = lane.publisher;
    let fits_lane = !lane.gone && envelope.src == publisher && from.engine == publisher && envelope.id > lane.last_seq && envelope.body_len <= lane.max_body;
    if !fits_lane || from.has_slow_in_flight() || check_envelope(from.engine, envelope.src, envelope.body_len, envelope.expiry, max_body, now_ms()).is_err() {
        return Offered::Elsewhere;
    }
    // Every inbox at once (always in the subscribers' order): under Block, all take it or none.
    let mut to = Vec::with_capacity(lane.subscribers.len());
    for subscriber in &lane.subscribers {
        match by_engine.get(subscriber) {
            Some(endpoint) if !endpoint.is_closed() && record.len() <= endpoint.largest_record && !endpoint.has_queued() => to.push((endpoint, endpoint.inbox())),
            _ => return Offered::Elsewhere,
        }
    }
    if lane.policy == TopicPolicy::Block && to.iter_mut().any(|(_, inbox)| !inbox.fits(record.len())) {
        return Offered::Blocked;
    }
    for (_, inbox) in to.iter_mut() {
        if inbox.fits(record.len()) && records::forward(inbox, record, envelope).is_ok() {
            lane.deliveries += 1;
        } else {
            lane.cut += 1;
        }
    }
    for (endpoint, inbox) in to {
        drop(inbox);
        endpoint.wake();
    }
    lane.last_seq = envelope.id;
    lane.published += 1;
    Offered::Forwarded
}
