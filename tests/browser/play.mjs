// The browser side of tests/tests/browser.rs: real headless Chromium
// (Debian's, through playwright-core: no browser download) on the page the
// cluster's login server serves. Three players, one browser context each
// (each its own localStorage, so its own guest device).
//
//   game 1  alice (guest) and bob (a registered account) meet at table 1
//           and play by clicking the board; carol watches; all three see
//           the result and the new records.
//   game 2  the room-server master is SIGKILLed after move 3 (the Rust
//           side does it when we print KILL_MASTER); nobody notices: no
//           disconnect shown, no reconnect, no gap.
//   game 3  bob's connection is cut by the page (twice, once with a move in
//           flight) and alice's by the gateway (her pings stop: the gateway
//           closes the session after dead_ticks silent heartbeats); both
//           pages reconnect into their seats and the game goes on.
//   queue   the zone admits three players: a fourth page waits in the
//           center's login queue, shows its position, and is admitted when
//           one of the three logs out.
//
// Protocol with the Rust side, one line each: we print STEP <text>,
// KILL_MASTER (answer KILLED), RESTART (answer RESTARTED), CHECK <json>
// (answer OK or MISMATCH <why>), DONE. Every wait has a deadline; any
// failure exits non-zero with the reason on stderr.

import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';

const require = createRequire(new URL('../../gameserver/web/package.json', import.meta.url));
const { chromium } = require('playwright-core');

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const LOGIN = args.login;
const ARTIFACTS = args.artifacts;
const CHROMIUM = args.chromium ?? '/usr/bin/chromium';
/// A page-side condition, at most (a failover or a reconnect included).
const WAIT_MS = 25_000;
/// An answer from the Rust side, at most.
const ANSWER_MS = 60_000;
/// Board geometry of app.js (CSS pixels).
const MARGIN = 28;
const CELL = 30;
const ROOM = 1;
const TABLE = 0;

const step = (s) => console.log(`STEP ${s}`);

// ---- stdin answers
const answers = [];
const waiting = [];
readline.createInterface({ input: process.stdin }).on('line', (l) => {
  const w = waiting.shift();
  if (w) w(l);
  else answers.push(l);
});
function ask(cmd) {
  console.log(cmd);
  return new Promise((resolve, reject) => {
    if (answers.length) return resolve(answers.shift());
    const t = setTimeout(() => reject(new Error(`no answer to ${cmd.split(' ')[0]} within ${ANSWER_MS} ms`)), ANSWER_MS);
    waiting.push((l) => {
      clearTimeout(t);
      resolve(l);
    });
  });
}

function check(cond, msg) {
  if (!cond) throw new Error(msg);
}

// ---- pages
const pageErrors = [];
/// How long each move took from the click until every page showed it.
const timings = [];

