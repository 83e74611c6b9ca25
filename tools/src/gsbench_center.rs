//! `gs-bench center`: the center pair on a local cluster (real processes,
//! hs replication to the standby, every answer after `Received`).
//!
//! - **registrations/s**: one fake gateway speaking the center link
//!   pipelines `--registrations` Logins and counts the Admitted answers
//!   (then logs them all out again): the center's user-table throughput
//!   with replication, without client or gateway costs.
//! - **broadcast**: `--players` clients connected through the cluster's
//!   gateways; an operator broadcast (admin HTTP) to everyone; the time
//!   until the last client has it.
//!
//! Each is run `--runs` times; the table gives the median and the worst.
//! One process here holds at most [`crate::gsbench::BOTS_PER_PROCESS_MAX`]
//! clients (20,000 file descriptors per process on this machine), so the
//! broadcast is measured with up to that many players.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use gameserver::center::link::{
    FromCenter, Login, ToCenter, CENTER_FRAME_BYTES_MAX, CENTER_LINK_VERSION,
};
use gameserver::client::{Client, Options, Target};
use gameserver::proto::frame::{self, Frame, Kind};
use gameserver::proto::msg::{self, Push};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::gsbench::{BOTS_PER_PROCESS_MAX, SESSIONS_PER_GATEWAY_MAX};
use crate::gscluster::{Cluster, ClusterOpts};

/// Logins written before the bench reads answers (bounds what is in flight).
const PIPELINE_LOGINS_MAX: usize = 4096;
/// Clients connecting at once.
const CONNECT_CONCURRENCY: usize = 256;
/// Every wait of the bench ends by this.
const STEP: Duration = Duration::from_secs(120);

fn frame_of(m: &ToCenter) -> Bytes {
    Frame::new(Kind::ToCenter, 0, 0, Bytes::from(msg::encode(m))).to_bytes()
}

async fn read_msg(s: &mut TcpStream, buf: &mut BytesMut) -> Result<FromCenter, String> {
    loop {
        if let Some(f) = frame::decode(buf, CENTER_FRAME_BYTES_MAX).map_err(|e| e.to_string())? {
            return msg::decode(&f.payload).map_err(|e| e.to_string());
        }
        if s.read_buf(buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("the center closed the link".into());
        }
    }
}

