//! The key schema `app:v{N}:entity:id[:variant]` and its validation.
//!
//! Every key the cache reads or writes is a [`Key`], built by a [`KeySchema`] (or checked by
//! [`Key::parse`]), so a malformed key is an error at construction, never a surprise in Redis.
//! The namespace of a key is its prefix up to the entity segment (`app:v1:user`): metrics,
//! inspection and namespace invalidation all group by it. The `v{N}` segment lets a deploy retire
//! a whole schema by bumping `N`.

use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Longest app or entity segment, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Longest id segment, in bytes.
pub const MAX_ID_LEN: usize = 256;
/// Variants longer than this (in bytes) are replaced by a hash of themselves.
pub const MAX_VARIANT_LEN: usize = 64;
/// Longest raw key accepted by [`Key::parse`], in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// Builds validated keys for one application and schema version.
///
/// ```
/// let schema = strata::KeySchema::new("shop", 3)?;
/// let key = schema.key("user", "42")?;
/// assert_eq!(key.as_str(), "shop:v3:user:42");
/// assert_eq!(key.namespace(), "shop:v3:user");
/// assert!(schema.key("user", "has space").is_err());
/// # Ok::<(), strata::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySchema {
    app: Arc<str>,
    version: u32,
}

impl KeySchema {
    /// A schema for `app` at version `version`. `app` must match `[A-Za-z0-9_-]{1,64}`.
    pub fn new(app: &str, version: u32) -> Result<Self> {
        check_name("app", app)?;
        Ok(Self { app: app.into(), version })
    }

    /// The application segment.
    pub fn app(&self) -> &str {
        &self.app
    }

    /// The schema version (the `N` of `v{N}`).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The same app one version later: how a deploy retires every key of the old schema.
    pub fn bumped(&self) -> Result<Self> {
        let version = self.version.checked_add(1).ok_or_else(|| Error::invalid_key("schema version overflow"))?;
        Ok(Self { app: self.app.clone(), version })
    }

    /// The namespace string for an entity: `app:v{N}:entity`.
    pub fn namespace(&self, entity: &str) -> Result<String> {
        check_name("entity", entity)?;
        Ok(format!("{}:v{}:{}", self.app, self.version, entity))
    }

    /// `app:v{N}:entity:id`.
    pub fn key(&self, entity: &str, id: &str) -> Result<Key> {
        let ns = self.namespace(entity)?;
        check_segment("id", id, MAX_ID_LEN)?;
        Ok(Key::from_parts(format!("{ns}:{id}"), ns.len()))
    }

    /// `app:v{N}:entity:id:variant`. A variant longer than [`MAX_VARIANT_LEN`] bytes is replaced by
    /// `h` followed by 32 hex digits of its SHA-256, so long variants still make short keys.
    pub fn key_with_variant(&self, entity: &str, id: &str, variant: &str) -> Result<Key> {
        let base = self.key(entity, id)?;
        check_chars("variant", variant)?;
        if variant.is_empty() {
            return Err(Error::invalid_key("variant segment is empty"));
        }
        if looks_hashed(variant) {
            // Reserved for hashed variants: a literal one could alias a hashed one.
            return Err(Error::invalid_key(format!(
                "variant {variant:?} has the form of a hashed variant (h + 32 hex digits); use key_with_hashed_variant"
            )));
        }
        let variant =
            if variant.len() > MAX_VARIANT_LEN { hash_segment(variant.as_bytes()) } else { variant.to_owned() };
        Ok(Key::from_parts(format!("{}:{variant}", base.as_str()), base.ns_len))
    }

    /// Like [`key_with_variant`](Self::key_with_variant) but for free-form input (a query string,
    /// a filter set): the variant is always hashed, so any bytes are accepted.
    pub fn key_with_hashed_variant(&self, entity: &str, id: &str, raw: impl AsRef<[u8]>) -> Result<Key> {
        let base = self.key(entity, id)?;
        Ok(Key::from_parts(format!("{}:{}", base.as_str(), hash_segment(raw.as_ref())), base.ns_len))
    }

