//! Scenarios for the router core across many simulated nodes: every engine reaches every other,
//! an announcement of an engine by a node that does not host it is refused everywhere, an
//! engine that moves is followed, and a transport restart mid-stream. Each prints its figures;
//! a failure names its seed. Every message an engine sent is accounted for: delivered to its
//! engine once, or counted as dropped (with a reason) by some router; what the simulated
//! transport loses is sent again.

use netmachine_sim::{for_each_seed, World};

/// A world of `n` nodes with `engines` engines each, connected, and every router knowing every
/// engine (the announcements have arrived).
fn routed_world(seed: u64, n: usize, engines: usize) -> World {
    let mut world = World::with_routers(seed, n, 5, 0.02, engines);
    world.run_until_true(60_000, World::settled).expect("the mesh settles");
    let remote = (n * (n - 1) * engines) as u64;
    world.run_until_true(world.now + 10_000, |w| w.router_counter("identities_cached") >= remote).expect("every router learns every engine");
    world
}

/// Drops counted by every router, for every reason.
fn dropped(world: &World) -> u64 {
    ["expired", "no_route", "over_limit", "queue_full", "engine_gone", "malformed", "bad_signature", "unreachable"]
        .iter()
        .map(|reason| world.router_counter(&format!("dropped_{reason}")))
        .sum()
}

/// Messages delivered or counted as dropped.
fn accounted(world: &World) -> u64 {
    world.traffic.delivered + dropped(world)
}

/// Runs until every message sent is accounted for; the time that took.
fn run_until_accounted(world: &mut World, limit: u64) -> u64 {
    let start = world.now;
    let done = world.run_until_true(start + limit, |w| accounted(w) == w.traffic.sent);
    done.unwrap_or_else(|| panic!("{} of {} messages unaccounted for: {:?}", world.traffic.sent - accounted(world), world.traffic.sent, world.traffic)) - start
}

#[test]
fn sixteen_nodes_route_every_engine_to_every_other() {
    for_each_seed(&[1, 2, 3], |seed| {
        let mut world = routed_world(seed, 16, 2);
        world.send_between_all_engines();
        let took = run_until_accounted(&mut world, 10_000);
        let t = world.traffic.clone();
        eprintln!("seed {seed}: 32 engines on 16 nodes; {}/{} messages delivered in {took} ms; {} duplicates, {} out of order", t.delivered, t.sent, t.duplicates, t.out_of_order);
        assert_eq!((t.sent, t.delivered, t.refused, t.duplicates, t.out_of_order), (32 * 31, 32 * 31, 0, 0, 0));
    });
}

#[test]
fn a_node_announcing_an_engine_it_does_not_host_is_refused_everywhere() {
    for_each_seed(&[4, 5, 6], |seed| {
        let mut world = routed_world(seed, 8, 1);
        let victim = world.engines(1)[0];
        world.forge_announcement(7, victim);
        world.run_until_true(world.now + 5_000, |w| w.router_counter("announcements_refused") == 7).expect("every other node refuses it");
        world.send_between_all_engines();
        let took = run_until_accounted(&mut world, 10_000);
        let t = world.traffic.clone();
        eprintln!("seed {seed}: forged announcement refused by 7 nodes; afterwards {}/{} messages delivered in {took} ms", t.delivered, t.sent);
        assert_eq!((t.delivered, dropped(&world)), (8 * 7, 0), "the victim's traffic still reaches it: {t:?}");
    });
}

#[test]
fn an_engine_that_moves_to_another_node_is_followed_and_nothing_is_lost_silently() {
    for_each_seed(&[7, 8, 9], |seed| {
        let mut world = routed_world(seed, 6, 1);
        let mover = world.engines(0)[0];
        let senders: Vec<(usize, netmachine_schema::Identity)> = (1..6).map(|n| (n, world.engines(n)[0])).collect();
        let round = |world: &mut World| {
            for &(node, src) in &senders {
                world.engine_send(node, src, mover);
            }
        };
        // Traffic to the mover every 10 ms; it moves from node 0 to node 5 in the middle.
        for _ in 0..50 {
            round(&mut world);
            let next = world.now + 10;
            world.run_until(next);
        }
        let key = world.detach(0, mover);
        world.attach(5, key);
        let moved_at = world.now;
        for _ in 0..50 {
            round(&mut world);
            let next = world.now + 10;
            world.run_until(next);
        }
        run_until_accounted(&mut world, 10_000);
        let (before, lost) = (world.traffic.delivered, dropped(&world));
        // Once every router follows, a round reaches the mover on node 5.
        round(&mut world);
        run_until_accounted(&mut world, 10_000);
        let t = world.traffic.clone();
        eprintln!("seed {seed}: engine moved at {moved_at} ms; {}/{} delivered, {lost} dropped and counted while the move spread", t.delivered, t.sent);
        assert_eq!(t.delivered - before, 5, "the last round reaches the mover on its new node");
        assert_eq!((t.duplicates, t.out_of_order), (0, 0));
        assert!(lost <= 5 * 5, "only what was in flight during the move is lost: {lost}");
    });
}

#[test]
fn a_transport_restart_mid_stream_loses_nothing_and_delivers_nothing_twice() {
    for_each_seed(&[10, 11, 12], |seed| {
        // The sending node's transport, then the receiving node's.
        for down in [0, 1] {
            let mut world = routed_world(seed, 4, 1);
            let engines: Vec<_> = (0..4).map(|n| world.engines(n)[0]).collect();
            // Node 0's engine writes to node 1's while a transport is killed and restarted.
            for i in 0..100 {
                if i == 30 {
                    world.crash(down);
                }
                if i == 60 {
                    world.restart(down);
                }
                world.engine_send(0, engines[0], engines[1]);
                let next = world.now + 10;
                world.run_until(next);
            }
            world.run_until_true(world.now + 60_000, World::settled).expect("settles again");
            run_until_accounted(&mut world, 10_000);
            let t = world.traffic.clone();
            let r = &world.report;
            eprintln!(
                "seed {seed}: transport of node {down} down for 300 ms mid-stream; {}/{} delivered, {} dropped and counted; frames lost by transport: {} in the crash, {} in flight, with {} messages in them; {} frames sent again, {} duplicate messages suppressed",
                t.delivered, t.sent, dropped(&world), r.lost_in_crash, r.lost_in_flight, t.in_lost_frames,
                world.router_counter("remote_frames_resent"), world.router_counter("remote_duplicates_suppressed")
            );
            // What the dying transport held or had on the wire goes again from the router's
            // kept frames; what the router held while its transport was down goes once it is
            // back; what arrives twice is dropped.
            assert_eq!((t.delivered, t.duplicates, t.out_of_order, dropped(&world)), (100, 0, 0, 0), "{t:?}");
            assert!(world.router_counter("remote_frames_resent") > 0);
        }
    });
}
