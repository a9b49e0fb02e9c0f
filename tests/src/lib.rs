//! The harness for cross-process tests: a node started with the real `netmachine up` in a
//! temporary home, the real CLI run against it, engines as real `netmachine listen` processes,
//! and raw Cap'n Proto clients on the real sockets for what the CLI cannot express.
//!
//! The binaries are taken from the target directory this test was built into; `scripts/test`
//! builds them first.

pub mod containers;
pub mod link_delay;

use netmachine_service::{NodeHome, ServiceKind};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The directory holding `netmachine` and the service binaries.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target directory").to_path_buf();
    assert!(
        dir.join("netmachine").is_file() && dir.join("netmachine-router").is_file(),
        "binaries missing in {}: run `cargo build --workspace --bins` (scripts/test does)",
        dir.display()
    );
    dir
}

/// `size` bytes that differ from one `seed` to another and along their length (xorshift).
pub fn pseudo_random(size: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Counter or gauge `name` of one service's entry in `status --json` (0 if absent).
pub fn value_of(service: &Value, name: &str) -> u64 {
    service["counters"][name].as_u64().or_else(|| service["gauges"][name].as_u64()).unwrap_or(0)
}

/// Polls `condition` every 50 ms until it holds; panics with `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A temporary node home, removed on drop (kept, with its log, when `NM_TEST_KEEP` is
/// set, to read after a failure).
pub struct TempHome(pub PathBuf);

impl TempHome {
    pub fn new() -> Self {
        let mut suffix = [0u8; 6];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut suffix))
            .expect("random suffix");
        let path = PathBuf::from(format!("/tmp/nm-{}", suffix.iter().map(|b| format!("{b:02x}")).collect::<String>()));
        TempHome(path)
    }
}

impl Default for TempHome {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempHome {
    fn drop(&mut self) {
        if std::env::var_os("NM_TEST_KEEP").is_some() {
            return eprintln!("kept {} and its log", self.0.display());
        }
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(self.0.with_extension("log"));
    }
}

/// A node run by `netmachine up` in a temporary home.
pub struct Node {
    // Declared first so the node stops before its home is removed.
    local: netmachine::local_node::LocalNode,
    pub home: TempHome,
}

impl Node {
    /// Starts a node with the default config and waits until all five services report `up`.
    pub fn up() -> Node {
        Node::up_with(&[])
    }

    /// Starts a node with `--set` overrides and waits until all five services report `up`.
    /// Its transport listens on a free loopback port unless `set` says otherwise, so tests
    /// running side by side never compete for one.
    pub fn up_with(set: &[&str]) -> Node {
        let home = TempHome::new();
        let set: Vec<String> = std::iter::once("transport.listen=[\"127.0.0.1:0\"]")
            .chain(set.iter().copied())
            .map(str::to_string)
            .collect();
        let mut local = netmachine::local_node::LocalNode::start(&bin_dir().join("netmachine"), &home.0, &set)
            .expect("start netmachine up");
        with_rpc(local.wait_ready(Duration::from_secs(30))).expect("the node comes up");
        Node { local, home }
    }

    pub fn root(&self) -> &Path {
        &self.home.0
    }

    /// The node identity, hex.
    pub fn id(&self) -> String {
        self.local.identity().expect("node identity").to_string()
    }

    /// The node home as the services load it.
    pub fn node_home(&self) -> NodeHome {
        NodeHome::load(self.root(), &[]).expect("node home")
    }

    pub fn socket(&self, kind: ServiceKind) -> PathBuf {
        self.node_home().socket(kind)
    }

    /// Runs `netmachine <args> --home <home>` to completion.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin_dir().join("netmachine"))
            .args(args)
            .arg("--home")
            .arg(self.root())
            .stdin(Stdio::null())
            .output()
            .expect("run netmachine")
    }

