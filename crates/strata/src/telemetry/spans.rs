//! The spans (feature `otel`): one per cache operation, made at the public entry points
//! ([`op_span!`], [`op`], [`batch_op`]), a client span per Redis call made for one
//! ([`redis`]), and spans for the work an operation leaves to a task ([`carry`],
//! [`background`], [`refresh`]).
//!
//! What the operation did is noted into its [`Facts`] by the hooks of the read and load paths
//! and recorded on its span once, as it ends. An operation whose span is disabled (no
//! subscriber, or filtered out) costs one callsite check and keeps no facts: the hooks then
//! find no task-local and return.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed};

use futures_util::future::Either;
use tracing::field::{Empty, debug, display};
use tracing::{Instrument, Span};

use super::{Kind, Lease, Tier};
use crate::error::{Error, Result};

/// The span of one cache operation: target `strata`, level INFO, named `$name` (`strata.get`,
/// ...), with every attribute a later record may fill declared empty (a field not declared at
/// creation cannot be recorded). `$namespace`: a `&str` or an `Option<&str>`; `batch = n`: the
/// number of keys of a batch. The arguments are evaluated only when the span is enabled.
macro_rules! op_span {
    ($name:literal, $namespace:expr) => {
        $crate::telemetry::op_span!($name, $namespace, batch = ::tracing::field::Empty)
    };
    ($name:literal, $namespace:expr, batch = $keys:expr) => {
        ::tracing::info_span!(
            target: "strata",
            $name,
            otel.kind = "internal",
            otel.status_code = ::tracing::field::Empty,
            otel.status_description = ::tracing::field::Empty,
            error.type = ::tracing::field::Empty,
            strata.namespace = $namespace,
            strata.tier = ::tracing::field::Empty,
            strata.loader.called = ::tracing::field::Empty,
            strata.lease = ::tracing::field::Empty,
            strata.value.size = ::tracing::field::Empty,
            strata.batch.size = $keys,
            strata.batch.found = ::tracing::field::Empty,
            strata.batch.loaded = ::tracing::field::Empty,
        )
    };
}
pub(crate) use op_span;

/// Runs `$body` (an expression of type `Result<_>`, which may use `?` and `.await`) as one
/// cache operation: `traced!("strata.get", key.namespace(), Read, body)`, with `batch = n,`
/// before the kind for a batch. Without `otel`, the body itself; with it and the span disabled
/// (no subscriber, `strata` filtered out), the body inline, after the span's callsite check: a
/// wrapper, or even an `async` block awaited, moves the operation's future (kilobytes), which
/// cost an L1 hit 24-35 ns (`examples/otel_cost.rs`). The price: the body is compiled twice,
/// and the caller's future type is deeper (the integration tests need
/// `#![recursion_limit = "256"]` with the feature).
macro_rules! traced {
    ($name:literal, $namespace:expr, batch = $keys:expr, $kind:ident, $body:expr) => {
        $crate::telemetry::traced!(@run op, $crate::telemetry::op_span!($name, $namespace, batch = $crate::telemetry::int($keys)), $kind, $body)
    };
    ($name:literal, $namespace:expr, $kind:ident, $body:expr) => {
        $crate::telemetry::traced!(@run op, $crate::telemetry::op_span!($name, $namespace), $kind, $body)
    };
    (@run $op:ident, $span:expr, $kind:ident, $body:expr) => {{
        let span = $span;
        if span.is_disabled() {
            $body
        } else {
            $crate::telemetry::$op(span, $crate::telemetry::Kind::$kind, async { $body }).await
        }
    }};
}
pub(crate) use traced;

/// [`traced!`] for a batch read answering `Result<Vec<Option<_>>>` over `$keys`: its span
/// records how many keys were found (`strata.batch.found`), and the namespace when every key
/// shares one.
macro_rules! traced_batch {
    ($name:literal, $keys:expr, $kind:ident, $body:expr) => {
        $crate::telemetry::traced!(
            @run batch_op,
            $crate::telemetry::op_span!(
                $name,
                $crate::telemetry::common_namespace($keys),
                batch = $crate::telemetry::int($keys.len())
            ),
            $kind,
            $body
        )
    };
}
pub(crate) use traced_batch;

/// The namespace every key of a batch shares, if one.
pub(crate) fn common_namespace(keys: &[crate::key::Key]) -> Option<&str> {
    let first = keys.first()?.namespace();
    keys.iter().all(|k| k.namespace() == first).then_some(first)
}

