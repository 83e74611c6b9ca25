// The browser's client of the game server: what `gameserver::client` is in
// Rust, over WebSocket (one binary message per frame).
//
// Session: Auth -> (Push::Queued while the zone's login queue holds us) ->
// Welcome; then requests numbered by `seq`, one in flight at a time (the
// rest wait in a bounded queue, in order), pushes handed on in the order
// they came, a ping every heartbeat_ms whose pong gives the round trip.
// A dropped connection (closed, silent for dead_ticks heartbeats, a Bye
// worth retrying) is not the end: the session reconnects with the same
// token, enters its room again (the seat is kept by the room server) and
// settles the request that was in flight from the new snapshot: done if the
// snapshot shows it done (a move on the board, a seat taken), sent again
// otherwise. The application sees `resumed`, not a new session.
//
// RoomView mirrors one room as client::RoomView does: a snapshot, then the
// events after it, each checked to be `seq == last + 1`.

import * as P from './proto.js';

/// Requests waiting behind the one in flight, at most; past it a request is refused here.
export const REQUESTS_QUEUED_MAX = 32;
/// A request's answer, at most, before it fails with Timeout. Through a
/// room-server failover the gateway re-sends, so this is seconds.
export const REQUEST_TIMEOUT_MS = 15_000;
/// Connecting and authenticating, at most, per attempt.
export const CONNECT_TIMEOUT_MS = 8_000;
/// Reconnect attempts after a drop before the session gives up.
export const RECONNECT_ATTEMPTS_MAX = 20;
/// Wait before reconnect attempt n: min(BASE * 2^n, MAX).
export const RECONNECT_BASE_MS = 150;
export const RECONNECT_MAX_MS = 3_000;
/// Pings remembered to match their pongs.
const PINGS_REMEMBERED_MAX = 8;
/// Finished games and chat lines a RoomView keeps.
export const FINISHED_GAMES_MAX = 64;
export const CHAT_LINES_MAX = 200;

/// Bye codes after which reconnecting cannot help.
const FINAL_CODES = new Set([
  'BadToken', 'TokenExpired', 'WrongZone', 'LoggedInElsewhere', 'Kicked', 'Blacklisted', 'UpgradeRequired',
  'NotAuthenticated',
]);

/// A refused request ({code, message} of msg::Fail), or a local failure
/// (code 'Timeout', 'Closed', 'TooManyInFlight').
export class RequestError extends Error {
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.code = code;
    this.reason = message;
  }
}

class Emitter {
  constructor() {
    this.handlers = new Map();
  }
  on(name, fn) {
    if (!this.handlers.has(name)) this.handlers.set(name, []);
    this.handlers.get(name).push(fn);
    return this;
  }
  emit(name, ...args) {
    for (const fn of this.handlers.get(name) ?? []) {
      try {
        fn(...args);
      } catch (e) {
        console.error(`a ${name} handler failed`, e);
      }
    }
  }
}

/// One player's session with the gateways of a login answer.
///
/// Events: state(s) with s in connecting | queued | open | reconnecting |
/// closed; welcome(w); queued({position, of}); push(p); rtt(ms);
/// resumed(snapshot|null); closed({code, message}); error(fail).
export class Session extends Emitter {
  /// `urls`: WebSocket URLs to try in order (the login's gateways, least-loaded first).
  constructor({ urls, token, WebSocketImpl }) {
    super();
    this.urls = urls.filter(Boolean);
    this.token = token;
    this.WS = WebSocketImpl ?? globalThis.WebSocket;
    this.urlIndex = 0;
    this.state = 'idle';
    this.ws = null;
    this.welcome = null;
    this.seq = 0;
    this.queue = [];
    this.inFlight = null;
    /// The room this session is in (re-entered after a reconnect).
    this.room = null;
    /// Called after a reconnect's re-Enter with the snapshot, before the
    /// in-flight request is settled (the app rebases its RoomView here).
    this.onRebase = null;
    this.pings = [];
    this.rttMs = null;
    this.lastHeard = 0;
    this.timers = { ping: null, watch: null, retry: null };
    this.attempt = 0;
    this.resuming = false;
    this.resumes = 0;
    /// The player's request that was in flight when the connection dropped.
    this.held = null;
    this.debug = { pingsStopped: false };
    this.stats = { drops: 0, reconnects: 0, pushes: 0, pings: 0, pongs: 0, unmatchedReplies: 0, resent: 0, settledFromSnapshot: 0 };
    this.closedWith = null;
  }

