//! Prometheus exposition: names unique and documented, counts right, accepted by `promtool`
//! (Debian package `prometheus`; `./run test` installs it), and the deploy/ alert rules and
//! Grafana dashboard refer only to metrics that exist.

use std::collections::{BTreeSet, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use strata::{KeySchema, Ttl};

use crate::common::{Redis, TestResult};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs promtool; a missing promtool fails the test with the way to get it.
fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(repo_root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool not found: install it with `apt-get install -y prometheus` (./run test does)");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.unwrap_or("").as_bytes()).expect("write to promtool");
    drop(input);
    let out = child.wait_with_output().expect("promtool ran");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Family names from `# TYPE` lines.
fn families(text: &str) -> Vec<String> {
    text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next().map(String::from)).collect()
}

/// The value of the sample written exactly as `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Metric names a PromQL expression refers to: identifiers followed by `{`, `[`, `)`, space
/// or the end, that are not PromQL keywords, functions or label names.
fn promql_metrics(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    let mut in_braces = false;
    let mut in_string = false;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if in_string {
            in_string = c != '"';
            i += 1;
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' => in_braces = true,
            '}' => in_braces = false,
            _ => {}
        }
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < bytes.len()
                && ((bytes[i] as char).is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':')
            {
                i += 1;
            }
            let word = &expr[start..i];
            let next = expr[i..].trim_start().chars().next();
            let prev = expr[..start].trim_end().chars().last();
            // `by (a, b)` / `without (...)` / `on (...)` lists hold label names.
            let in_label_list = {
                let before = &expr[..start];
                let open = before.rfind('(');
                let close = before.rfind(')');
                open.is_some_and(|o| close.is_none_or(|c| c < o)) && {
                    let head = before[..open.unwrap_or(0)].trim_end();
                    ["by", "without", "on", "ignoring", "group_left", "group_right"].iter().any(|k| head.ends_with(k))
                }
            };
            let is_call = next == Some('(');
            let is_duration = prev.is_some_and(|p| p.is_ascii_digit());
            if !in_braces && !is_call && !in_label_list && !is_duration && word.contains('_') {
                names.insert(word.to_string());
            }
            continue;
        }
        i += 1;
    }
    names
}

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
    Ok(cache.prometheus_text())
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
    let listed: BTreeSet<String> = strata::METRIC_FAMILIES.iter().map(|(n, _, _)| n.to_string()).collect();
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

/// The metrics `strata serve` must export besides the library's (redis_exporter names).
fn exporter_metrics() -> BTreeSet<String> {
    let path = repo_root().join("deploy/prometheus/exporter-metrics.txt");
    let text = std::fs::read_to_string(&path).expect("deploy/prometheus/exporter-metrics.txt");
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect()
}

/// Names a query may use for a family: histograms also have `_bucket`, `_sum` and `_count`.
fn allowed(families: &[String]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for f in families {
        out.insert(f.clone());
        for suffix in ["_bucket", "_sum", "_count"] {
            out.insert(format!("{f}{suffix}"));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_use_only_exported_metrics() -> TestResult {
    let text = exposition_text().await?;
    let mut allow = allowed(&families(&text));
    allow.extend(exporter_metrics());

    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join("deploy/grafana/strata.json"))?)?;
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8, "hit ratio, ops, latency, loader, breaker, L1, memory, evictions");
    let mut used = BTreeSet::new();
    for panel in panels {
        let Some(targets) = panel["targets"].as_array() else { continue };
        for target in targets {
            let expr = target["expr"].as_str().expect("every target has a PromQL expr");
            let names = promql_metrics(expr);
            assert!(!names.is_empty(), "no metric in {expr:?}");
            for name in names {
                assert!(allow.contains(&name), "panel {:?} queries {name}, which nobody exports", panel["title"]);
                used.insert(name);
            }
        }
    }
    assert!(used.contains("strata_requests_total") && used.contains("redis_memory_used_bytes"), "{used:?}");

    let rules = std::fs::read_to_string(repo_root().join("deploy/prometheus/alerts.yml"))?;
    for line in rules.lines().map(str::trim).filter_map(|l| l.strip_prefix("expr:")) {
        for name in promql_metrics(line.trim().trim_matches(['|', '>', '\''])) {
            assert!(allow.contains(&name), "alert expression uses {name}, which nobody exports: {line}");
        }
    }
    Ok(())
}

#[test]
fn promql_names_are_extracted() {
    let expr = r#"sum by (namespace) (rate(strata_requests_total{tier="l1",result=~"hit|x_y"}[5m])) / on (instance) redis_up and histogram_quantile(0.99, sum by (le) (rate(strata_l2_duration_seconds_bucket[1m])))"#;
    let names: Vec<String> = promql_metrics(expr).into_iter().collect();
    assert_eq!(names, ["redis_up", "strata_l2_duration_seconds_bucket", "strata_requests_total"]);
}
