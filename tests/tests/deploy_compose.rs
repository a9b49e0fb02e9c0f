//! deploy/compose as an operator runs it: a node as five containers from a scratch image comes
//! up healthy; a service killed with `docker kill` leaves the other four running and comes
//! back; an engine in a container of its own attaches through the node's shared memory; and
//! `deploy/compose/cluster up 2` brings up two nodes on a network of their own that carry
//! messages between them.

use netmachine_tests::containers::{docker_present, ComposeNode, FaultNetwork, TestImage, SERVICES};
use netmachine_tests::{bin_dir, wait_until, TempHome};
use std::collections::HashMap;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().expect("docker runs")
}

fn inspect(container: &str, format: &str) -> String {
    String::from_utf8_lossy(&docker(&["inspect", "-f", format, container]).stdout).trim().to_string()
}

fn all_healthy(node: &ComposeNode) -> bool {
    SERVICES.iter().all(|s| inspect(&node.container(s), "{{.State.Health.Status}}") == "healthy")
}

fn new_key(home: &std::path::Path, name: &str) -> (std::path::PathBuf, String) {
    let file = home.join(format!("{name}.key"));
    let out = Command::new(bin_dir().join("netmachine")).args(["key", "new"]).arg(&file).output().expect("key new");
    assert!(out.status.success(), "key new: {}", String::from_utf8_lossy(&out.stderr));
    (file, String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn a_compose_node_is_healthy_survives_docker_kill_and_serves_engines_in_other_containers() {
    if !docker_present() {
        return;
    }
    let image = TestImage::build();
    let node = ComposeNode::new(&image);
    let up = node.compose(&["up", "-d"]);
    assert!(up.status.success(), "compose up: {}", String::from_utf8_lossy(&up.stderr));
    wait_until("the five containers are healthy", Duration::from_secs(120), || all_healthy(&node));

    // An engine in a container of its own (its own PID namespace), with the node's home
    // mounted: it attaches, on the socket path, since the router cannot see its process to tell
    // when it is gone (and the rings could not outlive it cleanly).
    let (bob_key, bob) = new_key(&node.home.0, "bob");
    let on_rings = |node: &ComposeNode| node.service_value("router", "engines_on_rings");
    let rings_before = on_rings(&node);
    let home_mount = format!("{}:/node", node.home.0.display());
    let bob_key_inside = format!("/node/{}", bob_key.file_name().unwrap().to_string_lossy());
    let engine = docker(&[
        "run", "-d", "--rm", "-v", &home_mount, &image.0,
        "/usr/local/bin/netmachine", "--home", "/node", "listen", "--echo", "--key", &bob_key_inside,
    ]);
    assert!(engine.status.success(), "docker run: {}", String::from_utf8_lossy(&engine.stderr));
    let engine = String::from_utf8_lossy(&engine.stdout).trim().to_string();
    wait_until("bob, in its own container, is attached", Duration::from_secs(30), || {
        node.status()["engines"].as_array().is_some_and(|e| e.iter().any(|e| e == bob.as_str()))
    });
    assert_eq!(on_rings(&node), rings_before, "bob, whose process the router cannot see, got no rings");
    assert!(node.service_value("router", "ring_handoffs_refused") >= 1, "the refusal is counted");
    let (alice_key, _) = new_key(&node.home.0, "alice");
    let ask = |body: &str| node.cli(&["request", "--key", alice_key.to_str().unwrap(), "--to", &bob, body]);
    let asked = ask("into a container");
    assert!(asked.status.success(), "request: {asked:?}");
    assert_eq!(String::from_utf8_lossy(&asked.stdout).trim(), "into a container");

    // docker kill of each service: the other four run on untouched; up -d brings it back.
    for victim in SERVICES {
        let before: HashMap<&str, String> = SERVICES.iter().map(|s| (*s, node.started_at(s))).collect();
        let killed = docker(&["kill", &node.container(victim)]);
        assert!(killed.status.success(), "docker kill {victim}");
        wait_until(&format!("{victim} is down"), Duration::from_secs(30), || !node.service_up(victim));
        let back = node.compose(&["up", "-d"]);
        assert!(back.status.success(), "compose up: {}", String::from_utf8_lossy(&back.stderr));
        wait_until(&format!("{victim} is back and every container healthy"), Duration::from_secs(120), || {
            node.started_at(victim) != before[victim] && all_healthy(&node)
        });
        for other in SERVICES.iter().filter(|s| **s != victim) {
            assert_eq!(node.started_at(other), before[other], "{other} was restarted when {victim} was killed");
        }
        let asked = ask(&format!("after {victim}"));
        assert!(asked.status.success(), "request after killing {victim}: {asked:?}");
        assert_eq!(String::from_utf8_lossy(&asked.stdout).trim(), format!("after {victim}"));
    }
    let _ = docker(&["kill", &engine]);
}

#[test]
fn the_cluster_script_brings_up_two_linked_nodes_that_carry_messages() {
    if !docker_present() {
        return;
    }
    let image = TestImage::build();
    let network = FaultNetwork::new(&format!("nmcluster{}", std::process::id()));
    let dir = TempHome::new();
    let name = format!("nmc{}", std::process::id());
    let port_base = 20_000 + (std::process::id() % 20_000) as u16 * 2;
    let cluster = |args: &[&str]| {
        Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/compose/cluster"))
            .args(args)
            .env("NETMACHINE_IMAGE", &image.0)
            .env("NETMACHINE_CLUSTER_DIR", &dir.0)
            .env("NETMACHINE_CLUSTER", &name)
            .env("NETMACHINE_NETWORK", &network.name)
            .env("NETMACHINE_SUBNET", network.prefix())
            .env("NETMACHINE_QUIC_PORT_BASE", port_base.to_string())
            .stdin(Stdio::null())
            .output()
            .expect("run deploy/compose/cluster")
    };
    let up = cluster(&["up", "2"]);
    let said = String::from_utf8_lossy(&up.stdout).to_string();
    let down = || cluster(&["down"]);
    if !up.status.success() {
        down();
        panic!("cluster up: {said}{}", String::from_utf8_lossy(&up.stderr));
    }
    assert!(said.contains("node1 ") && said.contains("node2 ") && said.matches("linked to 1 nodes").count() == 2, "{said}");

    let cli = |i: u32, args: &[&str]| {
        Command::new(bin_dir().join("netmachine")).args(args).arg("--home").arg(dir.0.join(format!("node{i}"))).output().expect("netmachine")
    };
    let (bob_key, bob) = new_key(&dir.0.join("node2"), "bob");
    let mut listener = Command::new(bin_dir().join("netmachine"))
        .args(["listen", "--echo", "--key"])
        .arg(&bob_key)
        .arg("--home")
        .arg(dir.0.join("node2"))
        .stdout(Stdio::null())
        .spawn()
        .expect("listen");
    let (alice_key, _) = new_key(&dir.0.join("node1"), "alice");
    let ask = |body: &str| {
        for _ in 0..100 {
            let asked = cli(1, &["request", "--key", alice_key.to_str().unwrap(), "--to", &bob, body]);
            if asked.status.success() {
                return Some(String::from_utf8_lossy(&asked.stdout).trim().to_string());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        None
    };
    let across = ask("across the cluster");
    // Every container of both nodes is healthy; node 2's transport killed with `docker kill`
    // comes back with `cluster start`, and the nodes carry messages again.
    let container = |i: u32, service: &str| format!("{name}-node{i}_{service}_1");
    let healthy = || (1..=2).all(|i| SERVICES.iter().all(|s| inspect(&container(i, s), "{{.State.Health.Status}}") == "healthy"));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let all_healthy_at_first = loop {
        if healthy() {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let killed = docker(&["kill", &container(2, "transport")]);
    let started = cluster(&["start"]);
    let after_kill = ask("after docker kill");
    let _ = listener.kill();
    let _ = listener.wait();
    let stopped = down();
    assert_eq!(across.as_deref(), Some("across the cluster"));
    assert!(all_healthy_at_first, "every container of both nodes is healthy");
    assert!(killed.status.success() && started.status.success(), "cluster start: {}", String::from_utf8_lossy(&started.stderr));
    assert_eq!(after_kill.as_deref(), Some("after docker kill"));
    assert!(stopped.status.success(), "cluster down: {}", String::from_utf8_lossy(&stopped.stderr));
}
