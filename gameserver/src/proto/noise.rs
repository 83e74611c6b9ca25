//! Encrypted TCP sessions: a Noise NK handshake, then the frame stream inside
//! Noise transport messages. Sans-IO: bytes in, bytes out, no socket, no clock.
//!
//! ```text
//! every message, handshake or transport:  { len u16 | body[len] }   (little-endian)
//!
//! c→g  handshake 1  { 48 | e[32] | tag[16] }             -> e, es  (empty payload)
//! g→c  handshake 2  { 48 | e[32] | tag[16] }             <- e, ee  (empty payload)
//! both transport    { n  | ChaChaPoly(k, nonce, chunk)[n - 16] | tag[16] }   n <= 65535
//! ```
//!
//! - Pattern `Noise_NK_25519_ChaChaPoly_BLAKE2s`, prologue [`PROLOGUE`]: the
//!   client knows the gateway's static public key (from config, or the login
//!   answer) and authenticates it; the client stays anonymous at this layer
//!   (its token in `Auth`, now encrypted, says who it is).
//! - The plaintext inside the transport messages is the ordinary frame stream
//!   (`proto::frame`, frames back to back). A sender cuts it into chunks of at
//!   most [`CHUNK_BYTES_MAX`] bytes; chunk edges need not match frame edges,
//!   so a frame of any allowed size travels in as many messages as it needs.
//! - Nonces are implicit: the n-th message in one direction uses nonce n, so
//!   a message dropped, repeated, reordered or altered fails authentication.
//!   Both sides' ephemeral keys are fresh per connection, so bytes recorded
//!   from one session decrypt on no other.
//! - Bounded: `len` is a u16, so no prefix can make a reader hold more than
//!   [`MESSAGE_BYTES_MAX`] bytes of one message; the plaintext buffer holds
//!   at most one frame (checked against its limit before buffering) plus one
//!   chunk, since [`next_frame`] decrypts only as far as a frame needs.

use std::sync::Arc;

use bytes::{Buf, BufMut, BytesMut};
use snow::StatelessTransportState;

use super::frame::{self, Frame, FrameError};

/// The Noise protocol name (pattern, DH, cipher, hash).
pub const PARAMS: &str = "Noise_NK_25519_ChaChaPoly_BLAKE2s";
/// Mixed into the handshake hash: a peer speaking another version of this
/// protocol fails the handshake instead of misreading frames.
pub const PROLOGUE: &[u8] = b"gameserver noise v1";
/// Bytes of a message's length prefix.
pub const LEN_BYTES: usize = 2;
/// Largest Noise message, bytes (the spec's limit; the u16 prefix's range).
pub const MESSAGE_BYTES_MAX: usize = 65535;
/// Bytes of the authentication tag of every message.
pub const TAG_BYTES: usize = 16;
/// Largest plaintext chunk of one transport message, bytes.
pub const CHUNK_BYTES_MAX: usize = MESSAGE_BYTES_MAX - TAG_BYTES;
/// Bytes of an X25519 key (public or private).
pub const KEY_BYTES: usize = 32;
/// Bytes of each handshake message's body (an ephemeral key and the tag of
/// an empty payload); anything else is refused before the handshake runs.
pub const HANDSHAKE_BYTES: usize = KEY_BYTES + TAG_BYTES;

/// Why Noise bytes were refused. Every variant ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoiseError {
    /// The first message is not a handshake message of this protocol (a plain
    /// client on the Noise port, a scanner, garbage).
    #[error("a Noise handshake message is {HANDSHAKE_BYTES} bytes, this one {len} (is the peer speaking plain frames to a Noise port?)")]
    HandshakeLength { len: usize },
    /// The handshake did not authenticate: the client has the wrong gateway
    /// key, or the bytes are forged.
    #[error(
        "the Noise handshake failed ({0}): check that the client has this gateway's public key"
    )]
    Handshake(String),
    /// A transport message failed authentication: altered, replayed from
    /// another session, repeated, reordered or cut.
    #[error("a Noise message failed authentication (altered, replayed or out of order)")]
    Decrypt,
    /// 2^64 - 1 messages in one direction: the nonces are used up.
    #[error("this session's nonces are used up; connect again")]
    Exhausted,
    /// A key given in config or on the command line cannot be used.
    #[error("bad Noise key: {0}")]
    Key(String),
}

