//! Engines in separate processes exchange messages through the router: one-way sends,
//! request/response, and the refusals a sender must hear about.

use netmachine_engine::{EngineError, SendRefusal};
use netmachine_tests::{attach_engine, attach_raw, with_rpc, Node};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn two_engine_processes_exchange_messages_and_a_request() {
    let node = Node::up();
    let (alice_key, alice) = node.engine_key("alice");
    let (bob_key, bob) = node.engine_key("bob");
    let bob_listens = node.listen(&bob_key, &bob, &["--echo"]);
    let alice_listens = node.listen(&alice_key, &alice, &[]);
    let (carol_key, carol) = node.engine_key("carol");
    let carol_key = carol_key.to_str().unwrap();

    let sent = node.cli(&["send", "--key", carol_key, "--to", &bob, "hello bob"]);
    assert!(sent.status.success(), "{sent:?}");
    let message = bob_listens.next_message(Duration::from_secs(10));
    assert_eq!(message["body"], "hello bob");
    assert_eq!(message["src"], carol);

    let sent = node.cli(&["send", "--key", carol_key, "--to", &alice, "hello alice"]);
    assert!(sent.status.success(), "{sent:?}");
    assert_eq!(alice_listens.next_message(Duration::from_secs(10))["body"], "hello alice");

    // A request waits for its reply: bob's listener echoes it back.
    let asked = node.cli(&["request", "--key", carol_key, "--to", &bob, "ping"]);
    assert!(asked.status.success(), "{asked:?}");
    assert_eq!(String::from_utf8_lossy(&asked.stdout).trim(), "ping");
    let request = bob_listens.next_message(Duration::from_secs(10));
    assert_eq!(request["body"], "ping");
    assert_eq!(request["reply_to"], serde_json::Value::Null);
}

#[test]
fn messages_arrive_in_order_and_none_is_lost() {
    let node = Node::up();
    with_rpc(async {
        let receiver = attach_engine(&node, |_| {}).await;
        let sender = attach_engine(&node, |_| {}).await;
        let count = 2000u32;
        let sending = async {
            for n in 0..count {
                sender.send(receiver.identity(), n.to_le_bytes().to_vec()).await.expect("send");
            }
        };
        let receiving = async {
            for n in 0..count {
                let message = receiver.recv().await.expect("message");
                assert_eq!(message.body, n.to_le_bytes(), "message {n} out of order");
                assert_eq!(message.src, sender.identity());
            }
        };
        tokio::join!(sending, receiving);
    });
    assert_eq!(node.status()["drops"].as_object().map(|d| d.values().filter_map(|v| v.as_u64()).sum::<u64>()), Some(0));
}

#[test]
fn a_socket_engine_whose_inbox_is_full_still_gets_messages_in_order() {
    let node = Node::up();
    with_rpc(async {
        // The router keeps many deliveries in flight; all wait while the small inbox is full.
        let receiver = attach_engine(&node, |o| {
            o.ring = false;
            o.inbox_capacity = 4;
        })
        .await;
        let sender = attach_engine(&node, |_| {}).await;
        let count = 5000u32;
        let sending = async {
            for n in 0..count {
                sender.send(receiver.identity(), n.to_le_bytes().to_vec()).await.expect("send");
            }
        };
        let receiving = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            for n in 0..count {
                let message = tokio::time::timeout(Duration::from_secs(10), receiver.recv()).await.expect("within the deadline").expect("message");
                assert_eq!(message.body, n.to_le_bytes(), "message {n} out of order");
            }
        };
        tokio::join!(sending, receiving);
    });
}

