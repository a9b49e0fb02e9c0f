//! `netmachine bench storage`: blocks, each figure beside its baseline from the same run. On
//! one node: a put of N MiB (hashed, its outboard computed, synced) against writing the same
//! bytes to a plain file and syncing it, and a get against reading that file back from the disk
//! (a put writes past the page cache, so its get reads the disk too). Between two
//! nodes on loopback: a fetch of the block (bulk streams through both transports, every group
//! checked) against one raw quinn stream carrying the same bytes with the same TLS. And checking
//! a whole block's stream against BLAKE3 hashing the same bytes on one core. The machine is
//! shared and noisy, so this runs in rounds (each with a block of its own, its baselines
//! measured beside it) and reports the median of each figure, each round's ratios, and as the
//! ratio the median of the rounds' ratios: a figure is compared with the baseline measured
//! beside it, not with one from a quieter or busier moment of the run.

use crate::local_node::{LocalNode, ScratchDir};
use crate::node_client::run_local;
use anyhow::{bail, Context, Result};
use netmachine_engine::blocks::{BlockPrefs, Blocks, Sources};
use netmachine_schema::{ContentId, Keypair};
use netmachine_service::ServiceKind;
use netmachine_storage::core::verify::{encode, group_ranges, groups, outboard, Verifier};
use netmachine_transport::tls::NodeTls;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn mb_per_s(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64().max(1e-9) / 1e6
}

/// `size` bytes that do not compress or repeat, different for each `round`.
fn block(size: usize, round: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; size];
    let mut state = 0x2545_f491_4f6c_dd1du64 ^ (round as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for chunk in bytes.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
    bytes
}

pub fn run(mib: usize, rounds: usize, json_output: bool, set: &[String]) -> Result<()> {
    // Each node keeps every round's block.
    let budget = format!("storage.max_bytes={}", (rounds + 1) * (mib << 20) + (64 << 20));
    let largest = format!("storage.max_block_bytes={}", mib << 20);
    let set: Vec<String> = [budget, largest].into_iter().chain(set.iter().cloned()).collect();
    super::two_nodes("netmachine-bench-storage", &set, json_output, print_report, |a, b, scratch| measure(a, b, scratch, mib << 20, rounds))
}

/// Figures measured in every round, each beside its baseline.
const PAIRS: [(&str, &str); 4] = [
    ("put_mb_per_s", "file_write_mb_per_s"),
    ("get_mb_per_s", "file_read_mb_per_s"),
    ("fetch_mb_per_s", "raw_quinn_bulk_mb_per_s"),
    ("verify_mb_per_s", "blake3_mb_per_s"),
];

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn measure(a: &mut LocalNode, b: &mut LocalNode, scratch: &ScratchDir, size: usize, rounds: usize) -> Result<serde_json::Value> {
    run_local(super::remote::link_nodes(a, b))?;
    let words = a.home.config.rpc_word_limit();
    let at_a = Blocks::connect(&a.home.socket(ServiceKind::Storage), words)?;
    let at_b = Blocks::connect(&b.home.socket(ServiceKind::Storage), words)?;
    let measured = (0..rounds).map(|round| measure_round(&at_a, &at_b, scratch, block(size, round))).collect::<Result<Vec<_>>>()?;
    let mut report = serde_json::Map::new();
    report.insert("block_bytes".into(), size.into());
    report.insert("rounds".into(), rounds.into());
    for (figure, baseline) in PAIRS {
        for key in [figure, baseline] {
            report.insert(key.into(), median(measured.iter().map(|round| round[key]).collect()).round().into());
        }
        let ratios: Vec<f64> = measured.iter().map(|round| (round[figure] / round[baseline] * 100.0).round() / 100.0).collect();
        let name = figure.trim_end_matches("_mb_per_s");
        report.insert(format!("{name}_ratio"), median(ratios.clone()).into());
        report.insert(format!("{name}_ratio_per_round"), ratios.into());
    }
    Ok(report.into())
}

/// One round with block `content`: each figure of `PAIRS`, in MB/s.
fn measure_round(at_a: &Blocks, at_b: &Blocks, scratch: &ScratchDir, content: Vec<u8>) -> Result<std::collections::BTreeMap<&'static str, f64>> {
    let size = content.len();

    let plain = scratch.0.join("plain.bin");
    let start = Instant::now();
    let mut file = std::fs::File::create(&plain)?;
    file.write_all(&content)?;
    file.sync_data()?;
    let file_write = mb_per_s(size, start.elapsed());
    // A block is written past the page cache (direct I/O), so its get reads the disk: the plain
    // file is read from the disk too.
    nix::fcntl::posix_fadvise(&file, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED)?;
    drop(file);
    let start = Instant::now();
    let mut read_back = Vec::with_capacity(size);
    std::fs::File::open(&plain)?.read_to_end(&mut read_back)?;
    let file_read = mb_per_s(size, start.elapsed());

    // The put takes its bytes by value: the copy is made before the clock starts.
    let to_put = content.clone();
    let start = Instant::now();
    let info = run_local(async { Ok(at_a.put(to_put, BlockPrefs::default()).await?) })?;
    let put = mb_per_s(size, start.elapsed());
    let start = Instant::now();
    let got = run_local(async { Ok(at_a.get_into(info.id, Sources::default(), Box::new(std::io::sink()), Box::new(|_, _| {})).await?) })?;
    let get = mb_per_s(size, start.elapsed());
    if got.size != size as u64 {
        bail!("the get returned {} of {size} bytes", got.size);
    }

    let start = Instant::now();
    let fetched = run_local(async { Ok(at_b.fetch(info.id, Sources::default()).await?) })?;
    let fetch = mb_per_s(size, start.elapsed());
    if fetched.size != size as u64 {
        bail!("the fetch returned {} of {size} bytes", fetched.size);
    }
    let raw = run_local(raw_quinn_bulk(&content))?;

    let (verify, hash) = verify_against_hashing(&content)?;
    Ok([
        ("put_mb_per_s", put),
        ("file_write_mb_per_s", file_write),
        ("get_mb_per_s", get),
        ("file_read_mb_per_s", file_read),
        ("fetch_mb_per_s", fetch),
        ("raw_quinn_bulk_mb_per_s", raw),
        ("verify_mb_per_s", verify),
        ("blake3_mb_per_s", hash),
    ]
    .into_iter()
    .collect())
}

