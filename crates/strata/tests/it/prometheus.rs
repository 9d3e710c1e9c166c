//! Prometheus exposition: names unique and documented, counts right, accepted by `promtool`
//! (Debian package `prometheus`; `./run test` installs it), and the deploy/ alert rules and
//! Grafana dashboard refer only to metrics that exist.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;

use strata::{KeySchema, Ttl};

use crate::common::{Redis, TestResult};
use crate::prom_text::{
    allowed, deploy_queries, exporter_metrics, families, promql_metrics, promtool, repo_root, sample,
};

async fn exposition_text() -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let redis = Redis::standalone();
    let cache = redis.cache().await;
    let schema = KeySchema::new("it", 1)?;
    for i in 0..4 {
        let key = schema.key("user", &i.to_string())?;
        for _ in 0..3 {
            let _: u64 = cache.get_or_set(&key, Ttl::Medium, || async move { Ok::<_, std::io::Error>(i) }).await?;
        }
    }
    let _: Option<u64> = cache.get(&schema.key("order", "1")?).await?;
    let openmetrics = cache.openmetrics_text();
    assert!(
        openmetrics.ends_with("# EOF\n") && openmetrics.contains("# TYPE strata_requests counter"),
        "{openmetrics}"
    );
    // A write-behind queue's families too, as an application exporting both would scrape them.
    let wb = strata::WriteBehind::new(&cache, strata::WriteBehindConfig::new("metrics"))?;
    wb.enqueue("k", b"v", "i1").await?;
    Ok(cache.prometheus_text() + &wb.prometheus_text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposition_is_valid_documented_and_counts() -> TestResult {
    let text = exposition_text().await?;
    // Kept as an artifact for a look at the real output.
    std::fs::write(Path::new(env!("CARGO_TARGET_TMPDIR")).join("strata-metrics.prom"), &text)?;
    let (ok, out) = promtool(&["check", "metrics"], Some(&text));
    assert!(ok, "promtool check metrics rejected the exposition:\n{out}\n{text}");
    let found = families(&text);
    let unique: HashSet<&String> = found.iter().collect();
    assert_eq!(unique.len(), found.len(), "a family is exported twice:\n{text}");
    let listed: BTreeSet<String> = strata::METRIC_FAMILIES
        .iter()
        .chain(strata::WRITE_BEHIND_METRIC_FAMILIES)
        .map(|(n, _, _)| n.to_string())
        .collect();
    assert_eq!(found.iter().cloned().collect::<BTreeSet<_>>(), listed, "METRIC_FAMILIES and the scrape differ");
    for name in &found {
        let help = text.lines().find_map(|l| l.strip_prefix(&format!("# HELP {name} ")));
        assert!(help.is_some_and(|h| h.trim().len() > 5), "{name} has no HELP text");
    }
    let doc = std::fs::read_to_string(repo_root().join("docs/observability.md"))?;
    for name in &found {
        assert!(doc.contains(&format!("| `{name}`")), "{name} is missing from the table in docs/observability.md");
    }

    // 4 keys read 3 times: 1 L1 miss + 2 L1 hits each, 4 loads; one miss in another namespace.
    let ns = r#"namespace="it:v1:user""#;
    assert_eq!(sample(&text, &format!(r#"strata_requests_total{{tier="l1",result="hit",{ns}}}"#)), Some(8.0), "{text}");
    assert_eq!(sample(&text, &format!(r#"strata_requests_total{{tier="l1",result="miss",{ns}}}"#)), Some(4.0));
    assert_eq!(sample(&text, &format!("strata_loader_calls_total{{{ns}}}")), Some(4.0));
    assert_eq!(sample(&text, &format!("strata_loader_duration_seconds_count{{{ns}}}")), Some(4.0));
    assert_eq!(sample(&text, &format!(r#"strata_loader_duration_seconds_bucket{{le="+Inf",{ns}}}"#)), Some(4.0));
    assert_eq!(sample(&text, r#"strata_requests_total{tier="l2",result="miss",namespace="it:v1:order"}"#), Some(1.0));
    assert_eq!(sample(&text, "strata_breaker_state"), Some(0.0));
    assert!(sample(&text, "strata_l2_duration_seconds_count").is_some_and(|n| n >= 9.0), "{text}");
    assert!(!text.contains("# EOF"), "the Prometheus text format has no EOF marker");

    Ok(())
}

#[test]
fn alert_rules_pass_promtool() {
    let (ok, out) = promtool(&["check", "rules", "deploy/prometheus/alerts.yml"], None);
    assert!(ok, "promtool check rules:\n{out}");
    let (ok, out) = promtool(&["test", "rules", "deploy/prometheus/alerts_test.yml"], None);
    assert!(ok, "promtool test rules:\n{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_use_only_exported_metrics() -> TestResult {
    let text = exposition_text().await?;
    let mut allow = allowed(&families(&text));
    allow.extend(exporter_metrics());

    let queries = deploy_queries();
    let panels: BTreeSet<&str> = queries.iter().filter_map(|(source, _)| source.strip_prefix("panel ")).collect();
    assert!(panels.len() >= 8, "hit ratio, ops, latency, loader, breaker, L1, memory, evictions");
    let mut used = BTreeSet::new();
    for (source, expr) in &queries {
        let names = promql_metrics(expr);
        assert!(!names.is_empty(), "no metric in {expr:?} ({source})");
        for name in names {
            assert!(allow.contains(&name), "{source} queries {name}, which nobody exports: {expr}");
            used.insert(name);
        }
    }
    assert!(used.contains("strata_requests_total") && used.contains("redis_memory_used_bytes"), "{used:?}");
    Ok(())
}
