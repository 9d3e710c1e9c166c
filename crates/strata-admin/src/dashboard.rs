//! The web dashboard: one static page with its styles and scripts, compiled into the binary so
//! `strata serve` works offline (no CDN, nothing to install next to it).
//!
//! The page polls the JSON API (`/healthz`, `/api/topology`, `/api/history`, `/api/namespaces`,
//! `/api/audit`) every two seconds and draws its charts as inline SVG (`assets/chart.js`). Its
//! element ids and `data-*` attributes are what `tests/dashboard.rs` checks in headless Chromium.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::AppState;

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// `GET /` and the page's assets under `/assets/`.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| asset(HTML, include_str!("../assets/index.html"))))
        .route("/assets/app.js", get(|| asset(JS, include_str!("../assets/app.js"))))
        .route("/assets/chart.js", get(|| asset(JS, include_str!("../assets/chart.js"))))
        .route("/assets/app.css", get(|| asset(CSS, include_str!("../assets/app.css"))))
}

async fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    // The files change only with the binary; no-cache makes a browser revalidate after an upgrade.
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body)
}
