//! `inspect`, `invalidate` and `bump_version` against real Redis: a 3+3 cluster and a
//! standalone server, seeded with a known keyspace.

use std::collections::BTreeMap;

use indicatif::ProgressBar;
use redis::ConnectionLike;
use strata_cluster::{RedisCluster, RedisServer};
use strata_ops::inspect::{InspectOptions, NO_NAMESPACE, NamespaceStats, inspect};
use strata_ops::invalidate::{InvalidateOptions, Selector, bump_version, invalidate, schema_key, schema_version};
use strata_ops::{Credentials, Deployment};

/// `(key pattern with {i}, count, TTL seconds (None: no TTL))`.
const SEED: &[(&str, usize, Option<u64>)] = &[
    ("shop:v1:user:{i}", 300, Some(30)),
    ("shop:v1:order:{i}", 200, Some(2 * 3600)),
    ("session:{i}", 50, None),
    ("shop:v1:catalog:{i}", 5, Some(2 * 86_400)),
    // Decoys for `--namespace shop:v1:user`.
    ("shop:v1:users:{i}", 1, Some(300)),
    ("shop:v1:user", 1, Some(3000)),
    ("shop:v1:us?r:{i}", 1, Some(300)),
    ("plain", 1, Some(300)),
];

fn seed(con: &mut dyn ConnectionLike) {
    for (pattern, count, ttl) in SEED {
        for i in 0..*count {
            let key = pattern.replace("{i}", &i.to_string());
            let mut cmd = redis::cmd("SET");
            cmd.arg(&key).arg(format!("value of {key}"));
            if let Some(ttl) = ttl {
                cmd.arg("EX").arg(*ttl);
            }
            cmd.exec(con).expect("SET");
        }
    }
}

