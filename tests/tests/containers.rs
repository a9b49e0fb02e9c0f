//! Faults in real containers. Three nodes, each the shipped Compose deployment (five
//! containers) on a Docker network the test makes, with an engine on each (attached from the
//! host through the node's home) writing numbered messages to the other two, 50 a second per
//! pair, throughout. Then, in turn: one node cut off the network and joined again; loss on one
//! node's link (nftables in its transport's network namespace); SIGKILL of each
//! service of each node (its container's restart policy brings it back); a whole node killed
//! and started again; a rolling restart of every service of every node. After each, with no
//! operator action, every message a router accepted has arrived exactly once and in order; each
//! scenario prints its figures (accepted, delivered, duplicates, time to recover). Skipped with
//! a message where Docker or docker-compose is missing.

use netmachine_engine::{Engine, EngineOptions, Identity, Keypair};
use netmachine_service::{NodeHome, ServiceKind};
use netmachine_tests::containers::{docker_present, ComposeNode, FaultNetwork, TestImage, SERVICES};
use netmachine_tests::link_delay::{link_delay_possible, LinkDelay};
use netmachine_tests::{wait_until, with_rpc};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

const NODES: usize = 3;
/// Between two messages of one sender to one receiver.
const EVERY: Duration = Duration::from_millis(20);
/// Every message accepted until a scenario's check begins must have arrived this long after
/// its fault ended.
const RECOVERY: Duration = Duration::from_secs(60);

/// What each receiving engine got, per sender: the numbers in arrival order.
type Arrivals = Rc<RefCell<BTreeMap<(Identity, Identity), Vec<u32>>>>;
/// What each sender's router accepted, per receiver, in order.
type Accepted = Rc<RefCell<BTreeMap<(Identity, Identity), Vec<u32>>>>;
/// How many messages each sender's router had accepted for each receiver at a moment: traffic
/// never stops, so a check waits for those (the next check sees the later ones).
type Cut = BTreeMap<(Identity, Identity), usize>;

struct Traffic {
    /// Which node each engine is on.
    names: BTreeMap<Identity, usize>,
    arrivals: Arrivals,
    accepted: Accepted,
    refused: Rc<RefCell<u64>>,
}

impl Traffic {
    /// What the routers have accepted so far.
    fn cut(&self) -> Cut {
        self.accepted.borrow().iter().map(|(pair, numbers)| (*pair, numbers.len())).collect()
    }

    /// Per pair, the messages accepted within `cut`.
    fn accepted_within<'a>(accepted: &'a BTreeMap<(Identity, Identity), Vec<u32>>, cut: &'a Cut) -> impl Iterator<Item = (&'a (Identity, Identity), &'a [u32])> {
        accepted.iter().map(|(pair, numbers)| (pair, &numbers[..cut.get(pair).copied().unwrap_or(0).min(numbers.len())]))
    }

    /// Sent, delivered once, duplicates, and what was accepted within `cut` but has not arrived.
    fn figures(&self, cut: &Cut) -> (usize, usize, usize, usize) {
        let (arrivals, accepted) = (self.arrivals.borrow(), self.accepted.borrow());
        let sent: usize = accepted.values().map(Vec::len).sum();
        let (mut delivered, mut duplicates, mut missing) = (0, 0, 0);
        for (pair, numbers) in Self::accepted_within(&accepted, cut) {
            let got = arrivals.get(pair).cloned().unwrap_or_default();
            let mut seen = std::collections::BTreeSet::new();
            duplicates += got.iter().filter(|n| !seen.insert(**n)).count();
            delivered += seen.len();
            missing += numbers.iter().filter(|n| !seen.contains(n)).count();
        }
        (sent, delivered, duplicates, missing)
    }

    /// Per pair of engines, how many messages accepted within `cut` have not arrived.
    fn missing_by_pair(&self, names: &BTreeMap<Identity, usize>, cut: &Cut) -> Vec<String> {
        let (arrivals, accepted) = (self.arrivals.borrow(), self.accepted.borrow());
        Self::accepted_within(&accepted, cut)
            .map(|(pair, numbers)| {
                let got: std::collections::BTreeSet<u32> = arrivals.get(pair).into_iter().flatten().copied().collect();
                (pair, numbers.iter().filter(|n| !got.contains(n)).count())
            })
            .filter(|(_, missing)| *missing > 0)
            .map(|((src, dst), missing)| {
                let got: std::collections::BTreeSet<u32> = arrivals.get(&(*src, *dst)).into_iter().flatten().copied().collect();
                let numbers: Vec<u32> = accepted[&(*src, *dst)].iter().copied().filter(|n| !got.contains(n)).take(40).collect();
                format!("node {} -> node {}: {missing} ({numbers:?} of {} accepted)", names[src], names[dst], accepted[&(*src, *dst)].len())
            })
            .collect()
    }

    /// Every pair's arrivals are its accepted numbers, in order, once.
    fn in_order_once(&self) -> Result<(), String> {
        let (arrivals, accepted) = (self.arrivals.borrow(), self.accepted.borrow());
        for (pair, numbers) in accepted.iter() {
            let got = arrivals.get(pair).cloned().unwrap_or_default();
            // A message accepted after the last arrival may still be on its way; and the one
            // its sender is awaiting the router's answer for may have arrived before that answer
            // (each sender sends one message at a time: at most one such, the next number).
            let known = got.len().min(numbers.len());
            let ahead = &got[known..];
            let next = numbers.len() as u32;
            if got[..known] != numbers[..known] || ahead.len() > 1 || ahead.first().is_some_and(|n| *n != next) {
                return Err(format!("{} -> {}: accepted {} numbers, got {} in another order or twice", pair.0.short(), pair.1.short(), numbers.len(), got.len()));
            }
        }
        Ok(())
    }
}

