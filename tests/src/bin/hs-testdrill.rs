//! `hs-drill`, built inside this package so the whole-system tests can start it
//! as `CARGO_BIN_EXE_hs-testdrill`.
fn main() -> std::process::ExitCode {
    tools::drill::main()
}
