//! Replays the committed fuzz corpus (`balancer/fuzz/corpus/<target>/`)
//! through the same entry points the cargo-fuzz targets call, so plain
//! `cargo test` (stable, no libFuzzer) checks every input that once found
//! new code, or a crash, still passes.

use std::path::Path;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 5] = [
    ("push_stream", balancer::fuzz::push_stream),
    ("json_body", balancer::fuzz::json_body),
    ("hs_record", balancer::fuzz::hs_record),
    ("registry_op", balancer::fuzz::registry_op),
    ("client_response", balancer::fuzz::client_response),
];

/// Corpus files per target at most: the committed corpus is small.
const FILES_PER_TARGET_MAX: usize = 1_000;

#[test]
fn every_corpus_file_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, target) in TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("a directory entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{}: no corpus", dir.display());
        assert!(
            files.len() <= FILES_PER_TARGET_MAX,
            "{}: corpus too large",
            dir.display()
        );
        for file in files {
            let data = std::fs::read(&file).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: {} panics", file.display());
        }
    }
}
