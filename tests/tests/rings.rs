//! The shared-memory fast path across processes: engines attach through the rings by default,
//! exchange a million messages with none lost or reordered, leave nothing in /dev/shm when
//! killed, lose nothing when the router or the whole node is stopped (cleanly or with SIGKILL)
//! twenty times in a row under traffic, by direct channel or through the router, and a corrupt
//! ring costs only its own engine. `channels.rs` tests the direct channels themselves.

use netmachine_service::ServiceKind;
use nix::sys::signal::Signal;
use netmachine_tests::{attach_engine, attach_raw, bin_dir, outcome, sequence, wait_until, with_rpc, Node};
use std::process::{Command, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);
/// Messages of one ring engine the router's main thread holds at once (`router/src/rings.rs`).
const SLOW_PER_ENGINE: u64 = 256;

/// The shared-memory objects of this node's engines in /dev/shm: rings, engines' doorbells and
/// direct channels (not the node's doorbell).
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
    // A steady conversation: after the first few through the router, by direct channel.
    assert_eq!(local_messages(&node), 1_000_000);
    assert!(node.router_counter("channel_messages") > 990_000, "{}", node.service(ServiceKind::Router));
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
            // The aside message is in the asker's inbox ring before the request goes out.
            let forwarded = node.router_counter("ring_messages_forwarded");
            with_rpc(noise.send(asker, b"aside".to_vec())).expect("send");
            wait_until("the aside message is in the asker's ring", WAIT, || node.router_counter("ring_messages_forwarded") > forwarded);
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
    assert_eq!(segments(&node).len(), 2, "an attached engine has its rings and its doorbell: {:?}", segments(&node));
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    wait_until("the router detaches the killed engine and removes its rings", Duration::from_secs(10), || {
        segments(&node).is_empty() && node.engines().is_empty()
    });
}

/// What stops the router under ring traffic.
#[derive(Clone, Copy)]
enum Stop {
    /// A signal to the router; `up` starts it again.
    Router(Signal),
    /// A signal to `up` (whose services then stop); a new `up` starts them again.
    Up(Signal),
}

/// Which way the messages between the two ring engines go.
#[derive(Clone, Copy, PartialEq)]
enum Path {
    /// Their direct channel, once the router grants it (the default).
    Channel,
    /// Through the router, ring to ring (`router.direct_channels = false`).
    Router,
}

/// Messages the router has seen arrive between ring engines: forwarded ring to ring, and read
/// from direct channels.
fn local_messages(node: &Node) -> u64 {
    node.router_counter("ring_messages_forwarded") + node.router_counter("channel_messages")
}

/// Sends messages between two ring engines, as many as it takes, while the router is stopped
/// `times` times in a row; every message arrives, in order.
fn router_stopped_under_traffic(stop: Stop, path: Path, times: usize) {
    // `up` restarts a service that keeps exiting with a growing delay, up to 10 s by default:
    // what is tested here is what arrives, not how long the supervisor waits.
    let quick = ["supervisor.restart_max_ms=200", if path == Path::Router { "router.direct_channels=false" } else { "router.direct_channels=true" }];
    let mut node = Node::up_with(&quick);
    let (receiver_key, receiver) = node.engine_key("receiver");
    let (sender_key, _) = node.engine_key("sender");
    // Until the sender's input closes.
    let count = "-";
    let receiving = sequence(&node, &["receive", receiver_key.to_str().unwrap(), count]);
    node.wait_attached(&receiver);
    let mut sending = sequence(&node, &["send", sender_key.to_str().unwrap(), &receiver, count]);
    for round in 1..=times {
        let arrived = local_messages(&node);
        wait_until("traffic flows", Duration::from_secs(20), || local_messages(&node) > arrived + 5_000);
        assert!(sending.try_wait().expect("the sender's state").is_none(), "the sender finished before stop {round}: nothing was in flight");
        if round == 1 {
            let by_channel = node.router_counter("channel_messages");
            assert_eq!(by_channel > 0, path == Path::Channel, "{by_channel} messages went by direct channel");
        }
        let stopped = node.pid(ServiceKind::Router).expect("the router's pid");
        match stop {
            Stop::Router(signal) => {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(stopped as i32), signal).expect("signal the router");
            }
            Stop::Up(signal) => {
                node.signal_up(signal);
                with_rpc(node.start_again(&quick));
            }
        }
        wait_until("the router is back", Duration::from_secs(30), || node.pid(ServiceKind::Router).is_some_and(|p| p != stopped));
    }
    // Ends a sequence of unknown length.
    drop(sending.stdin.take());
    let sent = outcome(sending)["sent"].as_u64().expect("the sender says how many it sent");
    let received = outcome(receiving);
    assert_eq!(received["ended"], true, "the end mark arrived");
    assert_eq!(received["received"].as_u64(), Some(sent), "every message written was delivered");
    assert_eq!(received["in_order"], true);
}

