//! Handing shared memory to engines (RING.md, "Handing over the rings"): the router passes an
//! engine its segment, doorbells and direct channels as file descriptors over a Unix socket
//! beside its RPC socket, so that an engine never opens rings by name (another's, or ones a
//! stranger planted) and an engine of another Unix user can use them. This module is the wire
//! format of that socket and both of its ends.

use crate::segment::{EngineKey, SegmentError};
use nix::sys::socket::{
    accept4, bind, connect, getsockopt, listen, recvmsg, sendmsg, setsockopt, socket, sockopt, AddressFamily, Backlog,
    ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr, UnixCredentials,
};
use nix::sys::time::TimeVal;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The handoff socket's name, in the directory of the router's RPC socket.
pub const HANDOFF_SOCKET: &str = "rings.sock";
/// What every request starts with.
pub const REQUEST_MAGIC: [u8; 4] = *b"NMH3";
/// A request's length: magic, kind, ticket, peer.
pub const REQUEST_LEN: usize = 4 + 1 + 32 + 32;
/// The most descriptors one answer carries.
pub const MAX_OBJECTS: usize = 3;
/// How long either end waits for the other before giving up on a request.
pub const HANDOFF_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer.
const MAX_ANSWER: usize = 4096;

/// The secret the router hands an engine when it grants rings (in `RingGrant.ticket`): it names
/// that attachment on the handoff socket.
pub type Ticket = [u8; 32];

/// What an engine asks the router for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Its ring segment, its own doorbell and the router's doorbell, in that order.
    Rings,
    /// The direct channel it writes to `peer`, then `peer`'s doorbell.
    ChannelTo(EngineKey),
    /// The direct channel `peer` writes to it.
    ChannelFrom(EngineKey),
    /// Its data streams, for an engine on the socket path: the send stream, then the delivery
    /// stream (Unix stream sockets to the router).
    Streams,
}

impl Request {
    fn encode(&self, ticket: &Ticket) -> [u8; REQUEST_LEN] {
        let (kind, peer) = match self {
            Request::Rings => (1, [0; 32]),
            Request::ChannelTo(peer) => (2, *peer),
            Request::ChannelFrom(peer) => (3, *peer),
            Request::Streams => (4, [0; 32]),
        };
        let mut bytes = [0; REQUEST_LEN];
        bytes[..4].copy_from_slice(&REQUEST_MAGIC);
        bytes[4] = kind;
        bytes[5..37].copy_from_slice(ticket);
        bytes[37..].copy_from_slice(&peer);
        bytes
    }

    fn decode(bytes: &[u8]) -> Result<(Request, Ticket), String> {
        if bytes.len() != REQUEST_LEN || bytes[..4] != REQUEST_MAGIC {
            return Err(format!("not a handoff request ({} bytes)", bytes.len()));
        }
        let ticket: Ticket = bytes[5..37].try_into().expect("32 bytes");
        let peer: EngineKey = bytes[37..].try_into().expect("32 bytes");
        let request = match bytes[4] {
            1 => Request::Rings,
            2 => Request::ChannelTo(peer),
            3 => Request::ChannelFrom(peer),
            4 => Request::Streams,
            other => return Err(format!("unknown request kind {other}")),
        };
        Ok((request, ticket))
    }
}

/// A shared-memory object the router handed over: its descriptor, its name (for messages and
/// to tell a remapping), and the user the router runs as, who must own it.
#[derive(Debug)]
pub struct Handed {
    pub fd: OwnedFd,
    pub name: String,
    pub owner: u32,
}

impl Handed {
    /// Which object it is (device and inode): two descriptors of one object agree, and an
    /// object made afresh under the same name does not.
    pub fn object(&self) -> Result<(u64, u64), nix::Error> {
        let stat = nix::sys::stat::fstat(&self.fd)?;
        Ok((stat.st_dev as u64, stat.st_ino as u64))
    }
}

/// Why a handoff failed.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("handoff socket {socket}: {source}")]
    System { socket: PathBuf, source: nix::Error },
    #[error("the router refused to hand over {request:?}: {reason}")]
    Refused { request: Request, reason: String },
    #[error("handoff socket {socket}: {problem}")]
    Malformed { socket: PathBuf, problem: String },
}

