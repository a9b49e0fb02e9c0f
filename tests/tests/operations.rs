//! What an operator runs into: the metrics endpoint (every service's values in the Prometheus
//! text format, counters that survive a service's restart), systemd's readiness and watchdog
//! protocol spoken by a real service process, a misconfigured service that stops the node
//! instead of restarting forever, and the CLI's answers to a missing home and to the
//! environment of a deployment.

use netmachine_service::ServiceKind;
use netmachine_tests::{bin_dir, wait_until, with_rpc, Node, TempHome};
use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET path` on 127.0.0.1:`port`: the status line and the body.
fn http_get(port: u16, path: &str) -> (String, String) {
    try_get(port, path).expect("an HTTP reply from the metrics endpoint")
}

fn try_get(port: u16, path: &str) -> std::io::Result<(String, String)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    let (head, body) = reply.split_once("\r\n\r\n").ok_or(std::io::ErrorKind::InvalidData)?;
    Ok((head.lines().next().unwrap_or_default().to_string(), body.to_string()))
}

/// The value of the sample line that starts with `series` (name and labels), if any.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_show_every_service_and_counters_survive_a_restart() {
    let port = free_tcp_port();
    let listen = format!("metrics.listen=127.0.0.1:{port}");
    let node = Node::up_with(&[&listen]);
    const MESSAGES: u64 = 200;
    // An engine that never takes a delivery: what is sent to it stays in its queue.
    let depth = with_rpc(async {
        use netmachine_schema::{EngineLocation, Keypair};
        let key = Keypair::generate();
        let locate = |here| EngineLocation::sign(&key, here, netmachine_schema::time::now_ms());
        let inbox = capnp_rpc::new_future_client(std::future::pending());
        let _session = netmachine_tests::attach_raw(&node, key.identity(), &key, locate, inbox).await.expect("attach");
        let sender = netmachine_tests::attach_engine(&node, |_| {}).await;
        for i in 0..MESSAGES {
            sender.send(key.identity(), i.to_le_bytes().to_vec()).await.expect("send");
        }
        let series = format!("netmachine_router_engine_queue_depth{{engine=\"{}\"}}", key.identity());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let body = http_get(port, "/metrics").1;
            let depth = sample(&body, &series);
            if depth == Some(MESSAGES as f64) || Instant::now() > deadline {
                return depth;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert_eq!(depth, Some(MESSAGES as f64), "the stuck engine's queue depth");

    let (status, body) = http_get(port, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    for kind in ServiceKind::ALL {
        let service = kind.name();
        assert_eq!(sample(&body, &format!("netmachine_service_up{{service=\"{service}\"}}")), Some(1.0), "{service} up\n{body}");
        let memory = sample(&body, &format!("netmachine_service_resident_memory_bytes{{service=\"{service}\"}}"));
        assert!(memory.is_some_and(|m| m > 1e6), "{service} resident memory: {memory:?}");
        let prefix = format!("netmachine_{}_rpc_connections_accepted_total", service.replace('-', "_"));
        assert!(sample(&body, &prefix).is_some_and(|n| n >= 1.0), "{prefix} in\n{body}");
    }
    let accepted = sample(&body, "netmachine_router_messages_accepted_total").expect("router counter");
    assert!(accepted >= MESSAGES as f64, "{accepted}");
    assert!(body.contains("# TYPE netmachine_transport_frames_sent counter"), "{body}");
    assert!(body.contains("# TYPE netmachine_router_engines_attached gauge"), "{body}");
    assert!(body.trim_end().ends_with("# EOF"), "OpenMetrics text ends with # EOF");
    assert_eq!(http_get(port, "/elsewhere").0, "HTTP/1.1 404 Not Found");
    // What is not an HTTP GET is refused, however much or little of it comes.
    let refused = |request: &[u8]| {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = stream.write_all(request);
        let mut reply = String::new();
        let _ = stream.read_to_string(&mut reply);
        reply.lines().next().unwrap_or_default().to_string()
    };
    assert_eq!(refused(b"POST /metrics HTTP/1.1\r\n\r\n"), "HTTP/1.1 405 Method Not Allowed");
    assert_eq!(refused(&[b'x'; 20_000]), "HTTP/1.1 400 Bad Request", "a head past 8 KiB");
    // Many connections at once (past the 16 answered at a time: the others are closed
    // unanswered) leave the endpoint serving once they are gone.
    let holders: Vec<std::net::TcpStream> = (0..64).filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok()).collect();
    assert_eq!(holders.len(), 64);
    drop(holders);
    wait_until("the endpoint serves again", Duration::from_secs(10), || {
        try_get(port, "/metrics").is_ok_and(|(status, _)| status == "HTTP/1.1 200 OK")
    });

    // The router's counts reach its tally file within a save interval; then it is killed.
    let tally = node.root().join("data/counters/router");
    wait_until("the router saved its counts", 2 * netmachine_service::tally::SAVE_EVERY, || {
        std::fs::read_to_string(&tally).is_ok_and(|t| {
            t.lines().any(|l| l.strip_prefix("messages_accepted ").and_then(|v| v.parse::<u64>().ok()) >= Some(MESSAGES))
        })
    });
    let killed = node.kill9(ServiceKind::Router);
    wait_until("the router is back and serves metrics", Duration::from_secs(30), || {
        node.pid(ServiceKind::Router).is_some_and(|pid| pid != killed)
            && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let (_, body) = http_get(port, "/metrics");
    assert_eq!(sample(&body, "netmachine_service_restarts_total{service=\"router\"}"), Some(1.0), "{body}");
    let carried = sample(&body, "netmachine_router_messages_accepted_total").expect("router counter after the restart");
    assert!(carried >= MESSAGES as f64, "the count went on from {accepted}, not from zero: {carried}");
    let uptime = sample(&body, "netmachine_service_uptime_seconds{service=\"router\"}").expect("uptime");
    let transport_uptime = sample(&body, "netmachine_service_uptime_seconds{service=\"transport\"}").expect("uptime");
    assert!(uptime <= transport_uptime, "the restarted router is younger ({uptime} s) than the transport ({transport_uptime} s)");
}

/// Receives one datagram within `limit`.
fn notification(socket: &UnixDatagram, limit: Duration) -> String {
    socket.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("a notification within the limit");
    String::from_utf8_lossy(&buf[..n]).trim_end().to_string()
}

/// A service process of the test's own, killed when dropped (a failed assertion included).
struct Service(std::process::Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `kind` alone on `home` with systemd's notify socket and watchdog set.
fn start_notifying(kind: ServiceKind, home: &TempHome, notify: &std::path::Path, watchdog_usec: u64) -> Service {
    let child = Command::new(bin_dir().join(kind.binary()))
        .args(["--home", home.0.to_str().unwrap(), "--set", "transport.listen=[\"127.0.0.1:0\"]"])
        .env("NOTIFY_SOCKET", notify)
        .env("WATCHDOG_USEC", watchdog_usec.to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the service");
    Service(child)
}

#[test]
fn a_service_tells_systemd_it_is_ready_once_linked_feeds_the_watchdog_and_says_it_stops() {
    let home = TempHome::new();
    std::fs::create_dir_all(&home.0).unwrap();
    let notify_path = home.0.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    // The router links to the identity store and the transport: neither runs yet.
    let mut router = start_notifying(ServiceKind::Router, &home, &notify_path, 300_000);
    let router_socket = home.0.join("run/router.sock");
    wait_until("the router binds its socket", Duration::from_secs(10), || router_socket.exists());
    let _store = start_notifying(ServiceKind::IdentityStore, &home, &home.0.join("store-notify.sock"), 0);
    let _transport = start_notifying(ServiceKind::Transport, &home, &home.0.join("transport-notify.sock"), 0);
    // The first notification the router sends is its readiness, and it waited for its links.
    let mut first = notification(&notify, Duration::from_secs(20));
    while first == "WATCHDOG=1" {
        first = notification(&notify, Duration::from_secs(20));
    }
    assert!(first.contains("READY=1"), "{first}");
    assert!(first.contains("STATUS=serving\n") || first.ends_with("STATUS=serving"), "ready with every link up: {first}");
    // The watchdog is fed (at half the 300 ms interval): three feeds, each within 5 s.
    let mut fed = 0;
    while fed < 3 {
        if notification(&notify, Duration::from_secs(5)) == "WATCHDOG=1" {
            fed += 1;
        }
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(router.0.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut last = String::new();
    while last != "STOPPING=1" {
        last = notification(&notify, Duration::from_secs(10));
    }
    assert!(router.0.wait().unwrap().success());
}

#[test]
fn a_service_that_cannot_bind_its_address_stops_the_node_with_one_clear_error() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let home = TempHome::new();
    let output = Command::new(bin_dir().join("netmachine"))
        .args(["--home", home.0.to_str().unwrap(), "--set", &format!("transport.listen=[\"127.0.0.1:{port}\"]"), "up"])
        .stdin(Stdio::null())
        .output()
        .expect("run up");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let cause = format!("transport.listen 127.0.0.1:{port}: the address is in use");
    assert_eq!(stderr.matches(&cause).count(), 1, "the cause once: {stderr}");
    assert!(stderr.contains("transport cannot run with this configuration"), "{stderr}");
    assert!(!stderr.contains("os error"), "{stderr}");
}

#[test]
fn status_says_a_home_is_missing_and_deploy_variables_are_not_settings() {
    let missing = std::env::temp_dir().join(format!("nm-no-home-{}", std::process::id()));
    let output = Command::new(bin_dir().join("netmachine"))
        .args(["--home", missing.to_str().unwrap(), "status"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("there is no node home at") && stderr.contains("netmachine up"), "{stderr}");

    let node = Node::up();
    let output = Command::new(bin_dir().join("netmachine"))
        .args(["--home", node.root().to_str().unwrap(), "status", "--json"])
        .env("NETMACHINE_NODE_DIR", "/srv/node")
        .env("NETMACHINE_QUIC_PORT", "4011")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(status["engines"].is_array(), "engines is an array: {status}");
    // A misspelt setting in the settings' own form is still refused, naming the variable.
    let output = Command::new(bin_dir().join("netmachine"))
        .args(["--home", node.root().to_str().unwrap(), "status"])
        .env("NETMACHINE_LIMITS__ENGINE_QUEUES", "5")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("NETMACHINE_LIMITS__ENGINE_QUEUES"));
}

#[test]
fn every_binary_tells_its_version() {
    for binary in ["netmachine"].into_iter().chain(ServiceKind::ALL.map(ServiceKind::binary)) {
        let output = Command::new(bin_dir().join(binary)).arg("--version").output().unwrap();
        assert!(output.status.success(), "{binary} --version");
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), format!("{binary} {}", env!("CARGO_PKG_VERSION")));
    }
}

#[test]
fn the_cli_answers_as_the_readme_says() {
    let node = Node::up();
    let dir = node.root().join("keys");
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("alice.key");
    let made = node.cli(&["key", "new", key.to_str().unwrap()]);
    assert!(made.status.success());
    // A second `key new` on the same file refuses in one sentence that says what to do.
    let again = node.cli(&["key", "new", key.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(said.contains("exists already") && said.contains("key show"), "{said}");
    assert!(!said.contains("os error") && said.lines().count() == 1, "{said}");

    // A request to the node's own identity is answered by its router.
    let asked = node.cli(&["request", "--key", key.to_str().unwrap(), "--to", &node.id(), "hello node"]);
    assert!(asked.status.success(), "{}", String::from_utf8_lossy(&asked.stderr));
    assert!(!asked.stdout.is_empty());

    // config check and show: where each value came from.
    let checked = node.cli(&["config", "check"]);
    assert!(checked.status.success() && String::from_utf8_lossy(&checked.stdout).starts_with("configuration good"));
    let shown = Command::new(bin_dir().join("netmachine"))
        .args(["--home", node.root().to_str().unwrap(), "--set", "limits.engine_queue=77", "config", "show", "--json"])
        .env("NETMACHINE_LIMITS__SEND_WAIT_MS", "1234")
        .output()
        .unwrap();
    let settings: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("JSON");
    let find = |name: &str| settings.as_array().unwrap().iter().find(|s| s["setting"] == name).cloned().unwrap();
    assert_eq!((find("limits.engine_queue")["value"].as_str(), find("limits.engine_queue")["from"].as_str()), (Some("77"), Some("--set limits.engine_queue=77")));
    assert_eq!(find("limits.send_wait_ms")["from"], "environment variable NETMACHINE_LIMITS__SEND_WAIT_MS");
    assert_eq!(find("limits.max_engines")["from"], "default");
    let refused = node.cli(&["--set", "transport.listen=127.0.0.1:0", "config", "check"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("this setting is a list"));
}

#[test]
fn a_benchmark_starts_its_node_with_the_overrides_given_and_refuses_a_bad_one() {
    // `--set` reaches the benchmark's own node: an unknown field stops it before it measures
    // anything, naming the field (it used to be ignored, and the benchmark ran on defaults).
    let output = Command::new(bin_dir().join("netmachine")).args(["--set", "router.nonsense=1", "bench", "local", "--rounds", "10", "--messages", "10"]).output().unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(said.contains("router.nonsense") && said.contains("unknown field"), "{said}");
    assert!(output.stdout.is_empty(), "nothing measured: {}", String::from_utf8_lossy(&output.stdout));
}
