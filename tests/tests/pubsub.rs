//! Topics across nodes, between real processes: three nodes, a publisher on A with a subscriber
//! beside it and on B and C. The pubsub service of a subscriber node is killed (kill -9) while
//! events flow, and nothing is lost; the publisher node's is killed too, and every event is
//! either received, in order and once, or reported as a gap (its history went with it). A
//! topic's events reach another node only as their publisher signed them, from the node that
//! feeds it: a forged event, an event from another engine and an unreadable message are dropped
//! and counted; an event too large to be carried is refused to its publisher. A subscriber on
//! another node that never reads holds the publisher back (BackPressured), and nothing grows;
//! under policy CutSlow it is cut on its own node and told what it missed, and holds no one.
//! Watchers of both services (`netmachine events`) hear of the topic's advert, the
//! subscription, its reader, a full window and their end.

use netmachine_engine::{Engine, Received, Scope, TopicAdvert, TopicPolicy};
use netmachine_engine::Destination;
use netmachine_schema::{signing, EngineMessage, Identity, Keypair, PeerMessage, Says, PUBSUB_PROTOCOL};
use netmachine_service::ServiceKind;
use netmachine_tests::{attach_engine, link, wait_until, with_rpc, Node};
use std::cell::Cell;
use std::collections::BTreeSet;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// What one subscriber took: every event's sequence in the order received, and the gaps.
#[derive(Debug, Default)]
struct Taken {
    seqs: Vec<u64>,
    gaps: Vec<(u64, u64)>,
}

impl Taken {
    /// Every sequence of `first..=last` is either received or inside a reported gap, none twice,
    /// all in order.
    fn assert_accounted(&self, who: &str, first: u64, last: u64) {
        assert!(self.seqs.windows(2).all(|w| w[0] < w[1]), "{who}: events out of order or repeated");
        let received: BTreeSet<u64> = self.seqs.iter().copied().collect();
        let missing: Vec<u64> = (first..=last).filter(|s| !received.contains(s) && !self.gaps.iter().any(|(f, t)| f <= s && s <= t)).collect();
        assert!(missing.is_empty(), "{who}: {} events neither received nor reported, first {:?}", missing.len(), missing.first());
    }
}

/// Takes events and gaps until the one numbered `last` (known once the publisher is done) is
/// received or reported missing, each within the deadline; what it took so far if one does not
/// come.
async fn take_until(engine: &Engine, last: &Cell<u64>) -> Result<Taken, Taken> {
    let mut taken = Taken::default();
    let accounted = |taken: &Taken| taken.seqs.last().copied().max(taken.gaps.last().map(|(_, to)| *to)).unwrap_or(0);
    while accounted(&taken) < last.get() {
        let Ok(received) = tokio::time::timeout(WAIT, engine.recv_event()).await else { return Err(taken) };
        match received.expect("the engine is open") {
            Received::Event(event) => {
                assert_eq!(event.body, event.seq.to_le_bytes().repeat(8), "the body the publisher sent");
                taken.seqs.push(event.seq);
            }
            Received::Gap(gap) => taken.gaps.push((gap.from, gap.to)),
            Received::Message(message) => panic!("only events expected, got {message:?}"),
        }
    }
    Ok(taken)
}

/// Each subscriber's take, or a failure that shows what each took and the services' figures.
fn all_taken(nodes: [&Node; 3], takes: [Result<Taken, Taken>; 3]) -> [Taken; 3] {
    if takes.iter().any(Result::is_err) {
        let brief = |t: &Result<Taken, Taken>| t.as_ref().map_or_else(|t| format!("stalled after {:?} of {} ({} gaps)", t.seqs.last(), t.seqs.len(), t.gaps.len()), |t| format!("done, {} events", t.seqs.len()));
        let services: Vec<String> = nodes.iter().map(|n| format!("{}\n{}", n.service(ServiceKind::PubSub), n.service(ServiceKind::Router)["counters"])).collect();
        panic!("an event did not come within {WAIT:?}: {:?}\n{}", takes.iter().map(brief).collect::<Vec<_>>(), services.join("\n"));
    }
    takes.map(|t| t.unwrap_or_default())
}

/// A, B and C; B and C each linked to A.
fn three_nodes() -> (Node, Node, Node) {
    let (a, b, c) = (Node::up(), Node::up(), Node::up());
    link(&a, &b);
    link(&a, &c);
    (a, b, c)
}

