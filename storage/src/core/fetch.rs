//! Fetching one block from peers, free of I/O: which peer is asked for which groups, what an
//! answer proves, and which peers are cut. An answer is the block's size (8 bytes, little
//! endian) and then the asked groups encoded for verified streaming; each group is checked as
//! its last byte arrives (`verify`), stored at once, and never asked for again. The first ask
//! is for the last group, which proves the size. Several peers are asked for different ranges at
//! once; a peer that sends a bad byte or ends its answer short is cut on the spot, one that
//! fails or stalls past the timeout (measured from its last byte) earns a strike, and is cut at
//! the limit. What a cut peer was asked for goes to the others.

use super::verify::{group_ranges, groups, Assembled, Corrupt, Verifier, GROUP_BYTES};
use super::Millis;
use netmachine_schema::{ContentId, Identity};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchConfig {
    /// Groups one request asks for at most (64: 1 MiB).
    pub request_groups: u64,
    /// A request with no byte for this long has failed.
    pub timeout: Millis,
    /// Failed requests after which a peer is cut.
    pub strikes: u32,
    /// Requests one peer is asked at once (more hide the round trip).
    pub per_peer: usize,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig { request_groups: 64, timeout: 5_000, strikes: 2, per_peer: 16 }
    }
}

/// What one request asks of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// The size and the last group (which proves the size).
    Last,
    /// Groups `first..end`.
    Groups { first: u64, end: u64 },
}

/// Why a peer was cut from a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CutReason {
    /// It sent bytes its hashes do not vouch for (or a size its last group disproves).
    Corrupt(Corrupt),
    /// It failed, stalled or stopped short this many times.
    Unresponsive(u32),
}

/// What the shell is to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Ask `peer`; feed its answer to [`Fetch::answered`] and [`Fetch::ended`] under `request`.
    Request { request: u64, peer: Identity, ask: Ask },
    /// Stop a request: its peer was cut, or the fetch is over.
    Cancel { request: u64 },
    /// Checked bytes of the block at `offset`: write them, and record the group as verified.
    Store { offset: u64, bytes: Vec<u8> },
    /// The size is proven (the shell sizes the block's file and keeps the size).
    Sized { size: u64 },
    /// A peer cut from this fetch: its reputation goes down.
    Cut { peer: Identity, reason: CutReason },
    /// Every group is checked and stored. The block's outboard, put together from the parents
    /// checked (`None` for a fetch resumed after a restart, which did not see them all).
    Complete { size: u64, outboard: Option<Vec<u8>> },
    /// No peer is left that could give the missing groups.
    Failed { missing: u64 },
}

#[derive(Debug)]
struct Peer {
    id: Identity,
    strikes: u32,
    cut: bool,
    /// Requests it is asked and has not answered.
    asked: usize,
}

struct Request {
    peer: Identity,
    ask: Ask,
    deadline: Millis,
    /// The size header while it arrives.
    header: Vec<u8>,
    verifier: Option<Verifier>,
}

/// One block being fetched.
pub struct Fetch {
    id: ContentId,
    config: FetchConfig,
    size: Option<u64>,
    verified: BTreeSet<u64>,
    /// The outboard so far (from the size on, unless resumed).
    outboard: Option<Assembled>,
    resumed: bool,
    in_flight: BTreeSet<u64>,
    /// Every group below this one is verified or asked for.
    unasked: u64,
    peers: Vec<Peer>,
    requests: BTreeMap<u64, Request>,
    next_request: u64,
    actions: VecDeque<Action>,
    over: bool,
    /// Bytes each peer gave that checked out.
    pub received: BTreeMap<Identity, u64>,
}

impl Fetch {
    pub fn new(id: ContentId, config: FetchConfig) -> Self {
        Fetch {
            id,
            config,
            size: None,
            verified: BTreeSet::new(),
            outboard: None,
            resumed: false,
            in_flight: BTreeSet::new(),
            unasked: 0,
            peers: Vec::new(),
            requests: BTreeMap::new(),
            next_request: 0,
            actions: VecDeque::new(),
            over: false,
            received: BTreeMap::new(),
        }
    }

