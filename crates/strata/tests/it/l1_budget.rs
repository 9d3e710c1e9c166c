use strata::{KeySchema, L1Policy, Ttl};

use crate::common::{Redis, TestResult};
use crate::on_both;

/// L1 never holds more than its byte budget, checked after every write of values of mixed sizes
/// (50 B to 12 KiB, random and compressible), under both eviction policies, and each policy keeps
/// what it promises: LRU the most recent writes, TinyLFU the keys read repeatedly. Then the same
/// holds on the fallback path, when Redis is down and loaded values go to L1 only.
async fn l1_stays_within_its_byte_budget(mut redis: Redis) -> TestResult {
    for policy in [L1Policy::Lru, L1Policy::TinyLfu] {
        fill_and_check(&redis, policy).await?;
    }
    const BUDGET: u64 = 256 * 1024;
    let cache = redis.builder().l1_capacity_bytes(BUDGET).l1_max_entry_bytes(32 * 1024).build().await?;
    let schema = KeySchema::new("it", 1)?;
    redis.kill_all();
    for i in 0..300u64 {
        let value = payload(i, 10_000);
        let key = schema.key("down", &i.to_string())?;
        let got = cache.get_or_set(&key, Ttl::Medium, || async { Ok::<_, std::io::Error>(value) }).await?;
        assert_eq!(got.len(), 10_000);
        let resident = cache.l1_resident_bytes();
        assert!(resident <= BUDGET, "{}: with Redis down, L1 holds {resident} > {BUDGET}", redis.name());
    }
    assert!(cache.metrics().l1_bytes > BUDGET / 2, "values loaded during the outage are kept in L1");
    Ok(())
}

/// `len` bytes: random-looking for even `i` (incompressible), repetitive for odd `i`.
fn payload(i: u64, len: usize) -> Vec<u8> {
    let mut state = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|j| {
            if i.is_multiple_of(2) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            } else {
                (j % 7) as u8
            }
        })
        .collect()
}

async fn fill_and_check(redis: &Redis, policy: L1Policy) -> TestResult {
    const BUDGET: u64 = 256 * 1024;
    let cache = redis
        .builder()
        .l1_capacity_bytes(BUDGET)
        .l1_max_entry_bytes(32 * 1024)
        .l1_policy(policy)
        .compress_above(64)
        .build()
        .await?;
    let schema = KeySchema::new("it", 1)?;
    let mut stored_payload = 0u64;
    // Weights count the uncompressed size: with LZ4 on for everything above 64 bytes, the
    // repetitive values shrink in Redis but not in L1, and the budget must still hold.
    for i in 0..1500u64 {
        let len = [50, 400, 3_000, 12_000][(i % 4) as usize] + (i as usize * 7) % 100;
        let value = payload(i, len);
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
