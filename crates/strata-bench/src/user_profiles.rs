//! `user-profiles`: the seed workload over the example service's real database.
//!
//! 100,000 users (by default) seeded in the example's database (a SQLite file in a temporary
//! directory, or PostgreSQL), 80 % reads / 20 % writes, ids drawn from a Zipf(0.99)
//! distribution. The same operation sequence runs against six variants, back to back, in one
//! process and on one Redis deployment:
//!
//! - **direct**: the database alone ([`Db::get_user`] / [`Db::update_user`]);
//! - **strata**: the example's [`Users`] service (get_or_set with L1 + L2, negative caching,
//!   leases; a write updates the row and caches what the `UPDATE ... RETURNING` gave, under the
//!   key's lease: `Cache::update_through`);
//! - **naive**: cache-aside with raw redis-rs: GET; on a miss query and SET EX; a write DELs;
//! - **cached**: the `cached` crate's `AsyncRedisCache` used the same way (docs/decisions/0008-cached-peer.md);
//! - **redis-rs cache-aio**: the naive cache-aside on a redis-rs connection with its own
//!   client-side cache (feature `cache-aio`, RESP3, `CLIENT TRACKING ON` in default mode, a
//!   cluster connection on a cluster): a repeated GET is answered from process memory until
//!   Redis sends the key's invalidation. Expect stale reads: redis-rs 1.8 stores a GET's reply
//!   in its cache after the reply has come back (`caching/cmd.rs`, `CacheableCommand::resolve`)
//!   with no check for an invalidation of that key processed in between, so a DEL racing the
//!   GET can leave the old value cached, and Redis, having sent its one invalidation, no longer
//!   tracks the key for this connection: the copy stays until its TTL or the LRU drops it (the
//!   race lettuce fixed with a pending marker, redis/lettuce#3481);
//! - **two-tier moka**: a hand-rolled two-tier: a `moka::future::Cache` with a short TTL
//!   ([`TWO_TIER_L1_TTL`]) in front of the naive cache-aside. Nothing invalidates other
//!   instances' moka tier; a write updates the row, DELs the Redis key and invalidates its own
//!   moka entry (the bench is one process, so that is all a hand-rolled one would do).
//!
//! The n-th operation is a pure function of (seed, n): whatever its speed, every variant runs
//! the same sequence. Each variant starts with an empty cache (keys carry a per-run nonce) and
//! first runs a warm-up (`Options::warmup`, unmeasured: the cache fills as it would in a
//! service that has been up for a while), then is measured for its share of the duration,
//! continuing the sequence where the warm-up stopped. Both phases are bounded by a maximum
//! operation count.
//!
//! # Stale reads
//!
//! A read is **stale** if it returned a profile older than the newest write of that user that
//! had *completed* (the database update and the variant's cache invalidation both returned)
//! before the read started. Reads that return no profile are not stale (every user exists).
//!
//! How the bench knows: every write of the run gets a per-user sequence number, written into
//! the name (`User {id} edit {n} {run}.v{seq}`, see [`written_seq`]; seeded rows, and rows a
//! different run wrote, count as 0). Writes to one user are serialized by the bench (a striped
//! lock held across the whole write), so the database holds them in sequence order; once the
//! variant's write returns, the user's committed sequence number is published. A read takes
//! that number before it starts and is stale if the profile it returns carries a smaller one
//! ([`is_stale`]). The numbers run on across the variants (the database is shared), warm-ups
//! included; only the measured phase counts. The database alone can never be stale: it is the
//! check of the checker. Write latency is timed once the lock is held (the variant's own cost);
//! the lock itself only delays writes to a user that another worker is writing.
use std::num::NonZeroUsize;
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

use crate::cpu::{CpuUse, Meter};
use crate::hit_latency::{RawConn, raw_connection};
use crate::runner::{Clock, Timeline, Zipf, masters};
use crate::stats::histogram;
use crate::workload::Target;

/// TTL the peers set, the same as Strata's `Ttl::Medium` default (600 s).
const PEER_TTL: Duration = Duration::from_secs(600);

/// TTL of the two-tier peer's in-process (moka) tier. Nothing tells another instance's moka
/// tier that a profile changed, so this TTL alone bounds how long an instance serves the old
/// profile after another one wrote it: a hand-rolled two-tier keeps it short, and a second is
/// the usual pick (staleness a user can live with, while the hot keys still hit in memory).
pub const TWO_TIER_L1_TTL: Duration = Duration::from_secs(1);

