// The page: login, the hall, a room with its tables, the Gomoku board,
// chat, the connection indicator. All protocol work is in client.js and
// proto.js; this file only turns the session's state into DOM and clicks
// into requests. `window.gs` exposes the state and debug hooks (the browser
// tests read and use them).

import { Session, RoomView } from './client.js';

/// Board geometry (CSS pixels): 15 lines, CELL apart, MARGIN around.
const SIZE = 15;
const CELL = 30;
const MARGIN = 28;
/// The hall's rooms are asked for again this often while the hall shows.
const HALL_REFRESH_MS = 5_000;
/// A request's failure shows this long.
const TOAST_MS = 4_000;
/// RTT thresholds of 4, 3, 2 signal bars (ms); slower: 1 bar.
const BARS_MS = [60, 150, 400];
const COLS = 'ABCDEFGHJKLMNOP'; // Go-style column letters (no I)

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'on') for (const [ev, fn] of Object.entries(v)) e.addEventListener(ev, fn);
    else if (k === 'class') e.className = v;
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? '' : v);
  }
  for (const k of kids.flat()) if (k !== null && k !== undefined) e.append(k);
  return e;
};

const app = {
  login: null, // the login answer
  session: null,
  record: null, // this player's record as last known
  view: null, // RoomView of the room we are in
  screen: 'login',
  rooms: [],
  hallTimer: null,
  hallRefreshes: 0,
  connStates: [], // every connection state the indicator showed, in order
  errors: [], // request failures shown
  lastDrop: null, // why the connection last dropped ({code, message})
  shown: null, // the table the board shows
};

// ---------------------------------------------------------------- login

function deviceId() {
  let d = localStorage.getItem('gs.device');
  if (!d) {
    const b = crypto.getRandomValues(new Uint8Array(16));
    d = 'web-' + Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
    localStorage.setItem('gs.device', d);
  }
  return d;
}

/// The login forms are off while a login (or its wait in the queue) runs.
function setBusy(busy) {
  for (const x of document.querySelectorAll('#login-view button, #login-view input')) x.disabled = busy;
}

async function postLogin(path, body) {
  setBusy(true);
  try {
    await login(path, body);
  } finally {
    setBusy(false);
  }
}

