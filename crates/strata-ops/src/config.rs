//! `config` (being written).
