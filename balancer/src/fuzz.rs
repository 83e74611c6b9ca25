//! Entry points for the fuzz targets (`balancer/fuzz/`, `cargo +nightly
//! fuzz run <target>`) and for `tests/fuzz_corpus.rs`, which replays the
//! committed corpus through the same functions on every `cargo test`.
//!
//! Each takes arbitrary bytes, feeds them to a decoder of outside bytes the
//! way the server (or client) does, and checks what must hold for any
//! input. Bad input must give an error; only a bug panics.
//!
//! | target | decoder |
//! |---|---|
//! | [`push_stream`] | a push stream's lines ([`crate::http::stream`]): framing, JSON, validation, apply, answers |
//! | [`json_body`] | request bodies the server parses (`POST /v1/status`) and the answers the client parses |
//! | [`hs_record`] | replicated entity records ([`crate::standby::decode`], [`crate::standby::decode_at`], [`crate::standby::load`]) |
//! | [`registry_op`] | [`RegistryOp::decode`], then applied |
//! | [`client_response`] | the client's HTTP/1.1 response reader |

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use crate::api::StreamReply;
use crate::config::{Config, ZoneConfig};
use crate::http::stream::STREAM_PROCESSES_MAX;
use crate::registry::{Changes, Registry, RegistryOp, StatusPush};
use crate::sink::NoSink;
use crate::state::Balancer;

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime starts");
}

fn config() -> Config {
    let zone = |id, cap| ZoneConfig {
        id,
        name: format!("z{id}"),
        version: "v1".into(),
        process_online_max: cap,
        spawn: None,
    };
    Config {
        listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        zones: vec![zone(1, 3), zone(2, 1000)],
        // Small, so inputs reach the limits.
        request_body_bytes_max: 1024,
        ..Config::default()
    }
}

fn balancer() -> Balancer {
    Balancer::for_fuzzing(config(), Arc::new(NoSink))
}

fn registry() -> Registry {
    let c = config();
    Registry::new(c.zone_specs(), c.limits())
}

/// Bytes a client writes on a push stream, then EOF.
pub fn push_stream(data: &[u8]) {
    let b = balancer();
    let mut io = tokio::io::join(data, Vec::new());
    let told = RUNTIME.with(|rt| rt.block_on(crate::http::stream::serve_lines(&b, 1, &mut io)));
    let (_, out) = io.into_inner();
    assert!(told.len() <= STREAM_PROCESSES_MAX);
    for line in out.split(|c| *c == b'\n').filter(|l| !l.is_empty()) {
        let reply: StreamReply = serde_json::from_slice(line).unwrap_or_else(|e| {
            panic!(
                "answer line {:?} is not a StreamReply: {e}",
                String::from_utf8_lossy(line)
            )
        });
        assert!(
            reply.error.is_some() || reply.status.is_some(),
            "an answer is a status or an error"
        );
    }
    assert!(
        out.is_empty() || out.ends_with(b"\n"),
        "answers are whole lines"
    );
    b.read(|r| {
        for (id, status) in &told {
            // (Gone when a later push took its endpoint over.)
            if let Some(p) = r.process(id) {
                assert_eq!(p.status, *status, "the status told is the registry's");
            }
        }
    });
}

/// A selector byte, then a body: 0 is `POST /v1/status` on a balancer (the
/// whole push path); the rest are the answers the client parses.
pub fn json_body(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    fn round_trip<T>(body: &[u8])
    where
        T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
    {
        if let Ok(v) = serde_json::from_slice::<T>(body) {
            let again = serde_json::to_vec(&v).expect("a parsed value serialises");
            let back: T = serde_json::from_slice(&again).expect("what it wrote parses");
            assert_eq!(back, v, "round trip");
        }
    }
    match which % 9 {
        0 => {
            let b = balancer();
            let before = b.read(Registry::clone);
            match crate::http::accept_push(&b, body) {
                Ok((id, status)) => {
                    let p = b
                        .read(|r| r.process(&id).cloned())
                        .expect("pushed, registered");
                    assert_eq!(p.status, status);
                }
                Err(_) => b.read(|r| assert_eq!(r, &before, "a refused push changes nothing")),
            }
            if let Ok(push) = serde_json::from_slice::<StatusPush>(body) {
                let again: StatusPush =
                    serde_json::from_slice(&serde_json::to_vec(&push).unwrap()).unwrap();
                assert_eq!(again, push, "round trip");
                let _ = push.validate();
            }
        }
        1 => round_trip::<crate::api::PushReply>(body),
        2 => round_trip::<crate::api::PickReply>(body),
        3 => round_trip::<crate::api::ProcessView>(body),
        4 => round_trip::<crate::api::ZoneView>(body),
        5 => round_trip::<Vec<crate::api::ZoneSummary>>(body),
        6 => round_trip::<crate::api::RoleReply>(body),
        7 => round_trip::<crate::api::ErrorBody>(body),
        _ => round_trip::<StreamReply>(body),
    }
}

/// `{ op u8 | key_len u8 | key | value }`, as an hs record arrives on a
/// standby (op 1 put, anything else delete), then a snapshot-style restore
/// of the same key (a put).
pub fn hs_record(data: &[u8]) {
    let [op, key_len, rest @ ..] = data else {
        return;
    };
    let key_len = (*key_len as usize).min(rest.len());
    let (key, value) = rest.split_at(key_len);
    let op = if *op == 1 {
        hs::Op::Put
    } else {
        hs::Op::Delete
    };
    let mut r = registry();
    for now_ms in [0, 1_700_000_000_000, u64::MAX] {
        if let Ok(e) = crate::standby::decode_at(key, op, value, now_ms) {
            let before = r.clone();
            if crate::standby::load(&mut r, e).is_err() {
                assert_eq!(r, before, "a refused entity changes nothing");
            }
        }
    }
    if let Ok(e) = crate::standby::decode(key, hs::Op::Put, value) {
        let _ = crate::standby::load(&mut r, e);
    }
    // The replica stays usable: the master's ops still apply.
    let _ = r.apply(&RegistryOp::Tick { now_ms: 1 });
    let _ = r.apply(&RegistryOp::Pick { now_ms: 1, zone: 1 });
}

/// Encoded op bytes ([`RegistryOp::decode`]); a decoded op is applied, and
/// what the master would publish for it decodes on a replica.
pub fn registry_op(data: &[u8]) {
    let Ok(op) = RegistryOp::decode(data) else {
        return;
    };
    assert_eq!(
        RegistryOp::decode(&op.encode()).expect("an encoded op decodes"),
        op,
        "round trip"
    );
    let mut r = registry();
    let before = r.clone();
    match r.apply(&op) {
        Err(_) => assert_eq!(r, before, "a refused op changes nothing"),
        Ok(out) => {
            let at_ms = op.now_ms().unwrap_or_default();
            let mut replica = registry();
            for (key, hs_op, value) in crate::standby::records(&Changes::of(&op, &out), &r, at_ms) {
                let e = crate::standby::decode(&key, hs_op, &value).expect("a record decodes");
                crate::standby::load(&mut replica, e).expect("a record loads");
            }
        }
    }
}

/// Bytes a balancer (or anything on its address) answers a client with.
pub fn client_response(data: &[u8]) {
    let mut reader = tokio::io::BufReader::new(data);
    let _ = RUNTIME.with(|rt| rt.block_on(crate::client::read_response(&mut reader)));
}
