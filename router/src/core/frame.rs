//! P2P frames, both ways, without I/O: `seal` encodes a batch for another node and signs it with
//! the node key; `open` checks that a frame is from the node TLS authenticated, for this node,
//! and signed by it, then reads its payloads; `verify_signatures` checks the engine signatures
//! of the messages inside (as one batch: run it off the event loop). `unsealed` and
//! `read_unsealed` are a batch alone, unsigned and unnumbered, as the log of frames sent keeps it.

use super::acks::{Ack, Header};
use super::drops::DropReason;
use super::outbox::{Announcement, Outgoing};
use super::signatures;
use netmachine_schema::message_capnp::{acknowledgement, p2_p_batch, p2_p_frame, p2_p_payload};
use netmachine_schema::{signing, EngineLocation, EngineMessage, Identity, Keypair, TopicAdvert};

/// A frame ready for transport, with what it carries for accounting.
pub struct Sealed {
    pub bytes: Vec<u8>,
    pub messages: u64,
    /// The latest expiry of its messages (0: some never expire, or it carries none).
    pub expiry: u64,
}

/// Encodes `batch` for `dst`, numbered by `header`, and signs it with the node `key`.
pub fn seal(key: &Keypair, dst: Identity, header: &Header, batch: &[Outgoing]) -> Sealed {
    let (batch_bytes, messages, expiry) = encode(header, batch);
    let src = key.identity();
    let signature = key.sign(&signing::p2p_frame(&src, &dst, &batch_bytes));
    let mut frame = capnp::message::Builder::new_default();
    let mut root = frame.init_root::<p2_p_frame::Builder>();
    root.set_src(&src.0);
    root.set_dst(&dst.0);
    root.set_batch(&batch_bytes);
    root.set_sig(&signature);
    Sealed { bytes: capnp::serialize::write_message_to_words(&frame), messages, expiry }
}

/// `batch` alone, unsigned and unnumbered.
pub fn unsealed(batch: &[Outgoing]) -> Vec<u8> {
    encode(&Header::default(), batch).0
}

/// A batch `unsealed` wrote: its items, or why it cannot be read.
pub fn read_unsealed(bytes: &[u8], word_limit: usize) -> Result<Vec<Outgoing>, String> {
    let options = netmachine_service::rpc::reader_options(word_limit);
    let message = capnp::serialize::read_message(&mut &bytes[..], options).map_err(|e| e.to_string())?;
    let batch = message.get_root::<p2_p_batch::Reader>().map_err(|e| e.to_string())?;
    let (items, unreadable) = read_items(batch.get_payloads().map_err(|e| e.to_string())?);
    match unreadable {
        0 => Ok(items),
        n => Err(format!("{n} items cannot be read")),
    }
}

/// The batch numbered by `header`, encoded, with its messages and their latest expiry (0: some
/// never expire, or it carries none).
fn encode(header: &Header, batch: &[Outgoing]) -> (Vec<u8>, u64, u64) {
    let mut message = capnp::message::Builder::new_default();
    let mut root = message.init_root::<p2_p_batch::Builder>();
    root.set_session(header.session);
    root.set_run(header.run);
    root.set_seq(header.seq);
    root.set_kept_from(header.kept_from);
    if let Some(ack) = &header.ack {
        write_ack(root.reborrow().init_ack(), ack);
    }
    let mut payloads = root.init_payloads(batch.len() as u32);
    let (mut messages, mut expiry) = (0, Some(0u64));
    for (i, item) in batch.iter().enumerate() {
        let payload = payloads.reborrow().get(i as u32);
        match item {
            Outgoing::Message(m) => {
                messages += 1;
                expiry = expiry.zip(m.expiry).map(|(latest, at)| latest.max(at));
                m.write(payload.init_engine());
            }
            Outgoing::Engines(a) => {
                let mut engines = payload.init_engines();
                engines.set_full(a.full);
                let mut attached = engines.reborrow().init_attached(a.attached.len() as u32);
                for (j, location) in a.attached.iter().enumerate() {
                    location.write(attached.reborrow().get(j as u32));
                }
                let mut detached = engines.reborrow().init_detached(a.detached.len() as u32);
                for (j, id) in a.detached.iter().enumerate() {
                    detached.set(j as u32, &id.0);
                }
                let mut topics = engines.init_topics(a.topics.len() as u32);
                for (j, advert) in a.topics.iter().enumerate() {
                    advert.write(topics.reborrow().get(j as u32));
                }
            }
        }
    }
    (capnp::serialize::write_message_to_words(&message), messages, expiry.unwrap_or(0))
}

fn write_ack(mut builder: acknowledgement::Builder<'_>, ack: &Ack) {
    builder.set_session(ack.session);
    builder.set_through(ack.through);
    builder.set_received(ack.received);
    let mut ranges = builder.init_ranges(ack.ranges.len() as u32);
    for (i, (first, last)) in ack.ranges.iter().enumerate() {
        let mut range = ranges.reborrow().get(i as u32);
        range.set_first(*first);
        range.set_last(*last);
    }
}

