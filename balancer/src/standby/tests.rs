//! The entity records round-trip and rebuild the master's registry.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use hs::Op;
use testkit::Rng;

use crate::registry::{Changes, Millis, Registry, ZoneId};
use crate::registry::{Outcome, RegistryLimits, RegistryOp, SpawnSpec, StatusReport, ZoneSpec};

use super::*;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn registry() -> Registry {
    let zone = |id, spawn: bool| ZoneSpec {
        id,
        name: format!("z{id}"),
        version: "v1".into(),
        process_online_max: 3,
        spawn: spawn.then_some(SpawnSpec {
            host: LOCAL,
            port_min: 7000,
            port_max: 7003,
        }),
    };
    Registry::new(
        vec![zone(1, true), zone(2, false)],
        RegistryLimits::default(),
    )
}

/// Ops over few ids, ports and zones, so endpoints collide, processes
/// move, spawns get replaced, reservations fill zones and expire.
fn random_op(rng: &mut Rng, now_ms: &mut Millis, next_token: u64) -> RegistryOp {
    *now_ms += rng.below(1500);
    let ids = ["a", "b", "c", "d", "e", "spawn-1-7000", "spawn-1-7001"];
    let id = ids[rng.below(ids.len() as u64) as usize].to_string();
    let now_ms = *now_ms;
    match rng.below(12) {
        0..=3 => RegistryOp::Push {
            now_ms,
            report: StatusReport {
                id,
                zone: 1 + rng.below(2) as ZoneId,
                host: LOCAL,
                port: 7000 + rng.below(5) as u16,
                online: rng.below(4) as u32,
                used_memory_mb: rng.below(100),
                version: "v1".into(),
                pid: Some(rng.below(1000) as u32),
                claimed: (0..rng.below(3))
                    .map(|_| rng.below(next_token + 1))
                    .collect(),
            },
        },
        4 | 5 => RegistryOp::Pick {
            now_ms,
            zone: 1 + rng.below(2) as ZoneId,
        },
        6 => RegistryOp::Tick {
            now_ms: now_ms + rng.below(8000),
        },
        7 => RegistryOp::ProbeFailed { now_ms, id },
        8 => RegistryOp::ProbeOk { now_ms, id },
        9 => match rng.below(2) {
            0 => RegistryOp::Drain { now_ms, id },
            _ => RegistryOp::Undrain { now_ms, id },
        },
        10 => match rng.below(3) {
            0 => RegistryOp::SpawnFailed { now_ms, zone: 1 },
            _ => RegistryOp::SpawnStarted {
                now_ms,
                zone: 1,
                port: 7000 + rng.below(4) as u16,
                pid: rng.below(1000) as u32,
            },
        },
        _ => RegistryOp::Forget { id },
    }
}

/// A registry rebuilt from "latest value per key", as an hs snapshot restores it.
fn from_snapshot(kv: &BTreeMap<Vec<u8>, Vec<u8>>) -> Registry {
    let mut r = registry();
    for (k, v) in kv {
        let e = decode(k, Op::Put, v).expect("snapshot value decodes");
        load(&mut r, e).expect("snapshot value loads");
    }
    r
}

#[test]
fn replicated_entities_rebuild_the_master_registry_for_random_ops() {
    let mut applied_ops = 0;
    for seed in 1..=150u64 {
        let mut rng = Rng::new(seed);
        let mut master = registry();
        let mut replica = registry();
        let mut kv: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut now_ms = 1_000_000;
        for step in 0..250 {
            let op = random_op(&mut rng, &mut now_ms, master.next_token());
            let Ok(out): Result<Outcome, _> = master.apply(&op) else {
                continue;
            };
            applied_ops += 1;
            let recs = records(
                &Changes::of(&op, &out),
                &master,
                op.now_ms().unwrap_or(now_ms),
            );
            if let Some(picked) = &out.picked {
                // A master that dies after any prefix of a pick's
                // records leaves a standby that never reuses its token.
                for k in 1..recs.len() {
                    let mut cut = replica.clone();
                    for (key, hs_op, value) in &recs[..k] {
                        load(&mut cut, decode(key, *hs_op, value).unwrap()).unwrap();
                    }
                    assert!(
                        cut.next_token() > picked.reservation,
                        "seed {seed} step {step}: after {k} of {} records the next token is {}, token {} was handed out",
                        recs.len(),
                        cut.next_token(),
                        picked.reservation
                    );
                }
            }
            for (key, hs_op, value) in recs {
                let e = decode(&key, hs_op, &value).expect("record decodes");
                load(&mut replica, e).expect("record loads");
                match hs_op {
                    Op::Put => kv.insert(key, value),
                    Op::Delete => kv.remove(&key),
                };
            }
            assert_eq!(
                replica, master,
                "seed {seed} step {step}: replica diverged after {op:?}"
            );
            if step % 50 == 49 {
                assert_eq!(
                    from_snapshot(&kv),
                    master,
                    "seed {seed} step {step}: snapshot differs"
                );
            }
        }
        assert_eq!(
            from_snapshot(&kv),
            master,
            "seed {seed}: final snapshot differs"
        );
    }
    assert!(
        applied_ops > 10_000,
        "the generator makes mostly valid ops: {applied_ops}"
    );
}

