//! Answering other nodes' block requests, which the transport relays to this service's bulk
//! socket (`$RUN/storage.bulk.sock`, one connection per request): one status byte, then (if
//! served) the block's size and the groups asked for, encoded for verified streaming from the
//! block's outboard. A node trusted less than the block's `min_trust` is denied; a block being
//! served is held, so collection waits.

use crate::core::verify::{encode_onto, group_ranges, groups, GROUP_BYTES};
use crate::server::{add, bump, Shared};
use crate::store::Content;
use netmachine_schema::storage_capnp::block_request;
use netmachine_schema::ContentId;
use netmachine_service::bulk::{self, BulkListener, Opening};
use std::rc::Rc;
use tokio::net::UnixStream;

/// Groups one request may ask for at most (1 MiB).
pub const MAX_GROUPS: u64 = 64;

/// The first byte of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Served = 0,
    NotHeld = 1,
    Denied = 2,
    Malformed = 3,
}

impl Status {
    pub fn from_byte(byte: u8) -> Option<Status> {
        [Status::Served, Status::NotHeld, Status::Denied, Status::Malformed].into_iter().find(|s| *s as u8 == byte)
    }
}

/// What a request asks: the block, and its groups `first..end` (`None`: the last group).
pub fn read_request(bytes: &[u8]) -> Result<(ContentId, Option<(u64, u64)>), String> {
    let message = capnp::serialize::read_message(&mut &bytes[..], netmachine_service::rpc::reader_options(1024)).map_err(|e| e.to_string())?;
    let request = message.get_root::<block_request::Reader>().map_err(|e| e.to_string())?;
    let id = ContentId::from_slice("id", request.get_id().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    match request.which().map_err(|e| e.to_string())? {
        block_request::Last(()) => Ok((id, None)),
        block_request::Groups(groups) => Ok((id, Some((groups.get_first(), groups.get_end())))),
    }
}

/// The bytes of a request for `id`'s groups `first..end` (`None`: the last group).
pub fn write_request(id: &ContentId, groups: Option<(u64, u64)>) -> Vec<u8> {
    let mut message = capnp::message::Builder::new_default();
    let mut request = message.init_root::<block_request::Builder>();
    request.set_id(&id.0);
    match groups {
        None => request.set_last(()),
        Some((first, end)) => {
            let mut asked = request.init_groups();
            asked.set_first(first);
            asked.set_end(end);
        }
    }
    capnp::serialize::write_message_to_words(&message)
}

/// Answers the requests the transport relays to `listener`, until the process stops.
pub(crate) async fn serve_bulk(shared: Rc<Shared>, listener: BulkListener) {
    listener.serve(|transport| serve(shared.clone(), transport)).await
}

/// Answers the request opening `transport`'s connection: the answer in frames, then its end.
async fn serve(shared: Rc<Shared>, mut transport: UnixStream) {
    let opening = match Opening::read_from(&mut transport, bulk::OPENING_WAIT).await {
        Ok(opening) => opening,
        Err(error) => {
            bump(&shared.counters.serves_refused);
            tracing::info!(%error, "refused a bulk connection without a valid opening");
            return;
        }
    };
    let node = opening.node;
    let whole = match answer(&shared, opening.trust, &opening.request).await {
        Ok(answer) => answer,
        Err(status) => {
            bump(&shared.counters.serves_refused);
            tracing::info!(peer = %node, ?status, "a block request was not served");
            vec![status as u8]
        }
    };
    let sent = async {
        for piece in whole.chunks(bulk::MAX_FRAME) {
            bulk::write_frame(&mut transport, piece).await?;
        }
        bulk::write_end(&mut transport, Ok(())).await
    };
    if let Err(error) = sent.await {
        tracing::info!(peer = %node, %error, "the transport stopped taking an answer");
        return;
    }
    if whole[0] == Status::Served as u8 {
        bump(&shared.counters.streams_served);
        add(&shared.counters.bytes_served, whole.len() as u64 - 1);
    }
}

/// The outboard of block `id`, from the one kept from the last request when it is the same
/// block (a fetch asks for one block's ranges in turn; reading a 256 MiB block's 1 MiB outboard
/// for each 1 MiB answer would double what is read).
fn outboard_of(shared: &Shared, id: &ContentId) -> Result<std::sync::Arc<Vec<u8>>, crate::store::StoreError> {
    let mut last = shared.last_outboard.borrow_mut();
    if let Some((held, outboard)) = last.as_ref() {
        if held == id {
            return Ok(outboard.clone());
        }
    }
    let outboard = std::sync::Arc::new(shared.store.outboard(id)?);
    *last = Some((*id, outboard.clone()));
    Ok(outboard)
}

/// A served answer: the status byte, the size and the encoded groups.
async fn answer(shared: &Rc<Shared>, trust: u8, request: &[u8]) -> Result<Vec<u8>, Status> {
    let (id, asked) = read_request(request).map_err(|_| Status::Malformed)?;
    let entry = shared.catalog.borrow().get(&id).copied().ok_or(Status::NotHeld)?;
    if trust < entry.min_trust {
        return Err(Status::Denied);
    }
    let all = groups(entry.size);
    let (first, end) = asked.unwrap_or((all - 1, all));
    if first >= end || end > all || end - first > MAX_GROUPS {
        return Err(Status::Malformed);
    }
    let content = shared.store.content(&id, &entry).map_err(|_| Status::NotHeld)?;
    let outboard = outboard_of(shared, &id).map_err(|_| Status::NotHeld)?;
    shared.catalog.borrow_mut().hold(id);
    let size = entry.size;
    let answer = tokio::task::spawn_blocking(move || {
        let ranges = group_ranges(first, end);
        // Sized once, so the encoding is never copied to a larger buffer as it grows: the
        // groups' bytes and, at most, a parent pair for each group and two per tree level.
        let bytes = (end * GROUP_BYTES).min(size) - first * GROUP_BYTES;
        let mut answer = Vec::with_capacity(9 + bytes as usize + 64 * (end - first + 2 * 64) as usize);
        answer.push(Status::Served as u8);
        answer.extend_from_slice(&size.to_le_bytes());
        match content {
            Content::Inline(bytes) => encode_onto(&bytes[..], size, &outboard, &ranges, &mut answer),
            Content::File(file) => {
                // The groups are read 16 KiB at a time: have the kernel read the whole range at
                // once (a hint; a block is written past the page cache, so it is often cold).
                let _ = nix::fcntl::posix_fadvise(&file, (first * GROUP_BYTES) as i64, bytes as i64, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED);
                encode_onto(&*file, size, &outboard, &ranges, &mut answer)
            }
        }
        .map(|()| answer)
    })
    .await;
    shared.catalog.borrow_mut().let_go(id);
    answer.map_err(|_| Status::NotHeld)?.map_err(|error| {
        tracing::error!(%id, %error, "cannot read a block to serve it");
        Status::NotHeld
    })
}
