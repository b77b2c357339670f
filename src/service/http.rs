//! The HTTP face (axum on the process's shared tokio runtime, driven from a thread of its
//! own). Read-only except `POST /api/trigger/<camera>`, which is off unless a token is
//! configured. The address is bound before the station loads its models, so a port in use
//! fails at once. Connections are bounded: at most [`MAX_CONNECTIONS`] open (more are closed
//! on accept), and one silent for [`IDLE_TIMEOUT`] (no request headers, an idle keep-alive)
//! is closed, so silent sockets cannot starve `/healthz` or the image store of descriptors.
//!
//! | route | answers |
//! |---|---|
//! | `GET /` (+ `/static/{dom,app}.js`, `/static/app.css`) | the live page, embedded in the binary |
//! | `GET /healthz` | 200 `ok` while the process serves |
//! | `GET /readyz` | 200, or 503 with the reasons (JSON) |
//! | `GET /metrics` | Prometheus/OpenMetrics text |
//! | `GET /api/cameras` | cameras, their status, counts and latest record |
//! | `GET /api/results?camera=&since=&limit=` | recent records, oldest first |
//! | `GET /latest/<camera>.jpg`, `/latest/<camera>/heatmap.png` | the latest frame and heatmap |
//! | `POST /api/trigger/<camera>` | `Authorization: Bearer <token>`: inspect the next frame |
//! | `GET /api/recipe` | every camera's recipes and the active one |
//! | `PUT /api/recipe` | bearer token; `{camera, recipe}` or `{camera, number}`: switch the recipe |
//!
//! A camera name from a URL is only ever a key into the state's camera map.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use axum::body::Body;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::telemetry::metrics::FrameLabel;
use crate::telemetry::StationState;

/// Default port of `http.bind`.
pub const DEFAULT_PORT: u16 = 9480;
/// Most records one `/api/results` answer carries.
pub const MAX_RESULTS: usize = 1000;
/// `/api/results` without `limit`.
pub const DEFAULT_RESULTS: usize = 100;
/// Shortest trigger token accepted.
pub const MIN_TOKEN_LEN: usize = 16;
/// A connection without a byte in either direction for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most connections open at once.
pub const MAX_CONNECTIONS: usize = 64;

/// A TCP stream closed after `idle` without progress in either direction.
struct IdleStream {
    inner: tokio::net::TcpStream,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    idle: Duration,
    live: Arc<std::sync::atomic::AtomicUsize>,
}

impl IdleStream {
    /// What a read or write of the inner stream returned, seen through the idle timer: progress
    /// re-arms it, and a pending call past it ends the connection.
    fn watch<T>(&mut self, cx: &mut std::task::Context<'_>, r: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.sleep.as_mut().reset(tokio::time::Instant::now() + self.idle);
                Poll::Ready(r)
            }
            Poll::Pending if self.sleep.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "idle connection closed")))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

use std::future::Future as _;
use std::task::Poll;

impl tokio::io::AsyncRead for IdleStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let r = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        this.watch(cx, r)
    }
}

impl tokio::io::AsyncWrite for IdleStream {
    fn poll_write(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let r = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, r)
    }

    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Drop for IdleStream {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The listener with the connection bounds.
struct Bounded {
    listener: tokio::net::TcpListener,
    live: Arc<std::sync::atomic::AtomicUsize>,
    idle: Duration,
}

impl axum::serve::Listener for Bounded {
    type Io = IdleStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (IdleStream, SocketAddr) {
        loop {
            let (stream, addr) = match self.listener.accept().await {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if self.live.load(Ordering::Acquire) >= MAX_CONNECTIONS {
                tracing::warn!(%addr, "HTTP: {MAX_CONNECTIONS} connections open; closing a new one");
                continue;
            }
            self.live.fetch_add(1, Ordering::AcqRel);
            let sleep = Box::pin(tokio::time::sleep(self.idle));
            return (IdleStream { inner: stream, sleep, idle: self.idle, live: self.live.clone() }, addr);
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// An address bound for the HTTP face, not yet serving (bound before the models load).
pub struct BoundHttp {
    listener: std::net::TcpListener,
    settings: HttpSettings,
}

impl BoundHttp {
    pub fn addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }
}

/// The `http:` section of the station config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// `IP:port`; loopback unless the station should be reachable from the network (logged as a warning).
    pub bind: String,
    /// Enables `POST /api/trigger/<camera>` with `Authorization: Bearer <token>`.
    pub trigger_token: Option<String>,
    /// The same, read from a file (trimmed); keeps the secret out of the config.
    pub token_file: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { bind: format!("127.0.0.1:{DEFAULT_PORT}"), trigger_token: None, token_file: None }
    }
}

/// A validated [`HttpConfig`].
#[derive(Clone)]
pub struct HttpSettings {
    pub bind: SocketAddr,
    /// SHA-256 of the trigger token (compared in constant time).
    token_digest: Option<[u8; 32]>,
}

impl std::fmt::Debug for HttpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSettings").field("bind", &self.bind).field("trigger", &self.token_digest.is_some()).finish()
    }
}

