//! The failover drill: kill (and stop) the master of a real pair again and
//! again under load and check nothing acknowledged is lost. `hs-drill --help`.
//! It re-executes itself as the nodes and the witness (`__node ...`), so one
//! binary is all it needs.

use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "hs-drill", about = "Failover drill for an hs pair: kill the master under load, measure, check")]
struct Cli {
    #[command(flatten)]
    args: tools::drill::DrillArgs,
}

fn main() -> std::process::ExitCode {
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "__node") {
        argv.remove(1);
        return tools::cli::main_from(argv);
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("hs-drill: cannot find my own executable: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match tools::drill::run(Cli::parse().args, exe) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hs-drill: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
