//! Everything that speaks Stripe: webhook signatures, event payloads of every
//! API version we accept, and the API client.

#[cfg(feature = "stripe-api")]
pub mod client;
pub mod event;
pub mod signature;

#[cfg(feature = "stripe-api")]
pub use client::{StripeClient, StripeError};
pub use event::{Charge, CheckoutSession, Dispute, Event, EventError, EventPayload, InvoiceCharge, StripeCustomer};
pub use signature::{SignatureError, WebhookSecrets};
