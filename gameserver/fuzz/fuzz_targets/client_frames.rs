#![no_main]
//! See `gameserver::fuzz::client_frames`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gameserver::fuzz::client_frames(data));
