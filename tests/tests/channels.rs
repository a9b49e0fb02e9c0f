//! Direct channels between ring engines, across processes: a steady conversation moves to a
//! ring of its own without losing its order, keeps flowing while the router is frozen or
//! killed (and the next router adopts the channel), is revoked when the receiver dies (the
//! sender is told no route through the router again), fills when the receiver stops reading
//! (the sender is refused QueueFull, saying so), and a record forged into a channel is dropped
//! by the receiver and counted.

use netmachine_engine::ring::{self, ChannelSegment, Doorbell};
use netmachine_engine::{Destination, Engine, EngineError, EngineMessage, Identity, Keypair, SendRefusal};
use netmachine_service::ServiceKind;
use netmachine_tests::{attach_engine, sequence, wait_until, with_rpc, Node};
use nix::sys::signal::Signal;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// Sends numbered messages from `from` to `to` until the router reports that some went by
/// their direct channel; returns how many it sent.
async fn send_until_on_channel(node: &Node, from: &Engine, to: Identity) -> u32 {
    let mut sent = 0u32;
    let deadline = tokio::time::Instant::now() + WAIT;
    while node.router_counter("channel_messages") == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no channel after {sent} messages: {}", node.service(ServiceKind::Router));
        for _ in 0..20 {
            from.send(to, sent.to_le_bytes().to_vec()).await.expect("sent");
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sent
}

/// Receives `count` messages and checks they are numbered from `first` on, in order.
async fn receive_in_order(engine: &Engine, first: u32, count: u32) {
    for n in first..first + count {
        let message = tokio::time::timeout(WAIT, engine.recv()).await.unwrap_or_else(|_| panic!("message {n} never arrived")).expect("attached");
        assert_eq!(message.body, n.to_le_bytes(), "message {n} out of order");
    }
}

#[test]
fn a_steady_conversation_moves_to_a_direct_channel_in_order_and_the_router_counts_it() {
    let node = Node::up();
    with_rpc(async {
        let (a, b) = (attach_engine(&node, |_| {}).await, attach_engine(&node, |_| {}).await);
        let before = send_until_on_channel(&node, &a, b.identity()).await;
        for n in before..before + 1000 {
            a.send(b.identity(), n.to_le_bytes().to_vec()).await.expect("sent");
        }
        // Everything, through the router first and then by channel, in one order.
        receive_in_order(&b, 0, before + 1000).await;
        let router = node.service(ServiceKind::Router);
        let (forwarded, by_channel) = (router["counters"]["ring_messages_forwarded"].as_u64().unwrap(), router["counters"]["channel_messages"].as_u64().unwrap());
        assert_eq!(forwarded + by_channel, u64::from(before) + 1000, "each message went one way: {router}");
        assert!(by_channel >= 1000, "{router}");
        assert_eq!(router["gauges"]["direct_channels"], 1);
    });
}

#[test]
fn a_direct_channel_carries_messages_while_the_router_is_frozen_and_after_it_is_killed() {
    let node = Node::up_with(&["supervisor.restart_max_ms=200"]);
    with_rpc(async {
        let (a, b) = (attach_engine(&node, |_| {}).await, attach_engine(&node, |_| {}).await);
        let mut next = send_until_on_channel(&node, &a, b.identity()).await;
        receive_in_order(&b, 0, next).await;
        // The router can do nothing while it is stopped: the channel needs no third party.
        let router = node.signal(ServiceKind::Router, Signal::SIGSTOP);
        for n in next..next + 500 {
            a.send(b.identity(), n.to_le_bytes().to_vec()).await.expect("sent by channel");
        }
        receive_in_order(&b, next, 500).await;
        next += 500;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(router as i32), Signal::SIGCONT).expect("continue the router");
        // Killed, the router is started again and adopts the channel of the two live engines.
        node.kill9(ServiceKind::Router);
        for n in next..next + 500 {
            a.send(b.identity(), n.to_le_bytes().to_vec()).await.expect("sent by channel");
        }
        receive_in_order(&b, next, 500).await;
        wait_until("the new router adopts the channel", WAIT, || {
            node.pid(ServiceKind::Router).is_some_and(|p| p != router) && node.service(ServiceKind::Router)["gauges"]["direct_channels"] == 1
        });
        // The adopted channel's count has at least the thousand sent by channel meanwhile.
        assert!(node.router_counter("channel_messages") >= 1000, "{}", node.service(ServiceKind::Router));
    });
}

#[test]
fn a_receiver_killed_on_a_channel_revokes_it_and_the_sender_is_told_no_route() {
    let node = Node::up();
    let (key, receiver) = node.engine_key("receiver");
    let mut receiving = sequence(&node, &["receive", key.to_str().unwrap(), "1000000"]);
    node.wait_attached(&receiver);
    let receiver: Identity = receiver.parse().unwrap();
    with_rpc(async {
        let sender = attach_engine(&node, |_| {}).await;
        send_until_on_channel(&node, &sender, receiver).await;
        receiving.kill().unwrap();
        receiving.wait().unwrap();
        wait_until("the router revokes the dead receiver's channel", WAIT, || node.service(ServiceKind::Router)["gauges"]["direct_channels"] == 0);
        // The sender goes back to the router, which knows the receiver is gone.
        match sender.request(receiver, b"anyone?".to_vec(), WAIT).await {
            Err(EngineError::Refused { reason: SendRefusal::NoRoute, .. }) => {}
            other => panic!("a message to a dead receiver is refused with no route, not {other:?}"),
        }
    });
}

