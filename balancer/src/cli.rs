//! Command-line front ends, kept here so the binaries stay thin.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::client::Client;
use crate::config::{Config, HsConfig};
use crate::rolling::{rolling_restart, CommandRestarter, RollingOptions};
use crate::server::start_replicated;

/// `balancer`: run the registry.
#[derive(Debug, Parser)]
#[command(
    name = "balancer",
    version,
    about = "Registry for game-server processes: status push, probes, sorted lists, pick, spawn, drain"
)]
pub struct ServeArgs {
    /// TOML config file (zones, caps, spawn templates, timers).
    #[arg(long, short)]
    pub config: PathBuf,
    /// Overrides `listen`.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Overrides `secret` (prefer the config file: flags show in `ps`).
    #[arg(long)]
    pub secret: Option<String>,
    /// Sets `insecure_no_secret`: listen on a non-loopback address without
    /// a secret (only behind a firewall that admits trusted hosts alone).
    #[arg(long)]
    pub insecure_no_secret: bool,
    /// Overrides `probe_interval_ms`.
    #[arg(long)]
    pub probe_interval_ms: Option<u64>,
    /// Overrides `probe_timeout_ms`.
    #[arg(long)]
    pub probe_timeout_ms: Option<u64>,
    /// Overrides `push_timeout_ms`.
    #[arg(long)]
    pub push_timeout_ms: Option<u64>,
    /// Overrides `reservation_ttl_ms`.
    #[arg(long)]
    pub reservation_ttl_ms: Option<u64>,
    /// Overrides `pick_wait_ms`.
    #[arg(long)]
    pub pick_wait_ms: Option<u64>,
    /// Overrides `advertise` (the HTTP address a standby names as the master's).
    #[arg(long)]
    pub advertise: Option<SocketAddr>,
    /// Overrides `witness_listen`: serve as hs witness for game-server pairs here.
    #[arg(long)]
    pub witness_listen: Option<SocketAddr>,
    /// Overrides `witness_secret` (default: env BALANCER_WITNESS_SECRET; prefer
    /// the config file or the env: flags show in `ps`).
    #[arg(long)]
    pub witness_secret: Option<String>,
    /// Overrides `[hs] dir` (with --hs-listen, enables the standby if the file has no [hs]).
    #[arg(long)]
    pub hs_dir: Option<PathBuf>,
    /// Overrides `[hs] listen` (replication address).
    #[arg(long)]
    pub hs_listen: Option<SocketAddr>,
    /// Overrides `[hs] peer` (the other balancer's replication address).
    #[arg(long)]
    pub hs_peer: Option<SocketAddr>,
    /// Overrides `[hs] witness` (an external hs witness for this pair).
    #[arg(long)]
    pub hs_witness: Option<SocketAddr>,
    /// Overrides `[hs] pair_id`.
    #[arg(long)]
    pub hs_pair_id: Option<u64>,
    /// Overrides `[hs] prefer_master` (true on exactly one of the pair).
    #[arg(long)]
    pub prefer_master: Option<bool>,
}

impl ServeArgs {
    /// Loads the config file and lays the flags over it.
    pub fn config(&self) -> Result<Config, crate::config::ConfigError> {
        let mut c = Config::read(&self.config)?;
        if self.insecure_no_secret {
            c.insecure_no_secret = true;
        }
        if let Some(v) = self.listen {
            c.listen = v;
        }
        if let Some(v) = &self.secret {
            c.secret = Some(v.clone());
        }
        let overrides = [
            (&mut c.probe_interval_ms, self.probe_interval_ms),
            (&mut c.probe_timeout_ms, self.probe_timeout_ms),
            (&mut c.push_timeout_ms, self.push_timeout_ms),
            (&mut c.reservation_ttl_ms, self.reservation_ttl_ms),
            (&mut c.pick_wait_ms, self.pick_wait_ms),
        ];
        for (field, value) in overrides {
            if let Some(v) = value {
                *field = v;
            }
        }
        if self.advertise.is_some() {
            c.advertise = self.advertise;
        }
        if self.witness_listen.is_some() {
            c.witness_listen = self.witness_listen;
        }
        if let Some(v) = self
            .witness_secret
            .clone()
            .or_else(|| std::env::var("BALANCER_WITNESS_SECRET").ok())
        {
            c.witness_secret = Some(v);
        }
        if c.hs.is_none() {
            if let (Some(dir), Some(listen)) = (&self.hs_dir, self.hs_listen) {
                c.hs = Some(HsConfig::new(dir.clone(), listen));
            } else if self.hs_dir.is_some() || self.hs_listen.is_some() || self.hs_peer.is_some() {
                return Err(crate::config::ConfigError::Invalid(
                    "the config has no [hs] table: give both --hs-dir and --hs-listen to enable the standby".into(),
                ));
            }
        }
        if let Some(h) = c.hs.as_mut() {
            if let Some(v) = &self.hs_dir {
                h.dir = v.clone();
            }
            if let Some(v) = self.hs_listen {
                h.listen = v;
            }
            if self.hs_peer.is_some() {
                h.peer = self.hs_peer;
            }
            if self.hs_witness.is_some() {
                h.witness = self.hs_witness;
            }
            if let Some(v) = self.hs_pair_id {
                h.pair_id = v;
            }
            if let Some(v) = self.prefer_master {
                h.prefer_master = v;
            }
        }
        c.validate()?;
        Ok(c)
    }
}

