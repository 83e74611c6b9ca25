//! `hs-node pair`: one node of a failover pair, with a small line-based client
//! port so a load generator (the drill, the tests) can write through whichever
//! node is master and check what survived.
//!
//! Client protocol, one request per line, one reply per line:
//! ```text
//! PUT <key> <value> <async|received|flushed|applied>  ->  OK <pos> <wait_us> | TIMEOUT <pos> <wait_us> | NOTMASTER [addr] | ERR <msg>
//!                             TIMEOUT: accepted at <pos> but not at the level within --wait-ms;
//!                             wait_us: time spent waiting for the level after acceptance
//! HAVE <prefix> <from> <to>   ->  BITS <hex>   bit i set if key <prefix><from+i> is present
//! ROLE                        ->  ROLE <master|slave|candidate> <epoch> <writable 0|1>
//! STATS                       ->  STATS <json>
//! SWITCHOVER                  ->  OK | ERR <msg>   planned handover to the slave (master only)
//! ```
//! Stdout: `LISTEN <replication addr>`, `CLIENT <client addr>`, then `EVENT <debug>`
//! lines for role changes and rollbacks.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use hs::{Durability, Event, Node, NodeError, Role};

use crate::app::KvApp;
use crate::cli::NodeOpts;

/// Most client connections served at once; more are refused with `ERR busy`.
const CLIENTS_MAX: usize = 64;
/// Longest HAVE range, in keys.
const HAVE_KEYS_MAX: u64 = 10_000_000;

#[derive(Args, Debug, Clone)]
pub struct PairArgs {
    #[arg(long)]
    pub dir: PathBuf,
    /// Replication address of this node.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Replication address of the other node.
    #[arg(long)]
    pub peer: SocketAddr,
    /// Client port (line protocol).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub client: SocketAddr,
    #[arg(long)]
    pub witness: Option<SocketAddr>,
    #[arg(long, default_value_t = 1)]
    pub pair_id: u64,
    #[arg(long)]
    pub node_id: Option<u64>,
    /// Prefer to be master when both nodes start.
    #[arg(long)]
    pub prefer_master: bool,
    /// Without a witness, promote on silence and start alone (risk of two masters).
    #[arg(long)]
    pub accept_split_risk: bool,
    /// Longest a PUT waits for its durability level before answering TIMEOUT.
    #[arg(long, default_value_t = 2000)]
    pub wait_ms: u64,
    #[command(flatten)]
    pub node: NodeOpts,
}

