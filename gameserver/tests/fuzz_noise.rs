//! Replays the committed corpus of the `noise_handshake` fuzz target
//! (`gameserver/fuzz/corpus/noise_handshake/`) through the entry point the
//! target calls, so plain `cargo test` (stable, no libFuzzer) checks that
//! every input that once found new code, or a crash, still passes.

use std::path::Path;

/// Corpus files at most: the committed corpus is small.
const FILES_MAX: usize = 1_000;

fn corpus_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/noise_handshake")
}

#[test]
fn every_corpus_file_passes_the_noise_target() {
    let dir = corpus_dir();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: no corpus", dir.display());
    assert!(
        files.len() <= FILES_MAX,
        "{}: corpus too large",
        dir.display()
    );
    let mut modes = std::collections::HashSet::new();
    for f in files {
        let data = std::fs::read(&f).unwrap();
        if let Some(m) = data.first() {
            modes.insert(m % 3);
        }
        let outcome =
            std::panic::catch_unwind(|| gameserver::proto::noise::fuzz_noise_handshake(&data));
        assert!(outcome.is_ok(), "{} panics", f.display());
    }
    assert_eq!(modes.len(), 3, "every mode of the target has a seed");
}

/// `cargo test --release -p gameserver --test fuzz_noise -- --ignored`:
/// writes the seeds that need real keys (an honest first handshake message
/// for the target's fixed gateway key).
#[test]
#[ignore]
fn write_seeds() {
    use gameserver::proto::noise::{Initiator, StaticKey, KEY_BYTES};
    let key = StaticKey::from_private([7u8; KEY_BYTES]);
    let mut m = bytes::BytesMut::new();
    Initiator::start(&key.public(), &mut m).unwrap();
    let mut seed = vec![0u8];
    seed.extend_from_slice(&m);
    std::fs::write(corpus_dir().join("handshake_honest"), seed).unwrap();
}
