//! A plain redis-rs client for the data structures Strata does not model: counters (rate
//! limiting), sorted sets (leaderboard), HyperLogLog (unique visitors), and the session TTL.
//!
//! It connects to the same deployment as the cache: one URL is a standalone server
//! (`ConnectionManager`, which reconnects by itself), several are the seeds of a Redis Cluster
//! (`cluster_async`, which follows MOVED / ASK). Every command or pipeline sent through it
//! touches one key, so it is valid under a cluster.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, Pipeline};

use crate::error::{Error, ErrorKind, Result};

/// A connection to the Redis deployment (standalone or cluster). Cheap to clone: clones share
/// the underlying multiplexed connection.
#[derive(Clone)]
pub struct RawRedis {
    conn: Conn,
    timeout: Duration,
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RawRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.conn {
            Conn::Single(_) => "standalone",
            Conn::Cluster(_) => "cluster",
        };
        f.debug_struct("RawRedis").field("topology", &kind).finish()
    }
}

impl RawRedis {
    /// Connects: one URL is a standalone server, several are cluster seeds. `timeout` bounds
    /// the connection and then every call.
    pub async fn connect(urls: &[String], timeout: Duration) -> Result<RawRedis> {
        let conn = match urls {
            [] => return Err(Error::config("at least one redis URL")),
            [url] => {
                let client = redis::Client::open(url.as_str())
                    .map_err(|e| Error::config(format!("invalid redis url {url:?}: {e}")))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1);
                let manager = tokio::time::timeout(timeout * 2, ConnectionManager::new_with_config(client, config))
                    .await
                    .map_err(|_| Error::new(ErrorKind::Redis, format!("connecting to {url} timed out")))??;
                Conn::Single(manager)
            }
            seeds => {
                let client = ClusterClientBuilder::new(seeds.to_vec())
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .build()
                    .map_err(|e| Error::config(format!("invalid cluster seeds: {e}")))?;
                let conn = tokio::time::timeout(timeout * 4, client.get_async_connection())
                    .await
                    .map_err(|_| Error::new(ErrorKind::Redis, "connecting to the cluster timed out"))??;
                Conn::Cluster(conn)
            }
        };
        Ok(RawRedis { conn, timeout })
    }

    /// Runs one command.
    pub async fn cmd<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T> {
        let call = async {
            match self.conn.clone() {
                Conn::Single(mut c) => cmd.query_async(&mut c).await,
                Conn::Cluster(mut c) => cmd.query_async(&mut c).await,
            }
        };
        self.bounded(call).await
    }

    /// Runs a pipeline. Under a cluster every command in it must address one slot.
    pub async fn pipe<T: FromRedisValue>(&self, pipe: &Pipeline) -> Result<T> {
        let call = async {
            match self.conn.clone() {
                Conn::Single(mut c) => pipe.query_async(&mut c).await,
                Conn::Cluster(mut c) => pipe.query_async(&mut c).await,
            }
        };
        self.bounded(call).await
    }

    async fn bounded<T>(&self, call: impl Future<Output = redis::RedisResult<T>>) -> Result<T> {
        // The cluster client retries internally; this bounds the whole call, retries included,
        // so that a request never hangs on Redis.
        match tokio::time::timeout(self.timeout * 2, call).await {
            Ok(r) => r.map_err(Error::from),
            Err(_) => Err(Error::new(ErrorKind::Redis, "redis call timed out")),
        }
    }
}