async function login(path, body) {
  $('login-error').textContent = '';
  let r;
  try {
    r = await fetch(path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  } catch (e) {
    $('login-error').textContent = `the login server cannot be reached: ${e.message}`;
    return;
  }
  const j = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
  if (!r.ok) {
    $('login-error').textContent = j.error ?? `HTTP ${r.status}`;
    return;
  }
  await startSession(j);
}

async function startSession(login) {
  app.login = login;
  app.record = { ...login.record };
  const urls = [login.ws, ...login.gateways.map((g) => g.ws)].filter((u, i, a) => u && a.indexOf(u) === i);
  if (!urls.length) {
    $('login-error').textContent = 'the login answer names no WebSocket gateway';
    return;
  }
  const s = new Session({ urls, token: login.token });
  app.session = s;
  s.on('state', showConn);
  s.on('rtt', () => showConn(s.state));
  s.on('queued', ({ position, of }) => banner(`You are in the login queue: position ${position} of ${of}. Please wait…`));
  s.on('push', onPush);
  s.on('dropped', (why) => {
    app.lastDrop = why;
    banner('Connection lost — reconnecting…', 'bad');
  });
  s.on('resumed', () => {
    banner(null);
    render();
  });
  s.on('error', (f) => toast(`${f.code}: ${f.message}`));
  s.on('closed', (why) => {
    if (app.session !== s) return;
    banner(`Disconnected: ${why.message}`, 'bad');
    if (why.code === 'TokenExpired' || why.code === 'BadToken') logout();
  });
  s.onRebase = (snap) => {
    if (app.view && app.view.room === snap.room) app.view.rebase(snap);
    else app.view = new RoomView(snap);
  };
  showConn('connecting');
  try {
    await s.start();
  } catch (e) {
    $('login-error').textContent = `cannot connect to the gateway: ${e.reason ?? e.message}`;
    app.session = null;
    return;
  }
  banner(null);
  showMe();
  go('hall');
}

function logout() {
  if (app.session) app.session.close();
  app.session = null;
  app.view = null;
  app.login = null;
  $('logout').hidden = true;
  $('me').textContent = '';
  showConn('idle');
  go('login');
}

// ---------------------------------------------------------------- screens

function go(screen) {
  app.screen = screen;
  $('login-view').hidden = screen !== 'login';
  $('hall-view').hidden = screen !== 'hall';
  $('room-view').hidden = screen !== 'room';
  $('logout').hidden = screen === 'login';
  clearInterval(app.hallTimer);
  if (screen === 'hall') {
    refreshRooms();
    app.hallTimer = setInterval(refreshRooms, HALL_REFRESH_MS);
  }
  render();
}

async function req(r) {
  try {
    return await app.session.request(r);
  } catch (e) {
    app.errors.push({ req: r, code: e.code, message: e.reason ?? e.message });
    toast(`${e.code}: ${e.reason ?? e.message}`);
    return null;
  }
}

async function refreshRooms() {
  if (!app.session || app.session.state !== 'open') return;
  const a = await req('Rooms');
  if (!a || !a.Rooms) return;
  app.rooms = a.Rooms;
  app.hallRefreshes++;
  $('hall-updated').textContent = `updated ${new Date().toLocaleTimeString()}`;
  renderHall();
}

async function enter(room) {
  const a = await req({ Enter: { room } });
  if (!a || !a.Entered) return;
  app.view = new RoomView(a.Entered);
  app.shown = null;
  go('room');
}

async function leave() {
  const v = app.view;
  if (v) await req({ Leave: { room: v.room } });
  app.view = null;
  go('hall');
}

// ---------------------------------------------------------------- pushes

function onPush(p) {
  if (p.Notice) {
    const n = p.Notice;
    chatLine(el('div', { class: 'sys' }, `[notice] ${n.name || 'system'}: ${n.text}`));
    return;
  }
  if (!app.view) return;
  app.view.applyPush(p);
  const me = app.view.members.get(app.session.welcome.player);
  if (me) app.record = { games: me.games, wins: me.wins, losses: me.losses, draws: me.draws, rating: me.rating, coins: me.coins };
  render();
}

// ---------------------------------------------------------------- rendering

function render() {
  showMe();
  if (app.screen === 'hall') renderHall();
  if (app.screen === 'room' && app.view) renderRoom();
}

function showMe() {
  if (!app.login) return;
  const r = app.record ?? app.login.record;
  $('me').textContent = `${app.session?.welcome?.name ?? app.login.name} · rating ${r.rating} · ${r.wins}W ${r.losses}L ${r.draws}D · ${r.coins} coins`;
}

function showConn(state) {
  const s = app.session;
  const rtt = s?.rttMs ?? null;
  const c = $('conn');
  c.dataset.state = state;
  let bars = 0;
  let text = state;
  if (state === 'open') {
    if (rtt === null) text = 'connected';
    else {
      bars = rtt < BARS_MS[0] ? 4 : rtt < BARS_MS[1] ? 3 : rtt < BARS_MS[2] ? 2 : 1;
      text = `${rtt < 10 ? rtt.toFixed(1) : Math.round(rtt)} ms`;
    }
  } else if (state === 'reconnecting') text = 'reconnecting…';
  else if (state === 'idle') text = 'offline';
  c.querySelector('.bars').dataset.bars = bars;
  $('conn-text').textContent = text;
  c.title = `connection: ${state}${rtt === null ? '' : `, round trip ${rtt.toFixed(1)} ms`}`;
  if (app.connStates[app.connStates.length - 1] !== state) app.connStates.push(state);
}

function banner(text, kind = 'info') {
  const b = $('banner');
  b.hidden = !text;
  b.textContent = text ?? '';
  b.dataset.kind = kind;
}

let toastTimer = null;
function toast(text) {
  const t = $('toast');
  t.textContent = text;
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (t.hidden = true), TOAST_MS);
}

function renderHall() {
  const body = $('rooms').querySelector('tbody');
  body.replaceChildren(
    ...app.rooms.map((r) =>
      el('tr', { 'data-room': r.id },
        el('td', {}, r.name),
        el('td', {}, r.game),
        el('td', {}, `${r.online} / ${r.capacity}`),
        el('td', {}, el('button', { class: 'enter', 'data-room': r.id, on: { click: () => enter(r.id) } }, 'Enter')),
      ),
    ),
  );
}

