//! Bad input to a running node: garbage on every service socket, a forged advert, an engine
//! that cannot prove its key, a second attach of the same engine. Each gets a clear refusal or
//! a closed connection, and the node keeps serving.

use netmachine_schema::identity_store_capnp::RefusalReason;
use netmachine_schema::router_capnp::router;
use netmachine_schema::{time::now_ms, EngineLocation, Identity, Keypair};
use netmachine_service::ServiceKind;
use netmachine_tests::{attach_engine, attach_raw, connect, node_record, update_identity, wait_until, with_rpc, Node};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

#[test]
fn random_bytes_on_each_socket_close_that_connection_and_the_service_lives() {
    let node = Node::up();
    let mut noise = vec![0u8; 4096];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut noise).unwrap();
    for kind in ServiceKind::ALL {
        let pid = node.pid(kind);
        let mut stream = UnixStream::connect(node.socket(kind)).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = stream.write_all(&noise);
        // The service answers with at most an abort message, then closes the connection.
        let mut answer = Vec::new();
        match stream.read_to_end(&mut answer) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("{}: the connection was not closed: {e}", kind.name()),
        }
        assert_eq!(node.pid(kind), pid, "{} restarted or died", kind.name());
        let service = node.service(kind);
        assert_eq!(service["state"], "up", "{service}");
        assert_eq!(service["counters"]["rpc_connections_closed_on_error"], 1, "{service}");
    }
    assert!(node.all_up());
}

#[test]
fn an_advert_with_a_bad_signature_is_refused_with_the_reason() {
    let node = Node::up();
    let store = node.socket(ServiceKind::IdentityStore);
    let counter = |name| node.counter(ServiceKind::IdentityStore, name);
    // The router stores this node's own advert as the node comes up; count from when it has.
    wait_until("the node's own advert is stored", Duration::from_secs(10), || counter("updates_accepted") >= 1);
    let (accepted, refused) = (counter("updates_accepted"), counter("updates_refused"));
    let peer = Keypair::generate();
    let forged = node_record(&peer, &Keypair::generate(), 1);
    let refusal = with_rpc(update_identity(&store, &peer.identity(), &forged)).expect("refused");
    assert_eq!(refusal.0, RefusalReason::BadSignature);
    assert!(refusal.1.contains("does not verify"), "{}", refusal.1);

    // A genuine advert is accepted, and then an older version of it is refused.
    assert_eq!(with_rpc(update_identity(&store, &peer.identity(), &node_record(&peer, &peer, 5))), None);
    let older = with_rpc(update_identity(&store, &peer.identity(), &node_record(&peer, &peer, 4))).expect("refused");
    assert_eq!(older.0, RefusalReason::OlderVersion);
    // A record filed under someone else's identity is refused too.
    let stranger = Keypair::generate().identity();
    let misfiled = with_rpc(update_identity(&store, &stranger, &node_record(&peer, &peer, 6))).expect("refused");
    assert_eq!(misfiled.0, RefusalReason::IdMismatch);
    assert_eq!(counter("updates_refused") - refused, 3);
    assert_eq!(counter("updates_accepted") - accepted, 1);
}

/// Attaches as `claimed`, signing the challenge and the location with `signer`; returns the
/// router's refusal.
async fn attach_as(node: &Node, claimed: Identity, signer: &Keypair) -> Result<(), String> {
    attach_located(node, claimed, signer, |node| EngineLocation::sign(signer, node, now_ms())).await
}

/// Attaches as `claimed`, signing the challenge with `signer`, with the location `locate` makes
/// for the node; returns the router's refusal.
async fn attach_located(node: &Node, claimed: Identity, signer: &Keypair, locate: impl FnOnce(Identity) -> EngineLocation) -> Result<(), String> {
    attach_raw(node, claimed, signer, locate, capnp_rpc::new_future_client(std::future::pending())).await.map(drop)
}

#[test]
fn an_engine_that_fails_the_key_challenge_is_refused() {
    let node = Node::up();
    let victim = Keypair::generate().identity();
    let refusal = with_rpc(attach_as(&node, victim, &Keypair::generate())).unwrap_err();
    assert!(refusal.contains("does not prove the key of engine"), "{refusal}");
    assert_eq!(node.router_counter("attach_refused"), 1);
    assert_eq!(node.engines(), Vec::<String>::new());

    // The genuine key attaches.
    let owner = Keypair::generate();
    with_rpc(async {
        let router: router::Client = connect(&node.socket(ServiceKind::Router)).await;
        let _keep = router;
        attach_as(&node, owner.identity(), &owner).await
    })
    .expect("the owner of the key attaches");
}

