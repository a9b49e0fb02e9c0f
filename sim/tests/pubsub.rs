//! PubSub across many simulated nodes: one publisher, a subscriber engine on every node, and
//! pubsub messages lost on the way, a partition that outlasts QUIC's idle timeout, and a pubsub
//! service killed mid-stream. Every subscriber must end with every event, in order, none twice;
//! the figures of the repair are printed. A failure names its seed.

use netmachine_pubsub::core::notice::Notice;
use netmachine_pubsub::core::Config;
use netmachine_schema::router_capnp::TopicPolicy;
use netmachine_schema::{Identity, Keypair};
use netmachine_sim::{for_each_seed, World, QUIC_IDLE};

const NODES: usize = 16;
const EVENTS: u64 = 1_000;
/// One event every this many ms.
const PACE: u64 = 10;

/// A key the scenario names by a number.
fn key(seed: u64, n: u64) -> Keypair {
    let mut bytes = [0; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(&n.to_le_bytes());
    Keypair::from_seed(bytes)
}

#[test]
fn sixteen_nodes_get_every_event_in_order_through_loss_a_partition_and_a_restarted_service() {
    for_each_seed(&[1, 2, 3], |seed| {
        let config = Config::default();
        let mut world = World::with_pubsub(seed, NODES, 5, 0.05, config);
        world.run_until_true(60_000, World::settled).expect("the mesh settles");
        world.topics.loss = 0.05;
        let publisher = key(seed, 0);
        world.attach(0, publisher.clone());
        let topic = world.create_topic(0, &publisher, TopicPolicy::Block);
        let subscribers: Vec<Identity> = (0..NODES)
            .map(|node| {
                let engine = key(seed, 1 + node as u64);
                world.attach(node, engine.clone());
                world.subscribe(node, engine.identity(), topic);
                engine.identity()
            })
            .collect();
        let start = world.now;
        world.run_until_true(start + 20_000, |w| w.nodes_subscribed(topic) == NODES - 1).expect("every node subscribes at the publisher's");
        let subscribed_in = world.now - start;

        // Nodes 5 to 7 are cut off from event 200 until long after the last; node 9's pubsub
        // service is killed at event 500.
        let cut = [5, 6, 7];
        for seq in 1..=EVENTS {
            if seq == 200 {
                cut.iter().for_each(|node| world.isolate(*node, true));
            }
            if seq == 500 {
                world.restart_pubsub(9, config);
            }
            world.publish(0, &publisher, topic, seq);
            world.run_until(world.now + PACE);
        }
        world.run_until(world.now + QUIC_IDLE + 5_000);
        cut.iter().for_each(|node| world.isolate(*node, false));
        let healed = world.now;
        let complete = |w: &World| subscribers.iter().all(|s| w.topics.received[s].len() as u64 >= EVENTS);
        let repaired = world.run_until_true(healed + 60_000, complete);
        world.run_until(world.now + 5_000);

        let counter = |name: &str| world.pubsub_counter(name);
        eprintln!(
            "seed {seed}: {NODES} nodes subscribed in {subscribed_in} ms; {EVENTS} events; {} pubsub messages lost; repaired {:?} ms after the partition healed; {} early events, {} resends asked, {} served, {} heartbeats, {} resubscribes after silence, {} readers dropped, {} duplicates dropped, {} missing",
            world.topics.lost,
            repaired.map(|at| at - healed),
            counter("events_early"),
            counter("resends_asked"),
            counter("resends_served"),
            counter("heartbeats_sent"),
            counter("publishers_silent"),
            counter("readers_dropped"),
            counter("events_duplicate"),
            counter("events_missing"),
        );
        for (node, subscriber) in subscribers.iter().enumerate() {
            let received = &world.topics.received[subscriber];
            let state = || format!("{:?}", world.pubsub_core(node).map(|core| core.subscriptions().map(|(_, s)| s).collect::<Vec<_>>()));
            assert_eq!(received, &(1..=EVENTS).collect::<Vec<_>>(), "node {node}'s subscriber got every event in order, once; its subscription {}", state());
        }
        assert_eq!(counter("events_missing"), 0, "the history held everything lost");
        // Every subscriber node told its watchers it receives the topic from the publisher's
        // node, and the publisher's node told its watchers of each reader.
        let publisher_node = world.node_identity(0);
        for node in 1..NODES {
            let told = world.topics.notices.iter().any(|(at, n)| *at == node && matches!(n, Notice::Subscribed { topic: t, node: from, .. } if *t == topic && *from == publisher_node));
            assert!(told, "node {node} told no TopicSubscribed");
        }
        let readers: std::collections::BTreeSet<Identity> = world.topics.notices.iter().filter_map(|(at, n)| match n {
            Notice::ReaderAdded { topic: t, reader } if *at == 0 && *t == topic => Some(*reader),
            _ => None,
        }).collect();
        assert_eq!(readers.len(), NODES - 1, "the publisher's node told of every reader");
        assert!(world.topics.lost > 0 && counter("resends_asked") > 0, "the loss happened and was repaired");
    });
}
