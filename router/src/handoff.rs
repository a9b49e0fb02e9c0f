//! The router's end of the handoff socket (ring/RING.md, "Handing over the rings"): a thread
//! of its own answers each engine that presents the ticket of its attachment with the
//! descriptors of its rings, its doorbells and the direct channels it writes or reads, and
//! nothing of any other engine; to an engine on the socket path, its data streams, whose router
//! ends go to the main thread. Who asks is checked against `router.engine_users` and
//! `router.engine_groups` first.

use netmachine_engine::ring::handoff::{Asker, HandoffListener, Request, Ticket};
use netmachine_engine::ring::layout::{CHANNEL_CONSUMER_PID_AT, CHANNEL_PRODUCER_PID_AT};
use netmachine_engine::ring::{self, ChannelSegment, HandoffError, RingSegment, SegmentError};
use netmachine_schema::Identity;
use netmachine_service::engine_access::{EngineAccess, Peer};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The router's ends of an engine's data streams, the send stream and the delivery stream,
/// and the engine they were handed to.
pub type HandedStream = (Identity, OwnedFd, OwnedFd);

/// Where the handoff thread sends the router's ends of data streams, for the main thread.
pub type HandedStreams = tokio::sync::mpsc::Sender<HandedStream>;

/// Data streams made and not yet taken up by the main thread, at most: past that a request for
/// more is refused (the router is too busy to serve them).
pub const STREAMS_WAITING: usize = 64;

/// The tickets of the attachments, and what was refused on the socket.
pub struct Handoff {
    node: Identity,
    access: EngineAccess,
    tickets: Mutex<HashMap<Ticket, Identity>>,
    streams: HandedStreams,
    /// Requests refused (unknown ticket, a user not let in, an object that is not there).
    pub refused: AtomicU64,
}

impl Handoff {
    /// Listens at `path` and starts the thread that answers there; the router's ends of data
    /// streams go to `streams`.
    pub fn start(path: &Path, node: Identity, access: EngineAccess, streams: HandedStreams) -> Result<Arc<Handoff>, HandoffError> {
        let mode = if access.open_to_others() { 0o666 } else { 0o600 };
        let listener = HandoffListener::bind(path, mode)?;
        let handoff = Arc::new(Handoff { node, access, tickets: Mutex::new(HashMap::new()), streams, refused: AtomicU64::new(0) });
        let serving = handoff.clone();
        std::thread::Builder::new()
            .name("handoff".into())
            .spawn(move || {
                let error = listener.serve(|asker, request, ticket| serving.answer(asker, request, ticket));
                tracing::error!(socket = %listener.path.display(), %error, "the handoff socket failed: engines attaching from now on use the socket path");
            })
            .map_err(|e| HandoffError::Malformed { socket: path.to_path_buf(), problem: format!("cannot start its thread: {e}") })?;
        Ok(handoff)
    }

    /// A new ticket for `engine`'s attachment; any earlier one of it is void.
    pub fn issue(&self, engine: Identity) -> Ticket {
        let mut ticket = [0; 32];
        getrandom::fill(&mut ticket).expect("the system's randomness");
        let mut tickets = crate::rings::lock(&self.tickets);
        tickets.retain(|_, holder| *holder != engine);
        tickets.insert(ticket, engine);
        ticket
    }

    /// `engine` detached: its ticket is void.
    pub fn withdraw(&self, engine: &Identity) {
        crate::rings::lock(&self.tickets).retain(|_, holder| holder != engine);
    }

    fn answer(&self, asker: Asker, request: Request, ticket: &Ticket) -> Result<Vec<(String, OwnedFd)>, String> {
        let answer = match request {
            Request::Streams => self.streams(asker, ticket),
            _ => self.objects(asker, request, ticket).and_then(|(engine, names)| {
                record_pid(&engine, request, &names[0], asker.pid as u32).map_err(|e| e.to_string())?;
                names.into_iter().map(|name| ring::open_to_hand_over(&name).map(|fd| (name, fd)).map_err(|e| e.to_string())).collect()
            }),
        };
        if let Err(refused) = &answer {
            self.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(uid = asker.uid, pid = asker.pid, ?request, %refused, "refused a handoff");
        }
        answer
    }