impl HttpSettings {
    pub fn triggers_enabled(&self) -> bool {
        self.token_digest.is_some()
    }
}

impl HttpConfig {
    /// Validates the section (errors name the key) and reads the token file.
    pub fn resolve(&self) -> Result<HttpSettings> {
        let bind: SocketAddr = self
            .bind
            .parse()
            .map_err(|_| anyhow!("key `http.bind`: expected IP:port such as 127.0.0.1:{DEFAULT_PORT}, got `{}`", self.bind))?;
        let token = match (&self.trigger_token, &self.token_file) {
            (Some(_), Some(_)) => bail!("keys `http.trigger_token` and `http.token_file`: set one of them, not both"),
            (Some(t), None) => Some(check_token("http.trigger_token", t)?),
            (None, Some(p)) => {
                let t = std::fs::read_to_string(p).with_context(|| format!("key `http.token_file`: cannot read {}", p.display()))?;
                Some(check_token("http.token_file", t.trim())?)
            }
            (None, None) => None,
        };
        Ok(HttpSettings { bind, token_digest: token.map(|t| Sha256::digest(t.as_bytes()).into()) })
    }
}

fn check_token(key: &str, t: &str) -> Result<String> {
    if t.chars().count() < MIN_TOKEN_LEN {
        bail!("key `{key}`: the trigger token must have at least {MIN_TOKEN_LEN} characters");
    }
    if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("key `{key}`: the trigger token must not contain whitespace");
    }
    Ok(t.to_string())
}

/// Equal digests, compared without an early exit.
fn digest_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Why the station is not ready; empty when it is. Read by `/readyz`.
pub fn readiness(state: &StationState, heartbeat_max_age: Duration) -> Vec<String> {
    let mut reasons = Vec::new();
    if !state.ready.load(Ordering::Acquire) {
        reasons.push("models not loaded and warmed up yet".to_string());
    }
    for cam in state.cameras.values() {
        if !cam.triggered && !cam.streaming.load(Ordering::Relaxed) {
            reasons.push(format!("camera `{}` not streaming: {}", cam.name, cam.status.lock().expect("status lock")));
        }
    }
    for (component, reason) in state.degraded() {
        reasons.push(format!("`{component}` degraded: {reason}"));
    }
    for component in state.heartbeats.stale(heartbeat_max_age) {
        reasons.push(format!("`{component}` made no progress for {:.1} s", heartbeat_max_age.as_secs_f64()));
    }
    reasons
}

struct App {
    state: Arc<StationState>,
    settings: HttpSettings,
    heartbeat_max_age: Duration,
}

type Shared = State<Arc<App>>;