/// An acknowledgement as a frame carries it: none if its session is 0; at most `MAX_RANGES`
/// ranges are read.
fn read_ack(reader: acknowledgement::Reader<'_>) -> capnp::Result<Option<Ack>> {
    if reader.get_session() == 0 {
        return Ok(None);
    }
    let ranges = reader.get_ranges()?.iter().take(super::acks::MAX_RANGES).map(|r| (r.get_first(), r.get_last())).collect();
    Ok(Some(Ack { session: reader.get_session(), through: reader.get_through(), ranges, received: reader.get_received() }))
}

/// Why a whole frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct FrameRefused {
    pub reason: DropReason,
    pub detail: String,
    /// Whether the sending node should be disconnected.
    pub disconnect: bool,
}

fn refused(reason: DropReason, detail: impl Into<String>, disconnect: bool) -> FrameRefused {
    FrameRefused { reason, detail: detail.into(), disconnect }
}

/// What a frame carried.
#[derive(Debug, Default)]
pub struct Opened {
    pub header: Header,
    pub messages: Vec<EngineMessage>,
    pub announcements: Vec<Announcement>,
    /// Payloads that could not be read, or of a kind this version does not take.
    pub unreadable: u64,
    /// Messages whose engine signature did not verify (after `verify_signatures`).
    pub forged: u64,
    /// Unsigned messages, dropped because the node requires signatures.
    pub unsigned: u64,
}

/// Reads a frame that node `src` sent to node `node`.
pub fn open(node: Identity, src: Identity, bytes: &[u8], word_limit: usize) -> Result<Opened, FrameRefused> {
    let options = netmachine_service::rpc::reader_options(word_limit);
    let malformed = |e: capnp::Error| refused(DropReason::Malformed, format!("unreadable frame: {e}"), true);
    let message = capnp::serialize::read_message(&mut &bytes[..], options).map_err(malformed)?;
    let frame = message.get_root::<p2_p_frame::Reader>().map_err(malformed)?;
    let claimed = Identity::from_slice("src", frame.get_src().map_err(malformed)?)
        .map_err(|e| refused(DropReason::Malformed, e.to_string(), true))?;
    if claimed != src {
        return Err(refused(DropReason::BadSignature, format!("a frame claiming to be from {claimed} came from node {src}"), true));
    }
    let dst = Identity::from_slice("dst", frame.get_dst().map_err(malformed)?)
        .map_err(|e| refused(DropReason::Malformed, e.to_string(), true))?;
    if dst != node {
        return Err(refused(DropReason::NoRoute, format!("a frame for node {dst} arrived here"), false));
    }
    let batch = frame.get_batch().map_err(malformed)?;
    src.verify(&signing::p2p_frame(&src, &dst, batch), frame.get_sig().map_err(malformed)?)
        .map_err(|e| refused(DropReason::BadSignature, format!("frame signature by {src}: {e}"), true))?;
    let batch = capnp::serialize::read_message(&mut &batch[..], options).map_err(malformed)?;
    let batch = batch.get_root::<p2_p_batch::Reader>().map_err(malformed)?;
    let payloads = batch.get_payloads().map_err(malformed)?;
    let ack = match batch.has_ack() {
        true => read_ack(batch.get_ack().map_err(malformed)?).map_err(malformed)?,
        false => None,
    };
    let header = Header { session: batch.get_session(), run: batch.get_run(), seq: batch.get_seq(), kept_from: batch.get_kept_from(), ack };
    let (items, unreadable) = read_items(payloads);
    let mut opened = Opened { header, unreadable, ..Opened::default() };
    for item in items {
        match item {
            Outgoing::Message(message) => opened.messages.push(message),
            Outgoing::Engines(announcement) => opened.announcements.push(announcement),
        }
    }
    Ok(opened)
}

/// A batch's items in order, and how many could not be read (or are of a kind this version
/// does not take).
fn read_items(payloads: capnp::struct_list::Reader<'_, p2_p_payload::Owned>) -> (Vec<Outgoing>, u64) {
    let (mut items, mut unreadable) = (Vec::with_capacity(payloads.len() as usize), 0);
    for payload in payloads.iter() {
        let item = match payload.which() {
            Ok(p2_p_payload::Engine(Ok(engine))) => EngineMessage::read(engine).ok().map(Outgoing::Message),
            Ok(p2_p_payload::Engines(Ok(engines))) => read_announcement(engines).ok().map(Outgoing::Engines),
            _ => None,
        };
        match item {
            Some(item) => items.push(item),
            None => unreadable += 1,
        }
    }
    (items, unreadable)
}

