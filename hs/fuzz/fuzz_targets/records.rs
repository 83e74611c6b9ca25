#![no_main]
//! See `hs::fuzz::records`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hs::fuzz::records(data));
