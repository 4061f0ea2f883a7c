//! The query API of a running service process: a small HTTP server (axum on a tokio runtime of
//! its own thread) serving a snapshot that the processing loop replaces from time to time. The
//! loop never waits on a request and a request never sees a half-applied batch.
//!
//! Every answer about the read models is `{"offsets": {"topic/partition": next_offset, ...},
//! "data": ...}` with the same offsets in the `X-Horizon-Offsets` header (`topic/p:offset,...`):
//! the records the answer reflects (every record before those offsets is applied). A request
//! may ask to wait until given offsets are applied (`?min_offsets=topic/p:offset,...` with
//! `timeout_ms`, default 5000): read-your-writes. On timeout: 504 with a JSON error. Errors are
//! JSON `{"error": "..."}`: 404 naming the unknown symbol, interval, portfolio, user or event
//! (or an event asked for `?at=` a time before it existed); 400 naming the malformed parameter.
//! Time travel (`?at=` an RFC 3339 event time) is served by portfolios, positions, risk, bars,
//! the notification feed and events. The routes and shapes are in `openapi.json`
//! (`GET /openapi.json`).
//!
//! With a bearer token (`serve_with_token`, `horizon run --http-token-file`), every route but
//! `/health` and `/ready` (probes, which seldom carry credentials, and which reveal nothing of
//! the read models) requires `Authorization: Bearer <token>`, compared in constant time; else 401
//! with `WWW-Authenticate: Bearer`. A 404 names what was asked for, never the ids that exist.
//!
//! Stalls are judged when asked (`Health`), not when the snapshot was composed: a stage stuck
//! inside one step publishes no new snapshot piece, and must still turn `/ready` to 503.

// Handlers return an error `Response` early (once per request, off the processing loop).
#![allow(clippy::result_large_err)]

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
pub use horizon_core::bus::{format_offsets, parse_offsets};
use horizon_core::event::EventType;
use horizon_core::fixed::Fixed;
use horizon_core::processor::{Stats, Unsettled};
use horizon_core::projections::{Digests, PortfolioLog, ProjectionService, Projections, Views};
use horizon_core::time::Timestamp;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The OpenAPI 3 document of this API.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Bucket bounds of the step latency histogram, in seconds.
pub const LATENCY_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// A cumulative-bucket latency histogram (Prometheus style).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Histogram {
    /// Observations at or under each bound of `LATENCY_BUCKETS`.
    pub buckets: [u64; 12],
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            if s <= *b {
                self.buckets[i] += 1;
            }
        }
        self.count += 1;
        self.sum_seconds += s;
    }
}

/// How each stage of the process is progressing, written by the stage threads and read live by
/// `/ready`, `/metrics` and `/stats`.
#[derive(Debug)]
pub struct Health {
    /// No progress for longer than this while work is waiting is a stall (`--stall-after`).
    pub stall_after: Duration,
    stages: Vec<(String, Mutex<StageHealth>)>,
}

#[derive(Clone, Debug)]
pub struct StageHealth {
    /// The last step that handled records, settled pending work, or found nothing to do.
    pub last_progress: Instant,
    /// When the step now running started (none between steps).
    pub in_step_since: Option<Instant>,
    /// Work waits: the last step was refused with outputs or commits pending, or input is known
    /// to be waiting.
    pub waiting: bool,
    /// Why the last step was refused.
    pub last_error: Option<String>,
    pub unsettled: Unsettled,
}

/// A stage that is not making progress, as `/ready` and `/stats` name it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stalled {
    pub stage: String,
    pub stalled_for_ms: u64,
    pub last_error: Option<String>,
    pub unsettled: Unsettled,
}

impl Health {
    pub fn new(stall_after: Duration, stages: impl IntoIterator<Item = String>) -> Health {
        let now = Instant::now();
        let fresh = StageHealth {
            last_progress: now,
            in_step_since: None,
            waiting: false,
            last_error: None,
            unsettled: Unsettled::default(),
        };
        Health {
            stall_after,
            stages: stages.into_iter().map(|n| (n, Mutex::new(fresh.clone()))).collect(),
        }
    }

    /// Changes the health of stage number `index` (in the order given to `new`).
    pub fn update(&self, index: usize, change: impl FnOnce(&mut StageHealth)) {
        if let Some((_, h)) = self.stages.get(index) {
            change(&mut h.lock().unwrap_or_else(|p| p.into_inner()));
        }
    }

    /// Every stage's health as of now, with how long it has been stalled (none if it is not).
    pub fn judge(&self, now: Instant) -> Vec<(&str, StageHealth, Option<Duration>)> {
        self.stages
            .iter()
            .map(|(name, h)| {
                let h = h.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let idle_for = now.saturating_duration_since(h.last_progress);
                // A step running past the bound is blocked (an idle poll returns in 100 ms), so
                // it counts as waiting work even though it has not reported yet.
                let blocked = h.in_step_since.is_some_and(|t| now.saturating_duration_since(t) > self.stall_after);
                let stalled = (h.waiting || blocked) && idle_for > self.stall_after;
                (name.as_str(), h, stalled.then_some(idle_for))
            })
            .collect()
    }

    /// The stalled stages as of now.
    pub fn stalled(&self, now: Instant) -> Vec<Stalled> {
        self.judge(now)
            .into_iter()
            .filter_map(|(stage, h, stalled)| {
                stalled.map(|d| Stalled {
                    stage: stage.to_string(),
                    stalled_for_ms: d.as_millis() as u64,
                    last_error: h.last_error,
                    unsettled: h.unsettled,
                })
            })
            .collect()
    }
}

/// The stalled stages of a snapshot's process, as of now.
fn stalled_now(snap: &Snapshot) -> Vec<Stalled> {
    snap.health.as_ref().map(|h| h.stalled(Instant::now())).unwrap_or_default()
}

