//! Client-side encryption of sensitive namespaces: what Redis holds, and every way a value can
//! fail to authenticate (wrong key, tampered, moved, plaintext planted, unknown key id).

use strata::{Cache, Encryption, Key, KeySchema, Keyring, Ttl};

use crate::common::{Redis, TestResult};
use crate::on_both;

const SECRET: &str = "Ada Lovelace, card 4111-1111-1111-1111";
const SENSITIVE: &str = "it:v1:card";

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Card {
    id: u64,
    holder: String,
}

fn card(id: u64) -> Card {
    Card { id, holder: SECRET.to_owned() }
}

fn ring(entries: &[(&str, u8)]) -> Keyring {
    let text: Vec<String> = entries.iter().map(|(id, b)| format!("{id}:{}", format!("{b:02x}").repeat(32))).collect();
    Keyring::parse(&text.join("\n")).expect("a valid test keyring")
}

async fn cache_with(redis: &Redis, ring: Keyring) -> Result<Cache, strata::Error> {
    redis.builder().l1_capacity_bytes(0).encryption(Encryption::new(ring).namespace(SENSITIVE)).build().await
}

fn raw_get(redis: &Redis, key: &Key) -> Option<Vec<u8>> {
    redis::cmd("GET").arg(key.as_str()).query(redis.raw().as_mut()).expect("raw GET")
}