/// The running server; [`HttpServer::shutdown`] stops it.
pub struct HttpServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: crossbeam_channel::Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Binds `settings.bind` (a port in use is an error here, before anything loads).
    pub fn bind(settings: HttpSettings) -> Result<BoundHttp> {
        let listener =
            std::net::TcpListener::bind(settings.bind).with_context(|| format!("key `http.bind`: cannot listen on {}", settings.bind))?;
        listener.set_nonblocking(true)?;
        Ok(BoundHttp { listener, settings })
    }

    /// Binds (errors here, not later) and serves on a thread of its own.
    pub fn start(state: Arc<StationState>, settings: HttpSettings, heartbeat_max_age: Duration) -> Result<HttpServer> {
        Self::serve(Self::bind(settings)?, state, heartbeat_max_age)
    }

    /// Serves on an address bound by [`HttpServer::bind`].
    pub fn serve(bound: BoundHttp, state: Arc<StationState>, heartbeat_max_age: Duration) -> Result<HttpServer> {
        Self::serve_with_idle(bound, state, heartbeat_max_age, IDLE_TIMEOUT)
    }

    /// [`HttpServer::serve`] with another idle timeout (tests).
    pub fn serve_with_idle(bound: BoundHttp, state: Arc<StationState>, heartbeat_max_age: Duration, idle: Duration) -> Result<HttpServer> {
        let runtime = crate::asyncrt::runtime();
        let BoundHttp { listener, settings } = bound;
        let listener = {
            let _enter = runtime.enter();
            tokio::net::TcpListener::from_std(listener).context("HTTP listener")?
        };
        let addr = listener.local_addr()?;
        if addr.ip().is_loopback() {
            tracing::info!(%addr, "HTTP on loopback");
        } else {
            tracing::warn!(%addr, "HTTP bound to a non-loopback address: the station is reachable from the network");
        }
        if settings.triggers_enabled() {
            tracing::info!("POST /api/trigger enabled (bearer token)");
        }
        let app = router(Arc::new(App { state, settings, heartbeat_max_age }));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name("glad-http-main".into())
            .spawn(move || {
                let listener = Bounded { listener, live: Arc::new(std::sync::atomic::AtomicUsize::new(0)), idle };
                let served = runtime.block_on(async move {
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async move {
                            let _ = stop_rx.await;
                        })
                        .await
                });
                if let Err(e) = served {
                    tracing::error!("HTTP server: {e}");
                }
                let _ = done_tx.send(());
            })
            .context("spawning the HTTP thread")?;
        Ok(HttpServer { addr, stop: Some(stop_tx), done, thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets open requests finish for at most `timeout`.
    pub fn shutdown(mut self, timeout: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if self.done.recv_timeout(timeout).is_ok() {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        } else {
            tracing::warn!("HTTP connections still open after {:.1} s; leaving them", timeout.as_secs_f64());
        }
    }
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(page_index))
        .route("/static/dom.js", get(page_dom_js))
        .route("/static/app.js", get(page_js))
        .route("/static/app.css", get(page_css))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/cameras", get(cameras))
        .route("/api/results", get(results))
        .route("/latest/{camera}", get(latest_frame))
        .route("/latest/{camera}/heatmap.png", get(latest_heatmap))
        .route("/api/trigger/{camera}", post(trigger))
        .route("/api/recipe", get(recipe_list).put(recipe_put))
        .route("/api/feedback", post(feedback_post).get(feedback_list))
        .route("/api/feedback/{version}", axum::routing::delete(feedback_delete))
        .route("/review", get(page_review))
        .route("/static/review.js", get(page_review_js))
        .route("/api/review", get(review))
        .route("/review/{camera}/{id}", get(review_picture))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .with_state(app)
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "error": msg.into() }))).into_response()
}

const INDEX_HTML: &str = include_str!("static/index.html");
const DOM_JS: &str = include_str!("static/dom.js");
const APP_JS: &str = include_str!("static/app.js");
const APP_CSS: &str = include_str!("static/app.css");
const REVIEW_HTML: &str = include_str!("static/review.html");
const REVIEW_JS: &str = include_str!("static/review.js");
const CSP: &str = "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; connect-src 'self'; \
                   frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        body,
    )
        .into_response()
}

async fn page_index() -> Response {
    static_file("text/html; charset=utf-8", INDEX_HTML)
}

async fn page_dom_js() -> Response {
    static_file("text/javascript; charset=utf-8", DOM_JS)
}

async fn page_js() -> Response {
    static_file("text/javascript; charset=utf-8", APP_JS)
}

async fn page_css() -> Response {
    static_file("text/css; charset=utf-8", APP_CSS)
}

async fn page_review() -> Response {
    static_file("text/html; charset=utf-8", REVIEW_HTML)
}

async fn page_review_js() -> Response {
    static_file("text/javascript; charset=utf-8", REVIEW_JS)
}

