//! A node run by `netmachine up` as a child process, in a home of its own: what the demo, the
//! benchmarks and the cross-process tests start. Stopping it (or dropping it) sends SIGTERM
//! and waits for `up` to stop its services.

use crate::status::node_status;
use anyhow::{bail, Context, Result};
use netmachine_service::NodeHome;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct LocalNode {
    pub home: NodeHome,
    up: Child,
}

impl LocalNode {
    /// Starts `netmachine up` (the executable `netmachine`) for the home `root` with `--set`
    /// overrides; its output goes to `<root>.log`.
    pub fn start(netmachine: &Path, root: &Path, set: &[String]) -> Result<LocalNode> {
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        let home = NodeHome::load(root, set)?;
        let log_path = root.with_extension("log");
        let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let up = Command::new(netmachine)
            .arg("up")
            .arg("--home")
            .arg(root)
            .args(set.iter().flat_map(|s| ["--set", s.as_str()]))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} up", netmachine.display()))?;
        Ok(LocalNode { home, up })
    }

    pub fn root(&self) -> &Path {
        &self.home.root
    }

    /// Waits until all five services answer `up`. Must run inside a `LocalSet`.
    pub async fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.up.try_wait()? {
                bail!("netmachine up exited ({status}); see {}", self.home.root.with_extension("log").display());
            }
            let status = node_status(&self.home).await;
            let services = status["services"].as_array().cloned().unwrap_or_default();
            if services.len() == 5 && services.iter().all(|s| s["state"] == "up") {
                return Ok(());
            }
            if start.elapsed() > limit {
                bail!("the node in {} was not up within {limit:?}: {status}", self.home.root.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The node identity.
    pub fn identity(&self) -> Result<netmachine_schema::Identity> {
        self.home.node_identity()?.context("the node has no key yet")
    }

    /// `up`'s process id.
    pub fn pid(&self) -> u32 {
        self.up.id()
    }

    /// Whether `up` has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.up.try_wait().ok().flatten()
    }

    /// Stops the node (SIGTERM to `up`) and returns `up`'s exit status.
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(status) = self.exited() {
            return status;
        }
        let pid = nix::unistd::Pid::from_raw(self.up.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = self.up.kill();
                return self.up.wait().unwrap_or_else(|_| std::os::unix::process::ExitStatusExt::from_raw(9));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for LocalNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A fresh directory under /tmp (short, for socket paths), removed on drop.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new(prefix: &str) -> Result<Self> {
        let mut suffix = [0u8; 6];
        getrandom::fill(&mut suffix).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let path = PathBuf::from(format!("/tmp/{prefix}-{}", hex::encode(suffix)));
        std::fs::create_dir_all(&path)?;
        Ok(ScratchDir(path))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
