//! The query API of a running service process: a small HTTP server (axum on a tokio runtime of
//! its own thread) serving a snapshot that the processing loop replaces from time to time. The
//! loop never waits on a request and a request never sees a half-applied batch.
//!
//! - `GET /health`: `ok`
//! - `GET /digest`: the projections' digests, events applied by type, and when it was taken
//! - `GET /projections`: the read models (portfolio views, risk dashboards, notification feeds)
//! - `GET /stats`: the loop's counters per stage

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use horizon_core::event::EventType;
use horizon_core::processor::Stats;
use horizon_core::projections::{Digests, Views};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

/// What the loop publishes for queries.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Snapshot {
    /// The stages this process runs.
    pub stages: Vec<String>,
    /// Present when this process runs the projections stage.
    pub digests: Option<Digests>,
    #[serde(skip)]
    pub views: Option<Views>,
    /// Distinct events the projections applied, by type.
    pub events_by_type: BTreeMap<EventType, u64>,
    pub events: u64,
    pub stats: BTreeMap<String, Stats>,
    /// Wall-clock time of the snapshot (milliseconds since the Unix epoch).
    pub taken_at_ms: u64,
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

/// A running server; it stops with the process.
pub struct ApiServer {
    pub addr: SocketAddr,
}

/// Binds `addr` (port 0 picks a free one) and serves `shared` on a thread of its own.
pub fn serve(addr: &str, shared: SharedSnapshot) -> Result<ApiServer, String> {
    let listener = std::net::TcpListener::bind(addr).map_err(|e| format!("--http {addr}: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
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
                if let Err(e) = axum::serve(listener, router(shared)).await {
                    eprintln!("horizon: query API stopped: {e}");
                }
            })
        })
        .map_err(|e| e.to_string())?;
    Ok(ApiServer { addr: bound })
}

pub fn router(shared: SharedSnapshot) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/digest", get(digest))
        .route("/projections", get(projections))
        .route("/stats", get(stats))
        .with_state(shared)
}

fn no_projections() -> Response {
    (
        StatusCode::NOT_FOUND,
        "this process does not run the projections stage (--services ...,projections)\n",
    )
        .into_response()
}

async fn digest(State(s): State<SharedSnapshot>) -> Response {
    let snap = s.get();
    if snap.digests.is_none() {
        return no_projections();
    }
    Json(serde_json::json!({
        "stages": snap.stages,
        "digests": snap.digests,
        "events": snap.events,
        "events_by_type": snap.events_by_type,
        "taken_at_ms": snap.taken_at_ms,
    }))
    .into_response()
}

async fn projections(State(s): State<SharedSnapshot>) -> Response {
    let snap = s.get();
    match &snap.views {
        Some(v) => Json(v.clone()).into_response(),
        None => no_projections(),
    }
}

async fn stats(State(s): State<SharedSnapshot>) -> Response {
    Json(s.get().stats.clone()).into_response()
}