/// The review page's data: per camera, the latest NG frames and the drift state.
async fn review(State(app): Shared) -> Response {
    let st = &app.state;
    let cams: Vec<_> = st
        .cameras
        .values()
        .map(|c| {
            let ng: Vec<_> = st
                .recent_ng(&c.name)
                .iter()
                .map(|r| {
                    let rec = r.record.as_ref();
                    let id = format!("{}_{}", rec.run_id, rec.seq);
                    json!({
                        "record": rec,
                        "input": format!("/review/{}/{id}_input.jpg", c.name),
                        "heatmap": r.heatmap.as_ref().map(|_| format!("/review/{}/{id}_heatmap.png", c.name)),
                    })
                })
                .collect();
            json!({ "name": c.name, "drift": st.drift(&c.name), "ng": ng })
        })
        .collect();
    ([(header::CACHE_CONTROL, "no-store")], Json(json!({ "triggers_enabled": app.settings.triggers_enabled(), "cameras": cams })))
        .into_response()
}

/// `/review/<camera>/<run_id>_<seq>_{input.jpg,heatmap.png}`: an NG frame the review ring holds.
async fn review_picture(State(app): Shared, UrlPath((camera, file)): UrlPath<(String, String)>) -> Response {
    let parsed = file
        .strip_suffix("_input.jpg")
        .map(|s| (s, Picture::Frame))
        .or_else(|| file.strip_suffix("_heatmap.png").map(|s| (s, Picture::Heatmap)))
        .and_then(|(s, which)| {
            let (run, seq) = s.rsplit_once('_')?;
            Some((run.to_string(), seq.parse::<u64>().ok()?, which))
        });
    let Some((run_id, seq, which)) = parsed else {
        return error(StatusCode::NOT_FOUND, "expected /review/<camera>/<run_id>_<seq>_input.jpg or _heatmap.png");
    };
    if !app.state.cameras.contains_key(&camera) {
        return error(StatusCode::NOT_FOUND, "unknown camera");
    }
    let Some(r) = app.state.ng_frame(&camera, &run_id, seq) else {
        return error(StatusCode::NOT_FOUND, format!("no NG frame {seq} of run `{run_id}` of `{camera}` is kept"));
    };
    let pic = match which {
        Picture::Frame => r.input.clone(),
        Picture::Heatmap => r.heatmap.clone(),
    };
    match pic {
        Some(img) => encode_picture(seq, img, which).await,
        None => error(StatusCode::NOT_FOUND, "no picture of this kind"),
    }
}

async fn healthz() -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "ok\n").into_response()
}

async fn readyz(State(app): Shared) -> Response {
    let reasons = readiness(&app.state, app.heartbeat_max_age);
    let status = if reasons.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, [(header::CACHE_CONTROL, "no-store")], Json(json!({ "ready": reasons.is_empty(), "reasons": reasons }))).into_response()
}

/// prometheus-client writes the OpenMetrics text format (Prometheus scrapes it as such).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `/metrics` in the Prometheus text format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// OpenMetrics, unless the client asks for something else without naming OpenMetrics
/// (`Accept: text/plain`, `*/*`: curl piped into `promtool`, older scrapers), which get the
/// Prometheus text format.
async fn metrics(State(app): Shared, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !accept.is_empty() && !accept.contains("application/openmetrics-text") {
        return ([(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)], app.state.metrics.render_prometheus()).into_response();
    }
    ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], app.state.metrics.render()).into_response()
}

/// Frames of one camera by verdict label, from the `glad_frames_total` counters.
fn count(state: &StationState, camera: &str, verdict: &str) -> u64 {
    let label = FrameLabel { camera: camera.to_string(), verdict: verdict.to_string() };
    state.metrics.frames.get(&label).map(|c| c.get()).unwrap_or(0)
}

