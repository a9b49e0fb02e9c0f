//! The publisher node's side of a topic that other nodes subscribe to: the service subscribes
//! to the topic on its own router, keeps a bounded history of its events, and feeds each
//! subscriber node (a reader) from it within a window of unacknowledged bytes. A reader whose
//! window is full falls behind and catches up from the history as it acknowledges; what the
//! history no longer holds it is told is missing. Under policy Block the service stops taking
//! events while any reader's window is full, so its own subscription holds the publisher back.

use super::history::{event_size, History, Read};
use super::notice::Notice;
use super::{Config, Counters, Millis, Output};
use netmachine_schema::router_capnp::TopicPolicy;
use netmachine_schema::{Destination, EngineMessage, Identity, PeerMessage, Says};
use std::collections::{BTreeMap, VecDeque};

/// One subscriber node's pubsub service, as its publisher node feeds it.
#[derive(Debug)]
pub struct Reader {
    /// The seq it subscribed from: a Subscribe repeated (a retry that crossed the answer)
    /// changes nothing.
    from: u64,
    /// The seq to send next.
    pub next: u64,
    /// Sent and not acknowledged: (seq, size), oldest first.
    in_flight: VecDeque<(u64, usize)>,
    pub in_flight_bytes: usize,
    /// When the reader last acknowledged or asked for anything.
    last_heard: Millis,
    /// Whether watchers were told its window is full (and it has not had room since).
    full: bool,
}

impl Reader {
    fn new(from: u64, next: u64, now: Millis) -> Self {
        Reader { from, next, in_flight: VecDeque::new(), in_flight_bytes: 0, last_heard: now, full: false }
    }

    fn acknowledged(&mut self, upto: u64) {
        while self.in_flight.front().is_some_and(|(seq, _)| *seq <= upto) {
            let (_, size) = self.in_flight.pop_front().expect("checked");
            self.in_flight_bytes -= size;
        }
    }
}

/// Whether the service's subscription on its own router is in place yet.
#[derive(Debug, PartialEq, Eq)]
enum Local {
    /// Asked for; these readers wait for it, with the seq each asked to start from.
    Asked(Vec<(Identity, u64)>),
    Subscribed,
}

/// A topic published on this node and read by other nodes.
#[derive(Debug)]
pub struct Publication {
    topic: Identity,
    local: Local,
    pub policy: TopicPolicy,
    pub last_seq: u64,
    history: History,
    pub readers: BTreeMap<Identity, Reader>,
    /// When an event or heartbeat last went to the readers.
    last_sent: Millis,
}

impl Publication {
    /// A first reader asks for `topic`: the service subscribes on its router first.
    pub fn asked(topic: Identity, reader: Identity, from: u64, config: &Config, out: &mut VecDeque<Output>) -> Self {
        out.push_back(Output::SubscribeLocal(topic));
        Publication {
            topic,
            local: Local::Asked(vec![(reader, from)]),
            policy: TopicPolicy::Block,
            last_seq: 0,
            history: History::new(config.history),
            readers: BTreeMap::new(),
            last_sent: 0,
        }
    }

    fn send(&self, to: Identity, says: Says, out: &mut VecDeque<Output>) {
        out.push_back(Output::Send { to: Destination::Engine(to), message: PeerMessage::new(self.topic, says) });
    }

    /// The router subscribed the service, with the events it kept of the topic: they join the
    /// history, and the waiting readers are answered.
    pub fn subscribed_locally(&mut self, policy: TopicPolicy, last_seq: u64, kept: Vec<EngineMessage>, config: &Config, now: Millis, out: &mut VecDeque<Output>) {
        self.policy = policy;
        self.last_seq = self.last_seq.max(last_seq);
        self.history.fill_older(kept, now);
        if let Local::Asked(waiting) = std::mem::replace(&mut self.local, Local::Subscribed) {
            for (reader, from) in waiting {
                self.add_reader(reader, from, config, now, out);
            }
        }
    }

    /// The router refused: every waiting reader is told why.
    pub fn refused_locally(self, says: Says, out: &mut VecDeque<Output>) {
        if let Local::Asked(waiting) = &self.local {
            for (reader, _) in waiting {
                self.send(*reader, says.clone(), out);
            }
        }
    }

