//! A user's first project with Strata: an axum service whose `GET /users/{id}` reads through
//! the cache (`Cache::get_or_set`: L1, then Redis, then the database) in front of a database,
//! here a fake one that counts its queries.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use strata::{Cache, KeySchema, Ttl};

/// What the service serves and caches (any `Serialize + Deserialize + Clone` type).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: u64,
    pub name: String,
}

/// The source of truth. A fake: it counts the queries it answers.
#[derive(Debug, Default)]
pub struct Database {
    queries: AtomicUsize,
}

impl Database {
    pub async fn load_user(&self, id: u64) -> Result<User, std::io::Error> {
        self.queries.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await; // a query takes time
        Ok(User { id, name: format!("user {id}") })
    }

    /// How many queries reached the database.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct AppState {
    cache: Cache,
    keys: KeySchema,
    db: Arc<Database>,
}

/// The service's routes.
pub fn app(cache: Cache, db: Arc<Database>) -> Router {
    // Keys look like shop:v1:user:42; bumping the version retires every key at once.
    let keys = KeySchema::new("shop", 1).expect("a valid key schema");
    Router::new().route("/users/{id}", get(get_user)).with_state(AppState { cache, keys, db })
}

async fn get_user(State(state): State<AppState>, Path(id): Path<u64>) -> Result<Json<User>, StatusCode> {
    let key = state.keys.key("user", &id.to_string()).map_err(|_| StatusCode::BAD_REQUEST)?;
    // A miss runs the loader once, however many requests miss at once; if Redis is down, the
    // loader's value is served all the same.
    let user = state
        .cache
        .get_or_set(&key, Ttl::Medium, || state.db.load_user(id))
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok(Json(user))
}