/// Why no frame came out of an encrypted stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Noise(#[from] NoiseError),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

fn params() -> snow::params::NoiseParams {
    PARAMS
        .parse()
        .expect("PARAMS is a valid Noise protocol name")
}

fn handshake_err(e: snow::Error) -> NoiseError {
    NoiseError::Handshake(e.to_string())
}

/// Lowercase hex of `b`.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// 32 bytes from 64 hex digits (surrounding whitespace ignored).
pub fn key_from_hex(s: &str) -> Result<[u8; KEY_BYTES], NoiseError> {
    let s = s.trim();
    if s.len() != KEY_BYTES * 2 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(NoiseError::Key(format!(
            "expected {} hex digits, got {} characters",
            KEY_BYTES * 2,
            s.len()
        )));
    }
    let mut k = [0u8; KEY_BYTES];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("checked hex");
    }
    Ok(k)
}

/// The gateway's static X25519 key pair. Its `Debug` hides the private half.
#[derive(Clone)]
pub struct StaticKey {
    private: [u8; KEY_BYTES],
    public: [u8; KEY_BYTES],
}

impl std::fmt::Debug for StaticKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StaticKey {{ public: {} }}", hex(&self.public))
    }
}

impl StaticKey {
    /// A new key pair from the OS's random source.
    pub fn generate() -> StaticKey {
        let kp = snow::Builder::new(params())
            .generate_keypair()
            .expect("the OS random source works");
        let mut private = [0u8; KEY_BYTES];
        private.copy_from_slice(&kp.private);
        StaticKey::from_private(private)
    }

    /// The pair of a private key.
    pub fn from_private(private: [u8; KEY_BYTES]) -> StaticKey {
        use snow::resolvers::CryptoResolver;
        let mut dh = snow::resolvers::DefaultResolver
            .resolve_dh(&snow::params::DHChoice::Curve25519)
            .expect("X25519 is compiled in");
        dh.set(&private);
        let mut public = [0u8; KEY_BYTES];
        public.copy_from_slice(dh.pubkey());
        StaticKey { private, public }
    }

    /// The pair of a private key given as 64 hex digits.
    pub fn from_hex(s: &str) -> Result<StaticKey, NoiseError> {
        key_from_hex(s).map(StaticKey::from_private)
    }

    /// The public half: what clients are given.
    pub fn public(&self) -> [u8; KEY_BYTES] {
        self.public
    }

    /// The private half as hex (to write a key file).
    pub fn private_hex(&self) -> String {
        hex(&self.private)
    }
}

/// Appends `body` with its length prefix. `body` is at most [`MESSAGE_BYTES_MAX`].
fn put_message(out: &mut BytesMut, body: &[u8]) {
    debug_assert!(body.len() <= MESSAGE_BYTES_MAX);
    out.reserve(LEN_BYTES + body.len());
    out.put_u16_le(body.len() as u16);
    out.put_slice(body);
}

/// The length of the next message's body once its prefix is in `buf`.
pub fn peek_len(buf: &[u8]) -> Option<usize> {
    (buf.len() >= LEN_BYTES).then(|| u16::from_le_bytes([buf[0], buf[1]]) as usize)
}

/// Splits the next whole message's body off `buf` (prefix dropped);
/// `None` until all of it is there.
pub fn take_message(buf: &mut BytesMut) -> Option<BytesMut> {
    let len = peek_len(buf)?;
    if buf.len() < LEN_BYTES + len {
        return None;
    }
    buf.advance(LEN_BYTES);
    Some(buf.split_to(len))
}

/// The client's side of the handshake, between its two messages.
pub struct Initiator {
    hs: snow::HandshakeState,
}

