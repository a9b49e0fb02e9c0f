//! Nodes run as the shipped Compose deployment (`deploy/compose/`): five containers per node
//! sharing one node home, which the host's `netmachine` and the test's engines reach through
//! the bind mount. Each test builds an image under a tag of its own (`TestImage`, removed when
//! dropped), each node is a Compose project of its own, taken down with its volumes when
//! dropped; a node may be joined to a Docker network the test made (`FaultNetwork`) with the
//! shipped `cluster.yml`, at a fixed address it advertises, so that nodes reach each other and
//! the test can cut one off.

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

/// The image a test's nodes run, built by `deploy/compose/build-image` under a tag of the
/// test's own (another checkout's or test's image is never used or replaced); removed when
/// dropped.
pub struct TestImage(pub String);

impl TestImage {
    pub fn build() -> TestImage {
        let tag = format!("netmachine-test:{}-{}", std::process::id(), crate::TempHome::new().0.file_name().unwrap().to_string_lossy());
        let built = Command::new(repository().join("deploy/compose/build-image"))
            .env("NETMACHINE_IMAGE", &tag)
            .output()
            .expect("build-image");
        assert!(built.status.success(), "build-image failed: {}", String::from_utf8_lossy(&built.stderr));
        TestImage(tag)
    }
}

impl Drop for TestImage {
    fn drop(&mut self) {
        let _ = docker(&["rmi", "--force", &self.0]);
    }
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

    /// The first three octets of its /24, e.g. `172.30.7`.
    pub fn prefix(&self) -> &str {
        &self.prefix
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
    image: String,
    quic_port: u16,
    /// The network and address of the transport, if the node is on a fault network.
    joined: Option<(String, String)>,
}

impl ComposeNode {
    /// A node running `image` whose transport listens on a free port of the host's loopback.
    pub fn new(image: &TestImage) -> ComposeNode {
        let home = TempHome::new();
        std::fs::create_dir_all(&home.0).expect("node dir");
        let project = format!("nm{}", home.0.file_name().unwrap().to_string_lossy().trim_start_matches("nm-"));
        ComposeNode { project, home, image: image.0.clone(), quic_port: free_udp_port(), joined: None }
    }

    /// A node whose transport is on `network` at `address`, which it advertises.
    pub fn on(image: &TestImage, network: &FaultNetwork, address: &str) -> ComposeNode {
        let mut node = ComposeNode::new(image);
        node.joined = Some((network.name.clone(), address.to_string()));
        node
    }

    pub fn compose(&self, args: &[&str]) -> Output {
        let mut command = Command::new("docker-compose");
        command.arg("-f").arg(repository().join("deploy/compose/docker-compose.yml"));
        if let Some((network, address)) = &self.joined {
            command.arg("-f").arg(repository().join("deploy/compose/cluster.yml"));
            command.env("NETMACHINE_NETWORK", network).env("NETMACHINE_ADDRESS", address);
        }
        command
            .args(["-p", &self.project])
            .args(args)
            .env("NETMACHINE_IMAGE", &self.image)
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

    /// The host's pid of `service`'s process.
    pub fn pid(&self, service: &str) -> String {
        let inspect = docker(&["inspect", "-f", "{{.State.Pid}}", &self.container(service)]);
        String::from_utf8_lossy(&inspect.stdout).trim().to_string()
    }

    /// Kills `service`'s process with SIGKILL from the host, as a crash would (not through
    /// Docker, which would count it as stopped on purpose): its restart policy brings it back.
    pub fn kill9(&self, service: &str) {
        let pid: i32 = self.pid(service).parse().expect("the container's pid");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).expect("kill -9");
    }

    /// `netmachine` on the host, with this node's home.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin_dir().join("netmachine")).args(args).arg("--home").arg(&self.home.0).output().expect("netmachine")
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_slice(&self.cli(&["status", "--json"]).stdout).unwrap_or_default()
    }

    /// Whether `service` answers on its socket.
    pub fn service_up(&self, service: &str) -> bool {
        self.status()["services"].as_array().is_some_and(|s| s.iter().any(|s| s["name"] == service && s["state"] == "up"))
    }

    /// A counter or gauge of `service` (0 if it does not answer).
    pub fn service_value(&self, service: &str, name: &str) -> u64 {
        let status = self.status();
        let services = status["services"].as_array().cloned().unwrap_or_default();
        services.iter().find(|s| s["name"] == service).map_or(0, |s| crate::value_of(s, name))
    }

    pub fn all_up(&self) -> bool {
        self.status()["services"].as_array().is_some_and(|s| s.len() == 5 && s.iter().all(|s| s["state"] == "up"))
    }
}

impl Drop for ComposeNode {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "--volumes", "--timeout", "5"]);
        // The containers wrote the home as root; it is removed with the TempHome.
    }
}