const nameOf = (p) => (p === null || p === undefined ? '' : app.view?.members.get(p)?.name ?? `#${p}`);
const color = (seat) => (seat === 0 ? 'black' : 'white');
const me = () => app.session?.welcome?.player;

/// The table the board shows: where I sit, else what I watch, else the last shown.
function shownTable() {
  const v = app.view;
  const m = v.members.get(me());
  if (m?.seat) return m.seat[0];
  if (m?.watching !== null && m?.watching !== undefined) return m.watching;
  return app.shown;
}

function renderRoom() {
  const v = app.view;
  const my = v.members.get(me());
  const shown = shownTable();
  app.shown = shown;
  $('room-name').textContent = `${v.name} (${v.game})`;
  $('room-online').textContent = `${v.members.size} / ${v.capacity} here`;
  // Tables.
  $('tables').replaceChildren(
    ...v.tables.map((t) => {
      const g = t.game;
      const status = !g ? 'waiting' : g.outcome === null ? `game ${g.game_no}: move ${g.moves.length + 1}` : `game ${g.game_no} over`;
      const mine = my?.seat?.[0] === t.table;
      return el('div', { class: `table-card${mine ? ' mine' : ''}${shown === t.table ? ' shown' : ''}`, 'data-table': t.table },
        el('h4', {}, `Table ${t.table + 1}`),
        ...t.seats.map((p, seat) =>
          el('div', { class: 'seat' },
            el('span', { class: `stone ${color(seat)}` }),
            p === null
              ? el('button', { class: 'sit', 'data-table': t.table, 'data-seat': seat, on: { click: () => req({ Sit: { room: v.room, table: t.table, seat } }) } }, 'Sit')
              : el('span', {}, nameOf(p), t.ready[seat] && (!g || g.outcome !== null) ? ' ✓' : ''),
          ),
        ),
        el('div', { class: 'hint' }, status),
        !mine && shown !== t.table
          ? el('button', { class: 'watch', 'data-table': t.table, on: { click: () => req({ Spectate: { room: v.room, table: t.table } }) } }, 'Watch')
          : null,
      );
    }),
  );
  // Members.
  $('members').replaceChildren(
    ...[...v.members.values()].map((m) =>
      el('li', { class: m.player === me() ? 'me' : '', 'data-player': m.player },
        `${m.name} · ${m.rating} · ${m.wins}W ${m.losses}L ${m.draws}D · ${m.coins}c`,
        m.seat ? ` · table ${m.seat[0] + 1} ${color(m.seat[1])}` : m.watching !== null ? ` · watching ${m.watching + 1}` : '',
      ),
    ),
  );
  renderChat();
  renderGame(shown);
}

function renderChat() {
  const v = app.view;
  const log = $('chat-log');
  const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  log.replaceChildren(
    ...v.chat.map((c) =>
      el('div', { class: 'line' },
        el('span', { class: 't' }, c.table === null ? '[room] ' : `[table ${c.table + 1}] `),
        el('span', { class: 'n' }, `${nameOf(c.player)}: `),
        c.text,
      ),
    ),
  );
  if (atBottom) log.scrollTop = log.scrollHeight;
}

function chatLine(node) {
  $('chat-log').append(node);
}