/// The publisher's node feeds `readers` other nodes.
fn wait_readers(node: &Node, readers: u64) {
    wait_until("the subscriber nodes subscribe at the publisher's node", WAIT, || node.counter(ServiceKind::PubSub, "readers") == readers);
}

/// Waits until the subscriber nodes hold the topic's mirror: their subscriptions began (a pubsub
/// service killed before that subscribes afresh, from the publisher's next event).
fn wait_mirrors(nodes: &[&Node]) {
    wait_until("the subscriber nodes mirror the topic", WAIT, || nodes.iter().all(|node| node.counter(ServiceKind::Router, "topics") == 1));
}

/// An engine on `node` and the topic it publishes (scope Any, `policy`).
async fn publisher_of_a_topic(node: &Node, policy: TopicPolicy) -> (Engine, Identity) {
    let publisher = attach_engine(node, |_| {}).await;
    let advert = TopicAdvert::sign(&Keypair::generate(), publisher.identity(), vec![], 1);
    let topic = advert.topic;
    publisher.create_topic(advert, Scope::Any, policy).await.expect("create the topic");
    (publisher, topic)
}

/// Publishes events `from..=to`, each body its sequence repeated.
async fn publish(publisher: &Engine, topic: Identity, from: u64, to: u64) {
    for n in from..=to {
        let seq = publisher.publish(topic, n.to_le_bytes().repeat(8)).await.expect("publish");
        assert_eq!(seq, n);
    }
}

#[test]
fn subscribers_on_three_nodes_get_every_event_through_kills_of_the_pubsub_services() {
    let (a, b, c) = three_nodes();
    with_rpc(async {
        let publisher = attach_engine(&a, |_| {}).await;
        let advert = TopicAdvert::sign(&Keypair::generate(), publisher.identity(), vec!["test".into()], 1);
        let topic = advert.topic;
        publisher.create_topic(advert, Scope::Any, TopicPolicy::Block).await.expect("create the topic");
        let beside = attach_engine(&a, |_| {}).await;
        let on_b = attach_engine(&b, |_| {}).await;
        let on_c = attach_engine(&c, |_| {}).await;
        for subscriber in [&beside, &on_b, &on_c] {
            subscriber.subscribe(topic, Scope::Any).await.expect("subscribe");
        }
        wait_readers(&a, 2);
        wait_mirrors(&[&b, &c]);

        // B's pubsub is killed while events flow: it subscribes again from where B's router
        // stands and the rest comes from the publisher's history.
        const FIRST: u64 = 3_000;
        let last = Cell::new(FIRST);
        let publishing = async {
            publish(&publisher, topic, 1, 1_000).await;
            b.kill9(ServiceKind::PubSub);
            publish(&publisher, topic, 1_001, FIRST).await;
        };
        let ((), beside_taken, b_taken, c_taken) = tokio::join!(publishing, take_until(&beside, &last), take_until(&on_b, &last), take_until(&on_c, &last));
        let [beside_taken, b_taken, c_taken] = all_taken([&a, &b, &c], [beside_taken, b_taken, c_taken]);
        for (who, taken) in [("beside the publisher", &beside_taken), ("on B", &b_taken), ("on C", &c_taken)] {
            assert_eq!(taken.seqs, (1..=FIRST).collect::<Vec<_>>(), "{who}: every event, in order, once");
            assert!(taken.gaps.is_empty(), "{who}: no gap {:?}", taken.gaps);
        }

        // The publisher node's pubsub is killed: its history goes with it, but A's router kept
        // the topic's latest events for it, and gives them to the new one, which B and C
        // subscribe at again from where they stand: nothing is lost.
        const SECOND: u64 = FIRST + 1_000;
        last.set(SECOND);
        let publishing = async {
            publish(&publisher, topic, FIRST + 1, FIRST + 500).await;
            a.kill9(ServiceKind::PubSub);
            publish(&publisher, topic, FIRST + 501, SECOND).await;
        };
        let ((), beside_taken, b_taken, c_taken) = tokio::join!(publishing, take_until(&beside, &last), take_until(&on_b, &last), take_until(&on_c, &last));
        let [beside_taken, b_taken, c_taken] = all_taken([&a, &b, &c], [beside_taken, b_taken, c_taken]);
        assert_eq!(beside_taken.seqs, (FIRST + 1..=SECOND).collect::<Vec<_>>(), "beside the publisher nothing depends on pubsub");
        for (who, taken) in [("on B", &b_taken), ("on C", &c_taken)] {
            taken.assert_accounted(who, FIRST + 1, SECOND);
            assert!(taken.gaps.is_empty(), "{who}: nothing lost, though the service that held it died: gaps {:?}", taken.gaps);
        }

        // Events flow again once B and C read from the restarted service.
        wait_readers(&a, 2);
        const THIRD: u64 = SECOND + 500;
        last.set(THIRD);
        let ((), beside_taken, b_taken, c_taken) = tokio::join!(publish(&publisher, topic, SECOND + 1, THIRD), take_until(&beside, &last), take_until(&on_b, &last), take_until(&on_c, &last));
        for (who, taken) in [("beside the publisher", beside_taken), ("on B", b_taken), ("on C", c_taken)] {
            let taken = taken.unwrap_or_else(|t| panic!("{who} stalled after {:?}", t.seqs.last()));
            assert_eq!((taken.seqs, taken.gaps), ((SECOND + 1..=THIRD).collect::<Vec<_>>(), vec![]), "{who}: every event after the restart");
        }
        assert_eq!(b.counter(ServiceKind::PubSub, "events_forged") + c.counter(ServiceKind::PubSub, "events_forged"), 0);
    });
}

