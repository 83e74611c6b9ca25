//! Spawned children: start one when a zone is full, kill, reap.

use tracing::{debug, error, info, warn};

use crate::metrics::Metrics;
use crate::registry::{RegistryOp, SpawnRefused, ZoneId};
use crate::sink::ApplyError;

use super::Balancer;

/// Why a spawn did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The registry says not now.
    #[error(transparent)]
    Refused(#[from] SpawnRefused),
    /// The command did not start.
    #[error("spawn command {command:?} failed to start: {source}; fix [zones.spawn].command")]
    Command {
        /// Command after substitution.
        command: Vec<String>,
        /// OS error.
        source: std::io::Error,
    },
    /// The registry refused to record it, or this balancer is not the master.
    #[error(transparent)]
    Registry(#[from] ApplyError),
}

impl Balancer {
    /// Kills a child this balancer spawned; any other pid is left alone.
    /// Sends SIGKILL to every spawned child still held (on exit, when
    /// `kill_spawned_on_exit`); does not wait for them.
    pub(crate) fn kill_children(&self) {
        for (pid, child) in self.children.lock().iter_mut() {
            debug!(pid, "killing spawned process on exit");
            let _ = child.start_kill();
        }
    }

    pub(super) fn kill_child(&self, pid: u32, why: &str) {
        if let Some(child) = self.children.lock().get_mut(&pid) {
            Metrics::inc(&self.metrics.reaped);
            warn!(pid, why, "killing spawned process");
            if let Err(e) = child.start_kill() {
                warn!(pid, error = %e, "kill failed");
            }
        }
    }

    /// Forgets children that exited; returns how many remain.
    pub(crate) fn reap_exited(&self) -> usize {
        let mut children = self.children.lock();
        children.retain(|pid, child| match child.try_wait() {
            Ok(Some(status)) => {
                info!(pid, %status, "spawned process exited");
                false
            }
            Ok(None) => true,
            Err(e) => {
                warn!(pid, error = %e, "cannot wait for spawned process; forgetting it");
                false
            }
        });
        children.len()
    }

    /// Pids of children this balancer spawned and that have not exited.
    pub fn spawned_pids(&self) -> Vec<u32> {
        self.children.lock().keys().copied().collect()
    }

    /// Starts a process for `zone` if the registry allows it now.
    pub fn try_spawn(&self, zone: ZoneId) -> Result<u16, SpawnError> {
        let _one_at_a_time = self.spawn_lock.lock();
        let now_ms = self.now_ms();
        let plan = self.read(|r| r.spawn_plan(zone, now_ms))?;
        if self.children.lock().len() >= self.config.spawned_processes_max as usize {
            return Err(SpawnRefused::LimitReached {
                spawned: self.config.spawned_processes_max,
            }
            .into());
        }
        let spec = self
            .config
            .zones
            .iter()
            .find(|z| z.id == zone)
            .and_then(|z| z.spawn.as_ref())
            .ok_or(SpawnRefused::NotConfigured { zone })?;
        // The registry knows registered endpoints; the OS knows the rest.
        let port = plan
            .ports
            .iter()
            .copied()
            .find(|p| std::net::TcpListener::bind((plan.host, *p)).is_ok())
            .ok_or(SpawnRefused::NoFreePort { zone })?;
        let command: Vec<String> = spec
            .command
            .iter()
            .map(|a| {
                a.replace("{port}", &port.to_string())
                    .replace("{zone}", &zone.to_string())
                    .replace("{host}", &plan.host.to_string())
                    .replace("{balancer}", &self.addr.to_string())
            })
            .collect();
        let mut cmd = tokio::process::Command::new(&command[0]);
        cmd.args(&command[1..])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(self.config.kill_spawned_on_exit);
        match cmd.spawn() {
            Ok(child) => {
                let pid = child.id().unwrap_or(0);
                self.children.lock().insert(pid, child);
                if let Err(e) = self.apply(RegistryOp::SpawnStarted {
                    now_ms,
                    zone,
                    port,
                    pid,
                }) {
                    self.kill_child(pid, "registry refused the spawn");
                    return Err(e.into());
                }
                Metrics::inc(&self.metrics.spawns);
                info!(zone, port, pid, ?command, "spawned process");
                Ok(port)
            }
            Err(source) => {
                Metrics::inc(&self.metrics.spawns_failed);
                let _ = self.apply(RegistryOp::SpawnFailed { now_ms, zone });
                let e = SpawnError::Command { command, source };
                error!(zone, error = %e, "spawn failed");
                Err(e)
            }
        }
    }
}
