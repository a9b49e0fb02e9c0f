//! Nodes talking: real `netmachine up` nodes on loopback, linked by exchanging adverts, carry
//! messages between engines with the same calls as within a node; strangers, banned nodes,
//! forged frames, expired and oversized messages are refused and counted; a transport killed
//! mid-stream comes back and traffic resumes, in order, with no duplicates.

use netmachine_engine::{Destination, Identity};
use netmachine_service::ServiceKind;
use netmachine_tests::{attach_engine, link, send_when_routable, wait_until, with_rpc, Node};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn two_nodes_set_up_by_advert_exchange_carry_messages_both_ways() {
    let a = Node::up();
    let b = Node::up();
    let events = a.events();
    link(&a, &b);
    // A may dial before B has added A's advert: that first attempt is refused, with the reason.
    loop {
        let event = events.next_message(WAIT);
        if event["event"] == "connected" {
            assert_eq!(event["node"], b.id());
            break;
        }
        assert_eq!(event["event"], "connect_failed", "{event}");
        assert!(event["detail"].as_str().unwrap_or("").contains("not known here"), "{event}");
    }

    let (bob_key, bob) = b.engine_key("bob");
    let bob_listens = b.listen(&bob_key, &bob, &["--echo"]);
    let (alice_key, alice) = a.engine_key("alice");
    let alice_listens = a.listen(&alice_key, &alice, &[]);
    let (carol_key, _) = a.engine_key("carol");
    let (dave_key, _) = b.engine_key("dave");
    let carol_key = carol_key.to_str().unwrap();

    // A one-way message each way, with the very same command used within a node.
    let sent = cli_send_when_routable(&a, carol_key, &bob, "from A to B");
    assert!(sent, "A never learned where bob is");
    assert_eq!(bob_listens.next_message(WAIT)["body"], "from A to B");
    assert!(cli_send_when_routable(&b, dave_key.to_str().unwrap(), &alice, "from B to A"));
    assert_eq!(alice_listens.next_message(WAIT)["body"], "from B to A");

    // A request across the nodes; bob's listener on B echoes it back.
    let asked = a.cli(&["request", "--key", carol_key, "--to", &bob, "ping across"]);
    assert!(asked.status.success(), "{asked:?}");
    assert_eq!(String::from_utf8_lossy(&asked.stdout).trim(), "ping across");
    // Sends made before bob was announced were refused NoRoute; nothing else was dropped.
    for node in [&a, &b] {
        let drops = node.status()["drops"].clone();
        for reason in ["expired", "bad_signature", "queue_full", "unreachable", "engine_gone", "malformed", "over_limit"] {
            assert_eq!(drops[reason], 0, "{reason}: {drops}");
        }
    }
}

