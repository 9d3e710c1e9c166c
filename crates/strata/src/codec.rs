//! The value envelope: how a typed value becomes the bytes stored in Redis, and back.
//!
//! ```text
//! offset  size  field
//! 0       1     magic 0xD7
//! 1       1     envelope version (2; version 1 is still read)
//! 2       1     flags: bits 0-1 format (0 MessagePack, 1 JSON), bit 2 LZ4, bit 3 negative entry,
//!                     bit 4 encrypted
//! 3       1     reserved, 0
//! 4       8     logical expiry, Unix milliseconds, little endian
//! 12      4     load time of the value in microseconds (for early refresh), little endian
//! 16      4     CRC-32 of bytes 0..16 followed by every byte from offset 20 on
//! -- version 2 only --
//! 20      8     created at, the writer's Unix milliseconds (informational)
//! 28      8     generation of the key's namespace when the value was produced (0 unknown)
//! 36      1     tag count, at most MAX_TAGS
//! 37      ..    per tag: app length (1 byte), app, name length (1 byte), name, generation (8)
//! -- both --
//! ..      ..    payload: serialized value, LZ4 block with its length prepended when bit 2 is set
//! -- encrypted (bit 4, version 2 only): the payload above is sealed as --
//! ..      1     key id length
//! ..      ..    key id
//! ..      12    nonce
//! ..      ..    AES-256-GCM ciphertext of the payload, then its 16-byte tag
//! ```
//!
//! The authenticated data of an encrypted payload is the Redis key name (its length first, 4
//! bytes little endian), bytes 0..16 of the header and the version-2 section: see [`crate::crypt`].
//!
//! Decoding never trusts the bytes: a short buffer, a wrong magic, an unknown version or flag, a
//! checksum mismatch, a malformed tag section, a declared decompressed size above the limit, or a
//! payload that does not deserialize into the requested type are all
//! [`ErrorKind::Corrupt`](crate::ErrorKind) (or a type mismatch), which the cache turns into a
//! miss. A version-1 envelope has no generations: it decodes as "unknown", which is older than
//! any stamp, so the cache treats it as invalidated (a miss, reloaded as version 2). Safe, at the
//! price of one miss per key after the upgrade. Releases before version 2 read it as corrupt and
//! remove it: roll the upgrade out with a schema version bump ([`KeySchema::bumped`]) so that old
//! and new instances use disjoint keys instead of deleting each other's values.
//!
//! [`KeySchema::bumped`]: crate::KeySchema::bumped

use serde::Serialize;
use serde::de::DeserializeOwned;

use std::sync::Arc;

use crate::crypt::Encryption;
use crate::error::{Error, ErrorKind, Result};
use crate::key::Key;
use crate::tags::{MAX_TAGS, Marks, Tag};

const MAGIC: u8 = 0xD7;
const VERSION: u8 = 2;
const VERSION_1: u8 = 1;
const HEADER_LEN: usize = 20;
const FLAG_FORMAT_MASK: u8 = 0b0011;
const FLAG_LZ4: u8 = 0b0100;
const FLAG_NEGATIVE: u8 = 0b1000;
const FLAG_ENCRYPTED: u8 = 0b1_0000;
const KNOWN_FLAGS: u8 = FLAG_FORMAT_MASK | FLAG_LZ4 | FLAG_NEGATIVE | FLAG_ENCRYPTED;

/// Serialization format of cached values. Reads honour the format recorded in each envelope, so
/// changing this setting does not invalidate values already cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Format {
    /// MessagePack with named fields (compact, tolerant of added optional fields). The default.
    #[default]
    MessagePack,
    /// JSON (readable with `redis-cli`, larger and slower).
    Json,
}

impl Format {
    fn bits(self) -> u8 {
        match self {
            Format::MessagePack => 0,
            Format::Json => 1,
        }
    }
}

