#![no_main]
//! See `balancer::fuzz::client_response`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| balancer::fuzz::client_response(data));
