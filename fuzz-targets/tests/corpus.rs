//! The checked-in fuzz corpus (`fuzz/corpus/<target>/`), every input run through its target as
//! an ordinary test: what libFuzzer found interesting once, including every input that made a
//! decoder fail before it was fixed, stays covered on every run. Each target must have a
//! corpus of its own.

use std::path::Path;

#[test]
fn every_corpus_input_runs_through_its_decoder_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let mut counts = Vec::new();
    for (name, target) in netmachine_fuzz_targets::TARGETS {
        let dir = root.join(name);
        let inputs: Vec<_> = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).map(|entry| entry.expect("a corpus entry").path()).collect();
        for input in &inputs {
            let data = std::fs::read(input).expect("a corpus file");
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name} panicked on {}", input.display());
        }
        counts.push(format!("{name} {}", inputs.len()));
        assert!(inputs.len() >= 2, "{name} has a corpus of {} inputs", inputs.len());
    }
    eprintln!("corpus inputs run: {}", counts.join(", "));
}
