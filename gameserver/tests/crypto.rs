//! The gateway's encrypted listeners against a fake room server (answers
//! every request), with the real client and hostile raw clients: Noise TCP
//! and wss round trips; a tampered ciphertext, a replayed recorded session,
//! garbage and truncated handshakes, the wrong gateway key, a plain client on
//! the Noise port: each refused, closed and counted, an honest client beside
//! them unaffected.

use crate::fake_room::{link_frame, next_frame, rooms};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use gameserver::client::{Client, ClientError, Target};
use gameserver::gateway::{secure, Gateway, GatewayConfig, PairConfig, StatsSnapshot};
use gameserver::link::{FromRoom, ToRoom};
use gameserver::proto::frame::{Frame, Kind};
use gameserver::proto::msg::{self, Answer, Auth, ErrorCode, Request, PROTOCOL_VERSION};
use gameserver::proto::noise::{self, StaticKey};
use gameserver::token::{self, Claims};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Instant};

const SECRET: &str = "test-secret";
/// Every wait of these tests ends by this.
const WAIT: Duration = Duration::from_secs(10);

// ------------------------------------------------------- fake room server

/// A room-server master for rooms 1-3 that answers every request Done.
async fn fake_room() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(serve_link(s));
        }
    });
    addr
}

async fn serve_link(mut s: TcpStream) {
    let mut buf = BytesMut::new();
    loop {
        let Some(f) = next_frame(&mut s, &mut buf).await else {
            return;
        };
        let answer = match msg::decode::<ToRoom>(&f.payload).unwrap() {
            ToRoom::Hello { .. } => FromRoom::Welcome {
                node: 7,
                rooms: rooms(),
            },
            ToRoom::Request {
                player, seq, req, ..
            } => FromRoom::Reply {
                player,
                seq,
                reply: Ok(Answer::Done {
                    room: req.room().unwrap_or(1),
                    seq: 0,
                }),
            },
            _ => continue,
        };
        if s.write_all(&link_frame(&answer)).await.is_err() {
            return;
        }
    }
}

// ------------------------------------------------------------- gateway

struct Setup {
    g: Gateway,
    key: StaticKey,
    cert_pem: String,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn start() -> Setup {
        let room = fake_room().await;
        let dir = tempfile::tempdir().unwrap();
        let key = StaticKey::generate();
        let (cert_pem, key_pem) = secure::self_signed(&["localhost", "127.0.0.1"]).unwrap();
        let (cert, tls_key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, &cert_pem).unwrap();
        std::fs::write(&tls_key, key_pem).unwrap();
        let key_file = dir.path().join("noise.key");
        std::fs::write(&key_file, key.private_hex()).unwrap();
        let mut c = GatewayConfig::new(
            SECRET,
            vec![PairConfig {
                rooms: vec![1, 2, 3],
                nodes: vec![room.to_string()],
            }],
        );
        c.tcp = "127.0.0.1:0".into();
        c.ws = None;
        c.tcp_noise = Some("127.0.0.1:0".into());
        c.noise_key = Some(key_file.to_string_lossy().into_owned());
        c.wss = Some("127.0.0.1:0".into());
        c.tls_cert = Some(cert.to_string_lossy().into_owned());
        c.tls_key = Some(tls_key.to_string_lossy().into_owned());
        c.auth_timeout_ms = 2000;
        let g = Gateway::start(c).await.unwrap();
        assert_eq!(g.noise_public(), Some(key.public()));
        Setup {
            g,
            key,
            cert_pem,
            _dir: dir,
        }
    }

    fn noise(&self) -> Target {
        Target::Noise {
            addr: self.g.noise_addr().unwrap(),
            gateway_key: self.key.public(),
        }
    }

    fn wss(&self) -> Target {
        Target::Wss {
            url: format!("wss://localhost:{}/", self.g.wss_addr().unwrap().port()),
            ca_pem: self.cert_pem.clone(),
        }
    }

