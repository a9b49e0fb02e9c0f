//! Cap'n Proto RPC over Unix stream sockets: serving a service's bootstrap interface to every
//! connection, and connecting to another service (`Backoff` paces reconnects). Engines and
//! services both use it; it pulls in none of the services' CLI, config or logging crates. Every read is bounded by a word limit and a
//! nesting limit; a connection that sends garbage is closed and counted, the service goes on.

mod backoff;

pub use backoff::Backoff;
use capnp_rpc::{rpc_twoparty_capnp::Side, twoparty, RpcSystem};
use std::cell::Cell;
use std::future::Future;
use std::io;
use std::path::Path;
use std::rc::Rc;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

/// Bytes of streaming calls (`-> stream`: block bytes between the SDK and storage) in
/// flight on one capability before the caller waits: a few pieces, so a bulk stream between two
/// processes is not stop-and-go (Cap'n Proto's default of 64 KiB holds one piece at a time).
/// Other calls are not windowed.
pub const STREAM_WINDOW: usize = 4 << 20;

/// `text` without the " (os error N)" that Rust's I/O errors append: the words say it.
pub fn without_os_error_number(text: &str) -> String {
    match text.find(" (os error ") {
        Some(at) => text[..at].to_string() + text[at..].split_once(')').map_or("", |(_, rest)| rest),
        None => text.to_string(),
    }
}

/// The limits every RPC read obeys.
pub fn reader_options(word_limit: usize) -> capnp::message::ReaderOptions {
    let mut options = capnp::message::ReaderOptions::new();
    options.traversal_limit_in_words(Some(word_limit)).nesting_limit(64);
    options
}

/// The word limit for a node whose largest message body is `max_message_bytes`: room for two
/// such bodies (a request and what it carries) and the structure around them.
pub fn word_limit(max_message_bytes: usize) -> usize {
    (max_message_bytes / 8) * 2 + (64 << 10)
}

/// Counts of what happened to a service's RPC connections, for its status report.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    pub open: Cell<u64>,
    pub accepted: Cell<u64>,
    pub refused_over_limit: Cell<u64>,
    /// Refused because the connecting process held its share already.
    pub refused_over_process_share: Cell<u64>,
    /// Closed because nothing was sent on them within the limit.
    pub closed_silent: Cell<u64>,
    pub closed_on_error: Cell<u64>,
}

impl ConnectionStats {
    pub fn gauges(&self) -> [(&'static str, u64); 1] {
        [("rpc_connections_open", self.open.get())]
    }

    pub fn counters(&self) -> [(&'static str, u64); 5] {
        [
            ("rpc_connections_accepted", self.accepted.get()),
            ("rpc_connections_refused_over_limit", self.refused_over_limit.get()),
            ("rpc_connections_refused_over_process_share", self.refused_over_process_share.get()),
            ("rpc_connections_closed_silent", self.closed_silent.get()),
            ("rpc_connections_closed_on_error", self.closed_on_error.get()),
        ]
    }
}

/// Binds `path`, first removing a stale socket; refuses if a live service answers there.
pub async fn bind(path: &Path) -> io::Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is served by a running process: stop it first", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    UnixListener::bind(path)
}

/// How many connections a service takes, and for how long a silent one is kept.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open at once, from every process.
    pub max: u64,
    /// Open at once from one process (by its pid, as the kernel tells it): one process holding
    /// connections open cannot keep the others out.
    pub per_process: u64,
    /// A connection on which nothing arrives within this long after it is accepted is closed.
    pub silent: std::time::Duration,
}

/// The process at the other end of a connection, as the kernel tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    /// 0 when the kernel cannot tell it (another PID namespace).
    pub pid: i32,
}

