//! The center's rules, sans-IO: `(state, input, now) → (records, messages)`.
//!
//! [`State`] is what hs replicates (the global user table, the login queue,
//! the blacklist, the login counter); it changes only through
//! [`State::apply`] of a [`Rec`], on the master right after the record is
//! published and on the standby from hs, so both hold the same state.
//! [`Center`] is the master's volatile part (which gateway is on which link,
//! their channels, the queue positions last told) and the decisions: its
//! [`Center::handle`] reads the state, writes records through a [`Sink`]
//! (publish, then apply) and returns the messages for the gateways. When the
//! sink refuses (the node is no longer master) the decision stops there: the
//! state holds exactly the records that were published, and nothing of the
//! decision is sent.
//!
//! Time is a parameter (`now_ms`, unix ms): ban expiries are wall-clock
//! instants so they mean the same on both nodes (a skew of seconds on a ban
//! of hours is accepted); the gateways' grace is measured on the master.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::link::{FromCenter, Held, Login, Targets, ToCenter};
use crate::proto::msg::{decode, encode, ErrorCode, Fail, Notice, NoticeTo, SayTo};

/// Login numbers reserved by one `n` record: one counter record per this
/// many logins; a failover skips at most this many numbers.
pub const LOGIN_RESERVE_BLOCK: u64 = 1024;
/// Records one tick writes at most (expired bans, sessions of a vanished
/// gateway): a tick stays short, the rest waits for the next one.
pub const TICK_RECORDS_MAX: usize = 4096;
/// Players named in one broadcast list at most.
pub const LIST_PLAYERS_MAX: usize = 10_000;

/// The center's limits. Each costs memory on both nodes or work per tick.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreConfig {
    /// This node's id, told to gateways in Welcome.
    #[serde(default)]
    pub node: u64,
    /// Players admitted per zone before logins wait in the queue.
    pub online_max: u64,
    /// Per-zone overrides of `online_max`.
    #[serde(default)]
    pub zone_online_max: BTreeMap<u32, u64>,
    /// Sessions waiting per zone at most; one more is refused (QueueFull).
    pub queue_max: usize,
    /// Players in the table at most (all zones): a login past it is
    /// refused QueueFull. Costs ~200 bytes per player on each node.
    pub players_max: usize,
    /// Blacklist entries at most.
    pub bans_max: usize,
    /// Gateways connected at once at most.
    pub gateways_max: usize,
    /// Channels one gateway may subscribe to.
    pub channels_per_gateway_max: usize,
    /// How long the sessions of a gateway that lost its link stay in the
    /// table, ms: a gateway that comes back in time re-syncs, one that does
    /// not (it died) has its players logged out.
    pub gateway_grace_ms: u64,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            node: 0,
            online_max: 100_000,
            zone_online_max: BTreeMap::new(),
            queue_max: 10_000,
            players_max: 1_000_000,
            bans_max: 100_000,
            gateways_max: 1024,
            channels_per_gateway_max: 65_536,
            gateway_grace_ms: 10_000,
        }
    }
}

/// An admitted player: the global user table's row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Online {
    pub gateway: u64,
    pub session: u64,
    pub login: u64,
    pub zone: u32,
    pub name: String,
    pub kind: u8,
    pub addr: IpAddr,
    pub since_ms: u64,
}

/// A player waiting in a zone's login queue (FIFO by `ticket`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    pub ticket: u64,
    pub gateway: u64,
    pub session: u64,
    pub zone: u32,
    pub name: String,
    pub kind: u8,
    pub addr: IpAddr,
    pub since_ms: u64,
}

/// What a blacklist entry names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum BanKey {
    Account(u64),
    Addr(IpAddr),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    pub reason: String,
    pub at_ms: u64,
    /// Unix ms from which the entry no longer counts; `None`: for good.
    pub until_ms: Option<u64>,
}

impl Ban {
    fn active(&self, now_ms: u64) -> bool {
        self.until_ms.is_none_or(|u| now_ms < u)
    }
}

/// One hs record of the center.
///
/// ```text
/// key "u" | player u64 BE          put postcard(Online)   delete: logged out
/// key "q" | player u64 BE          put postcard(Waiting)  delete: left the queue
/// key "b" | 0 | player u64 BE      put postcard(Ban)      delete: unbanned / expired
/// key "b" | 4 | ipv4 (4 bytes)     (same)
/// key "b" | 6 | ipv6 (16 bytes)    (same)
/// key "n"                          put u64 LE: login numbers up to it are reserved
/// ```
///
/// hs keeps the latest value per key, which is the state itself. A `u` put
/// also takes the player out of the queue (admission is one record).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rec {
    User(u64, Online),
    UserGone(u64),
    Wait(u64, Waiting),
    WaitGone(u64),
    Ban(BanKey, Ban),
    BanGone(BanKey),
    Reserve(u64),
}

fn ban_key(k: &BanKey) -> Vec<u8> {
    let mut v = vec![b'b'];
    match k {
        BanKey::Account(p) => {
            v.push(0);
            v.extend_from_slice(&p.to_be_bytes());
        }
        BanKey::Addr(IpAddr::V4(a)) => {
            v.push(4);
            v.extend_from_slice(&a.octets());
        }
        BanKey::Addr(IpAddr::V6(a)) => {
            v.push(6);
            v.extend_from_slice(&a.octets());
        }
    }
    v
}

fn player_key(tag: u8, p: u64) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&p.to_be_bytes());
    v
}

/// Why bytes are not a center record.
#[derive(Debug, thiserror::Error)]
pub enum RecError {
    #[error("key {0:02x?} is not a center key")]
    BadKey(Vec<u8>),
    #[error("value of key {key:02x?} does not decode: {err}")]
    Decode { key: Vec<u8>, err: postcard::Error },
}

impl Rec {
    /// The record as (key, is a put, value).
    pub fn to_kv(&self) -> (Vec<u8>, bool, Vec<u8>) {
        match self {
            Rec::User(p, o) => (player_key(b'u', *p), true, encode(o)),
            Rec::UserGone(p) => (player_key(b'u', *p), false, Vec::new()),
            Rec::Wait(p, w) => (player_key(b'q', *p), true, encode(w)),
            Rec::WaitGone(p) => (player_key(b'q', *p), false, Vec::new()),
            Rec::Ban(k, b) => (ban_key(k), true, encode(b)),
            Rec::BanGone(k) => (ban_key(k), false, Vec::new()),
            Rec::Reserve(n) => (vec![b'n'], true, n.to_le_bytes().to_vec()),
        }
    }

