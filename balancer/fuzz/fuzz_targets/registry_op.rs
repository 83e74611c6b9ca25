#![no_main]
//! See `balancer::fuzz::registry_op`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| balancer::fuzz::registry_op(data));
