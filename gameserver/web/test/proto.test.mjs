// The JS codec against the Rust one: tests/tests/browser.rs
// (js_codec_matches_the_rust_types) writes values of every payload type as
// serde_json renders them, with their postcard bytes and whole frames made
// by gameserver::proto; here each must decode to the same value and encode
// to the same bytes. Run by that Rust test (`node --test test/` with
// GS_CODEC_FIXTURE set); `npm test` after it has run once reads the same file.

import test from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as P from '../proto.js';
import { RoomView, settleFromSnapshot } from '../client.js';

const fixturePath =
  process.env.GS_CODEC_FIXTURE ?? fileURLToPath(new URL('../../../target/browser-artifacts/codec-fixture.json', import.meta.url));

const fromHex = (h) => Uint8Array.from(h.match(/../g) ?? [], (x) => parseInt(x, 16));
const toHex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');

test('the fixture from the Rust side is there', () => {
  assert.ok(
    fs.existsSync(fixturePath),
    `no ${fixturePath}: run cargo test --release -p system-tests --test browser js_codec (it writes the fixture)`,
  );
});

const fx = fs.existsSync(fixturePath) ? JSON.parse(fs.readFileSync(fixturePath, 'utf8')) : null;

if (fx) {
  test('constants agree', () => {
    assert.equal(fx.header_bytes, P.HEADER_BYTES);
    assert.equal(fx.protocol_version, P.PROTOCOL_VERSION);
  });

  test('crc32 check values', () => {
    for (const c of fx.crc) assert.equal(P.crc32(fromHex(c.hex)), c.crc);
  });

  fx.payloads.forEach((c, i) => {
    test(`payload ${i}: ${c.type} ${JSON.stringify(c.json).slice(0, 60)}`, () => {
      const type = P.TYPES[c.type];
      assert.ok(type, `proto.js has no type ${c.type}`);
      const bytes = fromHex(c.hex);
      assert.deepEqual(P.decode(type, bytes), c.json, 'decodes to what serde_json renders');
      assert.equal(toHex(P.encode(type, c.json)), c.hex, 'encodes to the bytes postcard writes');
    });
  });

  test('frames encode and decode as frame.rs does', () => {
    for (const f of fx.frames) {
      const got = P.decodeFrame(fromHex(f.hex));
      assert.equal(got.kind, f.kind);
      assert.equal(got.seq, f.seq);
      assert.equal(got.timeMs, f.time_ms);
      assert.equal(toHex(got.payload), f.payload);
      assert.equal(toHex(P.encodeFrame(f.kind, f.seq, f.time_ms, fromHex(f.payload), f.flags)), f.hex);
    }
  });

  test('compressed frames inflate to what the Rust side compressed', async () => {
    const packed = fx.frames.filter((f) => f.flags & P.FLAG_COMPRESSED);
    assert.ok(packed.length > 0, 'the fixture has a compressed frame');
    for (const f of packed) {
      const got = await P.decodeFrameInflated(fromHex(f.hex));
      assert.equal(got.flags, 0);
      assert.equal(toHex(got.payload), f.plain);
      assert.ok(P.decode(P.Reply, got.payload).Ok.Rooms.length > 0);
    }
  });

  test('any bit flipped in a frame is refused', () => {
    for (const f of fx.frames) {
      const b = fromHex(f.hex);
      for (let bit = 0; bit < b.length * 8; bit++) {
        const c = b.slice();
        c[bit >> 3] ^= 1 << (bit & 7);
        assert.throws(() => P.decodeFrame(c), P.ProtoError, `bit ${bit} of ${f.hex}`);
      }
    }
  });

  test('every cut of a payload is refused with a ProtoError, never another error', () => {
    for (const c of fx.payloads) {
      const b = fromHex(c.hex);
      for (let n = 0; n < b.length; n++) {
        try {
          P.decode(P.TYPES[c.type], b.subarray(0, n));
        } catch (e) {
          assert.ok(e instanceof P.ProtoError, `${c.type} cut at ${n}: ${e}`);
        }
      }
      assert.throws(() => P.decode(P.TYPES[c.type], Uint8Array.from([...b, 0])), P.ProtoError, 'trailing bytes');
    }
  });
}

