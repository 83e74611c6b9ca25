#![no_main]
//! See `hs::fuzz::snapshot`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hs::fuzz::snapshot(data));
