//! The node home directory: the node key (mode 0600) and its public identity, `config.toml`,
//! `$DATA` and `$RUN` (mode 0700), and where each service's socket lives.

use crate::config::{Config, ConfigError, Override};
use netmachine_schema::{Identity, KeyError, Keypair};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The five services of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceKind {
    Router,
    Transport,
    IdentityStore,
    PubSub,
    Storage,
}

impl ServiceKind {
    /// Every service, in the order `netmachine up` starts them (dependencies first).
    pub const ALL: [ServiceKind; 5] = [
        ServiceKind::IdentityStore,
        ServiceKind::Router,
        ServiceKind::Transport,
        ServiceKind::PubSub,
        ServiceKind::Storage,
    ];

    /// The name operators see in status and logs.
    pub fn name(self) -> &'static str {
        match self {
            ServiceKind::Router => "router",
            ServiceKind::Transport => "transport",
            ServiceKind::IdentityStore => "identity-store",
            ServiceKind::PubSub => "pubsub",
            ServiceKind::Storage => "storage",
        }
    }

    /// The executable that runs it.
    pub fn binary(self) -> &'static str {
        match self {
            ServiceKind::Router => "netmachine-router",
            ServiceKind::Transport => "netmachine-transport",
            ServiceKind::IdentityStore => "netmachine-identity-store",
            ServiceKind::PubSub => "netmachine-pubsub",
            ServiceKind::Storage => "netmachine-storage",
        }
    }
}

/// A node's home directory and the configuration loaded from it.
#[derive(Debug, Clone)]
pub struct NodeHome {
    pub root: PathBuf,
    pub config: Config,
}

/// Why a node home could not be used.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("socket path {path} is {len} bytes, over the 107 a Unix socket allows: set node.run_dir to a shorter directory")]
    SocketPathTooLong { path: PathBuf, len: usize },
    #[error("{path} is not a node identity (64 hex digits): {detail}")]
    NodeIdentity { path: PathBuf, detail: String },
}

impl NodeHome {
    /// The home at `root` with its config: defaults < `root/config.toml` < environment < flags.
    pub fn load(root: &Path, flags: &[String]) -> Result<Self, HomeError> {
        let config = Config::load(&root.join("config.toml"), &Self::overrides(flags)?)?;
        let home = NodeHome { root: root.to_path_buf(), config };
        for kind in ServiceKind::ALL {
            let path = home.socket(kind);
            let len = path.as_os_str().len();
            if len > 107 {
                return Err(HomeError::SocketPathTooLong { path, len });
            }
        }
        Ok(home)
    }

    /// The overrides of the config file: this process's `NETMACHINE_<SECTION>__<KEY>`
    /// variables, then `flags` (`section.key=value`), in order of precedence.
    pub fn overrides(flags: &[String]) -> Result<Vec<Override>, ConfigError> {
        let mut overrides = Override::from_env(std::env::vars());
        for flag in flags {
            overrides.push(Override::from_flag(flag)?);
        }
        Ok(overrides)
    }

    pub fn config_file(&self) -> PathBuf {
        self.root.join("config.toml")
    }

    pub fn run_dir(&self) -> PathBuf {
        self.config.node.run_dir.clone().unwrap_or_else(|| self.root.join("run"))
    }

    pub fn data_dir(&self) -> PathBuf {
        self.config.node.data_dir.clone().unwrap_or_else(|| self.root.join("data"))
    }

    pub fn key_file(&self) -> PathBuf {
        self.root.join("node.key")
    }

    fn identity_file(&self) -> PathBuf {
        self.root.join("node.id")
    }

    /// Where `kind` serves its RPC.
    pub fn socket(&self, kind: ServiceKind) -> PathBuf {
        self.run_dir().join(format!("{}.sock", kind.name()))
    }