impl From<HandoffError> for SegmentError {
    fn from(error: HandoffError) -> SegmentError {
        SegmentError::Invalid { name: "handoff".into(), problem: error.to_string() }
    }
}

/// The handoff socket beside the router's RPC socket `router_socket`.
pub fn handoff_socket(router_socket: &Path) -> PathBuf {
    router_socket.with_file_name(HANDOFF_SOCKET)
}

fn seqpacket() -> nix::Result<OwnedFd> {
    let fd = socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None)?;
    give_up_after_timeout(&fd)?;
    Ok(fd)
}

/// Reads and writes on `fd` fail after `HANDOFF_TIMEOUT` instead of waiting for ever.
fn give_up_after_timeout(fd: &OwnedFd) -> nix::Result<()> {
    let timeout = TimeVal::new(HANDOFF_TIMEOUT.as_secs() as i64, 0);
    setsockopt(fd, sockopt::ReceiveTimeout, &timeout)?;
    setsockopt(fd, sockopt::SendTimeout, &timeout)
}

/// An engine's claim on its attachment's rings: the handoff socket, and the ticket the router
/// granted (a new one after each attach).
#[derive(Debug, Clone)]
pub struct Claim {
    pub socket: PathBuf,
    pub ticket: Ticket,
}

impl Claim {
    /// Asks the router for `request`: the objects handed over, as many and in the order
    /// `Request` gives.
    pub fn take(&self, request: Request) -> Result<Vec<Handed>, HandoffError> {
        let handed = ask(&self.socket, &self.ticket, request)?;
        let wanted = match request {
            Request::Rings => 3,
            Request::ChannelTo(_) | Request::Streams => 2,
            Request::ChannelFrom(_) => 1,
        };
        match handed.len() == wanted {
            true => Ok(handed),
            false => Err(HandoffError::Malformed { socket: self.socket.clone(), problem: format!("{} objects for {request:?}, not {wanted}", handed.len()) }),
        }
    }
}

