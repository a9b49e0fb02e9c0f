//! deploy/compose: a node as five containers built from scratch, sharing one node home. The
//! host's `netmachine` sees the node through that directory; restarting one container leaves
//! the other four running, and routing resumes.

use netmachine_tests::{bin_dir, wait_until, TempHome};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const SERVICES: [&str; 5] = ["identity-store", "router", "transport", "pubsub", "storage"];

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root").to_path_buf()
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.port()).expect("a free port")
}

struct Deployment {
    project: String,
    home: TempHome,
    quic_port: u16,
}

impl Deployment {
    fn compose(&self, args: &[&str]) -> Output {
        Command::new("docker-compose")
            .arg("-f")
            .arg(repository().join("deploy/compose/docker-compose.yml"))
            .args(["-p", &self.project])
            .args(args)
            .env("NETMACHINE_NODE_DIR", &self.home.0)
            .env("NETMACHINE_QUIC_PORT", self.quic_port.to_string())
            .output()
            .expect("docker-compose runs")
    }

    fn started_at(&self, service: &str) -> String {
        let id = self.compose(&["ps", "-q", service]);
        let id = String::from_utf8_lossy(&id.stdout).trim().to_string();
        let inspect = Command::new("docker").args(["inspect", "-f", "{{.State.StartedAt}}", &id]).output().expect("docker inspect");
        String::from_utf8_lossy(&inspect.stdout).trim().to_string()
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin_dir().join("netmachine")).args(args).arg("--home").arg(&self.home.0).output().expect("netmachine")
    }

    fn all_up(&self) -> bool {
        let status: serde_json::Value = serde_json::from_slice(&self.cli(&["status", "--json"]).stdout).unwrap_or_default();
        status["services"].as_array().is_some_and(|s| s.len() == 5 && s.iter().all(|s| s["state"] == "up"))
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "--timeout", "5"]);
        // The containers wrote the home as root; it is removed with the TempHome.
    }
}

#[test]
fn compose_runs_a_node_and_restarts_one_service_alone() {
    let present = |tool: &str| Command::new(tool).arg("version").output().is_ok_and(|o| o.status.success());
    if !present("docker") || !present("docker-compose") {
        eprintln!("skipped: this test needs Docker and docker-compose, and this machine lacks them");
        return;
    }
    let built = Command::new(repository().join("deploy/compose/build-image")).output().expect("build-image");
    assert!(built.status.success(), "build-image failed: {}", String::from_utf8_lossy(&built.stderr));

    let home = TempHome::new();
    std::fs::create_dir_all(&home.0).expect("node dir");
    let project = format!("nm{}", home.0.file_name().unwrap().to_string_lossy().trim_start_matches("nm-"));
    let node = Deployment { project, home, quic_port: free_udp_port() };
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