fn raw_set(redis: &Redis, key: &Key, bytes: &[u8]) {
    let () = redis::cmd("SET").arg(key.as_str()).arg(bytes).query(redis.raw().as_mut()).expect("raw SET");
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn failures(cache: &Cache) -> u64 {
    cache.metrics().namespace(SENSITIVE).decrypt_failures
}

/// Values of a sensitive namespace are ciphertext in Redis and read back through every path;
/// another namespace of the same cache stays plaintext.
async fn ciphertext_in_redis_plaintext_for_the_caller(redis: Redis) -> TestResult {
    let cache = cache_with(&redis, ring(&[("k1", 0x11)])).await?;
    let schema = KeySchema::new("it", 1)?;
    let key = schema.key("card", "1")?;
    cache.set(&key, &card(1), Ttl::Short).await?;
    let stored = raw_get(&redis, &key).expect("stored");
    assert!(!contains(&stored, b"Lovelace"), "{}: plaintext in Redis", redis.name());
    assert!(!contains(&stored, b"holder"), "field names are encrypted too");
    assert_eq!(cache.get::<Card>(&key).await?, Some(card(1)));

    // A large value: compressed, then encrypted.
    let big = schema.key("card", "big")?;
    let large = Card { id: 2, holder: SECRET.repeat(100) };
    cache.set(&big, &large, Ttl::Short).await?;
    assert!(!contains(&raw_get(&redis, &big).expect("stored"), b"Lovelace"));
    assert_eq!(cache.get::<Card>(&big).await?, Some(large));

    // get_or_set, the negative path, and the batch paths.
    let loaded = schema.key("card", "loaded")?;
    let got = cache.get_or_set(&loaded, Ttl::Short, || async { Ok::<_, std::io::Error>(card(3)) }).await?;
    assert_eq!(got, card(3));
    cache.settled().await;
    assert!(!contains(&raw_get(&redis, &loaded).expect("stored"), b"Lovelace"));
    assert_eq!(cache.get::<Card>(&loaded).await?, Some(card(3)));
    let absent = schema.key("card", "absent")?;
    cache.set_not_found(&absent).await?;
    assert_eq!(cache.get::<Card>(&absent).await?, None);
    let many: Vec<(Key, Card)> =
        (10..14).map(|i| Ok((schema.key("card", &i.to_string())?, card(i)))).collect::<Result<_, strata::Error>>()?;
    cache.set_many(&many, Ttl::Short).await?;
    for (k, _) in &many {
        assert!(!contains(&raw_get(&redis, k).expect("stored"), b"Lovelace"));
    }
    let keys: Vec<Key> = many.iter().map(|(k, _)| k.clone()).collect();
    let read = cache.get_many::<Card>(&keys).await?;
    assert_eq!(read, many.iter().map(|(_, v)| Some(v.clone())).collect::<Vec<_>>());

    // Another namespace is not encrypted.
    let plain = schema.key("profile", "1")?;
    cache.set(&plain, &card(4), Ttl::Short).await?;
    assert!(contains(&raw_get(&redis, &plain).expect("stored"), b"Lovelace"));
    assert_eq!(cache.get::<Card>(&plain).await?, Some(card(4)));
    assert_eq!(failures(&cache), 0);
    Ok(())
}
on_both!(ciphertext_in_redis_plaintext_for_the_caller);

/// A wrong key, an unknown key id, a tampered byte, a value moved to another key, and a
/// plaintext value planted in the namespace: each is a miss, counted, and removed.
async fn every_failure_is_a_counted_miss(redis: Redis) -> TestResult {
    let cache = cache_with(&redis, ring(&[("k1", 0x11)])).await?;
    let schema = KeySchema::new("it", 1)?;
    let key = schema.key("card", "victim")?;

    // Same id, other key material.
    cache.set(&key, &card(1), Ttl::Short).await?;
    let wrong = cache_with(&redis, ring(&[("k1", 0x22)])).await?;
    assert_eq!(wrong.get::<Card>(&key).await?, None, "{}: wrong key must miss", redis.name());
    assert_eq!(failures(&wrong), 1);
    assert!(raw_get(&redis, &key).is_none(), "an undecryptable value is removed");

    // An id the ring does not have.
    cache.set(&key, &card(1), Ttl::Short).await?;
    let other = cache_with(&redis, ring(&[("k9", 0x11)])).await?;
    assert_eq!(other.get::<Card>(&key).await?, None);
    assert_eq!(failures(&other), 1);

    // A flipped ciphertext byte, with the envelope checksum fixed so it reaches decryption; and
    // one without the fix, which the checksum catches first (counted as corrupt).
    cache.set(&key, &card(1), Ttl::Short).await?;
    let good = raw_get(&redis, &key).expect("stored");
    let mut tampered = good.clone();
    let last = tampered.len() - 20;
    tampered[last] ^= 0x01;
    raw_set(&redis, &key, &with_checksum(tampered.clone()));
    assert_eq!(cache.get::<Card>(&key).await?, None);
    assert_eq!(failures(&cache), 1);
    raw_set(&redis, &key, &tampered);
    assert_eq!(cache.get::<Card>(&key).await?, None);
    assert_eq!(cache.metrics().namespace(SENSITIVE).corrupt, 1);

    // The bytes of one key copied under another: the key name is authenticated.
    let moved = schema.key("card", "attacker")?;
    raw_set(&redis, &moved, &good);
    assert_eq!(cache.get::<Card>(&moved).await?, None, "a moved value must not be served");
    assert_eq!(failures(&cache), 2);
    assert!(raw_get(&redis, &moved).is_none());
    raw_set(&redis, &key, &good);
    assert_eq!(cache.get::<Card>(&key).await?, Some(card(1)), "the original bytes under their own key still read");

    // A plaintext envelope (from a cache without encryption) in the sensitive namespace.
    let plain_writer = redis.builder().l1_capacity_bytes(0).build().await?;
    plain_writer.set(&moved, &card(666), Ttl::Short).await?;
    assert_eq!(cache.get::<Card>(&moved).await?, None, "plaintext in a sensitive namespace is refused");
    assert_eq!(failures(&cache), 3);

    // A cache without a keyring cannot read ciphertext either; it never panics.
    cache.set(&key, &card(1), Ttl::Short).await?;
    assert_eq!(plain_writer.get::<Card>(&key).await?, None);
    assert_eq!(plain_writer.metrics().namespace(SENSITIVE).decrypt_failures, 1);
    Ok(())
}
on_both!(every_failure_is_a_counted_miss);

/// Rotation: a value written with key 1 reads after key 2 becomes primary; new writes use key
/// 2, which a ring without it cannot read.
async fn rotation_keeps_old_values_readable(redis: Redis) -> TestResult {
    let schema = KeySchema::new("it", 1)?;
    let old = cache_with(&redis, ring(&[("k1", 0x11)])).await?;
    let rotated = cache_with(&redis, ring(&[("k1", 0x11), ("k2", 0x22)])).await?;
    let key = schema.key("card", "rot")?;
    old.set(&key, &card(1), Ttl::Short).await?;
    assert!(contains(&raw_get(&redis, &key).expect("stored"), b"\x02k1"));
    assert_eq!(rotated.get::<Card>(&key).await?, Some(card(1)), "{}: old key still decrypts", redis.name());

    let fresh = schema.key("card", "rot2")?;
    rotated.set(&fresh, &card(2), Ttl::Short).await?;
    assert!(contains(&raw_get(&redis, &fresh).expect("stored"), b"\x02k2"), "new writes use the primary key");
    assert_eq!(rotated.get::<Card>(&fresh).await?, Some(card(2)));
    assert_eq!(old.get::<Card>(&fresh).await?, None, "a ring without k2 cannot read it");
    assert_eq!(failures(&rotated), 0);
    assert_eq!(failures(&old), 1);
    Ok(())
}
on_both!(rotation_keeps_old_values_readable);

/// Recomputes the envelope's CRC-32 (bytes 16..20 over 0..16 and 20..), as an attacker who
/// knows the format would.
fn with_checksum(mut bytes: Vec<u8>) -> Vec<u8> {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&bytes[..16]);
    crc.update(&bytes[20..]);
    let sum = crc.finalize().to_le_bytes();
    bytes[16..20].copy_from_slice(&sum);
    bytes
}
