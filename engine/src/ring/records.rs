//! What the records carry (RING.md, "Records"): a message record's body is an EngineMessage in
//! a fixed little-endian layout (a 104-byte head, then protocol, body and signature), read in
//! place; a refusal record's body is the refused message's id, a reason code and a sentence.
//!
//! Layout version 1 carried Cap'n Proto here. The fixed layout is written straight into the
//! ring with no builder, its envelope is read at fixed offsets, and an engine in another
//! language needs no Cap'n Proto library to use the fast path.

use super::layout::Kind;
use super::spsc::{Full, Producer};
use crate::MessageView;
use netmachine_schema::message_capnp::Scope;
use netmachine_schema::router_capnp::SendRefusal;
use netmachine_schema::{Destination, EngineMessage, Identity, Stamp};

/// A message the router could not route, as it tells the sending engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub id: u64,
    pub reason: SendRefusal,
    pub detail: String,
}

/// The fixed head of a message record's body (RING.md, "Message records").
pub const MESSAGE_HEAD: usize = 104;
pub const SRC_AT: usize = 0;
pub const DST_AT: usize = 32;
pub const ID_AT: usize = 64;
pub const REPLY_TO_AT: usize = 72;
pub const EXPIRY_AT: usize = 80;
pub const DST_KIND_AT: usize = 88;
pub const SCOPE_AT: usize = 89;
pub const FLAGS_AT: usize = 90;
pub const PROTOCOL_LENGTH_AT: usize = 92;
pub const BODY_LENGTH_AT: usize = 96;
pub const SIGNATURE_LENGTH_AT: usize = 100;

/// `flags` bits; any other bit set makes the record malformed.
pub const HAS_REPLY_TO: u16 = 1;
pub const HAS_EXPIRY: u16 = 2;
pub const ORDERED: u16 = 4;
pub const RELIABLE: u16 = 8;
pub const ENCRYPTED: u16 = 16;
/// The record ends with a delivery stamp (inbox only: the router writes it).
pub const STAMPED: u16 = 32;
const KNOWN_FLAGS: u16 = HAS_REPLY_TO | HAS_EXPIRY | ORDERED | RELIABLE | ENCRYPTED | STAMPED;

/// A delivery stamp after the signature: node (32 bytes), session (u64), seq (u64), index (u32),
/// then 4 zero bytes.
pub const STAMP_LENGTH: usize = 56;

/// `dst_kind` values.
pub const DST_ENGINE: u8 = 1;
pub const DST_NODE: u8 = 2;
pub const DST_TOPIC: u8 = 3;

fn bytes<const N: usize>(from: &[u8], at: usize) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&from[at..at + N]);
    out
}

fn u64_at(from: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes(from, at))
}

fn u32_at(from: &[u8], at: usize) -> usize {
    u32::from_le_bytes(bytes(from, at)) as usize
}

/// Bytes of the record body that carries `message`.
pub fn message_length(message: &EngineMessage) -> usize {
    MESSAGE_HEAD + message.protocol.len() + message.body.len() + message.sig.map_or(0, |s| s.len()) + message.stamp.map_or(0, |_| STAMP_LENGTH)
}

/// Writes `message` as one record, straight into the ring.
pub fn write_message(producer: &mut Producer, message: &EngineMessage) -> Result<(), Full> {
    let signature = message.sig.as_ref().map_or(&[][..], |s| &s[..]);
    let stamp = message.stamp.as_ref().map(encode_stamp);
    let head = encode_head(message, signature);
    producer.try_write(Kind::Message, &[&head, message.protocol.as_bytes(), &message.body, signature, stamp.as_ref().map_or(&[][..], |s| &s[..])])
}

/// Appends the body of `message`'s record to `out` (for the socket path's send stream).
pub fn append_message(out: &mut Vec<u8>, message: &EngineMessage) {
    let signature = message.sig.as_ref().map_or(&[][..], |s| &s[..]);
    out.extend_from_slice(&encode_head(message, signature));
    out.extend_from_slice(message.protocol.as_bytes());
    out.extend_from_slice(&message.body);
    out.extend_from_slice(signature);
    if let Some(stamp) = &message.stamp {
        out.extend_from_slice(&encode_stamp(stamp));
    }
}

/// Writes a record for each of `bodies` in turn, each the message `template` (unsigned and
/// unstamped) with that body, their ids counting up from `first_id`, for as long as the ring has
/// room: how many were written, published together.
pub fn write_bodies(producer: &mut Producer, template: &EngineMessage, first_id: u64, bodies: &[&[u8]]) -> usize {
    debug_assert!(template.sig.is_none() && template.stamp.is_none() && template.body.is_empty());
    let head = encode_head(template, &[]);
    let mut batch = producer.batch();
    for (written, body) in bodies.iter().enumerate() {
        let head = with_id_and_length(&head, first_id + written as u64, body.len());
        if batch.try_write(Kind::Message, &[&head, template.protocol.as_bytes(), body]).is_err() {
            return written;
        }
    }
    bodies.len()
}

/// A run record's body (RING.md, "Runs"): the number of messages (u32) and 4 zero bytes, then
/// a message head and protocol shared by every message, then each body's length (u32), then
/// the bodies.
pub const RUN_HEAD: usize = 8;
pub const RUN_BODY_LENGTH: usize = 4;
/// A run carries at most this many messages, and is at most this long unless one body alone is
/// longer: its receiver's copy stays in cache, a receiver that takes one message at a time
/// walks a short run, and the sender publishes every few thousand bytes.
pub const RUN_MESSAGES: usize = 64;
pub const RUN_BYTES: usize = 8192;

