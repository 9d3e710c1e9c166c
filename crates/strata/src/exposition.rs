//! Prometheus exposition of a cache's metrics: [`Cache::register_metrics`] adds a collector to
//! an application's `prometheus_client` registry; [`Cache::prometheus_text`] and
//! [`Cache::openmetrics_text`] render this cache's metrics on their own. Both read a [`MetricsSnapshot`] at scrape time, so the hot
//! paths keep their plain atomic counters and nothing is recorded twice.

use std::sync::Weak;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::registry::Registry;

use crate::cache::{Cache, Inner};
use crate::latency::LatencySnapshot;
use crate::metrics::{MetricsSnapshot, NamespaceStats};

/// Every metric family a cache exports: `(name as scraped, type, help)`. Counters are scraped
/// with their `_total` suffix. Label cardinality is bounded: `namespace` takes at most
/// [`MAX_NAMESPACES`](crate::MAX_NAMESPACES) + 1 values, the other labels a fixed few.
pub const METRIC_FAMILIES: &[(&str, &str, &str)] = &[
    ("strata_requests_total", "counter", "Cache reads by tier (l1, l2) and result (hit, miss)."),
    ("strata_negative_hits_total", "counter", "Reads answered by a cached not-found."),
    ("strata_hot_copy_hits_total", "counter", "L2 reads of a hot key answered by one of its copies."),
    (
        "strata_stale_served_total",
        "counter",
        "Reads answered with a value past its logical expiry (stale-while-revalidate or fail-safe).",
    ),
    ("strata_loader_calls_total", "counter", "Loader invocations (one per single-flight group)."),
    ("strata_loader_errors_total", "counter", "Loader invocations that returned an error."),
    ("strata_loader_timeouts_total", "counter", "Loads that passed a soft or hard timeout."),
    ("strata_loader_duration_seconds", "histogram", "How long loader calls took."),
    (
        "strata_lease_waits_total",
        "counter",
        "Misses that waited for another process's load (distributed single-flight).",
    ),
    ("strata_sets_total", "counter", "Values written to Redis."),
    ("strata_deletes_total", "counter", "Keys deleted."),
    ("strata_writes_through_total", "counter", "Write-through writes that reached the cache."),
    (
        "strata_stale_writes_refused_total",
        "counter",
        "Loaded values not stored because an invalidation or lease takeover happened during the load.",
    ),
    ("strata_corrupt_values_total", "counter", "Undecodable values found in Redis (treated as a miss and removed)."),
    ("strata_type_mismatches_total", "counter", "Values of another type found in Redis (a miss, left in place)."),
    (
        "strata_uncacheable_total",
        "counter",
        "Loaded values too large or unserializable to cache (returned, not stored).",
    ),
    (
        "strata_refreshes_total",
        "counter",
        "Background refreshes by trigger (early = XFetch, stale = stale-while-revalidate).",
    ),
    ("strata_refresh_errors_total", "counter", "Background refreshes whose loader failed or timed out."),
    (
        "strata_invalidated_reads_total",
        "counter",
        "Values found but not served because their namespace or a tag was invalidated after they were produced.",
    ),
    ("strata_namespace_invalidations_total", "counter", "Namespace invalidations made through this instance."),
    (
        "strata_invalidations_total",
        "counter",
        "L1 invalidations by kind (message = key named by a Redis tracking message, l1_flush = whole L1 dropped).",
    ),
    ("strata_l2_errors_total", "counter", "Failed Redis calls by kind (error, timeout)."),
    (
        "strata_l2_retries_total",
        "counter",
        "Redis calls attempted again after a try-again reply (LOADING, TRYAGAIN, CLUSTERDOWN...).",
    ),
    (
        "strata_l2_duration_seconds",
        "histogram",
        "How long Redis calls made through the breaker took, retries included.",
    ),
    ("strata_breaker_rejections_total", "counter", "Redis calls skipped because a circuit breaker was open."),
    ("strata_breaker_state", "gauge", "Worst circuit breaker state now: 0 closed, 1 open, 2 half-open."),
    ("strata_breaker_opens_total", "counter", "Times a circuit breaker opened."),
    (
        "strata_breakers_open",
        "gauge",
        "Circuit breakers within their open period now (whole Redis and per slot range).",
    ),
    ("strata_l1_entries", "gauge", "Entries in the in-process tier."),
    ("strata_l1_bytes", "gauge", "Weighted bytes held by the in-process tier."),
    ("strata_l1_capacity_bytes", "gauge", "Byte budget of the in-process tier (0 when disabled)."),
    ("strata_l1_coherent", "gauge", "1 when L1 may serve (every invalidation connection is up), else 0."),
    (
        "strata_recovery_queue",
        "gauge",
        "Invalidations Redis could not take, queued in this instance for replay (auto-recovery).",
    ),
    ("strata_recovery_queued_total", "counter", "Invalidations queued for replay because Redis could not take them."),
    ("strata_recovery_replayed_total", "counter", "Queued invalidations replayed once Redis took them."),
    (
        "strata_recovery_dropped_total",
        "counter",
        "Invalidations lost: not queued (queue full) or refused by Redis on replay; their keys may serve stale values until their TTL.",
    ),
];

