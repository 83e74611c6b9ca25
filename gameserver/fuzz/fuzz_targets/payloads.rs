#![no_main]
//! See `gameserver::fuzz::payloads`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gameserver::fuzz::payloads(data));