    /// Subscribe from `reader` (again, after a restart of either side: it starts over). A new
    /// reader past `config.max_readers` is refused.
    pub fn subscribe(&mut self, reader: Identity, from: u64, config: &Config, counters: &mut Counters, now: Millis, out: &mut VecDeque<Output>) {
        let waiting = match &self.local {
            Local::Asked(waiting) => waiting.len(),
            Local::Subscribed => 0,
        };
        let known = self.readers.contains_key(&reader) || matches!(&self.local, Local::Asked(w) if w.iter().any(|(r, _)| *r == reader));
        if !known && self.readers.len() + waiting >= config.max_readers {
            counters.readers_refused += 1;
            let detail = format!("topic {} already goes to {} nodes from here (pubsub max_readers)", self.topic, config.max_readers);
            return self.send(reader, Says::Refused { reason: netmachine_schema::peer::PeerRefusal::Denied, detail }, out);
        }
        match &mut self.local {
            Local::Asked(waiting) => {
                waiting.retain(|(r, _)| *r != reader);
                waiting.push((reader, from));
            }
            Local::Subscribed => self.add_reader(reader, from, config, now, out),
        }
    }

    fn add_reader(&mut self, reader: Identity, from: u64, config: &Config, now: Millis, out: &mut VecDeque<Output>) {
        if from != 0 && self.readers.get(&reader).is_some_and(|r| r.from == from) {
            self.send(reader, Says::Subscribed { last_seq: self.last_seq, policy: self.policy }, out);
            return;
        }
        let next = if from == 0 { self.last_seq + 1 } else { from };
        if self.readers.insert(reader, Reader::new(from, next, now)).is_none() {
            out.push_back(Output::Notify(Notice::ReaderAdded { topic: self.topic, reader }));
        }
        self.send(reader, Says::Subscribed { last_seq: self.last_seq, policy: self.policy }, out);
        self.pump(reader, config, out);
    }

    /// Unsubscribe from `reader`; false if it was not a reader.
    pub fn unsubscribe(&mut self, reader: Identity, out: &mut VecDeque<Output>) -> bool {
        if let Local::Asked(waiting) = &mut self.local {
            waiting.retain(|(r, _)| *r != reader);
        }
        let was = self.readers.remove(&reader).is_some();
        self.send(reader, Says::Unsubscribed, out);
        was
    }

    /// No reader left, nor waiting: the service can leave the topic.
    pub fn is_unread(&self) -> bool {
        self.readers.is_empty() && !matches!(&self.local, Local::Asked(waiting) if !waiting.is_empty())
    }

    /// An ack or resend from someone who is not a reader (the service restarted, or dropped
    /// it): it is told so, and subscribes again.
    fn not_a_reader(&self, from: Identity, out: &mut VecDeque<Output>) {
        let detail = format!("this node does not send topic {} to {from}", self.topic);
        self.send(from, Says::Refused { reason: netmachine_schema::peer::PeerRefusal::NotSubscribed, detail }, out);
    }

    /// `reader` has every event up to `upto`.
    pub fn ack(&mut self, reader: Identity, upto: u64, config: &Config, now: Millis, out: &mut VecDeque<Output>) {
        let Some(found) = self.readers.get_mut(&reader) else { return self.not_a_reader(reader, out) };
        found.acknowledged(upto);
        found.last_heard = now;
        self.pump(reader, config, out);
    }

    /// `reader` lost events `from..=to` on the way: those sent already are sent again (they
    /// are in its window still), or said missing if the history no longer holds them.
    pub fn resend(&mut self, reader: Identity, from: u64, to: u64, counters: &mut Counters, now: Millis, out: &mut VecDeque<Output>) {
        let Some(found) = self.readers.get_mut(&reader) else { return self.not_a_reader(reader, out) };
        found.last_heard = now;
        counters.resends_served += 1;
        let to = to.min(found.next.saturating_sub(1));
        let sends: Vec<Says> = self.history.read(from.max(1), to).map(|read| match read {
            Read::Event(kept) => Says::Event(kept.message.clone()),
            Read::Missing { from, to } => Says::Missing { from, to },
        }).collect();
        for says in sends {
            self.send(reader, says, out);
        }
    }

