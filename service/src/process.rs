//! The life of a service process: how its allocator keeps memory, flags, logging, loading the
//! node home, one current-thread runtime with a `LocalSet` (capnp-rpc is single-threaded),
//! serving until SIGTERM or SIGINT, and exit codes (0 after a clean stop, 2 for bad
//! configuration, 1 for other failures).

use crate::home::{NodeHome, ServiceKind};
use crate::rpc::{self, ConnectionStats};
use clap::{CommandFactory, FromArgMatches};
use std::error::Error;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;

/// The flags every service binary takes.
#[derive(clap::Parser, Debug)]
pub struct ServiceArgs {
    /// Node home directory [default: $NETMACHINE_HOME, else ~/.netmachine]
    #[arg(long)]
    pub home: Option<PathBuf>,
    /// Override one config setting, e.g. --set limits.engine_queue=4096 (repeatable)
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
}

/// What a service's set-up returns: the interface it serves, and what to do when asked to
/// stop, after it stopped accepting RPC connections.
pub struct Running {
    pub bootstrap: capnp::capability::Client,
    pub on_stop: Option<std::pin::Pin<Box<dyn Future<Output = ()>>>>,
}

impl From<capnp::capability::Client> for Running {
    fn from(bootstrap: capnp::capability::Client) -> Self {
        Running { bootstrap, on_stop: None }
    }
}

/// What a service's set-up gets.
pub struct ServiceContext {
    pub kind: ServiceKind,
    pub home: NodeHome,
    pub stats: Rc<ConnectionStats>,
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), in colour only on a terminal (a
/// log file or journald gets plain text).
pub fn init_logging() {
    init_logging_at("info");
}

/// Logs to stderr, filtered by `RUST_LOG` (default `warn`), for commands whose output is theirs.
pub fn init_logging_quiet() {
    init_logging_at("warn");
}

fn init_logging_at(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(colour).with_writer(std::io::stderr).try_init();
}

/// Resolves when the process is asked to stop (SIGTERM or SIGINT).
pub async fn stop_requested() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

/// Runs the service `kind`: `setup` builds its bootstrap interface, which is then served on
/// `$RUN/<name>.sock` until the process is asked to stop.
pub fn run<F, Fut>(kind: ServiceKind, about: &'static str, setup: F) -> ExitCode
where
    F: FnOnce(ServiceContext) -> Fut,
    Fut: Future<Output = Result<Running, Box<dyn Error>>>,
{
    crate::allocator::keep_freed_memory();
    let matches = ServiceArgs::command().name(kind.binary()).about(about).get_matches();
    let args = match ServiceArgs::from_arg_matches(&matches) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    init_logging();
    let root = args.home.unwrap_or_else(crate::home::default_home);
    let home = match NodeHome::load(&root, &args.set) {
        Ok(home) => home,
        Err(error) => {
            eprintln!("{}: {error}", kind.binary());
            return ExitCode::from(2);
        }
    };
    // CPU-heavy work handed off the event loop (batch signature checks) gets one thread at
    // most: a node's five processes share two cores (docs/ARCHITECTURE.md, "Small machines").
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().max_blocking_threads(1).build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{}: cannot start the runtime: {error}", kind.binary());
            return ExitCode::FAILURE;
        }
    };
    let local = tokio::task::LocalSet::new();
    let outcome: Result<(), Box<dyn Error>> = local.block_on(&runtime, async move {
        home.prepare_dirs()?;
        let socket = home.socket(kind);
        let word_limit = home.config.rpc_word_limit();
        let limits = home.config.connection_limits();
        let stats = Rc::new(ConnectionStats::default());
        let context = ServiceContext { kind, home, stats: stats.clone() };
        let running = setup(context).await?;
        let listener = rpc::bind(&socket).await.map_err(|e| format!("{}: {e}", socket.display()))?;
        tracing::info!(socket = %socket.display(), pid = std::process::id(), "serving");
        rpc::serve(listener, &socket, running.bootstrap, word_limit, limits, stats, stop_requested()).await;
        if let Some(on_stop) = running.on_stop {
            on_stop.await;
        }
        tracing::info!("stopped cleanly");
        Ok(())
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "failed");
            eprintln!("{}: {error}", kind.binary());
            ExitCode::FAILURE
        }
    }
}
