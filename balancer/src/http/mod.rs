//! HTTP/JSON interface (axum). Handlers turn requests into [`RegistryOp`]s
//! and answers; every error is JSON `{"error", "message"}` with a 4xx/5xx.
//!
//! | method | path | auth | what |
//! |---|---|---|---|
//! | POST | /v1/status | secret | status push ([`StatusPush`]) |
//! | GET | /v1/status/stream | secret | upgrade to a push stream ([`stream`]) |
//! | GET | /v1/zones | | zone list |
//! | GET | /v1/servers[?format=xml] | | every zone, sorted (seed 000) |
//! | GET | /v1/zones/{zone}[?format=xml] | | one zone, sorted |
//! | POST | /v1/zones/{zone}/pick | pick token, if set | least-loaded process, seat reserved; rate-limited per source address and globally |
//! | GET | /v1/processes/{id} | | one process |
//! | POST | /v1/processes/{id}/drain | secret | stop picks to it |
//! | POST | /v1/processes/{id}/undrain | secret | back in service |
//! | DELETE | /v1/processes/{id} | secret | forget it |
//! | GET | /v1/role | | master / standby / candidate, epoch, master address |
//! | POST | /v1/role/switchover | secret | planned handover to the standby |
//! | GET | /healthz | | liveness |
//!
//! On a balancer that is not the master (its hs standby, or one between
//! roles) every mutation (push, pick, drain, undrain, forget) answers 503
//! `not_master` with `"master": "IP:PORT"` when the master is known; reads
//! are served from the replica (at most the replication lag behind).
//! | GET | /metrics | | Prometheus text |

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::api::{
    render_xml, ErrorBody, HsView, PickReply, ProcessView, PushReply, RoleReply, ZoneSummary,
    ZoneView,
};
use crate::metrics::Metrics;
use crate::ratelimit::Refused;
use crate::registry::{validate_process_id, RegistryError, RegistryOp, Status, StatusPush, ZoneId};
use crate::sink::{ApplyError, NotMaster};
use crate::state::{until_stopped, Balancer, PickError};

pub mod stream;

type Shared = State<Arc<Balancer>>;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    retry_after_ms: Option<u64>,
    pub(crate) master: Option<std::net::SocketAddr>,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_ms: None,
            master: None,
        }
    }
}

impl From<NotMaster> for ApiError {
    fn from(e: NotMaster) -> ApiError {
        let mut err = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_master", e.to_string());
        err.master = e.master;
        err.retry_after_ms = Some(1000);
        err
    }
}

impl From<ApplyError> for ApiError {
    fn from(e: ApplyError) -> ApiError {
        match e {
            ApplyError::Registry(r) => r.into(),
            ApplyError::NotMaster(n) => n.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code.to_string(),
            message: self.message,
            master: self.master,
        };
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(ms) = self.retry_after_ms {
            let secs = ms.div_ceil(1000).max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> ApiError {
        let (status, code) = match &e {
            RegistryError::UnknownZone { .. } => (StatusCode::NOT_FOUND, "unknown_zone"),
            RegistryError::UnknownProcess { .. } => (StatusCode::NOT_FOUND, "unknown_process"),
            RegistryError::ZoneMismatch { .. } => (StatusCode::CONFLICT, "zone_mismatch"),
            RegistryError::RegistryFull { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "registry_full")
            }
            RegistryError::NoCapacity { .. } => (StatusCode::SERVICE_UNAVAILABLE, "zone_full"),
            RegistryError::SpawnRejected { .. } => (StatusCode::CONFLICT, "spawn_rejected"),
        };
        let mut err = ApiError::new(status, code, e.to_string());
        if status == StatusCode::SERVICE_UNAVAILABLE {
            err.retry_after_ms = Some(1000);
        }
        err
    }
}

/// Builds the router.
pub fn router(balancer: Arc<Balancer>) -> Router {
    let body_max = balancer.config().request_body_bytes_max;
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/v1/role", get(role))
        .route("/v1/role/switchover", post(switchover))
        .route("/v1/status", post(push))
        .route("/v1/status/stream", get(stream::upgrade))
        .route("/v1/zones", get(zones))
        .route("/v1/servers", get(servers))
        .route("/v1/zones/:zone", get(zone))
        .route("/v1/zones/:zone/pick", post(pick))
        .route("/v1/processes/:id", get(process).delete(forget))
        .route("/v1/processes/:id/drain", post(drain))
        .route("/v1/processes/:id/undrain", post(undrain))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; see the balancer README",
            )
        })
        .layer(DefaultBodyLimit::max(body_max))
        .with_state(balancer)
}