/// What one operation did, noted where each fact is known and recorded on its span at its end.
#[derive(Debug, Default)]
pub(crate) struct Facts {
    /// A [`Tier`].
    tier: AtomicU8,
    loader: AtomicBool,
    /// A [`Lease`].
    lease: AtomicU8,
    /// The serialized size of the value last decoded or encoded, plus one (0: none).
    size: AtomicU64,
    /// Keys given to a batch loader.
    loaded: AtomicU64,
}

tokio::task_local! {
    /// The facts of the operation this task is running (none outside one).
    static OP: Arc<Facts>;
}

/// Notes a fact of the running operation, if any (and if its span is enabled).
#[inline]
fn note(fact: impl FnOnce(&Facts)) {
    let _ = OP.try_with(|facts| fact(facts));
}

/// Which tier answered (the last one noted wins: a value served stale after a failed load).
#[inline]
pub(crate) fn tier(tier: Tier) {
    note(|f| f.tier.store(tier as u8, Relaxed));
}

/// This operation's loader ran.
#[inline]
pub(crate) fn loader_called() {
    note(|f| {
        f.loader.store(true, Relaxed);
        f.tier.store(Tier::Loader as u8, Relaxed);
    });
}

/// What the lease did for this miss.
#[inline]
pub(crate) fn lease(lease: Lease) {
    note(|f| f.lease.store(lease as u8, Relaxed));
}

/// The serialized size of the value decoded or encoded (the last one wins).
#[inline]
pub(crate) fn value_size(bytes: usize) {
    note(|f| f.size.store(u64::try_from(bytes).unwrap_or(u64::MAX).saturating_add(1), Relaxed));
}

/// A tier answered with a value whose envelope has `bytes` bytes.
#[inline]
pub(crate) fn served(tier: Tier, bytes: usize) {
    note(|f| {
        f.tier.store(tier as u8, Relaxed);
        f.size.store(u64::try_from(bytes).unwrap_or(u64::MAX).saturating_add(1), Relaxed);
    });
}

/// A batch loader was called with `keys` keys.
#[inline]
pub(crate) fn batch_loaded(keys: usize) {
    note(|f| {
        f.loader.store(true, Relaxed);
        f.loaded.fetch_add(u64::try_from(keys).unwrap_or(u64::MAX), Relaxed);
    });
}

/// Runs one operation in `span` (enabled: see [`traced!`]), its facts recorded on the span as
/// it ends.
pub(crate) async fn op<X>(span: Span, kind: Kind, fut: impl Future<Output = Result<X>>) -> Result<X> {
    let facts = Arc::new(Facts::default());
    let out = OP.scope(Arc::clone(&facts), fut).instrument(span.clone()).await;
    facts.record(&span, kind, false, out.as_ref().map(drop));
    out
}

/// Runs one batch operation in `span` (enabled): how many keys were found (`strata.batch.found`) and
/// loaded are recorded as it ends.
pub(crate) async fn batch_op<T>(
    span: Span,
    kind: Kind,
    fut: impl Future<Output = Result<Vec<Option<T>>>>,
) -> Result<Vec<Option<T>>> {
    let facts = Arc::new(Facts::default());
    let out = OP.scope(Arc::clone(&facts), fut).instrument(span.clone()).await;
    if let Ok(values) = &out {
        span.record("strata.batch.found", int(values.iter().filter(|v| v.is_some()).count()));
    }
    facts.record(&span, kind, true, out.as_ref().map(drop));
    out
}

impl Facts {
    fn record(&self, span: &Span, kind: Kind, batch: bool, outcome: std::result::Result<(), &Error>) {
        let tier = Tier::ALL.get(usize::from(self.tier.load(Relaxed))).copied().unwrap_or(Tier::Unset);
        let tier = match (kind, tier) {
            _ if batch => None,
            (Kind::Write, _) => None,
            (_, Tier::Unset) if outcome.is_err() => None,
            (Kind::Read, Tier::Unset) => Some("miss"),
            // Nothing of this call's path answered: it shared another caller's load.
            (Kind::Load, Tier::Unset) => Some("flight"),
            (_, tier) => Some(tier.name()),
        };
        if let Some(tier) = tier {
            span.record("strata.tier", tier);
        }
        if kind == Kind::Load {
            span.record("strata.loader.called", self.loader.load(Relaxed));
            if batch {
                span.record("strata.batch.loaded", int(self.loaded.load(Relaxed)));
            }
        }
        let lease = Lease::ALL.get(usize::from(self.lease.load(Relaxed))).copied().unwrap_or(Lease::Unset);
        if lease != Lease::Unset {
            span.record("strata.lease", lease.name());
        }
        if let Some(size) = self.size.load(Relaxed).checked_sub(1) {
            span.record("strata.value.size", int(size));
        }
        if let Err(err) = outcome {
            record_error(span, err);
        }
    }
}

