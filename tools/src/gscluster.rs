//! A whole local game cluster on 127.0.0.1: a balancer and the guest login
//! (in this process), gateways and room-server pairs (child processes, so
//! they can be SIGKILLed and restarted by their pid).
//!
//! Used by `gs-cluster` (README's main job), `gs-drill`, `gs-bench` and the
//! whole-system tests.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::proc::Proc;

/// What to start.
#[derive(Clone, Debug)]
pub struct ClusterOpts {
    /// Where the room servers keep their hs logs.
    pub dir: PathBuf,
    pub pairs: usize,
    pub rooms_per_pair: u32,
    pub tables: u16,
    pub capacity: u32,
    pub turn_ms: u32,
    pub gateways: usize,
    pub zone: u32,
    /// Token secret shared by the login and the gateways.
    pub secret: String,
    pub hs_heartbeat_ms: u64,
    pub hs_dead_ticks: u32,
    pub segment_mb: u64,
    /// Gateway heartbeat (client pings), ms.
    pub gateway_heartbeat_ms: u64,
    /// Start the balancer (gateways report to it; the login picks from it).
    pub balancer: bool,
    /// Copy the children's stdout to stderr.
    pub echo: bool,
    /// Extra flags for every gateway.
    pub gateway_args: Vec<String>,
    /// Start a center pair (two `gs-center` processes) and give it to the gateways.
    pub center: bool,
    /// The center's online threshold per zone (above it logins queue).
    pub center_online_max: u64,
    /// Extra flags for both center nodes.
    pub center_args: Vec<String>,
    /// Room servers load and save player data in the login's database
    /// (`<dir>/accounts.db`).
    pub player_data: bool,
    /// The room servers' activity batch period, ms.
    pub activity_save_period_ms: u64,
    /// Run an hs witness for the pairs (fast, confirmed failover).
    pub witness: bool,
}

impl ClusterOpts {
    pub fn new(dir: impl Into<PathBuf>) -> ClusterOpts {
        ClusterOpts {
            dir: dir.into(),
            pairs: 2,
            rooms_per_pair: 5,
            tables: 50,
            capacity: 400,
            turn_ms: 15_000,
            gateways: 1,
            zone: 1,
            secret: "local-cluster-secret".into(),
            hs_heartbeat_ms: 50,
            hs_dead_ticks: 6,
            segment_mb: 16,
            gateway_heartbeat_ms: 1000,
            balancer: true,
            echo: false,
            gateway_args: Vec::new(),
            center: true,
            center_online_max: 100_000,
            center_args: Vec::new(),
            player_data: true,
            activity_save_period_ms: 1000,
            witness: true,
        }
    }
}

/// One room-server process slot.
pub struct RoomNode {
    pub name: String,
    pub proc: Option<Proc>,
    pub hs: SocketAddr,
    pub link: SocketAddr,
    pub admin: SocketAddr,
    args: Vec<String>,
}

pub struct Pair {
    pub first_room: u32,
    pub rooms: u32,
    pub nodes: [RoomNode; 2],
}

impl Pair {
    pub fn room_ids(&self) -> std::ops::Range<u32> {
        self.first_room..self.first_room + self.rooms
    }
}

/// One center node process slot.
pub struct CenterNode {
    pub name: String,
    pub proc: Option<Proc>,
    pub hs: SocketAddr,
    pub link: SocketAddr,
    pub admin: SocketAddr,
    args: Vec<String>,
}

/// The admin secret of the local cluster's center.
pub const CENTER_ADMIN_SECRET: &str = "local-center-secret";

pub struct GatewayProc {
    pub proc: Proc,
    pub tcp: SocketAddr,
    pub ws: Option<SocketAddr>,
    /// The Noise TCP listener (`Target::Noise` with `noise_public`).
    pub noise: Option<SocketAddr>,
    /// The gateway's Noise public key.
    pub noise_public: Option<[u8; 32]>,
    /// The `wss://` listener (`Target::Wss` trusting `tls_cert`).
    pub wss: Option<SocketAddr>,
    /// The self-signed certificate (PEM file) the `wss` listener serves.
    pub tls_cert: PathBuf,
}

