//! The login server: accounts ([`crate::accounts::Store`]) in, a signed token
//! and the gateways to use out. HTTP/JSON (axum):
//!
//! - `POST /v1/register {name, password}`: a new password account;
//! - `POST /v1/login {name, password}`;
//! - `POST /v1/guest {device, name?}`: the device's guest account, created on
//!   first use; without `device` (`{name}` or no body at all) a new guest
//!   each time, as before accounts;
//! - `POST /v1/platform {platform, user_token}`: a third-party account, the
//!   token checked by that platform's [`PlatformVerifier`];
//! - `GET /`, `GET /web/<file>`: the H5 client (`gameserver/web/`, embedded).
//!
//! Every success answers [`LoginReply`]: `{player, name, kind, token,
//! expires_ms, gateway, ws, gateways: [{tcp, ws}], record}`. The token is a
//! [`crate::token`] signed with the secret the gateways share, its `kind` the
//! [`crate::accounts::AccountKind`] as a number (0 guest, 1 password, 2 platform). The
//! gateways come least-loaded first: the balancer's pick for the zone, then
//! the configured ones. `record` is the player's [`PlayerRecord`], read from
//! the store at login.
//!
//! Errors answer `{"error": "..."}`: 400 malformed JSON or a field over its
//! limits, 401 wrong name or password (the same answer, status and time for a
//! name that has no account: it still runs one argon2 verify, against a dummy
//! hash), 409 a taken name, 413 a body over [`BODY_BYTES_MAX`], 429 over a
//! rate limit (all sources, one source address, one account name), 503 no
//! gateway, the database down, or too many hashes waiting.
//!
//! Argon2 and the store block: both run in `spawn_blocking`, hashes at most
//! [`LoginConfig::hash_concurrency`] at a time and at most
//! [`HASH_WAITING_MAX`] waiting, so a flood of logins cannot queue unbounded
//! blocking work.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::accounts::{name_key, Account, PlayerRecord, Store, StoreError};
use crate::proto::msg::NAME_BYTES_MAX;
use crate::token::{mint, now_ms, Claims};

/// Request bodies over this are refused (413) before they are parsed. The
/// largest legitimate body is a platform token; this bounds what a request
/// makes the server buffer.
pub const BODY_BYTES_MAX: usize = 8 * 1024;
/// Shortest password account name, bytes (the longest is `NAME_BYTES_MAX`).
pub const ACCOUNT_NAME_BYTES_MIN: usize = 3;
/// Shortest password, bytes.
pub const PASSWORD_BYTES_MIN: usize = 8;
/// Longest password, bytes: argon2 takes any length, this keeps bodies small.
pub const PASSWORD_BYTES_MAX: usize = 128;
/// Device ids of guests, bytes: long enough for a UUID, short enough to index.
pub const DEVICE_BYTES_MIN: usize = 8;
pub const DEVICE_BYTES_MAX: usize = 128;
/// Platform names (`[a-z0-9_]`), bytes.
pub const PLATFORM_BYTES_MAX: usize = 32;
/// A platform's user token, bytes.
pub const PLATFORM_TOKEN_BYTES_MAX: usize = 4096;

/// Argon2id memory, KiB: OWASP's recommendation (19 MiB, 2 passes, 1 lane),
/// about 20–40 ms of one core per hash. Each concurrent hash holds this much.
pub const ARGON2_M_KIB: u32 = 19 * 1024;
/// Argon2id passes over the memory.
pub const ARGON2_T: u32 = 2;
/// Argon2id lanes (threads within one hash; 1: concurrency comes from requests).
pub const ARGON2_P: u32 = 1;
/// Hashes waiting for a permit at most; past it: 503 (each waiter is a
/// request held open, and the work behind them grows with the queue).
pub const HASH_WAITING_MAX: usize = 256;

