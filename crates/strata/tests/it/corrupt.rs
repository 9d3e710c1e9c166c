use strata::{KeySchema, Ttl};

use crate::common::{Redis, TestResult};
use crate::on_both;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Profile {
    id: u64,
    name: String,
}

/// Garbage written by another client under a cached key: a read is a miss, the key is removed,
/// the corrupt counter goes up, and `get_or_set` replaces it with the loader's value.
async fn garbage_is_a_miss_and_is_removed(redis: Redis) -> TestResult {
    let cache = redis.builder().l1_capacity_bytes(0).build().await?;
    let schema = KeySchema::new("it", 1)?;
    let mut raw = redis.raw();
    let garbage: [&[u8]; 4] = [b"hello world", b"", &[0xD7, 1, 0, 0, 9, 9], &[0xFF; 300]];
    for (i, bytes) in garbage.iter().enumerate() {
        let key = schema.key("profile", &format!("g{i}"))?;
        let () = redis::cmd("SET").arg(key.as_str()).arg(*bytes).query(raw.as_mut())?;
        assert_eq!(cache.get::<Profile>(&key).await?, None, "{}: garbage #{i} must read as a miss", redis.name());
        let exists: bool = redis::cmd("EXISTS").arg(key.as_str()).query(raw.as_mut())?;
        assert!(!exists, "garbage #{i} must be removed");
    }
    assert_eq!(cache.metrics().namespace("it:v1:profile").corrupt, garbage.len() as u64);

    // Values of another Redis type (lists) are foreign too. More of them than the breaker's
    // threshold (3 in these tests): data errors must not be taken for an unhealthy Redis.
    for i in 0..6 {
        let listed = schema.key("profile", &format!("list{i}"))?;
        let _: i64 = redis::cmd("RPUSH").arg(listed.as_str()).arg("x").query(raw.as_mut())?;
        assert_eq!(cache.get::<Profile>(&listed).await?, None);
        let exists: bool = redis::cmd("EXISTS").arg(listed.as_str()).query(raw.as_mut())?;
        assert!(!exists, "a non-string value under a cache key is removed");
    }
    assert_eq!(cache.metrics().breaker_state, strata::BreakerState::Closed);

    // A valid envelope holding another type (another version of the app may be using it): a
    // miss for this type, left in place; get_or_set then replaces it with the loader's value.
    let key = schema.key("profile", "typed")?;
    cache.set(&key, &"a plain string".to_string(), Ttl::Short).await?;
    assert_eq!(cache.get::<Profile>(&key).await?, None);
    let exists: bool = redis::cmd("EXISTS").arg(key.as_str()).query(raw.as_mut())?;
    assert!(exists, "a value of another type is not deleted by a read");
    assert_eq!(cache.metrics().namespace("it:v1:profile").type_mismatches, 1);
    let profile = Profile { id: 1, name: "Ada".into() };
    let loaded = cache.get_or_set(&key, Ttl::Short, || async { Ok::<_, std::io::Error>(profile.clone()) }).await?;
    assert_eq!(loaded, profile);
    assert_eq!(cache.get::<Profile>(&key).await?, Some(profile));
    assert_eq!(cache.metrics().breaker_state, strata::BreakerState::Closed, "data errors must not trip the breaker");
    Ok(())
}
on_both!(garbage_is_a_miss_and_is_removed);