/// The baseline of a fetch: the same bytes on one quinn stream over loopback, with the TLS
/// configuration the nodes use; the clock runs until the last byte was read.
async fn raw_quinn_bulk(content: &[u8]) -> Result<f64> {
    let (server_key, client_key) = (Keypair::generate(), Keypair::generate());
    let (server, client) = super::remote::raw_endpoints(NodeTls::new(&server_key)?.server_config()?)?;
    let address = server.local_addr()?;
    let size = content.len();
    let receiving = tokio::task::spawn_local(async move {
        let connection = server.accept().await.context("no connection")?.await?;
        let mut stream = connection.accept_uni().await?;
        let mut read = 0;
        while let Some(chunk) = stream.read_chunk(1 << 20, true).await? {
            read += chunk.bytes.len();
        }
        Ok::<_, anyhow::Error>((connection, read))
    });
    let connection = client.connect_with(NodeTls::new(&client_key)?.client_config(server_key.identity())?, address, "netmachine")?.await?;
    let start = Instant::now();
    let mut stream = connection.open_uni().await?;
    for piece in content.chunks(1 << 20) {
        stream.write_all(piece).await?;
    }
    stream.finish()?;
    let (_server_side, read) = receiving.await??;
    let elapsed = start.elapsed();
    connection.close(0u32.into(), b"done");
    if read != size {
        bail!("raw quinn delivered {read} of {size} bytes");
    }
    Ok(mb_per_s(size, elapsed))
}

/// Checking a whole block's verified stream, and hashing the same bytes, on one core (MB/s).
fn verify_against_hashing(content: &[u8]) -> Result<(f64, f64)> {
    let id = ContentId::of(content);
    let ranges = group_ranges(0, groups(content.len() as u64));
    let encoded = encode(content, content.len() as u64, &outboard(content), &ranges)?;
    let start = Instant::now();
    let mut verifier = Verifier::new(id, content.len() as u64, &ranges);
    for piece in encoded.chunks(256 * 1024) {
        verifier.feed(piece).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    verifier.feed(&[]).map_err(|e| anyhow::anyhow!("{e}"))?;
    let verify = mb_per_s(content.len(), start.elapsed());
    let start = Instant::now();
    let hashed = blake3::hash(content);
    let hash = mb_per_s(content.len(), start.elapsed());
    if hashed.as_bytes() != &id.0 || !verifier.finished() {
        bail!("the check did not finish");
    }
    Ok((verify, hash))
}

fn print_report(report: &serde_json::Value) {
    let f = |key: &str| report[key].as_f64().unwrap_or(0.0);
    let mib = report["block_bytes"].as_u64().unwrap_or(0) >> 20;
    println!("netmachine bench storage: blocks of {mib} MiB, the median of {} rounds (ratio: the median of the rounds' ratios)", report["rounds"]);
    let line = |what, figure: &str, baseline_name, baseline: &str| {
        let ratio = f(&format!("{}_ratio", figure.trim_end_matches("_mb_per_s")));
        println!("{}", super::line_with_ratio(what, f(figure), baseline_name, f(baseline), "MB/s", ratio));
    };
    line("put (hashed, outboard, synced)", "put_mb_per_s", "plain file write + sync", "file_write_mb_per_s");
    line("get", "get_mb_per_s", "plain file read", "file_read_mb_per_s");
    line("fetch node to node (checked)", "fetch_mb_per_s", "raw quinn bulk stream", "raw_quinn_bulk_mb_per_s");
    line("verified stream check, one core", "verify_mb_per_s", "BLAKE3 hash, one core", "blake3_mb_per_s");
    for figure in ["put", "get", "fetch", "verify"] {
        let ratios = report[format!("{figure}_ratio_per_round")].as_array().map(|r| r.iter().map(|v| format!("{}", v.as_f64().unwrap_or(0.0))).collect::<Vec<_>>().join(" ")).unwrap_or_default();
        println!("{figure} ratio in each round: {ratios}");
    }
}