/// Per source address: burst of requests, then this many per second.
pub const ADDR_BURST: u32 = 20;
pub const ADDR_PER_S: f64 = 2.0;
/// Per account name (login and register): burst of attempts, then this many
/// per second (one every 30 s): slows password guessing against one account.
pub const NAME_BURST: u32 = 10;
pub const NAME_PER_S: f64 = 1.0 / 30.0;
/// Keys (addresses, names) each rate limiter remembers at most; past it the
/// fullest buckets (those limiting least) are forgotten first.
pub const RATE_KEYS_MAX: usize = 65_536;

/// A gateway as the login hands it out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayAddr {
    pub tcp: SocketAddr,
    pub ws: Option<SocketAddr>,
}

/// Argon2id cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashParams {
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

impl Default for HashParams {
    /// The production cost ([`ARGON2_M_KIB`], [`ARGON2_T`], [`ARGON2_P`]).
    fn default() -> Self {
        HashParams {
            m_kib: ARGON2_M_KIB,
            t: ARGON2_T,
            p: ARGON2_P,
        }
    }
}

impl HashParams {
    /// The cheapest argon2 allows: for tests only.
    pub fn insecure_for_tests() -> Self {
        HashParams {
            m_kib: 8,
            t: 1,
            p: 1,
        }
    }

    fn argon2(&self) -> Result<Argon2<'static>, String> {
        let p = Params::new(self.m_kib, self.t, self.p, None)
            .map_err(|e| format!("argon2 parameters {self:?}: {e}"))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, p))
    }
}

/// Rate limits besides the global [`LoginConfig::rate_per_s`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimits {
    pub addr_burst: u32,
    pub addr_per_s: f64,
    pub name_burst: u32,
    pub name_per_s: f64,
    pub keys_max: usize,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            addr_burst: ADDR_BURST,
            addr_per_s: ADDR_PER_S,
            name_burst: NAME_BURST,
            name_per_s: NAME_PER_S,
            keys_max: RATE_KEYS_MAX,
        }
    }
}

/// A third-party platform's user, as its verifier vouches for them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformUser {
    /// The platform's stable id of the user.
    pub user: String,
    /// Display name (cut to `NAME_BYTES_MAX`).
    pub name: String,
}

/// Checks a platform's user token. Called in `spawn_blocking` (a real one
/// may ask the platform over the network).
pub trait PlatformVerifier: Send + Sync + 'static {
    /// The user the token stands for, or why it is refused.
    fn verify(&self, user_token: &str, now_ms: u64) -> Result<PlatformUser, String>;
}

/// A platform for tests and local clusters: tokens are
/// `hex(JSON {user, name, expires_ms}) "." hex(HMAC-SHA256(key, JSON))`.
pub struct TestPlatform {
    key: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct TestPlatformClaims {
    user: String,
    name: String,
    expires_ms: u64,
}

impl TestPlatform {
    /// The name it is usually configured under.
    pub const NAME: &'static str = "test";

    pub fn new(key: &[u8]) -> TestPlatform {
        TestPlatform { key: key.to_vec() }
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes a key of any length")
    }

