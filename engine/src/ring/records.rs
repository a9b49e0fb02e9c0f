//! What the records carry (RING.md, "Records"): a message record's body is a Cap'n Proto
//! EngineMessage, read in place; a refusal record's body is the refused message's id, a reason
//! code and a sentence.

use super::layout::Kind;
use super::spsc::{Full, Producer};
use netmachine_schema::message_capnp::engine_message;
use netmachine_schema::router_capnp::SendRefusal;
use netmachine_schema::{Destination, EngineMessage, Identity};

/// A message the router could not route, as it tells the sending engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub id: u64,
    pub reason: SendRefusal,
    pub detail: String,
}

/// Words for a builder that holds `message` in one segment: its fixed part (every pointer and
/// identity) plus its variable-length fields. Sized so that a small message does not pay for
/// the default 8 KiB first segment.
fn words_for(message: &EngineMessage) -> u32 {
    (48 + (message.body.len() + message.protocol.len()).div_ceil(8)) as u32
}

/// Writes `message` as one record, serialized straight into the ring.
pub fn write_message(producer: &mut Producer, message: &EngineMessage) -> Result<(), Full> {
    let allocator = capnp::message::HeapAllocator::new().first_segment_words(words_for(message));
    let mut builder = capnp::message::Builder::new(allocator);
    message.write(builder.init_root());
    let length = capnp::serialize::compute_serialized_size_in_words(&builder) * 8;
    producer.try_write(Kind::Message, length, |mut body| {
        // Writing into a slice of exactly the computed size cannot fail.
        let _ = capnp::serialize::write_message(&mut body, &builder);
    })
}

/// Reads a message record's body in place (bounded like every other read).
pub fn read_message(body: &[u8], word_limit: usize) -> Result<EngineMessage, String> {
    let options = netmachine_service::rpc::reader_options(word_limit);
    let reader = capnp::serialize::read_message_from_flat_slice(&mut &body[..], options).map_err(|e| e.to_string())?;
    let root = reader.get_root::<engine_message::Reader>().map_err(|e| e.to_string())?;
    EngineMessage::read(root).map_err(|e| e.to_string())
}

/// What routing needs of a message record, read in place: no copy of the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub src: Identity,
    pub dst: Destination,
    pub expiry: Option<u64>,
    pub body_len: usize,
}

/// Reads a message record's envelope; errors (including v2 destinations) mean "take the slow
/// path", which reads the whole message and says what is wrong.
pub fn read_envelope(body: &[u8], word_limit: usize) -> Result<Envelope, String> {
    use netmachine_schema::message_capnp::destination;
    let options = netmachine_service::rpc::reader_options(word_limit);
    let reader = capnp::serialize::read_message_from_flat_slice(&mut &body[..], options).map_err(|e| e.to_string())?;
    let message = reader.get_root::<engine_message::Reader>().map_err(|e| e.to_string())?;
    let identity = |field, bytes: capnp::Result<&[u8]>| -> Result<Identity, String> {
        Identity::from_slice(field, bytes.map_err(|e| e.to_string())?).map_err(|e| e.to_string())
    };
    let dst = match message.get_dst().map_err(|e| e.to_string())?.which().map_err(|e| e.to_string())? {
        destination::Engine(id) => Destination::Engine(identity("dst", id)?),
        destination::Node(id) => Destination::Node(identity("dst", id)?),
        destination::Topic(id) => Destination::Topic(identity("dst", id)?),
        _ => return Err("a v2 destination".into()),
    };
    let expiry = match message.get_expiry().which().map_err(|e| e.to_string())? {
        engine_message::expiry::Never(()) => None,
        engine_message::expiry::At(at) => Some(at),
    };
    Ok(Envelope {
        src: identity("src", message.get_src())?,
        dst,
        expiry,
        body_len: message.get_body().map_err(|e| e.to_string())?.len(),
    })
}

/// Copies a message record's body, as it is, into another ring.
pub fn forward(producer: &mut Producer, body: &[u8]) -> Result<(), Full> {
    producer.try_write(Kind::Message, body.len(), |into| into.copy_from_slice(body))
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
        _ => return None,
    })
}

pub fn write_refusal(producer: &mut Producer, refusal: &Refusal) -> Result<(), Full> {
    let detail = refusal.detail.as_bytes();
    producer.try_write(Kind::Refusal, 12 + detail.len(), |body| {
        body[..8].copy_from_slice(&refusal.id.to_le_bytes());
        body[8..12].copy_from_slice(&reason_code(refusal.reason).to_le_bytes());
        body[12..].copy_from_slice(detail);
    })
}

pub fn read_refusal(body: &[u8]) -> Option<Refusal> {
    let id = u64::from_le_bytes(body.get(..8)?.try_into().ok()?);
    let reason = reason_of(u32::from_le_bytes(body.get(8..12)?.try_into().ok()?))?;
    Some(Refusal { id, reason, detail: String::from_utf8_lossy(&body[12..]).into_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::spsc::tests::HeapRing;
    use crate::ring::spsc::Consumer;
    use netmachine_schema::Keypair;

    #[test]
    fn messages_and_refusals_round_trip_through_a_ring() {
        let mut ring = HeapRing::new(8192);
        let (mut producer, mut consumer) = (Producer::new(ring.memory()), Consumer::new(ring.memory()));
        let key = Keypair::generate();
        let mut message = EngineMessage::new(key.identity(), Destination::Engine(key.identity()), 42, b"in place".to_vec());
        message.reply_to = Some(7);
        write_message(&mut producer, &message).unwrap();
        let refusal = Refusal { id: 42, reason: SendRefusal::NoRoute, detail: "nobody home".into() };
        write_refusal(&mut producer, &refusal).unwrap();

        let record = consumer.peek().unwrap().unwrap();
        assert_eq!(record.kind, Kind::Message);
        assert_eq!(read_message(record.body, 1 << 16).unwrap(), message);
        consumer.consume();
        let record = consumer.peek().unwrap().unwrap();
        assert_eq!(record.kind, Kind::Refusal);
        assert_eq!(read_refusal(record.body), Some(refusal));
        assert!(read_message(b"12345678", 1 << 16).is_err());

        // The builder is sized to fit a message in one segment.
        let mut sized = capnp::message::Builder::new(capnp::message::HeapAllocator::new().first_segment_words(words_for(&message)));
        message.write(sized.init_root());
        assert_eq!(sized.get_segments_for_output().len(), 1);

        // The envelope is read in place, and a record forwards as it is.
        let mut ring = HeapRing::new(8192);
        let (mut producer, mut consumer) = (Producer::new(ring.memory()), Consumer::new(ring.memory()));
        message.expiry = Some(99);
        write_message(&mut producer, &message).unwrap();
        let record = consumer.peek().unwrap().unwrap();
        let envelope = read_envelope(record.body, 1 << 16).unwrap();
        assert_eq!(envelope, Envelope { src: key.identity(), dst: message.dst, expiry: Some(99), body_len: 8 });
        let mut other = HeapRing::new(8192);
        let (mut into, mut out) = (Producer::new(other.memory()), Consumer::new(other.memory()));
        forward(&mut into, record.body).unwrap();
        assert_eq!(read_message(out.peek().unwrap().unwrap().body, 1 << 16).unwrap(), message);
        assert_eq!(read_refusal(b"short"), None);
    }
}