    pub fn from_kv(key: &[u8], put: bool, value: &[u8]) -> Result<Rec, RecError> {
        let bad = || RecError::BadKey(key.to_vec());
        let dec = |err| RecError::Decode {
            key: key.to_vec(),
            err,
        };
        let player = |k: &[u8]| -> Result<u64, RecError> {
            Ok(u64::from_be_bytes(k.try_into().map_err(|_| bad())?))
        };
        Ok(match key {
            [b'u', rest @ ..] => match put {
                true => Rec::User(player(rest)?, decode(value).map_err(dec)?),
                false => Rec::UserGone(player(rest)?),
            },
            [b'q', rest @ ..] => match put {
                true => Rec::Wait(player(rest)?, decode(value).map_err(dec)?),
                false => Rec::WaitGone(player(rest)?),
            },
            [b'b', tag, rest @ ..] => {
                let k = match (tag, rest.len()) {
                    (0, 8) => BanKey::Account(player(rest)?),
                    (4, 4) => BanKey::Addr(IpAddr::from(<[u8; 4]>::try_from(rest).expect("4"))),
                    (6, 16) => BanKey::Addr(IpAddr::from(<[u8; 16]>::try_from(rest).expect("16"))),
                    _ => return Err(bad()),
                };
                match put {
                    true => Rec::Ban(k, decode(value).map_err(dec)?),
                    false => Rec::BanGone(k),
                }
            }
            [b'n'] if put => Rec::Reserve(u64::from_le_bytes(
                value
                    .try_into()
                    .map_err(|_| dec(postcard::Error::DeserializeBadEncoding))?,
            )),
            _ => return Err(bad()),
        })
    }
}

/// The replicated state: every field is a function of the records applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    pub users: HashMap<u64, Online>,
    pub waiting: HashMap<u64, Waiting>,
    /// (zone, ticket) → player: each zone's queue in order.
    pub queue: BTreeMap<(u32, u64), u64>,
    pub bans: BTreeMap<BanKey, Ban>,
    /// Login numbers and tickets up to this are reserved (handed out or not).
    pub reserved: u64,
    /// The highest number seen in a record.
    pub last: u64,
    /// Derived: admitted players per zone, players per gateway.
    pub online: HashMap<u32, u64>,
    pub by_gateway: HashMap<u64, BTreeSet<u64>>,
}

impl State {
    /// Applies one record; infallible and deterministic.
    pub fn apply(&mut self, r: &Rec) {
        match r {
            Rec::User(p, o) => {
                self.remove_user(*p);
                self.remove_waiting(*p);
                self.last = self.last.max(o.login);
                *self.online.entry(o.zone).or_default() += 1;
                self.by_gateway.entry(o.gateway).or_default().insert(*p);
                self.users.insert(*p, o.clone());
            }
            Rec::UserGone(p) => self.remove_user(*p),
            Rec::Wait(p, w) => {
                self.remove_waiting(*p);
                self.last = self.last.max(w.ticket);
                self.queue.insert((w.zone, w.ticket), *p);
                self.waiting.insert(*p, w.clone());
            }
            Rec::WaitGone(p) => self.remove_waiting(*p),
            Rec::Ban(k, b) => {
                self.bans.insert(*k, b.clone());
            }
            Rec::BanGone(k) => {
                self.bans.remove(k);
            }
            Rec::Reserve(n) => self.reserved = self.reserved.max(*n),
        }
    }

    fn remove_user(&mut self, p: u64) {
        if let Some(o) = self.users.remove(&p) {
            if let Some(n) = self.online.get_mut(&o.zone) {
                *n -= 1;
                if *n == 0 {
                    self.online.remove(&o.zone);
                }
            }
            if let Some(s) = self.by_gateway.get_mut(&o.gateway) {
                s.remove(&p);
                if s.is_empty() {
                    self.by_gateway.remove(&o.gateway);
                }
            }
        }
    }

    fn remove_waiting(&mut self, p: u64) {
        if let Some(w) = self.waiting.remove(&p) {
            self.queue.remove(&(w.zone, w.ticket));
        }
    }

    pub fn online_in(&self, zone: u32) -> u64 {
        self.online.get(&zone).copied().unwrap_or(0)
    }

    pub fn waiting_in(&self, zone: u32) -> usize {
        self.queue.range((zone, 0)..=(zone, u64::MAX)).count()
    }

    /// The active ban of an account or an address, if any.
    pub fn banned(&self, player: u64, addr: IpAddr, now_ms: u64) -> Option<(BanKey, &Ban)> {
        [BanKey::Account(player), BanKey::Addr(addr)]
            .into_iter()
            .find_map(|k| {
                self.bans
                    .get(&k)
                    .filter(|b| b.active(now_ms))
                    .map(|b| (k, b))
            })
    }
}

/// Where the master's records go: publish (hs), and only if that worked
/// does the core apply them.
pub trait Sink {
    /// `Err`: not written (not master any more, or the log refused).
    fn write(&mut self, r: &Rec) -> Result<(), Stopped>;
}

/// The sink refused a record: the node must stop acting as master.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the center's log refused a record: {0}")]
pub struct Stopped(pub String);

/// A link between the center and one gateway (the server's numbering).
pub type LinkId = u64;

/// What happens to the center.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A gateway's message on a link (Hello first: the server checks it).
    Msg(LinkId, ToCenter),
    /// The link is gone.
    Closed(LinkId),
    Admin(AdminCmd),
    /// Periodic: queue positions, expired bans, vanished gateways.
    Tick,
}

/// Operator commands (admin HTTP).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminCmd {
    /// Close the player's session; `ban_ms` also blacklists the account
    /// for that long (0: for good).
    Kick {
        player: u64,
        reason: String,
        ban_ms: Option<u64>,
    },
    /// Blacklist an account or an address (`ttl_ms` None: for good) and
    /// close every session it matches.
    Ban {
        key: BanKey,
        reason: String,
        ttl_ms: Option<u64>,
    },
    Unban {
        key: BanKey,
    },
    /// A notice from the operator.
    Broadcast {
        targets: Targets,
        text: String,
    },
    Stats,
    Bans,
    /// Where a player is.
    Player {
        player: u64,
    },
}

/// What the center decided.
#[derive(Debug, Default, PartialEq)]
pub struct Output {
    /// Messages, in order, per link.
    pub sends: Vec<(LinkId, FromCenter)>,
    /// Links to close after their messages.
    pub close: Vec<LinkId>,
    /// The answer to an admin command.
    pub admin: Option<serde_json::Value>,
}

struct Gateway {
    link: Option<LinkId>,
    zone: u32,
    addr: String,
    channels: HashSet<u32>,
    /// When its link went (or when this master first missed it), unix ms.
    absent_since: Option<u64>,
}

/// Counters an operator reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub logins: u64,
    pub admitted: u64,
    pub takeovers: u64,
    pub queued: u64,
    pub refused_blacklisted: u64,
    pub refused_full: u64,
    pub kicked: u64,
    pub stale_sessions_kicked: u64,
    pub notices: u64,
    pub notices_undeliverable: u64,
    pub gateways_expired: u64,
}

/// The master's decisions and volatile state (see the module doc).
pub struct Center {
    cfg: CoreConfig,
    /// The last number handed out (≤ `state.reserved`).
    issued: u64,
    gateways: HashMap<u64, Gateway>,
    links: HashMap<LinkId, u64>,
    /// The position last told to each waiting player.
    told: HashMap<u64, u32>,
    dirty: BTreeSet<u32>,
    pub counters: Counters,
}