async function open(browser, name) {
  const ctx = await browser.newContext({ viewport: { width: 1240, height: 900 } });
  const page = await ctx.newPage();
  page.setDefaultTimeout(WAIT_MS);
  page.on('pageerror', (e) => pageErrors.push(`${name}: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') pageErrors.push(`${name} console: ${m.text()}`);
  });
  await page.goto(LOGIN);
  await page.waitForFunction(() => window.gs !== undefined);
  return { name, page };
}

const state = (p) => p.page.evaluate(() => window.gs.state());
const game = (p) => p.page.evaluate((t) => window.gs.game(t), TABLE);

async function until(p, what, fn, arg) {
  try {
    await p.page.waitForFunction(fn, arg, { timeout: WAIT_MS, polling: 50 });
  } catch (e) {
    const s = await state(p).catch(() => null);
    throw new Error(`${p.name}: ${what} not within ${WAIT_MS} ms (state ${JSON.stringify(s)}): ${e.message.split('\n')[0]}`);
  }
}

async function enterRoom(p) {
  await until(p, 'the hall lists rooms', () => window.gs.state().rooms.length > 0);
  await p.page.click(`#rooms button.enter[data-room="${ROOM}"]`);
  await until(p, 'in the room', () => window.gs.state().screen === 'room' && window.gs.state().room !== null);
}

/// Clicks cell (x, y) on the board.
async function click(p, x, y) {
  await p.page.locator('#board').click({ position: { x: MARGIN + x * CELL, y: MARGIN + y * CELL } });
}

/// Waits until every page's table shows game `no` with `n` moves.
async function seeMoves(pages, no, n) {
  for (const p of pages) {
    await until(p, `game ${no} with ${n} moves`, ([t, no, n]) => {
      const g = window.gs.game(t);
      return g && g.game_no === no && g.moves.length === n;
    }, [TABLE, no, n]);
  }
}

async function waitStarted(pages, no) {
  for (const p of pages) {
    await until(p, `game ${no} started`, ([t, no]) => {
      const g = window.gs.game(t);
      return g && g.game_no === no && g.outcome === null;
    }, [TABLE, no]);
  }
}

/// Plays `moves` ([who, x, y]) in order from move index `from`, each seen by all pages.
async function play(pages, no, moves, from = 0, after = async () => {}) {
  for (let i = 0; i < moves.length; i++) {
    const [p, x, y] = moves[i];
    await until(p, `its turn in game ${no}`, () => document.getElementById('turn').classList.contains('mine'));
    const t = Date.now();
    await click(p, x, y);
    await seeMoves(pages, no, from + i + 1);
    timings.push({ game: no, move: from + i + 1, ms: Date.now() - t });
    await after(from + i + 1);
  }
}

async function waitResult(pages, winner) {
  for (const p of pages) {
    await until(p, 'the result shown', (w) => {
      const r = document.getElementById('result');
      return !r.hidden && r.dataset.winner === String(w);
    }, winner);
  }
}

async function checkWithServer(no, pages) {
  const claim = { table: TABLE, game_no: no, pages: {} };
  for (const p of pages) {
    const g = await game(p);
    check(g && g.game_no === no, `${p.name} is not at game ${no}`);
    claim.pages[p.name] = g.moves;
  }
  const a = await ask(`CHECK ${JSON.stringify(claim)}`);
  check(a === 'OK', `game ${no}: ${a}`);
}

async function shot(p, file) {
  const to = path.join(ARTIFACTS, file);
  await p.page.screenshot({ path: to });
  return to;
}

async function main() {
  check(LOGIN && ARTIFACTS, 'usage: play.mjs --login URL --artifacts DIR [--readme-shot FILE] [--chromium PATH]');
  const t0 = Date.now();
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30_000,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run', '--disable-component-update', '--disable-sync'],
  });
  try {
    step(`chromium ${browser.version()} up in ${Date.now() - t0} ms`);
    await scenarios(browser);
  } finally {
    await browser.close().catch(() => {});
  }
  check(pageErrors.length === 0, `errors in the pages: ${pageErrors.join('; ')}`);
  step(`move latencies (click to seen by every page), ms: ${timings.map((t) => `${t.game}.${t.move}=${t.ms}`).join(' ')}`);
  console.log('DONE');
  process.exit(0); // stdin stays open: nothing else would end the event loop
}

