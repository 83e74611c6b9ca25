//! A small client: a game-server process pushes its status with it, a game
//! client picks a process with it, an operator drains with it.
//!
//! It speaks just enough HTTP/1.1 over one keep-alive connection (request
//! with `Content-Length`, response with `Content-Length`), so a game server
//! links no HTTP stack. It is given one or more balancer addresses (master
//! and standby) and uses whichever is master: on a connection error it moves
//! to the next address, and on a 503 `not_master` answer to the master that
//! answer names (if it is one of its addresses; else to the next one), and
//! sends the request again there. Reads are answered by a standby too (from
//! its replica), so a client only moves when it has to.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::api::{
    ErrorBody, PickReply, ProcessView, PushReply, RoleReply, StreamReply, ZoneSummary, ZoneView,
    STREAM_UPGRADE,
};
use crate::registry::{StatusPush, ZoneId};

/// Largest response head (status line + headers) accepted.
pub const RESPONSE_HEAD_BYTES_MAX: usize = 16 * 1024;
/// Largest response body accepted (a list of 10,000 processes is ~4 MiB).
pub const RESPONSE_BODY_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Most requests [`Client::pipeline`] sends in one write.
pub const PIPELINE_DEPTH_MAX: usize = 64;
/// Default time limit of one request, connect included.
pub const REQUEST_TIMEOUT_MS: u64 = 5_000;

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No balancer address accepted a connection or answered.
    #[error(
        "balancer at {addrs:?} unreachable: {source}; is it running, and are the addresses right?"
    )]
    Io {
        /// Addresses tried.
        addrs: Vec<SocketAddr>,
        /// Last error.
        source: std::io::Error,
    },
    /// The request took longer than the timeout.
    #[error("balancer request timed out after {timeout_ms} ms")]
    Timeout {
        /// The limit.
        timeout_ms: u64,
    },
    /// The balancer answered with an error.
    #[error("balancer answered {status} {code}: {message}")]
    Http {
        /// HTTP status.
        status: u16,
        /// Error code from the body (`unknown_zone`, `zone_full`, ...).
        code: String,
        /// Message from the body.
        message: String,
    },
    /// The answer was not what this client understands.
    #[error("bad response from balancer: {0}")]
    BadResponse(String),
}

/// A raw response.
#[derive(Debug)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Content-Type header, if any.
    pub content_type: Option<String>,
    /// Body.
    pub body: Vec<u8>,
}

/// A keep-alive connection to the balancer.
#[derive(Debug)]
pub struct Client {
    addrs: Vec<SocketAddr>,
    current: usize,
    secret: Option<String>,
    timeout: Duration,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    /// A client for these balancer addresses (master first). Connects lazily.
    pub fn new(addrs: Vec<SocketAddr>) -> Client {
        Client {
            addrs,
            current: 0,
            secret: None,
            timeout: Duration::from_millis(REQUEST_TIMEOUT_MS),
            conn: None,
        }
    }

    /// Sends `Authorization: Bearer <secret>` on every request.
    pub fn with_secret(mut self, secret: Option<String>) -> Client {
        self.secret = secret;
        self
    }

    /// Time limit of one request.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// The address requests go to now.
    pub fn current(&self) -> Option<SocketAddr> {
        self.addrs.get(self.current).copied()
    }

    /// Moves to the master a `not_master` answer named, else to the next address.
    fn follow(&mut self, master: Option<SocketAddr>) {
        self.conn = None;
        if self.addrs.is_empty() {
            return;
        }
        self.current = match master.and_then(|m| self.addrs.iter().position(|a| *a == m)) {
            Some(i) if i != self.current => i,
            _ => (self.current + 1) % self.addrs.len(),
        };
    }

