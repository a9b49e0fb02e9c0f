//! The shared-memory fast path across processes: engines attach through the rings by default,
//! exchange a million messages with none lost or reordered, leave nothing in /dev/shm when
//! killed, lose nothing when the router is killed under traffic, and a corrupt ring costs only
//! its own engine.

use netmachine_service::ServiceKind;
use netmachine_tests::{attach_engine, bin_dir, wait_until, with_rpc, Node};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn sequence(node: &Node, args: &[&str]) -> Child {
    Command::new(bin_dir().join("examples/sequence"))
        .args(args)
        .env("NETMACHINE_HOME", node.root())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the sequence example")
}

fn outcome(child: Child) -> serde_json::Value {
    let output = child.wait_with_output().expect("sequence finishes");
    assert!(output.status.success(), "sequence failed: {output:?}");
    serde_json::from_slice(&output.stdout).expect("sequence prints JSON")
}

/// The ring segments this node has in /dev/shm (not its doorbell).
fn segments(node: &Node) -> Vec<String> {
    let prefix = format!("netmachine-{}-", &node.id()[..16]);
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|f| f.starts_with(&prefix) && !f.ends_with("-doorbell"))
        .collect()
}

#[test]
fn engines_in_separate_processes_exchange_a_million_messages_in_order() {
    let node = Node::up();
    let (receiver_key, receiver) = node.engine_key("receiver");
    let (sender_key, _) = node.engine_key("sender");
    let count = "1000000";
    let receiving = sequence(&node, &["receive", receiver_key.to_str().unwrap(), count]);
    node.wait_attached(&receiver);
    let sending = sequence(&node, &["send", sender_key.to_str().unwrap(), &receiver, count]);
    assert_eq!(outcome(sending)["sent"], 1_000_000);
    let received = outcome(receiving);
    assert_eq!(received["received"], 1_000_000);
    assert_eq!(received["in_order"], true);
    let router = node.service(ServiceKind::Router);
    assert!(router["counters"]["ring_messages_forwarded"].as_u64().unwrap() >= 1_000_000, "{router}");
    assert_eq!(node.status()["drops"]["no_route"], 0);
}

#[test]
fn an_engine_reading_its_ring_on_the_calling_thread_receives_and_requests() {
    let node = Node::up();
    let (answering, asking) = with_rpc(async {
        let calling = |o: &mut netmachine_engine::EngineOptions| o.receiver = netmachine_engine::Receiver::CallingThread;
        (attach_engine(&node, calling).await, attach_engine(&node, calling).await)
    });
    let (answerer, asker) = (answering.identity(), asking.identity());
    let server = std::thread::spawn(move || {
        for _ in 0..100 {
            let request = answering.recv_blocking().expect("a request");
            assert_eq!(request.src, asker);
            answering.reply_blocking(&request, request.body.clone()).expect("answer");
        }
    });
    // A one-way message taken while a request waits is kept for recv_blocking.
    let (noise, _) = with_rpc(async { (attach_engine(&node, |_| {}).await, ()) });
    for n in 0..100u32 {
        if n == 50 {
            with_rpc(noise.send(asker, b"aside".to_vec())).expect("send");
            std::thread::sleep(Duration::from_millis(20));
        }
        let reply = asking.request_blocking(answerer, n.to_le_bytes().to_vec(), Duration::from_secs(10)).expect("reply");
        assert_eq!(reply.body, n.to_le_bytes());
    }
    server.join().unwrap();
    assert_eq!(asking.recv_blocking().expect("the message kept aside").body, b"aside");
}

#[test]
fn a_killed_engine_leaves_nothing_in_shared_memory() {
    let node = Node::up();
    let (key, engine) = node.engine_key("doomed");
    let mut doomed = sequence(&node, &["receive", key.to_str().unwrap(), "10"]);
    node.wait_attached(&engine);
    assert_eq!(segments(&node).len(), 1, "an attached engine has its rings");
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    wait_until("the router detaches the killed engine and removes its rings", Duration::from_secs(10), || {
        segments(&node).is_empty() && node.status()["engines"].as_array().is_some_and(|e| e.is_empty())
    });
}

