//! The default [`Store`]: one SQLite file in WAL mode.
//!
//! - `synchronous=FULL`: a commit fsyncs the WAL, so `save_records` is on disk
//!   when it returns (WAL with `NORMAL` could lose the last commits on a
//!   power cut);
//! - `busy_timeout`: several processes (the login, room servers) share the
//!   file; a writer waits up to [`BUSY_TIMEOUT_MS`] for another's lock;
//! - writes take the lock at `BEGIN IMMEDIATE`, so a transaction that read
//!   first never fails to upgrade its lock half-way.
//!
//! One connection behind a mutex per process: SQLite runs one writer at a
//! time anyway, and the login's cost is argon2, not the database.

use std::path::Path;

use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{
    db_id, name_key, player_id, Account, AccountKind, Activity, PlayerData, PlayerRecord, Store,
    StoreError,
};

/// How long a statement waits for another process's lock before failing, ms.
/// Longer than any transaction here takes (one fsync) with a wide margin.
pub const BUSY_TIMEOUT_MS: u64 = 5_000;

/// The migrations, in order: migration `i` brings the schema to version `i + 1`.
pub const MIGRATIONS: &[&str] = &[include_str!("migrations/sqlite/0001_accounts.sql")];

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Db(format!("sqlite: {e}"))
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

fn kind_of(v: i64) -> Result<AccountKind, StoreError> {
    u8::try_from(v)
        .ok()
        .and_then(AccountKind::from_u8)
        .ok_or_else(|| StoreError::Db(format!("account kind {v} is unknown")))
}

fn count(v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Db(format!("count {v} is out of range")))
}

fn unsigned(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Db(format!("value {v} is negative")))
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database file at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let conn = Connection::open(path)
            .map_err(|e| StoreError::Db(format!("sqlite {}: {e}", path.display())))?;
        Self::setup(conn)
    }

    /// A private in-memory database (for tests).
    pub fn open_in_memory() -> Result<SqliteStore, StoreError> {
        Self::setup(Connection::open_in_memory().map_err(db)?)
    }

    fn setup(mut conn: Connection) -> Result<SqliteStore, StoreError> {
        conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))
            .map_err(db)?;
        // journal_mode answers a row; in-memory databases stay "memory".
        let _mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(db)?;
        conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")
            .map_err(db)?;
        migrate(&mut conn)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn account(conn: &Connection, player: i64) -> Result<Account, StoreError> {
        conn.query_row(
            "SELECT player, name, kind, created_ms FROM accounts WHERE player = ?1",
            [player],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            },
        )
        .map_err(db)
        .and_then(|(p, name, kind, created)| {
            Ok(Account {
                player: player_id(p)?,
                name,
                kind: kind_of(kind)?,
                created_ms: unsigned(created)?,
            })
        })
    }

    /// The account behind `lookup` (a query of one player id), created by
    /// `link` (given the new player id) when there is none.
    fn find_or_create(
        &self,
        lookup: &str,
        lookup_args: &[&dyn rusqlite::ToSql],
        name: &str,
        kind: AccountKind,
        link: impl FnOnce(&rusqlite::Transaction<'_>, i64) -> rusqlite::Result<usize>,
    ) -> Result<Account, StoreError> {
        let mut conn = self.conn.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let found: Option<i64> = tx
            .query_row(lookup, lookup_args, |r| r.get(0))
            .optional()
            .map_err(db)?;
        let player = match found {
            Some(p) => p,
            None => {
                tx.execute(
                    "INSERT INTO accounts (name, kind, created_ms) VALUES (?1, ?2, ?3)",
                    params![name, kind as u8 as i64, crate::token::now_ms() as i64],
                )
                .map_err(db)?;
                let p = tx.last_insert_rowid();
                link(&tx, p).map_err(db)?;
                p
            }
        };
        let a = Self::account(&tx, player)?;
        tx.commit().map_err(db)?;
        Ok(a)
    }
}

