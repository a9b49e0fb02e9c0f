//! `netmachine demo`, the README's main command, run as a user runs it: two nodes come up,
//! connect, and engines on both exchange messages and requests both ways; it stops cleanly.

use netmachine_tests::bin_dir;
use std::process::Command;

#[test]
fn the_demo_runs_from_start_to_clean_stop() {
    let output = Command::new(bin_dir().join("netmachine")).arg("demo").output().expect("run the demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "the demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    for expected in [
        "A and B connected over QUIC",
        "alice@A -> bob@B: one-way",
        "bob@B -> alice@A: one-way",
        "alice@A -> bob@B: 200 requests",
        "bob@B -> alice@A: 200 requests",
        "alice@A -> carol@A (same node): 200 requests",
        "alice@A asked node B itself; it answered",
        "bob@B subscribed through B's pubsub service",
        "bob@B got [\"news 1\", \"news 2\", \"news 3\"], in order, no gap",
        "stopped both nodes (exit status: 0, exit status: 0)",
    ] {
        assert!(stdout.contains(expected), "the demo did not print {expected:?}:\n{stdout}");
    }
}