/// Stops in a row for each way of stopping the router (issue 11 asked for 20); the sender
/// sends until the last is over.
const STOPS: usize = 20;

#[test]
fn a_router_killed_under_traffic_again_and_again_loses_nothing_engines_had_written() {
    router_stopped_under_traffic(Stop::Router(Signal::SIGKILL), Path::Channel, STOPS);
}

#[test]
fn a_router_stopped_cleanly_under_traffic_again_and_again_loses_nothing() {
    router_stopped_under_traffic(Stop::Router(Signal::SIGTERM), Path::Channel, STOPS);
}

#[test]
fn a_whole_node_killed_under_traffic_and_started_again_and_again_loses_nothing() {
    router_stopped_under_traffic(Stop::Up(Signal::SIGKILL), Path::Channel, STOPS);
}

#[test]
fn a_whole_node_stopped_cleanly_under_traffic_and_started_again_and_again_loses_nothing() {
    router_stopped_under_traffic(Stop::Up(Signal::SIGTERM), Path::Channel, STOPS);
}

#[test]
fn a_router_killed_while_it_relays_ring_to_ring_again_and_again_loses_nothing() {
    router_stopped_under_traffic(Stop::Router(Signal::SIGKILL), Path::Router, STOPS);
}

#[test]
fn a_router_stopped_cleanly_while_it_relays_ring_to_ring_again_and_again_loses_nothing() {
    router_stopped_under_traffic(Stop::Router(Signal::SIGTERM), Path::Router, STOPS);
}

/// An engine inbox that takes deliveries and never answers one, counting them.
struct StuckInbox(std::rc::Rc<std::cell::Cell<usize>>);

impl netmachine_schema::router_capnp::inbox::Server for StuckInbox {
    async fn deliver(self: std::rc::Rc<Self>, _: netmachine_schema::router_capnp::inbox::DeliverParams, _: netmachine_schema::router_capnp::inbox::DeliverResults) -> capnp::Result<()> {
        self.0.set(self.0.get() + 1);
        std::future::pending().await
    }

    async fn deliver_batch(self: std::rc::Rc<Self>, _: netmachine_schema::router_capnp::inbox::DeliverBatchParams, _: netmachine_schema::router_capnp::inbox::DeliverBatchResults) -> capnp::Result<()> {
        self.0.set(self.0.get() + 1);
        std::future::pending().await
    }
}

/// How many deliveries the router keeps unanswered per socket engine before it stops sending
/// it more (`DELIVERY_WINDOW` in the router's attachment pump).
const DELIVERY_WINDOW: usize = 64;

