//! The JSON API, `/healthz` and `/metrics`.

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/topology", get(topology))
        .route("/api/history", get(history))
        .route("/api/namespaces", get(namespaces))
        .route("/api/audit", get(audit))
}

async fn healthz(State(_state): State<AppState>) -> (StatusCode, Json<Value>) {
    (StatusCode::OK, Json(json!({"status": "ok", "nodes_up": 0, "nodes_total": 0, "cluster_state": "ok"})))
}

async fn metrics(State(_state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], "# EOF\n")
}

async fn topology(State(state): State<AppState>) -> Json<Value> {
    let mode = if state.config().deployment.cluster { "cluster" } else { "standalone" };
    Json(json!({"mode": mode, "cluster_state": null, "nodes": []}))
}

async fn history(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"interval_s": state.config().interval.as_secs_f64(), "samples": []}))
}

async fn namespaces(State(_state): State<AppState>) -> Json<Value> {
    Json(json!({"scanned_keys": 0, "namespaces": [], "ttl_histogram": []}))
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<usize>,
}

async fn audit(State(_state): State<AppState>, Query(q): Query<AuditQuery>) -> Json<Value> {
    let _limit = q.limit.unwrap_or(100);
    Json(json!({"events": []}))
}