impl Initiator {
    /// Starts a handshake with the gateway whose static public key is
    /// `gateway`; appends the first message (with its prefix) to `out`.
    pub fn start(gateway: &[u8; KEY_BYTES], out: &mut BytesMut) -> Result<Initiator, NoiseError> {
        let mut hs = snow::Builder::new(params())
            .prologue(PROLOGUE)
            .and_then(|b| b.remote_public_key(gateway))
            .and_then(|b| b.build_initiator())
            .map_err(handshake_err)?;
        let mut m = [0u8; HANDSHAKE_BYTES];
        let n = hs.write_message(&[], &mut m).map_err(handshake_err)?;
        debug_assert_eq!(n, HANDSHAKE_BYTES);
        put_message(out, &m[..n]);
        Ok(Initiator { hs })
    }

    /// Reads the gateway's answer (its body, prefix removed): the session's keys.
    pub fn finish(mut self, body: &[u8]) -> Result<(Sealer, Opener), NoiseError> {
        if body.len() != HANDSHAKE_BYTES {
            return Err(NoiseError::HandshakeLength { len: body.len() });
        }
        let mut payload = [0u8; HANDSHAKE_BYTES];
        self.hs
            .read_message(body, &mut payload)
            .map_err(handshake_err)?;
        split(self.hs)
    }
}

/// The gateway's side of the handshake in one step: reads the client's first
/// message (its body, prefix removed), appends the answer (with its prefix)
/// to `out` and returns the session's keys.
pub fn respond(
    key: &StaticKey,
    body: &[u8],
    out: &mut BytesMut,
) -> Result<(Sealer, Opener), NoiseError> {
    if body.len() != HANDSHAKE_BYTES {
        return Err(NoiseError::HandshakeLength { len: body.len() });
    }
    let mut hs = snow::Builder::new(params())
        .prologue(PROLOGUE)
        .and_then(|b| b.local_private_key(&key.private))
        .and_then(|b| b.build_responder())
        .map_err(handshake_err)?;
    let mut payload = [0u8; HANDSHAKE_BYTES];
    hs.read_message(body, &mut payload).map_err(handshake_err)?;
    let mut m = [0u8; HANDSHAKE_BYTES];
    let n = hs.write_message(&[], &mut m).map_err(handshake_err)?;
    put_message(out, &m[..n]);
    split(hs)
}

fn split(hs: snow::HandshakeState) -> Result<(Sealer, Opener), NoiseError> {
    let state = Arc::new(hs.into_stateless_transport_mode().map_err(handshake_err)?);
    Ok((
        Sealer {
            state: state.clone(),
            nonce: 0,
        },
        Opener { state, nonce: 0 },
    ))
}

/// The sending half of a session: encrypts the outgoing byte stream. The
/// halves share the keys and count their own nonces, so a reader task and a
/// writer task can each own one.
pub struct Sealer {
    state: Arc<StatelessTransportState>,
    nonce: u64,
}

impl Sealer {
    /// Encrypts `plain` as transport messages of at most
    /// [`CHUNK_BYTES_MAX`] plaintext bytes each, appended to `out` with
    /// their prefixes. Nothing is appended for an empty `plain`.
    pub fn seal(&mut self, plain: &[u8], out: &mut BytesMut) -> Result<(), NoiseError> {
        for chunk in plain.chunks(CHUNK_BYTES_MAX) {
            if self.nonce == u64::MAX {
                return Err(NoiseError::Exhausted);
            }
            let n = chunk.len() + TAG_BYTES;
            out.reserve(LEN_BYTES + n);
            out.put_u16_le(n as u16);
            let at = out.len();
            out.resize(at + n, 0);
            let w = self
                .state
                .write_message(self.nonce, chunk, &mut out[at..])
                .expect("a chunk fits one message and the output has room");
            debug_assert_eq!(w, n);
            self.nonce += 1;
        }
        Ok(())
    }

    /// Bytes on the wire for `plain_len` bytes of plaintext.
    pub fn sealed_len(plain_len: usize) -> usize {
        let chunks = plain_len.div_ceil(CHUNK_BYTES_MAX);
        plain_len + chunks * (LEN_BYTES + TAG_BYTES)
    }
}

