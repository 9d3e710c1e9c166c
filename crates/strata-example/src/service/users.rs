//! User profiles: cache-aside with negative caching, invalidated on write.

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

    /// Updates the database, then deletes the cached profile. The delete reaches every
    /// instance: Strata's client tracking evicts their L1 copies, and its leases keep a load
    /// that read the old row before the update from caching it afterwards.
    ///
    /// Delete rather than write the new row into the cache: the next read loads what the
    /// database holds, whatever order concurrent updates commit in.
    pub async fn update(&self, id: i64, update: &UserUpdate) -> Result<Option<User>> {
        let key = self.schema.key("user", &id.to_string())?;
        let user = self.db.update_user(id, update).await?;
        if user.is_some() {
            // The database already holds the change; a failed delete leaves the old profile in
            // the cache until its TTL, as after any write Redis could not take. Say so loudly
            // instead of failing a request whose write succeeded.
            if let Err(e) = self.cache.delete(&key).await {
                tracing::warn!(user = id, "profile updated but its cache entry could not be deleted: {e}");
            }
        }
        Ok(user)
    }
}
