//! `strata invalidate --stamp` / `--tag`: O(1) invalidation of a Strata namespace or tag.
//!
//! Instead of scanning and deleting keys, raise the namespace's (or tag's) stamp key with the
//! library's own script ([`strata::bump_stamp`]): one command on one node, whatever the number
//! of keys. Strata caches then treat every value produced before it as a miss — the instance
//! that raised it at once, the others within their `stamp_refresh` — and the old keys expire by
//! their TTL. Only Strata readers honour stamps: other clients reading the keys directly still
//! see them (use the scanning mode for those).

use serde::Serialize;

use crate::error::{OpsError, Result};
use crate::invalidate::connection_for_key;
use crate::target::Deployment;

/// What to invalidate through its stamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StampTarget {
    /// A namespace: `app:vN:entity` or a single segment.
    Namespace(String),
    /// A tag, `APP:NAME`.
    Tag(String),
}

impl StampTarget {
    /// Validates the target and returns its stamp key.
    pub fn stamp_key(&self) -> Result<String> {
        let invalid = |e: strata::Error| OpsError::invalid(e.to_string());
        match self {
            StampTarget::Namespace(ns) => strata::namespace_stamp_key(ns).map_err(invalid),
            StampTarget::Tag(tag) => {
                let (app, name) = tag
                    .split_once(':')
                    .ok_or_else(|| OpsError::invalid(format!("tag {tag:?} must be APP:NAME (e.g. shop:tenant-7)")))?;
                Ok(strata::Tag::new(app, name).map_err(invalid)?.stamp_key())
            }
        }
    }
}

/// The result of [`invalidate_stamp`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StampReport {
    /// The stamp key raised.
    pub stamp_key: String,
    /// Its generation now.
    pub generation: u64,
    /// The master that holds it.
    pub node: String,
}

/// Raises the stamp of `target` on the master that holds it: one command.
pub fn invalidate_stamp(deployment: &Deployment, target: &StampTarget) -> Result<StampReport> {
    let stamp_key = target.stamp_key()?;
    let (node, mut con) = connection_for_key(deployment, &stamp_key)?;
    let generation = strata::bump_stamp(&mut con, &stamp_key).map_err(|e| OpsError::redis(&node, &e))?;
    Ok(StampReport { stamp_key, generation, node })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_map_to_the_library_stamp_keys() -> Result<()> {
        assert_eq!(StampTarget::Namespace("shop:v1:user".into()).stamp_key()?, "{shop:v1:user}:stamp");
        assert_eq!(StampTarget::Tag("shop:tenant-7".into()).stamp_key()?, "{shop:tag:tenant-7}:stamp");
        for bad in [StampTarget::Namespace("shop:v1".into()), StampTarget::Tag("tenant".into())] {
            assert!(bad.stamp_key().is_err(), "{bad:?}");
        }
        assert!(StampTarget::Tag("shop:a b".into()).stamp_key().is_err());
        Ok(())
    }
}
