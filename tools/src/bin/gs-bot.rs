//! `gs-bot`: K players over TCP or WebSocket against running gateways;
//! prints what they measured (a table, or one JSON object last with --json).

use std::process::ExitCode;

use clap::Parser;
use tools::gsbot::{print_table, run_bots, BotArgs};

#[derive(Parser, Debug)]
#[command(
    name = "gs-bot",
    about = "Players that enter rooms, play Gomoku, chat, and report what they saw"
)]
struct Cli {
    #[command(flatten)]
    bots: BotArgs,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let cfg = match cli.bots.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gs-bot: {e}");
            return ExitCode::from(2);
        }
    };
    if cfg.bots > 19_000 {
        eprintln!("gs-bot: warning: {} bots need more file descriptors than the 20,000 a process may hold here; run several gs-bot processes", cfg.bots);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gs-bot: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = rt.block_on(run_bots(cfg));
    if cli.bots.json {
        let _ = print_table(&report, &mut std::io::stderr());
        println!(
            "{}",
            serde_json::to_string(&report).expect("the report serializes")
        );
    } else {
        let _ = print_table(&report, &mut std::io::stdout());
    }
    if report.connected == 0 && report.bots > 0 {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
