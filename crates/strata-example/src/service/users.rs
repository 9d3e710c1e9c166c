//! User profiles: cache-aside with negative caching, written through on update.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use strata::{Cache, KeySchema, Ttl};

use crate::db::{Db, User, UserUpdate};
use crate::error::Result;

/// User profiles through Strata.
///
/// Reads are [`Cache::get_or_set_optional`]: a hit costs no query; a miss runs one query, and a
/// missing user is cached too (Strata's negative TTL, 30 s by default), so a stream of requests
/// for an unknown id reaches the database once per negative TTL. Concurrent misses on one id
/// share one query, within this process and across processes (Strata's leases).
#[derive(Debug, Clone)]
pub struct Users {
    db: Db,
    cache: Cache,
    schema: KeySchema,
}

impl Users {
    /// Profiles of `db` cached in `cache` under `schema` (keys `{app}:v{N}:user:ID`). For a
    /// benchmark or an embedding that needs users alone; [`Services`](super::Services) builds one.
    pub fn new(db: Db, cache: Cache, schema: KeySchema) -> Self {
        Self { db, cache, schema }
    }

    /// A profile, from the cache or the database.
    pub async fn get(&self, id: i64) -> Result<Option<User>> {
        Ok(self.get_reporting_load(id).await?.0)
    }

    /// Like [`get`](Self::get), and whether this call queried the database (false on a cache
    /// hit, and when a concurrent call's load answered it): how a benchmark counts hits.
    pub async fn get_reporting_load(&self, id: i64) -> Result<(Option<User>, bool)> {
        let key = self.schema.key("user", &id.to_string())?;
        let db = self.db.clone();
        let loaded = Arc::new(AtomicBool::new(false));
        let flag = loaded.clone();
        let user = self
            .cache
            .get_or_set_optional(&key, Ttl::Medium, || async move {
                flag.store(true, Ordering::Relaxed);
                db.get_user(id).await
            })
            .await?;
        Ok((user, loaded.load(Ordering::Relaxed)))
    }

    /// Updates the database and caches the row it returned, through
    /// [`Cache::update_through_versioned`]: the row's version (raised by the `UPDATE`) orders
    /// concurrent updates, so the cache is written once, after the update, as a `DEL` would
    /// be; the new row is stored only over an older version, and a load that read the old row
    /// cannot store it afterwards. Until the store, every instance keeps serving the previous
    /// profile (the update has not completed). Every other instance's L1 copy goes (client
    /// tracking); this instance's L1 keeps the new row, so the next read of it costs no query,
    /// where deleting it would have cost one.
    pub async fn update(&self, id: i64, update: &UserUpdate) -> Result<Option<User>> {
        let key = self.schema.key("user", &id.to_string())?;
        let db = &self.db;
        // What the database answered, kept here: a cache error after the update must not cost
        // the caller the row.
        let mut answered: Option<Result<Option<User>>> = None;
        let written = self
            .cache
            .update_through_versioned(&key, Ttl::Medium, || async {
                let row = db.update_user(id, update).await;
                let to_cache = match &row {
                    Ok(versioned) => Ok(versioned.clone()),
                    Err(e) => Err(e.to_string()),
                };
                answered = Some(row.map(|versioned| versioned.map(|(user, _)| user)));
                to_cache
            })
            .await;
        match (written, answered) {
            (Ok(user), _) => Ok(user),
            // The database failed: its error.
            (Err(_), Some(Err(db_error))) => Err(db_error),
            // The database holds the change; the cache could not take it. Strata queued the old
            // profile's removal for when Redis is back (auto-recovery), unless its queue was
            // full: then the old profile may stay there until its TTL. Say so instead of failing
            // a request whose write succeeded.
            (Err(e), Some(Ok(user))) => {
                if e.is_queued() {
                    tracing::info!(user = id, "profile updated; its cache entry goes when redis is back: {e}");
                } else if user.is_some() {
                    tracing::warn!(user = id, "profile updated but its cache entry could not be replaced: {e}");
                }
                Ok(user)
            }
            // The update never ran (the cache failed before it could start: not expected).
            (Err(e), None) => Err(e.into()),
        }
    }
}