pub fn run(a: PairArgs) -> Result<std::process::ExitCode, String> {
    let mut cfg = a.node.config(a.dir.clone())?;
    cfg.listen = Some(a.listen);
    cfg.peer = Some(a.peer);
    cfg.witness = a.witness;
    cfg.pair_id = a.pair_id;
    cfg.accept_split_risk = a.accept_split_risk;
    if let Some(id) = a.node_id {
        cfg.node_id = id;
    }
    let app = KvApp::new(cfg.segment_bytes);
    let role = if a.prefer_master {
        Role::Master
    } else {
        Role::Slave
    };
    let node = Arc::new(Node::start(cfg, role, app.clone()).map_err(|e| e.to_string())?);
    let client =
        TcpListener::bind(a.client).map_err(|e| format!("bind client port {}: {e}", a.client))?;
    println!("LISTEN {}", node.local_addr().expect("a pair node listens"));
    println!("CLIENT {}", client.local_addr().map_err(|e| e.to_string())?);
    let _ = std::io::stdout().flush();
    let n2 = node.clone();
    std::thread::spawn(move || loop {
        if let Some(e) = n2.next_event(Duration::from_millis(100)) {
            if matches!(
                e,
                Event::RoleChanged { .. } | Event::RolledBack { .. } | Event::Resynced { .. }
            ) {
                println!("EVENT {e:?}");
                let _ = std::io::stdout().flush();
            }
        }
    });
    let active = Arc::new(AtomicUsize::new(0));
    for conn in client.incoming() {
        let Ok(mut conn) = conn else { continue };
        if active.load(Ordering::Acquire) >= CLIENTS_MAX {
            let _ = conn.write_all(b"ERR busy\n");
            continue;
        }
        active.fetch_add(1, Ordering::AcqRel);
        let (node, app, active) = (node.clone(), app.clone(), active.clone());
        let wait = Duration::from_millis(a.wait_ms);
        std::thread::spawn(move || {
            let _ = serve_client(&node, &app, conn, wait);
            active.fetch_sub(1, Ordering::AcqRel);
        });
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn level(s: &str) -> Option<Durability> {
    Some(match s {
        "async" => Durability::Async,
        "received" => Durability::Received,
        "flushed" => Durability::Flushed,
        "applied" => Durability::Applied,
        _ => return None,
    })
}

fn serve_client(node: &Node, app: &KvApp, conn: TcpStream, wait: Duration) -> std::io::Result<()> {
    conn.set_nodelay(true)?;
    let mut out = conn.try_clone()?;
    let mut line = String::new();
    let mut rd = BufReader::new(conn);
    loop {
        line.clear();
        if rd.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let w: Vec<&str> = line.split_whitespace().collect();
        let reply = match w.as_slice() {
            ["PUT", k, v, lvl] => match level(lvl) {
                None => "ERR unknown durability level".to_string(),
                Some(l) => match node.put(k.as_bytes(), v.as_bytes()) {
                    Ok(pos) => {
                        let accepted = std::time::Instant::now();
                        app.0.lock().unwrap().put(k.as_bytes(), v.as_bytes());
                        let r = node.wait(pos, l, wait);
                        let us = accepted.elapsed().as_micros();
                        match r {
                            Ok(()) => format!("OK {pos} {us}"),
                            Err(NodeError::Timeout(_)) => format!("TIMEOUT {pos} {us}"),
                            Err(e) => format!("ERR {e}"),
                        }
                    }
                    Err(NodeError::NotMaster { master }) => format!(
                        "NOTMASTER {}",
                        master.map(|m| m.to_string()).unwrap_or_default()
                    ),
                    Err(e) => format!("ERR {e}"),
                },
            },
            ["HAVE", prefix, from, to] => match (from.parse::<u64>(), to.parse::<u64>()) {
                (Ok(f), Ok(t)) if t >= f && t - f <= HAVE_KEYS_MAX => {
                    let st = app.0.lock().unwrap();
                    let mut bits = vec![0u8; ((t - f) as usize).div_ceil(8)];
                    for i in f..t {
                        if st.map.contains_key(format!("{prefix}{i}").as_bytes()) {
                            bits[((i - f) / 8) as usize] |= 1 << ((i - f) % 8);
                        }
                    }
                    let mut hex = String::with_capacity(bits.len() * 2 + 5);
                    hex.push_str("BITS ");
                    for b in bits {
                        hex.push_str(&format!("{b:02x}"));
                    }
                    hex
                }
                _ => "ERR bad range".to_string(),
            },
            ["ROLE"] => {
                let s = node.stats();
                let role = match node.role() {
                    Role::Master => "master",
                    Role::Slave => "slave",
                    Role::Candidate => "candidate",
                };
                format!("ROLE {role} {} {}", s.epoch, node.is_writable() as u8)
            }
            ["SWITCHOVER"] => match node.switchover(Duration::from_secs(10)) {
                Ok(()) => "OK".to_string(),
                Err(e) => format!("ERR {e}"),
            },
            ["STATS"] => {
                let s = node.stats();
                format!(
                    "STATS {}",
                    serde_json::json!({"written": s.written, "applied": s.applied, "acked_received": s.acked_received,
                        "epoch": s.epoch, "slave_connected": s.slave_connected, "master_tail": s.master_tail})
                )
            }
            _ => "ERR unknown request".to_string(),
        };
        out.write_all(reply.as_bytes())?;
        out.write_all(b"\n")?;
    }
}
