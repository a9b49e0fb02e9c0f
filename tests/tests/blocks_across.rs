//! Blocks between nodes, through the real transports' bulk streams: a block put on one node is
//! fetched byte-equal by another; a peer whose copy is corrupt on disk is cut and another gives
//! the block; kill -9 of the fetching node's storage mid-fetch resumes from the groups it had;
//! a block whose min_trust is above what its node gives the asking one is not served.

use netmachine_engine::ContentId;
use netmachine_service::ServiceKind;
use netmachine_tests::{pseudo_random, link, wait_until, Node};
use std::time::Duration;

fn put(node: &Node, bytes: &[u8], extra: &[&str]) -> String {
    let file = node.root().join("put.bin");
    std::fs::write(&file, bytes).unwrap();
    let mut args = vec!["put", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    let output = node.cli(&args);
    assert!(output.status.success(), "put: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn get(node: &Node, id: &str, extra: &[&str]) -> std::process::Output {
    let out = node.root().join("got.bin");
    let mut args = vec!["get", id, "-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    node.cli(&args)
}

/// Flips a bit at each of `offsets` in `node`'s copy of block `id`, as a failing disk would.
fn corrupt(node: &Node, id: &str, offsets: &[usize]) {
    let file = node.root().join("data/storage/data").join(id);
    let mut bytes = std::fs::read(&file).unwrap();
    for offset in offsets {
        bytes[*offset] ^= 0x10;
    }
    std::fs::write(&file, bytes).unwrap();
}

fn got(node: &Node) -> Vec<u8> {
    std::fs::read(node.root().join("got.bin")).unwrap_or_default()
}

#[test]
fn a_block_put_on_one_node_is_fetched_byte_equal_by_another() {
    let (a, b) = (Node::up(), Node::up());
    link(&a, &b);
    let large = pseudo_random(5_000_000, 1);
    let small = pseudo_random(3_000, 2);
    let (large_id, small_id) = (put(&a, &large, &[]), put(&a, &small, &[]));
    assert_eq!(large_id, ContentId::of(&large).to_string());
    let output = get(&b, &large_id, &[]);
    assert!(output.status.success(), "get: {}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(got(&b), large, "the fetched block is byte-equal");
    assert_eq!(b.counter(ServiceKind::Storage, "bytes_fetched"), 5_000_000);
    let output = get(&b, &small_id, &["--from", &a.id()]);
    assert!(output.status.success(), "get: {}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(got(&b), small);
    assert!(a.counter(ServiceKind::Storage, "streams_served") >= 2);
    assert!(a.counter(ServiceKind::Transport, "streams_served") >= 2);
    // B holds both now, and answers without asking again.
    let listed = String::from_utf8_lossy(&b.cli(&["blocks"]).stdout).to_string();
    assert!(listed.contains(&large_id) && listed.contains(&small_id), "{listed}");
    assert_eq!(get(&b, &large_id, &[]).status.code(), Some(0));
    assert_eq!(b.counter(ServiceKind::Storage, "fetches"), 2);
    assert_eq!(b.counter(ServiceKind::Storage, "fetches_completed"), 2);
    assert_eq!(b.counter(ServiceKind::Storage, "puts"), 0, "a fetched block is not counted as a put");
    let unknown = ContentId::of(b"nowhere").to_string();
    let output = get(&b, &unknown, &[]);
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && error.contains(&format!("block {unknown} is not held here and no node asked gave its size")), "{error}");
}

#[test]
fn a_peer_whose_copy_is_corrupt_is_cut_and_another_gives_the_block() {
    let (a, b, c) = (Node::up(), Node::up(), Node::up());
    link(&a, &b);
    link(&c, &b);
    let block = pseudo_random(2_000_000, 3);
    let id = put(&a, &block, &[]);
    assert_eq!(put(&c, &block, &[]), id);
    // C's disk returns bad bytes near the start and near the end of the block, so whichever
    // range C is asked for holds one.
    corrupt(&c, &id, &[200_000, 1_800_000]);
    let output = get(&b, &id, &["--from", &c.id(), "--from", &a.id()]);
    assert!(output.status.success(), "get: {}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(got(&b), block, "only checked bytes are kept");
    assert_eq!(b.counter(ServiceKind::Storage, "peers_cut"), 1, "the corrupt peer is cut");
    let note = b.service(ServiceKind::Storage)["note"].as_str().unwrap_or_default().to_string();
    assert!(note.contains(&c.id()) && note.contains("bad bytes at offset") && !note.contains(&a.id()), "status names the corrupt peer alone: {note}");
    // B's storage remembers it after a kill -9.
    let killed = b.kill9(ServiceKind::Storage);
    wait_until("storage is restarted", Duration::from_secs(30), || b.pid(ServiceKind::Storage).is_some_and(|pid| pid != killed) && b.all_up());
    let again = b.service(ServiceKind::Storage)["note"].as_str().unwrap_or_default().to_string();
    assert_eq!(again, note, "the restarted storage still knows who sent bad bytes");
}

/// Starts B fetching a 150 MB block put on A, and kills B's `service` with kill -9 once a few
/// progress records (every 4 MiB) are behind it, well before the end; waits until it is back.
/// The block's id, its bytes, and the bytes fetched before the kill.
fn interrupted_fetch(a: &Node, b: &Node, seed: u64, service: ServiceKind) -> (String, Vec<u8>, u64) {
    let block = pseudo_random(150_000_000, seed);
    let id = put(a, &block, &[]);
    let out = b.root().join("got.bin");
    let mut fetching = std::process::Command::new(netmachine_tests::bin_dir().join("netmachine"))
        .args(["get", &id, "-o", out.to_str().unwrap(), "--home"])
        .arg(b.root())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until("part of the block is fetched", Duration::from_secs(60), || b.counter(ServiceKind::Storage, "bytes_fetched") > 12_000_000);
    let before = b.counter(ServiceKind::Storage, "bytes_fetched");
    let killed = b.kill9(service);
    wait_until("the interrupted get exits", Duration::from_secs(60), || fetching.try_wait().expect("the get's state").is_some());
    wait_until("the service is restarted", Duration::from_secs(30), || b.pid(service).is_some_and(|pid| pid != killed) && b.all_up());
    (id, block, before)
}

/// Gets the block `id` on B again, after `interrupted_fetch`: it arrives byte-equal to `block`;
/// the bytes fetched for it (storage's counters go on over a restart).
fn get_again(b: &Node, id: &str, block: &[u8]) -> u64 {
    let carried = b.counter(ServiceKind::Storage, "bytes_fetched");
    let output = get(b, id, &[]);
    assert!(output.status.success(), "get: {}", String::from_utf8_lossy(&output.stderr));
    assert!(got(b) == block, "the block arrives byte-equal");
    b.counter(ServiceKind::Storage, "bytes_fetched") - carried
}

#[test]
fn kill9_of_the_fetching_storage_mid_fetch_resumes_from_the_groups_it_had() {
    let (a, b) = (Node::up(), Node::up());
    link(&a, &b);
    let (id, block, first_part) = interrupted_fetch(&a, &b, 4, ServiceKind::Storage);
    let size = block.len();
    assert_eq!(b.counter(ServiceKind::Storage, "partial_blocks"), 1, "the fetch left a partial block");
    let listed = String::from_utf8_lossy(&b.cli(&["blocks"]).stdout).to_string();
    assert!(listed.contains(&id) && listed.contains(&format!("{size} bytes  partial")), "{listed}");
    // Collection passes a partial block by.
    assert!(b.cli(&["storage", "gc"]).status.success());
    let second_part = get_again(&b, &id, &block);
    assert!(second_part < size as u64, "the fetch resumed instead of starting over: {second_part} bytes after the restart ({first_part} before)");
    // At most the groups written since the last record (4 MiB) are fetched again.
    assert!(second_part <= size as u64 - first_part + 5_000_000, "{second_part} bytes fetched after the restart; {first_part} were before");
}

#[test]
fn kill9_of_the_fetching_transport_mid_fetch_fails_that_fetch_and_the_next_resumes() {
    let (a, b) = (Node::up(), Node::up());
    link(&a, &b);
    // The block streams through B's transport to its storage when the transport dies: every
    // stream breaks off, A is given up, and what was checked stays, recorded.
    let (id, block, first_part) = interrupted_fetch(&a, &b, 12, ServiceKind::Transport);
    let size = block.len();
    assert_eq!(b.counter(ServiceKind::Storage, "fetches_failed"), 1, "the fetch failed, and said so");
    assert_eq!(b.counter(ServiceKind::Storage, "partial_blocks"), 1, "what it had is kept");
    let a_id = a.id();
    wait_until("B's new transport is connected to A", Duration::from_secs(30), || b.connected().contains(&a_id));
    let second_part = get_again(&b, &id, &block);
    assert!(second_part <= size as u64 - first_part + 5_000_000, "{second_part} bytes fetched after the transport's restart; {first_part} were before");
}

#[test]
fn a_partial_block_holds_its_room_and_is_collected_once_idle_past_the_partial_lease() {
    let (a, b) = (Node::up(), Node::up_with(&["storage.partial_lease_ms=1000", "storage.collect_every_ms=3600000"]));
    link(&a, &b);
    let (id, block, _) = interrupted_fetch(&a, &b, 11, ServiceKind::Storage);
    let size = block.len() as u64;
    assert_eq!(b.counter(ServiceKind::Storage, "bytes_reserved"), size, "the partial block's whole size is set aside");
    let partial = b.root().join("data/storage/partial").join(&id);
    // Idle past the partial lease, a dry run lists it and leaves it; collection removes it.
    let due = format!("{id}  {size} bytes  partial");
    wait_until("the partial block is due", Duration::from_secs(30), || String::from_utf8_lossy(&b.cli(&["storage", "gc", "--dry-run"]).stdout).contains(&due));
    assert!(partial.exists() && b.counter(ServiceKind::Storage, "partial_blocks") == 1);
    let collected = String::from_utf8_lossy(&b.cli(&["storage", "gc"]).stdout).to_string();
    assert!(collected.contains(&due) && collected.contains(&format!("collected 1 blocks, {size} bytes")), "{collected}");
    assert!(!partial.exists(), "its file is gone");
    assert_eq!((b.counter(ServiceKind::Storage, "partial_blocks"), b.counter(ServiceKind::Storage, "bytes_reserved")), (0, 0));
    assert!(!String::from_utf8_lossy(&b.cli(&["blocks"]).stdout).contains(&id));
    // Asked for again, it is fetched whole.
    let carried = b.counter(ServiceKind::Storage, "bytes_fetched");
    let output = get(&b, &id, &[]);
    assert!(output.status.success(), "get: {}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(got(&b), block);
    assert_eq!(b.counter(ServiceKind::Storage, "bytes_fetched") - carried, size);
}

#[test]
fn a_partial_block_damaged_on_disk_is_not_kept_and_the_next_get_fetches_it_whole() {
    let (a, b) = (Node::up(), Node::up());
    link(&a, &b);
    let (id, block, _) = interrupted_fetch(&a, &b, 9, ServiceKind::Storage);
    // The first groups were recorded as written; a byte of them changes on disk.
    let partial = b.root().join("data/storage/partial").join(&id);
    let mut bytes = std::fs::read(&partial).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&partial, bytes).unwrap();
    let output = get(&b, &id, &[]);
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && error.contains(&format!("the fetched copy of block {id} changed on disk")), "{error}");
    assert!(!String::from_utf8_lossy(&b.cli(&["blocks"]).stdout).contains(&id), "the damaged copy is dropped");
    let output = get(&b, &id, &[]);
    assert!(output.status.success(), "get: {}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(got(&b), block);
}

#[test]
fn a_block_is_not_served_to_a_node_trusted_less_than_its_min_trust() {
    let (a, b) = (Node::up(), Node::up());
    link(&a, &b);
    let guarded = put(&a, &pseudo_random(100_000, 5), &["--min-trust", "200"]);
    let open = put(&a, &pseudo_random(100_000, 6), &["--min-trust", "128"]);
    let output = get(&b, &guarded, &[]);
    assert!(!output.status.success(), "a node trusted 128 is not served a block of min_trust 200");
    assert!(a.counter(ServiceKind::Storage, "serves_refused") >= 1);
    let output = get(&b, &open, &[]);
    assert!(output.status.success(), "get: {}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn a_get_naming_a_topic_asks_its_publishers_node_first() {
    let (a, b, c) = (Node::up(), Node::up(), Node::up());
    link(&a, &b);
    link(&c, &b);
    let (alice, _) = a.engine_key("alice");
    let created = a.cli(&["topic", "create", "--key", alice.to_str().unwrap()]);
    assert!(created.status.success(), "{created:?}");
    let topic = String::from_utf8_lossy(&created.stdout).trim().to_string();
    let topic_id: netmachine_schema::Identity = topic.parse().unwrap();
    let store = b.socket(ServiceKind::IdentityStore);
    wait_until("B knows the topic", Duration::from_secs(30), || netmachine_tests::with_rpc(netmachine_tests::identity_exists(&store, &topic_id)));
    let block = pseudo_random(1_000_000, 7);
    let id = put(&a, &block, &[]);
    assert_eq!(put(&c, &block, &[]), id);
    // C's copy is bad in its last group, the one asked first (for the size).
    corrupt(&c, &id, &[999_000]);
    let output = get(&b, &id, &["--from", &c.id(), "--topic", &topic]);
    assert!(output.status.success(), "get: {}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(got(&b), block);
    assert_eq!(b.counter(ServiceKind::Storage, "peers_cut"), 0, "the publisher's node was asked for the size, not C");
    assert!(a.counter(ServiceKind::Storage, "streams_served") >= 1);
}

#[test]
fn a_get_hears_how_far_the_fetch_is_before_the_block_is_read() {
    let (a, b) = (Node::up(), Node::up());
    link(&a, &b);
    let size = 8_000_000;
    let id: netmachine_engine::ContentId = put(&a, &pseudo_random(size, 8), &[]).parse().unwrap();
    let blocks = netmachine_engine::blocks::Blocks::connect(&b.socket(ServiceKind::Storage), b.node_home().config.rpc_word_limit()).unwrap();
    let reports = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let heard = reports.clone();
    let progress = Box::new(move |done: u64, total: u64| heard.lock().unwrap().push((done, total)));
    let info = netmachine_tests::with_rpc(blocks.get_into(id, Default::default(), Box::new(std::io::sink()), progress)).unwrap();
    assert_eq!(info.size, size as u64);
    let reports = reports.lock().unwrap().clone();
    assert!(reports.iter().all(|(_, total)| *total == size as u64), "{reports:?}");
    // The fetch reports whole MiBs; reading back starts again from its first 256 KiB piece.
    let first_read = reports.iter().position(|(done, _)| *done == 256 * 1024).expect("the reading is reported");
    assert!(reports[..first_read].iter().any(|(done, _)| *done >= 1 << 20 && done % (1 << 20) == 0), "the fetch was reported before the reading: {reports:?}");
    assert_eq!(reports.last(), Some(&(size as u64, size as u64)));
}
