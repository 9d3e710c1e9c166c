//! Integration tests of the example service: real Redis (strata-cluster), SQLite in a temporary
//! directory, PostgreSQL when available.

mod cluster;
mod common;
mod counters;
mod db;
mod postgres;
mod products;
mod resilience;
mod sessions;
mod socket;
mod users;