    /// The key of a list of arguments, as [`#[strata::cached]`](crate#cached-functions) builds
    /// it: call it with the same schema, entity and arguments to read, overwrite or delete what
    /// a cached function stored.
    ///
    /// Each argument is formatted with `Display`; bytes outside `A-Z a-z 0-9 - _ . @ + = /` are
    /// percent-encoded (`%` + two upper-case hex digits per UTF-8 byte, `%` itself included), an
    /// empty argument is written `~`, and the arguments are joined with `,`. So any text is
    /// accepted and two lists of the same length make the same id only when every argument
    /// formats the same. No argument at all is `~` too. The id is `app:v{N}:entity:ID`; when it
    /// is longer than [`MAX_ID_LEN`] bytes the key is `app:v{N}:entity:#:h` followed by 32 hex
    /// digits of the id's SHA-256 (as [`key_with_hashed_variant`](Self::key_with_hashed_variant)),
    /// which no encoded id can equal.
    ///
    /// ```
    /// let schema = strata::KeySchema::new("shop", 1)?;
    /// assert_eq!(schema.key_for_args("user", &[&42])?.as_str(), "shop:v1:user:42");
    /// assert_eq!(schema.key_for_args("search", &[&"red shoes", &10])?.as_str(), "shop:v1:search:red%20shoes,10");
    /// assert_eq!(schema.key_for_args("search", &[&"a,b"])?.as_str(), "shop:v1:search:a%2Cb");
    /// assert_eq!(schema.key_for_args("search", &[&"", &""])?.as_str(), "shop:v1:search:~,~");
    /// assert!(schema.key_for_args("search", &[&"x".repeat(300)])?.as_str().starts_with("shop:v1:search:#:h"));
    /// # Ok::<(), strata::Error>(())
    /// ```
    pub fn key_for_args(&self, entity: &str, args: &[&dyn fmt::Display]) -> Result<Key> {
        let id = encode_args(args);
        if id.len() > MAX_ID_LEN { self.key_with_hashed_variant(entity, "#", id) } else { self.key(entity, &id) }
    }
}

/// The id of [`KeySchema::key_for_args`]: each argument percent-encoded, `~` when empty, joined
/// with `,`.
fn encode_args(args: &[&dyn fmt::Display]) -> String {
    use fmt::Write as _;
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut id = String::new();
    let mut text = String::new();
    for (i, arg) in args.iter().enumerate() {
        if i > 0 {
            id.push(',');
        }
        text.clear();
        // Writing into a String cannot fail; a Display impl that reports an error leaves what
        // it wrote so far, as `to_string` would panic instead.
        let _ = write!(text, "{arg}");
        if text.is_empty() {
            id.push('~');
        }
        for byte in text.bytes() {
            if byte.is_ascii_alphanumeric() || b"-_.@+=/".contains(&byte) {
                id.push(char::from(byte));
            } else {
                id.push('%');
                id.push(char::from(HEX[usize::from(byte >> 4)]));
                id.push(char::from(HEX[usize::from(byte & 0xf)]));
            }
        }
    }
    if id.is_empty() {
        id.push('~');
    }
    id
}

/// A validated cache key. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key {
    full: Arc<str>,
    ns_len: usize,
}

impl Key {
    fn from_parts(full: String, ns_len: usize) -> Self {
        Self { full: full.into(), ns_len }
    }

    /// Validates a raw key that was not built by a [`KeySchema`] (for example one read back from
    /// Redis). Segments are split on `:`; each must be non-empty and free of whitespace, control
    /// and glob characters. The namespace is `app:vN:entity` when the key follows the schema, and
    /// the first segment otherwise.
    pub fn parse(raw: &str) -> Result<Key> {
        if raw.len() > MAX_KEY_LEN {
            return Err(Error::invalid_key(format!("key is {} bytes; the maximum is {MAX_KEY_LEN}", raw.len())));
        }
        let segments: Vec<&str> = raw.split(':').collect();
        for segment in &segments {
            if segment.is_empty() {
                return Err(Error::invalid_key(format!("key {raw:?} has an empty segment")));
            }
            check_chars("key", segment)?;
        }
        let ns_len = namespace_of(raw.as_bytes()).len();
        Ok(Key::from_parts(raw.to_owned(), ns_len))
    }