/// What the loop publishes for queries.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Snapshot {
    /// The stages this process runs.
    pub stages: Vec<String>,
    /// Present when this process runs the projections stage.
    pub digests: Option<Digests>,
    #[serde(skip)]
    pub views: Option<Views>,
    /// The projection state itself (bars, the audit trail, full history for `?at=`).
    #[serde(skip)]
    pub projections: Option<Arc<Projections>>,
    /// Starting cash per portfolio (for views as of a past time).
    #[serde(skip)]
    pub initial_cash: BTreeMap<String, Fixed>,
    /// Distinct events the projections applied, by type.
    pub events_by_type: BTreeMap<EventType, u64>,
    pub events: u64,
    pub stats: BTreeMap<String, Stats>,
    /// Next offset applied per assigned projections partition ("topic/partition").
    pub offsets: BTreeMap<String, u64>,
    /// Records between the applied offset and the end, per assigned projections partition.
    pub lag: BTreeMap<String, u64>,
    /// Every assigned partition restored and caught up (within the configured lag).
    pub ready: bool,
    /// Duration of record-handling steps per stage.
    pub latency: BTreeMap<String, Histogram>,
    pub retries: BTreeMap<String, u64>,
    pub delivery: Option<crate::notify::DeliveryCounters>,
    /// The notify sink's circuit breaker (`Closed`, `Open`, `HalfOpen`).
    pub breaker: Option<String>,
    /// Wall-clock time of the snapshot (milliseconds since the Unix epoch).
    pub taken_at_ms: u64,
    /// The stages' progress, live (not as of `taken_at_ms`).
    #[serde(skip)]
    pub health: Option<Arc<Health>>,
}

/// The latest snapshot, shared between the loop (writer) and the server (readers).
#[derive(Clone, Default)]
pub struct SharedSnapshot(Arc<RwLock<Arc<Snapshot>>>);

impl SharedSnapshot {
    pub fn get(&self) -> Arc<Snapshot> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, s: Snapshot) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(s);
    }
}

/// What the deployment is configured with: names a query may use.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pub symbols: Vec<String>,
    pub intervals: Vec<String>,
    pub users: Vec<String>,
    pub portfolios: Vec<String>,
}

impl Catalog {
    pub fn from_scenario(s: &horizon_core::scenario::Scenario) -> Catalog {
        Catalog {
            symbols: s.market.symbols.iter().map(|x| x.symbol.clone()).collect(),
            intervals: s.market.bar_intervals.clone(),
            users: s.users.iter().map(|u| u.id.clone()).collect(),
            portfolios: vec![s.portfolio.id.clone()],
        }
    }
}

#[derive(Clone)]
struct AppState {
    shared: SharedSnapshot,
    catalog: Arc<Catalog>,
}

/// A running server; it stops with the process.
pub struct ApiServer {
    pub addr: SocketAddr,
    /// Whether requests need the bearer token.
    pub token_required: bool,
}

/// Binds `addr` (port 0 picks a free one) and serves `shared` on a thread of its own, open to
/// anyone who can reach it.
pub fn serve(addr: &str, shared: SharedSnapshot, catalog: Catalog) -> Result<ApiServer, String> {
    serve_with_token(addr, shared, catalog, None)
}

/// Routes served without the token.
pub const OPEN_ROUTES: [&str; 2] = ["/health", "/ready"];

/// The token in a file (surrounding whitespace, such as the final newline, is not part of it).
pub fn read_token_file(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("--http-token-file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("--http-token-file {}: the file is empty", path.display()));
    }
    Ok(token.to_string())
}

/// What to warn about when the API is bound where other hosts reach it without a token.
pub fn exposure_warning(bound: SocketAddr, token_required: bool) -> Option<String> {
    (!token_required && !bound.ip().is_loopback())
        .then(|| format!("the query API on {bound} is reachable from other hosts and needs no token (--http-token-file)"))
}

async fn require_token(State(token): State<Arc<str>>, request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use subtle::ConstantTimeEq as _;
    if OPEN_ROUTES.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if bool::from(t.trim().as_bytes().ct_eq(token.as_bytes())) => next.run(request).await,
        _ => {
            let (message, challenge) = match given {
                Some(_) => (
                    "the bearer token is not the API's",
                    r#"Bearer realm="horizon", error="invalid_token""#,
                ),
                None => ("this route needs `Authorization: Bearer <token>`", r#"Bearer realm="horizon""#),
            };
            let mut r = error(StatusCode::UNAUTHORIZED, message);
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
            r
        }
    }
}

/// As `serve`; with `token`, every route but `OPEN_ROUTES` requires it.
pub fn serve_with_token(addr: &str, shared: SharedSnapshot, catalog: Catalog, token: Option<String>) -> Result<ApiServer, String> {
    let listener = std::net::TcpListener::bind(addr).map_err(|e| format!("--http {addr}: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let token_required = token.is_some();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| format!("query API runtime: {e}"))?;
    std::thread::Builder::new()
        .name("horizon-api".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("horizon: query API: {e}");
                        return;
                    }
                };
                let mut app = router(shared, catalog);
                if let Some(token) = token {
                    app = app.layer(axum::middleware::from_fn_with_state(Arc::<str>::from(token), require_token));
                }
                if let Err(e) = axum::serve(listener, app).await {
                    eprintln!("horizon: query API stopped: {e}");
                }
            })
        })
        .map_err(|e| e.to_string())?;
    Ok(ApiServer {
        addr: bound,
        token_required,
    })
}

/// The routes served (also checked against `openapi.json` by the tests).
pub const ROUTES: [&str; 15] = [
    "/health",
    "/ready",
    "/metrics",
    "/openapi.json",
    "/digest",
    "/projections",
    "/stats",
    "/portfolios",
    "/portfolios/{portfolio_id}",
    "/portfolios/{portfolio_id}/positions",
    "/portfolios/{portfolio_id}/risk",
    "/bars/{symbol}/{interval}",
    "/users/{user_id}/notifications",
    "/events/{event_id}",
    "/offsets",
];

