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
use netmachine_engine::ring::layout::{CHANNEL_CONSUMER_PID_AT, CHANNEL_DROPPED_AT, CHANNEL_HEAD_AT, CHANNEL_PRODUCER_PID_AT, CHANNEL_READ_AT, CHANNEL_TAIL_AT, CHANNEL_WRITTEN_AT};
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
    /// Revoked channels their receivers may still be reading, and what the channels revoked
    /// and read to the end carried: (read, dropped).
    retired: Mutex<(Vec<ChannelSegment>, u64, u64)>,
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
        Channels { granting, node, capacity, max_body, open: Mutex::new(HashMap::new()), forwarded: Mutex::new(HashMap::new()), retired: Mutex::new((Vec::new(), 0, 0)) }
    }

    /// The ring thread forwarded a message from `from` to `to`: past `GRANT_AFTER`, grants
    /// `from` a channel to `to` in its channel table (unless the table is full: each channel
    /// holds a ring's worth of shared memory; its messages to further engines keep going
    /// through the router).
    pub fn forwarded(&self, from: &Arc<RingEndpoint>, to: &RingEndpoint) {
        if !self.granting {
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
        lock(&self.forwarded).remove(&pair);
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
            if let Ok(channel) = ChannelSegment::open(&ring::channel_name(&self.node.0, &from.engine.0, &peer.0), Some(&from.engine.0), Some(&peer.0)) {
                channel.close();
            }
            from.segment.withdraw(&peer.0);
            return Ok(());
        };
        let Some(to) = to.filter(|to| !to.is_closed()) else {
            self.revoke_pair(from.engine, peer);
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
        let pairs: Vec<(Identity, Identity)> = lock(&self.open).keys().filter(|(producer, consumer)| producer == engine || consumer == engine).copied().collect();
        pairs.into_iter().map(|(producer, consumer)| self.revoke_pair(producer, consumer).filter(|_| consumer == *engine).unwrap_or(0)).sum()
    }

    /// Closes one channel and takes it out of its producer's table; returns what was written
    /// to it and never read.
    fn revoke_pair(&self, producer: Identity, consumer: Identity) -> Option<u64> {
        let Granted { segment: channel, producer } = lock(&self.open).remove(&(producer, consumer))?;
        channel.close();
        producer.segment.withdraw(&consumer.0);
        let _ = RingSegment::unlink(&channel.name);
        let count = |at| channel.counter(at).load(Ordering::Relaxed);
        let unread = count(CHANNEL_WRITTEN_AT).saturating_sub(count(CHANNEL_READ_AT) + count(CHANNEL_DROPPED_AT));
        lock(&self.retired).0.push(channel);
        Some(unread)
    }

    /// After a restart: takes over a channel of this node whose two engines are alive (they go
    /// on using it) and whose producer's rings were adopted (`producer_of` finds them), and
    /// removes the others.
    pub fn adopt(&self, file: &str, producer_of: impl Fn(&Identity) -> Option<Arc<RingEndpoint>>) {
        let name = format!("/{file}");
        let alive = |channel: &ChannelSegment| [CHANNEL_PRODUCER_PID_AT, CHANNEL_CONSUMER_PID_AT].iter().all(|&at| ring::process_alive(channel.word(at).load(Ordering::Relaxed)));
        let adopted = ChannelSegment::open(&name, None, None).ok().filter(|channel| alive(channel) && !channel.is_closed());
        match adopted.and_then(|channel| Some((producer_of(&Identity(channel.producer()))?, channel))) {
            Some((producer, channel)) => {
                tracing::info!(channel = %name, "adopted a direct channel between live engines");
                let pair = (producer.engine, Identity(channel.consumer()));
                lock(&self.open).insert(pair, Granted { segment: channel, producer });
            }
            _ => {
                tracing::info!(channel = %name, "removed a direct channel of an engine that is gone");
                let _ = RingSegment::unlink(&name);
            }
        }
    }

    /// (channels open, messages their receivers read, messages their receivers dropped), the
    /// counts since this router started, revoked channels included.
    pub fn counters(&self) -> (u64, u64, u64) {
        let count = |channel: &ChannelSegment, at| channel.counter(at).load(Ordering::Relaxed);
        let mut retired = lock(&self.retired);
        let (closing, read, dropped) = &mut *retired;
        // A revoked channel is done with once read to the end, or once its receiver is gone.
        closing.retain(|channel| {
            let done = count(channel, CHANNEL_HEAD_AT) == count(channel, CHANNEL_TAIL_AT) || !ring::process_alive(channel.word(CHANNEL_CONSUMER_PID_AT).load(Ordering::Relaxed));
            if done {
                *read += count(channel, CHANNEL_READ_AT);
                *dropped += count(channel, CHANNEL_DROPPED_AT);
            }
            !done
        });
        let open = lock(&self.open);
        let channels = || open.values().map(|granted| &granted.segment).chain(closing.iter());
        let sum = |at| channels().map(|channel| count(channel, at)).sum::<u64>();
        (open.len() as u64, *read + sum(CHANNEL_READ_AT), *dropped + sum(CHANNEL_DROPPED_AT))
    }
}
