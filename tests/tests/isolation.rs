//! Isolation between engines and between users: the router hands each engine only its own
//! rings, under the ticket of its attachment. Engines of other Unix users: with
//! `router.engine_users` (or `router.engine_groups`) naming them, they attach, take their rings
//! from the handoff socket and talk by direct channel with engines of the node's own user; a
//! user not named is refused with the reason, and takes nothing. Running a process as another
//! user needs root (CI runs as root).

use netmachine_service::ServiceKind;
use netmachine_tests::{bin_dir, outcome, sequence, sequence_command, Node};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// `nobody` on most systems; it need not have a name here.
const OTHER_USER: u32 = 65534;

fn needs_root() {
    assert!(nix::unistd::geteuid().is_root(), "running an engine as another user needs root (CI runs as root)");
}

/// A key file of `name` that only `uid` can read.
fn key_of(node: &Node, name: &str, uid: u32) -> (std::path::PathBuf, String) {
    let (key, identity) = node.engine_key(name);
    std::os::unix::fs::chown(&key, Some(uid), Some(uid)).expect("hand the key file over");
    (key, identity)
}

#[test]
fn a_ring_engine_of_another_user_named_in_the_config_attaches_and_talks_by_direct_channel() {
    needs_root();
    const COUNT: u64 = 20_000;
    let node = Node::up_with(&[&format!("router.engine_users=[\"{OTHER_USER}\"]")]);
    let (receiver_key, receiver) = node.engine_key("receiver");
    let (sender_key, _) = key_of(&node, "other-user", OTHER_USER);
    let receiving = sequence(&node, &["receive", receiver_key.to_str().unwrap(), &COUNT.to_string()]);
    node.wait_attached(&receiver);
    let sending = sequence_command(&node, &["send", sender_key.to_str().unwrap(), &receiver, &COUNT.to_string()])
        .uid(OTHER_USER)
        .gid(OTHER_USER)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the sender as another user");
    let sent = sending.wait_with_output().expect("the sender finishes");
    let said = String::from_utf8_lossy(&sent.stderr);
    assert!(sent.status.success(), "the other user's engine failed: {said}");
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&sent.stdout).unwrap()["sent"], COUNT, "{said}");
    let received = outcome(receiving);
    assert_eq!((received["received"].as_u64(), received["in_order"].as_bool()), (Some(COUNT), Some(true)));
    // On rings, not the socket path: through the router's ring thread at first, then by the
    // direct channel the router granted (its descriptor handed over to the other user).
    let router = node.service(ServiceKind::Router);
    let on_rings = node.router_counter("ring_messages_forwarded") + node.router_counter("channel_messages");
    assert_eq!(on_rings, COUNT, "{router}");
    assert!(node.router_counter("channel_messages") > COUNT / 2, "{router}");
    assert_eq!(node.router_counter("ring_handoffs_refused"), 0, "{router}");
    // That user may attach engines, and nothing more: what the node's own services and tools
    // call is refused to it.
    let listing = Command::new(bin_dir().join("netmachine"))
        .args(["topics", "--home", node.root().to_str().unwrap()])
        .uid(OTHER_USER)
        .gid(OTHER_USER)
        .output()
        .expect("run netmachine topics as the other user");
    let said = String::from_utf8_lossy(&listing.stderr);
    assert!(!listing.status.success() && said.contains("for the node's own services"), "{said}");
}

#[test]
fn an_engine_of_a_user_the_config_does_not_name_is_refused_with_the_reason() {
    needs_root();
    let node = Node::up_with(&[&format!("router.engine_users=[\"{OTHER_USER}\"]")]);
    let (_, receiver) = node.engine_key("receiver");
    let (stranger_key, _) = key_of(&node, "stranger", OTHER_USER - 1);
    let refused = sequence_command(&node, &["send", stranger_key.to_str().unwrap(), &receiver, "1"])
        .uid(OTHER_USER - 1)
        .gid(OTHER_USER - 1)
        .stderr(Stdio::piped())
        .output()
        .expect("run the sender as a user not named");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "a user not named attached: {said}");
    assert!(said.contains(&format!("({})", OTHER_USER - 1)) && said.contains("may not attach engines") && said.contains("router.engine_users"), "{said}");
    assert!(node.router_counter("attach_refused") >= 1);
}

#[test]
fn without_engine_users_another_users_engine_cannot_reach_the_node() {
    needs_root();
    let node = Node::up();
    let (_, receiver) = node.engine_key("receiver");
    let (other_key, _) = key_of(&node, "other-user", OTHER_USER);
    let refused = sequence_command(&node, &["send", other_key.to_str().unwrap(), &receiver, "1"])
        .uid(OTHER_USER)
        .gid(OTHER_USER)
        .stderr(Stdio::piped())
        .output()
        .expect("run the sender as another user");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "another user attached to a node that does not let it in: {said}");
    assert!(said.to_lowercase().contains("permission denied"), "{said}");
    let socket = node.socket(ServiceKind::Router);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o600);
}

#[test]
fn the_handoff_socket_gives_nothing_to_a_ticket_no_attachment_holds_and_counts_it() {
    use netmachine_engine::ring::{handoff_socket, Claim, Request};
    let node = Node::up();
    let (key, identity) = node.engine_key("attached");
    let _listening = node.listen(&key, &identity, &[]);
    let engine: netmachine_engine::Identity = identity.parse().unwrap();
    let guess = Claim { socket: handoff_socket(&node.socket(ServiceKind::Router)), ticket: [7; 32] };
    for request in [Request::Rings, Request::ChannelTo(engine.0), Request::ChannelFrom(engine.0), Request::Streams] {
        let refused = guess.take(request).expect_err("a guessed ticket takes nothing").to_string();
        assert!(refused.contains("no attachment holds this ticket"), "{refused}");
    }
    assert_eq!(node.router_counter("ring_handoffs_refused"), 4);
    // The socket is the node's user's alone.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&guess.socket).unwrap().permissions().mode() & 0o777, 0o600);
}
