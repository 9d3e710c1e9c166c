//! The audit log: modifications and invalidations made through the cache become JSON lines.

use strata::{AuditSink, KeySchema, Tag, Ttl};

use crate::common::{Redis, TestResult};
use crate::on_both;

/// Waits (bounded) until the sink holds `n` records: they are written by a background thread.
fn wait_for(read: impl Fn() -> Vec<String>, n: usize) -> Vec<String> {
    for _ in 0..500 {
        let lines = read();
        if lines.len() >= n {
            return lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    read()
}

async fn modifications_are_recorded(redis: Redis) -> TestResult {
    let sink = AuditSink::memory();
    let cache = redis.builder().audit(sink.clone()).build().await?;
    let schema = KeySchema::new("it", 1)?;
    let key = schema.key("audited", "1")?;
    cache.set(&key, &"v".to_owned(), Ttl::Short).await?;
    let _ = cache.get::<String>(&key).await?;
    cache.delete(&key).await?;
    cache.invalidate_namespace("it:v1:audited").await?;
    cache.invalidate_tag(&Tag::new("it", "sale")?).await?;
    assert!(cache.invalidate_namespace("bad namespace").await.is_err());
    let lines = wait_for(|| sink.lines(), 5);
    let records: Vec<serde_json::Value> = lines.iter().map(|l| serde_json::from_str(l)).collect::<Result<_, _>>()?;
    let summary: Vec<(String, String, String)> = records
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap_or("").into(),
                r["target"].as_str().unwrap_or("").into(),
                r["result"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    let expected = [
        ("set", "it:v1:audited:1", "ok"),
        ("delete", "it:v1:audited:1", "ok"),
        ("invalidate_namespace", "it:v1:audited", "ok"),
        ("invalidate_tag", "it:sale", "ok"),
        ("invalidate_namespace", "bad namespace", "error"),
    ];
    let expected: Vec<(String, String, String)> =
        expected.iter().map(|(a, t, r)| ((*a).into(), (*t).into(), (*r).into())).collect();
    assert_eq!(summary, expected, "{}: reads are not audited, every write is", redis.name());
    for r in &records {
        assert_eq!(r["principal"], "default");
        assert!(r["time"].as_str().is_some_and(|t| t.len() == 24 && t.ends_with('Z')), "{r}");
    }
    assert!(records[4]["reason"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(sink.dropped(), 0);
    Ok(())
}
on_both!(modifications_are_recorded);

/// A write the cache refuses (too large) removes the value it meant to replace: that removal is
/// a modification, recorded as a `delete` before the failed `set`.
async fn a_refused_write_records_the_delete_it_makes(redis: Redis) -> TestResult {
    let sink = AuditSink::memory();
    let cache = redis.builder().audit(sink.clone()).max_value_bytes(256).build().await?;
    let key = KeySchema::new("it", 1)?.key("audited", "too-big")?;
    assert!(cache.set(&key, &"x".repeat(4096), Ttl::Short).await.is_err());
    let items = [(key.clone(), "y".repeat(4096))];
    assert!(cache.set_many(&items, Ttl::Short).await.is_err());
    let lines = wait_for(|| sink.lines(), 4);
    let actions: Vec<(String, String)> = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l))
        .collect::<Result<Vec<_>, _>>()?
        .iter()
        .map(|r| (r["action"].as_str().unwrap_or("").into(), r["result"].as_str().unwrap_or("").into()))
        .collect();
    let expected: Vec<(String, String)> = [("delete", "ok"), ("set", "error"), ("delete", "ok"), ("set_many", "error")]
        .iter()
        .map(|(a, r)| ((*a).into(), (*r).into()))
        .collect();
    assert_eq!(actions, expected, "{}", redis.name());
    Ok(())
}
on_both!(a_refused_write_records_the_delete_it_makes);

/// The file sink appends with mode 0600 and records the ACL user as principal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_sink_is_private_and_names_the_acl_user() -> TestResult {
    use std::os::unix::fs::PermissionsExt;
    let redis = Redis::standalone();
    let () = redis::cmd("ACL")
        .arg(&["SETUSER", "auditor", "on", ">s3cret-pass", "~*", "&*", "+@all"][..])
        .query(redis.raw().as_mut())?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("audit.jsonl");
    let cache =
        redis.builder().username("auditor").password("s3cret-pass").audit(AuditSink::file(&path)?).build().await?;
    let key = KeySchema::new("it", 1)?.key("audited", "f")?;
    cache.set(&key, &1u32, Ttl::Short).await?;
    cache.delete(&key).await?;
    let read = || std::fs::read_to_string(&path).map(|t| t.lines().map(String::from).collect()).unwrap_or_default();
    let lines = wait_for(read, 2);
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in &lines {
        let r: serde_json::Value = serde_json::from_str(line)?;
        assert_eq!(r["principal"], "auditor");
        assert!(!line.contains("s3cret"), "the password never reaches the log");
    }
    assert_eq!(std::fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
    Ok(())
}

/// The calls that write without going through `set`: batch writes, write-through (also when
/// the source fails) and write-behind enqueues.
#[cfg(feature = "write-behind")]
async fn batch_and_write_through_are_recorded(redis: Redis) -> TestResult {
    let sink = AuditSink::memory();
    let cache = redis.builder().audit(sink.clone()).build().await?;
    let schema = KeySchema::new("it", 1)?;
    let (a, b, c) = (schema.key("many", "a")?, schema.key("many", "b")?, schema.key("through", "c")?);
    cache.set_many(&[(a.clone(), 1u32), (b.clone(), 2u32)], Ttl::Short).await?;
    cache.set_through(&c, &3u32, Ttl::Short, |_| async { Ok::<_, std::io::Error>(()) }).await?;
    let failed = cache
        .set_through(&c, &4u32, Ttl::Short, |_| async { Err::<(), _>(std::io::Error::other("source down")) })
        .await;
    assert!(failed.is_err());
    let queue = strata::WriteBehind::new(&cache, strata::WriteBehindConfig::new("it:audit"))?;
    queue.enqueue("it:v1:orders:9", b"payload", "idem-9").await?;

    let lines = wait_for(|| sink.lines(), 5);
    let records: Vec<serde_json::Value> = lines.iter().map(|l| serde_json::from_str(l)).collect::<Result<_, _>>()?;
    let summary: Vec<(&str, &str, &str)> = records
        .iter()
        .map(|r| {
            (r["action"].as_str().unwrap_or(""), r["target"].as_str().unwrap_or(""), r["result"].as_str().unwrap_or(""))
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("set_many", "it:v1:many:a", "ok"),
            ("set_many", "it:v1:many:b", "ok"),
            ("set_through", "it:v1:through:c", "ok"),
            ("set_through", "it:v1:through:c", "error"),
            ("write_behind_enqueue", "it:v1:orders:9", "ok"),
        ],
        "{}",
        redis.name()
    );
    assert!(records[3]["reason"].as_str().is_some_and(|r| r.contains("source down")), "{}", records[3]);
    Ok(())
}
#[cfg(feature = "write-behind")]
on_both!(batch_and_write_through_are_recorded);
