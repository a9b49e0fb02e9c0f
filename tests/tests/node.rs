//! A whole node under `netmachine up`: its services come up, it stops cleanly (no warning, no
//! colour codes in its log file), and a broken config is refused with the field named.

use netmachine_service::ServiceKind;
use netmachine_tests::{attach_engine, bin_dir, with_rpc, Node, TempHome};
use std::process::Command;
use std::time::Duration;

#[test]
fn up_brings_all_five_services_up_in_status_json() {
    let node = Node::up();
    let status = node.status();
    let node_id = status["node"].as_str().expect("node id");
    assert_eq!(node_id.len(), 64, "{status}");
    assert!(node_id.chars().all(|c| c.is_ascii_hexdigit()));
    let services = status["services"].as_array().expect("services");
    let names: Vec<&str> = services.iter().map(|s| s["name"].as_str().unwrap_or("")).collect();
    assert_eq!(names, ["identity-store", "router", "transport", "pubsub", "storage"]);
    for service in services {
        assert_eq!(service["state"], "up", "{service}");
        assert!(service["pid"].as_u64().is_some_and(|p| p > 1), "{service}");
        assert_eq!(service["node"], node_id, "{service}");
    }
    assert_eq!(status["drops"]["no_route"], 0);
    let key_mode = std::fs::metadata(node.root().join("node.key")).expect("node key");
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&key_mode.permissions()) & 0o777, 0o600);
    // The services link to each other.
    let router = node.service(ServiceKind::Router);
    assert_eq!(router["links"]["identity-store"], true, "{router}");
}

#[test]
fn sigterm_stops_every_service_cleanly_and_up_exits_zero() {
    let mut node = Node::up();
    let pids: Vec<u64> = ServiceKind::ALL.iter().filter_map(|k| node.pid(*k)).collect();
    assert_eq!(pids.len(), 5);
    let run = node.node_home().run_dir();
    // Engines attached and traffic through the router, as in a node in use.
    let status = with_rpc(async {
        let (a, b) = (attach_engine(&node, |_| {}).await, attach_engine(&node, |o| o.ring = false).await);
        a.send(b.identity(), b"before the stop".to_vec()).await.expect("sent");
        let received = tokio::time::timeout(Duration::from_secs(10), b.recv()).await.expect("delivered in time").expect("attached");
        assert_eq!(received.body, b"before the stop");
        node.stop()
    });
    assert!(status.success(), "up exited with {status}");
    for pid in pids {
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok();
        assert!(!alive, "service pid {pid} still runs after up stopped");
    }
    let sockets: Vec<_> = std::fs::read_dir(&run)
        .expect("run dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "sock"))
        .collect();
    assert!(sockets.is_empty(), "sockets left behind: {sockets:?}");
    // The services' log went to a file: plain text, and a clean stop warns of nothing.
    let log = std::fs::read_to_string(node.root().with_extension("log")).expect("the node's log");
    assert!(log.contains("stopped cleanly"), "{log}");
    assert!(!log.contains('\x1b'), "colour codes in a log file:\n{log}");
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
    assert!(warnings.is_empty(), "a clean stop logged warnings:\n{}", warnings.join("\n"));
}

#[test]
fn a_broken_config_is_refused_naming_the_field() {
    let home = TempHome::new();
    std::fs::create_dir_all(&home.0).expect("home");
    std::fs::write(home.0.join("config.toml"), "[limits]\nengine_queue = \"lots\"\n").expect("config");
    let up = Command::new(bin_dir().join("netmachine")).arg("up").arg("--home").arg(&home.0).output().expect("up");
    assert_eq!(up.status.code(), Some(2), "{up:?}");
    let stderr = String::from_utf8_lossy(&up.stderr);
    assert!(stderr.contains("`limits.engine_queue`") && stderr.contains("invalid type"), "{stderr}");

    std::fs::write(home.0.join("config.toml"), "[limits]\nmax_message_bytes = 12\n").expect("config");
    let router = Command::new(bin_dir().join("netmachine-router")).arg("--home").arg(&home.0).output().expect("router");
    assert_eq!(router.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&router.stderr);
    assert!(stderr.contains("`limits.max_message_bytes`") && stderr.contains("got 12"), "{stderr}");

    let flag = Command::new(bin_dir().join("netmachine"))
        .args(["status", "--set", "limits.nonsense=1", "--home"])
        .arg(&home.0)
        .output()
        .expect("status");
    assert_eq!(flag.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&flag.stderr).contains("nonsense"), "{flag:?}");
}

#[test]
fn a_second_up_on_the_same_home_is_refused() {
    let node = Node::up();
    let second = node.cli(&["up"]);
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already running"), "{second:?}");
    assert!(node.all_up());
}
