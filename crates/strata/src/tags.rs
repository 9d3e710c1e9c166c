//! Tags, stamp keys, and the marks a value carries so that namespace and tag invalidations can
//! be checked lazily.
//!
//! Each namespace and each tag has one **stamp key** in Redis holding a generation: a number
//! that only grows, raised by every invalidation (see [`Cache::invalidate_namespace`]). A value
//! records, in its envelope, the generation of its namespace and of each of its tags as the
//! writer knew them *before* producing the value (its [`Marks`]). A value whose recorded
//! generation is below the current one was produced before an invalidation: it is a miss.
//!
//! Stamp keys use the lease key's shape so that an application's ACL (`~app:* ~{app:*`) covers
//! them and `SCAN MATCH app:v1:user:*` (pattern invalidation, inspection) never meets them:
//!
//! - namespace `app:v1:user` → `{app:v1:user}:stamp`
//! - tag `tenant-7` of app `app` → `{app:tag:tenant-7}:stamp`
//!
//! [`Cache::invalidate_namespace`]: crate::Cache::invalidate_namespace

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crate::error::{Error, Result};
use crate::key::{Key, KeySchema, check_name, check_segment};

/// Most tags one value may carry.
pub const MAX_TAGS: usize = 16;
/// Longest tag name, in bytes.
pub const MAX_TAG_LEN: usize = 64;

const STAMP_PREFIX: &str = "{";
const STAMP_SUFFIX: &str = "}:stamp";
const TAG_INFIX: &str = ":tag:";

/// A tag: a label shared by values of any namespace of one application (a tenant, a product,
/// a user), invalidated at once by [`Cache::invalidate_tag`](crate::Cache::invalidate_tag).
///
/// ```
/// let schema = strata::KeySchema::new("shop", 1)?;
/// let tag = schema.tag("tenant-7")?;
/// assert_eq!((tag.app(), tag.name()), ("shop", "tenant-7"));
/// assert_eq!(tag.stamp_key(), "{shop:tag:tenant-7}:stamp");
/// assert!(schema.tag("has space").is_err());
/// # Ok::<(), strata::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Tag {
    /// `APP:tag:NAME`: the stamp key without its braces and suffix, also the tag's entry in
    /// the per-instance stamp cache (built once, so a check allocates nothing).
    id: Arc<str>,
    app_len: usize,
}

impl Tag {
    /// A tag of application `app` (rules of [`KeySchema::new`]). The name is 1 to
    /// [`MAX_TAG_LEN`] bytes without whitespace, control, glob characters, `:` or braces.
    pub fn new(app: &str, name: &str) -> Result<Tag> {
        check_name("app", app)?;
        check_segment("tag", name, MAX_TAG_LEN)?;
        Ok(Tag { id: format!("{app}{TAG_INFIX}{name}").into(), app_len: app.len() })
    }

    /// The application the tag belongs to.
    pub fn app(&self) -> &str {
        &self.id[..self.app_len]
    }

    /// The tag's name.
    pub fn name(&self) -> &str {
        &self.id[self.app_len + TAG_INFIX.len()..]
    }

    /// The Redis key holding this tag's generation: `{APP:tag:NAME}:stamp`.
    pub fn stamp_key(&self) -> String {
        stamp_key(&self.id)
    }

    pub(crate) fn id(&self) -> &str {
        &self.id
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tag({})", self.id)
    }
}

impl KeySchema {
    /// A [`Tag`] of this schema's application. Tags do not depend on the schema version.
    pub fn tag(&self, name: &str) -> Result<Tag> {
        Tag::new(self.app(), name)
    }
}

/// Checks that `namespace` is what [`namespace_of`](crate::namespace_of) yields for keys of that namespace
/// (`app:vN:entity`, or a single first segment) and returns its stamp key.
pub fn namespace_stamp_key(namespace: &str) -> Result<String> {
    let probe = Key::parse(&format!("{namespace}:x"))?;
    if probe.namespace() != namespace {
        return Err(Error::invalid_key(format!(
            "{namespace:?} is not a namespace: expected app:vN:entity (or a single segment)"
        )));
    }
    Ok(stamp_key(namespace))
}

/// The stamp key of a stamp id (a namespace, or a tag's `APP:tag:NAME`).
pub(crate) fn stamp_key(id: &str) -> String {
    format!("{STAMP_PREFIX}{id}{STAMP_SUFFIX}")
}

/// The stamp id inside a stamp key (the inverse of its construction); `None` for other keys.
pub(crate) fn stamp_id(key: &str) -> Option<&str> {
    key.strip_prefix(STAMP_PREFIX).and_then(|k| k.strip_suffix(STAMP_SUFFIX)).filter(|k| !k.is_empty())
}

/// Whether a Redis key is a Strata stamp key (of a namespace or a tag).
pub fn is_stamp_key(key: &[u8]) -> bool {
    std::str::from_utf8(key).ok().and_then(stamp_id).is_some()
}