#[test]
fn events_lost_on_the_way_to_another_node_are_repaired_in_order() {
    // B's pubsub service drops 2% of the events that reach it, as a lossy link would.
    let (a, b) = (Node::up(), Node::up_with(&["pubsub.drop_received_permille=20"]));
    link(&a, &b);
    with_rpc(async {
        let (publisher, topic) = publisher_of_a_topic(&a, TopicPolicy::Block).await;
        let subscriber = attach_engine(&b, |_| {}).await;
        subscriber.subscribe(topic, Scope::Any).await.expect("subscribe");
        wait_readers(&a, 1);
        wait_mirrors(&[&b]);
        const EVENTS: u64 = 3_000;
        let last = Cell::new(EVENTS);
        let ((), taken) = tokio::join!(publish(&publisher, topic, 1, EVENTS), take_until(&subscriber, &last));
        let taken = taken.unwrap_or_else(|t| panic!("stalled after {:?} (B: {})", t.seqs.last(), b.service(ServiceKind::PubSub)["counters"]));
        assert!(taken.gaps.is_empty() && taken.seqs == (1..=EVENTS).collect::<Vec<_>>(), "{} events, gaps {:?}", taken.seqs.len(), taken.gaps);
        let (dropped, asked) = (b.counter(ServiceKind::PubSub, "events_dropped_injected"), b.counter(ServiceKind::PubSub, "resends_asked"));
        assert!(dropped > 0 && asked > 0, "events were lost on the way ({dropped}) and asked for again ({asked})");
    });
}