  setState(s) {
    if (this.state === s) return;
    this.state = s;
    this.emit('state', s);
  }

  /// Connects and authenticates; resolves with the Welcome.
  start() {
    return new Promise((resolve, reject) => {
      this.connect((err, w) => (err ? reject(err) : resolve(w)));
    });
  }

  /// Ends the session from this side (logout): no reconnect.
  close() {
    this.finish({ code: null, message: 'closed by the player' });
  }

  // One connection attempt; `done(err, welcome)` once it is authenticated or failed.
  connect(done) {
    this.setState(this.welcome ? 'reconnecting' : 'connecting');
    const url = this.urls[this.urlIndex % this.urls.length];
    let ws;
    try {
      ws = new this.WS(url);
    } catch (e) {
      done(new RequestError('Connect', `cannot open ${url}: ${e.message}`));
      return;
    }
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    let authed = false;
    let failed = null;
    const giveUp = setTimeout(() => {
      if (!authed) {
        failed ??= { code: null, message: `no Welcome from ${url} within ${CONNECT_TIMEOUT_MS} ms` };
        ws.close();
      }
    }, CONNECT_TIMEOUT_MS);
    ws.onopen = () => {
      const auth = P.encode(P.Auth, { token: this.token, client_version: P.PROTOCOL_VERSION, features: P.FEATURES });
      ws.send(P.encodeFrame(P.Kind.Auth, 0, Date.now(), auth));
    };
    // Frames are handled in arrival order: once a compressed one waits for
    // its inflation (async), the ones after it wait in this chain too.
    let order = Promise.resolve();
    let behind = 0;
    ws.onmessage = (m) => {
      if (this.ws !== ws) return;
      this.lastHeard = performance.now();
      let f;
      try {
        f = P.decodeFrame(new Uint8Array(m.data));
      } catch (e) {
        failed = { code: 'BadFrame', message: `the gateway sent bytes that are not a frame: ${e.message}` };
        ws.close();
        return;
      }
      if (behind === 0 && !(f.flags & P.FLAG_COMPRESSED)) {
        handle(f);
        return;
      }
      behind++;
      order = order
        .then(async () => {
          if (f.flags & P.FLAG_COMPRESSED) {
            try {
              f = { ...f, flags: f.flags & ~P.FLAG_COMPRESSED, payload: await P.inflate(f.payload) };
            } catch (e) {
              failed = { code: 'BadFrame', message: `the gateway sent a compressed frame this client cannot read: ${e.message}` };
              ws.close();
              return;
            }
          }
          if (this.ws === ws) handle(f);
        })
        .finally(() => behind--);
    };
    const handle = (f) => {
      if (!authed) {
        if (f.kind === P.Kind.Welcome) {
          authed = true;
          clearTimeout(giveUp);
          this.onWelcome(P.decode(P.Welcome, f.payload));
          done(null, this.welcome);
        } else if (f.kind === P.Kind.Push) {
          const p = safeDecode(P.Push, f.payload);
          if (p && p.Queued) {
            this.setState('queued');
            this.emit('queued', { position: p.Queued.position, of: p.Queued.of });
            this.startPings(p.Queued.heartbeat_ms, 0);
          }
        } else if (f.kind === P.Kind.Bye || f.kind === P.Kind.Error) {
          const fail = safeDecode(f.kind === P.Kind.Bye ? P.Bye : P.Fail, f.payload);
          if (fail) failed = fail;
        } else if (f.kind === P.Kind.Pong) {
          this.onPong(f);
        }
        return;
      }
      this.onFrame(f);
    };
    ws.onclose = () => {
      clearTimeout(giveUp);
      if (this.ws !== ws) return;
      this.ws = null;
      this.stopTimers();
      if (this.state === 'closed') return;
      if (!authed) {
        const why = failed ?? { code: null, message: `the connection to ${url} closed before Welcome` };
        if (why.code && FINAL_CODES.has(why.code)) {
          this.finish(why);
          done(new RequestError(why.code, why.message));
          return;
        }
        this.urlIndex++;
        if (!this.welcome) {
          // The first connect fails to its caller; later ones keep trying.
          this.setState('closed');
          this.closedWith = why;
          done(new RequestError(why.code ?? 'Connect', why.message));
          return;
        }
        this.retry(done);
        return;
      }
      this.onDrop(failed ?? this.byeSeen ?? { code: null, message: 'the connection closed' });
    };
    ws.onerror = () => {}; // onclose follows with what we need
  }

