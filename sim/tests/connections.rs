//! Scenarios for the transport's connection pool across many simulated nodes: a full mesh
//! forming from simultaneous dials, a partition healing with no operator, a transport killed
//! and restarted mid-stream. Each prints its figures; a failure names its seed.

use netmachine_sim::{for_each_seed, World, QUIC_IDLE};

/// Sends one frame between every pair each `every` ms, for `duration` ms from now.
fn steady_traffic(world: &mut World, duration: u64, every: u64) {
    let mut at = world.now;
    let to = at + duration;
    while at < to {
        world.run_until(at);
        world.send_all_pairs();
        at += every;
    }
    world.run_until(to);
}

/// `n` nodes on 5 ms links with `loss`, run until their mesh has settled.
fn settled_mesh(seed: u64, n: usize, loss: f64) -> World {
    let mut world = World::new(seed, n, 5, loss);
    world.run_until_true(60_000, World::settled).expect("the mesh settles");
    world
}

#[test]
fn sixteen_nodes_dialing_each_other_at_once_settle_on_one_connection_per_pair_and_every_frame_arrives() {
    for_each_seed(&[1, 2, 3], |seed| {
        let mut world = settled_mesh(seed, 16, 0.02);
        let settled = world.now;
        world.send_all_pairs();
        world.run_until(settled + 5_000);
        let r = &world.report;
        eprintln!("seed {seed}: 16 nodes settled at {settled} ms; {} dials, {} connections settled as duplicates; {}/{} frames delivered", r.dials, r.connections_settled, r.delivered, r.sent);
        assert_eq!((r.delivered, r.duplicates, r.lost_in_flight), (16 * 15, 0, 0), "{r:?}");
        assert!(world.settled());
        // Simultaneous dials settle: every pair ends with one connection, at most one extra each.
        assert!(r.dials <= 16 * 15, "{} dials for 120 pairs", r.dials);
    });
}

#[test]
fn a_partition_heals_without_operator_action() {
    for_each_seed(&[4, 5, 6], |seed| {
        let mut world = settled_mesh(seed, 8, 0.01);
        steady_traffic(&mut world, 2_000, 100);
        world.isolate(0, true);
        // Longer than QUIC's idle timeout: both sides give the connections up and redial.
        steady_traffic(&mut world, 2 * QUIC_IDLE, 100);
        assert!((1..world.len()).all(|n| !world.connected(n, 0) && !world.connected(0, n)), "connections to the cut-off node are given up");
        world.isolate(0, false);
        let healed_at = world.now;
        let recovered = world.run_until_true(healed_at + 60_000, World::settled).expect("the mesh settles again");
        // What waited during the partition goes out once reconnected.
        world.run_until(recovered + 5_000);
        let r = world.report.clone();
        eprintln!(
            "seed {seed}: partition of 60 s healed; settled again {} ms after healing; sent {}, delivered {}, lost in flight {}, duplicates {}",
            recovered - healed_at, r.sent, r.delivered, r.lost_in_flight, r.duplicates
        );
        assert_eq!(r.duplicates, 0, "{r:?}");
        assert_eq!(world.queued(), 0, "frames still waiting after the heal");
        // The redial backoff doubles while cut off (to 30 s at most): the mesh is back within
        // that cap plus a connect.
        assert!(recovered - healed_at <= 30_000 + 5_000, "{r:?}");
        assert_eq!(r.sent, r.delivered + r.lost_in_flight, "every frame is delivered or counted lost: {r:?}");
    });
}

#[test]
fn a_transport_killed_mid_stream_is_back_within_a_second_of_its_restart() {
    for_each_seed(&[7, 8, 9], |seed| {
        let mut world = settled_mesh(seed, 8, 0.01);
        steady_traffic(&mut world, 1_000, 50);
        world.crash(3);
        steady_traffic(&mut world, 300, 50);
        world.restart(3);
        let restarted = world.now;
        let back = world.run_until_true(restarted + QUIC_IDLE, World::settled).expect("the mesh settles again");
        let before = world.report.delivered;
        steady_traffic(&mut world, 1_000, 50);
        world.run_until(back + 2_000);
        let r = world.report.clone();
        eprintln!(
            "seed {seed}: transport restarted; every pair connected {} ms after; lost in flight {}, lost in the crash {}, delivered {} of {}",
            back - restarted, r.lost_in_flight, r.lost_in_crash, r.delivered, r.sent
        );
        // No one waits for QUIC's idle timeout: the restarted node's new connections retire
        // the dead ones at once.
        assert!(back - restarted <= 1_000, "{} ms to reconnect", back - restarted);
        assert!(r.delivered > before, "traffic flows after the restart");
        assert_eq!(r.duplicates, 0);
        assert_eq!(r.sent, r.delivered + r.lost_in_flight + r.lost_in_crash, "every frame is delivered or counted lost: {r:?}");
    });
}

#[test]
fn a_seed_replays_the_same_run() {
    let run = |seed| {
        let mut world = World::new(seed, 6, 5, 0.05);
        let settled = world.run_until_true(60_000, World::settled);
        world.crash(2);
        steady_traffic(&mut world, 500, 50);
        world.restart(2);
        world.run_until(world.now + 10_000);
        (settled, world.report.clone(), world.fingerprint)
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43), "different seeds take different paths");
}
