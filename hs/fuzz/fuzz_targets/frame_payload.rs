#![no_main]
//! See `hs::fuzz::frame_payload`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hs::fuzz::frame_payload(data));