pub fn router(shared: SharedSnapshot, catalog: Catalog) -> Router {
    let state = AppState {
        shared,
        catalog: Arc::new(catalog),
    };
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route("/digest", get(digest))
        .route("/projections", get(projections))
        .route("/stats", get(stats))
        .route("/offsets", get(offsets))
        .route("/portfolios", get(portfolios))
        .route("/portfolios/{portfolio_id}", get(portfolio))
        .route("/portfolios/{portfolio_id}/positions", get(positions))
        .route("/portfolios/{portfolio_id}/risk", get(risk))
        .route("/bars/{symbol}/{interval}", get(bars))
        .route("/users/{user_id}/notifications", get(notifications))
        .route("/events/{event_id}", get(event))
        .fallback(
            |uri: axum::http::Uri| async move { error(StatusCode::NOT_FOUND, format!("no route `{}` (see /openapi.json)", uri.path())) },
        )
        .with_state(state)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into(), "status": status.as_u16()}))).into_response()
}

fn bad_param(name: &str, why: impl std::fmt::Display) -> Response {
    error(StatusCode::BAD_REQUEST, format!("query parameter `{name}`: {why}"))
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// `a=1&b=2` into a map; a repeated or undecodable parameter is a 400 naming it.
fn parse_query(raw: &str) -> Result<HashMap<String, String>, Response> {
    let mut out = HashMap::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(k).ok_or_else(|| bad_param(k, "not valid percent-encoded UTF-8"))?;
        let v = percent_decode(v).ok_or_else(|| bad_param(&k, "value is not valid percent-encoded UTF-8"))?;
        if out.insert(k.clone(), v).is_some() {
            return Err(bad_param(&k, "given more than once"));
        }
    }
    Ok(out)
}

/// The query parameters a route accepts, checked: an unknown one is a 400 naming it.
struct Params(HashMap<String, String>);

impl Params {
    fn check(raw: Option<String>, allowed: &[&str]) -> Result<Params, Response> {
        let q = parse_query(raw.as_deref().unwrap_or(""))?;
        let mut names: Vec<&String> = q.keys().collect();
        names.sort();
        for k in names {
            if !allowed.contains(&k.as_str()) && !["min_offsets", "timeout_ms"].contains(&k.as_str()) {
                return Err(bad_param(
                    k,
                    format!(
                        "unknown parameter (accepted here: {})",
                        [allowed, &["min_offsets", "timeout_ms"]].concat().join(", ")
                    ),
                ));
            }
        }
        Ok(Params(q))
    }

    fn usize(&self, name: &str) -> Result<Option<usize>, Response> {
        self.0
            .get(name)
            .map(|v| {
                v.parse::<usize>()
                    .map_err(|_| bad_param(name, format!("`{v}` is not a non-negative integer")))
            })
            .transpose()
    }

    fn bool(&self, name: &str) -> Result<bool, Response> {
        match self.0.get(name).map(String::as_str) {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") | Some("") => Ok(true),
            Some(v) => Err(bad_param(name, format!("`{v}` is not true or false"))),
        }
    }

    fn at(&self) -> Result<Option<Timestamp>, Response> {
        self.0
            .get("at")
            .map(|v| Timestamp::parse_rfc3339(v).ok_or_else(|| bad_param("at", format!("`{v}` is not an RFC 3339 time"))))
            .transpose()
    }

    /// Waits (read-your-writes) until the snapshot covers `min_offsets`, if asked.
    async fn snapshot(&self, shared: &SharedSnapshot) -> Result<Arc<Snapshot>, Response> {
        let timeout_ms = match self.0.get("timeout_ms") {
            None => 5000,
            Some(v) => match v.parse::<u64>() {
                Ok(t) if t <= 60_000 => t,
                _ => {
                    return Err(bad_param(
                        "timeout_ms",
                        format!("`{v}` is not a number of milliseconds in 0..=60000"),
                    ))
                }
            },
        };
        let Some(text) = self.0.get("min_offsets") else {
            return Ok(shared.get());
        };
        let want = parse_offsets(text).map_err(|why| bad_param("min_offsets", why))?;
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            let snap = shared.get();
            let missing: BTreeMap<&String, u64> = want
                .iter()
                .filter(|(tp, o)| snap.offsets.get(*tp).is_none_or(|have| have < *o))
                .map(|(tp, o)| (tp, *o))
                .collect();
            if missing.is_empty() {
                return Ok(snap);
            }
            if Instant::now() >= deadline {
                let mut r = (
                    StatusCode::GATEWAY_TIMEOUT,
                    Json(json!({
                        "error": format!("min_offsets not applied within {timeout_ms} ms"),
                        "status": 504,
                        "waiting_for": missing,
                        "offsets": snap.offsets,
                    })),
                )
                    .into_response();
                set_offsets_header(&mut r, &snap.offsets);
                return Err(r);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn set_offsets_header(r: &mut Response, offsets: &BTreeMap<String, u64>) {
    if let Ok(v) = HeaderValue::from_str(&format_offsets(offsets)) {
        r.headers_mut().insert("x-horizon-offsets", v);
    }
}

/// The envelope of a read-model answer: data plus the offsets it reflects.
fn answer(snap: &Snapshot, data: Value) -> Response {
    let mut r = Json(json!({"offsets": snap.offsets, "taken_at_ms": snap.taken_at_ms, "data": data})).into_response();
    set_offsets_header(&mut r, &snap.offsets);
    r
}

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(r) => return r,
        }
    };
}

fn no_projections() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "this process does not run the projections stage (--services ...,projections)",
    )
}

fn state_of(snap: &Snapshot) -> Result<&Projections, Response> {
    snap.projections.as_deref().ok_or_else(no_projections)
}

