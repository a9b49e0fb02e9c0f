//! The node's configuration: embedded defaults, overridden by `config.toml` in the node home,
//! then by `NETMACHINE_<SECTION>__<KEY>` environment variables, then by `--set section.key=value`
//! flags. A bad setting is reported with its dotted field name and what is wrong with it.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Every setting of a node. See the README's config reference for each field.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    pub limits: Limits,
    pub router: RouterConfig,
    pub transport: TransportConfig,
    pub pubsub: PubSubConfig,
    pub storage: StorageConfig,
    pub supervisor: SupervisorConfig,
    pub metrics: MetricsConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// The TCP address (`ip:port`) where the router serves every service's metrics in the
    /// Prometheus text format at `/metrics`; off unless set.
    pub listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Runtime directory for the service sockets (`$RUN`); default `<home>/run`.
    pub run_dir: Option<PathBuf>,
    /// Data directory (`$DATA`); default `<home>/data`.
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest message body a node accepts or sends, in bytes.
    pub max_message_bytes: u32,
    /// Messages queued for one engine before senders to it wait.
    pub engine_queue: u32,
    /// Engines attached at once.
    pub max_engines: u32,
    /// RPC connections one service accepts at once (one process may hold a quarter of them).
    pub max_connections: u32,
    /// An RPC connection on which nothing arrives this long after it is accepted is closed.
    pub silent_connection_ms: u64,
    /// How long a send waits for room in a full destination queue before it is refused.
    pub send_wait_ms: u64,
    /// Identity records the identity store keeps.
    pub max_records: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 1 << 20,
            engine_queue: 1024,
            max_engines: 1024,
            max_connections: 256,
            silent_connection_ms: 10_000,
            send_wait_ms: 5_000,
            max_records: 1_000_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// Identity records the router keeps cached from the identity store.
    pub cache_entries: u32,
    /// Messages waiting to be sent to one other node before senders to it wait.
    pub node_queue: u32,
    /// Bytes sent to one other node and kept until it acknowledges them; while that many are
    /// kept, what waits for that node waits longer.
    pub unacked_bytes: u64,
    /// Drop messages from other nodes that carry no engine signature.
    pub require_engine_signatures: bool,
    /// Bytes of each shared-memory ring (power of two); 0 turns the rings off.
    pub ring_bytes: u32,
    /// Grant two ring engines that talk steadily a ring of their own (a direct channel), so
    /// that their messages skip the router; false: every local message goes through it.
    pub direct_channels: bool,
    /// Unix users (names or numeric ids), besides the node's own, whose engines may attach
    /// (rings included): the home and run directories become searchable by others, the
    /// router's sockets open to them, and each connection's user is checked.
    pub engine_users: Vec<String>,
    /// Unix groups (names or ids) whose members' engines may attach, likewise.
    pub engine_groups: Vec<String>,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig { cache_entries: 65_536, node_queue: 4096, unacked_bytes: 16 << 20, require_engine_signatures: false, ring_bytes: 1 << 20, direct_channels: true, engine_users: vec![], engine_groups: vec![] }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PubSubConfig {
    /// Bytes of events each subscriber node may have unacknowledged (the backpressure window).
    pub window_bytes: u64,
    /// The history each topic fed to other nodes keeps for repair: events, bytes and age.
    pub history_events: u64,
    pub history_bytes: u64,
    pub history_age_ms: u64,
    /// An idle topic tells its subscriber nodes its last event this often; a publisher silent
    /// for three of these is subscribed to again.
    pub heartbeat_ms: u64,
    /// Subscriber nodes one topic is fed to at most.
    pub max_readers: u64,
    /// Fault injection, for `bench pubsub` and tests: the share (per mille) of the events from
    /// other nodes that the service drops on arrival, as a lossy link would. 0 in production.
    pub drop_received_permille: u64,
}