/// Pause after a failed `accept` (e.g. out of file descriptors) before the
/// next, so the loop does not spin.
pub const ACCEPT_ERROR_PAUSE_MS: u64 = 50;
/// A connection refused over `connections_max` is answered 503, then read
/// (and discarded) this long at most before it is closed, so the client
/// reads the answer instead of a reset.
pub const REFUSED_LINGER_MS: u64 = 500;
/// Refused connections lingering at once; past it they are dropped at once
/// (a flood of connects costs no more than this many tasks).
pub const REFUSED_LINGERING_MAX: usize = 64;
/// Bytes of a refused connection's request read and discarded at most.
pub const REFUSED_DRAIN_BYTES_MAX: usize = 64 * 1024;

/// A connection's socket holding its slot of `connections_max`: the slot
/// frees when the socket is dropped, also after an upgrade to a push stream
/// (hyper hands this same socket to the stream).
struct Counted {
    socket: tokio::net::TcpStream,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.socket).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.socket).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.socket).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.socket).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.socket).poll_shutdown(cx)
    }
}

type AxumService = hyper_util::service::TowerToHyperService<Router>;
type Incoming = hyper::Request<hyper::body::Incoming>;
type Timed = hyper::Request<DeadlineBody>;

/// A request body that must arrive whole by a deadline
/// (`request_body_timeout_ms` after its head): a client trickling its body
/// gets an error instead of holding the connection. The timer is set only
/// if the body is not all there at the first read (the usual case is).
pub(crate) struct DeadlineBody {
    inner: hyper::body::Incoming,
    deadline: tokio::time::Instant,
    timeout_ms: u64,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        use std::future::Future as _;
        use std::task::Poll;
        let this = &mut *self;
        if let Poll::Ready(frame) = std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(format!(
                "request body not received within {} ms (request_body_timeout_ms)",
                this.timeout_ms
            )
            .into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The router, with the connection's peer address put into every request
/// (as axum's `ConnectInfo`: picks are rate-limited per source address)
/// and its body under a deadline.
struct WithPeer {
    inner: AxumService,
    peer: SocketAddr,
    body_timeout_ms: u64,
}

impl hyper::service::Service<Incoming> for WithPeer {
    type Response = <AxumService as hyper::service::Service<Timed>>::Response;
    type Error = <AxumService as hyper::service::Service<Timed>>::Error;
    type Future = <AxumService as hyper::service::Service<Timed>>::Future;

    fn call(&self, req: Incoming) -> Self::Future {
        let deadline =
            tokio::time::Instant::now() + std::time::Duration::from_millis(self.body_timeout_ms);
        let mut req = req.map(|inner| DeadlineBody {
            inner,
            deadline,
            timeout_ms: self.body_timeout_ms,
            sleep: None,
        });
        req.extensions_mut().insert(ConnectInfo(self.peer));
        self.inner.call(req)
    }
}

/// Answers a connection over `connections_max` with 503 and closes it.
fn refuse_connection(
    mut socket: tokio::net::TcpStream,
    connections_max: usize,
    lingering: &Arc<tokio::sync::Semaphore>,
) {
    let body = serde_json::to_string(&ErrorBody {
        error: "too_many_connections".into(),
        message: format!(
            "the balancer has {connections_max} connections open (connections_max); retry in a second, reuse one keep-alive connection, or raise connections_max"
        ),
        master: None,
    })
    .expect("an error body serialises");
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let Ok(slot) = lingering.clone().try_acquire_owned() else {
        // Too many refusals lingering: this one gets what fits in the
        // socket buffer (all of it, on a fresh socket) and a close.
        let _ = socket.try_write(answer.as_bytes());
        return;
    };
    tokio::spawn(async move {
        let _slot = slot;
        let linger = async {
            socket.write_all(answer.as_bytes()).await?;
            socket.shutdown().await?;
            // Read what the client sent until it closes, so closing does
            // not reset the connection before it read the answer.
            let mut buf = [0u8; 4096];
            let mut drained = 0;
            while drained < REFUSED_DRAIN_BYTES_MAX {
                match socket.read(&mut buf).await? {
                    0 => break,
                    n => drained += n,
                }
            }
            Ok::<_, std::io::Error>(())
        };
        let _ =
            tokio::time::timeout(std::time::Duration::from_millis(REFUSED_LINGER_MS), linger).await;
    });
}

/// Serves `app` on `listener` until `stop` turns true: HTTP/1.1 keep-alive
/// with `TCP_NODELAY` (an answer is not held back by Nagle's algorithm) and
/// pipelining (answers to pipelined requests leave in one write), upgrades
/// (push streams). At most `connections_max` connections are open (more
/// get 503); a request head must arrive whole within
/// `request_head_timeout_ms` (which also closes keep-alive connections idle
/// that long). On stop, idle connections close and busy ones finish their
/// request.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    stop: tokio::sync::watch::Receiver<bool>,
    balancer: Arc<Balancer>,
) {
    let stopped = until_stopped(stop.clone());
    tokio::pin!(stopped);
    let connections_max = balancer.config().connections_max;
    let slots = Arc::new(tokio::sync::Semaphore::new(connections_max));
    let lingering = Arc::new(tokio::sync::Semaphore::new(REFUSED_LINGERING_MAX));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.keep_alive(true)
        .pipeline_flush(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_millis(
            balancer.config().request_head_timeout_ms,
        ));
    loop {
        let (socket, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed (out of file descriptors? raise ulimit -n)");
                    tokio::time::sleep(std::time::Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)).await;
                    continue;
                }
            },
            _ = &mut stopped => return,
        };
        let _ = socket.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            Metrics::inc(&balancer.metrics.connections_refused);
            tracing::debug!(%peer, connections_max, "connection refused: connections_max open");
            refuse_connection(socket, connections_max, &lingering);
            continue;
        };
        let service = WithPeer {
            inner: hyper_util::service::TowerToHyperService::new(app.clone()),
            peer,
            body_timeout_ms: balancer.config().request_body_timeout_ms,
        };
        let io = Counted {
            socket,
            _slot: slot,
        };
        let conn = http
            .serve_connection(hyper_util::rt::TokioIo::new(io), service)
            .with_upgrades();
        let stop = until_stopped(stop.clone());
        tokio::spawn(async move {
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "http connection ended with an error");
            }
        });
    }
}

