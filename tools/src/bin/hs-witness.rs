//! The witness for hs master/slave pairs. See `tools::witness`.
use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "hs-witness", about = "Witness for hs master/slave pairs")]
struct Cli {
    #[command(flatten)]
    args: tools::witness::WitnessArgs,
}

fn main() -> std::process::ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    tools::witness::run(Cli::parse().args)
}
