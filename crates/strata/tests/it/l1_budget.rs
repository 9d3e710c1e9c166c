use strata::{KeySchema, L1Policy, Ttl};

use crate::common::{Redis, TestResult};
use crate::on_both;

/// L1 never holds more than its byte budget, checked after every write of values of mixed sizes
/// (50 B to 12 KiB), under both eviction policies, and each policy keeps what it promises:
/// LRU the most recent writes, TinyLFU the keys read repeatedly.
async fn l1_stays_within_its_byte_budget(redis: Redis) -> TestResult {
    for policy in [L1Policy::Lru, L1Policy::TinyLfu] {
        fill_and_check(&redis, policy).await?;
    }
    Ok(())
}

async fn fill_and_check(redis: &Redis, policy: L1Policy) -> TestResult {
    const BUDGET: u64 = 256 * 1024;
    let cache =
        redis.builder().l1_capacity_bytes(BUDGET).l1_max_entry_bytes(32 * 1024).l1_policy(policy).build().await?;
    let schema = KeySchema::new("it", 1)?;
    let mut stored_payload = 0u64;
    for i in 0..1500u64 {
        let len = [50, 400, 3_000, 12_000][(i % 4) as usize] + (i as usize * 7) % 100;
        let value: Vec<u8> = (0..len).map(|j| (i as usize * 31 + j) as u8).collect();
        cache.set(&schema.key("blob", &i.to_string())?, &value, Ttl::Medium).await?;
        stored_payload += len as u64;
        let resident = cache.l1_resident_bytes();
        assert!(resident <= BUDGET, "{}: after write {i}, L1 holds {resident} bytes > budget {BUDGET}", redis.name());
    }
    assert!(stored_payload > 4 * BUDGET, "the test must overflow the budget several times");
    let snapshot = cache.metrics();
    assert!(snapshot.l1_bytes <= BUDGET && snapshot.l1_bytes > BUDGET / 2, "L1 should be well used: {snapshot:?}");

    // Ten recent small keys, read five times each: LRU kept them from the writes; TinyLFU
    // admits them once their reads make them more frequent than what they would evict.
    let hot: Vec<_> = (1480..1500)
        .filter(|i| i % 4 == 0)
        .map(|i| schema.key("blob", &i.to_string()))
        .collect::<strata::Result<_>>()?;
    for round in 0..5 {
        let before = cache.metrics().namespace("it:v1:blob").l1_hits;
        for key in &hot {
            assert!(cache.get::<Vec<u8>>(key).await?.is_some());
        }
        let hits = cache.metrics().namespace("it:v1:blob").l1_hits - before;
        match policy {
            L1Policy::Lru => assert_eq!(hits, hot.len() as u64, "{policy:?}: recent writes are in L1"),
            _ if round == 4 => assert_eq!(hits, hot.len() as u64, "{policy:?}: repeatedly read keys end up in L1"),
            _ => {}
        }
        assert!(cache.l1_resident_bytes() <= BUDGET);
    }
    Ok(())
}
on_both!(l1_stays_within_its_byte_budget);