/// Every metric family a [`WriteBehind`](crate::WriteBehind) queue exports (this process's
/// counters; [`WriteBehind::register_metrics`](crate::WriteBehind::register_metrics)), labelled
/// with the queue's `stream`.
pub const WRITE_BEHIND_METRIC_FAMILIES: &[(&str, &str, &str)] = &[
    ("strata_write_behind_enqueued_total", "counter", "Write-behind entries acknowledged by enqueue."),
    ("strata_write_behind_delivered_total", "counter", "Write-behind entries the sink accepted."),
    ("strata_write_behind_retried_total", "counter", "Failed write-behind sink calls that were retried."),
    ("strata_write_behind_dead_lettered_total", "counter", "Write-behind entries moved to a dead-letter stream."),
    (
        "strata_write_behind_dead_letters_dropped_total",
        "counter",
        "Dead letters trimmed at the dead-letter cap (lost for inspection and replay).",
    ),
    ("strata_write_behind_claimed_total", "counter", "Write-behind entries reclaimed from a dead worker."),
    (
        "strata_write_behind_deduplicated_total",
        "counter",
        "Write-behind entries skipped because their idempotency key was already delivered.",
    ),
    (
        "strata_write_behind_dead_letter_entries",
        "gauge",
        "The longest dead-letter stream of the queue this process saw (compare with the cap).",
    ),
    ("strata_write_behind_dead_letter_cap", "gauge", "Most entries a partition's dead-letter stream keeps."),
];

/// Help text of a family in [`METRIC_FAMILIES`] (empty if absent: a unit test keeps them in step).
fn help(name: &str) -> &'static str {
    METRIC_FAMILIES
        .iter()
        .chain(WRITE_BEHIND_METRIC_FAMILIES)
        .find(|(n, _, _)| *n == name)
        .map(|(_, _, h)| *h)
        .unwrap_or("")
}

/// The collector a registry holds: a weak handle, so registering does not keep a dropped
/// cache alive (its families then vanish from the scrape).
#[derive(Debug)]
struct CacheCollector {
    cache: Weak<Inner>,
}

impl Collector for CacheCollector {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let Some(inner) = self.cache.upgrade() else { return Ok(()) };
        let cache = Cache::from_inner(inner);
        let capacity = cache.l1_capacity_bytes();
        encode_snapshot(&cache.metrics(), capacity, encoder)
    }
}