    /// The engine whose ticket it is and the names of the objects `request` asks for, if the
    /// asker may have them.
    fn objects(&self, asker: Asker, request: Request, ticket: &Ticket) -> Result<(Identity, Vec<String>), String> {
        let engine = self.holder(asker, ticket)?;
        if asker.pid <= 0 {
            return Err(NOT_VISIBLE.into());
        }
        let node = &self.node.0;
        let names = match request {
            Request::Rings => vec![ring::segment_name(node, &engine.0), ring::bell_name(node, &engine.0), ring::doorbell_name(node)],
            Request::ChannelTo(peer) => vec![ring::channel_name(node, &engine.0, &peer), ring::bell_name(node, &peer)],
            Request::ChannelFrom(peer) => vec![ring::channel_name(node, &peer, &engine.0)],
            Request::Streams => return Err("data streams are no shared-memory objects".into()),
        };
        Ok((engine, names))
    }

    /// The engine whose attachment holds `ticket`, if `asker` is let in.
    fn holder(&self, asker: Asker, ticket: &Ticket) -> Result<Identity, String> {
        self.access.admits(&Peer { uid: asker.uid, gid: asker.gid, pid: asker.pid })?;
        Ok(crate::rings::lock(&self.tickets).get(ticket).copied().ok_or("no attachment holds this ticket: attach again")?)
    }

    /// New data streams for the engine whose ticket it is: the router's ends go to the main
    /// thread, the others are handed over. The router need not see the asker's process: the
    /// streams end with it.
    fn streams(&self, asker: Asker, ticket: &Ticket) -> Result<Vec<(String, OwnedFd)>, String> {
        let engine = self.holder(asker, ticket)?;
        let pair = || std::os::unix::net::UnixStream::pair().map_err(|e| format!("cannot make a data stream: {e}"));
        let ((router_sends, engine_sends), (router_delivers, engine_delivers)) = (pair()?, pair()?);
        self.streams.try_send((engine, router_sends.into(), router_delivers.into())).map_err(|refused| match refused {
            tokio::sync::mpsc::error::TrySendError::Full(_) => format!("{STREAMS_WAITING} data streams wait for the router already: ask again later"),
            tokio::sync::mpsc::error::TrySendError::Closed(_) => "the router is stopping".to_string(),
        })?;
        Ok(vec![(SEND_STREAM.into(), engine_sends.into()), (DELIVERY_STREAM.into(), engine_delivers.into())])
    }
}

/// The names the data streams are handed over under.
const SEND_STREAM: &str = "send-stream";
const DELIVERY_STREAM: &str = "delivery-stream";

/// Why an engine whose process the router cannot see gets no rings.
const NOT_VISIBLE: &str = "the router cannot see this engine's process (it runs in a PID namespace the router's does not contain, such as another container), so it could not tell when the engine is gone and reclaim its rings: it uses the socket path; rings need an engine in the router's PID namespace or one nested in it";

/// Records the asker's process id, as the router sees it, in the object it is handed (the
/// segment's engine, or the channel's producer or consumer): liveness is checked in the
/// router's PID namespace.
fn record_pid(engine: &Identity, request: Request, name: &str, pid: u32) -> Result<(), SegmentError> {
    match request {
        Request::Rings => RingSegment::open(name, Some(&engine.0))?.set_engine_pid(pid),
        Request::ChannelTo(peer) => ChannelSegment::open(name, Some(&engine.0), Some(&peer))?.word(CHANNEL_PRODUCER_PID_AT).store(pid, Ordering::Relaxed),
        Request::ChannelFrom(peer) => ChannelSegment::open(name, Some(&peer), Some(&engine.0))?.word(CHANNEL_CONSUMER_PID_AT).store(pid, Ordering::Relaxed),
        // Their ends are the sign of the engine's life.
        Request::Streams => {}
    }
    Ok(())
}
