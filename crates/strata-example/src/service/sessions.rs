//! Sessions with a sliding idle timeout and an absolute lifetime.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use strata::{Cache, Key, KeySchema, Ttl};

use super::ServiceConfig;
use crate::error::{Error, Result};
use crate::raw::RawRedis;

/// What a session token stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The signed-in user.
    pub user_id: i64,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
}

/// Sessions stored in Redis through Strata, keyed by a random token.
///
/// Strata has no "touch", and its values carry their own logical expiry (a `PEXPIRE` alone
/// would not make a value live longer), so a session is written with [`Ttl::Exact`] of the
/// absolute lifetime, and the idle timeout is the Redis key's own TTL: a raw `PEXPIRE` through
/// [`RawRedis`] (a plain redis-rs client on the same URLs) after the write and after each read.
/// `PEXPIRE` answering 0 means the key is gone from Redis (idled out): the session is over even
/// if this instance still had an in-process copy, which is dropped.
#[derive(Debug, Clone)]
pub struct Sessions {
    cache: Cache,
    redis: RawRedis,
    schema: KeySchema,
    idle_ms: u64,
    max: Duration,
}

/// Length of a token in hex digits (128 random bits).
const TOKEN_LEN: usize = 32;

impl Sessions {
    pub(super) fn new(cache: Cache, redis: RawRedis, schema: KeySchema, config: &ServiceConfig) -> Result<Self> {
        let idle_ms = u64::try_from(config.session_idle.as_millis()).unwrap_or(u64::MAX);
        if idle_ms == 0 || config.session_max.is_zero() {
            return Err(Error::config("session idle timeout and lifetime must be positive"));
        }
        Ok(Self { cache, redis, schema, idle_ms, max: config.session_max })
    }

    /// Creates a session for `user_id`; returns its token.
    pub async fn create(&self, user_id: i64) -> Result<String> {
        let token = format!("{:032x}", rand::random::<u128>());
        let key = self.key(&token)?;
        let session = Session { user_id, created_at_ms: now_ms() };
        self.cache.set(&key, &session, Ttl::Exact(self.max)).await?;
        if !self.slide(&key).await? {
            // Deleted (or evicted) between the two commands: report it rather than hand out a
            // token that does not work.
            return Err(Error::new(crate::error::ErrorKind::Redis, "session vanished right after its creation"));
        }
        Ok(token)
    }

    /// The session of a token, extending its idle timeout. `None` for an unknown, expired or
    /// malformed token.
    pub async fn get(&self, token: &str) -> Result<Option<Session>> {
        if !valid_token(token) {
            return Ok(None);
        }
        let key = self.key(token)?;
        let Some(session) = self.cache.get::<Session>(&key).await? else {
            return Ok(None);
        };
        if self.slide(&key).await? {
            Ok(Some(session))
        } else {
            // Idled out in Redis while an L1 copy survived here (tracking evicts it shortly).
            self.cache.delete(&key).await?;
            Ok(None)
        }
    }

    /// Ends a session; `false` if there was none.
    pub async fn delete(&self, token: &str) -> Result<bool> {
        if !valid_token(token) {
            return Ok(false);
        }
        Ok(self.cache.delete(&self.key(token)?).await?)
    }

    /// Resets the idle timeout; `false` when the key no longer exists in Redis.
    async fn slide(&self, key: &Key) -> Result<bool> {
        let set: i64 = self.redis.cmd(redis::cmd("PEXPIRE").arg(key.as_str()).arg(self.idle_ms)).await?;
        Ok(set == 1)
    }

    fn key(&self, token: &str) -> Result<Key> {
        Ok(self.schema.key("session", token)?)
    }
}

fn valid_token(token: &str) -> bool {
    token.len() == TOKEN_LEN && token.bytes().all(|b| b.is_ascii_hexdigit())
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
