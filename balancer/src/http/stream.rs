//! Push streams: a game-server process (or a host agent reporting for
//! several) keeps one connection open and writes a status push per line,
//! with no answer per push.
//!
//! Why: an HTTP push costs a request *and* a response (two TCP segments, a
//! wake-up on each side); on a stream the balancer only reads. And the open
//! connection is a liveness signal: when the process dies its kernel closes
//! the stream, and the balancer probes the processes that pushed on it at
//! once instead of at the next probe round (see
//! [`crate::state::Balancer::stream_closed`]).
//!
//! Wire, after `GET /v1/status/stream` with `Connection: upgrade`,
//! `Upgrade: balancer-push` (and `Authorization: Bearer <secret>` when a
//! secret is configured) is answered `101 Switching Protocols`:
//!
//! - the client waits for the 101 before its first line ([`crate::client::PushStream`]
//!   does): a line that arrives in the same read as the upgrade request
//!   makes hyper, which holds answers back while pipelined input is buffered
//!   (`pipeline_flush`), hand the connection over with the 101 unsent (seen
//!   in `tests/limits.rs`; not worked around: the client sees the stream's
//!   first answer line where it expects the 101);
//! - client to balancer: one [`crate::registry::StatusPush`] JSON object per
//!   line (`\n`), each at most `request_body_bytes_max` bytes, at most
//!   [`STREAM_PROCESSES_MAX`] distinct process ids per stream, each line
//!   whole within `request_head_timeout_ms` of the previous one;
//! - balancer to client: one [`StreamReply`] per line, only when something
//!   is news: the first push of an id, a change of its status or drain
//!   flag, or a refused line (the same codes as the HTTP answers). A refused
//!   line loses nothing else: the stream goes on. `not_master`,
//!   `line_too_long`, `too_many_processes` and `stream_idle` are sent, then the balancer
//!   closes the stream (the client reconnects, to the master it names).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tracing::{debug, warn};

use super::{accept_push, authorize, ApiError};
pub use crate::api::{StreamReply, STREAM_UPGRADE};
use crate::registry::Status;
use crate::state::Balancer;

/// Distinct process ids one stream may report for (a host agent's
/// processes); bounds the stream's memory and its close-time probe.
pub const STREAM_PROCESSES_MAX: usize = 4096;
/// Read buffer of a stream: many pushes arrive in one read.
pub const STREAM_READ_BUFFER_BYTES: usize = 64 * 1024;
/// Answers held back while more input is buffered are written once they
/// reach this size (a client flooding bad lines cannot grow them).
pub const STREAM_REPLY_BUFFER_BYTES: usize = 64 * 1024;

impl StreamReply {
    fn status(id: &str, status: Status) -> StreamReply {
        StreamReply {
            id: Some(id.to_string()),
            status: Some(status.code()),
            status_name: Some(status.name().to_string()),
            draining: Some(status == Status::Draining),
            ..StreamReply::default()
        }
    }

    fn error(id: Option<String>, e: ApiError) -> StreamReply {
        StreamReply {
            id,
            error: Some(e.code.to_string()),
            message: Some(e.message),
            master: e.master,
            ..StreamReply::default()
        }
    }
}

/// `GET /v1/status/stream`: checks the secret and the master role, answers
/// 101 and serves the stream on the upgraded connection.
pub(crate) async fn upgrade(
    State(b): State<Arc<Balancer>>,
    headers: HeaderMap,
    mut req: Request,
) -> Result<Response, ApiError> {
    authorize(&b, &headers)?;
    let wants = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(STREAM_UPGRADE));
    if !wants {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_upgrade",
            format!("send Connection: upgrade and Upgrade: {STREAM_UPGRADE} to open a push stream, or POST single pushes to /v1/status"),
        ));
    }
    if !b.is_master() {
        return Err(b.not_master().into());
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => serve(b, TokioIo::new(upgraded)).await,
            Err(e) => debug!(error = %e, "push stream upgrade failed"),
        }
    });
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    resp.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static(STREAM_UPGRADE));
    Ok(resp)
}

/// What the stream does after a line.
enum Next {
    Continue,
    Close,
}

/// Reads pushes until the client closes, the stream breaks or a line ends
/// it; then has the balancer probe the processes it vouched for.
pub(crate) async fn serve<S>(b: Arc<Balancer>, io: S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let serial = b.stream_opened();
    let mut io = io;
    let told = serve_lines(&b, serial, &mut io).await;
    let _ = io.shutdown().await;
    b.stream_closed(serial, told.into_keys().collect()).await;
}

