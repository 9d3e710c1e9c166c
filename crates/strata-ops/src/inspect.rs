//! `inspect` (being written).
