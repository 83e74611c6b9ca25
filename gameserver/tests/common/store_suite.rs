//! The Store test suite every backend passes (SQLite in `login.rs`,
//! PostgreSQL in `accounts_postgres.rs`). Names and devices carry a unique
//! suffix, so the suite runs on a database that already has accounts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};

use gameserver::accounts::{
    AccountKind, Activity, PlayerData, PlayerRecord, Store, StoreError, PLAYER_ID_MAX,
};

/// A suffix no other call in any process returns.
pub fn unique() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{:x}{:x}{}",
        std::process::id(),
        t % 1_000_000_007,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn store_suite(s: &dyn Store) {
    assert_eq!(s.schema_version().unwrap(), 1);
    accounts_of_each_kind(s);
    player_data_groups_save_apart(s);
    a_batch_saves_all_or_none(s);
}

fn accounts_of_each_kind(s: &dyn Store) {
    let u = unique();
    // Password accounts: unique names without regard to case.
    let name = format!("Ann{u}");
    let a = s.register(&name, "hash-a").unwrap();
    assert_eq!(
        (a.name.as_str(), a.kind),
        (name.as_str(), AccountKind::Password)
    );
    assert!(a.player > 0 && a.player <= PLAYER_ID_MAX);
    match s.register(&name.to_uppercase(), "hash-b") {
        Err(StoreError::Duplicate(n)) => assert_eq!(n, name.to_uppercase()),
        other => panic!("a taken name registered again: {other:?}"),
    }
    let (got, hash) = s.password_account(&name.to_lowercase()).unwrap().unwrap();
    assert_eq!((got, hash.as_str()), (a.clone(), "hash-a"));
    assert!(s.password_account(&format!("nobody{u}")).unwrap().is_none());

    // Guests: a device is one player; a guest's name is no password account.
    let g1 = s.guest(&format!("device-1-{u}"), &name).unwrap();
    assert_eq!(g1.kind, AccountKind::Guest);
    assert_ne!(g1.player, a.player);
    assert_eq!(s.guest(&format!("device-1-{u}"), "other").unwrap(), g1);
    let g2 = s.guest(&format!("device-2-{u}"), "g").unwrap();
    assert_ne!(g2.player, g1.player);
    let (n1, n2) = (s.new_guest("n").unwrap(), s.new_guest("n").unwrap());
    assert_ne!(n1.player, n2.player);
    assert!(n2.player > n1.player, "ids only grow (never reused)");
    assert_eq!(s.password_account(&name).unwrap().unwrap().0, a);

    // Platform users: one player per (platform, user).
    let p1 = s.platform("test", &format!("user-{u}"), "P").unwrap();
    assert_eq!(p1.kind, AccountKind::Platform);
    assert_eq!(s.platform("test", &format!("user-{u}"), "P2").unwrap(), p1);
    let p2 = s.platform("other", &format!("user-{u}"), "P").unwrap();
    assert_ne!(p1.player, p2.player);
}

fn player_data_groups_save_apart(s: &dyn Store) {
    let p = s.new_guest("data").unwrap().player;
    assert_eq!(s.load(p).unwrap(), PlayerData::default());
    let rec = PlayerRecord {
        games: 7,
        wins: 4,
        losses: 2,
        draws: 1,
        rating: 1234,
        coins: -5,
    };
    s.save_records(&[(p, rec)]).unwrap();
    assert_eq!(
        s.load(p).unwrap(),
        PlayerData {
            record: rec,
            activity: Activity::default()
        }
    );
    let act = Activity {
        moves: 40,
        chat_lines: 3,
        last_seen_ms: 1_700_000_000_000,
        ..Activity::default()
    };
    s.save_activity(&[(p, act)]).unwrap();
    let rec2 = PlayerRecord {
        games: 8,
        wins: 5,
        ..rec
    };
    // Saves write absolute values: saving one twice changes nothing.
    s.save_records(&[(p, rec2)]).unwrap();
    s.save_records(&[(p, rec2)]).unwrap();
    assert_eq!(
        s.load(p).unwrap(),
        PlayerData {
            record: rec2,
            activity: act
        }
    );
    // Activity first (no row yet): the record keeps its defaults.
    let q = s.new_guest("data2").unwrap().player;
    s.save_activity(&[(q, act)]).unwrap();
    assert_eq!(
        s.load(q).unwrap(),
        PlayerData {
            record: PlayerRecord::default(),
            activity: act
        }
    );
}

fn a_batch_saves_all_or_none(s: &dyn Store) {
    let (p, q) = (
        s.new_guest("b1").unwrap().player,
        s.new_guest("b2").unwrap().player,
    );
    let rec = PlayerRecord {
        games: 1,
        ..PlayerRecord::default()
    };
    // The last entry is refused (its id is past 2^53): the first is not saved either.
    assert!(s
        .save_records(&[(p, rec), (q, rec), (PLAYER_ID_MAX + 1, rec)])
        .is_err());
    assert_eq!(s.load(p).unwrap().record, PlayerRecord::default());
    s.save_records(&[(p, rec), (q, rec)]).unwrap();
    assert_eq!(s.load(q).unwrap().record, rec);
}

/// Two stores (as two processes would open them) race to register the same
/// names and to create the same guest: exactly one registration wins each
/// round, and both see one guest.
pub fn concurrent_first_uses(open: &(dyn Fn() -> Arc<dyn Store> + Sync)) {
    const ROUNDS: usize = 20;
    let stores = [open(), open()];
    let u = unique();
    let barrier = Barrier::new(2);
    let results: Vec<Vec<(bool, u64)>> = std::thread::scope(|sc| {
        let hs: Vec<_> = stores
            .iter()
            .map(|s| {
                let (barrier, u) = (&barrier, &u);
                sc.spawn(move || {
                    (0..ROUNDS)
                        .flat_map(|r| {
                            barrier.wait();
                            let won = match s.register(&format!("race{r}x{u}"), "h") {
                                Ok(_) => true,
                                Err(StoreError::Duplicate(_)) => false,
                                Err(e) => panic!("register failed: {e}"),
                            };
                            barrier.wait();
                            let g = s.guest(&format!("race-device-{r}-{u}"), "g").unwrap();
                            [(won, 0), (true, g.player)]
                        })
                        .collect()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in 0..ROUNDS {
        let (a, b) = (results[0][2 * r], results[1][2 * r]);
        assert!(
            a.0 ^ b.0,
            "round {r}: exactly one registration wins: {a:?} {b:?}"
        );
        assert_eq!(
            results[0][2 * r + 1].1,
            results[1][2 * r + 1].1,
            "round {r}: one guest for one device"
        );
    }
}