impl Default for PubSubConfig {
    fn default() -> Self {
        PubSubConfig { window_bytes: 1 << 20, history_events: 100_000, history_bytes: 64 << 20, history_age_ms: 600_000, heartbeat_ms: 1_000, max_readers: 1024, drop_received_permille: 0 }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Bytes of block content the node holds at most (puts in progress included).
    pub max_bytes: u64,
    /// The largest block the node accepts.
    pub max_block_bytes: u64,
    /// The lifetime of a block put with no expiry.
    pub default_lease_ms: u64,
    /// Blocks whose lease ended are collected this often.
    pub collect_every_ms: u64,
    /// A partial block left by a stopped fetch is kept this long for a later get to resume.
    pub partial_lease_ms: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig { max_bytes: 8 << 30, max_block_bytes: 1 << 30, default_lease_ms: 7 * 24 * 3_600_000, collect_every_ms: 60_000, partial_lease_ms: 86_400_000 }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TransportConfig {
    /// UDP addresses the QUIC endpoint binds (`ip:port`; port 0 picks a free one).
    pub listen: Vec<String>,
    /// Addresses put in this node's advert; empty: the bound listen addresses.
    pub advertise: Vec<String>,
    /// Accept any node (Flow's public network); its messages reach only public engines.
    pub public: bool,
    /// Connections to other nodes at once.
    pub max_peers: u32,
    /// Frames waiting for one peer before senders to it wait.
    pub peer_queue: u32,
    /// An ephemeral connection idle this long is closed.
    pub idle_timeout_ms: u64,
    /// First delay before reconnecting a permanent peer.
    pub reconnect_initial_ms: u64,
    /// Cap of the reconnect delay.
    pub reconnect_max_ms: u64,
    /// How long a connection attempt may take.
    pub connect_timeout_ms: u64,
    /// How long a frame's bytes may take to arrive once its length has: a peer that stalls
    /// mid-frame has that stream stopped.
    pub frame_read_ms: u64,
    /// Receive and send buffer of each UDP socket (the kernel's default of about 200 KiB
    /// drops datagrams of a bulk stream whenever the transport is descheduled for a moment).
    pub udp_buffer_bytes: u64,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            listen: vec!["127.0.0.1:4010".into()],
            advertise: vec![],
            public: false,
            max_peers: 256,
            peer_queue: 1024,
            idle_timeout_ms: 30_000,
            reconnect_initial_ms: 200,
            reconnect_max_ms: 30_000,
            connect_timeout_ms: 5_000,
            frame_read_ms: 30_000,
            udp_buffer_bytes: 8 << 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SupervisorConfig {
    /// First delay before `netmachine up` restarts a service that died.
    pub restart_initial_ms: u64,
    /// Longest delay between restarts of a service that keeps dying.
    pub restart_max_ms: u64,
    /// How long a service gets to exit after SIGTERM before it is killed.
    pub stop_timeout_ms: u64,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig { restart_initial_ms: 100, restart_max_ms: 10_000, stop_timeout_ms: 5_000 }
    }
}

/// What is wrong with a configuration.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("config file {path}: {detail}")]
    File { path: PathBuf, detail: String },
    #[error("config field `{field}` ({source_name}): {problem}")]
    Field { field: String, source_name: String, problem: String },
    #[error("config override '{0}': expected section.key=value")]
    Override(String),
}

/// Where an override came from, for error messages.
#[derive(Debug, Clone)]
pub struct Override {
    pub field: String,
    pub value: String,
    pub origin: String,
}

impl Override {
    /// Parses a `--set section.key=value` flag.
    pub fn from_flag(flag: &str) -> Result<Self, ConfigError> {
        let (field, value) = flag.split_once('=').ok_or_else(|| ConfigError::Override(flag.into()))?;
        if !field.contains('.') {
            return Err(ConfigError::Override(flag.into()));
        }
        Ok(Override { field: field.trim().into(), value: value.into(), origin: format!("--set {flag}") })
    }

    /// The `NETMACHINE_<SECTION>__<KEY>` variables of an environment. Only names with the
    /// double underscore are settings: `NETMACHINE_HOME`, `NETMACHINE_BIN_DIR` and whatever a
    /// deployment names `NETMACHINE_SOMETHING` for itself are left alone.
    pub fn from_env(vars: impl Iterator<Item = (String, String)>) -> Vec<Self> {
        vars.filter_map(|(name, value)| {
            let (section, key) = name.strip_prefix("NETMACHINE_")?.split_once("__")?;
            let field = format!("{}.{}", section.to_ascii_lowercase(), key.to_ascii_lowercase());
            Some(Override { field, value, origin: format!("environment variable {name}") })
        })
        .collect()
    }
}

/// One effective setting: its dotted name, its value as TOML, and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    pub field: String,
    pub value: String,
    /// `default`, `file <path>`, `environment variable <NAME>` or `--set <flag>`.
    pub origin: String,
}

