//! Unit tests of the pure registry, with explicit time.

use std::net::IpAddr;

use super::*;

const Z: ZoneId = 1;
const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn zone(cap: u32, spawn: bool) -> ZoneSpec {
    ZoneSpec {
        id: Z,
        name: "天上人间".into(),
        version: "v1.0.0".into(),
        process_online_max: cap,
        spawn: spawn.then_some(SpawnSpec {
            host: LOCAL,
            port_min: 7000,
            port_max: 7003,
        }),
    }
}

fn registry(cap: u32) -> Registry {
    Registry::new(vec![zone(cap, true)], RegistryLimits::default())
}

fn report(id: &str, port: u16, online: u32, mem: u64) -> StatusReport {
    StatusReport {
        id: id.into(),
        zone: Z,
        host: LOCAL,
        port,
        online,
        used_memory_mb: mem,
        version: "v1".into(),
        pid: None,
        claimed: vec![],
    }
}

fn push(r: &mut Registry, now_ms: Millis, rep: StatusReport) -> Outcome {
    r.apply(&RegistryOp::Push {
        now_ms,
        report: rep,
    })
    .expect("push accepted")
}

fn pick(r: &mut Registry, now_ms: Millis) -> Result<Picked, RegistryError> {
    r.apply(&RegistryOp::Pick { now_ms, zone: Z })
        .map(|o| o.picked.expect("pick outcome has a process"))
}

fn status(r: &Registry, id: &str) -> Status {
    r.process(id).expect("process exists").status
}

#[test]
fn first_push_registers_running() {
    let mut r = registry(10);
    let out = push(&mut r, 1000, report("a", 1, 0, 0));
    assert_eq!(
        out.events,
        vec![
            Event::Registered { id: "a".into() },
            Event::Running { id: "a".into() }
        ]
    );
    assert_eq!(status(&r, "a"), Status::Running);
}

#[test]
fn list_sorted_running_then_online_then_memory() {
    let mut r = registry(10);
    push(&mut r, 0, report("busy", 1, 5, 10));
    push(&mut r, 0, report("idle-big", 2, 1, 90));
    push(&mut r, 0, report("idle-small", 3, 1, 20));
    push(&mut r, 0, report("dead", 4, 0, 0));
    r.apply(&RegistryOp::ProbeFailed {
        now_ms: 1,
        id: "dead".into(),
    })
    .unwrap();
    let ids: Vec<&str> = r.sorted(Z).unwrap().iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["idle-small", "idle-big", "busy", "dead"]);
}

#[test]
fn pick_takes_least_loaded_and_reservations_spread() {
    let mut r = registry(10);
    push(&mut r, 0, report("a", 1, 3, 0));
    push(&mut r, 0, report("b", 2, 1, 0));
    // b has 1, a has 3: b, b (now 3 each, tie broken by id), a, b, ...
    let got: Vec<String> = (0..6).map(|_| pick(&mut r, 10).unwrap().id).collect();
    assert_eq!(got, ["b", "b", "a", "b", "a", "b"]);
    assert_eq!(r.process("a").unwrap().load(), 5);
    assert_eq!(r.process("b").unwrap().load(), 5);
}

