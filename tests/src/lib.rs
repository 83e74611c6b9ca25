//! Helpers for whole-system tests: start real processes, read their
//! machine-readable lines with deadlines, kill them by pid.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{sync_channel, Receiver};
use std::time::{Duration, Instant};

/// A child process whose stdout lines arrive on a bounded channel.
pub struct Proc {
    pub name: String,
    child: Child,
    lines: Receiver<String>,
    stdin: Option<ChildStdin>,
}

/// Lines buffered per process before the reader thread waits.
const LINES_MAX: usize = 100_000;

impl Proc {
    pub fn spawn(name: &str, exe: &str, args: &[String]) -> Proc {
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {exe}: {e}"));
        let out = child.stdout.take().unwrap();
        let stdin = child.stdin.take();
        let (tx, rx) = sync_channel(LINES_MAX);
        let n = name.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if !line.starts_with("PROGRESS") {
                    eprintln!("[{n}] {line}");
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc { name: name.to_string(), child, lines: rx, stdin }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The first line starting with `prefix` (the rest of it), or a panic at the deadline.
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    if let Some(rest) = l.strip_prefix(prefix) {
                        return rest.trim().to_string();
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    let st = self.child.wait().ok();
                    panic!("{}: exited ({st:?}) before printing a line starting with {prefix:?}", self.name)
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("{}: no line starting with {prefix:?} within {timeout:?}", self.name),
            }
        }
    }

    /// The `DONE` line's JSON.
    pub fn done(&mut self, timeout: Duration) -> serde_json::Value {
        let j = self.wait_line("DONE ", timeout);
        serde_json::from_str(&j).unwrap_or_else(|e| panic!("{}: bad DONE json {j}: {e}", self.name))
    }

    pub fn send_line(&mut self, s: &str) {
        let w = self.stdin.as_mut().expect("stdin open");
        writeln!(w, "{s}").unwrap();
        w.flush().unwrap();
    }

    /// SIGKILL, as a crash would; waits for the process to be gone.
    pub fn kill9(&mut self) {
        // SAFETY: plain syscall on the pid of a child we started and have not reaped.
        unsafe { libc::kill(self.pid(), libc::SIGKILL) };
        let _ = self.child.wait();
    }

    /// Waits for exit; panics after the deadline.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "{} did not exit within {timeout:?}", self.name);
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
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
    ($($a:expr),* $(,)?) => { vec![$($a.to_string()),*] };
}
