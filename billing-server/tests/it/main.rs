//! Integration tests of billing-server against a real PostgreSQL: one test
//! binary, one module per feature, a fresh database per test.

mod actions;
// Admin reads (issue 14).
mod admin_auth;
mod admin_reads;
mod air_gapped;
// Admin license writes (issue 14).
mod admin_licenses;
mod auth;
// The configuration file (issue 16).
mod config_file;
// The Stripe backfill and plan check (issue 16).
mod backfill;
mod dashboard;
mod events;
// Deliveries applied together (group commit).
mod groups;
mod helpers;
mod hostile_http;
mod licensing;
mod lifecycles;
mod openapi;
// TLS to PostgreSQL (issue 16).
mod ops;
mod ordering;
mod pg_tls;
// Perpetual purchases, refunds and disputes (issue 17).
mod perpetual;
// What plans say about their licenses (issue 17).
mod policy;
// The customer portal's sessions (issue 19).
mod portal;
mod properties;
mod proxies;
mod quickstart;
mod storm;
mod stripe_world;
// Refunds and disputes of subscription invoices (issue 17).
mod subscription_disputes;
// Card-less trials (issue 17).
mod trials;
// Webhooks to the vendor (issue 14).
mod vendor_webhooks;
mod webhooks;
// Validation from memory (issue 18).
mod validation_view;
