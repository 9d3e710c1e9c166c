use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use strata::{Format, KeySchema, Ttl};

use crate::common::{Redis, TestResult};
use crate::on_both;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct User {
    id: u64,
    name: String,
    roles: Vec<String>,
}

fn user(id: u64) -> User {
    User { id, name: format!("user {id}"), roles: vec!["reader".into()] }
}

/// set / get / delete across two instances sharing Redis, typed values, per-namespace counters.
async fn set_get_delete_and_counters(redis: Redis) -> TestResult {
    let a = redis.cache().await;
    let b = redis.cache().await;
    let schema = KeySchema::new("it", 1)?;
    let key = schema.key("user", "1")?;
    a.set(&key, &user(1), Ttl::Medium).await?;
    assert_eq!(b.get::<User>(&key).await?, Some(user(1)), "b reads a's write from Redis");
    assert_eq!(b.get::<User>(&key).await?, Some(user(1)), "then from its L1");
    let stats = b.metrics().namespace("it:v1:user");
    assert_eq!((stats.l1_hits, stats.l1_misses, stats.l2_hits), (1, 1, 1), "{stats:?}");

    assert!(a.delete(&key).await?);
    assert_eq!(a.get::<User>(&key).await?, None);
    assert!(!a.delete(&key).await?);
    assert_eq!(a.metrics().namespace("it:v1:user").deletes, 2);
    // Other namespaces are counted apart.
    a.get::<User>(&schema.key("order", "1")?).await?;
    assert_eq!(a.metrics().namespace("it:v1:order").l2_misses, 1);
    Ok(())
}
on_both!(set_get_delete_and_counters);

/// Negative caching: a "not found" is cached with the negative TTL and answers later lookups
/// without calling the source.
async fn not_found_is_cached(redis: Redis) -> TestResult {
    let cache = redis.builder().l1_capacity_bytes(0).build().await?;
    let key = KeySchema::new("it", 1)?.key("user", "missing")?;
    let loads = Arc::new(AtomicUsize::new(0));
    for _ in 0..5 {
        let loads = loads.clone();
        let found = cache
            .get_or_set_optional::<User, _, _, _>(&key, Ttl::Long, || async move {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(None)
            })
            .await?;
        assert_eq!(found, None);
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1, "the source is asked once");
    let mut raw = redis.raw();
    let pttl: i64 = redis::cmd("PTTL").arg(key.as_str()).query(raw.as_mut())?;
    assert!(pttl > 0 && pttl <= 33_000, "negative TTL is 30 s ± 10 %, got {pttl} ms");
    assert_eq!(cache.metrics().namespace("it:v1:user").negative_hits, 4);
    // A plain get_or_set does not accept a cached "not found": it loads.
    let v = cache.get_or_set(&key, Ttl::Short, || async { Ok::<_, std::io::Error>(user(9)) }).await?;
    assert_eq!(v, user(9));

    // With L1 on, each read is counted once, in the tier that served it.
    let l1 = redis.cache().await;
    let other = KeySchema::new("it", 1)?.key("account", "missing")?;
    let none = || async { Ok::<_, std::io::Error>(None::<User>) };
    assert_eq!(l1.get_or_set_optional(&other, Ttl::Long, none).await?, None); // L1 miss, L2 miss, load
    assert_eq!(l1.get_or_set_optional(&other, Ttl::Long, none).await?, None); // L1 negative hit
    let loaded = l1.get_or_set(&other, Ttl::Long, || async { Ok::<_, std::io::Error>(user(5)) }).await?;
    assert_eq!(loaded, user(5)); // negative entry not accepted: L1 miss, L2 miss, load
    let s = l1.metrics().namespace("it:v1:account");
    assert_eq!(
        (s.l1_hits, s.l1_misses, s.l2_hits, s.l2_misses, s.negative_hits, s.loader_calls),
        (1, 2, 0, 2, 1, 2),
        "{s:?}"
    );
    assert!((s.hit_ratio() - 1.0 / 3.0).abs() < 1e-9);
    Ok(())
}
on_both!(not_found_is_cached);

