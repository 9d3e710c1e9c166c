//! The axum routes over [`Services`].

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::db::UserUpdate;
use crate::error::Error;
use crate::service::Services;

/// Largest `top` a leaderboard request may ask for.
pub const MAX_TOP: usize = 100;

/// The router of every endpoint (see the [crate docs](crate)). Serve it with `axum::serve`, or
/// call it in-process with `tower::ServiceExt::oneshot`.
pub fn app(services: Services) -> Router {
    let limited = Router::new()
        .route("/limited", get(limited))
        .route_layer(middleware::from_fn_with_state(services.clone(), rate_limit));
    // The product pages are public: their responses are cached as HTTP responses too
    // (strata-http, shared by every instance), and a reprice purges them by surrogate key.
    let pages = Router::new()
        .route("/products", get(list_products))
        .route("/products/{id}", get(get_product))
        .route_layer(services.http.layer());
    Router::new()
        .route("/healthz", get(healthz))
        .route("/stats", get(stats))
        .route("/users/{id}", get(get_user).put(put_user))
        .merge(pages)
        .route("/products/bulk-update", post(bulk_update))
        .route("/sessions", post(create_session))
        .route("/sessions/{token}", get(get_session).delete(delete_session))
        .route("/scores", post(add_score))
        .route("/leaderboard", get(leaderboard))
        .route("/visits", post(record_visit))
        .route("/visits/{page}", get(count_visits))
        .merge(limited)
        .with_state(services)
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!("request failed: {self}");
        }
        (status, Json(json!({ "error": self.to_string() }))).into_response()
    }
}

type ApiResult = Result<Response, Error>;

fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, Json(json!({ "error": format!("{what} not found") }))).into_response()
}

async fn healthz(State(s): State<Services>) -> Response {
    let redis = s.cache().ping().await.is_ok();
    let body = json!({ "status": if redis { "ok" } else { "degraded" }, "redis": redis, "database": format!("{:?}", s.db().backend()) });
    // Reads still work without Redis (Strata goes to the database), so this stays 200: a load
    // balancer should not take every instance out when Redis is down.
    Json(body).into_response()
}

async fn stats(State(s): State<Services>) -> Json<Value> {
    let m = s.cache().metrics();
    Json(json!({ "db_queries": s.db().queries(), "hit_ratio": m.total().hit_ratio() }))
}

async fn get_user(State(s): State<Services>, Path(id): Path<i64>) -> ApiResult {
    Ok(match s.users.get(id).await? {
        Some(user) => Json(user).into_response(),
        None => not_found("user"),
    })
}

async fn put_user(State(s): State<Services>, Path(id): Path<i64>, Json(update): Json<UserUpdate>) -> ApiResult {
    Ok(match s.users.update(id, &update).await? {
        Some(user) => Json(user).into_response(),
        None => not_found("user"),
    })
}

#[derive(Deserialize)]
struct CategoryQuery {
    category: String,
}

/// How long a product page may be reused by an HTTP cache: a reprice purges it sooner.
const PAGE_MAX_AGE: &str = "public, max-age=30";

/// A product page's HTTP caching headers: fresh for [`PAGE_MAX_AGE`], purged with its category.
fn page(category: &str, body: impl IntoResponse) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert("cache-control", HeaderValue::from_static(PAGE_MAX_AGE));
    if let Ok(key) = HeaderValue::from_str(&format!("products category-{category}")) {
        headers.insert("surrogate-key", key);
    }
    response
}

async fn list_products(State(s): State<Services>, Query(q): Query<CategoryQuery>) -> ApiResult {
    Ok(page(&q.category, Json(s.products.list(&q.category).await?)))
}

async fn get_product(State(s): State<Services>, Path(id): Path<i64>) -> ApiResult {
    Ok(match s.products.get(id).await? {
        Some(p) => {
            let category = p.category.clone();
            page(&category, Json(p))
        }
        None => not_found("product"),
    })
}

#[derive(Deserialize)]
struct BulkUpdate {
    category: String,
    /// Price change in percent (-100 to 1000).
    percent: i64,
}

