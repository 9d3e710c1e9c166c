//! The cache's metrics through the OpenTelemetry metrics API (feature `otel`):
//! [`Cache::register_otel_metrics`] registers asynchronous (observable) instruments on an
//! application's [`Meter`], whose callbacks read a [`MetricsSnapshot`] at collection time, as
//! the Prometheus collector does (`exposition.rs`): nothing is counted twice, and the hot paths
//! keep their plain atomics.
//!
//! Names follow OpenTelemetry's conventions: dotted namespaces, no `_total` suffix, UCUM units
//! (`s`, `By`, `{request}`); attributes `strata.namespace` (at most
//! [`MAX_NAMESPACES`](crate::MAX_NAMESPACES) + 1 values), `strata.tier`, `strata.result`,
//! `strata.trigger`, `strata.invalidation.kind`, `error.type` (a fixed few values each).

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{AsyncInstrument, Meter};

use crate::cache::{Cache, Inner};
use crate::metrics::{MetricsSnapshot, NamespaceStats};

/// Every instrument [`Cache::register_otel_metrics`] registers: `(name, instrument, unit,
/// description)`. Counters are asynchronous (observable) counters of totals since the cache
/// was built (cumulative); gauges observable gauges.
pub const OTEL_METRICS: &[(&str, &str, &str, &str)] = &[
    (
        "strata.requests",
        "counter",
        "{request}",
        "Cache reads by tier (strata.tier: l1, l2) and result (strata.result: hit, miss).",
    ),
    ("strata.negative_hits", "counter", "{hit}", "Reads answered by a cached not-found."),
    ("strata.hot_copy_hits", "counter", "{hit}", "L2 reads of a hot key answered by one of its copies."),
    (
        "strata.stale_served",
        "counter",
        "{read}",
        "Reads answered with a value past its logical expiry (stale-while-revalidate or fail-safe).",
    ),
    ("strata.loader.calls", "counter", "{call}", "Loader invocations (one per single-flight group)."),
    ("strata.loader.errors", "counter", "{error}", "Loader invocations that returned an error."),
    ("strata.loader.timeouts", "counter", "{timeout}", "Loads that passed a soft or hard timeout."),
    ("strata.loader.time", "counter", "s", "Time spent in loaders (divide by strata.loader.calls for the mean)."),
    (
        "strata.lease.waits",
        "counter",
        "{wait}",
        "Misses that waited for another process's load (distributed single-flight).",
    ),
    ("strata.sets", "counter", "{write}", "Values written to Redis."),
    ("strata.deletes", "counter", "{delete}", "Keys deleted."),
    ("strata.writes_through", "counter", "{write}", "Write-through writes that reached the cache."),
    (
        "strata.stale_writes_refused",
        "counter",
        "{write}",
        "Loaded values not stored because an invalidation or lease takeover happened during the load.",
    ),
    (
        "strata.corrupt_values",
        "counter",
        "{value}",
        "Undecodable values found in Redis (treated as a miss and removed).",
    ),
    ("strata.type_mismatches", "counter", "{value}", "Values of another type found in Redis (a miss, left in place)."),
    (
        "strata.uncacheable",
        "counter",
        "{value}",
        "Loaded values too large or unserializable to cache (returned, not stored).",
    ),
    (
        "strata.refreshes",
        "counter",
        "{refresh}",
        "Background refreshes by trigger (strata.trigger: early = XFetch, stale = stale-while-revalidate).",
    ),
    ("strata.refresh.errors", "counter", "{error}", "Background refreshes whose loader failed or timed out."),
    (
        "strata.invalidated_reads",
        "counter",
        "{read}",
        "Values found but not served because their namespace or a tag was invalidated after they were produced.",
    ),
    (
        "strata.namespace.invalidations",
        "counter",
        "{invalidation}",
        "Namespace invalidations made through this instance.",
    ),
    (
        "strata.invalidations",
        "counter",
        "{invalidation}",
        "L1 invalidations by kind (strata.invalidation.kind: message, message_internal_key, l1_flush).",
    ),
    ("strata.redis.errors", "counter", "{error}", "Failed Redis calls by error.type (Redis, Timeout)."),
    (
        "strata.redis.retries",
        "counter",
        "{retry}",
        "Redis calls attempted again after a try-again reply (LOADING, TRYAGAIN, CLUSTERDOWN...).",
    ),
    ("strata.redis.calls", "counter", "{call}", "Redis calls made through the breaker."),
    ("strata.redis.time", "counter", "s", "Time spent in Redis calls made through the breaker, retries included."),
    ("strata.breaker.rejections", "counter", "{call}", "Redis calls skipped because a circuit breaker was open."),
    ("strata.breaker.opens", "counter", "{open}", "Times a circuit breaker opened."),
    (
        "strata.recovery.queued",
        "counter",
        "{invalidation}",
        "Invalidations queued for replay because Redis could not take them.",
    ),
    ("strata.recovery.replayed", "counter", "{invalidation}", "Queued invalidations replayed once Redis took them."),
    (
        "strata.recovery.dropped",
        "counter",
        "{invalidation}",
        "Invalidations lost: not queued (queue full) or refused by Redis on replay.",
    ),
    ("strata.breaker.state", "gauge", "1", "Worst circuit breaker state now: 0 closed, 1 open, 2 half-open."),
    (
        "strata.breakers.open",
        "gauge",
        "{breaker}",
        "Circuit breakers within their open period now (whole Redis and per slot range).",
    ),
    ("strata.l1.entries", "gauge", "{entry}", "Entries in the in-process tier."),
    ("strata.l1.size", "gauge", "By", "Weighted bytes held by the in-process tier."),
    ("strata.l1.capacity", "gauge", "By", "Byte budget of the in-process tier (0 when disabled)."),
    ("strata.l1.coherent", "gauge", "1", "1 when L1 may serve (every invalidation connection is up), else 0."),
    (
        "strata.recovery.queue",
        "gauge",
        "{invalidation}",
        "Invalidations Redis could not take, queued in this instance for replay (auto-recovery).",
    ),
];

