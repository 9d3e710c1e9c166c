//! The marks a value carries — the generations of its namespace and tags when it was produced —
//! and the verdict on them at every read, from either tier (see [`crate::namespace`] for the
//! scheme). A value produced before an invalidation is a miss, removed lazily.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use futures::future::{BoxFuture, join_all};

use super::Inner;
use crate::error::{Error, Result};
use crate::key::Key;
use crate::metrics::NsCounters;
use crate::namespace::{BUMP, READ_SCRIPT, STAMP_TTL_MS};
use crate::tags::{Marks, Tag, stamp_id, stamp_key};
use crate::ttl::now_ms;

/// Whether a stored value may be served, given its marks and the stamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Current,
    /// Produced before an invalidation of its namespace or of one of its tags.
    Invalidated,
    /// A stamp could not be read: do not serve, do not remove.
    Unknown,
}

impl Inner {
    /// The marks for a value about to be produced for `key`: generations as known now (read
    /// from Redis when not fresh). When one cannot be read, the error comes with marks that
    /// record it as 0, which makes the value invalid wherever it is read: it cannot be checked.
    pub(crate) async fn capture_marks(
        &self,
        key: &Key,
        tags: &[Tag],
    ) -> std::result::Result<Arc<Marks>, (Arc<Marks>, Error)> {
        let ids = std::iter::once(key.namespace()).chain(tags.iter().map(Tag::id));
        let mut first_error = None;
        let mut gens = self.generations(ids).await.into_iter().map(|g| {
            g.unwrap_or_else(|err| {
                first_error.get_or_insert(err);
                0
            })
        });
        let ns_gen = gens.next().unwrap_or(0);
        let tags = tags.iter().cloned().zip(gens).collect();
        let mut marks = Marks::new(now_ms(), ns_gen, tags);
        match first_error {
            None => Ok(Arc::new(marks)),
            Some(err) => {
                marks.provisional = err.is_unavailable();
                Err((Arc::new(marks), err))
            }
        }
    }

    /// Marks for a caller's write (`set`, `set_many`, `set_not_found`). A stamp that cannot be
    /// read fails the write rather than storing a value every reader would discard; this
    /// instance's L1 copy goes too, as when the write itself fails.
    pub(crate) async fn write_marks(&self, key: &Key, tags: &[Tag]) -> Result<Arc<Marks>> {
        self.capture_marks(key, tags).await.map_err(|(_, err)| {
            self.l1.remove(key.as_str());
            err
        })
    }

    /// Compares a value's marks with the current stamps.
    pub(crate) async fn verdict(&self, key: &Key, marks: &Marks) -> Verdict {
        if marks.provisional {
            // Loaded from the source during an outage: good while the stamps stay unreadable
            // (nobody can invalidate through Redis either), dropped once they can be read.
            let ids = std::iter::once(key.namespace()).chain(marks.tags.iter().map(|(t, _)| t.id()));
            let readable = self.generations(ids).await.iter().all(Result::is_ok);
            return if readable { Verdict::Invalidated } else { Verdict::Current };
        }
        if marks.ns_gen == 0 {
            // Unknown when written (a version-1 envelope, or Redis was away): cannot be trusted.
            return Verdict::Invalidated;
        }
        // Read before the check: a change during it leaves the entry to be checked again.
        let version = self.stamps.version();
        if version.is_some_and(|v| marks.verified.load(Ordering::Acquire) == v) {
            return Verdict::Current;
        }
        let recorded =
            std::iter::once((key.namespace(), marks.ns_gen)).chain(marks.tags.iter().map(|(t, g)| (t.id(), *g)));
        let now = Instant::now();
        let mut unsure = Vec::new();
        for (id, generation) in recorded {
            match self.stamps.fresh(id, now) {
                Some(current) if current > generation => return Verdict::Invalidated,
                Some(_) => {}
                None => unsure.push((id, generation)),
            }
        }
        if unsure.is_empty() {
            marks.verified.store(version.unwrap_or(0), Ordering::Release);
            return Verdict::Current;
        }
        let current = self.generations(unsure.iter().map(|(id, _)| *id)).await;
        let mut verdict = Verdict::Current;
        for ((_, generation), current) in unsure.into_iter().zip(current) {
            match current {
                Ok(current) if current > generation => return Verdict::Invalidated,
                Ok(_) => {}
                Err(_) => verdict = Verdict::Unknown,
            }
        }
        if verdict == Verdict::Current {
            marks.verified.store(version.unwrap_or(0), Ordering::Release);
        }
        verdict
    }

