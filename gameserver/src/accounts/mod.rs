//! Accounts and player data in a database, behind one trait ([`Store`]).
//!
//! - `sqlite`: the default, embedded (one file, WAL): nothing to install;
//! - `postgres`: for a fleet, by a connection URL; the same schema and
//!   versioned migrations.
//!
//! Player data comes in two groups, saved differently (seed 001 "数据落地"):
//! - [`PlayerRecord`] (games, wins, rating, coins) changes when a game ends
//!   and is saved at once, before the game's end is shown to anyone
//!   (immediate level: nothing acknowledged is lost);
//! - [`Activity`] (time online, moves, chat lines) changes all the time and
//!   is saved in batches, a configurable share of the dirty players each
//!   second (a SIGKILL loses at most one batch period of it).
//!
//! Saves write absolute values, never increments: a save repeated after a
//! failover (the new master saves what the old one may already have) is
//! harmless.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

#[cfg(feature = "db")]
pub mod postgres;
#[cfg(feature = "db")]
pub mod sqlite;

/// Player ids stay below 2^53 so JavaScript's numbers hold them exactly.
pub const PLAYER_ID_MAX: u64 = (1 << 53) - 1;

/// Rating a new player starts at (Elo).
pub const RATING_START: i32 = 1200;
/// Coins a new player starts with.
pub const COINS_START: i64 = 1000;

/// What the game's end changes; saved at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlayerRecord {
    pub games: u32,
    pub wins: u32,
    pub losses: u32,
    pub draws: u32,
    /// Elo rating.
    pub rating: i32,
    pub coins: i64,
}

impl Default for PlayerRecord {
    fn default() -> Self {
        PlayerRecord {
            games: 0,
            wins: 0,
            losses: 0,
            draws: 0,
            rating: RATING_START,
            coins: COINS_START,
        }
    }
}

/// What play changes all the time; saved in batches. Counted from room
/// events only (never from a clock), so master and standby count the same.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    /// Moves played by the player.
    pub moves: u64,
    /// Moves the turn timer played for the player.
    pub auto_moves: u64,
    pub chat_lines: u64,
    /// Times the player entered a room.
    pub rooms_entered: u64,
    /// Unix ms of the save (set by the saver, not by the room).
    pub last_seen_ms: u64,
}

/// A player's persistent data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlayerData {
    pub record: PlayerRecord,
    pub activity: Activity,
}

/// How an account logs in. Stable: stored as this number, and carried in tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum AccountKind {
    /// A device id, no password.
    Guest = 0,
    /// A name and an argon2id password hash.
    Password = 1,
    /// A third-party platform's account (verified by a [`crate::login`] verifier).
    Platform = 2,
}

impl AccountKind {
    pub fn from_u8(v: u8) -> Option<AccountKind> {
        Some(match v {
            0 => AccountKind::Guest,
            1 => AccountKind::Password,
            2 => AccountKind::Platform,
            _ => return None,
        })
    }
}

/// An account as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub player: u64,
    pub name: String,
    pub kind: AccountKind,
    pub created_ms: u64,
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The account name is taken.
    #[error("account name {0:?} is taken; choose another")]
    Duplicate(String),
    /// The database could not be reached or refused the statement.
    #[error("account database: {0}; check that it is running and reachable")]
    Db(String),
}

/// Accounts and player data. Calls block (run them off the async threads,
/// with `tokio::task::spawn_blocking`).
pub trait Store: Send + Sync + 'static {
    /// A new password account; `Duplicate` when the name is taken.
    fn register(&self, name: &str, password_hash: &str) -> Result<Account, StoreError>;
    /// The password account of this name and its hash.
    fn password_account(&self, name: &str) -> Result<Option<(Account, String)>, StoreError>;
    /// The guest account of a device, created on first use.
    fn guest(&self, device: &str, name: &str) -> Result<Account, StoreError>;
    /// A new guest account with no device (each call a new player). The
    /// default makes one up (a random device id); the databases need none.
    fn new_guest(&self, name: &str) -> Result<Account, StoreError> {
        let device: [u8; 16] = rand::random();
        let hex: String = device.iter().map(|b| format!("{b:02x}")).collect();
        self.guest(&format!("anon-{hex}"), name)
    }
    /// The account of a platform's user, created on first use.
    fn platform(&self, platform: &str, user: &str, name: &str) -> Result<Account, StoreError>;
    /// A player's data (defaults for a player with none saved).
    fn load(&self, player: u64) -> Result<PlayerData, StoreError>;
    /// Saves records, all or none, durably before it returns.
    fn save_records(&self, records: &[(u64, PlayerRecord)]) -> Result<(), StoreError>;
    /// Saves activity, all or none.
    fn save_activity(&self, activity: &[(u64, Activity)]) -> Result<(), StoreError>;
    /// The schema's version (the last migration applied at open); 0 for a
    /// store without one (an in-memory store of a test).
    fn schema_version(&self) -> Result<u32, StoreError> {
        Ok(0)
    }
}

/// A build without the `db` feature (the fuzz targets') has no store to open.
#[cfg(not(feature = "db"))]
pub fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    Err(StoreError::Db(format!(
        "cannot open {url:?}: this build has no database (build gameserver with its `db` feature, the default)"
    )))
}

/// Opens (and migrates) the store at `url`: `postgres://...` or
/// `postgresql://...` is PostgreSQL; `sqlite:<path>`, `sqlite::memory:` or a
/// plain path is SQLite.
#[cfg(feature = "db")]
pub fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(postgres::PgStore::open(url)?));
    }
    let path = url.strip_prefix("sqlite:").unwrap_or(url);
    let path = path.strip_prefix("//").unwrap_or(path);
    if path.is_empty() {
        return Err(StoreError::Db(format!(
            "{url:?} names no database; give sqlite:<path> or postgres://..."
        )));
    }
    if path == ":memory:" {
        return Ok(Arc::new(sqlite::SqliteStore::open_in_memory()?));
    }
    Ok(Arc::new(sqlite::SqliteStore::open(std::path::Path::new(
        path,
    ))?))
}

/// The lookup key of a password account's name: names are unique without
/// regard to ASCII case, so "Ann" cannot pose as "ann".
pub fn name_key(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// A database id as a player id, refused past [`PLAYER_ID_MAX`].
#[cfg(feature = "db")]
fn player_id(id: i64) -> Result<u64, StoreError> {
    u64::try_from(id)
        .ok()
        .filter(|&p| p > 0 && p <= PLAYER_ID_MAX)
        .ok_or_else(|| StoreError::Db(format!("player id {id} is out of range (1..2^53)")))
}

/// A player id as the database's integer.
#[cfg(feature = "db")]
fn db_id(player: u64) -> Result<i64, StoreError> {
    if player > PLAYER_ID_MAX {
        return Err(StoreError::Db(format!("player id {player} is over 2^53")));
    }
    Ok(player as i64)
}
