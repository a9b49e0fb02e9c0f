//! A whole node under `netmachine up`: its services come up, it stops cleanly, and a broken
//! config is refused with the field named.

use netmachine_service::ServiceKind;
use netmachine_tests::{bin_dir, Node, TempHome};
use std::process::Command;

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
fn sigterm_stops_every_service_and_up_exits_zero() {
    let mut node = Node::up();
    let pids: Vec<u64> = ServiceKind::ALL.iter().filter_map(|k| node.pid(*k)).collect();
    assert_eq!(pids.len(), 5);
    let run = node.node_home().run_dir();
    let status = node.stop();
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