/// Checks `Authorization: Bearer <secret>` when a secret is configured.
pub(crate) fn authorize(b: &Balancer, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(secret) = &b.config().secret else {
        return Ok(());
    };
    let given = bearer(headers);
    if constant_time_eq(given.as_bytes(), secret.as_bytes()) {
        Ok(())
    } else {
        Metrics::inc(&b.metrics.unauthorized);
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong secret: send Authorization: Bearer <secret> with the balancer's configured secret",
        ))
    }
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn parse_zone(text: &str) -> Result<ZoneId, ApiError> {
    text.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_zone",
            format!("zone {text:?} is not a number"),
        )
    })
}

fn check_id(id: &str) -> Result<(), ApiError> {
    validate_process_id(id)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_process_id", e.to_string()))
}

async fn push(
    State(b): Shared,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<PushReply>, ApiError> {
    authorize(&b, &headers)?;
    let status = accept_push(&b, &body)?.1;
    Ok(Json(PushReply {
        status: status.code(),
        status_name: status.name().into(),
        draining: status == Status::Draining,
    }))
}

/// One status push, from `POST /v1/status` or a push stream's line: parse,
/// validate, rate-limit, apply. Returns the process id and its status now.
pub(crate) fn accept_push(b: &Balancer, body: &[u8]) -> Result<(String, Status), ApiError> {
    let wire: StatusPush = serde_json::from_slice(body).map_err(|e| {
        Metrics::inc(&b.metrics.pushes_invalid);
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("status push is not valid JSON for this schema: {e}"),
        )
    })?;
    let report = wire.validate().map_err(|e| {
        Metrics::inc(&b.metrics.pushes_invalid);
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_report", e.to_string())
    })?;
    let now_ms = b.now_ms();
    let limited = b.limiter.lock().check(&report.id, now_ms);
    if let Err(refused) = limited {
        Metrics::inc(&b.metrics.pushes_limited);
        let (message, retry_after_ms) = match refused {
            Refused::Limited { retry_after_ms } => (
                format!(
                    "process {:?} pushes faster than {} per second; push once per interval",
                    report.id,
                    b.config().push_rate_per_s
                ),
                retry_after_ms,
            ),
            Refused::TableFull => (
                "too many distinct process ids are pushing at once".to_string(),
                1000,
            ),
        };
        let mut err = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message);
        err.retry_after_ms = Some(retry_after_ms);
        return Err(err);
    }
    let id = report.id.clone();
    let out = b.apply(RegistryOp::Push { now_ms, report })?;
    Metrics::inc(&b.metrics.pushes);
    Ok((id, out.status.unwrap_or(Status::Running)))
}