    /// An event of the topic, from the service's subscription on its router.
    pub fn published(&mut self, message: EngineMessage, config: &Config, now: Millis, out: &mut VecDeque<Output>) {
        let seq = message.id;
        if seq <= self.last_seq {
            return;
        }
        self.history.push(seq, message, now);
        self.last_seq = seq;
        self.last_sent = now;
        for reader in self.readers.keys().copied().collect::<Vec<_>>() {
            self.pump(reader, config, out);
        }
    }

    /// Sends `reader` what it lacks, from the history, while its window has room.
    fn pump(&mut self, id: Identity, config: &Config, out: &mut VecDeque<Output>) {
        let Some(reader) = self.readers.get_mut(&id) else { return };
        let mut sends = Vec::new();
        for read in self.history.read(reader.next, self.last_seq) {
            if reader.in_flight_bytes >= config.window_bytes {
                break;
            }
            match read {
                Read::Missing { from, to } => {
                    sends.push(Says::Missing { from, to });
                    reader.next = to + 1;
                }
                Read::Event(kept) => {
                    let size = event_size(&kept.message);
                    reader.in_flight.push_back((kept.seq, size));
                    reader.in_flight_bytes += size;
                    reader.next = kept.seq + 1;
                    sends.push(Says::Event(kept.message.clone()));
                }
            }
        }
        let full = reader.in_flight_bytes >= config.window_bytes;
        let newly_full = full && !reader.full;
        reader.full = full;
        for says in sends {
            self.send(id, says, out);
        }
        if newly_full {
            out.push_back(Output::Notify(Notice::ReaderFull { topic: self.topic, reader: id }));
        }
    }

    /// Whether every reader's window has room: under Block, the service takes no further
    /// event of any topic until it has.
    pub fn has_room(&self, config: &Config) -> bool {
        self.policy != TopicPolicy::Block || self.readers.values().all(|r| r.in_flight_bytes < config.window_bytes)
    }

    /// The reader furthest behind, if its window is full.
    pub fn slowest(&self, config: &Config) -> Option<Identity> {
        let (id, reader) = self.readers.iter().min_by_key(|(_, r)| r.next)?;
        (reader.in_flight_bytes >= config.window_bytes).then_some(*id)
    }

    /// Time passes: old history goes, an idle topic heartbeats, and a reader silent for too
    /// long with events unacknowledged is dropped (it subscribes again when it returns).
    pub fn tick(&mut self, config: &Config, counters: &mut Counters, now: Millis, out: &mut VecDeque<Output>) {
        self.history.expire(now);
        let silent: Vec<Identity> = self
            .readers
            .iter()
            .filter(|(_, r)| r.in_flight_bytes > 0 && now >= r.last_heard + config.reader_timeout)
            .map(|(id, _)| *id)
            .collect();
        for reader in silent {
            self.readers.remove(&reader);
            counters.readers_dropped += 1;
            let reason = format!("silent for {} ms with events unacknowledged", config.reader_timeout);
            out.push_back(Output::Notify(Notice::ReaderLeft { topic: self.topic, reader, reason }));
        }
        if now >= self.last_sent + config.heartbeat && !self.readers.is_empty() {
            self.last_sent = now;
            for reader in self.readers.keys() {
                self.send(*reader, Says::Heartbeat(self.last_seq), out);
            }
            counters.heartbeats_sent += self.readers.len() as u64;
        }
    }

    /// When `tick` next has something to do.
    pub fn next_tick(&self, config: &Config) -> Option<Millis> {
        let heartbeat = (!self.readers.is_empty()).then_some(self.last_sent + config.heartbeat);
        let silent = self.readers.values().filter(|r| r.in_flight_bytes > 0).map(|r| r.last_heard + config.reader_timeout).min();
        [heartbeat, silent, self.history.next_expiry()].into_iter().flatten().min()
    }
}
