//! The HTTP edge (axum): the seed's paths, each a client of the actors over
//! the bus like any other. Rotation and rollback go to the Supervisor
//! (0x1001), signing and status to Version Management (0x6001), numbers to
//! Monitoring (0x5000) and Alert (0x5003).
//!
//! Every request passes one middleware: the client's address (see
//! [`crate::trust`]), a rate limit per client, and an access log line
//! (method, path, status, time, client — never a header value, so no token
//! or credential reaches a log). Bodies are capped.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tes_bus::jetstream::CommandStream;
use tes_bus::typed::{self, publish_rejected, CallError};
use tes_bus::{Bus, BusError, NatsBus};
use tes_keyring::Secret;
use tes_proto::command::{
    AlertsQuery, BatchCommand, Bump, Grace, MetricsQuery, Revoke, Rollback, Rotate, Scope,
    SignBatch, Status, VerifyBatch, MAX_BATCH_ITEMS,
};
use tes_proto::reply::{RotationReply, StatusReply};
use tes_proto::thread::colour;
use tes_proto::{
    CommandBody, ContentType, ErrorCode, ErrorReply, KeyVersion, MsgId, ThreadId, Timestamp,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::csrf::Csrf;
use crate::trust::Trusted;

/// The seed's port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3002";
/// The largest body a request may carry.
pub const BODY_LIMIT: usize = 16 * 1024;
/// The largest body of a batch (`/api/sign/batch`, `/api/verify/batch`):
/// up to [`MAX_BATCH_ITEMS`] items of about 1 KiB each.
pub const BATCH_BODY_LIMIT: usize = 1024 * 1024;

pub const CSRF_HEADER: &str = "x-csrf-token";
pub const KEY_VERSION_HEADER: &str = "x-key-version";

#[derive(Clone)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    /// Addresses allowed to rotate and roll back (`TES_PROXY_IPS`).
    pub trusted: Trusted,
    /// The admin credential (`TES_ADMIN_TOKEN[_FILE]`). Without one, the
    /// admin endpoints rely on the trusted address and the CSRF token alone,
    /// and the gateway refuses to listen on anything but loopback.
    pub admin_token: Option<Arc<Secret>>,
    /// Requests per second per client, and the burst allowed.
    pub rate: NonZeroU32,
    pub burst: NonZeroU32,
    pub wire: ContentType,
    pub timeout: Duration,
    /// How the gateway reaches the actors, for the health endpoint.
    pub transport: &'static str,
    pub connected: Arc<dyn Fn() -> bool + Send + Sync>,
    /// On NATS, rotations and rollbacks go through `TES_COMMANDS` (stored
    /// before anything happens, applied once), as from the CLI: a plain
    /// request on those subjects is answered by the stream's receipt.
    pub durable: Option<(CommandStream, NatsBus)>,
}

