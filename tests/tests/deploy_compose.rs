//! deploy/compose: a node as five containers built from scratch, sharing one node home. The
//! host's `netmachine` sees the node through that directory; restarting one container leaves
//! the other four running, and routing resumes.

use netmachine_tests::containers::{build_image, docker_present, ComposeNode, SERVICES};
use netmachine_tests::{bin_dir, wait_until};
use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

#[test]
fn compose_runs_a_node_and_restarts_one_service_alone() {
    if !docker_present() {
        return;
    }
    build_image();
    let node = ComposeNode::new();
    let up = node.compose(&["up", "-d"]);
    assert!(up.status.success(), "compose up: {}", String::from_utf8_lossy(&up.stderr));
    wait_until("the five containers' services are up", Duration::from_secs(60), || node.all_up());

    let before: HashMap<&str, String> = SERVICES.iter().map(|s| (*s, node.started_at(s))).collect();
    let restarted = node.compose(&["restart", "router"]);
    assert!(restarted.status.success(), "compose restart: {}", String::from_utf8_lossy(&restarted.stderr));
    wait_until("the router container restarted", Duration::from_secs(60), || {
        node.started_at("router") != before["router"] && node.all_up()
    });
    for service in SERVICES.iter().filter(|s| **s != "router") {
        assert_eq!(node.started_at(service), before[service], "{service} was restarted with the router");
    }

    // Engines on the host attach through the shared home and exchange a request.
    let key = |name: &str| {
        let file = node.home.0.join(format!("{name}.key"));
        let out = node.cli(&["key", "new", file.to_str().unwrap()]);
        (file, String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let (bob_key, bob) = key("bob");
    let (alice_key, _) = key("alice");
    let mut listener = Command::new(bin_dir().join("netmachine"))
        .args(["listen", "--echo", "--key"])
        .arg(&bob_key)
        .arg("--home")
        .arg(&node.home.0)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("listen");
    wait_until("bob is attached", Duration::from_secs(20), || {
        let status: serde_json::Value = serde_json::from_slice(&node.cli(&["status", "--json"]).stdout).unwrap_or_default();
        status["engines"].as_array().is_some_and(|e| e.iter().any(|e| e == bob.as_str()))
    });
    let asked = node.cli(&["request", "--key", alice_key.to_str().unwrap(), "--to", &bob, "through containers"]);
    let _ = listener.kill();
    let _ = listener.wait();
    assert!(asked.status.success(), "request: {asked:?}");
    assert_eq!(String::from_utf8_lossy(&asked.stdout).trim(), "through containers");
}