#[test]
fn an_engine_whose_location_is_not_its_own_or_not_here_is_refused() {
    let node = Node::up();
    let (engine, other) = (Keypair::generate(), Keypair::generate());
    let forged = with_rpc(attach_located(&node, engine.identity(), &engine, |here| {
        EngineLocation { engine: engine.identity(), ..EngineLocation::sign(&other, here, now_ms()) }
    }))
    .unwrap_err();
    assert!(forged.contains("is not signed by it"), "{forged}");
    let elsewhere = with_rpc(attach_located(&node, engine.identity(), &engine, |_| EngineLocation::sign(&engine, other.identity(), now_ms()))).unwrap_err();
    assert!(elsewhere.contains("not for engine"), "{elsewhere}");
    // For this node, but with no signature at all (all zeroes).
    let unsigned = with_rpc(attach_located(&node, engine.identity(), &engine, |here| EngineLocation { engine: engine.identity(), node: here, at: 0, sig: [0; 64] }))
        .unwrap_err();
    assert!(unsigned.contains("is not signed by it"), "{unsigned}");
    assert_eq!(node.router_counter("attach_refused"), 3);
    assert_eq!(node.engines(), Vec::<String>::new());
}

#[test]
fn a_second_attach_of_an_attached_engine_is_refused() {
    let node = Node::up();
    with_rpc(async {
        let engine = attach_engine(&node, |_| {}).await;
        let key = Keypair::generate();
        let first = netmachine_engine::Engine::attach(netmachine_engine::EngineOptions::new(
            node.socket(ServiceKind::Router),
            key.clone(),
        ))
        .await
        .expect("first attach");
        let second = netmachine_engine::Engine::attach(netmachine_engine::EngineOptions::new(
            node.socket(ServiceKind::Router),
            key,
        ))
        .await;
        let Err(err) = second else { panic!("a second attach of the same key was accepted") };
        assert!(err.to_string().contains("attached already"), "{err}");
        // The first attachment still receives.
        engine.send(first.identity(), b"still here".to_vec()).await.expect("send");
        assert_eq!(first.recv().await.expect("message").body, b"still here");
    });
}

/// Another process opens 500 connections to every service socket and holds them, silent: it
/// gets a quarter of each service's connections, the node stays up for `status`, an engine of
/// this process still attaches and sends, and the silent connections are closed once
/// `limits.silent_connection_ms` passes.
#[test]
fn a_process_holding_hundreds_of_silent_connections_keeps_no_one_else_out() {
    let node = Node::up_with(&["limits.silent_connection_ms=3000"]);
    let sockets: Vec<String> = ServiceKind::ALL.iter().map(|kind| node.socket(*kind).display().to_string()).collect();
    let hog = "import socket, sys, time\n\
        held = []\n\
        for path in sys.argv[1:]:\n\
        \x20   for _ in range(500):\n\
        \x20       s = socket.socket(socket.AF_UNIX)\n\
        \x20       s.connect(path)\n\
        \x20       held.append(s)\n\
        print('held', flush=True)\n\
        time.sleep(60)\n";
    let mut hog = std::process::Command::new("python3").arg("-c").arg(hog).args(&sockets).stdout(std::process::Stdio::piped()).spawn().expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(hog.stdout.take().unwrap()), &mut line).expect("the hog's line");
    assert_eq!(line.trim(), "held");
    let share = 256 / 4;
    for kind in ServiceKind::ALL {
        let service = node.service(kind);
        assert_eq!(service["state"], "up", "{service}");
        assert!(service["counters"]["rpc_connections_refused_over_process_share"].as_u64() >= Some(500 - share), "{service}");
    }
    with_rpc(async {
        let (sender, receiver) = (attach_engine(&node, |_| {}).await, attach_engine(&node, |_| {}).await);
        sender.send(receiver.identity(), b"through".to_vec()).await.expect("the router takes the message");
        let got = tokio::time::timeout(Duration::from_secs(10), receiver.recv()).await.expect("delivered in time");
        assert_eq!(got.map(|m| m.body), Some(b"through".to_vec()));
    });
    wait_until("the silent connections are closed", Duration::from_secs(30), || {
        ServiceKind::ALL.iter().all(|kind| node.service(*kind)["counters"]["rpc_connections_closed_silent"].as_u64() >= Some(share))
    });
    for kind in ServiceKind::ALL {
        let counters = &node.service(kind)["counters"];
        eprintln!(
            "{}: 500 connections from one process: {} refused over its share, {} closed silent, {} open now",
            kind.name(),
            counters["rpc_connections_refused_over_process_share"],
            counters["rpc_connections_closed_silent"],
            node.service(kind)["gauges"]["rpc_connections_open"]
        );
    }
    let _ = hog.kill();
    let _ = hog.wait();
}