/// Encoding settings shared by every write.
#[derive(Debug, Clone)]
pub(crate) struct Codec {
    pub(crate) format: Format,
    /// Serialized payloads at least this large are LZ4-compressed.
    pub(crate) compress_above: usize,
    /// Largest serialized (uncompressed) value accepted on write and on read.
    pub(crate) max_value_bytes: usize,
    /// Keys whose values are encrypted, and the keyring.
    pub(crate) encryption: Option<Arc<Encryption>>,
}

/// Metadata carried by every envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) expires_at_ms: u64,
    pub(crate) load_us: u32,
}

/// Where an envelope keeps its [`Meta`]: bytes 4..16, as [`Meta::to_bytes`] lays them out.
pub(crate) const META_RANGE: std::ops::Range<usize> = 4..16;

impl Meta {
    /// The envelope's bytes at [`META_RANGE`] (logical expiry, then load time, little endian): a
    /// script can tell with `GETRANGE` whether a key still holds the value a reader saw.
    pub(crate) fn to_bytes(self) -> [u8; 12] {
        let mut out = [0; 12];
        out[..8].copy_from_slice(&self.expires_at_ms.to_le_bytes());
        out[8..].copy_from_slice(&self.load_us.to_le_bytes());
        out
    }
}

/// Deepest nesting the MessagePack decoder follows (JSON's own limit is 128 too): bounds the
/// stack a crafted value with a valid checksum could make the decoder use.
const MAX_DEPTH: usize = 128;

/// An encoded envelope and the size of the value before compression.
#[derive(Debug)]
pub(crate) struct Encoded {
    pub(crate) bytes: Vec<u8>,
    pub(crate) raw_len: usize,
    /// What the envelope records about namespace and tag generations (L1 keeps it too).
    pub(crate) marks: Arc<Marks>,
}

/// What a decoded envelope holds.
#[derive(Debug)]
pub(crate) struct Decoded<T> {
    /// The value; `None` for a cached "not found".
    pub(crate) value: Option<T>,
    pub(crate) meta: Meta,
    /// Serialized size before compression: what the decoded value costs in memory, roughly.
    pub(crate) raw_len: usize,
    pub(crate) marks: Arc<Marks>,
}

impl Codec {
    /// Encodes `Some(value)` or a negative entry (`None`) with the generations it was produced under.
    pub(crate) fn encode_marked<T: Serialize + ?Sized>(
        &self,
        key: &Key,
        value: Option<&T>,
        meta: Meta,
        marks: &Arc<Marks>,
    ) -> Result<Encoded> {
        let (mut flags, payload) = match value {
            None => (FLAG_NEGATIVE, Vec::new()),
            Some(v) => (self.format.bits(), self.serialize(v)?),
        };
        if payload.len() > self.max_value_bytes {
            return Err(Error::new(
                ErrorKind::ValueTooLarge,
                format!("value is {} bytes serialized; the maximum is {} bytes", payload.len(), self.max_value_bytes),
            ));
        }
        let raw_len = payload.len();
        let payload = if !payload.is_empty() && payload.len() >= self.compress_above {
            let compressed = lz4_flex::compress_prepend_size(&payload);
            // Incompressible data stays raw: compression must never make a value bigger.
            if compressed.len() < payload.len() {
                flags |= FLAG_LZ4;
                compressed
            } else {
                payload
            }
        } else {
            payload
        };
        let section = marks_section(marks)?;
        let sealer = self.encryption.as_deref().filter(|e| e.sensitive(key));
        if sealer.is_some() {
            flags |= FLAG_ENCRYPTED;
        }
        let mut out = Vec::with_capacity(HEADER_LEN + section.len() + payload.len());
        out.extend_from_slice(&[MAGIC, VERSION, flags, 0]);
        out.extend_from_slice(&meta.to_bytes());
        let payload = match sealer {
            Some(enc) => enc.seal(&aad(key, &out, &section), &payload)?,
            None => payload,
        };
        let mut crc = crc32fast::Hasher::new();
        crc.update(&out[..16]);
        crc.update(&section);
        crc.update(&payload);
        out.extend_from_slice(&crc.finalize().to_le_bytes());
        out.extend_from_slice(&section);
        out.extend_from_slice(&payload);
        Ok(Encoded { bytes: out, raw_len, marks: marks.clone() })
    }