/// `netmachine send` that retries while the destination's node is not yet announced.
fn cli_send_when_routable(node: &Node, key: &str, to: &str, body: &str) -> bool {
    for _ in 0..100 {
        if node.cli(&["send", "--key", key, "--to", to, body]).status.success() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn three_nodes_one_send_call_reaches_local_and_remote_engines() {
    let nodes = [Node::up(), Node::up(), Node::up()];
    link(&nodes[0], &nodes[1]);
    link(&nodes[1], &nodes[2]);
    link(&nodes[0], &nodes[2]);
    with_rpc(async {
        let sender = attach_engine(&nodes[0], |o| o.ring = false).await;
        let neighbour = attach_engine(&nodes[0], |_| {}).await;
        let on_b = attach_engine(&nodes[1], |_| {}).await;
        let on_c = attach_engine(&nodes[2], |_| {}).await;
        for (n, receiver) in [&neighbour, &on_b, &on_c].into_iter().enumerate() {
            let body = format!("same call, receiver {n}").into_bytes();
            assert!(send_when_routable(&sender, receiver.identity(), &body).await, "receiver {n} never became routable");
            let message = tokio::time::timeout(WAIT, receiver.recv()).await.expect("in time").expect("message");
            assert_eq!(message.body, body);
            assert_eq!(message.src, sender.identity());
        }
        // Request/response across nodes: the engine on C answers.
        let answering = async {
            let request = on_c.recv().await.expect("request");
            on_c.reply(&request, b"pong from C".to_vec()).await.expect("reply");
        };
        let asking = sender.request(on_c.identity(), b"ping C".to_vec(), WAIT);
        let (_, reply) = tokio::join!(answering, asking);
        assert_eq!(reply.expect("reply").body, b"pong from C");
        // A message to a node identity is answered by that node.
        let node_c: Identity = nodes[2].id().parse().unwrap();
        let info = sender.request(Destination::Node(node_c), b"who?".to_vec(), WAIT).await.expect("node answers");
        assert_eq!(info.src, node_c);
        assert!(String::from_utf8_lossy(&info.body).contains(&nodes[2].id()));
    });
}

#[test]
fn a_node_not_in_the_identity_store_is_refused_with_a_reason() {
    let a = Node::up();
    let stranger = Node::up();
    assert!(stranger.add_peer(&a, &[]).status.success());
    let attempt = stranger.cli(&["connect", &a.id()]);
    assert!(!attempt.status.success());
    let stderr = String::from_utf8_lossy(&attempt.stderr);
    assert!(stderr.contains("Denied") && stderr.contains("not known here"), "{stderr}");
    assert!(a.counter(ServiceKind::Transport, "connections_refused") >= 1);
    assert!(a.connected().is_empty());
}

#[test]
fn a_public_node_admits_strangers_whose_messages_reach_only_public_engines() {
    let public = Node::up_with(&["transport.public=true"]);
    let stranger = Node::up();
    // Only the stranger knows the public node; the public node knows nothing of it.
    assert!(stranger.add_peer(&public, &[]).status.success());
    let connected = stranger.cli(&["connect", &public.id()]);
    assert!(connected.status.success(), "{connected:?}");
    let peers: serde_json::Value = serde_json::from_slice(&public.cli(&["peers", "--json"]).stdout).unwrap();
    assert_eq!(peers[0]["node"], stranger.id());
    assert_eq!(peers[0]["public"], true);
    with_rpc(async {
        let open = attach_engine(&public, |o| o.public = true).await;
        let private = attach_engine(&public, |_| {}).await;
        let sender = attach_engine(&stranger, |o| o.ring = false).await;
        assert!(send_when_routable(&sender, open.identity(), b"hello public").await, "the public engine never became routable");
        let message = tokio::time::timeout(WAIT, open.recv()).await.expect("in time").expect("message");
        assert_eq!(message.body, b"hello public");
        let before = public.router_counter("dropped_no_route");
        sender.send(private.identity(), b"let me in".to_vec()).await.expect("accepted by the stranger's node");
        wait_until("the public node refuses the private delivery", WAIT, || public.router_counter("dropped_no_route") > before);
        // The first message the private engine gets is one sent after the refusal.
        let local = attach_engine(&public, |_| {}).await;
        local.send(private.identity(), b"from this node".to_vec()).await.expect("sent");
        let first = tokio::time::timeout(WAIT, private.recv()).await.expect("in time").expect("message");
        assert_eq!(first.body, b"from this node", "a private engine got a public message");
    });
}

#[test]
fn a_node_that_requires_engine_signatures_drops_unsigned_messages() {
    let strict = Node::up_with(&["router.require_engine_signatures=true"]);
    let other = Node::up();
    link(&strict, &other);
    with_rpc(async {
        let receiver = attach_engine(&strict, |_| {}).await;
        let signing = attach_engine(&other, |o| {
            o.sign_messages = true;
            o.ring = false;
        })
        .await;
        let unsigned = attach_engine(&other, |o| o.ring = false).await;
        assert!(send_when_routable(&signing, receiver.identity(), b"signed").await, "the receiver never became routable");
        let message = tokio::time::timeout(WAIT, receiver.recv()).await.expect("in time").expect("message");
        assert_eq!(message.body, b"signed");
        assert!(message.sig.is_some());
        unsigned.send(receiver.identity(), b"unsigned".to_vec()).await.expect("accepted by its own node");
        wait_until("the unsigned message is dropped", WAIT, || strict.router_counter("dropped_bad_signature") >= 1);
        // The next message the receiver gets is the signed one sent after the drop.
        signing.send(receiver.identity(), b"signed again".to_vec()).await.expect("sent");
        let next = tokio::time::timeout(WAIT, receiver.recv()).await.expect("in time").expect("message");
        assert_eq!(next.body, b"signed again", "an unsigned message got through");
    });
}

#[test]
fn a_banned_node_is_refused() {
    let a = Node::up();
    let banned = Node::up();
    assert!(a.add_peer(&banned, &["--trust", "0"]).status.success());
    assert!(banned.add_peer(&a, &[]).status.success());
    let attempt = banned.cli(&["connect", &a.id()]);
    assert!(!attempt.status.success());
    let stderr = String::from_utf8_lossy(&attempt.stderr);
    assert!(stderr.contains("Denied") && stderr.contains("banned"), "{stderr}");
    // And the banned node is not dialed from A's side either.
    let dial = a.cli(&["connect", &banned.id()]);
    assert!(String::from_utf8_lossy(&dial.stderr).contains("banned"), "{dial:?}");
}

/// A peer `a` admits (as an ephemeral peer) whose frames the test writes by hand.
struct HandmadePeer {
    key: netmachine_schema::Keypair,
    advert: Vec<u8>,
    a_id: Identity,
    a_addr: std::net::SocketAddr,
}

impl HandmadePeer {
    fn admitted_by(a: &Node) -> HandmadePeer {
        let key = netmachine_schema::Keypair::generate();
        let advert = netmachine_tests::advert_message(&key);
        let document = a.root().join(format!("{}.advert", key.identity().short()));
        std::fs::write(&document, serde_json::json!({"advert": hex::encode(&advert)}).to_string()).unwrap();
        assert!(a.cli(&["peer", "add", document.to_str().unwrap(), "--ephemeral"]).status.success());
        let a_advert: serde_json::Value = serde_json::from_slice(&a.cli(&["advert"]).stdout).unwrap();
        let a_addr = a_advert["addrs"][0].as_str().unwrap().parse().unwrap();
        HandmadePeer { key, advert, a_id: a.id().parse().unwrap(), a_addr }
    }

    /// Connects to `a` over QUIC and completes the handshake (keep the endpoint while connected).
    async fn connect(&self) -> (quinn::Endpoint, quinn::Connection) {
        use netmachine_transport::{framing, handshake, tls::NodeTls};
        let tls = NodeTls::new(&self.key).unwrap();
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let connection = endpoint.connect_with(tls.client_config(self.a_id).unwrap(), self.a_addr, "netmachine").unwrap().await.unwrap();
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        framing::write_frame(&mut send, &netmachine_transport::handshake::hello(&self.advert, 0, 1).unwrap()).await.unwrap();
        let answer = framing::read_frame(&mut recv, 1 << 16, std::time::Duration::from_secs(10)).await.unwrap().unwrap();
        assert!(matches!(handshake::read_answer(&answer).unwrap(), handshake::Answer::Accepted { .. }));
        (endpoint, connection)
    }

    /// Sends a frame to `a` with one payload `fill` writes, signed by `signer`.
    async fn send_frame(&self, connection: &quinn::Connection, signer: &netmachine_schema::Keypair, fill: impl FnOnce(netmachine_schema::message_capnp::p2_p_payload::Builder<'_>)) {
        use netmachine_schema::message_capnp::{p2_p_batch, p2_p_frame};
        let mut batch = capnp::message::Builder::new_default();
        fill(batch.init_root::<p2_p_batch::Builder>().init_payloads(1).get(0));
        let batch = capnp::serialize::write_message_to_words(&batch);
        let mut frame = capnp::message::Builder::new_default();
        let mut root = frame.init_root::<p2_p_frame::Builder>();
        root.set_src(&self.key.identity().0);
        root.set_dst(&self.a_id.0);
        root.set_batch(&batch);
        root.set_sig(&signer.sign(&netmachine_schema::signing::p2p_frame(&self.key.identity(), &self.a_id, &batch)));
        let mut stream = connection.open_uni().await.unwrap();
        netmachine_transport::framing::write_frame(&mut stream, &capnp::serialize::write_message_to_words(&frame)).await.unwrap();
    }
}

#[test]
fn a_frame_with_a_forged_signature_is_dropped_counted_and_the_peer_disconnected() {
    let a = Node::up();
    let forger = HandmadePeer::admitted_by(&a);
    let closed = with_rpc(async {
        let (_endpoint, connection) = forger.connect().await;
        let message = netmachine_schema::EngineMessage::new(forger.key.identity(), Destination::Node(forger.a_id), 1, b"forged".to_vec());
        let impostor = netmachine_schema::Keypair::generate();
        forger.send_frame(&connection, &impostor, |payload| message.write(payload.init_engine())).await;
        tokio::time::timeout(WAIT, connection.closed()).await
    });
    let reason = closed.expect("A closes the connection to the forger").to_string();
    assert!(reason.contains("signature"), "{reason}");
    assert_eq!(a.router_counter("dropped_bad_signature"), 1);
}

#[test]
fn a_peer_that_stalls_mid_frame_has_that_stream_stopped_and_counted_while_its_other_frames_go_on() {
    let a = Node::up_with(&["transport.frame_read_ms=1000"]);
    let staller = HandmadePeer::admitted_by(&a);
    with_rpc(async {
        let (_endpoint, connection) = staller.connect().await;
        // A frame's length, then a tenth of its bytes, then nothing.
        let mut stalled = connection.open_uni().await.unwrap();
        stalled.write_all(&100_000u32.to_le_bytes()).await.unwrap();
        stalled.write_all(&[0; 10_000]).await.unwrap();
        let stopped = tokio::time::timeout(WAIT, stalled.stopped()).await.expect("A stops the stalled stream in time");
        assert!(matches!(stopped, Ok(Some(_))), "stopped with a code: {stopped:?}");
        assert_eq!(a.counter(ServiceKind::Transport, "frames_stalled"), 1);
        // The connection carries the peer's next frame.
        let received = a.counter(ServiceKind::Transport, "frames_received");
        let message = netmachine_schema::EngineMessage::new(staller.key.identity(), Destination::Node(staller.a_id), 1, b"after".to_vec());
        staller.send_frame(&connection, &staller.key, |payload| message.write(payload.init_engine())).await;
        // Waited for here, not by blocking: this runtime drives the peer's QUIC endpoint.
        let start = std::time::Instant::now();
        while a.counter(ServiceKind::Transport, "frames_received") == received {
            assert!(start.elapsed() < WAIT, "the next frame never arrived");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

#[test]
fn a_peer_announcing_engines_cannot_remove_records_of_other_nodes() {
    let a = Node::up();
    let (peer, bystander) = (HandmadePeer::admitted_by(&a), HandmadePeer::admitted_by(&a));
    let store = a.socket(ServiceKind::IdentityStore);
    let engine_key = netmachine_schema::Keypair::generate();
    let (bystander_id, engine) = (bystander.key.identity(), engine_key.identity());
    let location = netmachine_schema::EngineLocation::sign(&engine_key, peer.key.identity(), netmachine_schema::time::now_ms());
    with_rpc(async {
        assert!(netmachine_tests::identity_exists(&store, &bystander_id).await);
        let (_endpoint, connection) = peer.connect().await;
        // A full announcement of one engine that also says another node's record left.
        peer.send_frame(&connection, &peer.key, |payload| {
            let mut engines = payload.init_engines();
            engines.set_full(true);
            location.write(engines.reborrow().init_attached(1).get(0));
            engines.init_detached(1).set(0, &bystander_id.0);
        })
        .await;
        let deadline = tokio::time::Instant::now() + WAIT;
        while !netmachine_tests::identity_exists(&store, &engine).await {
            assert!(tokio::time::Instant::now() < deadline, "the announced engine was never recorded");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The announcement was processed whole (removals come first): the other node's advert stays.
        assert!(netmachine_tests::identity_exists(&store, &bystander_id).await, "a peer deleted another node's record");
    });
}

#[test]
fn a_node_announcing_an_engine_it_does_not_host_is_refused_counted_and_the_route_stays() {
    let a = Node::up();
    let b = Node::up();
    link(&a, &b);
    let thief = HandmadePeer::admitted_by(&a);
    with_rpc(async {
        let sender = attach_engine(&a, |o| o.ring = false).await;
        let victim = attach_engine(&b, |_| {}).await;
        assert!(send_when_routable(&sender, victim.identity(), b"before").await, "the victim never became routable");
        let first = tokio::time::timeout(WAIT, victim.recv()).await.expect("the first message arrives").expect("attached");
        assert_eq!(first.body, b"before");
        // The thief claims the victim with a location it signed itself, dated later than the
        // victim's own, so that a router going by "the latest announcement" would follow it.
        let (_endpoint, connection) = thief.connect().await;
        let at = netmachine_schema::time::now_ms() + 60_000;
        let claimed = netmachine_schema::EngineLocation {
            engine: victim.identity(),
            node: thief.key.identity(),
            at,
            sig: thief.key.sign(&netmachine_schema::signing::engine_location(&victim.identity(), &thief.key.identity(), at)),
        };
        thief
            .send_frame(&connection, &thief.key, |payload| {
                let mut engines = payload.init_engines();
                claimed.write(engines.reborrow().init_attached(1).get(0));
                engines.init_detached(0);
            })
            .await;
        // Waiting without blocking: this runtime also drives the thief's QUIC connection.
        let deadline = tokio::time::Instant::now() + WAIT;
        while a.router_counter("announcements_refused") != 1 {
            assert!(tokio::time::Instant::now() < deadline, "A never counted the refused announcement");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sender.send(victim.identity(), b"after".to_vec()).await.expect("still routable");
        let after = tokio::time::timeout(WAIT, victim.recv()).await.expect("traffic still reaches the victim on B").expect("attached");
        assert_eq!(after.body, b"after");
    });
}

#[test]
fn an_engine_that_moves_between_nodes_is_routed_where_it_is() {
    let a = Node::up();
    let b = Node::up();
    link(&a, &b);
    with_rpc(async {
        let sender = attach_engine(&a, |o| o.ring = false).await;
        let key = netmachine_schema::Keypair::generate();
        let attach_to = |node: &Node| netmachine_engine::Engine::attach(netmachine_engine::EngineOptions::new(node.socket(ServiceKind::Router), key.clone()));
        let receive = |engine: netmachine_engine::Engine, body: &'static [u8]| async move {
            let message = tokio::time::timeout(WAIT, engine.recv()).await.expect("a message within the deadline").expect("attached");
            assert_eq!(message.body, body);
            engine.detach().await;
        };
        let on_b = attach_to(&b).await.expect("attach on B");
        assert!(send_when_routable(&sender, key.identity(), b"on B").await, "never routable on B");
        receive(on_b, b"on B").await;
        let on_a = attach_to(&a).await.expect("attach on A");
        sender.send(key.identity(), b"on A".to_vec()).await.expect("attached here");
        receive(on_a, b"on A").await;
        let back_on_b = attach_to(&b).await.expect("attach on B again");
        assert!(send_when_routable(&sender, key.identity(), b"back on B").await, "never routable on B again");
        receive(back_on_b, b"back on B").await;
    });
}

#[test]
fn an_expired_message_is_dropped_and_counted() {
    let a = Node::up_with(&["transport.connect_timeout_ms=300"]);
    let mut b = Node::up();
    link(&a, &b);
    let node_b: Identity = b.id().parse().unwrap();
    b.stop();
    with_rpc(async {
        let sender = attach_engine(&a, |_| {}).await;
        let mut message = sender.message(Destination::Node(node_b), b"too late".to_vec());
        message.expiry = Some(netmachine_schema::time::now_ms() + 300);
        sender.send_message(message).await.expect("accepted by the router");
    });
    wait_until("the expired frame is counted", WAIT, || {
        a.counter(ServiceKind::Transport, "frames_expired") + a.router_counter("dropped_expired") >= 1
    });
}

#[test]
fn oversized_messages_are_refused_at_either_end() {
    let a = Node::up();
    let b = Node::up_with(&["limits.max_message_bytes=4096"]);
    link(&a, &b);
    with_rpc(async {
        let sender = attach_engine(&a, |o| o.ring = false).await;
        let receiver = attach_engine(&b, |_| {}).await;
        // B's limit is 4096: an 8000-byte body from A is dropped at B, and counted there.
        assert!(send_when_routable(&sender, receiver.identity(), &[1; 8000]).await, "the receiver never became routable");
    });
    wait_until("B counts the oversized message", WAIT, || b.router_counter("dropped_over_limit") >= 1);
    // A frame over B's frame limit makes B's transport close the connection, counted.
    with_rpc(async {
        let sender = attach_engine(&a, |_| {}).await;
        let node_b: Identity = b.id().parse().unwrap();
        sender.send(Destination::Node(node_b), vec![2; 40_000]).await.expect("A's limit is 1 MiB");
    });
    // Under a loaded machine the frame may go out after a redial: give it the connect timeout
    // several times over.
    wait_until("B refuses the oversized frame", Duration::from_secs(30), || b.counter(ServiceKind::Transport, "frames_over_limit") >= 1);
}

#[test]
fn transport_killed_mid_stream_comes_back_and_traffic_resumes_in_order() {
    // Sends wait for room while the transport is down, rather than being refused.
    let a = Node::up_with(&["limits.send_wait_ms=60000"]);
    let b = Node::up();
    link(&a, &b);
    const TOTAL: u32 = 20_000;
    with_rpc(async {
        let sender = std::rc::Rc::new(attach_engine(&a, |o| o.ring = false).await);
        let receiver = attach_engine(&b, |_| {}).await;
        assert!(send_when_routable(&sender, receiver.identity(), &0u32.to_le_bytes()).await, "the receiver never became routable");
        // The sender goes on through the kill and the restart, in a task of its own.
        let sent = std::rc::Rc::new(std::cell::Cell::new(1u32));
        let sending = tokio::task::spawn_local({
            let (sender, sent, to) = (sender.clone(), sent.clone(), receiver.identity());
            async move {
                for n in 1..TOTAL {
                    sender.send(to, n.to_le_bytes().to_vec()).await.unwrap_or_else(|e| panic!("send {n}: {e}"));
                    sent.set(n + 1);
                }
            }
        });
        // Gaps in the numbering: frames the killed transport held are lost (until delivery is
        // acknowledged end to end), all in one run; nothing after.
        let (mut last, mut received, mut killed, mut gaps) = (None, 0u32, None, 0);
        while last != Some(TOTAL - 1) {
            let message = tokio::time::timeout(Duration::from_secs(30), receiver.recv())
                .await
                .unwrap_or_else(|_| panic!("traffic stopped after message {last:?}"))
                .expect("attached");
            let n = u32::from_le_bytes(message.body.as_slice().try_into().expect("a number"));
            assert!(last.is_none_or(|last| n > last), "message {n} after {last:?}: duplicated or out of order");
            gaps += usize::from(last.is_some_and(|last| n != last + 1));
            (last, received) = (Some(n), received + 1);
            if received == 500 {
                assert!(sent.get() < TOTAL, "the sender had finished: nothing was in flight at the kill");
                killed = Some(a.kill9(ServiceKind::Transport));
            }
        }
        sending.await.expect("every send accepted");
        let killed = killed.expect("the transport was killed");
        assert!(a.pid(ServiceKind::Transport).is_some_and(|p| p != killed), "A runs a new transport");
        assert!(gaps <= 1, "{gaps} runs of messages lost: more than what the killed transport held");
        eprintln!("{received} of {TOTAL} arrived across the kill");
    });
}

/// Connects `rounds` times as `peer`, each time opening `streams` streams that each carry a
/// frame length and `len` bytes that are no frame, and waits until A took or stopped each.
async fn flood(peer: HandmadePeer, rounds: usize, streams: usize, len: usize) {
    for _ in 0..rounds {
        let (endpoint, connection) = peer.connect().await;
        let mut open = Vec::new();
        for _ in 0..streams {
            let Ok(mut stream) = connection.open_uni().await else { break };
            let _ = stream.write_all(&(len as u32).to_le_bytes()).await;
            let _ = stream.write_all(&vec![0xab; len]).await;
            let _ = stream.finish();
            open.push(stream);
        }
        for stream in open {
            let _ = tokio::time::timeout(WAIT, stream.stopped()).await;
        }
        connection.close(0u32.into(), b"again");
        endpoint.wait_idle().await;
    }
}

/// While `peer` floods A (`flood`), B's engine sends `messages` to A's; returns how many
/// arrived, and the most resident memory A's transport had meanwhile.
fn honest_traffic_beside(a: &Node, b: &Node, peer: HandmadePeer, (rounds, streams, len): (usize, usize, usize), messages: usize) -> (usize, u64) {
    let resident = || a.service(ServiceKind::Transport)["resident_bytes"].as_u64().unwrap_or(0);
    with_rpc(async {
        let on_a = attach_engine(a, |_| {}).await;
        let on_b = attach_engine(b, |_| {}).await;
        assert!(send_when_routable(&on_b, on_a.identity(), b"first").await, "B reaches A");
        let flooding = tokio::task::spawn_local(flood(peer, rounds, streams, len));
        let mut most = resident();
        for i in 0..messages {
            on_b.send(on_a.identity(), (i as u64).to_le_bytes().to_vec()).await.expect("B's engine sends");
            if i % 20 == 0 {
                most = most.max(resident());
            }
        }
        let first = tokio::time::timeout(WAIT, on_a.recv()).await.expect("a message").expect("open");
        assert_eq!(first.body, b"first");
        let mut received = 0;
        while received < messages {
            match tokio::time::timeout(WAIT, on_a.recv()).await {
                Ok(Some(_)) => received += 1,
                _ => break,
            }
            most = most.max(resident());
        }
        flooding.await.expect("the flood ran");
        (received, most.max(resident()))
    })
}

#[test]
fn a_peer_reconnecting_and_opening_streams_in_a_loop_is_bounded_and_starves_no_other_node() {
    let a = Node::up();
    let b = Node::up();
    link(&a, &b);
    let before = a.service(ServiceKind::Transport)["resident_bytes"].as_u64().unwrap_or(0);
    let started = std::time::Instant::now();
    let (received, most) = honest_traffic_beside(&a, &b, HandmadePeer::admitted_by(&a), (100, 20, 60_000), 300);
    eprintln!(
        "100 connections x 20 junk streams of 60 KB in {:?}: B's {received}/300 messages arrived; A's transport {} MiB resident before, {} MiB at most; frames received {}, router malformed {}",
        started.elapsed(),
        before >> 20,
        most >> 20,
        a.counter(ServiceKind::Transport, "frames_received"),
        a.router_counter("dropped_malformed"),
    );
    assert_eq!(received, 300, "every message from the honest node arrived meanwhile");
    assert!(most < before + (64 << 20), "the transport's memory stays bounded: {before} -> {most} bytes");
}

#[test]
fn a_peer_sending_frames_of_the_largest_size_at_once_is_bounded_in_memory() {
    let a = Node::up();
    let b = Node::up();
    link(&a, &b);
    let before = a.service(ServiceKind::Transport)["resident_bytes"].as_u64().unwrap_or(0);
    let largest = a.node_home().config.max_frame_bytes();
    let started = std::time::Instant::now();
    let (received, most) = honest_traffic_beside(&a, &b, HandmadePeer::admitted_by(&a), (3, 100, largest), 200);
    eprintln!(
        "3 connections x 100 streams at once of {largest}-byte junk frames in {:?}: B's {received}/200 messages arrived; A's transport {} MiB resident before, {} MiB at most",
        started.elapsed(),
        before >> 20,
        most >> 20,
    );
    assert_eq!(received, 200, "every message from the honest node arrived meanwhile");
    assert!(most < before + (128 << 20), "the transport's memory stays bounded: {before} -> {most} bytes");
}