/// Sends from `engine` to each of `peers` in turn, every `EVERY`, until the test ends.
fn keep_sending(engine: Rc<Engine>, peers: Vec<Identity>, traffic: &Traffic) {
    let (accepted, refused) = (traffic.accepted.clone(), traffic.refused.clone());
    tokio::task::spawn_local(async move {
        let mut next: BTreeMap<Identity, u32> = BTreeMap::new();
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tick.tick().await;
            for peer in &peers {
                let n = *next.entry(*peer).or_default();
                match engine.send(*peer, n.to_le_bytes().to_vec()).await {
                    Ok(_) => {
                        accepted.borrow_mut().entry((engine.identity(), *peer)).or_default().push(n);
                        next.insert(*peer, n + 1);
                    }
                    Err(_) => *refused.borrow_mut() += 1,
                }
            }
        }
    });
}

/// Records what `engine` receives: the numbers, and from whom a greeting came.
fn keep_receiving(engine: Rc<Engine>, arrivals: Arrivals) {
    tokio::task::spawn_local(async move {
        while let Some(message) = engine.recv().await {
            let mut arrivals = arrivals.borrow_mut();
            let from = arrivals.entry((message.src, engine.identity())).or_default();
            if let Ok(n) = <[u8; 4]>::try_from(&message.body[..]) {
                from.push(u32::from_le_bytes(n));
            }
        }
    });
}

/// Runs traffic for 2 s, then `fault` (traffic going on), then waits until every message
/// accepted until 3 s after the fault arrived; prints the figures and checks them.
async fn scenario(name: &str, traffic: &Traffic, nodes: &[ComposeNode], fault: impl std::future::Future<Output = ()>) {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = traffic.figures(&traffic.cut());
    let start = Instant::now();
    fault.await;
    let faulted = start.elapsed();
    // Traffic goes on a while after the fault, then everything accepted by then must arrive
    // (each message takes a while, so some are always on their way: those come in the next check).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cut = traffic.cut();
    let deadline = start + faulted + RECOVERY;
    let mut figures = traffic.figures(&cut);
    while figures.3 > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        figures = traffic.figures(&cut);
    }
    let (sent, delivered, duplicates, missing) = figures;
    eprintln!(
        "{name}: fault took {faulted:?}; {} accepted during it, {sent} in all, {delivered} delivered, {duplicates} duplicates, {missing} missing, {} refused to senders; all arrived {:?} after the fault began",
        sent - before.0,
        traffic.refused.borrow(),
        start.elapsed()
    );
    if missing > 0 {
        for (n, node) in nodes.iter().enumerate() {
            let status = node.status();
            let router = status["services"].as_array().into_iter().flatten().find(|s| s["name"] == "router").cloned().unwrap_or_default();
            let counters = router["counters"].clone();
            let drops: Vec<String> = counters.as_object().into_iter().flatten().filter(|(k, v)| (k.starts_with("dropped_") || k.starts_with("remote_")) && v.as_u64() > Some(0)).map(|(k, v)| format!("{k} {v}")).collect();
            eprintln!("node {n}'s router counted: {}", drops.join(", "));
            if std::env::var_os("NM_TEST_KEEP").is_some() {
                for service in ["router", "transport"] {
                    let logs = std::process::Command::new("docker").args(["logs", &node.container(service)]).output().unwrap();
                    let _ = std::fs::write(format!("/tmp/nm-containers-node{n}-{service}.log"), [logs.stdout, logs.stderr].concat());
                }
            }
        }
    }
    assert_eq!(missing, 0, "{name}: accepted messages never arrived: {:?}", traffic.missing_by_pair(&traffic.names, &cut));
    assert_eq!(duplicates, 0, "{name}: messages arrived twice");
    traffic.in_order_once().unwrap_or_else(|e| panic!("{name}: {e}"));
}

