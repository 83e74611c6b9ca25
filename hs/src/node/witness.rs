//! The witness over TCP: a client (`ask`) for nodes, and a server (`serve`) that
//! `hs-witness` and the balancer run. One request, one reply, per connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};

use super::net::{write_frame, FrameReader};
use crate::proto::frame::Frame;
use crate::proto::witness::{Reply, Request, Witness};

/// Largest frame a witness accepts (requests are a few dozen bytes).
const WITNESS_FRAME_BYTES_MAX: usize = 256;

/// Asks the witness; `None` if it cannot be reached or answer within `timeout`.
pub async fn ask(addr: SocketAddr, req: Request, timeout: Duration) -> Option<Reply> {
    let fut = async {
        let stream = TcpStream::connect(addr).await.ok()?;
        stream.set_nodelay(true).ok()?;
        let (rd, mut wr) = stream.into_split();
        let f = match req {
            Request::Renew { pair, node, epoch } => Frame::WitnessRequest {
                pair,
                node,
                epoch,
                promote: false,
                dead: false,
            },
            Request::Promote {
                pair,
                node,
                epoch,
                dead,
            } => Frame::WitnessRequest {
                pair,
                node,
                epoch,
                promote: true,
                dead,
            },
        };
        write_frame(&mut wr, &f).await.ok()?;
        let mut reader = FrameReader::new(rd, WITNESS_FRAME_BYTES_MAX);
        match reader.next().await.ok()? {
            Frame::WitnessReply {
                granted,
                epoch,
                holder,
            } => Some(Reply {
                granted,
                epoch,
                holder,
            }),
            _ => None,
        }
    };
    tokio::time::timeout(timeout, fut).await.ok().flatten()
}

/// Serves witness requests on `listener` until the future is dropped.
/// `hold`: how long a renewal keeps a master alive (its lease plus a margin).
pub async fn serve(listener: TcpListener, hold: Duration) {
    let state = Arc::new(Mutex::new(Witness::new(hold)));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let (rd, mut wr) = stream.into_split();
            let mut reader = FrameReader::new(rd, WITNESS_FRAME_BYTES_MAX);
            let req = match tokio::time::timeout(Duration::from_secs(2), reader.next()).await {
                Ok(Ok(Frame::WitnessRequest {
                    pair,
                    node,
                    epoch,
                    promote,
                    dead,
                })) => {
                    if promote {
                        Request::Promote {
                            pair,
                            node,
                            epoch,
                            dead,
                        }
                    } else {
                        Request::Renew { pair, node, epoch }
                    }
                }
                other => {
                    tracing::debug!(%peer, ?other, "not a witness request");
                    return;
                }
            };
            let reply = state.lock().handle(Instant::now(), req);
            if matches!(req, Request::Promote { .. }) {
                tracing::info!(%peer, ?req, ?reply, "promotion request");
            }
            let _ = write_frame(
                &mut wr,
                &Frame::WitnessReply {
                    granted: reply.granted,
                    epoch: reply.epoch,
                    holder: reply.holder,
                },
            )
            .await;
        });
    }
}

/// The hold time a witness should use for pairs with these heartbeat settings:
/// the lease plus one tick of margin.
pub fn hold_for(heartbeat_interval_ms: u64, heartbeat_dead_ticks: u32) -> Duration {
    Duration::from_millis(
        crate::proto::election::lease_ms(heartbeat_interval_ms, heartbeat_dead_ticks)
            + heartbeat_interval_ms,
    )
}
