//! The witness over TCP: a client (`ask`) for nodes, and a server (`serve`) that
//! `hs-witness` and the balancer run. One request, one reply, per connection;
//! a master's renewal connection then stays open until its next renewal has
//! been answered (`linger`), so the witness sees a dead master's socket close.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};

use super::net::{await_challenge, challenge, read_first, write_first, FrameReader};
use super::Secret;
use crate::proto::frame::Frame;
use crate::proto::witness::{LogMark, Reply, Request, Witness};

/// Largest frame a witness accepts (requests are a few dozen bytes).
const WITNESS_FRAME_BYTES_MAX: usize = 256;
/// Connections a witness serves at once. Each costs a task and a socket for up to
/// `WITNESS_REQUEST_TIMEOUT`; past the cap the oldest is closed. A node
/// makes about one request per heartbeat tick, so this covers hundreds of pairs.
pub const WITNESS_CONNS_MAX: usize = 256;
/// How long a connection has to send its request.
const WITNESS_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest the witness watches a held renewal link for its close. A master
/// replaces its link every tick; one that stops renewing is caught by the gap
/// in its renewals instead.
const WITNESS_LINGER_MAX: Duration = Duration::from_secs(10);
/// Held renewal links watched at once: about one per pair whose master renews
/// here (two for a tick while a master replaces its link). Each costs a task
/// and a socket, no buffer. Past the cap the oldest watch is let go (closing
/// it on this side marks nothing): that pair's master is then judged by the
/// gap in its renewals alone, about two ticks slower on a SIGKILL.
pub const WITNESS_HELD_LINKS_MAX: usize = 8192;

/// A renewal connection a master holds open until its next renewal has been
/// answered: dropping it (or the process dying) closes it.
pub struct HeldLink {
    _rd: tokio::net::tcp::OwnedReadHalf,
    _wr: tokio::net::tcp::OwnedWriteHalf,
}

/// Asks the witness; `None` if it cannot be reached or answer within `timeout`.
pub async fn ask(addr: SocketAddr, req: Request, timeout: Duration) -> Option<Reply> {
    ask_with(addr, req, timeout, None).await
}

/// `ask`, proving (and requiring the witness to prove) `secret` when there is one.
pub async fn ask_with(
    addr: SocketAddr,
    req: Request,
    timeout: Duration,
    secret: Option<&Secret>,
) -> Option<Reply> {
    exchange(addr, req, false, timeout, secret)
        .await
        .map(|(r, _)| r)
}

/// A renewal whose connection the caller holds open (until its next renewal
/// has been answered): the witness takes the connection's close, with no newer
/// renewal, for the master's death.
pub async fn renew_held(
    addr: SocketAddr,
    req: Request,
    timeout: Duration,
    secret: Option<&Secret>,
) -> Option<(Reply, HeldLink)> {
    debug_assert!(matches!(req, Request::Renew { .. }));
    exchange(addr, req, true, timeout, secret).await
}

async fn exchange(
    addr: SocketAddr,
    req: Request,
    linger: bool,
    timeout: Duration,
    secret: Option<&Secret>,
) -> Option<(Reply, HeldLink)> {
    let fut = async {
        let stream = TcpStream::connect(addr).await.ok()?;
        stream.set_nodelay(true).ok()?;
        let (rd, mut wr) = stream.into_split();
        let mut reader = FrameReader::new(rd, WITNESS_FRAME_BYTES_MAX);
        let mut hs = match await_challenge(&mut reader, secret).await {
            Ok(hs) => hs,
            Err(e) => {
                tracing::warn!(%addr, error = %e, "witness handshake failed");
                return None;
            }
        };
        let f = match req {
            Request::Renew {
                pair,
                node,
                epoch,
                addr,
                acked,
            } => Frame::WitnessRequest {
                pair,
                node,
                epoch,
                promote: false,
                dead: false,
                linger,
                addr,
                mark: acked.map(|m| (m.history, m.pos)),
            },
            Request::Promote {
                pair,
                node,
                epoch,
                dead,
                tail,
            } => Frame::WitnessRequest {
                pair,
                node,
                epoch,
                promote: true,
                dead,
                linger: false,
                addr: None,
                mark: tail.map(|m| (m.history, m.pos)),
            },
        };
        write_first(&mut wr, &hs, &f).await.ok()?;
        let answer = match read_first(&mut reader, &mut hs).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(%addr, error = %e, "the witness's answer is refused");
                return None;
            }
        };
        match answer {
            Frame::WitnessReply {
                granted,
                epoch,
                holder,
            } => Some((
                Reply {
                    granted,
                    epoch,
                    holder,
                },
                HeldLink {
                    _rd: reader.into_inner(),
                    _wr: wr,
                },
            )),
            _ => None,
        }
    };
    tokio::time::timeout(timeout, fut).await.ok().flatten()
}

/// Serves witness requests on `listener` until the future is dropped.
/// `hold`: how long a renewal keeps a master alive (its lease plus a margin).
pub async fn serve(listener: TcpListener, hold: Duration) {
    serve_with(listener, hold, None).await
}

