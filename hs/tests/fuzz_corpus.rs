//! Replays the committed fuzz corpus (`hs/fuzz/corpus/<target>/`) through the
//! same entry points the cargo-fuzz targets call, so plain `cargo test` (stable,
//! no libFuzzer) checks that every input that once found new code, or a crash,
//! still passes. Also checks the seeds are what they say (a valid frame of each
//! kind decodes), so a corpus that rotted into noise is noticed.

use std::path::Path;

use bytes::BytesMut;
use hs::proto::frame::Frame;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 5] = [
    ("frame_stream", hs::fuzz::frame_stream),
    ("frame_payload", hs::fuzz::frame_payload),
    ("records", hs::fuzz::records),
    ("snapshot", hs::fuzz::snapshot),
    ("meta", hs::fuzz::meta),
];

/// Corpus files per target at most: the committed corpus is small.
const FILES_PER_TARGET_MAX: usize = 1_000;

fn corpus(name: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(name);
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
    files
        .into_iter()
        .map(|f| {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&f).unwrap())
        })
        .collect()
}

#[test]
fn every_corpus_file_passes_its_target() {
    for (name, target) in TARGETS {
        for (file, data) in corpus(name) {
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: {file} panics");
        }
    }
}

#[test]
fn the_frame_seeds_are_valid_frames_of_every_kind() {
    let mut kinds = std::collections::HashSet::new();
    for (file, data) in corpus("frame_stream") {
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
