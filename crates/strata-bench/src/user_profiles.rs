//! `user-profiles`: the seed workload over the example service's real database.
//!
//! 100,000 users (by default) seeded in the example's database (a SQLite file in a temporary
//! directory, or PostgreSQL), 80 % reads / 20 % writes, ids drawn from a Zipf(0.99)
//! distribution. The same operation sequence runs against four variants, back to back, in one
//! process and on one Redis deployment:
//!
//! - **direct**: the database alone ([`Db::get_user`] / [`Db::update_user`]);
//! - **strata**: the example's [`Users`] service (get_or_set with L1 + L2, negative caching,
//!   leases; a write updates the row, then deletes the key);
//! - **naive**: cache-aside with raw redis-rs: GET; on a miss query and SET EX; a write DELs;
//! - **cached**: the `cached` crate's `AsyncRedisCache` used the same way (docs/decisions/0008-cached-peer.md).
//!
//! The n-th operation is a pure function of (seed, n): whatever its speed, every variant runs
//! the same sequence. Each variant starts with an empty cache (keys carry a per-run nonce) and
//! first runs a warm-up (`Options::warmup`, unmeasured: the cache fills as it would in a
//! service that has been up for a while), then is measured for its share of the duration,
//! continuing the sequence where the warm-up stopped. Both phases are bounded by a maximum
//! operation count.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use cached::{AsyncRedisCache, ConcurrentCachedAsync};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use redis::AsyncCommands;
use strata::KeySchema;
use strata_example::db::{Db, LocalPostgres, User, UserUpdate};
use strata_example::service::Users;

use crate::hit_latency::{RawConn, raw_connection};
use crate::runner::{Clock, Timeline, Zipf, masters};
use crate::stats::histogram;
use crate::workload::Target;

/// TTL the peers set, the same as Strata's `Ttl::Medium` default (600 s).
const PEER_TTL: Duration = Duration::from_secs(600);

/// Settings of the scenario.
#[derive(Debug, Clone)]
pub struct Options {
    /// Users seeded, ids `1..=users`.
    pub users: u64,
    /// Fraction of operations that are reads.
    pub read_ratio: f64,
    /// Exponent of the Zipf distribution of ids.
    pub zipf_exponent: f64,
    /// Measured time of the whole run, shared evenly by the variants.
    pub duration: Duration,
    /// Unmeasured warm-up of each variant before its measured share (zero: measure from an
    /// empty cache).
    pub warmup: Duration,
    /// Operations per variant at most.
    pub max_ops: u64,
    /// Concurrent workers per variant.
    pub concurrency: usize,
    /// `postgres://...` or `sqlite:PATH`; when `None`, a database of kind `database` that the
    /// run creates and removes.
    pub database_url: Option<String>,
    /// The database made for the run when no URL is given.
    pub database: Database,
    /// Artificial latency before every database statement (0 by default; labelled in reports).
    pub db_latency: Duration,
    /// Seed of the operation sequence.
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            users: 100_000,
            read_ratio: 0.8,
            zipf_exponent: 0.99,
            duration: Duration::from_secs(30),
            warmup: Duration::from_secs(5),
            max_ops: 5_000_000,
            concurrency: 8,
            database_url: None,
            database: Database::Sqlite,
            db_latency: Duration::ZERO,
            seed: 42,
        }
    }
}

/// The database a run creates when it is given no URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Database {
    /// A SQLite file in a temporary directory.
    #[default]
    Sqlite,
    /// A throwaway PostgreSQL server ([`LocalPostgres`]; needs Debian's `postgresql-15`).
    Postgres,
}

/// The variants, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// The database alone.
    Direct,
    /// The example's `Users` service through Strata.
    Strata,
    /// Naive cache-aside with raw redis-rs.
    Naive,
    /// The `cached` crate's Redis store.
    Cached,
}

impl Variant {
    /// Every variant, in running order.
    pub const ALL: [Variant; 4] = [Variant::Direct, Variant::Strata, Variant::Naive, Variant::Cached];

    /// Its name in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Direct => "direct",
            Variant::Strata => "strata",
            Variant::Naive => "naive_redis_rs",
            Variant::Cached => "cached_crate",
        }
    }

    /// What it is, for people.
    pub fn label(self) -> &'static str {
        match self {
            Variant::Direct => "database alone",
            Variant::Strata => "strata (example Users)",
            Variant::Naive => "naive redis-rs cache-aside",
            Variant::Cached => "cached crate AsyncRedisCache",
        }
    }
}

