//! `gs-cluster`: a whole local game cluster on 127.0.0.1 on embedded
//! defaults (a balancer, the guest login, gateways, room-server pairs), and
//! where to connect. Runs until Ctrl-C; the children are stopped with it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tools::gscluster::{Cluster, ClusterOpts};

#[derive(Parser, Debug)]
#[command(about = "Start a local game cluster and print where to connect")]
struct Args {
    /// Where the room servers keep their logs (default: a fresh temp directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long, default_value_t = 2)]
    pairs: usize,
    #[arg(long, default_value_t = 5)]
    rooms_per_pair: u32,
    #[arg(long, default_value_t = 50)]
    tables: u16,
    #[arg(long, default_value_t = 1)]
    gateways: usize,
    /// Time per turn, ms.
    #[arg(long, default_value_t = 15_000)]
    turn_ms: u32,
    /// Copy the processes' output to stderr.
    #[arg(long)]
    echo: bool,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let tmp = tempfile_dir();
    let mut o = ClusterOpts::new(a.dir.clone().unwrap_or_else(|| tmp.clone()));
    o.pairs = a.pairs;
    o.rooms_per_pair = a.rooms_per_pair;
    o.tables = a.tables;
    o.gateways = a.gateways;
    o.turn_ms = a.turn_ms;
    o.echo = a.echo;
    let cl = match Cluster::start(o) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gs-cluster: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("cluster up (zone {}):", cl.opts.zone);
    println!(
        "  login     POST http://{}/v1/guest  -> a guest token and a gateway",
        cl.login_addr
    );
    println!("  page      http://{}/  (play in a browser)", cl.login_addr);
    for g in &cl.gateways {
        println!(
            "  gateway   tcp={} ws={}",
            g.tcp,
            g.ws.map(|w| format!("ws://{w}/")).unwrap_or_default()
        );
        if let (Some(n), Some(k)) = (g.noise, g.noise_public) {
            println!(
                "            noise={n} key={}",
                gameserver::proto::noise::hex(&k)
            );
        }
        if let Some(w) = g.wss {
            println!(
                "            wss://localhost:{}/ (trust {})",
                w.port(),
                g.tls_cert.display()
            );
        }
    }
    for (i, p) in cl.pairs.iter().enumerate() {
        let m = cl.master(i);
        println!(
            "  pair {i}    rooms {}-{}  master {}  admin {} / {}",
            p.first_room,
            p.first_room + p.rooms - 1,
            m.map(|m| p.nodes[m].name.as_str()).unwrap_or("?"),
            p.nodes[0].admin,
            p.nodes[1].admin
        );
    }
    if !cl.center.is_empty() {
        println!(
            "  center    admin {} (gs-center stats --admin {} --secret {})",
            cl.center_admins().join(" / "),
            cl.center_admins().join(","),
            tools::gscluster::CENTER_ADMIN_SECRET
        );
    }
    if let Some(b) = cl.balancer_addr {
        println!("  balancer  http://{b}/v1/zones/{}", cl.opts.zone);
    }
    println!("Ctrl-C stops the cluster.");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _ = rt.block_on(tokio::signal::ctrl_c());
    drop(cl);
    if a.dir.is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    ExitCode::SUCCESS
}

fn tempfile_dir() -> PathBuf {
    std::env::temp_dir().join(format!("gs-cluster-{}", std::process::id()))
}