#[test]
fn forged_and_unreadable_pubsub_messages_are_dropped_and_counted() {
    let (a, b) = (Node::up(), Node::up());
    link(&a, &b);
    with_rpc(async {
        let (publisher, topic) = publisher_of_a_topic(&a, TopicPolicy::Block).await;
        let subscriber = attach_engine(&b, |_| {}).await;
        subscriber.subscribe(topic, Scope::Any).await.expect("subscribe");
        wait_readers(&a, 1);
        let last = Cell::new(1);
        let ((), taken) = tokio::join!(publish(&publisher, topic, 1, 1), take_until(&subscriber, &last));
        assert_eq!(taken.expect("the first event").seqs, vec![1]);

        // An intruder on A sends B's service events of the topic: one signed by itself in the
        // publisher's name, one genuine-looking but not from the engine that feeds B, and bytes
        // that are no pubsub message.
        let intruder = attach_engine(&a, |_| {}).await;
        let b_node: Identity = b.id().parse().expect("node id");
        let to_b = |body: Vec<u8>| {
            let mut message = intruder.message(Destination::Node(b_node), body);
            message.protocol = PUBSUB_PROTOCOL.into();
            message
        };
        let mut forged = EngineMessage::new(publisher.identity(), Destination::Topic(topic), 2, 2u64.to_le_bytes().repeat(8));
        forged.sig = Some(Keypair::generate().sign(&signing::engine_message(&forged)));
        intruder.send_message(to_b(PeerMessage::new(topic, Says::Event(forged)).encode())).await.expect("sent");
        intruder.send_message(to_b(vec![0xff; 64])).await.expect("sent");
        wait_until("B's service drops and counts both", WAIT, || {
            b.counter(ServiceKind::PubSub, "events_unexpected") >= 1 && b.counter(ServiceKind::PubSub, "messages_unreadable") >= 1
        });
        assert_eq!(b.counter(ServiceKind::PubSub, "events_received"), 1, "only the genuine event was taken");

        // The genuine event 2 still comes, once, after the ones B's service dropped.
        last.set(2);
        let ((), taken) = tokio::join!(publish(&publisher, topic, 2, 2), take_until(&subscriber, &last));
        let taken = taken.expect("the second event");
        assert_eq!((taken.seqs, taken.gaps), (vec![2], vec![]));

        // An event too large to be carried to other nodes is refused to its publisher at once;
        // its sequence was taken, so the subscriber is told of the gap before the next event.
        let carried_max = publisher.max_message_bytes() - netmachine_schema::PEER_EVENT_OVERHEAD;
        let refused = publisher.publish(topic, vec![0; carried_max + 1]).await;
        assert!(matches!(refused, Err(netmachine_engine::EngineError::Refused { reason: netmachine_engine::SendRefusal::OverLimit, .. })), "{refused:?}");
        last.set(4);
        let ((), taken) = tokio::join!(publish(&publisher, topic, 4, 4), take_until(&subscriber, &last));
        let taken = taken.expect("the event after the refused one");
        assert_eq!((taken.seqs, taken.gaps), (vec![4], vec![(3, 3)]));
    });
}

#[test]
fn a_subscriber_node_restarted_whole_resumes_and_gets_what_it_missed_from_the_publishers_history() {
    let (a, mut b) = (Node::up(), Node::up());
    link(&a, &b);
    with_rpc(async {
        let (publisher, topic) = publisher_of_a_topic(&a, TopicPolicy::Block).await;
        // An engine of its own process, on the socket: it outlives its node and attaches again.
        let subscriber = attach_engine(&b, |o| o.ring = false).await;
        subscriber.subscribe(topic, Scope::Any).await.expect("subscribe");
        wait_readers(&a, 1);
        let last = Cell::new(1_000);
        let ((), taken) = tokio::join!(publish(&publisher, topic, 1, 1_000), take_until(&subscriber, &last));
        let taken = taken.expect("the first thousand");
        assert_eq!((taken.seqs, taken.gaps), ((1..=1_000).collect::<Vec<_>>(), vec![]));

        // B stops, every service of it, and the topic goes on without it; then B starts again.
        assert!(b.stop().success(), "B stops cleanly");
        publish(&publisher, topic, 1_001, 2_000).await;
        b.start_again(&[]).await;
        last.set(3_000);
        let ((), taken) = tokio::join!(publish(&publisher, topic, 2_001, 3_000), take_until(&subscriber, &last));
        let [taken, _, _] = all_taken([&a, &b, &a], [taken, Ok(Taken::default()), Ok(Taken::default())]);
        assert!(taken.gaps.is_empty(), "what B missed came from A's history: gaps {:?}", taken.gaps);
        assert_eq!(taken.seqs, (1_001..=3_000).collect::<Vec<_>>(), "every event after the restart, in order, once");
    });
}