fn fail(code: ErrorCode, m: impl Into<String>) -> Fail {
    Fail::new(code, m)
}

impl Center {
    /// A new master over `state`: numbers continue above everything the
    /// previous master could have reserved.
    pub fn new(cfg: CoreConfig, state: &State) -> Center {
        Center {
            cfg,
            issued: state.reserved.max(state.last),
            gateways: HashMap::new(),
            links: HashMap::new(),
            told: HashMap::new(),
            dirty: state.queue.keys().map(|(z, _)| *z).collect(),
            counters: Counters::default(),
        }
    }

    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    fn online_max(&self, zone: u32) -> u64 {
        *self
            .cfg
            .zone_online_max
            .get(&zone)
            .unwrap_or(&self.cfg.online_max)
    }

    /// The gateway on `link`, if it said Hello.
    pub fn gateway_of(&self, link: LinkId) -> Option<u64> {
        self.links.get(&link).copied()
    }

    fn write(&mut self, st: &mut State, sink: &mut dyn Sink, r: Rec) -> Result<(), Stopped> {
        sink.write(&r)?;
        st.apply(&r);
        Ok(())
    }

    /// The next login number (or queue ticket), reserving a block first
    /// when the reserved ones are used up.
    fn number(&mut self, st: &mut State, sink: &mut dyn Sink) -> Result<u64, Stopped> {
        if self.issued >= st.reserved {
            let to = self.issued + LOGIN_RESERVE_BLOCK;
            self.write(st, sink, Rec::Reserve(to))?;
        }
        self.issued += 1;
        debug_assert!(self.issued <= st.reserved);
        Ok(self.issued)
    }

    fn send_to(&self, out: &mut Output, gateway: u64, m: FromCenter) -> bool {
        match self.gateways.get(&gateway).and_then(|g| g.link) {
            Some(l) => {
                out.sends.push((l, m));
                true
            }
            None => false,
        }
    }

    pub fn handle(
        &mut self,
        st: &mut State,
        input: Input,
        now_ms: u64,
        sink: &mut dyn Sink,
    ) -> Result<Output, Stopped> {
        let mut out = Output::default();
        match input {
            Input::Msg(link, m) => self.message(st, link, m, now_ms, sink, &mut out)?,
            Input::Closed(link) => {
                if let Some(g) = self.links.remove(&link) {
                    if let Some(gw) = self.gateways.get_mut(&g) {
                        if gw.link == Some(link) {
                            gw.link = None;
                            gw.absent_since = Some(now_ms);
                        }
                    }
                }
            }
            Input::Admin(cmd) => self.admin(st, cmd, now_ms, sink, &mut out)?,
            Input::Tick => self.tick(st, now_ms, sink, &mut out)?,
        }
        Ok(out)
    }

    fn message(
        &mut self,
        st: &mut State,
        link: LinkId,
        m: ToCenter,
        now_ms: u64,
        sink: &mut dyn Sink,
        out: &mut Output,
    ) -> Result<(), Stopped> {
        if let ToCenter::Hello {
            gateway,
            zone,
            addr,
            ..
        } = m
        {
            let known = self.gateways.contains_key(&gateway);
            let connected = self.gateways.values().filter(|g| g.link.is_some()).count();
            if !known && connected >= self.cfg.gateways_max {
                tracing::warn!(
                    gateway,
                    max = self.cfg.gateways_max,
                    "gateway refused: gateways_max connected"
                );
                out.close.push(link);
                return Ok(());
            }
            let gw = self.gateways.entry(gateway).or_insert_with(|| Gateway {
                link: None,
                zone,
                addr: addr.clone(),
                channels: HashSet::new(),
                absent_since: None,
            });
            if let Some(old) = gw.link.replace(link) {
                if old != link {
                    out.close.push(old);
                    self.links.remove(&old);
                }
            }
            (gw.zone, gw.addr, gw.absent_since) = (zone, addr, None);
            self.links.insert(link, gateway);
            out.sends.push((
                link,
                FromCenter::Welcome {
                    node: self.cfg.node,
                },
            ));
            return Ok(());
        }
        let Some(g) = self.links.get(&link).copied() else {
            out.close.push(link); // no Hello first
            return Ok(());
        };
        match m {
            ToCenter::Hello { .. } => {}
            ToCenter::Ping => out.sends.push((link, FromCenter::Pong)),
            ToCenter::Login(l) => self.login(st, g, l, now_ms, sink, out)?,
            ToCenter::Logout { player, session } => {
                if let Some(o) = st.users.get(&player) {
                    if (o.gateway, o.session) == (g, session) {
                        let zone = o.zone;
                        tracing::debug!(player, gateway = g, session, "logout");
                        self.write(st, sink, Rec::UserGone(player))?;
                        self.admit(st, zone, now_ms, sink, out)?;
                    }
                } else if let Some(w) = st.waiting.get(&player) {
                    if (w.gateway, w.session) == (g, session) {
                        let zone = w.zone;
                        self.write(st, sink, Rec::WaitGone(player))?;
                        self.told.remove(&player);
                        self.dirty.insert(zone);
                    }
                }
            }
            ToCenter::Sync {
                admitted,
                waiting,
                channels,
            } => self.sync(st, g, admitted, waiting, channels, now_ms, sink, out)?,
            ToCenter::Subscribe { channel } => {
                let max = self.cfg.channels_per_gateway_max;
                if let Some(gw) = self.gateways.get_mut(&g) {
                    if gw.channels.len() < max {
                        gw.channels.insert(channel);
                    } else {
                        tracing::warn!(gateway = g, max, "channels_per_gateway_max reached");
                    }
                }
            }
            ToCenter::Unsubscribe { channel } => {
                if let Some(gw) = self.gateways.get_mut(&g) {
                    gw.channels.remove(&channel);
                }
            }
            ToCenter::Say {
                from,
                name,
                session,
                seq,
                to,
                text,
            } => {
                let reply = match to {
                    SayTo::Channel(c) => {
                        let notice = Notice {
                            from,
                            name,
                            to: NoticeTo::Channel(c),
                            text,
                            at_ms: now_ms,
                        };
                        self.route(st, Targets::Channel(c), notice, out);
                        Ok(())
                    }
                    SayTo::Player(p) => match st.users.get(&p) {
                        Some(o) => {
                            let gw = o.gateway;
                            let notice = Notice {
                                from,
                                name,
                                to: NoticeTo::Private,
                                text,
                                at_ms: now_ms,
                            };
                            self.counters.notices += 1;
                            let m = FromCenter::Deliver {
                                targets: Targets::Players(vec![p]),
                                notice,
                            };
                            if self.send_to(out, gw, m) {
                                Ok(())
                            } else {
                                self.counters.notices_undeliverable += 1;
                                Err(fail(
                                    ErrorCode::Unavailable,
                                    "the player's gateway is reconnecting; try again",
                                ))
                            }
                        }
                        None => Err(fail(
                            ErrorCode::NotOnline,
                            format!("player {p} is not online"),
                        )),
                    },
                };
                out.sends.push((
                    link,
                    FromCenter::Said {
                        session,
                        seq,
                        reply,
                    },
                ));
            }
        }
        Ok(())
    }