    /// [`encode_marked`](Self::encode_marked) with unknown generations.
    #[cfg(test)]
    pub(crate) fn encode<T: Serialize + ?Sized>(&self, value: Option<&T>, meta: Meta) -> Result<Encoded> {
        self.encode_marked(&test_key(), value, meta, &Marks::unknown())
    }

    /// Decodes bytes read from Redis under `key` into `T` (or a negative entry).
    pub(crate) fn decode<T: DeserializeOwned>(&self, key: &Key, bytes: &[u8]) -> Result<Decoded<T>> {
        if bytes.len() < HEADER_LEN {
            return Err(Error::corrupt(format!("{} bytes is shorter than the envelope header", bytes.len())));
        }
        if bytes[0] != MAGIC {
            return Err(Error::corrupt("not a strata envelope (bad magic byte)"));
        }
        if bytes[1] != VERSION && bytes[1] != VERSION_1 {
            return Err(Error::corrupt(format!("unsupported envelope version {}", bytes[1])));
        }
        let mut flags = bytes[2];
        if flags & !KNOWN_FLAGS != 0 || bytes[3] != 0 {
            return Err(Error::corrupt("unknown envelope flags"));
        }
        let stored_crc = u32::from_le_bytes(le_array(&bytes[16..20]));
        let mut crc = crc32fast::Hasher::new();
        crc.update(&bytes[..16]);
        crc.update(&bytes[HEADER_LEN..]);
        if crc.finalize() != stored_crc {
            return Err(Error::corrupt("envelope checksum mismatch"));
        }
        let at = &bytes[META_RANGE];
        let meta = Meta {
            expires_at_ms: u64::from_le_bytes(le_array(&at[..8])),
            load_us: u32::from_le_bytes(le_array(&at[8..])),
        };
        let (marks, payload) = match bytes[1] {
            VERSION_1 => (Marks::unknown(), &bytes[HEADER_LEN..]),
            _ => read_marks(&bytes[HEADER_LEN..])?,
        };
        let opened;
        let payload = match (self.encryption.as_deref(), flags & FLAG_ENCRYPTED != 0) {
            (_, true) if bytes[1] == VERSION_1 => return Err(Error::corrupt("encrypted version-1 envelope")),
            (Some(enc), true) => {
                let section = &bytes[HEADER_LEN..bytes.len() - payload.len()];
                opened = enc.open(&aad(key, &bytes[..16], section), payload)?;
                flags &= !FLAG_ENCRYPTED;
                &opened[..]
            }
            (None, true) => return Err(Error::decrypt("encrypted value, and this cache has no keyring")),
            // Plaintext where ciphertext is required could have been copied from any other key.
            (Some(enc), false) if enc.sensitive(key) => {
                return Err(Error::decrypt("unencrypted value in a sensitive namespace"));
            }
            (_, false) => payload,
        };
        if flags & FLAG_NEGATIVE != 0 {
            return if payload.is_empty() && flags == FLAG_NEGATIVE {
                Ok(Decoded { value: None, meta, raw_len: 0, marks })
            } else {
                Err(Error::corrupt("negative entry with a payload"))
            };
        }
        let decompressed;
        let raw = if flags & FLAG_LZ4 != 0 {
            let (size, _) = lz4_flex::block::uncompressed_size(payload)
                .map_err(|e| Error::corrupt(format!("bad lz4 header: {e}")))?;
            if size > self.max_value_bytes {
                return Err(Error::corrupt(format!("declared size {size} exceeds the value limit")));
            }
            decompressed = lz4_flex::decompress_size_prepended(payload)
                .map_err(|e| Error::corrupt(format!("lz4 decompression failed: {e}")))?;
            &decompressed[..]
        } else {
            payload
        };
        // The envelope is intact (checksum verified), so a payload that does not deserialize
        // was written with another type: a type mismatch, not corruption.
        let value = match flags & FLAG_FORMAT_MASK {
            0 => {
                let mut de = rmp_serde::Deserializer::from_read_ref(raw);
                de.set_max_depth(MAX_DEPTH);
                T::deserialize(&mut de).map_err(|e| Error::type_mismatch(format!("messagepack payload: {e}")))?
            }
            1 => serde_json::from_slice(raw).map_err(|e| Error::type_mismatch(format!("json payload: {e}")))?,
            other => return Err(Error::corrupt(format!("unknown format {other}"))),
        };
        Ok(Decoded { value: Some(value), meta, raw_len: raw.len(), marks })
    }

