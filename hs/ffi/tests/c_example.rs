//! The C example `hs/ffi/examples/c/scores.c`, compiled with `cc` against the real
//! libraries (`libhs.so` with an rpath, and `libhs.a`), run as two processes on
//! 127.0.0.1: the master publishes, is killed with SIGKILL, and the slave must
//! promote holding the same scores; the killed node restarts, rebuilds its state
//! from its log and rejoins as slave. Then the example runs under valgrind: no
//! error (invalid read, use of uninitialised memory, ...) and no leak after
//! `hs_node_free`, on the master and on the slave (whose apply callback reads
//! keys and values straight out of the log's memory).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use testkit::ChildGuard;

/// Deadline for any one step (a reply, a role change).
const STEP: Duration = Duration::from_secs(30);
/// Under valgrind everything is 20-50 times slower.
const STEP_VALGRIND: Duration = Duration::from_secs(120);

/// `target/<profile>`, found from this test's own path: `target/<profile>/deps/c_example-<hash>`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps")
        .to_path_buf()
}

/// The directory holding `libhs.so` and `libhs.a` built from the current source.
///
/// hs-ffi has no rlib (it would collide with hs's `libhs.rlib`), so `cargo
/// test` does not rebuild the C libraries for this test: it runs `cargo build
/// -p hs-ffi --lib` itself, with the same target directory and profile (a
/// no-op when they are fresh), and uses `target/<profile>`.
fn libs() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let have = |d: &Path| d.join("libhs.so").exists() && d.join("libhs.a").exists();
        let dir = profile_dir();
        let profile = dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("profile directory name")
            .to_string();
        let target = dir.parent().expect("target directory");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "hs-ffi", "--lib"])
            .env("CARGO_TARGET_DIR", target)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        match profile.as_str() {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            p => {
                cmd.args(["--profile", p]);
            }
        }
        eprintln!("building libhs.so / libhs.a: {cmd:?}");
        let st = cmd.status().expect("run cargo build -p hs-ffi --lib");
        assert!(st.success(), "cargo build -p hs-ffi --lib failed");
        assert!(
            have(&dir),
            "no libhs.so / libhs.a in {} after cargo build",
            dir.display()
        );
        dir
    })
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Link {
    Shared,
    Static,
}