#[test]
fn a_ring_engine_sending_to_a_stuck_destination_does_not_hold_up_another_ring_engine() {
    // Messages for a full destination wait up to a minute for room: far past the deadline below.
    let node = Node::up_with(&["limits.engine_queue=64", "limits.send_wait_ms=60000"]);
    with_rpc(async {
        // A destination that never answers a delivery: its window and queue fill, then senders wait.
        let stuck_key = netmachine_schema::Keypair::generate();
        let stuck = stuck_key.identity();
        let locate = |here| netmachine_schema::EngineLocation::sign(&stuck_key, here, netmachine_schema::time::now_ms());
        let deliveries = std::rc::Rc::new(std::cell::Cell::new(0));
        let inbox = capnp_rpc::new_client(StuckInbox(deliveries.clone()));
        let _session = attach_raw(&node, stuck, &stuck_key, locate, inbox).await.expect("attach");
        let blocked = attach_engine(&node, |o| o.send_timeout = Duration::from_secs(1)).await;
        let flowing = attach_engine(&node, |_| {}).await;
        let receiver = attach_engine(&node, |o| o.ring = false).await;
        assert!(blocked.on_ring() && flowing.on_ring() && !receiver.on_ring());
        // Write until the stuck destination's delivery window is full (from then on nothing
        // for it leaves the router) and the router holds as many of the blocked engine's
        // messages waiting for room as it takes from one engine (from then on its outbox stays
        // full). Only a full outbox seen after that is full for good: one seen before may be
        // one the ring thread is still emptying, up to that count.
        let deadline = tokio::time::Instant::now() + WAIT;
        let stuck_for_good = || deliveries.get() >= DELIVERY_WINDOW && node.router_counter("messages_waiting") >= SLOW_PER_ENGINE;
        let mut router_stopped_taking = false;
        loop {
            match blocked.try_send(stuck, vec![0; 64]).await {
                Ok(_) => continue,
                Err(netmachine_engine::EngineError::Full) if router_stopped_taking => break,
                Err(netmachine_engine::EngineError::Full) => {
                    router_stopped_taking = stuck_for_good();
                    if !router_stopped_taking {
                        tokio::time::sleep(Duration::from_millis(5)).await
                    }
                }
                Err(error) => panic!("{error}"),
            }
            assert!(tokio::time::Instant::now() < deadline, "the stuck destination's messages never had to wait");
        }
        // The receiver is on the socket path: the flowing engine's messages take the slow path too.
        for n in 0..100u32 {
            flowing.send(receiver.identity(), n.to_le_bytes().to_vec()).await.expect("written to the ring");
        }
        for n in 0..100u32 {
            let message = tokio::time::timeout(WAIT, receiver.recv()).await.expect("the flowing engine's messages arrive while the others wait").expect("attached");
            assert_eq!(message.body, n.to_le_bytes());
        }
        assert!(node.router_counter("messages_waiting") > 0, "the stuck messages were still waiting meanwhile");
        assert_eq!(deliveries.get(), DELIVERY_WINDOW, "nothing more went to the stuck destination");
        // A send that waits out its timeout on the full outbox is told what the socket path
        // says: the destination's queue is full, not that the router is gone.
        match blocked.send(stuck, vec![0; 64]).await {
            Err(netmachine_engine::EngineError::Refused { reason: netmachine_engine::SendRefusal::QueueFull, detail }) => {
                assert!(detail.contains("the router is up"), "{detail}")
            }
            other => panic!("a send held by full destinations is refused QueueFull, not {other:?}"),
        }
    });
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
        let name = netmachine_engine::ring::segment_name(&node_id.0, &victim.identity().0);
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
        // The engine is told why, and hears nothing more.
        let start = std::time::Instant::now();
        while victim.detached_because().is_none() {
            assert!(start.elapsed() < Duration::from_secs(10), "the engine was never told why it was detached");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let reason = victim.detached_because().unwrap();
        assert!(reason.contains("outbox ring is corrupt"), "{reason}");
        let after = tokio::time::timeout(Duration::from_secs(10), victim.recv()).await.expect("recv ends at once");
        assert!(after.is_none(), "a detached engine receives nothing more: {after:?}");
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
fn an_engine_whose_rings_could_not_be_handed_over_takes_them_at_its_next_attach() {
    // A stopping router removes its handoff socket first: an engine attaching to it in that
    // moment is granted rings it cannot take. Here the socket is removed under a running router.
    let node = Node::up_with(&["supervisor.restart_max_ms=200"]);
    let handoff = netmachine_engine::ring::handoff_socket(&node.socket(ServiceKind::Router));
    std::fs::remove_file(&handoff).expect("remove the handoff socket");
    with_rpc(async {
        let engine = attach_engine(&node, |_| {}).await;
        assert!(!engine.on_ring(), "with no handoff socket the engine attaches over the socket");
        let to_itself = |body: &[u8]| engine.send(engine.identity(), body.to_vec());
        to_itself(b"by socket").await.expect("sent over the socket");
        let got = tokio::time::timeout(WAIT, engine.recv()).await.expect("in time").expect("attached");
        assert_eq!(got.body, b"by socket");
        // The next router binds the socket again, and the engine, attaching again, takes rings.
        let stopped = node.kill9(ServiceKind::Router);
        wait_until("the engine attached again over the rings", Duration::from_secs(30), || {
            node.pid(ServiceKind::Router).is_some_and(|pid| pid != stopped) && engine.on_ring()
        });
        to_itself(b"by ring").await.expect("written to the ring");
        let got = tokio::time::timeout(WAIT, engine.recv()).await.expect("in time").expect("attached");
        assert_eq!(got.body, b"by ring");
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

#[test]
fn a_message_longer_than_the_receivers_ring_can_take_is_dropped_and_counted_and_the_next_arrives() {
    // 4 KiB rings take records of at most 2040 bytes; the node takes bodies of up to 1 MiB, and
    // a sender on the socket path is held only to the node's limit.
    let node = Node::up_with(&["router.ring_bytes=4096"]);
    with_rpc(async {
        let receiver = attach_engine(&node, |_| {}).await;
        let sender = attach_engine(&node, |o| o.ring = false).await;
        assert!(receiver.on_ring() && !sender.on_ring());
        sender.send(receiver.identity(), vec![7; 3000]).await.expect("within the node's limit");
        sender.send(receiver.identity(), vec![8; 100]).await.expect("sent");
        let message = tokio::time::timeout(WAIT, receiver.recv()).await.expect("the message behind the long one arrives").expect("attached");
        assert_eq!(message.body, vec![8; 100]);
    });
    assert_eq!(node.router_counter("dropped_over_limit"), 1);
}

#[test]
fn ring_memory_another_user_planted_under_an_engines_name_is_never_adopted() {
    use netmachine_engine::ring::RingSegment;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert!(nix::unistd::geteuid().is_root(), "planting a file as another user needs root (CI runs as root)");
    let node = Node::up();
    let node_id: netmachine_engine::Identity = node.id().parse().unwrap();
    let key = netmachine_engine::Keypair::generate();
    let engine_id = key.identity();
    let name = netmachine_engine::ring::segment_name(&node_id.0, &engine_id.0);
    let path = format!("/dev/shm{name}");
    // User 65534 made a valid segment under the engine's name, open to everyone, and keeps it
    // mapped to read the engine's messages and write records as the engine.
    let _planted = RingSegment::create(&name, &engine_id.0, 1 << 20).expect("plant a segment");
    std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (body, made) = with_rpc(async {
        let mut options = netmachine_engine::EngineOptions::new(node.socket(ServiceKind::Router), key);
        options.ring = true;
        let engine = netmachine_engine::Engine::attach(options).await.expect("attach");
        let sender = attach_engine(&node, |_| {}).await;
        assert!(engine.on_ring(), "the engine is on rings of its own");
        sender.send(engine_id, b"for the engine only".to_vec()).await.expect("send");
        let body = tokio::time::timeout(WAIT, engine.recv()).await.expect("a message in time").expect("a message").body;
        // While the engine is attached: the router removes its segment once it detaches.
        (body, std::fs::metadata(&path).expect("the engine's segment"))
    });
    assert_eq!(body, b"for the engine only");
    assert_eq!((made.uid(), made.mode() & 0o777), (0, 0o600), "the router made the rings afresh, owned by its own user and closed to others");
}

#[test]
fn messages_left_unread_in_a_dead_engines_ring_are_counted_as_lost_with_it() {
    const SENT: u64 = 300;
    let node = Node::up();
    let (key, identity) = node.engine_key("frozen");
    let mut frozen = Command::new(bin_dir().join("netmachine"))
        .args(["listen", "--key", key.to_str().unwrap(), "--home", node.root().to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("listen");
    node.wait_attached(&identity);
    let pid = nix::unistd::Pid::from_raw(frozen.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("stop the engine");
    let before = node.router_counter("dropped_engine_gone");
    with_rpc(async {
        let sender = attach_engine(&node, |o| o.ring = false).await;
        for n in 0..SENT {
            sender.send(identity.parse::<netmachine_engine::Identity>().unwrap(), n.to_le_bytes().to_vec()).await.expect("accepted");
        }
    });
    wait_until("the router has written every message into the frozen engine's ring", WAIT, || {
        node.router_counter("messages_waiting") == 0
    });
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("kill the engine");
    let _ = frozen.wait();
    wait_until("what the dead engine never read is counted", WAIT, || node.router_counter("dropped_engine_gone") - before == SENT);
}

#[test]
fn a_local_message_whose_signature_is_not_its_senders_is_refused_on_either_path_and_a_true_one_arrives() {
    let node = Node::up();
    with_rpc(async {
        let receiver = attach_engine(&node, |_| {}).await;
        for ring in [true, false] {
            let signer = netmachine_schema::Keypair::generate();
            let sender = attach_engine(&node, |o| {
                o.ring = ring;
                o.keypair = signer.clone();
            })
            .await;
            assert_eq!(sender.on_ring(), ring);
            let mut forged = sender.message(receiver.identity(), b"forged".to_vec());
            forged.sig = Some([7; 64]);
            let refused = sender.request_message(forged, WAIT).await;
            assert!(
                matches!(&refused, Err(netmachine_engine::EngineError::Refused { reason: netmachine_schema::router_capnp::SendRefusal::BadSignature, .. })),
                "ring {ring}: {refused:?}"
            );
            let mut signed = sender.message(receiver.identity(), b"signed".to_vec());
            signed.sig = Some(signer.sign(&netmachine_schema::signing::engine_message(&signed)));
            sender.send_message(signed).await.expect("a true signature goes");
            let arrived = tokio::time::timeout(WAIT, receiver.recv()).await.expect("it arrives").expect("attached");
            assert_eq!((arrived.signature_holds(), arrived.body), (true, b"signed".to_vec()), "ring {ring}: the forged one never arrived");
        }
    });
    assert_eq!(node.router_counter("dropped_bad_signature"), 2);
}

#[test]
fn an_engine_whose_segment_a_router_made_afresh_under_the_same_name_maps_the_new_one() {
    let node = Node::up();
    let (key, identity) = node.engine_key("listener");
    let listener = node.listen(&key, &identity, &[]);
    let node_id: netmachine_engine::Identity = node.id().parse().unwrap();
    let engine: netmachine_engine::Identity = identity.parse().unwrap();
    // As if a router had taken the engine for gone: the segment's name is removed while the
    // engine still maps it, so the next router makes a new segment under the same name.
    let name = netmachine_engine::ring::segment_name(&node_id.0, &engine.0);
    netmachine_engine::ring::RingSegment::unlink(&name).expect("remove the segment's name");
    let router = node.kill9(ServiceKind::Router);
    wait_until("the router is back and the engine attached again", WAIT, || {
        node.pid(ServiceKind::Router).is_some_and(|pid| pid != router) && node.engines().contains(&identity)
    });
    let sender = with_rpc(async {
        let sender = attach_engine(&node, |_| {}).await;
        sender.send(engine, b"into the new segment".to_vec()).await.expect("sent");
        sender.identity()
    });
    // Kept on the old mapping, the engine would never see it: nobody writes that ring now.
    let message = listener.next_message(WAIT);
    assert_eq!(message["body"], "into the new segment", "{message}");
    // Once the router has seen the sender go, the listener alone is on rings.
    wait_until("the router sees the sender detach", WAIT, || !node.engines().contains(&sender.to_string()));
    assert_eq!(node.router_counter("engines_on_rings"), 1, "the listener, on its new rings: {}", node.service(ServiceKind::Router));
}
