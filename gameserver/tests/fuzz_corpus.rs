//! Replays the committed fuzz corpus (`gameserver/fuzz/corpus/<target>/`)
//! through the same entry points the cargo-fuzz targets call, so plain
//! `cargo test` (stable, no libFuzzer) checks that every input that once
//! found new code, or a crash, still passes. Also checks the seeds are what
//! they say (the frames decode, the compressed ones inflate, the bomb is
//! refused), so a corpus that rotted into noise is noticed.

use std::path::Path;

use gameserver::fuzz::FUZZ_PAYLOAD_BYTES_MAX;
use gameserver::proto::frame::{self, FrameError, Kind, FLAG_COMPRESSED};
use testkit::corpus::{self, Target};

const TARGETS: [(&str, Target); 3] = [
    ("client_frames", gameserver::fuzz::client_frames),
    ("payloads", gameserver::fuzz::payloads),
    (
        "noise_handshake",
        gameserver::proto::noise::fuzz_noise_handshake,
    ),
];

#[test]
fn every_corpus_file_passes_its_target() {
    corpus::replay(env!("CARGO_MANIFEST_DIR"), &TARGETS);
}

#[test]
fn the_frame_seeds_are_what_they_say() {
    let (mut kinds, mut inflated, mut bombs) = (std::collections::HashSet::new(), 0, 0);
    for (file, data) in corpus::read(env!("CARGO_MANIFEST_DIR"), "client_frames") {
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

#[test]
fn every_mode_of_the_noise_target_has_a_seed() {
    let modes: std::collections::HashSet<u8> =
        corpus::read(env!("CARGO_MANIFEST_DIR"), "noise_handshake")
            .iter()
            .filter_map(|(_, d)| d.first().map(|m| m % 3))
            .collect();
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
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/noise_handshake/handshake_honest");
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