    fn login(
        &mut self,
        st: &mut State,
        g: u64,
        l: Login,
        now_ms: u64,
        sink: &mut dyn Sink,
        out: &mut Output,
    ) -> Result<(), Stopped> {
        let Some(zone) = self.gateways.get(&g).map(|gw| gw.zone) else {
            return Ok(());
        };
        let link = self.gateways[&g].link.expect("a message came on it");
        let (player, session) = (l.player, l.session);
        // A re-sent Login (the link went down before the answer).
        if let Some(o) = st
            .users
            .get(&player)
            .filter(|o| (o.gateway, o.session) == (g, session))
        {
            let login = o.login;
            out.sends.push((
                link,
                FromCenter::Admitted {
                    player,
                    session,
                    login,
                },
            ));
            return Ok(());
        }
        if st
            .waiting
            .get(&player)
            .is_some_and(|w| (w.gateway, w.session) == (g, session))
        {
            self.told.remove(&player);
            self.dirty.insert(zone);
            return Ok(());
        }
        self.counters.logins += 1;
        if let Some((k, b)) = st.banned(player, l.addr, now_ms) {
            self.counters.refused_blacklisted += 1;
            let what = match k {
                BanKey::Account(p) => format!("account {p}"),
                BanKey::Addr(a) => format!("address {a}"),
            };
            let until = match b.until_ms {
                Some(u) => format!(" until unix ms {u}"),
                None => String::new(),
            };
            let m = format!("{what} is blacklisted{until}: {}", b.reason);
            let fail = fail(ErrorCode::Blacklisted, m);
            out.sends.push((
                link,
                FromCenter::Refused {
                    player,
                    session,
                    fail,
                },
            ));
            return Ok(());
        }
        let row = |login: u64| Online {
            gateway: g,
            session,
            login,
            zone,
            name: l.name.clone(),
            kind: l.kind,
            addr: l.addr,
            since_ms: now_ms,
        };
        // Single sign-on: an online player's new login takes over at once
        // (the old session is told first, then the new one admitted).
        if let Some(old) = st.users.get(&player).cloned() {
            let login = self.number(st, sink)?;
            self.write(st, sink, Rec::User(player, row(login)))?;
            self.counters.takeovers += 1;
            self.counters.admitted += 1;
            let fail = fail(
                ErrorCode::LoggedInElsewhere,
                "you logged in on another connection",
            );
            let kick = FromCenter::Kick {
                player,
                session: old.session,
                fail,
            };
            self.send_to(out, old.gateway, kick);
            out.sends.push((
                link,
                FromCenter::Admitted {
                    player,
                    session,
                    login,
                },
            ));
            return Ok(());
        }
        // Waiting already on another connection: the new one takes the place.
        if let Some(old) = st.waiting.get(&player).cloned() {
            let w = Waiting {
                gateway: g,
                session,
                name: l.name.clone(),
                kind: l.kind,
                addr: l.addr,
                ..old.clone()
            };
            self.write(st, sink, Rec::Wait(player, w))?;
            let fail = fail(
                ErrorCode::LoggedInElsewhere,
                "you logged in on another connection",
            );
            let kick = FromCenter::Kick {
                player,
                session: old.session,
                fail,
            };
            self.send_to(out, old.gateway, kick);
            self.told.remove(&player);
            self.dirty.insert(old.zone);
            return Ok(());
        }
        let room_now = st.online_in(zone) < self.online_max(zone) && st.waiting_in(zone) == 0;
        if room_now && st.users.len() < self.cfg.players_max {
            let login = self.number(st, sink)?;
            self.write(st, sink, Rec::User(player, row(login)))?;
            self.counters.admitted += 1;
            out.sends.push((
                link,
                FromCenter::Admitted {
                    player,
                    session,
                    login,
                },
            ));
            return Ok(());
        }
        let waiting = st.waiting_in(zone);
        if waiting >= self.cfg.queue_max || st.users.len() >= self.cfg.players_max {
            self.counters.refused_full += 1;
            let fail = fail(
                ErrorCode::QueueFull,
                format!("zone {zone} is full and {waiting} players wait already; try later"),
            );
            out.sends.push((
                link,
                FromCenter::Refused {
                    player,
                    session,
                    fail,
                },
            ));
            return Ok(());
        }
        let ticket = self.number(st, sink)?;
        let w = Waiting {
            ticket,
            gateway: g,
            session,
            zone,
            name: l.name,
            kind: l.kind,
            addr: l.addr,
            since_ms: now_ms,
        };
        self.write(st, sink, Rec::Wait(player, w))?;
        self.counters.queued += 1;
        self.dirty.insert(zone);
        Ok(())
    }

