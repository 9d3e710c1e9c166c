//! The web dashboard: one static page and its script and styles, compiled into the binary.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::AppState;

/// `GET /`, `/assets/app.js` and `/assets/app.css`.
pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/", get(index)).route("/assets/app.js", get(script)).route("/assets/app.css", get(styles))
}

async fn index() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], include_str!("../assets/index.html"))
}

async fn script() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], include_str!("../assets/app.js"))
}

async fn styles() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], include_str!("../assets/app.css"))
}
