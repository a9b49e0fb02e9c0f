//! Block fetches in the simulation: from three peers with one sending bad data and one
//! partitioned away, the block completes with verified bytes; a crash of the fetching node
//! resumes where it stopped; a fetch with no honest peer fails, saying what is missing.

use netmachine_sim::for_each_seed;
use netmachine_sim::storage::{fetch, Provider};
use netmachine_storage::core::fetch::{CutReason, FetchConfig};

const SIZE: usize = (1 << 20) + 12_345;
const CONFIG: FetchConfig = FetchConfig { request_groups: 8, timeout: 2_000, strikes: 2, per_peer: 2 };

#[test]
fn a_fetch_from_three_peers_one_corrupt_one_partitioned_completes_with_verified_bytes() {
    for_each_seed(&[1, 2, 3], |seed| {
        let run = fetch(seed, SIZE, &[Provider::Corrupt, Provider::Partitioned, Provider::Honest], CONFIG, None);
        assert!(run.completed_at.is_some() && run.content_ok, "seed {seed}: {run:?}");
        assert_eq!(run.outboard_ok, Some(true), "the outboard is put together from the parents checked, the corrupt peer's left out");
        assert!(run.cut.iter().any(|(peer, reason)| *peer == 0 && matches!(reason, CutReason::Corrupt(_))), "the corrupt peer is cut: {:?}", run.cut);
        assert!(run.cut.contains(&(1, CutReason::Unresponsive(2))), "the partitioned peer is cut after two timeouts: {:?}", run.cut);
        assert!(run.from[0] < 8 * 16_384, "the corrupt peer gave less than one request before it was cut ({} bytes)", run.from[0]);
        assert_eq!(run.from.iter().sum::<u64>(), SIZE as u64, "each byte was taken once");
        println!("seed {seed}: {SIZE} bytes in {} virtual ms over {} requests; checked bytes per peer (corrupt, partitioned, honest): {:?}", run.completed_at.unwrap(), run.requests, run.from);
    });
}

#[test]
fn ranges_are_split_across_honest_peers_and_a_stalling_one_is_replaced() {
    for_each_seed(&[4, 5], |seed| {
        let run = fetch(seed, SIZE, &[Provider::Honest, Provider::Honest, Provider::Honest], CONFIG, None);
        assert!(run.content_ok, "seed {seed}: {run:?}");
        assert!(run.from.iter().all(|bytes| *bytes > 0), "every honest peer gave ranges: {:?}", run.from);
        let run = fetch(seed, SIZE, &[Provider::Stalls, Provider::Honest], CONFIG, None);
        assert!(run.content_ok, "seed {seed}: {run:?}");
        assert_eq!(run.cut, vec![(0, CutReason::Unresponsive(2))]);
        assert_eq!(run.from, vec![0, SIZE as u64], "what the stalling peer was asked went to the other");
    });
}

#[test]
fn a_crash_of_the_fetching_node_resumes_where_it_stopped() {
    for_each_seed(&[6, 7], |seed| {
        let run = fetch(seed, SIZE, &[Provider::Honest, Provider::Honest], CONFIG, Some(30));
        assert!(run.content_ok, "seed {seed}: {run:?}");
        let groups = (SIZE as u64).div_ceil(16_384);
        assert!(run.after_crash <= (groups - 30) * 16_384, "only what was missing is fetched after the crash ({} bytes)", run.after_crash);
        assert!(run.after_crash > 0);
        assert_eq!(run.outboard_ok, None, "a resumed fetch did not see every parent: the block is hashed again to keep it");
    });
}

#[test]
fn a_fetch_with_no_honest_peer_fails_saying_what_is_missing() {
    let run = fetch(8, SIZE, &[Provider::Corrupt, Provider::Partitioned], CONFIG, None);
    assert!(run.completed_at.is_none());
    assert_eq!(run.failed_missing, Some(u64::MAX), "not even the size was proven: {run:?}");
    let run = fetch(9, 100_000, &[Provider::Corrupt], CONFIG, None);
    assert!(run.failed_missing.is_some() && !run.content_ok);
}