/// Bytes of the run record that carries one body of `body` bytes, each the message `template`.
pub fn run_length(template: &EngineMessage, body: usize) -> usize {
    RUN_HEAD + message_length(template) + RUN_BODY_LENGTH + body
}

/// Writes `bodies` as runs (RING.md, "Runs"), each message the plain `template` with that body,
/// their ids counting up from `first_id`, for as long as the ring has room: how many were
/// written. Each run is published as it is written, so the receiver starts on the first while
/// the sender writes the next. The messages of a send travel with one head for each run rather
/// than one each: a 64-byte body takes 68 bytes of ring instead of 176. A run that would carry
/// one message is written as that message's record.
pub fn write_runs(producer: &mut Producer, template: &EngineMessage, first_id: u64, bodies: &[&[u8]]) -> usize {
    debug_assert!(MessageView::of(template).is_plain() && template.body.is_empty() && matches!(template.dst, Destination::Engine(_)));
    let head = encode_head(template, &[]);
    // A single body goes as a message record, with no run to size.
    if let [body] = bodies {
        let head = with_id_and_length(&head, first_id, body.len());
        return producer.try_write(Kind::Message, &[&head, template.protocol.as_bytes(), body]).map_or(0, |()| 1);
    }
    // Every run's lengths, stored before any run is copied: a copy that loads bytes just
    // stored by small stores waits for them, and for every store before them, to commit.
    let lengths: Vec<u8> = bodies.iter().flat_map(|body| (body.len() as u32).to_le_bytes()).collect();
    let fixed = RUN_HEAD + MESSAGE_HEAD + template.protocol.len();
    let mut written = 0;
    while written < bodies.len() {
        // The bytes and messages of the next run, at most `room` bytes long.
        let extent = |room: usize| {
            let (mut length, mut count) = (fixed, 0);
            for body in &bodies[written..] {
                let longer = length + RUN_BODY_LENGTH + body.len();
                if longer > room || (count > 0 && longer > RUN_BYTES) || count == RUN_MESSAGES {
                    break;
                }
                (length, count) = (longer, count + 1);
            }
            (length, count)
        };
        let Some(room) = producer.longest_fit(extent(usize::MAX).0) else { break };
        let id = (first_id + written as u64).to_le_bytes();
        let sent = match extent(room).1 {
            0 => break,
            // One message alone goes as a message record: 12 bytes shorter, and read as any.
            1 => {
                let head = with_id_and_length(&head, first_id + written as u64, bodies[written].len());
                producer.try_write(Kind::Message, &[&head, template.protocol.as_bytes(), bodies[written]]).map(|()| 1)
            }
            count => {
                let mut run_head = [0; RUN_HEAD];
                run_head[..4].copy_from_slice(&(count as u32).to_le_bytes());
                let lengths = &lengths[RUN_BODY_LENGTH * written..RUN_BODY_LENGTH * (written + count)];
                // On the stack: a run allocates nothing.
                let mut parts: [&[u8]; 6 + RUN_MESSAGES] = [&[]; 6 + RUN_MESSAGES];
                parts[..6].copy_from_slice(&[&run_head[..], &head[..ID_AT], &id, &head[REPLY_TO_AT..], template.protocol.as_bytes(), lengths]);
                parts[6..6 + count].copy_from_slice(&bodies[written..written + count]);
                producer.try_write(Kind::Run, &parts[..6 + count]).map(|()| count)
            }
        };
        match sent {
            Ok(count) => written += count,
            Err(Full) => break,
        }
    }
    written
}

/// `head` (a plain message's, with no body) with its own `id` and body `length`: the record
/// is then three parts (head, protocol, body), each one copy.
fn with_id_and_length(head: &[u8; MESSAGE_HEAD], id: u64, length: usize) -> [u8; MESSAGE_HEAD] {
    let mut head = *head;
    head[ID_AT..REPLY_TO_AT].copy_from_slice(&id.to_le_bytes());
    head[BODY_LENGTH_AT..SIGNATURE_LENGTH_AT].copy_from_slice(&(length as u32).to_le_bytes());
    head
}

/// A run record's body, checked: every message in it is `first` with a body of its own and
/// the next id.
#[derive(Debug)]
pub struct Run<'a> {
    first: MessageView<'a>,
    /// Each body's length, as the record has them.
    lengths: &'a [u8],
    bodies: &'a [u8],
}

impl<'a> Run<'a> {
    /// The messages the run carries.
    pub fn count(&self) -> usize {
        self.lengths.len() / RUN_BODY_LENGTH
    }

    /// The message every one of the run is, but for its body and id.
    pub fn first(&self) -> &MessageView<'a> {
        &self.first
    }

    /// Its messages' ids and bodies, in order: the fast path builds each message at the use
    /// site (see [`Run::message`]), where what the caller does not read of it is never
    /// written.
    pub fn bodies(&self) -> RunBodies<'a> {
        RunBodies { next_id: self.first.id, lengths: self.lengths.chunks_exact(RUN_BODY_LENGTH), bodies: self.bodies }
    }

    /// The message of the run with `id` and `body`.
    #[inline]
    pub fn message(&self, (id, body): (u64, &'a [u8])) -> MessageView<'a> {
        MessageView { id, body, ..self.first }
    }

    /// Its messages in order.
    pub fn messages(&self) -> impl Iterator<Item = MessageView<'a>> + '_ {
        self.bodies().map(|body| self.message(body))
    }
}

/// The ids and bodies of a [`Run`]'s messages, each body borrowed from the run.
pub struct RunBodies<'a> {
    next_id: u64,
    lengths: std::slice::ChunksExact<'a, u8>,
    bodies: &'a [u8],
}

