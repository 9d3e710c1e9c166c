//! Client-side encryption of sensitive namespaces: AES-256-GCM with a keyring.
//!
//! A value whose key is in a sensitive namespace (or under a sensitive prefix) is encrypted
//! after serialization and compression, so Redis, its backups and anyone reading its traffic
//! see only ciphertext. The envelope records the id of the key used; writes use the keyring's
//! primary key and reads accept any key of the ring, which is how keys are rotated:
//!
//! 1. deploy a ring holding the old key and the new one, the old one still primary;
//! 2. once every instance has it, make the new key primary (new writes use it);
//! 3. after the longest TTL has passed, drop the old key.
//!
//! Each value gets a random 96-bit nonce. The authenticated data is the Redis key name plus the
//! envelope header and generation section, so a value copied or renamed to another key, a
//! changed expiry or a changed flag fails authentication. So does a plaintext value found in a
//! sensitive namespace (it could have been copied there from an ordinary key). Every such
//! failure is an [`ErrorKind::Decrypt`](crate::ErrorKind) error, which the cache turns into a
//! miss, counts in `decrypt_failures` and removes, like corrupt bytes. Hot-key copies are
//! authenticated with the name of the key they copy: they are that key's value.

use std::fmt;
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::Rng;
use zeroize::Zeroizing;

use crate::error::{Error, ErrorKind, Result};
use crate::key::Key;

/// Size of an AES-256 key in bytes.
pub const KEY_LEN: usize = 32;
/// Longest key id, in bytes.
pub const MAX_KEY_ID_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// One named AES-256 key. Only the expanded cipher state is kept; the `aes-gcm` crate
/// zeroizes it on drop (its `zeroize` feature is on).
struct RingKey {
    id: Arc<str>,
    cipher: Aes256Gcm,
}

/// The AES-256-GCM keys a cache may use: every key decrypts, the primary one encrypts.
///
/// The text form, in a file or an environment variable, is one `id:key` per line (blank lines
/// and `#` comments ignored), the key 32 bytes as 64 hex digits or as standard base64. Ids are
/// 1 to 32 characters of `[A-Za-z0-9_.-]`. The last key listed is the primary one unless
/// [`with_primary`](Self::with_primary) says otherwise. Key material never appears in `Debug`
/// output or error messages.
///
/// ```
/// let ring = strata::Keyring::parse(
///     "2024-01:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n\
///      2024-07:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
/// )?;
/// assert_eq!(ring.primary(), "2024-07");
/// assert_eq!(ring.ids(), ["2024-01", "2024-07"]);
/// # Ok::<(), strata::Error>(())
/// ```
#[derive(Clone)]
pub struct Keyring {
    keys: Arc<Vec<RingKey>>,
    primary: usize,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring").field("ids", &self.ids()).field("primary", &self.primary()).finish()
    }
}

impl Keyring {
    /// Parses the text form described on [`Keyring`]. Entries may also be separated by commas
    /// or spaces, which suits an environment variable.
    pub fn parse(text: &str) -> Result<Self> {
        let mut keys: Vec<RingKey> = Vec::new();
        let entries = text.lines().filter(|l| !l.trim_start().starts_with('#')).flat_map(|l| {
            l.split(|c: char| c == ',' || c.is_whitespace()).filter(|e| !e.is_empty()).collect::<Vec<_>>()
        });
        for (n, entry) in entries.enumerate() {
            let (id, material) =
                entry.split_once(':').ok_or_else(|| Error::config(format!("keyring entry {} has no `id:`", n + 1)))?;
            check_id(id)?;
            if keys.iter().any(|k| &*k.id == id) {
                return Err(Error::config(format!("keyring lists key id {id:?} twice")));
            }
            let bytes = decode_key(material)
                .ok_or_else(|| Error::config(format!("key {id:?} is not 32 bytes of hex or base64")))?;
            let cipher = Aes256Gcm::new_from_slice(&bytes[..])
                .map_err(|_| Error::config(format!("key {id:?} is not {KEY_LEN} bytes")))?;
            keys.push(RingKey { id: id.into(), cipher });
        }
        if keys.is_empty() {
            return Err(Error::config("keyring holds no key"));
        }
        let primary = keys.len() - 1;
        Ok(Self { keys: Arc::new(keys), primary })
    }

    /// Reads the keyring from a file. The error names the file, never its content.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| Error::config(format!("cannot read keyring {}: {e}", path.display())))?,
        );
        Self::parse(&text)
    }

    /// Reads the keyring from an environment variable.
    pub fn from_env(var: &str) -> Result<Self> {
        let text = Zeroizing::new(
            std::env::var(var).map_err(|_| Error::config(format!("keyring variable {var} is not set or not UTF-8")))?,
        );
        Self::parse(&text)
    }

    /// Makes the key `id` the one new writes use.
    pub fn with_primary(mut self, id: &str) -> Result<Self> {
        self.primary = self
            .keys
            .iter()
            .position(|k| &*k.id == id)
            .ok_or_else(|| Error::config(format!("keyring has no key {id:?}")))?;
        Ok(self)
    }

    /// The id of the key new writes use.
    pub fn primary(&self) -> &str {
        self.keys.get(self.primary).map_or("", |k| &k.id)
    }

    /// Every key id, in the order given.
    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| &*k.id).collect()
    }
}

/// Which keys are encrypted, and with what: [`CacheBuilder::encryption`](crate::CacheBuilder::encryption).
///
/// ```
/// # let ring = strata::Keyring::parse("k1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")?;
/// let enc = strata::Encryption::new(ring).namespace("shop:v1:card").prefix("shop:v1:pii-");
/// # Ok::<(), strata::Error>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Encryption {
    ring: Keyring,
    namespaces: Vec<String>,
    prefixes: Vec<String>,
}

