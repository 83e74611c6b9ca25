//! Replays the committed fuzz corpus (`balancer/fuzz/corpus/<target>/`)
//! through the same entry points the cargo-fuzz targets call, so plain
//! `cargo test` (stable, no libFuzzer) checks every input that once found
//! new code, or a crash, still passes.

use testkit::corpus::{self, Target};

const TARGETS: [(&str, Target); 5] = [
    ("push_stream", balancer::fuzz::push_stream),
    ("json_body", balancer::fuzz::json_body),
    ("hs_record", balancer::fuzz::hs_record),
    ("registry_op", balancer::fuzz::registry_op),
    ("client_response", balancer::fuzz::client_response),
];

#[test]
fn every_corpus_file_passes_its_target() {
    corpus::replay(env!("CARGO_MANIFEST_DIR"), &TARGETS);
}