/// The projection state as of event time `t`: every event with an event time at or before it
/// (bars by their end, rows by their event time).
pub fn as_of(p: &Projections, t: Timestamp) -> Projections {
    let bars = p
        .bars
        .iter()
        .map(|(s, m)| {
            let m = m
                .iter()
                .map(|(i, b)| {
                    (
                        i.clone(),
                        b.iter().filter(|(_, bar)| bar.end() <= t).map(|(k, v)| (*k, v.clone())).collect(),
                    )
                })
                .collect();
            (s.clone(), m)
        })
        .collect();
    let portfolios = p
        .portfolios
        .iter()
        .map(|(pid, log)| {
            let log = PortfolioLog {
                rebalances: log
                    .rebalances
                    .iter()
                    .filter(|(_, (ts, _))| *ts <= t)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                closes: log.closes.range(..=t).map(|(k, v)| (*k, v.clone())).collect(),
                signals_changed: log
                    .signals_changed
                    .iter()
                    .map(|(s, rows)| (s.clone(), rows.range(..=t).map(|(k, v)| (*k, v.clone())).collect()))
                    .collect(),
            };
            (pid.clone(), log)
        })
        .collect();
    let risk = p
        .risk
        .iter()
        .map(|(pid, rows)| {
            (
                pid.clone(),
                rows.iter()
                    .filter(|(_, (ts, _))| *ts <= t)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            )
        })
        .collect();
    Projections {
        bars,
        portfolios,
        risk,
        notifications: BTreeMap::new(),
        audit: Default::default(),
        events_by_type: BTreeMap::new(),
    }
}

/// The views, now or as of `at`.
fn views_at(snap: &Snapshot, at: Option<Timestamp>) -> Result<Views, Response> {
    match at {
        None => snap.views.clone().ok_or_else(no_projections),
        Some(t) => {
            let p = as_of(state_of(snap)?, t);
            Ok(ProjectionService {
                initial_cash: snap.initial_cash.clone(),
            }
            .views(&p))
        }
    }
}

async fn ready(State(s): State<AppState>) -> Response {
    let snap = s.shared.get();
    let stalled = stalled_now(&snap);
    let ready = snap.ready && stalled.is_empty();
    let body = json!({"ready": ready, "offsets": snap.offsets, "lag": snap.lag, "stalled": stalled});
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let mut r = (status, Json(body)).into_response();
    set_offsets_header(&mut r, &snap.offsets);
    r
}

async fn offsets(State(s): State<AppState>, RawQuery(q): RawQuery) -> Response {
    let p = tri!(Params::check(q, &[]));
    let snap = tri!(p.snapshot(&s.shared).await);
    answer(&snap, json!({"offsets": snap.offsets, "lag": snap.lag, "ready": snap.ready}))
}

async fn digest(State(s): State<AppState>, RawQuery(q): RawQuery) -> Response {
    let p = tri!(Params::check(q, &[]));
    let snap = tri!(p.snapshot(&s.shared).await);
    if snap.digests.is_none() {
        return no_projections();
    }
    let mut r = Json(json!({
        "stages": snap.stages,
        "digests": snap.digests,
        "events": snap.events,
        "events_by_type": snap.events_by_type,
        "offsets": snap.offsets,
        "taken_at_ms": snap.taken_at_ms,
    }))
    .into_response();
    set_offsets_header(&mut r, &snap.offsets);
    r
}

async fn projections(State(s): State<AppState>, RawQuery(q): RawQuery) -> Response {
    let p = tri!(Params::check(q, &[]));
    let snap = tri!(p.snapshot(&s.shared).await);
    match &snap.views {
        Some(v) => answer(&snap, serde_json::to_value(v).unwrap_or(Value::Null)),
        None => no_projections(),
    }
}

async fn stats(State(s): State<AppState>) -> Response {
    let snap = s.shared.get();
    let mut r =
        Json(json!({"stats": snap.stats, "retries": snap.retries, "delivery": snap.delivery, "breaker": snap.breaker, "stalled": stalled_now(&snap)})).into_response();
    set_offsets_header(&mut r, &snap.offsets);
    r
}

async fn portfolios(State(s): State<AppState>, RawQuery(q): RawQuery) -> Response {
    let p = tri!(Params::check(q, &[]));
    let snap = tri!(p.snapshot(&s.shared).await);
    let views = tri!(views_at(&snap, None));
    answer(&snap, json!(views.portfolios.keys().collect::<Vec<_>>()))
}

/// A 404 for an unknown id: names the id asked for, never the ones that exist (a caller
/// could otherwise enumerate portfolios, users and symbols).
fn unknown(what: &str, id: &str) -> Response {
    error(StatusCode::NOT_FOUND, format!("unknown {what} `{id}`"))
}

async fn portfolio(State(s): State<AppState>, Path(id): Path<String>, RawQuery(q): RawQuery) -> Response {
    let p = tri!(Params::check(q, &["at", "series"]));
    let at = tri!(p.at());
    let series = tri!(p.bool("series"));
    let snap = tri!(p.snapshot(&s.shared).await);
    let views = tri!(views_at(&snap, at));
    let Some(v) = views.portfolios.get(&id) else {
        return unknown("portfolio", &id);
    };
    let mut data = serde_json::to_value(v).unwrap_or(Value::Null);
    if !series {
        data.as_object_mut().map(|o| o.remove("series"));
    }
    answer(&snap, data)
}

async fn positions(State(s): State<AppState>, Path(id): Path<String>, RawQuery(q): RawQuery) -> Response {
    let p = tri!(Params::check(q, &["at"]));
    let at = tri!(p.at());
    let snap = tri!(p.snapshot(&s.shared).await);
    let views = tri!(views_at(&snap, at));
    match views.portfolios.get(&id) {
        Some(v) => answer(&snap, serde_json::to_value(&v.positions).unwrap_or(Value::Null)),
        None => unknown("portfolio", &id),
    }
}

