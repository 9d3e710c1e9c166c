//! Reading Prometheus text and PromQL in tests: shared by this crate's prometheus.rs and
//! crates/strata-admin/tests (which includes this file by path), so the parsing exists once.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The repository root (every crate lives in crates/NAME).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs promtool; a missing promtool fails the test with the way to get it.
pub fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
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
pub fn families(text: &str) -> Vec<String> {
    text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next().map(String::from)).collect()
}

/// The value of the sample written exactly as `series` (name and labels).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Metric names a PromQL expression refers to: identifiers followed by `{`, `[`, `)`, space
/// or the end, that are not PromQL keywords, functions or label names.
pub fn promql_metrics(expr: &str) -> BTreeSet<String> {
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

/// The metrics `strata serve` must export besides the library's (redis_exporter names).
pub fn exporter_metrics() -> BTreeSet<String> {
    let path = repo_root().join("deploy/prometheus/exporter-metrics.txt");
    let text = std::fs::read_to_string(&path).expect("deploy/prometheus/exporter-metrics.txt");
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect()
}

/// Names a query may use for a family: histograms also have `_bucket`, `_sum` and `_count`.
pub fn allowed(families: &[String]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for f in families {
        out.insert(f.clone());
        for suffix in ["_bucket", "_sum", "_count"] {
            out.insert(format!("{f}{suffix}"));
        }
    }
    out
}

/// Every PromQL expression of deploy/grafana/strata.json (source `panel TITLE`) and of
/// deploy/prometheus/alerts.yml (source `alert rule`).
pub fn deploy_queries() -> Vec<(String, String)> {
    let read =
        |path: &str| std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/strata.json")).expect("deploy/grafana/strata.json is JSON");
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let Some(targets) = panel["targets"].as_array() else { continue };
        for target in targets {
            let expr = target["expr"].as_str().expect("every target has a PromQL expr");
            out.push((format!("panel {}", panel["title"]), expr.to_owned()));
        }
    }
    for line in read("deploy/prometheus/alerts.yml").lines().map(str::trim).filter_map(|l| l.strip_prefix("expr:")) {
        out.push(("alert rule".to_owned(), line.trim().trim_matches(['|', '>', '\'']).to_owned()));
    }
    out
}

#[test]
fn promql_names_are_extracted() {
    let expr = r#"sum by (namespace) (rate(strata_requests_total{tier="l1",result=~"hit|x_y"}[5m])) / on (instance) redis_up and histogram_quantile(0.99, sum by (le) (rate(strata_l2_duration_seconds_bucket[1m])))"#;
    let names: Vec<String> = promql_metrics(expr).into_iter().collect();
    assert_eq!(names, ["redis_up", "strata_l2_duration_seconds_bucket", "strata_requests_total"]);
}
