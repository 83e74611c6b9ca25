//! [`Store`] in PostgreSQL, by a connection URL (`postgres://user@host:port/db`).
//!
//! The blocking client (Store calls run in `spawn_blocking`), a pool of at
//! most [`POOL_CONNECTIONS`] connections, each behind its own mutex: a call
//! takes a free one, or waits for one in turn. A connection found closed is
//! opened again on its next use. Commits wait for the server's WAL flush
//! (PostgreSQL's default `synchronous_commit=on`), so `save_records` is
//! durable when it returns.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use postgres::error::SqlState;
use postgres::{Client, NoTls};

use super::{
    db_id, name_key, player_id, Account, AccountKind, Activity, PlayerData, PlayerRecord, Store,
    StoreError,
};

/// Connections one process holds at most. Each is a server process
/// (~10 MiB there); the login's concurrency is argon2-bound well below this.
pub const POOL_CONNECTIONS: usize = 4;
/// How long opening a connection may take before the call fails, s.
pub const CONNECT_TIMEOUT_S: u64 = 5;
/// Key of the advisory lock that serializes migrations across processes.
const MIGRATION_LOCK: i64 = 0x6773_5f61_6363_7473; // "gs_accts"

/// The migrations, in order: migration `i` brings the schema to version `i + 1`.
pub const MIGRATIONS: &[&str] = &[include_str!("migrations/postgres/0001_accounts.sql")];

pub struct PgStore {
    config: postgres::Config,
    conns: Vec<Mutex<Option<Client>>>,
    next: AtomicUsize,
}

fn db(e: postgres::Error) -> StoreError {
    StoreError::Db(format!("postgres: {e}"))
}

fn is_unique_violation(e: &postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

fn count(v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Db(format!("count {v} is out of range")))
}

fn unsigned(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Db(format!("value {v} is negative")))
}

fn big(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Db(format!("value {v} is over 2^63")))
}

fn account_of(row: &postgres::Row) -> Result<Account, StoreError> {
    let kind: i16 = row.get("kind");
    Ok(Account {
        player: player_id(row.get("player"))?,
        name: row.get("name"),
        kind: u8::try_from(kind)
            .ok()
            .and_then(AccountKind::from_u8)
            .ok_or_else(|| StoreError::Db(format!("account kind {kind} is unknown")))?,
        created_ms: unsigned(row.get("created_ms"))?,
    })
}

const ACCOUNT_COLUMNS: &str = "player, name, kind, created_ms";

impl PgStore {
    /// Connects to `url` and migrates the schema.
    pub fn open(url: &str) -> Result<PgStore, StoreError> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Db(format!("postgres URL {url:?}: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(CONNECT_TIMEOUT_S));
        }
        let s = PgStore {
            config,
            conns: (0..POOL_CONNECTIONS).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        };
        s.with(migrate)?;
        Ok(s)
    }

    /// Runs `f` on a pooled connection (opened when needed).
    fn with<R>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut slot = match self.conns.iter().find_map(|c| c.try_lock()) {
            Some(g) => g,
            None => self.conns[self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len()].lock(),
        };
        if slot.as_ref().is_none_or(|c| c.is_closed()) {
            *slot = Some(self.config.connect(NoTls).map_err(db)?);
        }
        let client = slot.as_mut().expect("connected just above");
        let r = f(client);
        if client.is_closed() {
            *slot = None;
        }
        r
    }

    /// The account behind `lookup` (a query answering one `player`), created
    /// with `link` (a statement taking the new player id as `$1` and then
    /// `link_args`) when there is none. A concurrent first use of the same key
    /// makes one of the two inserts fail as a duplicate: that one looks again.
    fn find_or_create(
        &self,
        lookup: &str,
        args: &[&(dyn postgres::types::ToSql + Sync)],
        name: &str,
        kind: AccountKind,
        link: &str,
    ) -> Result<Account, StoreError> {
        self.with(|c| {
            for _ in 0..2 {
                let mut tx = c.transaction().map_err(db)?;
                let q = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE player = ({lookup})");
                if let Some(row) = tx.query_opt(&q, args).map_err(db)? {
                    return account_of(&row);
                }
                let row = tx
                    .query_one(
                        &format!(
                            "INSERT INTO accounts (name, kind, created_ms) VALUES ($1, $2, $3)
                             RETURNING {ACCOUNT_COLUMNS}"
                        ),
                        &[
                            &name,
                            &(kind as u8 as i16),
                            &(crate::token::now_ms() as i64),
                        ],
                    )
                    .map_err(db)?;
                let player: i64 = row.get("player");
                let mut link_args: Vec<&(dyn postgres::types::ToSql + Sync)> = vec![&player];
                link_args.extend_from_slice(args);
                match tx.execute(link, &link_args) {
                    Ok(_) => {
                        tx.commit().map_err(db)?;
                        return account_of(&row);
                    }
                    Err(e) if is_unique_violation(&e) => continue, // rolled back on drop
                    Err(e) => return Err(db(e)),
                }
            }
            Err(StoreError::Db(
                "postgres: an account was created and removed while looking it up; retry".into(),
            ))
        })
    }
}

