//! Integration tests of billing-server against a real PostgreSQL: one test
//! binary, one module per feature, a fresh database per test.

mod actions;
mod auth;
mod dashboard;
mod events;
mod helpers;
mod licensing;
mod openapi;
mod ops;
mod properties;
mod webhooks;
