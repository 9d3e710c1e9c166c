//! The hooks without the `otel` feature: nothing. Each is an empty function inlined away, each
//! wrapper hands back its future unchanged, and the operation macros expand to their body.

use std::future::Future;

use super::{Lease, Tier};

/// `traced!` without `otel`: the body, unchanged.
macro_rules! traced {
    ($name:literal, $namespace:expr, batch = $keys:expr, $kind:ident, $body:expr) => {
        $body
    };
    ($name:literal, $namespace:expr, $kind:ident, $body:expr) => {
        $body
    };
}
pub(crate) use traced;

/// `traced_batch!` without `otel`: the body, unchanged.
macro_rules! traced_batch {
    ($name:literal, $keys:expr, $kind:ident, $body:expr) => {
        $body
    };
}
pub(crate) use traced_batch;

/// The Redis call future itself.
#[inline(always)]
pub(crate) fn redis<F: Future>(_context: &str, fut: F) -> F {
    fut
}

/// The spawned future itself.
#[inline(always)]
pub(crate) fn carry<F: Future>(fut: F) -> F {
    fut
}

/// The spawned future itself.
#[inline(always)]
pub(crate) fn background<F: Future>(fut: F) -> F {
    fut
}

/// The spawned future itself.
#[inline(always)]
pub(crate) fn refresh<F: Future>(fut: F) -> F {
    fut
}

#[inline(always)]
pub(crate) fn tier(_tier: Tier) {}

#[inline(always)]
pub(crate) fn loader_called() {}

#[inline(always)]
pub(crate) fn lease(_lease: Lease) {}

#[inline(always)]
pub(crate) fn value_size(_bytes: usize) {}

#[inline(always)]
pub(crate) fn served(_tier: Tier, _bytes: usize) {}

#[inline(always)]
pub(crate) fn batch_loaded(_keys: usize) {}
