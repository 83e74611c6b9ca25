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

/// The committed `handshake_honest` seed is what its name says: mode 0 and
/// an honest first handshake message for the target's fixed gateway key, so
/// the fuzzer starts past the handshake. `GS_BLESS=1` writes a new one (the
/// ephemeral key is random, so the bytes differ each time).
#[test]
fn the_honest_handshake_seed_is_accepted_by_the_targets_gateway_key() {
    use gameserver::proto::noise::{respond, take_message, Initiator, StaticKey, KEY_BYTES};
    let key = StaticKey::from_private([7u8; KEY_BYTES]);
    let path = corpus_dir().join("handshake_honest");
    if std::env::var_os("GS_BLESS").is_some() {
        let mut m = bytes::BytesMut::new();
        Initiator::start(&key.public(), &mut m).unwrap();
        let mut seed = vec![0u8];
        seed.extend_from_slice(&m);
        std::fs::write(&path, seed).unwrap();
    }
    let seed = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(seed.first(), Some(&0), "the seed is not in mode 0");
    let mut wire = bytes::BytesMut::from(&seed[1..]);
    let m1 = take_message(&mut wire).expect("a whole first handshake message");
    let mut out = bytes::BytesMut::new();
    assert!(
        respond(&key, &m1, &mut out).is_ok(),
        "the gateway key [7; 32] refuses the honest seed: regenerate it with GS_BLESS=1"
    );
}
