//! Hot keys: a key read so often that its Redis node becomes the bottleneck is replicated over
//! K copies in other cluster slots. The contract (naming, reads, writes, coherence bound) is
//! documented on [`HotKeys`], the public face of this module.

use std::collections::HashMap;
use std::time::Duration;

use crate::breaker::redis_slot;

use crate::error::{Error, Result};
use crate::key::Key;

/// Most copies of one hot key.
pub const MAX_HOT_COPIES: usize = 64;

/// Longest allowed [`HotKeys::copy_ttl`]: copies exist to spread load, not to cache longer.
pub const MAX_HOT_COPY_TTL: Duration = Duration::from_secs(300);

/// Which keys are hot, and for how long their copies live. Give it to
/// [`CacheBuilder::hot_keys`](crate::CacheBuilder::hot_keys); keys can also be marked at run time
/// with [`Cache::mark_hot`](crate::Cache::mark_hot).
///
/// A hot key is replicated over K copies in other cluster slots (so, on a cluster, mostly on
/// other nodes), and each L2 read picks one copy at random:
///
/// - A copy of `KEY` is named `KEY:~hot:N`; the numbers N are the first K, counting from 0,
///   whose slots differ from the key's and from each other's. Every instance computes the same
///   names ([`hot_copy_keys`]), and a pattern invalidation of the namespace
///   (`app:v1:entity:*`) matches them too.
/// - **Reads** (`get`, `get_or_set`, `get_or_set_optional`) of a hot key, after an L1 miss,
///   read one random copy. On a copy miss they fall back to the key itself (and the loader),
///   then refill that copy with `SET NX` (never over a copy written meanwhile); when the copy
///   read fails, nothing is refilled. `get_many` and
///   `get_or_set_many` read the key itself.
/// - **Writes**: `set` writes the new value to every copy; `set_not_found`, `delete` and
///   `set_many` delete every copy.
/// - **Coherence bound**: a copy lives at most [`copy_ttl`](Self::copy_ttl) (default 5 s), and
///   an L1 entry filled from a copy never outlives the copy. So a write that does not update
///   the copies (made by an instance that does not know the key is hot, directly in Redis, by
///   `get_or_set_many`, or racing with a refill) is seen by every reader at most `copy_ttl`
///   after it completes. Keep `copy_ttl` to the staleness you can accept.
///
/// ```
/// # fn demo() -> strata::Result<()> {
/// use std::time::Duration;
/// let schema = strata::KeySchema::new("shop", 1)?;
/// let hot = strata::HotKeys::new()
///     .key(&schema.key("config", "flags")?, 8)   // one key, 8 copies
///     .namespace(schema.namespace("banner")?, 4) // every key of a namespace, 4 copies
///     .copy_ttl(Duration::from_secs(2));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotKeys {
    keys: HashMap<String, usize>,
    namespaces: HashMap<String, usize>,
    copy_ttl: Duration,
}

impl Default for HotKeys {
    fn default() -> Self {
        Self { keys: HashMap::new(), namespaces: HashMap::new(), copy_ttl: Duration::from_secs(5) }
    }
}

impl HotKeys {
    /// No hot keys; copies live 5 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replicates `key` over `copies` copies (1 to [`MAX_HOT_COPIES`]).
    pub fn key(mut self, key: &Key, copies: usize) -> Self {
        self.keys.insert(key.as_str().to_owned(), copies);
        self
    }

    /// Replicates every key of `namespace` (`app:vN:entity`) over `copies` copies.
    pub fn namespace(mut self, namespace: impl Into<String>, copies: usize) -> Self {
        self.namespaces.insert(namespace.into(), copies);
        self
    }

