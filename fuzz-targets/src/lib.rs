//! Every decoder of bytes that reach a process from outside it, as a function of arbitrary
//! bytes: ring records an engine wrote, P2P frames and the batches inside them, the connect
//! handshake, node and topic adverts, pubsub messages between nodes, block requests and block
//! streams, and the TOML config. Each must return an error for bad input, never panic, hang or
//! allocate without bound; where a decoder has a partner (an encoder, or a check that must
//! catch any change), the target also checks that they agree. `fuzz/` runs these under
//! libFuzzer (`scripts/fuzz`); `tests/corpus.rs` runs the checked-in corpus through them with
//! the ordinary tests.

use netmachine_engine::ring::records;
use netmachine_router::core::frame;
use netmachine_schema::message_capnp::p2_p_frame;
use netmachine_schema::{signing, ContentId, Identity, Keypair, PeerMessage, TopicAdvert};
use netmachine_storage::core::verify::{self, Verifier};
use std::path::Path;
use std::sync::OnceLock;

/// A fuzz target: its name (the corpus folder's) and its function.
pub type Target = (&'static str, fn(&[u8]));

pub const TARGETS: &[Target] = &[
    ("ring_record", ring_record),
    ("p2p_frame", p2p_frame),
    ("p2p_batch", p2p_batch),
    ("handshake", handshake),
    ("node_advert", node_advert),
    ("topic_advert", topic_advert),
    ("peer_message", peer_message),
    ("block_request", block_request),
    ("block_stream", block_stream),
    ("config", config),
];

/// The largest frame or message a decoder is given, as a node's defaults allow.
const MAX_BYTES: usize = 4 << 20;

/// Two nodes' keys, the same in every run: `a` sends, `b` receives.
fn nodes() -> &'static (Keypair, Keypair) {
    static NODES: OnceLock<(Keypair, Keypair)> = OnceLock::new();
    NODES.get_or_init(|| (Keypair::from_seed([1; 32]), Keypair::from_seed([2; 32])))
}

/// A message record from an engine's ring: the in-place check and the full read agree; as a
/// run, it carries the messages it counts.
pub fn ring_record(data: &[u8]) {
    let envelope = records::read_envelope(data);
    let message = records::read_message(data);
    match (&envelope, &message) {
        (Ok(envelope), Ok(message)) => {
            assert_eq!((envelope.src, envelope.dst, envelope.id, envelope.expiry), (message.src, message.dst, message.id, message.expiry));
            assert_eq!(envelope.body_len, message.body.len());
        }
        (Err(_), Err(_)) => {}
        // A delivery stamp: read in an inbox, refused from an engine's outbox.
        (Err(_), Ok(message)) if message.stamp.is_some() => {}
        _ => panic!("the envelope check and the full read disagree: {envelope:?} / {message:?}"),
    }
    let _ = records::message_id(data);
    let _ = records::read_refusal(data);
    // The same bytes as a run's body: one that reads carries as many messages as it says.
    if let Ok(run) = records::read_run(data) {
        assert_eq!(run.messages().count(), run.count(), "a run read with {} messages", run.count());
    }
}

/// A P2P frame as node `a`'s transport hands it to `b`'s router, signatures and all.
pub fn p2p_frame(data: &[u8]) {
    let (a, b) = nodes();
    if let Ok(opened) = frame::open(b.identity(), a.identity(), data, MAX_BYTES / 8) {
        let _ = frame::verify_signatures(opened, true);
    }
}

/// A batch inside a frame correctly signed by node `a`: what a node that holds its key (or a
/// buggy one) could make the receiving router read.
pub fn p2p_batch(data: &[u8]) {
    let (a, b) = nodes();
    let (src, dst) = (a.identity(), b.identity());
    let mut message = capnp::message::Builder::new_default();
    let mut root = message.init_root::<p2_p_frame::Builder>();
    root.set_src(&src.0);
    root.set_dst(&dst.0);
    root.set_batch(data);
    root.set_sig(&a.sign(&signing::p2p_frame(&src, &dst, data)));
    let bytes = capnp::serialize::write_message_to_words(&message);
    if let Ok(opened) = frame::open(dst, src, &bytes, MAX_BYTES / 8) {
        let _ = frame::verify_signatures(opened, false);
    }
}

