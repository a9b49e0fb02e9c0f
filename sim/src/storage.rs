//! Block fetching in the simulation: one node fetches a block with the storage core's `Fetch`
//! from providers that answer over simulated streams on virtual time, with seeded latency and
//! pacing. A provider is honest, corrupt (one bad byte in each answer), partitioned away (never
//! answers) or stalls mid-answer; the fetching node may crash and resume from the groups it had
//! verified. Blocks travel on streams of their own, not as routed messages, so this world
//! models the streams alone rather than the routers and transports of `world`.

use crate::rng::Rng;
use netmachine_schema::{ContentId, Identity};
use netmachine_storage::core::fetch::{Action, Ask, CutReason, Fetch, FetchConfig};
use netmachine_storage::core::verify::{encode, group_ranges, groups, outboard, GROUP_BYTES};
use netmachine_storage::core::Millis;
use std::collections::{BTreeMap, BTreeSet};

/// How a provider answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Honest,
    /// Flips one byte in the middle of every answer.
    Corrupt,
    /// Never answers.
    Partitioned,
    /// Sends the first half of every answer, then nothing.
    Stalls,
}

/// What a fetch run did.
#[derive(Debug, Default)]
pub struct FetchRun {
    /// Virtual ms from the start until the block was complete.
    pub completed_at: Option<Millis>,
    /// Groups still missing when the fetch failed.
    pub failed_missing: Option<u64>,
    /// The assembled bytes equal the block's.
    pub content_ok: bool,
    /// Whether the outboard the fetch put together is the block's (`None`: it gave none).
    pub outboard_ok: Option<bool>,
    pub cut: Vec<(usize, CutReason)>,
    /// Checked bytes each provider gave.
    pub from: Vec<u64>,
    pub requests: u64,
    /// Checked bytes received after the crash, if there was one.
    pub after_crash: u64,
}

struct Delivery {
    request: u64,
    /// None: the answer's end.
    piece: Option<Vec<u8>>,
}

/// Fetches a block of `size` bytes from `providers` with `config`; the fetching node crashes
/// (losing all but what it stored) once `crash_after` groups are stored, if set.
pub fn fetch(seed: u64, size: usize, providers: &[Provider], config: FetchConfig, crash_after: Option<usize>) -> FetchRun {
    let mut rng = Rng::new(seed);
    let content: Vec<u8> = (0..size).map(|_| rng.next_u64() as u8).collect();
    let tree_outboard = outboard(&content);
    let id = ContentId::of(&content);
    let peers: Vec<Identity> = (0..providers.len()).map(|i| Identity([i as u8 + 1; 32])).collect();
    let index = |peer: &Identity| peers.iter().position(|p| p == peer).expect("a provider");
    let mut run = FetchRun { from: vec![0; providers.len()], ..FetchRun::default() };
    let mut now: Millis = 0;
    let mut queue: BTreeMap<(Millis, u64), Delivery> = BTreeMap::new();
    let mut sequence = 0;
    let mut cancelled = BTreeSet::new();
    let mut assembled = vec![0u8; size];
    let mut stored: BTreeSet<u64> = BTreeSet::new();
    let mut crashed = false;
    let mut fetch = Fetch::new(id, config);
    fetch.add_peers(peers.clone(), now);
    while now < 600_000 {
        while let Some(action) = fetch.poll_action() {
            match action {
                Action::Request { request, peer, ask } => {
                    run.requests += 1;
                    let provider = providers[index(&peer)];
                    if provider == Provider::Partitioned {
                        continue;
                    }
                    let ranges = match ask {
                        Ask::Last => group_ranges(groups(size as u64) - 1, groups(size as u64)),
                        Ask::Groups { first, end } => group_ranges(first, end),
                    };
                    let mut answer = (size as u64).to_le_bytes().to_vec();
                    answer.extend(encode(&content[..], size as u64, &tree_outboard, &ranges).expect("an honest encoding"));
                    if provider == Provider::Corrupt {
                        let middle = answer.len() / 2;
                        answer[middle] ^= 0x40;
                    }
                    if provider == Provider::Stalls {
                        answer.truncate(answer.len() / 2);
                    }
                    let mut at = now + 5 + rng.next_u64() % 35;
                    for piece in answer.chunks(GROUP_BYTES as usize) {
                        sequence += 1;
                        queue.insert((at, sequence), Delivery { request, piece: Some(piece.to_vec()) });
                        at += 1 + rng.next_u64() % 3;
                    }
                    if provider != Provider::Stalls {
                        sequence += 1;
                        queue.insert((at, sequence), Delivery { request, piece: None });
                    }
                }
                Action::Cancel { request } => {
                    cancelled.insert(request);
                }
                Action::Store { offset, bytes } => {
                    assert!(stored.insert(offset / GROUP_BYTES), "group {} stored twice", offset / GROUP_BYTES);
                    assembled[offset as usize..offset as usize + bytes.len()].copy_from_slice(&bytes);
                    if crashed {
                        run.after_crash += bytes.len() as u64;
                    }
                }
                Action::Sized { size: proven } => assert_eq!(proven, size as u64, "the proven size is the block's"),
                Action::Cut { peer, reason } => run.cut.push((index(&peer), reason)),
                Action::Complete { outboard, .. } => {
                    run.completed_at = Some(now);
                    run.outboard_ok = outboard.map(|outboard| outboard == tree_outboard);
                    run.content_ok = assembled == content;
                    for (peer, bytes) in &fetch.received {
                        run.from[index(peer)] += bytes;
                    }
                    return run;
                }
                Action::Failed { missing } => {
                    run.failed_missing = Some(missing);
                    return run;
                }
            }
        }
        if !crashed && crash_after.is_some_and(|after| stored.len() >= after) {
            // Everything in memory is lost: answers in flight, and the fetch itself.
            crashed = true;
            for (peer, bytes) in &fetch.received {
                run.from[index(peer)] += bytes;
            }
            queue.clear();
            fetch = Fetch::resume(id, config, size as u64, stored.iter().copied());
            fetch.add_peers(peers.clone(), now);
            continue;
        }
        let next_delivery = queue.keys().next().map(|(at, _)| *at);
        let next = match (next_delivery, fetch.next_deadline()) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => break,
        };
        now = now.max(next);
        while let Some(entry) = queue.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let delivery = entry.remove();
            if cancelled.contains(&delivery.request) {
                continue;
            }
            match delivery.piece {
                Some(piece) => fetch.answered(delivery.request, &piece, now),
                None => fetch.ended(delivery.request, now),
            }
        }
        fetch.tick(now);
    }
    run
}