/// The resident memory of `node`'s service `kind`, in kB.
fn rss_kb(node: &Node, kind: ServiceKind) -> u64 {
    let pid = node.pid(kind).expect("a pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).and_then(|kb| kb.parse().ok()).expect("a number of kB")
}

/// The identity of `node`'s pubsub engine that talks to other nodes (its peers engine).
fn peers_engine(node: &Node) -> String {
    node.service(ServiceKind::PubSub)["engines"][1].as_str().expect("the pubsub service's engines").to_string()
}

#[test]
fn watchers_hear_of_adverts_subscriptions_and_readers_across_nodes() {
    let (a, b) = (Node::up(), Node::up());
    let (a_events, b_events) = (a.events(), b.events());
    link(&a, &b);
    with_rpc(async {
        let (publisher, topic) = publisher_of_a_topic(&a, TopicPolicy::Block).await;
        let about = |kind: &'static str| {
            let topic = topic.to_string();
            move |event: &serde_json::Value| event["event"] == kind && event["topic"] == topic.as_str()
        };
        let heard = b_events.wait_for("TopicAdvertReceived on B", WAIT, about("topic_advert_received"));
        assert_eq!((heard["detail"]["node"].as_str(), heard["detail"]["publisher"].as_str()), (Some(a.id().as_str()), Some(publisher.identity().to_string().as_str())));

        let subscriber = attach_engine(&b, |_| {}).await;
        subscriber.subscribe(topic, Scope::Any).await.expect("subscribe");
        let subscribed = b_events.wait_for("TopicSubscribed on B", WAIT, about("topic_subscribed"));
        assert_eq!((subscribed["detail"]["node"].as_str(), subscribed["detail"]["peer"].as_str()), (Some(a.id().as_str()), Some(peers_engine(&a).as_str())));
        let added = a_events.wait_for("a reader added on A", WAIT, about("topic_reader_added"));
        assert_eq!(added["detail"]["reader"].as_str(), Some(peers_engine(&b).as_str()));

        subscriber.unsubscribe(topic).await.expect("unsubscribe");
        let gone = b_events.wait_for("TopicUnsubscribed on B", WAIT, about("topic_unsubscribed"));
        assert!(gone["detail"].as_str().is_some_and(|why| why.contains("no engine")), "{gone}");
        let left = a_events.wait_for("the reader gone on A", WAIT, about("topic_reader_left"));
        assert_eq!((left["detail"]["reader"].as_str(), left["detail"]["reason"].as_str()), (Some(peers_engine(&b).as_str()), Some("it unsubscribed")));
    });
}

