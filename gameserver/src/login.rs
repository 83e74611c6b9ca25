//! The guest login endpoint (accounts come with the login-server issue).
//!
//! `POST /v1/guest` with an optional JSON body `{"name": "..."}` answers
//! `{"player", "name", "token", "expires_ms", "gateway", "ws"}`: a signed
//! guest token ([`crate::token`]) and the gateway to use. With a balancer the
//! gateway is the balancer's least-loaded pick for the zone; without one, the
//! configured gateways in turn.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::proto::msg::NAME_BYTES_MAX;
use crate::token::{mint, now_ms, Claims};

/// A gateway as the login hands it out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayAddr {
    pub tcp: SocketAddr,
    pub ws: Option<SocketAddr>,
}

#[derive(Clone, Debug)]
pub struct LoginConfig {
    pub listen: SocketAddr,
    pub secret: Vec<u8>,
    pub zone: u32,
    /// How long a token is good for, ms.
    pub token_ttl_ms: u64,
    pub gateways: Vec<GatewayAddr>,
    /// The balancer to pick gateways from (they report under `zone`).
    pub balancer: Vec<SocketAddr>,
    /// Requests per second at most (all sources together); over it: 429.
    pub rate_per_s: u64,
}

#[derive(Debug, Default, Deserialize)]
pub struct GuestRequest {
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestReply {
    pub player: u64,
    pub name: String,
    pub token: String,
    pub expires_ms: u64,
    /// TCP address of the gateway.
    pub gateway: String,
    /// WebSocket URL of the gateway, when it has one.
    pub ws: Option<String>,
}

struct LoginState {
    cfg: LoginConfig,
    next: AtomicUsize,
    players: AtomicU64,
    bucket: parking_lot::Mutex<(f64, std::time::Instant)>,
}

type ApiError = (StatusCode, Json<serde_json::Value>);

fn api_error(code: StatusCode, msg: &str) -> ApiError {
    (code, Json(serde_json::json!({ "error": msg })))
}

async fn guest(
    State(s): State<Arc<LoginState>>,
    body: Option<Json<GuestRequest>>,
) -> Result<Json<GuestReply>, ApiError> {
    {
        let mut b = s.bucket.lock();
        let now = std::time::Instant::now();
        let rate = s.cfg.rate_per_s.max(1) as f64;
        b.0 = (b.0 + now.duration_since(b.1).as_secs_f64() * rate).min(rate);
        b.1 = now;
        if b.0 < 1.0 {
            return Err(api_error(
                StatusCode::TOO_MANY_REQUESTS,
                "too many logins; retry in a second",
            ));
        }
        b.0 -= 1.0;
    }
    let n = s.players.fetch_add(1, Ordering::Relaxed);
    // Guest ids: the clock's ms in the high bits keeps them unique across restarts.
    let player = (now_ms() << 16) ^ n;
    let name = body
        .and_then(|Json(b)| b.name)
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| format!("guest{}", player % 100_000));
    if name.len() > NAME_BYTES_MAX {
        return Err(api_error(StatusCode::BAD_REQUEST, "name is over 32 bytes"));
    }
    let gw = pick_gateway(&s).await.ok_or_else(|| {
        api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no gateway is running; retry",
        )
    })?;
    let expires_ms = now_ms() + s.cfg.token_ttl_ms;
    let token = mint(
        &s.cfg.secret,
        &Claims {
            player,
            zone: s.cfg.zone,
            expires_ms,
            name: name.clone(),
            kind: 0,
        },
    );
    Ok(Json(GuestReply {
        player,
        name,
        token,
        expires_ms,
        gateway: gw.tcp.to_string(),
        ws: gw.ws.map(|a| format!("ws://{a}/")),
    }))
}

async fn pick_gateway(s: &LoginState) -> Option<GatewayAddr> {
    if !s.cfg.balancer.is_empty() {
        let mut c = balancer::client::Client::new(s.cfg.balancer.clone());
        match c.pick(s.cfg.zone).await {
            Ok(p) => {
                let tcp = SocketAddr::new(p.host, p.port);
                let known = s.cfg.gateways.iter().find(|g| g.tcp == tcp).cloned();
                return Some(known.unwrap_or(GatewayAddr { tcp, ws: None }));
            }
            Err(e) => {
                tracing::warn!(error = %e, "balancer pick failed; using the configured gateways")
            }
        }
    }
    if s.cfg.gateways.is_empty() {
        return None;
    }
    let i = s.next.fetch_add(1, Ordering::Relaxed) % s.cfg.gateways.len();
    Some(s.cfg.gateways[i].clone())
}

/// Serves the login endpoint on an already bound listener until `stop` resolves.
pub async fn serve(
    cfg: LoginConfig,
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = Arc::new(LoginState {
        bucket: parking_lot::Mutex::new((cfg.rate_per_s as f64, std::time::Instant::now())),
        cfg,
        next: AtomicUsize::new(0),
        players: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/v1/guest", post(guest))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
}