/// The receiving half of a session: decrypts the incoming messages.
pub struct Opener {
    state: Arc<StatelessTransportState>,
    nonce: u64,
}

impl Opener {
    /// Decrypts one message's body (prefix removed) and appends its
    /// plaintext to `plain`. A failure leaves `plain` as it was.
    pub fn open(&mut self, body: &[u8], plain: &mut BytesMut) -> Result<(), NoiseError> {
        if body.len() < TAG_BYTES {
            return Err(NoiseError::Decrypt);
        }
        if self.nonce == u64::MAX {
            return Err(NoiseError::Exhausted);
        }
        let at = plain.len();
        plain.resize(at + body.len() - TAG_BYTES, 0);
        match self.state.read_message(self.nonce, body, &mut plain[at..]) {
            Ok(n) => {
                plain.truncate(at + n);
                self.nonce += 1;
                Ok(())
            }
            Err(_) => {
                plain.truncate(at);
                Err(NoiseError::Decrypt)
            }
        }
    }

    /// Decrypts the next whole message of `wire` into `plain`; `Ok(false)`
    /// when `wire` holds no whole message yet.
    pub fn open_next(
        &mut self,
        wire: &mut BytesMut,
        plain: &mut BytesMut,
    ) -> Result<bool, NoiseError> {
        match take_message(wire) {
            None => Ok(false),
            Some(body) => self.open(&body, plain).map(|()| true),
        }
    }
}

/// The next frame of an encrypted stream: decrypts messages from `wire`
/// into `plain` only until a whole frame is there (so `plain` never holds
/// more than one frame and one chunk). `Ok(None)`: read more bytes into `wire`.
pub fn next_frame(
    opener: &mut Opener,
    wire: &mut BytesMut,
    plain: &mut BytesMut,
    payload_max: usize,
) -> Result<Option<Frame>, ReadError> {
    loop {
        if let Some(f) = frame::decode(plain, payload_max)? {
            return Ok(Some(f));
        }
        if !opener.open_next(wire, plain)? {
            return Ok(None);
        }
    }
}