/// Applies the migrations past the stored version in one transaction, under
/// an advisory lock so two processes opening at once do not both apply them.
fn migrate(c: &mut Client) -> Result<(), StoreError> {
    let mut tx = c.transaction().map_err(db)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(db)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version    INTEGER PRIMARY KEY,
             applied_ms BIGINT  NOT NULL
         )",
    )
    .map_err(db)?;
    let have: i32 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])
        .map_err(db)?
        .get(0);
    if have as usize > MIGRATIONS.len() {
        return Err(StoreError::Db(format!(
            "the database's schema is version {have}, newer than this program's {}; run a newer build",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(have as usize) {
        tx.batch_execute(sql)
            .map_err(|e| StoreError::Db(format!("postgres migration {}: {e}", i + 1)))?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_ms) VALUES ($1, $2)",
            &[&(i as i32 + 1), &(crate::token::now_ms() as i64)],
        )
        .map_err(db)?;
    }
    tx.commit().map_err(db)
}

impl Store for PgStore {
    fn register(&self, name: &str, password_hash: &str) -> Result<Account, StoreError> {
        self.with(|c| {
            let r = c.query_one(
                &format!(
                    "INSERT INTO accounts (name, name_key, kind, password_hash, created_ms)
                     VALUES ($1, $2, $3, $4, $5) RETURNING {ACCOUNT_COLUMNS}"
                ),
                &[
                    &name,
                    &name_key(name),
                    &(AccountKind::Password as u8 as i16),
                    &password_hash,
                    &(crate::token::now_ms() as i64),
                ],
            );
            match r {
                Ok(row) => account_of(&row),
                Err(e) if is_unique_violation(&e) => Err(StoreError::Duplicate(name.to_string())),
                Err(e) => Err(db(e)),
            }
        })
    }

    fn password_account(&self, name: &str) -> Result<Option<(Account, String)>, StoreError> {
        self.with(|c| {
            let row = c
                .query_opt(
                    &format!(
                        "SELECT {ACCOUNT_COLUMNS}, password_hash FROM accounts
                         WHERE name_key = $1 AND kind = $2"
                    ),
                    &[&name_key(name), &(AccountKind::Password as u8 as i16)],
                )
                .map_err(db)?;
            match row {
                Some(row) => match row.get::<_, Option<String>>("password_hash") {
                    Some(hash) => Ok(Some((account_of(&row)?, hash))),
                    None => Ok(None),
                },
                None => Ok(None),
            }
        })
    }

    fn guest(&self, device: &str, name: &str) -> Result<Account, StoreError> {
        self.find_or_create(
            "SELECT player FROM guests WHERE device = $1",
            &[&device],
            name,
            AccountKind::Guest,
            "INSERT INTO guests (player, device) VALUES ($1, $2)",
        )
    }

    fn new_guest(&self, name: &str) -> Result<Account, StoreError> {
        self.with(|c| {
            let row = c
                .query_one(
                    &format!(
                        "INSERT INTO accounts (name, kind, created_ms) VALUES ($1, $2, $3)
                         RETURNING {ACCOUNT_COLUMNS}"
                    ),
                    &[
                        &name,
                        &(AccountKind::Guest as u8 as i16),
                        &(crate::token::now_ms() as i64),
                    ],
                )
                .map_err(db)?;
            account_of(&row)
        })
    }

    fn platform(&self, platform: &str, user: &str, name: &str) -> Result<Account, StoreError> {
        self.find_or_create(
            "SELECT player FROM platform_users WHERE platform = $1 AND user_id = $2",
            &[&platform, &user],
            name,
            AccountKind::Platform,
            "INSERT INTO platform_users (player, platform, user_id) VALUES ($1, $2, $3)",
        )
    }

    fn load(&self, player: u64) -> Result<PlayerData, StoreError> {
        let id = db_id(player)?;
        self.with(|c| {
            let Some(r) = c
                .query_opt(
                    "SELECT games, wins, losses, draws, rating, coins,
                            moves, auto_moves, chat_lines, rooms_entered, last_seen_ms
                     FROM player_data WHERE player = $1",
                    &[&id],
                )
                .map_err(db)?
            else {
                return Ok(PlayerData::default());
            };
            let v = |i: usize| -> i64 { r.get(i) };
            Ok(PlayerData {
                record: PlayerRecord {
                    games: count(v(0))?,
                    wins: count(v(1))?,
                    losses: count(v(2))?,
                    draws: count(v(3))?,
                    rating: i32::try_from(v(4))
                        .map_err(|_| StoreError::Db(format!("rating {} is out of range", v(4))))?,
                    coins: v(5),
                },
                activity: Activity {
                    moves: unsigned(v(6))?,
                    auto_moves: unsigned(v(7))?,
                    chat_lines: unsigned(v(8))?,
                    rooms_entered: unsigned(v(9))?,
                    last_seen_ms: unsigned(v(10))?,
                },
            })
        })
    }

    fn save_records(&self, records: &[(u64, PlayerRecord)]) -> Result<(), StoreError> {
        self.with(|c| {
            let mut tx = c.transaction().map_err(db)?;
            let st = tx
                .prepare(
                    "INSERT INTO player_data (player, games, wins, losses, draws, rating, coins)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (player) DO UPDATE SET
                         games = excluded.games, wins = excluded.wins,
                         losses = excluded.losses, draws = excluded.draws,
                         rating = excluded.rating, coins = excluded.coins",
                )
                .map_err(db)?;
            for (p, r) in records {
                tx.execute(
                    &st,
                    &[
                        &db_id(*p)?,
                        &i64::from(r.games),
                        &i64::from(r.wins),
                        &i64::from(r.losses),
                        &i64::from(r.draws),
                        &i64::from(r.rating),
                        &r.coins,
                    ],
                )
                .map_err(db)?;
            }
            tx.commit().map_err(db)
        })
    }

    fn save_activity(&self, activity: &[(u64, Activity)]) -> Result<(), StoreError> {
        self.with(|c| {
            let mut tx = c.transaction().map_err(db)?;
            let st = tx
                .prepare(
                    "INSERT INTO player_data (player, moves, auto_moves, chat_lines, rooms_entered, last_seen_ms)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (player) DO UPDATE SET
                         moves = excluded.moves, auto_moves = excluded.auto_moves,
                         chat_lines = excluded.chat_lines, rooms_entered = excluded.rooms_entered,
                         last_seen_ms = excluded.last_seen_ms",
                )
                .map_err(db)?;
            for (p, a) in activity {
                tx.execute(
                    &st,
                    &[
                        &db_id(*p)?,
                        &big(a.moves)?,
                        &big(a.auto_moves)?,                        &big(a.chat_lines)?,                        &big(a.rooms_entered)?,
                        &big(a.last_seen_ms)?,
                    ],
                )
                .map_err(db)?;
            }
            tx.commit().map_err(db)
        })
    }

    fn schema_version(&self) -> Result<u32, StoreError> {
        self.with(|c| {
            let v: i32 = c
                .query_one("SELECT MAX(version) FROM schema_version", &[])
                .map_err(db)?
                .get(0);
            Ok(v as u32)
        })
    }
}