  onWelcome(w) {
    const first = !this.welcome;
    this.welcome = w;
    this.seq = 0; // a new session numbers its requests from 1 again
    this.byeSeen = null;
    this.attempt = 0;
    this.debug.pingsStopped = false; // a new session pings again
    this.startPings(w.heartbeat_ms, w.dead_ticks);
    if (first) {
      this.setState('open');
      this.emit('welcome', w);
      this.pump();
    } else {
      this.stats.reconnects++;
      this.resume();
    }
  }

  onDrop(why) {
    if (why.code && FINAL_CODES.has(why.code)) {
      this.finish(why);
      return;
    }
    this.stats.drops++;
    this.emit('dropped', why);
    // A player's request in flight is held and settled after the resume; a
    // resume's own Enter is dropped (the next resume sends its own).
    const f = this.inFlight;
    this.inFlight = null;
    if (f) {
      clearTimeout(f.timer);
      if (f.internal) f.reject(new RequestError('Closed', 'the connection dropped'));
      else this.held ??= f;
    }
    this.retry(() => {});
  }

  retry(done) {
    if (this.attempt >= RECONNECT_ATTEMPTS_MAX) {
      this.finish({ code: null, message: `could not reconnect after ${this.attempt} attempts` });
      done(new RequestError('Closed', 'could not reconnect'));
      return;
    }
    this.setState('reconnecting');
    const wait = Math.min(RECONNECT_BASE_MS * 2 ** this.attempt, RECONNECT_MAX_MS);
    this.attempt++;
    this.timers.retry = setTimeout(() => this.connect(done), wait);
  }

  /// After a reconnect: enter the room again, rebase on its snapshot, then
  /// settle or re-send what was in flight, then the queue.
  async resume() {
    const gen = ++this.resumes;
    this.resuming = true;
    let snapshot = null;
    const leaving = this.held && this.held.req.Leave;
    if (this.room !== null && !leaving) {
      try {
        const a = await this.send({ Enter: { room: this.room } });
        snapshot = a.Entered ?? null;
      } catch (e) {
        if (gen !== this.resumes || this.state === 'closed') return; // dropped again: that resume goes on
        console.warn('re-entering the room after a reconnect failed', e);
      }
      if (gen !== this.resumes || this.state === 'closed') return;
      if (snapshot && this.onRebase) this.onRebase(snapshot);
    }
    this.resuming = false;
    this.setState('open');
    this.emit('resumed', snapshot);
    const held = this.held;
    this.held = null;
    if (held) {
      const settled = settleFromSnapshot(held.req, snapshot, this.welcome.player);
      if (settled) {
        this.stats.settledFromSnapshot++;
        this.track(held.req, settled);
        held.resolve(settled);
      } else {
        this.stats.resent++;
        this.queue.unshift(held);
      }
    }
    this.pump();
  }

  /// Sends a request; resolves with its Answer, rejects with a RequestError.
  request(req) {
    return new Promise((resolve, reject) => {
      if (this.state === 'closed') {
        reject(new RequestError('Closed', this.closedWith?.message ?? 'the session has ended'));
        return;
      }
      if (this.queue.length >= REQUESTS_QUEUED_MAX) {
        reject(new RequestError('TooManyInFlight', `${this.queue.length} requests are waiting already`));
        return;
      }
      this.queue.push({ req, resolve, reject, kind: P.Kind.Request });
      this.pump();
    });
  }

  /// A request the center answers (channels, messages).
  center(req) {
    return new Promise((resolve, reject) => {
      if (this.state === 'closed') return reject(new RequestError('Closed', 'the session has ended'));
      this.queue.push({ req, resolve, reject, kind: P.Kind.Center });
      this.pump();
    });
  }

  // The resume's own Enter, ahead of the queue.
  send(req) {
    return new Promise((resolve, reject) => {
      this.transmit({ req, resolve, reject, kind: P.Kind.Request, internal: true });
    });
  }

