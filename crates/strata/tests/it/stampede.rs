use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use strata::{KeySchema, Ttl};

use crate::common::{Redis, TestResult};
use crate::on_both;

/// 200 concurrent `get_or_set` on one cold key: one loader call, 200 identical values.
async fn two_hundred_callers_one_load(redis: Redis) -> TestResult {
    let cache = redis.cache().await;
    let key = KeySchema::new("it", 1)?.key("hot", "1")?;
    let loads = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..200)
        .map(|_| {
            let (cache, key, loads) = (cache.clone(), key.clone(), loads.clone());
            tokio::spawn(async move {
                cache
                    .get_or_set(&key, Ttl::Medium, || async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Ok::<_, std::io::Error>(vec![7u32, 8, 9])
                    })
                    .await
            })
        })
        .collect();
    for caller in callers {
        assert_eq!(caller.await??, vec![7, 8, 9]);
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1, "{}: the loader must run once", redis.name());
    let stats = cache.metrics().namespace("it:v1:hot");
    assert_eq!(stats.loader_calls, 1);
    assert_eq!(stats.l1_hits + stats.l1_misses, 200);
    Ok(())
}
on_both!(two_hundred_callers_one_load);

/// Waiters share the loader's error too: one failing load, every caller sees it.
async fn waiters_share_the_error(redis: Redis) -> TestResult {
    let cache = redis.cache().await;
    let key = KeySchema::new("it", 1)?.key("failing", "1")?;
    let loads = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let (cache, key, loads) = (cache.clone(), key.clone(), loads.clone());
            tokio::spawn(async move {
                cache
                    .get_or_set::<String, _, _, _>(&key, Ttl::Short, || async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Err(std::io::Error::other("database down"))
                    })
                    .await
            })
        })
        .collect();
    for caller in callers {
        let err = caller.await?.expect_err("loader error is shared");
        assert!(err.is_loader(), "{err}");
        assert!(err.to_string().contains("database down"), "{err}");
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert!(redis.value_keys().is_empty(), "a failed load caches nothing");
    Ok(())
}
on_both!(waiters_share_the_error);