#[derive(Debug, Deserialize)]
struct FormatQuery {
    format: Option<String>,
}

fn wants_xml(q: &FormatQuery) -> Result<bool, ApiError> {
    match q.format.as_deref() {
        None | Some("json") => Ok(false),
        Some("xml") => Ok(true),
        Some(other) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_format",
            format!("format {other:?}: use json or xml"),
        )),
    }
}

fn xml_response(body: String) -> Response {
    (
        [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn zones(State(b): Shared) -> Json<Vec<ZoneSummary>> {
    Json(b.read(|r| {
        r.zones()
            .map(|z| {
                let s = r.zone_stats(z);
                ZoneSummary {
                    id: z.spec.id,
                    name: z.spec.name.clone(),
                    version: z.spec.version.clone(),
                    size: s.by_status.iter().sum(),
                    running: s.by_status[0],
                    online: s.online,
                    reserved: s.reserved,
                }
            })
            .collect()
    }))
}

async fn servers(State(b): Shared, Query(q): Query<FormatQuery>) -> Result<Response, ApiError> {
    let xml = wants_xml(&q)?;
    let views: Vec<ZoneView> = b.read(|r| r.zones().map(|z| ZoneView::of(r, z)).collect());
    Ok(if xml {
        xml_response(render_xml(&views))
    } else {
        Json(views).into_response()
    })
}

async fn zone(
    State(b): Shared,
    Path(zone): Path<String>,
    Query(q): Query<FormatQuery>,
) -> Result<Response, ApiError> {
    let zone = parse_zone(&zone)?;
    let xml = wants_xml(&q)?;
    let view = b.read(|r| r.zone(zone).map(|z| ZoneView::of(r, z)))?;
    Ok(if xml {
        xml_response(render_xml(std::slice::from_ref(&view)))
    } else {
        Json(view).into_response()
    })
}

/// The bearer token of a request ("" when there is none).
fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

/// Checks a pick's token when `pick_token` is configured; true when the
/// request carries the pick token or the secret (a trusted picker, exempt
/// from the per-source limit).
fn authorize_pick(b: &Balancer, headers: &HeaderMap) -> Result<bool, ApiError> {
    let given = bearer(headers).as_bytes();
    let matches = |t: &Option<String>| {
        t.as_ref()
            .is_some_and(|t| constant_time_eq(given, t.as_bytes()))
    };
    let trusted = matches(&b.config().secret) | matches(&b.config().pick_token);
    if b.config().pick_token.is_some() && !trusted {
        Metrics::inc(&b.metrics.unauthorized);
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "picks need Authorization: Bearer <pick_token> (the balancer's configured pick_token, or its secret)",
        ));
    }
    Ok(trusted)
}

/// Takes a pick token from the source's bucket (unless `trusted`), then
/// from the global one: a pick holds a seat and may spawn a process.
fn limit_pick(b: &Balancer, source: IpAddr, trusted: bool) -> Result<(), ApiError> {
    let now_ms = b.now_ms();
    let c = b.config();
    let refused = if trusted {
        Ok(())
    } else {
        b.pick_sources
            .lock()
            .check(&source, now_ms)
            .map_err(|r| match r {
                Refused::Limited { retry_after_ms } => (
                    format!(
                        "picks from {source} exceed pick_rate_per_s = {} (burst pick_burst = {}); retry after {retry_after_ms} ms (a login server picking for many players should send the pick_token)",
                        c.pick_rate_per_s, c.pick_burst
                    ),
                    retry_after_ms,
                ),
                Refused::TableFull => (
                    format!(
                        "{} source addresses are picking at once (pick_sources_max); retry in a second",
                        c.pick_sources_max
                    ),
                    1000,
                ),
            })
    }
    .and_then(|()| {
        crate::ratelimit::take(&mut b.pick_global.lock(), now_ms).map_err(|r| {
            let retry_after_ms = match r {
                Refused::Limited { retry_after_ms } => retry_after_ms,
                Refused::TableFull => 1000,
            };
            (
                format!(
                    "all picks together exceed pick_global_rate_per_s = {} (burst pick_global_burst = {}): the balancer is under a pick flood; retry after {retry_after_ms} ms",
                    c.pick_global_rate_per_s, c.pick_global_burst
                ),
                retry_after_ms,
            )
        })
    });
    refused.map_err(|(message, retry_after_ms)| {
        Metrics::inc(&b.metrics.picks_limited);
        let mut err = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message);
        err.retry_after_ms = Some(retry_after_ms);
        err
    })
}