impl Cache {
    /// Adds this cache's metrics ([`METRIC_FAMILIES`]) to `registry`, read at each scrape. The
    /// registry keeps only a weak handle. Register each cache once per registry (two caches
    /// in one registry need sub-registries with a distinguishing label, e.g.
    /// `registry.sub_registry_with_label(("cache".into(), "users".into()))`).
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(CacheCollector { cache: std::sync::Arc::downgrade(self.inner()) }));
    }

    /// This cache's metrics in the Prometheus text format 0.0.4, to serve on a `/metrics`
    /// endpoint with content type `text/plain; version=0.0.4; charset=utf-8`. This is the
    /// format `promtool check metrics` and every Prometheus version read; see
    /// [`openmetrics_text`](Self::openmetrics_text) for OpenMetrics.
    pub fn prometheus_text(&self) -> String {
        openmetrics_to_prometheus(&self.openmetrics_text())
    }

    /// This cache's metrics in the OpenMetrics text format (ends with `# EOF`; counter
    /// families are named without `_total`), content type
    /// `application/openmetrics-text; version=1.0.0; charset=utf-8`.
    pub fn openmetrics_text(&self) -> String {
        let mut registry = Registry::default();
        self.register_metrics(&mut registry);
        openmetrics(&registry)
    }
}

/// The collector of a write-behind queue: its counters are this process's, shared by clones.
#[cfg(feature = "write-behind")]
#[derive(Debug)]
struct WriteBehindCollector {
    stream: String,
    cap: u64,
    counters: Weak<crate::write_behind::Counters>,
}

#[cfg(feature = "write-behind")]
impl Collector for WriteBehindCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        let Some(counters) = self.counters.upgrade() else { return Ok(()) };
        let s = crate::write_behind::stats_of(&counters);
        let labels = [("stream", self.stream.as_str())];
        for (name, v) in [
            ("strata_write_behind_enqueued_total", s.enqueued),
            ("strata_write_behind_delivered_total", s.delivered),
            ("strata_write_behind_retried_total", s.retried),
            ("strata_write_behind_dead_lettered_total", s.dead_lettered),
            ("strata_write_behind_dead_letters_dropped_total", s.dead_letters_dropped),
            ("strata_write_behind_claimed_total", s.claimed),
            ("strata_write_behind_deduplicated_total", s.deduplicated),
        ] {
            counter(&mut family(&mut enc, name, MetricType::Counter)?, &labels, v)?;
        }
        for (name, v) in [
            ("strata_write_behind_dead_letter_entries", s.dead_letter_len),
            ("strata_write_behind_dead_letter_cap", self.cap),
        ] {
            family(&mut enc, name, MetricType::Gauge)?.encode_family(&Labels(&labels))?.encode_gauge(&v)?;
        }
        Ok(())
    }
}

#[cfg(feature = "write-behind")]
impl crate::WriteBehind {
    /// Adds this queue's metrics ([`WRITE_BEHIND_METRIC_FAMILIES`], labelled `stream`) to
    /// `registry`, read at each scrape; the registry keeps only a weak handle. Register each
    /// queue once.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(WriteBehindCollector {
            stream: self.config.stream.clone(),
            cap: self.config.dead_letter_cap as u64,
            counters: std::sync::Arc::downgrade(&self.counters),
        }));
    }

    /// This queue's metrics in the Prometheus text format 0.0.4 (see
    /// [`Cache::prometheus_text`]).
    pub fn prometheus_text(&self) -> String {
        let mut registry = Registry::default();
        self.register_metrics(&mut registry);
        openmetrics_to_prometheus(&openmetrics(&registry))
    }
}

/// `registry` in the OpenMetrics text format (empty if it cannot be encoded: writing to a
/// String cannot fail otherwise).
fn openmetrics(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}