/// The stream's line loop: reads, applies and answers pushes until the
/// client closes, the stream breaks or a line ends it. Returns the ids that
/// pushed on it, with the status last told to each.
pub(crate) async fn serve_lines<S>(b: &Balancer, serial: u64, io: &mut S) -> HashMap<String, Status>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let line_max = b.config().request_body_bytes_max;
    // A stream whose next line does not arrive whole in this long is closed
    // (a silent or trickling client would hold a connection slot forever).
    let line_timeout = std::time::Duration::from_millis(b.config().request_head_timeout_ms);
    let mut io = BufReader::with_capacity(STREAM_READ_BUFFER_BYTES, io);
    // Last status told per id: a reply is sent only when it changes.
    let mut told: HashMap<String, Status> = HashMap::new();
    let mut line = Vec::with_capacity(512);
    let mut out = Vec::new();
    loop {
        line.clear();
        let read = tokio::time::timeout(
            line_timeout,
            (&mut io)
                .take(line_max as u64 + 1)
                .read_until(b'\n', &mut line),
        )
        .await;
        let next = match read {
            Err(_) => {
                let e = ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "stream_idle",
                    format!("no whole push line in {} ms (request_head_timeout_ms); the stream is closed: push at least that often", line_timeout.as_millis()),
                );
                write_line(&mut out, &StreamReply::error(None, e));
                Next::Close
            }
            Ok(read) => match read {
                Ok(0) => break,
                Err(e) => {
                    debug!(serial, error = %e, "push stream broke");
                    break;
                }
                Ok(_) if line.last() != Some(&b'\n') => {
                    if line.len() > line_max {
                        let e = ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "line_too_long",
                        format!("a push line is at most {line_max} bytes (request_body_bytes_max); the stream is closed"),
                    );
                        write_line(&mut out, &StreamReply::error(None, e));
                    }
                    // else: the client closed in the middle of a line.
                    Next::Close
                }
                Ok(_) => on_line(b, serial, &line, &mut told, &mut out),
            },
        };
        // Answers go out when no more input is buffered (one write for a
        // burst of pushes), or when they fill their buffer.
        let flush = io.buffer().is_empty()
            || out.len() >= STREAM_REPLY_BUFFER_BYTES
            || matches!(next, Next::Close);
        if !out.is_empty() && flush {
            if let Err(e) = io.get_mut().write_all(&out).await {
                debug!(serial, error = %e, "push stream broke while answering");
                break;
            }
            out.clear();
        }
        if matches!(next, Next::Close) {
            break;
        }
    }
    told
}

fn on_line(
    b: &Balancer,
    serial: u64,
    line: &[u8],
    told: &mut HashMap<String, Status>,
    out: &mut Vec<u8>,
) -> Next {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return Next::Continue;
    }
    match accept_push(b, line) {
        Ok((id, status)) => {
            let known = told.len();
            match told.get_mut(&id) {
                Some(s) if *s == status => {}
                Some(s) => {
                    *s = status;
                    write_line(out, &StreamReply::status(&id, status));
                }
                None if known >= STREAM_PROCESSES_MAX => {
                    let e = ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "too_many_processes",
                        format!("a push stream reports for at most {STREAM_PROCESSES_MAX} process ids; open another stream"),
                    );
                    write_line(out, &StreamReply::error(Some(id), e));
                    return Next::Close;
                }
                None => {
                    b.stream_pushed(serial, &id);
                    write_line(out, &StreamReply::status(&id, status));
                    told.insert(id, status);
                }
            }
            Next::Continue
        }
        Err(e) => {
            let fatal = e.code == "not_master";
            let id = serde_json::from_slice::<IdOnly>(line).ok().map(|i| i.id);
            if fatal {
                warn!(
                    serial,
                    "push stream on a balancer that is not the master; closing it"
                );
            }
            write_line(out, &StreamReply::error(id, e));
            if fatal {
                Next::Close
            } else {
                Next::Continue
            }
        }
    }
}

/// The id of a refused push, to name it in the answer when it parses.
#[derive(Deserialize)]
struct IdOnly {
    id: String,
}

fn write_line(out: &mut Vec<u8>, reply: &StreamReply) {
    // A struct of strings, numbers and an address always serializes.
    serde_json::to_writer(&mut *out, reply).expect("a StreamReply serializes");
    out.push(b'\n');
}