/// Locks that serialize the writes to one user (by id modulo this): enough that different
/// hot users rarely share one.
const WRITE_STRIPES: usize = 1024;

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
    /// Naive cache-aside on redis-rs's client-side cache (`cache-aio`, RESP3 tracking).
    RedisRsCacheAio,
    /// A moka cache with a short TTL in front of the naive cache-aside, no invalidation
    /// between instances.
    TwoTierMoka,
}

impl Variant {
    /// Every variant, in running order.
    pub const ALL: [Variant; 6] = [
        Variant::Direct,
        Variant::Strata,
        Variant::Naive,
        Variant::Cached,
        Variant::RedisRsCacheAio,
        Variant::TwoTierMoka,
    ];

    /// Its place in [`Variant::ALL`] (its colour in the reports' charts).
    pub fn index(self) -> usize {
        Variant::ALL.iter().position(|v| *v == self).unwrap_or(0)
    }

    /// Its name in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Direct => "direct",
            Variant::Strata => "strata",
            Variant::Naive => "naive_redis_rs",
            Variant::Cached => "cached_crate",
            Variant::RedisRsCacheAio => "redis_rs_cache_aio",
            Variant::TwoTierMoka => "two_tier_moka",
        }
    }

    /// What it is, for people.
    pub fn label(self) -> &'static str {
        match self {
            Variant::Direct => "database alone",
            Variant::Strata => "strata (example Users)",
            Variant::Naive => "naive redis-rs cache-aside",
            Variant::Cached => "cached crate AsyncRedisCache",
            Variant::RedisRsCacheAio => "redis-rs cache-aio (RESP3 tracking)",
            Variant::TwoTierMoka => "two-tier: moka 1 s + redis-rs",
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
    /// Latency of successful reads that queried the database (the miss path), nanoseconds.
    pub miss_reads: Histogram<u64>,
    /// Latency of successful writes, nanoseconds.
    pub writes: Histogram<u64>,
    /// Reads that did not query the database.
    pub read_hits: u64,
    /// Reads that returned a profile older than a write completed before they started (see
    /// the module documentation).
    pub stale_reads: u64,
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
    /// Time the writes spent in the database's update (measured phase only, summed over
    /// writes): the rest of a write's time is the variant's cache work.
    pub source_write_time: Duration,
    /// Operations run by the warm-up, before measuring.
    pub warmup_ops: u64,
    /// CPU the measured phase used: this process, the Redis masters, the machine (`None`
    /// when Redis refused INFO).
    pub cpu: Option<CpuUse>,
}

impl Measured {
    fn empty(variant: Variant) -> Self {
        Self {
            variant,
            reads: histogram(),
            miss_reads: histogram(),
            writes: histogram(),
            read_hits: 0,
            stale_reads: 0,
            errors: 0,
            first_error: None,
            elapsed: Duration::ZERO,
            timeline: Timeline::new(Duration::from_secs(1)),
            source_queries: 0,
            source_write_time: Duration::ZERO,
            warmup_ops: 0,
            cpu: None,
        }
    }