    /// A user token as the platform would hand it to its user.
    pub fn mint(&self, user: &str, name: &str, expires_ms: u64) -> String {
        let body = serde_json::to_vec(&TestPlatformClaims {
            user: user.into(),
            name: name.into(),
            expires_ms,
        })
        .expect("claims serialize");
        let mut m = self.mac();
        m.update(&body);
        format!("{}.{}", hex(&body), hex(&m.finalize().into_bytes()))
    }
}

impl PlatformVerifier for TestPlatform {
    fn verify(&self, user_token: &str, now_ms: u64) -> Result<PlatformUser, String> {
        let (body, sig) = user_token.split_once('.').ok_or("malformed")?;
        let (body, sig) = (
            unhex(body).ok_or("malformed")?,
            unhex(sig).ok_or("malformed")?,
        );
        let mut m = self.mac();
        m.update(&body);
        m.verify_slice(&sig).map_err(|_| "bad signature")?;
        let c: TestPlatformClaims = serde_json::from_slice(&body).map_err(|_| "malformed")?;
        if c.expires_ms <= now_ms {
            return Err("expired".into());
        }
        Ok(PlatformUser {
            user: c.user,
            name: c.name,
        })
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[derive(Clone)]
pub struct LoginConfig {
    pub listen: SocketAddr,
    pub secret: Vec<u8>,
    pub zone: u32,
    /// How long a token is good for, ms.
    pub token_ttl_ms: u64,
    pub gateways: Vec<GatewayAddr>,
    /// The balancer to pick gateways from (they report under `zone`).
    pub balancer: Vec<SocketAddr>,
    /// Requests per second at most (all sources together); over it: 429.
    pub rate_per_s: u64,
    /// Accounts and player records.
    pub store: Arc<dyn Store>,
    /// Argon2id cost of new password hashes.
    pub hash: HashParams,
    /// Hashes (and verifies) running at once at most: about the cores given
    /// to logins. Each holds `hash.m_kib` of memory.
    pub hash_concurrency: usize,
    pub limits: RateLimits,
    /// Third-party platforms by the name clients give in `/v1/platform`.
    pub platforms: Vec<(String, Arc<dyn PlatformVerifier>)>,
}

impl std::fmt::Debug for LoginConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginConfig")
            .field("listen", &self.listen)
            .field("zone", &self.zone)
            .field("token_ttl_ms", &self.token_ttl_ms)
            .field("gateways", &self.gateways)
            .field("balancer", &self.balancer)
            .field("rate_per_s", &self.rate_per_s)
            .field("hash", &self.hash)
            .field("hash_concurrency", &self.hash_concurrency)
            .field("limits", &self.limits)
            .field(
                "platforms",
                &self.platforms.iter().map(|p| &p.0).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Token lifetime by default, ms (a day).
pub const TOKEN_TTL_MS: u64 = 24 * 3600 * 1000;
/// Requests per second at most from all sources together, by default.
pub const RATE_PER_S: u64 = 1_000;

impl LoginConfig {
    /// A config with the production limits and argon2 cost, no gateways yet.
    pub fn new(listen: SocketAddr, secret: Vec<u8>, zone: u32, store: Arc<dyn Store>) -> Self {
        LoginConfig {
            listen,
            secret,
            zone,
            token_ttl_ms: TOKEN_TTL_MS,
            gateways: Vec::new(),
            balancer: Vec::new(),
            rate_per_s: RATE_PER_S,
            store,
            hash: HashParams::default(),
            hash_concurrency: std::thread::available_parallelism().map_or(1, |n| n.get()),
            limits: RateLimits::default(),
            platforms: Vec::new(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct GuestRequest {
    /// A stable id of the device: the same one logs in as the same guest.
    #[serde(default)]
    pub device: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct PasswordRequest {
    pub name: String,
    pub password: String,
}

#[derive(Debug, Deserialize)]
pub struct PlatformRequest {
    pub platform: String,
    pub user_token: String,
}

/// A gateway in a [`LoginReply`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayJson {
    /// TCP address.
    pub tcp: String,
    /// WebSocket URL, when it has one.
    pub ws: Option<String>,
}

/// What every successful login answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginReply {
    pub player: u64,
    pub name: String,
    /// [`crate::accounts::AccountKind`] as a number: 0 guest, 1 password, 2 platform.
    pub kind: u8,
    pub token: String,
    pub expires_ms: u64,
    /// TCP address of the first (least-loaded) gateway.
    pub gateway: String,
    /// WebSocket URL of the first gateway, when it has one.
    pub ws: Option<String>,
    /// All the gateways to try, least-loaded first.
    pub gateways: Vec<GatewayJson>,
    pub record: PlayerRecord,
}

/// The answer before accounts; the same fields, kept for old callers.
pub type GuestReply = LoginReply;

/// A token bucket per key, at most `keys_max` keys.
struct Limiter<K> {
    burst: f64,
    per_s: f64,
    keys_max: usize,
    buckets: parking_lot::Mutex<HashMap<K, (f64, Instant)>>,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    fn new(burst: f64, per_s: f64, keys_max: usize) -> Self {
        Limiter {
            burst: burst.max(1.0),
            per_s: per_s.max(0.0),
            keys_max: keys_max.max(1),
            buckets: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    fn level(&self, b: &(f64, Instant), now: Instant) -> f64 {
        (b.0 + now.saturating_duration_since(b.1).as_secs_f64() * self.per_s).min(self.burst)
    }

    /// Takes one token of `key`'s bucket; false when it has none.
    fn take(&self, key: &K, now: Instant) -> bool {
        let mut m = self.buckets.lock();
        if !m.contains_key(key) && m.len() >= self.keys_max {
            self.evict(&mut m, now);
        }
        let b = m.entry(key.clone()).or_insert((self.burst, now));
        let level = self.level(b, now);
        *b = (level, now);
        if level < 1.0 {
            return false;
        }
        b.0 -= 1.0;
        true
    }

    /// Forgets the fullest eighth of the buckets (full ones limit nothing;
    /// the emptied buckets of a flooding address or an attacked name are
    /// the last to go), so the next `keys_max / 8` new keys cost nothing.
    fn evict(&self, m: &mut HashMap<K, (f64, Instant)>, now: Instant) {
        let mut levels: Vec<(f64, K)> = m
            .iter()
            .map(|(k, b)| (self.level(b, now), k.clone()))
            .collect();
        let n = (levels.len() / 8).max(1);
        levels.select_nth_unstable_by(n - 1, |a, b| b.0.total_cmp(&a.0));
        for (_, k) in &levels[..n] {
            m.remove(k);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.lock().len()
    }
}

/// The rate-limit key of a source: the address, or for IPv6 its /64 (one
/// host usually holds a whole /64).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

struct LoginState {
    cfg: LoginConfig,
    argon2: Argon2<'static>,
    /// A hash of a random password with `cfg.hash`: what a login for a name
    /// without an account verifies against, so it costs the same time.
    dummy_hash: String,
    next: AtomicUsize,
    global: Limiter<()>,
    by_addr: Limiter<IpAddr>,
    by_name: Limiter<String>,
    hashes: tokio::sync::Semaphore,
    hashes_waiting: AtomicUsize,
}

type ApiError = (StatusCode, Json<serde_json::Value>);

fn api_error(code: StatusCode, msg: &str) -> ApiError {
    (code, Json(serde_json::json!({ "error": msg })))
}

const WRONG_LOGIN: &str = "wrong name or password";

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Duplicate(_) => {
            api_error(StatusCode::CONFLICT, "that name is taken; choose another")
        }
        StoreError::Db(m) => {
            tracing::error!(error = %m, "account database call failed");
            api_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the account database is unavailable; retry in a moment",
            )
        }
    }
}

/// Runs blocking work (the store, argon2) off the async threads.
async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        tracing::error!(error = %e, "blocking login task failed");
        api_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error; retry")
    })
}

/// The body as JSON of `T`; `{}` for an empty body when `empty_ok`.
fn parse<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    empty_ok: bool,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            api_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body is over {BODY_BYTES_MAX} bytes"),
            )
        } else {
            api_error(StatusCode::BAD_REQUEST, &format!("unreadable body: {e}"))
        }
    })?;
    let body: &[u8] = if empty_ok && body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &body
    };
    serde_json::from_slice(body).map_err(|e| {
        api_error(
            StatusCode::BAD_REQUEST,
            &format!("malformed JSON body: {e}"),
        )
    })
}