/// Converts OpenMetrics text as `prometheus_client` writes it (no `# UNIT`, no exemplars) into
/// the Prometheus text format: a counter family takes its samples' `_total` name in its `# HELP`
/// and `# TYPE` lines, and the `# EOF` marker goes. Without this, parsers of the older format
/// (promtool, redis_exporter-era tooling) see counter samples outside any declared family.
pub fn openmetrics_to_prometheus(openmetrics: &str) -> String {
    let lines: Vec<&str> = openmetrics.lines().collect();
    let mut out = String::with_capacity(openmetrics.len() + 64);
    let is_counter = |name: &str, line: Option<&&str>| {
        line.and_then(|l| l.strip_prefix("# TYPE ")).is_some_and(|t| t == format!("{name} counter"))
    };
    for (i, line) in lines.iter().enumerate() {
        if *line == "# EOF" {
            continue;
        }
        let renamed = if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or("");
            is_counter(name, lines.get(i + 1)).then(|| format!("# HELP {name}_total{}", &rest[name.len()..]))
        } else {
            let counter = line.strip_prefix("# TYPE ").and_then(|r| r.strip_suffix(" counter"));
            counter.map(|name| format!("# TYPE {name}_total counter"))
        };
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

fn encode_snapshot(m: &MetricsSnapshot, l1_capacity: u64, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
    let namespaces: Vec<(&str, &NamespaceStats)> = m.namespaces.iter().map(|(k, v)| (k.as_str(), v)).collect();

    let mut f = family(&mut enc, "strata_requests_total", MetricType::Counter)?;
    for (ns, s) in &namespaces {
        for (tier, result, v) in [
            ("l1", "hit", s.l1_hits),
            ("l1", "miss", s.l1_misses),
            ("l2", "hit", s.l2_hits),
            ("l2", "miss", s.l2_misses),
        ] {
            counter(&mut f, &[("tier", tier), ("result", result), ("namespace", ns)], v)?;
        }
    }

    type Field = fn(&NamespaceStats) -> u64;
    let per_namespace: [(&str, Field); 17] = [
        ("strata_negative_hits_total", |s| s.negative_hits),
        ("strata_hot_copy_hits_total", |s| s.hot_copy_hits),
        ("strata_stale_served_total", |s| s.stale_served),
        ("strata_loader_calls_total", |s| s.loader_calls),
        ("strata_loader_errors_total", |s| s.loader_errors),
        ("strata_loader_timeouts_total", |s| s.loader_timeouts),
        ("strata_lease_waits_total", |s| s.lease_waits),
        ("strata_sets_total", |s| s.sets),
        ("strata_deletes_total", |s| s.deletes),
        ("strata_writes_through_total", |s| s.writes_through),
        ("strata_stale_writes_refused_total", |s| s.stale_writes_refused),
        ("strata_corrupt_values_total", |s| s.corrupt),
        ("strata_type_mismatches_total", |s| s.type_mismatches),
        ("strata_uncacheable_total", |s| s.uncacheable),
        ("strata_refresh_errors_total", |s| s.refresh_errors),
        ("strata_invalidated_reads_total", |s| s.invalidated),
        ("strata_namespace_invalidations_total", |s| s.invalidations),
    ];
    for (name, field) in per_namespace {
        let mut f = family(&mut enc, name, MetricType::Counter)?;
        for (ns, s) in &namespaces {
            counter(&mut f, &[("namespace", ns)], field(s))?;
        }
    }

    let mut f = family(&mut enc, "strata_refreshes_total", MetricType::Counter)?;
    for (ns, s) in &namespaces {
        counter(&mut f, &[("trigger", "early"), ("namespace", ns)], s.early_refreshes)?;
        counter(&mut f, &[("trigger", "stale"), ("namespace", ns)], s.stale_refreshes)?;
    }

    let mut f = family(&mut enc, "strata_loader_duration_seconds", MetricType::Histogram)?;
    for (ns, s) in &namespaces {
        histogram(&mut f, &[("namespace", ns)], &s.loader_duration)?;
    }

    let mut f = family(&mut enc, "strata_invalidations_total", MetricType::Counter)?;
    counter(&mut f, &[("kind", "message")], m.invalidation_messages)?;
    counter(&mut f, &[("kind", "message_internal_key")], m.invalidation_messages_internal)?;
    counter(&mut f, &[("kind", "l1_flush")], m.l1_flushes)?;

    let mut f = family(&mut enc, "strata_l2_errors_total", MetricType::Counter)?;
    counter(&mut f, &[("kind", "error")], m.l2_errors)?;
    counter(&mut f, &[("kind", "timeout")], m.l2_timeouts)?;

    let mut f = family(&mut enc, "strata_l2_duration_seconds", MetricType::Histogram)?;
    histogram(&mut f, &[], &m.l2_duration)?;

    for (name, v) in [
        ("strata_l2_retries_total", m.l2_retries),
        ("strata_breaker_rejections_total", m.breaker_rejections),
        ("strata_breaker_opens_total", m.breaker_opens),
        ("strata_recovery_queued_total", m.recovery_queued),
        ("strata_recovery_replayed_total", m.recovery_replayed),
        ("strata_recovery_dropped_total", m.recovery_dropped),
    ] {
        counter(&mut family(&mut enc, name, MetricType::Counter)?, &[], v)?;
    }
    for (name, v) in [
        ("strata_breaker_state", u64::from(m.breaker_state.as_gauge())),
        ("strata_breakers_open", m.breakers_open as u64),
        ("strata_l1_entries", m.l1_entries),
        ("strata_l1_bytes", m.l1_bytes),
        ("strata_l1_capacity_bytes", l1_capacity),
        ("strata_l1_coherent", u64::from(m.l1_coherent)),
        ("strata_recovery_queue", m.recovery_queue),
    ] {
        family(&mut enc, name, MetricType::Gauge)?.encode_gauge(&v)?;
    }
    Ok(())
}

/// Starts a family; `prometheus_client` appends `_total` to counter samples itself.
fn family<'e>(
    enc: &'e mut DescriptorEncoder<'_>,
    name: &'static str,
    kind: MetricType,
) -> Result<MetricEncoder<'e>, std::fmt::Error> {
    let base = name.strip_suffix("_total").filter(|_| matches!(kind, MetricType::Counter)).unwrap_or(name);
    enc.encode_descriptor(base, help(name), None, kind)
}