    fn serialize<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>> {
        let out = match self.format {
            Format::MessagePack => rmp_serde::to_vec_named(value).map_err(|e| e.to_string()),
            Format::Json => serde_json::to_vec(value).map_err(|e| e.to_string()),
        };
        out.map_err(|e| Error::new(ErrorKind::Serialization, format!("cannot serialize value: {e}")))
    }
}

/// Authenticated data of an encrypted payload: the key name, bytes 0..16 of the header, and
/// the version-2 section.
fn aad(key: &Key, header: &[u8], section: &[u8]) -> Vec<u8> {
    let name = key.as_str().as_bytes();
    let mut out = Vec::with_capacity(4 + name.len() + header.len() + section.len());
    // Key names are at most MAX_KEY_LEN bytes.
    out.extend_from_slice(&(name.len() as u32).to_le_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(header);
    out.extend_from_slice(section);
    out
}

#[cfg(test)]
fn test_key() -> Key {
    Key::parse("t:v1:e:1").expect("a valid literal key")
}

/// The version-2 section between the header and the payload.
fn marks_section(marks: &Marks) -> Result<Vec<u8>> {
    if marks.tags.len() > MAX_TAGS {
        return Err(Error::invalid_key(format!("{} tags; the maximum is {MAX_TAGS}", marks.tags.len())));
    }
    let mut out = Vec::with_capacity(17 + marks.tags.len() * 40);
    out.extend_from_slice(&marks.created_at_ms.to_le_bytes());
    out.extend_from_slice(&marks.ns_gen.to_le_bytes());
    out.push(marks.tags.len() as u8);
    for (tag, generation) in &marks.tags {
        // Tag validation bounds both lengths to 64 bytes, so each fits its length byte.
        for part in [tag.app(), tag.name()] {
            out.push(u8::try_from(part.len()).map_err(|_| Error::invalid_key("tag segment too long"))?);
            out.extend_from_slice(part.as_bytes());
        }
        out.extend_from_slice(&generation.to_le_bytes());
    }
    Ok(out)
}

/// Parses the version-2 section; returns the marks and the payload after them.
fn read_marks(bytes: &[u8]) -> Result<(Arc<Marks>, &[u8])> {
    let mut rest = bytes;
    let created_at_ms = u64::from_le_bytes(le_array(take(&mut rest, 8)?));
    let ns_gen = u64::from_le_bytes(le_array(take(&mut rest, 8)?));
    let count = usize::from(take(&mut rest, 1)?[0]);
    if count > MAX_TAGS {
        return Err(Error::corrupt(format!("{count} tags in an envelope; the maximum is {MAX_TAGS}")));
    }
    let mut tags = Vec::with_capacity(count);
    for _ in 0..count {
        let app = take_str(&mut rest)?;
        let name = take_str(&mut rest)?;
        let tag = Tag::new(app, name).map_err(|e| Error::corrupt(format!("bad tag in envelope: {e}")))?;
        tags.push((tag, u64::from_le_bytes(le_array(take(&mut rest, 8)?))));
    }
    Ok((Arc::new(Marks::new(created_at_ms, ns_gen, tags)), rest))
}

/// A length-prefixed UTF-8 string.
fn take_str<'a>(rest: &mut &'a [u8]) -> Result<&'a str> {
    let len = usize::from(take(rest, 1)?[0]);
    std::str::from_utf8(take(rest, len)?).map_err(|_| Error::corrupt("tag is not UTF-8"))
}

