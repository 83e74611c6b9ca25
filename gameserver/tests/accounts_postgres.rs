//! The Store suite against PostgreSQL: the test starts a throwaway cluster
//! itself (Debian's `postgresql` package; scripts/setup.sh installs it), on
//! 127.0.0.1 and a free port, its socket and data in a temp dir, and stops it
//! at the end, on a panic too.

use crate::store_suite;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gameserver::accounts::Store;

/// How long the cluster may take to start, s (pg_ctl waits this long).
const START_TIMEOUT_S: u64 = 60;

/// PostgreSQL's server binaries, the newest installed version.
fn pg_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists() && b.join("pg_ctl").exists())
        .collect();
    dirs.sort_by_key(|d| {
        d.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): \
             run scripts/setup.sh, which installs Debian's postgresql package"
        )
    })
}

/// A PostgreSQL cluster of our own; dropping it stops its postmaster.
struct PgCluster {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    as_postgres: bool,
    _dir: tempfile::TempDir,
}

impl PgCluster {
    /// A command of PostgreSQL's, run as the `postgres` user when we are root
    /// (the server refuses to run as root).
    fn cmd(bin: &Path, as_postgres: bool, tool: &str) -> Command {
        if as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
            c
        } else {
            Command::new(bin.join(tool))
        }
    }

    fn run(mut c: Command, what: &str) {
        let out = c
            .output()
            .unwrap_or_else(|e| panic!("{what}: cannot run {c:?}: {e}"));
        assert!(
            out.status.success(),
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start() -> PgCluster {
        let bin = pg_bin();
        let as_postgres = euid() == 0;
        let dir = tempfile::Builder::new().prefix("gs-pg-").tempdir().unwrap();
        if as_postgres {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let data = dir.path().join("data");
        let mut c = Self::cmd(&bin, as_postgres, "initdb");
        c.arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"]);
        Self::run(c, "initdb");
        // A port free now; if another process takes it before the server
        // binds, start fails and we try another.
        let mut last = String::new();
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut c = Self::cmd(&bin, as_postgres, "pg_ctl");
            c.arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.path().join("log"))
                .args(["-w", "-t", &START_TIMEOUT_S.to_string(), "-o"])
                .arg(format!(
                    "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off",
                    dir.path().display()
                ))
                .arg("start");
            let out = c.output().expect("pg_ctl runs");
            if out.status.success() {
                return PgCluster {
                    bin,
                    data,
                    port,
                    as_postgres,
                    _dir: dir,
                };
            }
            last = format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(dir.path().join("log")).unwrap_or_default()
            );
        }
        panic!("PostgreSQL did not start: {last}");
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A new empty database.
    fn create_db(&self, name: &str) -> String {
        let mut c = postgres::Client::connect(&self.url("postgres"), postgres::NoTls)
            .expect("connect to the test cluster");
        c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        self.url(name)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Only our postmaster: pg_ctl finds it by this data dir's pid file.
        let mut c = Self::cmd(&self.bin, self.as_postgres, "pg_ctl");
        c.arg("-D")
            .arg(&self.data)
            .args(["stop", "-m", "immediate", "-w"]);
        match c.output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!("pg_ctl stop failed: {}", String::from_utf8_lossy(&o.stderr)),
            Err(e) => eprintln!("pg_ctl stop: {e}"),
        }
    }
}

/// Our effective uid: /proc/self belongs to it.
fn euid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid())
}

fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("id runs");
        assert!(
            out.status.success(),
            "no postgres user: run scripts/setup.sh (the postgresql package creates it)"
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

#[test]
fn postgres_store_suite_migrations_and_races() {
    let t0 = Instant::now();
    let pg = PgCluster::start();
    let url = pg.create_db("suite");
    let store = gameserver::accounts::open(&url).unwrap();
    store_suite::store_suite(&*store);
    // Opening again migrates nothing; the version stays.
    let again = gameserver::accounts::open(&url).unwrap();
    assert_eq!(again.schema_version().unwrap(), 1);
    store_suite::concurrent_first_uses(&|| -> Arc<dyn Store> {
        gameserver::accounts::open(&url).unwrap()
    });
    // Two processes opening a fresh database at once: one migrates, both work.
    let fresh = pg.create_db("fresh");
    let opened: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|_| s.spawn(|| gameserver::accounts::open(&fresh)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for o in opened {
        assert_eq!(o.unwrap().schema_version().unwrap(), 1);
    }
    // A connection the server closed is opened again on the next call.
    let mut admin = postgres::Client::connect(&pg.url("postgres"), postgres::NoTls).unwrap();
    admin
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = 'suite' AND pid <> pg_backend_pid()",
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.new_guest("after") {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "no reconnect: {e}"),
        }
    }
    eprintln!("postgres suite took {:?}", t0.elapsed());
}
