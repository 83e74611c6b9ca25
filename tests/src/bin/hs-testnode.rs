//! The `hs-node` command line, built inside this package so the whole-system
//! tests can start it as `CARGO_BIN_EXE_hs-testnode`.
fn main() -> std::process::ExitCode {
    tools::cli::main()
}
