//! Rolling restart of a zone: for each process in turn, drain it, wait until
//! it has no player, restart it, and wait until the restarted process
//! reports running on the same endpoint before touching the next one.
//!
//! The restart itself is a [`Restarter`]: the CLI runs an operator command
//! ([`CommandRestarter`]); tests restart an in-process fake server.

use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use crate::api::ProcessView;
use crate::client::{Client, ClientError};
use crate::registry::{Status, ZoneId};

/// Processes one rolling restart handles; bounds the run.
pub const ROLLING_PROCESSES_MAX: usize = 4096;

/// Restarts one process. Called only once the process is drained.
pub trait Restarter {
    /// Stop `process` and start its replacement on the same host and port.
    /// Returns once the replacement was started (not necessarily reported).
    fn restart(&mut self, process: &ProcessView)
        -> impl Future<Output = Result<(), String>> + Send;
}

/// Runs an operator command, without a shell. Placeholders in any argument:
/// `{id}`, `{host}`, `{port}`, `{zone}`, `{pid}` (empty when unknown).
#[derive(Clone, Debug)]
pub struct CommandRestarter {
    /// Program and arguments.
    pub command: Vec<String>,
    /// The command must exit (successfully) within this.
    pub timeout: Duration,
}

impl Restarter for CommandRestarter {
    fn restart(&mut self, p: &ProcessView) -> impl Future<Output = Result<(), String>> + Send {
        let args: Vec<String> = self
            .command
            .iter()
            .map(|a| {
                a.replace("{id}", &p.id)
                    .replace("{host}", &p.host.to_string())
                    .replace("{port}", &p.port.to_string())
                    .replace("{zone}", &p.zone.to_string())
                    .replace("{pid}", &p.pid.map(|x| x.to_string()).unwrap_or_default())
            })
            .collect();
        let timeout = self.timeout;
        async move {
            let (program, rest) = args.split_first().ok_or("empty restart command")?;
            let mut child = tokio::process::Command::new(program)
                .args(rest)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("cannot start {program:?}: {e}"))?;
            match tokio::time::timeout(timeout, child.wait()).await {
                Ok(Ok(s)) if s.success() => Ok(()),
                Ok(Ok(s)) => Err(format!("restart command {args:?} exited with {s}")),
                Ok(Err(e)) => Err(format!("cannot wait for restart command: {e}")),
                Err(_) => Err(format!(
                    "restart command {args:?} did not exit within {} ms",
                    timeout.as_millis()
                )),
            }
        }
    }
}

/// Timers of a rolling restart.
#[derive(Clone, Debug)]
pub struct RollingOptions {
    /// How long to wait for a drained process to lose its last player.
    pub drain_timeout_ms: u64,
    /// How long to wait for the restarted process to report running.
    pub ready_timeout_ms: u64,
    /// Time between status polls.
    pub poll_interval_ms: u64,
}

impl Default for RollingOptions {
    fn default() -> Self {
        RollingOptions {
            drain_timeout_ms: 600_000,
            ready_timeout_ms: 60_000,
            poll_interval_ms: 200,
        }
    }
}

/// Why a rolling restart stopped. Processes before the failing one were
/// restarted; the failing one is left in service (undrained) when possible.
#[derive(Debug, thiserror::Error)]
pub enum RollingError {
    /// The balancer could not be asked.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The process still had players at the drain deadline.
    #[error("process {id} still has {online} players and {reserved} reservations after {timeout_ms} ms; it was put back in service; raise --drain-timeout-ms or move players off it")]
    DrainTimeout {
        /// Process.
        id: String,
        /// Players left.
        online: u32,
        /// Reservations left.
        reserved: u32,
        /// The limit.
        timeout_ms: u64,
    },
    /// The restart command failed.
    #[error("restarting {id} failed: {message}; the endpoint {host}:{port} may be down, check it before retrying")]
    Restart {
        /// Process.
        id: String,
        /// Host.
        host: IpAddr,
        /// Port.
        port: u16,
        /// What failed.
        message: String,
    },
    /// Nothing reported running on the endpoint in time.
    #[error("no process reported running on {host}:{port} within {timeout_ms} ms after restarting {id}; check its logs")]
    NotReady {
        /// Old process.
        id: String,
        /// Host.
        host: IpAddr,
        /// Port.
        port: u16,
        /// The limit.
        timeout_ms: u64,
    },
    /// The zone has more processes than one run handles.
    #[error("zone has {count} processes, more than {ROLLING_PROCESSES_MAX}")]
    TooMany {
        /// Count.
        count: usize,
    },
}