fn bad(msg: String) -> ApiError {
    api_error(StatusCode::BAD_REQUEST, &msg)
}

/// A password account's name: `[A-Za-z0-9_.-]`, 3 to 32 bytes.
fn check_account_name(name: &str) -> Result<(), ApiError> {
    let ok_len = (ACCOUNT_NAME_BYTES_MIN..=NAME_BYTES_MAX).contains(&name.len());
    let ok_chars = name
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if ok_len && ok_chars {
        return Ok(());
    }
    Err(bad(format!(
        "name must be {ACCOUNT_NAME_BYTES_MIN} to {NAME_BYTES_MAX} of A-Z a-z 0-9 _ . -"
    )))
}

fn check_password(password: &str) -> Result<(), ApiError> {
    if (PASSWORD_BYTES_MIN..=PASSWORD_BYTES_MAX).contains(&password.len()) {
        return Ok(());
    }
    Err(bad(format!(
        "password must be {PASSWORD_BYTES_MIN} to {PASSWORD_BYTES_MAX} bytes"
    )))
}

/// A display name: printable, at most `NAME_BYTES_MAX` bytes.
fn check_display_name(name: &str) -> Result<(), ApiError> {
    if name.len() > NAME_BYTES_MAX {
        return Err(bad(format!("name is over {NAME_BYTES_MAX} bytes")));
    }
    if name.chars().any(char::is_control) {
        return Err(bad("name has control characters".into()));
    }
    Ok(())
}