/// Splits `n` bytes off the front of `rest`, or fails on a short buffer.
fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
    if rest.len() < n {
        return Err(Error::corrupt("envelope ends inside its tag section"));
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

fn le_array<const N: usize>(slice: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(slice);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Profile {
        id: u64,
        name: String,
        tags: Vec<String>,
    }

    fn codec(format: Format) -> Codec {
        Codec { format, compress_above: 256, max_value_bytes: 1 << 20, encryption: None }
    }

    fn profile(tags: usize) -> Profile {
        Profile { id: 7, name: "Ada".into(), tags: (0..tags).map(|i| format!("tag-{i}")).collect() }
    }

    const META: Meta = Meta { expires_at_ms: 1_700_000_000_000, load_us: 1234 };

    #[test]
    fn the_meta_sits_at_its_documented_range() -> Result<()> {
        let codec =
            Codec { format: Format::MessagePack, compress_above: 1024, max_value_bytes: 1 << 20, encryption: None };
        let key = Key::parse("app:v1:user:1")?;
        let encoded = codec.encode_marked(&key, Some(&"v".to_owned()), META, &Marks::unknown())?;
        assert_eq!(encoded.bytes[META_RANGE], META.to_bytes());
        Ok(())
    }

    fn roundtrip(c: &Codec, p: &Profile) -> Result<(Profile, Meta)> {
        let d = c.decode::<Profile>(&test_key(), &c.encode(Some(p), META)?.bytes)?;
        Ok((d.value.ok_or_else(|| Error::corrupt("unexpected negative"))?, d.meta))
    }

    fn with_checksum(mut bytes: Vec<u8>) -> Vec<u8> {
        if bytes.len() >= HEADER_LEN {
            let mut crc = crc32fast::Hasher::new();
            crc.update(&bytes[..16]);
            crc.update(&bytes[HEADER_LEN..]);
            let sum = crc.finalize().to_le_bytes();
            bytes[16..20].copy_from_slice(&sum);
        }
        bytes
    }

    /// Where the payload starts in a version-2 envelope written by these tests.
    fn payload_offset(bytes: &[u8]) -> usize {
        let (_, payload) = read_marks(&bytes[HEADER_LEN..]).expect("a valid tag section");
        bytes.len() - payload.len()
    }

    fn marks() -> Result<Arc<Marks>> {
        Ok(Arc::new(Marks::new(
            1_700_000_000_123,
            1_700_000_000_000,
            vec![(Tag::new("shop", "tenant-7")?, 5), (Tag::new("shop", "sale")?, u64::MAX)],
        )))
    }

    #[test]
    fn version_2_roundtrips_marks_for_values_and_negative_entries() -> Result<()> {
        for format in [Format::MessagePack, Format::Json] {
            let c = codec(format);
            for p in [profile(1), profile(500)] {
                let e = c.encode_marked(&test_key(), Some(&p), META, &marks()?)?;
                assert_eq!(e.bytes[1], 2);
                let d = c.decode::<Profile>(&test_key(), &e.bytes)?;
                assert_eq!((d.value, d.meta, d.marks), (Some(p), META, marks()?));
            }
            let d = c.decode::<Profile>(
                &test_key(),
                &c.encode_marked::<Profile>(&test_key(), None, META, &marks()?)?.bytes,
            )?;
            assert!(d.value.is_none() && d.marks == marks()?);
        }
        Ok(())
    }

    #[test]
    fn version_1_envelopes_still_decode_with_unknown_marks() -> Result<()> {
        // A version-1 envelope as the previous release wrote it: header, then the payload.
        let payload = rmp_serde::to_vec_named(&profile(2)).map_err(|e| Error::corrupt(e.to_string()))?;
        let mut v1 = vec![MAGIC, 1, 0, 0];
        v1.extend_from_slice(&META.expires_at_ms.to_le_bytes());
        v1.extend_from_slice(&META.load_us.to_le_bytes());
        v1.extend_from_slice(&[0; 4]);
        v1.extend_from_slice(&payload);
        let d = codec(Format::MessagePack).decode::<Profile>(&test_key(), &with_checksum(v1))?;
        assert_eq!((d.value, d.meta), (Some(profile(2)), META));
        assert_eq!(d.marks.ns_gen, 0);
        assert!(d.marks.tags.is_empty() && d.marks.created_at_ms == 0);
        let negative = with_checksum(vec![MAGIC, 1, FLAG_NEGATIVE, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(codec(Format::MessagePack).decode::<Profile>(&test_key(), &negative)?.value.is_none());
        Ok(())
    }

    #[test]
    fn hostile_tag_sections_are_corrupt_never_a_panic() -> Result<()> {
        let c = codec(Format::MessagePack);
        let good = c.encode_marked(&test_key(), Some(&profile(1)), META, &marks()?)?.bytes;
        let tags_at = HEADER_LEN + 16;
        let mut cases = Vec::new();
        // More tags than allowed, a tag count past the end, a length past the end.
        for (at, byte) in [(tags_at, (MAX_TAGS + 1) as u8), (tags_at, 15), (tags_at + 1, 250)] {
            let mut b = good.clone();
            b[at] = byte;
            cases.push(b);
        }
        // Invalid UTF-8 and a forbidden character in the app segment ("shop" → "sh\xffp", "sh*p").
        for byte in [0xFF, b'*'] {
            let mut b = good.clone();
            b[tags_at + 4] = byte;
            cases.push(b);
        }
        // Cut inside the tag section, and a zero-length app.
        cases.push(good[..tags_at + 6].to_vec());
        let mut b = good.clone();
        b[tags_at + 1] = 0;
        cases.push(b);
        for bytes in cases {
            let err = c.decode::<Profile>(&test_key(), &with_checksum(bytes)).expect_err("hostile tag section");
            assert!(err.is_corrupt() || err.is_type_mismatch(), "{err}");
        }
        // Every truncation and flip, with the checksum fixed up, is an outcome, not a panic.
        for i in 0..good.len() {
            let _ = c.decode::<Profile>(&test_key(), &with_checksum(good[..i].to_vec()));
            let mut flipped = good.clone();
            flipped[i] ^= 0xA5;
            let _ = c.decode::<Profile>(&test_key(), &with_checksum(flipped));
        }
        Ok(())
    }

    #[test]
    fn too_many_tags_are_refused_on_write() -> Result<()> {
        let tags = (0..=MAX_TAGS).map(|i| Ok((Tag::new("shop", &format!("t{i}"))?, 1))).collect::<Result<Vec<_>>>()?;
        let marks = Arc::new(Marks { tags, ..Marks::default() });
        assert!(codec(Format::MessagePack).encode_marked(&test_key(), Some(&profile(1)), META, &marks).is_err());
        Ok(())
    }

    #[test]
    fn roundtrips_both_formats_with_and_without_compression() -> Result<()> {
        for format in [Format::MessagePack, Format::Json] {
            let c = codec(format);
            for p in [profile(1), profile(500)] {
                assert_eq!(roundtrip(&c, &p)?, (p.clone(), META));
            }
        }
        Ok(())
    }

    #[test]
    fn compresses_large_values_only() -> Result<()> {
        let c = codec(Format::MessagePack);
        let small = c.encode(Some(&profile(1)), META)?.bytes;
        let large = c.encode(Some(&profile(2000)), META)?;
        assert_eq!(
            large.raw_len,
            rmp_serde::to_vec_named(&profile(2000)).map_err(|e| Error::corrupt(e.to_string()))?.len()
        );
        let large = large.bytes;
        assert_eq!(small[2] & FLAG_LZ4, 0);
        assert_ne!(large[2] & FLAG_LZ4, 0);
        assert!(
            large.len() < rmp_serde::to_vec_named(&profile(2000)).map_err(|e| Error::corrupt(e.to_string()))?.len()
        );
        Ok(())
    }

    #[test]
    fn reads_values_written_in_the_other_format() -> Result<()> {
        let bytes = codec(Format::Json).encode(Some(&profile(3)), META)?.bytes;
        assert_eq!(codec(Format::MessagePack).decode::<Profile>(&test_key(), &bytes)?.value, Some(profile(3)));
        Ok(())
    }

    #[test]
    fn negative_entries_roundtrip() -> Result<()> {
        let c = codec(Format::MessagePack);
        let bytes = c.encode::<Profile>(None, META)?.bytes;
        let d = c.decode::<Profile>(&test_key(), &bytes)?;
        assert!(d.value.is_none() && d.meta == META);
        Ok(())
    }

    #[test]
    fn oversized_values_are_rejected() {
        let c = Codec { max_value_bytes: 100, ..codec(Format::MessagePack) };
        let err = c.encode(Some(&profile(100)), META).expect_err("too large");
        assert!(err.is_value_too_large(), "{err}");
    }

    #[test]
    fn every_corruption_is_an_error_never_a_panic() -> Result<()> {
        let c = codec(Format::MessagePack);
        for good in [c.encode(Some(&profile(300)), META)?.bytes, c.encode(Some(&profile(2)), META)?.bytes] {
            let mut cases: Vec<Vec<u8>> = vec![vec![], b"hello".to_vec(), b"{\"id\":1}".to_vec(), vec![0xD7; 64]];
            for i in 0..good.len() {
                for mask in [0x01, 0x5A, 0xFF] {
                    let mut flipped = good.clone();
                    flipped[i] ^= mask;
                    cases.push(flipped.clone());
                    // With the checksum fixed up, the mutation reaches LZ4 and MessagePack.
                    cases.push(with_checksum(flipped));
                }
                cases.push(good[..i].to_vec());
                cases.push(with_checksum(good[..i].to_vec()));
            }
            for bytes in cases {
                // Any outcome but a panic is acceptable; an unchanged checksum must catch flips.
                let _ = c.decode::<Profile>(&test_key(), &bytes);
            }
            for i in 0..good.len() {
                let mut flipped = good.clone();
                flipped[i] ^= 0x01;
                assert!(c.decode::<Profile>(&test_key(), &flipped).is_err(), "a flipped bit at {i} must be detected");
            }
        }
        Ok(())
    }

    #[test]
    fn decompression_bombs_are_refused() -> Result<()> {
        let c = codec(Format::MessagePack);
        let mut bytes = c.encode(Some(&profile(2000)), META)?.bytes;
        assert_ne!(bytes[2] & FLAG_LZ4, 0);
        let at = payload_offset(&bytes);
        bytes[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let bytes = with_checksum(bytes);
        let err = c.decode::<Profile>(&test_key(), &bytes).expect_err("bomb");
        assert!(err.is_corrupt(), "{err}");
        Ok(())
    }

    #[test]
    fn a_value_of_another_type_is_a_type_mismatch() -> Result<()> {
        let c = codec(Format::MessagePack);
        let bytes = c.encode(Some(&"just a string"), META)?.bytes;
        let err = c.decode::<Profile>(&test_key(), &bytes).expect_err("type mismatch");
        assert!(err.is_type_mismatch() && !err.is_corrupt(), "{err}");
        Ok(())
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() -> Result<()> {
        // A realistic recursive type (trees, JSON-like values). Every level is a MessagePack
        // array, which the decoder's depth limit counts.
        #[derive(Debug, Serialize, Deserialize)]
        struct Nest(Vec<Nest>);
        // 100,000 nested one-element arrays: a valid envelope around a hostile payload.
        let mut payload = vec![0x91u8; 100_000];
        payload.push(0x90);
        let c = codec(Format::MessagePack);
        let mut bytes = c.encode(Some(&Nest(vec![])), META)?.bytes;
        bytes.truncate(payload_offset(&bytes));
        bytes.extend_from_slice(&payload);
        let err = c.decode::<Nest>(&test_key(), &with_checksum(bytes)).expect_err("too deep");
        assert!(err.is_type_mismatch() || err.is_corrupt(), "{err}");
        Ok(())
    }
}
