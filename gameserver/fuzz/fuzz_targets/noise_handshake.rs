#![no_main]
//! See `gameserver::proto::noise::fuzz_noise_handshake`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gameserver::proto::noise::fuzz_noise_handshake(data));