    /// Creates the home, `$RUN` and `$DATA` (mode 0700) where missing, and sets their modes
    /// where they exist: when engines of other users may attach (`router.engine_users`,
    /// `router.engine_groups`), the home and `$RUN` are searchable (0711, not listable) so that
    /// they reach the router's socket.
    pub fn prepare_dirs(&self) -> Result<(), HomeError> {
        let open = self.config.engine_access().is_ok_and(|access| access.open_to_others());
        let reached = if open { 0o711 } else { 0o700 };
        for (dir, mode) in [(self.root.clone(), reached), (self.run_dir(), reached), (self.data_dir(), 0o700)] {
            let io = |source| HomeError::Io { path: dir.clone(), source };
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(io)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).map_err(io)?;
        }
        Ok(())
    }

    /// The node key, made (with `node.id` beside it) if the home has none yet.
    pub fn node_key(&self) -> Result<Keypair, HomeError> {
        let path = self.key_file();
        if !path.exists() {
            let key = Keypair::generate();
            match key.write_new_file(&path) {
                Ok(()) => {}
                // Another process made it first: use theirs.
                Err(KeyError::Exists { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let key = Keypair::read_file(&path)?;
        if self.node_identity().ok().flatten() != Some(key.identity()) {
            // Several services start at once and may all get here: each stages its own file
            // (a shared staging name lets one process rename another's away), and the rename
            // makes the switch atomic, so a reader sees the old content or the new.
            let id_file = self.identity_file();
            let staged = self.root.join(format!("node.id.{}.{:?}.tmp", std::process::id(), std::thread::current().id()));
            let io = |source| HomeError::Io { path: id_file.clone(), source };
            std::fs::write(&staged, format!("{}\n", key.identity())).map_err(io)?;
            std::fs::rename(&staged, &id_file).map_err(io)?;
        }
        Ok(key)
    }

    /// The node's public identity, for services that must not read the secret key. `None` while
    /// no key has been made.
    pub fn node_identity(&self) -> Result<Option<Identity>, HomeError> {
        let path = self.identity_file();
        match std::fs::read_to_string(&path) {
            Ok(text) => text
                .parse()
                .map(Some)
                .map_err(|e: netmachine_schema::identity::IdentityError| HomeError::NodeIdentity {
                    path,
                    detail: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(HomeError::Io { path, source }),
        }
    }
}

/// The home a command uses: `--home`, else `$NETMACHINE_HOME`, else `~/.netmachine`.
pub fn default_home() -> PathBuf {
    std::env::var_os("NETMACHINE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".netmachine")))
        .unwrap_or_else(|| PathBuf::from(".netmachine"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_makes_private_dirs_and_one_node_key() {
        let root = std::env::temp_dir().join(format!("nm-home-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let home = NodeHome::load(&root, &[]).unwrap();
        assert_eq!(home.node_identity().unwrap(), None);
        home.prepare_dirs().unwrap();
        for dir in [&root, &home.run_dir(), &home.data_dir()] {
            assert_eq!(std::fs::metadata(dir).unwrap().permissions().mode() & 0o777, 0o700);
        }
        let key = home.node_key().unwrap();
        assert_eq!(home.node_key().unwrap().identity(), key.identity());
        assert_eq!(home.node_identity().unwrap(), Some(key.identity()));
        let mode = std::fs::metadata(home.key_file()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn processes_starting_together_all_read_the_node_key() {
        // `up`, the router and transport each call node_key() as they start, at the same time.
        let root = std::env::temp_dir().join(format!("nm-home-race-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let home = NodeHome::load(&root, &[]).unwrap();
        home.prepare_dirs().unwrap();
        let failures: usize = std::thread::scope(|s| {
            let starters: Vec<_> = (0..6)
                .map(|_| s.spawn(|| (0..200).filter(|_| home.node_key().is_err()).count()))
                .collect();
            starters.into_iter().map(|t| t.join().unwrap()).sum()
        });
        assert_eq!(failures, 0, "node_key() failed while other processes started");
        let key = home.node_key().unwrap();
        assert_eq!(home.node_identity().unwrap(), Some(key.identity()));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn an_overlong_socket_path_is_refused_with_the_fix() {
        let root = PathBuf::from(format!("/tmp/{}", "x".repeat(120)));
        let err = NodeHome::load(&root, &[]).unwrap_err().to_string();
        assert!(err.contains("node.run_dir"), "{err}");
    }
}