async fn pick(
    State(b): Shared,
    headers: HeaderMap,
    peer: Option<ConnectInfo<SocketAddr>>,
    Path(zone): Path<String>,
) -> Result<Json<PickReply>, ApiError> {
    let zone = parse_zone(&zone)?;
    let trusted = authorize_pick(&b, &headers)?;
    let source = peer.map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |p| p.0.ip());
    limit_pick(&b, source, trusted)?;
    match b.pick(zone).await {
        Ok(p) => Ok(Json(PickReply {
            id: p.id,
            host: p.host,
            port: p.port,
            reservation: p.reservation,
            expires_in_ms: p.expires_ms.saturating_sub(b.now_ms()),
        })),
        Err(PickError::NotMaster(e)) => Err(e.into()),
        Err(PickError::Registry { registry, spawn }) => {
            let mut err = ApiError::from(registry);
            if let Some(s) = spawn {
                err.message = format!("{}; no process spawned: {s}", err.message);
            }
            Err(err)
        }
    }
}

async fn process(State(b): Shared, Path(id): Path<String>) -> Result<Json<ProcessView>, ApiError> {
    check_id(&id)?;
    b.read(|r| r.process(&id).map(ProcessView::of))
        .map(Json)
        .ok_or_else(|| RegistryError::UnknownProcess { id }.into())
}

async fn set_drain(
    b: Arc<Balancer>,
    headers: HeaderMap,
    id: String,
    draining: bool,
) -> Result<Json<ProcessView>, ApiError> {
    authorize(&b, &headers)?;
    check_id(&id)?;
    let now_ms = b.now_ms();
    let op = if draining {
        RegistryOp::Drain {
            now_ms,
            id: id.clone(),
        }
    } else {
        RegistryOp::Undrain {
            now_ms,
            id: id.clone(),
        }
    };
    b.apply(op)?;
    tracing::info!(id, draining, "drain flag set by operator");
    confirm_on_standby(&b).await;
    b.read(|r| r.process(&id).map(ProcessView::of))
        .map(Json)
        .ok_or_else(|| RegistryError::UnknownProcess { id }.into())
}

