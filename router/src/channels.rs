//! Direct channels between ring engines (RING.md, "Direct channels"). The ring thread counts
//! the messages it forwards from one engine to another; once a pair has exchanged `GRANT_AFTER`,
//! it makes them a ring of their own and grants it in the sender's channel table; the sender
//! switches to it at its next send (a switch record in its outbox, after everything it sent
//! through the router), and the ring thread then opens it to the receiver, in its inbox after
//! those messages, so order holds across the switch. From then on the two engines talk with no third party. The router stays the
//! authority: it revokes a channel when either engine detaches or dies, reads the channels'
//! counters for `status`, and adopts the channels of live engines after its own restart (a
//! restart never interrupts one: the engines do not need the router to use it).

use crate::rings::RingEndpoint;
use netmachine_engine::ring::layout::{CHANNEL_CONSUMER_PID_AT, CHANNEL_DROPPED_AT, CHANNEL_HEAD_AT, CHANNEL_PRODUCER_WAITING_AT, CHANNEL_READ_AT, CHANNEL_TAIL_AT, CHANNEL_WRITTEN_AT};
use netmachine_engine::ring::wait::wake_if_sleeping;
use netmachine_engine::ring::layout::CHANNEL_SLOTS;
use netmachine_engine::ring::records::{self, ChannelOpen};
use netmachine_engine::ring::{self, ChannelSegment, Full, RingSegment};
use netmachine_schema::Identity;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// Messages from one engine to another the router forwards before it grants them a channel:
/// a steady conversation, not a single message.
pub const GRANT_AFTER: u32 = 16;

/// Pairs whose messages are counted at most; beyond, the counts start over.
const PAIRS: usize = 65_536;

/// The channels of this node's engines.
pub struct Channels {
    /// `router.direct_channels`: grant channels at all.
    granting: bool,
    node: Identity,
    capacity: usize,
    max_body: u32,
    open: Mutex<HashMap<(Identity, Identity), Granted>>,
    /// Messages forwarded from one engine to another that has no channel from it yet.
    forwarded: Mutex<HashMap<(Identity, Identity), u32>>,
    retired: Mutex<Retired>,
}

/// Revoked channels their consumers may still be reading (with the consumer), and what the
/// revoked channels let go of carried.
#[derive(Default)]
struct Retired {
    closing: Vec<(Identity, ChannelSegment)>,
    read: u64,
    dropped: u64,
}