  pump() {
    if (this.inFlight || this.resuming || this.state !== 'open' || !this.ws) return;
    const next = this.queue.shift();
    if (next) this.transmit(next);
  }

  transmit(item) {
    this.seq += 1;
    item.seq = this.seq;
    this.inFlight = item;
    const type = item.kind === P.Kind.Center ? P.CenterRequest : P.Request;
    let payload;
    try {
      payload = P.encode(type, item.req);
    } catch (e) {
      this.inFlight = null;
      item.reject(new RequestError('BadRequest', e.message));
      this.pump();
      return;
    }
    item.timer = setTimeout(() => {
      if (this.inFlight !== item) return;
      this.inFlight = null;
      item.reject(new RequestError('Timeout', `no answer within ${REQUEST_TIMEOUT_MS} ms`));
      this.pump();
    }, REQUEST_TIMEOUT_MS);
    this.ws.send(P.encodeFrame(item.kind, item.seq, Date.now(), payload));
  }

  onFrame(f) {
    switch (f.kind) {
      case P.Kind.Reply: {
        const r = P.decode(P.Reply, f.payload);
        const item = this.inFlight;
        if (!item || item.seq !== f.seq) {
          this.stats.unmatchedReplies++;
          return;
        }
        clearTimeout(item.timer);
        this.inFlight = null;
        if (r.Ok !== undefined) {
          if (!item.internal) this.track(item.req, r.Ok);
          item.resolve(r.Ok);
        } else {
          item.reject(new RequestError(r.Err.code, r.Err.message));
        }
        this.pump();
        return;
      }
      case P.Kind.Push: {
        const p = safeDecode(P.Push, f.payload);
        if (!p) return; // a push of a newer build: not ours to read
        this.stats.pushes++;
        if (p.Queued) this.emit('queued', { position: p.Queued.position, of: p.Queued.of });
        else this.emit('push', p);
        return;
      }
      case P.Kind.Pong:
        this.onPong(f);
        return;
      case P.Kind.Ping:
        // The gateway's round-trip probe: echo its time at once (not when
        // the debug hook made this page silent: then it says nothing).
        if (this.debug.pingsStopped) return;
        this.ws?.send(P.encodeFrame(P.Kind.Pong, 0, Date.now(), P.encode(P.Pong, { client_time_ms: f.timeMs, rtt_ms: 0 })));
        return;
      case P.Kind.Error: {
        const fail = safeDecode(P.Fail, f.payload);
        if (fail) this.emit('error', fail);
        return;
      }
      case P.Kind.Bye: {
        this.byeSeen = safeDecode(P.Bye, f.payload) ?? { code: 'BadFrame', message: 'an unreadable Bye' };
        return; // the close follows
      }
      default:
        console.warn(`the gateway sent a frame of kind ${f.kind}`);
    }
  }

  // What a done request means for the room this session is in.
  track(req, answer) {
    if (req.Enter && answer.Entered) this.room = req.Enter.room;
    if (req.Leave && this.room === req.Leave.room) this.room = null;
  }

  startPings(everyMs, deadTicks) {
    clearInterval(this.timers.ping);
    clearInterval(this.timers.watch);
    if (!everyMs) return;
    this.lastHeard = performance.now();
    this.timers.ping = setInterval(() => this.ping(), everyMs);
    this.ping();
    if (deadTicks) {
      // The gateway's rule, seen from here: silent for dead_ticks heartbeats is dead.
      // Two ticks of slack: the gateway's own close (a Bye) comes first.
      const limit = everyMs * (deadTicks + 2);
      this.timers.watch = setInterval(() => {
        if (this.ws && performance.now() - this.lastHeard > limit) {
          this.byeSeen = { code: null, message: `nothing heard from the gateway for ${limit} ms` };
          this.ws.close();
        }
      }, everyMs);
    }
  }

  ping() {
    if (!this.ws || this.ws.readyState !== 1 || this.debug.pingsStopped) return;
    let t = Date.now();
    if (this.pings.length && t <= this.pings[this.pings.length - 1].t) t = this.pings[this.pings.length - 1].t + 1;
    this.pings.push({ t, at: performance.now() });
    if (this.pings.length > PINGS_REMEMBERED_MAX) this.pings.shift();
    this.stats.pings++;
    this.ws.send(P.encodeFrame(P.Kind.Ping, 0, t, new Uint8Array(0)));
  }

