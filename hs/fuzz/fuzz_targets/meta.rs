#![no_main]
//! See `hs::fuzz::meta`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hs::fuzz::meta(data));