/// Serves the interface `bootstrap` gives for each connection's peer on every connection to
/// `listener` until `shutdown` resolves, then removes the socket file. Must run inside a
/// `LocalSet`.
pub async fn serve(
    listener: UnixListener,
    path: &Path,
    bootstrap: impl Fn(Peer) -> capnp::capability::Client,
    word_limit: usize,
    limits: ConnectionLimits,
    stats: Rc<ConnectionStats>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let per_process: Rc<std::cell::RefCell<std::collections::HashMap<i32, u64>>> = Rc::default();
    loop {
        let mut stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if stats.open.get() >= limits.max {
            stats.refused_over_limit.set(stats.refused_over_limit.get() + 1);
            tracing::warn!(max_connections = limits.max, "refused a connection: limits.max_connections reached");
            continue;
        }
        // Unknown credentials are nobody's (65534): never the node's own user.
        let peer = stream.peer_cred().map_or(Peer { uid: 65534, gid: 65534, pid: 0 }, |cred| Peer { uid: cred.uid(), gid: cred.gid(), pid: cred.pid().unwrap_or(0) });
        let pid = peer.pid;
        if per_process.borrow().get(&pid).is_some_and(|open| *open >= limits.per_process) {
            let refused = stats.refused_over_process_share.get() + 1;
            stats.refused_over_process_share.set(refused);
            if refused.is_power_of_two() {
                tracing::warn!(pid, share = limits.per_process, refused, "refused a connection: that process holds its share of limits.max_connections");
            }
            continue;
        }
        *per_process.borrow_mut().entry(pid).or_default() += 1;
        stats.accepted.set(stats.accepted.get() + 1);
        stats.open.set(stats.open.get() + 1);
        let (stats, per_process, bootstrap) = (stats.clone(), per_process.clone(), bootstrap(peer));
        tokio::task::spawn_local(async move {
            let mut first = vec![0u8; 1024];
            match tokio::time::timeout(limits.silent, tokio::io::AsyncReadExt::read(&mut stream, &mut first)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => {
                    first.truncate(n);
                    if let Err(error) = rpc_system(stream, first, Side::Server, word_limit, Some(bootstrap)).await {
                        stats.closed_on_error.set(stats.closed_on_error.get() + 1);
                        tracing::info!(%error, "closed an RPC connection");
                    }
                }
                Ok(Err(error)) => {
                    stats.closed_on_error.set(stats.closed_on_error.get() + 1);
                    tracing::info!(%error, "closed an RPC connection");
                }
                Err(_) => stats.closed_silent.set(stats.closed_silent.get() + 1),
            }
            stats.open.set(stats.open.get() - 1);
            let mut per_process = per_process.borrow_mut();
            if let Some(open) = per_process.get_mut(&pid) {
                *open -= 1;
                if *open == 0 {
                    per_process.remove(&pid);
                }
            }
        });
    }
    drop(listener);
    let _ = std::fs::remove_file(path);
}

/// Connects to the service at `path`. Returns its bootstrap interface and the task that drives
/// the connection, which ends when the connection does. Must run inside a `LocalSet`.
pub async fn connect<C: capnp::capability::FromClientHook>(
    path: &Path,
    word_limit: usize,
) -> io::Result<(C, tokio::task::JoinHandle<Result<(), capnp::Error>>)> {
    let stream = UnixStream::connect(path).await?;
    let mut rpc = rpc_system(stream, Vec::new(), Side::Client, word_limit, None);
    let client: C = rpc.bootstrap(Side::Server);
    Ok((client, tokio::task::spawn_local(rpc)))
}

/// The RPC system on `stream`, whose first bytes `read` were read from it already.
fn rpc_system(
    stream: UnixStream,
    read: Vec<u8>,
    side: Side,
    word_limit: usize,
    bootstrap: Option<capnp::capability::Client>,
) -> RpcSystem<Side> {
    let (reader, writer) = stream.into_split();
    let mut network = twoparty::VatNetwork::new(
        futures::io::BufReader::new(futures::io::AsyncReadExt::chain(futures::io::Cursor::new(read), reader.compat())),
        futures::io::BufWriter::new(writer.compat_write()),
        side,
        reader_options(word_limit),
    );
    network.set_window_size(STREAM_WINDOW);
    RpcSystem::new(Box::new(network), bootstrap)
}

/// What went wrong in a call, in the words of whoever refused it: the text a service gave,
/// without Cap'n Proto's framing ("Failed: remote exception: ..."), or what happened to the
/// connection.
pub fn reason(error: &capnp::Error) -> String {
    let text = error.extra.trim();
    let text = text.strip_prefix("remote exception:").map(str::trim).unwrap_or(text);
    match error.kind {
        capnp::ErrorKind::Disconnected if text.is_empty() || text.contains("Peer disconnected") => {
            "the service closed the connection (it stopped or restarted)".into()
        }
        capnp::ErrorKind::Disconnected => format!("the connection was lost: {text}"),
        capnp::ErrorKind::Overloaded => format!("the service is overloaded: {text}"),
        capnp::ErrorKind::Unimplemented => format!("the service does not support this call: {text}"),
        capnp::ErrorKind::Failed if !text.is_empty() => text.to_string(),
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod reason_tests {
    use super::*;

    #[test]
    fn a_remote_refusal_reads_as_the_services_own_words() {
        let refused = capnp::Error::failed("remote exception: topic abc is not on this node".into());
        assert_eq!(reason(&refused), "topic abc is not on this node");
        let gone = capnp::Error::disconnected("Peer disconnected.".into());
        assert_eq!(reason(&gone), "the service closed the connection (it stopped or restarted)");
    }
}