    /// `netmachine status --json`.
    pub fn status(&self) -> Value {
        let output = self.cli(&["status", "--json"]);
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!("status --json printed no JSON ({e}): {}", String::from_utf8_lossy(&output.stdout))
        })
    }

    pub fn all_up(&self) -> bool {
        let status = self.status();
        status["services"].as_array().is_some_and(|s| s.len() == 5 && s.iter().all(|s| s["state"] == "up"))
    }

    /// The status entry of one service.
    pub fn service(&self, kind: ServiceKind) -> Value {
        let status = self.status();
        status["services"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == kind.name()).cloned())
            .unwrap_or(Value::Null)
    }

    pub fn pid(&self, kind: ServiceKind) -> Option<u64> {
        self.service(kind)["pid"].as_u64()
    }

    /// A counter or gauge of one service, such as the router's `dropped_no_route`.
    pub fn counter(&self, kind: ServiceKind, name: &str) -> u64 {
        value_of(&self.service(kind), name)
    }

    /// A router counter, such as `dropped_no_route`.
    pub fn router_counter(&self, name: &str) -> u64 {
        self.counter(ServiceKind::Router, name)
    }

    /// Makes an engine key with `netmachine key new`; returns its file and identity.
    pub fn engine_key(&self, name: &str) -> (PathBuf, String) {
        let file = self.root().join(format!("{name}.key"));
        let output = self.cli(&["key", "new", file.to_str().expect("utf-8 path")]);
        assert!(output.status.success(), "key new: {}", String::from_utf8_lossy(&output.stderr));
        (file, String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// Starts `netmachine listen --json` (with `extra` flags) as the engine whose key is `key`,
    /// and waits until the router lists it as attached.
    pub fn listen(&self, key: &Path, identity: &str, extra: &[&str]) -> Listener {
        let child = Command::new(bin_dir().join("netmachine"))
            .args(["listen", "--json", "--key"])
            .arg(key)
            .args(extra)
            .arg("--home")
            .arg(self.root())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start netmachine listen");
        let listener = Listener::new(child);
        self.wait_attached(identity);
        listener
    }

    /// Starts `netmachine events --json` and waits until both the transport and the pubsub
    /// service count it as a subscriber.
    pub fn events(&self) -> Listener {
        let child = Command::new(bin_dir().join("netmachine"))
            .args(["events", "--json", "--home"])
            .arg(self.root())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start netmachine events");
        let listener = Listener::new(child);
        wait_until("the events command subscribed", Duration::from_secs(20), || {
            self.counter(ServiceKind::Transport, "event_subscribers") >= 1 && self.counter(ServiceKind::PubSub, "event_subscribers") >= 1
        });
        listener
    }

    /// Waits until the router lists `identity` among its attached engines.
    pub fn wait_attached(&self, identity: &str) {
        wait_until(&format!("engine {identity} is attached"), Duration::from_secs(20), || {
            self.status()["engines"].as_array().is_some_and(|e| e.iter().any(|e| e == identity))
        });
    }

    /// The engines attached to the router other than the node's own services' (pubsub's two),
    /// from a status in which every service answered (a service that did not, say under load,
    /// would leave its engines looking like anyone's).
    pub fn engines(&self) -> Vec<String> {
        let mut status = self.status();
        let start = Instant::now();
        // Pubsub lists its two engines once both are attached; the router, as each attaches.
        let settled = |status: &Value| {
            let services = status["services"].as_array().cloned().unwrap_or_default();
            services.iter().all(|s| s["state"] == "up") && services.iter().filter(|s| s["name"] == "pubsub").all(|s| s["engines"].as_array().is_some_and(|e| e.len() == 2))
        };
        while !settled(&status) && start.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(50));
            status = self.status();
        }
        let services = status["services"].as_array().cloned().unwrap_or_default();
        let of_services: Vec<Value> = services.iter().filter(|s| s["name"] != "router").flat_map(|s| s["engines"].as_array().cloned().unwrap_or_default()).collect();
        let attached = status["engines"].as_array().cloned().unwrap_or_default();
        attached.into_iter().filter(|e| !of_services.contains(e)).filter_map(|e| e.as_str().map(str::to_string)).collect()
    }

    /// Kills one service with SIGKILL; returns its pid.
    pub fn kill9(&self, kind: ServiceKind) -> u64 {
        self.signal(kind, nix::sys::signal::Signal::SIGKILL)
    }

    /// Sends `signal` to one service's process (SIGSTOP: it stalls, as a hung process would);
    /// returns its pid.
    pub fn signal(&self, kind: ServiceKind, signal: nix::sys::signal::Signal) -> u64 {
        let pid = self.pid(kind).unwrap_or_else(|| panic!("{} has no pid", kind.name()));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap_or_else(|e| panic!("{signal}: {e}"));
        pid
    }

    /// Stops the node as an operator would (SIGTERM to `up`); returns `up`'s exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.local.stop()
    }

    /// Sends `signal` to `up` itself (SIGKILL: its services then get SIGTERM from the kernel)
    /// and waits until it and every service have exited (one still stopping could remove the
    /// socket a service of the next `up` has just bound).
    pub fn signal_up(&mut self, signal: nix::sys::signal::Signal) {
        let services: Vec<u64> = ServiceKind::ALL.iter().filter_map(|kind| self.pid(*kind)).collect();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.local.pid() as i32), signal).unwrap_or_else(|e| panic!("{signal} to up: {e}"));
        wait_until("up has exited", Duration::from_secs(30), || self.local.exited().is_some());
        for service in services {
            let pid = nix::unistd::Pid::from_raw(service as i32);
            wait_until("the services have exited", Duration::from_secs(30), || nix::sys::signal::kill(pid, None).is_err());
        }
    }

    /// Starts the stopped node again in its home, with `set`, and waits until it is up (from
    /// async code, as engines of the test keep running meanwhile).
    pub async fn start_again(&mut self, set: &[&str]) {
        let set: Vec<String> = std::iter::once("transport.listen=[\"127.0.0.1:0\"]").chain(set.iter().copied()).map(str::to_string).collect();
        self.local = netmachine::local_node::LocalNode::start(&bin_dir().join("netmachine"), &self.home.0, &set).expect("start netmachine up again");
        self.local.wait_ready(Duration::from_secs(30)).await.expect("the node comes up again");
    }

    /// Writes this node's advert (`netmachine advert`) to a file and returns its path.
    pub fn advert_file(&self) -> PathBuf {
        let output = self.cli(&["advert"]);
        assert!(output.status.success(), "advert: {}", String::from_utf8_lossy(&output.stderr));
        let file = self.root().join("own.advert");
        std::fs::write(&file, &output.stdout).expect("write advert");
        file
    }

    /// `netmachine peer add` of `other`'s advert on this node, with extra flags.
    pub fn add_peer(&self, other: &Node, extra: &[&str]) -> Output {
        let advert = other.advert_file();
        let mut args = vec!["peer", "add", advert.to_str().expect("utf-8 path")];
        args.extend_from_slice(extra);
        self.cli(&args)
    }

    /// The identities of the connected nodes (`netmachine peers --json`).
    pub fn connected(&self) -> Vec<String> {
        let output = self.cli(&["peers", "--json"]);
        let peers: Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        peers.as_array().into_iter().flatten().filter_map(|p| p["node"].as_str().map(str::to_string)).collect()
    }
}

