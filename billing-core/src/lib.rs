//! Business rules and persistence for Stripe-synced billing and desktop licensing.
//!
//! [`Billing`] is the entry point: build it from a [`BillingConfig`] and a
//! [`storage::Store`], then call its use cases. `billing-server` is a thin
//! HTTP front over exactly these calls.

pub mod actions;
pub mod billing;
pub mod certificate;
pub mod domain;
pub mod events;
pub mod licensing;
pub mod storage;
pub mod stripe;

pub use billing::{Billing, BillingConfig, WebhookError, WebhookOutcome, WebhookReceipt};
