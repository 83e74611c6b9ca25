#![no_main]
//! See `balancer::fuzz::push_stream`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| balancer::fuzz::push_stream(data));