    /// Admits from the head of `zone`'s queue while there is room.
    fn admit(
        &mut self,
        st: &mut State,
        zone: u32,
        now_ms: u64,
        sink: &mut dyn Sink,
        out: &mut Output,
    ) -> Result<(), Stopped> {
        // Bounded: each turn takes one entry off the queue.
        while st.online_in(zone) < self.online_max(zone) && st.users.len() < self.cfg.players_max {
            let Some((_, &player)) = st.queue.range((zone, 0)..=(zone, u64::MAX)).next() else {
                break;
            };
            let w = st.waiting[&player].clone();
            let login = self.number(st, sink)?;
            let row = Online {
                gateway: w.gateway,
                session: w.session,
                login,
                zone,
                name: w.name,
                kind: w.kind,
                addr: w.addr,
                since_ms: now_ms,
            };
            self.write(st, sink, Rec::User(player, row))?;
            self.counters.admitted += 1;
            self.told.remove(&player);
            self.dirty.insert(zone);
            let m = FromCenter::Admitted {
                player,
                session: w.session,
                login,
            };
            // A gateway away now gets it again when it re-sends the Login.
            self.send_to(out, w.gateway, m);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn sync(
        &mut self,
        st: &mut State,
        g: u64,
        admitted: Vec<Held>,
        waiting: Vec<(u64, u64)>,
        channels: Vec<u32>,
        now_ms: u64,
        sink: &mut dyn Sink,
        out: &mut Output,
    ) -> Result<(), Stopped> {
        let held: HashSet<(u64, u64)> = admitted.iter().map(|h| (h.player, h.session)).collect();
        for h in &admitted {
            let code = match st.users.get(&h.player) {
                Some(o) if (o.gateway, o.session) == (g, h.session) => continue,
                Some(_) => (
                    ErrorCode::LoggedInElsewhere,
                    "you logged in on another connection",
                ),
                None => (
                    ErrorCode::Kicked,
                    "the center server does not know this session any more; log in again",
                ),
            };
            self.counters.stale_sessions_kicked += 1;
            let m = FromCenter::Kick {
                player: h.player,
                session: h.session,
                fail: fail(code.0, code.1),
            };
            self.send_to(out, g, m);
        }
        let mut zones = BTreeSet::new();
        let gone: Vec<(u64, u32)> = st
            .by_gateway
            .get(&g)
            .into_iter()
            .flatten()
            .filter_map(|p| st.users.get(p).map(|o| (*p, o)))
            .filter(|(p, o)| !held.contains(&(*p, o.session)))
            .map(|(p, o)| (p, o.zone))
            .collect();
        for (p, zone) in gone {
            tracing::debug!(
                player = p,
                gateway = g,
                "not in the gateway's sync: logged out"
            );
            self.write(st, sink, Rec::UserGone(p))?;
            zones.insert(zone);
        }
        let still: HashSet<(u64, u64)> = waiting.into_iter().collect();
        let mut left: Vec<(u64, u32)> = st
            .waiting
            .iter()
            .filter(|(p, w)| w.gateway == g && !still.contains(&(**p, w.session)))
            .map(|(p, w)| (*p, w.zone))
            .collect();
        left.sort_unstable();
        for (p, zone) in left {
            self.write(st, sink, Rec::WaitGone(p))?;
            self.told.remove(&p);
            self.dirty.insert(zone);
        }
        let max = self.cfg.channels_per_gateway_max;
        if let Some(gw) = self.gateways.get_mut(&g) {
            gw.channels = channels.into_iter().take(max).collect();
            gw.absent_since = None;
        }
        // The positions of this gateway's waiting players are told again.
        for (p, w) in &st.waiting {
            if w.gateway == g {
                self.told.remove(p);
                self.dirty.insert(w.zone);
            }
        }
        for zone in zones {
            self.admit(st, zone, now_ms, sink, out)?;
        }
        Ok(())
    }

    /// Sends `notice` to every connected gateway concerned by `targets`.
    fn route(&mut self, st: &State, targets: Targets, notice: Notice, out: &mut Output) -> usize {
        self.counters.notices += 1;
        let mut n = 0;
        match targets {
            Targets::All => {
                for gw in self.gateways.values() {
                    if let Some(l) = gw.link {
                        let m = FromCenter::Deliver {
                            targets: Targets::All,
                            notice: notice.clone(),
                        };
                        out.sends.push((l, m));
                        n += 1;
                    }
                }
            }
            Targets::Channel(c) => {
                for gw in self.gateways.values() {
                    if let (Some(l), true) = (gw.link, gw.channels.contains(&c)) {
                        let m = FromCenter::Deliver {
                            targets: Targets::Channel(c),
                            notice: notice.clone(),
                        };
                        out.sends.push((l, m));
                        n += 1;
                    }
                }
            }
            Targets::Players(list) => {
                let mut per: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
                for p in list.into_iter().take(LIST_PLAYERS_MAX) {
                    match st.users.get(&p) {
                        Some(o) => per.entry(o.gateway).or_default().push(p),
                        None => self.counters.notices_undeliverable += 1,
                    }
                }
                for (g, players) in per {
                    let m = FromCenter::Deliver {
                        targets: Targets::Players(players),
                        notice: notice.clone(),
                    };
                    if self.send_to(out, g, m) {
                        n += 1;
                    }
                }
            }
        }
        n
    }

    /// Closes `player`'s session (admitted or waiting) with `f`.
    fn kick(
        &mut self,
        st: &mut State,
        player: u64,
        f: Fail,
        now_ms: u64,
        sink: &mut dyn Sink,
        out: &mut Output,
    ) -> Result<bool, Stopped> {
        if let Some(o) = st.users.get(&player).cloned() {
            tracing::debug!(player, gateway = o.gateway, session = o.session, "kicked");
            self.write(st, sink, Rec::UserGone(player))?;
            self.counters.kicked += 1;
            let m = FromCenter::Kick {
                player,
                session: o.session,
                fail: f,
            };
            self.send_to(out, o.gateway, m);
            self.admit(st, o.zone, now_ms, sink, out)?;
            return Ok(true);
        }
        if let Some(w) = st.waiting.get(&player).cloned() {
            self.write(st, sink, Rec::WaitGone(player))?;
            self.counters.kicked += 1;
            self.told.remove(&player);
            self.dirty.insert(w.zone);
            let m = FromCenter::Kick {
                player,
                session: w.session,
                fail: f,
            };
            self.send_to(out, w.gateway, m);
            return Ok(true);
        }
        Ok(false)
    }

    fn admin(
        &mut self,
        st: &mut State,
        cmd: AdminCmd,
        now_ms: u64,
        sink: &mut dyn Sink,
        out: &mut Output,
    ) -> Result<(), Stopped> {
        let answer = match cmd {
            AdminCmd::Kick {
                player,
                reason,
                ban_ms,
            } => {
                let banned = match ban_ms {
                    Some(ms) => {
                        let b = Ban {
                            reason: reason.clone(),
                            at_ms: now_ms,
                            until_ms: (ms > 0).then(|| now_ms.saturating_add(ms)),
                        };
                        if st.bans.len() >= self.cfg.bans_max {
                            {
                                self.full(out);
                                return Ok(());
                            }
                        }
                        self.write(st, sink, Rec::Ban(BanKey::Account(player), b))?;
                        true
                    }
                    None => false,
                };
                let code = if banned {
                    ErrorCode::Blacklisted
                } else {
                    ErrorCode::Kicked
                };
                let f = fail(code, format!("kicked by an operator: {reason}"));
                let kicked = self.kick(st, player, f, now_ms, sink, out)?;
                serde_json::json!({ "kicked": kicked, "banned": banned })
            }
            AdminCmd::Ban {
                key,
                reason,
                ttl_ms,
            } => {
                if !st.bans.contains_key(&key) && st.bans.len() >= self.cfg.bans_max {
                    {
                        self.full(out);
                        return Ok(());
                    }
                }
                let b = Ban {
                    reason: reason.clone(),
                    at_ms: now_ms,
                    until_ms: ttl_ms.map(|t| now_ms.saturating_add(t)),
                };
                self.write(st, sink, Rec::Ban(key, b))?;
                let matched: Vec<u64> = match key {
                    BanKey::Account(p) => vec![p],
                    BanKey::Addr(a) => {
                        let mut v: Vec<u64> = st
                            .users
                            .iter()
                            .filter(|(_, o)| o.addr == a)
                            .map(|(p, _)| *p)
                            .chain(
                                st.waiting
                                    .iter()
                                    .filter(|(_, w)| w.addr == a)
                                    .map(|(p, _)| *p),
                            )
                            .collect();
                        v.sort_unstable();
                        v
                    }
                };
                let mut kicked = 0;
                for p in matched {
                    let f = fail(ErrorCode::Blacklisted, format!("blacklisted: {reason}"));
                    kicked += self.kick(st, p, f, now_ms, sink, out)? as u32;
                }
                serde_json::json!({ "banned": true, "kicked": kicked })
            }
            AdminCmd::Unban { key } => {
                let had = st.bans.contains_key(&key);
                if had {
                    self.write(st, sink, Rec::BanGone(key))?;
                }
                serde_json::json!({ "removed": had })
            }
            AdminCmd::Broadcast { targets, text } => {
                let notice = Notice {
                    from: 0,
                    name: "operator".into(),
                    to: match &targets {
                        Targets::All => NoticeTo::All,
                        Targets::Channel(c) => NoticeTo::Channel(*c),
                        Targets::Players(_) => NoticeTo::Players,
                    },
                    text,
                    at_ms: now_ms,
                };
                let gateways = self.route(st, targets, notice, out);
                serde_json::json!({ "gateways": gateways })
            }
            AdminCmd::Stats => self.stats(st),
            AdminCmd::Bans => {
                let list: Vec<_> = st
                    .bans
                    .iter()
                    .map(|(k, b)| {
                        let (kind, v) = match k {
                            BanKey::Account(p) => ("player", serde_json::json!(p)),
                            BanKey::Addr(a) => ("addr", serde_json::json!(a.to_string())),
                        };
                        serde_json::json!({ kind: v, "reason": b.reason, "at_ms": b.at_ms,
                            "until_ms": b.until_ms, "active": b.active(now_ms) })
                    })
                    .collect();
                serde_json::json!({ "bans": list })
            }
            AdminCmd::Player { player } => match (st.users.get(&player), st.waiting.get(&player)) {
                (Some(o), _) => serde_json::json!({ "player": player, "state": "online",
                    "gateway": o.gateway, "session": o.session, "login": o.login, "zone": o.zone,
                    "name": o.name, "addr": o.addr.to_string(), "since_ms": o.since_ms }),
                (None, Some(w)) => serde_json::json!({ "player": player, "state": "waiting",
                    "gateway": w.gateway, "session": w.session, "zone": w.zone,
                    "position": self.position(st, w) }),
                _ => serde_json::json!({ "player": player, "state": "offline" }),
            },
        };
        out.admin = Some(answer);
        Ok(())
    }

    fn full(&self, out: &mut Output) {
        out.admin = Some(serde_json::json!({
            "error": "bans_max",
            "message": format!("the blacklist holds its {} entries; remove some", self.cfg.bans_max),
        }));
    }

    fn position(&self, st: &State, w: &Waiting) -> u32 {
        st.queue.range((w.zone, 0)..(w.zone, w.ticket)).count() as u32 + 1
    }

    /// Online statistics per zone and gateway.
    pub fn stats(&self, st: &State) -> serde_json::Value {
        let mut zones: BTreeSet<u32> = st.online.keys().copied().collect();
        zones.extend(st.queue.keys().map(|(z, _)| *z));
        zones.extend(self.gateways.values().map(|g| g.zone));
        let zones: Vec<_> = zones
            .into_iter()
            .map(|z| {
                serde_json::json!({ "zone": z, "online": st.online_in(z), "online_max": self.online_max(z),
                    "waiting": st.waiting_in(z), "queue_max": self.cfg.queue_max })
            })
            .collect();
        let mut ids: BTreeSet<u64> = self.gateways.keys().copied().collect();
        ids.extend(st.by_gateway.keys().copied());
        let gateways: Vec<_> = ids
            .into_iter()
            .map(|id| {
                let gw = self.gateways.get(&id);
                let waiting = st.waiting.values().filter(|w| w.gateway == id).count();
                serde_json::json!({ "gateway": id, "zone": gw.map(|g| g.zone),
                    "addr": gw.map(|g| g.addr.clone()), "connected": gw.is_some_and(|g| g.link.is_some()),
                    "online": st.by_gateway.get(&id).map_or(0, |s| s.len()), "waiting": waiting,
                    "channels": gw.map_or(0, |g| g.channels.len()) })
            })
            .collect();
        serde_json::json!({ "online": st.users.len(), "waiting": st.waiting.len(), "bans": st.bans.len(),
            "login_reserved": st.reserved, "zones": zones, "gateways": gateways, "counters": self.counters })
    }

    fn tick(
        &mut self,
        st: &mut State,
        now_ms: u64,
        sink: &mut dyn Sink,
        out: &mut Output,
    ) -> Result<(), Stopped> {
        let mut budget = TICK_RECORDS_MAX;
        // Gateways with players and no link: after the grace, log them out.
        let away: Vec<u64> = st
            .by_gateway
            .keys()
            .chain(st.waiting.values().map(|w| &w.gateway))
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|g| self.gateways.get(g).is_none_or(|gw| gw.link.is_none()))
            .collect();
        for g in away {
            let gw = self.gateways.entry(g).or_insert_with(|| Gateway {
                link: None,
                zone: 0,
                addr: String::new(),
                channels: HashSet::new(),
                absent_since: None,
            });
            let since = *gw.absent_since.get_or_insert(now_ms);
            if now_ms.saturating_sub(since) < self.cfg.gateway_grace_ms {
                continue;
            }
            let users: Vec<(u64, u32)> = st
                .by_gateway
                .get(&g)
                .into_iter()
                .flatten()
                .take(budget)
                .map(|p| (*p, st.users[p].zone))
                .collect();
            let mut waits: Vec<(u64, u32)> = st
                .waiting
                .iter()
                .filter(|(_, w)| w.gateway == g)
                .map(|(p, w)| (*p, w.zone))
                .collect();
            waits.sort_unstable();
            tracing::warn!(
                gateway = g,
                players = users.len(),
                waiting = waits.len(),
                grace_ms = self.cfg.gateway_grace_ms,
                "gateway gone: logging its players out"
            );
            let mut zones = BTreeSet::new();
            for (p, z) in users {
                self.write(st, sink, Rec::UserGone(p))?;
                zones.insert(z);
                budget -= 1;
            }
            for (p, z) in waits.into_iter().take(budget) {
                self.write(st, sink, Rec::WaitGone(p))?;
                self.told.remove(&p);
                self.dirty.insert(z);
                budget -= 1;
            }
            if !st.by_gateway.contains_key(&g) && !st.waiting.values().any(|w| w.gateway == g) {
                self.gateways.remove(&g);
                self.counters.gateways_expired += 1;
            }
            for z in zones {
                self.admit(st, z, now_ms, sink, out)?;
            }
            if budget == 0 {
                return Ok(());
            }
        }
        let expired: Vec<BanKey> = st
            .bans
            .iter()
            .filter(|(_, b)| !b.active(now_ms))
            .map(|(k, _)| *k)
            .take(budget)
            .collect();
        for k in expired {
            self.write(st, sink, Rec::BanGone(k))?;
        }
        // Queue positions that changed since they were last told.
        for zone in std::mem::take(&mut self.dirty) {
            let of = st.waiting_in(zone) as u32;
            for (i, (_, p)) in st.queue.range((zone, 0)..=(zone, u64::MAX)).enumerate() {
                let position = i as u32 + 1;
                if self.told.get(p) == Some(&position) {
                    continue;
                }
                let w = &st.waiting[p];
                let m = FromCenter::Queued {
                    player: *p,
                    session: w.session,
                    position,
                    of,
                };
                if self.send_to(out, w.gateway, m) {
                    self.told.insert(*p, position);
                }
            }
        }
        self.told.retain(|p, _| st.waiting.contains_key(p));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records into a Vec, and a standby state that applies the same records
    /// after a round trip through the wire form.
    #[derive(Default)]
    struct Log {
        recs: Vec<Rec>,
        standby: State,
        refuse_after: Option<usize>,
    }

    impl Sink for Log {
        fn write(&mut self, r: &Rec) -> Result<(), Stopped> {
            if self.refuse_after.is_some_and(|n| self.recs.len() >= n) {
                return Err(Stopped("test".into()));
            }
            let (k, put, v) = r.to_kv();
            let back = Rec::from_kv(&k, put, &v).unwrap();
            assert_eq!(&back, r);
            self.standby.apply(&back);
            self.recs.push(r.clone());
            Ok(())
        }
    }

    struct T {
        c: Center,
        st: State,
        log: Log,
        now: u64,
    }

    const ADDR: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));