fn report(id: &str, port: u16) -> StatusReport {
    StatusReport {
        id: id.into(),
        zone: 1,
        host: LOCAL,
        port,
        online: 0,
        used_memory_mb: 0,
        version: String::new(),
        pid: None,
        claimed: vec![],
    }
}

/// The master dies after publishing a pick's first record: the standby
/// that promotes with only that record must not hand the same token out
/// again (a game server would take one player's token for another's).
#[test]
fn a_failover_inside_a_pick_never_hands_its_token_out_again() {
    let mut master = registry();
    let mut standby = registry();
    let push = RegistryOp::Push {
        now_ms: 1,
        report: report("a", 7000),
    };
    let out = master.apply(&push).unwrap();
    for (key, hs_op, value) in records(&Changes::of(&push, &out), &master, 1) {
        load(&mut standby, decode(&key, hs_op, &value).unwrap()).unwrap();
    }
    let pick = RegistryOp::Pick { now_ms: 2, zone: 1 };
    let out = master.apply(&pick).unwrap();
    let handed_out = out.picked.as_ref().unwrap().reservation;
    let recs = records(&Changes::of(&pick, &out), &master, 2);
    // Only the first record reaches the standby before the master dies.
    let (key, hs_op, value) = &recs[0];
    load(&mut standby, decode(key, *hs_op, value).unwrap()).unwrap();
    // The standby promotes and serves the next pick.
    let again = standby
        .apply(&RegistryOp::Pick { now_ms: 3, zone: 1 })
        .unwrap();
    assert_ne!(
        again.picked.unwrap().reservation,
        handed_out,
        "token {handed_out} handed out twice across a failover"
    );
}

/// The master answers a pick (async: in its log only) and dies before any
/// of the pick's records reach the standby. The standby promotes at a newer
/// epoch and must not hand the same token out again: it starts its reign's
/// tokens above every token of an older epoch.
#[test]
fn a_pick_the_standby_never_received_is_not_reissued_after_failover() {
    let mut master = registry();
    let mut standby = registry();
    master.begin_reign(1);
    let push = RegistryOp::Push {
        now_ms: 1,
        report: report("a", 7000),
    };
    let out = master.apply(&push).unwrap();
    for (key, hs_op, value) in records(&Changes::of(&push, &out), &master, 1) {
        load(&mut standby, decode(&key, hs_op, &value).unwrap()).unwrap();
    }
    let out = master
        .apply(&RegistryOp::Pick { now_ms: 2, zone: 1 })
        .unwrap();
    let handed_out = out.picked.unwrap().reservation;
    // None of the pick's records reaches the standby; it promotes at epoch 2.
    standby.begin_reign(2);
    let again = standby
        .apply(&RegistryOp::Pick { now_ms: 3, zone: 1 })
        .unwrap()
        .picked
        .unwrap()
        .reservation;
    assert!(
        again > handed_out,
        "token {again} after failover, the lost pick had {handed_out}"
    );
    assert!(again < 1 << 53, "token {again} not exact in JSON");
}