/// 1000 attach attempts on one connection claiming one engine's identity, 16 at a time, each
/// answering the challenge with another key: each is refused with its reason and counted, and
/// the engine's real owner attaches after them.
#[test]
fn a_flood_of_attach_attempts_with_bad_signatures_is_refused_counted_and_the_owner_still_attaches() {
    use futures::stream::{self, StreamExt};
    const ATTEMPTS: usize = 1000;
    let node = Node::up();
    let (owner, forger) = (Keypair::generate(), Keypair::generate());
    let start = std::time::Instant::now();
    let refusals: Vec<Result<(), String>> = with_rpc(async {
        let router: router::Client = connect(&node.socket(ServiceKind::Router)).await;
        let attempt = |_| {
            let locate = |node| EngineLocation::sign(&forger, node, now_ms());
            let inbox = capnp_rpc::new_future_client(std::future::pending());
            netmachine_tests::attach_raw_on(&router, owner.identity(), &forger, locate, inbox)
        };
        stream::iter(0..ATTEMPTS).map(attempt).buffer_unordered(16).map(|r| r.map(drop)).collect().await
    });
    let took = start.elapsed();
    let proven_wrong = refusals.iter().filter(|r| r.as_ref().is_err_and(|e| e.contains("does not prove the key of engine"))).count();
    eprintln!("{ATTEMPTS} forged attach attempts refused in {took:?} ({:.0}/s); {proven_wrong} with the reason", ATTEMPTS as f64 / took.as_secs_f64());
    assert_eq!(proven_wrong, ATTEMPTS, "every attempt is refused as not proving the key");
    assert_eq!(node.router_counter("attach_refused"), ATTEMPTS as u64);
    with_rpc(attach_as(&node, owner.identity(), &owner)).expect("the owner of the key attaches");
    assert!(node.all_up());
}

/// Reads what a bulk socket answers, until it closes the connection (within 10 s).
fn bulk_answer(stream: &mut UnixStream) -> Vec<u8> {
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => answer,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => answer,
        Err(e) => panic!("the bulk socket neither answered nor closed: {e}"),
    }
}

/// A bulk socket's opening (see `netmachine_service::bulk`): magic, kind, node, trust, request.
fn bulk_opening(kind: u8, request: &[u8]) -> Vec<u8> {
    let mut opening = b"NMB1".to_vec();
    opening.push(kind);
    opening.extend_from_slice(&Keypair::generate().identity().0);
    opening.push(0);
    opening.extend_from_slice(&(request.len() as u16).to_le_bytes());
    opening.extend_from_slice(request);
    opening
}

#[test]
fn garbage_on_the_bulk_sockets_is_refused_and_counted_and_the_next_opening_is_answered() {
    use std::os::unix::fs::PermissionsExt;
    let node = Node::up();
    let mut noise = vec![0u8; 4096];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut noise).unwrap();
    for (kind, counter) in [(ServiceKind::Storage, "serves_refused"), (ServiceKind::Transport, "streams_refused")] {
        let socket = node.socket(kind).with_file_name(format!("{}.bulk.sock", kind.name()));
        let mode = std::fs::metadata(&socket).unwrap_or_else(|e| panic!("{}: {e}", socket.display())).permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{} is for the node's user alone", socket.display());
        let (pid, before) = (node.pid(kind), node.counter(kind, counter));
        let mut stream = UnixStream::connect(&socket).unwrap();
        let _ = stream.write_all(&noise);
        assert_eq!(bulk_answer(&mut stream), b"", "{}: garbage gets no answer", kind.name());
        wait_until("the garbage is counted", Duration::from_secs(10), || node.counter(kind, counter) == before + 1);
        assert_eq!(node.pid(kind), pid, "{} restarted or died", kind.name());
    }

    // Storage answers a block request for a block it does not hold: one frame holding status
    // 1 (not held), then a complete end.
    let request = capnp::serialize::write_message_to_words(&{
        let mut message = capnp::message::Builder::new_default();
        message.init_root::<netmachine_schema::storage_capnp::block_request::Builder>().set_id(&[9; 32]);
        message
    });
    let mut storage = UnixStream::connect(node.socket(ServiceKind::Storage).with_file_name("storage.bulk.sock")).unwrap();
    storage.write_all(&bulk_opening(0, &request)).unwrap();
    assert_eq!(bulk_answer(&mut storage), [1, 0, 0, 0, 1, 0, 0, 0, 0, 0]);

    // The transport refuses a stream of a kind it does not know, and says so in a failed end.
    let mut transport = UnixStream::connect(node.socket(ServiceKind::Transport).with_file_name("transport.bulk.sock")).unwrap();
    transport.write_all(&bulk_opening(9, b"")).unwrap();
    let answer = bulk_answer(&mut transport);
    assert_eq!(answer[..5], [0, 0, 0, 0, 1], "a failed end: {answer:?}");
    assert_eq!(String::from_utf8_lossy(&answer[7..]), "no stream of kind 9 is known");
    assert!(node.all_up());
}