/// One run: `n` Logins pipelined on one link; seconds until the last Admitted.
async fn registrations(link: std::net::SocketAddr, n: usize, first: u64) -> Result<f64, String> {
    let mut s = TcpStream::connect(link).await.map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let hello = ToCenter::Hello {
        gateway: first ^ 0xbe_0000_0000,
        zone: 1,
        addr: "bench".into(),
        version: CENTER_LINK_VERSION,
    };
    s.write_all(&frame_of(&hello))
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = BytesMut::with_capacity(1 << 16);
    match read_msg(&mut s, &mut buf).await? {
        FromCenter::Welcome { .. } => {}
        m => return Err(format!("no Welcome: {m:?}")),
    }
    let sync = ToCenter::Sync {
        admitted: vec![],
        waiting: vec![],
        channels: vec![],
    };
    s.write_all(&frame_of(&sync))
        .await
        .map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let (mut sent, mut got) = (0usize, 0usize);
    // Bounded: every turn sends or receives one of `n` answers.
    while got < n {
        if sent < n && sent - got < PIPELINE_LOGINS_MAX {
            let mut out = BytesMut::new();
            while sent < n && sent - got < PIPELINE_LOGINS_MAX {
                let p = first + sent as u64;
                let l = ToCenter::Login(Login {
                    player: p,
                    session: p,
                    name: "b".into(),
                    kind: 0,
                    addr: "127.0.0.1".parse().expect("ip"),
                });
                out.extend_from_slice(&frame_of(&l));
                sent += 1;
            }
            s.write_all(&out).await.map_err(|e| e.to_string())?;
        }
        match read_msg(&mut s, &mut buf).await? {
            FromCenter::Admitted { .. } => got += 1,
            FromCenter::Queued { .. } => return Err("queued: raise --center-online-max".into()),
            FromCenter::Refused { fail, .. } => return Err(format!("refused: {fail}")),
            _ => {}
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let mut out = BytesMut::new();
    for i in 0..n {
        let p = first + i as u64;
        out.extend_from_slice(&frame_of(&ToCenter::Logout {
            player: p,
            session: p,
        }));
    }
    s.write_all(&out).await.map_err(|e| e.to_string())?;
    Ok(secs)
}

fn median_min(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// `gs-bench center`: see the module doc.
pub fn center(
    players: usize,
    regs: usize,
    runs: usize,
    dir: &Option<PathBuf>,
) -> Result<Value, String> {
    let players = players.min(BOTS_PER_PROCESS_MAX);
    let runs = runs.max(3);
    let tmp = std::env::temp_dir().join(format!("gs-bench-center-{}", std::process::id()));
    let mut o = ClusterOpts::new(dir.clone().unwrap_or(tmp));
    o.pairs = 1;
    o.rooms_per_pair = 1;
    o.tables = 1;
    o.gateways = players.div_ceil(SESSIONS_PER_GATEWAY_MAX).max(1);
    o.balancer = false;
    o.center_online_max = 10_000_000;
    o.gateway_args = vec!["--sessions-max".into(), "20000".into()];
    let cl = Cluster::start(o)?;
    let m = cl.wait_center(STEP)?;
    let link = cl.center[m].link;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut reg_rates = Vec::new();
    for r in 0..runs {
        let secs = rt.block_on(registrations(link, regs, 10_000_000 + (r * regs) as u64))?;
        reg_rates.push(regs as f64 / secs);
    }
    let (reg_med, reg_min, reg_max) = median_min(reg_rates.clone());
    // Broadcast to every connected player.
    let gws: Vec<Target> = cl.gateways.iter().map(|g| Target::Tcp(g.tcp)).collect();
    let tokens: Vec<String> = (0..players)
        .map(|i| cl.token(20_000_000 + i as u64, "b"))
        .collect();
    let lat = rt.block_on(async {
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(CONNECT_CONCURRENCY));
        let mut joins = Vec::new();
        for (i, t) in tokens.into_iter().enumerate() {
            let target = gws[i % gws.len()].clone();
            let sem = sem.clone();
            joins.push(tokio::spawn(async move {
                let _p = sem.acquire().await;
                let opts = Options {
                    connect_timeout: Duration::from_secs(60),
                    push_capacity: 16,
                    ..Options::default()
                };
                Client::connect_with(&target, &t, opts).await
            }));
        }
        let mut clients = Vec::new();
        for j in joins {
            clients.push(
                j.await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?,
            );
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, Instant)>(players.max(1) * 2);
        let mut tasks = Vec::new();
        for c in clients {
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(p) = c.next_push().await {
                    if let Push::Notice(n) = p {
                        let run: usize = n.text.parse().unwrap_or(usize::MAX);
                        if tx.send((run, Instant::now())).await.is_err() {
                            return;
                        }
                    }
                }
            }));
        }
        let mut lat = Vec::new();
        for run in 0..runs {
            let admins = cl.center_admins();
            let t0 = Instant::now();
            let body = json!({ "text": run.to_string() });
            let (s, v) = tokio::task::spawn_blocking(move || {
                gameserver::center::admin::call_master(
                    &admins,
                    Some(crate::gscluster::CENTER_ADMIN_SECRET),
                    "POST",
                    "/v1/broadcast",
                    Some(&body),
                )
            })
            .await
            .map_err(|e| e.to_string())??;
            if s != 200 {
                return Err(format!("broadcast: {s} {v}"));
            }
            let mut last = t0;
            let mut n = 0;
            while n < players {
                let (r, at) = tokio::time::timeout(STEP, rx.recv())
                    .await
                    .map_err(|_| format!("run {run}: {n} of {players} players had the broadcast"))?
                    .ok_or("receivers ended")?;
                if r == run {
                    n += 1;
                    last = last.max(at);
                }
            }
            lat.push((last - t0).as_secs_f64() * 1000.0);
        }
        for t in tasks {
            t.abort();
        }
        Ok::<_, String>(lat)
    })?;
    let (lat_med, lat_min, lat_max) = median_min(lat.clone());
    println!(
        "{:<44} {:>12} {:>12} {:>12}",
        "center", "median", "best", "worst"
    );
    println!(
        "{:<44} {:>12.0} {:>12.0} {:>12.0}",
        format!("registrations/s ({regs} per run, replicated)"),
        reg_med,
        reg_max,
        reg_min
    );
    println!(
        "{:<44} {:>12.1} {:>12.1} {:>12.1}",
        format!("ms until the last of {players} has a broadcast"),
        lat_med,
        lat_min,
        lat_max
    );
    Ok(json!({
        "registrations": regs, "runs": runs, "registrations_per_s": reg_rates,
        "registrations_per_s_median": reg_med, "registrations_per_s_min": reg_min,
        "players": players, "gateways": cl.gateways.len(), "broadcast_last_ms": lat,
        "broadcast_last_ms_median": lat_med, "broadcast_last_ms_min": lat_min,
    }))
}