    /// Waits (bounded) until the counters satisfy `pred`.
    async fn until(&self, what: &str, pred: impl Fn(&StatsSnapshot) -> bool) -> StatsSnapshot {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = self.g.stats();
            if pred(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "never {what}: {s:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn tok(player: u64) -> String {
    let claims = Claims {
        player,
        zone: 1,
        expires_ms: token::now_ms() + 60_000,
        name: format!("p{player}"),
        kind: 0,
    };
    token::mint(SECRET.as_bytes(), &claims)
}

async fn round_trip(c: &Client) {
    let a = timeout(WAIT, c.request(Request::Ready { room: 1 }))
        .await
        .expect("an answer in time")
        .expect("the request is answered");
    assert_eq!(a, Answer::Done { room: 1, seq: 0 });
}

/// Reads until the gateway closes; returns what it sent.
async fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    timeout(WAIT, s.read_to_end(&mut got))
        .await
        .expect("the gateway closes the connection in time")
        .ok();
    got
}

/// A raw Noise client after its handshake.
async fn raw_noise(addr: SocketAddr, key: &[u8; 32]) -> (TcpStream, noise::Sealer, noise::Opener) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut out = BytesMut::new();
    let init = noise::Initiator::start(key, &mut out).unwrap();
    s.write_all(&out).await.unwrap();
    let mut m = [0u8; noise::LEN_BYTES + noise::HANDSHAKE_BYTES];
    timeout(WAIT, s.read_exact(&mut m)).await.unwrap().unwrap();
    let (sealer, opener) = init.finish(&m[noise::LEN_BYTES..]).unwrap();
    (s, sealer, opener)
}

fn auth_frame(player: u64) -> Bytes {
    let a = Auth {
        token: tok(player),
        client_version: PROTOCOL_VERSION,
        // A minimal client: no compressed frames, no RTT probe.
        features: 0,
    };
    Frame::new(Kind::Auth, 0, token::now_ms(), Bytes::from(msg::encode(&a))).to_bytes()
}

// ------------------------------------------------------------- tests

#[tokio::test]
async fn requests_round_trip_over_noise_and_wss() {
    let t = Setup::start().await;
    let n = Client::connect(&t.noise(), &tok(1)).await.unwrap();
    assert_eq!(n.player(), 1);
    round_trip(&n).await;
    let w = Client::connect(&t.wss(), &tok(2)).await.unwrap();
    assert_eq!(w.player(), 2);
    round_trip(&w).await;
    // Plain TCP still serves beside them.
    let p = Client::connect(&Target::Tcp(t.g.tcp_addr()), &tok(3))
        .await
        .unwrap();
    round_trip(&p).await;
    let s = t.g.stats();
    assert_eq!(
        (s.logins, s.handshake_failures, s.decrypt_failures),
        (3, 0, 0)
    );
}

#[tokio::test]
async fn a_tampered_ciphertext_is_closed_and_counted_and_an_honest_client_goes_on() {
    let t = Setup::start().await;
    let honest = Client::connect(&t.noise(), &tok(1)).await.unwrap();
    round_trip(&honest).await;
    let before = t.g.stats();

    let (mut s, mut sealer, _) = raw_noise(t.g.noise_addr().unwrap(), &t.key.public()).await;
    let mut wire = BytesMut::new();
    sealer.seal(&auth_frame(9), &mut wire).unwrap();
    let i = wire.len() / 2;
    wire[i] ^= 0x01; // one bit of the ciphertext
    s.write_all(&wire).await.unwrap();
    assert!(
        read_to_end(&mut s).await.is_empty(),
        "nothing answers a forgery"
    );
    let after = t
        .until("a decrypt failure", |s| s.decrypt_failures == 1)
        .await;
    assert_eq!(after.logins, before.logins, "the forged Auth was not read");
    assert_eq!(after.errors_auth, before.errors_auth);

    round_trip(&honest).await;
    assert!(honest.closed().is_none());
}