impl GatewayConfig {
    pub fn new(listen: SocketAddr) -> GatewayConfig {
        GatewayConfig {
            listen,
            trusted: Trusted::default(),
            admin_token: None,
            rate: NonZeroU32::new(20).expect("nonzero"),
            burst: NonZeroU32::new(60).expect("nonzero"),
            wire: ContentType::Json,
            timeout: typed::DEFAULT_TIMEOUT,
            transport: "embedded",
            connected: Arc::new(|| true),
            durable: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("refusing to serve the admin endpoints on {0} without an admin credential: set TES_ADMIN_TOKEN (or TES_ADMIN_TOKEN_FILE), or listen on loopback")]
    NoCredential(SocketAddr),
}

pub(crate) struct App {
    pub bus: Arc<dyn Bus>,
    pub csrf: Csrf,
    pub config: GatewayConfig,
    limiter: DefaultKeyedRateLimiter<IpAddr>,
}

/// A running gateway.
pub struct Gateway {
    pub addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Gateway {
    /// Stops taking connections and lets requests in flight finish (up to 5 s).
    pub async fn stop(self) {
        let _ = self.shutdown.send(());
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

pub async fn start(
    bus: Arc<dyn Bus>,
    csrf: Csrf,
    config: GatewayConfig,
) -> Result<Gateway, GatewayError> {
    if config.admin_token.is_none() && !config.listen.ip().is_loopback() {
        return Err(GatewayError::NoCredential(config.listen));
    }
    if config.admin_token.is_none() {
        tracing::warn!("no admin credential (TES_ADMIN_TOKEN): /admin/rotate and /admin/rollback rely on the trusted address and the CSRF token alone");
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|error| GatewayError::Listen {
            addr: config.listen,
            error,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|error| GatewayError::Listen {
            addr: config.listen,
            error,
        })?;
    let quota = Quota::per_second(config.rate).allow_burst(config.burst);
    let app = Arc::new(App {
        bus,
        csrf,
        config,
        limiter: RateLimiter::keyed(quota),
    });
    let router = Router::new()
        .route("/api/auth/csrf-token", get(csrf_token))
        .route("/admin/rotate", post(rotate))
        .route("/admin/rollback", post(rollback))
        .route("/admin/revoke", post(revoke))
        .route("/admin/grace", post(grace))
        .route("/api/dev/bump-version", post(bump).get(bump_preview))
        .route(
            "/api/sign/batch",
            post(sign_batch).layer(DefaultBodyLimit::max(BATCH_BODY_LIMIT)),
        )
        .route(
            "/api/verify/batch",
            post(verify_batch).layer(DefaultBodyLimit::max(BATCH_BODY_LIMIT)),
        )
        .route("/api/dev/version-ws", get(crate::ws::version_ws))
        .route("/api/dev/version-ws/health", get(health))
        .route("/api/metrics", get(metrics_json))
        .route("/api/alerts", get(alerts_json))
        .route("/api/events", get(crate::console::events))
        .route("/api/signers", get(crate::console::signers))
        .route("/api/audit", get(crate::console::audit))
        .route("/api/audit/verify", post(crate::console::audit_verify))
        .route("/metrics", get(metrics_text))
        .route("/admin", get(crate::page::html))
        .route("/admin/app.js", get(crate::page::js))
        .route("/admin/app.css", get(crate::page::css))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(app.clone(), edge))
        .with_state(app.clone());
    let (shutdown, signal) = oneshot::channel::<()>();
    // The limiter keeps a cell per client address: forget the quiet ones.
    let sweeper = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                every.tick().await;
                app.limiter.retain_recent();
                app.limiter.shrink_to_fit();
            }
        })
    };
    let task = tokio::spawn(async move {
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(error) = axum::serve(listener, service)
            .with_graceful_shutdown(async {
                let _ = signal.await;
            })
            .await
        {
            tracing::error!(%error, "the HTTP gateway stopped");
        }
        sweeper.abort();
    });
    tracing::info!(%addr, "HTTP gateway listening");
    Ok(Gateway {
        addr,
        shutdown,
        task,
    })
}

/// The client's address for a request (after the trusted-proxy rule).
pub(crate) fn client_of(app: &App, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
    app.config.trusted.client(peer.ip(), forwarded)
}

/// Paths outside the rate limit: what orchestrators and Prometheus poll.
const UNLIMITED: [&str; 3] = ["/api/dev/version-ws/health", "/metrics", "/api/metrics"];

/// How long a client that was slowed down should wait, in seconds.
const RETRY_AFTER_SECS: &str = "1";