/// The connect handshake: a dialer's Hello, and the answer a dialer reads.
pub fn handshake(data: &[u8]) {
    let (a, _) = nodes();
    let _ = netmachine_transport::core::handshake::check_hello(a.identity(), data);
    let _ = netmachine_transport::core::handshake::read_answer(data);
}

/// A node advert, as `peer add` and the handshake check it.
pub fn node_advert(data: &[u8]) {
    let (a, _) = nodes();
    let _ = netmachine_transport::core::advert::check_bytes(a.identity(), data);
}

/// A topic advert, as announced by another node and kept by the identity store.
pub fn topic_advert(data: &[u8]) {
    let options = netmachine_service::rpc::reader_options(MAX_BYTES / 8);
    let Ok(message) = capnp::serialize::read_message(&mut &data[..], options) else { return };
    let Ok(reader) = message.get_root::<netmachine_schema::identity_capnp::topic_advert::Reader>() else { return };
    if let Ok(advert) = TopicAdvert::read(reader) {
        let _ = advert.verify();
    }
}

/// A pubsub message between nodes, alone and in a batch: what decodes encodes back to the same.
pub fn peer_message(data: &[u8]) {
    if let Ok(message) = PeerMessage::decode(data, MAX_BYTES) {
        assert_eq!(PeerMessage::decode(&message.encode(), MAX_BYTES).ok(), Some(message), "a decoded message encodes back to itself");
    }
    if let Ok(batch) = PeerMessage::decode_batch(data, MAX_BYTES) {
        assert_eq!(PeerMessage::decode_batch(&PeerMessage::encode_batch(&batch), MAX_BYTES).ok(), Some(batch));
    }
}

/// A block request from another node.
pub fn block_request(data: &[u8]) {
    let _ = netmachine_storage::serving::read_request(data);
}

/// A block stream from a peer: the first two bytes give a block size (up to 64 KiB) and which
/// groups are asked; the rest is XORed onto the honest response. The checker must take the
/// honest response whole and refuse any changed one.
pub fn block_stream(data: &[u8]) {
    let [s0, s1, g, rest @ ..] = data else { return };
    let size = u16::from_le_bytes([*s0, *s1]) as usize;
    let block: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
    let (id, groups) = (ContentId::of(&block), verify::groups(size as u64));
    let first = u64::from(*g) % groups;
    let ranges = verify::group_ranges(first, groups);
    let mut encoded = verify::encode(&block[..], size as u64, &verify::outboard(&block), &ranges).expect("an honest response encodes");
    let mut changed = false;
    for (byte, flip) in encoded.iter_mut().zip(rest) {
        changed |= *flip != 0;
        *byte ^= flip;
    }
    let mut verifier = Verifier::new(id, size as u64, &ranges);
    // Fed in pieces whose sizes come from the input too.
    let mut taken = Vec::new();
    let mut outcome = Ok(());
    let pieces = rest.iter().map(|b| usize::from(*b) * 64 + 1).chain(std::iter::repeat(4096));
    let mut at = 0;
    for piece in pieces {
        let end = (at + piece).min(encoded.len());
        match verifier.feed(&encoded[at..end]) {
            Ok(groups) => taken.extend(groups),
            Err(corrupt) => {
                outcome = Err(corrupt);
                break;
            }
        }
        at = end;
        if at == encoded.len() {
            // The end of the stream (an empty block's one group is empty).
            match verifier.feed(&[]) {
                Ok(groups) => taken.extend(groups),
                Err(corrupt) => outcome = Err(corrupt),
            }
            break;
        }
    }
    match changed {
        true => assert!(outcome.is_err() || !verifier.finished(), "a changed response was taken whole"),
        false => {
            assert!(outcome.is_ok() && verifier.finished(), "the honest response was refused: {outcome:?}");
            let bytes: Vec<u8> = taken.into_iter().flat_map(|(_, bytes)| bytes).collect();
            assert_eq!(bytes, block[(first * verify::GROUP_BYTES) as usize..], "the groups taken are the block's");
        }
    }
}

/// A config file's text.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = netmachine_service::config::Config::parse(text, Path::new("fuzz.toml"), &[]);
    }
}

/// An identity, for seeds.
pub fn node_identity() -> Identity {
    nodes().0.identity()
}