test('garbage never throws anything but a ProtoError', () => {
  let seed = 12345;
  const rand = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
  for (let i = 0; i < 3000; i++) {
    const b = Uint8Array.from({ length: Math.floor(rand() * 40) }, () => Math.floor(rand() * 256));
    for (const t of [P.Push, P.Reply, P.Request, P.Welcome]) {
      try {
        P.decode(t, b);
      } catch (e) {
        assert.ok(e instanceof P.ProtoError, `${e} on ${toHex(b)}`);
      }
    }
  }
});

test('a decompression bomb is refused at the limit, garbage with a ProtoError', async () => {
  const zeros = new Uint8Array(4 << 20);
  const bomb = new Uint8Array(await new Response(new Blob([zeros]).stream().pipeThrough(new CompressionStream('deflate-raw'))).arrayBuffer());
  assert.ok(bomb.length < 20000, `${bomb.length} bytes`);
  await assert.rejects(P.inflate(bomb, 65536), (e) => e instanceof P.ProtoError && /past the limit/.test(e.message));
  assert.equal((await P.inflate(bomb, 4 << 20)).length, 4 << 20);
  await assert.rejects(P.inflate(Uint8Array.from([0xff, 0xff, 0xff]), 100), P.ProtoError);
});

test('layout_is_stable (msg.rs)', () => {
  assert.equal(toHex(P.encode(P.Request, { Enter: { room: 300 } })), '01ac02');
  assert.equal(toHex(P.encode(P.Reply, { Err: { code: 'NotYourTurn', message: 'x' } })), '010c0178');
  assert.equal(toHex(P.encode(P.Reply, { Ok: { Done: { room: 1, seq: 2 } } })), '00020102');
});

test('a RoomView applies events in sequence and counts what does not fit', () => {
  const snap = {
    room: 1, name: 'r', game: 'gomoku', seq: 10, capacity: 4,
    members: [1, 2].map((p) => ({ player: p, name: `p${p}`, seat: null, watching: null, wins: 0, losses: 0, draws: 0, games: 0, rating: 1200, coins: 1000 })),
    tables: [{ table: 0, seats: [null, null], ready: [false, false], game: null }],
  };
  const v = new RoomView(snap);
  assert.equal(v.apply(11, { Sat: { table: 0, seat: 0, player: 1 } }), 'Event');
  assert.equal(v.apply(12, { Sat: { table: 0, seat: 1, player: 2 } }), 'Event');
  assert.equal(v.apply(13, { Started: { table: 0, game_no: 1, players: [1, 2], turn_ms: 1000 } }), 'Event');
  assert.equal(v.apply(14, { Moved: { table: 0, seat: 0, mv: [7, 7], auto: false } }), 'Event');
  assert.equal(v.apply(14, { Moved: { table: 0, seat: 0, mv: [7, 7], auto: false } }), 'Stale');
  assert.equal(v.apply(16, { Moved: { table: 0, seat: 0, mv: [7, 8], auto: false } }), 'AfterGap');
  assert.equal(v.mismatches, 1, 'seat 0 moved twice');
  assert.deepEqual([v.gaps, v.missed, v.stale], [1, 1, 1]);
  const rec = { games: 1, wins: 1, losses: 0, draws: 0, rating: 1216, coins: 1010 };
  v.apply(17, { Ended: { table: 0, game_no: 1, outcome: { Win: { seat: 0, player: 1, reason: 'Rule' } }, moves: 2, records: [[1, rec]] } });
  assert.equal(v.members.get(1).rating, 1216);
  assert.equal(v.finished.at(-1).before.get(1).rating, 1200);
  // A request in flight across a reconnect is settled from the snapshot when it shows it done.
  const s = { ...snap, seq: 20, members: [{ ...snap.members[0], seat: [0, 0] }], tables: [{ ...v.tables[0] }] };
  assert.deepEqual(settleFromSnapshot({ Move: { room: 1, table: 0, mv: [7, 7] } }, s, 1), { Done: { room: 1, seq: 20 } });
  assert.equal(settleFromSnapshot({ Move: { room: 1, table: 0, mv: [1, 1] } }, s, 1), null);
  assert.deepEqual(settleFromSnapshot({ Sit: { room: 1, table: 0, seat: 0 } }, s, 1), { Done: { room: 1, seq: 20 } });
  assert.equal(settleFromSnapshot({ Chat: { room: 1, table: null, text: 'x' } }, s, 1), null);
});
