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
/// Key, value type, and a discriminator for flights of one type that produce different results.
type FlightKey = (Arc<str>, TypeId, u8);

#[derive(Default)]
pub(crate) struct Flights {
    in_flight: Mutex<HashMap<FlightKey, Cell>>,
}

impl Flights {
    /// Runs `load` unless a load for the same key and kind is already running, in which case the
    /// caller waits for that one. Returns the shared result.
    pub(crate) async fn run<F, Fut>(&self, key: &Arc<str>, kind: (TypeId, u8), load: F) -> Result<Shared>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Shared>>,
    {
        let map_key = (key.clone(), kind.0, kind.1);
        let cell = self.lock().entry(map_key.clone()).or_default().clone();
        let guard = Retire { flights: self, key: map_key, cell };
        guard.cell.get_or_init(load).await.clone()
    }

    /// Keys with a load in progress.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FlightKey, Cell>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Retires a flight's cell when a caller leaves, finished or cancelled: once the result is in
/// (later misses start a fresh load, which normally hits the tiers this one filled), or when the
/// leaving caller was the last one waiting (nobody else can complete it; without this a cancelled
/// sole caller would leak its entry).
struct Retire<'a> {
    flights: &'a Flights,
    key: FlightKey,
    cell: Cell,
}

impl Drop for Retire<'_> {
    fn drop(&mut self) {
        let mut map = self.flights.lock();
        let Some(current) = map.get(&self.key) else { return };
        // Clones are only taken under this lock, so the count cannot grow while we look:
        // two references are the map's and ours.
        if Arc::ptr_eq(current, &self.cell) && (self.cell.initialized() || Arc::strong_count(&self.cell) <= 2) {
            map.remove(&self.key);
        }
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
                        .run(&key, (TypeId::of::<u8>(), 0), || async {
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
                    .run(&key, (TypeId::of::<u8>(), 0), || async {
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
                flights.run(&key, (TypeId::of::<u8>(), 0), || async { Ok(Arc::new(2u8) as Shared) }).await
            })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        leader.abort();
        let value = waiter.await.expect("task").expect("value");
        assert_eq!(value.downcast_ref::<u8>(), Some(&2));
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_sole_caller_leaves_nothing_behind() {
        let flights = Arc::new(Flights::default());
        let caller = {
            let flights = flights.clone();
            tokio::spawn(async move {
                let key: Arc<str> = "k".into();
                flights
                    .run(&key, (TypeId::of::<u8>(), 0), || async {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        Ok(Arc::new(1u8) as Shared)
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(flights.len(), 1);
        caller.abort();
        let _ = caller.await;
        assert_eq!(flights.len(), 0, "the entry of an abandoned load must be removed");
    }
}