impl<'a> Iterator for RunBodies<'a> {
    type Item = (u64, &'a [u8]);

    #[inline]
    fn next(&mut self) -> Option<(u64, &'a [u8])> {
        let length = u32_at(self.lengths.next()?, 0);
        let (body, rest) = self.bodies.split_at_checked(length)?;
        let id = self.next_id;
        (self.bodies, self.next_id) = (rest, id.wrapping_add(1));
        Some((id, body))
    }
}

/// Reads and checks a run record's body: a plain message head to an engine, at least one
/// message, and bodies whose lengths fill the record exactly.
pub fn read_run(record: &[u8]) -> Result<Run<'_>, String> {
    let too_short = || format!("a {}-byte run is shorter than its head", record.len());
    let (run_head, rest) = record.split_at_checked(RUN_HEAD).ok_or_else(too_short)?;
    let protocol_length = rest.get(PROTOCOL_LENGTH_AT..BODY_LENGTH_AT).map(|length| u32_at(length, 0)).ok_or_else(too_short)?;
    let (message, rest) = rest.split_at_checked(MESSAGE_HEAD.saturating_add(protocol_length)).ok_or_else(too_short)?;
    let first = read_view(message)?;
    if !first.is_plain() || !matches!(first.dst, Destination::Engine(_)) {
        return Err("a run carries only plain messages to an engine (no reply_to, expiry, signature or stamp)".into());
    }
    let count = u32_at(run_head, 0);
    if count == 0 {
        return Err("a run of no messages".into());
    }
    let Some((lengths, bodies)) = rest.split_at_checked(count.saturating_mul(RUN_BODY_LENGTH)) else {
        return Err(format!("a run's {count} lengths run past the record"));
    };
    // Summed without a dependency from one length to the next; u64, so no sum overflows.
    let total: u64 = lengths.chunks_exact(RUN_BODY_LENGTH).map(|length| u32_at(length, 0) as u64).sum();
    if total != bodies.len() as u64 {
        return Err(format!("a run's {count} bodies of {total} bytes in all do not fill its {} bytes", bodies.len()));
    }
    Ok(Run { first, lengths, bodies })
}

/// The fixed head of `message`'s record (lengths fit in u32: a ring's largest body is half its
/// capacity, at most 1 GiB).
fn encode_head(message: &EngineMessage, signature: &[u8]) -> [u8; MESSAGE_HEAD] {
    let mut head = [0; MESSAGE_HEAD];
    let (dst_kind, dst) = match message.dst {
        Destination::Engine(id) => (DST_ENGINE, id),
        Destination::Node(id) => (DST_NODE, id),
        Destination::Topic(id) => (DST_TOPIC, id),
    };
    let mut flags = 0;
    for (set, flag) in [
        (message.reply_to.is_some(), HAS_REPLY_TO),
        (message.expiry.is_some(), HAS_EXPIRY),
        (message.ordered, ORDERED),
        (message.reliable, RELIABLE),
        (message.encrypted, ENCRYPTED),
        (message.stamp.is_some(), STAMPED),
    ] {
        if set {
            flags |= flag;
        }
    }
    head[SRC_AT..DST_AT].copy_from_slice(&message.src.0);
    head[DST_AT..ID_AT].copy_from_slice(&dst.0);
    head[ID_AT..REPLY_TO_AT].copy_from_slice(&message.id.to_le_bytes());
    head[REPLY_TO_AT..EXPIRY_AT].copy_from_slice(&message.reply_to.unwrap_or(0).to_le_bytes());
    head[EXPIRY_AT..DST_KIND_AT].copy_from_slice(&message.expiry.unwrap_or(0).to_le_bytes());
    head[DST_KIND_AT] = dst_kind;
    head[SCOPE_AT] = message.scope as u16 as u8;
    head[FLAGS_AT..PROTOCOL_LENGTH_AT].copy_from_slice(&flags.to_le_bytes());
    head[PROTOCOL_LENGTH_AT..BODY_LENGTH_AT].copy_from_slice(&(message.protocol.len() as u32).to_le_bytes());
    head[BODY_LENGTH_AT..SIGNATURE_LENGTH_AT].copy_from_slice(&(message.body.len() as u32).to_le_bytes());
    head[SIGNATURE_LENGTH_AT..MESSAGE_HEAD].copy_from_slice(&(signature.len() as u32).to_le_bytes());
    head
}

fn encode_stamp(from: &Stamp) -> [u8; STAMP_LENGTH] {
    let mut stamp = [0; STAMP_LENGTH];
    stamp[..32].copy_from_slice(&from.node.0);
    stamp[32..40].copy_from_slice(&from.session.to_le_bytes());
    stamp[40..48].copy_from_slice(&from.seq.to_le_bytes());
    stamp[48..52].copy_from_slice(&from.index.to_le_bytes());
    stamp
}

/// A message record's body, checked: every length adds up, every field holds a known value.
struct Fields<'a> {
    head: &'a [u8],
    dst: Destination,
    scope: Scope,
    flags: u16,
    protocol: &'a str,
    body: &'a [u8],
    sig: Option<[u8; 64]>,
    stamp: Option<Stamp>,
}