/// Links two nodes as the README says: each adds the other's advert; waits until connected.
pub fn link(a: &Node, b: &Node) {
    for (from, to) in [(a, b), (b, a)] {
        let added = from.add_peer(to, &[]);
        assert!(added.status.success(), "peer add: {}", String::from_utf8_lossy(&added.stderr));
    }
    let (a_id, b_id) = (a.id(), b.id());
    wait_until("the nodes are connected", Duration::from_secs(30), || {
        a.connected().contains(&b_id) && b.connected().contains(&a_id)
    });
}

/// A process printing one JSON object per line (`listen --json`, `events --json`).
pub struct Listener {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Listener {
    /// Collects the lines `child` prints on its piped stdout.
    pub fn new(mut child: Child) -> Listener {
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines_tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        Listener { child, lines }
    }

    /// The next message it printed, as JSON; panics after `limit`.
    pub fn next_message(&self, limit: Duration) -> Value {
        let line = self.lines.recv_timeout(limit).expect("a message within the limit");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("listen printed non-JSON '{line}': {e}"))
    }

    /// The first message printed that `wanted` picks, skipping others; panics after `limit`,
    /// naming `what` and what was skipped.
    pub fn wait_for(&self, what: &str, limit: Duration, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else { panic!("no {what} within {limit:?}; skipped {skipped:?}") };
            let message: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("printed non-JSON '{line}': {e}"));
            if wanted(&message) {
                return message;
            }
            skipped.push(message);
        }
    }

    /// Every message printed within `quiet` of the previous one.
    pub fn drain(&self, quiet: Duration) -> Vec<Value> {
        let mut out = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(quiet) {
            out.push(serde_json::from_str(&line).unwrap_or(Value::Null));
        }
        out
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the `sequence` example (`engine/examples/sequence.rs`) on `node` with `args`: it
/// sends or receives numbered messages and prints what it saw as JSON.
pub fn sequence(node: &Node, args: &[&str]) -> Child {
    // Its log goes to the node's root, kept with the home when a test fails (NM_TEST_KEEP=1).
    static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let log = std::fs::File::create(node.root().join(format!("sequence-{n}-{}.log", args.first().unwrap_or(&"")))).expect("the sequence's log file");
    sequence_command(node, args).stderr(log).spawn().expect("start the sequence example")
}

/// The command `sequence` runs, to start otherwise (as another user, with its errors).
pub fn sequence_command(node: &Node, args: &[&str]) -> Command {
    let mut command = Command::new(bin_dir().join("examples/sequence"));
    command
        .args(args)
        .env("NETMACHINE_HOME", node.root())
        // Closing it ends a sequence sent with COUNT `-`.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    command
}

/// What a `sequence` process printed when it finished.
pub fn outcome(child: Child) -> Value {
    let output = child.wait_with_output().expect("sequence finishes");
    assert!(output.status.success(), "sequence failed: {output:?}");
    serde_json::from_slice(&output.stdout).expect("sequence prints JSON")
}

/// Runs `work` on a current-thread runtime inside a `LocalSet`, as Cap'n Proto RPC needs.
pub fn with_rpc<T>(work: impl std::future::Future<Output = T>) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    tokio::task::LocalSet::new().block_on(&runtime, work)
}