fn counter(f: &mut MetricEncoder<'_>, labels: &[(&str, &str)], v: u64) -> std::fmt::Result {
    if labels.is_empty() {
        return f.encode_counter::<NoLabelSet, u64, f64>(&v, None);
    }
    let labels = Labels(labels);
    f.encode_family(&labels)?.encode_counter::<NoLabelSet, u64, f64>(&v, None)
}

fn histogram(f: &mut MetricEncoder<'_>, labels: &[(&str, &str)], h: &LatencySnapshot) -> std::fmt::Result {
    // prometheus_client wants non-cumulative counts and spells the `+Inf` bound `f64::MAX`.
    let buckets: Vec<(f64, u64)> =
        h.buckets_seconds().into_iter().map(|(b, n)| (if b.is_finite() { b } else { f64::MAX }, n)).collect();
    let none = None::<&std::collections::HashMap<usize, Exemplar<NoLabelSet, f64>>>;
    if labels.is_empty() {
        return f.encode_histogram::<NoLabelSet>(h.sum_seconds(), h.count(), &buckets, none);
    }
    let labels = Labels(labels);
    f.encode_family(&labels)?.encode_histogram::<NoLabelSet>(h.sum_seconds(), h.count(), &buckets, none)
}

/// A label set borrowed from the snapshot (no allocation per sample).
struct Labels<'a>(&'a [(&'a str, &'a str)]);

impl EncodeLabelSet for Labels<'_> {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelSetEncoder<'_>) -> std::fmt::Result {
        self.0.encode(encoder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_take_their_total_name_in_the_prometheus_format() {
        let om = "# HELP a_b Things.\n# TYPE a_b counter\na_b_total{x=\"1\"} 2\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n# EOF\n";
        let prom = openmetrics_to_prometheus(om);
        assert_eq!(
            prom,
            "# HELP a_b_total Things.\n# TYPE a_b_total counter\na_b_total{x=\"1\"} 2\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n"
        );
    }

    #[test]
    fn family_names_are_unique_and_follow_conventions() {
        let mut seen = std::collections::HashSet::new();
        for (name, kind, help) in METRIC_FAMILIES.iter().chain(WRITE_BEHIND_METRIC_FAMILIES) {
            assert!(seen.insert(*name), "{name} listed twice");
            assert!(name.starts_with("strata_"), "{name}");
            assert!(!help.is_empty() && !help.contains('\n') && !help.contains('\\'), "{name}: {help:?}");
            assert_eq!(*kind == "counter", name.ends_with("_total"), "{name}: only counters end in _total");
        }
    }
}