impl<'a> Fields<'a> {
    fn check(record: &'a [u8]) -> Result<Fields<'a>, String> {
        let Some((head, rest)) = record.split_at_checked(MESSAGE_HEAD) else {
            return Err(format!("a {}-byte message record is shorter than its {MESSAGE_HEAD}-byte head", record.len()));
        };
        let (protocol_length, body_length) = (u32_at(head, PROTOCOL_LENGTH_AT), u32_at(head, BODY_LENGTH_AT));
        let signature_length = u32_at(head, SIGNATURE_LENGTH_AT);
        if signature_length != 0 && signature_length != 64 {
            return Err(format!("a signature of {signature_length} bytes (0 or 64)"));
        }
        let flags = u16::from_le_bytes(bytes(head, FLAGS_AT));
        if flags & !KNOWN_FLAGS != 0 {
            return Err(format!("unknown flags {:#x}", flags & !KNOWN_FLAGS));
        }
        let stamp_length = if flags & STAMPED != 0 { STAMP_LENGTH } else { 0 };
        if protocol_length + body_length + signature_length + stamp_length != rest.len() {
            return Err(format!(
                "protocol {protocol_length}, body {body_length}, signature {signature_length} and stamp {stamp_length} bytes do not add up to the record's {}",
                rest.len()
            ));
        }
        let dst = Identity(bytes(head, DST_AT));
        let dst = match head[DST_KIND_AT] {
            DST_ENGINE => Destination::Engine(dst),
            DST_NODE => Destination::Node(dst),
            DST_TOPIC => Destination::Topic(dst),
            other => return Err(format!("unknown destination kind {other}")),
        };
        let scope = Scope::try_from(u16::from(head[SCOPE_AT])).map_err(|_| format!("unknown scope {}", head[SCOPE_AT]))?;
        let (protocol, rest) = rest.split_at(protocol_length);
        let protocol = std::str::from_utf8(protocol).map_err(|_| "the protocol is not UTF-8".to_string())?;
        let (body, rest) = rest.split_at(body_length);
        let (sig, stamp) = rest.split_at(signature_length);
        let stamp = (stamp_length > 0).then(|| Stamp { node: Identity(bytes(stamp, 0)), session: u64_at(stamp, 32), seq: u64_at(stamp, 40), index: u32_at(stamp, 48) as u32 });
        Ok(Fields { head, dst, scope, flags, protocol, body, sig: (!sig.is_empty()).then(|| bytes(sig, 0)), stamp })
    }

    fn flag(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }

    fn optional(&self, flag: u16, at: usize) -> Option<u64> {
        self.flag(flag).then(|| u64_at(self.head, at))
    }

    fn src(&self) -> Identity {
        Identity(bytes(self.head, SRC_AT))
    }
}

/// The id of a message record, even a malformed one, if it is long enough to hold one: what a
/// refusal of it names, so the sender can tell which message it was.
pub fn message_id(record: &[u8]) -> Option<u64> {
    (record.len() >= REPLY_TO_AT).then(|| u64_at(record, ID_AT))
}

/// Reads a message record's body into a message (copying the body out of the ring).
pub fn read_message(record: &[u8]) -> Result<EngineMessage, String> {
    read_view(record).map(|view| view.to_message())
}

/// Reads a message record's body, borrowing its protocol and body from it.
pub fn read_view(record: &[u8]) -> Result<MessageView<'_>, String> {
    let fields = Fields::check(record)?;
    Ok(MessageView {
        src: fields.src(),
        dst: fields.dst,
        id: u64_at(fields.head, ID_AT),
        reply_to: fields.optional(HAS_REPLY_TO, REPLY_TO_AT),
        expiry: fields.optional(HAS_EXPIRY, EXPIRY_AT),
        scope: fields.scope,
        ordered: fields.flag(ORDERED),
        reliable: fields.flag(RELIABLE),
        encrypted: fields.flag(ENCRYPTED),
        protocol: fields.protocol,
        body: fields.body,
        sig: fields.sig,
        stamp: fields.stamp,
    })
}

/// Reads the plain messages (no reply_to, expiry, signature or stamp) of a direct channel from
/// `src` to the engine `dst`, borrowing their protocol and body: the channel's fast path, which
/// compares the head's raw bytes instead of parsing every field, and checks a protocol as UTF-8
/// once, not in every message that repeats it.
#[derive(Debug)]
pub struct PlainReader {
    /// `src` then `dst`, as a message's head carries them, in words.
    ends: [u64; ID_AT / 8],
    /// The protocol of the last plain message read, checked.
    protocol: String,
}

impl PlainReader {
    pub fn new(src: &Identity, dst: &Identity) -> Self {
        let both = [src.0, dst.0].concat();
        PlainReader { ends: std::array::from_fn(|word| u64_at(&both, 8 * word)), protocol: String::new() }
    }

