//! `balancer-ctl`: operator commands (zones, list, pick, drain, undrain,
//! rolling-restart) against a running balancer.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    balancer::cli::ctl_main(balancer::cli::CtlArgs::parse())
}
