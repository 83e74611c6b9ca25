#![no_main]
//! See `hs::fuzz::frame_stream`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hs::fuzz::frame_stream(data));
