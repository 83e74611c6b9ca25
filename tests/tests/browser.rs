//! The H5 client (`gameserver/web/`) in a real browser: headless Chromium
//! (Debian's `/usr/bin/chromium`) driven by Playwright (`playwright-core`,
//! no browser of its own) from `tests/browser/play.mjs`, against a local
//! cluster whose login server serves the page.
//!
//! The script prints what it needs on stdout (`STEP`, `KILL_MASTER`,
//! `RESTART`, `CHECK {json}`, `DONE`) and reads the answers on stdin, so
//! this side SIGKILLs the room-server master at the moment the script picks
//! and compares what the pages show with what the master holds. Screenshots
//! go to `target/browser-artifacts/`. Without chromium or the npm packages
//! the tests fail (they do not skip) and say to run `scripts/setup.sh`.
//!
//! `js_codec_matches_the_rust_types` runs the Node unit test of
//! `gameserver/web/proto.js` on bytes and JSON made here from the Rust
//! types, so the JS codec cannot drift from `gameserver::proto` silently.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use gameserver::accounts::{Activity, PlayerData, PlayerRecord};
use gameserver::proto::frame::{Frame, Kind};
use gameserver::proto::msg::{self, *};
use serde_json::{json, Value};
use tools::gscluster::{Cluster, ClusterOpts};

const CHROMIUM: &str = "/usr/bin/chromium";
/// The whole browser scenario, at most (it takes well under a minute).
const BROWSER_DEADLINE: Duration = Duration::from_secs(240);
/// The codec's Node test, at most.
const CODEC_DEADLINE: Duration = Duration::from_secs(60);
/// An answer to one of the script's questions (a kill, a restart), at most.
const STEP: Duration = Duration::from_secs(30);
/// The script's exit after DONE (closing Chromium), at most.
const EXIT_WAIT: Duration = Duration::from_secs(20);
/// The room the script plays in.
const ROOM: u64 = 1;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

fn artifacts() -> PathBuf {
    let d = root().join("target").join("browser-artifacts");
    std::fs::create_dir_all(&d).expect("create target/browser-artifacts");
    d
}

/// Node, Chromium and the npm packages, or a failure that says how to get them.
fn require_browser_tools() {
    let web = root().join("gameserver/web");
    let mut missing = Vec::new();
    if Command::new("node").arg("--version").output().is_err() {
        missing.push("node (Debian package nodejs)".to_string());
    }
    if !Path::new(CHROMIUM).exists() {
        missing.push(format!("{CHROMIUM} (Debian package chromium)"));
    }
    if !web
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        missing.push(format!("{}/node_modules (npm ci there)", web.display()));
    }
    assert!(
        missing.is_empty(),
        "the browser tests need {}: run scripts/setup.sh",
        missing.join(", ")
    );
}

/// A child in its own process group, killed with the whole group (the
/// script's Chromium included) when dropped: only what this test started.
struct Group {
    child: Child,
}

