//! `gs-drill`: bots playing through a gateway while the room-server master
//! is SIGKILLed and switched over; prints what the players saw. See
//! `tools::gsdrill`. Exits 1 when a player was disconnected, lost an
//! acknowledged move, saw one applied twice or a gap.

use std::process::ExitCode;

use clap::Parser;
use tools::gsdrill::{run, table, GsDrillArgs};

#[derive(Parser, Debug)]
#[command(
    about = "Kill and switch over a room-server master while bots play; check that no player noticed"
)]
struct Cli {
    #[command(flatten)]
    args: GsDrillArgs,
}

fn main() -> ExitCode {
    let a = Cli::parse().args;
    match run(&a, |line| eprintln!("{line}")) {
        Ok(r) => {
            eprint!("{}", table(&r));
            if a.json {
                println!("{}", serde_json::to_string(&r).expect("report serializes"));
            }
            if r.ok() {
                eprintln!("no player noticed: 0 disconnected, 0 acknowledged moves lost, 0 applied twice, 0 gaps");
                ExitCode::SUCCESS
            } else {
                eprintln!("FAILED: a player noticed (see above)");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("gs-drill: {e}");
            ExitCode::FAILURE
        }
    }
}