    /// The longest a copy lives, hence the longest a write that skipped the copies can go
    /// unseen (default 5 s, at most [`MAX_HOT_COPY_TTL`]).
    pub fn copy_ttl(mut self, ttl: Duration) -> Self {
        self.copy_ttl = ttl;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if let Some(n) = self.keys.values().chain(self.namespaces.values()).find(|n| !valid_copies(**n)) {
            return Err(Error::config(format!("hot key copies must be 1 to {MAX_HOT_COPIES}, got {n}")));
        }
        if self.copy_ttl < Duration::from_millis(1) || self.copy_ttl > MAX_HOT_COPY_TTL {
            return Err(Error::config(format!("hot copy ttl must be 1 ms to {MAX_HOT_COPY_TTL:?}")));
        }
        Ok(())
    }

    /// How many copies the configuration gives `key` (by key, then by namespace).
    pub(crate) fn configured(&self, key: &Key) -> Option<usize> {
        self.keys.get(key.as_str()).or_else(|| self.namespaces.get(key.namespace())).copied()
    }

    /// Whether no key or namespace is configured hot.
    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.namespaces.is_empty()
    }

    /// How long a copy lives.
    pub(crate) fn copy_ttl_of(&self) -> Duration {
        self.copy_ttl
    }
}

pub(crate) fn valid_copies(n: usize) -> bool {
    (1..=MAX_HOT_COPIES).contains(&n)
}

/// What separates a hot key from its copy number in a copy's name.
const COPY_INFIX: &str = ":~hot:";

/// The key a hot copy's name belongs to (`None`: not a copy's name).
pub(crate) fn hot_copy_of(name: &str) -> Option<&str> {
    let (key, n) = name.rsplit_once(COPY_INFIX)?;
    (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then_some(key)
}

/// The names of the first `copies` copies of `key` (see [`HotKeys`]): each in a cluster slot of
/// its own, none in the key's slot. Tools that delete keys behind Strata's back
/// should delete these too (a pattern on the key's namespace matches them).
pub fn hot_copy_keys(key: &str, copies: usize) -> Vec<String> {
    let mut slots = vec![redis_slot(key.as_bytes())];
    let mut out = Vec::with_capacity(copies);
    // 16,384 slots: the search ends after about `copies` tries; the bound only guards the loop.
    for n in 0..copies.saturating_mul(64).max(64) {
        if out.len() == copies {
            break;
        }
        let name = format!("{key}{COPY_INFIX}{n}");
        let slot = redis_slot(name.as_bytes());
        if !slots.contains(&slot) {
            slots.push(slot);
            out.push(name);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_have_distinct_slots_and_stable_names() {
        for key in ["app:v1:config:flags", "x", "shop:v2:banner:home:mobile"] {
            let copies = hot_copy_keys(key, MAX_HOT_COPIES);
            assert_eq!(copies.len(), MAX_HOT_COPIES);
            let mut slots: std::collections::HashSet<u16> = copies.iter().map(|c| redis_slot(c.as_bytes())).collect();
            slots.insert(redis_slot(key.as_bytes()));
            assert_eq!(slots.len(), MAX_HOT_COPIES + 1, "{key}");
            assert_eq!(hot_copy_keys(key, 3), copies[..3], "a prefix of the same names");
            assert!(copies.iter().all(|c| c.starts_with(&format!("{key}:~hot:"))));
            assert!(copies.iter().all(|c| hot_copy_of(c) == Some(key)), "{key}");
        }
    }

    #[test]
    fn only_copy_names_have_a_key() {
        assert_eq!(hot_copy_of("app:v1:user:1:~hot:12"), Some("app:v1:user:1"));
        for name in ["app:v1:user:1", "app:v1:user:1:~hot:", "app:v1:user:1:~hot:x", "{app:v1:user:1}:lease"] {
            assert_eq!(hot_copy_of(name), None, "{name}");
        }
    }

    #[test]
    fn validates_config() {
        assert!(HotKeys::new().validate().is_ok());
        assert!(HotKeys::new().namespace("a:v1:b", 0).validate().is_err());
        assert!(HotKeys::new().namespace("a:v1:b", MAX_HOT_COPIES + 1).validate().is_err());
        assert!(HotKeys::new().copy_ttl(Duration::ZERO).validate().is_err());
        assert!(HotKeys::new().copy_ttl(MAX_HOT_COPY_TTL * 2).validate().is_err());
    }
}
