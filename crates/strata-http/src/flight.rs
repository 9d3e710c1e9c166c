//! Background revalidations in flight: one per URL per process (`stale-while-revalidate`).
//! Misses are coalesced by Strata itself (the layer's fetch marker, see `layer.rs`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

/// The URLs being revalidated in the background.
#[derive(Default)]
pub(crate) struct Flights {
    running: Arc<Mutex<HashSet<String>>>,
}

/// Held by the one revalidation of a URL; dropping it (done, failed or cancelled) lets the
/// next one start.
pub(crate) struct Leading {
    url: String,
    running: Arc<Mutex<HashSet<String>>>,
}

impl Drop for Leading {
    fn drop(&mut self) {
        self.running.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.url);
    }
}

impl Flights {
    /// The right to revalidate `url`, unless a revalidation of it is running.
    pub(crate) fn try_lead(&self, url: &str) -> Option<Leading> {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        running.insert(url.to_owned()).then(|| Leading { url: url.to_owned(), running: self.running.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_revalidation_per_url_at_a_time() {
        let flights = Flights::default();
        let first = flights.try_lead("u");
        assert!(first.is_some());
        assert!(flights.try_lead("u").is_none(), "the second waits for the first");
        assert!(flights.try_lead("other").is_some());
        drop(first);
        assert!(flights.try_lead("u").is_some(), "a finished revalidation is gone");
    }
}
