//! `status` (being written).
