//! Topics on one node, between real processes: subscribers on the rings and on the socket get
//! every event in order; only the advertised publisher publishes; a subscriber that never reads
//! back-pressures the publisher (Block) or is cut and sees the gap (CutSlow); and the CLI
//! creates, publishes, subscribes and lists.

use netmachine_engine::{Destination, Engine, EngineError, EngineMessage, Received, Scope, SendRefusal, TopicAdvert, TopicPolicy, TopicRefusal};
use netmachine_schema::Keypair;
use netmachine_service::ServiceKind;
use netmachine_tests::{attach_engine, bin_dir, wait_until, with_rpc, Node};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// A topic `publisher` publishes on, created by `creator`.
async fn create(creator: &Engine, publisher: &Engine, policy: TopicPolicy) -> netmachine_engine::Identity {
    let advert = TopicAdvert::sign(&Keypair::generate(), publisher.identity(), vec!["test".into()], 1);
    let topic = advert.topic;
    creator.create_topic(advert, Scope::Any, policy).await.expect("create the topic");
    topic
}

/// The next event or gap, within the deadline.
async fn next(engine: &Engine) -> Received {
    tokio::time::timeout(WAIT, engine.recv_event()).await.expect("an event within the deadline").expect("the engine is open")
}

/// Events and gaps until event `last` is taken or missed, in order, pausing a moment every
/// `pause_every` events taken: (events taken, events reported missing).
async fn take_or_miss(engine: &Engine, last: u64, pause_every: Option<u64>) -> (u64, u64) {
    let (mut events, mut missed, mut at) = (0u64, 0u64, 0u64);
    while at < last {
        match next(engine).await {
            Received::Event(event) => {
                assert!(event.seq > at, "in order");
                (events, at) = (events + 1, event.seq);
            }
            Received::Gap(gap) => {
                assert_eq!(gap.from, at + 1, "a gap starts right after the last event taken");
                (missed, at) = (missed + gap.to - gap.from + 1, gap.to);
            }
            other => panic!("{other:?}"),
        }
        if pause_every.is_some_and(|every| events % every == 0) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    assert_eq!(events + missed, at, "every sequence up to {at} taken or reported missing");
    (events, missed)
}

/// The bodies (each a little-endian count) of the next `count` events; anything else fails.
async fn take_all(engine: &Engine, count: u64) -> Vec<u64> {
    let mut bodies = Vec::new();
    while (bodies.len() as u64) < count {
        match next(engine).await {
            Received::Event(event) => bodies.push(u64::from_le_bytes(event.body.try_into().expect("8 bytes"))),
            other => panic!("only events expected, got {other:?}"),
        }
    }
    bodies
}

#[test]
fn subscribers_on_rings_and_on_the_socket_get_every_event_in_order() {
    let node = Node::up();
    with_rpc(async {
        let publisher = attach_engine(&node, |_| {}).await;
        let on_ring = attach_engine(&node, |_| {}).await;
        let on_socket = attach_engine(&node, |o| o.ring = false).await;
        assert!(on_ring.on_ring() && !on_socket.on_ring());
        let topic = create(&publisher, &publisher, TopicPolicy::Block).await;
        for subscriber in [&on_ring, &on_socket] {
            subscriber.subscribe(topic, Scope::Local).await.expect("subscribe");
        }
        const EVENTS: u64 = 5_000;
        let publishing = async {
            for n in 1..=EVENTS {
                publisher.publish(topic, n.to_le_bytes().to_vec()).await.expect("publish");
            }
        };
        let ((), ring_bodies, socket_bodies) = tokio::join!(publishing, take_all(&on_ring, EVENTS), take_all(&on_socket, EVENTS));
        let expected: Vec<u64> = (1..=EVENTS).collect();
        assert_eq!(ring_bodies, expected, "the ring subscriber got every event, in order");
        assert_eq!(socket_bodies, expected, "the socket subscriber got every event, in order");
        assert_eq!(on_ring.event_counts(), (0, 0), "no repeats, no gaps");
        let listed: serde_json::Value = serde_json::from_slice(&node.cli(&["topics", "--json"]).stdout).expect("topics --json");
        assert_eq!(listed[0]["subscribers"].as_array().map(Vec::len), Some(2), "{listed}");
        assert_eq!(listed[0]["last_seq"], 5_000);
    });
    assert_eq!(node.router_counter("topic_event_deliveries"), 10_000);
}

#[test]
fn between_ring_engines_events_go_ring_to_ring_in_order_while_a_socket_subscriber_comes_and_goes() {
    let node = Node::up();
    with_rpc(async {
        let publisher = attach_engine(&node, |_| {}).await;
        let (first, second) = (attach_engine(&node, |_| {}).await, attach_engine(&node, |_| {}).await);
        let passer_by = attach_engine(&node, |o| o.ring = false).await;
        let topic = create(&publisher, &publisher, TopicPolicy::Block).await;
        for subscriber in [&first, &second] {
            subscriber.subscribe(topic, Scope::Local).await.expect("subscribe");
        }
        // Events go by the topic's lane while every subscriber is on rings, through the router's
        // main thread while the socket subscriber is there, and by the lane again after.
        const EVENTS: u64 = 30_000;
        let subscribed_after = std::cell::Cell::new(0u64);
        let publishing = async {
            for n in 1..=EVENTS {
                publisher.publish(topic, n.to_le_bytes().to_vec()).await.expect("publish");
                if n == 10_000 {
                    subscribed_after.set(passer_by.subscribe(topic, Scope::Local).await.expect("subscribe").last_seq);
                }
                if n == 20_000 {
                    passer_by.unsubscribe(topic).await.expect("unsubscribe");
                }
            }
            // After every event it could get: the router routes the publisher's messages in order.
            publisher.send(passer_by.identity(), b"end".to_vec()).await.expect("send");
        };
        // What the router delivered to it, as it came (its events are read after it left).
        let passing = async {
            let mut seqs = Vec::new();
            loop {
                let message = tokio::time::timeout(WAIT, passer_by.recv()).await.expect("a message within the deadline").expect("open");
                match message.dst {
                    Destination::Topic(_) => seqs.push(message.id),
                    _ if message.body == b"end" => return seqs,
                    _ => panic!("{message:?}"),
                }
            }
        };
        let ((), first_bodies, second_bodies, passed) = tokio::join!(publishing, take_all(&first, EVENTS), take_all(&second, EVENTS), passing);
        let expected: Vec<u64> = (1..=EVENTS).collect();
        assert_eq!(first_bodies, expected, "every event, in order, once");
        assert_eq!(second_bodies, expected, "every event, in order, once");
        let from = subscribed_after.get() + 1;
        assert!(!passed.is_empty() && passed == (from..from + passed.len() as u64).collect::<Vec<_>>(), "the socket subscriber got a run from {from} with no hole: {} events", passed.len());
        assert!(passed.len() < 20_000, "and none after it left");
        assert_eq!((first.event_counts(), second.event_counts()), ((0, 0), (0, 0)), "no repeats, no gaps");
        assert!(node.router_counter("ring_topic_events_forwarded") > 0, "the lane carried events");
        assert_eq!(node.router_counter("topic_event_deliveries"), 2 * EVENTS + passed.len() as u64, "every delivery counted once");
    });
}

#[test]
fn large_events_over_the_socket_and_small_ones_on_the_rings_keep_their_order() {
    // Events up to 64 KiB: one too large to leave the node still fits a subscriber's ring.
    let node = Node::up_with(&["limits.max_message_bytes=65536"]);
    with_rpc(async {
        let publisher = attach_engine(&node, |_| {}).await;
        let subscriber = attach_engine(&node, |_| {}).await;
        // Scope Local: an event too large to leave the node is still an event here.
        let advert = TopicAdvert::sign(&Keypair::generate(), publisher.identity(), vec![], 1);
        let topic = advert.topic;
        publisher.create_topic(advert, Scope::Local, TopicPolicy::Block).await.expect("create");
        subscriber.subscribe(topic, Scope::Local).await.expect("subscribe");
        let large = publisher.max_message_bytes() - netmachine_schema::PEER_EVENT_OVERHEAD + 1;
        const SMALL: u64 = 5_000;
        const LARGE: u64 = 20;
        // Two tasks of one engine publish at once: the large events go over the socket, the
        // small ones on the rings.
        let smalls = async {
            for _ in 0..SMALL {
                publisher.publish(topic, vec![1; 16]).await.expect("publish small");
            }
        };
        let larges = async {
            for _ in 0..LARGE {
                publisher.publish(topic, vec![2; large]).await.expect("publish large");
                tokio::task::yield_now().await;
            }
        };
        let ((), (), (events, missed)) = tokio::join!(smalls, larges, take_or_miss(&subscriber, SMALL + LARGE, None));
        assert_eq!((events, missed), (SMALL + LARGE, 0), "every event, in sequence, none refused: {}", node.status()["drops"]);
    });
}

#[test]
fn by_the_lane_a_slow_ring_subscriber_sets_the_pace_under_block_and_is_cut_under_cut_slow() {
    let node = Node::up_with(&["router.ring_bytes=65536"]);
    with_rpc(async {
        for policy in [TopicPolicy::Block, TopicPolicy::CutSlow] {
            let publisher = attach_engine(&node, |_| {}).await;
            let fast = attach_engine(&node, |_| {}).await;
            let slow = attach_engine(&node, |o| o.inbox_capacity = 1).await;
            let topic = create(&publisher, &publisher, policy).await;
            for subscriber in [&fast, &slow] {
                subscriber.subscribe(topic, Scope::Local).await.expect("subscribe");
            }
            const EVENTS: u64 = 20_000;
            // Once the last is published, one more now and then shows a subscriber the last
            // was cut, until both are done.
            let done = std::cell::Cell::new(0);
            let publishing = async {
                let mut tail = 0u64;
                for _ in 1..=EVENTS {
                    publisher.publish(topic, vec![1; 200]).await.expect("publish");
                }
                while done.get() < 2 {
                    publisher.publish(topic, vec![2; 8]).await.expect("publish");
                    tail += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                tail
            };
            let counted = |taken: (u64, u64)| {
                done.set(done.get() + 1);
                taken
            };
            // The slow subscriber takes a pause every 500 events; each takes until the last is in.
            let cut_before = node.router_counter("topic_events_cut");
            let fast_taking = async { counted(take_or_miss(&fast, EVENTS, None).await) };
            let slow_taking = async { counted(take_or_miss(&slow, EVENTS, Some(500)).await) };
            let (tail, (fast_events, fast_missed), (events, missed)) = tokio::join!(publishing, fast_taking, slow_taking);
            assert!(fast_events + fast_missed >= EVENTS && events + missed >= EVENTS, "{policy:?}: up to the last");
            let cut = node.router_counter("topic_events_cut") - cut_before;
            match policy {
                TopicPolicy::Block => assert_eq!((fast_missed, missed, cut), (0, 0, 0), "under Block the slowest sets the pace: nothing missed"),
                _ => {
                    // Each one missed was cut and counted; of the tail, at most all were cut too.
                    let told = missed + fast_missed;
                    assert!(missed > 0 && (told..=told + 2 * tail).contains(&cut), "under CutSlow the slow one misses events ({missed}), each counted ({cut}, tail {tail})");
                }
            }
        }
        assert!(node.router_counter("ring_topic_events_forwarded") > 0, "the lane carried events");
    });
}

#[test]
fn only_the_advertised_publisher_publishes_and_only_the_creator_deletes() {
    let node = Node::up();
    with_rpc(async {
        let (creator, publisher, intruder) = (attach_engine(&node, |_| {}).await, attach_engine(&node, |_| {}).await, attach_engine(&node, |_| {}).await);
        let topic = create(&creator, &publisher, TopicPolicy::Block).await;
        intruder.subscribe(topic, Scope::Local).await.expect("anyone may subscribe");
        match intruder.publish(topic, b"forged".to_vec()).await {
            Err(EngineError::Refused { reason: SendRefusal::Denied, detail }) => assert!(detail.contains("not the publisher"), "{detail}"),
            other => panic!("an event from an engine other than the publisher must be denied: {other:?}"),
        }
        // Written to its ring as a plain message, the router denies and counts it.
        let forged = EngineMessage::new(intruder.identity(), Destination::Topic(topic), 1, b"forged".to_vec());
        intruder.send_message(forged).await.expect("written to the ring");
        wait_until("the router denies the forged event", WAIT, || node.router_counter("dropped_denied") == 1);
        let forged_advert = TopicAdvert { publisher: intruder.identity(), ..TopicAdvert::sign(&Keypair::generate(), publisher.identity(), vec![], 1) };
        assert!(matches!(intruder.create_topic(forged_advert, Scope::Any, TopicPolicy::Block).await, Err(EngineError::TopicRefused { reason: TopicRefusal::BadAdvert, .. })));
        let max = publisher.max_message_bytes();
        assert!(matches!(publisher.publish(topic, vec![0; max + 1]).await, Err(EngineError::TooLarge { .. })));
        assert_eq!(publisher.publish(topic, b"genuine".to_vec()).await.expect("the publisher publishes"), 1, "refused events used no sequence");
        match next(&intruder).await {
            Received::Event(event) => assert_eq!((event.body.as_slice(), event.seq), (&b"genuine"[..], 1)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(publisher.delete_topic(topic).await, Err(EngineError::TopicRefused { reason: TopicRefusal::Denied, .. })));
        creator.delete_topic(topic).await.expect("the creator deletes");
        // On the rings an event is taken once in the outbox: the router refuses it there, and
        // the publisher's next event asks the router again, and is refused at once.
        assert_eq!(publisher.publish(topic, b"late".to_vec()).await.expect("in the outbox ring"), 2);
        wait_until("the router refuses the late event", WAIT, || node.router_counter("dropped_no_route") >= 1);
        let refused = publisher.publish(topic, b"later".to_vec()).await;
        assert!(matches!(refused, Err(EngineError::Refused { reason: SendRefusal::NoRoute, .. })), "no such topic any more: {refused:?}");
        assert!(matches!(intruder.subscribe(topic, Scope::Local).await, Err(EngineError::TopicRefused { reason: TopicRefusal::Unknown, .. })));
    });
    assert_eq!(node.router_counter("dropped_denied"), 1);
}

#[test]
fn a_subscriber_that_never_reads_back_pressures_the_publisher_without_memory_growing() {
    let node = Node::up_with(&["limits.engine_queue=64", "router.ring_bytes=65536"]);
    let router_rss = || -> u64 {
        let pid = node.pid(ServiceKind::Router).expect("router pid");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("router status");
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
        line.split_whitespace().nth(1).and_then(|kb| kb.parse().ok()).expect("a number of kB")
    };
    with_rpc(async {
        let publisher = attach_engine(&node, |_| {}).await;
        let stuck = attach_engine(&node, |o| o.inbox_capacity = 1).await;
        let topic = create(&publisher, &publisher, TopicPolicy::Block).await;
        stuck.subscribe(topic, Scope::Local).await.expect("subscribe");
        let body = vec![7u8; 200];
        let mut accepted = 0u64;
        let slowest = loop {
            match publisher.try_publish(topic, body.clone()).await {
                Ok(_) => accepted += 1,
                Err(EngineError::BackPressured { slowest, .. }) => break slowest,
                Err(other) => panic!("{other}"),
            }
            assert!(accepted < 100_000, "the publisher was never back-pressured");
        };
        assert_eq!(slowest, stuck.identity(), "BackPressured names the subscriber that does not read");
        let listed: serde_json::Value = serde_json::from_slice(&node.cli(&["topics", "--json"]).stdout).expect("topics --json");
        assert_eq!(listed[0]["slow"][0], stuck.identity().to_string(), "topics shows the slow subscriber: {listed}");
        // Many more attempts: all refused at once, none held, and the router does not grow.
        let before = router_rss();
        for _ in 0..5_000 {
            assert!(matches!(publisher.try_publish(topic, body.clone()).await, Err(EngineError::BackPressured { .. })));
        }
        assert_eq!(node.router_counter("messages_waiting"), 0);
        let grown = router_rss().saturating_sub(before);
        assert!(grown < 8 << 10, "the router grew {grown} kB while refusing events");
        // The stuck subscriber reads at last: every accepted event is there, in order.
        for seq in 1..=accepted {
            match next(&stuck).await {
                Received::Event(event) => assert_eq!(event.seq, seq),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(publisher.try_publish(topic, body.clone()).await.expect("room again"), accepted + 1, "refused attempts used no sequence");
    });
}

#[test]
fn under_cut_slow_a_subscriber_that_fell_behind_is_told_the_gap_and_the_rest_arrive() {
    let node = Node::up_with(&["limits.engine_queue=64", "router.ring_bytes=65536"]);
    with_rpc(async {
        let publisher = attach_engine(&node, |_| {}).await;
        let slow = attach_engine(&node, |o| o.inbox_capacity = 1).await;
        let topic = create(&publisher, &publisher, TopicPolicy::CutSlow).await;
        slow.subscribe(topic, Scope::Local).await.expect("subscribe");
        const EVENTS: u64 = 3_000;
        for _ in 0..EVENTS {
            publisher.try_publish(topic, vec![1u8; 200]).await.expect("CutSlow never back-pressures");
        }
        // Read everything; whenever nothing comes for a moment, publish one more event, which
        // lands once the subscriber has room and shows where the sequence stands.
        let (mut events, mut missed, mut last) = (0u64, 0u64, 0u64);
        let deadline = std::time::Instant::now() + WAIT;
        while last <= EVENTS {
            match tokio::time::timeout(Duration::from_millis(200), slow.recv_event()).await {
                Ok(Some(Received::Event(event))) => {
                    assert!(event.seq > last, "in order");
                    (events, last) = (events + 1, event.seq);
                }
                Ok(Some(Received::Gap(gap))) => {
                    assert_eq!(gap.from, last + 1, "a gap starts right after the last event taken");
                    missed += gap.to - gap.from + 1;
                    last = gap.to;
                }
                Ok(other) => panic!("{other:?}"),
                Err(_) => {
                    assert!(std::time::Instant::now() < deadline, "the tail never arrived");
                    publisher.publish(topic, vec![2u8; 8]).await.expect("CutSlow never waits");
                }
            }
        }
        assert_eq!(events + missed, last, "every sequence was either taken or reported missing");
        assert!(missed > 0, "a subscriber that did not read for {EVENTS} events missed some");
        assert_eq!(slow.event_counts().1, missed);
        assert_eq!(node.router_counter("topic_events_cut"), missed, "the router counted each event it cut");
    });
}

#[test]
fn the_cli_creates_a_topic_publishes_lines_and_a_subscriber_prints_them() {
    let node = Node::up();
    let (key, _) = node.engine_key("publisher");
    let (subscriber_key, _) = node.engine_key("subscriber");
    let created = node.cli(&["topic", "create", "--key", key.to_str().unwrap(), "--tag", "news"]);
    assert!(created.status.success(), "{created:?}");
    let topic = String::from_utf8(created.stdout).unwrap().trim().to_string();
    assert_eq!(topic.len(), 64, "topic create prints the topic's identity");
    let mut subscriber = Command::new(bin_dir().join("netmachine"))
        .args(["subscribe", "--key", subscriber_key.to_str().unwrap(), "--topic", &topic, "--home"])
        .arg(node.root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start subscribe");
    let mut said = BufReader::new(subscriber.stderr.take().unwrap()).lines();
    let first = said.next().expect("subscribe says it subscribed").expect("a line");
    assert!(first.starts_with("subscribed to"), "{first}");
    let mut publish = Command::new(bin_dir().join("netmachine"))
        .args(["publish", "--key", key.to_str().unwrap(), "--topic", &topic, "-", "--home"])
        .arg(node.root())
        .stdin(Stdio::piped())
        .spawn()
        .expect("start publish");
    publish.stdin.take().unwrap().write_all(b"one\ntwo\nthree\n").unwrap();
    assert!(publish.wait().unwrap().success());
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stdout = subscriber.stdout.take().unwrap();
    std::thread::spawn(move || BufReader::new(stdout).lines().map_while(Result::ok).for_each(|l| drop(lines_tx.send(l))));
    let printed: Vec<String> = (0..3).map(|_| lines.recv_timeout(WAIT).expect("an event line")).collect();
    assert_eq!(printed, ["one", "two", "three"]);
    let listed = String::from_utf8(node.cli(&["topics"]).stdout).unwrap();
    assert!(listed.contains(&topic) && listed.contains("last event 3"), "{listed}");
    let _ = subscriber.kill();
    let _ = subscriber.wait();
}

#[test]
fn after_kill_9_of_the_router_mid_stream_topics_come_back_and_every_event_is_taken_or_reported_missing() {
    let node = Node::up();
    with_rpc(async {
        let publisher = attach_engine(&node, |_| {}).await;
        let subscriber = attach_engine(&node, |_| {}).await;
        let topic = create(&publisher, &publisher, TopicPolicy::Block).await;
        subscriber.subscribe(topic, Scope::Local).await.expect("subscribe");
        let router = node.pid(ServiceKind::Router).expect("router pid");
        // Publish until the subscriber has taken events well past the first one accepted by the
        // restarted router.
        let (resumed_at, done) = (std::cell::Cell::new(None::<u64>), std::cell::Cell::new(false));
        let publishing = async {
            let mut refused = 0u64;
            let mut n = 0u64;
            while !done.get() {
                n += 1;
                if n == 200 {
                    node.kill9(ServiceKind::Router);
                }
                match publisher.publish(topic, n.to_le_bytes().to_vec()).await {
                    Ok(seq) if resumed_at.get().is_none() && n > 200 && n % 20 == 0 => {
                        if node.pid(ServiceKind::Router).is_some_and(|p| p != router) {
                            resumed_at.set(Some(seq));
                        }
                    }
                    Ok(_) => {}
                    Err(_) => refused += 1,
                }
                assert!(n < 200_000, "publishing never resumed after the router restarted");
            }
            refused
        };
        let receiving = async {
            let (mut events, mut missed, mut last) = (0u64, 0u64, 0u64);
            while resumed_at.get().is_none_or(|at| last < at + 50) {
                match tokio::time::timeout(Duration::from_secs(30), subscriber.recv_event()).await {
                    Ok(Some(Received::Event(event))) => (events, last) = (events + 1, event.seq),
                    Ok(Some(Received::Gap(gap))) => (missed, last) = (missed + gap.to - gap.from + 1, gap.to),
                    other => panic!("events stopped: {other:?}"),
                }
            }
            done.set(true);
            (events, missed, last)
        };
        let (refused, (events, missed, last)) = tokio::join!(publishing, receiving);
        assert_eq!(events + missed, last, "every sequence up to {last} was taken or reported missing");
        assert!(missed <= refused + 2 * 1024, "missed {missed}: only what the killed router held or refused ({refused})");
    });
}

#[test]
fn a_try_publish_and_an_unsubscribe_queued_behind_a_burst_of_publishes_are_each_answered() {
    let node = Node::up();
    with_rpc(async {
        let publisher = attach_engine(&node, |_| {}).await;
        let subscriber = attach_engine(&node, |_| {}).await;
        let topic = create(&publisher, &publisher, TopicPolicy::Block).await;
        subscriber.subscribe(topic, Scope::Local).await.expect("subscribe");
        for round in 0..20u64 {
            // Publishes queue on the engine thread; the calls behind them must not wait for
            // another command to come before they are made.
            let burst = futures::future::join_all((0..64).map(|_| publisher.publish(topic, b"burst".to_vec())));
            let tried = async { publisher.try_publish(topic, b"tried".to_vec()).await };
            let refused = async { publisher.unsubscribe(topic).await };
            let (published, tried, refused) = tokio::time::timeout(WAIT, async { tokio::join!(burst, tried, refused) })
                .await
                .unwrap_or_else(|_| panic!("round {round}: a call behind the burst was never made"));
            assert!(published.iter().all(Result::is_ok) && tried.is_ok(), "round {round}");
            assert!(matches!(refused, Err(EngineError::TopicRefused { reason: TopicRefusal::NotSubscribed, .. })), "round {round}: {refused:?}");
            let mut taken = 0;
            while taken < 65 {
                match next(&subscriber).await {
                    Received::Event(_) => taken += 1,
                    other => panic!("{other:?}"),
                }
            }
        }
    });
}
