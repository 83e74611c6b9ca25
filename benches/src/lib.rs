//! Benchmarks: criterion micro-benchmarks in benches/benches, the macro bench is tools' hs-bench.