/// Installs a tracing subscriber reading `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The binaries' multi-thread runtime; an error is printed and becomes the
/// exit code.
pub fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })
}

/// Runs the balancer until Ctrl-C or SIGTERM.
pub fn serve_main(args: ServeArgs) -> ExitCode {
    init_tracing();
    let config = match args.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let handle = match start_replicated(config).await {
            Ok(h) => h,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        wait_for_signal().await;
        tracing::info!("shutting down");
        handle.shutdown().await;
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// `balancer-ctl`: operator commands against a running balancer.
#[derive(Debug, Parser)]
#[command(
    name = "balancer-ctl",
    version,
    about = "Operator commands for a running balancer"
)]
pub struct CtlArgs {
    /// Balancer address(es), IP:PORT; give master and standby to use either.
    #[arg(long, short, required = true, value_delimiter = ',')]
    pub balancer: Vec<SocketAddr>,
    /// Shared secret (default: env BALANCER_SECRET).
    #[arg(long)]
    pub secret: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// Operator commands.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// List zones.
    Zones,
    /// A zone's sorted process list.
    List {
        /// Zone id.
        zone: u32,
        /// Print seed 000's XML instead of JSON.
        #[arg(long)]
        xml: bool,
    },
    /// Pick a process (reserves a seat).
    Pick {
        /// Zone id.
        zone: u32,
    },
    /// Mark a process draining; with --wait, return when it is empty.
    Drain {
        /// Process id.
        id: String,
        /// Wait until it has no player.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long.
        #[arg(long, default_value_t = 600_000)]
        timeout_ms: u64,
    },
    /// Put a draining process back in service.
    Undrain {
        /// Process id.
        id: String,
    },
    /// Hand the master role to the standby (before upgrading this balancer);
    /// send it to the master (-b its address).
    Switchover,
    /// Drain, restart and wait for each process of a zone in turn.
    RollingRestart {
        /// Zone id.
        zone: u32,
        /// Wait this long for a process to empty.
        #[arg(long, default_value_t = 600_000)]
        drain_timeout_ms: u64,
        /// Wait this long for the restarted process to report running.
        #[arg(long, default_value_t = 60_000)]
        ready_timeout_ms: u64,
        /// The restart command must exit within this.
        #[arg(long, default_value_t = 60_000)]
        restart_timeout_ms: u64,
        /// Restart command and arguments (no shell), after `--`. Placeholders:
        /// {id} {host} {port} {zone} {pid}.
        #[arg(last = true, required = true)]
        restart_cmd: Vec<String>,
    },
}

/// Runs one operator command; prints JSON on success, one error line on failure.
pub fn ctl_main(args: CtlArgs) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let secret = args
            .secret
            .clone()
            .or_else(|| std::env::var("BALANCER_SECRET").ok());
        let mut client = Client::new(args.balancer.clone()).with_secret(secret);
        match ctl(&mut client, args.command).await {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn pretty<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

async fn ctl(
    client: &mut Client,
    command: CtlCommand,
) -> Result<String, Box<dyn std::error::Error>> {
    Ok(match command {
        CtlCommand::Zones => pretty(&client.zones().await?),
        CtlCommand::List { zone, xml: false } => pretty(&client.zone(zone).await?),
        CtlCommand::List { zone, xml: true } => {
            let r = client
                .request("GET", &format!("/v1/zones/{zone}?format=xml"), None)
                .await?;
            String::from_utf8_lossy(&r.body).into_owned()
        }
        CtlCommand::Pick { zone } => pretty(&client.pick(zone).await?),
        CtlCommand::Drain {
            id,
            wait,
            timeout_ms,
        } => {
            let mut view = client.drain(&id).await?;
            let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
            while wait && !view.drained {
                if tokio::time::Instant::now() >= deadline {
                    return Err(format!(
                        "{id} still has {} players after {timeout_ms} ms (it stays draining)",
                        view.online
                    )
                    .into());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                view = client.process(&id).await?;
            }
            pretty(&view)
        }
        CtlCommand::Undrain { id } => pretty(&client.undrain(&id).await?),
        CtlCommand::Switchover => pretty(&client.switchover().await?),
        CtlCommand::RollingRestart {
            zone,
            drain_timeout_ms,
            ready_timeout_ms,
            restart_timeout_ms,
            restart_cmd,
        } => {
            let mut restarter = CommandRestarter {
                command: restart_cmd,
                timeout: Duration::from_millis(restart_timeout_ms),
            };
            let opts = RollingOptions {
                drain_timeout_ms,
                ready_timeout_ms,
                ..RollingOptions::default()
            };
            let done = rolling_restart(client, zone, &mut restarter, &opts).await?;
            let lines: Vec<String> = done
                .iter()
                .map(|r| {
                    format!(
                        "{} -> {} on {}:{} (drained in {} ms, running {} ms after restart)",
                        r.old_id, r.new_id, r.host, r.port, r.drained_in_ms, r.ready_in_ms
                    )
                })
                .collect();
            format!("restarted {} processes\n{}", done.len(), lines.join("\n"))
        }
    })
}
