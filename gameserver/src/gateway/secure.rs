//! Encrypted listeners: Noise over TCP (`tcp_noise`) and TLS under the
//! WebSocket (`wss`). The bytes' rules are in `proto::noise`; here the
//! sockets, the handshake deadline, the counters, and the TLS setup.
//!
//! Both end in a [`FrameIo`], so the session logic is the one of plain
//! connections: encryption is a layer under the frames, nothing above it
//! knows.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::stats::GatewayStats;
use super::transport::{FrameIo, ReadError};
use crate::proto::frame::Frame;
use crate::proto::noise::{self, NoiseError, Opener, Sealer, StaticKey};

/// Bytes a Noise session's wire buffer reads at a time (it grows only for a
/// message larger than this, and shrinks back when idle).
const READ_CHUNK_BYTES: usize = 512;
/// A buffer this large that is empty is dropped (an idle connection does
/// not keep the memory of its largest message).
const KEEP_BYTES: usize = 4096;

/// How long a plain client on the Noise port is given to read its Bye.
const REFUSAL_MS: Duration = Duration::from_millis(1000);
/// Bytes of a refused plain client read (and dropped) while it reads its Bye.
const REFUSAL_DRAIN_BYTES: u64 = 64 << 10;

/// A TCP connection after the Noise handshake: frames inside transport messages.
pub(crate) struct NoiseIo {
    stream: TcpStream,
    /// Received bytes not yet decrypted (at most one message and one read).
    wire: BytesMut,
    /// Decrypted bytes not yet a whole frame (at most one frame and one chunk).
    plain: BytesMut,
    wbuf: BytesMut,
    sealer: Sealer,
    opener: Opener,
    payload_max: usize,
    stats: Arc<GatewayStats>,
}

/// Runs the gateway's side of the handshake on a fresh connection, within
/// `limit`. A failure is counted in `handshake_failures`; a client that
/// sent plain frames to this port is told so in a plain `Bye` first.
pub(crate) async fn accept_noise(
    mut stream: TcpStream,
    key: &StaticKey,
    limit: Duration,
    payload_max: usize,
    stats: Arc<GatewayStats>,
) -> Option<NoiseIo> {
    let mut buf = BytesMut::with_capacity(noise::LEN_BYTES + noise::HANDSHAKE_BYTES);
    let mut out = BytesMut::with_capacity(noise::LEN_BYTES + noise::HANDSHAKE_BYTES);
    let r = tokio::time::timeout(limit, async {
        loop {
            if let Some(len) = noise::peek_len(&buf) {
                if len != noise::HANDSHAKE_BYTES {
                    return Err(NoiseError::HandshakeLength { len });
                }
            }
            if let Some(body) = noise::take_message(&mut buf) {
                let keys = noise::respond(key, &body, &mut out)?;
                stream
                    .write_all(&out)
                    .await
                    .map_err(|e| NoiseError::Handshake(e.to_string()))?;
                return Ok(keys);
            }
            // Bounded: the buffer never holds more than one handshake message.
            let want = noise::LEN_BYTES + noise::HANDSHAKE_BYTES - buf.len();
            match (&mut stream).take(want as u64).read_buf(&mut buf).await {
                Ok(0) | Err(_) => {
                    return Err(NoiseError::Handshake(
                        "the connection ended during the handshake".into(),
                    ))
                }
                Ok(_) => {}
            }
        }
    })
    .await;
    match r {
        Ok(Ok((sealer, opener))) => Some(NoiseIo {
            stream,
            wire: BytesMut::new(),
            plain: BytesMut::new(),
            wbuf: BytesMut::new(),
            sealer,
            opener,
            payload_max,
            stats,
        }),
        Ok(Err(e)) => {
            GatewayStats::inc(&stats.handshake_failures);
            tracing::debug!(error = %e, "noise handshake refused");
            if matches!(e, NoiseError::HandshakeLength { .. }) {
                let bye = plain_refusal();
                let _ = tokio::time::timeout(REFUSAL_MS, async {
                    stream.write_all(&bye).await?;
                    stream.shutdown().await?;
                    // Read what the client sent (bounded) before closing:
                    // closing over unread bytes resets the connection, and a
                    // reset can discard the Bye before the client reads it.
                    let mut sink = tokio::io::sink();
                    tokio::io::copy(&mut (&mut stream).take(REFUSAL_DRAIN_BYTES), &mut sink).await
                })
                .await;
            }
            None
        }
        Err(_) => {
            GatewayStats::inc(&stats.handshake_failures);
            None
        }
    }
}

