//! `hs-witness`: the witness that hs pairs consult before a promotion on
//! silence and that renews masters' leases; one serves many pairs (by pair id).
//! The balancer embeds the same service (`hs::node::witness::serve`).

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct WitnessArgs {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub listen: SocketAddr,
    /// The pairs' heartbeat period in milliseconds (sets how long a renewal holds).
    #[arg(long, default_value_t = 100)]
    pub heartbeat_ms: u64,
    /// The pairs' silent ticks before a peer is dead.
    #[arg(long, default_value_t = 5)]
    pub dead_ticks: u32,
}

pub fn run(a: WitnessArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hs-witness: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let l = match tokio::net::TcpListener::bind(a.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("hs-witness: cannot listen on {}: {e}", a.listen);
                return ExitCode::FAILURE;
            }
        };
        println!(
            "LISTEN {}",
            l.local_addr().map(|a| a.to_string()).unwrap_or_default()
        );
        let _ = std::io::stdout().flush();
        hs::node::witness::serve(l, hs::node::witness::hold_for(a.heartbeat_ms, a.dead_ticks))
            .await;
        ExitCode::SUCCESS
    })
}