/// How long one snapshot serves the instruments' callbacks: a collection calls all of them
/// at once, and one snapshot then answers every instrument.
const REUSE: Duration = Duration::from_millis(100);

/// What the callbacks read: a weak handle (registering does not keep a dropped cache alive;
/// its instruments then observe nothing) and the last snapshot.
struct Source {
    cache: Weak<Inner>,
    last: Mutex<Option<(Instant, Arc<Snapshot>)>>,
}

struct Snapshot {
    metrics: MetricsSnapshot,
    l1_capacity: u64,
    /// `strata.namespace` of each namespace, in the order of `metrics.namespaces`.
    namespaces: Vec<KeyValue>,
}

impl Source {
    fn snapshot(&self) -> Option<Arc<Snapshot>> {
        let inner = self.cache.upgrade()?;
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, snapshot)) = &*last
            && at.elapsed() < REUSE
        {
            return Some(Arc::clone(snapshot));
        }
        let cache = Cache::from_inner(inner);
        let metrics = cache.metrics();
        let namespaces = metrics.namespaces.keys().map(|ns| KeyValue::new("strata.namespace", ns.clone())).collect();
        let snapshot = Arc::new(Snapshot { metrics, l1_capacity: cache.l1_capacity_bytes(), namespaces });
        *last = Some((Instant::now(), Arc::clone(&snapshot)));
        Some(snapshot)
    }
}

impl Snapshot {
    fn per_namespace(&self) -> impl Iterator<Item = (&KeyValue, &NamespaceStats)> {
        self.namespaces.iter().zip(self.metrics.namespaces.values())
    }
}

/// A value of [`MetricsSnapshot`] or of one namespace's stats, observed with attributes.
type Observe<M> = fn(&Snapshot, &dyn AsyncInstrument<M>);