/// Waits (without blocking the engines' runtime) until every service of `node` is up again.
async fn until_all_up(node: &ComposeNode, what: &str) {
    let start = Instant::now();
    while !node.all_up() {
        assert!(start.elapsed() < Duration::from_secs(60), "{what} did not come back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn three_nodes_in_containers_lose_nothing_through_partitions_loss_kills_and_restarts() {
    if !docker_present() {
        return;
    }
    let image = TestImage::build();
    let network = FaultNetwork::new(&format!("nmfault{}", std::process::id()));
    let nodes: Vec<ComposeNode> = (0..NODES).map(|n| ComposeNode::on(&image, &network, &network.address(n))).collect();
    for node in &nodes {
        let up = node.compose(&["up", "-d"]);
        assert!(up.status.success(), "compose up: {}", String::from_utf8_lossy(&up.stderr));
    }
    for node in &nodes {
        wait_until("each node's five containers are up", Duration::from_secs(60), || node.all_up());
    }
    let adverts: Vec<std::path::PathBuf> = nodes
        .iter()
        .map(|node| {
            let file = node.home.0.with_extension("advert");
            let advert = node.cli(&["advert"]);
            assert!(advert.status.success(), "advert: {}", String::from_utf8_lossy(&advert.stderr));
            std::fs::write(&file, &advert.stdout).expect("the advert file");
            file
        })
        .collect();
    for (i, node) in nodes.iter().enumerate() {
        for (j, advert) in adverts.iter().enumerate().filter(|(j, _)| *j != i) {
            let added = node.cli(&["peer", "add", advert.to_str().unwrap()]);
            assert!(added.status.success(), "node {i} adding node {j}: {}", String::from_utf8_lossy(&added.stderr));
        }
    }
    let peers = |node: &ComposeNode| -> usize {
        let listed: serde_json::Value = serde_json::from_slice(&node.cli(&["peers", "--json"]).stdout).unwrap_or_default();
        listed.as_array().map_or(0, |p| p.len())
    };
    wait_until("every node is connected to the other two", Duration::from_secs(60), || nodes.iter().all(|n| peers(n) == NODES - 1));

    with_rpc(async {
        let mut engines = Vec::new();
        for node in &nodes {
            let socket = NodeHome::load(&node.home.0, &[]).expect("the node's home").socket(ServiceKind::Router);
            engines.push(Rc::new(Engine::attach(EngineOptions::new(socket, Keypair::generate())).await.expect("an engine attaches")));
        }
        let ids: Vec<Identity> = engines.iter().map(|e| e.identity()).collect();
        let names = ids.iter().enumerate().map(|(n, id)| (*id, n)).collect();
        let traffic = Traffic { names, arrivals: Rc::default(), accepted: Rc::default(), refused: Rc::default() };
        // Each engine greets the others until each has heard from both: the routes are known.
        for engine in &engines {
            keep_receiving(engine.clone(), traffic.arrivals.clone());
        }
        let start = Instant::now();
        loop {
            for engine in &engines {
                for peer in ids.iter().filter(|p| **p != engine.identity()) {
                    let _ = engine.send(*peer, b"hello".to_vec()).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            let heard = traffic.arrivals.borrow().len();
            if heard == NODES * (NODES - 1) {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "routes between the engines were never known");
        }
        traffic.arrivals.borrow_mut().clear();
        for engine in &engines {
            keep_sending(engine.clone(), ids.iter().copied().filter(|p| *p != engine.identity()).collect(), &traffic);
        }

        let cut = &nodes[2];
        let transport = cut.container("transport");
        let address = network.address(2);
        let docker = |args: &[&str]| {
            let out = std::process::Command::new("docker").args(args).output().expect("docker runs");
            assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        scenario("node 2 cut off the network for 5 s", &traffic, &nodes, async {
            docker(&["network", "disconnect", &network.name, &transport]);
            tokio::time::sleep(Duration::from_secs(5)).await;
            docker(&["network", "connect", "--ip", &address, &network.name, &transport]);
        })
        .await;
        // Loss on a link: nftables in the transport container's network namespace drops a share
        // of its UDP packets both ways (this machine's kernel has no netem for delay).
        let nft = |node: &ComposeNode, rules: &[&str]| {
            let pid = node.pid("transport");
            for rule in rules {
                let out = std::process::Command::new("nsenter").args(["-t", &pid, "-n", "nft", rule]).output().expect("nsenter runs");
                assert!(out.status.success(), "nft {rule}: {}", String::from_utf8_lossy(&out.stderr));
            }
        };
        match std::process::Command::new("nft").arg("-v").output().is_ok_and(|o| o.status.success()) {
            true => {
                scenario("node 0's link dropping 5% of its packets both ways for 5 s", &traffic, &nodes, async {
                    nft(&nodes[0], &[
                        "add table inet nmloss",
                        "add chain inet nmloss input { type filter hook input priority 0; }",
                        "add chain inet nmloss output { type filter hook output priority 0; }",
                        "add rule inet nmloss input meta l4proto udp numgen random mod 100 < 5 drop",
                        "add rule inet nmloss output meta l4proto udp numgen random mod 100 < 5 drop",
                    ]);
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    nft(&nodes[0], &["delete table inet nmloss"]);
                })
                .await
            }
            false => eprintln!("skipped the loss scenario: this machine has no `nft` (nftables)"),
        }
        match link_delay_possible() {
            true => {
                scenario("node 1's link delayed 40-80 ms each way (packets reordered) for 5 s", &traffic, &nodes, async {
                    let delay = LinkDelay::start(&nodes[1].pid("transport"), Duration::from_millis(40), Duration::from_millis(40));
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    let figures = delay.stop();
                    eprintln!("node 1's link: {} packets delayed, {} of them overtaken", figures.packets, figures.reordered);
                    assert!(figures.packets > 0, "no packet of node 1's went through the delay");
                })
                .await
            }
            false => eprintln!("skipped the delay scenario: this machine has no `iptables-legacy` or `nsenter`"),
        }
        for (n, node) in nodes.iter().enumerate() {
            for service in SERVICES {
                scenario(&format!("node {n}'s {service} killed with SIGKILL"), &traffic, &nodes, async { node.kill9(service) }).await;
                until_all_up(node, &format!("node {n}'s {service}")).await;
            }
        }
        scenario("node 2 killed whole and started again", &traffic, &nodes, async {
            let killed = nodes[2].compose(&["kill", "-s", "SIGKILL"]);
            assert!(killed.status.success(), "compose kill: {}", String::from_utf8_lossy(&killed.stderr));
            tokio::time::sleep(Duration::from_secs(2)).await;
            let up = nodes[2].compose(&["up", "-d"]);
            assert!(up.status.success(), "compose up: {}", String::from_utf8_lossy(&up.stderr));
            until_all_up(&nodes[2], "node 2").await;
        })
        .await;
        scenario("a rolling restart of every service of every node", &traffic, &nodes, async {
            for (n, node) in nodes.iter().enumerate() {
                for service in SERVICES {
                    let restarted = node.compose(&["restart", "--timeout", "5", service]);
                    assert!(restarted.status.success(), "restart of node {n}'s {service}: {}", String::from_utf8_lossy(&restarted.stderr));
                    until_all_up(node, &format!("node {n}'s {service}")).await;
                }
            }
        })
        .await;
    });
}
