//! The socket path's data streams (ring/RING.md, "Data streams"), from outside: an engine that
//! takes them under its attach ticket writes framed message records and gets an outcome for
//! each, in order, and its messages come on the delivery stream; what the send stream cannot
//! take is refused with the reason and counted, and a frame over the limit closes it. (The SDK's
//! engines on the socket path take the streams at attach: every test of the socket path uses
//! them.)

use netmachine_engine::ring::{handoff_socket, records, Claim, Request};
use netmachine_engine::send_stream::{read_outcome, send_frame, SEND};
use netmachine_engine::{Destination, EngineError, EngineMessage, SendRefusal};
use netmachine_schema::{time::now_ms, EngineLocation, Keypair};
use netmachine_service::ServiceKind;
use netmachine_tests::{attach_engine, attach_raw_granted, connect, with_rpc, Node};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// The longest any read here waits.
const WAIT: Duration = Duration::from_secs(10);

/// The next frame on `stream` (its read timeout is the deadline); `None` at the end.
fn read_frame(stream: &mut UnixStream) -> Option<Vec<u8>> {
    let mut head = [0u8; 4];
    match stream.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
        Err(e) => panic!("no frame within {WAIT:?}: {e}"),
    }
    let mut frame = vec![0; u32::from_le_bytes(head) as usize];
    stream.read_exact(&mut frame).expect("the rest of the frame");
    Some(frame)
}

fn outcome(stream: &mut UnixStream) -> Result<(), EngineError> {
    read_outcome(&read_frame(stream).expect("an outcome")).expect("an outcome frame")
}

fn refusal(outcome: Result<(), EngineError>) -> (SendRefusal, String) {
    match outcome {
        Err(EngineError::Refused { reason, detail }) => (reason, detail),
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn an_engine_on_its_data_streams_gets_every_outcome_in_order_and_its_messages_and_what_the_stream_cannot_take_is_refused_and_counted() {
    let node = Node::up();
    with_rpc(async {
        let peer = attach_engine(&node, |options| options.ring = false).await;
        let key = Keypair::generate();
        let me = key.identity();
        let router = connect(&node.socket(ServiceKind::Router)).await;
        let inbox = capnp_rpc::new_future_client(std::future::pending());
        let (_session, ticket) = attach_raw_granted(&router, me, &key, |node| EngineLocation::sign(&key, node, now_ms()), inbox).await.expect("attach");
        let claim = Claim { socket: handoff_socket(&node.socket(ServiceKind::Router)), ticket: ticket.expect("a ticket for the data streams") };
        let mut handed = claim.take(Request::Streams).expect("the data streams").into_iter();
        let mut sends = UnixStream::from(handed.next().unwrap().fd);
        let mut deliveries = UnixStream::from(handed.next().unwrap().fd);
        for stream in [&sends, &deliveries] {
            stream.set_read_timeout(Some(WAIT)).unwrap();
        }
        let malformed = node.router_counter("dropped_malformed");

        let to_peer = |id: u64| EngineMessage::new(me, Destination::Engine(peer.identity()), id, format!("to peer {id}").into_bytes());
        let mut frames = Vec::new();
        send_frame(&mut frames, &to_peer(1), true);
        // A kind no engine writes.
        let mut record = Vec::new();
        records::append_message(&mut record, &to_peer(2));
        frames.extend_from_slice(&(1 + record.len() as u32).to_le_bytes());
        frames.push(9);
        frames.extend_from_slice(&record);
        // A record whose lengths do not add up: one byte short.
        frames.extend_from_slice(&(record.len() as u32).to_le_bytes());
        frames.push(SEND);
        frames.extend_from_slice(&record[..record.len() - 1]);
        // The peer's identity as src.
        send_frame(&mut frames, &EngineMessage::new(peer.identity(), Destination::Engine(me), 4, b"forged".to_vec()), true);
        send_frame(&mut frames, &EngineMessage::new(me, Destination::Engine(me), 5, b"to myself".to_vec()), true);
        send_frame(&mut frames, &to_peer(6), false);
        sends.write_all(&frames).unwrap();

        assert!(outcome(&mut sends).is_ok());
        let (reason, detail) = refusal(outcome(&mut sends));
        assert_eq!(reason, SendRefusal::Malformed);
        assert!(detail.contains("unknown kind 9"), "{detail}");
        let (reason, detail) = refusal(outcome(&mut sends));
        assert_eq!(reason, SendRefusal::Malformed);
        assert!(detail.contains("do not add up"), "{detail}");
        assert_eq!(refusal(outcome(&mut sends)).0, SendRefusal::BadSource);
        assert!(outcome(&mut sends).is_ok());
        assert!(outcome(&mut sends).is_ok());
        assert_eq!(node.router_counter("dropped_malformed") - malformed, 3);

        // What was accepted arrived, in order; nothing refused did.
        for id in [1, 6] {
            let message = tokio::time::timeout(WAIT, peer.recv()).await.expect("within the wait").expect("a message");
            assert_eq!((message.id, message.body), (id, format!("to peer {id}").into_bytes()));
        }
        // The engine's own messages come on its delivery stream, as records.
        peer.send(me, b"from peer".to_vec()).await.expect("the peer's send");
        let first = records::read_message(&read_frame(&mut deliveries).expect("a delivery")).expect("a message record");
        assert_eq!((first.src, first.id, first.body.as_slice()), (me, 5, &b"to myself"[..]));
        let second = records::read_message(&read_frame(&mut deliveries).expect("a delivery")).expect("a message record");
        assert_eq!((second.src, second.body.as_slice()), (peer.identity(), &b"from peer"[..]));

        // A frame longer than any message may be: the router counts it and closes the stream.
        let over_limit = node.router_counter("dropped_over_limit");
        sends.write_all(&(u32::MAX).to_le_bytes()).unwrap();
        assert!(read_frame(&mut sends).is_none(), "the send stream stayed open after a frame over the limit");
        assert_eq!(node.router_counter("dropped_over_limit") - over_limit, 1);
    });
}

#[test]
fn a_router_without_a_handoff_socket_grants_no_ticket_and_socket_engines_go_on_over_rpc() {
    let node = Node::up_with(&["router.ring_bytes=0"]);
    with_rpc(async {
        let key = Keypair::generate();
        let router = connect(&node.socket(ServiceKind::Router)).await;
        let inbox = capnp_rpc::new_future_client(std::future::pending());
        let (_session, ticket) = attach_raw_granted(&router, key.identity(), &key, |node| EngineLocation::sign(&key, node, now_ms()), inbox).await.expect("attach");
        assert_eq!(ticket, None);
        let (a, b) = (attach_engine(&node, |_| {}).await, attach_engine(&node, |_| {}).await);
        a.send(b.identity(), b"over rpc".to_vec()).await.expect("send");
        let message = tokio::time::timeout(WAIT, b.recv()).await.expect("within the wait").expect("a message");
        assert_eq!(message.body, b"over rpc");
    });
}
