//! OpenTelemetry, behind the `otel` feature (docs/decisions/0020-opentelemetry.md): a span per
//! cache operation, a client span per Redis call inside one, and the cache's metrics through the
//! OpenTelemetry metrics API ([`Cache::register_otel_metrics`](crate::Cache::register_otel_metrics)).
//!
//! Spans are [`tracing`] spans (target `strata`, level INFO; Redis calls and background stores:
//! target `strata::redis`, level DEBUG) whose fields follow OpenTelemetry's conventions and the
//! special fields of `tracing-opentelemetry` (`otel.kind`, `otel.name`, `otel.status_code`): an
//! application bridges them with `tracing-opentelemetry`, and each operation's span is a child
//! of the application's current span (an HTTP request's, say).
//!
//! The facts of an operation are known deep in the read and load paths (which tier answered,
//! whether the loader ran, what the lease did, how large the value was). They are noted there
//! by one-line hooks ([`tier`], [`loader_called`], [`lease`], [`value_size`], [`batch_loaded`])
//! into the operation's `Facts` (`spans.rs`), a task-local of the operation's future, and written
//! to its span once, when it ends: each attribute is recorded once (tracing-opentelemetry
//! appends a field recorded twice), and a caller that joined another caller's load in this
//! process, whose own path noted nothing, is told apart (`strata.tier = "flight"`).
//!
//! Without the feature every hook is an empty `#[inline(always)]` function and every wrapper
//! returns the future it was given: nothing is added to any path, the L1 hit's included.

#[cfg(feature = "otel")]
mod metrics;
#[cfg(not(feature = "otel"))]
mod off;
#[cfg(feature = "otel")]
mod spans;

#[cfg(feature = "otel")]
pub use metrics::OTEL_METRICS;
#[cfg(not(feature = "otel"))]
pub(crate) use off::*;
#[cfg(feature = "otel")]
pub(crate) use spans::*;

/// Which tier answered a single-key operation: the span's `strata.tier`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "otel"), allow(dead_code))]
pub(crate) enum Tier {
    /// Nothing noted yet.
    Unset = 0,
    /// The in-process tier.
    L1,
    /// One of a hot key's copies in Redis.
    Hot,
    /// Redis (the key itself), including a value another process loaded while this one waited.
    L2,
    /// This call's loader.
    Loader,
    /// A value past its logical expiry (stale-while-revalidate, fail-safe).
    Stale,
}

impl Tier {
    #[cfg_attr(not(feature = "otel"), allow(dead_code))]
    const ALL: [Tier; 6] = [Tier::Unset, Tier::L1, Tier::Hot, Tier::L2, Tier::Loader, Tier::Stale];
}

/// What the cross-process lease did for a miss: the span's `strata.lease`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "otel"), allow(dead_code))]
pub(crate) enum Lease {
    /// Nothing noted: no lease was needed (a hit, leases off).
    Unset = 0,
    /// This call took the lease and ran the loader.
    Acquired,
    /// Another process held the lease (or had just stored): its value was used.
    Waited,
    /// Loaded without the lease: waited `max_wait` in vain, or the key held a value this caller
    /// cannot use.
    LoadedAlone,
    /// Redis failed during coordination: loaded without the lease, nothing stored.
    Unavailable,
}

impl Lease {
    #[cfg_attr(not(feature = "otel"), allow(dead_code))]
    const ALL: [Lease; 5] = [Lease::Unset, Lease::Acquired, Lease::Waited, Lease::LoadedAlone, Lease::Unavailable];
}

/// What an operation is, for what its span records when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "otel"), allow(dead_code))]
pub(crate) enum Kind {
    /// A read without a loader (`get`): nothing found is `strata.tier = "miss"`.
    Read,
    /// A read with a loader (`get_or_set` and kin): `strata.loader.called` is always recorded,
    /// and a value no tier of this call's noted came from a load another caller ran in this
    /// process (`strata.tier = "flight"`).
    Load,
    /// A write or a removal: no tier.
    Write,
}
