use std::collections::HashSet;

use redis::cluster_routing::Slot;
use strata::{Key, KeySchema, Ttl};

use crate::common::{Redis, TestResult};
use crate::on_both;

/// 1,000 keys spread over (nearly) every slot group: set_many + get_many round-trip with no
/// CROSSSLOT error, missing keys come back as None, and results line up with the input order.
async fn thousand_keys_across_slots(redis: Redis) -> TestResult {
    let writer = redis.cache().await;
    let schema = KeySchema::new("it", 1)?;
    let keys: Vec<Key> =
        (0..1000).map(|i| schema.key("profile", &format!("user-{i}"))).collect::<strata::Result<_>>()?;
    let slots: HashSet<_> = keys.iter().map(|k| Slot::for_key(k.as_str())).collect();
    assert!(slots.len() > 900, "keys should cover many slots, got {}", slots.len());

    let items: Vec<(Key, String)> = keys.iter().map(|k| (k.clone(), format!("value of {k}"))).collect();
    writer.set_many(&items, Ttl::Medium).await?;

    // A second cache with L1 off, so every read below really goes to Redis.
    let reader = redis.builder().l1_capacity_bytes(0).build().await?;
    let mut wanted = keys.clone();
    let absent: Vec<Key> =
        (0..50).map(|i| schema.key("profile", &format!("nobody-{i}"))).collect::<strata::Result<_>>()?;
    for (i, k) in absent.iter().enumerate() {
        wanted.insert(i * 20, k.clone());
    }
    let got: Vec<Option<String>> = reader.get_many(&wanted).await?;
    assert_eq!(got.len(), wanted.len());
    for (key, value) in wanted.iter().zip(&got) {
        if key.as_str().contains("nobody") {
            assert_eq!(value, &None, "{key}");
        } else {
            assert_eq!(value.as_deref(), Some(format!("value of {key}").as_str()), "{}", redis.name());
        }
    }
    let stats = reader.metrics();
    assert_eq!(stats.l2_errors + stats.l2_timeouts, 0, "no MGET may fail: {stats:?}");
    assert_eq!(stats.total().l2_hits, 1000);

    // The writer's L1 answers get_many without Redis.
    let again: Vec<Option<String>> = writer.get_many(&keys).await?;
    assert!(again.iter().all(Option::is_some));
    assert_eq!(writer.metrics().total().l1_hits, 1000, "{:?}", writer.metrics());
    Ok(())
}
on_both!(thousand_keys_across_slots);