    /// L1 hook: whether an entry may be served. An invalidated one is removed and counted.
    pub(crate) async fn l1_current(&self, key: &Key, marks: &Marks, ns: &NsCounters) -> bool {
        match self.verdict(key, marks).await {
            Verdict::Current => true,
            Verdict::Invalidated => {
                NsCounters::inc(&ns.invalidated);
                self.l1.remove(key.as_str());
                false
            }
            Verdict::Unknown => false,
        }
    }

    /// L2 hook: whether a decoded value may be served. An invalidated one is counted as a miss
    /// and removed from Redis if it still holds these bytes (a newer value written meanwhile
    /// stays): an absent key lets the next load take the lease, so other processes wait for it
    /// instead of all loading.
    pub(crate) async fn l2_current(&self, key: &Key, marks: &Marks, ns: &NsCounters, bytes: &[u8]) -> bool {
        match self.verdict(key, marks).await {
            Verdict::Current => return true,
            Verdict::Invalidated => NsCounters::inc(&ns.invalidated),
            Verdict::Unknown => {
                NsCounters::inc(&ns.l2_misses);
                return false;
            }
        }
        NsCounters::inc(&ns.l2_misses);
        self.l1.remove(key.as_str());
        let removed = self.delete_if_equal(key, bytes).await;
        if let Err(err) = removed {
            tracing::debug!(key = %key, error = %err, "could not remove an invalidated value; it expires by its TTL");
        }
        false
    }

    /// The current generation of each stamp id: known fresh, or read (concurrently) from Redis.
    /// Boxed: it sits under every read, and an unboxed future this deep overflows the compiler's
    /// `Send` check in callers that spawn a read.
    fn generations<'a>(&'a self, ids: impl Iterator<Item = &'a str>) -> BoxFuture<'a, Vec<Result<u64>>> {
        let now = Instant::now();
        let reads: Vec<_> = ids
            .map(|id| async move {
                match self.stamps.fresh(id, now) {
                    Some(g) => Ok(g),
                    None => self.read_stamp(id).await,
                }
            })
            .collect();
        Box::pin(join_all(reads))
    }

    async fn read_stamp(&self, id: &str) -> Result<u64> {
        let (epoch, asked_at) = (self.stamps.epoch(), Instant::now());
        let key = stamp_key(id);
        let k = key.as_str();
        let raw: String = self
            .call_for(k, "stamp read", |mut c| async move {
                READ_SCRIPT.key(k).arg(STAMP_TTL_MS).invoke_async(&mut c).await
            })
            .await
            .inspect_err(|err| tracing::debug!(stamp = %key, error = %err, "could not read stamp"))?;
        let generation = raw.parse::<u64>().map_err(|_| {
            tracing::warn!(stamp = %key, value = %raw, "stamp is not a generation; invalidate it to repair it");
            Error::corrupt(format!("stamp {key} holds {raw:?}, not a generation"))
        })?;
        self.stamps.learn(id, generation, asked_at, epoch);
        Ok(generation)
    }

    pub(crate) async fn bump(&self, stamp: &str) -> Result<u64> {
        let (epoch, asked_at) = (self.stamps.epoch(), Instant::now());
        let generation: u64 = self
            .call_for(stamp, "stamp bump", |mut c| async move {
                redis::cmd("EVAL").arg(BUMP).arg(1).arg(stamp).arg(STAMP_TTL_MS).query_async(&mut c).await
            })
            .await?;
        if let Some(id) = stamp_id(stamp) {
            self.stamps.learn(id, generation, asked_at, epoch);
        }
        Ok(generation)
    }
}
