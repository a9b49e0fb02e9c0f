//! `netmachine put`, `get`, `blocks` and `storage gc|extend`: the node's blocks from the
//! shell, through the storage service's socket.

use crate::node_client::run_local;
use anyhow::{Context, Result};
use netmachine_engine::blocks::{BlockInfo, BlockPrefs, Blocks, Sources};
use netmachine_engine::{ContentId, Identity};
use netmachine_schema::time::now_ms;
use netmachine_service::{NodeHome, ServiceKind};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand)]
pub enum StorageCommand {
    /// Collect the blocks whose lease ended
    Gc {
        /// Only list what would be collected
        #[arg(long)]
        dry_run: bool,
    },
    /// Extend a block's lease (a lease is never shortened)
    Extend {
        /// The block's id (64 hex digits)
        id: String,
        /// How long from now to keep it: a number with s, m, h or d (e.g. 30d)
        #[arg(long, value_parser = parse_duration)]
        expiry: u64,
    },
}

/// A lifetime such as `90s`, `15m`, `12h` or `30d`, in milliseconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let (number, unit) = text.trim().split_at(text.trim().find(|c: char| !c.is_ascii_digit()).unwrap_or(text.trim().len()));
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("'{text}' is not a duration: a number followed by ms, s, m, h or d (e.g. 30d)")),
    };
    let number: u64 = number.parse().map_err(|_| format!("'{text}' is not a duration: it must start with a whole number (e.g. 30d)"))?;
    number.checked_mul(scale).filter(|ms| *ms > 0).ok_or_else(|| format!("'{text}' is not a usable duration"))
}

fn connect(root: &Path, set: &[String]) -> Result<Blocks> {
    let home = NodeHome::load(root, set)?;
    Blocks::connect(&home.socket(ServiceKind::Storage), home.config.rpc_word_limit()).map_err(Into::into)
}

fn block_id(id: &str) -> Result<ContentId> {
    id.parse().map_err(Into::into)
}

fn expiry_from_now(lifetime: Option<u64>) -> u64 {
    lifetime.map_or(0, |ms| now_ms() + ms)
}

/// Stores FILE (or standard input, `-`) as a block; prints its id.
pub fn put(root: &Path, set: &[String], file: &Path, lifetime: Option<u64>, min_trust: u8) -> Result<()> {
    let blocks = connect(root, set)?;
    let prefs = BlockPrefs { expiry: expiry_from_now(lifetime), min_trust };
    let info = run_local(async {
        if file == Path::new("-") {
            let mut content = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut content).context("reading standard input")?;
            return Ok(blocks.put(content, prefs).await?);
        }
        let opened = std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
        let size = opened.metadata()?.len();
        Ok(blocks.put_from(Box::new(std::io::BufReader::new(opened)), size, prefs, None).await?)
    })?;
    println!("{}", info.id);
    Ok(())
}

/// Writes block ID to FILE (or standard output), with a progress bar on a terminal; a block the
/// node does not hold is fetched from the node of `topic`'s publisher, then the nodes `from`
/// (none: the connected ones).
pub fn get(root: &Path, set: &[String], id: &str, output: Option<PathBuf>, from: &[String], topic: Option<&str>) -> Result<()> {
    let id = block_id(id)?;
    let nodes = from.iter().map(|node| node.parse().with_context(|| format!("--from {node}"))).collect::<Result<Vec<Identity>>>()?;
    let topic = topic.map(|topic| topic.parse().with_context(|| format!("--topic {topic}"))).transpose()?;
    let from = Sources { topic, nodes };
    let blocks = connect(root, set)?;
    let sink: Box<dyn std::io::Write + Send> = match &output {
        Some(path) => Box::new(std::io::BufWriter::new(std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?)),
        None => Box::new(std::io::stdout()),
    };
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(indicatif::ProgressStyle::with_template("{bytes}/{total_bytes} {wide_bar} {binary_bytes_per_sec} {eta} left").unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()));
        bar
    });
    let shown = bar.clone();
    // A fetched block is reported twice (fetched, then read back): the bar only moves forward.
    let progress = Box::new(move |done: u64, size: u64| {
        if let Some(bar) = &shown {
            bar.set_length(size);
            if done > bar.position() {
                bar.set_position(done);
            }
        }
    });
    let fetched = run_local(async { Ok(blocks.get_into(id, from, sink, progress).await?) });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if let Err(error) = fetched {
        if let Some(path) = &output {
            let _ = std::fs::remove_file(path);
        }
        return Err(error);
    }
    Ok(())
}

fn describe(info: &BlockInfo) -> serde_json::Value {
    serde_json::json!({ "id": info.id.to_string(), "size": info.size, "expiry": info.expiry, "min_trust": info.min_trust, "complete": info.complete })
}

/// Lists the blocks the node holds.
pub fn list(root: &Path, set: &[String], json: bool) -> Result<()> {
    let blocks = connect(root, set)?;
    let held = run_local(async { Ok(blocks.list().await?) })?;
    if json {
        println!("{}", serde_json::Value::Array(held.iter().map(describe).collect()));
        return Ok(());
    }
    if held.is_empty() {
        println!("no blocks on this node");
    }
    let now = now_ms();
    for info in held {
        if !info.complete {
            println!("{}  {:>12} bytes  partial: being fetched, or resumed by the next get", info.id, info.size);
            continue;
        }
        let left = info.expiry.saturating_sub(now) / 1000;
        println!("{}  {:>12} bytes  expires in {}h{:02}m  complete", info.id, info.size, left / 3600, left / 60 % 60);
    }
    Ok(())
}

pub fn storage(root: &Path, set: &[String], command: StorageCommand) -> Result<()> {
    let blocks = connect(root, set)?;
    match command {
        StorageCommand::Gc { dry_run } => {
            let collected = run_local(async { Ok(blocks.collect(dry_run).await?) })?;
            let verb = if dry_run { "would collect" } else { "collected" };
            for block in &collected.reclaimed {
                println!("{}  {} bytes{}", block.id, block.size, if block.complete { "" } else { "  partial" });
            }
            println!("{verb} {} blocks, {} bytes; {} expired blocks are being read and were kept", collected.reclaimed.len(), collected.bytes, collected.held);
        }
        StorageCommand::Extend { id, expiry } => {
            let id = block_id(&id)?;
            let info = run_local(async { Ok(blocks.extend(id, now_ms() + expiry).await?) })?;
            println!("{}", describe(&info));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_with_their_unit_and_a_bare_or_unknown_unit_is_refused() {
        assert_eq!(parse_duration("90s"), Ok(90_000));
        assert_eq!(parse_duration("30d"), Ok(30 * 86_400_000));
        assert_eq!(parse_duration("250ms"), Ok(250));
        for bad in ["30", "d", "3w", "-1h", "0s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_malformed_block_id_is_refused_with_what_was_expected() {
        let error = block_id("abc").unwrap_err().to_string();
        assert!(error.contains("expected 64 hex digits"), "{error}");
    }
}