/// The page loads only from the gateway itself (no CDN), is never framed,
/// and connects back only to its own WebSocket.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self' ws: wss:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Rate limit, HTTP conventions and access log, for every request: a 429
/// says when to come back; an error is RFC 9457 problem+json for a client
/// that accepts JSON (the seed's text line otherwise); every response
/// carries the security headers.
async fn edge(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let client = client_of(&app, peer, request.headers());
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let wants_json = accepts_json(request.headers());
    let started = Instant::now();
    let limited = !UNLIMITED.contains(&path.as_str()) && app.limiter.check_key(&client).is_err();
    let mut response = if limited {
        let mut r = text(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests: slow down",
            colour::REJECTED_ORANGE_RED,
        );
        r.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECS),
        );
        r
    } else {
        next.run(request).await
    };
    if response.status().is_client_error() || response.status().is_server_error() {
        response = conventional_error(response, wants_json, &path).await;
    }
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    tracing::info!(
        target: "tes_gateway::access",
        %method,
        path,
        status = response.status().as_u16(),
        duration_ms = (elapsed * 100.0).round() / 100.0,
        %client,
        "{method} {path} {}",
        response.status().as_u16()
    );
    response
}

/// Whether the client asked for JSON (`Accept: application/json` or
/// `application/problem+json`).
fn accepts_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.split(';').next().unwrap_or("").trim())
        .any(|t| t == "application/json" || t == "application/problem+json")
}

/// An error response as the client expects it: never an empty body; RFC
/// 9457 problem details for a JSON client (the words and colour of the
/// seed's line in `detail` and `hsl`), the seed's text line otherwise.
async fn conventional_error(response: Response, wants_json: bool, path: &str) -> Response {
    let (mut parts, body) = response.into_parts();
    let is_text = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|t| t.starts_with("text/plain"));
    if !is_text {
        // Already structured (a JSON error body of a handler): left alone.
        return Response::from_parts(parts, body);
    }
    let bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let title = parts
        .status
        .canonical_reason()
        .unwrap_or("Error")
        .to_string();
    let mut words = String::from_utf8_lossy(&bytes).trim().to_string();
    if words.is_empty() {
        words = format!("{title} [HSL:{}]", colour::REJECTED_ORANGE_RED);
    }
    if !wants_json {
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        parts.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(parts, axum::body::Body::from(words));
    }
    let (detail, hsl) = match words.rsplit_once(" [HSL:") {
        Some((d, rest)) => (d.to_string(), rest.trim_end_matches(']').to_string()),
        None => (words.clone(), colour::REJECTED_ORANGE_RED.to_string()),
    };
    let problem = json!({
        "type": "about:blank",
        "title": title,
        "status": parts.status.as_u16(),
        "detail": detail,
        "instance": path,
        "hsl": hsl,
    });
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(problem.to_string()))
}

/// The seed's error form: a line of text ending in its colour.
pub(crate) fn text(status: StatusCode, message: &str, hsl: &str) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        format!("{message} [HSL:{hsl}]"),
    )
        .into_response()
}

/// Refuses a security-relevant request: the reply, and a `rejected` event
/// (from the Supervisor's thread: the gateway is its HTTP edge).
pub(crate) async fn refuse(
    app: &App,
    what: &str,
    status: StatusCode,
    message: &str,
    reason: &str,
) -> Response {
    let error = ErrorReply::new(code_for(status), format!("{message}: {reason}"));
    publish_rejected(&*app.bus, ThreadId::Supervisor, what, &error).await;
    text(status, message, error.hsl.as_str())
}

fn code_for(status: StatusCode) -> ErrorCode {
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ErrorCode::Gated,
        _ => ErrorCode::Malformed,
    }
}

