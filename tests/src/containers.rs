//! Nodes run as the shipped Compose deployment (`deploy/compose/`): five containers per node
//! sharing one node home, which the host's `netmachine` and the test's engines reach through
//! the bind mount. Each node is a Compose project of its own, taken down when dropped; a node
//! may be joined to a Docker network the test made (`FaultNetwork`), at a fixed address it
//! advertises, so that nodes reach each other and the test can cut one off.

use crate::{bin_dir, TempHome};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const SERVICES: [&str; 5] = ["identity-store", "router", "transport", "pubsub", "storage"];

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root").to_path_buf()
}

/// Whether this machine runs Docker and docker-compose; if not, says the test is skipped.
pub fn docker_present() -> bool {
    let present = |tool: &str| Command::new(tool).arg("version").output().is_ok_and(|o| o.status.success());
    let both = present("docker") && present("docker-compose");
    if !both {
        eprintln!("skipped: this test needs Docker and docker-compose, and this machine lacks them");
    }
    both
}

/// Builds the image the Compose file runs (`deploy/compose/build-image`).
pub fn build_image() {
    let built = Command::new(repository().join("deploy/compose/build-image")).output().expect("build-image");
    assert!(built.status.success(), "build-image failed: {}", String::from_utf8_lossy(&built.stderr));
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.port()).expect("a free port")
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().expect("docker runs")
}

/// A Docker network of the test's own, removed when dropped.
pub struct FaultNetwork {
    pub name: String,
    /// The first three octets of its IPv4 subnet (a /24).
    prefix: String,
}

impl FaultNetwork {
    /// Makes a network on a free 172.30-31.x.0/24 subnet.
    pub fn new(name: &str) -> FaultNetwork {
        for third in (0..=255u32).map(|i| (i * 37 + std::process::id()) % 512) {
            let prefix = format!("172.{}.{}", 30 + third / 256, third % 256);
            let made = docker(&["network", "create", "--subnet", &format!("{prefix}.0/24"), name]);
            if made.status.success() {
                return FaultNetwork { name: name.to_string(), prefix };
            }
        }
        panic!("no free subnet for a Docker network");
    }

    /// The address of host `n` on it.
    pub fn address(&self, n: usize) -> String {
        format!("{}.{}", self.prefix, 10 + n)
    }
}

impl Drop for FaultNetwork {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &self.name]);
    }
}

/// One node as a Compose project.
pub struct ComposeNode {
    pub project: String,
    pub home: TempHome,
    quic_port: u16,
    /// A Compose file joining the transport to a fault network, if the node is on one.
    joined: Option<PathBuf>,
}

impl ComposeNode {
    /// A node whose transport listens on a free port of the host's loopback.
    pub fn new() -> ComposeNode {
        let home = TempHome::new();
        std::fs::create_dir_all(&home.0).expect("node dir");
        let project = format!("nm{}", home.0.file_name().unwrap().to_string_lossy().trim_start_matches("nm-"));
        ComposeNode { project, home, quic_port: free_udp_port(), joined: None }
    }

    /// A node whose transport is on `network` at `address`, which it advertises.
    pub fn on(network: &FaultNetwork, address: &str) -> ComposeNode {
        let mut node = ComposeNode::new();
        let file = node.home.0.with_extension("compose.yml");
        let joined = format!(
            "services:\n  transport:\n    networks:\n      fault:\n        ipv4_address: {address}\n    environment:\n      NETMACHINE_TRANSPORT__ADVERTISE: '[\"{address}:4010\"]'\nnetworks:\n  fault:\n    external: true\n    name: {}\n",
            network.name
        );
        std::fs::write(&file, joined).expect("the compose file of the network");
        node.joined = Some(file);
        node
    }

    pub fn compose(&self, args: &[&str]) -> Output {
        let mut command = Command::new("docker-compose");
        command.arg("-f").arg(repository().join("deploy/compose/docker-compose.yml"));
        if let Some(file) = &self.joined {
            command.arg("-f").arg(file);
        }
        command
            .args(["-p", &self.project])
            .args(args)
            .env("NETMACHINE_NODE_DIR", &self.home.0)
            .env("NETMACHINE_QUIC_PORT", self.quic_port.to_string())
            .output()
            .expect("docker-compose runs")
    }

    /// The container of `service`.
    pub fn container(&self, service: &str) -> String {
        let id = self.compose(&["ps", "-q", service]);
        String::from_utf8_lossy(&id.stdout).trim().to_string()
    }

    pub fn started_at(&self, service: &str) -> String {
        let inspect = docker(&["inspect", "-f", "{{.State.StartedAt}}", &self.container(service)]);
        String::from_utf8_lossy(&inspect.stdout).trim().to_string()
    }

    /// Kills `service`'s process with SIGKILL from the host, as a crash would (not through
    /// Docker, which would count it as stopped on purpose): its restart policy brings it back.
    pub fn kill9(&self, service: &str) {
        let inspect = docker(&["inspect", "-f", "{{.State.Pid}}", &self.container(service)]);
        let pid: i32 = String::from_utf8_lossy(&inspect.stdout).trim().parse().expect("the container's pid");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).expect("kill -9");
    }

    /// `netmachine` on the host, with this node's home.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin_dir().join("netmachine")).args(args).arg("--home").arg(&self.home.0).output().expect("netmachine")
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_slice(&self.cli(&["status", "--json"]).stdout).unwrap_or_default()
    }

    pub fn all_up(&self) -> bool {
        self.status()["services"].as_array().is_some_and(|s| s.len() == 5 && s.iter().all(|s| s["state"] == "up"))
    }
}

impl Default for ComposeNode {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ComposeNode {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "--timeout", "5"]);
        if let Some(file) = &self.joined {
            let _ = std::fs::remove_file(file);
        }
        // The containers wrote the home as root; it is removed with the TempHome.
    }
}