/// One operation of the sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Read the profile of this user.
    Read(i64),
    /// Change the name of this user.
    Write(i64),
}

/// The operation sequence: the n-th operation depends on the seed and n alone.
#[derive(Debug, Clone, Copy)]
pub struct Sequence {
    zipf: Zipf,
    read_ratio: f64,
    seed: u64,
}

impl Sequence {
    /// The sequence of `options`.
    pub fn new(options: &Options) -> anyhow::Result<Self> {
        anyhow::ensure!(options.users > 0, "at least one user");
        anyhow::ensure!((0.0..=1.0).contains(&options.read_ratio), "the read ratio is a fraction");
        Ok(Self {
            zipf: Zipf::new(options.users, options.zipf_exponent)?,
            read_ratio: options.read_ratio,
            seed: options.seed,
        })
    }

    /// The n-th operation.
    pub fn op(&self, n: u64) -> Op {
        let mut rng = SmallRng::seed_from_u64(self.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let id = i64::try_from(self.zipf.sample(&mut rng)).unwrap_or(i64::MAX - 1) + 1;
        if rng.random_bool(self.read_ratio) { Op::Read(id) } else { Op::Write(id) }
    }
}

/// What one variant measured.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Which variant.
    pub variant: Variant,
    /// Latency of successful reads, nanoseconds.
    pub reads: Histogram<u64>,
    /// Latency of successful writes, nanoseconds.
    pub writes: Histogram<u64>,
    /// Reads that did not query the database.
    pub read_hits: u64,
    /// Failed operations.
    pub errors: u64,
    /// The first failure.
    pub first_error: Option<String>,
    /// Wall time.
    pub elapsed: Duration,
    /// Read hits per second.
    pub timeline: Timeline,
    /// Statements the database received (measured phase only).
    pub source_queries: u64,
    /// Operations run by the warm-up, before measuring.
    pub warmup_ops: u64,
}

impl Measured {
    fn empty(variant: Variant) -> Self {
        Self {
            variant,
            reads: histogram(),
            writes: histogram(),
            read_hits: 0,
            errors: 0,
            first_error: None,
            elapsed: Duration::ZERO,
            timeline: Timeline::new(Duration::from_secs(1)),
            source_queries: 0,
            warmup_ops: 0,
        }
    }

    fn absorb(&mut self, other: &Measured) {
        let _ = self.reads.add(&other.reads);
        let _ = self.writes.add(&other.writes);
        self.read_hits += other.read_hits;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        self.timeline.merge(&other.timeline);
    }

    /// Fraction of reads that did not query the database.
    pub fn hit_ratio(&self) -> f64 {
        self.read_hits as f64 / self.reads.len().max(1) as f64
    }