/// Compiles the example (once per link kind) and returns the program's path.
fn program(link: Link) -> PathBuf {
    static BUILT: OnceLock<tempfile::TempDir> = OnceLock::new();
    // Tests run in parallel: one compiles while the others wait, rather than
    // finding a half-written program (exec would fail with ETXTBSY).
    static COMPILING: Mutex<()> = Mutex::new(());
    let _one = COMPILING.lock().unwrap_or_else(|e| e.into_inner());
    let out_dir = BUILT.get_or_init(|| tempfile::tempdir().unwrap()).path();
    let exe = out_dir.join(format!("scores-{link:?}").to_lowercase());
    if exe.exists() {
        return exe;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = libs();
    let mut cmd = Command::new("cc");
    cmd.args([
        "-std=c11",
        "-D_POSIX_C_SOURCE=200809L",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-O1",
        "-g",
        "-I",
    ])
    .arg(root.join("include"))
    .arg(root.join("examples/c/scores.c"))
    .arg("-o")
    .arg(&exe);
    match link {
        Link::Shared => {
            cmd.arg("-L")
                .arg(lib)
                .arg("-lhs")
                .arg(format!("-Wl,-rpath,{}", lib.display()));
        }
        // What `cargo rustc -- --print native-static-libs` lists for this target.
        Link::Static => {
            cmd.arg(lib.join("libhs.a")).args([
                "-lgcc_s",
                "-lutil",
                "-lrt",
                "-lpthread",
                "-lm",
                "-ldl",
            ]);
        }
    }
    let out = match cmd.output() {
        Ok(o) => o,
        Err(e) => {
            panic!("cannot run the C compiler `cc` ({e}): run scripts/setup.sh (it installs gcc)")
        }
    };
    assert!(
        out.status.success(),
        "cc failed for the {link:?} build:\n{cmd:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// Two free ports on 127.0.0.1 (bound, then released for the nodes to bind).
fn two_ports() -> (String, String) {
    let a = TcpListener::bind("127.0.0.1:0").unwrap();
    let b = TcpListener::bind("127.0.0.1:0").unwrap();
    (
        a.local_addr().unwrap().to_string(),
        b.local_addr().unwrap().to_string(),
    )
}

/// One running example process: commands on its stdin, lines from its stdout.
struct Proc {
    name: &'static str,
    /// SIGKILLed (our own child, by its pid) and reaped when the Proc drops.
    child: ChildGuard,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    events: Vec<String>,
    step: Duration,
}

impl Proc {
    fn spawn(name: &'static str, mut cmd: Command, step: Duration) -> Proc {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the example");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = sync_channel(1024);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Proc {
            name,
            child: ChildGuard::new(child),
            stdin,
            lines,
            events: Vec::new(),
            step,
        }
    }

    fn start(name: &'static str, exe: &Path, args: &[&str]) -> Proc {
        let mut cmd = Command::new(exe);
        cmd.args(args);
        Proc::spawn(name, cmd, STEP)
    }

    /// The next line that is not an event (events are kept in `self.events`).
    fn reply(&mut self) -> String {
        let deadline = Instant::now() + self.step;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with("EVENT ") => self.events.push(l),
                Ok(l) => return l,
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{}: no reply within {:?}; events: {:?}",
                    self.name, self.step, self.events
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "{}: exited ({:?}); events: {:?}",
                    self.name,
                    self.child.try_wait(),
                    self.events
                ),
            }
        }
    }

    fn cmd(&mut self, line: &str) -> String {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}")
            .and_then(|_| stdin.flush())
            .unwrap_or_else(|e| panic!("{}: write {line:?}: {e}", self.name));
        self.reply()
    }

    /// Asks `role` until the answer starts with `want`.
    fn until_role(&mut self, want: &str) -> String {
        let t0 = Instant::now();
        loop {
            let r = self.cmd("role");
            if r.starts_with(want) {
                return r;
            }
            assert!(
                t0.elapsed() < self.step,
                "{}: still {r:?}, want {want:?}; events: {:?}",
                self.name,
                self.events
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for an event line starting with `prefix` (seen before or arriving).
    fn until_event(&mut self, prefix: &str) {
        let deadline = Instant::now() + self.step;
        while !self.events.iter().any(|e| e.starts_with(prefix)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with("EVENT ") => self.events.push(l),
                Ok(l) => panic!(
                    "{}: unexpected line {l:?} while waiting for {prefix:?}",
                    self.name
                ),
                Err(e) => panic!(
                    "{}: no {prefix:?} ({e:?}); events: {:?}",
                    self.name, self.events
                ),
            }
        }
    }

    /// `quit`: the example frees its node, prints DONE, and must exit with 0.
    fn quit(mut self) -> String {
        let done = self.cmd("quit");
        assert!(done.starts_with("DONE "), "{}: {done:?}", self.name);
        drop(self.stdin.take());
        let deadline = Instant::now() + self.step;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "{}: exited with {st}", self.name);
                return done;
            }
            assert!(
                Instant::now() < deadline,
                "{}: did not exit after quit",
                self.name
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn put(&mut self, id: u32, score: i64) -> u64 {
        let r = self.cmd(&format!("put {id} {score}"));
        r.strip_prefix("OK ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{}: put {id}: {r:?}", self.name))
    }
}

