// The wire format of the game server in JS: a mirror of `gameserver::proto`
// (frame.rs: the 24-byte header with its CRC32; msg.rs: postcard payloads).
// Sans-IO like the Rust module: bytes in, values out. No dependencies.
//
//   { len u32 | kind u8 | flags u8 | rsv u16 | seq u32 | time_ms u64 | crc u32 } payload[len]
//     24 bytes, little-endian; crc = crc32(header[0..20] ++ payload)
//
// Values look like serde_json's rendering of the Rust types (externally
// tagged enums): a unit variant is its name ("Rooms"), any other variant an
// object with one key ({Enter: {room: 1}}, {Snapshot: {...}}); Option is
// null or the value; tuples are arrays; Result is {Ok: ..} or {Err: ..};
// Vec<u8> is an array of numbers. tests/tests/browser.rs checks the JS
// codec against bytes and JSON made by the Rust types, so the two cannot
// drift apart silently. The order of variants and fields is the format.

export const HEADER_BYTES = 24;
/// This build's protocol version (msg::PROTOCOL_VERSION).
export const PROTOCOL_VERSION = 1;
/// Largest frame payload accepted from the gateway (client::FRAME_PAYLOAD_BYTES_MAX).
export const FRAME_PAYLOAD_BYTES_MAX = 4 << 20;
/// Flag: the payload is deflate-raw (frame::FLAG_COMPRESSED).
export const FLAG_COMPRESSED = 1;
/// Flag bits this build understands (frame::FLAGS_KNOWN).
export const FLAGS_KNOWN = FLAG_COMPRESSED;
/// Auth.features (msg::FEATURE_DEFLATE, FEATURE_RTT): this client inflates
/// compressed frames, reads Pong.rtt_ms and answers the gateway's Pings.
export const FEATURE_DEFLATE = 1;
export const FEATURE_RTT = 2;
export const FEATURES = FEATURE_DEFLATE | FEATURE_RTT;

export const Kind = Object.freeze({
  Auth: 1, Welcome: 2, Request: 3, Reply: 4, Push: 5, Ping: 6, Pong: 7,
  Error: 8, Bye: 9, Center: 10, ToRoom: 64, FromRoom: 65, ToCenter: 66, FromCenter: 67,
});
const KNOWN_KINDS = new Set(Object.values(Kind));

/// Bytes that are not a frame, or a payload that does not decode.
export class ProtoError extends Error {
  constructor(message) {
    super(message);
    this.name = 'ProtoError';
  }
}

// ---------------------------------------------------------------- CRC32 (IEEE, as crc32fast)

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/// CRC32 of the byte arrays one after another.
export function crc32(...parts) {
  let c = 0xffffffff;
  for (const p of parts) {
    for (let i = 0; i < p.length; i++) c = CRC_TABLE[(c ^ p[i]) & 0xff] ^ (c >>> 8);
  }
  return (c ^ 0xffffffff) >>> 0;
}

// ---------------------------------------------------------------- frames

/// One encoded frame (a WebSocket message holds exactly one).
export function encodeFrame(kind, seq, timeMs, payload = new Uint8Array(0), flags = 0) {
  const out = new Uint8Array(HEADER_BYTES + payload.length);
  const v = new DataView(out.buffer);
  v.setUint32(0, payload.length, true);
  out[4] = kind;
  out[5] = flags;
  v.setUint16(6, 0, true);
  v.setUint32(8, seq >>> 0, true);
  v.setBigUint64(12, BigInt(timeMs), true);
  v.setUint32(20, crc32(out.subarray(0, 20), payload), true);
  out.set(payload, HEADER_BYTES);
  return out;
}

