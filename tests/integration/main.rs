//! Integration tests: the real router, against a real PostgreSQL (one fresh database per test, from
//! `#[sqlx::test]`; `scripts/test` starts a throwaway cluster and sets DATABASE_URL).

mod support;

mod abuse;
mod access;
mod ai;
mod auth;
mod billing_clock;
mod checkout;
mod cli;
mod config_files;
mod connections;
mod dashboard;
mod delivery;
mod ingest;
mod meters;
mod openapi;
mod ops;
mod pages;
mod security;
mod stripe_double;
mod usage;
mod webhooks;
