//! Helpers for whole-system tests: start real processes, read their
//! machine-readable lines with deadlines, kill them by pid.

use std::process::Stdio;
use std::time::Duration;

/// A child process (see `tools::proc::Proc`) whose failures fail the test.
pub struct Proc(pub tools::proc::Proc);

impl Proc {
    /// Starts `exe args`; its stdout lines are echoed to stderr with `name`, its
    /// stderr goes to ours, so a failing test shows what the process said.
    pub fn spawn(name: &str, exe: &str, args: &[String]) -> Proc {
        Proc(
            tools::proc::Proc::spawn(
                name,
                std::path::Path::new(exe),
                args,
                Stdio::inherit(),
                true,
            )
            .unwrap_or_else(|e| panic!("{e}")),
        )
    }

    pub fn pid(&self) -> i32 {
        self.0.pid() as i32
    }

    /// The first line starting with `prefix` (the rest of it), or a panic at the deadline.
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> String {
        self.0
            .wait_line(prefix, timeout)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The `DONE` line's JSON.
    pub fn done(&mut self, timeout: Duration) -> serde_json::Value {
        let j = self.wait_line("DONE ", timeout);
        serde_json::from_str(&j)
            .unwrap_or_else(|e| panic!("{}: bad DONE json {j}: {e}", self.0.name))
    }

    pub fn send_line(&mut self, s: &str) {
        self.0.send_line(s).unwrap_or_else(|e| panic!("{e}"));
    }

    /// SIGKILL, as a crash would; waits for the process to be gone.
    pub fn kill9(&mut self) {
        self.0.kill9();
    }

    /// Waits for exit; panics after the deadline.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        self.0.wait_exit(timeout).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Held by tests that load both cores (two processes streaming at full speed),
/// so they do not skew each other's measurements.
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Strings from anything displayable, for argument lists.
#[macro_export]
macro_rules! args {
    ($($a:expr),* $(,)?) => { Vec::<String>::from([$($a.to_string()),*]) };
}
