//! The committed fuzz corpus (`fuzz/corpus`), replayed through the fuzz targets' own bodies on
//! every `cargo test`: what `make fuzz` found interesting once keeps being checked, without
//! libFuzzer and without a nightly compiler.
#![cfg(feature = "ssr")]

#[path = "../../fuzz/fuzz_targets/bodies/affinity.rs"]
mod affinity;
#[path = "../../fuzz/fuzz_targets/bodies/parsers.rs"]
mod parsers;

use std::path::Path;

/// Every input of one target's corpus; there must be some, or the corpus moved.
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect();
    assert!(
        inputs.len() >= 10,
        "{}: only {} inputs",
        dir.display(),
        inputs.len()
    );
    inputs
}

#[test]
fn the_affinity_corpus_holds() {
    for input in corpus("affinity") {
        affinity::run(&input);
    }
}

#[test]
fn the_parsers_corpus_holds() {
    for input in corpus("parsers") {
        parsers::run(&input);
    }
}
