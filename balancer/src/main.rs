//! `balancer`: parses flags and runs the registry server.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    balancer::cli::serve_main(balancer::cli::ServeArgs::parse())
}