#[test]
fn a_router_killed_under_traffic_loses_nothing_engines_had_written() {
    let node = Node::up();
    let (receiver_key, receiver) = node.engine_key("receiver");
    let (sender_key, _) = node.engine_key("sender");
    let count = "300000";
    let receiving = sequence(&node, &["receive", receiver_key.to_str().unwrap(), count]);
    node.wait_attached(&receiver);
    let sending = sequence(&node, &["send", sender_key.to_str().unwrap(), &receiver, count]);
    wait_until("traffic flows", Duration::from_secs(20), || node.router_counter("ring_messages_forwarded") > 20_000);
    let killed = node.kill9(ServiceKind::Router);
    wait_until("the router is back", Duration::from_secs(30), || node.pid(ServiceKind::Router).is_some_and(|p| p != killed));
    assert_eq!(outcome(sending)["sent"], 300_000);
    let received = outcome(receiving);
    assert_eq!(received["received"], 300_000, "every message written was delivered");
    assert_eq!(received["in_order"], true);
}

#[test]
fn a_corrupt_ring_detaches_only_its_engine() {
    use netmachine_engine::ring::layout::{OUTBOX_TAIL_AT, HEADER_SIZE};
    let node = Node::up();
    with_rpc(async {
        let victim = attach_engine(&node, |_| {}).await;
        let bystander = attach_engine(&node, |_| {}).await;
        let sender = attach_engine(&node, |_| {}).await;
        assert!(victim.on_ring());
        // Another process scribbles an impossible record into the victim's outbox.
        let node_id: netmachine_engine::Identity = node.id().parse().unwrap();
        let name = netmachine_engine::ring::RingSegment::name_for(&node_id, &victim.identity());
        let file = std::fs::OpenOptions::new().read(true).write(true).open(format!("/dev/shm{name}")).unwrap();
        let bytes = std::os::unix::fs::FileExt::write_at;
        bytes(&file, &[0xff, 0xff, 0xff, 0x7f, 1, 0, 0, 0], HEADER_SIZE as u64).unwrap();
        bytes(&file, &64u64.to_le_bytes(), OUTBOX_TAIL_AT as u64).unwrap();
        // Another engine's message rings the doorbell (the victim's own would overwrite the
        // scribble: its producer does not know of it).
        sender.send(bystander.identity(), b"ring the doorbell".to_vec()).await.unwrap();
        let victim_id = victim.identity().to_string();
        wait_until("the router detaches the engine with the corrupt ring", Duration::from_secs(10), || {
            !node.status()["engines"].as_array().is_some_and(|e| e.iter().any(|e| e == victim_id.as_str()))
        });
        // Everyone else is still served.
        sender.send(bystander.identity(), b"still here".to_vec()).await.unwrap();
        let message = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let message = bystander.recv().await.expect("message");
                if message.body == b"still here" {
                    return message;
                }
            }
        })
        .await
        .expect("the bystander still receives");
        assert_eq!(message.src, sender.identity());
    });
}

#[test]
fn a_message_too_large_for_the_ring_fails_at_once_instead_of_waiting_for_room() {
    // 4 KiB rings take records of at most 2040 bytes; the node takes bodies of up to 1 MiB.
    let node = Node::up_with(&["router.ring_bytes=4096"]);
    let engine = with_rpc(attach_engine(&node, |_| {}));
    assert!(engine.on_ring());
    let peer = engine.identity();
    let sent = engine.send_blocking(peer, vec![0; 4000]);
    assert!(matches!(sent, Err(netmachine_engine::EngineError::TooLargeForRing { len: 4104, max: 2040 })), "{sent:?}");
    let tried = with_rpc(engine.try_send(peer, vec![0; 4000]));
    assert!(matches!(tried, Err(netmachine_engine::EngineError::TooLargeForRing { .. })), "{tried:?}");
    // What fits still goes.
    engine.send_blocking(peer, vec![1; 1000]).expect("a message that fits");
    assert_eq!(engine.recv_blocking().expect("its own message").body, vec![1; 1000]);
}