    /// A fetch resumed after a restart: the size was proven and `verified` groups are on disk.
    pub fn resume(id: ContentId, config: FetchConfig, size: u64, verified: impl IntoIterator<Item = u64>) -> Self {
        let mut fetch = Fetch::new(id, config);
        fetch.size = Some(size);
        fetch.resumed = true;
        fetch.verified.extend(verified.into_iter().filter(|group| *group < groups(size)));
        fetch
    }

    pub fn id(&self) -> ContentId {
        self.id
    }

    pub fn size(&self) -> Option<u64> {
        self.size
    }

    /// Groups still missing (once the size is known).
    pub fn missing(&self) -> Option<u64> {
        self.size.map(|size| groups(size) - self.verified.len() as u64)
    }

    /// Peers to ask, in order of preference (those already known keep their place).
    pub fn add_peers(&mut self, peers: impl IntoIterator<Item = Identity>, now: Millis) {
        for id in peers {
            if !self.peers.iter().any(|p| p.id == id) {
                self.peers.push(Peer { id, strikes: 0, cut: false, asked: 0 });
            }
        }
        self.schedule(now);
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Fetch::tick`] has something to do next.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.requests.values().map(|r| r.deadline).min()
    }

    /// The next bytes of request `request`'s answer.
    pub fn answered(&mut self, request: u64, mut bytes: &[u8], now: Millis) {
        let Some(asked) = self.requests.get_mut(&request) else { return };
        asked.deadline = now + self.config.timeout;
        if asked.verifier.is_none() {
            let take = (8 - asked.header.len()).min(bytes.len());
            asked.header.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            let Ok(header) = <[u8; 8]>::try_from(asked.header.as_slice()) else { return };
            let claimed = u64::from_le_bytes(header);
            let ranges = match (asked.ask, self.size) {
                (_, Some(size)) if size != claimed => {
                    let peer = asked.peer;
                    return self.cut(peer, CutReason::Corrupt(Corrupt { id: self.id, offset: claimed }), now);
                }
                (Ask::Last, _) => group_ranges(groups(claimed) - 1, groups(claimed)),
                (Ask::Groups { first, end }, _) => group_ranges(first, end),
            };
            asked.verifier = Some(Verifier::new(self.id, claimed, &ranges));
            asked.header = claimed.to_le_bytes().to_vec();
        }
        self.feed(request, bytes, now);
    }

    fn feed(&mut self, request: u64, bytes: &[u8], now: Millis) {
        let Some(asked) = self.requests.get_mut(&request) else { return };
        let peer = asked.peer;
        let claimed = u64::from_le_bytes(asked.header.as_slice().try_into().unwrap_or_default());
        let checked = asked.verifier.as_mut().map_or(Ok(Vec::new()), |verifier| verifier.feed(bytes));
        let vouched = asked.verifier.as_mut().map(Verifier::take_vouched).unwrap_or_default();
        match checked {
            Err(corrupt) => self.cut(peer, CutReason::Corrupt(corrupt), now),
            Ok(checked) => {
                let unsized_before = self.size.is_none();
                for (offset, group_bytes) in checked {
                    if self.size.is_none() {
                        // The last group checked out under the claimed size: the size is proven.
                        self.size = Some(claimed);
                        self.outboard = (!self.resumed).then(|| Assembled::new(claimed));
                        self.actions.push_back(Action::Sized { size: claimed });
                    }
                    let group = offset / GROUP_BYTES;
                    self.in_flight.remove(&group);
                    *self.received.entry(peer).or_default() += group_bytes.len() as u64;
                    if self.verified.insert(group) {
                        self.actions.push_back(Action::Store { offset, bytes: group_bytes });
                    }
                }
                // Parents are placed by the tree's shape: only under the proven size.
                if let Some(outboard) = self.outboard.as_mut().filter(|_| self.size == Some(claimed)) {
                    vouched.iter().for_each(|parent| outboard.add(parent));
                }
                if unsized_before && self.size.is_some() {
                    // The other peers can be given ranges now.
                    self.schedule(now);
                }
                self.finish_if_complete();
            }
        }
    }

    /// Request `request`'s answer ended cleanly. An answer that ends short broke the protocol
    /// (a peer that fails says so, and one cut off is `failed`), as does one whose size claim
    /// its bytes do not bear out: its peer is cut.
    pub fn ended(&mut self, request: u64, now: Millis) {
        self.feed(request, &[], now);
        let Some(asked) = self.requests.remove(&request) else { return };
        self.release(&asked);
        if !asked.verifier.as_ref().is_some_and(Verifier::finished) {
            let claimed = u64::from_le_bytes(asked.header.as_slice().try_into().unwrap_or_default());
            self.cut(asked.peer, CutReason::Corrupt(Corrupt { id: self.id, offset: claimed }), now);
        }
        self.schedule(now);
    }

    /// Request `request` failed (the peer could not be reached, or refused): a strike.
    pub fn failed(&mut self, request: u64, now: Millis) {
        let Some(asked) = self.requests.remove(&request) else { return };
        self.release(&asked);
        self.strike(asked.peer, now);
        self.schedule(now);
    }

    /// Requests with no byte for the timeout fail.
    pub fn tick(&mut self, now: Millis) {
        let late: Vec<u64> = self.requests.iter().filter(|(_, r)| r.deadline <= now).map(|(id, _)| *id).collect();
        for request in late {
            self.actions.push_back(Action::Cancel { request });
            self.failed(request, now);
        }
    }

    /// The peer is idle again, and the groups it was asked for and did not give are missing.
    fn release(&mut self, asked: &Request) {
        if let Ask::Groups { first, end } = asked.ask {
            for group in first..end {
                self.in_flight.remove(&group);
                // Only a group still missing is asked again: an answer that came whole does not
                // send the next ask back over every group checked since.
                if !self.verified.contains(&group) {
                    self.unasked = self.unasked.min(group);
                }
            }
        }
        if let Some(peer) = self.peers.iter_mut().find(|p| p.id == asked.peer) {
            peer.asked = peer.asked.saturating_sub(1);
        }
    }

    fn strike(&mut self, id: Identity, now: Millis) {
        let Some(peer) = self.peers.iter_mut().find(|p| p.id == id) else { return };
        peer.strikes += 1;
        if peer.strikes >= self.config.strikes {
            let strikes = peer.strikes;
            self.cut(id, CutReason::Unresponsive(strikes), now);
        }
    }

    fn cut(&mut self, id: Identity, reason: CutReason, now: Millis) {
        let Some(peer) = self.peers.iter_mut().find(|p| p.id == id) else { return };
        if peer.cut {
            return;
        }
        peer.cut = true;
        self.actions.push_back(Action::Cut { peer: id, reason });
        let theirs: Vec<u64> = self.requests.iter().filter(|(_, r)| r.peer == id).map(|(request, _)| *request).collect();
        for request in theirs {
            if let Some(asked) = self.requests.remove(&request) {
                self.actions.push_back(Action::Cancel { request });
                self.release(&asked);
            }
        }
        self.schedule(now);
    }

    fn finish_if_complete(&mut self) {
        let Some(size) = self.size else { return };
        if self.over || (self.verified.len() as u64) < groups(size) {
            return;
        }
        self.over = true;
        for request in std::mem::take(&mut self.requests).into_keys() {
            self.actions.push_back(Action::Cancel { request });
        }
        let outboard = self.outboard.take().map(Assembled::into_bytes);
        self.actions.push_back(Action::Complete { size, outboard });
    }

    /// Gives the peers that are not cut the next missing ranges, in turn, up to `per_peer`
    /// each (while the size is unknown, one ask for it at a time).
    fn schedule(&mut self, now: Millis) {
        self.finish_if_complete();
        if self.over {
            return;
        }
        'rounds: loop {
            let mut asked_any = false;
            for index in 0..self.peers.len() {
                if self.peers[index].cut || self.peers[index].asked >= self.config.per_peer {
                    continue;
                }
                let ask = match self.size {
                    None if self.requests.values().any(|r| r.ask == Ask::Last) => break 'rounds,
                    None => Ask::Last,
                    Some(size) => match self.next_range(groups(size)) {
                        Some((first, end)) => Ask::Groups { first, end },
                        None => break 'rounds,
                    },
                };
                if let Ask::Groups { first, end } = ask {
                    self.in_flight.extend(first..end);
                }
                let peer = &mut self.peers[index];
                peer.asked += 1;
                self.next_request += 1;
                let request = self.next_request;
                self.requests.insert(request, Request { peer: peer.id, ask, deadline: now + self.config.timeout, header: Vec::new(), verifier: None });
                self.actions.push_back(Action::Request { request, peer: peer.id, ask });
                asked_any = true;
            }
            if !asked_any {
                break;
            }
        }
        if self.requests.is_empty() && self.peers.iter().all(|p| p.cut) && !self.peers.is_empty() {
            self.over = true;
            let missing = self.missing().unwrap_or(u64::MAX);
            self.actions.push_back(Action::Failed { missing });
        }
    }

    /// The first run of missing groups not asked for, up to `request_groups` long.
    fn next_range(&mut self, all: u64) -> Option<(u64, u64)> {
        while self.unasked < all && (self.verified.contains(&self.unasked) || self.in_flight.contains(&self.unasked)) {
            self.unasked += 1;
        }
        let first = self.unasked;
        if first >= all {
            return None;
        }
        let end = (first..all.min(first + self.config.request_groups)).find(|g| self.verified.contains(g) || self.in_flight.contains(g)).unwrap_or(all.min(first + self.config.request_groups));
        Some((first, end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::verify::{encode, outboard};

    #[test]
    fn a_peer_that_lies_about_the_size_is_cut_and_the_next_is_asked() {
        let content: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let (liar, honest) = (Identity([1; 32]), Identity([2; 32]));
        let mut fetch = Fetch::new(ContentId::of(&content), FetchConfig::default());
        fetch.add_peers([liar, honest], 0);
        assert_eq!(fetch.poll_action(), Some(Action::Request { request: 1, peer: liar, ask: Ask::Last }));
        assert_eq!(fetch.poll_action(), None, "one ask for the size at a time");
        let last = groups(50_000) - 1;
        let mut answer = 50_001u64.to_le_bytes().to_vec();
        answer.extend(encode(&content[..], 50_000, &outboard(&content), &group_ranges(last, last + 1)).unwrap());
        fetch.answered(1, &answer, 10);
        assert_eq!(fetch.poll_action(), None, "the claimed last group is one byte longer: not checked yet");
        fetch.ended(1, 11);
        assert!(matches!(fetch.poll_action(), Some(Action::Cut { peer, reason: CutReason::Corrupt(_) }) if peer == liar));
        assert_eq!(fetch.poll_action(), Some(Action::Request { request: 2, peer: honest, ask: Ask::Last }));
        answer[..8].copy_from_slice(&50_000u64.to_le_bytes());
        fetch.answered(2, &answer, 20);
        assert_eq!(fetch.poll_action(), Some(Action::Sized { size: 50_000 }));
        assert!(matches!(fetch.poll_action(), Some(Action::Store { offset, .. }) if offset == last * GROUP_BYTES));
        fetch.ended(2, 30);
        assert_eq!(fetch.poll_action(), Some(Action::Request { request: 3, peer: honest, ask: Ask::Groups { first: 0, end: last } }));
        assert_eq!(fetch.missing(), Some(last));
    }
}