/// A platform's display name made fit: control characters dropped, cut to
/// `NAME_BYTES_MAX` bytes on a character boundary.
fn fit_name(name: &str, fallback: &str) -> String {
    let mut out = String::new();
    for c in name.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > NAME_BYTES_MAX {
            break;
        }
        out.push(c);
    }
    if out.trim().is_empty() {
        fallback.to_string()
    } else {
        out
    }
}

impl LoginState {
    /// Global and per-source limits: every request.
    fn admit(&self, peer: SocketAddr) -> Result<(), ApiError> {
        let now = Instant::now();
        if !self.global.take(&(), now) {
            return Err(api_error(
                StatusCode::TOO_MANY_REQUESTS,
                "too many logins on this server; retry in a second",
            ));
        }
        if !self.by_addr.take(&source_key(peer.ip()), now) {
            return Err(api_error(
                StatusCode::TOO_MANY_REQUESTS,
                "too many requests from your address; retry in a minute",
            ));
        }
        Ok(())
    }

    /// The per-name limit: logins and registrations naming `name`, whether
    /// or not it has an account (so a 429 tells nothing either).
    fn admit_name(&self, name: &str) -> Result<(), ApiError> {
        if !self.by_name.take(&name_key(name), Instant::now()) {
            return Err(api_error(
                StatusCode::TOO_MANY_REQUESTS,
                "too many attempts for this name; retry in a minute",
            ));
        }
        Ok(())
    }