fn read_announcement(engines: netmachine_schema::message_capnp::engine_announcement::Reader<'_>) -> Result<Announcement, String> {
    let attached = engines.get_attached().map_err(|e| e.to_string())?;
    let detached = engines.get_detached().map_err(|e| e.to_string())?;
    let topics = engines.get_topics().map_err(|e| e.to_string())?;
    Ok(Announcement {
        full: engines.get_full(),
        attached: attached.iter().map(|r| EngineLocation::read(r).map_err(|e| e.to_string())).collect::<Result<_, _>>()?,
        detached: detached
            .iter()
            .map(|id| id.map_err(|e| e.to_string()).and_then(|id| Identity::from_slice("engine", id).map_err(|e| e.to_string())))
            .collect::<Result<_, _>>()?,
        topics: topics.iter().map(|r| TopicAdvert::read(r).map_err(|e| e.to_string())).collect::<Result<_, _>>()?,
    })
}

impl Opened {
    /// Whether `verify_signatures` has any work: some message is signed, or signatures are
    /// required. The shell checks off the event loop only then.
    pub fn has_signatures_to_check(&self, require: bool) -> bool {
        require || self.messages.iter().any(|m| m.sig.is_some())
    }
}

/// Keeps the messages whose engine signature verifies (and unsigned ones, unless `require`).
pub fn verify_signatures(mut opened: Opened, require: bool) -> Opened {
    if !opened.has_signatures_to_check(require) {
        return opened;
    }
    let verified = signatures::verify_all(std::mem::take(&mut opened.messages), require);
    opened.messages = verified.kept;
    opened.forged += verified.forged;
    opened.unsigned += verified.unsigned;
    opened
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmachine_schema::Destination;

    #[test]
    fn a_sealed_frame_opens_at_its_destination_only_and_from_its_sender_only() {
        let (a, b, engine) = (Keypair::generate(), Keypair::generate(), Keypair::generate());
        let location = EngineLocation::sign(&engine, a.identity(), 5);
        let message = EngineMessage::new(engine.identity(), Destination::Node(b.identity()), 1, b"hi".to_vec());
        let advert = TopicAdvert::sign(&Keypair::generate(), engine.identity(), vec!["news".into()], 5);
        let announcement = Announcement { full: true, attached: vec![location.clone()], detached: vec![], topics: vec![advert.clone()] };
        let batch = vec![Outgoing::Engines(announcement), Outgoing::Message(message.clone())];
        let ack = Ack { session: 3, through: 10, ranges: vec![(12, 14)], received: 15 };
        let header = Header { session: 7, run: 9, seq: 2, kept_from: 1, ack: Some(ack) };
        let sealed = seal(&a, b.identity(), &header, &batch);
        assert_eq!(read_unsealed(&unsealed(&batch), 1 << 20), Ok(batch.clone()), "the log's form of a batch reads back the same");
        assert!(read_unsealed(&sealed.bytes[..40], 1 << 20).is_err());
        assert_eq!(sealed.messages, 1);
        let opened = open(b.identity(), a.identity(), &sealed.bytes, 1 << 20).unwrap();
        assert_eq!(opened.header, header);
        assert_eq!((opened.messages, opened.announcements[0].attached.clone()), (vec![message], vec![location]));
        assert_eq!(opened.announcements[0].topics, vec![advert]);
        let impostor = Keypair::generate().identity();
        let refusal = open(b.identity(), impostor, &sealed.bytes, 1 << 20).unwrap_err();
        assert_eq!((refusal.reason, refusal.disconnect), (DropReason::BadSignature, true));
        let elsewhere = open(impostor, a.identity(), &sealed.bytes, 1 << 20).unwrap_err();
        assert_eq!((elsewhere.reason, elsewhere.disconnect), (DropReason::NoRoute, false));
        let garbage = open(b.identity(), a.identity(), &[1, 2, 3], 1 << 20).unwrap_err();
        assert_eq!(garbage.reason, DropReason::Malformed);
    }

    #[test]
    fn a_frame_signed_by_another_key_is_refused() {
        let (a, b, forger) = (Keypair::generate(), Keypair::generate(), Keypair::generate());
        let mut sealed = seal(&forger, b.identity(), &Header::default(), &[]);
        // Re-seal under a's name with the forger's signature.
        let message = capnp::serialize::read_message(&mut &sealed.bytes[..], Default::default()).unwrap();
        let root = message.get_root::<p2_p_frame::Reader>().unwrap();
        let mut frame = capnp::message::Builder::new_default();
        let mut forged = frame.init_root::<p2_p_frame::Builder>();
        forged.set_src(&a.identity().0);
        forged.set_dst(&b.identity().0);
        forged.set_batch(root.get_batch().unwrap());
        forged.set_sig(root.get_sig().unwrap());
        sealed.bytes = capnp::serialize::write_message_to_words(&frame);
        let refusal = open(b.identity(), a.identity(), &sealed.bytes, 1 << 20).unwrap_err();
        assert_eq!(refusal.reason, DropReason::BadSignature);
    }
}