/// Master and slave, publish, SIGKILL the master, the slave serves the same
/// scores; the old master comes back as slave with the same scores too.
fn pair_fails_over(link: Link) {
    let exe = program(link);
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (pa, pb) = two_ports();
    let (da_s, db_s) = (da.path().to_str().unwrap(), db.path().to_str().unwrap());
    let mut a = Proc::start("master", &exe, &["master", da_s, &pa, &pb]);
    let mut b = Proc::start("slave", &exe, &["slave", db_s, &pb, &pa]);
    assert_eq!(a.reply(), format!("LISTEN {pa}"));
    assert_eq!(b.reply(), format!("LISTEN {pb}"));
    a.until_role("ROLE master 1");
    b.until_role("ROLE slave 0");
    a.until_event("EVENT role_changed master");

    // 300 players, some updated again, some removed; the last waits until applied.
    let mut last = 0;
    for id in 0..300u32 {
        last = a.put(id, i64::from(id) * 7 - 100);
    }
    for id in (0..300u32).step_by(10) {
        last = a.put(id, 1_000_000 + i64::from(id));
    }
    for id in (5..300u32).step_by(25) {
        let r = a.cmd(&format!("del {id}"));
        last = r
            .strip_prefix("OK ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("del {id}: {r:?}"));
    }
    assert_eq!(a.cmd(&format!("wait {last} applied")), "OK");
    let state = a.cmd("state");
    assert!(state.starts_with("STATE 288 "), "{state}");
    assert_eq!(
        b.cmd("state"),
        state,
        "the slave's scores differ from the master's"
    );
    assert_eq!(b.cmd("get 10"), "SCORE 10 1000010");
    assert_eq!(b.cmd("get 5"), "NONE 5");
    let refused = b.cmd("put 1 1");
    assert!(
        refused.starts_with("ERR HS_STATUS_NOT_MASTER hs_node_put: this node is not the master"),
        "{refused}"
    );

    // The master's process dies: the slave promotes at once, with the same scores.
    a.child.kill(); // SIGKILL, our own child, by its pid; reaped
    b.until_event("EVENT role_changed master");
    b.until_role("ROLE master 1");
    assert_eq!(b.cmd("state"), state, "the promoted slave lost scores");
    b.put(1000, 42);
    let state2 = b.cmd("state");

    // The old master comes back: it replays its own log, then follows the new master.
    drop(a);
    let mut a = Proc::start("old master", &exe, &["master", da_s, &pa, &pb]);
    assert_eq!(a.reply(), format!("LISTEN {pa}"));
    a.until_role("ROLE slave 0");
    let t0 = Instant::now();
    while a.cmd("state") != state2 {
        assert!(
            t0.elapsed() < STEP,
            "the old master did not catch up: {} vs {state2}",
            a.cmd("state")
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(a.cmd("put 2 2").starts_with("ERR HS_STATUS_NOT_MASTER"));
    assert_eq!(a.quit(), format!("DONE {}", &state2["STATE ".len()..]));
    b.quit();
}

#[test]
fn c_example_shared_library_pair_fails_over() {
    pair_fails_over(Link::Shared);
}

#[test]
fn c_example_static_library_pair_fails_over() {
    pair_fails_over(Link::Static);
}

/// Runs the example under valgrind, its report written to `log`.
fn valgrind(name: &'static str, exe: &Path, log: &Path, args: &[&str]) -> Proc {
    let mut cmd = Command::new("valgrind");
    cmd.args([
        "--quiet",
        "--error-exitcode=99",
        "--leak-check=full",
        // Rust's own thread-locals and one-time globals stay "still reachable" at
        // exit; they are neither leaks nor errors. Definite and indirect leaks are.
        "--show-leak-kinds=definite,indirect",
        "--errors-for-leak-kinds=definite,indirect",
    ])
    .arg(format!("--log-file={}", log.display()))
    .arg(exe)
    .args(args);
    Proc::spawn(name, cmd, STEP_VALGRIND)
}

fn assert_valgrind_clean(log: &Path) {
    let report = std::fs::read_to_string(log).unwrap_or_default();
    // With --quiet valgrind writes only errors and leaks: an empty report is clean.
    assert!(
        !report.contains("Invalid read")
            && !report.contains("Invalid write")
            && !report.contains("uninitialised"),
        "valgrind found errors:\n{report}"
    );
    assert!(
        !report.contains("definitely lost") && !report.contains("indirectly lost"),
        "valgrind found leaks:\n{report}"
    );
    assert!(report.trim().is_empty(), "valgrind reported:\n{report}");
}

/// A master session and a slave session, each under valgrind, each ending with
/// `hs_node_free`: no error, nothing definitely or indirectly lost.
#[test]
fn c_example_runs_clean_under_valgrind() {
    if Command::new("valgrind").arg("--version").output().is_err() {
        panic!("valgrind is not installed: run scripts/setup.sh (it installs valgrind)");
    }
    let exe = program(Link::Shared);
    let logs = tempfile::tempdir().unwrap();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (pa, pb) = two_ports();

    // A lone master: start, publish, read stats, free.
    let master_log = logs.path().join("master.log");
    let mut m = valgrind(
        "valgrind master",
        &exe,
        &master_log,
        &["master", da.path().to_str().unwrap(), "127.0.0.1:0", "-"],
    );
    assert!(m.reply().starts_with("LISTEN 127.0.0.1:"));
    m.until_role("ROLE master 1");
    for id in 0..50 {
        m.put(id, i64::from(id));
    }
    assert!(m.cmd("del 3").starts_with("OK "));
    assert!(m.cmd("stats").starts_with("STATS role=master"));
    assert!(m.cmd("bogus").starts_with("ERR bad_command"));
    assert_eq!(m.quit(), m_done(49));
    assert_valgrind_clean(&master_log);

    // A slave under valgrind follows a native master: its apply callback reads
    // every key and value from the replicated log.
    let slave_log = logs.path().join("slave.log");
    let native = program(Link::Shared);
    let mut a = Proc::start(
        "master",
        &native,
        &["master", db.path().join("m").to_str().unwrap(), &pa, &pb],
    );
    let mut s = valgrind(
        "valgrind slave",
        &exe,
        &slave_log,
        &["slave", db.path().join("s").to_str().unwrap(), &pb, &pa],
    );
    assert!(a.reply().starts_with("LISTEN"));
    assert!(s.reply().starts_with("LISTEN"));
    a.step = STEP_VALGRIND;
    a.until_role("ROLE master 1");
    s.until_role("ROLE slave 0");
    let mut last = 0;
    for id in 0..50 {
        last = a.put(id, i64::from(id) * 3);
    }
    assert_eq!(a.cmd(&format!("wait {last} applied")), "OK");
    let state = a.cmd("state");
    assert_eq!(s.cmd("state"), state);
    assert_eq!(s.quit(), format!("DONE {}", &state["STATE ".len()..]));
    assert_valgrind_clean(&slave_log);
    a.quit();
}

/// The DONE line of a lone master that put players 0..50 and deleted player 3.
fn m_done(players: usize) -> String {
    let mut h: u64 = 14695981039346656037;
    for id in (0..50u64).filter(|&i| i != 3) {
        for b in id.to_le_bytes().iter().chain(id.to_le_bytes().iter()) {
            h = (h ^ u64::from(*b)).wrapping_mul(1099511628211);
        }
    }
    format!("DONE {players} {h:016x}")
}

/// The C program in README.md's "Using hs from C/C++" compiles and links as shown.
#[test]
fn readme_c_example_builds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("../../README.md")).expect("README.md");
    let section = readme
        .split("## Using hs from C/C++")
        .nth(1)
        .expect("README has a \"Using hs from C/C++\" section");
    let code = section
        .split("```c\n")
        .nth(1)
        .and_then(|c| c.split("```").next())
        .expect("a ```c block in that section");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.c"), code).unwrap();
    let lib = libs();
    let out = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(root.join("include"))
        .arg(dir.path().join("app.c"))
        .arg(lib.join("libhs.a"))
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(dir.path().join("app"))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run the C compiler `cc` ({e}): run scripts/setup.sh (it installs gcc)")
        });
    assert!(
        out.status.success(),
        "README's C example does not build:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