async fn risk(State(s): State<AppState>, Path(id): Path<String>, RawQuery(q): RawQuery) -> Response {
    let p = tri!(Params::check(q, &["at"]));
    let at = tri!(p.at());
    let snap = tri!(p.snapshot(&s.shared).await);
    let views = tri!(views_at(&snap, at));
    if !views.portfolios.contains_key(&id) && !views.risk.contains_key(&id) {
        return unknown("portfolio", &id);
    }
    let dash = views
        .risk
        .get(&id)
        .cloned()
        .unwrap_or(horizon_core::projections::risk_dashboard(&BTreeMap::new()));
    answer(&snap, serde_json::to_value(dash).unwrap_or(Value::Null))
}

async fn bars(State(s): State<AppState>, Path((symbol, interval)): Path<(String, String)>, RawQuery(q): RawQuery) -> Response {
    let p = tri!(Params::check(q, &["at", "last"]));
    let at = tri!(p.at());
    let last = tri!(p.usize("last"));
    let snap = tri!(p.snapshot(&s.shared).await);
    let state = tri!(state_of(&snap));
    let known_symbols: BTreeSet<&String> = s.catalog.symbols.iter().chain(state.bars.keys()).collect();
    if !known_symbols.contains(&symbol) {
        return unknown("symbol", &symbol);
    }
    let series = state.bars.get(&symbol);
    let known_intervals: BTreeSet<&String> = s
        .catalog
        .intervals
        .iter()
        .chain(series.into_iter().flat_map(|m| m.keys()))
        .collect();
    if !known_intervals.contains(&interval) {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "unknown interval `{interval}` for `{symbol}` (known: {})",
                known_intervals.into_iter().cloned().collect::<Vec<_>>().join(", ")
            ),
        );
    }
    let rows: Vec<&horizon_core::event::Bar> = series
        .and_then(|m| m.get(&interval))
        .map(|b| b.values().filter(|bar| at.is_none_or(|t| bar.end() <= t)).collect())
        .unwrap_or_default();
    let skip = last.map(|n| rows.len().saturating_sub(n)).unwrap_or(0);
    answer(&snap, serde_json::to_value(&rows[skip..]).unwrap_or(Value::Null))
}

async fn notifications(State(s): State<AppState>, Path(user): Path<String>, RawQuery(q): RawQuery) -> Response {
    let p = tri!(Params::check(q, &["at", "last"]));
    let at = tri!(p.at());
    let last = tri!(p.usize("last"));
    let snap = tri!(p.snapshot(&s.shared).await);
    let Some(views) = &snap.views else { return no_projections() };
    let feed = views.notifications.get(&user);
    if feed.is_none() && !s.catalog.users.contains(&user) {
        return unknown("user", &user);
    }
    // As of `at`: the notifications with an event time at or before it (the feed is in time order).
    let rows: Vec<Value> = feed
        .map(|f| {
            f.iter()
                .filter(|(ts, _)| at.is_none_or(|t| *ts <= t))
                .map(|(ts, n)| json!({"ts": ts, "notification": n}))
                .collect()
        })
        .unwrap_or_default();
    let skip = last.map(|n| rows.len().saturating_sub(n)).unwrap_or(0);
    answer(&snap, Value::Array(rows[skip..].to_vec()))
}

async fn event(State(s): State<AppState>, Path(id): Path<String>, RawQuery(q): RawQuery) -> Response {
    let p = tri!(Params::check(q, &["at"]));
    let at = tri!(p.at());
    let snap = tri!(p.snapshot(&s.shared).await);
    let state = tri!(state_of(&snap));
    let chain = state.causation_chain(&id);
    if chain.is_empty() {
        return unknown("event", &id);
    }
    if let Some(t) = at {
        // The event as known at `t`: it exists from its event time on, as in every other `?at=`
        // view. Its causation chain is given whole: a cause may carry a later event time than
        // its effect (a bar is stamped with its end but closed by the first trade after it).
        let ts = chain[0].1.ts;
        if ts > t {
            return error(
                StatusCode::NOT_FOUND,
                format!(
                    "event `{id}` did not exist yet at {} (its event time is {})",
                    t.to_rfc3339_nanos(),
                    ts.to_rfc3339_nanos()
                ),
            );
        }
    }
    let chain: Vec<Value> = chain.into_iter().map(|(id, entry)| json!({"id": id, "entry": entry})).collect();
    answer(
        &snap,
        json!({"id": id, "event": chain[0]["entry"].clone(), "causation_chain": chain}),
    )
}

/// Prometheus text exposition format (0.0.4).
async fn metrics(State(s): State<AppState>) -> Response {
    let snap = s.shared.get();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], render_metrics(&snap)).into_response()
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