    fn absorb(&mut self, other: &Measured) {
        let _ = self.reads.add(&other.reads);
        let _ = self.miss_reads.add(&other.miss_reads);
        let _ = self.writes.add(&other.writes);
        self.read_hits += other.read_hits;
        self.stale_reads += other.stale_reads;
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

/// The sequence number a profile's name carries (`User {id} edit {n} {run}.v{seq}`) for run `run`, 0
/// for anything else (a seeded row, a row an earlier run wrote, a name it cannot parse).
pub fn written_seq(name: &str, run: &str) -> u64 {
    name.rsplit_once(' ').and_then(|(_, tag)| tag.strip_prefix(run)?.strip_prefix(".v")?.parse().ok()).unwrap_or(0)
}

/// Whether a read is stale: it returned a profile carrying sequence number `returned` while
/// the user's write number `committed_before` had completed before the read started. A read
/// that found no profile is not stale.
pub fn is_stale(returned: Option<u64>, committed_before: u64) -> bool {
    returned.is_some_and(|seq| seq < committed_before)
}

/// The writes of a run, for the stale-read check (see the module documentation).
#[derive(Debug)]
struct Writes {
    /// Per user id: the sequence number of its newest completed write (0: none yet).
    committed: Vec<AtomicU64>,
    /// Serialize the writes to one user, so the database holds them in sequence order.
    stripes: Vec<tokio::sync::Mutex<()>>,
    /// Tags this run's names.
    run: String,
}

impl Writes {
    fn new(users: u64, run: &str) -> Self {
        let len = usize::try_from(users).unwrap_or(usize::MAX - 1).saturating_add(1);
        Self {
            committed: (0..len).map(|_| AtomicU64::new(0)).collect(),
            stripes: (0..WRITE_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            run: run.to_owned(),
        }
    }

    fn slot(&self, id: i64) -> Option<&AtomicU64> {
        self.committed.get(usize::try_from(id).ok()?)
    }

    /// The sequence number of the user's newest completed write.
    fn committed(&self, id: i64) -> u64 {
        self.slot(id).map_or(0, |c| c.load(Ordering::Acquire))
    }

    /// Publishes a completed write.
    fn commit(&self, id: i64, seq: u64) {
        if let Some(c) = self.slot(id) {
            c.store(seq, Ordering::Release);
        }
    }

    /// Held across a whole write of the user.
    async fn lock(&self, id: i64) -> tokio::sync::MutexGuard<'_, ()> {
        self.stripes[id.unsigned_abs() as usize % self.stripes.len()].lock().await
    }

    /// The name the write with sequence number `seq` (operation `n`) gives the user.
    fn name(&self, id: i64, n: u64, seq: u64) -> String {
        format!("User {id} edit {n} {}.v{seq}", self.run)
    }

    /// The sequence number of a returned profile.
    fn seq_of(&self, user: &User) -> u64 {
        written_seq(&user.name, &self.run)
    }
}

/// What a read returned.
struct ReadOutcome {
    /// The database was not queried.
    hit: bool,
    /// The profile (`None`: no such user).
    user: Option<User>,
}

/// How one variant reads and writes a profile.
enum Client {
    Direct(Db),
    Strata(Users),
    Naive {
        db: Db,
        raw: RawConn,
        prefix: String,
    },
    Cached {
        db: Db,
        cache: AsyncRedisCache<i64, User>,
    },
    /// The naive cache-aside, on a connection with redis-rs's client-side cache.
    CacheAio {
        db: Db,
        con: RawConn,
        prefix: String,
    },
    TwoTier {
        db: Db,
        l1: moka::future::Cache<i64, User>,
        raw: RawConn,
        prefix: String,
    },
}

impl Client {
    /// Reads a profile.
    async fn read(&self, id: i64) -> anyhow::Result<ReadOutcome> {
        match self {
            Client::Direct(db) => Ok(ReadOutcome { hit: false, user: db.get_user(id).await? }),
            Client::Strata(users) => {
                let (user, loaded) = users.get_reporting_load(id).await?;
                Ok(ReadOutcome { hit: !loaded, user })
            }
            Client::Naive { db, raw, prefix } => cache_aside_read(db, raw, &format!("{prefix}{id}"), id).await,
            Client::CacheAio { db, con, prefix } => cache_aside_read(db, con, &format!("{prefix}{id}"), id).await,
            Client::Cached { db, cache } => {
                if let Some(user) = cache.cache_get(&id).await? {
                    return Ok(ReadOutcome { hit: true, user: Some(user) });
                }
                let user = db.get_user(id).await?;
                if let Some(user) = &user {
                    cache.cache_set(id, user.clone()).await?;
                }
                Ok(ReadOutcome { hit: false, user })
            }
            Client::TwoTier { db, l1, raw, prefix } => {
                if let Some(user) = l1.get(&id).await {
                    return Ok(ReadOutcome { hit: true, user: Some(user) });
                }
                let read = cache_aside_read(db, raw, &format!("{prefix}{id}"), id).await?;
                if let Some(user) = &read.user {
                    l1.insert(id, user.clone()).await;
                }
                Ok(read)
            }
        }
    }

    /// Renames a profile, then invalidates its cached copy.
    async fn write(&self, id: i64, name: String) -> anyhow::Result<()> {
        let update = UserUpdate { name: Some(name), ..UserUpdate::default() };
        match self {
            Client::Direct(db) => {
                db.update_user(id, &update).await?;
            }
            Client::Strata(users) => {
                users.update(id, &update).await?;
            }
            Client::Naive { db, raw: con, prefix } | Client::CacheAio { db, con, prefix } => {
                db.update_user(id, &update).await?;
                let _: u64 = con.clone().del(format!("{prefix}{id}")).await?;
            }
            Client::Cached { db, cache } => {
                db.update_user(id, &update).await?;
                cache.cache_delete(&id).await?;
            }
            Client::TwoTier { db, l1, raw, prefix } => {
                db.update_user(id, &update).await?;
                let _: u64 = raw.clone().del(format!("{prefix}{id}")).await?;
                l1.invalidate(&id).await;
            }
        }
        Ok(())
    }
}

/// Cache-aside with redis-rs: GET; on a miss query the database and SET EX.
async fn cache_aside_read(db: &Db, con: &RawConn, key: &str, id: i64) -> anyhow::Result<ReadOutcome> {
    let mut con = con.clone();
    let bytes: Option<Vec<u8>> = con.get(key).await?;
    if let Some(bytes) = bytes {
        return Ok(ReadOutcome { hit: true, user: Some(serde_json::from_slice(&bytes)?) });
    }
    let user = db.get_user(id).await?;
    if let Some(user) = &user {
        let () = con.set_ex(key, serde_json::to_vec(user)?, PEER_TTL.as_secs()).await?;
    }
    Ok(ReadOutcome { hit: false, user })
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
    // One history for the whole run: the variants share the database and its rows.
    let writes = Arc::new(Writes::new(options.users, &nonce));
    let share = options.duration / Variant::ALL.len() as u32;
    let mut meter = match Meter::new(target).await {
        Ok(meter) => Some(meter),
        Err(e) => {
            eprintln!("no CPU figures per operation: {e:#}");
            None
        }
    };
    let mut measured = Vec::new();
    for variant in Variant::ALL {
        let client = Arc::new(client(variant, target, &db, &nonce, options.users).await?);
        let next = Arc::new(AtomicU64::new(0));
        let mut warmup_ops = 0;
        if !options.warmup.is_zero() {
            clock.phase(format!("{} (warm-up)", variant.label()));
            let warm = drive(client.clone(), variant, sequence, &writes, &next, options.warmup, options).await;
            warmup_ops = warm.reads.len() + warm.writes.len() + warm.errors;
        }
        clock.phase(variant.label());
        let (before, updating_before) = (db.queries(), db.update_time());
        let cpu_before = match &mut meter {
            Some(meter) => meter.snapshot().await.ok(),
            None => None,
        };
        let mut m = drive(client, variant, sequence, &writes, &next, share, options).await;
        m.source_queries = db.queries() - before;
        m.source_write_time = db.update_time().saturating_sub(updating_before);
        if let (Some(meter), Some(cpu_before)) = (&mut meter, cpu_before) {
            m.cpu = meter.snapshot().await.ok().map(|after| after.since(&cpu_before));
        }
        m.warmup_ops = warmup_ops;
        measured.push(m);
    }
    drop(clock);
    drop(db);
    drop(local_postgres);
    Ok(Run { measured, database, options: options.clone() })
}

async fn client(variant: Variant, target: &Target, db: &Db, nonce: &str, users: u64) -> anyhow::Result<Client> {
    // The in-process tiers of the peers hold every profile, as Strata's 64 MiB L1 about does.
    let entries = usize::try_from(users).unwrap_or(usize::MAX).max(1);
    Ok(match variant {
        Variant::Direct => Client::Direct(db.clone()),
        Variant::Strata => {
            let builder = strata_example::service::configure(target.cache_builder());
            let cache = builder.require_redis(true).build().await.context("connecting Strata")?;
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
        Variant::RedisRsCacheAio => Client::CacheAio {
            db: db.clone(),
            con: caching_connection(target, entries).await.context("connecting redis-rs with cache-aio")?,
            prefix: format!("bench-profiles:{nonce}:cache-aio:user:"),
        },
        Variant::TwoTierMoka => Client::TwoTier {
            db: db.clone(),
            l1: moka::future::Cache::builder().max_capacity(entries as u64).time_to_live(TWO_TIER_L1_TTL).build(),
            raw: raw_connection(target).await.context("connecting redis-rs")?,
            prefix: format!("bench-profiles:{nonce}:two-tier:user:"),
        },
    })
}

/// A redis-rs connection with its client-side cache on (feature `cache-aio`): RESP3, `CLIENT
/// TRACKING ON` (default mode: Redis remembers the keys each connection read), every cacheable
/// read cached (`CacheMode::All`), `entries` keys at most, values kept no longer than the
/// key's TTL in Redis. On a cluster, redis-rs's cluster connection (one cache shared by the
/// connections to every node), as a Rust team would use it.
async fn caching_connection(target: &Target, entries: usize) -> anyhow::Result<RawConn> {
    let config = redis::caching::CacheConfig::new()
        .set_size(NonZeroUsize::new(entries).unwrap_or(NonZeroUsize::MIN))
        .set_default_client_ttl(PEER_TTL);
    Ok(match &target.topology {
        strata::Topology::Cluster(seeds) => RawConn::Cluster(
            redis::cluster::ClusterClient::builder(seeds.clone())
                .use_protocol(redis::ProtocolVersion::RESP3)
                .cache_config(config)
                .build()?
                .get_async_connection()
                .await?,
        ),
        _ => {
            let url = target.urls().into_iter().next().context("no url")?;
            let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())?;
            let settings = info.redis_settings().clone().set_protocol(redis::ProtocolVersion::RESP3);
            let client = redis::Client::open(info.set_redis_settings(settings))?;
            let config = redis::AsyncConnectionConfig::new().set_cache_config(config);
            RawConn::Single(client.get_multiplexed_async_connection_with_config(&config).await?)
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
    writes: &Arc<Writes>,
    next: &Arc<AtomicU64>,
    duration: Duration,
    options: &Options,
) -> Measured {
    let start = Instant::now();
    // Bounds this phase's operations, whatever the earlier phase ran.
    let max_ops = next.load(Ordering::Relaxed).saturating_add(options.max_ops);
    let tasks: Vec<_> = (0..options.concurrency.max(1))
        .map(|_| {
            let (client, writes, next) = (client.clone(), writes.clone(), next.clone());
            tokio::spawn(async move {
                let mut m = Measured::empty(variant);
                while start.elapsed() < duration {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= max_ops {
                        break;
                    }
                    let result = match sequence.op(n) {
                        Op::Read(id) => {
                            let committed = writes.committed(id);
                            let began = Instant::now();
                            client.read(id).await.map(|read| {
                                let took = (began.elapsed().as_nanos() as u64).max(1);
                                let _ = m.reads.record(took);
                                if !read.hit {
                                    let _ = m.miss_reads.record(took);
                                }
                                m.read_hits += u64::from(read.hit);
                                m.timeline.record(began.duration_since(start), read.hit);
                                let seq = read.user.as_ref().map(|u| writes.seq_of(u));
                                m.stale_reads += u64::from(is_stale(seq, committed));
                            })
                        }
                        Op::Write(id) => {
                            let _turn = writes.lock(id).await;
                            let seq = writes.committed(id) + 1;
                            let began = Instant::now();
                            client.write(id, writes.name(id, n, seq)).await.map(|()| {
                                let took = (began.elapsed().as_nanos() as u64).max(1);
                                writes.commit(id, seq);
                                let _ = m.writes.record(took);
                            })
                        }
                    };
                    if let Err(e) = result {
                        m.errors += 1;
                        m.first_error.get_or_insert_with(|| format!("{e:#}"));
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
    fn the_sequence_number_is_read_back_from_the_name_written() {
        let writes = Writes::new(10, "0a1b2c3d");
        let name = writes.name(7, 12_345, 42);
        assert_eq!(written_seq(&name, "0a1b2c3d"), 42, "{name}");
        assert_eq!(written_seq("user-7", "0a1b2c3d"), 0, "a seeded row");
        assert_eq!(written_seq(&name, "ffffffff"), 0, "a row another run wrote");
        assert_eq!(written_seq("User 7 edit 3 0a1b2c3d.v", "0a1b2c3d"), 0);
        assert_eq!(written_seq("User 7 edit 3 0a1b2c3d.v1x", "0a1b2c3d"), 0);
        assert_eq!(written_seq("User 7 edit 3 0a1b2c3d.v18446744073709551615", "0a1b2c3d"), u64::MAX);
    }

    #[test]
    fn a_read_is_stale_only_when_older_than_a_completed_write() {
        assert!(is_stale(Some(3), 4));
        assert!(is_stale(Some(0), 1), "the seeded row after a completed write");
        assert!(!is_stale(Some(4), 4), "the newest completed write");
        assert!(!is_stale(Some(5), 4), "a write still in progress may show");
        assert!(!is_stale(None, 4), "no profile");
        assert!(!is_stale(Some(0), 0), "never written");
    }

    #[test]
    fn committed_numbers_are_per_user_and_ids_out_of_range_are_ignored() {
        let writes = Writes::new(3, "r");
        writes.commit(2, 5);
        writes.commit(99, 7);
        assert_eq!((writes.committed(1), writes.committed(2), writes.committed(3)), (0, 5, 0));
        assert_eq!((writes.committed(99), writes.committed(-1)), (0, 0));
    }

    /// Two instances of a peer on one real Redis and one database: instance `b` writes user
    /// `id` (not written before), then instance `a` reads it; the checker's verdict on that read.
    async fn read_after_another_instance_wrote(a: &Client, b: &Client, db: &Db, id: i64) -> bool {
        let writes = Writes::new(10, "t");
        let first = a.read(id).await.expect("read");
        assert_eq!(first.user.as_ref().map(|u| writes.seq_of(u)), Some(0), "the seeded row");
        let seq = writes.committed(id) + 1;
        b.write(id, writes.name(id, 0, seq)).await.expect("write");
        writes.commit(id, seq);
        let user = db.get_user(id).await.expect("db").expect("the user");
        assert!(!is_stale(Some(writes.seq_of(&user)), writes.committed(id)), "the database holds the write");
        let committed = writes.committed(id);
        let read = a.read(id).await.expect("read");
        is_stale(read.user.as_ref().map(|u| writes.seq_of(u)), committed)
    }

    #[tokio::test]
    async fn the_checker_sees_the_two_tier_serve_another_instances_overwritten_profile() {
        let redis = strata_cluster::RedisServer::start().expect("redis-server");
        let target = Target::external(vec![redis.url()]).expect("target");
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(&format!("sqlite:{}", dir.path().join("t.sqlite3").display())).await.expect("db");
        db.seed_users(10).await.expect("seed");
        // An hour, not TWO_TIER_L1_TTL: the verdict must not depend on how fast the test runs.
        let two_tier = || async {
            Client::TwoTier {
                db: db.clone(),
                l1: moka::future::Cache::builder().time_to_live(Duration::from_secs(3600)).build(),
                raw: raw_connection(&target).await.expect("redis-rs"),
                prefix: "t:two-tier:user:".to_owned(),
            }
        };
        let (a, b) = (two_tier().await, two_tier().await);
        assert!(read_after_another_instance_wrote(&a, &b, &db, 1).await, "a's moka tier still holds the seeded row");

        // Naive cache-aside on the same Redis: the DEL reaches every instance.
        let naive = || async {
            Client::Naive {
                db: db.clone(),
                raw: raw_connection(&target).await.expect("redis-rs"),
                prefix: "t:naive:user:".to_owned(),
            }
        };
        let (a, b) = (naive().await, naive().await);
        assert!(!read_after_another_instance_wrote(&a, &b, &db, 2).await, "naive cache-aside rereads the row");
    }

    #[tokio::test]
    async fn the_cache_aio_peer_answers_a_repeated_read_from_process_memory() {
        let redis = strata_cluster::RedisServer::start().expect("redis-server");
        let target = Target::external(vec![redis.url()]).expect("target");
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(&format!("sqlite:{}", dir.path().join("t.sqlite3").display())).await.expect("db");
        db.seed_users(10).await.expect("seed");
        let con = caching_connection(&target, 100).await.expect("RESP3 connection with cache-aio");
        let RawConn::Single(single) = &con else { panic!("a standalone server gets a multiplexed connection") };
        let stats = || single.get_cache_statistics().expect("the cache is on");
        let client = Client::CacheAio { db: db.clone(), con: con.clone(), prefix: "t:aio:user:".to_owned() };
        let first = client.read(3).await.expect("read");
        assert!(!first.hit && first.user.is_some(), "a miss loads the row and sets the key");
        for _ in 0..3 {
            assert!(client.read(3).await.expect("read").hit);
        }
        assert!(stats().hit >= 1, "GETs after the first Redis answer come from the local cache: {:?}", stats());
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(redact("postgres://u:secret@127.0.0.1:5432/db"), "postgres://u@127.0.0.1:5432/db");
        assert_eq!(redact("sqlite:/tmp/x"), "sqlite:/tmp/x");
    }
}
