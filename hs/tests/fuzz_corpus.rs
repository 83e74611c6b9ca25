//! Replays the committed fuzz corpus (`hs/fuzz/corpus/<target>/`) through the
//! same entry points the cargo-fuzz targets call, so plain `cargo test` (stable,
//! no libFuzzer) checks that every input that once found new code, or a crash,
//! still passes. Also checks the seeds are what they say (a valid frame of each
//! kind decodes), so a corpus that rotted into noise is noticed.

use bytes::BytesMut;
use hs::proto::frame::Frame;
use testkit::corpus::{self, Target};

const TARGETS: [(&str, Target); 5] = [
    ("frame_stream", hs::fuzz::frame_stream),
    ("frame_payload", hs::fuzz::frame_payload),
    ("records", hs::fuzz::records),
    ("snapshot", hs::fuzz::snapshot),
    ("meta", hs::fuzz::meta),
];

#[test]
fn every_corpus_file_passes_its_target() {
    corpus::replay(env!("CARGO_MANIFEST_DIR"), &TARGETS);
}

#[test]
fn the_frame_seeds_are_valid_frames_of_every_kind() {
    let mut kinds = std::collections::HashSet::new();
    for (file, data) in corpus::read(env!("CARGO_MANIFEST_DIR"), "frame_stream") {
        let mut src = BytesMut::from(&data[..]);
        if let Ok(Some(f)) = Frame::decode(&mut src, 1 << 20) {
            kinds.insert(std::mem::discriminant(&f));
        } else {
            assert!(
                ["truncated", "too_large", "bad_crc", "short_hello_47"].contains(&file.as_str()),
                "seed {file} does not decode"
            );
        }
    }
    assert_eq!(kinds.len(), 13, "a frame kind has no valid seed");
}
