//! The JSON API, `/healthz` and `/metrics` (field names are the dashboard's contract: see
//! docs/observability.md).

use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};
use strata_ops::Role;

use crate::AppState;
use crate::metrics::{Extras, render};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/topology", get(topology))
        .route("/api/history", get(history))
        .route("/api/namespaces", get(namespaces))
        .route("/api/audit", get(audit))
}

/// A failure the client sees as `{"error": "..."}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn unavailable(message: String) -> ApiError {
    ApiError(StatusCode::SERVICE_UNAVAILABLE, message)
}

async fn healthz(State(state): State<AppState>) -> Result<(StatusCode, Json<Value>), ApiError> {
    let s = state.recent().await.map_err(unavailable)?;
    let healthy = s.healthy();
    let body = json!({
        "status": if healthy { "ok" } else { "degraded" },
        "nodes_up": s.nodes_up(),
        "nodes_total": s.nodes.len(),
        "cluster_state": s.cluster_state,
    });
    Ok((if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(body)))
}

async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let started = Instant::now();
    let snapshot = state.poll().await.map_err(unavailable)?;
    let scrape_seconds = started.elapsed().as_secs_f64();
    let scan = state.namespaces_for_scrape().await;
    let namespaces = scan.as_ref().and_then(|s| s.as_deref().ok());
    let extras = Extras { namespaces, scan_lookups: state.scan_lookups(), scrape_seconds };
    let text = render(&snapshot, &extras);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text))
}

async fn topology(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let s = state.recent().await.map_err(unavailable)?;
    let nodes: Vec<Value> = s
        .nodes
        .iter()
        .map(|n| {
            let info = n.info.as_ref().ok();
            let int = |field: &str| info.and_then(|i| i.integer(field));
            json!({
                // A standalone server has no node id: its address stands in.
                "id": n.node.id.clone().unwrap_or_else(|| n.node.addr.clone()),
                "addr": n.node.addr,
                "role": match n.node.role { Role::Master => "master", Role::Replica => "replica" },
                "master_id": n.node.master_addr.as_deref().map(|m| s.id_of(m).unwrap_or(m)),
                "slots": n.node.slots.iter().map(|(a, b)| [a, b]).collect::<Vec<_>>(),
                "up": n.up(),
                "error": n.info.as_ref().err(),
                "memory_used_bytes": int("used_memory"),
                "maxmemory_bytes": int("maxmemory"),
                "keys": info.map(|i| i.keys()),
                "ops_per_sec": int("instantaneous_ops_per_sec"),
                "connected_clients": int("connected_clients"),
            })
        })
        .collect();
    Ok(Json(json!({
        "mode": if s.cluster { "cluster" } else { "standalone" },
        "cluster_state": s.cluster_state,
        "nodes": nodes,
    })))
}

async fn history(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "interval_s": state.config().interval.as_secs_f64(), "samples": state.history() }))
}

async fn namespaces(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let report = state.namespaces().await.map_err(unavailable)?;
    let mut rows: Vec<_> = report.namespaces.iter().collect();
    rows.sort_by(|a, b| b.1.memory_bytes.cmp(&a.1.memory_bytes).then_with(|| a.0.cmp(b.0)));
    let namespaces: Vec<Value> = rows
        .iter()
        .map(|(name, ns)| {
            json!({ "namespace": name, "keys": ns.keys, "memory_bytes": ns.memory_bytes, "no_ttl_keys": ns.no_ttl_keys })
        })
        .collect();
    let histogram: Vec<Value> = report
        .ttl_histogram
        .buckets()
        .iter()
        .map(|(bucket, count)| json!({ "bucket": bucket, "count": count }))
        .collect();
    let scanned: u64 = report.nodes.iter().map(|n| n.scanned_keys).sum();
    Ok(Json(json!({
        "scanned_keys": scanned,
        // Only masters are scanned: a replica's keys are its master's.
        "sampled": report.nodes.iter().filter(|n| n.role == strata_ops::Role::Master).any(|n| n.scanned_keys < n.keys),
        "namespaces": namespaces,
        "ttl_histogram": histogram,
    })))
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<usize>,
}

async fn audit(State(state): State<AppState>, Query(q): Query<AuditQuery>) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, crate::audit::MAX_LIMIT);
    let Some(path) = state.config().audit_log.clone() else {
        return Ok(Json(json!({ "events": [] })));
    };
    let events = tokio::task::spawn_blocking(move || crate::audit::tail(&path, limit))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("reading the audit log: {e}")))?;
    Ok(Json(json!({ "events": events })))
}