/// A count as an `i64`: tracing-opentelemetry exports a `u64` or `usize` field as a string.
pub(crate) fn int(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// An error's attributes: status ERROR, `error.type` the [`ErrorKind`](crate::ErrorKind)
/// (`Timeout`, `CircuitOpen`, `Loader`, ...), the message as the status description.
fn record_error(span: &Span, err: &Error) {
    span.record("otel.status_code", "ERROR");
    span.record("error.type", debug(err.kind()));
    span.record("otel.status_description", display(err));
}

/// A Redis call made for an operation: a client span per the database conventions
/// (`db.system.name = "redis"`, `db.operation.name`: the command, or the name Strata gives a
/// pipeline or script, e.g. `lease acquire + GET`), target `strata::redis`, level DEBUG. Calls
/// made outside an operation (supervisors, replays, write-behind) get none: they would each
/// start a trace of their own.
pub(crate) fn redis<'a, T: 'a>(
    context: &'a str,
    fut: impl Future<Output = Result<T>> + 'a,
) -> impl Future<Output = Result<T>> + 'a {
    let span = match OP.try_with(|_| ()) {
        Ok(()) => tracing::debug_span!(
            target: "strata::redis",
            "strata.redis",
            otel.name = context,
            otel.kind = "client",
            otel.status_code = Empty,
            otel.status_description = Empty,
            error.type = Empty,
            db.system.name = "redis",
            db.operation.name = context,
        ),
        Err(_) => Span::none(),
    };
    // One async block (no `Either` around it): every type of nesting here deepens every
    // operation's future, which an application proves `Send` (see the ADR's consequences).
    async move {
        if span.is_disabled() {
            return fut.await;
        }
        let out = fut.instrument(span.clone()).await;
        if let Err(err) = &out {
            record_error(&span, err);
        }
        out
    }
}

/// The part of an operation run in a task it awaits (`get_or_refresh`'s load): its facts are
/// the operation's, its Redis calls children of a `strata.load` span under the operation's.
pub(crate) fn carry<F: Future>(fut: F) -> impl Future<Output = F::Output> {
    match OP.try_with(Arc::clone) {
        Ok(facts) => {
            let span = tracing::debug_span!(target: "strata::redis", "strata.load", otel.kind = "internal");
            Either::Left(OP.scope(facts, fut.instrument(span)))
        }
        Err(_) => Either::Right(fut),
    }
}

/// Work an operation leaves to a task once its caller has the answer (the store of a loaded
/// value, a lease given back): a `strata.store` span under the operation's, so that its Redis
/// calls are traced, and which does not stretch the operation's own span.
pub(crate) fn background<F: Future>(fut: F) -> impl Future<Output = F::Output> {
    match OP.try_with(|_| ()) {
        Ok(()) => {
            let span = tracing::debug_span!(target: "strata::redis", "strata.store", otel.kind = "internal");
            Either::Left(OP.scope(Arc::default(), fut.instrument(span)))
        }
        Err(_) => Either::Right(fut),
    }
}

/// A background refresh started by an operation (`get_or_refresh`): a `strata.refresh` span
/// under the operation's.
pub(crate) fn refresh<F: Future>(fut: F) -> impl Future<Output = F::Output> {
    match OP.try_with(|_| ()) {
        Ok(()) => {
            let span = tracing::debug_span!(target: "strata::redis", "strata.refresh", otel.kind = "internal");
            Either::Left(OP.scope(Arc::default(), fut.instrument(span)))
        }
        Err(_) => Either::Right(fut),
    }
}

impl Tier {
    /// The value of `strata.tier`.
    fn name(self) -> &'static str {
        match self {
            Tier::Unset => "unset",
            Tier::L1 => "l1",
            Tier::Hot => "hot",
            Tier::L2 => "l2",
            Tier::Loader => "loader",
            Tier::Stale => "stale",
        }
    }
}

impl Lease {
    /// The value of `strata.lease`.
    fn name(self) -> &'static str {
        match self {
            Lease::Unset => "none",
            Lease::Acquired => "acquired",
            Lease::Waited => "waited",
            Lease::LoadedAlone => "loaded_alone",
            Lease::Unavailable => "unavailable",
        }
    }
}
