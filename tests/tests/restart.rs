//! kill -9 of each service in turn: `up` restarts it, the other four keep running untouched,
//! identity records survive, and routing goes on (engines re-attach on their own).

use netmachine_schema::Keypair;
use netmachine_service::ServiceKind;
use netmachine_tests::{identity_exists, node_record, update_identity, wait_until, with_rpc, Node};
use std::collections::HashMap;
use std::time::Duration;

fn pids(node: &Node) -> HashMap<ServiceKind, u64> {
    ServiceKind::ALL.iter().filter_map(|k| node.pid(*k).map(|p| (*k, p))).collect()
}

#[test]
fn each_service_killed_in_turn_is_restarted_alone_and_nothing_is_lost() {
    let node = Node::up();
    let store = node.socket(ServiceKind::IdentityStore);
    let peer = Keypair::generate();
    let refused = with_rpc(update_identity(&store, &peer.identity(), &node_record(&peer, &peer, 1)));
    assert_eq!(refused, None, "a valid record is accepted");

    let (bob_key, bob) = node.engine_key("bob");
    let bob_listens = node.listen(&bob_key, &bob, &[]);
    let (alice_key, _) = node.engine_key("alice");
    let alice_key = alice_key.to_str().unwrap().to_string();

    for (round, victim) in ServiceKind::ALL.into_iter().enumerate() {
        let before = pids(&node);
        assert_eq!(before.len(), 5, "all up before killing {}", victim.name());
        let killed = node.kill9(victim);
        wait_until(&format!("{} is restarted", victim.name()), Duration::from_secs(30), || {
            node.pid(victim).is_some_and(|pid| pid != killed) && node.all_up()
        });
        let after = pids(&node);
        for kind in ServiceKind::ALL.into_iter().filter(|k| *k != victim) {
            assert_eq!(before[&kind], after[&kind], "{} was disturbed by killing {}", kind.name(), victim.name());
        }
        assert!(
            with_rpc(identity_exists(&store, &peer.identity())),
            "the record written before killing {} is gone",
            victim.name()
        );
        // Routing goes on: the router is linked to the identity store again, and bob's
        // listener (re-attached on its own if the router was the victim) gets the message.
        wait_until("the router is linked to the identity store", Duration::from_secs(30), || {
            node.service(ServiceKind::Router)["links"]["identity-store"] == true
        });
        node.wait_attached(&bob);
        let body = format!("after killing {} (round {round})", victim.name());
        let sent = node.cli(&["send", "--key", &alice_key, "--to", &bob, &body]);
        assert!(sent.status.success(), "send after killing {}: {sent:?}", victim.name());
        assert_eq!(bob_listens.next_message(Duration::from_secs(10))["body"], body.as_str());
        // A lookup miss is answered by the (possibly restarted) identity store, not refused as
        // unreachable.
        let nobody = "cd".repeat(32);
        let unknown = node.cli(&["send", "--key", &alice_key, "--to", &nobody, "x"]);
        let stderr = String::from_utf8_lossy(&unknown.stderr);
        assert!(stderr.contains("known to the identity store"), "after killing {}: {stderr}", victim.name());
    }
}
