//! `netmachine bench`: benchmarks that print our figure next to its baseline from the same run
//! on the same machine, so the ratio can be read off however noisy the
//! machine is. Build with `--release` for meaningful figures.

pub mod helpers;
pub mod local;
pub mod pubsub;
mod receiving;
pub mod remote;
pub mod storage;

/// A figure, its baseline and their ratio, as one line.
pub fn ratio_line(what: &str, ours: f64, baseline_name: &str, baseline: f64, unit: &str) -> String {
    let ratio = if baseline > 0.0 { ours / baseline } else { 0.0 };
    format!("{what:<44} {ours:>12.0} {unit:<8} vs {baseline_name:<34} {baseline:>12.0} {unit:<8} ratio {ratio:.2}")
}