/// Oversized values: `set` refuses them with a clear error and writes nothing; a loaded value
/// that is too big is returned to the caller but not cached.
async fn oversized_values(redis: Redis) -> TestResult {
    let cache = redis.builder().max_value_bytes(10_000).build().await?;
    let key = KeySchema::new("it", 1)?.key("blob", "big")?;
    let big = vec![1u8; 20_000];
    let err = cache.set(&key, &big, Ttl::Short).await.expect_err("too large");
    assert!(err.is_value_too_large(), "{err}");
    assert!(err.to_string().contains("10000"), "the message names the limit: {err}");
    let loaded = cache.get_or_set(&key, Ttl::Short, || async { Ok::<_, std::io::Error>(vec![2u8; 20_000]) }).await?;
    assert_eq!(loaded.len(), 20_000);
    cache.settled().await;
    assert!(redis.value_keys().is_empty());
    assert_eq!(cache.metrics().namespace("it:v1:blob").uncacheable, 1);
    // A rejected write removes the value it meant to replace, so the old one is not served.
    cache.set(&key, &vec![3u8; 10], Ttl::Short).await?;
    assert!(cache.set(&key, &big, Ttl::Short).await.is_err());
    assert_eq!(cache.get::<Vec<u8>>(&key).await?, None);
    Ok(())
}
on_both!(oversized_values);

/// JSON is selectable and readable by other tools; compressed MessagePack values round-trip;
/// an instance configured with another format still reads them.
async fn formats_and_compression(redis: Redis) -> TestResult {
    let json = redis.builder().format(Format::Json).l1_capacity_bytes(0).build().await?;
    let msgpack = redis.builder().compress_above(64).l1_capacity_bytes(0).build().await?;
    let schema = KeySchema::new("it", 1)?;
    let (kj, km) = (schema.key("user", "json")?, schema.key("user", "big")?);
    json.set(&kj, &user(3), Ttl::Short).await?;
    let mut raw = redis.raw();
    let bytes: Vec<u8> = redis::cmd("GET").arg(kj.as_str()).query(raw.as_mut())?;
    let text = String::from_utf8_lossy(&bytes[20..]);
    assert!(text.contains("\"name\":\"user 3\""), "{text}");
    let mut big = user(4);
    big.roles = (0..200).map(|i| format!("role-{i}")).collect();
    msgpack.set(&km, &big, Ttl::Short).await?;
    let stored: Vec<u8> = redis::cmd("GET").arg(km.as_str()).query(raw.as_mut())?;
    assert!(stored.len() < rmp_serde::to_vec_named(&big)?.len(), "LZ4 should shrink a repetitive value");
    assert_eq!(json.get::<User>(&km).await?, Some(big));
    assert_eq!(msgpack.get::<User>(&kj).await?, Some(user(3)));
    Ok(())
}
on_both!(formats_and_compression);

/// Invalid keys never reach Redis: the schema helper refuses them with a clear error.
#[test]
fn invalid_keys_are_errors() -> TestResult {
    let schema = KeySchema::new("it", 1)?;
    let err = schema.key("user", "two words").expect_err("whitespace");
    assert!(err.is_invalid_key());
    assert!(err.to_string().contains("forbidden character"), "{err}");
    assert!(schema.key("user", "glob*").is_err());
    assert!(strata::Key::parse("it:v1:user:\u{0}").is_err());
    Ok(())
}

/// L1 entries never outlive their TTL in Redis.
#[tokio::test]
async fn l1_ttl_follows_the_redis_ttl() -> TestResult {
    let redis = Redis::standalone();
    let cache = redis.builder().l1_max_ttl(Duration::from_secs(60)).build().await?;
    let key = KeySchema::new("it", 1)?.key("user", "short")?;
    cache.set(&key, &user(1), Duration::from_millis(300)).await?;
    assert_eq!(cache.get::<User>(&key).await?, Some(user(1)));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(cache.get::<User>(&key).await?, None, "the L1 copy expired with the Redis copy");
    Ok(())
}