async fn cameras(State(app): Shared) -> Response {
    let st = &app.state;
    let cams: Vec<_> = st
        .cameras
        .values()
        .map(|c| {
            let latest = c.latest.lock().expect("latest lock").clone();
            json!({
                "name": c.name,
                "triggered": c.triggered,
                "streaming": c.streaming.load(Ordering::Relaxed),
                "status": c.status.lock().expect("status lock").to_string(),
                "pending_triggers": st.triggers.pending(&c.name),
                "counts": {
                    "ok": count(st, &c.name, "normal"),
                    "ng": count(st, &c.name, "anomalous"),
                    "none": count(st, &c.name, "none"),
                    "error": count(st, &c.name, "error"),
                },
                "has_frame": latest.as_ref().is_some_and(|l| l.input.is_some()),
                "has_heatmap": latest.as_ref().is_some_and(|l| l.heatmap.is_some()),
                "latest": latest.as_ref().map(|l| l.record.as_ref()),
                "drift": st.drift(&c.name),
                "recipe": st.recipes.view(&c.name),
            })
        })
        .collect();
    let reasons = readiness(st, app.heartbeat_max_age);
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({
            "ready": reasons.is_empty(),
            "reasons": reasons,
            "triggers_enabled": app.settings.triggers_enabled(),
            "glad_version": env!("CARGO_PKG_VERSION"),
            "cameras": cams,
        })),
    )
        .into_response()
}

/// The validated query of `/api/results`.
#[derive(Debug, PartialEq)]
struct ResultsQuery {
    camera: Option<String>,
    since: Option<u64>,
    limit: usize,
}

fn parse_results_query(raw: Option<&str>) -> std::result::Result<ResultsQuery, String> {
    let mut q = ResultsQuery { camera: None, since: None, limit: DEFAULT_RESULTS };
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or("")).map_err(|e| format!("bad query string: {e}"))?;
    let mut seen = BTreeMap::new();
    for (k, v) in pairs {
        if seen.insert(k.clone(), ()).is_some() {
            return Err(format!("query key `{k}` given twice"));
        }
        let v = v.trim();
        match k.as_str() {
            "camera" => q.camera = (!v.is_empty()).then(|| v.to_string()),
            "since" if v.is_empty() => {}
            "since" => q.since = Some(v.parse().map_err(|_| format!("query key `since`: expected a frame sequence number, got `{v}`"))?),
            "limit" if v.is_empty() => {}
            "limit" => {
                q.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_RESULTS).contains(n))
                    .ok_or_else(|| format!("query key `limit`: expected an integer in 1..={MAX_RESULTS}, got `{v}`"))?
            }
            other => return Err(format!("unknown query key `{other}` (known: camera, since, limit)")),
        }
    }
    Ok(q)
}

async fn results(State(app): Shared, RawQuery(raw): RawQuery) -> Response {
    let q = match parse_results_query(raw.as_deref()) {
        Ok(q) => q,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
    };
    if let Some(c) = &q.camera {
        if !app.state.cameras.contains_key(c) {
            return error(StatusCode::NOT_FOUND, format!("unknown camera `{c}`"));
        }
    }
    let records = app.state.recent(q.camera.as_deref(), q.since, q.limit);
    let records: Vec<&crate::sinks::FrameRecord> = records.iter().map(|r| r.as_ref()).collect();
    ([(header::CACHE_CONTROL, "no-store")], Json(json!({ "records": records }))).into_response()
}

#[derive(Clone, Copy)]
enum Picture {
    Frame,
    Heatmap,
}

fn latest_picture(app: &App, camera: &str, which: Picture) -> std::result::Result<(u64, Arc<RgbImage>), String> {
    let Some(cam) = app.state.cameras.get(camera) else {
        return Err("unknown camera".into());
    };
    let latest = cam.latest.lock().expect("latest lock").clone();
    let Some(latest) = latest else {
        return Err(format!("camera `{camera}` has no frame yet"));
    };
    let pic = match which {
        Picture::Frame => latest.input.clone(),
        Picture::Heatmap => latest.heatmap.clone(),
    };
    match pic {
        Some(p) => Ok((latest.record.seq, p)),
        None => Err(format!("the latest frame of `{camera}` has no picture of this kind")),
    }
}

async fn encoded(app: Arc<App>, camera: String, which: Picture) -> Response {
    let (seq, img) = match latest_picture(&app, &camera, which) {
        Ok(p) => p,
        Err(msg) => return error(StatusCode::NOT_FOUND, msg),
    };
    encode_picture(seq, img, which).await
}

