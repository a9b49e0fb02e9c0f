//! `netmachine up`: runs a whole node. Makes the home if it is missing, starts the five
//! services as child processes (each in its own process group, told to stop if `up` dies),
//! restarts one that exits with capped backoff while the others run on (but not one that exits
//! with code 2, whose configuration must change: then the node stops), and on Ctrl-C or
//! SIGTERM stops them all, one at a time in reverse start order: SIGTERM, then SIGKILL after
//! `supervisor.stop_timeout_ms`.

use anyhow::{bail, Context, Result};
use netmachine_service::{Backoff, NodeHome, ServiceKind};
use nix::fcntl::{Flock, FlockArg};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A service that ran this long before exiting is restarted without delay growth.
const STABLE_RUN: Duration = Duration::from_secs(10);

pub fn run(root: &Path, set: &[String]) -> ExitCode {
    let home = match NodeHome::load(root, set) {
        Ok(home) => home,
        Err(error) => {
            eprintln!("netmachine: {error}");
            return ExitCode::from(2);
        }
    };
    match supervise(home, set) {
        Ok(Stopped::Asked) => ExitCode::SUCCESS,
        Ok(Stopped::Misconfigured) => ExitCode::from(2),
        Err(error) => {
            eprintln!("netmachine: {}", crate::one_sentence(&error));
            ExitCode::FAILURE
        }
    }
}

/// Why the node stopped.
enum Stopped {
    /// Ctrl-C or SIGTERM.
    Asked,
    /// A service exited with code 2: it cannot run with this configuration.
    Misconfigured,
}

/// Where the service binaries are: `$NETMACHINE_BIN_DIR`, else beside this executable.
fn binary_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("NETMACHINE_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("cannot find this executable's path")?;
    Ok(exe.parent().map(Path::to_path_buf).unwrap_or_default())
}

fn supervise(home: NodeHome, set: &[String]) -> Result<Stopped> {
    home.prepare_dirs()?;
    let config_file = home.root.join("config.toml");
    if !config_file.exists() {
        std::fs::write(&config_file, netmachine_service::config::TEMPLATE)
            .with_context(|| format!("writing {}", config_file.display()))?;
    }
    let node = home.node_key()?.identity();
    let lock_path = home.run_dir().join("up.lock");
    let lock_file = std::fs::File::create(&lock_path).with_context(|| format!("{}", lock_path.display()))?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|_| {
        anyhow::anyhow!("a node is already running with home {} (lock {} is held)", home.root.display(), lock_path.display())
    })?;
    let bin_dir = binary_dir()?;
    for kind in ServiceKind::ALL {
        let path = bin_dir.join(kind.binary());
        if !path.is_file() {
            bail!("{} not found: build the workspace (`cargo build --release`) or set NETMACHINE_BIN_DIR", path.display());
        }
    }
    crate::node_client::run_local(async {
        // Each service is told to stop on its own, in reverse start order: those that attach to
        // the router as engines (pubsub) leave before it does.
        // Each service says it once at most, then its keeper ends.
        let (misconfigured, mut refused) = tokio::sync::mpsc::channel(ServiceKind::ALL.len());
        let keepers: Vec<_> = ServiceKind::ALL
            .into_iter()
            .map(|kind| {
                let (stop, stopping) = watch::channel(false);
                let keeper = keep_running(kind, bin_dir.clone(), home.clone(), set.to_vec(), stopping, misconfigured.clone());
                (stop, tokio::task::spawn_local(keeper))
            })
            .collect();
        eprintln!("netmachine: node {node} starting; home {}", home.root.display());
        let stopped = tokio::select! {
            _ = announce_when_ready(&home) => unreachable!("announcing never ends"),
            _ = netmachine_service::process::stop_requested() => Stopped::Asked,
            Some(name) = refused.recv() => {
                eprintln!("netmachine: {name} cannot run with this configuration (its error is above); stopping the node");
                Stopped::Misconfigured
            }
        };
        eprintln!("netmachine: stopping");
        for (stop, keeper) in keepers.into_iter().rev() {
            let _ = stop.send(true);
            let _ = keeper.await;
        }
        eprintln!("netmachine: stopped");
        Ok(stopped)
    })
}

async fn announce_when_ready(home: &NodeHome) {
    for _ in 0..100 {
        let status = crate::status::node_status(home).await;
        let up = status["services"].as_array().map_or(0, |s| s.iter().filter(|s| s["state"] == "up").count());
        if up == ServiceKind::ALL.len() {
            eprintln!("netmachine: all {up} services up; `netmachine status` shows them");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::future::pending::<()>().await
}

fn command(kind: ServiceKind, bin_dir: &Path, home: &NodeHome, set: &[String]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(bin_dir.join(kind.binary()));
    command.arg("--home").arg(&home.root);
    for flag in set {
        command.arg("--set").arg(flag);
    }
    command.stdin(std::process::Stdio::null()).process_group(0).kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe; the closure touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

/// Runs one service until the node stops, restarting it whenever it exits, except with code
/// 2: then it says so on `misconfigured` and ends (the node is stopped by `supervise`).
async fn keep_running(
    kind: ServiceKind,
    bin_dir: PathBuf,
    home: NodeHome,
    set: Vec<String>,
    mut stopping: watch::Receiver<bool>,
    misconfigured: tokio::sync::mpsc::Sender<&'static str>,
) {
    let supervisor = &home.config.supervisor;
    let mut backoff = Backoff::new(
        Duration::from_millis(supervisor.restart_initial_ms),
        Duration::from_millis(supervisor.restart_max_ms),
    );
    let name = kind.name();
    loop {
        let started = Instant::now();
        match command(kind, &bin_dir, &home, &set).spawn() {
            Ok(mut child) => {
                tracing::info!(service = name, pid = child.id(), "started");
                let exited = tokio::select! {
                    status = child.wait() => Some(status),
                    _ = stopping.wait_for(|s| *s) => None,
                };
                match exited {
                    Some(_) if *stopping.borrow() => return,
                    Some(Ok(status)) if status.code() == Some(2) => {
                        let _ = misconfigured.try_send(name);
                        return;
                    }
                    Some(status) => eprintln!("netmachine: {name} exited ({}); restarting", describe(status)),
                    None => {
                        stop(name, child, Duration::from_millis(supervisor.stop_timeout_ms)).await;
                        return;
                    }
                }
            }
            Err(error) => eprintln!("netmachine: cannot start {name}: {error}"),
        }
        if started.elapsed() >= STABLE_RUN {
            backoff.reset();
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
    }
}

fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            _ => status.to_string(),
        },
        Err(error) => error.to_string(),
    }
}

async fn stop(name: &str, mut child: tokio::process::Child, timeout: Duration) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
    }
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => tracing::info!(service = name, status = describe(status), "stopped"),
        Err(_) => {
            eprintln!("netmachine: {name} did not stop within {} ms; killing it", timeout.as_millis());
            let _ = child.kill().await;
        }
    }
}
