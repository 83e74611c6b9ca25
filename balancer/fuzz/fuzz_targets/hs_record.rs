#![no_main]
//! See `balancer::fuzz::hs_record`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| balancer::fuzz::hs_record(data));