async fn encode_picture(seq: u64, img: Arc<RgbImage>, which: Picture) -> Response {
    let encoded = tokio::task::spawn_blocking(move || -> image::ImageResult<Vec<u8>> {
        let mut buf = Vec::new();
        match which {
            Picture::Frame => image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 85).encode_image(img.as_ref())?,
            Picture::Heatmap => img.write_with_encoder(image::codecs::png::PngEncoder::new(&mut buf))?,
        }
        Ok(buf)
    })
    .await;
    match encoded {
        Ok(Ok(bytes)) => {
            let ct = match which {
                Picture::Frame => "image/jpeg",
                Picture::Heatmap => "image/png",
            };
            let mut r = Response::new(Body::from(bytes));
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            h.insert("x-glad-seq", HeaderValue::from(seq));
            r
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding failed: {e}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("encoder task failed: {e}")),
    }
}

async fn latest_frame(State(app): Shared, UrlPath(file): UrlPath<String>) -> Response {
    match file.strip_suffix(".jpg") {
        Some(camera) => encoded(app, camera.to_string(), Picture::Frame).await,
        None => error(StatusCode::NOT_FOUND, "expected /latest/<camera>.jpg or /latest/<camera>/heatmap.png"),
    }
}

async fn latest_heatmap(State(app): Shared, UrlPath(camera): UrlPath<String>) -> Response {
    encoded(app, camera, Picture::Heatmap).await
}

/// The bearer-token check of every write (`None`: allowed).
fn authorize(app: &App, headers: &HeaderMap) -> Option<Response> {
    let Some(expected) = &app.settings.token_digest else {
        return Some(error(StatusCode::FORBIDDEN, "writes over HTTP are off: no `http.trigger_token` or `http.token_file` configured"));
    };
    let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| {
        let (scheme, token) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    let Some(given) = given else {
        let mut r = error(StatusCode::UNAUTHORIZED, "`Authorization: Bearer <token>` required");
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"glad\""));
        return Some(r);
    };
    let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
    if !digest_eq(&digest, expected) {
        tracing::warn!("HTTP write refused: wrong token");
        return Some(error(StatusCode::FORBIDDEN, "wrong token"));
    }
    None
}

/// The body of `POST /api/feedback`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackBody {
    camera: String,
    run_id: String,
    seq: u64,
    /// `good` or `defect`.
    feedback: String,
    /// The defect's folder name (`defect` when absent).
    #[serde(default)]
    label: Option<String>,
}

/// How long an HTTP request waits for the station to apply feedback.
pub const FEEDBACK_TIMEOUT: Duration = Duration::from_secs(150);

async fn ask_station(app: Arc<App>, action: crate::telemetry::feedback::Action) -> Response {
    let answer = tokio::task::spawn_blocking(move || app.state.feedback.submit(action, FEEDBACK_TIMEOUT)).await;
    match answer {
        Ok(Ok(v)) => (StatusCode::OK, [(header::CACHE_CONTROL, "no-store")], Json(v)).into_response(),
        Ok(Err(r)) => error(StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), r.message),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("feedback task failed: {e}")),
    }
}

/// Parses a feedback body into the station's action; errors name the field.
fn parse_feedback(body: &[u8]) -> std::result::Result<crate::telemetry::feedback::Action, String> {
    use crate::telemetry::feedback::{Action, FrameId, Label};
    let b: FeedbackBody =
        serde_json::from_slice(body).map_err(|e| format!("body: expected JSON {{camera, run_id, seq, feedback, label?}}: {e}"))?;
    let label = match (b.feedback.as_str(), b.label) {
        ("good", None) => Label::Good,
        ("good", Some(_)) => return Err("field `label`: only for `feedback: defect`".into()),
        ("defect", l) => {
            let l = l.unwrap_or_else(|| "defect".into());
            crate::station::feedback::check_label(&l)?;
            Label::Defect(l)
        }
        (other, _) => return Err(format!("field `feedback`: expected `good` or `defect`, got `{other}`")),
    };
    Ok(Action::Teach { frame: FrameId { camera: b.camera, run_id: b.run_id, seq: b.seq }, label })
}

async fn feedback_post(State(app): Shared, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Some(refused) = authorize(&app, &headers) {
        return refused;
    }
    match parse_feedback(&body) {
        Ok(action) => ask_station(app, action).await,
        Err(msg) => error(StatusCode::BAD_REQUEST, msg),
    }
}

async fn feedback_list(State(app): Shared) -> Response {
    ask_station(app, crate::telemetry::feedback::Action::List).await
}