    /// The full Redis key.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The namespace: `app:v{N}:entity` for schema keys.
    pub fn namespace(&self) -> &str {
        &self.full[..self.ns_len]
    }

    pub(crate) fn shared(&self) -> &Arc<str> {
        &self.full
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({:?})", &*self.full)
    }
}

impl TryFrom<&str> for Key {
    type Error = Error;
    fn try_from(raw: &str) -> Result<Key> {
        Key::parse(raw)
    }
}

/// The namespace of a raw key: `app:vN:entity` when the key follows the schema (at least four
/// segments, the second `v` + digits), otherwise its first `:`-separated segment (the whole key
/// when it has no `:`). Works on any bytes, so tools can group keys they did not write.
pub fn namespace_of(key: &[u8]) -> &[u8] {
    let mut parts = key.splitn(4, |b| *b == b':');
    let first = parts.next().unwrap_or_default();
    let (second, third, rest) = (parts.next(), parts.next(), parts.next());
    match (second, third, rest) {
        (Some(second), Some(third), Some(_))
            if second.len() > 1 && second[0] == b'v' && second[1..].iter().all(u8::is_ascii_digit) =>
        {
            &key[..first.len() + second.len() + third.len() + 2]
        }
        _ => first,
    }
}

fn hash_segment(raw: &[u8]) -> String {
    let digest = Sha256::digest(raw);
    let mut out = String::with_capacity(33);
    out.push('h');
    for byte in &digest[..16] {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

fn looks_hashed(variant: &str) -> bool {
    variant.len() == 33
        && variant.starts_with('h')
        && variant[1..].bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

pub(crate) fn check_name(what: &str, value: &str) -> Result<()> {
    if value.is_empty() || value.len() > MAX_NAME_LEN {
        return Err(Error::invalid_key(format!(
            "{what} segment must be 1 to {MAX_NAME_LEN} bytes, got {}",
            value.len()
        )));
    }
    if let Some(c) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-')) {
        return Err(Error::invalid_key(format!("{what} segment {value:?} contains {c:?}; allowed: A-Z a-z 0-9 _ -")));
    }
    Ok(())
}

pub(crate) fn check_segment(what: &str, value: &str, max: usize) -> Result<()> {
    if value.is_empty() || value.len() > max {
        return Err(Error::invalid_key(format!("{what} segment must be 1 to {max} bytes, got {}", value.len())));
    }
    check_chars(what, value)
}

/// Whitespace and control characters break tooling and logs; glob characters would make
/// pattern invalidation (SCAN MATCH) hit other keys; `:` is the separator; braces are Redis
/// Cluster hash tags, which would silently pin unrelated keys to one slot.
fn check_chars(what: &str, value: &str) -> Result<()> {
    match value.chars().find(|c| c.is_whitespace() || c.is_control() || "*?[]\\{}:".contains(*c)) {
        Some(c) => Err(Error::invalid_key(format!(
            "{what} segment {value:?} contains forbidden character {c:?} (whitespace, control, glob, ':' and braces are not allowed)"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_schema_keys() -> Result<()> {
        let s = KeySchema::new("app", 2)?;
        assert_eq!(s.key("user", "7")?.as_str(), "app:v2:user:7");
        assert_eq!(s.key_with_variant("user", "7", "full")?.as_str(), "app:v2:user:7:full");
        assert_eq!(s.bumped()?.key("user", "7")?.as_str(), "app:v3:user:7");
        assert!(KeySchema::new("app", u32::MAX)?.bumped().is_err());
        Ok(())
    }

    #[test]
    fn rejects_bad_segments() -> Result<()> {
        let s = KeySchema::new("app", 1)?;
        for id in ["", "a b", "a\tb", "a\nb", "a*", "a?", "[a]", "a\\b", "a:b", "{tag}", "a\u{7f}"] {
            let err = s.key("user", id).expect_err(id);
            assert!(err.is_invalid_key(), "{id:?}: {err}");
        }
        assert!(KeySchema::new("my app", 1).is_err());
        assert!(KeySchema::new("", 1).is_err());
        assert!(s.key("us.er", "1").is_err());
        assert!(s.key("user", &"x".repeat(MAX_ID_LEN + 1)).is_err());
        assert!(s.key("user", "ünïcode-ok").is_ok());
        Ok(())
    }

    #[test]
    fn hashes_long_variants_deterministically() -> Result<()> {
        let s = KeySchema::new("app", 1)?;
        let long = "f".repeat(500);
        let a = s.key_with_variant("search", "q", &long)?;
        let b = s.key_with_variant("search", "q", &long)?;
        assert_eq!(a, b);
        assert!(a.as_str().len() < 60, "{a}");
        let hashed = s.key_with_hashed_variant("search", "q", "name = 'x y' * ?")?;
        assert!(hashed.as_str().starts_with("app:v1:search:q:h"));
        assert_ne!(hashed, s.key_with_hashed_variant("search", "q", "name = 'x y' * !")?);
        // A literal variant may not take the hashed form, or it could alias a hashed one.
        let hashed_form = &a.as_str()["app:v1:search:q:".len()..];
        assert!(s.key_with_variant("search", "q", hashed_form).expect_err("reserved").is_invalid_key());
        Ok(())
    }

    #[test]
    fn encodes_arguments_without_collisions() -> Result<()> {
        let s = KeySchema::new("app", 1)?;
        let key = |args: &[&dyn fmt::Display]| s.key_for_args("f", args).map(|k| k.as_str().to_owned());
        assert_eq!(key(&[])?, "app:v1:f:~");
        assert_eq!(key(&[&7u64, &"en-GB"])?, "app:v1:f:7,en-GB");
        assert_eq!(key(&[&"a b:c*{d}%"])?, "app:v1:f:a%20b%3Ac%2A%7Bd%7D%25");
        assert_eq!(key(&[&"ü"])?, "app:v1:f:%C3%BC");
        // Pairs that would collide under a naive join.
        assert_ne!(key(&[&"a,b", &"c"])?, key(&[&"a", &"b,c"])?);
        assert_ne!(key(&[&"", &"x"])?, key(&[&"~", &"x"])?);
        assert_ne!(key(&[&"%2C"])?, key(&[&","])?);
        // Every key is valid, whatever the input.
        for raw in ["\n", "\u{0}", "[*?]", "#", "h0123456789abcdef0123456789abcdef"] {
            Key::parse(&key(&[&raw])?)?;
        }
        let long = "x".repeat(MAX_ID_LEN + 1);
        let hashed = key(&[&long])?;
        assert!(hashed.starts_with("app:v1:f:#:h") && hashed.len() == "app:v1:f:#:h".len() + 32, "{hashed}");
        assert_ne!(hashed, key(&[&"x".repeat(MAX_ID_LEN + 2)])?);
        assert_eq!(key(&[&"x".repeat(MAX_ID_LEN)])?.len(), "app:v1:f:".len() + MAX_ID_LEN);
        Ok(())
    }

    #[test]
    fn parses_raw_keys_and_namespaces() -> Result<()> {
        assert_eq!(Key::parse("app:v1:user:9")?.namespace(), "app:v1:user");
        assert_eq!(Key::parse("app:v1:user:9:x")?.namespace(), "app:v1:user");
        assert_eq!(Key::parse("session:abc")?.namespace(), "session");
        assert_eq!(Key::parse("plain")?.namespace(), "plain");
        assert!(Key::parse("a::b").is_err());
        // The same rule on raw bytes, for keys this library did not write.
        assert_eq!(namespace_of(b"shop:v12:user:1"), b"shop:v12:user");
        assert_eq!(namespace_of(b"shop:vx:user:1"), b"shop");
        assert_eq!(namespace_of(b"shop:v1:user"), b"shop");
        assert_eq!(namespace_of(b"\xff:v1:e:1"), b"\xff:v1:e");
        assert_eq!(namespace_of(b"plain"), b"plain");
        assert!(Key::parse("a b").is_err());
        Ok(())
    }
}