#[test]
fn a_send_to_an_unknown_engine_fails_with_a_reason_and_is_counted() {
    let node = Node::up();
    let (key, _) = node.engine_key("lonely");
    let nobody = "ab".repeat(32);
    let sent = node.cli(&["send", "--key", key.to_str().unwrap(), "--to", &nobody, "anyone?"]);
    assert!(!sent.status.success());
    let stderr = String::from_utf8_lossy(&sent.stderr);
    assert!(stderr.contains("NoRoute") && stderr.contains(&nobody), "{stderr}");
    assert_eq!(node.router_counter("dropped_no_route"), 1);

    let bad = node.cli(&["send", "--key", key.to_str().unwrap(), "--to", "xyz", "x"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("expected 64 hex digits"), "{bad:?}");
}

#[test]
fn an_oversized_message_gets_a_clear_error() {
    let node = Node::up_with(&["limits.max_message_bytes=4096"]);
    let (key, _) = node.engine_key("big");
    let (other_key, other) = node.engine_key("other");
    let _listens = node.listen(&other_key, &other, &[]);
    let mut send = Command::new(netmachine_tests::bin_dir().join("netmachine"))
        .args(["send", "--key", key.to_str().unwrap(), "--to", &other, "-", "--home"])
        .arg(node.root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("send");
    send.stdin.take().unwrap().write_all(&[b'x'; 5000]).unwrap();
    let output = send.wait_with_output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("5000 bytes, over the node's limit of 4096"), "{stderr}");

    // An engine that skips the SDK's check (a session of its own) is refused by the router
    // itself, and it is counted.
    let refused = with_rpc(async {
        use netmachine_schema::router_capnp::send_result;
        use netmachine_schema::{Destination, EngineLocation, EngineMessage, Keypair};
        let key = Keypair::generate();
        let locate = |here| EngineLocation::sign(&key, here, netmachine_schema::time::now_ms());
        let session = attach_raw(&node, key.identity(), &key, locate, capnp_rpc::new_future_client(std::future::pending())).await.expect("attach");
        let mut request = session.send_request();
        let dst = Destination::Engine(other.parse().expect("an engine id"));
        EngineMessage::new(key.identity(), dst, 1, vec![0; 4097]).write(request.get().init_message());
        let answer = tokio::time::timeout(Duration::from_secs(10), request.send().promise).await.expect("answered in time").expect("answered");
        let result = answer.get().and_then(|a| a.get_result()).expect("a result");
        match result.which().expect("a known result") {
            send_result::Refused(refused) => (refused.get_reason().expect("a known reason"), refused.get_detail().unwrap().to_string().unwrap()),
            send_result::Accepted(()) => panic!("the router accepted a message over its limit"),
        }
    });
    assert_eq!(refused.0, SendRefusal::OverLimit, "{}", refused.1);
    assert!(refused.1.contains("4097"), "{}", refused.1);
    assert_eq!(node.router_counter("dropped_over_limit"), 1);
}

#[test]
fn an_expired_message_is_refused_and_counted() {
    let node = Node::up();
    with_rpc(async {
        let receiver = attach_engine(&node, |_| {}).await;
        let sender = attach_engine(&node, |o| o.ring = false).await;
        let mut message = sender.message(receiver.identity(), b"stale".to_vec());
        message.expiry = Some(netmachine_schema::time::now_ms() - 1);
        let err = sender.send_message(message).await.unwrap_err();
        assert!(matches!(err, EngineError::Refused { reason: SendRefusal::Expired, .. }), "{err}");
    });
    assert_eq!(node.router_counter("dropped_expired"), 1);
}

#[test]
fn a_refusal_of_a_ring_message_comes_back_to_its_engine_and_fails_the_request() {
    let node = Node::up();
    with_rpc(async {
        let sender = attach_engine(&node, |_| {}).await;
        assert!(sender.on_ring(), "engines attach through the rings by default");
        let nobody: netmachine_engine::Identity = "ab".repeat(32).parse().unwrap();
        // On the ring a send returns once the message is in the outbox...
        sender.send(nobody, b"anyone?".to_vec()).await.expect("written to the outbox");
        // ...and the router's refusal comes back, counted by the engine.
        netmachine_tests::wait_until("the refusal comes back", Duration::from_secs(10), || sender.refused() == 1);
        // A request learns of its refusal at once instead of timing out.
        let err = sender.request(nobody, b"hello?".to_vec(), Duration::from_secs(30)).await.unwrap_err();
        assert!(matches!(err, EngineError::Refused { reason: SendRefusal::NoRoute, .. }), "{err}");
    });
    assert_eq!(node.router_counter("dropped_no_route"), 2);
}

#[test]
fn a_request_with_no_answer_times_out() {
    let node = Node::up();
    with_rpc(async {
        let silent = attach_engine(&node, |_| {}).await;
        let asker = attach_engine(&node, |_| {}).await;
        let err = asker.request(silent.identity(), b"hello?".to_vec(), Duration::from_millis(300)).await.unwrap_err();
        assert!(matches!(err, EngineError::Timeout(_)), "{err}");
        // The request itself was delivered; it is the answer that never came.
        assert_eq!(silent.recv().await.expect("request").body, b"hello?");
    });
}

#[test]
fn a_full_destination_pushes_back_on_the_sender_and_then_refuses() {
    let node = Node::up_with(&["limits.engine_queue=4", "limits.send_wait_ms=300"]);
    with_rpc(async {
        let slow = attach_engine(&node, |o| {
            o.inbox_capacity = 1;
            o.ring = false;
        })
        .await;
        let sender = attach_engine(&node, |o| o.ring = false).await;
        let mut accepted = 0;
        let refusal = loop {
            match sender.send(slow.identity(), vec![1; 16]).await {
                Ok(_) => accepted += 1,
                Err(err) => break err,
            }
            assert!(accepted < 10_000, "sends never pushed back");
        };
        assert!(matches!(refusal, EngineError::Refused { reason: SendRefusal::QueueFull, .. }), "{refusal}");
        // Everything accepted is still delivered once the slow engine reads.
        for _ in 0..accepted {
            tokio::time::timeout(Duration::from_secs(10), slow.recv()).await.expect("delivered").expect("message");
        }
    });
    assert_eq!(node.router_counter("dropped_queue_full"), 1);
}

#[test]
fn an_engine_on_the_socket_polls_what_it_is_sent_and_a_poll_with_nothing_for_it_ends_at_its_timeout() {
    let node = Node::up();
    with_rpc(async {
        let receiver = attach_engine(&node, |o| o.ring = false).await;
        let sender = attach_engine(&node, |o| o.ring = false).await;
        let to = receiver.identity();
        let (idled, idle_over) = tokio::sync::oneshot::channel();
        let polling = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let idle = receiver.poll_blocking(10, Duration::from_millis(300), |_| panic!("nothing was sent yet"));
            let waited = started.elapsed();
            let _ = idled.send(());
            let mut got = Vec::new();
            while got.len() < 3 && receiver.poll_blocking(10, Duration::from_secs(10), |m| got.push(m.body.to_vec())).expect("attached") > 0 {}
            (idle, waited, got)
        });
        tokio::time::timeout(Duration::from_secs(30), idle_over).await.expect("the idle poll ends").expect("its thread");
        let sending = tokio::task::spawn_blocking(move || sender.send_all_blocking(to, &[b"one", b"two", b"three"]).expect("sent"));
        tokio::time::timeout(Duration::from_secs(30), sending).await.expect("sent in time").expect("its thread");
        let (idle, waited, got) = tokio::time::timeout(Duration::from_secs(30), polling).await.expect("the polls end").expect("its thread");
        assert_eq!(idle, Some(0), "a poll that found nothing says so");
        assert!(waited >= Duration::from_millis(300), "it waited its timeout out: {waited:?}");
        assert_eq!(got, [b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]);
    });
}
