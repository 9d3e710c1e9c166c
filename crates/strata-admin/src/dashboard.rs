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

/// Only this server's own files may load or be fetched, and no other site may frame the page:
/// everything the page shows comes from Redis (key names, audit targets), so it must never be
/// able to pull in or run anything else. The page has no inline script or style to allow.
const CSP: &str = "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

async fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // The files change only with the binary; no-cache makes a browser revalidate after an upgrade.
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}
