//! Request coalescing: concurrent misses of one URL in this process send one request to the
//! origin; the others wait for it, then read what it stored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

/// The origin requests in flight, by URL.
#[derive(Default)]
pub(crate) struct Flights {
    running: Arc<Mutex<HashMap<String, watch::Receiver<()>>>>,
}

/// What a miss does: lead (fetch, then drop the guard), or follow (wait, then look again).
pub(crate) enum Turn {
    Lead(Leading),
    Follow(watch::Receiver<()>),
}

/// Held by the request that fetches; dropping it (done, failed or cancelled) releases the
/// followers.
pub(crate) struct Leading {
    url: String,
    running: Arc<Mutex<HashMap<String, watch::Receiver<()>>>>,
    _done: watch::Sender<()>,
}

impl Drop for Leading {
    fn drop(&mut self) {
        self.running.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.url);
    }
}

impl Flights {
    pub(crate) fn turn(&self, url: &str) -> Turn {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(rx) = running.get(url) {
            return Turn::Follow(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        running.insert(url.to_owned(), rx);
        Turn::Lead(Leading { url: url.to_owned(), running: self.running.clone(), _done: tx })
    }
}

/// Waits until the leader's guard is dropped.
pub(crate) async fn follow(mut rx: watch::Receiver<()>) {
    // `changed` fails once the sender is gone, which is the only way the leader signals.
    while rx.changed().await.is_ok() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_leads_the_others_follow_until_it_is_done() {
        let flights = Flights::default();
        let Turn::Lead(lead) = flights.turn("u") else { panic!("the first must lead") };
        let Turn::Follow(rx) = flights.turn("u") else { panic!("the second must follow") };
        assert!(matches!(flights.turn("other"), Turn::Lead(_)));
        let waiting = tokio::spawn(follow(rx));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(lead);
        waiting.await.unwrap_or_default();
        assert!(matches!(flights.turn("u"), Turn::Lead(_)), "a finished flight is gone");
    }
}
