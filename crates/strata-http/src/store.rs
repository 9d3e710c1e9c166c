//! Responses in Strata: one entry per URL, and one per variant when the response varies.
//!
//! - The URL entry (`…:u:<hash of the URL>`) holds the response itself when it has no `Vary`,
//!   so a hit is one [`Cache::get`] (an L1 hit in the common case). For a varying response it
//!   holds the names it varies on and a random generation.
//! - A variant entry (`…:v:<hash of URL, generation, the request's values of those names>`)
//!   holds one response. A purge deletes the URL entry only: the next store draws a new
//!   generation, so every earlier variant is unreachable at once, on every instance.
//!
//! Freshness is decided on every hit by the stored [`CachePolicy`]; Strata's TTL only bounds
//! how long an entry is kept (its freshness plus what it may serve stale or be revalidated for),
//! and is exact: jitter never shortens a window the origin gave.

use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_cache_semantics::CachePolicy;
use serde::{Deserialize, Serialize};
use strata::{Cache, Key, KeySchema, Tag, Ttl};

use crate::Error;
use crate::rules::{Vary, selecting_values};

/// A stored response: what is served (status, headers, body) and the policy that decides when
/// (built from a normalised copy of the head: [`policy_head`](crate::rules::policy_head)).
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Stored {
    #[serde(with = "http_serde::status_code")]
    pub(crate) status: http::StatusCode,
    /// The origin's headers, hop-by-hop ones removed.
    #[serde(with = "http_serde::header_map")]
    pub(crate) headers: HeaderMap,
    pub(crate) policy: CachePolicy,
    /// Its freshness lifetime when it was stored: how stale it is, is its age past this.
    pub(crate) lifetime: Duration,
    pub(crate) body: Bytes,
}

#[derive(Clone, Serialize, Deserialize)]
enum UrlEntry {
    Inline(Box<Stored>),
    Varied { names: Vec<String>, generation: u64 },
}

/// The namespace (entity) of the purge epochs ([`Store::epochs`]): apart from the responses,
/// so that purging every response does not purge the epoch that announces it.
pub(crate) const EPOCHS: &str = "purge-epochs";

/// The response entries of one cache namespace.
#[derive(Clone)]
pub(crate) struct Store {
    cache: Cache,
    schema: KeySchema,
    entity: String,
}

impl Store {
    pub(crate) fn new(cache: Cache, schema: KeySchema, entity: &str) -> Result<Self, Error> {
        // Fails early on a bad name rather than on the first request.
        schema.key(entity, "u").map_err(Error::config)?;
        if entity == EPOCHS {
            return Err(Error::config(format!("the namespace {EPOCHS} is reserved for the purge epochs")));
        }
        Ok(Self { cache, schema, entity: entity.to_owned() })
    }

    pub(crate) fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The namespace `strata::Cache::invalidate_namespace` purges every entry of this store with.
    pub(crate) fn namespace(&self) -> Result<String, Error> {
        self.schema.namespace(&self.entity).map_err(Error::config)
    }

    /// A surrogate key as a tag of this store's application.
    pub(crate) fn tag(&self, name: &str) -> Result<Tag, Error> {
        self.schema.tag(name).map_err(Error::config)
    }

    /// The key of the marker that coalesces the fetches of `url` (see the layer's misses).
    pub(crate) fn fetch_marker(&self, url: &str) -> Result<Key, Error> {
        self.schema.key_with_hashed_variant(&self.entity, "f", url).map_err(Error::config)
    }

    fn url_key(&self, url: &str) -> Result<Key, Error> {
        self.schema.key_with_hashed_variant(&self.entity, "u", url).map_err(Error::config)
    }

    fn variant_key(&self, url: &str, generation: u64, names: &[String], request: &HeaderMap) -> Result<Key, Error> {
        let mut raw = Vec::with_capacity(url.len() + 64);
        raw.extend_from_slice(url.as_bytes());
        raw.push(0);
        raw.extend_from_slice(&generation.to_be_bytes());
        raw.extend_from_slice(&selecting_values(names, request));
        self.schema.key_with_hashed_variant(&self.entity, "v", raw).map_err(Error::config)
    }