/// Asks the router at `socket` for `request` under `ticket`.
fn ask(socket: &Path, ticket: &Ticket, request: Request) -> Result<Vec<Handed>, HandoffError> {
    let system = |source| HandoffError::System { socket: socket.to_path_buf(), source };
    let malformed = |problem: String| HandoffError::Malformed { socket: socket.to_path_buf(), problem };
    let fd = seqpacket().map_err(system)?;
    connect(fd.as_raw_fd(), &UnixAddr::new(socket).map_err(system)?).map_err(system)?;
    let router: UnixCredentials = getsockopt(&fd, sockopt::PeerCredentials).map_err(system)?;
    let bytes = request.encode(ticket);
    sendmsg::<()>(fd.as_raw_fd(), &[IoSlice::new(&bytes)], &[], MsgFlags::empty(), None).map_err(system)?;
    let mut answer = vec![0u8; MAX_ANSWER];
    let mut space = nix::cmsg_space!([RawFd; MAX_OBJECTS]);
    let (len, fds) = {
        let mut iov = [IoSliceMut::new(&mut answer)];
        let received = recvmsg::<()>(fd.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC).map_err(system)?;
        let mut fds = Vec::new();
        for message in received.cmsgs().map_err(system)? {
            if let ControlMessageOwned::ScmRights(received) = message {
                // SAFETY: descriptors the kernel just installed in this process for us alone.
                fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        (received.bytes, fds)
    };
    let answer = &answer[..len];
    match answer.first() {
        Some(0) => {}
        Some(_) => return Err(HandoffError::Refused { request, reason: String::from_utf8_lossy(&answer[1..]).into_owned() }),
        None => return Err(malformed("the router closed the connection without an answer".into())),
    }
    let names = std::str::from_utf8(&answer[1..]).map_err(|_| malformed("object names that are not UTF-8".into()))?;
    let names: Vec<&str> = names.split('\n').filter(|name| !name.is_empty()).collect();
    if names.len() != fds.len() {
        return Err(malformed(format!("{} names for {} descriptors", names.len(), fds.len())));
    }
    Ok(fds.into_iter().zip(names).map(|(fd, name)| Handed { fd, name: name.to_string(), owner: router.uid() }).collect())
}

/// The router's end: the listening socket.
pub struct HandoffListener {
    fd: OwnedFd,
    pub path: PathBuf,
}

/// Who is asking, as the kernel tells it.
#[derive(Debug, Clone, Copy)]
pub struct Asker {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
}

impl HandoffListener {
    /// Listens at `path`, replacing a socket file left there; `mode` is the file's (0600, or
    /// 0666 when engines of other users may attach: who asks is checked on each request).
    pub fn bind(path: &Path, mode: u32) -> Result<HandoffListener, HandoffError> {
        let system = |source| HandoffError::System { socket: path.to_path_buf(), source };
        if path.exists() {
            nix::unistd::unlink(path).map_err(system)?;
        }
        let fd = socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).map_err(system)?;
        bind(fd.as_raw_fd(), &UnixAddr::new(path).map_err(system)?).map_err(system)?;
        nix::sys::stat::fchmodat(nix::fcntl::AT_FDCWD, path, nix::sys::stat::Mode::from_bits_truncate(mode), nix::sys::stat::FchmodatFlags::FollowSymlink).map_err(system)?;
        listen(&fd, Backlog::new(64).map_err(system)?).map_err(system)?;
        Ok(HandoffListener { fd, path: path.to_path_buf() })
    }

    /// Answers requests, one at a time, until the socket fails (the error says how): `answer`
    /// is told who asks and what, and gives the objects (name, descriptor) or the reason it
    /// refuses. A connection that sends nothing usable within `HANDOFF_TIMEOUT` is dropped.
    pub fn serve(&self, mut answer: impl FnMut(Asker, Request, &Ticket) -> Result<Vec<(String, OwnedFd)>, String>) -> nix::Error {
        loop {
            let connection = match accept4(self.fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                // SAFETY: a descriptor accept just made, ours alone.
                Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
                Err(nix::Error::EINTR | nix::Error::ECONNABORTED) => continue,
                Err(error) => return error,
            };
            let _ = serve_one(&connection, &mut answer);
        }
    }
}

/// One request on `connection`, answered.
fn serve_one(connection: &OwnedFd, answer: &mut impl FnMut(Asker, Request, &Ticket) -> Result<Vec<(String, OwnedFd)>, String>) -> nix::Result<()> {
    give_up_after_timeout(connection)?;
    let credentials = getsockopt(connection, sockopt::PeerCredentials)?;
    let asker = Asker { uid: credentials.uid(), gid: credentials.gid(), pid: credentials.pid() };
    let mut bytes = [0u8; REQUEST_LEN + 1];
    let len = nix::sys::socket::recv(connection.as_raw_fd(), &mut bytes, MsgFlags::empty())?;
    let outcome = Request::decode(&bytes[..len]).and_then(|(request, ticket)| answer(asker, request, &ticket));
    match outcome {
        Ok(objects) => {
            let mut reply = vec![0u8];
            for (name, _) in &objects {
                reply.extend_from_slice(name.as_bytes());
                reply.push(b'\n');
            }
            let fds: Vec<RawFd> = objects.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
            let rights = [ControlMessage::ScmRights(&fds)];
            let rights: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
            sendmsg::<()>(connection.as_raw_fd(), &[IoSlice::new(&reply)], rights, MsgFlags::empty(), None)?;
        }
        Err(reason) => {
            let reply = [&[1u8][..], reason.as_bytes()].concat();
            sendmsg::<()>(connection.as_raw_fd(), &[IoSlice::new(&reply[..reply.len().min(MAX_ANSWER)])], &[], MsgFlags::empty(), None)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Kind;
    use crate::random_key as key;
    use crate::segment::{map, segment_name, RingSegment};
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;

    fn socket_path() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("nm-handoff-{}", crate::segment::hex(&key())));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(HANDOFF_SOCKET)
    }

    #[test]
    fn the_router_hands_a_segment_to_the_holder_of_its_ticket_and_refuses_others_with_a_reason() {
        let (node, engine, ticket) = (key(), key(), key());
        let name = segment_name(&node, &engine);
        let created = RingSegment::create(&name, &engine, 4096).unwrap();
        let path = socket_path();
        let listener = HandoffListener::bind(&path, 0o600).unwrap();
        let served_name = name.clone();
        std::thread::spawn(move || {
            listener.serve(|asker, request, asked| {
                assert_eq!(asker.uid, nix::unistd::geteuid().as_raw());
                match (request, *asked == ticket) {
                    (Request::Rings, true) => {
                        let fd = nix::sys::mman::shm_open(served_name.as_str(), OFlag::O_RDWR, Mode::empty()).map_err(|e| e.to_string())?;
                        Ok(vec![(served_name.clone(), fd)])
                    }
                    (_, true) => Err("no such channel".into()),
                    (_, false) => Err("unknown ticket".into()),
                }
            })
        });

        let claim = Claim { socket: path.clone(), ticket };
        let mut handed = ask(&path, &ticket, Request::Rings).unwrap();
        assert_eq!(handed.len(), 1);
        assert_eq!((handed[0].name.as_str(), handed[0].owner), (name.as_str(), nix::unistd::geteuid().as_raw()));
        let segment = RingSegment::handed(handed.remove(0), &engine).unwrap();
        // The handed descriptor maps the same memory: what the router writes, the engine reads.
        let (_, mut inbox) = created.router_side().unwrap();
        inbox.try_write(Kind::Message, &[b"through the handed mapping"]).unwrap();
        let (_, mut engine_inbox) = segment.engine_side().unwrap();
        assert_eq!(engine_inbox.peek().unwrap().unwrap().body, b"through the handed mapping");

        let refused = ask(&path, &key(), Request::Rings).unwrap_err().to_string();
        assert!(refused.contains("unknown ticket"), "{refused}");
        let refused = claim.take(Request::ChannelTo(key())).unwrap_err().to_string();
        assert!(refused.contains("no such channel"), "{refused}");

        // A malformed request is answered with the reason, and the socket goes on serving.
        let fd = seqpacket().unwrap();
        connect(fd.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
        nix::sys::socket::send(fd.as_raw_fd(), b"hello", MsgFlags::empty()).unwrap();
        let mut answer = [0u8; 256];
        let len = nix::sys::socket::recv(fd.as_raw_fd(), &mut answer, MsgFlags::empty()).unwrap();
        assert_eq!(answer[0], 1);
        assert!(String::from_utf8_lossy(&answer[1..len]).contains("not a handoff request"));
        let miscounted = claim.take(Request::Rings).unwrap_err().to_string();
        assert!(miscounted.contains("1 objects for Rings, not 3"), "{miscounted}");

        RingSegment::unlink(&name).unwrap();
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn ring_md_states_the_handoff_as_this_code_speaks_it() {
        use crate::layout::{rows_missing_from_ring_md, RING_MD};
        assert_eq!(rows_missing_from_ring_md(&[(0, "magic"), (4, "kind"), (5, "ticket"), (37, "peer")]), []);
        let magic = std::str::from_utf8(&REQUEST_MAGIC).unwrap();
        for stated in [format!("`{magic}`"), format!("{REQUEST_LEN}-byte"), format!("at most {MAX_OBJECTS})"), format!("`{HANDOFF_SOCKET}`"), format!("after {} seconds", HANDOFF_TIMEOUT.as_secs()), format!("at most {MAX_ANSWER} bytes")] {
            assert!(RING_MD.contains(&stated), "RING.md does not say {stated}");
        }
        let request = Request::ChannelFrom(key()).encode(&key());
        assert_eq!((request.len(), request[4]), (69, 3));
    }

    #[test]
    fn a_handed_object_not_the_routers_users_alone_is_refused() {
        let name = segment_name(&key(), &key());
        let engine = key();
        drop(RingSegment::create(&name, &engine, 4096).unwrap());
        let open = || nix::sys::mman::shm_open(name.as_str(), OFlag::O_RDWR, Mode::empty()).unwrap();
        let stranger = nix::unistd::geteuid().as_raw() + 1;
        let refused = RingSegment::handed(Handed { fd: open(), name: name.clone(), owner: stranger }, &engine).err().unwrap().to_string();
        assert!(refused.contains("not by the router's user"), "{refused}");
        nix::sys::stat::fchmod(&open(), Mode::from_bits_truncate(0o660)).unwrap();
        let owner = nix::unistd::geteuid().as_raw();
        let refused = RingSegment::handed(Handed { fd: open(), name: name.clone(), owner }, &engine).err().unwrap().to_string();
        assert!(refused.contains("lets other users in"), "{refused}");
        assert!(map(&name, None).is_err());
        RingSegment::unlink(&name).unwrap();
    }
}