function renderGame(table) {
  const v = app.view;
  const t = table === null || table === undefined ? null : v.tables[table];
  const g = t?.game ?? null;
  const my = v.members.get(me());
  const mySeat = my?.seat && t && my.seat[0] === t.table ? my.seat[1] : null;
  $('game-head').textContent = !t
    ? 'Sit at a table to play, or watch one.'
    : `Table ${t.table + 1}${g ? ` · game ${g.game_no}` : ''}${mySeat === null ? ' · watching' : ` · you play ${color(mySeat)}`}`;
  drawBoard(g);
  // Whose turn.
  const turn = $('turn');
  turn.className = 'turn';
  if (!t) turn.textContent = '';
  else if (!g) turn.textContent = 'Waiting for two players.';
  else if (g.outcome === null) {
    const p = g.players[g.turn];
    const mine = g.turn === mySeat;
    turn.textContent = mine ? `Your turn (${color(g.turn)})` : `${color(g.turn)} to move: ${nameOf(p)}`;
    if (mine) turn.className = 'turn mine';
  } else turn.textContent = t.seats.every((s) => s !== null) ? 'Waiting for both players to be ready.' : 'Waiting for players.';
  turn.dataset.turn = g && g.outcome === null ? g.turn : '';
  // Result.
  const res = $('result');
  const done = g && g.outcome !== null ? v.finished.findLast((f) => f.table === t.table && f.game.game_no === g.game_no) : null;
  res.hidden = !(g && g.outcome !== null);
  if (!res.hidden) {
    const o = g.outcome;
    const lines = [];
    if (o === 'Draw') lines.push('Draw.');
    else {
      const w = o.Win;
      const how = { Rule: 'five in a row', Timeout: 'on time', Forfeit: 'by forfeit' }[w.reason] ?? w.reason;
      lines.push(w.player === me() ? `You win (${color(w.seat)}, ${how})!` : `${nameOf(w.player)} (${color(w.seat)}) wins, ${how}.`);
    }
    for (const [p, r] of done?.records ?? []) {
      const b = done.before.get(p);
      const d = b ? r.rating - b.rating : 0;
      const dc = b ? r.coins - b.coins : 0;
      lines.push(`${nameOf(p)}: rating ${b ? `${b.rating} → ` : ''}${r.rating} (${d >= 0 ? '+' : ''}${d}), coins ${r.coins} (${dc >= 0 ? '+' : ''}${dc}), ${r.wins}W ${r.losses}L ${r.draws}D`);
    }
    res.textContent = lines.join('\n');
    res.dataset.winner = o === 'Draw' ? 0 : o.Win.player;
  } else delete res.dataset.winner;
  $('ready').hidden = !(mySeat !== null && g && g.outcome !== null && !t.ready[mySeat]);
  $('stand').hidden = mySeat === null;
  $('unwatch').hidden = !(my && my.watching !== null && my.watching !== undefined);
  // Moves.
  $('moves').replaceChildren(...(g?.moves ?? []).map(([seat, mv, auto]) => el('li', { class: color(seat) }, `${color(seat)[0].toUpperCase()} ${coord(mv)}${auto ? ' (timer)' : ''}`)));
}

const coord = ([x, y]) => `${COLS[x]}${SIZE - y}`;

function drawBoard(g) {
  const c = $('board');
  const dpr = window.devicePixelRatio || 1;
  const css = MARGIN * 2 + CELL * (SIZE - 1);
  if (c.width !== css * dpr) {
    c.width = c.height = css * dpr;
    c.style.width = c.style.height = `${css}px`;
  }
  const x = c.getContext('2d');
  x.setTransform(dpr, 0, 0, dpr, 0, 0);
  x.fillStyle = '#dcb46c';
  x.fillRect(0, 0, css, css);
  x.strokeStyle = '#5a4320';
  x.lineWidth = 1;
  x.fillStyle = '#5a4320';
  x.font = '11px system-ui, sans-serif';
  x.textAlign = 'center';
  x.textBaseline = 'middle';
  for (let i = 0; i < SIZE; i++) {
    const p = MARGIN + i * CELL + 0.5;
    x.beginPath();
    x.moveTo(MARGIN, p);
    x.lineTo(MARGIN + CELL * (SIZE - 1), p);
    x.moveTo(p, MARGIN);
    x.lineTo(p, MARGIN + CELL * (SIZE - 1));
    x.stroke();
    x.fillText(COLS[i], p, MARGIN / 2 - 2);
    x.fillText(String(SIZE - i), MARGIN / 2 - 2, p);
  }
  for (const [sx, sy] of [[3, 3], [11, 3], [7, 7], [3, 11], [11, 11]]) {
    x.beginPath();
    x.arc(MARGIN + sx * CELL + 0.5, MARGIN + sy * CELL + 0.5, 3, 0, Math.PI * 2);
    x.fill();
  }
  if (!g) return;
  g.moves.forEach(([seat, mv], i) => {
    const px = MARGIN + mv[0] * CELL;
    const py = MARGIN + mv[1] * CELL;
    const grad = x.createRadialGradient(px - 4, py - 4, 2, px, py, CELL * 0.45);
    if (seat === 0) {
      grad.addColorStop(0, '#666');
      grad.addColorStop(1, '#000');
    } else {
      grad.addColorStop(0, '#fff');
      grad.addColorStop(1, '#cfcfcf');
    }
    x.beginPath();
    x.arc(px, py, CELL * 0.44, 0, Math.PI * 2);
    x.fillStyle = grad;
    x.fill();
    x.strokeStyle = '#222';
    x.stroke();
    if (i === g.moves.length - 1) {
      x.beginPath();
      x.arc(px, py, 4, 0, Math.PI * 2);
      x.fillStyle = '#e22';
      x.fill();
    }
  });
}