/// A channel, and the engine that writes it (whose table lists it).
struct Granted {
    segment: ChannelSegment,
    producer: Arc<RingEndpoint>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Channels {
    pub fn new(node: Identity, capacity: usize, max_body: usize, granting: bool) -> Channels {
        let max_body = u32::try_from(max_body).unwrap_or(u32::MAX);
        Channels { granting, node, capacity, max_body, open: Mutex::new(HashMap::new()), forwarded: Mutex::new(HashMap::new()), retired: Mutex::new(Retired::default()) }
    }

    /// The ring thread forwarded a message from `from` to `to`: past `GRANT_AFTER`, grants
    /// `from` a channel to `to` in its channel table (unless the table is full: each channel
    /// holds a ring's worth of shared memory; its messages to further engines keep going
    /// through the router).
    pub fn forwarded(&self, from: &Arc<RingEndpoint>, to: &RingEndpoint) {
        // A detached engine's outbox is still forwarded: it gets no new channel.
        if !self.granting || from.is_closed() || to.is_closed() {
            return;
        }
        let pair = (from.engine, to.engine);
        {
            let mut forwarded = lock(&self.forwarded);
            if forwarded.len() >= PAIRS && !forwarded.contains_key(&pair) {
                forwarded.clear();
            }
            let count = forwarded.entry(pair).or_insert(0);
            *count += 1;
            if *count < GRANT_AFTER {
                return;
            }
            // Counted afresh from here, whatever comes of it: a pair that has its channel (the
            // messages it sent before switching), or whose sender's table is full, is looked at
            // once in GRANT_AFTER messages, not at every one.
            forwarded.remove(&pair);
        }
        let mut open = lock(&self.open);
        if open.contains_key(&pair) || open.keys().filter(|(producer, _)| *producer == from.engine).count() >= CHANNEL_SLOTS {
            return;
        }
        let name = ring::channel_name(&self.node.0, &from.engine.0, &to.engine.0);
        let _ = RingSegment::unlink(&name);
        let segment = match ChannelSegment::create(&name, &from.engine.0, &to.engine.0, self.capacity, self.max_body) {
            Ok(segment) => segment,
            Err(error) => {
                tracing::warn!(%error, from = %from.engine, to = %to.engine, "cannot make a direct channel; messages go through the router");
                return;
            }
        };
        if !from.segment.grant(&to.engine.0) {
            let _ = RingSegment::unlink(&name);
            return;
        }
        tracing::debug!(from = %from.engine.short(), to = %to.engine.short(), "granted a direct channel");
        open.insert(pair, Granted { segment, producer: from.clone() });
    }

    /// `from` wrote in its outbox that its messages to `peer` go by their channel from here on:
    /// opens the channel to `peer` in its inbox, after everything `from` sent it before. `Full`
    /// if `peer`'s inbox has no room now (the switch stays in the outbox, to try again). A
    /// channel whose receiver is gone is closed: the sender goes back to the router.
    pub fn switched(&self, from: &RingEndpoint, peer: Identity, to: Option<&Arc<RingEndpoint>>) -> Result<(), Full> {
        let Some(channel) = lock(&self.open).get(&(from.engine, peer)).map(|granted| granted.segment.name.clone()) else {
            // Not granted by this router (nor adopted): closed, so the engine goes back to it.
            tracing::debug!(from = %from.engine.short(), to = %peer.short(), "a switch to a channel this router does not know; closed");
            let name = ring::channel_name(&self.node.0, &from.engine.0, &peer.0);
            if let Ok(channel) = ChannelSegment::open(&name, Some(&from.engine.0), Some(&peer.0)) {
                channel.close();
                let _ = RingSegment::unlink(&name);
            }
            from.segment.withdraw(&peer.0);
            return Ok(());
        };
        let Some(to) = to.filter(|to| !to.is_closed()) else {
            Self::revoke_pair(&mut lock(&self.open), (from.engine, peer), &self.retired, &self.forwarded);
            return Ok(());
        };
        records::write_channel_open(&mut to.inbox(), &ChannelOpen { peer: from.engine, channel })?;
        to.wake();
        Ok(())
    }

    /// `engine` detached or died: closes every channel it writes or reads, so that its peers
    /// go back to the router, and removes their names. Returns the messages written to it that
    /// it never read, lost with it.
    pub fn revoke(&self, engine: &Identity) -> u64 {
        let mut open = lock(&self.open);
        let pairs: Vec<(Identity, Identity)> = open.keys().filter(|(producer, consumer)| producer == engine || consumer == engine).copied().collect();
        let unread = pairs.into_iter().map(|pair| Self::revoke_pair(&mut open, pair, &self.retired, &self.forwarded)).filter(|(consumer, _)| consumer == engine).map(|(_, unread)| unread).sum();
        drop(open);
        self.prune(Some(engine));
        unread
    }

    /// Closes one channel (under the `open` lock, so no grant to the same pair comes between),
    /// takes it out of its producer's table and removes its name; returns its consumer and what
    /// was written to it and never read.
    fn revoke_pair(open: &mut HashMap<(Identity, Identity), Granted>, pair: (Identity, Identity), retired: &Mutex<Retired>, forwarded: &Mutex<HashMap<(Identity, Identity), u32>>) -> (Identity, u64) {
        let Some(Granted { segment: channel, producer }) = open.remove(&pair) else { return (pair.1, 0) };
        channel.close();
        // A producer waiting for room goes back to the router now, not at its next wake-up.
        wake_if_sleeping(channel.word(CHANNEL_PRODUCER_WAITING_AT));
        producer.segment.withdraw(&pair.1 .0);
        let _ = RingSegment::unlink(&channel.name);
        lock(forwarded).remove(&pair);
        let count = |at| channel.counter(at).load(Ordering::Relaxed);
        let unread = count(CHANNEL_WRITTEN_AT).saturating_sub(count(CHANNEL_READ_AT).saturating_add(count(CHANNEL_DROPPED_AT)));
        lock(retired).closing.push((pair.1, channel));
        (pair.1, unread)
    }

    /// Lets go of revoked channels no one reads any more (read to the end, or their consumer
    /// left: `gone`, or its process is gone), keeping what they carried in the counts.
    fn prune(&self, gone: Option<&Identity>) {
        let count = |channel: &ChannelSegment, at| channel.counter(at).load(Ordering::Relaxed);
        let mut retired = lock(&self.retired);
        let Retired { closing, read, dropped } = &mut *retired;
        closing.retain(|(consumer, channel)| {
            let done = Some(consumer) == gone
                || count(channel, CHANNEL_HEAD_AT) == count(channel, CHANNEL_TAIL_AT)
                || !ring::process_alive(channel.word(CHANNEL_CONSUMER_PID_AT).load(Ordering::Relaxed));
            if done {
                *read = read.saturating_add(count(channel, CHANNEL_READ_AT));
                *dropped = dropped.saturating_add(count(channel, CHANNEL_DROPPED_AT));
            }
            !done
        });
    }

    /// After a restart: takes over a channel of this node whose two engines' rings were
    /// adopted (`endpoint_of` finds them: their processes live on), and revokes the others:
    /// closed (so a producer that lives on goes back to the router), out of the producer's
    /// table, and removed.
    pub fn adopt(&self, file: &str, endpoint_of: impl Fn(&Identity) -> Option<Arc<RingEndpoint>>) {
        let name = format!("/{file}");
        let Ok(channel) = ChannelSegment::open(&name, None, None) else {
            let _ = RingSegment::unlink(&name);
            return;
        };
        let (producer, consumer) = (endpoint_of(&Identity(channel.producer())), endpoint_of(&Identity(channel.consumer())));
        match (producer, consumer) {
            (Some(producer), Some(consumer)) if !channel.is_closed() => {
                tracing::info!(channel = %name, "adopted a direct channel between live engines");
                lock(&self.open).insert((producer.engine, consumer.engine), Granted { segment: channel, producer });
            }
            (producer, _) => {
                tracing::info!(channel = %name, "removed a direct channel of an engine that is gone");
                channel.close();
                if let Some(producer) = producer {
                    producer.segment.withdraw(&channel.consumer());
                }
                let _ = RingSegment::unlink(&name);
            }
        }
    }

    /// (channels open, messages their receivers read, messages their receivers dropped), the
    /// counts since this router started, revoked channels included.
    pub fn counters(&self) -> (u64, u64, u64) {
        self.prune(None);
        let count = |channel: &ChannelSegment, at| channel.counter(at).load(Ordering::Relaxed);
        let retired = lock(&self.retired);
        let open = lock(&self.open);
        let channels = || open.values().map(|granted| &granted.segment).chain(retired.closing.iter().map(|(_, channel)| channel));
        let sum = |at| channels().fold(0u64, |sum, channel| sum.saturating_add(count(channel, at)));
        (open.len() as u64, retired.read.saturating_add(sum(CHANNEL_READ_AT)), retired.dropped.saturating_add(sum(CHANNEL_DROPPED_AT)))
    }
}
