//! What the workspace's tests write once instead of in every file: a seeded
//! RNG ([`Rng`]), waiting with a deadline ([`wait_until`]), a child process
//! killed by its own pid on drop ([`ChildGuard`]), a named temp dir
//! ([`temp_dir`]) and the replay of a committed fuzz corpus ([`corpus`]).
//!
//! A dev-dependency only: nothing here is for production code. It depends on
//! none of the workspace's crates, so any of them may use it.

pub mod corpus;

use std::process::Child;
use std::time::{Duration, Instant};

/// How often [`wait_until`] checks its condition.
pub const POLL: Duration = Duration::from_millis(2);

/// Checks `done` every [`POLL`] until it holds; panics with "timed out
/// waiting for {what}" once `deadline` has passed since the call.
pub fn wait_until(what: &str, deadline: Duration, done: impl FnMut() -> bool) {
    wait_until_every(what, deadline, POLL, done);
}

/// [`wait_until`], checking every `poll` (for conditions that cost a
/// request or a process's answer).
pub fn wait_until_every(
    what: &str,
    deadline: Duration,
    poll: Duration,
    mut done: impl FnMut() -> bool,
) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(poll);
    }
}

/// A deterministic RNG (xorshift64*): the same seed gives the same sequence
/// on every machine, so a failing seed replays exactly. Not for secrets.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// An RNG from `seed` (any value; 0 included).
    pub fn new(seed: u64) -> Rng {
        // Spread the seed over the bits (splitmix64's constant); never 0,
        // which xorshift would keep.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// A child process that is SIGKILLed (by its own pid, through its `Child`
/// handle: never by name) and reaped when dropped, so a failing test leaves
/// nothing running.
#[derive(Debug)]
pub struct ChildGuard(Child);

impl ChildGuard {
    /// Takes charge of `child`.
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard(child)
    }

    /// SIGKILL, as a crash would, then waits for the process to be gone. A
    /// no-op once it has exited and been reaped.
    pub fn kill(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl std::ops::Deref for ChildGuard {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A new directory under the system temp dir whose name starts with `tag`
/// (so a leftover one says which test made it), removed on drop.
pub fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("{tag}-"))
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot make a temp dir for {tag}: {e}"))
}

/// What a deterministic simulation runs: `HS_SIM_SEED=<n>` replays one seed;
/// otherwise `HS_SIM_SEEDS` seeds (default `seeds`) from `HS_SIM_FIRST_SEED`
/// (default 1); `HS_SIM_STEPS` steps each (default `steps`). Returns
/// (seeds, steps).
pub fn sim_seeds(seeds: u64, steps: u64) -> (Vec<u64>, u64) {
    fn env(name: &str) -> Option<u64> {
        std::env::var(name).ok().map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}"))
        })
    }
    let steps = env("HS_SIM_STEPS").unwrap_or(steps);
    let list = match env("HS_SIM_SEED") {
        Some(s) => vec![s],
        None => {
            let first = env("HS_SIM_FIRST_SEED").unwrap_or(1);
            (first..first + env("HS_SIM_SEEDS").unwrap_or(seeds)).collect()
        }
    };
    (list, steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_numbers() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let xs: Vec<u64> = (0..16).map(|_| a.below(1000)).collect();
        let ys: Vec<u64> = (0..16).map(|_| b.below(1000)).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().all(|&x| x < 1000));
        assert_ne!(
            xs,
            (0..16).map(|_| Rng::new(8).below(1000)).collect::<Vec<_>>()
        );
        assert_eq!(Rng::new(0).below(0), 0);
    }

    #[test]
    #[should_panic(expected = "timed out waiting for never")]
    fn waiting_stops_at_the_deadline() {
        wait_until("never", Duration::from_millis(20), || false);
    }

    #[test]
    fn waiting_returns_once_the_condition_holds() {
        let mut n = 0;
        wait_until("three checks", Duration::from_secs(10), || {
            n += 1;
            n == 3
        });
        assert_eq!(n, 3);
    }

    #[test]
    fn a_dropped_guard_kills_its_child() {
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut guard = ChildGuard::new(child);
        assert!(matches!(guard.try_wait(), Ok(None)), "sleep {pid} runs");
        drop(guard);
        // Reaped by the guard: /proc has no entry for it any more (or one
        // that a new process took, which is not a zombie `sleep`).
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(!stat.contains("(sleep) Z"), "{stat}");
        assert!(!stat.contains("(sleep) S"), "still sleeping: {stat}");
    }

    #[test]
    fn a_temp_dir_is_named_and_removed() {
        let d = temp_dir("testkit-self");
        let path = d.path().to_path_buf();
        assert!(path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("testkit-self-"));
        assert!(path.is_dir());
        drop(d);
        assert!(!path.exists());
    }
}