impl Cache {
    /// Registers this cache's metrics ([`OTEL_METRICS`]) as asynchronous instruments on
    /// `meter`, read from [`metrics`](Self::metrics) at each collection (one snapshot per
    /// collection), next to (or instead of) the Prometheus registry of
    /// [`register_metrics`](Self::register_metrics). The callbacks keep a weak handle: a
    /// dropped cache observes nothing. Register each cache once per meter provider.
    ///
    /// The latency histograms of the Prometheus export have no counterpart here (the API has no
    /// asynchronous histogram): `strata.loader.time` and `strata.redis.time` give the totals,
    /// and the spans (`strata.get_or_set`, `strata.redis`) each call's duration.
    ///
    /// ```no_run
    /// # fn demo(cache: &strata::Cache, provider: &impl strata::opentelemetry::metrics::MeterProvider) {
    /// let meter = provider.meter("strata");
    /// cache.register_otel_metrics(&meter);
    /// # }
    /// ```
    pub fn register_otel_metrics(&self, meter: &Meter) {
        let source = Arc::new(Source { cache: Arc::downgrade(self.inner()), last: Mutex::new(None) });
        let callback = |observe: Observe<u64>| {
            let source = Arc::clone(&source);
            move |o: &dyn AsyncInstrument<u64>| {
                if let Some(s) = source.snapshot() {
                    observe(&s, o);
                }
            }
        };
        let seconds = |observe: Observe<f64>| {
            let source = Arc::clone(&source);
            move |o: &dyn AsyncInstrument<f64>| {
                if let Some(s) = source.snapshot() {
                    observe(&s, o);
                }
            }
        };
        let counters: [(&'static str, Observe<u64>); 28] = [
            ("strata.requests", |s, o| {
                for (ns, st) in s.per_namespace() {
                    for (tier, result, v) in [
                        ("l1", "hit", st.l1_hits),
                        ("l1", "miss", st.l1_misses),
                        ("l2", "hit", st.l2_hits),
                        ("l2", "miss", st.l2_misses),
                    ] {
                        let attributes =
                            [ns.clone(), KeyValue::new("strata.tier", tier), KeyValue::new("strata.result", result)];
                        o.observe(v, &attributes);
                    }
                }
            }),
            ("strata.negative_hits", |s, o| per_namespace(s, o, |st| st.negative_hits)),
            ("strata.hot_copy_hits", |s, o| per_namespace(s, o, |st| st.hot_copy_hits)),
            ("strata.stale_served", |s, o| per_namespace(s, o, |st| st.stale_served)),
            ("strata.loader.calls", |s, o| per_namespace(s, o, |st| st.loader_calls)),
            ("strata.loader.errors", |s, o| per_namespace(s, o, |st| st.loader_errors)),
            ("strata.loader.timeouts", |s, o| per_namespace(s, o, |st| st.loader_timeouts)),
            ("strata.lease.waits", |s, o| per_namespace(s, o, |st| st.lease_waits)),
            ("strata.sets", |s, o| per_namespace(s, o, |st| st.sets)),
            ("strata.deletes", |s, o| per_namespace(s, o, |st| st.deletes)),
            ("strata.writes_through", |s, o| per_namespace(s, o, |st| st.writes_through)),
            ("strata.stale_writes_refused", |s, o| per_namespace(s, o, |st| st.stale_writes_refused)),
            ("strata.corrupt_values", |s, o| per_namespace(s, o, |st| st.corrupt)),
            ("strata.type_mismatches", |s, o| per_namespace(s, o, |st| st.type_mismatches)),
            ("strata.uncacheable", |s, o| per_namespace(s, o, |st| st.uncacheable)),
            ("strata.refreshes", |s, o| {
                for (ns, st) in s.per_namespace() {
                    for (trigger, v) in [("early", st.early_refreshes), ("stale", st.stale_refreshes)] {
                        o.observe(v, &[ns.clone(), KeyValue::new("strata.trigger", trigger)]);
                    }
                }
            }),
            ("strata.refresh.errors", |s, o| per_namespace(s, o, |st| st.refresh_errors)),
            ("strata.invalidated_reads", |s, o| per_namespace(s, o, |st| st.invalidated)),
            ("strata.namespace.invalidations", |s, o| per_namespace(s, o, |st| st.invalidations)),
            ("strata.invalidations", |s, o| {
                let m = &s.metrics;
                for (kind, v) in [
                    ("message", m.invalidation_messages),
                    ("message_internal_key", m.invalidation_messages_internal),
                    ("l1_flush", m.l1_flushes),
                ] {
                    o.observe(v, &[KeyValue::new("strata.invalidation.kind", kind)]);
                }
            }),
            ("strata.redis.errors", |s, o| {
                o.observe(s.metrics.l2_errors, &[KeyValue::new("error.type", "Redis")]);
                o.observe(s.metrics.l2_timeouts, &[KeyValue::new("error.type", "Timeout")]);
            }),
            ("strata.redis.retries", |s, o| o.observe(s.metrics.l2_retries, &[])),
            ("strata.redis.calls", |s, o| o.observe(s.metrics.l2_duration.count(), &[])),
            ("strata.breaker.rejections", |s, o| o.observe(s.metrics.breaker_rejections, &[])),
            ("strata.breaker.opens", |s, o| o.observe(s.metrics.breaker_opens, &[])),
            ("strata.recovery.queued", |s, o| o.observe(s.metrics.recovery_queued, &[])),
            ("strata.recovery.replayed", |s, o| o.observe(s.metrics.recovery_replayed, &[])),
            ("strata.recovery.dropped", |s, o| o.observe(s.metrics.recovery_dropped, &[])),
        ];
        for (name, observe) in counters {
            let (unit, description) = describe(name);
            meter
                .u64_observable_counter(name)
                .with_unit(unit)
                .with_description(description)
                .with_callback(callback(observe))
                .build();
        }
        let times: [(&'static str, Observe<f64>); 2] = [
            ("strata.loader.time", |s, o| {
                for (ns, st) in s.per_namespace() {
                    o.observe(st.loader_duration.sum_seconds(), std::slice::from_ref(ns));
                }
            }),
            ("strata.redis.time", |s, o| o.observe(s.metrics.l2_duration.sum_seconds(), &[])),
        ];
        for (name, observe) in times {
            let (unit, description) = describe(name);
            meter
                .f64_observable_counter(name)
                .with_unit(unit)
                .with_description(description)
                .with_callback(seconds(observe))
                .build();
        }
        let gauges: [(&'static str, Observe<u64>); 7] = [
            ("strata.breaker.state", |s, o| o.observe(u64::from(s.metrics.breaker_state.as_gauge()), &[])),
            ("strata.breakers.open", |s, o| o.observe(s.metrics.breakers_open as u64, &[])),
            ("strata.l1.entries", |s, o| o.observe(s.metrics.l1_entries, &[])),
            ("strata.l1.size", |s, o| o.observe(s.metrics.l1_bytes, &[])),
            ("strata.l1.capacity", |s, o| o.observe(s.l1_capacity, &[])),
            ("strata.l1.coherent", |s, o| o.observe(u64::from(s.metrics.l1_coherent), &[])),
            ("strata.recovery.queue", |s, o| o.observe(s.metrics.recovery_queue, &[])),
        ];
        for (name, observe) in gauges {
            let (unit, description) = describe(name);
            meter
                .u64_observable_gauge(name)
                .with_unit(unit)
                .with_description(description)
                .with_callback(callback(observe))
                .build();
        }
    }
}

/// One value per namespace, attributed `strata.namespace`.
fn per_namespace(s: &Snapshot, o: &dyn AsyncInstrument<u64>, field: fn(&NamespaceStats) -> u64) {
    for (ns, st) in s.per_namespace() {
        o.observe(field(st), std::slice::from_ref(ns));
    }
}

/// Unit and description of an instrument of [`OTEL_METRICS`] (empty if absent: a unit test
/// keeps them in step).
fn describe(name: &str) -> (&'static str, &'static str) {
    OTEL_METRICS.iter().find(|(n, ..)| *n == name).map_or(("", ""), |(_, _, unit, description)| (*unit, *description))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_instrument_is_described_once() {
        let mut names: Vec<&str> = OTEL_METRICS.iter().map(|(n, ..)| *n).collect();
        let all = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all, "a name listed twice");
        for (name, kind, unit, description) in OTEL_METRICS {
            assert!(name.starts_with("strata.") && !name.ends_with("_total"), "{name}");
            assert!(matches!(*kind, "counter" | "gauge"), "{name}");
            assert!(!unit.is_empty() && !description.is_empty(), "{name}");
        }
    }
}