    /// Runs argon2 work in the blocking pool, at most `hash_concurrency` at once.
    async fn hash_work<R: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Argon2<'static>, &str) -> R + Send + 'static,
    ) -> Result<R, ApiError> {
        let waiting = self.hashes_waiting.fetch_add(1, Ordering::AcqRel);
        let permit = if waiting >= HASH_WAITING_MAX {
            None
        } else {
            self.hashes.acquire().await.ok()
        };
        self.hashes_waiting.fetch_sub(1, Ordering::AcqRel);
        let Some(permit) = permit else {
            return Err(api_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the login server is busy; retry in a second",
            ));
        };
        let s = self.clone();
        let r = blocking(move || f(&s.argon2, &s.dummy_hash)).await;
        drop(permit);
        r
    }

    /// The gateways, least-loaded first: the balancer's pick, then the
    /// configured ones (from a rotating start when there is no pick).
    async fn gateways(&self) -> Result<Vec<GatewayAddr>, ApiError> {
        let mut out = Vec::new();
        if !self.cfg.balancer.is_empty() {
            let mut c = balancer::client::Client::new(self.cfg.balancer.clone());
            match c.pick(self.cfg.zone).await {
                Ok(p) => {
                    let tcp = SocketAddr::new(p.host, p.port);
                    let known = self.cfg.gateways.iter().find(|g| g.tcp == tcp).cloned();
                    out.push(known.unwrap_or(GatewayAddr { tcp, ws: None }));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "balancer pick failed; using the configured gateways")
                }
            }
        }
        let n = self.cfg.gateways.len();
        if n > 0 {
            let start = if out.is_empty() {
                self.next.fetch_add(1, Ordering::Relaxed) % n
            } else {
                0
            };
            for i in 0..n {
                let g = &self.cfg.gateways[(start + i) % n];
                if !out.iter().any(|o| o.tcp == g.tcp) {
                    out.push(g.clone());
                }
            }
        }
        if out.is_empty() {
            return Err(api_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no gateway is running; retry",
            ));
        }
        Ok(out)
    }

    /// The answer for `account`: its record, a token, the gateways.
    async fn answer(
        &self,
        account: Account,
        gateways: Vec<GatewayAddr>,
    ) -> Result<Json<LoginReply>, ApiError> {
        let store = self.cfg.store.clone();
        let player = account.player;
        let data = blocking(move || store.load(player))
            .await?
            .map_err(store_error)?;
        let expires_ms = now_ms() + self.cfg.token_ttl_ms;
        let token = mint(
            &self.cfg.secret,
            &Claims {
                player,
                zone: self.cfg.zone,
                expires_ms,
                name: account.name.clone(),
                kind: account.kind as u8,
            },
        );
        let ws_url = |a: SocketAddr| format!("ws://{a}/");
        let first = &gateways[0];
        Ok(Json(LoginReply {
            player,
            name: account.name,
            kind: account.kind as u8,
            token,
            expires_ms,
            gateway: first.tcp.to_string(),
            ws: first.ws.map(ws_url),
            gateways: gateways
                .iter()
                .map(|g| GatewayJson {
                    tcp: g.tcp.to_string(),
                    ws: g.ws.map(ws_url),
                })
                .collect(),
            record: data.record,
        }))
    }
}

type Body = Result<Bytes, BytesRejection>;
type Answer = Result<Json<LoginReply>, ApiError>;

async fn register(
    State(s): State<Arc<LoginState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Body,
) -> Answer {
    s.admit(peer)?;
    let req: PasswordRequest = parse(body, false)?;
    check_account_name(&req.name)?;
    check_password(&req.password)?;
    s.admit_name(&req.name)?;
    let gateways = s.gateways().await?;
    let hash = s
        .hash_work(move |a, _| {
            let salt = SaltString::generate(&mut rand::rngs::OsRng);
            a.hash_password(req.password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| e.to_string())
        })
        .await?
        .map_err(|e| {
            tracing::error!(error = %e, "argon2 hash failed");
            api_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error; retry")
        })?;
    let store = s.cfg.store.clone();
    let name = req.name;
    let account = blocking(move || store.register(&name, &hash))
        .await?
        .map_err(store_error)?;
    tracing::info!(player = account.player, "account registered");
    s.answer(account, gateways).await
}

async fn login(
    State(s): State<Arc<LoginState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Body,
) -> Answer {
    s.admit(peer)?;
    let req: PasswordRequest = parse(body, false)?;
    // Only the limits every account meets: anything else is looked up and
    // refused like a wrong password.
    if req.name.len() > NAME_BYTES_MAX || req.password.len() > PASSWORD_BYTES_MAX {
        return Err(bad(format!(
            "name is at most {NAME_BYTES_MAX} bytes, password at most {PASSWORD_BYTES_MAX}"
        )));
    }
    s.admit_name(&req.name)?;
    let gateways = s.gateways().await?;
    let store = s.cfg.store.clone();
    let name = req.name.clone();
    let found = blocking(move || store.password_account(&name))
        .await?
        .map_err(store_error)?;
    let (account, hash) = match found {
        Some((a, h)) => (Some(a), Some(h)),
        None => (None, None),
    };
    let password = req.password;
    let ok = s
        .hash_work(move |a, dummy| {
            // A missing account verifies against the dummy hash: same work, same time.
            let hash = hash.as_deref().unwrap_or(dummy);
            match PasswordHash::new(hash) {
                Ok(h) => a.verify_password(password.as_bytes(), &h).is_ok(),
                Err(e) => {
                    tracing::error!(error = %e, "a stored password hash does not parse");
                    false
                }
            }
        })
        .await?;
    match account {
        Some(account) if ok => s.answer(account, gateways).await,
        _ => Err(api_error(StatusCode::UNAUTHORIZED, WRONG_LOGIN)),
    }
}

