//! Blocks on one node, through the real storage service: put and get from the CLI and the SDK,
//! byte-equal and under their BLAKE3 id; kept across kill -9 of storage; refused whole over
//! the block limit or the disk budget; expired blocks collected (not while being read); leases
//! extended; malformed and unknown ids refused with a clear sentence.

use netmachine_engine::blocks::{BlockError, BlockPrefs, StorageRefusal};
use netmachine_engine::ContentId;
use netmachine_schema::storage_capnp::{open_result, storage};
use netmachine_schema::time::now_ms;
use netmachine_service::ServiceKind;
use netmachine_tests::{pseudo_random, attach_engine, connect, wait_until, with_rpc, Node};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

fn stdout(output: &std::process::Output) -> String {
    assert!(output.status.success(), "failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn stderr(output: &std::process::Output) -> String {
    assert!(!output.status.success(), "succeeded: {}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8_lossy(&output.stderr).trim().to_string()
}

fn put_file(node: &Node, name: &str, bytes: &[u8], extra: &[&str]) -> std::process::Output {
    let file = node.root().join(name);
    std::fs::write(&file, bytes).unwrap();
    let mut args = vec!["put", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    node.cli(&args)
}

fn get_file(node: &Node, id: &str) -> Vec<u8> {
    let out = node.root().join(format!("{id}.out"));
    stdout(&node.cli(&["get", id, "-o", out.to_str().unwrap()]));
    std::fs::read(out).unwrap()
}

fn blocks(node: &Node) -> Vec<Value> {
    serde_json::from_str::<Value>(&stdout(&node.cli(&["blocks", "--json"]))).unwrap().as_array().cloned().unwrap()
}

fn ids(node: &Node) -> Vec<String> {
    let mut ids: Vec<String> = blocks(node).iter().filter_map(|b| b["id"].as_str().map(str::to_string)).collect();
    ids.sort();
    ids
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| entries.count())
}

#[test]
fn a_file_put_reads_back_byte_equal_under_its_blake3_id_and_survives_kill9_of_storage() {
    let node = Node::up();
    let large = pseudo_random(3_000_000, 1);
    let small = pseudo_random(900, 2);
    let large_id = stdout(&put_file(&node, "large", &large, &["--expiry", "1h"]));
    let small_id = stdout(&put_file(&node, "small", &small, &[]));
    assert_eq!(large_id, ContentId::of(&large).to_string());
    assert_eq!(small_id, ContentId::of(&small).to_string());
    assert_eq!(get_file(&node, &large_id), large);
    assert_eq!(get_file(&node, &small_id), small);
    let listed = blocks(&node);
    let large_entry = listed.iter().find(|b| b["id"] == large_id.as_str()).expect("the large block is listed");
    assert_eq!((large_entry["size"].as_u64(), large_entry["complete"].as_bool()), (Some(3_000_000), Some(true)));
    let expiry = large_entry["expiry"].as_u64().unwrap();
    assert!(expiry > now_ms() + 3_500_000 && expiry <= now_ms() + 3_600_000, "--expiry 1h is about an hour from now");

    let killed = node.kill9(ServiceKind::Storage);
    wait_until("storage is restarted", Duration::from_secs(30), || node.pid(ServiceKind::Storage).is_some_and(|pid| pid != killed) && node.all_up());
    assert_eq!(get_file(&node, &large_id), large, "a block survives kill -9 of storage");
    assert_eq!(get_file(&node, &small_id), small);
    assert_eq!(node.counter(ServiceKind::Storage, "blocks"), 2);

    let again = stdout(&put_file(&node, "again", &large, &[]));
    assert_eq!(again, large_id);
    assert_eq!(node.counter(ServiceKind::Storage, "puts_existing"), 1, "the same content is held once");
    assert_eq!(files_in(&node.root().join("data/storage/data")), 1, "one file for the large block; the small one is inline");
}

#[test]
fn a_put_over_the_block_limit_or_the_budget_is_refused_whole_and_leaves_nothing_behind() {
    let node = Node::up_with(&["storage.max_bytes=1000000", "storage.max_block_bytes=600000"]);
    let error = stderr(&put_file(&node, "huge", &pseudo_random(700_000, 3), &[]));
    assert!(error.contains("700000 bytes, over the node's largest block of 600000 bytes (storage.max_block_bytes)"), "{error}");
    let first = stdout(&put_file(&node, "first", &pseudo_random(500_000, 4), &[]));
    let error = stderr(&put_file(&node, "second", &pseudo_random(500_001, 5), &[]));
    assert!(error.contains("only 500000 of the node's 1000000 bytes are free (storage.max_bytes)"), "{error}");
    assert_eq!(ids(&node), vec![first.clone()]);
    assert_eq!(files_in(&node.root().join("data/storage/data")), 1);
    assert_eq!(files_in(&node.root().join("data/storage/tmp")), 0, "no half-written block");
    assert_eq!(node.counter(ServiceKind::Storage, "puts_refused"), 2);
    assert_eq!(node.counter(ServiceKind::Storage, "bytes_held"), 500_000);
}

#[test]
fn expired_blocks_are_collected_but_not_while_read_and_an_extended_lease_keeps_its_block() {
    let node = Node::up();
    let short = |name: &str, seed: u64| stdout(&put_file(&node, name, &pseudo_random(40_000, seed), &["--expiry", "2s"]));
    let (expired, extended, read) = (short("expired", 6), short("extended", 7), short("read", 8));
    let kept = stdout(&put_file(&node, "kept", &pseudo_random(100, 9), &[]));
    let info: Value = serde_json::from_str(&stdout(&node.cli(&["storage", "extend", &extended, "--expiry", "1h"]))).unwrap();
    assert!(info["expiry"].as_u64().unwrap() > now_ms() + 3_500_000, "{info}");
    // The last of the short leases to end (each put set its own, from its own now).
    let expiry = blocks(&node).iter().filter(|b| b["id"] == expired.as_str() || b["id"] == read.as_str()).filter_map(|b| b["expiry"].as_u64()).max().unwrap();

    with_rpc(async {
        // A reader holds `read` open across its expiry and the collections.
        let service: storage::Client = connect(&node.socket(ServiceKind::Storage)).await;
        let mut open = service.open_request();
        open.get().set_id(&read.parse::<ContentId>().unwrap().0);
        let answer = open.send().promise.await.unwrap();
        let reader = match answer.get().unwrap().get_result().unwrap().which().unwrap() {
            open_result::Opened(opened) => opened.get_reader().unwrap(),
            open_result::Refused(_) => panic!("the block to read is held"),
        };
        wait_until("the short leases end", Duration::from_secs(10), || now_ms() > expiry);
        let dry = stdout(&node.cli(&["storage", "gc", "--dry-run"]));
        assert!(dry.contains(&expired) && !dry.contains(&read) && dry.contains("would collect 1 blocks, 40000 bytes; 1 expired blocks are being read"), "{dry}");
        assert_eq!(ids(&node).len(), 4, "a dry run collects nothing");
        let collected = stdout(&node.cli(&["storage", "gc"]));
        assert!(collected.contains("collected 1 blocks, 40000 bytes"), "{collected}");
        let mut read_request = reader.read_request();
        read_request.get().set_offset(39_000);
        read_request.get().set_length(5_000);
        let tail = read_request.send().promise.await.unwrap();
        assert_eq!(tail.get().unwrap().get_bytes().unwrap(), &pseudo_random(40_000, 8)[39_000..], "the block is still read after collection passed it by");
    });
    // The reader is dropped: the next collection takes the block.
    let collected = stdout(&node.cli(&["storage", "gc"]));
    assert!(collected.contains(&read), "{collected}");
    let mut left = vec![extended, kept];
    left.sort();
    assert_eq!(ids(&node), left);
    assert_eq!(node.counter(ServiceKind::Storage, "collected_blocks"), 2);
    let error = stderr(&node.cli(&["get", &expired]));
    assert!(error.contains(&format!("no block {expired} is held here")), "{error}");
}

#[test]
fn the_node_collects_expired_blocks_on_its_own() {
    let node = Node::up_with(&["storage.collect_every_ms=200"]);
    let id = stdout(&put_file(&node, "soon", &pseudo_random(30_000, 10), &["--expiry", "1s"]));
    assert_eq!(ids(&node), vec![id]);
    wait_until("the expired block is collected", Duration::from_secs(15), || ids(&node).is_empty());
    assert_eq!(node.counter(ServiceKind::Storage, "collected_bytes"), 30_000);
    assert_eq!(files_in(&node.root().join("data/storage/data")), 0);
}

#[test]
fn malformed_and_unknown_ids_and_bad_durations_are_refused_with_one_clear_sentence() {
    let node = Node::up();
    let error = stderr(&node.cli(&["get", "abc"]));
    assert_eq!(error, "netmachine: 'abc' is not a block id: expected 64 hex digits");
    let unknown = ContentId::of(b"never stored").to_string();
    let error = stderr(&node.cli(&["get", &unknown]));
    assert_eq!(error, format!("netmachine: no block {unknown} is held here, and no other node is connected to ask"));
    let error = stderr(&node.cli(&["storage", "extend", &unknown, "--expiry", "1h"]));
    assert!(error.contains(&format!("no block {unknown} is held here")), "{error}");
    let error = stderr(&put_file(&node, "x", b"x", &["--expiry", "10"]));
    assert!(error.contains("'10' is not a duration"), "{error}");
    assert!(!node.root().join(format!("{unknown}.out")).exists());
}

#[test]
fn an_engine_puts_gets_and_extends_blocks_through_the_sdk_and_goes_on_after_storage_restarts() {
    let node = Node::up();
    with_rpc(async {
        let engine = attach_engine(&node, |_| {}).await;
        let large = pseudo_random(1_500_000, 11);
        let info = engine.put_block(large.clone(), BlockPrefs::default()).await.unwrap();
        assert_eq!((info.id, info.size), (ContentId::of(&large), 1_500_000));
        assert_eq!(engine.get_block(info.id).await.unwrap(), large);
        let extended = engine.extend_block(info.id, now_ms() + 86_400_000 * 30).await.unwrap();
        assert!(extended.expiry > info.expiry, "a later expiry extends the lease");
        let unknown = ContentId::of(b"unknown");
        assert!(matches!(engine.get_block(unknown).await, Err(BlockError::Refused { reason: StorageRefusal::Unknown, .. })));
        let past = engine.put_block(vec![1, 2, 3], BlockPrefs { expiry: now_ms() - 1_000, min_trust: 0 }).await;
        assert!(matches!(past, Err(BlockError::Refused { reason: StorageRefusal::Expired, .. })), "{past:?}");

        let killed = node.kill9(ServiceKind::Storage);
        let restarted = || node.pid(ServiceKind::Storage).is_some_and(|pid| pid != killed) && node.all_up();
        let start = std::time::Instant::now();
        while !restarted() {
            assert!(start.elapsed() < Duration::from_secs(30), "storage is restarted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let small = pseudo_random(5_000, 12);
        let again = engine.put_block(small.clone(), BlockPrefs::default()).await.expect("the engine reaches the restarted storage");
        assert_eq!(engine.get_block(again.id).await.unwrap(), small);
        assert_eq!(engine.get_block(info.id).await.unwrap(), large);
    });
}