pub fn render_metrics(snap: &Snapshot) -> String {
    let mut o = String::new();
    let family = |o: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family(
        &mut o,
        "horizon_ready",
        "gauge",
        "1 when every assigned projections partition is restored and caught up",
    );
    let _ = writeln!(o, "horizon_ready {}", u8::from(snap.ready));
    family(
        &mut o,
        "horizon_consumer_lag",
        "gauge",
        "Records between the projections' applied offset and the partition's end",
    );
    for (tp, lag) in &snap.lag {
        let (t, p) = tp.rsplit_once('/').unwrap_or((tp, ""));
        let _ = writeln!(o, "horizon_consumer_lag{{topic=\"{}\",partition=\"{}\"}} {lag}", label(t), label(p));
    }
    family(
        &mut o,
        "horizon_applied_offset",
        "gauge",
        "Next offset the projections have applied per partition",
    );
    for (tp, off) in &snap.offsets {
        let (t, p) = tp.rsplit_once('/').unwrap_or((tp, ""));
        let _ = writeln!(
            o,
            "horizon_applied_offset{{topic=\"{}\",partition=\"{}\"}} {off}",
            label(t),
            label(p)
        );
    }
    type Field = fn(&Stats) -> u64;
    let counters: [(&str, &str, Field); 8] = [
        ("horizon_records_in_total", "Records consumed per stage", |s| s.records_in),
        ("horizon_outputs_total", "Records published per stage", |s| s.outputs),
        (
            "horizon_dead_letters_total",
            "Records sent to the dead-letter topic per stage",
            |s| s.dead_letters,
        ),
        (
            "horizon_outputs_refused_total",
            "Outputs the broker refused for good, dead-lettered in their place, per stage",
            |s| s.outputs_refused,
        ),
        (
            "horizon_undecodable_skipped_total",
            "Records that did not decode on a topic another stage owns and dead-letters, per stage",
            |s| s.undecodable_skipped,
        ),
        (
            "horizon_restored_records_total",
            "Records replayed while restoring per stage",
            |s| s.restored_records,
        ),
        ("horizon_snapshots_used_total", "Snapshots restored from per stage", |s| {
            s.snapshots_used
        }),
        ("horizon_commits_total", "Offset commits per stage", |s| s.commits),
    ];
    for (name, help, f) in counters {
        family(&mut o, name, "counter", help);
        for (stage, st) in &snap.stats {
            let _ = writeln!(o, "{name}{{stage=\"{}\"}} {}", label(stage), f(st));
        }
    }
    family(
        &mut o,
        "horizon_events_processed_total",
        "counter",
        "Events handled per stage and event type",
    );
    for (stage, st) in &snap.stats {
        for (ty, n) in &st.events_in {
            let _ = writeln!(
                o,
                "horizon_events_processed_total{{stage=\"{}\",type=\"{}\"}} {n}",
                label(stage),
                label(ty.as_str())
            );
        }
    }
    family(
        &mut o,
        "horizon_projection_events",
        "gauge",
        "Distinct events applied by the projections, by type",
    );
    for (ty, n) in &snap.events_by_type {
        let _ = writeln!(o, "horizon_projection_events{{type=\"{}\"}} {n}", label(ty.as_str()));
    }
    family(
        &mut o,
        "horizon_retries_total",
        "counter",
        "Steps refused by the broker or sink (backoff) per stage",
    );
    for (stage, n) in &snap.retries {
        let _ = writeln!(o, "horizon_retries_total{{stage=\"{}\"}} {n}", label(stage));
    }
    family(
        &mut o,
        "horizon_step_duration_seconds",
        "histogram",
        "Duration of a stage step that handled records",
    );
    for (stage, h) in &snap.latency {
        let st = label(stage);
        for (b, n) in LATENCY_BUCKETS.iter().zip(h.buckets) {
            let _ = writeln!(o, "horizon_step_duration_seconds_bucket{{stage=\"{st}\",le=\"{b}\"}} {n}");
        }
        let _ = writeln!(o, "horizon_step_duration_seconds_bucket{{stage=\"{st}\",le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(o, "horizon_step_duration_seconds_sum{{stage=\"{st}\"}} {}", h.sum_seconds);
        let _ = writeln!(o, "horizon_step_duration_seconds_count{{stage=\"{st}\"}} {}", h.count);
    }
    if let Some(health) = &snap.health {
        let now = Instant::now();
        let judged = health.judge(now);
        family(
            &mut o,
            "horizon_stage_stalled",
            "gauge",
            "1 when the stage has work waiting and made no progress for longer than --stall-after",
        );
        for (stage, _, stalled) in &judged {
            let _ = writeln!(
                o,
                "horizon_stage_stalled{{stage=\"{}\"}} {}",
                label(stage),
                u8::from(stalled.is_some())
            );
        }
        family(
            &mut o,
            "horizon_stage_no_progress_seconds",
            "gauge",
            "Seconds since the stage last handled records, settled its work or found nothing to do",
        );
        for (stage, h, _) in &judged {
            let idle_for = now.saturating_duration_since(h.last_progress).as_secs_f64();
            let _ = writeln!(o, "horizon_stage_no_progress_seconds{{stage=\"{}\"}} {idle_for:.3}", label(stage));
        }
    }
    if let Some(d) = &snap.delivery {
        family(
            &mut o,
            "horizon_notify_deliveries_total",
            "counter",
            "Notification deliveries by outcome",
        );
        for (outcome, n) in [
            ("delivered", d.delivered),
            ("already_delivered", d.already_delivered),
            ("failed", d.failures),
            ("skipped", d.skipped),
        ] {
            let _ = writeln!(o, "horizon_notify_deliveries_total{{outcome=\"{outcome}\"}} {n}");
        }
    }
    if let Some(b) = &snap.breaker {
        family(
            &mut o,
            "horizon_notify_breaker_state",
            "gauge",
            "1 for the notify sink circuit breaker's current state",
        );
        for state in ["Closed", "Open", "HalfOpen"] {
            let _ = writeln!(o, "horizon_notify_breaker_state{{state=\"{state}\"}} {}", u8::from(b == state));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_in_the_openapi_document_and_back() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json parses");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
        let documented: BTreeSet<&str> = doc["paths"].as_object().unwrap().keys().map(String::as_str).collect();
        let served: BTreeSet<&str> = ROUTES.iter().copied().collect();
        assert_eq!(documented, served);
        // The token: probes open, every other route documents its 401.
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
        for (path, item) in doc["paths"].as_object().unwrap() {
            let get = &item["get"];
            if ["/health", "/ready"].contains(&path.as_str()) {
                assert_eq!(get["security"], serde_json::json!([]), "{path} is open");
            } else {
                assert!(get["responses"]["401"].is_object(), "{path} documents its 401");
            }
        }
    }

    /// A GET against a served API: (status, JSON body).
    fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
        let (status, _, body) = request(addr, path, "");
        (
            status,
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}")),
        )
    }

    /// A GET with extra header lines (each ending in CRLF): (status, lowercased head, body).
    fn request(addr: SocketAddr, path: &str, headers: &str) -> (u16, String, String) {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        write!(c, "GET {path} HTTP/1.1\r\nHost: test\r\n{headers}Connection: close\r\n\r\n").unwrap();
        let mut text = String::new();
        c.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, head.to_ascii_lowercase(), body.to_string())
    }

    /// A server over empty projections of a deployment with known ids.
    fn serve_known_ids(token: Option<&str>) -> ApiServer {
        let service = ProjectionService {
            initial_cash: BTreeMap::new(),
        };
        let shared = SharedSnapshot::default();
        shared.set(Snapshot {
            views: Some(service.views(&Projections::default())),
            projections: Some(Arc::new(Projections::default())),
            ready: true,
            ..Default::default()
        });
        let catalog = Catalog {
            symbols: vec!["BTCUSDT".into(), "ETHUSDT".into()],
            intervals: vec!["1m".into()],
            users: vec!["alice".into()],
            portfolios: vec!["alpha".into()],
        };
        serve_with_token("127.0.0.1:0", shared, catalog, token.map(String::from)).unwrap()
    }

    #[test]
    fn with_a_token_every_route_but_the_probes_needs_it() {
        let api = serve_known_ids(Some("s3cret-token"));
        assert!(api.token_required);
        let good = "Authorization: Bearer s3cret-token\r\n";
        for route in ["/portfolios", "/metrics", "/digest", "/stats", "/openapi.json", "/nowhere"] {
            let (status, head, body) = request(api.addr, route, "");
            assert_eq!(status, 401, "{route}: {body}");
            assert!(head.contains("www-authenticate: bearer realm=\"horizon\""), "{route}: {head}");
            let body: Value = serde_json::from_str(&body).unwrap();
            assert!(body["error"].as_str().unwrap().contains("Bearer"), "{body}");
            let (status, head, _) = request(api.addr, route, "Authorization: Bearer wrong-token\r\n");
            assert_eq!(status, 401, "{route}");
            assert!(head.contains("error=\"invalid_token\""), "{head}");
            let (status, _, body) = request(api.addr, route, "Authorization: Basic czNjcmV0LXRva2Vu\r\n");
            assert_eq!(status, 401, "{route}: not a bearer token: {body}");
            let (status, _, body) = request(api.addr, route, good);
            assert_ne!(status, 401, "{route}: {body}");
        }
        assert_eq!(request(api.addr, "/portfolios", good).0, 200);
        // Probes carry no credentials.
        assert_eq!(request(api.addr, "/health", "").0, 200);
        assert_eq!(request(api.addr, "/ready", "").0, 200);
        // Without a token, the API is open.
        let open = serve_known_ids(None);
        assert!(!open.token_required);
        assert_eq!(get(open.addr, "/portfolios").0, 200);
    }

    #[test]
    fn a_404_names_the_id_asked_for_but_not_the_known_ones() {
        let api = serve_known_ids(None);
        for (path, asked) in [
            ("/portfolios/beta", "beta"),
            ("/portfolios/beta/positions", "beta"),
            ("/portfolios/beta/risk", "beta"),
            ("/users/mallory/notifications", "mallory"),
            ("/bars/DOGEUSDT/1m", "DOGEUSDT"),
            ("/events/no-such-event", "no-such-event"),
        ] {
            let (status, body) = get(api.addr, path);
            assert_eq!(status, 404, "{path}: {body}");
            let message = body["error"].as_str().unwrap();
            assert!(message.contains(asked), "{path}: {message}");
            for known in ["alpha", "alice", "BTCUSDT", "ETHUSDT"] {
                assert!(!message.contains(known), "{path} lists `{known}`: {message}");
            }
        }
    }

    #[test]
    fn binding_beyond_loopback_without_a_token_is_warned_about() {
        let warn = |a: &str, token| exposure_warning(a.parse().unwrap(), token);
        for exposed in ["0.0.0.0:8080", "192.168.1.20:8080", "[::]:8080"] {
            let w = warn(exposed, false).unwrap_or_else(|| panic!("{exposed}: no warning"));
            assert!(w.contains(exposed) && w.contains("--http-token-file"), "{w}");
            assert_eq!(warn(exposed, true), None, "{exposed} with a token");
        }
        for local in ["127.0.0.1:8080", "[::1]:8080"] {
            assert_eq!(warn(local, false), None, "{local}");
        }
    }

    #[test]
    fn a_stage_is_stalled_only_with_work_waiting_and_no_progress_past_the_bound() {
        let health = Health::new(Duration::from_secs(10), ["idle", "retrying", "blocked"].map(String::from));
        let t0 = Instant::now();
        health.update(1, |h| {
            h.waiting = true;
            h.last_error = Some("broker unavailable: flush".into());
            h.unsettled = Unsettled { outputs: 7, partitions: 2 };
        });
        health.update(2, |h| h.in_step_since = Some(t0));
        let names = |at: Duration| -> Vec<String> { health.stalled(t0 + at).into_iter().map(|s| s.stage).collect() };
        // Within the bound a retry is an outage being ridden out; a step is just running.
        assert!(names(Duration::from_secs(5)).is_empty());
        // Past it: the retrying stage and the step that has not returned; never the idle one.
        assert_eq!(names(Duration::from_secs(11)), ["retrying", "blocked"]);
        let retrying = &health.stalled(t0 + Duration::from_secs(11))[0];
        assert_eq!(retrying.last_error.as_deref(), Some("broker unavailable: flush"));
        assert_eq!(retrying.unsettled, Unsettled { outputs: 7, partitions: 2 });
        assert!(retrying.stalled_for_ms >= 11_000);
        // Progress clears it.
        health.update(1, |h| {
            h.last_progress = t0 + Duration::from_secs(10);
            h.waiting = false;
        });
        assert_eq!(names(Duration::from_secs(11)), ["blocked"]);
    }

    #[test]
    fn ready_is_503_naming_a_stalled_stage_and_metrics_flag_every_stage() {
        let health = Arc::new(Health::new(Duration::from_secs(10), ["market", "signals"].map(String::from)));
        let long_ago = Instant::now().checked_sub(Duration::from_secs(60)).expect("uptime over a minute");
        health.update(0, |h| {
            h.last_progress = long_ago;
            h.waiting = true;
            h.last_error = Some("broker unavailable: 3 of 3 records were not delivered".into());
        });
        let shared = SharedSnapshot::default();
        shared.set(Snapshot {
            ready: true,
            health: Some(health.clone()),
            ..Default::default()
        });
        let api = serve("127.0.0.1:0", shared.clone(), Catalog::default()).unwrap();
        let (status, body) = get(api.addr, "/ready");
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["ready"], false);
        assert_eq!(body["stalled"].as_array().unwrap().len(), 1, "{body}");
        assert_eq!(body["stalled"][0]["stage"], "market");
        assert!(
            body["stalled"][0]["last_error"].as_str().unwrap().contains("not delivered"),
            "{body}"
        );
        let (_, stats) = get(api.addr, "/stats");
        assert_eq!(stats["stalled"][0]["stage"], "market", "{stats}");
        let metrics = render_metrics(&shared.get());
        assert!(metrics.contains("# TYPE horizon_stage_stalled gauge"), "{metrics}");
        assert!(metrics.contains("horizon_stage_stalled{stage=\"market\"} 1\n"), "{metrics}");
        assert!(metrics.contains("horizon_stage_stalled{stage=\"signals\"} 0\n"), "{metrics}");
        assert!(
            metrics.contains("horizon_stage_no_progress_seconds{stage=\"market\"} 6"),
            "{metrics}"
        );

        health.update(0, |h| {
            h.last_progress = Instant::now();
            h.waiting = false;
        });
        let (status, body) = get(api.addr, "/ready");
        assert_eq!((status, body["stalled"].as_array().unwrap().len()), (200, 0), "{body}");
    }

    #[test]
    fn the_notification_feed_and_events_travel_in_time() {
        use horizon_core::event::EventType;
        use horizon_core::generator::MarketGenerator;
        use horizon_core::pipeline::MemoryRun;
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios/flash-crash.toml");
        let s = horizon_core::scenario::Scenario::from_toml(&std::fs::read_to_string(path).unwrap(), path).unwrap();
        let run = MemoryRun::run(
            &s,
            MarketGenerator::new(&s, s.seed).unwrap().map(horizon_core::feed::trade_event),
            8192,
        );
        let p = run.pipeline.projections().unwrap().clone();
        let service = ProjectionService::from_scenario(&s);
        let shared = SharedSnapshot::default();
        shared.set(Snapshot {
            views: Some(service.views(&p)),
            initial_cash: service.initial_cash.clone(),
            projections: Some(Arc::new(p.clone())),
            ..Default::default()
        });
        let api = serve("127.0.0.1:0", shared, Catalog::from_scenario(&s)).unwrap();

        // The feed as of a notification's time: exactly the notifications at or before it.
        let (user, feed) = p
            .notifications
            .iter()
            .find(|(_, f)| f.len() >= 3)
            .expect("a user with 3 notifications");
        let times: Vec<Timestamp> = feed.values().map(|(ts, _)| *ts).collect();
        let t = times[1];
        let (status, now) = get(api.addr, &format!("/users/{user}/notifications"));
        assert_eq!((status, now["data"].as_array().unwrap().len()), (200, times.len()));
        let (status, then) = get(api.addr, &format!("/users/{user}/notifications?at={}", t.to_rfc3339_nanos()));
        assert_eq!(status, 200);
        let rows = then["data"].as_array().unwrap();
        assert_eq!(rows.len(), times.iter().filter(|x| **x <= t).count());
        assert_eq!(rows[..], now["data"].as_array().unwrap()[..rows.len()]);
        let (_, with_last) = get(api.addr, &format!("/users/{user}/notifications?at={}&last=1", t.to_rfc3339_nanos()));
        assert_eq!(with_last["data"][0], rows[rows.len() - 1]);
        let (status, before) = get(api.addr, &format!("/users/{user}/notifications?at=2000-01-01T00:00:00Z"));
        assert_eq!((status, before["data"].as_array().unwrap().len()), (200, 0));
        let (status, bad) = get(api.addr, &format!("/users/{user}/notifications?at=yesterday"));
        assert_eq!(status, 400);
        assert!(bad["error"].as_str().unwrap().contains("`at`"), "{bad}");

        // An event as known at its own time, and a 404 naming both times just before it.
        let (id, entry) = p
            .audit
            .iter()
            .filter(|(_, e)| e.event_type == EventType::UserNotificationTriggered)
            .min_by_key(|(id, e)| (e.ts, (*id).clone()))
            .unwrap();
        let (status, now) = get(api.addr, &format!("/events/{id}"));
        assert_eq!(status, 200);
        assert!(now["data"]["causation_chain"].as_array().unwrap().len() >= 2, "{now}");
        let (status, then) = get(api.addr, &format!("/events/{id}?at={}", entry.ts.to_rfc3339_nanos()));
        assert_eq!(status, 200);
        assert_eq!(then["data"], now["data"], "the whole chain, even a cause stamped later");
        let just_before = Timestamp::from_nanos(entry.ts.nanos() - 1);
        let (status, missing) = get(api.addr, &format!("/events/{id}?at={}", just_before.to_rfc3339_nanos()));
        assert_eq!(status, 404);
        let message = missing["error"].as_str().unwrap();
        assert!(
            message.contains("did not exist yet") && message.contains(&entry.ts.to_rfc3339_nanos()),
            "{message}"
        );
        let (status, bad) = get(api.addr, &format!("/events/{id}?at=soon"));
        assert_eq!(status, 400);
        assert!(bad["error"].as_str().unwrap().contains("`at`"), "{bad}");
        let (status, _) = get(api.addr, &format!("/events/{id}?as_of=2024-03-01"));
        assert_eq!(status, 400);
    }
}