/// `serve`, requiring every request to prove `secret` (and proving it in every
/// reply) when there is one. At most `WITNESS_CONNS_MAX` connections at once.
/// Each connection's task ends within `WITNESS_REQUEST_TIMEOUT` or when closed.
pub async fn serve_with(listener: TcpListener, hold: Duration, secret: Option<Secret>) {
    let state = Arc::new(Mutex::new(Witness::new(hold)));
    let mut pending = super::net::Pending::new(WITNESS_CONNS_MAX);
    let held_links = Arc::new(Mutex::new(super::net::Pending::new(WITNESS_HELD_LINKS_MAX)));
    let secret = Arc::new(secret);
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if pending.make_room() {
            tracing::debug!(%peer, "witness at its connection cap; closed the oldest");
        }
        let state = state.clone();
        let secret = secret.clone();
        let held_links = held_links.clone();
        let h = tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let (rd, mut wr) = stream.into_split();
            let mut reader = FrameReader::new(rd, WITNESS_FRAME_BYTES_MAX);
            let first = tokio::time::timeout(WITNESS_REQUEST_TIMEOUT, async {
                let mut hs = challenge(&mut wr, secret.as_ref().as_ref()).await?;
                let f = read_first(&mut reader, &mut hs).await?;
                Ok::<_, super::net::NetError>((hs, f))
            })
            .await;
            let (hs, first) = match first {
                Ok(Ok(x)) => x,
                Ok(Err(e)) => {
                    tracing::warn!(%peer, error = %e, "witness request refused");
                    return;
                }
                Err(_) => return,
            };
            let held;
            let req = match first {
                Frame::WitnessRequest {
                    pair,
                    node,
                    epoch,
                    promote,
                    dead,
                    linger,
                    addr,
                    mark,
                } => {
                    let mark = mark.map(|(history, pos)| LogMark { history, pos });
                    held = (!promote && linger).then_some((pair, node, epoch));
                    if promote {
                        // "Refused", as the requester saw it, is confirmed from here
                        // at the address the holder gave, or the request counts as
                        // one on silence (the hold applies).
                        let holder = state.lock().holder_addr(pair);
                        let confirmed = match (dead, holder) {
                            (true, Some(m)) => refused_here(m).await,
                            _ => false,
                        };
                        if dead && !confirmed {
                            tracing::info!(%peer, ?holder, "a refusal reported by a node is not confirmed from the witness: treated as silence");
                        }
                        Request::Promote {
                            pair,
                            node,
                            epoch,
                            dead: confirmed,
                            tail: mark,
                        }
                    } else {
                        // An unspecified IP: the master serves on the address it
                        // connects from.
                        let addr = addr.map(|a| {
                            if a.ip().is_unspecified() {
                                SocketAddr::new(peer.ip(), a.port())
                            } else {
                                a
                            }
                        });
                        Request::Renew {
                            pair,
                            node,
                            epoch,
                            addr,
                            acked: mark,
                        }
                    }
                }
                other => {
                    tracing::debug!(%peer, kind = super::net::kind_name(&other), "not a witness request");
                    return;
                }
            };
            let at = Instant::now();
            let reply = state.lock().handle(at, req);
            if matches!(req, Request::Promote { .. }) {
                tracing::info!(%peer, ?req, ?reply, "promotion request");
            }
            let sent = write_first(
                &mut wr,
                &hs,
                &Frame::WitnessReply {
                    granted: reply.granted,
                    epoch: reply.epoch,
                    holder: reply.holder,
                },
            )
            .await;
            // A held renewal link: watched for its close by the master's end,
            // in a task of its own under its own cap (this connection's slot
            // among the requests is freed).
            if let (Some((pair, node, epoch)), true, Ok(())) = (held, reply.granted, sent) {
                let (mut rd, wr) = (reader.into_inner(), wr);
                let watch = tokio::spawn(async move {
                    let _wr = wr;
                    let mut byte = [0u8; 1];
                    use tokio::io::AsyncReadExt;
                    match tokio::time::timeout(WITNESS_LINGER_MAX, rd.read(&mut byte)).await {
                        // End of stream or a reset: the master's end closed it.
                        Ok(Ok(0)) | Ok(Err(_)) => {
                            state.lock().link_closed(pair, node, epoch, at);
                            tracing::debug!(%peer, pair, node, "a held renewal link closed");
                        }
                        // Bytes on a held link, or the bound reached: nothing learned.
                        _ => {}
                    }
                });
                let mut links = held_links.lock();
                if links.make_room() {
                    tracing::debug!("witness at its held-link cap; let the oldest go");
                }
                links.push(watch.abort_handle());
            }
        });
        pending.push(h.abort_handle());
    }
}

/// How long the witness's own try at a master's port may take: a refusal comes
/// back within a round trip; a node asks with at least 100 ms to spare.
const CONFIRM_TIMEOUT: Duration = Duration::from_millis(100);

/// Whether `master` refuses the witness's connection too (the kernel's word that
/// nothing listens there). An answer, or none in `CONFIRM_TIMEOUT`, is not a refusal.
/// One connect per request that claims a refusal, within the request's own
/// connection cap and time limit.
async fn refused_here(master: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(CONFIRM_TIMEOUT, TcpStream::connect(master)).await,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// The hold time a witness should use for pairs with these heartbeat settings:
/// the lease plus one tick of margin.
pub fn hold_for(heartbeat_interval_ms: u64, heartbeat_dead_ticks: u32) -> Duration {
    Duration::from_millis(
        crate::proto::election::lease_ms(heartbeat_interval_ms, heartbeat_dead_ticks)
            + heartbeat_interval_ms,
    )
}