    /// Operations (reads and writes) per second.
    pub fn throughput(&self) -> f64 {
        (self.reads.len() + self.writes.len()) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A whole run.
#[derive(Debug)]
pub struct Run {
    /// The variants, in running order.
    pub measured: Vec<Measured>,
    /// What the database was.
    pub database: String,
    /// The settings.
    pub options: Options,
}

/// How one variant reads and writes a profile.
enum Client {
    Direct(Db),
    Strata(Users),
    Naive { db: Db, raw: RawConn, prefix: String },
    Cached { db: Db, cache: AsyncRedisCache<i64, User> },
}

impl Client {
    /// Reads a profile; whether the database was not queried.
    async fn read(&self, id: i64) -> anyhow::Result<bool> {
        match self {
            Client::Direct(db) => {
                std::hint::black_box(db.get_user(id).await?);
                Ok(false)
            }
            Client::Strata(users) => {
                let (user, loaded) = users.get_reporting_load(id).await?;
                std::hint::black_box(user);
                Ok(!loaded)
            }
            Client::Naive { db, raw, prefix } => {
                let key = format!("{prefix}{id}");
                let mut con = raw.clone();
                let bytes: Option<Vec<u8>> = con.get(&key).await?;
                if let Some(bytes) = bytes {
                    std::hint::black_box(serde_json::from_slice::<User>(&bytes)?);
                    return Ok(true);
                }
                if let Some(user) = db.get_user(id).await? {
                    let () = con.set_ex(&key, serde_json::to_vec(&user)?, PEER_TTL.as_secs()).await?;
                }
                Ok(false)
            }
            Client::Cached { db, cache } => {
                if let Some(user) = cache.cache_get(&id).await? {
                    std::hint::black_box(user);
                    return Ok(true);
                }
                if let Some(user) = db.get_user(id).await? {
                    cache.cache_set(id, user).await?;
                }
                Ok(false)
            }
        }
    }

    /// Changes a profile, then invalidates its cached copy.
    async fn write(&self, id: i64, n: u64) -> anyhow::Result<()> {
        let update = UserUpdate { name: Some(format!("User {id} edit {n}")), ..UserUpdate::default() };
        match self {
            Client::Direct(db) => {
                db.update_user(id, &update).await?;
            }
            Client::Strata(users) => {
                users.update(id, &update).await?;
            }
            Client::Naive { db, raw, prefix } => {
                db.update_user(id, &update).await?;
                let _: u64 = raw.clone().del(format!("{prefix}{id}")).await?;
            }
            Client::Cached { db, cache } => {
                db.update_user(id, &update).await?;
                cache.cache_delete(&id).await?;
            }
        }
        Ok(())
    }
}

/// Seeds the database, then runs every variant against `target`.
pub async fn run(target: &Target, options: &Options) -> anyhow::Result<Run> {
    let sequence = Sequence::new(options)?;
    let scratch = tempfile::tempdir().context("creating a temporary directory")?;
    // Stopped when the run ends (dropped last).
    let mut local_postgres = None;
    let url = match (&options.database_url, options.database) {
        (Some(url), _) => url.clone(),
        (None, Database::Sqlite) => format!("sqlite:{}", scratch.path().join("profiles.sqlite3").display()),
        (None, Database::Postgres) => {
            let server = tokio::task::spawn_blocking(LocalPostgres::start).await??;
            let url = server.url().to_owned();
            local_postgres = Some(server);
            url
        }
    };
    let db = Db::open(&url).await.with_context(|| format!("opening the database {}", redact(&url)))?;
    let database = describe(&db, &url, options);
    let clock = Clock::start(options.duration + Duration::from_secs(2));
    clock.phase(format!("seeding {} users", options.users));
    db.seed_users(options.users).await.context("seeding users")?;
    db.set_extra_latency(options.db_latency);

    let nonce = format!("{:08x}", rand::random::<u32>());
    let share = options.duration / Variant::ALL.len() as u32;
    let mut measured = Vec::new();
    for variant in Variant::ALL {
        let client = Arc::new(client(variant, target, &db, &nonce).await?);
        let next = Arc::new(AtomicU64::new(0));
        let mut warmup_ops = 0;
        if !options.warmup.is_zero() {
            clock.phase(format!("{} (warm-up)", variant.label()));
            let warm = drive(client.clone(), variant, sequence, &next, options.warmup, options).await;
            warmup_ops = warm.reads.len() + warm.writes.len() + warm.errors;
        }
        clock.phase(variant.label());
        let before = db.queries();
        let mut m = drive(client, variant, sequence, &next, share, options).await;
        m.source_queries = db.queries() - before;
        m.warmup_ops = warmup_ops;
        measured.push(m);
    }
    drop(clock);
    drop(db);
    drop(local_postgres);
    Ok(Run { measured, database, options: options.clone() })
}

async fn client(variant: Variant, target: &Target, db: &Db, nonce: &str) -> anyhow::Result<Client> {
    Ok(match variant {
        Variant::Direct => Client::Direct(db.clone()),
        Variant::Strata => {
            let cache = target.cache_builder().require_redis(true).build().await.context("connecting Strata")?;
            Client::Strata(Users::new(db.clone(), cache, KeySchema::new(&format!("profiles{nonce}"), 1)?))
        }
        Variant::Naive => Client::Naive {
            db: db.clone(),
            raw: raw_connection(target).await.context("connecting redis-rs")?,
            prefix: format!("bench-profiles:{nonce}:naive:user:"),
        },
        Variant::Cached => {
            // AsyncRedisCache talks to one node: on a cluster, every key of the run shares one
            // hash tag and the cache connects to the master that owns its slot.
            let namespace = format!("{{bench-profiles-{nonce}}}:cached:");
            let node = owner_of(target, &namespace).await?;
            let cache = AsyncRedisCache::new("user:", PEER_TTL)
                .namespace(&namespace)
                .connection_string(&node)
                .build()
                .await
                .context("connecting the cached crate's AsyncRedisCache")?;
            Client::Cached { db: db.clone(), cache }
        }
    })
}

/// The master that serves `key` (the only one that answers a GET of it without MOVED).
async fn owner_of(target: &Target, key: &str) -> anyhow::Result<String> {
    for url in masters(target).await? {
        let mut con = crate::runner::connect(&url).await?;
        let answer: redis::RedisResult<Option<String>> = redis::cmd("GET").arg(key).query_async(&mut con).await;
        if answer.is_ok() {
            return Ok(url);
        }
    }
    anyhow::bail!("no master serves the slot of {key}")
}

async fn drive(
    client: Arc<Client>,
    variant: Variant,
    sequence: Sequence,
    next: &Arc<AtomicU64>,
    duration: Duration,
    options: &Options,
) -> Measured {
    let start = Instant::now();
    // Bounds this phase's operations, whatever the earlier phase ran.
    let max_ops = next.load(Ordering::Relaxed).saturating_add(options.max_ops);
    let tasks: Vec<_> = (0..options.concurrency.max(1))
        .map(|_| {
            let (client, next) = (client.clone(), next.clone());
            tokio::spawn(async move {
                let mut m = Measured::empty(variant);
                while start.elapsed() < duration {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= max_ops {
                        break;
                    }
                    let op = sequence.op(n);
                    let began = Instant::now();
                    let result = match op {
                        Op::Read(id) => client.read(id).await.map(Some),
                        Op::Write(id) => client.write(id, n).await.map(|()| None),
                    };
                    let took = (began.elapsed().as_nanos() as u64).max(1);
                    match result {
                        Ok(Some(hit)) => {
                            let _ = m.reads.record(took);
                            m.read_hits += u64::from(hit);
                            m.timeline.record(began.duration_since(start), hit);
                        }
                        Ok(None) => {
                            let _ = m.writes.record(took);
                        }
                        Err(e) => {
                            m.errors += 1;
                            m.first_error.get_or_insert_with(|| format!("{e:#}"));
                        }
                    }
                }
                m
            })
        })
        .collect();
    let mut total = Measured::empty(variant);
    for task in tasks {
        match task.await {
            Ok(m) => total.absorb(&m),
            Err(e) => {
                total.errors += 1;
                total.first_error.get_or_insert_with(|| format!("a worker panicked: {e}"));
            }
        }
    }
    total.elapsed = start.elapsed();
    total
}

fn describe(db: &Db, url: &str, options: &Options) -> String {
    let base = match db.backend() {
        strata_example::db::Backend::Sqlite => {
            format!("SQLite file {} (WAL, 4 connections, same host)", url.trim_start_matches("sqlite:"))
        }
        strata_example::db::Backend::Postgres if options.database_url.is_none() => {
            format!("PostgreSQL 15 started for the run at {} (fsync off, same host)", redact(url))
        }
        strata_example::db::Backend::Postgres => format!("PostgreSQL at {}", redact(url)),
    };
    if options.db_latency.is_zero() {
        base
    } else {
        format!("{base}, plus an artificial {:?} before every statement (--db-latency-ms)", options.db_latency)
    }
}

/// `url` without its password.
fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((auth, host)) => {
                let user = auth.split(':').next().unwrap_or("");
                format!("{scheme}://{user}@{host}")
            }
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sequence_is_a_function_of_seed_and_index() {
        let options = Options { users: 1000, ..Options::default() };
        let (a, b) = (Sequence::new(&options).expect("seq"), Sequence::new(&options).expect("seq"));
        let ops: Vec<Op> = (0..10_000).map(|n| a.op(n)).collect();
        assert!((0..10_000).rev().all(|n| b.op(n) == ops[n as usize]), "same op whatever the order");
        let reads = ops.iter().filter(|o| matches!(o, Op::Read(_))).count();
        assert!((7_500..8_500).contains(&reads), "about 80 % reads, got {reads}");
        let ids = |o: &Op| match o {
            Op::Read(id) | Op::Write(id) => *id,
        };
        assert!(ops.iter().all(|o| (1..=1000).contains(&ids(o))));
        let top = ops.iter().filter(|o| ids(o) == 1).count();
        assert!(top > 500, "id 1 is the most frequent under Zipf(0.99): {top}");
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(redact("postgres://u:secret@127.0.0.1:5432/db"), "postgres://u@127.0.0.1:5432/db");
        assert_eq!(redact("sqlite:/tmp/x"), "sqlite:/tmp/x");
    }
}