impl Config {
    /// Every setting of `self` (loaded from `file` and `overrides`) with where its value came
    /// from, section by section. Settings without a value (off unless set) are left out.
    pub fn settings(&self, file: &Path, overrides: &[Override]) -> Vec<Setting> {
        let in_file: toml::Table = std::fs::read_to_string(file).ok().and_then(|t| t.parse().ok()).unwrap_or_default();
        let Ok(toml::Value::Table(effective)) = toml::Value::try_from(self) else { return vec![] };
        let mut settings = Vec::new();
        for (section, keys) in effective {
            let toml::Value::Table(keys) = keys else { continue };
            for (key, value) in keys {
                let field = format!("{section}.{key}");
                let origin = match overrides.iter().rev().find(|o| o.field == field) {
                    Some(o) => o.origin.clone(),
                    None if in_file.get(&section).and_then(|s| s.get(&key)).is_some() => format!("file {}", file.display()),
                    None => "default".to_string(),
                };
                settings.push(Setting { field, value: value.to_string(), origin });
            }
        }
        settings
    }

    /// Loads the config: defaults, then `file` if it exists, then each override in order.
    pub fn load(file: &Path, overrides: &[Override]) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(file) {
            Ok(text) => Config::parse(&text, file, overrides),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Config::parse("", file, overrides),
            Err(e) => Err(ConfigError::File { path: file.to_path_buf(), detail: e.to_string() }),
        }
    }

    /// The config of `text`, the contents of `file`, with each override applied in order.
    pub fn parse(text: &str, file: &Path, overrides: &[Override]) -> Result<Config, ConfigError> {
        let mut table = text.parse::<toml::Table>().map_err(|e| ConfigError::File {
            path: file.to_path_buf(),
            detail: e.to_string().trim().to_string(),
        })?;
        for o in overrides {
            let (section, key) = o.field.split_once('.').ok_or_else(|| ConfigError::Field {
                field: o.field.clone(),
                source_name: o.origin.clone(),
                problem: "expected section.key".into(),
            })?;
            let section = table
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let toml::Value::Table(section) = section else {
                return Err(ConfigError::Field {
                    field: o.field.clone(),
                    source_name: o.origin.clone(),
                    problem: "its section is not a table".into(),
                });
            };
            section.insert(key.to_string(), parse_value(&o.value));
        }
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let field = e.path().to_string();
            let mut problem = e.inner().to_string();
            if problem.contains("expected a sequence") {
                problem.push_str(&format!("; this setting is a list: {field}=[\"127.0.0.1:4010\"]"));
            }
            ConfigError::Field { source_name: origin_of(&field, file, overrides), field, problem }
        })?;
        config.validate(file, overrides)?;
        Ok(config)
    }

    fn validate(&self, file: &Path, overrides: &[Override]) -> Result<(), ConfigError> {
        let checks: [(&str, u64, u64, u64); 33] = [
            // At least 4 KiB: an event carried to other nodes needs 1 KiB of it for its wrapping.
            ("limits.max_message_bytes", self.limits.max_message_bytes.into(), 4096, 64 << 20),
            ("limits.engine_queue", self.limits.engine_queue.into(), 1, 1 << 20),
            ("limits.max_engines", self.limits.max_engines.into(), 1, 1 << 20),
            ("limits.max_connections", self.limits.max_connections.into(), 1, 1 << 16),
            ("limits.silent_connection_ms", self.limits.silent_connection_ms, 100, 3_600_000),
            ("limits.send_wait_ms", self.limits.send_wait_ms, 0, 600_000),
            ("limits.max_records", self.limits.max_records, 1, 1 << 32),
            ("router.cache_entries", self.router.cache_entries.into(), 16, 1 << 24),
            ("router.node_queue", self.router.node_queue.into(), 1, 1 << 20),
            ("router.unacked_bytes", self.router.unacked_bytes, 64 << 10, 1 << 32),
            ("transport.max_peers", self.transport.max_peers.into(), 1, 1 << 16),
            ("transport.peer_queue", self.transport.peer_queue.into(), 1, 1 << 20),
            ("transport.idle_timeout_ms", self.transport.idle_timeout_ms, 100, 86_400_000),
            ("transport.frame_read_ms", self.transport.frame_read_ms, 100, 600_000),
            // A first delay of 0 would double to 0 forever: a redial or restart loop.
            ("transport.reconnect_initial_ms", self.transport.reconnect_initial_ms, 1, 3_600_000),
            ("supervisor.restart_initial_ms", self.supervisor.restart_initial_ms, 1, 3_600_000),
            ("transport.reconnect_max_ms", self.transport.reconnect_max_ms, self.transport.reconnect_initial_ms.max(1), 3_600_000),
            ("transport.connect_timeout_ms", self.transport.connect_timeout_ms, 100, 600_000),
            ("transport.udp_buffer_bytes", self.transport.udp_buffer_bytes, 64 << 10, 1 << 30),
            ("supervisor.restart_max_ms", self.supervisor.restart_max_ms, self.supervisor.restart_initial_ms.max(1), 3_600_000),
            ("supervisor.stop_timeout_ms", self.supervisor.stop_timeout_ms, 100, 600_000),
            // A window smaller than one largest event would never let it go.
            ("pubsub.window_bytes", self.pubsub.window_bytes, self.limits.max_message_bytes.into(), 1 << 32),
            ("pubsub.history_events", self.pubsub.history_events, 1, 1 << 32),
            ("pubsub.history_bytes", self.pubsub.history_bytes, self.limits.max_message_bytes.into(), 1 << 40),
            ("pubsub.history_age_ms", self.pubsub.history_age_ms, 1_000, 86_400_000),
            ("pubsub.heartbeat_ms", self.pubsub.heartbeat_ms, 10, 600_000),
            ("pubsub.max_readers", self.pubsub.max_readers, 1, 1 << 16),
            ("pubsub.drop_received_permille", self.pubsub.drop_received_permille, 0, 1000),
            ("storage.max_bytes", self.storage.max_bytes, 0, u64::MAX),
            // A block larger than the budget could never be held.
            ("storage.max_block_bytes", self.storage.max_block_bytes, 1, self.storage.max_bytes.max(1)),
            ("storage.default_lease_ms", self.storage.default_lease_ms, 1_000, 100 * 365 * 86_400_000),
            ("storage.collect_every_ms", self.storage.collect_every_ms, 100, 86_400_000),
            ("storage.partial_lease_ms", self.storage.partial_lease_ms, 100, 100 * 365 * 86_400_000),
        ];
        for (field, value, min, max) in checks {
            if value < min || value > max {
                return Err(ConfigError::Field {
                    field: field.into(),
                    source_name: origin_of(field, file, overrides),
                    problem: format!("must be between {min} and {max}, got {value}"),
                });
            }
        }
        let ring = self.router.ring_bytes;
        if ring != 0 && (ring < 4096 || !ring.is_power_of_two() || ring > 1 << 30) {
            return Err(ConfigError::Field {
                field: "router.ring_bytes".into(),
                source_name: origin_of("router.ring_bytes", file, overrides),
                problem: format!("must be 0 or a power of two from 4096 to 1073741824, got {ring}"),
            });
        }
        for (field, addrs) in [("transport.listen", &self.transport.listen), ("transport.advertise", &self.transport.advertise)] {
            for addr in addrs {
                if addr.parse::<std::net::SocketAddr>().is_err() {
                    return Err(ConfigError::Field {
                        field: field.into(),
                        source_name: origin_of(field, file, overrides),
                        problem: format!("'{addr}' is not an ip:port address"),
                    });
                }
            }
        }
        if let Err((field, problem)) = self.engine_access() {
            return Err(ConfigError::Field { field: field.into(), source_name: origin_of(field, file, overrides), problem });
        }
        if self.transport.listen.is_empty() {
            return Err(ConfigError::Field {
                field: "transport.listen".into(),
                source_name: origin_of("transport.listen", file, overrides),
                problem: "needs at least one address".into(),
            });
        }
        Ok(())
    }

    /// Which Unix users may attach engines (resolved from `router.engine_users` and
    /// `router.engine_groups`).
    pub fn engine_access(&self) -> Result<crate::engine_access::EngineAccess, (&'static str, String)> {
        crate::engine_access::EngineAccess::resolve(&self.router.engine_users, &self.router.engine_groups)
    }

    /// The largest P2P frame a node sends or accepts: one maximal message plus its envelope.
    /// Batches are cut to fit it.
    /// How many RPC connections a service takes, and how long a silent one is kept.
    pub fn connection_limits(&self) -> netmachine_rpc::ConnectionLimits {
        let max = u64::from(self.limits.max_connections);
        netmachine_rpc::ConnectionLimits { max, per_process: (max / 4).max(1), silent: std::time::Duration::from_millis(self.limits.silent_connection_ms) }
    }

    pub fn max_frame_bytes(&self) -> usize {
        self.limits.max_message_bytes as usize + (16 << 10)
    }

    /// The largest RPC message a service reads, in 8-byte words: room for one maximal message
    /// body twice over plus its envelope. Anything larger closes the connection that sent it.
    pub fn rpc_word_limit(&self) -> usize {
        netmachine_rpc::word_limit(self.limits.max_message_bytes as usize)
    }
}