#[test]
fn records_and_runs_forged_into_a_channel_are_dropped_and_counted_and_a_true_one_arrives() {
    let node = Node::up();
    let node_id: Identity = node.id().parse().unwrap();
    with_rpc(async {
        let (a, b) = (std::sync::Arc::new(attach_engine(&node, |_| {}).await), attach_engine(&node, |_| {}).await);
        let sent = send_until_on_channel(&node, &a, b.identity()).await;
        receive_in_order(&b, 0, sent).await;
        // A batch goes by the channel as runs, which `recv` takes one message at a time.
        let (sender, to_b) = (a.clone(), b.identity());
        let first = tokio::task::spawn_blocking(move || {
            let bodies: Vec<[u8; 4]> = (sent..sent + 150).map(u32::to_le_bytes).collect();
            sender.send_all_blocking(to_b, &bodies.iter().map(|b| b.as_slice()).collect::<Vec<_>>()).expect("sent")
        });
        let first = tokio::time::timeout(WAIT, first).await.expect("the batch is sent").expect("its thread");
        for n in 0..150 {
            let message = tokio::time::timeout(WAIT, b.recv()).await.unwrap_or_else(|_| panic!("message {n} of the batch never arrived")).expect("attached");
            assert_eq!((message.id, message.body), (first + u64::from(n), (sent + n).to_le_bytes().to_vec()), "message {n} of the batch");
        }
        // Another process of the node's user maps the channel and writes into it: a record in
        // a third engine's name, one in A's name with a signature that is not A's, a run of
        // three in a third engine's name, a run that cannot be read, then one A could have
        // written.
        let channel = ChannelSegment::open(&ring::channel_name(&node_id.0, &a.identity().0, &b.identity().0), None, None).expect("the channel");
        let mut forger = channel.producer_side().expect("a producer of its own mapping");
        let to = Destination::Engine(b.identity());
        let stranger = EngineMessage::new(Keypair::generate().identity(), to, 1, b"not from a".to_vec());
        let mut unsigned_by_a = EngineMessage::new(a.identity(), to, 2, b"forged signature".to_vec());
        unsigned_by_a.sig = Some([7; 64]);
        let true_one = EngineMessage::new(a.identity(), to, 3, b"true".to_vec());
        for message in [&stranger, &unsigned_by_a] {
            ring::records::write_message(&mut forger, message).expect("room");
        }
        let bodies: [&[u8]; 3] = [b"x", b"y", b"z"];
        assert_eq!(ring::records::write_runs(&mut forger, &EngineMessage { body: vec![], ..stranger.clone() }, 10, &bodies), 3);
        forger.try_write(ring::layout::Kind::Run, &[&2u32.to_le_bytes(), &[0; 60]]).expect("room");
        ring::records::write_message(&mut forger, &true_one).expect("room");
        let bell = Doorbell::open(&ring::bell_name(&node_id.0, &b.identity().0)).expect("B's doorbell");
        ring::wait::wake_if_sleeping(bell.sleeping());
        let message = tokio::time::timeout(WAIT, b.recv()).await.expect("the true one arrives").expect("attached");
        assert_eq!(message.body, b"true");
        // Two records, the run's three messages, and the unreadable run as one.
        wait_until("every forged message is counted", WAIT, || node.router_counter("channel_messages_dropped") == 6);
    });
}

#[test]
fn a_sender_whose_receiver_stops_reading_its_channel_is_refused_queue_full_with_the_reason() {
    let node = Node::up();
    with_rpc(async {
        let sender = attach_engine(&node, |o| o.send_timeout = Duration::from_millis(500)).await;
        // Reads only when asked to, on the calling thread: once it stops, nothing drains its rings.
        let receiver = attach_engine(&node, |o| o.receiver = netmachine_engine::Receiver::CallingThread).await;
        let (to, mut sent) = (receiver.identity(), 0u32);
        let mut receiving = tokio::task::spawn_blocking(move || {
            while receiver.recv_blocking().is_some_and(|m| m.body != b"stop") {}
            receiver
        });
        send_until_on_channel(&node, &sender, to).await;
        sender.send(to, b"stop".to_vec()).await.expect("sent");
        let receiver = tokio::time::timeout(WAIT, &mut receiving).await.expect("the receiver stops").expect("its thread");
        // Its channel fills; then a send waits out its timeout and is told why.
        let refused = loop {
            match sender.send(to, sent.to_le_bytes().to_vec()).await {
                Ok(_) => sent += 1,
                Err(error) => break error,
            }
            assert!(sent < 1_000_000, "a channel that nobody reads never filled");
        };
        match refused {
            EngineError::Refused { reason: SendRefusal::QueueFull, detail } => assert!(detail.contains("direct channel"), "{detail}"),
            other => panic!("a send to a receiver that does not read is refused QueueFull, not {other:?}"),
        }
        drop(receiver);
    });
}