async function scenarios(browser) {
  // ---------------------------------------------------------------- game 1
  const A = await open(browser, 'alice');
  await A.page.fill('#guest-name', 'alice');
  await A.page.click('#guest-btn');
  await until(A, 'the hall', () => window.gs.state().screen === 'hall' && window.gs.state().rooms.length > 0);
  const refreshes = (await state(A)).hallRefreshes;
  await A.page.click('#refresh');
  await until(A, 'the hall refreshed', (n) => window.gs.state().hallRefreshes > n, refreshes);
  await until(A, 'a round trip measured', () => window.gs.state().rtt !== null);
  await shot(A, 'hall.png');
  step('alice (guest) is in the hall; rooms listed, refreshed, RTT shown');

  const B = await open(browser, 'bob');
  await B.page.fill('#acc-name', 'bob_the_builder');
  await B.page.fill('#acc-pass', 'correct horse');
  await B.page.click('#register-btn');
  await until(B, 'the hall after registering', () => window.gs.state().screen === 'hall');
  await B.page.click('#logout');
  await until(B, 'the login form after logging out', () => window.gs.state().screen === 'login');
  await B.page.fill('#acc-name', 'bob_the_builder');
  await B.page.fill('#acc-pass', 'correct horse');
  await B.page.click('#login-btn');
  await until(B, 'the hall after logging in', () => window.gs.state().screen === 'hall');
  step('bob registered, logged out and logged in with his password');

  const C = await open(browser, 'carol');
  await C.page.fill('#guest-name', 'carol');
  await C.page.click('#guest-btn');
  await until(C, 'the hall', () => window.gs.state().screen === 'hall');

  for (const p of [A, B, C]) await enterRoom(p);
  await A.page.click(`.table-card[data-table="${TABLE}"] button.sit[data-seat="0"]`);
  await until(A, 'seated', (t) => JSON.stringify(window.gs.state().seat) === JSON.stringify([t, 0]), TABLE);
  await B.page.click(`.table-card[data-table="${TABLE}"] button.sit[data-seat="1"]`);
  await C.page.click(`.table-card[data-table="${TABLE}"] button.watch`);
  const players = [A, B];
  const all = [A, B, C];
  await waitStarted(all, 1);
  step('alice and bob sat at table 1: game 1 started; carol watches');

  await A.page.selectOption('#chat-to', 'room');
  await A.page.fill('#chat-text', 'hello room');
  await A.page.click('#chat-form button');
  await B.page.selectOption('#chat-to', 'table');
  await B.page.fill('#chat-text', 'good luck');
  await B.page.click('#chat-form button');
  for (const p of all) {
    await until(p, 'both chat lines', () => {
      const c = window.gs.state().room.chats;
      return c.includes('hello room') && c.includes('good luck');
    });
  }
  step('room and table chat seen by all three');

  const a = (await state(A)).player;
  const b = (await state(B)).player;
  // Black (alice) plays row 8 from D to H, white row 6: black's fifth stone wins.
  const game1 = [];
  for (let i = 0; i < 5; i++) {
    game1.push([A, 3 + i, 7]);
    if (i < 4) game1.push([B, 3 + i, 9]);
  }
  await play(all, 1, game1.slice(0, 6));
  await shot(A, 'game.png');
  await play(all, 1, game1.slice(6), 6);
  await waitResult(all, a);
  const ra = await state(A);
  const rb = await state(B);
  check(ra.record.wins === 1 && ra.record.rating > 1200, `alice's record after her win: ${JSON.stringify(ra.record)}`);
  check(rb.record.losses === 1 && rb.record.rating < 1200, `bob's record after his loss: ${JSON.stringify(rb.record)}`);
  check((await A.page.textContent('#result')).includes('You win'), 'alice is told she won');
  check((await A.page.textContent('#me')).includes(`rating ${ra.record.rating}`), 'the header shows the new rating');
  const resultShot = await shot(A, 'result.png');
  await shot(C, 'result-spectator.png');
  if (args['readme-shot']) fs.copyFileSync(resultShot, args['readme-shot']);
  await checkWithServer(1, all);
  step(`game 1: alice won by clicking; result and records (alice ${ra.record.rating}, bob ${rb.record.rating}) on all pages`);

  // ---------------------------------------------------------------- game 2
  for (const p of players) await p.page.click('#ready');
  await waitStarted(all, 2);
  const before = await Promise.all(players.map(state));
  const game2 = [];
  for (let i = 0; i < 5; i++) {
    game2.push([A, 2 * i, 0]);
    game2.push([B, i, 14]);
  }
  let killedAt = null;
  await play(all, 2, game2, 0, async (n) => {
    if (n === 3) {
      const r = await ask('KILL_MASTER');
      check(r === 'KILLED', `KILL_MASTER answered ${r}`);
      killedAt = Date.now();
      step('the room-server master is SIGKILLed after move 3');
    }
  });
  await waitResult(all, b);
  const slowest = timings.filter((t) => t.game === 2 && t.move > 3).reduce((m, t) => (t.ms > m.ms ? t : m));
  step(`game 2 finished ${Date.now() - killedAt} ms after the kill; bob won; slowest move after it: ${slowest.ms} ms (move ${slowest.move})`);
  for (const [i, p] of players.entries()) {
    const s = await state(p);
    check(s.stats.drops === before[i].stats.drops && s.stats.reconnects === before[i].stats.reconnects,
      `${p.name}'s connection dropped during the failover: ${JSON.stringify(s.stats)}`);
    check(s.connStates.length === before[i].connStates.length && s.conn === 'open',
      `${p.name}'s indicator changed during the failover: ${s.connStates}`);
    check(s.room.gaps === 0 && s.room.mismatches === 0, `${p.name} saw a gap or a mismatch: ${JSON.stringify(s.room)}`);
    check(await p.page.isHidden('#banner'), `${p.name} shows a banner`);
    check(s.errors.length === before[i].errors.length, `${p.name} was refused: ${s.errors}`);
  }
  await checkWithServer(2, all);
  check((await ask('RESTART')) === 'RESTARTED', 'the killed node restarts');
  step('game 2 matched the new master; no page showed a disconnect; the old master is back as standby');

  // ---------------------------------------------------------------- game 3
  for (const p of players) await p.page.click('#ready');
  await waitStarted(all, 3);
  await play(all, 3, [[A, 5, 5], [B, 5, 6]]);
  // Bob's connection is cut by the page: it reconnects and is back in his seat.
  await B.page.evaluate(() => window.gs.debug.drop());
  await until(B, 'reconnected', () => window.gs.state().stats.reconnects === 1 && window.gs.state().conn === 'open');
  check(JSON.stringify((await state(B)).seat) === JSON.stringify([TABLE, 1]), 'bob is back in his seat');
  step('bob\'s connection was cut and resumed into his seat');
  await play(all, 3, [[A, 6, 6]], 2);
  // Cut again with his move in flight: the move is done once, whichever way it went.
  await until(B, 'its turn', () => document.getElementById('turn').classList.contains('mine'));
  await click(B, 6, 7);
  await B.page.evaluate(() => window.gs.debug.drop());
  await until(B, 'reconnected again', () => window.gs.state().stats.reconnects === 2 && window.gs.state().conn === 'open');
  await seeMoves(all, 3, 4);
  step(`bob's move in flight across a cut was done once (${JSON.stringify((await state(B)).stats)})`);
  await play(all, 3, [[A, 7, 7]], 4);
  // Alice stops pinging: the gateway closes her session; the page reconnects.
  await A.page.evaluate(() => window.gs.debug.stopPings());
  await until(A, 'reconnected after the heartbeat timeout', () => window.gs.state().stats.reconnects === 1 && window.gs.state().conn === 'open');
  const sa = await state(A);
  check(JSON.stringify(sa.seat) === JSON.stringify([TABLE, 0]), 'alice is back in her seat');
  check(sa.connStates.includes('reconnecting'), 'alice\'s indicator showed the reconnect');
  check(sa.lastDrop === 'HeartbeatTimeout', `alice's session was closed by the gateway's heartbeat rule, not ${sa.lastDrop}`);
  step(`alice's silent session was closed by the gateway (${sa.lastDrop}) and resumed into her seat`);
  await play(all, 3, [[B, 7, 8], [A, 8, 8], [B, 8, 9], [A, 9, 9]], 5);
  await waitResult(all, a);
  await checkWithServer(3, all);
  for (const p of all) {
    const s = await state(p);
    check(s.room.mismatches === 0, `${p.name} saw an event that did not fit: ${JSON.stringify(s.room)}`);
  }
  step('game 3 finished with both players reconnected; all pages match the master');

  // ---------------------------------------------------------------- the login queue
  // The zone admits ONLINE_MAX players (alice, bob, carol): dave waits, sees
  // his place, and comes in when carol logs out.
  const D = await open(browser, 'dave');
  await D.page.fill('#guest-name', 'dave');
  await D.page.click('#guest-btn');
  await until(D, 'told his place in the login queue', () => {
    const b = document.getElementById('banner');
    return window.gs.state().conn === 'queued' && !b.hidden && /position 1 of \d+/.test(b.textContent);
  });
  await shot(D, 'queue.png');
  await C.page.click('#logout');
  await until(D, 'admitted to the hall', () => window.gs.state().screen === 'hall' && window.gs.state().conn === 'open');
  check(await D.page.isHidden('#banner'), 'the queue banner is gone once admitted');
  step('dave waited in the login queue (his position shown) and came in when carol logged out');
}

main().catch((e) => {
  console.error(`browser script failed: ${e.stack ?? e}`);
  process.exit(1);
});