/// Attaches an engine from this test process through the SDK.
pub async fn attach_engine(node: &Node, configure: impl FnOnce(&mut netmachine_engine::EngineOptions)) -> netmachine_engine::Engine {
    let socket = node.socket(ServiceKind::Router);
    let mut options = netmachine_engine::EngineOptions::new(socket, netmachine_schema::Keypair::generate());
    configure(&mut options);
    netmachine_engine::Engine::attach(options).await.expect("attach")
}

/// Attaches as `claimed` over raw RPC, signing the challenge with `signer`, with the location
/// `locate` makes for the node and `inbox` as the engine's Inbox: what the SDK cannot do (prove
/// the wrong key, sign a wrong location, never answer a delivery). The session, or the refusal;
/// dropping the session detaches.
pub async fn attach_raw(
    node: &Node,
    claimed: netmachine_schema::Identity,
    signer: &netmachine_schema::Keypair,
    locate: impl FnOnce(netmachine_schema::Identity) -> netmachine_schema::EngineLocation,
    inbox: netmachine_schema::router_capnp::inbox::Client,
) -> Result<netmachine_schema::router_capnp::engine_session::Client, String> {
    let router: netmachine_schema::router_capnp::router::Client = connect(&node.socket(ServiceKind::Router)).await;
    attach_raw_on(&router, claimed, signer, locate, inbox).await
}

/// `attach_raw` on a router connection the caller holds (many attempts on one connection).
pub async fn attach_raw_on(
    router: &netmachine_schema::router_capnp::router::Client,
    claimed: netmachine_schema::Identity,
    signer: &netmachine_schema::Keypair,
    locate: impl FnOnce(netmachine_schema::Identity) -> netmachine_schema::EngineLocation,
    inbox: netmachine_schema::router_capnp::inbox::Client,
) -> Result<netmachine_schema::router_capnp::engine_session::Client, String> {
    attach_raw_granted(router, claimed, signer, locate, inbox).await.map(|(session, _)| session)
}

