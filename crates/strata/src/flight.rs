//! In-process single-flight: concurrent misses on one key run the load once.
//!
//! Each in-flight load is a `tokio::sync::OnceCell` shared by every caller for that key (and
//! value type). `OnceCell::get_or_init` runs exactly one initializer at a time; the others wait
//! and then read the same result — value or error. If the caller running the load is cancelled,
//! the next waiter runs its own initializer, so a dropped request never strands the others.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use crate::error::Result;

/// A loaded value, type-erased so one map serves every value type.
pub(crate) type Shared = Arc<dyn Any + Send + Sync>;
type Cell = Arc<OnceCell<Result<Shared>>>;

#[derive(Default)]
pub(crate) struct Flights {
    in_flight: Mutex<HashMap<(Arc<str>, TypeId), Cell>>,
}

impl Flights {
    /// Runs `load` unless a load for the same key and type is already running, in which case the
    /// caller waits for that one. Returns the shared result.
    pub(crate) async fn run<F, Fut>(&self, key: &Arc<str>, type_id: TypeId, load: F) -> Result<Shared>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Shared>>,
    {
        let map_key = (key.clone(), type_id);
        let cell = self.lock().entry(map_key.clone()).or_default().clone();
        let result = cell.get_or_init(load).await.clone();
        // The first caller to finish retires the cell; later misses start a fresh load (which will
        // normally hit the tiers the finished load has just filled).
        let mut map = self.lock();
        if map.get(&map_key).is_some_and(|current| Arc::ptr_eq(current, &cell)) {
            map.remove(&map_key);
        }
        result
    }

    /// Keys with a load in progress.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Arc<str>, TypeId), Cell>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use crate::Error;

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_load_and_its_error() {
        let flights = Arc::new(Flights::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let key: Arc<str> = "k".into();
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (flights, calls, key) = (flights.clone(), calls.clone(), key.clone());
                tokio::spawn(async move {
                    flights
                        .run(&key, TypeId::of::<u8>(), || async {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Err::<Shared, _>(Error::config("boom"))
                        })
                        .await
                })
            })
            .collect();
        for task in tasks {
            let result = task.await.expect("task");
            assert!(result.expect_err("shared error").is_config());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_leader_hands_over_to_a_waiter() {
        let flights = Arc::new(Flights::default());
        let key: Arc<str> = "k".into();
        let leader = {
            let (flights, key) = (flights.clone(), key.clone());
            tokio::spawn(async move {
                flights
                    .run(&key, TypeId::of::<u8>(), || async {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        Ok(Arc::new(1u8) as Shared)
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        let waiter = {
            let (flights, key) = (flights.clone(), key.clone());
            tokio::spawn(async move {
                flights.run(&key, TypeId::of::<u8>(), || async { Ok(Arc::new(2u8) as Shared) }).await
            })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        leader.abort();
        let value = waiter.await.expect("task").expect("value");
        assert_eq!(value.downcast_ref::<u8>(), Some(&2));
    }
}