/// `namespace -> (keys, no_ttl_keys)` of the seed.
fn expected() -> BTreeMap<String, (u64, u64)> {
    [
        ("shop:v1:user", (300, 0)),
        ("shop:v1:order", (200, 0)),
        ("session", (50, 50)),
        ("shop:v1:catalog", (5, 0)),
        ("shop:v1:users", (1, 0)),
        ("shop", (1, 0)),
        ("shop:v1:us?r", (1, 0)),
        (NO_NAMESPACE, (1, 0)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn counts(namespaces: &BTreeMap<String, NamespaceStats>) -> BTreeMap<String, (u64, u64)> {
    namespaces.iter().map(|(k, v)| (k.clone(), (v.keys, v.no_ttl_keys))).collect()
}

fn hidden() -> ProgressBar {
    ProgressBar::hidden()
}

/// Inspection, sampling, invalidation by namespace / pattern and dry runs on one deployment.
fn exercise(deployment: &Deployment, masters: usize) {
    let report = inspect(deployment, &InspectOptions::default(), &hidden()).expect("inspect");
    assert!(!report.sampled);
    assert_eq!(counts(&report.namespaces), expected());
    for (name, stats) in &report.namespaces {
        assert!(stats.memory_bytes > 0, "{name}: {stats:?}");
    }
    let h = report.ttl_histogram;
    assert_eq!(h.buckets().map(|(_, n)| n), [50, 300, 3, 1, 200, 5], "{h:?}");
    assert_eq!(report.total_keys, 559);
    assert_eq!(report.no_ttl_keys, 50);
    assert_eq!(report.nodes.len(), deployment.nodes.len());
    let scanned: u64 = report.nodes.iter().map(|n| n.scanned_keys).sum();
    assert_eq!(scanned, 559);
    let master_keys: u64 = report.nodes.iter().filter(|n| n.role == strata_ops::Role::Master).map(|n| n.keys).sum();
    assert_eq!(master_keys, 559);
    for node in &report.nodes {
        assert!(node.error.is_none(), "{node:?}");
        assert!(node.used_memory_bytes > 0, "{node:?}");
        // Read before the scan: nothing has looked a key up yet (SET is not a lookup).
        assert_eq!(node.hit_ratio, None, "{node:?}");
        assert_eq!(node.inspect_lookups, node.scanned_keys, "one PTTL per key measured");
    }
    assert_eq!(report.big_keys.len(), 10);
    assert!(report.big_keys.windows(2).all(|w| w[0].memory_bytes >= w[1].memory_bytes));
    let json = serde_json::to_value(&report).expect("json");
    assert!(report.exact);
    for field in ["namespaces", "ttl_histogram", "nodes", "sampled", "exact"] {
        assert!(json.get(field).is_some(), "{field} missing");
    }
    for field in ["addr", "used_memory_bytes", "maxmemory_bytes", "hit_ratio", "evicted_keys", "expired_keys", "keys"] {
        assert!(json["nodes"][0].get(field).is_some(), "nodes[].{field} missing");
    }
    assert_eq!(json["ttl_histogram"][">=1d"], 5);
    assert_eq!(json["namespaces"]["session"]["no_ttl_keys"], 50);

    // Sampled: 40 keys per master, extrapolated by each node's key count.
    let sampled = inspect(deployment, &InspectOptions { sample: Some(40), ..InspectOptions::default() }, &hidden())
        .expect("sampled inspect");
    assert!(sampled.sampled);
    assert_eq!(sampled.sample_size, Some(40));
    let measured: u64 = sampled.nodes.iter().map(|n| n.scanned_keys).sum();
    assert_eq!(measured, 40 * masters as u64);
    // The first inspection's PTTLs are keyspace hits now: hence `inspect_lookups`.
    for node in sampled.nodes.iter().filter(|n| n.role == strata_ops::Role::Master) {
        assert_eq!(node.hit_ratio, Some(1.0), "{node:?}");
        assert!(node.keyspace_hits >= node.keys, "{node:?}");
    }
    assert!(sampled.total_keys.abs_diff(559) <= 10, "estimate {}", sampled.total_keys);
    assert_eq!(serde_json::to_value(&sampled).expect("json")["sampled"], true);
    assert!(!sampled.exact, "a sample is never exact");

    // Dry run: counted, nothing removed.
    let options = InvalidateOptions { dry_run: true, ..InvalidateOptions::namespace("shop:v1:user") };
    let dry = invalidate(deployment, &options, &hidden()).expect("dry run");
    assert_eq!((dry.matched, dry.removed, dry.dry_run), (300, 0, true));
    assert_eq!(dry.pattern, "shop:v1:user:*");
    let after = inspect(deployment, &InspectOptions::default(), &hidden()).expect("inspect");
    assert_eq!(counts(&after.namespaces), expected());

    // The namespace, exactly: small batches to cross many UNLINK round trips.
    let options = InvalidateOptions { batch: 7, ..InvalidateOptions::namespace("shop:v1:user") };
    let done = invalidate(deployment, &options, &hidden()).expect("invalidate");
    assert_eq!((done.matched, done.removed, done.dry_run, done.masters), (300, 300, false, masters));
    let mut want = expected();
    want.remove("shop:v1:user");
    let after = inspect(deployment, &InspectOptions::default(), &hidden()).expect("inspect");
    assert_eq!(counts(&after.namespaces), want);

    // A first-segment namespace: `shop` holds the bare `shop:v1:user` key, not the schema keys.
    let done = invalidate(deployment, &InvalidateOptions::namespace("shop"), &hidden()).expect("invalidate shop");
    assert_eq!((done.matched, done.removed), (1, 1));
    want.remove("shop");

    // Glob characters: refused in a namespace, escaped by the caller in a pattern.
    let err = invalidate(deployment, &InvalidateOptions::namespace("shop:v1:us?r"), &hidden()).expect_err("glob");
    assert!(err.is_invalid_input(), "{err}");
    assert!(err.to_string().contains("glob"), "{err}");
    let done = invalidate(deployment, &InvalidateOptions::pattern(r"shop:v1:us\?r:*"), &hidden()).expect("pattern");
    assert_eq!((done.matched, done.removed), (1, 1));
    want.remove("shop:v1:us?r");
    let after = inspect(deployment, &InspectOptions::default(), &hidden()).expect("inspect");
    assert_eq!(counts(&after.namespaces), want);

    // Pattern mode over several namespaces.
    let options = InvalidateOptions {
        selector: Selector::Pattern("shop:v1:*".into()),
        dry_run: true,
        batch: strata_ops::invalidate::DEFAULT_BATCH,
    };
    let dry = invalidate(deployment, &options, &hidden()).expect("pattern dry run");
    assert_eq!((dry.matched, dry.removed), (206, 0));
}

/// `flush --bump-version`: 1 → 2 with a purge of v1, then 2 → 3 without.
fn bump(deployment: &Deployment, con: &mut dyn ConnectionLike) {
    assert_eq!(schema_version(deployment, "shop").expect("version"), 1);
    let report = bump_version(deployment, "shop", Some(50), &hidden()).expect("bump");
    assert_eq!((report.old_version, report.new_version, report.purged), (1, 2, Some(206)));
    assert_eq!(report.schema_key, "strata:schema:shop");
    let stored: String = redis::cmd("GET").arg(schema_key("shop")).query(con).expect("GET");
    assert_eq!(stored, "2");
    let report = bump_version(deployment, "shop", None, &hidden()).expect("bump");
    assert_eq!((report.old_version, report.new_version, report.purged), (2, 3, None));
    assert_eq!(schema_version(deployment, "shop").expect("version"), 3);
    // Only the schema key and the non-shop keys remain.
    let after = inspect(deployment, &InspectOptions::default(), &hidden()).expect("inspect");
    let names: Vec<&str> = after.namespaces.keys().map(String::as_str).collect();
    assert_eq!(names, [NO_NAMESPACE, "session", "strata"]);

    // A value that is not a version is refused, and left alone.
    redis::cmd("SET").arg(schema_key("other")).arg("banana").exec(con).expect("SET");
    let err = bump_version(deployment, "other", None, &hidden()).expect_err("not a version");
    assert!(err.to_string().contains("not a schema version"), "{err}");
    assert!(schema_version(deployment, "other").is_err());
    assert!(bump_version(deployment, "bad app", None, &hidden()).expect_err("bad app").is_invalid_input());
}

#[test]
fn cluster_inspect_invalidate_and_bump() {
    let cluster = RedisCluster::start(3, 1).expect("cluster");
    let client = redis::cluster::ClusterClient::new(cluster.seed_urls()).expect("cluster client");
    let mut con = client.get_connection().expect("cluster connection");
    seed(&mut con);
    let deployment = Deployment::discover(&cluster.seed_urls()[0], &Credentials::default()).expect("discover");
    assert!(deployment.cluster);
    assert_eq!(deployment.nodes.len(), 6);
    exercise(&deployment, 3);
    bump(&deployment, &mut con);
}

#[test]
fn standalone_inspect_invalidate_and_bump() {
    let server = RedisServer::start().expect("server");
    let mut con = server.connection().expect("connection");
    seed(&mut con);
    let deployment = Deployment::discover(&server.url(), &Credentials::default()).expect("discover");
    assert!(!deployment.cluster);
    exercise(&deployment, 1);
    bump(&deployment, &mut con);
}

#[test]
fn unreachable_deployment_is_a_clear_error() {
    let port = strata_cluster::free_port().expect("free port");
    let err = Deployment::discover(&format!("redis://127.0.0.1:{port}"), &Credentials::default())
        .expect_err("nothing listens there");
    assert!(err.is_unreachable(), "{err}");
}

/// Lease keys get their own bucket and go with their keys on invalidation; aggregates are
/// measured exactly (`MEMORY USAGE ... SAMPLES 0`).
#[test]
fn leases_and_aggregates() {
    let server = RedisServer::start().expect("server");
    let mut con = server.connection().expect("connection");
    for i in 0..20 {
        redis::cmd("SET").arg(format!("shop:v1:user:{i}")).arg("v").arg("EX").arg(600).exec(&mut con).expect("SET");
    }
    for i in 0..5 {
        let lease = format!("{{shop:v1:user:{i}}}:lease");
        redis::cmd("SET").arg(&lease).arg("token").arg("PX").arg(60_000).exec(&mut con).expect("SET lease");
    }
    // A hash table (not a listpack) with very uneven values: the default MEMORY USAGE samples
    // 5 of its 300 fields and extrapolates, SAMPLES 0 counts them all.
    let mut hset = redis::cmd("HSET");
    hset.arg("shop:v1:blob:1");
    for f in 0..300 {
        hset.arg(format!("f{f}")).arg("x".repeat(if f % 50 == 0 { 20_000 } else { 70 }));
    }
    hset.exec(&mut con).expect("HSET");
    let exact: u64 =
        redis::cmd("MEMORY").arg("USAGE").arg("shop:v1:blob:1").arg("SAMPLES").arg(0).query(&mut con).expect("MEMORY");
    let sampled: u64 = redis::cmd("MEMORY").arg("USAGE").arg("shop:v1:blob:1").query(&mut con).expect("MEMORY");
    assert_ne!(exact, sampled, "the default estimate happens to be exact; the test needs another shape");

    let deployment = Deployment::discover(&server.url(), &Credentials::default()).expect("discover");
    let report = inspect(&deployment, &InspectOptions::default(), &hidden()).expect("inspect");
    let got = counts(&report.namespaces);
    assert_eq!(got.get("shop:v1:user"), Some(&(20, 0)), "{got:?}");
    assert_eq!(got.get("shop:v1:user (coordination)"), Some(&(5, 0)), "{got:?}");
    assert_eq!(report.namespaces["shop:v1:blob"].memory_bytes, exact, "memory of an aggregate is exact");
    assert_eq!(report.big_keys[0].key, "shop:v1:blob:1");
    assert_eq!(report.big_keys[0].memory_bytes, exact);
    assert!(report.exact);

    let done = invalidate(&deployment, &InvalidateOptions::namespace("shop:v1:user"), &hidden()).expect("invalidate");
    assert_eq!((done.matched, done.removed), (20, 20), "leases are removed, not counted");
    let leases: Vec<String> = redis::cmd("KEYS").arg("{*").query(&mut con).expect("KEYS");
    assert!(leases.is_empty(), "leases left behind: {leases:?}");
}

/// A standalone replica named by --url: every command that works on the keys refuses it
/// instead of reporting success after touching nothing.
#[test]
fn a_standalone_replica_is_refused() {
    let master = RedisServer::start().expect("master");
    redis::cmd("SET").arg("shop:v1:user:1").arg("v").exec(&mut master.connection().expect("con")).expect("SET");
    let replica =
        RedisServer::builder().config_line(format!("replicaof 127.0.0.1 {}", master.port())).start().expect("replica");
    let deployment = Deployment::discover(&replica.url(), &Credentials::default()).expect("discover");
    let check = |what: &str, err: strata_ops::OpsError| {
        let text = err.to_string();
        assert!(text.contains("replica") && text.contains("master"), "{what}: {text}");
        assert!(text.contains(what), "{what}: {text}");
    };
    check("inspect", inspect(&deployment, &InspectOptions::default(), &hidden()).expect_err("inspect a replica"));
    check(
        "invalidate",
        invalidate(&deployment, &InvalidateOptions::namespace("shop:v1:user"), &hidden()).expect_err("invalidate"),
    );
    check("flush", bump_version(&deployment, "shop", Some(10), &hidden()).expect_err("bump on a replica"));
    let tmp = tempfile::tempdir().expect("tempdir");
    let err = strata_ops::backup::backup(
        &deployment,
        &strata_ops::backup::BackupOptions::new(tmp.path().join("b")),
        &hidden(),
    )
    .expect_err("backup of a replica");
    check("backup", err);
    assert!(!tmp.path().join("b").exists(), "nothing created");
}