    /// The message `record` carries, if it is a plain one from `src` to `dst`. `None` for any
    /// other record, well formed or not: [`read_view`] then reads it whole, or says what is
    /// wrong.
    pub fn read<'a>(&'a mut self, record: &'a [u8]) -> Option<MessageView<'a>> {
        let (head, rest) = record.split_at_checked(MESSAGE_HEAD)?;
        let flags = u16::from_le_bytes(bytes(head, FLAGS_AT));
        // Word by word, with no call: the compare runs for every message.
        let ends = self.ends.iter().enumerate().fold(0, |differ, (word, end)| differ | (u64_at(head, 8 * word) ^ end));
        let plain = ends == 0 && head[DST_KIND_AT] == DST_ENGINE && flags & !(ORDERED | RELIABLE | ENCRYPTED) == 0;
        let protocol_length = u32_at(head, PROTOCOL_LENGTH_AT);
        if !plain || u32_at(head, SIGNATURE_LENGTH_AT) != 0 || protocol_length + u32_at(head, BODY_LENGTH_AT) != rest.len() {
            return None;
        }
        let scope = Scope::try_from(u16::from(head[SCOPE_AT])).ok()?;
        let (protocol, body) = rest.split_at(protocol_length);
        if protocol != self.protocol.as_bytes() {
            // Into the same buffer: a channel whose protocols alternate allocates nothing.
            self.protocol.clear();
            self.protocol.push_str(std::str::from_utf8(protocol).ok()?);
        }
        let (src, dst) = (Identity(bytes(head, SRC_AT)), Identity(bytes(head, DST_AT)));
        Some(MessageView {
            src,
            dst: Destination::Engine(dst),
            id: u64_at(head, ID_AT),
            reply_to: None,
            expiry: None,
            scope,
            ordered: flags & ORDERED != 0,
            reliable: flags & RELIABLE != 0,
            encrypted: flags & ENCRYPTED != 0,
            protocol: &self.protocol,
            body,
            sig: None,
            stamp: None,
        })
    }
}

/// What routing needs of a message record, read in place: no copy of the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub src: Identity,
    pub dst: Destination,
    /// The message id (an event's sequence).
    pub id: u64,
    pub expiry: Option<u64>,
    pub body_len: usize,
    /// It carries a signature.
    pub signed: bool,
}

/// Reads and checks a message record an engine wrote, in place: a record that passes is one any
/// reader can read whole. A delivery stamp is the router's to write, never an engine's.
pub fn read_envelope(record: &[u8]) -> Result<Envelope, String> {
    let fields = Fields::check(record)?;
    if fields.stamp.is_some() {
        return Err("a delivery stamp, which only the router writes".into());
    }
    let (src, id, expiry, body_len) = (fields.src(), u64_at(fields.head, ID_AT), fields.optional(HAS_EXPIRY, EXPIRY_AT), fields.body.len());
    Ok(Envelope { src, dst: fields.dst, id, expiry, body_len, signed: fields.sig.is_some() })
}

/// Copies a message record, read from an engine's outbox and checked as `checked`, into
/// another ring. The record is the consumer's copy, so what was checked is what is written;
/// `src`, `dst` and the id are written from the envelope all the same, so that what lands in
/// the receiver's ring never depends on anything but the check.
pub fn forward(producer: &mut Producer, body: &[u8], checked: &Envelope) -> Result<(), Full> {
    let (id, rest) = (checked.id.to_le_bytes(), &body[REPLY_TO_AT..]);
    producer.try_write(Kind::Message, &[&checked.src.0, &checked.dst.identity().0, &id, rest])
}

fn reason_code(reason: SendRefusal) -> u32 {
    match reason {
        SendRefusal::OverLimit => 1,
        SendRefusal::Expired => 2,
        SendRefusal::NoRoute => 3,
        SendRefusal::BadSource => 4,
        SendRefusal::QueueFull => 5,
        SendRefusal::Malformed => 6,
        SendRefusal::Unsupported => 7,
        SendRefusal::Denied => 8,
        SendRefusal::BackPressured => 9,
        SendRefusal::BadSignature => 10,
    }
}

fn reason_of(code: u32) -> Option<SendRefusal> {
    Some(match code {
        1 => SendRefusal::OverLimit,
        2 => SendRefusal::Expired,
        3 => SendRefusal::NoRoute,
        4 => SendRefusal::BadSource,
        5 => SendRefusal::QueueFull,
        6 => SendRefusal::Malformed,
        7 => SendRefusal::Unsupported,
        8 => SendRefusal::Denied,
        9 => SendRefusal::BackPressured,
        10 => SendRefusal::BadSignature,
        _ => return None,
    })
}

pub fn write_refusal(producer: &mut Producer, refusal: &Refusal) -> Result<(), Full> {
    let detail = refusal.detail.as_bytes();
    producer.try_write(Kind::Refusal, &[&refusal.id.to_le_bytes(), &reason_code(refusal.reason).to_le_bytes(), detail])
}

pub fn read_refusal(body: &[u8]) -> Option<Refusal> {
    let id = u64::from_le_bytes(body.get(..8)?.try_into().ok()?);
    let reason = reason_of(u32::from_le_bytes(body.get(8..12)?.try_into().ok()?))?;
    Some(Refusal { id, reason, detail: String::from_utf8_lossy(&body[12..]).into_owned() })
}

/// The router tells an engine that `peer`'s messages come by a direct channel from here on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelOpen {
    pub peer: Identity,
    pub channel: String,
}

/// An open's body: the peer (32 bytes), then the channel's name.
pub fn write_channel_open(producer: &mut Producer, open: &ChannelOpen) -> Result<(), Full> {
    producer.try_write(Kind::ChannelOpen, &[&open.peer.0, open.channel.as_bytes()])
}

pub fn read_channel_open(body: &[u8]) -> Option<ChannelOpen> {
    let (peer, channel) = body.split_at_checked(32)?;
    Some(ChannelOpen { peer: Identity(peer.try_into().ok()?), channel: String::from_utf8(channel.to_vec()).ok()? })
}

/// A switch's body: the peer the engine's messages go to by channel from here on (32 bytes).
pub fn write_channel_switch(producer: &mut Producer, peer: &Identity) -> Result<(), Full> {
    producer.try_write(Kind::ChannelSwitch, &[&peer.0])
}