#[test]
fn racing_picks_for_last_seats_do_not_overfill() {
    let mut r = registry(4);
    push(&mut r, 0, report("a", 1, 3, 0));
    push(&mut r, 0, report("b", 2, 3, 0));
    assert_eq!(pick(&mut r, 1).unwrap().id, "a");
    assert_eq!(pick(&mut r, 1).unwrap().id, "b");
    let err = pick(&mut r, 1).unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::NoCapacity {
                running: 2,
                starting: 0,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn reservations_expire_on_tick() {
    let mut r = registry(1);
    push(&mut r, 0, report("a", 1, 0, 0));
    let p = pick(&mut r, 0).unwrap();
    assert!(pick(&mut r, 1).is_err(), "the seat is reserved");
    push(&mut r, p.expires_ms - 2, report("a", 1, 0, 0));
    r.apply(&RegistryOp::Tick {
        now_ms: p.expires_ms - 1,
    })
    .unwrap();
    assert!(pick(&mut r, p.expires_ms - 1).is_err(), "not expired yet");
    let out = r
        .apply(&RegistryOp::Tick {
            now_ms: p.expires_ms,
        })
        .unwrap();
    assert!(out.events.contains(&Event::ReservationsExpired {
        id: "a".into(),
        count: 1
    }));
    assert!(pick(&mut r, p.expires_ms).is_ok());
}

#[test]
fn claims_release_reservations_explicitly_and_by_online_delta() {
    let mut r = registry(100);
    push(&mut r, 0, report("a", 1, 0, 0));
    let t1 = pick(&mut r, 0).unwrap().reservation;
    let _t2 = pick(&mut r, 0).unwrap().reservation;
    let _t3 = pick(&mut r, 0).unwrap().reservation;
    // One player presented t1 and one more joined without presenting: both
    // seats become online players, one reservation remains.
    let mut rep = report("a", 1, 2, 0);
    rep.claimed = vec![t1];
    push(&mut r, 100, rep);
    let p = r.process("a").unwrap();
    assert_eq!((p.online, p.reservations.len()), (2, 1));
    assert_eq!(p.load(), 3, "no seat counted twice or lost");
    // The online count going down claims nothing.
    push(&mut r, 200, report("a", 1, 1, 0));
    assert_eq!(r.process("a").unwrap().reservations.len(), 1);
}

#[test]
fn missed_pushes_stop_the_process() {
    let mut r = registry(10);
    let limits = r.limits().clone();
    push(&mut r, 0, report("a", 1, 0, 0));
    pick(&mut r, 0).unwrap();
    r.apply(&RegistryOp::Tick {
        now_ms: limits.push_timeout_ms,
    })
    .unwrap();
    assert_eq!(
        status(&r, "a"),
        Status::Running,
        "exactly at the timeout is still alive"
    );
    let out = r
        .apply(&RegistryOp::Tick {
            now_ms: limits.push_timeout_ms + 1,
        })
        .unwrap();
    assert!(out.events.contains(&Event::Stopped {
        id: "a".into(),
        reason: StopReason::MissedPushes,
        spawned_pid: None
    }));
    assert_eq!(status(&r, "a"), Status::Stopped);
    assert!(r.process("a").unwrap().reservations.is_empty());
    assert!(
        pick(&mut r, limits.push_timeout_ms + 2).is_err(),
        "a stopped process is never picked"
    );
    // It comes back when it pushes again (a hung process that recovered).
    push(&mut r, limits.push_timeout_ms + 3, report("a", 1, 0, 0));
    assert_eq!(status(&r, "a"), Status::Running);
}

#[test]
fn probe_failure_stops_and_late_push_waits_for_a_probe() {
    let mut r = registry(10);
    push(&mut r, 0, report("a", 1, 0, 0));
    push(&mut r, 0, report("b", 2, 5, 0));
    r.apply(&RegistryOp::ProbeFailed {
        now_ms: 10,
        id: "a".into(),
    })
    .unwrap();
    assert_eq!(status(&r, "a"), Status::Stopped);
    assert_eq!(pick(&mut r, 11).unwrap().id, "b");
    // A push sent before the process died arrives late.
    push(&mut r, 12, report("a", 1, 0, 0));
    assert_eq!(status(&r, "a"), Status::Starting);
    assert_eq!(
        pick(&mut r, 13).unwrap().id,
        "b",
        "unconfirmed process not picked"
    );
    assert!(
        r.probe_targets().iter().any(|t| t.id == "a" && t.confirms),
        "it is probed again"
    );
    r.apply(&RegistryOp::ProbeOk {
        now_ms: 14,
        id: "a".into(),
    })
    .unwrap();
    assert_eq!(status(&r, "a"), Status::Running);
    assert_eq!(pick(&mut r, 15).unwrap().id, "a");
}

#[test]
fn probe_ok_does_not_revive_a_stopped_process() {
    let mut r = registry(10);
    push(&mut r, 0, report("a", 1, 0, 0));
    r.apply(&RegistryOp::ProbeFailed {
        now_ms: 10,
        id: "a".into(),
    })
    .unwrap();
    r.apply(&RegistryOp::ProbeOk {
        now_ms: 11,
        id: "a".into(),
    })
    .unwrap();
    assert_eq!(status(&r, "a"), Status::Stopped, "only a push revives");
}

#[test]
fn drain_stops_picks_and_reports_when_empty() {
    let mut r = registry(10);
    push(&mut r, 0, report("a", 1, 2, 0));
    push(&mut r, 0, report("b", 2, 5, 0));
    let out = r
        .apply(&RegistryOp::Drain {
            now_ms: 1,
            id: "a".into(),
        })
        .unwrap();
    assert_eq!(out.status, Some(Status::Draining));
    assert!(out.events.is_empty(), "two players still on it");
    for _ in 0..4 {
        assert_eq!(pick(&mut r, 2).unwrap().id, "b");
    }
    let out = push(&mut r, 3, report("a", 1, 1, 0));
    assert_eq!(
        out.status,
        Some(Status::Draining),
        "pushes keep it draining"
    );
    let out = push(&mut r, 4, report("a", 1, 0, 0));
    assert_eq!(out.events, vec![Event::DrainComplete { id: "a".into() }]);
    let out = push(&mut r, 5, report("a", 1, 0, 0));
    assert!(out.events.is_empty(), "reported once");
    r.apply(&RegistryOp::Undrain {
        now_ms: 6,
        id: "a".into(),
    })
    .unwrap();
    assert_eq!(status(&r, "a"), Status::Running);
    assert_eq!(pick(&mut r, 7).unwrap().id, "a");
}

#[test]
fn drain_waits_for_reservations() {
    let mut r = registry(10);
    push(&mut r, 0, report("a", 1, 0, 0));
    let res = pick(&mut r, 0).unwrap();
    let out = r
        .apply(&RegistryOp::Drain {
            now_ms: 1,
            id: "a".into(),
        })
        .unwrap();
    assert!(out.events.is_empty(), "a player holds a reservation");
    push(&mut r, res.expires_ms - 1, report("a", 1, 0, 0));
    let out = r
        .apply(&RegistryOp::Tick {
            now_ms: res.expires_ms,
        })
        .unwrap();
    assert!(out
        .events
        .contains(&Event::DrainComplete { id: "a".into() }));
}

#[test]
fn restarted_process_replaces_its_endpoint() {
    let mut r = registry(10);
    push(&mut r, 0, report("mac-100", 1, 0, 0));
    r.apply(&RegistryOp::Drain {
        now_ms: 1,
        id: "mac-100".into(),
    })
    .unwrap();
    let out = push(&mut r, 2, report("mac-200", 1, 0, 0));
    assert!(out.events.contains(&Event::Replaced {
        old: "mac-100".into(),
        new: "mac-200".into(),
        old_status: Status::Draining
    }));
    assert!(r.process("mac-100").is_none());
    assert_eq!(
        status(&r, "mac-200"),
        Status::Running,
        "the new process is not draining"
    );
    assert_eq!(r.len(), 1);
}

#[test]
fn moving_endpoint_frees_the_old_one() {
    let mut r = registry(10);
    push(&mut r, 0, report("a", 1, 0, 0));
    push(&mut r, 1, report("a", 2, 0, 0));
    push(&mut r, 2, report("b", 1, 0, 0));
    assert!(r.process("a").is_some(), "b took port 1, which a left");
    assert_eq!(r.len(), 2);
}

#[test]
fn spawn_plan_limits() {
    let mut r = registry(1);
    let plan = r.spawn_plan(Z, 0).unwrap();
    assert_eq!(plan.ports, [7000, 7001, 7002, 7003]);
    r.apply(&RegistryOp::SpawnStarted {
        now_ms: 0,
        zone: Z,
        port: 7000,
        pid: 42,
    })
    .unwrap();
    assert_eq!(
        r.spawn_plan(Z, 10_000),
        Err(SpawnRefused::InFlight { zone: Z })
    );
    assert!(pick(&mut r, 1).is_err(), "starting is never picked");
    // The child reports with its own id on the allocated port.
    push(&mut r, 500, report("child-42", 7000, 0, 0));
    assert!(r.process("spawn-1-7000").is_none());
    let p = r.process("child-42").unwrap();
    assert_eq!(p.status, Status::Running);
    assert_eq!(
        p.spawned,
        Some(Spawned {
            pid: 42,
            started_ms: 0,
            reported: true
        })
    );
    assert_eq!(
        r.spawn_plan(Z, 1000),
        Err(SpawnRefused::RateLimited {
            zone: Z,
            retry_in_ms: 1000
        })
    );
    let plan = r.spawn_plan(Z, 2000).unwrap();
    assert_eq!(plan.ports, [7001, 7002, 7003], "port in use skipped");
    r.apply(&RegistryOp::SpawnFailed {
        now_ms: 2000,
        zone: Z,
    })
    .unwrap();
    assert!(
        matches!(r.spawn_plan(Z, 2001), Err(SpawnRefused::RateLimited { .. })),
        "a failure counts against the rate"
    );

    let mut r = Registry::new(
        vec![zone(1, true)],
        RegistryLimits {
            spawned_processes_max: 1,
            ..RegistryLimits::default()
        },
    );
    r.apply(&RegistryOp::SpawnStarted {
        now_ms: 0,
        zone: Z,
        port: 7000,
        pid: 42,
    })
    .unwrap();
    push(&mut r, 1, report("child-42", 7000, 0, 0));
    assert_eq!(
        r.spawn_plan(Z, 100_000),
        Err(SpawnRefused::LimitReached { spawned: 1 })
    );

    let r = Registry::new(vec![zone(1, false)], RegistryLimits::default());
    assert_eq!(
        r.spawn_plan(Z, 0),
        Err(SpawnRefused::NotConfigured { zone: Z })
    );
}

#[test]
fn spawn_that_never_reports_is_reaped() {
    let mut r = registry(1);
    let timeout = r.limits().spawn_report_timeout_ms;
    r.apply(&RegistryOp::SpawnStarted {
        now_ms: 0,
        zone: Z,
        port: 7000,
        pid: 42,
    })
    .unwrap();
    let out = r.apply(&RegistryOp::Tick { now_ms: timeout }).unwrap();
    assert!(out.events.is_empty());
    let out = r
        .apply(&RegistryOp::Tick {
            now_ms: timeout + 1,
        })
        .unwrap();
    assert_eq!(
        out.events,
        vec![Event::SpawnTimedOut {
            id: "spawn-1-7000".into(),
            pid: 42
        }]
    );
    assert!(r.is_empty());
    assert!(
        r.spawn_plan(Z, timeout + 1).is_ok(),
        "the zone may spawn again"
    );
}

#[test]
fn stopped_processes_are_forgotten_after_retention() {
    let mut r = registry(1);
    let l = r.limits().clone();
    push(&mut r, 0, report("a", 1, 0, 0));
    r.apply(&RegistryOp::ProbeFailed {
        now_ms: 0,
        id: "a".into(),
    })
    .unwrap();
    r.apply(&RegistryOp::Tick {
        now_ms: l.stopped_retention_ms,
    })
    .unwrap();
    assert!(r.process("a").is_some());
    let out = r
        .apply(&RegistryOp::Tick {
            now_ms: l.stopped_retention_ms + 1,
        })
        .unwrap();
    assert_eq!(out.events, vec![Event::Forgotten { id: "a".into() }]);
    assert!(r.is_empty());
}

#[test]
fn refused_ops_change_nothing() {
    let mut r = Registry::new(
        vec![zone(1, true)],
        RegistryLimits {
            processes_max: 2,
            ..RegistryLimits::default()
        },
    );
    push(&mut r, 0, report("a", 1, 1, 0));
    push(&mut r, 0, report("b", 2, 0, 0));
    pick(&mut r, 0).unwrap();
    let before = r.clone();
    let mut other_zone = report("a", 1, 0, 0);
    other_zone.zone = 9;
    let mut moved = report("a", 1, 0, 0);
    r.zones.insert(
        2,
        Zone {
            spec: ZoneSpec {
                id: 2,
                ..zone(1, false)
            },
            processes: BTreeMap::new(),
            last_spawn_ms: None,
        },
    );
    let before_with_zone2 = r.clone();
    moved.zone = 2;
    let refused = [
        (
            RegistryOp::Push {
                now_ms: 1,
                report: other_zone,
            },
            "unknown zone",
        ),
        (
            RegistryOp::Push {
                now_ms: 1,
                report: moved,
            },
            "zone mismatch",
        ),
        (
            RegistryOp::Push {
                now_ms: 1,
                report: report("c", 3, 0, 0),
            },
            "registry full",
        ),
        (RegistryOp::Pick { now_ms: 1, zone: Z }, "no capacity"),
        (
            RegistryOp::Pick {
                now_ms: 1,
                zone: 77,
            },
            "unknown zone",
        ),
        (
            RegistryOp::Drain {
                now_ms: 1,
                id: "zz".into(),
            },
            "unknown process",
        ),
        (
            RegistryOp::ProbeFailed {
                now_ms: 1,
                id: "zz".into(),
            },
            "unknown process",
        ),
        (
            RegistryOp::SpawnStarted {
                now_ms: 1,
                zone: 2,
                port: 7000,
                pid: 1,
            },
            "no spawn settings",
        ),
        (
            RegistryOp::SpawnFailed {
                now_ms: 1,
                zone: 77,
            },
            "unknown zone",
        ),
        (RegistryOp::Forget { id: "zz".into() }, "unknown process"),
    ];
    for (op, why) in refused {
        assert!(r.apply(&op).is_err(), "{why}: {op:?} was accepted");
        assert_eq!(r, before_with_zone2, "{why}: {op:?} changed the registry");
    }
    assert_ne!(before, before_with_zone2);
}

#[test]
fn same_ops_same_state_and_ops_round_trip() {
    let ops = vec![
        RegistryOp::Push {
            now_ms: 0,
            report: report("a", 1, 0, 5),
        },
        RegistryOp::Push {
            now_ms: 1,
            report: report("b", 2, 3, 5),
        },
        RegistryOp::Pick { now_ms: 2, zone: Z },
        RegistryOp::SpawnStarted {
            now_ms: 3,
            zone: Z,
            port: 7000,
            pid: 9,
        },
        RegistryOp::Drain {
            now_ms: 4,
            id: "b".into(),
        },
        RegistryOp::ProbeFailed {
            now_ms: 5,
            id: "a".into(),
        },
        RegistryOp::Tick { now_ms: 20_000 },
        RegistryOp::Push {
            now_ms: 20_001,
            report: report("c", 7000, 1, 1),
        },
        RegistryOp::Pick {
            now_ms: 20_002,
            zone: Z,
        },
        RegistryOp::Forget { id: "a".into() },
    ];
    let mut master = registry(10);
    let mut standby = registry(10);
    for op in &ops {
        let bytes = op.encode();
        let decoded = RegistryOp::decode(&bytes).unwrap();
        assert_eq!(&decoded, op);
        let m = master.apply(op);
        let s = standby.apply(&decoded);
        assert_eq!(m, s, "{op:?}");
        assert_eq!(master, standby, "diverged after {op:?}");
    }
    assert_eq!(Registry::restore(&master.snapshot()).unwrap(), master);
    assert_eq!(master.process("c").unwrap().reservations.len(), 1);
}

#[test]
fn decode_refuses_bad_bytes() {
    assert!(matches!(
        RegistryOp::decode(&[]),
        Err(DecodeError::Format { found: None })
    ));
    assert!(matches!(
        RegistryOp::decode(b"{}"),
        Err(DecodeError::Format { found: Some(b'{') })
    ));
    assert!(matches!(
        RegistryOp::decode(&[1, b'{']),
        Err(DecodeError::Body(_))
    ));
    let big = vec![1u8; OP_BYTES_MAX + 1];
    assert!(matches!(
        RegistryOp::decode(&big),
        Err(DecodeError::TooLong { .. })
    ));
}

fn wire() -> StatusPush {
    StatusPush {
        id: "00:16:3E:00:14:A6-9894".into(),
        zone: 1,
        host: "121.199.13.143".into(),
        port: 1860,
        online: 4,
        used_memory_mb: 57,
        version: "v1.0.0 20131104".into(),
        pid: Some(9894),
        claimed: vec![],
    }
}

#[test]
fn validate_accepts_seed_example_and_refuses_absurd_values() {
    let ok = wire().validate().unwrap();
    assert_eq!((ok.port, ok.online, ok.used_memory_mb), (1860, 4, 57));
    let cases: Vec<(StatusPush, &str)> = vec![
        (
            StatusPush {
                id: String::new(),
                ..wire()
            },
            "process id",
        ),
        (
            StatusPush {
                id: "x".repeat(65),
                ..wire()
            },
            "process id",
        ),
        (
            StatusPush {
                id: "a b".into(),
                ..wire()
            },
            "character",
        ),
        (
            StatusPush {
                id: "<x>".into(),
                ..wire()
            },
            "character",
        ),
        (StatusPush { zone: -1, ..wire() }, "zone"),
        (
            StatusPush {
                host: "game.example".into(),
                ..wire()
            },
            "not an IPv4",
        ),
        (
            StatusPush {
                host: "0.0.0.0".into(),
                ..wire()
            },
            "cannot be connected",
        ),
        (StatusPush { port: 0, ..wire() }, "port 0"),
        (
            StatusPush {
                port: 65536,
                ..wire()
            },
            "port 65536",
        ),
        (
            StatusPush {
                online: -1,
                ..wire()
            },
            "online -1",
        ),
        (
            StatusPush {
                online: ONLINE_MAX + 1,
                ..wire()
            },
            "online",
        ),
        (
            StatusPush {
                used_memory_mb: -5,
                ..wire()
            },
            "used_memory_mb -5",
        ),
        (
            StatusPush {
                version: "v\n1".into(),
                ..wire()
            },
            "version",
        ),
        (
            StatusPush {
                claimed: vec![0; CLAIMS_PER_PUSH_MAX + 1],
                ..wire()
            },
            "claimed",
        ),
    ];
    for (push, needle) in cases {
        let msg = push.clone().validate().expect_err(needle).to_string();
        assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
    }
}

#[test]
fn a_tick_without_events_changes_nothing() {
    let mut r = registry(10);
    push(&mut r, 0, report("a", 1, 0, 0));
    pick(&mut r, 0).unwrap();
    r.apply(&RegistryOp::Drain {
        now_ms: 0,
        id: "a".into(),
    })
    .unwrap();
    r.apply(&RegistryOp::SpawnStarted {
        now_ms: 0,
        zone: Z,
        port: 7000,
        pid: 1,
    })
    .unwrap();
    let mut now = 0;
    let mut quiet = 0;
    // Walk time past every timer; whenever a tick reports nothing, the state
    // must be exactly as before it.
    while now < 400_000 {
        let before = r.clone();
        let out = r.apply(&RegistryOp::Tick { now_ms: now }).unwrap();
        if out.events.is_empty() {
            quiet += 1;
            assert_eq!(r, before, "silent tick at {now} changed the registry");
        }
        now += 250;
    }
    assert!(quiet > 100 && r.is_empty(), "timers all fired: {r:?}");
}