#[tokio::test]
async fn a_recorded_session_replayed_byte_for_byte_is_refused_and_counted() {
    let t = Setup::start().await;
    let gw = t.g.noise_addr().unwrap();
    // A recording proxy between a real client and the gateway.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = l.local_addr().unwrap();
    let recorded: Arc<Mutex<Vec<u8>>> = Arc::default();
    let rec = recorded.clone();
    let tap = tokio::spawn(async move {
        let (c, _) = l.accept().await.unwrap();
        let u = TcpStream::connect(gw).await.unwrap();
        let (mut cr, mut cw) = c.into_split();
        let (mut ur, mut uw) = u.into_split();
        let down = tokio::spawn(async move { tokio::io::copy(&mut ur, &mut cw).await });
        let mut b = [0u8; 4096];
        loop {
            match cr.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    rec.lock().extend_from_slice(&b[..n]);
                    if uw.write_all(&b[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = uw.shutdown().await;
        let _ = down.await;
    });
    let target = Target::Noise {
        addr: proxy,
        gateway_key: t.key.public(),
    };
    let c = Client::connect(&target, &tok(5)).await.unwrap();
    round_trip(&c).await;
    round_trip(&c).await;
    c.close();
    drop(c);
    timeout(WAIT, tap).await.unwrap().unwrap();
    t.until("the recorded session's end", |s| s.connections == 0)
        .await;
    let before = t.g.stats();
    assert_eq!(before.logins, 1);
    let bytes = recorded.lock().clone();
    assert!(bytes.len() > noise::LEN_BYTES + noise::HANDSHAKE_BYTES);

    // The replay: the handshake's first message is accepted (it is a
    // valid one), but the gateway's ephemeral key is new, so the
    // recorded Auth does not decrypt.
    let mut s = TcpStream::connect(gw).await.unwrap();
    s.write_all(&bytes).await.unwrap();
    let got = read_to_end(&mut s).await;
    assert_eq!(
        got.len(),
        noise::LEN_BYTES + noise::HANDSHAKE_BYTES,
        "only the handshake answer, no Welcome"
    );
    let after = t
        .until("a decrypt failure", |s| s.decrypt_failures == 1)
        .await;
    assert_eq!(after.logins, before.logins, "the replayed Auth was refused");
    assert_eq!(after.errors_auth, before.errors_auth);
}

#[tokio::test]
async fn garbage_and_truncated_handshakes_are_closed_and_counted() {
    let t = Setup::start().await;
    let addr = t.g.noise_addr().unwrap();
    let honest = Client::connect(&t.noise(), &tok(1)).await.unwrap();
    // (bytes, whether the writer closes after them)
    let mut cases: Vec<Vec<u8>> = Vec::new();
    // The right length, random-looking content: the tag does not verify.
    let mut g = vec![noise::HANDSHAKE_BYTES as u8, 0];
    g.extend((0..noise::HANDSHAKE_BYTES).map(|i| (i * 31 + 7) as u8));
    cases.push(g);
    // A huge length prefix: refused on the prefix, nothing buffered.
    cases.push(vec![0xff, 0xff, 1, 2, 3]);
    // A truncated first message, then the writer closes.
    let mut init = BytesMut::new();
    noise::Initiator::start(&t.key.public(), &mut init).unwrap();
    cases.push(init[..20].to_vec());
    // One byte.
    cases.push(vec![0x30]);
    for (n, bytes) in cases.iter().enumerate() {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        s.shutdown().await.unwrap();
        read_to_end(&mut s).await;
        t.until("the handshake failure", |s| {
            s.handshake_failures == n as u64 + 1
        })
        .await;
    }
    // A connection that sends nothing is closed at the deadline and counted.
    let mut s = TcpStream::connect(addr).await.unwrap();
    read_to_end(&mut s).await;
    let after = t
        .until("the silent handshake's failure", |s| {
            s.handshake_failures == cases.len() as u64 + 1
        })
        .await;
    assert_eq!(after.logins, 1);
    round_trip(&honest).await;
}

#[tokio::test]
async fn the_wrong_gateway_key_fails_the_handshake() {
    let t = Setup::start().await;
    let wrong = Target::Noise {
        addr: t.g.noise_addr().unwrap(),
        gateway_key: StaticKey::generate().public(),
    };
    let e = Client::connect(&wrong, &tok(1)).await.unwrap_err();
    assert!(matches!(e, ClientError::Connect { .. }), "{e:?}");
    let s = t
        .until("a handshake failure", |s| s.handshake_failures == 1)
        .await;
    assert_eq!(s.logins, 0);
    // And wss with a certificate that is not the gateway's.
    let (other, _) = secure::self_signed(&["localhost"]).unwrap();
    let bad = Target::Wss {
        url: format!("wss://localhost:{}/", t.g.wss_addr().unwrap().port()),
        ca_pem: other,
    };
    let e = Client::connect(&bad, &tok(1)).await.unwrap_err();
    assert!(e.to_string().contains("TLS"), "{e}");
    let s = t
        .until("a TLS handshake failure", |s| s.handshake_failures == 2)
        .await;
    assert_eq!(s.logins, 0);
}

#[tokio::test]
async fn a_plain_client_on_the_noise_port_is_told_and_closed() {
    let t = Setup::start().await;
    let e = Client::connect(&Target::Tcp(t.g.noise_addr().unwrap()), &tok(1))
        .await
        .unwrap_err();
    match e {
        ClientError::Closed { code, message } => {
            assert_eq!(code, Some(ErrorCode::BadFrame));
            assert!(message.contains("Noise"), "{message}");
        }
        e => panic!("expected a Bye, got {e:?}"),
    }
    let s = t
        .until("a handshake failure", |s| s.handshake_failures == 1)
        .await;
    assert_eq!(s.logins, 0);
    // And a Noise client on the plain port gets no session either.
    let plain = Target::Noise {
        addr: t.g.tcp_addr(),
        gateway_key: t.key.public(),
    };
    assert!(Client::connect(&plain, &tok(1)).await.is_err());
}