    /// Sends one request; on a broken connection, retries once on a fresh
    /// connection (to the next address when there are several); on 503
    /// `not_master`, retries at the master. When every attempt met a
    /// non-master (a failover in progress), the last `not_master` answer is
    /// returned.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, ClientError> {
        self.request_with(method, path, body, &[]).await
    }

    async fn request_with(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> Result<Response, ClientError> {
        let timeout_ms = self.timeout.as_millis() as u64;
        let attempts = self.addrs.len().max(1) + 1;
        let mut last_err = None;
        let mut not_master = None;
        for _ in 0..attempts {
            let fresh = self.conn.is_none();
            match tokio::time::timeout(self.timeout, self.attempt(method, path, body, headers))
                .await
            {
                Ok(Ok(resp)) => match not_master_answer(&resp) {
                    Some(master) if self.addrs.len() > 1 => {
                        self.follow(master);
                        not_master = Some(resp);
                    }
                    _ => return Ok(resp),
                },
                Ok(Err(e)) => {
                    self.conn = None;
                    if fresh && !self.addrs.is_empty() {
                        self.current = (self.current + 1) % self.addrs.len();
                    }
                    last_err = Some(e);
                }
                Err(_) => {
                    self.conn = None;
                    return Err(ClientError::Timeout { timeout_ms });
                }
            }
        }
        if let Some(resp) = not_master {
            return Ok(resp);
        }
        Err(ClientError::Io {
            addrs: self.addrs.clone(),
            source: last_err.unwrap_or_else(|| std::io::Error::other("no balancer address given")),
        })
    }

    async fn attempt(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> std::io::Result<Response> {
        let body = body.unwrap_or_default();
        let mut buf = Vec::with_capacity(256 + body.len());
        self.head(&mut buf, method, path, headers, body.len());
        buf.extend_from_slice(body);
        let conn = self.connection().await?;
        conn.get_mut().write_all(&buf).await?;
        let resp = read_response(conn).await?;
        if resp.1 {
            self.conn = None;
        }
        Ok(resp.0)
    }

    async fn call<T: DeserializeOwned>(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<T, ClientError> {
        let resp = self.request(method, path, body).await?;
        if !(200..300).contains(&resp.status) {
            return Err(http_error(&resp));
        }
        serde_json::from_slice(&resp.body).map_err(|e| ClientError::BadResponse(e.to_string()))
    }

    fn json<T: Serialize>(value: &T) -> Vec<u8> {
        serde_json::to_vec(value).expect("plain data serialises")
    }

    /// Sends `requests` (method, path; no body) pipelined: all in one write
    /// on the keep-alive connection, answers read in order. No retry: on an
    /// error the connection is dropped and the caller decides (a pick may
    /// have been made). At most [`PIPELINE_DEPTH_MAX`] requests.
    pub async fn pipeline(
        &mut self,
        requests: &[(&str, &str)],
    ) -> Result<Vec<Response>, ClientError> {
        if requests.len() > PIPELINE_DEPTH_MAX {
            return Err(ClientError::BadResponse(format!(
                "{} pipelined requests, at most {PIPELINE_DEPTH_MAX}",
                requests.len()
            )));
        }
        let out = match tokio::time::timeout(self.timeout, self.pipeline_attempt(requests)).await {
            Ok(Ok(out)) if out.len() == requests.len() => return Ok(out),
            Ok(Ok(_)) => Err(ClientError::BadResponse(
                "the balancer closed the connection in the middle of a pipeline".into(),
            )),
            Ok(Err(source)) => Err(ClientError::Io {
                addrs: self.addrs.clone(),
                source,
            }),
            Err(_) => Err(ClientError::Timeout {
                timeout_ms: self.timeout.as_millis() as u64,
            }),
        };
        self.conn = None;
        out
    }

    async fn pipeline_attempt(
        &mut self,
        requests: &[(&str, &str)],
    ) -> std::io::Result<Vec<Response>> {
        let mut buf = Vec::with_capacity(128 * requests.len());
        for (method, path) in requests {
            self.head(&mut buf, method, path, &[], 0);
        }
        let conn = self.connection().await?;
        conn.get_mut().write_all(&buf).await?;
        let mut out = Vec::with_capacity(requests.len());
        for _ in requests {
            let (resp, close) = read_response(conn).await?;
            out.push(resp);
            if close {
                break;
            }
        }
        Ok(out)
    }

    /// Appends a request head: Host, the secret, `headers`, and a
    /// Content-Length for a body or a POST.
    fn head(
        &self,
        buf: &mut Vec<u8>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body_len: usize,
    ) {
        use std::io::Write as _;
        let host = self.current().map(|a| a.to_string()).unwrap_or_default();
        // Writing to a Vec cannot fail.
        let _ = write!(buf, "{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
        if let Some(secret) = &self.secret {
            let _ = write!(buf, "Authorization: Bearer {secret}\r\n");
        }
        for (name, value) in headers {
            let _ = write!(buf, "{name}: {value}\r\n");
        }
        if body_len > 0 || method == "POST" {
            let _ = write!(
                buf,
                "Content-Type: application/json\r\nContent-Length: {body_len}\r\n"
            );
        }
        buf.extend_from_slice(b"\r\n");
    }

    /// The keep-alive connection to the current address, opened if needed.
    async fn connection(&mut self) -> std::io::Result<&mut BufReader<TcpStream>> {
        if self.conn.is_none() {
            let addr = *self
                .addrs
                .get(self.current)
                .ok_or_else(|| std::io::Error::other("no balancer address given"))?;
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            self.conn = Some(BufReader::new(stream));
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// Planned handover of the master role to the standby (see
    /// `POST /v1/role/switchover`); answers the old master's role after it.
    pub async fn switchover(&mut self) -> Result<RoleReply, ClientError> {
        self.call("POST", "/v1/role/switchover", None).await
    }

    /// Pushes a game-server process's status.
    pub async fn push_status(&mut self, push: &StatusPush) -> Result<PushReply, ClientError> {
        self.call("POST", "/v1/status", Some(&Self::json(push)))
            .await
    }

    /// Picks the least-loaded process of a zone (a seat is reserved).
    pub async fn pick(&mut self, zone: ZoneId) -> Result<PickReply, ClientError> {
        self.call("POST", &format!("/v1/zones/{zone}/pick"), None)
            .await
    }

    /// The zone list.
    pub async fn zones(&mut self) -> Result<Vec<ZoneSummary>, ClientError> {
        self.call("GET", "/v1/zones", None).await
    }

    /// One zone's sorted process list.
    pub async fn zone(&mut self, zone: ZoneId) -> Result<ZoneView, ClientError> {
        self.call("GET", &format!("/v1/zones/{zone}"), None).await
    }

    /// One process.
    pub async fn process(&mut self, id: &str) -> Result<ProcessView, ClientError> {
        self.call("GET", &format!("/v1/processes/{id}"), None).await
    }

    /// Marks a process draining.
    pub async fn drain(&mut self, id: &str) -> Result<ProcessView, ClientError> {
        self.call("POST", &format!("/v1/processes/{id}/drain"), None)
            .await
    }

    /// Puts a draining process back in service.
    pub async fn undrain(&mut self, id: &str) -> Result<ProcessView, ClientError> {
        self.call("POST", &format!("/v1/processes/{id}/undrain"), None)
            .await
    }
}

/// Lines of a push stream the client keeps for [`PushStream::take_errors`];
/// older ones are dropped.
pub const STREAM_ERRORS_KEPT_MAX: usize = 256;

/// What a push stream's reader task learned.
#[derive(Debug, Default)]
struct StreamState {
    /// Last status told per process id.
    latest: HashMap<String, StreamReply>,
    /// Refused lines and stream-wide errors not taken yet.
    errors: VecDeque<StreamReply>,
    /// The stream ended; the master a `not_master` line named, if any.
    ended: Option<Option<SocketAddr>>,
}

/// A push stream ([`crate::http::stream`]): one connection, a status push per
/// line, no answer per push; the balancer answers only news (first push,
/// status or drain change, refused line), which a reader task keeps for
/// [`PushStream::status`] and [`PushStream::take_errors`].
///
/// It follows the master like [`Client`]: when the stream ends (the
/// balancer closed it, named another master, or died), the next
/// [`PushStream::push`] reopens it at the master named, else at the next
/// address.
#[derive(Debug)]
pub struct PushStream {
    client: Client,
    writer: Option<(tokio::net::tcp::OwnedWriteHalf, tokio::task::JoinHandle<()>)>,
    state: Arc<Mutex<StreamState>>,
    line: Vec<u8>,
}

impl PushStream {
    /// A stream over `client`'s addresses, secret and timeout. Connects on
    /// the first push.
    pub fn new(client: Client) -> PushStream {
        PushStream {
            client,
            writer: None,
            state: Arc::default(),
            line: Vec::with_capacity(256),
        }
    }

    /// Whether a stream is open now.
    pub fn is_open(&self) -> bool {
        self.writer.is_some() && self.state.lock().ended.is_none()
    }

    /// Writes one push (opening the stream first when needed). An error means
    /// it was not sent (no balancer reachable as master): push again next
    /// interval. A push written is not confirmed; a refused one shows in
    /// [`PushStream::take_errors`].
    pub async fn push(&mut self, push: &StatusPush) -> Result<(), ClientError> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, push).expect("plain data serialises");
        self.line.push(b'\n');
        let ended = self.state.lock().ended.take();
        if let Some(master) = ended {
            self.close();
            self.client.follow(master);
        }
        if self.writer.is_none() {
            self.open().await?;
        }
        let (w, _) = self.writer.as_mut().expect("opened above");
        match tokio::time::timeout(self.client.timeout, w.write_all(&self.line)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => {
                self.close();
                self.client.follow(None);
                Err(ClientError::Io {
                    addrs: self.client.addrs.clone(),
                    source,
                })
            }
            Err(_) => {
                self.close();
                Err(ClientError::Timeout {
                    timeout_ms: self.client.timeout.as_millis() as u64,
                })
            }
        }
    }

    /// The last status the balancer told for `id` on this stream.
    pub fn status(&self, id: &str) -> Option<StreamReply> {
        self.state.lock().latest.get(id).cloned()
    }

    /// Refused lines and stream-wide errors since the last call (at most
    /// [`STREAM_ERRORS_KEPT_MAX`], newest kept).
    pub fn take_errors(&self) -> Vec<StreamReply> {
        self.state.lock().errors.drain(..).collect()
    }

    /// Closes the stream (the balancer probes the processes it vouched for).
    pub fn close(&mut self) {
        if let Some((_, reader)) = self.writer.take() {
            reader.abort();
        }
    }

    async fn open(&mut self) -> Result<(), ClientError> {
        let headers = [("Connection", "upgrade"), ("Upgrade", STREAM_UPGRADE)];
        let resp = self
            .client
            .request_with("GET", "/v1/status/stream", None, &headers)
            .await?;
        let conn = self.client.conn.take();
        if resp.status != 101 {
            return Err(http_error(&resp));
        }
        let conn =
            conn.ok_or_else(|| ClientError::BadResponse("101 without a connection".into()))?;
        let leftover = conn.buffer().to_vec();
        let (read, write) = conn.into_inner().into_split();
        let state = Arc::new(Mutex::new(StreamState::default()));
        self.state = state.clone();
        let reader = tokio::spawn(read_stream(leftover, read, state));
        self.writer = Some((write, reader));
        Ok(())
    }
}

impl Drop for PushStream {
    fn drop(&mut self) {
        self.close();
    }
}

/// The reader task of a [`PushStream`]: keeps the balancer's lines.
async fn read_stream(
    leftover: Vec<u8>,
    read: tokio::net::tcp::OwnedReadHalf,
    state: Arc<Mutex<StreamState>>,
) {
    let mut lines = BufReader::new(std::io::Cursor::new(leftover).chain(read));
    let mut line = Vec::new();
    let mut master = None;
    loop {
        line.clear();
        // Lines are short; a runaway one ends the stream.
        match (&mut lines)
            .take(RESPONSE_HEAD_BYTES_MAX as u64)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(n) if n > 0 && line.last() == Some(&b'\n') => {}
            _ => break,
        }
        let Ok(reply) = serde_json::from_slice::<StreamReply>(&line) else {
            break;
        };
        let mut st = state.lock();
        match (&reply.error, &reply.id) {
            (None, Some(id)) => {
                st.latest.insert(id.clone(), reply);
            }
            (Some(code), _) => {
                if code == "not_master" {
                    master = reply.master;
                }
                if st.errors.len() >= STREAM_ERRORS_KEPT_MAX {
                    st.errors.pop_front();
                }
                st.errors.push_back(reply);
            }
            (None, None) => {}
        }
    }
    state.lock().ended = Some(master);
}

/// A non-2xx answer as an error, with the code and message of its JSON body.
fn http_error(resp: &Response) -> ClientError {
    let err: Option<ErrorBody> = serde_json::from_slice(&resp.body).ok();
    ClientError::Http {
        status: resp.status,
        code: err.as_ref().map(|e| e.error.clone()).unwrap_or_default(),
        message: err
            .map(|e| e.message)
            .unwrap_or_else(|| String::from_utf8_lossy(&resp.body).into_owned()),
    }
}

/// For a 503 `not_master` answer: the master it names, if any.
fn not_master_answer(resp: &Response) -> Option<Option<SocketAddr>> {
    if resp.status != 503 {
        return None;
    }
    let body: ErrorBody = serde_json::from_slice(&resp.body).ok()?;
    (body.error == "not_master").then_some(body.master)
}

/// Reads one response; the flag says the server will close the connection.
pub(crate) async fn read_response<R>(conn: &mut R) -> std::io::Result<(Response, bool)>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let mut head_bytes = 0usize;
    let mut line = String::new();
    let mut status = None;
    let mut content_length = None;
    let mut content_type = None;
    let mut close = false;
    // Bounded: every line adds to head_bytes, capped below.
    loop {
        line.clear();
        // At most one byte past the limit per line: a line that never ends
        // is refused, not buffered.
        let left = (RESPONSE_HEAD_BYTES_MAX - head_bytes) as u64 + 1;
        let n = (&mut *conn).take(left).read_line(&mut line).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
        head_bytes += n;
        if head_bytes > RESPONSE_HEAD_BYTES_MAX {
            return Err(bad(format!(
                "response head over {RESPONSE_HEAD_BYTES_MAX} bytes"
            )));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if status.is_none() {
            let code = l.split(' ').nth(1).and_then(|c| c.parse::<u16>().ok());
            status = Some(code.ok_or_else(|| bad(format!("bad status line {l:?}")))?);
            continue;
        }
        if let Some((name, value)) = l.split_once(':') {
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => {
                    content_length = Some(
                        value
                            .parse::<usize>()
                            .map_err(|_| bad(format!("bad content-length {value:?}")))?,
                    )
                }
                "content-type" => content_type = Some(value.to_string()),
                "connection" => close = value.eq_ignore_ascii_case("close"),
                "transfer-encoding" => {
                    return Err(bad(
                        "chunked responses are not supported by this client".into()
                    ))
                }
                _ => {}
            }
        }
    }
    let status = status.ok_or_else(|| bad("empty response".into()))?;
    let len = content_length.unwrap_or(0);
    if len > RESPONSE_BODY_BYTES_MAX {
        return Err(bad(format!(
            "response body of {len} bytes is over {RESPONSE_BODY_BYTES_MAX}"
        )));
    }
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).await?;
    Ok((
        Response {
            status,
            content_type,
            body,
        },
        close,
    ))
}