impl Group {
    fn spawn(cmd: &mut Command) -> Group {
        let child = cmd
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Group { child }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let pgid = self.child.id() as i32;
        // SAFETY: signals the process group this test created for its child.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Lines of a reader, through a channel (for reading with a deadline).
fn lines_of(r: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_exit(child: &mut Child, deadline: Instant) -> Option<std::process::ExitStatus> {
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------- the codec

/// A payload case: the value as serde_json renders it (what proto.js's
/// values look like) and its postcard bytes.
macro_rules! case {
    ($ty:literal, $v:expr $(,)?) => {{
        let v = $v;
        json!({ "type": $ty, "json": serde_json::to_value(v).expect("to JSON"), "hex": hex(&msg::encode(v)) })
    }};
}

/// Values of every payload type, with the edges of their integers.
fn codec_cases() -> Vec<Value> {
    let record = PlayerRecord {
        games: 3,
        wins: 2,
        losses: 1,
        draws: 0,
        rating: -17,
        coins: -1_000_000_000_000,
    };
    let data = PlayerData {
        record,
        activity: Activity {
            moves: 1 << 40,
            auto_moves: 1,
            chat_lines: 300,
            rooms_entered: 16_384,
            last_seen_ms: 1_760_000_000_123,
        },
    };
    let big = (1u64 << 53) - 1;
    let game = GameView {
        game_no: u32::MAX,
        players: vec![1, big],
        moves: vec![(0, vec![7, 7], false), (1, vec![14, 0], true)],
        turn: 0,
        turn_ms: 15_000,
        outcome: Some(Outcome::Win {
            seat: 1,
            player: big,
            reason: WinReason::Forfeit,
        }),
    };
    let snapshot = RoomSnapshot {
        room: 1,
        name: "Room 1 — 五子棋".into(),
        game: "gomoku".into(),
        seq: 1 << 33,
        capacity: 400,
        members: vec![
            MemberView {
                player: 1,
                name: "ann".into(),
                seat: Some((0, 1)),
                watching: None,
                wins: 1,
                losses: 2,
                draws: 3,
                games: 6,
                rating: 1216,
                coins: 1010,
            },
            MemberView {
                player: big,
                name: String::new(),
                seat: None,
                watching: Some(u16::MAX),
                wins: 0,
                losses: 0,
                draws: 0,
                games: 0,
                rating: i32::MIN,
                coins: i64::from(i32::MAX) * 4,
            },
        ],
        tables: vec![
            TableView {
                table: 0,
                seats: vec![Some(1), None],
                ready: vec![true, false],
                game: Some(game.clone()),
            },
            TableView {
                table: 1,
                seats: vec![None, None],
                ready: vec![false, false],
                game: None,
            },
        ],
    };
    let requests = vec![
        Request::Rooms,
        Request::Enter { room: 300 },
        Request::Leave { room: u32::MAX },
        Request::Sit {
            room: 1,
            table: 127,
            seat: 255,
        },
        Request::Stand { room: 1 },
        Request::Ready { room: 128 },
        Request::Move {
            room: 1,
            table: 0,
            mv: vec![14, 3],
        },
        Request::Chat {
            room: 1,
            table: Some(3),
            text: "héllo, 桌".into(),
        },
        Request::Chat {
            room: 1,
            table: None,
            text: String::new(),
        },
        Request::Spectate {
            room: 1,
            table: Some(0),
        },
        Request::Spectate {
            room: 1,
            table: None,
        },
        Request::Snapshot { room: 2 },
    ];
    let events = vec![
        RoomEvent::Entered {
            player: 7,
            name: "bob".into(),
            data,
        },
        RoomEvent::Left { player: big },
        RoomEvent::Sat {
            table: 300,
            seat: 1,
            player: 2,
        },
        RoomEvent::Stood {
            table: 0,
            seat: 0,
            player: 2,
        },
        RoomEvent::Ready { table: 1, seat: 1 },
        RoomEvent::Started {
            table: 0,
            game_no: 2,
            players: vec![1, 2],
            turn_ms: 60_000,
        },
        RoomEvent::Moved {
            table: 0,
            seat: 1,
            mv: vec![0, 14],
            auto: true,
        },
        RoomEvent::Ended {
            table: 0,
            game_no: 2,
            outcome: Outcome::Draw,
            moves: 225,
            records: vec![(1, record), (2, PlayerRecord::default())],
        },
        RoomEvent::Ended {
            table: 0,
            game_no: 3,
            outcome: Outcome::Win {
                seat: 0,
                player: 1,
                reason: WinReason::Rule,
            },
            moves: 9,
            records: vec![],
        },
        RoomEvent::Chat {
            player: 1,
            table: Some(0),
            text: "gg".into(),
        },
        RoomEvent::Spectating {
            player: 1,
            table: None,
        },
    ];
    let mut out: Vec<Value> = requests.iter().map(|r| case!("Request", r)).collect();
    // Every error code there is: decoded by index until postcard refuses.
    for i in 0u8..=127 {
        let Ok(code) = msg::decode::<ErrorCode>(&[i]) else {
            break;
        };
        out.push(case!("ErrorCode", &code));
        out.push(case!(
            "Reply",
            &Reply::Err(Fail::new(code, format!("code {i}")))
        ));
    }
    let answers = vec![
        Answer::Rooms(vec![
            RoomInfo {
                id: 1,
                name: "Room 1".into(),
                game: "gomoku".into(),
                online: 2,
                capacity: 400,
            },
            RoomInfo {
                id: 99,
                name: "大厅".into(),
                game: "gomoku".into(),
                online: 0,
                capacity: u32::MAX,
            },
        ]),
        Answer::Entered(snapshot.clone()),
        Answer::Done {
            room: 1,
            seq: 1 << 40,
        },
        Answer::Snapshot(snapshot.clone()),
        Answer::Ack,
    ];
    for a in &answers {
        out.push(case!("Answer", a));
        out.push(case!("Reply", &Reply::Ok(a.clone())));
    }
    for e in &events {
        out.push(case!("RoomEvent", e));
        out.push(case!(
            "Push",
            &Push::Event {
                room: 1,
                seq: 129,
                event: e.clone(),
            },
        ));
    }
    for to in [
        NoticeTo::All,
        NoticeTo::Channel(70_000),
        NoticeTo::Players,
        NoticeTo::Private,
    ] {
        out.push(case!(
            "Push",
            &Push::Notice(Notice {
                from: 0,
                name: "system".into(),
                to,
                text: "maintenance at 03:00".into(),
                at_ms: 1_760_000_000_000,
            }),
        ));
    }
    out.push(case!("Push", &Push::Snapshot(snapshot.clone())));
    out.push(case!(
        "Push",
        &Push::Queued {
            position: 3,
            of: 1000,
            heartbeat_ms: 1000,
        },
    ));
    out.push(case!(
        "Auth",
        &Auth {
            token: "a.b".repeat(100),
            client_version: PROTOCOL_VERSION,
            features: msg::FEATURES_ALL,
        },
    ));
    out.push(case!(
        "Welcome",
        &Welcome {
            player: big,
            name: "ann".into(),
            session: 1 << 50,
            heartbeat_ms: 1000,
            dead_ticks: 5,
            server_time_ms: 1_760_000_000_000,
        },
    ));
    out.push(case!(
        "Pong",
        &Pong {
            client_time_ms: 1_760_000_000_001,
            rtt_ms: 70_000,
        },
    ));
    out.push(case!(
        "Bye",
        &Bye {
            code: ErrorCode::HeartbeatTimeout,
            message: "silent".into(),
        },
    ));
    for c in [
        CenterRequest::Subscribe { channel: 1 },
        CenterRequest::Unsubscribe { channel: 2 },
        CenterRequest::Say {
            to: SayTo::Channel(1),
            text: "hi".into(),
        },
        CenterRequest::Say {
            to: SayTo::Player(big),
            text: "psst".into(),
        },
    ] {
        out.push(case!("CenterRequest", &c));
    }
    out.push(case!("GameView", &game));
    out.push(case!("PlayerData", &data));
    out
}

fn frame_cases() -> Vec<Value> {
    let ping = Frame::new(Kind::Ping, 0, 1_760_000_000_000, Default::default());
    let req = Frame::new(
        Kind::Request,
        u32::MAX,
        0,
        msg::encode(&Request::Enter { room: 300 }).into(),
    );
    let reply = Frame::new(
        Kind::Reply,
        7,
        (1 << 53) - 1,
        msg::encode::<Reply>(&Ok(Answer::Done { room: 1, seq: 2 })).into(),
    );
    let push = Frame::new(
        Kind::Push,
        0,
        42,
        msg::encode(&Push::Queued {
            position: 1,
            of: 2,
            heartbeat_ms: 1000,
        })
        .into(),
    );
    let mut out: Vec<Value> = [ping, req, reply, push]
        .iter()
        .map(|f| {
            json!({
                "kind": f.kind as u8, "flags": f.flags, "seq": f.seq, "time_ms": f.time_ms,
                "payload": hex(&f.payload), "hex": hex(&f.to_bytes()),
            })
        })
        .collect();
    // A room list as the gateway compresses it (deflate-raw, flag bit 0).
    let rooms: Vec<RoomInfo> = (1..=40)
        .map(|id| RoomInfo {
            id,
            name: format!("Room {id}"),
            game: "gomoku".into(),
            online: id * 3,
            capacity: 400,
        })
        .collect();
    let plain = Frame::new(
        Kind::Reply,
        9,
        1_760_000_000_000,
        msg::encode::<Reply>(&Ok(Answer::Rooms(rooms))).into(),
    );
    let packed = gameserver::proto::frame::compress_encoded(&plain.to_bytes())
        .expect("a room list compresses");
    let f = gameserver::proto::frame::decode_message(&packed, 1 << 20).expect("a frame");
    out.push(json!({
        "kind": f.kind as u8, "flags": f.flags, "seq": f.seq, "time_ms": f.time_ms,
        "payload": hex(&f.payload), "hex": hex(&packed), "plain": hex(&plain.payload),
    }));
    out
}

/// CRC32 (IEEE) check values; the frames' CRCs are crc32fast's.
fn crc_cases() -> Vec<Value> {
    vec![
        json!({ "hex": "", "crc": 0 }),
        json!({ "hex": hex(b"123456789"), "crc": 0xcbf4_3926u32 }),
    ]
}

/// The Node test of the JS codec, on what the Rust types encode now.
#[test]
fn js_codec_matches_the_rust_types() {
    require_browser_tools();
    let fixture = json!({
        "payloads": codec_cases(),
        "frames": frame_cases(),
        "crc": crc_cases(),
        "header_bytes": gameserver::proto::frame::HEADER_BYTES,
        "protocol_version": PROTOCOL_VERSION,
    });
    let path = artifacts().join("codec-fixture.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&fixture).unwrap()).expect("write the fixture");
    let web = root().join("gameserver/web");
    let mut node = Group::spawn(
        Command::new("node")
            .args(["--test", "test/"])
            .current_dir(&web)
            .env("GS_CODEC_FIXTURE", &path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let out = lines_of(node.child.stdout.take().expect("piped"));
    let err = lines_of(node.child.stderr.take().expect("piped"));
    let st = wait_exit(&mut node.child, Instant::now() + CODEC_DEADLINE);
    let text: Vec<String> = out.try_iter().chain(err.try_iter()).collect();
    let st = st.unwrap_or_else(|| {
        panic!(
            "the codec's Node test ran over {CODEC_DEADLINE:?}:\n{}",
            text.join("\n")
        )
    });
    assert!(
        st.success(),
        "gameserver/web/proto.js disagrees with gameserver::proto ({} cases in {}):\n{}",
        fixture["payloads"].as_array().unwrap().len(),
        path.display(),
        text.join("\n")
    );
}

// ---------------------------------------------------------------- the browser

fn cluster(dir: &Path) -> Cluster {
    let mut o = ClusterOpts::new(dir);
    o.pairs = 1;
    o.rooms_per_pair = 2;
    o.tables = 4;
    o.turn_ms = 60_000; // no timer moves: the pages play every move
    o.balancer = false;
    o.echo = false;
    // Three players online at most: the script's fourth page waits in the login queue.
    o.center_online_max = 3;
    Cluster::start(o).expect("cluster starts")
}

/// The master's last game at `table` of room 1: (game number, ended, moves).
fn server_game(cl: &Cluster, table: u64) -> Option<(u64, bool, Vec<Value>)> {
    let rooms = cl.rooms(0).ok()?;
    let room = rooms.as_array()?.iter().find(|r| r["room"] == ROOM)?;
    let t = room["tables"]
        .as_array()?
        .iter()
        .find(|t| t["table"] == table)?;
    let moves = t["moves"]
        .as_array()?
        .iter()
        .map(|m| m[1].clone())
        .collect();
    Some((t["game_no"].as_u64()?, t["ended"] == true, moves))
}

/// What the script says the pages show, against the master.
fn check(cl: &Cluster, claim: &Value) -> Result<(), String> {
    let table = claim["table"].as_u64().ok_or("CHECK without a table")?;
    let (game_no, ended, moves) =
        server_game(cl, table).ok_or("the master has no game at that table")?;
    if Some(game_no) != claim["game_no"].as_u64() {
        return Err(format!(
            "the master is at game {game_no}, the pages at {}",
            claim["game_no"]
        ));
    }
    if !ended {
        return Err(format!("the master's game {game_no} has not ended"));
    }
    let pages = claim["pages"].as_object().ok_or("CHECK without pages")?;
    for (name, shown) in pages {
        if shown.as_array() != Some(&moves) {
            return Err(format!(
                "page {name} shows moves {shown}, the master holds {}",
                Value::Array(moves.clone())
            ));
        }
    }
    Ok(())
}

fn answer(stdin: &mut ChildStdin, line: &str) {
    writeln!(stdin, "{line}")
        .and_then(|_| stdin.flush())
        .expect("write to the browser script");
}

/// Two pages meet at a table and play a game by clicking the board (a
/// third one watches); the next game survives a SIGKILL of the room-server
/// master unnoticed; in the third, each player's connection is cut (by the
/// page, and by the gateway's heartbeat rule) and the page reconnects into
/// its seat. Every game's moves, as each page shows them, are the master's.
/// Last, a fourth page waits in the center's login queue (its position
/// shown) until one of the three logs out.
#[test]
fn pages_play_through_a_failover_and_reconnects() {
    require_browser_tools();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut cl = cluster(dir.path());
    let profile = tempfile::tempdir().unwrap(); // Chromium's profile and temp files
    let login = format!("http://{}/", cl.login_addr);
    eprintln!(
        "browser test: cluster up in {:?}, page at {login}",
        started.elapsed()
    );
    let script = root().join("tests/browser/play.mjs");
    // README's picture: written when missing or asked for, so that a test
    // run does not change a committed file each time.
    let readme_shot = root().join("gameserver/web/screenshot.png");
    let readme_shot = (!readme_shot.exists() || std::env::var_os("GS_UPDATE_SCREENSHOT").is_some())
        .then_some(readme_shot);
    let mut node = Group::spawn(
        Command::new("node")
            .arg(&script)
            .args(["--login", &login])
            .arg("--artifacts")
            .arg(artifacts())
            .args(
                readme_shot
                    .iter()
                    .flat_map(|p| [std::ffi::OsStr::new("--readme-shot"), p.as_os_str()]),
            )
            .arg("--chromium")
            .arg(CHROMIUM)
            .env("TMPDIR", profile.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    );
    let mut stdin = node.child.stdin.take().expect("piped");
    let lines = lines_of(node.child.stdout.take().expect("piped"));
    let deadline = started + BROWSER_DEADLINE;
    let mut killed = None;
    let mut checks = 0;
    let mut failures = Vec::new();
    let mut done = false;
    while !done {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match lines.recv_timeout(left) {
            Ok(l) => l,
            Err(RecvTimeoutError::Timeout) => {
                panic!("the browser script ran over {BROWSER_DEADLINE:?}")
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let (cmd, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        match cmd {
            "STEP" => eprintln!("browser [{:>5.1}s] {rest}", started.elapsed().as_secs_f64()),
            "KILL_MASTER" => {
                let m = cl.kill_master(0).expect("SIGKILL the room-server master");
                eprintln!("browser: SIGKILLed room-server node {m}");
                killed = Some(m);
                answer(&mut stdin, "KILLED");
            }
            "RESTART" => {
                let m = killed.take().expect("RESTART after a KILL_MASTER");
                cl.restart(0, m).expect("restart the killed node");
                cl.wait_pair(0, STEP).expect("the pair is whole again");
                answer(&mut stdin, "RESTARTED");
            }
            "CHECK" => {
                let claim: Value = serde_json::from_str(rest).expect("CHECK {json}");
                checks += 1;
                match check(&cl, &claim) {
                    Ok(()) => answer(&mut stdin, "OK"),
                    Err(e) => {
                        answer(&mut stdin, &format!("MISMATCH {e}"));
                        failures.push(e);
                    }
                }
            }
            "DONE" => done = true,
            _ => eprintln!("browser script: {line}"),
        }
    }
    drop(stdin);
    let st = wait_exit(&mut node.child, deadline.min(Instant::now() + EXIT_WAIT));
    assert!(
        failures.is_empty(),
        "the pages and the master disagree: {failures:?}"
    );
    assert!(done, "the browser script ended before DONE: {st:?}");
    assert!(
        st.is_some_and(|s| s.success()),
        "the browser script failed: {st:?}"
    );
    assert_eq!(checks, 3, "three games checked against the master");
    for shot in ["hall.png", "game.png", "result.png", "queue.png"] {
        assert!(
            artifacts().join(shot).exists(),
            "no {shot} in target/browser-artifacts"
        );
    }
    eprintln!("browser test: done in {:?}", started.elapsed());
}