    /// The response stored for `url` whose variant `request` selects, if any. Redis being
    /// unreachable reads as a miss.
    pub(crate) async fn lookup(&self, url: &str, request: &HeaderMap) -> Option<Stored> {
        let key = self.url_key(url).ok()?;
        match self.cache.get::<UrlEntry>(&key).await.ok()?? {
            UrlEntry::Inline(stored) => Some(*stored),
            UrlEntry::Varied { names, generation } => {
                let key = self.variant_key(url, generation, &names, request).ok()?;
                self.cache.get::<Stored>(&key).await.ok()?
            }
        }
    }

    /// Stores `stored` for `url` (and, for a varying response, the variant `request` selects)
    /// for `keep`, with its surrogate keys as tags.
    pub(crate) async fn put(
        &self,
        url: &str,
        request: &HeaderMap,
        vary: &Vary,
        stored: &Stored,
        keep: Duration,
        tags: &[Tag],
    ) -> Result<(), Error> {
        let ttl = Ttl::Exact(keep.clamp(Duration::from_secs(1), strata::MAX_TTL));
        let key = self.url_key(url)?;
        match vary {
            Vary::Star => Ok(()),
            Vary::None => self
                .cache
                .set_tagged(&key, &UrlEntry::Inline(Box::new(stored.clone())), ttl, tags)
                .await
                .map_err(Error::from),
            Vary::Names(names) => {
                // The same names keep their generation (and the other variants); new ones start
                // afresh. The URL entry is written again each time, so it lasts as long as the
                // newest variant.
                let generation = match self.cache.get::<UrlEntry>(&key).await {
                    Ok(Some(UrlEntry::Varied { names: known, generation })) if &known == names => generation,
                    _ => rand::random::<u64>(),
                };
                let entry = UrlEntry::Varied { names: names.clone(), generation };
                self.cache.set_tagged(&key, &entry, ttl, tags).await?;
                let variant = self.variant_key(url, generation, names, request)?;
                self.cache.set_tagged(&variant, stored, ttl, tags).await.map_err(Error::from)
            }
        }
    }

    /// Removes what is stored for `url`, every variant with it.
    pub(crate) async fn invalidate(&self, url: &str) -> Result<(), Error> {
        self.cache.delete(&self.url_key(url)?).await?;
        Ok(())
    }

    /// The purge epochs of `url`: the store's and the URL's own, each a random number that a
    /// purge replaces before it removes anything (a purge by surrogate key or of everything
    /// replaces the store's; an unsafe request replaces its URLs'). A response fetched while a
    /// purge ran may be older than what the purge was for: its writer reads the epochs before
    /// asking the origin and again after storing, and removes what it stored when they differ.
    /// Whichever of the purge's removal and the write comes last, the response does not stay
    /// (within the invalidation bound of another instance's L1). `None`s while Redis cannot be
    /// read.
    pub(crate) async fn epochs(&self, url: &str) -> (Option<u64>, Option<u64>) {
        let (Ok(all), Ok(one)) = (self.schema.key(EPOCHS, &self.entity), self.url_epoch_key(url)) else {
            return (None, None);
        };
        let (all, one) = tokio::join!(self.cache.get::<u64>(&all), self.cache.get::<u64>(&one));
        (all.ok().flatten(), one.ok().flatten())
    }

    fn url_epoch_key(&self, url: &str) -> Result<Key, Error> {
        self.schema.key_with_hashed_variant(EPOCHS, &self.entity, url).map_err(Error::config)
    }

    /// Starts a purge of everything or of a surrogate key: a new store epoch.
    pub(crate) async fn bump_epoch(&self) -> Result<(), Error> {
        let key = self.schema.key(EPOCHS, &self.entity).map_err(Error::config)?;
        self.bump(&key).await
    }

    /// Starts a purge of `url`: a new epoch of the URL.
    pub(crate) async fn bump_url_epoch(&self, url: &str) -> Result<(), Error> {
        self.bump(&self.url_epoch_key(url)?).await
    }

    async fn bump(&self, key: &Key) -> Result<(), Error> {
        // Longer than a fetch takes; an epoch that expired reads as none, which is a change too
        // (a fill then removes what it stored, needlessly but safely).
        self.cache.set(key, &rand::random::<u64>(), Ttl::Exact(Duration::from_secs(600))).await?;
        Ok(())
    }
}