/// What a refusal from an actor becomes.
pub(crate) fn from_call(e: CallError) -> Response {
    match e {
        CallError::Refused(r) => {
            let status = match r.code {
                ErrorCode::Malformed | ErrorCode::UnknownVerb | ErrorCode::UnknownVersion => {
                    StatusCode::BAD_REQUEST
                }
                ErrorCode::RetiredVersion
                | ErrorCode::RevokedVersion
                | ErrorCode::NothingToRollBack
                | ErrorCode::Gated
                | ErrorCode::Duplicate
                | ErrorCode::InUse => StatusCode::CONFLICT,
                ErrorCode::MissingKey | ErrorCode::NoNextVersion | ErrorCode::MaterialChanged => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
                ErrorCode::Storage | ErrorCode::Unavailable | ErrorCode::BundleStore => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            };
            text(status, &r.message, &r.hsl)
        }
        CallError::Bus(BusError::NoResponders(subject)) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("nothing answers on {subject}: that actor is not running"),
            colour::REJECTED_ORANGE_RED,
        ),
        // Stored in TES_COMMANDS: it will be applied when the actors are back.
        CallError::Bus(queued @ BusError::Queued { .. }) => text(
            StatusCode::ACCEPTED,
            &queued.to_string(),
            colour::FALLBACK_ORANGE,
        ),
        other => text(
            StatusCode::SERVICE_UNAVAILABLE,
            &other.to_string(),
            colour::REJECTED_ORANGE_RED,
        ),
    }
}

pub(crate) async fn call<C: CommandBody>(
    app: &App,
    thread: ThreadId,
    body: C,
) -> Result<C::Reply, CallError> {
    let envelope = typed::command(thread, body);
    typed::call::<C>(
        &*app.bus,
        thread,
        app.config.wire,
        &envelope,
        app.config.timeout,
    )
    .await
}

/// A rotation or rollback for the Supervisor: durable on NATS.
async fn call_supervisor<C: CommandBody>(app: &App, body: C) -> Result<C::Reply, CallError> {
    let thread = ThreadId::Supervisor;
    match &app.config.durable {
        Some((stream, nats)) => {
            let envelope = typed::command(thread, body);
            stream
                .call::<C>(nats, thread, app.config.wire, &envelope, app.config.timeout)
                .await
        }
        None => call(app, thread, body).await,
    }
}

async fn csrf_token(State(app): State<Arc<App>>) -> Response {
    match app.csrf.issue(Timestamp::now()).await {
        Ok((token, expires)) => Json(json!({"token": token, "expiresAt": expires})).into_response(),
        Err(error) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            &error.to_string(),
            colour::REJECTED_ORANGE_RED,
        ),
    }
}

/// The admin checks, in order: a trusted address, the admin credential,
/// then (spending it) the one-time CSRF token.
async fn admin_guard(
    app: &App,
    what: &str,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<IpAddr, Response> {
    let client = client_of(app, peer, headers);
    if !app.config.trusted.contains(client) {
        return Err(refuse(
            app,
            what,
            StatusCode::FORBIDDEN,
            "Untrusted address",
            &format!("{client} is not in TES_PROXY_IPS"),
        )
        .await);
    }
    if let Some(expected) = &app.config.admin_token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        // Digests first: the comparison takes the same time whatever the length.
        let ok: bool = Sha256::digest(given.as_bytes())
            .ct_eq(&Sha256::digest(expected.expose()))
            .into();
        if !ok {
            let mut r = refuse(
                app,
                what,
                StatusCode::UNAUTHORIZED,
                "Admin credential required",
                "no or a wrong bearer token",
            )
            .await;
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return Err(r);
        }
    }
    let token = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    match app.csrf.spend(token, Timestamp::now()).await {
        Ok(Ok(())) => Ok(client),
        Ok(Err(refusal)) => Err(refuse(
            app,
            what,
            StatusCode::FORBIDDEN,
            "CSRF Invalid",
            refusal.reason(),
        )
        .await),
        Err(error) => Err(text(
            StatusCode::SERVICE_UNAVAILABLE,
            &error.to_string(),
            colour::REJECTED_ORANGE_RED,
        )),
    }
}

fn rotation_body(reply: &RotationReply) -> Response {
    Json(json!({
        "success": reply.success,
        "message": reply.message,
        "keyVersion": reply.key_version.bare(),
        "activeVersion": reply.key_version,
        "from": reply.from,
        "rotationTimestamp": reply.rotation_timestamp,
        "graceUntil": reply.grace_until,
        "forced": reply.forced,
        "seq": reply.seq,
        "hsl": reply.hsl,
    }))
    .into_response()
}