/// A WebSocket message as a frame: {kind, flags, seq, timeMs, payload}.
/// Throws ProtoError for anything but exactly one valid frame.
export function decodeFrame(bytes, payloadMax = FRAME_PAYLOAD_BYTES_MAX) {
  const b = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  if (b.length < HEADER_BYTES) throw new ProtoError('a truncated frame');
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const len = v.getUint32(0, true);
  if (len > payloadMax) throw new ProtoError(`frame payload of ${len} bytes is over the limit of ${payloadMax} bytes`);
  const kind = b[4];
  if (!KNOWN_KINDS.has(kind)) throw new ProtoError(`unknown frame kind ${kind}`);
  if (b.length < HEADER_BYTES + len) throw new ProtoError('a truncated frame');
  if (b.length > HEADER_BYTES + len) throw new ProtoError('bytes after the frame');
  const payload = b.subarray(HEADER_BYTES, HEADER_BYTES + len);
  if (crc32(b.subarray(0, 20), payload) !== v.getUint32(20, true)) throw new ProtoError('frame CRC mismatch');
  const flags = b[5];
  if (flags & ~FLAGS_KNOWN) throw new ProtoError(`frame flags ${flags} are not supported`);
  if (b[6] !== 0 || b[7] !== 0) throw new ProtoError('reserved header bytes are not zero');
  return { kind, flags, seq: v.getUint32(8, true), timeMs: toNumber(v.getBigUint64(12, true)), payload };
}