/// What a value recorded when it was written: when, and the generations of its namespace and
/// tags at that moment. Generation 0 means unknown (a version-1 envelope, or Redis could not be
/// asked): older than any stamp, so such a value is never served once the stamp is known.
#[derive(Debug, Default)]
pub(crate) struct Marks {
    /// The writer's wall clock, Unix milliseconds (0 unknown). Informational: validity is
    /// decided by generations, which do not depend on clocks agreeing.
    pub(crate) created_at_ms: u64,
    pub(crate) ns_gen: u64,
    pub(crate) tags: Vec<(Tag, u64)>,
    /// The stamp-cache version under which these marks were last found current (0 never):
    /// while it has not changed, an L1 hit skips the check. Not part of the envelope.
    pub(crate) verified: AtomicU64,
    /// Captured while Redis could not be asked (an outage): a value loaded from the source then
    /// is served from L1 for as long as stamps stay unreadable, and dropped as soon as they can
    /// be read again. Not part of the envelope (written, such marks read as unknown).
    pub(crate) provisional: bool,
}

impl Clone for Marks {
    fn clone(&self) -> Self {
        Marks {
            created_at_ms: self.created_at_ms,
            ns_gen: self.ns_gen,
            tags: self.tags.clone(),
            provisional: self.provisional,
            ..Marks::default()
        }
    }
}

impl PartialEq for Marks {
    fn eq(&self, other: &Self) -> bool {
        (self.created_at_ms, self.ns_gen, &self.tags) == (other.created_at_ms, other.ns_gen, &other.tags)
    }
}

impl Eq for Marks {}

impl Marks {
    pub(crate) fn new(created_at_ms: u64, ns_gen: u64, tags: Vec<(Tag, u64)>) -> Self {
        Marks { created_at_ms, ns_gen, tags, ..Marks::default() }
    }

    /// Marks of a value with no known generation (version-1 envelopes).
    pub(crate) fn unknown() -> Arc<Marks> {
        Arc::new(Marks::default())
    }
}

/// Validates a caller's tag list: at most [`MAX_TAGS`], duplicates dropped.
pub(crate) fn dedup_tags(tags: &[Tag]) -> Result<Vec<Tag>> {
    let mut out: Vec<Tag> = Vec::with_capacity(tags.len());
    for tag in tags {
        if !out.contains(tag) {
            out.push(tag.clone());
        }
    }
    if out.len() > MAX_TAGS {
        return Err(Error::invalid_key(format!("{} tags on one value; the maximum is {MAX_TAGS}", out.len())));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_keys_have_the_documented_shape() -> Result<()> {
        assert_eq!(namespace_stamp_key("shop:v2:user")?, "{shop:v2:user}:stamp");
        assert_eq!(namespace_stamp_key("session")?, "{session}:stamp");
        let key = KeySchema::new("shop", 2)?.key("user", "1")?;
        assert_eq!(stamp_key(key.namespace()), namespace_stamp_key(key.namespace())?);
        assert_eq!(stamp_id("{shop:tag:t-1}:stamp"), Some("shop:tag:t-1"));
        let tag = Tag::new("shop", "t-1")?;
        assert_eq!((tag.app(), tag.name(), tag.id()), ("shop", "t-1", "shop:tag:t-1"));
        assert_eq!(Tag::new("shop", "t-1")?.stamp_key(), "{shop:tag:t-1}:stamp");
        for bad in ["", "shop:v2", "shop:v2:user:1", "a b", "shop:v1:*", "{x}", "shop::user"] {
            assert!(namespace_stamp_key(bad).is_err(), "{bad:?}");
        }
        assert!(is_stamp_key(b"{shop:v2:user}:stamp") && is_stamp_key(b"{a:tag:b}:stamp"));
        assert!(!is_stamp_key(b"{}:stamp") && !is_stamp_key(b"{shop:v1:user:1}:lease"));
        assert!(!is_stamp_key(b"shop:v1:user:1"));
        Ok(())
    }

    #[test]
    fn tags_are_validated_and_deduplicated() -> Result<()> {
        assert!(Tag::new("shop", "a:b").is_err() && Tag::new("shop", "").is_err());
        assert!(Tag::new("sh op", "a").is_err() && Tag::new("shop", &"x".repeat(MAX_TAG_LEN + 1)).is_err());
        let a = Tag::new("shop", "a")?;
        assert_eq!(dedup_tags(&[a.clone(), a.clone()])?, vec![a]);
        let many: Vec<Tag> = (0..=MAX_TAGS).map(|i| Tag::new("shop", &format!("t{i}"))).collect::<Result<_>>()?;
        assert!(dedup_tags(&many).is_err());
        assert!(dedup_tags(&many[..MAX_TAGS]).is_ok());
        Ok(())
    }
}
