//! The failover drill: kill (and stop) the master of a real pair again and
//! again under load and check nothing acknowledged is lost. `hs-drill --help`.
//! It re-executes itself as the nodes and the witness (`__node ...`), so one
//! binary is all it needs.
fn main() -> std::process::ExitCode {
    tools::drill::main()
}
