//! Run an hs master or slave by hand, or a local demo pair. See `hs-node --help`.
fn main() -> std::process::ExitCode {
    tools::cli::main()
}
