//! Child processes that talk in lines: start one, read its stdout lines with a
//! deadline, write to its stdin, signal or kill it by its pid. Used by the
//! drill, the bench and the whole-system tests. A `Proc` still running when
//! dropped is resumed (if stopped) and killed: only processes we started.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Stdout lines buffered per process; past it the reader waits (the child blocks).
const LINES_MAX: usize = 100_000;

pub struct Proc {
    pub name: String,
    child: Child,
    lines: Receiver<String>,
    stdin: Option<ChildStdin>,
}

impl Proc {
    /// Starts `exe args`. `echo`: copy its stdout lines (but `PROGRESS`) to our
    /// stderr, prefixed with `name`, for whoever reads a failing test's output.
    pub fn spawn(
        name: &str,
        exe: &Path,
        args: &[String],
        stderr: Stdio,
        echo: bool,
    ) -> Result<Proc, String> {
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        let out = child.stdout.take().expect("piped");
        let stdin = child.stdin.take();
        let (tx, rx) = sync_channel(LINES_MAX);
        let n = name.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if echo && !line.starts_with("PROGRESS") {
                    eprintln!("[{n}] {line}");
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Proc {
            name: name.to_string(),
            child,
            lines: rx,
            stdin,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The rest of the first stdout line starting with `prefix`.
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    if let Some(rest) = l.strip_prefix(prefix) {
                        return Ok(rest.trim().to_string());
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let st = self.child.wait().ok();
                    return Err(format!(
                        "{}: exited ({st:?}) before printing a line starting with {prefix:?}",
                        self.name
                    ));
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "{}: no line starting with {prefix:?} within {timeout:?}",
                        self.name
                    ))
                }
            }
        }
    }

    /// The lines printed so far that start with `prefix`, without waiting.
    pub fn drain(&self, prefix: &str) -> Vec<String> {
        self.lines
            .try_iter()
            .filter(|l| l.starts_with(prefix))
            .collect()
    }

    pub fn send_line(&mut self, line: &str) -> Result<(), String> {
        let w = self
            .stdin
            .as_mut()
            .ok_or_else(|| format!("{}: stdin closed", self.name))?;
        writeln!(w, "{line}")
            .and_then(|_| w.flush())
            .map_err(|e| format!("{}: cannot write to it: {e}", self.name))
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: a signal to a child we started and have not reaped.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGKILL, as a crash would; waits until it is gone.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// Waits for it to exit; its exit code (-1 if killed by a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<i32, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Ok(st.code().unwrap_or(-1));
            }
            if Instant::now() >= deadline {
                return Err(format!("{} did not exit within {timeout:?}", self.name));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stdin = None;
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGCONT);
            self.kill9();
        }
    }
}
