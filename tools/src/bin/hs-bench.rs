//! Macro benchmarks of hs: a master in this process and a slave in a child
//! process on 127.0.0.1. See `hs-bench --help` and benches/compare.sh.
#[path = "../bench/mod.rs"]
mod bench;

fn main() -> std::process::ExitCode {
    bench::main()
}