impl Encryption {
    /// Encryption with `ring` for no key yet: add namespaces or prefixes.
    pub fn new(ring: Keyring) -> Self {
        Self { ring, namespaces: Vec::new(), prefixes: Vec::new() }
    }

    /// Marks a namespace (`app:v{N}:entity`, see [`Key::namespace`]) sensitive.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespaces.push(namespace.into());
        self
    }

    /// Marks every key starting with `prefix` sensitive.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefixes.push(prefix.into());
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.namespaces.is_empty() && self.prefixes.is_empty() {
            return Err(Error::config("encryption configured for no namespace or prefix"));
        }
        if self.prefixes.iter().any(String::is_empty) {
            return Err(Error::config("an empty encryption prefix would match every key: use a namespace list"));
        }
        Ok(())
    }

    /// Whether values under `key` must be encrypted.
    pub(crate) fn sensitive(&self, key: &Key) -> bool {
        self.namespaces.iter().any(|n| n == key.namespace())
            || self.prefixes.iter().any(|p| key.as_str().starts_with(p))
    }

    /// `key id length, key id, nonce, ciphertext and tag` for the envelope payload.
    pub(crate) fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
        let key = self.ring.keys.get(self.ring.primary).ok_or_else(|| Error::config("keyring holds no key"))?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill(&mut nonce);
        let sealed = key
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad })
            .map_err(|_| Error::new(ErrorKind::Serialization, "encryption failed"))?;
        let mut out = Vec::with_capacity(1 + key.id.len() + NONCE_LEN + sealed.len());
        // Ids are at most MAX_KEY_ID_LEN bytes, checked at parse time.
        out.push(key.id.len() as u8);
        out.extend_from_slice(key.id.as_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// The plaintext of a [`seal`](Self::seal)ed payload, if it authenticates with `aad`.
    pub(crate) fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        let (&id_len, rest) = sealed.split_first().ok_or_else(|| Error::decrypt("empty encrypted payload"))?;
        let id_len = usize::from(id_len);
        if rest.len() < id_len + NONCE_LEN + TAG_LEN {
            return Err(Error::decrypt("encrypted payload too short"));
        }
        let (id, rest) = rest.split_at(id_len);
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let key = self.ring.keys.iter().find(|k| k.id.as_bytes() == id).ok_or_else(|| {
            Error::decrypt(format!("value encrypted with unknown key id {:?}", String::from_utf8_lossy(id)))
        })?;
        key.cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad })
            .map_err(|_| Error::decrypt(format!("value does not authenticate with key {:?}", &*key.id)))
    }
}

fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= MAX_KEY_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok { Ok(()) } else { Err(Error::config(format!("bad key id {id:?}: 1 to 32 of [A-Za-z0-9_.-]"))) }
}

/// 64 hex digits or standard base64 (padding optional) of 32 bytes.
fn decode_key(text: &str) -> Option<Zeroizing<[u8; KEY_LEN]>> {
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    let t = text.as_bytes();
    if t.len() == 2 * KEY_LEN && t.iter().all(u8::is_ascii_hexdigit) {
        for (i, pair) in t.chunks_exact(2).enumerate() {
            out[i] = (hex_val(pair[0])? << 4) | hex_val(pair[1])?;
        }
        return Some(out);
    }
    let t = t.strip_suffix(b"=").unwrap_or(t);
    // 32 bytes are 43 base64 digits, the last carrying 2 bits of padding.
    if t.len() != 43 {
        return None;
    }
    let mut acc: u32 = 0;
    let mut bits = 0;
    let mut n = 0;
    for &c in t {
        acc = (acc << 6) | u32::from(b64_val(c)?);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            *out.get_mut(n)? = (acc >> bits) as u8;
            n += 1;
            acc &= (1 << bits) - 1;
        }
    }
    (n == KEY_LEN && acc == 0).then_some(out)
}

fn hex_val(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

fn b64_val(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn hex_and_base64_give_the_same_key() {
        let hex = decode_key(HEX).expect("hex");
        let b64 = decode_key(B64).expect("base64");
        assert_eq!(*hex, *b64);
        assert_eq!(hex[31], 0x1f);
        assert!(decode_key(&B64[..40]).is_none() && decode_key(&HEX[..62]).is_none());
    }

    #[test]
    fn bad_keyrings_are_config_errors_that_do_not_echo_the_key() {
        for text in ["", "# only a comment", "nokey", "a:00", &format!("a b:{HEX}"), &format!("a:{HEX}\na:{B64}")] {
            let err = Keyring::parse(text).expect_err(text);
            assert!(!err.to_string().contains("0102030405"), "{err}");
        }
        let ring = Keyring::parse(&format!("one:{HEX}, two:{B64}")).expect("two keys");
        assert_eq!(ring.primary(), "two");
        assert_eq!(ring.clone().with_primary("one").expect("known").primary(), "one");
        assert!(ring.clone().with_primary("three").is_err());
        let debug = format!("{ring:?}");
        assert!(!debug.contains(HEX) && !debug.contains("AAECAw"), "{debug}");
    }

    #[test]
    fn seal_open_roundtrip_and_failures() -> Result<()> {
        let enc = Encryption::new(Keyring::parse(&format!("k1:{HEX}"))?).namespace("a:v1:b");
        let sealed = enc.seal(b"aad", b"secret")?;
        assert_eq!(enc.open(b"aad", &sealed)?, b"secret");
        assert!(enc.open(b"other", &sealed).is_err());
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 1;
            assert!(enc.open(b"aad", &t).is_err(), "flip at {i}");
            assert!(enc.open(b"aad", &sealed[..i]).is_err(), "cut at {i}");
        }
        Ok(())
    }
}