async fn feedback_delete(State(app): Shared, UrlPath(version): UrlPath<String>, headers: HeaderMap) -> Response {
    if let Some(refused) = authorize(&app, &headers) {
        return refused;
    }
    match version.parse::<u64>() {
        Ok(version) => ask_station(app, crate::telemetry::feedback::Action::Undo { version }).await,
        Err(_) => {
            error(StatusCode::BAD_REQUEST, format!("path `/api/feedback/<version>`: expected an overlay version number, got `{version}`"))
        }
    }
}

async fn recipe_list(State(app): Shared) -> Response {
    (StatusCode::OK, [(header::CACHE_CONTROL, "no-store")], Json(json!({ "cameras": app.state.recipes.all() }))).into_response()
}

/// The body of `PUT /api/recipe`: the recipe by name or by number (from 1, as the PLC's register).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipeBody {
    camera: String,
    #[serde(default)]
    recipe: Option<String>,
    #[serde(default)]
    number: Option<u64>,
}

async fn recipe_put(State(app): Shared, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    use crate::telemetry::recipe::RecipeError;
    if let Some(refused) = authorize(&app, &headers) {
        return refused;
    }
    let b: RecipeBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: expected JSON {{camera, recipe}} or {{camera, number}}: {e}")),
    };
    if !app.state.cameras.contains_key(&b.camera) {
        return error(StatusCode::NOT_FOUND, format!("field `camera`: unknown camera `{}`", b.camera));
    }
    let r = &app.state.recipes;
    let switched = match (&b.recipe, b.number) {
        (Some(name), None) => r.select(&b.camera, name, "http"),
        (None, Some(n)) => r.select_number(&b.camera, n, "http"),
        _ => return error(StatusCode::BAD_REQUEST, "body: set exactly one of `recipe` (a name) and `number` (from 1)"),
    };
    match switched {
        Ok(view) => {
            (StatusCode::OK, [(header::CACHE_CONTROL, "no-store")], Json(json!({ "camera": b.camera, "recipe": view }))).into_response()
        }
        Err(e @ RecipeError::NoRecipes(_)) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn trigger(State(app): Shared, UrlPath(camera): UrlPath<String>, headers: HeaderMap) -> Response {
    if let Some(refused) = authorize(&app, &headers) {
        return refused;
    }
    let Some(cam) = app.state.cameras.get(&camera) else {
        return error(StatusCode::NOT_FOUND, format!("unknown camera `{camera}`"));
    };
    if !cam.triggered {
        return error(StatusCode::CONFLICT, format!("camera `{camera}` streams continuously (no `trigger: true`)"));
    }
    if let Err(e) = app.state.triggers.fire(&camera) {
        if e.downcast_ref::<crate::telemetry::trigger::TriggerError>().is_some() {
            tracing::warn!(camera = %camera, "trigger refused: queue full");
            return error(StatusCode::TOO_MANY_REQUESTS, e.to_string());
        }
        return error(StatusCode::NOT_FOUND, e.to_string());
    }
    let pending = app.state.triggers.pending(&camera);
    tracing::info!(camera = %camera, pending, "trigger over HTTP");
    (StatusCode::ACCEPTED, Json(json!({ "camera": camera, "pending": pending }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_query_is_validated() {
        assert_eq!(parse_results_query(None).unwrap(), ResultsQuery { camera: None, since: None, limit: DEFAULT_RESULTS });
        assert_eq!(
            parse_results_query(Some("camera=a&since=4&limit=7")).unwrap(),
            ResultsQuery { camera: Some("a".into()), since: Some(4), limit: 7 }
        );
        assert_eq!(parse_results_query(Some("camera=&since=&limit=")).unwrap().limit, DEFAULT_RESULTS);
        for bad in ["limit=0", "limit=1001", "limit=x", "since=-1", "since=1.5", "foo=1", "limit=1&limit=2"] {
            assert!(parse_results_query(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn digests_compare() {
        let a: [u8; 32] = Sha256::digest(b"a-long-enough-token").into();
        let b: [u8; 32] = Sha256::digest(b"a-long-enough-tokem").into();
        assert!(digest_eq(&a, &a) && !digest_eq(&a, &b));
    }
}
