//! Property-based fuzzing of the envelope decoder and the decryption path (tests only).
//!
//! Each property runs 2,000 cases by default (a few seconds in a debug build); set
//! `PROPTEST_CASES` for a longer run: `PROPTEST_CASES=200000 cargo test -p strata-cache --lib fuzz_`.
//! The properties: no input panics; arbitrary bytes never decode under a sensitive key; a
//! mutated envelope whose checksum was not fixed up never decodes; and a mutated encrypted
//! envelope, checksum fixed up or not, never decodes to anything but the value encoded.

use std::sync::Arc;

use proptest::prelude::*;
use serde::{Deserialize, Serialize};

use crate::codec::{Codec, Format, Meta};
use crate::crypt::{Encryption, Keyring};
use crate::key::Key;
use crate::tags::{Marks, Tag};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Value {
    id: u64,
    name: String,
    blob: Vec<u8>,
    note: Option<String>,
}

fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 2_000;
    }
    config
}

fn key(sensitive: bool) -> Key {
    Key::parse(if sensitive { "f:v1:secret:1" } else { "f:v1:plain:1" }).expect("a valid literal key")
}

fn codec(format: Format, encrypted: bool) -> Codec {
    let encryption = encrypted.then(|| {
        let ring = Keyring::parse(&format!("old:{}\nnew:{}", "ab".repeat(32), "cd".repeat(32))).expect("test ring");
        Arc::new(Encryption::new(ring).namespace("f:v1:secret"))
    });
    // A low threshold so that many cases go through LZ4 too.
    Codec { format, compress_above: 64, max_value_bytes: 1 << 16, encryption }
}

fn marks(tags: u8) -> Arc<Marks> {
    let tags = (0..tags).map(|i| (Tag::new("f", &format!("t{i}")).expect("valid tag"), u64::from(i))).collect();
    Arc::new(Marks::new(1_700_000_000_000, 42, tags))
}

fn value() -> impl Strategy<Value = Value> {
    (any::<u64>(), ".{0,24}", prop::collection::vec(any::<u8>(), 0..600), proptest::option::of(".{0,8}"))
        .prop_map(|(id, name, blob, note)| Value { id, name, blob, note })
}

fn format() -> impl Strategy<Value = Format> {
    prop_oneof![Just(Format::MessagePack), Just(Format::Json)]
}

/// How a valid envelope is damaged.
#[derive(Debug, Clone)]
enum Mutation {
    /// XOR masks at positions (taken modulo the length).
    Flips(Vec<(usize, u8)>),
    /// Keep only this many bytes (modulo the length).
    Truncate(usize),
    /// Overwrite 4 bytes at a position with a little-endian length-like number.
    Length(usize, u32),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        prop::collection::vec((any::<usize>(), 1u8..=255), 1..4).prop_map(Mutation::Flips),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), prop_oneof![Just(0u32), Just(u32::MAX), any::<u32>(), 0u32..70_000])
            .prop_map(|(at, n)| Mutation::Length(at, n)),
    ]
}

fn apply(good: &[u8], m: &Mutation) -> Vec<u8> {
    let mut out = good.to_vec();
    match m {
        Mutation::Flips(flips) => {
            for &(at, mask) in flips {
                let at = at % out.len();
                out[at] ^= mask;
            }
        }
        Mutation::Truncate(n) => out.truncate(n % out.len()),
        Mutation::Length(at, n) => {
            let at = at % out.len();
            for (i, b) in n.to_le_bytes().into_iter().enumerate() {
                if let Some(slot) = out.get_mut(at + i) {
                    *slot = b;
                }
            }
        }
    }
    out
}

fn with_checksum(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.len() >= 20 {
        let mut crc = crc32fast::Hasher::new();
        crc.update(&bytes[..16]);
        crc.update(&bytes[20..]);
        let sum = crc.finalize().to_le_bytes();
        bytes[16..20].copy_from_slice(&sum);
    }
    bytes
}

const META: Meta = Meta { expires_at_ms: 1_700_000_100_000, load_us: 7 };

proptest! {
    #![proptest_config(config())]

    /// Arbitrary bytes, and arbitrary bytes behind a valid-looking header, never panic; under
    /// a sensitive key they never decode.
    #[test]
    fn fuzz_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2_000), fmt in format(), header in any::<bool>(), flags in any::<u8>()) {
        let mut bytes = bytes;
        if header && bytes.len() >= 20 {
            bytes[..4].copy_from_slice(&[0xD7, 2, flags & 0x1F, 0]);
            bytes = with_checksum(bytes);
        }
        for encrypted in [false, true] {
            let c = codec(fmt, encrypted);
            let _ = c.decode::<Value>(&key(false), &bytes);
            let _ = c.decode::<serde_json::Value>(&key(false), &bytes);
            if encrypted {
                prop_assert!(c.decode::<Value>(&key(true), &bytes).is_err());
            }
        }
    }

    /// Valid envelopes round-trip; damaged ones never panic, are caught by the checksum unless
    /// it was fixed up, and when encrypted never yield another value even with the checksum fixed.
    #[test]
    fn fuzz_mutated_envelopes(v in value(), fmt in format(), tags in 0u8..4, negative in any::<bool>(), sensitive in any::<bool>(), m in mutation(), fix in any::<bool>()) {
        let c = codec(fmt, true);
        let k = key(sensitive);
        let original = if negative { None } else { Some(&v) };
        let good = c.encode_marked(&k, original, META, &marks(tags)).expect("encodes").bytes;
        let back = c.decode::<Value>(&k, &good).expect("a valid envelope decodes");
        prop_assert_eq!(back.value.as_ref(), original);
        let bad = apply(&good, &m);
        let bad = if fix { with_checksum(bad) } else { bad };
        let decoded = c.decode::<Value>(&k, &bad);
        if bad == good {
            prop_assert!(decoded.is_ok());
        } else if !fix && matches!(&m, Mutation::Flips(_)) {
            // CRC-32 catches every burst of up to 32 bits and misses a scattered change with
            // probability 2^-32: a failure here would most likely be a decoder bug.
            prop_assert!(decoded.is_err(), "undetected flips {:?}", m);
        } else if sensitive {
            // Everything but the checksum is authenticated: a decode is the original value.
            if let Ok(d) = decoded {
                prop_assert_eq!(d.value.as_ref(), original);
            }
        }
        // Moved to the other key: never decodes when either side is sensitive.
        if sensitive {
            prop_assert!(c.decode::<Value>(&Key::parse("f:v1:secret:2").expect("valid"), &good).is_err());
            prop_assert!(c.decode::<Value>(&key(false), &good).is_err());
        }
    }

    /// The decryption path on its own: arbitrary sealed payloads and authenticated data.
    #[test]
    fn fuzz_open(sealed in prop::collection::vec(any::<u8>(), 0..300), aad in prop::collection::vec(any::<u8>(), 0..64), id in prop_oneof![Just(b"old".to_vec()), Just(b"new".to_vec()), prop::collection::vec(any::<u8>(), 0..4)]) {
        let c = codec(Format::MessagePack, true);
        let enc = c.encryption.as_deref().expect("encryption on");
        prop_assert!(enc.open(&aad, &sealed).is_err());
        let mut framed = vec![u8::try_from(id.len()).expect("short id")];
        framed.extend_from_slice(&id);
        framed.extend_from_slice(&sealed);
        prop_assert!(enc.open(&aad, &framed).is_err());
    }
}