#[test]
fn a_subscriber_on_another_node_that_never_reads_back_pressures_the_publisher() {
    let (a, b) = (Node::up(), Node::up_with(&["limits.engine_queue=64"]));
    let a_events = a.events();
    link(&a, &b);
    with_rpc(async {
        let (publisher, topic) = publisher_of_a_topic(&a, TopicPolicy::Block).await;
        let stuck = attach_engine(&b, |o| o.inbox_capacity = 1).await;
        stuck.subscribe(topic, Scope::Any).await.expect("subscribe");
        wait_readers(&a, 1);

        // Events flow until B's router holds what its subscriber does not take, B's service stops
        // acknowledging, A's service has a full window and stops taking events: then A's router
        // refuses the publisher, naming A's service as the subscriber with no room.
        let body = |seq: u64| seq.to_le_bytes().repeat(8);
        let mut accepted = 0u64;
        let slowest = loop {
            match publisher.try_publish(topic, body(accepted + 1)).await {
                Ok(_) => accepted += 1,
                Err(netmachine_engine::EngineError::BackPressured { slowest, .. }) => break slowest,
                Err(other) => panic!("{other}"),
            }
            assert!(accepted < 100_000, "the publisher was never back-pressured");
            if accepted % 256 == 0 {
                // Give the window time to fill rather than race it.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let service = a.service(ServiceKind::PubSub);
        assert_eq!(Some(slowest.to_string().as_str()), service["engines"][0].as_str(), "BackPressured names A's pubsub service");
        let note = service["note"].as_str().unwrap_or_default().to_string();
        assert!(note.contains("slow readers") && note.contains(&topic.to_string()), "status shows the slow reader: {note}");
        let full = a_events.wait_for("the slow reader on A's events", WAIT, |e| e["event"] == "topic_reader_full" && e["topic"] == topic.to_string().as_str());
        assert_eq!(full["detail"]["reader"].as_str(), Some(peers_engine(&b).as_str()), "the events stream names B's service");
        // Held there: more attempts are all refused at once, and neither service grows.
        let held = [rss_kb(&a, ServiceKind::PubSub), rss_kb(&b, ServiceKind::PubSub)];
        for _ in 0..5_000 {
            let refused = publisher.try_publish(topic, body(accepted + 1)).await;
            assert!(matches!(refused, Err(netmachine_engine::EngineError::BackPressured { .. })), "{refused:?}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let later = [rss_kb(&a, ServiceKind::PubSub), rss_kb(&b, ServiceKind::PubSub)];
        for (i, who) in ["A's pubsub", "B's pubsub"].iter().enumerate() {
            assert!(later[i].saturating_sub(held[i]) < 4 << 10, "{who} grew from {} to {} kB while held", held[i], later[i]);
        }

        // The subscriber reads at last: every accepted event, in order, no gap.
        let last = Cell::new(accepted);
        let taken = match take_until(&stuck, &last).await {
            Ok(taken) => taken,
            Err(taken) => panic!(
                "stalled after {:?} of {accepted} ({} gaps)\nA {}\nB {}",
                taken.seqs.last(),
                taken.gaps.len(),
                a.service(ServiceKind::PubSub)["counters"],
                b.service(ServiceKind::PubSub)["counters"]
            ),
        };
        assert!(taken.gaps.is_empty(), "gaps {:?} of {accepted} (A: {}; B: {})", taken.gaps, a.service(ServiceKind::PubSub)["counters"], b.service(ServiceKind::PubSub)["counters"]);
        assert!(taken.seqs == (1..=accepted).collect::<Vec<_>>(), "{} events, last {:?}, of {accepted}", taken.seqs.len(), taken.seqs.last());
        assert_eq!(publisher.try_publish(topic, body(accepted + 1)).await.expect("room again"), accepted + 1);
    });
}

#[test]
fn under_cut_slow_a_slow_subscriber_on_another_node_misses_events_and_holds_no_one() {
    // A small inbox ring on B, so the engine that never reads fills it soon and is cut; the
    // engine that reads has that ring and the default queue of room, so only a stall of its own
    // (not a busy machine) would cut it.
    let (a, b) = (Node::up(), Node::up_with(&["router.ring_bytes=65536"]));
    link(&a, &b);
    with_rpc(async {
        let (publisher, topic) = publisher_of_a_topic(&a, TopicPolicy::CutSlow).await;
        let reading = attach_engine(&b, |_| {}).await;
        let stuck = attach_engine(&b, |o| o.inbox_capacity = 1).await;
        for subscriber in [&reading, &stuck] {
            subscriber.subscribe(topic, Scope::Any).await.expect("subscribe");
        }
        wait_readers(&a, 1);

        // The publisher never waits; the engine that reads gets every event, in order.
        const EVENTS: u64 = 5_000;
        let last = Cell::new(EVENTS);
        let publishing = async {
            for n in 1..=EVENTS {
                let seq = publisher.try_publish(topic, n.to_le_bytes().repeat(8)).await.expect("never back-pressured under CutSlow");
                assert_eq!(seq, n);
            }
        };
        let ((), taken) = tokio::join!(publishing, take_until(&reading, &last));
        let taken = taken.expect("every event for the engine that reads");
        assert!(
            taken.gaps.is_empty() && taken.seqs == (1..=EVENTS).collect::<Vec<_>>(),
            "the engine that reads got {} events, last {:?}, gaps {:?}\nA pubsub {}\nB pubsub {}\nB router {}",
            taken.seqs.len(),
            taken.seqs.last(),
            taken.gaps,
            a.service(ServiceKind::PubSub)["counters"],
            b.service(ServiceKind::PubSub)["counters"],
            b.service(ServiceKind::Router)["counters"]
        );

        // The one that did not read was cut on its own node (the mirror takes the topic's
        // policy). It hears of what it missed with the next event it gets, so events keep
        // coming while it reads.
        assert!(b.counter(ServiceKind::Router, "topic_events_cut") > 0, "B's router cut the slow subscriber: {}", b.service(ServiceKind::Router)["counters"]);
        let done = Cell::new(false);
        let more = async {
            let mut n = EVENTS;
            while !done.get() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                n += 1;
                publisher.try_publish(topic, n.to_le_bytes().repeat(8)).await.expect("published");
            }
        };
        let reading_stuck = async {
            let taken = take_until(&stuck, &last).await;
            done.set(true);
            taken
        };
        let ((), taken) = tokio::join!(more, reading_stuck);
        let taken = taken.expect("the slow subscriber's events and gaps");
        taken.assert_accounted("the slow subscriber", 1, EVENTS);
        let missed: u64 = taken.gaps.iter().map(|(from, to)| to - from + 1).sum();
        let cut = b.counter(ServiceKind::Router, "topic_events_cut");
        assert!(missed > 0 && missed <= cut, "{missed} reported missing, {cut} cut: each gap is an event cut");
    });
}