async fn guest(
    State(s): State<Arc<LoginState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Body,
) -> Answer {
    s.admit(peer)?;
    let req: GuestRequest = parse(body, true)?;
    let name = req
        .name
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty());
    if let Some(n) = &name {
        check_display_name(n)?;
    }
    let name = name.unwrap_or_else(|| format!("guest{:05}", rand::random::<u32>() % 100_000));
    if let Some(d) = &req.device {
        let ok_len = (DEVICE_BYTES_MIN..=DEVICE_BYTES_MAX).contains(&d.len());
        if !ok_len || !d.bytes().all(|c| c.is_ascii_graphic()) {
            return Err(bad(format!(
                "device must be {DEVICE_BYTES_MIN} to {DEVICE_BYTES_MAX} printable ASCII bytes"
            )));
        }
    }
    let gateways = s.gateways().await?;
    let store = s.cfg.store.clone();
    let account = blocking(move || match req.device {
        Some(d) => store.guest(&d, &name),
        None => store.new_guest(&name),
    })
    .await?
    .map_err(store_error)?;
    s.answer(account, gateways).await
}

async fn platform(
    State(s): State<Arc<LoginState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Body,
) -> Answer {
    s.admit(peer)?;
    let req: PlatformRequest = parse(body, false)?;
    if req.platform.len() > PLATFORM_BYTES_MAX || req.user_token.len() > PLATFORM_TOKEN_BYTES_MAX {
        return Err(bad(format!(
            "platform is at most {PLATFORM_BYTES_MAX} bytes, user_token at most {PLATFORM_TOKEN_BYTES_MAX}"
        )));
    }
    let Some((pname, verifier)) = s
        .cfg
        .platforms
        .iter()
        .find(|p| p.0 == req.platform)
        .cloned()
    else {
        let known: Vec<&str> = s.cfg.platforms.iter().map(|p| p.0.as_str()).collect();
        return Err(bad(format!(
            "unknown platform {:?}; this server takes {known:?}",
            req.platform
        )));
    };
    let token = req.user_token;
    let user = blocking(move || verifier.verify(&token, now_ms()))
        .await?
        .map_err(|why| {
            api_error(
                StatusCode::UNAUTHORIZED,
                &format!("platform token refused: {why}; log in to the platform again"),
            )
        })?;
    let gateways = s.gateways().await?;
    let store = s.cfg.store.clone();
    let name = fit_name(&user.name, &pname);
    let account = blocking(move || store.platform(&pname, &user.user, &name))
        .await?
        .map_err(store_error)?;
    s.answer(account, gateways).await
}

/// The H5 client (`gameserver/web/`), embedded so the page ships with the
/// binary: `GET /` is the page, `GET /web/<file>` its scripts and style.
/// With `GS_WEB_DIR` set the same files are read from that directory on
/// each request instead (editing the page without rebuilding).
const WEB_FILES: &[(&str, &str, &[u8])] = &[
    ("index.html", HTML, include_bytes!("../web/index.html")),
    ("app.js", JS, include_bytes!("../web/app.js")),
    ("client.js", JS, include_bytes!("../web/client.js")),
    ("proto.js", JS, include_bytes!("../web/proto.js")),
    ("style.css", CSS, include_bytes!("../web/style.css")),
];
const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