/// `data` (deflate-raw) inflated with the browser's DecompressionStream,
/// refused with a ProtoError once it passes `max` bytes (a decompression
/// bomb costs at most `max` bytes and one chunk).
export async function inflate(data, max = FRAME_PAYLOAD_BYTES_MAX) {
  const ds = new DecompressionStream('deflate-raw');
  const w = ds.writable.getWriter();
  w.write(data).catch(() => {});
  w.close().catch(() => {});
  const r = ds.readable.getReader();
  const parts = [];
  let n = 0;
  try {
    for (;;) {
      const { value, done } = await r.read();
      if (done) break;
      n += value.length;
      if (n > max) {
        r.cancel().catch(() => {});
        throw new ProtoError(`a compressed payload inflates past the limit of ${max} bytes`);
      }
      parts.push(value);
    }
  } catch (e) {
    if (e instanceof ProtoError) throw e;
    throw new ProtoError('a compressed payload is not valid deflate-raw data');
  }
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/// decodeFrame, then the payload inflated if the frame is compressed.
export async function decodeFrameInflated(bytes, payloadMax = FRAME_PAYLOAD_BYTES_MAX) {
  const f = decodeFrame(bytes, payloadMax);
  if (!(f.flags & FLAG_COMPRESSED)) return f;
  return { ...f, flags: f.flags & ~FLAG_COMPRESSED, payload: await inflate(f.payload, payloadMax) };
}

/// A u64 as a Number when it fits exactly, else as a BigInt.
function toNumber(big) {
  return big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
}

// ---------------------------------------------------------------- postcard

const utf8 = new TextEncoder();
const utf8d = new TextDecoder('utf-8', { fatal: true });

export class Writer {
  constructor() {
    this.buf = new Uint8Array(64);
    this.len = 0;
  }
  reserve(n) {
    if (this.len + n <= this.buf.length) return;
    const b = new Uint8Array(Math.max(this.buf.length * 2, this.len + n));
    b.set(this.buf.subarray(0, this.len));
    this.buf = b;
  }
  byte(x) {
    this.reserve(1);
    this.buf[this.len++] = x;
  }
  raw(bytes) {
    this.reserve(bytes.length);
    this.buf.set(bytes, this.len);
    this.len += bytes.length;
  }
  /// LEB128 of a non-negative integer below 2^bits.
  varint(x, bits) {
    let n = BigInt(x);
    if (n < 0n || n >= 1n << BigInt(bits)) throw new ProtoError(`${x} does not fit u${bits}`);
    if (n < 0x80000000n) {
      let m = Number(n);
      while (m >= 0x80) {
        this.byte((m & 0x7f) | 0x80);
        m >>>= 7;
      }
      this.byte(m);
      return;
    }
    while (n >= 0x80n) {
      this.byte(Number(n & 0x7fn) | 0x80);
      n >>= 7n;
    }
    this.byte(Number(n));
  }
  /// Zigzag then LEB128 of a signed integer of `bits`.
  zigzag(x, bits) {
    const n = BigInt(x);
    const lim = 1n << BigInt(bits - 1);
    if (n < -lim || n >= lim) throw new ProtoError(`${x} does not fit i${bits}`);
    this.varint(n >= 0n ? n * 2n : -n * 2n - 1n, bits);
  }
  finish() {
    return this.buf.slice(0, this.len);
  }
}

export class Reader {
  constructor(bytes) {
    this.b = bytes;
    this.at = 0;
  }
  byte() {
    if (this.at >= this.b.length) throw new ProtoError('the payload ends early');
    return this.b[this.at++];
  }
  take(n) {
    if (n > this.b.length - this.at) throw new ProtoError('the payload ends early');
    const s = this.b.subarray(this.at, this.at + n);
    this.at += n;
    return s;
  }
  varint(bits) {
    const maxBytes = Math.ceil(bits / 7);
    let small = 0;
    let big = null;
    for (let i = 0; i < maxBytes; i++) {
      const x = this.byte();
      const part = x & 0x7f;
      if (i < 7) small += part * 2 ** (7 * i);
      else {
        big ??= BigInt(small);
        big += BigInt(part) << BigInt(7 * i);
      }
      if (!(x & 0x80)) {
        const n = big ?? BigInt(small);
        if (n >= 1n << BigInt(bits)) throw new ProtoError(`a varint over u${bits}`);
        return big === null ? small : toNumber(big);
      }
    }
    throw new ProtoError(`a varint longer than u${bits}`);
  }
  zigzag(bits) {
    const u = this.varint(bits);
    if (typeof u === 'number' && u <= Number.MAX_SAFE_INTEGER) return u % 2 === 0 ? u / 2 : -(u + 1) / 2;
    const n = BigInt(u);
    return toNumber(n % 2n === 0n ? n / 2n : -(n + 1n) / 2n);
  }
  end() {
    if (this.at !== this.b.length) throw new ProtoError('bytes after the payload');
  }
}

// Types: each is {enc(writer, value), dec(reader) -> value}.

const prim = (enc, dec) => ({ enc, dec });
export const T = {
  u8: prim((w, v) => {
    if (!Number.isInteger(v) || v < 0 || v > 255) throw new ProtoError(`${v} does not fit u8`);
    w.byte(v);
  }, (r) => r.byte()),
  bool: prim((w, v) => w.byte(v ? 1 : 0), (r) => {
    const b = r.byte();
    if (b > 1) throw new ProtoError(`a bool of ${b}`);
    return b === 1;
  }),
  u16: prim((w, v) => w.varint(v, 16), (r) => r.varint(16)),
  u32: prim((w, v) => w.varint(v, 32), (r) => r.varint(32)),
  u64: prim((w, v) => w.varint(v, 64), (r) => r.varint(64)),
  i32: prim((w, v) => w.zigzag(v, 32), (r) => r.zigzag(32)),
  i64: prim((w, v) => w.zigzag(v, 64), (r) => r.zigzag(64)),
  str: prim((w, v) => {
    const b = utf8.encode(v);
    w.varint(b.length, 64);
    w.raw(b);
  }, (r) => {
    const n = r.varint(64);
    try {
      return utf8d.decode(r.take(n));
    } catch {
      throw new ProtoError('a string that is not UTF-8');
    }
  }),
  opt: (t) => prim((w, v) => {
    if (v === null || v === undefined) w.byte(0);
    else {
      w.byte(1);
      t.enc(w, v);
    }
  }, (r) => {
    const tag = r.byte();
    if (tag > 1) throw new ProtoError(`an Option tag of ${tag}`);
    return tag === 1 ? t.dec(r) : null;
  }),
  vec: (t) => prim((w, v) => {
    w.varint(v.length, 64);
    for (const x of v) t.enc(w, x);
  }, (r) => {
    const n = r.varint(64);
    // Every element takes at least a byte: a length over what is left is a lie.
    if (n > r.b.length - r.at) throw new ProtoError(`a vector of ${n} in ${r.b.length - r.at} bytes`);
    const out = [];
    for (let i = 0; i < n; i++) out.push(t.dec(r));
    return out;
  }),
  tuple: (...ts) => prim((w, v) => ts.forEach((t, i) => t.enc(w, v[i])), (r) => ts.map((t) => t.dec(r))),
  /// Fields in order: [[name, type], ...].
  struct: (fields) => prim((w, v) => {
    for (const [k, t] of fields) {
      if (!(k in v)) throw new ProtoError(`field ${k} is missing`);
      t.enc(w, v[k]);
    }
  }, (r) => {
    const o = {};
    for (const [k, t] of fields) o[k] = t.dec(r);
    return o;
  }),
  /// Variants in order: [[name, type or null for a unit variant], ...].
  enum: (variants) => {
    const index = new Map(variants.map(([k], i) => [k, i]));
    return prim((w, v) => {
      const name = typeof v === 'string' ? v : Object.keys(v)[0];
      const i = index.get(name);
      if (i === undefined) throw new ProtoError(`unknown variant ${name}`);
      const t = variants[i][1];
      if ((t === null) !== (typeof v === 'string')) throw new ProtoError(`variant ${name} written in the wrong form`);
      w.varint(i, 32);
      if (t !== null) t.enc(w, v[name]);
    }, (r) => {
      const i = r.varint(32);
      if (i >= variants.length) throw new ProtoError(`unknown variant index ${i}`);
      const [name, t] = variants[i];
      return t === null ? name : { [name]: t.dec(r) };
    });
  },
};

const { u8, bool, u16, u32, u64, i32, i64, str, opt, vec, tuple, struct } = T;
const bytes = vec(u8);
const units = (...names) => T.enum(names.map((n) => [n, null]));

// ---------------------------------------------------------------- msg.rs (append only, as there)

export const PlayerRecord = struct([['games', u32], ['wins', u32], ['losses', u32], ['draws', u32], ['rating', i32], ['coins', i64]]);
export const Activity = struct([['moves', u64], ['auto_moves', u64], ['chat_lines', u64], ['rooms_entered', u64], ['last_seen_ms', u64]]);
export const PlayerData = struct([['record', PlayerRecord], ['activity', Activity]]);

export const Auth = struct([['token', str], ['client_version', u32], ['features', u32]]);
export const Welcome = struct([
  ['player', u64], ['name', str], ['session', u64], ['heartbeat_ms', u32], ['dead_ticks', u32], ['server_time_ms', u64],
]);

const room = ['room', u32];
export const Request = T.enum([
  ['Rooms', null],
  ['Enter', struct([room])],
  ['Leave', struct([room])],
  ['Sit', struct([room, ['table', u16], ['seat', u8]])],
  ['Stand', struct([room])],
  ['Ready', struct([room])],
  ['Move', struct([room, ['table', u16], ['mv', bytes]])],
  ['Chat', struct([room, ['table', opt(u16)], ['text', str]])],
  ['Spectate', struct([room, ['table', opt(u16)]])],
  ['Snapshot', struct([room])],
]);

/// msg::ErrorCode, by variant index.
export const ERROR_CODES = [
  'BadFrame', 'FrameTooLarge', 'BadCrc', 'NotAuthenticated', 'BadToken', 'TokenExpired', 'WrongZone',
  'SeqReused', 'UnknownRoom', 'RoomFull', 'NotInRoom', 'IllegalMove', 'NotYourTurn', 'SeatTaken',
  'NoSuchTable', 'NoGame', 'RateLimited', 'Unavailable', 'TooManySessions', 'LoggedInElsewhere',
  'Internal', 'BadRequest', 'NotSeated', 'UpgradeRequired', 'HeartbeatTimeout', 'SlowConsumer',
  'TooManyInFlight', 'ShuttingDown', 'Blacklisted', 'Kicked', 'QueueFull', 'NotAdmitted', 'NotOnline',
  'StaleTime', 'SeqSkipped', 'Flooding',
];
export const ErrorCode = units(...ERROR_CODES);
export const Fail = struct([['code', ErrorCode], ['message', str]]);

export const RoomInfo = struct([['id', u32], ['name', str], ['game', str], ['online', u32], ['capacity', u32]]);
export const WinReason = units('Rule', 'Timeout', 'Forfeit');
export const Outcome = T.enum([
  ['Win', struct([['seat', u8], ['player', u64], ['reason', WinReason]])],
  ['Draw', null],
]);
export const MemberView = struct([
  ['player', u64], ['name', str], ['seat', opt(tuple(u16, u8))], ['watching', opt(u16)],
  ['wins', u32], ['losses', u32], ['draws', u32], ['games', u32], ['rating', i32], ['coins', i64],
]);
export const GameView = struct([
  ['game_no', u32], ['players', vec(u64)], ['moves', vec(tuple(u8, bytes, bool))],
  ['turn', u8], ['turn_ms', u32], ['outcome', opt(Outcome)],
]);
export const TableView = struct([['table', u16], ['seats', vec(opt(u64))], ['ready', vec(bool)], ['game', opt(GameView)]]);
export const RoomSnapshot = struct([
  ['room', u32], ['name', str], ['game', str], ['seq', u64], ['capacity', u32],
  ['members', vec(MemberView)], ['tables', vec(TableView)],
]);

export const Answer = T.enum([
  ['Rooms', vec(RoomInfo)],
  ['Entered', RoomSnapshot],
  ['Done', struct([room, ['seq', u64]])],
  ['Snapshot', RoomSnapshot],
  ['Ack', null],
]);
export const Reply = T.enum([['Ok', Answer], ['Err', Fail]]);

export const SayTo = T.enum([['Channel', u32], ['Player', u64]]);
export const CenterRequest = T.enum([
  ['Subscribe', struct([['channel', u32]])],
  ['Unsubscribe', struct([['channel', u32]])],
  ['Say', struct([['to', SayTo], ['text', str]])],
]);
export const NoticeTo = T.enum([['All', null], ['Channel', u32], ['Players', null], ['Private', null]]);
export const Notice = struct([['from', u64], ['name', str], ['to', NoticeTo], ['text', str], ['at_ms', u64]]);

const tableSeatPlayer = struct([['table', u16], ['seat', u8], ['player', u64]]);
export const RoomEvent = T.enum([
  ['Entered', struct([['player', u64], ['name', str], ['data', PlayerData]])],
  ['Left', struct([['player', u64]])],
  ['Sat', tableSeatPlayer],
  ['Stood', tableSeatPlayer],
  ['Ready', struct([['table', u16], ['seat', u8]])],
  ['Started', struct([['table', u16], ['game_no', u32], ['players', vec(u64)], ['turn_ms', u32]])],
  ['Moved', struct([['table', u16], ['seat', u8], ['mv', bytes], ['auto', bool]])],
  ['Ended', struct([
    ['table', u16], ['game_no', u32], ['outcome', Outcome], ['moves', u16], ['records', vec(tuple(u64, PlayerRecord))],
  ])],
  ['Chat', struct([['player', u64], ['table', opt(u16)], ['text', str]])],
  ['Spectating', struct([['player', u64], ['table', opt(u16)]])],
]);
export const Push = T.enum([
  ['Event', struct([room, ['seq', u64], ['event', RoomEvent]])],
  ['Snapshot', RoomSnapshot],
  ['Notice', Notice],
  ['Queued', struct([['position', u32], ['of', u32], ['heartbeat_ms', u32]])],
]);
export const Pong = struct([['client_time_ms', u64], ['rtt_ms', u32]]);
export const Bye = struct([['code', ErrorCode], ['message', str]]);

/// Every payload type by its Rust name (the codec test walks these).
export const TYPES = {
  PlayerRecord, Activity, PlayerData, Auth, Welcome, Request, ErrorCode, Fail, RoomInfo, WinReason, Outcome,
  MemberView, GameView, TableView, RoomSnapshot, Answer, Reply, SayTo, CenterRequest, NoticeTo, Notice,
  RoomEvent, Push, Pong, Bye,
};

/// A payload (postcard) of `type`.
export function encode(type, value) {
  const w = new Writer();
  type.enc(w, value);
  return w.finish();
}

/// A payload of `type`; trailing bytes are an error (a frame holds one value).
export function decode(type, bytes) {
  const r = new Reader(bytes);
  const v = type.dec(r);
  r.end();
  return v;
}

/// A one-key enum value as [variant, body] ("Rooms" -> ["Rooms", null]).
export function variant(v) {
  if (typeof v === 'string') return [v, null];
  const k = Object.keys(v)[0];
  return [k, v[k]];
}
