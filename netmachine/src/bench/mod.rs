//! `netmachine bench`: benchmarks that print our figure next to its baseline from the same run
//! on the same machine, so the ratio can be read off however noisy the
//! machine is. Build with `--release` for meaningful figures.

mod cores;
pub mod helpers;
pub mod local;
pub mod pubsub;
mod receiving;
pub mod remote;
pub mod storage;

/// Starts two nodes on loopback in a scratch directory (with `set` besides a free port each),
/// runs `measure` on them, stops them, and prints its report (as JSON with `json_output`).
pub fn two_nodes(
    scratch_name: &str,
    set: &[String],
    json_output: bool,
    print_report: fn(&serde_json::Value),
    measure: impl FnOnce(&mut crate::local_node::LocalNode, &mut crate::local_node::LocalNode, &crate::local_node::ScratchDir) -> anyhow::Result<serde_json::Value>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let netmachine = std::env::current_exe().context("cannot find this executable")?;
    let scratch = crate::local_node::ScratchDir::new(scratch_name)?;
    let set: Vec<String> = std::iter::once("transport.listen=[\"127.0.0.1:0\"]".to_string()).chain(set.iter().cloned()).collect();
    let mut a = crate::local_node::LocalNode::start(&netmachine, &scratch.0.join("a"), &set)?;
    let mut b = crate::local_node::LocalNode::start(&netmachine, &scratch.0.join("b"), &set)?;
    let report = measure(&mut a, &mut b, &scratch);
    a.stop();
    b.stop();
    let report = report?;
    if json_output {
        println!("{report}");
    } else {
        print_report(&report);
    }
    Ok(())
}

/// A figure, its baseline and their ratio, as one line.
pub fn ratio_line(what: &str, ours: f64, baseline_name: &str, baseline: f64, unit: &str) -> String {
    let ratio = if baseline > 0.0 { ours / baseline } else { 0.0 };
    line_with_ratio(what, ours, baseline_name, baseline, unit, ratio)
}

/// As `ratio_line`, with the ratio given (the median of paired rounds' ratios, say).
pub fn line_with_ratio(what: &str, ours: f64, baseline_name: &str, baseline: f64, unit: &str, ratio: f64) -> String {
    format!("{what:<44} {ours:>12.0} {unit:<8} vs {baseline_name:<34} {baseline:>12.0} {unit:<8} ratio {ratio:.2}")
}
