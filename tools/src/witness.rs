//! `hs-witness`: the witness that hs pairs consult before a promotion on
//! silence and that renews masters' leases; one serves many pairs (by pair id).
//! The balancer embeds the same service (`hs::node::witness::serve_with`).

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
    /// The secret the pairs share (their `secret`): every request must prove it.
    /// Default: env HS_SECRET (prefer it: flags show in `ps`). Unset: anyone
    /// who reaches the port is trusted.
    #[arg(long)]
    pub secret: Option<String>,
}

impl WitnessArgs {
    /// The secret from `--secret` or HS_SECRET; an empty one is refused.
    pub fn secret(&self) -> Result<Option<hs::Secret>, String> {
        let s = self
            .secret
            .clone()
            .or_else(|| std::env::var("HS_SECRET").ok());
        match s {
            Some(s) if s.is_empty() => Err("the secret is empty (unset it for none)".into()),
            Some(s) => Ok(Some(hs::Secret::new(s))),
            None => Ok(None),
        }
    }
}

/// Serves on `l` with the settings of `a` until the future is dropped.
pub async fn serve(a: &WitnessArgs, l: tokio::net::TcpListener, secret: Option<hs::Secret>) {
    hs::node::witness::serve_with(
        l,
        hs::node::witness::hold_for(a.heartbeat_ms, a.dead_ticks),
        secret,
    )
    .await
}

pub fn run(a: WitnessArgs) -> ExitCode {
    let secret = match a.secret() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hs-witness: {e}");
            return ExitCode::FAILURE;
        }
    };
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
        serve(&a, l, secret).await;
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hs::proto::witness::Request;
    use std::time::Duration;

    #[tokio::test]
    async fn a_witness_with_a_secret_refuses_an_unauthenticated_request() {
        let a = WitnessArgs {
            listen: "127.0.0.1:0".parse().unwrap(),
            heartbeat_ms: 100,
            dead_ticks: 5,
            secret: Some("a secret of sixteen+".into()),
        };
        let secret = a.secret().unwrap();
        let l = tokio::net::TcpListener::bind(a.listen).await.unwrap();
        let w = l.local_addr().unwrap();
        let task = tokio::spawn({
            let (a, secret) = (a.clone(), secret.clone());
            async move { serve(&a, l, secret).await }
        });
        let req = Request::Renew {
            pair: 3,
            node: 1,
            epoch: 1,
            addr: None,
            acked: None,
        };
        let t = Duration::from_secs(2);
        assert_eq!(
            hs::node::witness::ask(w, req, t).await,
            None,
            "the witness answered a request without the secret"
        );
        let wrong = hs::Secret::new("another secret!!");
        assert_eq!(
            hs::node::witness::ask_with(w, req, t, Some(&wrong)).await,
            None,
            "the witness answered a request with a wrong secret"
        );
        let ok = hs::node::witness::ask_with(w, req, t, secret.as_ref()).await;
        assert!(ok.is_some_and(|r| r.granted), "{ok:?}");
        task.abort();
    }
}