/// `attach_raw_on`, asking for no rings, with the ticket the router granted (for the data
/// streams) if it has a handoff socket.
pub async fn attach_raw_granted(
    router: &netmachine_schema::router_capnp::router::Client,
    claimed: netmachine_schema::Identity,
    signer: &netmachine_schema::Keypair,
    locate: impl FnOnce(netmachine_schema::Identity) -> netmachine_schema::EngineLocation,
    inbox: netmachine_schema::router_capnp::inbox::Client,
) -> Result<(netmachine_schema::router_capnp::engine_session::Client, Option<[u8; 32]>), String> {
    use netmachine_schema::{signing, Identity};
    let mut request = router.attach_request();
    request.get().set_engine(&claimed.0);
    let answer = request.send().promise.await.map_err(|e| e.to_string())?;
    let answer = answer.get().map_err(|e| e.to_string())?;
    let node_id = Identity::from_slice("node", answer.get_node().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let payload = signing::attach_challenge(&node_id, &claimed, answer.get_challenge().map_err(|e| e.to_string())?);
    let mut prove = answer.get_attachment().map_err(|e| e.to_string())?.prove_request();
    prove.get().set_signature(&signer.sign(&payload));
    prove.get().set_inbox(inbox);
    locate(node_id).write(prove.get().init_location());
    let proven = prove.send().promise.await.map_err(|e| e.to_string())?;
    let proven = proven.get().map_err(|e| e.to_string())?;
    let ticket = proven.get_ring().and_then(|grant| grant.get_ticket()).ok().and_then(|ticket| ticket.try_into().ok());
    Ok((proven.get_session().map_err(|e| e.to_string())?, ticket))
}

/// Sends `body` to `dst` until the node knows where `dst` is (engine announcements travel
/// between nodes after they connect); false if it never does within 10 s. The sender must use
/// the socket path, whose sends answer with the router's verdict.
pub async fn send_when_routable(sender: &netmachine_engine::Engine, dst: impl Into<netmachine_engine::Destination> + Copy, body: &[u8]) -> bool {
    for _ in 0..100 {
        if sender.send(dst, body.to_vec()).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Connects to a service socket and returns its bootstrap interface as `C`.
pub async fn connect<C: capnp::capability::FromClientHook>(socket: &Path) -> C {
    netmachine_service::rpc::connect::<C>(socket, 1 << 20).await.expect("connect to service").0
}

/// A node record for `key` with a NodeAdvert of `version`, signed by `signer` (the node's own
/// key for a valid advert, another for a forged one).
pub fn node_record(
    key: &netmachine_schema::Keypair,
    signer: &netmachine_schema::Keypair,
    version: u32,
) -> capnp::message::Builder<capnp::message::HeapAllocator> {
    use netmachine_schema::identity_capnp::identity_record;
    let mut wire = capnp::message::Builder::new_default();
    let mut node = wire.init_root::<identity_record::Builder>().init_node();
    node.set_id(&key.identity().0);
    write_advert(node.init_advert(), key, signer, version);
    wire
}

/// `key`'s own signed NodeAdvert as a standalone message, as `netmachine advert` carries it.
pub fn advert_message(key: &netmachine_schema::Keypair) -> Vec<u8> {
    let mut wire = capnp::message::Builder::new_default();
    write_advert(wire.init_root(), key, key, 1);
    capnp::serialize::write_message_to_words(&wire)
}

fn write_advert(
    mut advert: netmachine_schema::identity_capnp::node_advert::Builder<'_>,
    key: &netmachine_schema::Keypair,
    signer: &netmachine_schema::Keypair,
    version: u32,
) {
    advert.set_id(&key.identity().0);
    advert.set_version(version);
    advert.set_created(netmachine_schema::time::now_ms());
    let mut quic = advert.reborrow().init_addrs(1).get(0).init_address().init_quic();
    quic.set_ip(&[127, 0, 0, 1]);
    quic.set_port(7000);
    quic.set_cert_issuer(&key.identity().0);
    let payload = netmachine_schema::signing::node_advert(advert.reborrow_as_reader()).expect("payload");
    advert.set_sig(&signer.sign(&payload));
}

/// Stores `record` under `id` through the identity store's socket; returns the refusal's
/// reason and detail, or `None` when accepted.
pub async fn update_identity(
    socket: &Path,
    id: &netmachine_schema::Identity,
    record: &capnp::message::Builder<capnp::message::HeapAllocator>,
) -> Option<(netmachine_schema::identity_store_capnp::RefusalReason, String)> {
    use netmachine_schema::identity_capnp::identity_record;
    use netmachine_schema::identity_store_capnp::{identity_store, update_result};
    let store: identity_store::Client = connect(socket).await;
    let mut request = store.update_request();
    request.get().set_id(&id.0);
    request
        .get()
        .set_record(record.get_root_as_reader::<identity_record::Reader>().expect("record"))
        .expect("set record");
    let answer = request.send().promise.await.expect("update answered");
    match answer.get().and_then(|a| a.get_result()).expect("result").which().expect("union") {
        update_result::Accepted(()) => None,
        update_result::Refused(refused) => Some((
            refused.get_reason().expect("reason"),
            refused.get_detail().expect("detail").to_string().expect("utf-8"),
        )),
    }
}

/// Whether the identity store at `socket` holds a record for `id`.
pub async fn identity_exists(socket: &Path, id: &netmachine_schema::Identity) -> bool {
    use netmachine_schema::identity_store_capnp::identity_store;
    let store: identity_store::Client = connect(socket).await;
    let mut request = store.lookup_request();
    request.get().set_id(&id.0);
    let answer = request.send().promise.await.expect("lookup answered");
    answer.get().expect("lookup results").get_found()
}
