use std::time::Duration;

use strata::{KeySchema, Ttl, TtlPolicy};

use crate::common::{Redis, TestResult};
use crate::on_both;

/// Every written TTL lies within nominal ± jitter, the TTLs are actually spread, and no key the
/// cache writes (set, set_many, get_or_set, negative entries) is left without a TTL.
async fn ttls_are_jittered_and_always_present(redis: Redis) -> TestResult {
    let policy = TtlPolicy::new().jitter(0.2).negative(Duration::from_secs(30));
    let cache = redis.builder().ttl_policy(policy).build().await?;
    let schema = KeySchema::new("it", 1)?;
    let nominal = Duration::from_secs(1000);

    for i in 0..150 {
        cache.set(&schema.key("single", &i.to_string())?, &i, nominal).await?;
    }
    let batch: Vec<_> =
        (0..150).map(|i| Ok((schema.key("batch", &i.to_string())?, i))).collect::<strata::Result<_>>()?;
    cache.set_many(&batch, nominal).await?;
    for i in 0..20 {
        let key = schema.key("loaded", &i.to_string())?;
        cache.get_or_set(&key, nominal, || async { Ok::<_, std::io::Error>(i) }).await?;
        let absent = schema.key("absent", &i.to_string())?;
        cache.get_or_set_optional::<u32, _, _, _>(&absent, nominal, || async { Ok::<_, std::io::Error>(None) }).await?;
    }
    cache.set(&schema.key("class", "short")?, &1, Ttl::Short).await?;
    // Ttl::Exact is not jittered; Duration::MAX is clamped, not a panic.
    cache.set(&schema.key("exact", "1")?, &1, Ttl::Exact(Duration::from_secs(500))).await?;
    cache.set(&schema.key("forever", "1")?, &1, Duration::MAX).await?;

    cache.settled().await;
    let mut raw = redis.raw();
    let keys = redis.value_keys();
    assert_eq!(keys.len(), 150 + 150 + 20 + 20 + 3, "{}", redis.name());
    let (mut lo, mut hi) = (u64::MAX, 0u64);
    for key in &keys {
        let pttl: i64 = redis::cmd("PTTL").arg(key).query(raw.as_mut())?;
        assert!(pttl > 0, "{key} has no TTL (PTTL {pttl})");
        let pttl = pttl as u64;
        if key.contains(":absent:") {
            assert!((23_000..=36_000).contains(&pttl), "negative entry {key}: 30 s ± 20 %, got {pttl} ms");
        } else if key.contains(":class:") {
            assert!((47_000..=72_000).contains(&pttl), "Ttl::Short is 60 s ± 20 %, got {pttl} ms");
        } else if key.contains(":exact:") {
            assert!((499_000..=500_000).contains(&pttl), "Ttl::Exact(500 s) got {pttl} ms");
        } else if key.contains(":forever:") {
            // Clamped to MAX_TTL, then jittered (a plain Duration is Ttl::Custom).
            let max = strata::MAX_TTL.as_millis() as u64;
            assert!((max / 10 * 8 - 60_000..=max).contains(&pttl), "clamped to MAX_TTL ± jitter, got {pttl} ms");
        } else {
            // Nominal 1000 s ± 20 %, minus the time the test took to get here.
            assert!((790_000..=1_200_000).contains(&pttl), "{key}: {pttl} ms outside 1000 s ± 20 %");
            lo = lo.min(pttl);
            hi = hi.max(pttl);
        }
    }
    assert!(hi - lo > 100_000, "jitter should spread 320 TTLs over most of ±200 s, got {lo}..{hi} ms");
    Ok(())
}
on_both!(ttls_are_jittered_and_always_present);