  onPong(f) {
    const p = safeDecode(P.Pong, f.payload);
    if (!p) return;
    this.stats.pongs++;
    if (p.rtt_ms > 0) this.gatewayRttMs = p.rtt_ms; // what the gateway measured
    const sent = this.pings.find((x) => x.t === p.client_time_ms);
    this.rttMs = sent ? performance.now() - sent.at : Math.max(0, Date.now() - Number(p.client_time_ms));
    this.emit('rtt', this.rttMs);
  }

  stopTimers() {
    clearInterval(this.timers.ping);
    clearInterval(this.timers.watch);
    this.timers.ping = this.timers.watch = null;
  }

  finish(why) {
    if (this.state === 'closed') return;
    this.closedWith = why;
    this.setState('closed');
    this.stopTimers();
    clearTimeout(this.timers.retry);
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close();
    const err = new RequestError(why.code ?? 'Closed', why.message);
    if (this.inFlight) {
      clearTimeout(this.inFlight.timer);
      this.inFlight.reject(err);
    }
    this.inFlight = null;
    if (this.held) this.held.reject(err);
    this.held = null;
    for (const q of this.queue.splice(0)) q.reject(err);
    this.emit('closed', why);
  }

  // ---- debug hooks (the browser tests use them; harmless to a player)

  /// Cuts the connection as a network would: the session reconnects.
  debugDrop() {
    if (this.ws) this.ws.close();
  }

  /// Stops (or restarts) the heartbeat: the gateway closes the session
  /// after dead_ticks silent heartbeats, and the session reconnects.
  debugStopPings(stopped = true) {
    this.debug.pingsStopped = stopped;
  }
}

function safeDecode(type, payload) {
  try {
    return P.decode(type, payload);
  } catch (e) {
    console.warn('a payload this client cannot read', e);
    return null;
  }
}

/// What a request left in flight across a reconnect did, read from the
/// room's snapshot: an Answer when the snapshot shows it done, else null
/// (send it again). Only requests whose effect a snapshot shows are settled.
export function settleFromSnapshot(req, s, player) {
  if (!s) return null;
  const [kind, body] = P.variant(req);
  const me = s.members.find((m) => m.player === player);
  const done = { Done: { room: s.room, seq: s.seq } };
  switch (kind) {
    case 'Enter':
      return body.room === s.room ? { Entered: s } : null;
    case 'Sit':
      return me && me.seat && me.seat[0] === body.table && me.seat[1] === body.seat ? done : null;
    case 'Stand':
      return me && !me.seat ? done : null;
    case 'Move': {
      const g = s.tables[body.table]?.game;
      const mySeat = me?.seat?.[0] === body.table ? me.seat[1] : null;
      const played = g && g.moves.some(([seat, mv]) => seat === mySeat && sameBytes(mv, body.mv));
      return played ? done : null;
    }
    case 'Spectate':
      return me && (me.watching ?? null) === (body.table ?? null) ? done : null;
    case 'Snapshot':
      return { Snapshot: s };
    default:
      return null;
  }
}