/// One restarted process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restarted {
    /// Id before.
    pub old_id: String,
    /// Id after (differs when the id includes the pid).
    pub new_id: String,
    /// Host.
    pub host: IpAddr,
    /// Port.
    pub port: u16,
    /// Time to drain.
    pub drained_in_ms: u64,
    /// Time from restart to running.
    pub ready_in_ms: u64,
}

/// Restarts every running or draining process of `zone`, one at a time,
/// least loaded first.
pub async fn rolling_restart<R: Restarter>(
    client: &mut Client,
    zone: ZoneId,
    restarter: &mut R,
    opts: &RollingOptions,
) -> Result<Vec<Restarted>, RollingError> {
    let list = client.zone(zone).await?;
    let targets: Vec<ProcessView> = list
        .processes
        .into_iter()
        .filter(|p| p.status == Status::Running.code() || p.status == Status::Draining.code())
        .collect();
    if targets.len() > ROLLING_PROCESSES_MAX {
        return Err(RollingError::TooMany {
            count: targets.len(),
        });
    }
    let poll = Duration::from_millis(opts.poll_interval_ms.max(1));
    let mut done = Vec::with_capacity(targets.len());
    for target in targets {
        info!(id = target.id, host = %target.host, port = target.port, "draining");
        let started = Instant::now();
        client.drain(&target.id).await?;
        let drain_deadline = started + Duration::from_millis(opts.drain_timeout_ms);
        // Poll until drained, gone, or the deadline: bounded by the deadline.
        let last = loop {
            let view = match client.process(&target.id).await {
                Ok(v) => v,
                Err(ClientError::Http { status: 404, .. }) => break None,
                Err(e) => return Err(e.into()),
            };
            if view.drained || view.status == Status::Stopped.code() {
                break None;
            }
            if Instant::now() >= drain_deadline {
                break Some(view);
            }
            tokio::time::sleep(poll).await;
        };
        if let Some(view) = last {
            if let Err(e) = client.undrain(&target.id).await {
                warn!(id = target.id, error = %e, "could not undrain after drain timeout");
            }
            return Err(RollingError::DrainTimeout {
                id: target.id,
                online: view.online,
                reserved: view.reserved,
                timeout_ms: opts.drain_timeout_ms,
            });
        }
        let drained_in_ms = started.elapsed().as_millis() as u64;
        info!(id = target.id, drained_in_ms, "drained; restarting");
        let restart_at = Instant::now();
        restarter
            .restart(&target)
            .await
            .map_err(|message| RollingError::Restart {
                id: target.id.clone(),
                host: target.host,
                port: target.port,
                message,
            })?;
        let ready_deadline = restart_at + Duration::from_millis(opts.ready_timeout_ms);
        let mut seen_down = false;
        let new_id = loop {
            let zone_view = client.zone(zone).await?;
            let at_endpoint = zone_view
                .processes
                .iter()
                .find(|p| p.host == target.host && p.port == target.port);
            if let Some(p) = at_endpoint {
                let live =
                    p.status == Status::Running.code() || p.status == Status::Draining.code();
                seen_down |= !live;
                let is_new =
                    p.id != target.id || (p.pid.is_some() && p.pid != target.pid) || seen_down;
                if live && is_new {
                    if p.status == Status::Running.code() {
                        break p.id.clone();
                    }
                    // Same id came back still flagged draining: put it in service.
                    client.undrain(&p.id).await?;
                }
            } else {
                seen_down = true;
            }
            if Instant::now() >= ready_deadline {
                return Err(RollingError::NotReady {
                    id: target.id,
                    host: target.host,
                    port: target.port,
                    timeout_ms: opts.ready_timeout_ms,
                });
            }
            tokio::time::sleep(poll).await;
        };
        let ready_in_ms = restart_at.elapsed().as_millis() as u64;
        info!(
            old_id = target.id,
            new_id, ready_in_ms, "restarted and running"
        );
        done.push(Restarted {
            old_id: target.id,
            new_id,
            host: target.host,
            port: target.port,
            drained_in_ms,
            ready_in_ms,
        });
    }
    Ok(done)
}