#[test]
fn batches_sent_with_send_all_and_taken_with_poll_arrive_whole_in_order_and_a_forged_record_after_them_is_dropped() {
    let node = Node::up();
    let node_id: Identity = node.id().parse().unwrap();
    with_rpc(async {
        let a = std::sync::Arc::new(attach_engine(&node, |_| {}).await);
        let b = attach_engine(&node, |o| o.receiver = netmachine_engine::Receiver::CallingThread).await;
        let (from, to) = (a.identity(), b.identity());
        // B takes what comes with poll on a thread of its own, as a stream reader would, up to
        // the last message.
        let receiving = tokio::task::spawn_blocking(move || {
            let (mut got, deadline) = (Vec::new(), std::time::Instant::now() + 3 * WAIT);
            while got.last().is_none_or(|(_, _, body): &(Identity, u64, Vec<u8>)| body != b"true") && std::time::Instant::now() < deadline {
                b.poll_blocking(100, WAIT, |m| got.push((m.src, m.id, m.body.to_vec()))).expect("attached");
            }
            got
        });
        let before = send_until_on_channel(&node, &a, to).await;
        const BATCHES: u32 = 40;
        let sender = a.clone();
        let firsts = tokio::task::spawn_blocking(move || {
            (0..BATCHES)
                .map(|batch| {
                    let bodies: Vec<[u8; 4]> = (batch * 64..(batch + 1) * 64).map(u32::to_le_bytes).collect();
                    let bodies: Vec<&[u8]> = bodies.iter().map(|b| b.as_slice()).collect();
                    sender.send_all_blocking(to, &bodies).expect("sent")
                })
                .collect::<Vec<u64>>()
        });
        let firsts = tokio::time::timeout(WAIT, firsts).await.expect("the batches are sent").expect("its thread");
        // After them, another process of the node's user writes into the channel: a record in
        // a stranger's name (dropped, counted), then one A could have written.
        wait_until("the batches are read", WAIT, || {
            node.router_counter("channel_messages") + node.router_counter("ring_messages_forwarded") == u64::from(before + BATCHES * 64)
        });
        let channel = ChannelSegment::open(&ring::channel_name(&node_id.0, &from.0, &to.0), None, None).expect("the channel");
        let mut forger = channel.producer_side().expect("a producer of its own mapping");
        let stranger = EngineMessage::new(Keypair::generate().identity(), Destination::Engine(to), 1, b"not from a".to_vec());
        let true_one = EngineMessage::new(from, Destination::Engine(to), 2, b"true".to_vec());
        for message in [&stranger, &true_one] {
            ring::records::write_message(&mut forger, message).expect("room");
        }
        ring::wait::wake_if_sleeping(Doorbell::open(&ring::bell_name(&node_id.0, &to.0)).expect("B's doorbell").sleeping());
        let got = tokio::time::timeout(WAIT, receiving).await.expect("the last message arrives").expect("its thread");
        // What went before the channel (numbered from 0), then every body of the batches once,
        // in order, each id one after its batch's first, then the true one.
        let (early, got) = got.split_at(got.len().saturating_sub((BATCHES * 64) as usize + 1));
        let early: Vec<&[u8]> = early.iter().map(|(_, _, body)| body.as_slice()).collect();
        assert_eq!(early, (0..before).map(u32::to_le_bytes).collect::<Vec<_>>(), "the messages sent one by one, in order");
        let mut want: Vec<_> = (0..BATCHES * 64).map(|n| (from, firsts[(n / 64) as usize] + u64::from(n % 64), n.to_le_bytes().to_vec())).collect();
        want.push((from, 2, b"true".to_vec()));
        assert_eq!(got.len(), want.len());
        if let Some(at) = (0..want.len()).find(|&at| got[at] != want[at]) {
            panic!("message {at} is {:?}, not {:?}", got[at], want[at]);
        }
        wait_until("the forged record is counted", WAIT, || node.router_counter("channel_messages_dropped") == 1);
    });
}

#[test]
fn a_batch_with_a_body_over_the_node_limit_is_refused_whole_and_nothing_of_it_arrives() {
    let node = Node::up();
    with_rpc(async {
        let (a, b) = (attach_engine(&node, |_| {}).await, attach_engine(&node, |_| {}).await);
        let over = vec![0; a.max_message_bytes() + 1];
        match a.send_all_blocking(b.identity(), &[b"fits", &over]) {
            Err(EngineError::TooLarge { len, max }) => assert_eq!((len, max), (over.len(), a.max_message_bytes())),
            other => panic!("a batch with a body over the limit is refused TooLarge, not {other:?}"),
        }
        let none: &[&[u8]] = &[];
        a.send_all_blocking(b.identity(), none).expect("an empty batch is sent at once");
        a.send(b.identity(), b"after".to_vec()).await.expect("sent");
        let first = tokio::time::timeout(WAIT, b.recv()).await.expect("a message arrives").expect("attached");
        assert_eq!(first.body, b"after", "nothing of the refused batch arrived before it");
    });
}
