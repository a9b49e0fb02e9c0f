//! Writes the corpus's seeds: for each target, a few inputs a real peer or user would send
//! (`cargo run -p netmachine-fuzz-targets --example seed-corpus`). libFuzzer grows the corpus
//! from them; `scripts/fuzz` keeps what it found.

use netmachine_router::core::{frame, Ack, Announcement, Header, Outgoing};
use netmachine_schema::{Destination, EngineLocation, EngineMessage, Keypair, PeerMessage, Says, TopicAdvert};
use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let (a, b) = (Keypair::from_seed([1; 32]), Keypair::from_seed([2; 32]));
    let engine = Keypair::from_seed([3; 32]);
    let mut message = EngineMessage::new(engine.identity(), Destination::Engine(engine.identity()), 7, b"hello".to_vec());
    message.expiry = Some(1_900_000_000_000);
    message.reply_to = Some(6);
    message.protocol = "echo".into();
    let advert = TopicAdvert::sign(&Keypair::from_seed([4; 32]), engine.identity(), vec!["news".into()], 5);
    let location = EngineLocation::sign(&engine, a.identity(), 5);
    let announcement = Announcement { full: true, attached: vec![location], detached: vec![b.identity()], topics: vec![advert.clone()] };
    let batch = vec![Outgoing::Engines(announcement), Outgoing::Message(message.clone())];
    let header = Header { session: 9, run: 11, seq: 3, kept_from: 2, ack: Some(Ack { session: 4, through: 10, ranges: vec![(12, 13)], received: 14 }) };
    let sealed = frame::seal(&a, b.identity(), &header, &batch);
    let batch_bytes = {
        let reader = capnp::serialize::read_message(&mut &sealed.bytes[..], Default::default()).expect("a frame just sealed reads back");
        let root = reader.get_root::<netmachine_schema::message_capnp::p2_p_frame::Reader>().expect("a frame just sealed reads back");
        root.get_batch().expect("a frame just sealed has its batch").to_vec()
    };
    let record = ring_record(&message);
    let stamp = netmachine_schema::Stamp { node: a.identity(), session: 9, seq: 3, index: 1 };
    let stamped = ring_record(&EngineMessage { stamp: Some(stamp), ..message.clone() });
    let node_advert = node_advert(&a);
    let hello = netmachine_transport::core::handshake::hello(&node_advert, 0, 1).expect("a hello from a signed advert");
    let accepted = netmachine_transport::core::handshake::accepted(1, &node_advert, 2).expect("an answer from a signed advert");
    let mut topic_advert = capnp::message::Builder::new_default();
    advert.write(topic_advert.init_root());
    let peer = |says| PeerMessage { topic: advert.topic, says };
    let events = PeerMessage::encode_batch(&[peer(Says::Want(3)), peer(Says::Heartbeat(9)), peer(Says::Missing { from: 1, to: 2 })]);
    let request = netmachine_storage::serving::write_request(&netmachine_schema::ContentId::of(b"block"), Some((0, 2)));
    let block_stream = [vec![0x00, 0x50, 1], vec![0x10, 0x00, 0], vec![0x00, 0x50, 2, 0, 0, 7]];
    let seeds: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("ring_record", vec![record, vec![0; 64], stamped]),
        ("p2p_frame", vec![sealed.bytes.clone(), frame::seal(&a, b.identity(), &Header::default(), &[]).bytes]),
        ("p2p_batch", vec![batch_bytes, vec![0; 16]]),
        ("handshake", vec![hello, accepted]),
        ("node_advert", vec![node_advert, vec![0; 8]]),
        ("topic_advert", vec![capnp::serialize::write_message_to_words(&topic_advert), vec![0; 8]]),
        ("peer_message", vec![events, peer(Says::Unwant).encode()]),
        ("block_request", vec![request, vec![0; 8]]),
        ("block_stream", block_stream.to_vec()),
        ("config", vec![b"[router]\nnode_queue = 10\n[transport]\nlisten = [\"127.0.0.1:0\"]\n".to_vec(), b"[limits]\nengine_queue = 0\n".to_vec()]),
    ];
    for (name, inputs) in seeds {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot make {}: {e}", dir.display()));
        for (i, input) in inputs.iter().enumerate() {
            let file = dir.join(format!("seed-{i}"));
            std::fs::write(&file, input).unwrap_or_else(|e| panic!("cannot write {}: {e}", file.display()));
        }
    }
    println!("seeds written under {}", root.display());
}

/// `message` as an engine writes it to its ring.
fn ring_record(message: &EngineMessage) -> Vec<u8> {
    let (mut producer, mut consumer) = netmachine_engine::ring::heap_ring(4096);
    netmachine_engine::ring::records::write_message(&mut producer, message).expect("room in an empty ring");
    let record = consumer.peek().expect("a sound ring").expect("the record written").body.to_vec();
    record
}

/// Node `key`'s advert, signed.
fn node_advert(key: &Keypair) -> Vec<u8> {
    let mut message = capnp::message::Builder::new_default();
    let mut advert = message.init_root::<netmachine_schema::identity_capnp::node_advert::Builder>();
    advert.set_id(&key.identity().0);
    advert.set_version(1);
    let signature = key.sign(&netmachine_schema::signing::node_advert(advert.reborrow_as_reader()).expect("an advert just built reads back"));
    advert.set_sig(&signature);
    capnp::serialize::write_message_to_words(&message)
}