    impl T {
        fn new(online_max: u64) -> T {
            let cfg = CoreConfig {
                online_max,
                queue_max: 3,
                gateway_grace_ms: 1000,
                ..CoreConfig::default()
            };
            let st = State::default();
            T {
                c: Center::new(cfg, &st),
                st,
                log: Log::default(),
                now: 1_000_000,
            }
        }
        fn run(&mut self, i: Input) -> Output {
            let o = self
                .c
                .handle(&mut self.st, i, self.now, &mut self.log)
                .unwrap();
            assert_eq!(self.st, self.log.standby, "master and standby diverged");
            o
        }
        fn hello(&mut self, link: LinkId, gateway: u64) {
            let o = self.run(Input::Msg(
                link,
                ToCenter::Hello {
                    gateway,
                    zone: 1,
                    addr: "g".into(),
                    version: 1,
                },
            ));
            assert_eq!(o.sends, vec![(link, FromCenter::Welcome { node: 0 })]);
        }
        fn login(&mut self, link: LinkId, player: u64, session: u64) -> Output {
            self.login_from(link, player, session, ADDR)
        }
        fn login_from(&mut self, link: LinkId, player: u64, session: u64, addr: IpAddr) -> Output {
            self.run(Input::Msg(
                link,
                ToCenter::Login(Login {
                    player,
                    session,
                    name: format!("p{player}"),
                    kind: 0,
                    addr,
                }),
            ))
        }
    }