/// Master and standby clocks disagree (the standby's wall clock is an
/// hour ahead, and each process's monotonic clock has its own origin):
/// a reservation and a push the master made keep their remaining time
/// on the standby that takes over, and a wall-clock step there changes
/// nothing.
#[test]
fn replicated_deadlines_keep_their_remaining_time_on_a_skewed_standby() {
    use crate::clock::{Clock, ManualTime};
    let master_time = Arc::new(ManualTime::new(5_000, 1_700_000_000_000));
    let standby_time = Arc::new(ManualTime::new(987_654, 1_700_000_000_000 + 3_600_000));
    let master_clock = Clock::with_source(master_time.clone());
    let standby_clock = Clock::with_source(standby_time.clone());
    let limits = RegistryLimits::default();
    let mut master = registry();
    let mut standby = registry();
    let publish = |master: &mut Registry, op: RegistryOp, standby: &mut Registry| {
        let out = master.apply(&op).unwrap();
        let at_ms = op.now_ms().unwrap();
        for (key, hs_op, value) in records(&Changes::of(&op, &out), master, at_ms) {
            let e = decode_at(&key, hs_op, &value, standby_clock.now_ms()).unwrap();
            load(standby, e).unwrap();
        }
    };
    let now = master_clock.now_ms();
    publish(
        &mut master,
        RegistryOp::Push {
            now_ms: now,
            report: report("a", 7000),
        },
        &mut standby,
    );
    publish(
        &mut master,
        RegistryOp::Pick {
            now_ms: now,
            zone: 1,
        },
        &mut standby,
    );
    // The master dies; the standby's wall clock is stepped back an hour
    // meanwhile (NTP corrects it). Two seconds pass.
    standby_time.step_wall(-3_600_000);
    master_time.advance(2_000);
    standby_time.advance(2_000);
    let out = standby.apply(&RegistryOp::Tick {
        now_ms: standby_clock.now_ms(),
    });
    let out = out.unwrap();
    assert_eq!(
        out.events,
        vec![],
        "nothing is due 2 s after the push and the pick"
    );
    let a = standby.process("a").unwrap();
    assert_eq!(a.status, crate::registry::Status::Running);
    assert_eq!(a.reservations.len(), 1, "the reservation holds for its ttl");
    // Once the ttl has passed on the standby's own clock, it expires.
    standby_time.advance(limits.reservation_ttl_ms - 2_000);
    let out = standby
        .apply(&RegistryOp::Tick {
            now_ms: standby_clock.now_ms(),
        })
        .unwrap();
    assert!(
        out.events
            .contains(&crate::registry::Event::ReservationsExpired {
                id: "a".into(),
                count: 1
            }),
        "{:?}",
        out.events
    );
}

#[test]
fn bad_records_are_refused() {
    assert!(matches!(
        decode(b"x/1", Op::Put, b"\x01{}"),
        Err(EntityError::Key(_))
    ));
    assert!(matches!(
        decode(b"t", Op::Put, b"{}"),
        Err(EntityError::Value { .. })
    ));
    assert!(matches!(
        decode(b"t", Op::Put, b"\x02 1"),
        Err(EntityError::Value { .. })
    ));
    assert!(matches!(
        decode(b"z/nope", Op::Put, b"\x01{}"),
        Err(EntityError::Key(_))
    ));
    let big = vec![1u8; VALUE_BYTES_MAX + 1];
    assert!(matches!(
        decode(b"p/a", Op::Put, &big),
        Err(EntityError::Value { .. })
    ));
    // A process record under another process's key.
    let mut r = registry();
    let op = RegistryOp::Push {
        now_ms: 1,
        report: StatusReport {
            id: "a".into(),
            zone: 1,
            host: LOCAL,
            port: 7000,
            online: 0,
            used_memory_mb: 0,
            version: String::new(),
            pid: None,
            claimed: vec![],
        },
    };
    let out = r.apply(&op).unwrap();
    let (_, _, value) = records(&Changes::of(&op, &out), &r, 1).remove(0);
    assert!(matches!(
        decode(b"p/b", Op::Put, &value),
        Err(EntityError::Value { .. })
    ));
    assert_eq!(
        decode(b"p/a", Op::Delete, b"").unwrap(),
        Entity::ProcessGone("a".into())
    );
    // A process of a zone this balancer's config lacks is refused, not half-loaded.
    let Entity::Process(mut p) = decode(b"p/a", Op::Put, &value).unwrap() else {
        panic!("a process")
    };
    p.zone = 9;
    let before = r.clone();
    assert!(load(&mut r, Entity::Process(p)).is_err());
    assert_eq!(r, before);
    let (k, o, v) = master_record("127.0.0.1:7700".parse().unwrap());
    assert_eq!(
        decode(&k, o, &v).unwrap(),
        Entity::Master {
            http: "127.0.0.1:7700".parse().unwrap()
        }
    );
}