/// Seed 000's recommended process id: the MAC address of the first
/// non-loopback interface, a dash, and the pid. Falls back to an all-zero
/// MAC when none can be read.
pub fn local_process_id() -> String {
    let mac = std::fs::read_dir("/sys/class/net")
        .ok()
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .take(64)
        .filter_map(|e| std::fs::read_to_string(e.path().join("address")).ok())
        .map(|s| s.trim().to_string())
        .find(|m| m.len() == 17 && m != "00:00:00:00:00:00")
        .unwrap_or_else(|| "00:00:00:00:00:00".to_string());
    format!("{mac}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hostile or broken balancer sends a head line that never ends: the
    /// client gives up at the head limit instead of buffering forever.
    #[tokio::test]
    async fn an_endless_response_head_line_is_refused_at_the_limit() {
        let mut endless = BufReader::new(
            std::io::Cursor::new(b"HTTP/1.1 200 OK\r\nx-junk: ".to_vec())
                .chain(tokio::io::repeat(b'a')),
        );
        let r = tokio::time::timeout(Duration::from_secs(5), read_response(&mut endless))
            .await
            .expect("the client stops reading at the head limit");
        let e = r.expect_err("an oversized head is an error");
        assert!(e.to_string().contains("response head over"), "{e}");
    }

    #[tokio::test]
    async fn a_plain_response_is_read() {
        let mut ok = BufReader::new(std::io::Cursor::new(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_vec(),
        ));
        let (resp, close) = read_response(&mut ok).await.unwrap();
        assert_eq!(
            (resp.status, resp.body.as_slice(), close),
            (200, &b"ok"[..], true)
        );
    }
}