pub fn read_channel_switch(body: &[u8]) -> Option<Identity> {
    Some(Identity(body.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::heap_ring;
    use netmachine_schema::Keypair;

    fn record_of(message: &EngineMessage) -> Vec<u8> {
        let (mut producer, mut consumer) = heap_ring(8192);
        write_message(&mut producer, message).unwrap();
        consumer.peek().unwrap().unwrap().body.to_vec()
    }

    #[test]
    fn messages_and_refusals_round_trip_through_a_ring() {
        let (mut producer, mut consumer) = heap_ring(8192);
        let message = EngineMessage::with_every_field();
        let plain = EngineMessage::new(message.src, Destination::Node(message.src), 1, vec![]);
        write_message(&mut producer, &message).unwrap();
        write_message(&mut producer, &plain).unwrap();
        let refusal = Refusal { id: 42, reason: SendRefusal::NoRoute, detail: "nobody home".into() };
        write_refusal(&mut producer, &refusal).unwrap();

        for expected in [&message, &plain] {
            let record = consumer.peek().unwrap().unwrap();
            assert_eq!(record.kind, Kind::Message);
            assert_eq!(read_message(record.body).unwrap(), *expected);
            consumer.consume();
        }
        let record = consumer.peek().unwrap().unwrap();
        assert_eq!(record.kind, Kind::Refusal);
        assert_eq!(read_refusal(record.body), Some(refusal));
        assert_eq!(read_refusal(b"short"), None);
        consumer.consume();

        let peer = message.src;
        let open = ChannelOpen { peer, channel: "/netmachine-x-chan-a-b".into() };
        write_channel_open(&mut producer, &open).unwrap();
        write_channel_switch(&mut producer, &peer).unwrap();
        let mut next = |kind| {
            let record = consumer.peek().unwrap().unwrap();
            assert_eq!(record.kind, kind);
            let body = record.body.to_vec();
            consumer.consume();
            body
        };
        assert_eq!(read_channel_open(&next(Kind::ChannelOpen)), Some(open));
        assert_eq!(read_channel_switch(&next(Kind::ChannelSwitch)), Some(peer));
        assert_eq!(read_channel_open(&[0; 31]), None);
        assert_eq!(read_channel_open(&[[0; 32].as_slice(), &[0xff]].concat()), None, "a name that is not UTF-8");
        assert_eq!(read_channel_switch(&[0; 31]), None);

        // A delivery stamp is the router's to write: an engine's record with one is refused.
        assert_eq!(read_envelope(&record_of(&message)), Err("a delivery stamp, which only the router writes".to_string()));
        let message = EngineMessage { stamp: None, ..message };
        // The envelope is read in place, and a record forwards as it is.
        let record = record_of(&message);
        let envelope = read_envelope(&record).unwrap();
        assert_eq!(envelope, Envelope { src: message.src, dst: message.dst, id: message.id, expiry: message.expiry, body_len: 4, signed: true });
        let (mut into, mut out) = heap_ring(8192);
        forward(&mut into, &record, &envelope).unwrap();
        assert_eq!(read_message(out.peek().unwrap().unwrap().body).unwrap(), message);
        out.consume();

        // A sender that rewrites `src` after the check does not get it through.
        let mut rewritten = record.clone();
        rewritten[SRC_AT..DST_AT].copy_from_slice(&[7; 32]);
        rewritten[ID_AT..REPLY_TO_AT].copy_from_slice(&1u64.to_le_bytes());
        forward(&mut into, &rewritten, &envelope).unwrap();
        let copied = read_message(out.peek().unwrap().unwrap().body).unwrap();
        assert_eq!((copied.src, copied.id), (message.src, message.id), "nor an id (an event's sequence)");
    }

    #[test]
    fn bodies_written_as_a_batch_read_back_as_the_template_with_their_own_ids_as_room_allows() {
        let (mut producer, mut consumer) = heap_ring(1024);
        let (src, dst) = (Keypair::generate().identity(), Keypair::generate().identity());
        let template = EngineMessage::new(src, Destination::Engine(dst), 0, vec![]);
        let bodies: Vec<Vec<u8>> = (0..10u8).map(|n| vec![n; 100]).collect();
        let bodies: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        // Records of 8 + 104 + 100 bytes, padded to 216: four fit in 1024 bytes.
        let mut written = write_bodies(&mut producer, &template, 40, &bodies);
        assert_eq!(written, 4);
        let mut read = 0;
        while read < bodies.len() {
            while let Some(record) = consumer.peek().unwrap() {
                let view = read_view(record.body).unwrap();
                assert!(view.is_plain());
                assert_eq!(view.to_message(), EngineMessage { id: 40 + read as u64, body: bodies[read].to_vec(), ..template.clone() });
                consumer.consume();
                read += 1;
            }
            assert_eq!(read, written, "every record written is read, no more");
            written += write_bodies(&mut producer, &template, 40 + written as u64, &bodies[written..]);
        }
        assert_eq!(written, bodies.len());
    }

    fn messages_of(run: &Run) -> Vec<EngineMessage> {
        run.messages().map(|view| view.to_message()).collect()
    }

    #[test]
    fn bodies_written_as_runs_read_back_as_the_template_with_their_own_ids_in_runs_of_bounded_size() {
        let (mut producer, mut consumer) = heap_ring(1 << 16);
        let (src, dst) = (Keypair::generate().identity(), Keypair::generate().identity());
        let template = EngineMessage { protocol: "chat".into(), ordered: true, ..EngineMessage::new(src, Destination::Engine(dst), 0, vec![]) };
        // 64-byte bodies, then one longer than a run's bytes (alone in a run of its own), then
        // bodies of every length up to 300, the empty one included.
        let mut bodies: Vec<Vec<u8>> = (0..150u32).map(|n| vec![n as u8; 64]).collect();
        bodies.push(vec![0xee; RUN_BYTES + 1]);
        bodies.extend((0..300u32).map(|n| vec![n as u8; n as usize]));
        let bodies: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        let mut written = write_runs(&mut producer, &template, 1000, &bodies);
        let (mut read, mut runs) = (0, 0);
        while read < bodies.len() {
            while let Some(record) = consumer.peek().unwrap() {
                // A message alone goes as a message record.
                let messages = match record.kind {
                    Kind::Run => {
                        let run = read_run(record.body).unwrap();
                        assert!(run.count() > 1 && run.count() <= RUN_MESSAGES && record.body.len() <= RUN_BYTES, "a run of {} in {} bytes", run.count(), record.body.len());
                        messages_of(&run)
                    }
                    kind => {
                        assert_eq!((kind, bodies[read].len()), (Kind::Message, RUN_BYTES + 1), "only the body too long for a run goes alone");
                        vec![read_message(record.body).unwrap()]
                    }
                };
                for message in messages {
                    assert_eq!(message, EngineMessage { id: 1000 + read as u64, body: bodies[read].to_vec(), ..template.clone() }, "message {read}");
                    read += 1;
                }
                consumer.consume();
                runs += 1;
            }
            assert_eq!(read, written, "every message written is read, no more");
            written += write_runs(&mut producer, &template, 1000 + written as u64, &bodies[written..]);
        }
        assert_eq!(written, bodies.len());
        // 150 in runs of 64, the long one alone, then the rest a run at a time.
        assert!(runs >= 3 + 1 + 300 / RUN_MESSAGES, "{runs} runs");
        // A ring with no room for even one body writes none.
        let (mut full, _keep) = heap_ring(4096);
        while full.try_write(Kind::Refusal, &[&[0; 100]]).is_ok() {}
        assert_eq!(write_runs(&mut full, &template, 0, &bodies[..1]), 0);
    }

    #[test]
    fn a_run_that_breaks_the_rules_is_refused_with_its_reason() {
        let (src, dst) = (Keypair::generate().identity(), Keypair::generate().identity());
        let template = EngineMessage { protocol: "chat".into(), ..EngineMessage::new(src, Destination::Engine(dst), 5, vec![]) };
        let run_of = |template: &EngineMessage, bodies: &[&[u8]]| {
            let (mut producer, mut consumer) = heap_ring(8192);
            assert_eq!(write_runs(&mut producer, template, template.id, bodies), bodies.len());
            consumer.peek().unwrap().unwrap().body.to_vec()
        };
        let valid = run_of(&template, &[b"one", b"two"]);
        assert_eq!(messages_of(&read_run(&valid).unwrap()).iter().map(|m| (m.id, m.body.clone())).collect::<Vec<_>>(), [(5, b"one".to_vec()), (6, b"two".to_vec())]);
        let with = |at: usize, value: &[u8]| {
            let mut run = valid.clone();
            run[at..at + value.len()].copy_from_slice(value);
            run
        };
        let in_head = |at: usize| RUN_HEAD + at;
        let cases: [(Vec<u8>, &str); 10] = [
            (valid[..RUN_HEAD + MESSAGE_HEAD - 1].to_vec(), "shorter than its head"),
            (with(0, &0u32.to_le_bytes()), "a run of no messages"),
            (with(0, &3u32.to_le_bytes()), "do not fill"),
            (with(0, &1u32.to_le_bytes()), "do not fill"),
            (with(0, &9999u32.to_le_bytes()), "lengths run past the record"),
            (valid[..valid.len() - 1].to_vec(), "bodies of 6 bytes in all do not fill its 5 bytes"),
            (with(in_head(FLAGS_AT), &HAS_EXPIRY.to_le_bytes()), "only plain messages to an engine"),
            (with(in_head(DST_KIND_AT), &[DST_TOPIC]), "only plain messages to an engine"),
            (with(in_head(BODY_LENGTH_AT), &1u32.to_le_bytes()), "do not add up"),
            (with(in_head(MESSAGE_HEAD), &[0xff]), "not UTF-8"),
        ];
        for (run, reason) in cases {
            let error = read_run(&run).err().unwrap_or_else(|| panic!("accepted a run that should fail with {reason:?}"));
            assert!(error.contains(reason), "{error:?} does not say {reason:?}");
        }
        // Random damage never panics, and whatever reads carries as many messages as it says.
        let mut state = 0x5eed_u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut run = valid.clone();
            let at = (state % run.len() as u64) as usize;
            run[at] = (state >> 32) as u8;
            run.truncate(((state >> 40) % (run.len() as u64 + 1)) as usize);
            if let Ok(read) = read_run(&run) {
                assert_eq!(read.messages().count(), read.count());
            }
        }
    }

    #[test]
    fn the_plain_reading_takes_only_a_plain_message_between_the_two_engines_and_reads_it_as_the_full_one() {
        let (src, dst) = (Keypair::generate().identity(), Keypair::generate().identity());
        let plain = EngineMessage { protocol: "chat".into(), ordered: true, encrypted: true, ..EngineMessage::new(src, Destination::Engine(dst), 9, b"hi".to_vec()) };
        let record = record_of(&plain);
        let mut reader = PlainReader::new(&src, &dst);
        assert_eq!(reader.read(&record), Some(read_view(&record).unwrap()));
        assert_eq!(reader.read(&record).unwrap().to_message(), plain);
        let other_protocol = record_of(&EngineMessage { protocol: "chess".into(), ..plain.clone() });
        assert_eq!(reader.read(&other_protocol).unwrap().protocol, "chess", "a protocol that changes is read anew");
        // Anything else is left to the full reading, which takes it or says why not.
        let other = Keypair::generate().identity();
        let unplain = [
            EngineMessage { reply_to: Some(1), ..plain.clone() },
            EngineMessage { expiry: Some(u64::MAX), ..plain.clone() },
            EngineMessage { sig: Some([1; 64]), ..plain.clone() },
            EngineMessage { stamp: EngineMessage::with_every_field().stamp, ..plain.clone() },
            EngineMessage { src: other, ..plain.clone() },
            EngineMessage { dst: Destination::Engine(other), ..plain.clone() },
            EngineMessage { dst: Destination::Topic(dst), ..plain.clone() },
        ];
        for message in unplain {
            assert_eq!(reader.read(&record_of(&message)), None, "{message:?}");
        }
        let mut broken = record.clone();
        broken[BODY_LENGTH_AT..SIGNATURE_LENGTH_AT].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(reader.read(&broken), None, "lengths that do not add up");
        let mut broken = record.clone();
        broken[MESSAGE_HEAD] = 0xff;
        assert_eq!(reader.read(&broken), None, "a protocol that is not UTF-8");
        let mut broken = record.clone();
        broken[SCOPE_AT] = 9;
        assert_eq!(reader.read(&broken), None, "an unknown scope");
        assert_eq!(reader.read(&record[..MESSAGE_HEAD - 1]), None);
    }

    #[test]
    fn a_malformed_message_record_is_refused_with_its_reason() {
        let valid = record_of(&EngineMessage::with_every_field());
        let broken = |at: usize, value: &[u8]| {
            let mut record = valid.clone();
            record[at..at + value.len()].copy_from_slice(value);
            record
        };
        let cases: [(Vec<u8>, &str); 8] = [
            (valid[..MESSAGE_HEAD - 1].to_vec(), "shorter than its 104-byte head"),
            (valid[..valid.len() - 1].to_vec(), "do not add up"),
            (broken(BODY_LENGTH_AT, &9u32.to_le_bytes()), "do not add up"),
            (broken(SIGNATURE_LENGTH_AT, &10u32.to_le_bytes()), "a signature of 10 bytes"),
            (broken(FLAGS_AT, &0x8000u16.to_le_bytes()), "unknown flags 0x8000"),
            (broken(DST_KIND_AT, &[4]), "unknown destination kind 4"),
            (broken(SCOPE_AT, &[3]), "unknown scope 3"),
            (broken(MESSAGE_HEAD, &[0xff]), "not UTF-8"),
        ];
        assert_eq!(message_id(&cases[2].0), Some(7));
        assert_eq!(message_id(&valid[..REPLY_TO_AT - 1]), None);
        for (record, reason) in cases {
            let error = read_envelope(&record).err().unwrap_or_else(|| panic!("accepted a record that should fail with {reason:?}"));
            assert!(error.contains(reason), "{error:?} does not say {reason:?}");
            assert_eq!(read_message(&record).err(), Some(error));
        }
    }

    #[test]
    fn no_damage_to_a_message_record_makes_a_reader_panic() {
        let valid = record_of(&EngineMessage::with_every_field());
        // xorshift64, seeded: a failure replays.
        let mut state = 0x5eed_u64;
        let mut random = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut record = valid.clone();
            for _ in 0..1 + random() % 4 {
                let at = (random() % record.len() as u64) as usize;
                record[at] = random() as u8;
            }
            record.truncate((random() % (valid.len() as u64 + 1)) as usize);
            if let Ok(message) = read_message(&record) {
                // Whatever is accepted is a message that writes and reads back as itself.
                assert_eq!(read_message(&record_of(&message)).unwrap(), message);
            }
        }
    }

    /// The constants here and the table in RING.md must agree.
    #[test]
    fn the_message_layout_matches_ring_md() {
        let doc = crate::ring::layout::RING_MD;
        let rows = [
            (SRC_AT, "`src`"),
            (DST_AT, "`dst`"),
            (ID_AT, "`id`"),
            (REPLY_TO_AT, "`reply_to`"),
            (EXPIRY_AT, "`expiry`"),
            (DST_KIND_AT, "`dst_kind`"),
            (SCOPE_AT, "`scope`"),
            (FLAGS_AT, "`flags`"),
            (PROTOCOL_LENGTH_AT, "`protocol_length`"),
            (BODY_LENGTH_AT, "`body_length`"),
            (SIGNATURE_LENGTH_AT, "`signature_length`"),
            (MESSAGE_HEAD, "`protocol`"),
        ];
        assert_eq!(crate::ring::layout::rows_missing_from_ring_md(&rows), [], "RING.md has no row for these");
        for (value, name) in [(HAS_REPLY_TO, "reply_to"), (HAS_EXPIRY, "expiry"), (ORDERED, "ordered"), (RELIABLE, "reliable"), (ENCRYPTED, "encrypted")] {
            assert!(doc.contains(&format!("`{value}` {name}")), "RING.md does not give flag {name} as {value}");
        }
        for (value, name) in [(DST_ENGINE, "engine"), (DST_NODE, "node"), (DST_TOPIC, "topic")] {
            assert!(doc.contains(&format!("`{value}` {name}")), "RING.md does not give destination kind {name} as {value}");
        }
        for scope in [Scope::Local, Scope::Domain, Scope::Any] {
            let name = format!("{scope:?}").to_lowercase();
            assert!(doc.contains(&format!("`{}` {name}", scope as u16)), "RING.md does not give scope {name}");
        }
    }
}
