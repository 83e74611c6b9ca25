#![no_main]
//! See `balancer::fuzz::json_body`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| balancer::fuzz::json_body(data));