/// A plain `Bye` for a client that spoke plain frames to the Noise port.
fn plain_refusal() -> Bytes {
    use crate::proto::frame::Kind;
    use crate::proto::msg::{self, Bye, ErrorCode};
    let b = Bye {
        code: ErrorCode::BadFrame,
        message: "this port speaks Noise (Noise_NK_25519_ChaChaPoly_BLAKE2s); \
                  connect to the plain TCP port or use the gateway's public key"
            .into(),
    };
    Frame::new(
        Kind::Bye,
        0,
        crate::token::now_ms(),
        Bytes::from(msg::encode(&b)),
    )
    .to_bytes()
}

impl FrameIo for NoiseIo {
    async fn read_frame(&mut self) -> Result<Frame, ReadError> {
        loop {
            match noise::next_frame(
                &mut self.opener,
                &mut self.wire,
                &mut self.plain,
                self.payload_max,
            ) {
                Ok(Some(f)) => {
                    if self.plain.is_empty() && self.plain.capacity() > KEEP_BYTES {
                        self.plain = BytesMut::new();
                    }
                    if self.wire.is_empty() && self.wire.capacity() > KEEP_BYTES {
                        self.wire = BytesMut::new();
                    }
                    return Ok(f);
                }
                Ok(None) => {}
                Err(noise::ReadError::Frame(e)) => return Err(ReadError::Frame(e)),
                Err(noise::ReadError::Noise(e)) => {
                    // Not a protocol error the client can be told about in
                    // step: its stream cannot be trusted. Close, count.
                    GatewayStats::inc(&self.stats.decrypt_failures);
                    tracing::debug!(error = %e, "noise session closed");
                    return Err(ReadError::Closed);
                }
            }
            if self.wire.capacity() - self.wire.len() < noise::LEN_BYTES + noise::TAG_BYTES {
                self.wire.reserve(READ_CHUNK_BYTES);
            }
            match self.stream.read_buf(&mut self.wire).await {
                Ok(0) | Err(_) => return Err(ReadError::Closed),
                Ok(_) => {}
            }
        }
    }

    async fn write_frames(&mut self, frames: &[Bytes]) -> io::Result<()> {
        // Empty unless a write was cancelled midway (then the session ends anyway).
        self.wbuf.clear();
        for f in frames {
            self.sealer
                .seal(f, &mut self.wbuf)
                .map_err(io::Error::other)?;
        }
        let r = self.stream.write_all(&self.wbuf).await;
        self.wbuf.clear();
        if self.wbuf.capacity() > KEEP_BYTES {
            self.wbuf = BytesMut::new();
        }
        r
    }

    async fn close(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}

/// The gateway's Noise key from config: 64 hex digits, or the path of a
/// file holding them.
pub(crate) fn load_noise_key(v: &str) -> Result<StaticKey, String> {
    if let Ok(k) = StaticKey::from_hex(v) {
        return Ok(k);
    }
    let text = std::fs::read_to_string(v).map_err(|e| {
        format!("noise_key {v:?} is neither 64 hex digits nor a readable file: {e}")
    })?;
    StaticKey::from_hex(&text).map_err(|e| format!("noise_key file {v:?}: {e}"))
}

/// The TLS acceptor of the `wss` listener, from PEM files (a certificate
/// chain, leaf first, and its private key: PKCS#8, PKCS#1 or SEC1).
pub(crate) fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| format!("tls_cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tls_cert {}: no CERTIFICATE block in the file",
            cert.display()
        ));
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("tls_key {}: {e}", key.display()))?;
    let cfg = rustls::ServerConfig::builder_with_provider(tls_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls_cert and tls_key do not make a usable pair: {e}"))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// The TLS primitives of the gateway and the client: rustls's ring
/// provider (X25519, P-256/384 key exchange; AES-GCM, ChaCha20-Poly1305).
/// rustls deprecates it for lacking post-quantum key exchange
/// (X25519MLKEM768, only in the aws-lc-rs provider); ring is kept for a
/// build without cmake and a third of the compile time. Switching is this
/// function and the `ring` features in gameserver/Cargo.toml.
#[allow(deprecated)]
pub fn tls_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A self-signed certificate and its key, as PEM, for `names` (DNS names or
/// IP addresses): what local runs and tests serve `wss://` with. Clients
/// are given the certificate to trust; nothing disables verification.
pub fn self_signed(names: &[&str]) -> Result<(String, String), String> {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names).map_err(|e| e.to_string())?;
    Ok((ck.cert.pem(), ck.signing_key.serialize_pem()))
}
