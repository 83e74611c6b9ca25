//! What the binaries of an hs pair node (`gs-room`, `gs-center`) share: the
//! hs flags and the line they print for each role change.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The hs flags of one node of a pair.
#[derive(clap::Args, Debug, Clone)]
pub struct HsArgs {
    /// Log directory of this node's hs log (one node per directory).
    #[arg(long)]
    pub dir: PathBuf,
    /// hs replication address of this node.
    #[arg(long)]
    pub hs_listen: SocketAddr,
    /// hs replication address of the other node of the pair.
    #[arg(long)]
    pub hs_peer: Option<SocketAddr>,
    /// An hs witness (hs-witness or the balancer): it confirms a refused
    /// master before a promotion and renews the master's lease.
    #[arg(long)]
    pub witness: Option<SocketAddr>,
    /// hs heartbeat period, ms, and the silent ticks that make a peer dead.
    #[arg(long, default_value_t = 50)]
    pub heartbeat_ms: u64,
    #[arg(long, default_value_t = 6)]
    pub dead_ticks: u32,
    /// hs segment size, MiB.
    #[arg(long, default_value_t = 64)]
    pub segment_mb: u64,
}

impl HsArgs {
    /// The hs config of these flags; records up to `record_bytes_max` (at
    /// most half a segment).
    pub fn config(&self, pair_id: u64, record_bytes_max: usize) -> hs::Config {
        let mut hs = hs::Config::new(&self.dir);
        hs.listen = Some(self.hs_listen);
        hs.peer = self.hs_peer;
        hs.witness = self.witness;
        hs.pair_id = pair_id;
        hs.heartbeat_interval_ms = self.heartbeat_ms;
        hs.heartbeat_dead_ticks = self.dead_ticks;
        hs.segment_bytes = self.segment_mb << 20;
        hs.record_bytes_max = record_bytes_max.min(hs.segment_bytes as usize / 2);
        hs
    }
}

/// Prints `EVENT <debug>` for every role change, rollback and resync of
/// `node`, forever (the launcher and the tests read these lines).
pub fn print_events(node: &hs::Node) -> ! {
    loop {
        if let Some(e) = node.next_event(Duration::from_millis(200)) {
            if matches!(
                e,
                hs::Event::RoleChanged { .. }
                    | hs::Event::RolledBack { .. }
                    | hs::Event::Resynced { .. }
            ) {
                println!("EVENT {e:?}");
                let _ = std::io::stdout().flush();
            }
        }
    }
}
