//! The value envelope: how a typed value becomes the bytes stored in Redis, and back.
//!
//! ```text
//! offset  size  field
//! 0       1     magic 0xD7
//! 1       1     envelope version (1)
//! 2       1     flags: bits 0-1 format (0 MessagePack, 1 JSON), bit 2 LZ4, bit 3 negative entry
//! 3       1     reserved, 0
//! 4       8     logical expiry, Unix milliseconds, little endian
//! 12      4     load time of the value in microseconds (for early refresh), little endian
//! 16      4     CRC-32 of bytes 0..16 followed by the payload
//! 20      ..    payload: serialized value, LZ4 block with its length prepended when bit 2 is set
//! ```
//!
//! Decoding never trusts the bytes: a short buffer, a wrong magic, an unknown version or flag, a
//! checksum mismatch, a declared decompressed size above the limit, or a payload that does not
//! deserialize into the requested type are all [`ErrorKind::Corrupt`](crate::ErrorKind), which
//! the cache turns into a miss (and removes the key).

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind, Result};

const MAGIC: u8 = 0xD7;
const VERSION: u8 = 1;
const HEADER_LEN: usize = 20;
const FLAG_FORMAT_MASK: u8 = 0b0011;
const FLAG_LZ4: u8 = 0b0100;
const FLAG_NEGATIVE: u8 = 0b1000;
const KNOWN_FLAGS: u8 = FLAG_FORMAT_MASK | FLAG_LZ4 | FLAG_NEGATIVE;

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
}

/// Metadata carried by every envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) expires_at_ms: u64,
    pub(crate) load_us: u32,
}

/// Deepest nesting the MessagePack decoder follows (JSON's own limit is 128 too): bounds the
/// stack a crafted value with a valid checksum could make the decoder use.
const MAX_DEPTH: usize = 128;

/// An encoded envelope and the size of the value before compression.
#[derive(Debug)]
pub(crate) struct Encoded {
    pub(crate) bytes: Vec<u8>,
    pub(crate) raw_len: usize,
}

/// What a decoded envelope holds.
#[derive(Debug)]
pub(crate) struct Decoded<T> {
    /// The value; `None` for a cached "not found".
    pub(crate) value: Option<T>,
    pub(crate) meta: Meta,
    /// Serialized size before compression: what the decoded value costs in memory, roughly.
    pub(crate) raw_len: usize,
}

impl Codec {
    /// Encodes `Some(value)` or a negative entry (`None`).
    pub(crate) fn encode<T: Serialize + ?Sized>(&self, value: Option<&T>, meta: Meta) -> Result<Encoded> {
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
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.extend_from_slice(&[MAGIC, VERSION, flags, 0]);
        out.extend_from_slice(&meta.expires_at_ms.to_le_bytes());
        out.extend_from_slice(&meta.load_us.to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&out[..16]);
        crc.update(&payload);
        out.extend_from_slice(&crc.finalize().to_le_bytes());
        out.extend_from_slice(&payload);
        Ok(Encoded { bytes: out, raw_len })
    }

    /// Decodes bytes read from Redis into `T` (or a negative entry).
    pub(crate) fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<Decoded<T>> {
        if bytes.len() < HEADER_LEN {
            return Err(Error::corrupt(format!("{} bytes is shorter than the envelope header", bytes.len())));
        }
        if bytes[0] != MAGIC {
            return Err(Error::corrupt("not a strata envelope (bad magic byte)"));
        }
        if bytes[1] != VERSION {
            return Err(Error::corrupt(format!("unsupported envelope version {}", bytes[1])));
        }
        let flags = bytes[2];
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
        let meta = Meta {
            expires_at_ms: u64::from_le_bytes(le_array(&bytes[4..12])),
            load_us: u32::from_le_bytes(le_array(&bytes[12..16])),
        };
        let payload = &bytes[HEADER_LEN..];
        if flags & FLAG_NEGATIVE != 0 {
            return if payload.is_empty() && flags == FLAG_NEGATIVE {
                Ok(Decoded { value: None, meta, raw_len: 0 })
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
        Ok(Decoded { value: Some(value), meta, raw_len: raw.len() })
    }

    fn serialize<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>> {
        let out = match self.format {
            Format::MessagePack => rmp_serde::to_vec_named(value).map_err(|e| e.to_string()),
            Format::Json => serde_json::to_vec(value).map_err(|e| e.to_string()),
        };
        out.map_err(|e| Error::new(ErrorKind::Serialization, format!("cannot serialize value: {e}")))
    }
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
        Codec { format, compress_above: 256, max_value_bytes: 1 << 20 }
    }

    fn profile(tags: usize) -> Profile {
        Profile { id: 7, name: "Ada".into(), tags: (0..tags).map(|i| format!("tag-{i}")).collect() }
    }

    const META: Meta = Meta { expires_at_ms: 1_700_000_000_000, load_us: 1234 };

    fn roundtrip(c: &Codec, p: &Profile) -> Result<(Profile, Meta)> {
        let d = c.decode::<Profile>(&c.encode(Some(p), META)?.bytes)?;
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
        assert_eq!(codec(Format::MessagePack).decode::<Profile>(&bytes)?.value, Some(profile(3)));
        Ok(())
    }

    #[test]
    fn negative_entries_roundtrip() -> Result<()> {
        let c = codec(Format::MessagePack);
        let bytes = c.encode::<Profile>(None, META)?.bytes;
        let d = c.decode::<Profile>(&bytes)?;
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
                let _ = c.decode::<Profile>(&bytes);
            }
            for i in 0..good.len() {
                let mut flipped = good.clone();
                flipped[i] ^= 0x01;
                assert!(c.decode::<Profile>(&flipped).is_err(), "a flipped bit at {i} must be detected");
            }
        }
        Ok(())
    }

    #[test]
    fn decompression_bombs_are_refused() -> Result<()> {
        let c = codec(Format::MessagePack);
        let mut bytes = c.encode(Some(&profile(2000)), META)?.bytes;
        assert_ne!(bytes[2] & FLAG_LZ4, 0);
        bytes[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let bytes = with_checksum(bytes);
        let err = c.decode::<Profile>(&bytes).expect_err("bomb");
        assert!(err.is_corrupt(), "{err}");
        Ok(())
    }

    #[test]
    fn a_value_of_another_type_is_a_type_mismatch() -> Result<()> {
        let c = codec(Format::MessagePack);
        let bytes = c.encode(Some(&"just a string"), META)?.bytes;
        let err = c.decode::<Profile>(&bytes).expect_err("type mismatch");
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
        bytes.truncate(HEADER_LEN);
        bytes.extend_from_slice(&payload);
        let err = c.decode::<Nest>(&with_checksum(bytes)).expect_err("too deep");
        assert!(err.is_type_mismatch() || err.is_corrupt(), "{err}");
        Ok(())
    }
}