async fn web_file(file: Option<axum::extract::Path<String>>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let name = file.map_or_else(|| "index.html".to_string(), |p| p.0);
    match WEB_FILES.iter().find(|f| f.0 == name) {
        Some(&(file, mime, body)) => {
            let headers = [("content-type", mime), ("cache-control", "no-cache")];
            match std::env::var_os("GS_WEB_DIR") {
                // A development override: small files, read in place.
                Some(dir) => match std::fs::read(std::path::Path::new(&dir).join(file)) {
                    Ok(b) => (headers, b).into_response(),
                    Err(e) => (StatusCode::NOT_FOUND, e.to_string()).into_response(),
                },
                None => (headers, body).into_response(),
            }
        }
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}

/// Serves the login endpoints on an already bound listener until `stop` resolves.
pub async fn serve(
    cfg: LoginConfig,
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let argon2 = cfg
        .hash
        .argon2()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let a = argon2.clone();
    let dummy_hash = tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let pw: [u8; 16] = rand::random();
        a.hash_password(&pw, &salt).map(|h| h.to_string())
    })
    .await
    .map_err(std::io::Error::other)?
    .map_err(|e| std::io::Error::other(format!("argon2: {e}")))?;
    let l = cfg.limits;
    let state = Arc::new(LoginState {
        global: Limiter::new(cfg.rate_per_s as f64, cfg.rate_per_s as f64, 1),
        by_addr: Limiter::new(l.addr_burst as f64, l.addr_per_s, l.keys_max),
        by_name: Limiter::new(l.name_burst as f64, l.name_per_s, l.keys_max),
        hashes: tokio::sync::Semaphore::new(cfg.hash_concurrency.max(1)),
        hashes_waiting: AtomicUsize::new(0),
        argon2,
        dummy_hash,
        cfg,
        next: AtomicUsize::new(0),
    });
    let app = Router::new()
        .route("/v1/register", post(register))
        .route("/v1/login", post(login))
        .route("/v1/guest", post(guest))
        .route("/v1/platform", post(platform))
        .route("/", get(web_file))
        .route("/web/:file", get(web_file))
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(state);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stop)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_refills_at_its_rate_and_stops_at_its_burst() {
        let l = Limiter::new(2.0, 1.0, 10);
        let t = Instant::now();
        assert!(l.take(&1, t) && l.take(&1, t));
        assert!(!l.take(&1, t));
        assert!(l.take(&2, t), "another key has its own bucket");
        let later = t + std::time::Duration::from_millis(1_100);
        assert!(l.take(&1, later));
        assert!(!l.take(&1, later));
        let much_later = t + std::time::Duration::from_secs(100);
        assert!(l.take(&1, much_later) && l.take(&1, much_later));
        assert!(!l.take(&1, much_later), "no more than the burst");
    }

    #[test]
    fn a_full_limiter_forgets_full_buckets_before_emptied_ones() {
        let l = Limiter::new(3.0, 0.0, 16);
        let t = Instant::now();
        for _ in 0..3 {
            assert!(l.take(&0u32, t));
        }
        assert!(!l.take(&0, t));
        for k in 1..1000u32 {
            l.take(&k, t);
            assert!(l.len() <= 16);
        }
        assert!(!l.take(&0, t), "the emptied bucket was kept");
    }

    #[test]
    fn ipv6_sources_share_a_bucket_per_64() {
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        let c: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(source_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn test_platform_tokens_verify_and_forgeries_do_not() {
        let p = TestPlatform::new(b"k");
        let t = p.mint("u1", "Ann", 2_000);
        assert_eq!(
            p.verify(&t, 1_000).unwrap(),
            PlatformUser {
                user: "u1".into(),
                name: "Ann".into()
            }
        );
        assert!(p.verify(&t, 2_000).unwrap_err().contains("expired"));
        assert!(TestPlatform::new(b"other").verify(&t, 1_000).is_err());
        assert!(p.verify("zz.zz", 1_000).is_err());
    }

    #[test]
    fn names_fit() {
        assert_eq!(fit_name("a\u{7}b", "x"), "ab");
        assert_eq!(fit_name("  ", "x"), "x");
        let long = "é".repeat(40);
        let f = fit_name(&long, "x");
        assert!(f.len() <= NAME_BYTES_MAX && f.chars().all(|c| c == 'é'));
    }

    #[test]
    fn production_hash_params_are_valid() {
        HashParams::default().argon2().unwrap();
        HashParams::insecure_for_tests().argon2().unwrap();
    }
}
