//! The life of a service process: how its allocator keeps memory, flags, logging, loading the
//! node home, one current-thread runtime with a `LocalSet` (capnp-rpc is single-threaded),
//! serving until SIGTERM or SIGINT, watching itself (readiness and watchdog for systemd, its
//! counters saved to its tally), and exit codes (0 after a clean stop, 2 for bad
//! configuration, 1 for other failures).

use crate::engine_access::{this_process, Peer};
use crate::home::{NodeHome, ServiceKind};
use crate::rpc::{self, ConnectionStats};
use crate::snapshot::ServiceSnapshot;
use crate::systemd;
use crate::tally::{self, Tally};
use netmachine_schema::service_capnp::service;
use capnp::capability::FromClientHook;
use clap::{CommandFactory, FromArgMatches};
use std::error::Error;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The flags every service binary takes.
#[derive(clap::Parser, Debug)]
pub struct ServiceArgs {
    /// Node home directory [default: $NETMACHINE_HOME, else ~/.netmachine]
    #[arg(long)]
    pub home: Option<PathBuf>,
    /// Override one config setting, e.g. --set limits.engine_queue=4096 (repeatable)
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
    /// How log lines are written to standard error
    #[arg(long, value_enum, env = "NETMACHINE_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One line of text per event, in colour only on a terminal.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// What a service's set-up returns: the interface it serves to each connection's peer, what to
/// do when asked to stop (after it stopped accepting RPC connections), and whether users other
/// than the node's may connect to its socket (they are then checked per connection).
pub struct Running {
    pub bootstrap: Box<dyn Fn(Peer) -> capnp::capability::Client>,
    pub on_stop: Option<std::pin::Pin<Box<dyn Future<Output = ()>>>>,
    pub open_to_others: bool,
}

impl From<capnp::capability::Client> for Running {
    fn from(bootstrap: capnp::capability::Client) -> Self {
        Running { bootstrap: Box::new(move |_| bootstrap.clone()), on_stop: None, open_to_others: false }
    }
}

impl Running {
    /// Serves `bootstrap` to the node's user alone, and runs `on_stop` when asked to stop.
    pub fn stopping_with(bootstrap: capnp::capability::Client, on_stop: impl Future<Output = ()> + 'static) -> Running {
        Running { on_stop: Some(Box::pin(on_stop)), ..Running::from(bootstrap) }
    }
}

/// What a service's set-up gets.
pub struct ServiceContext {
    pub kind: ServiceKind,
    pub home: NodeHome,
    pub stats: Rc<ConnectionStats>,
}

/// A setup error that no restart can cure: the configuration must change (an address in use,
/// a setting the service cannot use). The service exits with code 2, which `netmachine up`
/// and the systemd units (`RestartPreventExitStatus=2`) do not restart.
#[derive(Debug)]
pub struct Misconfigured(pub String);

impl std::fmt::Display for Misconfigured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for Misconfigured {}

/// An I/O error in words, without the "(os error N)" tail, and with what to do where that is
/// clear.
pub fn io_reason(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::AddrInUse => "the address is in use (another node or program holds it); choose another".into(),
        std::io::ErrorKind::AddrNotAvailable => "the address is not one of this host's".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => without_os_error_number(&error.to_string()),
    }
}

pub use netmachine_rpc::without_os_error_number;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`): text in colour only on a terminal
/// (a log file, journald or `docker logs` gets plain text), or JSON.
pub fn init_logging(format: LogFormat) {
    init_logging_at("info", format);
}

/// Logs to stderr, filtered by `RUST_LOG` (default `warn`), for commands whose output is theirs.
pub fn init_logging_quiet() {
    init_logging_at("warn", LogFormat::Text);
}

fn init_logging_at(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => logs.json().try_init(),
        LogFormat::Text => {
            let colour = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
            logs.with_ansi(colour).try_init()
        }
    };
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
    let matches = ServiceArgs::command().name(kind.binary()).about(about).version(env!("CARGO_PKG_VERSION")).get_matches();
    let args = match ServiceArgs::from_arg_matches(&matches) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    init_logging(args.log_format);
    // Every line of this process names its service: five of them write to one terminal
    // under `netmachine up`.
    let _service = tracing::info_span!("node", service = %kind.name()).entered();
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
        let tally = Rc::new(Tally::open(home.data_dir().join("counters").join(kind.name())));
        Tally::install(tally.clone());
        let socket = home.socket(kind);
        let word_limit = home.config.rpc_word_limit();
        let limits = home.config.connection_limits();
        let stats = Rc::new(ConnectionStats::default());
        let context = ServiceContext { kind, home, stats: stats.clone() };
        let running = setup(context).await?;
        let listener = rpc::bind(&socket).await.map_err(|e| format!("{}: {e}", socket.display()))?;
        // Connecting takes write access: the node's user only, unless others are let in.
        let mode = if running.open_to_others { 0o666 } else { 0o600 };
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(mode)).map_err(|e| format!("{}: {e}", socket.display()))?;
        tracing::info!(socket = %socket.display(), pid = std::process::id(), "serving");
        let own: service::Client = (running.bootstrap)(this_process()).cast_to();
        let watching = tokio::task::spawn_local(watch_self(kind, own.clone(), tally.clone()));
        let watchdog = tokio::task::spawn_local(systemd::feed_watchdog());
        rpc::serve(listener, &socket, running.bootstrap, word_limit, limits, stats, stop_requested()).await;
        systemd::stopping();
        watching.abort();
        if let Some(on_stop) = running.on_stop {
            on_stop.await;
        }
        watchdog.abort();
        let _ = own_status(kind, &own).await;
        tally.save();
        tracing::info!("stopped cleanly");
        Ok(())
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("cannot run: {error}");
            match error.is::<Misconfigured>() {
                true => ExitCode::from(2),
                false => ExitCode::FAILURE,
            }
        }
    }
}

/// How often a starting service looks at its links until it is ready.
const READINESS_POLL: Duration = Duration::from_millis(100);

/// Reads the service's own status: tells the service manager it is ready once its links are
/// up (and what it waits for, when that changes), and saves its counters to its tally.
async fn watch_self(kind: ServiceKind, own: service::Client, tally: Rc<Tally>) {
    let bound = Instant::now();
    let mut told: Option<Vec<String>> = None;
    loop {
        let missing: Vec<String> = match own_status(kind, &own).await {
            Some(status) => status.links.into_iter().filter(|(_, up)| !up).map(|(link, _)| link).collect(),
            None => vec![],
        };
        tally.save();
        let ready_now = missing.is_empty() || bound.elapsed() >= systemd::READY_WAIT;
        if ready_now && told.as_ref() != Some(&missing) {
            systemd::ready(&missing);
            told = Some(missing);
        }
        tokio::time::sleep(if told.is_some() { tally::SAVE_EVERY } else { READINESS_POLL }).await;
    }
}

async fn own_status(kind: ServiceKind, own: &service::Client) -> Option<ServiceSnapshot> {
    let response = own.status_request().send().promise.await.ok()?;
    ServiceSnapshot::read(kind, response.get().ok()?.get_status().ok()?).ok()
}