async fn rotate(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let client = match admin_guard(&app, "POST /admin/rotate", peer, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let body = Rotate {
        requested_by: format!("admin-http {client}"),
        ..Rotate::default()
    };
    match call_supervisor(&app, body).await {
        Ok(reply) => rotation_body(&reply),
        Err(CallError::Refused(r)) if r.code == ErrorCode::NoNextVersion => {
            // The seed's words, for whichever version is next.
            let next = match call(&app, ThreadId::VersionManagement, Status::default()).await {
                Ok(s) => s.key_version.map_or(KeyVersion::V1, KeyVersion::next),
                Err(_) => KeyVersion::V1.next(),
            };
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("V{} key not configured", next.get()),
                colour::MISSING_KEY_RED,
            )
        }
        Err(e) => from_call(e),
    }
}

async fn rollback(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let client = match admin_guard(&app, "POST /admin/rollback", peer, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let body = Rollback {
        requested_by: format!("admin-http {client}"),
    };
    match call_supervisor(&app, body).await {
        Ok(reply) => rotation_body(&reply),
        Err(e) => from_call(e),
    }
}

/// A request body as JSON, or a 400 that shows the shape expected.
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8], like: &str) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(text(
            StatusCode::BAD_REQUEST,
            &format!("the body must be JSON like {like}: {e}"),
            colour::REJECTED_ORANGE_RED,
        ))
    })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RevokeBody {
    version: KeyVersion,
    reason: String,
    #[serde(default)]
    force: bool,
}