/// Applies the migrations past the stored version, each with its version row
/// in one transaction (two processes opening at once: the second waits for
/// the first's lock, then finds nothing to do).
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version    INTEGER PRIMARY KEY,
             applied_ms INTEGER NOT NULL
         )",
    )
    .map_err(db)?;
    let have: i64 = tx
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_version",
            [],
            |r| r.get(0),
        )
        .map_err(db)?;
    if have > MIGRATIONS.len() as i64 {
        return Err(StoreError::Db(format!(
            "the database's schema is version {have}, newer than this program's {}; run a newer build",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(have as usize) {
        tx.execute_batch(sql)
            .map_err(|e| StoreError::Db(format!("sqlite migration {}: {e}", i + 1)))?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_ms) VALUES (?1, ?2)",
            params![i as i64 + 1, crate::token::now_ms() as i64],
        )
        .map_err(db)?;
    }
    tx.commit().map_err(db)
}

impl Store for SqliteStore {
    fn register(&self, name: &str, password_hash: &str) -> Result<Account, StoreError> {
        let conn = self.conn.lock();
        let r = conn.execute(
            "INSERT INTO accounts (name, name_key, kind, password_hash, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                name,
                name_key(name),
                AccountKind::Password as u8 as i64,
                password_hash,
                crate::token::now_ms() as i64
            ],
        );
        match r {
            Ok(_) => Self::account(&conn, conn.last_insert_rowid()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Duplicate(name.to_string())),
            Err(e) => Err(db(e)),
        }
    }

    fn password_account(&self, name: &str) -> Result<Option<(Account, String)>, StoreError> {
        let conn = self.conn.lock();
        let row = conn
            .query_row(
                "SELECT player, password_hash FROM accounts WHERE name_key = ?1 AND kind = ?2",
                params![name_key(name), AccountKind::Password as u8 as i64],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Option<String>>(1)?)),
            )
            .optional()
            .map_err(db)?;
        match row {
            Some((p, Some(hash))) => Ok(Some((Self::account(&conn, p)?, hash))),
            _ => Ok(None),
        }
    }

    fn guest(&self, device: &str, name: &str) -> Result<Account, StoreError> {
        self.find_or_create(
            "SELECT player FROM guests WHERE device = ?1",
            &[&device],
            name,
            AccountKind::Guest,
            |tx, p| {
                tx.execute(
                    "INSERT INTO guests (device, player) VALUES (?1, ?2)",
                    params![device, p],
                )
            },
        )
    }

    fn new_guest(&self, name: &str) -> Result<Account, StoreError> {
        let conn = self.conn.lock();
        conn.execute(
            "INSERT INTO accounts (name, kind, created_ms) VALUES (?1, ?2, ?3)",
            params![
                name,
                AccountKind::Guest as u8 as i64,
                crate::token::now_ms() as i64
            ],
        )
        .map_err(db)?;
        Self::account(&conn, conn.last_insert_rowid())
    }

    fn platform(&self, platform: &str, user: &str, name: &str) -> Result<Account, StoreError> {
        self.find_or_create(
            "SELECT player FROM platform_users WHERE platform = ?1 AND user_id = ?2",
            &[&platform, &user],
            name,
            AccountKind::Platform,
            |tx, p| {
                tx.execute(
                    "INSERT INTO platform_users (platform, user_id, player) VALUES (?1, ?2, ?3)",
                    params![platform, user, p],
                )
            },
        )
    }

    fn load(&self, player: u64) -> Result<PlayerData, StoreError> {
        let conn = self.conn.lock();
        let row = conn
            .query_row(
                "SELECT games, wins, losses, draws, rating, coins,
                        moves, auto_moves, chat_lines, rooms_entered, last_seen_ms
                 FROM player_data WHERE player = ?1",
                [db_id(player)?],
                |r| {
                    let mut v = [0i64; 11];
                    for (i, x) in v.iter_mut().enumerate() {
                        *x = r.get(i)?;
                    }
                    Ok(v)
                },
            )
            .optional()
            .map_err(db)?;
        let Some(v) = row else {
            return Ok(PlayerData::default());
        };
        Ok(PlayerData {
            record: PlayerRecord {
                games: count(v[0])?,
                wins: count(v[1])?,
                losses: count(v[2])?,
                draws: count(v[3])?,
                rating: i32::try_from(v[4])
                    .map_err(|_| StoreError::Db(format!("rating {} is out of range", v[4])))?,
                coins: v[5],
            },
            activity: Activity {
                moves: unsigned(v[6])?,
                auto_moves: unsigned(v[7])?,
                chat_lines: unsigned(v[8])?,
                rooms_entered: unsigned(v[9])?,
                last_seen_ms: unsigned(v[10])?,
            },
        })
    }

    fn save_records(&self, records: &[(u64, PlayerRecord)]) -> Result<(), StoreError> {
        let mut conn = self.conn.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO player_data (player, games, wins, losses, draws, rating, coins)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (player) DO UPDATE SET
                         games = excluded.games, wins = excluded.wins,
                         losses = excluded.losses, draws = excluded.draws,
                         rating = excluded.rating, coins = excluded.coins",
                )
                .map_err(db)?;
            for (p, r) in records {
                st.execute(params![
                    db_id(*p)?,
                    r.games,
                    r.wins,
                    r.losses,
                    r.draws,
                    r.rating,
                    r.coins
                ])
                .map_err(db)?;
            }
        }
        tx.commit().map_err(db)
    }

    fn save_activity(&self, activity: &[(u64, Activity)]) -> Result<(), StoreError> {
        let mut conn = self.conn.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO player_data (player, moves, auto_moves, chat_lines, rooms_entered, last_seen_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (player) DO UPDATE SET
                         moves = excluded.moves, auto_moves = excluded.auto_moves,
                         chat_lines = excluded.chat_lines, rooms_entered = excluded.rooms_entered,
                         last_seen_ms = excluded.last_seen_ms",
                )
                .map_err(db)?;
            let big = |v: u64| {
                i64::try_from(v).map_err(|_| StoreError::Db(format!("value {v} is over 2^63")))
            };
            for (p, a) in activity {
                st.execute(params![
                    db_id(*p)?,
                    big(a.moves)?,
                    big(a.auto_moves)?,
                    big(a.chat_lines)?,
                    big(a.rooms_entered)?,
                    big(a.last_seen_ms)?
                ])
                .map_err(db)?;
            }
        }
        tx.commit().map_err(db)
    }

    fn schema_version(&self) -> Result<u32, StoreError> {
        let conn = self.conn.lock();
        conn.query_row("SELECT MAX(version) FROM schema_version", [], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(db)
        .map(|v| v as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_reopens_with_its_accounts_and_the_schema_migrates_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let a = SqliteStore::open(&path).unwrap();
        let ann = a.register("Ann", "h").unwrap();
        assert!(matches!(
            a.register("ann", "h2"),
            Err(StoreError::Duplicate(_))
        ));
        drop(a);
        let b = SqliteStore::open(&path).unwrap();
        assert_eq!(b.schema_version().unwrap(), MIGRATIONS.len() as u32);
        let (got, hash) = b.password_account("ANN").unwrap().unwrap();
        assert_eq!((got, hash.as_str()), (ann, "h"));
        let rows: i64 = b
            .conn
            .lock()
            .query_row("SELECT COUNT(*) FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, MIGRATIONS.len() as i64);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        drop(SqliteStore::open(&path).unwrap());
        let c = Connection::open(&path).unwrap();
        c.execute("INSERT INTO schema_version VALUES (99, 0)", [])
            .unwrap();
        drop(c);
        let e = SqliteStore::open(&path).err().expect("refused");
        assert!(e.to_string().contains("newer"), "{e}");
    }
}