async fn drain(
    State(b): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<ProcessView>, ApiError> {
    set_drain(b, headers, id, true).await
}

async fn undrain(
    State(b): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<ProcessView>, ApiError> {
    set_drain(b, headers, id, false).await
}

async fn forget(
    State(b): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    authorize(&b, &headers)?;
    check_id(&id)?;
    b.apply(RegistryOp::Forget { id })?;
    confirm_on_standby(&b).await;
    Ok(StatusCode::NO_CONTENT)
}

/// How long an operator change (drain, undrain, forget) waits for the
/// connected standby to apply it before it is answered anyway.
pub const STANDBY_CONFIRM_TIMEOUT_MS: u64 = 1_000;
/// How long `POST /v1/role/switchover` waits for the standby to catch up.
pub const SWITCHOVER_TIMEOUT_MS: u64 = 5_000;

/// Operator changes are rare and matter (a drain lost in a failover would
/// send players to a process being restarted): they are answered once the
/// standby, when one is connected, has applied them. Pushes and picks are
/// not waited for (a push repeats every second; a reservation is a hint).
async fn confirm_on_standby(b: &Arc<Balancer>) {
    let Some(sink) = b.hs().cloned() else { return };
    let timeout = std::time::Duration::from_millis(STANDBY_CONFIRM_TIMEOUT_MS);
    let confirmed = tokio::task::spawn_blocking(move || sink.wait_standby(timeout))
        .await
        .unwrap_or(false);
    if !confirmed {
        Metrics::inc(&b.metrics.unconfirmed);
        tracing::warn!(
            timeout_ms = STANDBY_CONFIRM_TIMEOUT_MS,
            "operator change applied on the master but not confirmed by the standby in time; a master death now could lose it"
        );
    }
}

/// `POST /v1/role/switchover`: planned handover to the standby (before an
/// upgrade of this balancer). hs seals the log, waits until the standby has
/// applied everything, and hands over; this balancer continues as standby.
async fn switchover(State(b): Shared, headers: HeaderMap) -> Result<Json<RoleReply>, ApiError> {
    authorize(&b, &headers)?;
    let Some(sink) = b.hs().cloned() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_standby_configured",
            "this balancer runs without [hs]: there is no standby to hand over to",
        ));
    };
    let timeout = std::time::Duration::from_millis(SWITCHOVER_TIMEOUT_MS);
    let result = tokio::task::spawn_blocking(move || sink.with_node(|n| n.switchover(timeout)))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    match result {
        Some(Ok(())) => {
            tracing::info!("switchover done: serving as standby now");
            Ok(role(State(b)).await)
        }
        None => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "hs_restarting",
            "the embedded hs node is restarting; retry in a second",
        )),
        Some(Err(hs::NodeError::NotMaster { .. })) => Err(b.not_master().into()),
        Some(Err(hs::NodeError::NoStandby)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_standby",
            "no standby is connected: start it and wait until GET /v1/role shows standby_connected",
        )),
        Some(Err(hs::NodeError::Timeout(_))) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "switchover_timeout",
            format!("the standby did not apply everything within {SWITCHOVER_TIMEOUT_MS} ms; this balancer stays master, retry when it has caught up"),
        )),
        Some(Err(e)) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "switchover_failed",
            format!("{e}; this balancer stays master"),
        )),
    }
}

async fn role(State(b): Shared) -> Json<RoleReply> {
    let serving = b.is_master();
    let Some(sink) = b.hs() else {
        return Json(RoleReply {
            role: "master".into(),
            serving,
            epoch: 0,
            master: Some(b.advertised()),
            hs: None,
        });
    };
    let node = sink.with_node(|n| (n.role(), n.stats()));
    let role = match node.as_ref().map(|(r, _)| *r) {
        Some(hs::Role::Master) => "master",
        Some(hs::Role::Slave) => "standby",
        _ => "candidate",
    };
    let epoch = node.as_ref().map(|(_, st)| st.epoch).unwrap_or(0);
    let hs = node.map(|(_, st)| HsView {
        written: st.written,
        applied: st.applied,
        acked_applied: st.acked_applied,
        standby_connected: st.slave_connected,
        published: sink.published.load(std::sync::atomic::Ordering::Relaxed),
        publish_failed: sink
            .publish_failed
            .load(std::sync::atomic::Ordering::Relaxed),
        replica_errors: sink
            .replica_errors
            .load(std::sync::atomic::Ordering::Relaxed),
    });
    Json(RoleReply {
        role: role.into(),
        serving,
        epoch,
        master: sink.master_http(),
        hs,
    })
}

async fn metrics(State(b): Shared) -> Response {
    let mut body = b.read(|r| b.metrics.render(r));
    crate::metrics::render_role(
        &mut body,
        b.is_master(),
        b.epoch(),
        b.hs().map(|h| h.as_ref()),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn secret_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