/// A value as TOML if it parses as one (numbers, booleans, arrays), else as a plain string.
fn parse_value(text: &str) -> toml::Value {
    format!("v = {text}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_string()))
}

fn origin_of(field: &str, file: &Path, overrides: &[Override]) -> String {
    overrides
        .iter()
        .rev()
        .find(|o| field.starts_with(&o.field) || o.field.starts_with(field))
        .map(|o| o.origin.clone())
        .unwrap_or_else(|| format!("file {}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(text: &str) -> (PathBuf, impl Drop) {
        struct Remove(PathBuf);
        impl Drop for Remove {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("nm-config-{}-{n}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        (path.clone(), Remove(path))
    }

    fn set(field: &str, value: &str, origin: &str) -> Override {
        Override { field: field.into(), value: value.into(), origin: origin.into() }
    }

    #[test]
    fn no_file_gives_the_defaults() {
        let config = Config::load(Path::new("/nonexistent/config.toml"), &[]).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn file_then_environment_then_flags_win_in_that_order() {
        let (path, _guard) = file_with("[limits]\nengine_queue = 10\nmax_engines = 20\nsend_wait_ms = 30\n");
        let env = Override::from_env(
            [
                ("NETMACHINE_LIMITS__MAX_ENGINES".to_string(), "21".to_string()),
                ("NETMACHINE_LIMITS__SEND_WAIT_MS".to_string(), "31".to_string()),
                ("NETMACHINE_HOME".to_string(), "/x".to_string()),
                ("NETMACHINE_BIN_DIR".to_string(), "/opt/netmachine/bin".to_string()),
                // A deployment's own variable (the Compose files have these) is not a setting.
                ("NETMACHINE_QUIC_PORT".to_string(), "4011".to_string()),
                ("PATH".to_string(), "/bin".to_string()),
            ]
            .into_iter(),
        );
        assert_eq!(env.len(), 2);
        let mut overrides = env;
        overrides.push(Override::from_flag("limits.send_wait_ms=32").unwrap());
        let config = Config::load(&path, &overrides).unwrap();
        assert_eq!(config.limits.engine_queue, 10);
        assert_eq!(config.limits.max_engines, 21);
        assert_eq!(config.limits.send_wait_ms, 32);
        assert_eq!(config.limits.max_message_bytes, Limits::default().max_message_bytes);
    }

    #[test]
    fn the_pubsub_section_is_read_and_a_window_smaller_than_one_message_is_refused() {
        let (path, _guard) = file_with("[pubsub]\nwindow_bytes = 2097152\nheartbeat_ms = 250\n");
        let config = Config::load(&path, &[]).unwrap();
        assert_eq!((config.pubsub.window_bytes, config.pubsub.heartbeat_ms, config.pubsub.max_readers), (2 << 20, 250, PubSubConfig::default().max_readers));
        let err = Config::load(&path, &[Override::from_flag("pubsub.window_bytes=100").unwrap()]).unwrap_err().to_string();
        assert!(err.contains("`pubsub.window_bytes`") && err.contains("got 100"), "{err}");
    }

    #[test]
    fn the_storage_section_is_read_and_a_block_larger_than_the_budget_is_refused() {
        let (path, _guard) = file_with("[storage]\nmax_bytes = 1000000\nmax_block_bytes = 4096\n");
        let config = Config::load(&path, &[]).unwrap();
        assert_eq!((config.storage.max_bytes, config.storage.max_block_bytes, config.storage.collect_every_ms), (1_000_000, 4096, StorageConfig::default().collect_every_ms));
        let err = Config::load(&path, &[Override::from_flag("storage.max_block_bytes=2000000").unwrap()]).unwrap_err().to_string();
        assert!(err.contains("`storage.max_block_bytes`") && err.contains("got 2000000"), "{err}");
    }

    #[test]
    fn a_wrong_type_names_the_field_and_the_file() {
        let (path, _guard) = file_with("[limits]\nmax_message_bytes = \"big\"\n");
        let err = Config::load(&path, &[]).unwrap_err().to_string();
        assert!(err.contains("`limits.max_message_bytes`"), "{err}");
        assert!(err.contains("invalid type"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
    }

    #[test]
    fn an_unknown_field_is_refused_by_name() {
        let (path, _guard) = file_with("[limits]\nmax_mesage_bytes = 5\n");
        let err = Config::load(&path, &[]).unwrap_err().to_string();
        assert!(err.contains("max_mesage_bytes"), "{err}");
    }

    #[test]
    fn an_out_of_range_value_names_the_field_and_its_origin() {
        let err = Config::load(Path::new("/none"), &[set("limits.max_message_bytes", "5", "--set x")])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "config field `limits.max_message_bytes` (--set x): must be between 4096 and 67108864, got 5"
        );
    }

    #[test]
    fn a_first_backoff_delay_of_zero_is_refused() {
        for field in ["transport.reconnect_initial_ms", "supervisor.restart_initial_ms"] {
            let err = Config::load(Path::new("/none"), &[set(field, "0", "--set x")]).unwrap_err().to_string();
            assert!(err.contains(field) && err.contains("got 0"), "{err}");
        }
    }

    #[test]
    fn an_engine_user_or_group_the_system_does_not_know_is_refused_naming_it() {
        let err = Config::load(Path::new("/none"), &[set("router.engine_users", "[\"nobody-here-at-all\"]", "flag")]).unwrap_err().to_string();
        assert!(err.contains("`router.engine_users`") && err.contains("no user 'nobody-here-at-all'"), "{err}");
        let err = Config::load(Path::new("/none"), &[set("router.engine_groups", "[\"no-group-here\"]", "flag")]).unwrap_err().to_string();
        assert!(err.contains("`router.engine_groups`"), "{err}");
        let config = Config::load(Path::new("/none"), &[set("router.engine_users", "[\"root\", \"65534\"]", "flag")]).unwrap();
        assert_eq!(config.engine_access().unwrap().uids, [0, 65534]);
    }

    #[test]
    fn broken_toml_and_bad_flags_are_reported() {
        let (path, _guard) = file_with("[limits\n");
        assert!(matches!(Config::load(&path, &[]), Err(ConfigError::File { .. })));
        assert!(Override::from_flag("nodot=1").is_err());
        assert!(Override::from_flag("limits.engine_queue").is_err());
    }

    #[test]
    fn listen_addresses_are_checked_and_arrays_can_be_overridden() {
        let err = Config::load(Path::new("/none"), &[set("transport.listen", "[\"nowhere\"]", "flag")]).unwrap_err();
        assert!(err.to_string().contains("`transport.listen`") && err.to_string().contains("'nowhere'"), "{err}");
        let config = Config::load(Path::new("/none"), &[set("transport.listen", "[\"127.0.0.1:0\"]", "flag")]).unwrap();
        assert_eq!(config.transport.listen, ["127.0.0.1:0"]);
    }

    #[test]
    fn each_setting_says_where_its_value_came_from() {
        let (path, _guard) = file_with("[limits]\nengine_queue = 7\nmax_engines = 9\n");
        let overrides = [set("limits.max_engines", "11", "environment variable NETMACHINE_LIMITS__MAX_ENGINES"), set("metrics.listen", "127.0.0.1:9464", "flag")];
        let config = Config::load(&path, &overrides).unwrap();
        let settings = config.settings(&path, &overrides);
        let find = |field: &str| settings.iter().find(|s| s.field == field).cloned().unwrap_or_else(|| panic!("no {field}"));
        assert_eq!((find("limits.engine_queue").value, find("limits.engine_queue").origin), ("7".into(), format!("file {}", path.display())));
        assert_eq!(find("limits.max_engines").origin, "environment variable NETMACHINE_LIMITS__MAX_ENGINES");
        assert_eq!(find("limits.max_engines").value, "11");
        assert_eq!((find("limits.send_wait_ms").value, find("limits.send_wait_ms").origin), ("5000".into(), "default".into()));
        assert_eq!(find("metrics.listen").value, "\"127.0.0.1:9464\"");
        // Off unless set: not listed.
        assert!(Config::default().settings(&path, &[]).iter().all(|s| s.field != "metrics.listen"));
    }

    #[test]
    fn a_single_address_where_a_list_is_expected_says_so() {
        let err = Config::load(Path::new("/none"), &[set("transport.listen", "127.0.0.1:0", "--set transport.listen=127.0.0.1:0")]).unwrap_err();
        assert!(err.to_string().contains("this setting is a list: transport.listen=[\"127.0.0.1:4010\"]"), "{err}");
    }

    #[test]
    fn a_string_override_for_a_path_field_is_taken_as_text() {
        let config = Config::load(Path::new("/none"), &[set("node.run_dir", "/tmp/run", "flag")]).unwrap();
        assert_eq!(config.node.run_dir, Some(PathBuf::from("/tmp/run")));
    }
}

/// The `config.toml` that `netmachine up` writes into a new home: every setting, commented
/// out, at its default.
pub const TEMPLATE: &str = r#"# netmachine node configuration. Every setting is shown at its default, commented out.
# Precedence: these defaults < this file < NETMACHINE_<SECTION>__<KEY> variables < --set flags.

[node]
# run_dir = "<home>/run"      # sockets of the five services
# data_dir = "<home>/data"    # identity records and other persistent state

[limits]
# max_message_bytes = 1048576 # largest message body accepted or sent
# engine_queue = 1024         # messages queued for one engine before senders wait
# max_engines = 1024          # engines attached at once
# max_connections = 256       # RPC connections one service accepts at once (a quarter per process)
# silent_connection_ms = 10000 # an RPC connection silent this long after it is accepted is closed
# send_wait_ms = 5000         # how long a send waits for room in a full queue
# max_records = 1000000       # identity records the identity store keeps

[router]
# cache_entries = 65536       # identity records cached by the router
# node_queue = 4096           # messages waiting for one other node before senders wait
# unacked_bytes = 16777216    # bytes sent to one other node and kept until it acknowledges them
# require_engine_signatures = false  # drop messages from other nodes without an engine signature
# ring_bytes = 1048576        # bytes of each shared-memory ring (power of two); 0: rings off
# direct_channels = true      # two ring engines that talk steadily get a ring of their own
# engine_users = []           # other Unix users (names or ids) whose engines may attach
# engine_groups = []          # Unix groups whose members' engines may attach

[transport]
# listen = ["127.0.0.1:4010"] # UDP addresses of the QUIC endpoint (port 0: any free port)
# advertise = []              # addresses in this node's advert; empty: the bound ones
# public = false              # accept any node; its messages reach only public engines
# max_peers = 256             # connections to other nodes at once
# peer_queue = 1024           # frames waiting for one peer before senders wait
# idle_timeout_ms = 30000     # idle ephemeral connections close after this
# frame_read_ms = 30000       # a frame's bytes must arrive this soon after its length
# reconnect_initial_ms = 200  # first delay before reconnecting a permanent peer
# reconnect_max_ms = 30000    # cap of the reconnect delay
# connect_timeout_ms = 5000   # how long a connection attempt may take

[supervisor]
# restart_initial_ms = 100    # first delay before restarting a service that died
# restart_max_ms = 10000      # longest delay between restarts
# stop_timeout_ms = 5000      # time a service gets to stop before it is killed

[metrics]
# Off unless set: where the router serves every service's metrics (Prometheus, at /metrics).
## listen = "127.0.0.1:9464"
"#;

#[cfg(test)]
mod template_tests {
    use super::*;

    #[test]
    fn the_template_uncommented_gives_the_defaults() {
        let uncommented: String = TEMPLATE
            .lines()
            .filter_map(|line| {
                if line.starts_with('[') {
                    return Some(format!("{line}\n"));
                }
                let setting = line.strip_prefix("# ")?.split(" #").next()?.trim();
                (setting.contains(" = ") && !setting.contains("<home>")).then(|| format!("{setting}\n"))
            })
            .collect();
        assert!(uncommented.matches(" = ").count() >= 20, "{uncommented}");
        let parsed: Config = toml::from_str(&uncommented).unwrap();
        assert_eq!(parsed, Config::default());
    }
}