async function onBoardClick(ev) {
  const v = app.view;
  const t = app.shown;
  if (!v || t === null || t === undefined) return;
  const g = v.tables[t]?.game;
  const my = v.members.get(me());
  if (!g || g.outcome !== null || !my?.seat || my.seat[0] !== t) return;
  const r = ev.currentTarget.getBoundingClientRect();
  const px = ((ev.clientX - r.left) * (MARGIN * 2 + CELL * (SIZE - 1))) / r.width;
  const py = ((ev.clientY - r.top) * (MARGIN * 2 + CELL * (SIZE - 1))) / r.height;
  const bx = Math.round((px - MARGIN) / CELL);
  const by = Math.round((py - MARGIN) / CELL);
  if (bx < 0 || by < 0 || bx >= SIZE || by >= SIZE) return;
  if (g.turn !== my.seat[1]) {
    toast('It is not your turn.');
    return;
  }
  if (g.moves.some(([, mv]) => mv[0] === bx && mv[1] === by)) return;
  await req({ Move: { room: v.room, table: t, mv: [bx, by] } });
}

// ---------------------------------------------------------------- wiring

function wire() {
  $('guest-name').value = localStorage.getItem('gs.name') ?? '';
  $('guest-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const name = $('guest-name').value.trim();
    localStorage.setItem('gs.name', name);
    postLogin('/v1/guest', name ? { device: deviceId(), name } : { device: deviceId() });
  });
  $('account-form').addEventListener('submit', (e) => {
    e.preventDefault();
    postLogin('/v1/login', { name: $('acc-name').value, password: $('acc-pass').value });
  });
  $('register-btn').addEventListener('click', () => postLogin('/v1/register', { name: $('acc-name').value, password: $('acc-pass').value }));
  $('logout').addEventListener('click', logout);
  $('refresh').addEventListener('click', refreshRooms);
  $('leave').addEventListener('click', leave);
  $('board').addEventListener('click', onBoardClick);
  $('ready').addEventListener('click', () => req({ Ready: { room: app.view.room } }));
  $('stand').addEventListener('click', () => req({ Stand: { room: app.view.room } }));
  $('unwatch').addEventListener('click', () => req({ Spectate: { room: app.view.room, table: null } }));
  $('chat-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const text = $('chat-text').value.trim();
    if (!text || !app.view) return;
    const toTable = $('chat-to').value === 'table';
    const table = toTable ? shownTable() : null;
    if (toTable && (table === null || table === undefined)) {
      toast('Sit at or watch a table to chat there.');
      return;
    }
    const a = await req({ Chat: { room: app.view.room, table: table ?? null, text } });
    if (a) $('chat-text').value = '';
  });
  drawBoard(null);
}

/// What the browser tests read, and their debug hooks.
window.gs = {
  app,
  state() {
    const v = app.view;
    return {
      screen: app.screen,
      conn: app.session?.state ?? 'idle',
      connStates: [...app.connStates],
      player: me() ?? null,
      rtt: app.session?.rttMs ?? null,
      record: app.record,
      stats: app.session ? { ...app.session.stats } : null,
      errors: app.errors.map((e) => `${e.code}: ${e.message}`),
      hallRefreshes: app.hallRefreshes,
      lastDrop: app.lastDrop ? app.lastDrop.code ?? app.lastDrop.message : null,
      rooms: app.rooms,
      room: v ? { room: v.room, seq: v.seq, gaps: v.gaps, mismatches: v.mismatches, members: v.members.size, chats: v.chat.map((c) => c.text) } : null,
      seat: v?.members.get(me())?.seat ?? null,
    };
  },
  /// The moves of a table's current (or last) game as [x, y] pairs, and its number and outcome.
  game(table) {
    const g = app.view?.tables[table]?.game;
    return g ? { game_no: g.game_no, moves: g.moves.map(([, mv]) => mv), turn: g.turn, outcome: g.outcome, players: g.players } : null;
  },
  debug: {
    drop: () => app.session?.debugDrop(),
    stopPings: () => app.session?.debugStopPings(true),
  },
};

wire();