    fn admitted(o: &Output) -> Vec<(LinkId, u64, u64)> {
        o.sends
            .iter()
            .filter_map(|(l, m)| match m {
                FromCenter::Admitted { player, login, .. } => Some((*l, *player, *login)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn takeover_kicks_the_old_session_first_and_numbers_grow() {
        let mut t = T::new(10);
        t.hello(1, 100);
        t.hello(2, 200);
        let a = admitted(&t.login(1, 7, 1));
        assert_eq!(a.len(), 1);
        let o = t.login(2, 7, 9);
        assert!(
            matches!(&o.sends[0], (1, FromCenter::Kick { player: 7, session: 1, fail }) if fail.code == ErrorCode::LoggedInElsewhere)
        );
        let b = admitted(&o);
        assert_eq!(b[0].0, 2);
        assert!(b[0].2 > a[0].2);
        assert_eq!(t.st.users[&7].gateway, 200);
        // The old session's logout changes nothing.
        let o = t.run(Input::Msg(
            1,
            ToCenter::Logout {
                player: 7,
                session: 1,
            },
        ));
        assert!(o.sends.is_empty());
        assert!(t.st.users.contains_key(&7));
        // A re-sent Login is answered from the table, with no record.
        let n = t.log.recs.len();
        assert_eq!(admitted(&t.login(2, 7, 9)), b);
        assert_eq!(t.log.recs.len(), n);
    }

    #[test]
    fn a_new_master_numbers_above_everything_reserved() {
        let mut t = T::new(10);
        t.hello(1, 100);
        let first = admitted(&t.login(1, 1, 1))[0].2;
        let standby = t.log.standby.clone();
        let mut c = Center::new(t.c.config().clone(), &standby);
        let mut st = standby;
        let mut log = Log {
            standby: st.clone(),
            ..Log::default()
        };
        let hello = ToCenter::Hello {
            gateway: 100,
            zone: 1,
            addr: "g".into(),
            version: 1,
        };
        c.handle(&mut st, Input::Msg(5, hello), 0, &mut log)
            .unwrap();
        let login = Login {
            player: 2,
            session: 2,
            name: "b".into(),
            kind: 0,
            addr: ADDR,
        };
        let o = c
            .handle(&mut st, Input::Msg(5, ToCenter::Login(login)), 0, &mut log)
            .unwrap();
        let second = admitted(&o)[0].2;
        assert!(second > first + LOGIN_RESERVE_BLOCK - 1, "{second} {first}");
    }

    #[test]
    fn the_queue_admits_in_order_and_tells_positions() {
        let mut t = T::new(1);
        t.hello(1, 100);
        assert_eq!(admitted(&t.login(1, 1, 1)).len(), 1);
        for p in 2..=4 {
            assert!(admitted(&t.login(1, p, p)).is_empty());
        }
        // Full queue (queue_max 3).
        let o = t.login(1, 5, 5);
        assert!(
            matches!(&o.sends[0], (_, FromCenter::Refused { fail, .. }) if fail.code == ErrorCode::QueueFull)
        );
        let o = t.run(Input::Tick);
        let pos: Vec<(u64, u32, u32)> = o
            .sends
            .iter()
            .filter_map(|(_, m)| match m {
                FromCenter::Queued {
                    player,
                    position,
                    of,
                    ..
                } => Some((*player, *position, *of)),
                _ => None,
            })
            .collect();
        assert_eq!(pos, vec![(2, 1, 3), (3, 2, 3), (4, 3, 3)]);
        // Nothing changed: nothing told.
        assert!(t.run(Input::Tick).sends.is_empty());
        // Player 1 leaves: 2 is admitted, 3 and 4 move up.
        let o = t.run(Input::Msg(
            1,
            ToCenter::Logout {
                player: 1,
                session: 1,
            },
        ));
        assert_eq!(
            admitted(&o).iter().map(|a| a.1).collect::<Vec<_>>(),
            vec![2]
        );
        let o = t.run(Input::Tick);
        assert_eq!(o.sends.len(), 2);
        assert!(matches!(
            o.sends[0].1,
            FromCenter::Queued {
                player: 3,
                position: 1,
                of: 2,
                ..
            }
        ));
        // A waiting player who leaves is out of the queue.
        t.run(Input::Msg(
            1,
            ToCenter::Logout {
                player: 3,
                session: 3,
            },
        ));
        let o = t.run(Input::Tick);
        assert!(matches!(
            o.sends[0].1,
            FromCenter::Queued {
                player: 4,
                position: 1,
                of: 1,
                ..
            }
        ));
    }

    #[test]
    fn blacklists_refuse_logins_and_kick_sessions() {
        let mut t = T::new(10);
        t.hello(1, 100);
        t.login(1, 1, 1);
        t.login(1, 2, 2);
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        t.login_from(1, 3, 3, other);
        let o = t.run(Input::Admin(AdminCmd::Ban {
            key: BanKey::Addr(ADDR),
            reason: "bots".into(),
            ttl_ms: Some(5000),
        }));
        let kicked: Vec<u64> = o
            .sends
            .iter()
            .filter_map(|(_, m)| match m {
                FromCenter::Kick { player, fail, .. } if fail.code == ErrorCode::Blacklisted => {
                    Some(*player)
                }
                _ => None,
            })
            .collect();
        assert_eq!(kicked, vec![1, 2]);
        assert_eq!(t.st.users.len(), 1);
        let o = t.login(1, 1, 10);
        assert!(
            matches!(&o.sends[0].1, FromCenter::Refused { fail, .. } if fail.code == ErrorCode::Blacklisted)
        );
        // Expired: the tick removes it and logins work again.
        t.now += 5000;
        t.run(Input::Tick);
        assert!(t.st.bans.is_empty());
        assert_eq!(admitted(&t.login(1, 1, 11)).len(), 1);
        // Kick with a ban of the account.
        let o = t.run(Input::Admin(AdminCmd::Kick {
            player: 3,
            reason: "cheat".into(),
            ban_ms: Some(0),
        }));
        assert!(matches!(&o.sends[0].1, FromCenter::Kick { player: 3, .. }));
        let o = t.login_from(1, 3, 12, other);
        assert!(matches!(&o.sends[0].1, FromCenter::Refused { .. }));
        t.run(Input::Admin(AdminCmd::Unban {
            key: BanKey::Account(3),
        }));
        assert_eq!(admitted(&t.login_from(1, 3, 13, other)).len(), 1);
    }

    #[test]
    fn sync_drops_what_ended_and_kicks_what_the_center_does_not_know() {
        let mut t = T::new(10);
        t.hello(1, 100);
        let l1 = admitted(&t.login(1, 1, 1))[0].2;
        let l2 = admitted(&t.login(1, 2, 2))[0].2;
        t.run(Input::Closed(1));
        t.hello(2, 100);
        let o = t.run(Input::Msg(
            2,
            ToCenter::Sync {
                admitted: vec![
                    Held {
                        player: 1,
                        session: 1,
                        login: l1,
                    },
                    Held {
                        player: 9,
                        session: 9,
                        login: 3,
                    },
                ],
                waiting: vec![],
                channels: vec![4],
            },
        ));
        let _ = l2;
        assert!(matches!(
            &o.sends[0],
            (2, FromCenter::Kick { player: 9, .. })
        ));
        assert!(t.st.users.contains_key(&1));
        assert!(
            !t.st.users.contains_key(&2),
            "player 2 logged out while the link was down"
        );
    }

    #[test]
    fn a_vanished_gateway_is_logged_out_after_the_grace() {
        let mut t = T::new(1);
        t.hello(1, 100);
        t.hello(2, 200);
        t.login(1, 1, 1);
        t.login(2, 2, 2); // waits
        t.run(Input::Closed(1));
        t.now += 999;
        t.run(Input::Tick);
        assert!(t.st.users.contains_key(&1));
        t.now += 1;
        let o = t.run(Input::Tick);
        assert!(!t.st.users.contains_key(&1));
        assert_eq!(
            admitted(&o).iter().map(|a| a.1).collect::<Vec<_>>(),
            vec![2]
        );
    }

    #[test]
    fn notices_go_to_the_gateways_concerned() {
        let mut t = T::new(10);
        t.hello(1, 100);
        t.hello(2, 200);
        t.login(1, 1, 1);
        t.login(2, 2, 2);
        t.run(Input::Msg(2, ToCenter::Subscribe { channel: 5 }));
        let say = |to| ToCenter::Say {
            from: 1,
            name: "p1".into(),
            session: 1,
            seq: 3,
            to,
            text: "hi".into(),
        };
        let o = t.run(Input::Msg(1, say(SayTo::Channel(5))));
        assert_eq!(o.sends.len(), 2);
        assert!(matches!(
            &o.sends[0],
            (
                2,
                FromCenter::Deliver {
                    targets: Targets::Channel(5),
                    ..
                }
            )
        ));
        assert!(matches!(
            &o.sends[1],
            (1, FromCenter::Said { reply: Ok(()), .. })
        ));
        let o = t.run(Input::Msg(1, say(SayTo::Player(2))));
        assert!(
            matches!(&o.sends[0], (2, FromCenter::Deliver { targets: Targets::Players(p), .. }) if p == &vec![2])
        );
        let o = t.run(Input::Msg(1, say(SayTo::Player(3))));
        assert!(
            matches!(&o.sends[0], (1, FromCenter::Said { reply: Err(f), .. }) if f.code == ErrorCode::NotOnline)
        );
        let o = t.run(Input::Admin(AdminCmd::Broadcast {
            targets: Targets::Players(vec![1, 2, 3]),
            text: "guild".into(),
        }));
        assert_eq!(o.sends.len(), 2);
        let o = t.run(Input::Admin(AdminCmd::Broadcast {
            targets: Targets::All,
            text: "all".into(),
        }));
        assert_eq!(o.sends.len(), 2);
    }

    #[test]
    fn a_refused_write_leaves_the_state_at_what_was_written() {
        let mut t = T::new(10);
        t.hello(1, 100);
        t.log.refuse_after = Some(0);
        let l = Login {
            player: 1,
            session: 1,
            name: "a".into(),
            kind: 0,
            addr: ADDR,
        };
        let r =
            t.c.handle(&mut t.st, Input::Msg(1, ToCenter::Login(l)), 0, &mut t.log);
        assert!(r.is_err());
        assert_eq!(t.st, State::default());
    }

    #[test]
    fn records_round_trip_and_garbage_is_refused() {
        let o = Online {
            gateway: 1,
            session: 2,
            login: 3,
            zone: 4,
            name: "n".into(),
            kind: 0,
            addr: "::1".parse().unwrap(),
            since_ms: 5,
        };
        for r in [
            Rec::User(9, o),
            Rec::UserGone(9),
            Rec::BanGone(BanKey::Addr("::1".parse().unwrap())),
            Rec::BanGone(BanKey::Addr(ADDR)),
            Rec::Reserve(77),
        ] {
            let (k, p, v) = r.to_kv();
            assert_eq!(Rec::from_kv(&k, p, &v).unwrap(), r);
        }
        assert!(Rec::from_kv(b"x", true, b"").is_err());
        assert!(Rec::from_kv(b"u123", true, b"").is_err());
        assert!(Rec::from_kv(b"n", true, b"123").is_err());
    }
}