/// The fuzz entry point (`gameserver/fuzz`, target `noise_handshake`, and
/// the stable replay of its corpus): the first byte picks what the rest is.
/// - 0: a client's first handshake message to the gateway, and a gateway's
///   answer to a client (hostile handshakes);
/// - 1: transport bytes after an honest handshake (hostile ciphertext);
/// - 2: plaintext encrypted honestly: the frames that come out are exactly
///   those the plain decoder finds in it (split and join lose nothing).
///
/// Panics only on a bug.
#[doc(hidden)]
pub fn fuzz_noise_handshake(data: &[u8]) {
    const PAYLOAD_MAX: usize = 65536;
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let key = StaticKey::from_private([7u8; KEY_BYTES]);
    let honest = |key: &StaticKey| {
        let mut wire = BytesMut::new();
        let i = Initiator::start(&key.public(), &mut wire).expect("an initiator");
        let m1 = take_message(&mut wire).expect("a first message");
        let g = respond(key, &m1, &mut wire).expect("an honest handshake");
        let m2 = take_message(&mut wire).expect("an answer");
        (i.finish(&m2).expect("an honest answer"), g)
    };
    match mode % 3 {
        0 => {
            let mut buf = BytesMut::from(rest);
            if let Some(body) = take_message(&mut buf) {
                let _ = respond(&key, &body, &mut BytesMut::new());
                let i =
                    Initiator::start(&key.public(), &mut BytesMut::new()).expect("an initiator");
                let _ = i.finish(&body);
            }
        }
        1 => {
            let (_, (_, mut go)) = honest(&key);
            let (mut wire, mut plain) = (BytesMut::from(rest), BytesMut::new());
            for _ in 0..=rest.len() {
                match next_frame(&mut go, &mut wire, &mut plain, PAYLOAD_MAX) {
                    Ok(Some(_)) => {}
                    _ => break,
                }
                assert!(plain.len() <= frame::HEADER_BYTES + PAYLOAD_MAX + CHUNK_BYTES_MAX);
            }
        }
        _ => {
            let ((mut cs, _), (_, mut go)) = honest(&key);
            let mut wire = BytesMut::new();
            cs.seal(rest, &mut wire).expect("sealing works");
            assert_eq!(wire.len(), Sealer::sealed_len(rest.len()));
            let mut direct = BytesMut::from(rest);
            let mut plain = BytesMut::new();
            for _ in 0..=rest.len() {
                let a = frame::decode(&mut direct, PAYLOAD_MAX);
                let b = next_frame(&mut go, &mut wire, &mut plain, PAYLOAD_MAX);
                match (a, b) {
                    (Ok(Some(x)), Ok(Some(y))) => assert_eq!(x, y),
                    (Ok(None), Ok(None)) => break,
                    (Err(x), Err(ReadError::Frame(y))) => {
                        assert_eq!(x, y);
                        break;
                    }
                    (a, b) => panic!("plain {a:?} but through Noise {b:?}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::Kind;
    use bytes::Bytes;

    fn pair(key: &StaticKey) -> ((Sealer, Opener), (Sealer, Opener)) {
        let mut wire = BytesMut::new();
        let i = Initiator::start(&key.public(), &mut wire).unwrap();
        assert_eq!(wire.len(), LEN_BYTES + HANDSHAKE_BYTES);
        let m1 = take_message(&mut wire).unwrap();
        let g = respond(key, &m1, &mut wire).unwrap();
        let m2 = take_message(&mut wire).unwrap();
        let c = i.finish(&m2).unwrap();
        (c, g)
    }

    fn frame_of(len: usize, seq: u32) -> Bytes {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7 + seq as usize) as u8).collect();
        Frame::new(Kind::Request, seq, 5, Bytes::from(payload)).to_bytes()
    }

    #[test]
    fn keys_round_trip_through_hex() {
        let k = StaticKey::generate();
        let again = StaticKey::from_hex(&k.private_hex()).unwrap();
        assert_eq!(again.public(), k.public());
        assert!(StaticKey::from_hex("abc").is_err());
        assert!(StaticKey::from_hex(&"zz".repeat(32)).is_err());
        assert!(!format!("{k:?}").contains(&k.private_hex()));
    }

    #[test]
    fn frames_cross_in_both_directions_small_and_split() {
        let key = StaticKey::generate();
        let ((mut cs, mut co), (mut gs, mut go)) = pair(&key);
        // Three frames: small, one over a chunk (split in two), at the 64 KiB limit.
        let frames = [frame_of(10, 1), frame_of(70_000, 2), frame_of(65536, 3)];
        let mut wire = BytesMut::new();
        for f in &frames {
            cs.seal(f, &mut wire).unwrap();
        }
        let expect: usize = frames.iter().map(|f| Sealer::sealed_len(f.len())).sum();
        assert_eq!(wire.len(), expect);
        // Fed one byte at a time: nothing comes out before its last byte.
        let mut fed = BytesMut::new();
        let mut plain = BytesMut::new();
        let mut got = Vec::new();
        for b in wire.iter() {
            fed.put_u8(*b);
            while let Some(f) = next_frame(&mut go, &mut fed, &mut plain, 1 << 20).unwrap() {
                got.push(f.to_bytes());
            }
            assert!(plain.len() <= 65536 + 24 + CHUNK_BYTES_MAX);
        }
        assert_eq!(got, frames);
        // And back.
        let mut back = BytesMut::new();
        gs.seal(&frames[0], &mut back).unwrap();
        let f = next_frame(&mut co, &mut back, &mut BytesMut::new(), 1 << 20)
            .unwrap()
            .unwrap();
        assert_eq!(f.to_bytes(), frames[0]);
    }

    #[test]
    fn an_oversized_frame_inside_is_refused_before_it_is_buffered() {
        let key = StaticKey::generate();
        let ((mut cs, _), (_, mut go)) = pair(&key);
        let mut wire = BytesMut::new();
        cs.seal(&frame_of(100_000, 1), &mut wire).unwrap();
        let mut plain = BytesMut::new();
        let e = next_frame(&mut go, &mut wire, &mut plain, 65536).unwrap_err();
        assert!(
            matches!(e, ReadError::Frame(FrameError::TooLarge { .. })),
            "{e:?}"
        );
        // One chunk was decrypted, not the whole frame.
        assert!(plain.len() <= CHUNK_BYTES_MAX);
    }

    #[test]
    fn any_altered_byte_fails_and_so_do_repeats_and_reorders() {
        let key = StaticKey::generate();
        let ((mut cs, _), (_, mut go)) = pair(&key);
        let mut wire = BytesMut::new();
        cs.seal(&frame_of(40, 1), &mut wire).unwrap();
        let good = wire.clone();
        for i in LEN_BYTES..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x20;
            let mut o = clone_opener(&go);
            let mut plain = BytesMut::new();
            assert_eq!(
                next_frame(&mut o, &mut bad, &mut plain, 1 << 20),
                Err(ReadError::Noise(NoiseError::Decrypt)),
                "byte {i}"
            );
            assert!(plain.is_empty());
        }
        // The good message opens; the same message again does not (nonce 1 now).
        let mut plain = BytesMut::new();
        let mut w = good.clone();
        assert!(next_frame(&mut go, &mut w, &mut plain, 1 << 20)
            .unwrap()
            .is_some());
        let mut w = good.clone();
        assert_eq!(
            next_frame(&mut go, &mut w, &mut plain, 1 << 20),
            Err(ReadError::Noise(NoiseError::Decrypt))
        );
        // A message shorter than its tag.
        let mut w = BytesMut::from(&[3u8, 0, 1, 2, 3][..]);
        assert_eq!(
            next_frame(&mut go, &mut w, &mut plain, 1 << 20),
            Err(ReadError::Noise(NoiseError::Decrypt))
        );
    }

    fn clone_opener(o: &Opener) -> Opener {
        Opener {
            state: o.state.clone(),
            nonce: o.nonce,
        }
    }

    #[test]
    fn a_session_s_bytes_open_in_no_other_session() {
        let key = StaticKey::generate();
        let ((mut cs, _), _) = pair(&key);
        let ((_, _), (_, mut other)) = pair(&key);
        let mut wire = BytesMut::new();
        cs.seal(&frame_of(40, 1), &mut wire).unwrap();
        assert_eq!(
            next_frame(&mut other, &mut wire, &mut BytesMut::new(), 1 << 20),
            Err(ReadError::Noise(NoiseError::Decrypt))
        );
    }

    #[test]
    fn handshakes_with_the_wrong_key_or_wrong_bytes_fail() {
        let key = StaticKey::generate();
        let wrong = StaticKey::generate();
        let mut wire = BytesMut::new();
        let _i = Initiator::start(&wrong.public(), &mut wire).unwrap();
        let m1 = take_message(&mut wire).unwrap();
        assert!(matches!(
            respond(&key, &m1, &mut BytesMut::new()),
            Err(NoiseError::Handshake(_))
        ));
        assert_eq!(
            respond(&key, &[0u8; 10], &mut BytesMut::new()).err(),
            Some(NoiseError::HandshakeLength { len: 10 })
        );
        // An altered answer fails the client.
        let i = Initiator::start(&key.public(), &mut wire).unwrap();
        let m1 = take_message(&mut wire).unwrap();
        respond(&key, &m1, &mut wire).unwrap();
        let mut m2 = take_message(&mut wire).unwrap();
        m2[40] ^= 1;
        assert!(matches!(i.finish(&m2), Err(NoiseError::Handshake(_))));
    }

    #[test]
    fn take_message_waits_for_the_whole_body() {
        let mut b = BytesMut::from(&[5u8, 0, 1, 2][..]);
        assert!(take_message(&mut b).is_none());
        b.extend_from_slice(&[3, 4, 5, 9]);
        assert_eq!(&take_message(&mut b).unwrap()[..], &[1, 2, 3, 4, 5]);
        assert_eq!(&b[..], &[9]);
    }
}