/// `POST /admin/revoke {"version": "v1", "reason": "…", "force": false}`:
/// the admin checks of a rotation, then the Supervisor.
async fn revoke(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let client = match admin_guard(&app, "POST /admin/revoke", peer, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let parsed: RevokeBody = match json_body(
        &body,
        r#"{"version": "v1", "reason": "leaked"} (and "force": true to revoke the active version with nothing to take over)"#,
    ) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let command = Revoke {
        version: parsed.version,
        reason: parsed.reason,
        requested_by: format!("admin-http {client}"),
        force: parsed.force,
    };
    match call(&app, ThreadId::Supervisor, command).await {
        Ok(reply) => Json(reply).into_response(),
        Err(e) => from_call(e),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GraceBody {
    version: KeyVersion,
    #[serde(default)]
    until: Option<Timestamp>,
    /// A duration as people write it: "1h", "2d".
    #[serde(default)]
    extend: Option<String>,
    #[serde(default)]
    end_now: bool,
}

/// `POST /admin/grace {"version": "v1", "until"|"extend"|"endNow": …}`.
async fn grace(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let client = match admin_guard(&app, "POST /admin/grace", peer, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let bad = |words: String| text(StatusCode::BAD_REQUEST, &words, colour::REJECTED_ORANGE_RED);
    let parsed: GraceBody = match json_body(
        &body,
        r#"{"version": "v1", "extend": "1h"} (or "until": RFC 3339, or "endNow": true)"#,
    ) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let extend_secs = match parsed.extend.as_deref().map(humantime::parse_duration) {
        None => None,
        Some(Ok(d)) => Some(d.as_secs()),
        Some(Err(e)) => return bad(format!("extend: not a duration like \"1h\" ({e})")),
    };
    let command = Grace {
        version: parsed.version,
        until: parsed.until,
        extend_secs,
        end_now: parsed.end_now,
        requested_by: format!("admin-http {client}"),
    };
    match call(&app, ThreadId::Supervisor, command).await {
        Ok(reply) => Json(reply).into_response(),
        Err(e) => from_call(e),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BumpBody {
    scope: Scope,
    #[serde(default)]
    entity: Option<String>,
}

/// The pinned version, if any; the refusal's words if the header is not one.
fn key_version_header(headers: &HeaderMap) -> Result<Option<KeyVersion>, String> {
    match headers.get(KEY_VERSION_HEADER) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<KeyVersion>().ok())
            .map(Some)
            .ok_or_else(|| format!("X-Key-Version {v:?} is not a key version (v1, v2, …)")),
    }
}

async fn bump(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    // A token is not required here (a dev endpoint that signs, like `tes
    // bump`), but one that is sent must be good.
    if let Some(token) = headers.get(CSRF_HEADER) {
        match app.csrf.spend(token.to_str().ok(), Timestamp::now()).await {
            Ok(Ok(())) => {}
            Ok(Err(refusal)) => {
                return refuse(
                    &app,
                    "POST /api/dev/bump-version",
                    StatusCode::FORBIDDEN,
                    "CSRF Invalid",
                    refusal.reason(),
                )
                .await
            }
            Err(error) => {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &error.to_string(),
                    colour::REJECTED_ORANGE_RED,
                )
            }
        }
    }
    let key_version = match key_version_header(&headers) {
        Ok(v) => v,
        Err(words) => return text(StatusCode::BAD_REQUEST, &words, colour::REJECTED_ORANGE_RED),
    };
    let parsed: BumpBody = match json_body(&body, r#"{"scope": "patch"} (patch, minor or major)"#) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let command = Bump {
        entity: parsed
            .entity
            .unwrap_or_else(|| tes_proto::command::DEFAULT_ENTITY.to_string()),
        scope: parsed.scope,
        key_version,
    };
    match call(&app, ThreadId::VersionManagement, command).await {
        Ok(reply) => Json(reply).into_response(),
        Err(e) => from_call(e),
    }
}

/// The batch's id: an `Idempotency-Key` header (a UUID) makes a retried
/// batch get the same results back; without one, each request is new.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<MsgId>, Box<Response>> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| MsgId::parse(v.trim()).ok())
            .map(Some)
            .ok_or_else(|| {
                Box::new(text(
                    StatusCode::BAD_REQUEST,
                    "Idempotency-Key must be a UUID",
                    colour::REJECTED_ORANGE_RED,
                ))
            }),
    }
}

/// A batch's item count, checked before anything is sent.
fn batch_size_ok(n: usize) -> Result<(), Box<Response>> {
    if n == 0 {
        return Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            "the batch holds no items",
            colour::REJECTED_ORANGE_RED,
        )));
    }
    if n > MAX_BATCH_ITEMS {
        return Err(Box::new(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("a batch holds at most {MAX_BATCH_ITEMS} items; this one {n}"),
            colour::REJECTED_ORANGE_RED,
        )));
    }
    Ok(())
}

/// A batch from its HTTP request to Version Management and back: the
/// `Idempotency-Key` as the batch's id (fresh without one), the JSON body
/// (`like` shows its shape in a refusal), the item count checked before
/// anything is sent.
async fn send_batch<B: BatchCommand>(
    app: &App,
    headers: &HeaderMap,
    body: &[u8],
    like: &str,
) -> Response {
    let id = match idempotency_key(headers) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    let batch: B = match json_body(body, like) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    if let Err(r) = batch_size_ok(batch.items().len()) {
        return *r;
    }
    let thread = ThreadId::VersionManagement;
    let mut envelope = typed::command(thread, batch);
    if let Some(id) = id {
        envelope.id = id;
    }
    let called = typed::call::<B>(
        &*app.bus,
        thread,
        app.config.wire,
        &envelope,
        app.config.timeout,
    )
    .await;
    match called {
        Ok(reply) => Json(reply).into_response(),
        Err(e) => from_call(e),
    }
}