async fn bulk_update(State(s): State<Services>, Json(b): Json<BulkUpdate>) -> ApiResult {
    let updated = s.products.reprice(&b.category, b.percent).await?;
    // The category's pages, on every instance; every product page when the category's name
    // cannot be a surrogate key (too long: its pages carry the `products` key only).
    let purged = match s.http.purge_key(&format!("category-{}", b.category)).await {
        Err(err) if err.is_config() => s.http.purge_key("products").await,
        other => other,
    };
    purged.map_err(|err| crate::error::Error::new(crate::error::ErrorKind::Cache, err.to_string()))?;
    Ok(Json(json!({ "updated": updated })).into_response())
}

#[derive(Deserialize)]
struct NewSession {
    user_id: i64,
}

async fn create_session(State(s): State<Services>, Json(b): Json<NewSession>) -> ApiResult {
    if s.users.get(b.user_id).await?.is_none() {
        return Ok(not_found("user"));
    }
    let token = s.sessions.create(b.user_id).await?;
    Ok((StatusCode::CREATED, Json(json!({ "token": token }))).into_response())
}

async fn get_session(State(s): State<Services>, Path(token): Path<String>) -> ApiResult {
    Ok(match s.sessions.get(&token).await? {
        Some(session) => Json(session).into_response(),
        None => not_found("session"),
    })
}

async fn delete_session(State(s): State<Services>, Path(token): Path<String>) -> ApiResult {
    Ok(if s.sessions.delete(&token).await? { StatusCode::NO_CONTENT.into_response() } else { not_found("session") })
}

/// The client a request is counted for: the `X-Client-Id` header, else one shared bucket.
fn client_id(headers: &HeaderMap) -> &str {
    headers.get("x-client-id").and_then(|v| v.to_str().ok()).unwrap_or("anonymous")
}

async fn rate_limit(State(s): State<Services>, request: Request, next: Next) -> Response {
    let decision = match s.limiter.check(client_id(request.headers())).await {
        Ok(d) => d,
        // Fail open: a Redis outage must not turn into an outage of every limited endpoint.
        // The limit is a guard against abuse, not a quota that must never be exceeded.
        Err(e) => {
            tracing::warn!("rate limiter unavailable, request let through: {e}");
            return next.run(request).await;
        }
    };
    let mut response = if decision.allowed {
        next.run(request).await
    } else {
        (StatusCode::TOO_MANY_REQUESTS, Json(json!({ "error": "rate limit exceeded" }))).into_response()
    };
    let headers = response.headers_mut();
    headers.insert("x-ratelimit-limit", HeaderValue::from(decision.limit));
    headers.insert("x-ratelimit-remaining", HeaderValue::from(decision.limit.saturating_sub(decision.count)));
    headers.insert("x-ratelimit-window", HeaderValue::from(decision.window));
    response
}

async fn limited() -> Json<Value> {
    Json(json!({ "ok": true }))
}

#[derive(Deserialize)]
struct Score {
    player: String,
    score: f64,
}

async fn add_score(State(s): State<Services>, Json(b): Json<Score>) -> ApiResult {
    let total = s.leaderboard.add(&b.player, b.score).await?;
    Ok(Json(json!({ "player": b.player, "score": total })).into_response())
}

#[derive(Deserialize)]
struct TopQuery {
    top: Option<usize>,
}

async fn leaderboard(State(s): State<Services>, Query(q): Query<TopQuery>) -> ApiResult {
    let top = q.top.unwrap_or(10).min(MAX_TOP);
    let rows = s.leaderboard.top(top).await?;
    let rows: Vec<Value> =
        rows.into_iter().map(|(player, score)| json!({ "player": player, "score": score })).collect();
    Ok(Json(rows).into_response())
}

#[derive(Deserialize)]
struct Visit {
    page: String,
    visitor: String,
}

async fn record_visit(State(s): State<Services>, Json(b): Json<Visit>) -> ApiResult {
    let new = s.visitors.record(&b.page, &b.visitor).await?;
    Ok(Json(json!({ "new": new })).into_response())
}

async fn count_visits(State(s): State<Services>, Path(page): Path<String>) -> ApiResult {
    let n = s.visitors.count(&page).await?;
    Ok(Json(json!({ "page": page, "unique_visitors": n })).into_response())
}