/// The local cluster's gateway keys: a Noise key and a self-signed
/// certificate for localhost and 127.0.0.1, made once in the cluster's
/// directory and kept (a restarted gateway has the same keys).
/// Returns (noise key file, certificate PEM file, certificate key PEM file).
fn gateway_keys(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (nk, cert, key) = (
        dir.join("gateway-noise.key"),
        dir.join("gateway-cert.pem"),
        dir.join("gateway-cert-key.pem"),
    );
    // Owner-only, as private keys should be even on a development machine.
    let write = |p: &Path, text: &str| {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(p)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    if !nk.exists() {
        write(
            &nk,
            &gameserver::proto::noise::StaticKey::generate().private_hex(),
        )?;
    }
    if !cert.exists() || !key.exists() {
        let (c, k) = gameserver::gateway::secure::self_signed(&["localhost", "127.0.0.1"])?;
        write(&key, &k)?;
        write(&cert, &c)?;
    }
    Ok((nk, cert, key))
}

pub struct Cluster {
    pub opts: ClusterOpts,
    pub pairs: Vec<Pair>,
    /// The center pair's two nodes (empty without `opts.center`).
    pub center: Vec<CenterNode>,
    pub gateways: Vec<GatewayProc>,
    pub balancer_addr: Option<SocketAddr>,
    /// The hs witness every pair (rooms, center) consults, in-process.
    pub witness_addr: Option<SocketAddr>,
    pub login_addr: SocketAddr,
    bin_dir: PathBuf,
    rt: tokio::runtime::Runtime,
    balancer: Option<balancer::server::ServerHandle>,
    login_stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Ports the launcher picks from: below Linux's ephemeral range (32768–60999),
/// so no outgoing connection takes one between the pick and the bind.
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A free port on 127.0.0.1, checked by binding it. The two room servers of a
/// pair must know each other's addresses before either starts, so these
/// cannot be port 0; a start that still finds its port taken is retried on
/// new ones ([`Cluster::start`]).
pub fn free_port() -> Result<SocketAddr, String> {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    if NEXT.load(Ordering::Relaxed) == 0 {
        let seed = (std::process::id() as u64 ^ gameserver::token::now_ms()) % (PORTS.len() as u64);
        let _ = NEXT.compare_exchange(
            0,
            PORTS.start + seed as u16,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
    for _ in 0..PORTS.len() {
        let p = NEXT.fetch_add(1, Ordering::Relaxed);
        let p = PORTS.start + (p - PORTS.start) % PORTS.len() as u16;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", p)) {
            return l.local_addr().map_err(|e| e.to_string());
        }
    }
    Err(format!("no free port in {PORTS:?} on 127.0.0.1"))
}

/// Where the workspace's binaries are: beside this executable, or one level up
/// (test executables live in `target/<profile>/deps`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.join("gs-room").exists() {
        return dir;
    }
    dir.parent().map(Path::to_path_buf).unwrap_or(dir)
}

/// One admin command to a room server; its one-line answer.
pub fn admin(addr: SocketAddr, cmd: &str) -> Result<String, String> {
    let c = TcpStream::connect_timeout(&addr, Duration::from_millis(500))
        .map_err(|e| format!("admin {addr}: {e}"))?;
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut w = c.try_clone().map_err(|e| e.to_string())?;
    w.write_all(format!("{cmd}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(c)
        .read_line(&mut line)
        .map_err(|e| format!("admin {addr} {cmd}: {e}"))?;
    Ok(line.trim().to_string())
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key))
}

impl Cluster {
    pub fn start(opts: ClusterOpts) -> Result<Cluster, String> {
        let bin = bin_dir();
        for b in ["gs-room", "gs-gateway", "gs-center"] {
            if !bin.join(b).exists() {
                return Err(format!(
                    "{} not found: build it first (cargo build --release -p gameserver)",
                    bin.join(b).display()
                ));
            }
        }
        std::fs::create_dir_all(&opts.dir)
            .map_err(|e| format!("create {}: {e}", opts.dir.display()))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let balancer = if opts.balancer {
            let cfg = balancer::config::Config {
                listen: "127.0.0.1:0".parse().expect("addr"),
                zones: vec![
                    balancer::config::ZoneConfig {
                        id: opts.zone,
                        name: "local".into(),
                        version: "gs".into(),
                        process_online_max: 20_000,
                        spawn: None,
                    },
                    balancer::config::ZoneConfig {
                        id: gameserver::roomserver::ROOMS_ZONE_DEFAULT,
                        name: "room servers".into(),
                        version: "gs".into(),
                        process_online_max: 20_000,
                        spawn: None,
                    },
                ],
                // One machine's players all come from 127.0.0.1.
                pick_rate_per_s: 100_000,
                pick_burst: 100_000,
                ..balancer::config::Config::default()
            };
            Some(
                rt.block_on(balancer::server::start(
                    cfg,
                    std::sync::Arc::new(balancer::server::NoSink),
                ))
                .map_err(|e| format!("balancer: {e}"))?,
            )
        } else {
            None
        };
        let balancer_addr = balancer.as_ref().map(|b| b.addr());
        // A witness for the pairs: it confirms a refused master before a
        // promotion (hs never promotes on a refused connection alone), so a
        // SIGKILLed master is replaced within milliseconds, not a lease.
        let witness_addr = if opts.witness {
            let l = rt
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .map_err(|e| format!("witness: {e}"))?;
            let a = l.local_addr().map_err(|e| e.to_string())?;
            let hold = hs::node::witness::hold_for(opts.hs_heartbeat_ms, opts.hs_dead_ticks);
            rt.spawn(hs::node::witness::serve_with(l, hold, None));
            Some(a)
        } else {
            None
        };
        let mut c = Cluster {
            opts: opts.clone(),
            pairs: Vec::new(),
            center: Vec::new(),
            gateways: Vec::new(),
            balancer_addr,
            witness_addr,
            login_addr: "127.0.0.1:0".parse().expect("addr"),
            bin_dir: bin,
            rt,
            balancer,
            login_stop: None,
        };
        for p in 0..opts.pairs {
            c.start_pair_retrying(p)?;
        }
        for p in 0..opts.pairs {
            c.wait_pair(p, Duration::from_secs(30))?;
        }
        if opts.center {
            c.start_center_retrying()?;
            c.wait_center(Duration::from_secs(30))?;
        }
        for g in 0..opts.gateways {
            c.start_gateway(g)?;
        }
        c.start_login()?;
        Ok(c)
    }

    /// Starts pair `p`, on new ports when one was taken meanwhile.
    fn start_pair_retrying(&mut self, p: usize) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..5 {
            match self.start_pair(p) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    last = e;
                    self.pairs.truncate(p);
                }
            }
        }
        Err(format!("pair {p} did not start: {last}"))
    }

    fn start_pair(&mut self, p: usize) -> Result<(), String> {
        let o = &self.opts;
        let balancer_addr = self.balancer_addr;
        let witness_addr = self.witness_addr;
        let first_room = 1 + p as u32 * o.rooms_per_pair;
        let hs = [free_port()?, free_port()?];
        let link = [free_port()?, free_port()?];
        let mk = |i: usize| -> RoomNode {
            let dir = o.dir.join(format!("pair{p}-node{i}"));
            let mut args: Vec<String> = vec![
                "--dir".into(),
                dir.display().to_string(),
                "--hs-listen".into(),
                hs[i].to_string(),
                "--hs-peer".into(),
                hs[1 - i].to_string(),
                "--link".into(),
                link[i].to_string(),
                "--peer-link".into(),
                link[1 - i].to_string(),
                "--admin".into(),
                "127.0.0.1:0".into(),
                "--pair-id".into(),
                (p + 1).to_string(),
                "--first-room".into(),
                first_room.to_string(),
                "--rooms".into(),
                o.rooms_per_pair.to_string(),
                "--tables".into(),
                o.tables.to_string(),
                "--capacity".into(),
                o.capacity.to_string(),
                "--turn-ms".into(),
                o.turn_ms.to_string(),
                "--heartbeat-ms".into(),
                o.hs_heartbeat_ms.to_string(),
                "--dead-ticks".into(),
                o.hs_dead_ticks.to_string(),
                "--segment-mb".into(),
                o.segment_mb.to_string(),
            ];
            if i == 0 {
                args.push("--prefer-master".into());
            }
            if o.player_data {
                args.extend([
                    "--db".into(),
                    format!("sqlite:{}", o.dir.join("accounts.db").display()),
                    "--activity-save-period-ms".into(),
                    o.activity_save_period_ms.to_string(),
                ]);
            }
            if let Some(w) = witness_addr {
                args.extend(["--witness".into(), w.to_string()]);
            }
            if let Some(b) = balancer_addr {
                args.extend(["--balancer".into(), b.to_string()]);
            }
            RoomNode {
                name: format!("room{p}.{i}"),
                proc: None,
                hs: hs[i],
                link: link[i],
                admin: "127.0.0.1:0".parse().expect("addr"),
                args,
            }
        };
        self.pairs.push(Pair {
            first_room,
            rooms: o.rooms_per_pair,
            nodes: [mk(0), mk(1)],
        });
        for i in 0..2 {
            self.spawn_node(p, i)?;
        }
        Ok(())
    }

    fn spawn_node(&mut self, p: usize, i: usize) -> Result<(), String> {
        let exe = self.bin_dir.join("gs-room");
        let echo = self.opts.echo;
        let n = &mut self.pairs[p].nodes[i];
        let mut proc = Proc::spawn(&n.name, &exe, &n.args, Stdio::inherit(), echo)?;
        let line = proc.wait_line("ROOMSERVER", Duration::from_secs(20))?;
        n.admin = field(&line, "admin=")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("{}: no admin address in {line:?}", n.name))?;
        n.proc = Some(proc);
        Ok(())
    }

    /// Starts the center pair, on new ports when one was taken meanwhile.
    fn start_center_retrying(&mut self) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..5 {
            match self.start_center() {
                Ok(()) => return Ok(()),
                Err(e) => {
                    last = e;
                    self.center.clear();
                }
            }
        }
        Err(format!("the center pair did not start: {last}"))
    }

    fn start_center(&mut self) -> Result<(), String> {
        let o = &self.opts;
        let witness = self.witness_addr;
        let hs = [free_port()?, free_port()?];
        let link = [free_port()?, free_port()?];
        let mk = |i: usize| -> CenterNode {
            let dir = o.dir.join(format!("center-node{i}"));
            let mut args: Vec<String> = vec![
                "serve".into(),
                "--dir".into(),
                dir.display().to_string(),
                "--hs-listen".into(),
                hs[i].to_string(),
                "--hs-peer".into(),
                hs[1 - i].to_string(),
                "--link".into(),
                link[i].to_string(),
                "--peer-link".into(),
                link[1 - i].to_string(),
                "--admin".into(),
                "127.0.0.1:0".into(),
                "--secret".into(),
                CENTER_ADMIN_SECRET.into(),
                "--online-max".into(),
                o.center_online_max.to_string(),
                "--heartbeat-ms".into(),
                o.hs_heartbeat_ms.to_string(),
                "--dead-ticks".into(),
                o.hs_dead_ticks.to_string(),
                "--segment-mb".into(),
                o.segment_mb.to_string(),
            ];
            if i == 0 {
                args.push("--prefer-master".into());
            }
            if let Some(w) = witness {
                args.extend(["--witness".into(), w.to_string()]);
            }
            args.extend(o.center_args.iter().cloned());
            CenterNode {
                name: format!("center.{i}"),
                proc: None,
                hs: hs[i],
                link: link[i],
                admin: "127.0.0.1:0".parse().expect("addr"),
                args,
            }
        };
        self.center = vec![mk(0), mk(1)];
        for i in 0..2 {
            self.spawn_center(i)?;
        }
        Ok(())
    }

    fn spawn_center(&mut self, i: usize) -> Result<(), String> {
        let exe = self.bin_dir.join("gs-center");
        let echo = self.opts.echo;
        let n = &mut self.center[i];
        let mut proc = Proc::spawn(&n.name, &exe, &n.args, Stdio::inherit(), echo)?;
        let line = proc.wait_line("CENTER", Duration::from_secs(20))?;
        n.admin = field(&line, "admin=")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("{}: no admin address in {line:?}", n.name))?;
        n.proc = Some(proc);
        Ok(())
    }

    /// The admin addresses of the live center nodes.
    pub fn center_admins(&self) -> Vec<String> {
        self.center
            .iter()
            .filter(|n| n.proc.is_some())
            .map(|n| n.admin.to_string())
            .collect()
    }

    /// The center node that is a writable master, if exactly one is.
    pub fn center_master(&self) -> Option<usize> {
        let m: Vec<usize> = (0..self.center.len())
            .filter(|&i| self.center[i].proc.is_some())
            .filter(|&i| {
                let a = self.center[i].admin.to_string();
                matches!(gameserver::center::admin::call(&a, None, "GET", "/v1/role", None),
                    Ok((200, v)) if v["writable"] == true)
            })
            .collect();
        (m.len() == 1).then(|| m[0])
    }

    /// Waits until the center has a master with a connected standby.
    pub fn wait_center(&self, timeout: Duration) -> Result<usize, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(m) = self.center_master() {
                let a = self.center[m].admin.to_string();
                if let Ok((200, v)) =
                    gameserver::center::admin::call(&a, None, "GET", "/v1/role", None)
                {
                    if v["slave_connected"] == true {
                        return Ok(m);
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the center has no master with a connected standby after {timeout:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// An admin call to the center's master (method, path, JSON body).
    pub fn center_admin(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, serde_json::Value), String> {
        gameserver::center::admin::call_master(
            &self.center_admins(),
            Some(CENTER_ADMIN_SECRET),
            method,
            path,
            body,
        )
    }

    /// SIGKILLs the center's master; returns its index.
    pub fn kill_center_master(&mut self) -> Result<usize, String> {
        let m = self
            .center_master()
            .ok_or_else(|| "the center has no single master".to_string())?;
        let mut proc = self.center[m].proc.take().expect("a master is running");
        proc.kill9();
        let _ = proc.wait_exit(Duration::from_secs(10));
        Ok(m)
    }

    /// Starts a stopped center node again (same directory and addresses).
    pub fn restart_center(&mut self, i: usize) -> Result<(), String> {
        if self.center[i].proc.is_some() {
            return Err(format!("center node {i} is running"));
        }
        self.spawn_center(i)
    }

    fn start_gateway(&mut self, g: usize) -> Result<(), String> {
        let o = &self.opts;
        let mut args: Vec<String> = vec![
            "--tcp".into(),
            "127.0.0.1:0".into(),
            "--ws".into(),
            "127.0.0.1:0".into(),
            "--secret".into(),
            o.secret.clone(),
            "--zone".into(),
            o.zone.to_string(),
            "--heartbeat-ms".into(),
            o.gateway_heartbeat_ms.to_string(),
        ];
        for p in &self.pairs {
            args.push("--pair".into());
            args.push(format!(
                "{}-{}@{},{}",
                p.first_room,
                p.first_room + p.rooms - 1,
                p.nodes[0].link,
                p.nodes[1].link
            ));
        }
        if let Some(b) = self.balancer_addr {
            args.extend(["--balancer".into(), b.to_string()]);
        }
        if !self.center.is_empty() {
            let links: Vec<String> = self.center.iter().map(|n| n.link.to_string()).collect();
            args.extend(["--center".into(), links.join(",")]);
        }
        let (noise_key, cert, cert_key) = gateway_keys(&o.dir)?;
        for (flag, v) in [
            ("--tcp-noise", "127.0.0.1:0".to_string()),
            ("--noise-key", noise_key.display().to_string()),
            ("--wss", "127.0.0.1:0".to_string()),
            ("--tls-cert", cert.display().to_string()),
            ("--tls-key", cert_key.display().to_string()),
        ] {
            args.extend([flag.to_string(), v]);
        }
        args.extend(o.gateway_args.iter().cloned());
        let exe = self.bin_dir.join("gs-gateway");
        let mut proc = Proc::spawn(
            &format!("gateway{g}"),
            &exe,
            &args,
            Stdio::inherit(),
            o.echo,
        )?;
        let line = proc.wait_line("gateway listening", Duration::from_secs(20))?;
        let tcp = field(&line, "tcp=")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("gateway: no tcp address in {line:?}"))?;
        let ws = field(&line, "ws=").and_then(|a| a.parse().ok());
        let noise = field(&line, "noise=").and_then(|a| a.parse().ok());
        let noise_public = field(&line, "noise_public=")
            .and_then(|k| gameserver::proto::noise::key_from_hex(k).ok());
        let wss = field(&line, "wss=").and_then(|a| a.parse().ok());
        self.gateways.push(GatewayProc {
            proc,
            tcp,
            ws,
            noise,
            noise_public,
            wss,
            tls_cert: cert,
        });
        Ok(())
    }

    fn start_login(&mut self) -> Result<(), String> {
        // Accounts in a SQLite file of the cluster's dir.
        std::fs::create_dir_all(&self.opts.dir).map_err(|e| format!("login: {e}"))?;
        let db = format!("sqlite:{}", self.opts.dir.join("accounts.db").display());
        let store = gameserver::accounts::open(&db).map_err(|e| format!("login: {e}"))?;
        let mut cfg = gameserver::login::LoginConfig::new(
            "127.0.0.1:0".parse().expect("addr"),
            self.opts.secret.as_bytes().to_vec(),
            self.opts.zone,
            store,
        );
        cfg.gateways = self
            .gateways
            .iter()
            .map(|g| gameserver::login::GatewayAddr {
                tcp: g.tcp,
                ws: g.ws,
            })
            .collect();
        cfg.balancer = self.balancer_addr.into_iter().collect();
        cfg.rate_per_s = 10_000;
        // One machine's bots all log in from 127.0.0.1.
        cfg.limits.addr_burst = 10_000;
        cfg.limits.addr_per_s = 10_000.0;
        let l = self
            .rt
            .block_on(tokio::net::TcpListener::bind(cfg.listen))
            .map_err(|e| format!("login: {e}"))?;
        self.login_addr = l.local_addr().map_err(|e| e.to_string())?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.rt.spawn(gameserver::login::serve(cfg, l, async {
            let _ = rx.await;
        }));
        self.login_stop = Some(tx);
        Ok(())
    }

    /// A token for a player, signed with the cluster's secret.
    pub fn token(&self, player: u64, name: &str) -> String {
        gameserver::token::mint(
            self.opts.secret.as_bytes(),
            &gameserver::token::Claims {
                player,
                zone: self.opts.zone,
                expires_ms: gameserver::token::now_ms() + 24 * 3600 * 1000,
                name: name.to_string(),
                kind: 0,
            },
        )
    }

    /// `ROLE` of each live node of a pair: (node index, answer).
    pub fn roles(&self, p: usize) -> Vec<(usize, String)> {
        (0..2)
            .filter(|&i| self.pairs[p].nodes[i].proc.is_some())
            .filter_map(|i| {
                admin(self.pairs[p].nodes[i].admin, "ROLE")
                    .ok()
                    .map(|r| (i, r))
            })
            .collect()
    }

    /// The node that is a writable master, if exactly one is.
    pub fn master(&self, p: usize) -> Option<usize> {
        let m: Vec<usize> = self
            .roles(p)
            .into_iter()
            .filter(|(_, r)| r.starts_with("ROLE master") && r.ends_with(" 1"))
            .map(|(i, _)| i)
            .collect();
        (m.len() == 1).then(|| m[0])
    }

    /// Waits until the pair has a master and a connected standby.
    pub fn wait_pair(&self, p: usize, timeout: Duration) -> Result<usize, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(m) = self.master(p) {
                let st = admin(self.pairs[p].nodes[m].admin, "STATS").unwrap_or_default();
                if st.contains("\"slave_connected\":true") {
                    return Ok(m);
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "pair {p}: no master with a connected standby after {timeout:?}: {:?}",
                    self.roles(p)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the pair's master; returns its index.
    pub fn kill_master(&mut self, p: usize) -> Result<usize, String> {
        let m = self
            .master(p)
            .ok_or_else(|| format!("pair {p} has no single master: {:?}", self.roles(p)))?;
        let mut proc = self.pairs[p].nodes[m]
            .proc
            .take()
            .expect("a master is running");
        proc.kill9();
        let _ = proc.wait_exit(Duration::from_secs(10));
        Ok(m)
    }

    /// Starts a stopped node again (same directory and addresses).
    pub fn restart(&mut self, p: usize, i: usize) -> Result<(), String> {
        if self.pairs[p].nodes[i].proc.is_some() {
            return Err(format!("pair {p} node {i} is running"));
        }
        self.spawn_node(p, i)
    }

    /// Planned switchover of a pair: the master hands over to its standby.
    pub fn switchover(&self, p: usize) -> Result<usize, String> {
        let m = self
            .master(p)
            .ok_or_else(|| format!("pair {p} has no single master"))?;
        let r = admin(self.pairs[p].nodes[m].admin, "SWITCHOVER")?;
        if r != "OK" {
            return Err(format!("pair {p} switchover: {r}"));
        }
        Ok(m)
    }

    /// The master's `STATS` JSON of a pair.
    pub fn stats(&self, p: usize) -> Result<serde_json::Value, String> {
        let m = self
            .master(p)
            .ok_or_else(|| format!("pair {p} has no single master"))?;
        let s = admin(self.pairs[p].nodes[m].admin, "STATS")?;
        serde_json::from_str(&s).map_err(|e| format!("STATS: {e}: {s}"))
    }

    /// Every room of a pair as its master holds it (JSON, see `roomserver::snapshot_json`).
    pub fn rooms(&self, p: usize) -> Result<serde_json::Value, String> {
        let m = self
            .master(p)
            .ok_or_else(|| format!("pair {p} has no single master"))?;
        let s = admin(self.pairs[p].nodes[m].admin, "ROOMS")?;
        serde_json::from_str(&s).map_err(|e| format!("ROOMS: {e}"))
    }

    /// Pids of every child process (gateways, room servers).
    /// SIGKILLs every process of the cluster at once (room pairs, center
    /// pair, gateways; a power cut of the servers, not of the machine):
    /// signals all first, then reaps them.
    /// Returns their names.
    pub fn kill_all(&mut self) -> Vec<String> {
        let mut procs: Vec<&mut Proc> = self
            .pairs
            .iter_mut()
            .flat_map(|p| p.nodes.iter_mut())
            .filter_map(|n| n.proc.as_mut())
            .chain(self.center.iter_mut().filter_map(|n| n.proc.as_mut()))
            .chain(self.gateways.iter_mut().map(|g| &mut g.proc))
            .collect();
        for p in &procs {
            p.signal(libc::SIGKILL);
        }
        for p in &mut procs {
            let _ = p.wait_exit(Duration::from_secs(10));
        }
        procs.iter().map(|p| p.name.clone()).collect()
    }

    pub fn pids(&self) -> Vec<(String, u32)> {
        let mut v: Vec<(String, u32)> = self
            .pairs
            .iter()
            .flat_map(|p| p.nodes.iter())
            .filter_map(|n| n.proc.as_ref().map(|pr| (n.name.clone(), pr.pid())))
            .collect();
        v.extend(
            self.gateways
                .iter()
                .map(|g| (g.proc.name.clone(), g.proc.pid())),
        );
        v.extend(
            self.center
                .iter()
                .filter_map(|n| n.proc.as_ref().map(|pr| (n.name.clone(), pr.pid()))),
        );
        v
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(tx) = self.login_stop.take() {
            let _ = tx.send(());
        }
        // Children are killed by their Proc's Drop (by pid: only what we started).
        self.gateways.clear();
        self.pairs.clear();
        self.center.clear();
        if let Some(b) = self.balancer.take() {
            self.rt.block_on(b.shutdown());
        }
    }
}