/// `POST /api/sign/batch {"items": [{"payload": "…", "keyVersion": "v2"}, …]}`:
/// signing hands out signatures, so it takes the admin checks of a
/// rotation (trusted address, admin token, CSRF token). One result per
/// item, in order; an item that fails fails alone.
async fn sign_batch(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = admin_guard(&app, "POST /api/sign/batch", peer, &headers).await {
        return r;
    }
    send_batch::<SignBatch>(&app, &headers, &body, r#"{"items": [{"payload": "…"}]}"#).await
}

/// `POST /api/verify/batch {"items": [{"payload", "signature", "keyVersion"}, …]}`:
/// open like the bump (verifying hands out nothing), limited per client.
async fn verify_batch(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    send_batch::<VerifyBatch>(
        &app,
        &headers,
        &body,
        r#"{"items": [{"payload": "…", "signature": "…", "keyVersion": "v1"}]}"#,
    )
    .await
}

/// `GET`: what a bump would be signed with, changing nothing.
async fn bump_preview(State(app): State<Arc<App>>) -> Response {
    match call(&app, ThreadId::VersionManagement, Status::default()).await {
        Ok(s) => Json(json!({
            "keyVersion": s.key_version,
            "entities": s.entities,
            "hint": "POST {\"scope\": \"patch\"} (optional X-Key-Version: v1|v2|…) to bump and sign",
        }))
        .into_response(),
        Err(e) => from_call(e),
    }
}

pub(crate) fn health_body(s: &StatusReply, app: &App) -> serde_json::Value {
    json!({
        "keyVersion": s.key_version.map(|v| v.bare()),
        "activeVersion": s.key_version,
        "lastSigVersion": s.last_sig_version,
        "rotationTimestamp": s.rotation_timestamp,
        "previous": s.previous,
        "next": s.next,
        "keys": s.keys,
        "fallbacks": s.fallbacks,
        "headSeq": s.head_seq,
        "bus": {"transport": app.config.transport, "connected": (app.config.connected)()},
    })
}

async fn health(State(app): State<Arc<App>>) -> Response {
    match call(&app, ThreadId::VersionManagement, Status::default()).await {
        Ok(s) => {
            let mut body = health_body(&s, &app);
            // On NATS: the writer (lease holder) and the standbys, each
            // with how far behind the writer's head it is.
            if let Some((_, nats)) = &app.config.durable {
                let asked = tes_bus::lease::deployment(nats.client().clone());
                if let Ok(Ok(d)) = tokio::time::timeout(Duration::from_millis(500), asked).await {
                    body["writer"] = json!(d.writer.map(|w| json!({
                        "holder": w.holder,
                        "leaseExpiresAt": w.expires_at,
                    })));
                    body["standbys"] = json!(d
                        .standbys
                        .iter()
                        .map(|b| json!({
                            "holder": b.holder,
                            "headSeq": b.head_seq,
                            "lag": s.head_seq.saturating_sub(b.head_seq),
                        }))
                        .collect::<Vec<_>>());
                }
            }
            Json(body).into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "keyVersion": null,
                "error": e.to_string(),
                "bus": {"transport": app.config.transport, "connected": (app.config.connected)()},
            })),
        )
            .into_response(),
    }
}

async fn metrics_json(State(app): State<Arc<App>>) -> Response {
    match call(&app, ThreadId::Monitoring, MetricsQuery {}).await {
        Ok(s) => Json(s).into_response(),
        Err(e) => from_call(e),
    }
}

async fn alerts_json(State(app): State<Arc<App>>) -> Response {
    match call(&app, ThreadId::Alert, AlertsQuery {}).await {
        Ok(a) => Json(a).into_response(),
        Err(e) => from_call(e),
    }
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    match call(&app, ThreadId::Monitoring, MetricsQuery {}).await {
        Ok(s) => (
            [(
                header::CONTENT_TYPE,
                tes_telemetry::prometheus::CONTENT_TYPE,
            )],
            tes_telemetry::prometheus::render(Some(&s), None),
        )
            .into_response(),
        Err(e) => from_call(e),
    }
}
