//! Replays the committed fuzz corpus (`gameserver/fuzz/corpus/<target>/`)
//! through the same entry points the cargo-fuzz targets call, so plain
//! `cargo test` (stable, no libFuzzer) checks that every input that once
//! found new code, or a crash, still passes. Also checks the seeds are what
//! they say (the frames decode, the compressed ones inflate, the bomb is
//! refused), so a corpus that rotted into noise is noticed.

use std::path::Path;

use gameserver::fuzz::FUZZ_PAYLOAD_BYTES_MAX;
use gameserver::proto::frame::{self, FrameError, Kind, FLAG_COMPRESSED};

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 2] = [
    ("client_frames", gameserver::fuzz::client_frames),
    ("payloads", gameserver::fuzz::payloads),
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
fn the_frame_seeds_are_what_they_say() {
    let (mut kinds, mut inflated, mut bombs) = (std::collections::HashSet::new(), 0, 0);
    for (file, data) in corpus("client_frames") {
        // The first byte is the target's cut size; the rest is the stream.
        match frame::decode_message(&data[1..], FUZZ_PAYLOAD_BYTES_MAX) {
            Ok(f) => {
                kinds.insert(f.kind);
                let compressed = f.flags & FLAG_COMPRESSED != 0;
                match f.inflated(FUZZ_PAYLOAD_BYTES_MAX) {
                    Ok(_) if compressed => inflated += 1,
                    Ok(_) => {}
                    Err(FrameError::InflatesTooLarge { .. }) => bombs += 1,
                    Err(e) => assert_eq!(file, "bad_deflate", "{e}"),
                }
            }
            Err(_) => assert!(
                [
                    "bad_crc",
                    "encrypted_flag",
                    "too_large",
                    "ping_pong",
                    "session",
                    "session_in_bytes"
                ]
                .contains(&file.as_str()),
                "seed {file} does not decode"
            ),
        }
    }
    for k in [Kind::Auth, Kind::Request, Kind::Center] {
        assert!(kinds.contains(&k), "no valid seed of {k:?}");
    }
    assert_eq!((inflated, bombs), (1, 1));
}