function sameBytes(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/// A client's mirror of one room (client::RoomView): a snapshot and the
/// events after it. Never throws on what the server sends; what does not
/// fit is counted.
export class RoomView {
  constructor(s) {
    this.finished = [];
    this.chat = [];
    this.events = 0;
    this.gaps = 0;
    this.missed = 0;
    this.stale = 0;
    this.snapshots = 0;
    this.mismatches = 0;
    this.chats = 0;
    this.set(s);
  }

  set(s) {
    this.room = s.room;
    this.name = s.name;
    this.game = s.game;
    this.capacity = s.capacity;
    this.seq = s.seq;
    this.members = new Map(s.members.map((m) => [m.player, { ...m }]));
    this.tables = s.tables.map((t) => structuredClone(t));
  }

  /// Replaces the view with a snapshot; an older one is a replay, ignored.
  rebase(s) {
    if (s.room !== this.room) return 'OtherRoom';
    if (s.seq < this.seq) {
      this.stale++;
      return 'Stale';
    }
    this.snapshots++;
    this.set(s);
    return 'Rebased';
  }

  applyPush(p) {
    if (p.Event && p.Event.room === this.room) return this.apply(p.Event.seq, p.Event.event);
    if (p.Snapshot && p.Snapshot.room === this.room) return this.rebase(p.Snapshot);
    return 'OtherRoom';
  }

  apply(seq, e) {
    if (seq <= this.seq) {
      this.stale++;
      return 'Stale';
    }
    const missed = seq - this.seq - 1;
    this.seq = seq;
    this.events++;
    if (!this.applyEvent(e)) {
      this.mismatches++;
      console.debug('an event that does not fit the room view', seq, e);
    }
    if (missed > 0) {
      this.gaps++;
      this.missed += missed;
      return 'AfterGap';
    }
    return 'Event';
  }

  applyEvent(e) {
    const [kind, b] = P.variant(e);
    switch (kind) {
      case 'Entered': {
        const had = this.members.has(b.player);
        const r = b.data.record;
        this.members.set(b.player, {
          player: b.player, name: b.name, seat: null, watching: null,
          wins: r.wins, losses: r.losses, draws: r.draws, games: r.games, rating: r.rating, coins: r.coins,
        });
        return !had;
      }
      case 'Left':
        return this.members.delete(b.player);
      case 'Sat': {
        const t = this.tables[b.table];
        if (!t || b.seat >= t.seats.length) return false;
        const fits = t.seats[b.seat] === null;
        t.seats[b.seat] = b.player;
        t.ready[b.seat] = true;
        const m = this.members.get(b.player);
        if (!m) return false;
        m.seat = [b.table, b.seat];
        m.watching = null;
        return fits;
      }
      case 'Stood': {
        const t = this.tables[b.table];
        if (!t || b.seat >= t.seats.length) return false;
        const fits = t.seats[b.seat] === b.player;
        t.seats[b.seat] = null;
        t.ready[b.seat] = false;
        const m = this.members.get(b.player);
        if (!m) return false;
        m.seat = null;
        return fits;
      }
      case 'Ready': {
        const t = this.tables[b.table];
        if (!t || b.seat >= t.ready.length) return false;
        t.ready[b.seat] = true;
        return true;
      }
      case 'Started': {
        const t = this.tables[b.table];
        if (!t) return false;
        const g = t.game;
        const fits = !g || (g.outcome !== null && g.game_no + 1 === b.game_no);
        t.game = { game_no: b.game_no, players: [...b.players], moves: [], turn: 0, turn_ms: b.turn_ms, outcome: null };
        t.startedAt = performance.now();
        return fits;
      }
      case 'Moved': {
        const g = this.tables[b.table]?.game;
        if (!g) return false;
        const replayed = this.game === 'gomoku' && g.moves.some(([, mv]) => sameBytes(mv, b.mv));
        const fits = g.outcome === null && g.turn === b.seat && !replayed;
        g.moves.push([b.seat, [...b.mv], b.auto]);
        g.turn = (b.seat + 1) % Math.max(g.players.length, 1);
        this.tables[b.table].turnAt = performance.now();
        return fits;
      }
      case 'Ended': {
        const t = this.tables[b.table];
        if (!t) return false;
        t.ready = t.ready.map(() => false);
        const g = t.game;
        if (!g) return false;
        const fits = g.outcome === null && g.game_no === b.game_no && g.moves.length === b.moves;
        g.outcome = b.outcome;
        const before = new Map();
        for (const [p, r] of b.records) {
          const m = this.members.get(p);
          if (!m) continue;
          before.set(p, { rating: m.rating, coins: m.coins, wins: m.wins, losses: m.losses, draws: m.draws, games: m.games });
          Object.assign(m, { wins: r.wins, losses: r.losses, draws: r.draws, games: r.games, rating: r.rating, coins: r.coins });
        }
        this.finished.push({ table: b.table, game: structuredClone(g), records: b.records, before });
        if (this.finished.length > FINISHED_GAMES_MAX) this.finished.shift();
        return fits;
      }
      case 'Chat':
        this.chats++;
        this.chat.push({ player: b.player, table: b.table, text: b.text, at: Date.now() });
        if (this.chat.length > CHAT_LINES_MAX) this.chat.shift();
        return true;
      case 'Spectating': {
        const m = this.members.get(b.player);
        if (!m) return false;
        m.watching = b.table;
        return true;
      }
      default:
        return false;
    }
  }

  game_(table) {
    return this.tables[table]?.game ?? null;
  }

  seatOf(player) {
    return this.members.get(player)?.seat ?? null;
  }
}
