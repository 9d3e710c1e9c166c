//! `invalidate` (being written).
