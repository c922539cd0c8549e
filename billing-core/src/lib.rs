//! Business rules and persistence for Stripe-synced billing and desktop licensing.
//!
//! [`Billing`] is the entry point: build it from a [`BillingConfig`] and a
//! [`storage::Store`], then call its use cases — ingest a verified Stripe
//! webhook, read a user's subscription, payments and licenses, activate,
//! validate and heartbeat devices, run dashboard actions through Stripe, and
//! subscribe to the outbox with [`events::EventHub`]. `billing-server` is a
//! thin HTTP front over exactly these calls, so they are enough to build
//! your own.
//!
//! # Cargo features
//!
//! | feature | default | what |
//! |---|---|---|
//! | `postgres` | yes | [`storage::postgres::PgStore`]: PostgreSQL, several instances on one database |
//! | `sqlite` | yes | [`storage::sqlite::SqliteStore`]: an embedded file, one instance, zero setup |
//! | `stripe-api` | yes | [`stripe::StripeClient`] and the dashboard actions in [`actions`] |
//! | `vendor-webhooks` | yes | signed webhooks to the vendor's systems: [`vendor_webhooks`] |
//!
//! # Quickstart
//!
//! An embedded store, a plan, a signed webhook in, a license out:
//!
//! ```
//! # #[cfg(all(feature = "sqlite", feature = "stripe-api"))]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use billing_core::certificate::SigningKey;
//! use billing_core::domain::{Plan, PlanCatalog};
//! use billing_core::licensing::{ActivationRequest, LicensingConfig};
//! use billing_core::storage::{sqlite::SqliteStore, Store};
//! use billing_core::stripe::WebhookSecrets;
//! use billing_core::{Billing, BillingConfig, WebhookOutcome};
//! use std::sync::Arc;
//!
//! let dir = std::env::temp_dir().join(format!("billing-quickstart-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let store = SqliteStore::open(&dir.join("billing.sqlite3")).await?;
//! store.migrate().await?;
//!
//! let plans = PlanCatalog::new(vec![Plan {
//!     amount: Some(1900),
//!     currency: Some("usd".into()),
//!     interval: Some("month".into()),
//!     features: vec!["export".into()],
//!     ..Plan::new("pro", "Pro", "price_pro", 2)
//! }])?;
//! let key = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8())?;
//! let secrets = WebhookSecrets::parse("whsec_example").expect("one secret");
//! let config = BillingConfig::new(plans, LicensingConfig::new(Arc::new(key)))
//!     .with_grace(time::Duration::days(7))
//!     .with_webhook_secrets(Some(secrets.clone()));
//! let billing = Billing::new(store, config);
//!
//! // Stripe tells us a subscription started (normally your webhook route).
//! let body = serde_json::json!({
//!     "id": "evt_1", "type": "customer.subscription.created", "created": 1_900_000_000,
//!     "data": { "object": {
//!         "id": "sub_1", "customer": "cus_1", "status": "active", "metadata": { "user_id": "user_42" },
//!         "items": { "data": [{ "id": "si_1", "price": { "id": "price_pro" },
//!                               "current_period_start": 1_900_000_000, "current_period_end": 1_902_592_000 }] }
//!     } }
//! })
//! .to_string();
//! let now = time::OffsetDateTime::now_utc().unix_timestamp();
//! let signature = secrets.sign(body.as_bytes(), now);
//! let receipt = billing.ingest_webhook(body.as_bytes(), Some(&signature)).await?;
//! assert_eq!(receipt.outcome, WebhookOutcome::Processed);
//!
//! // The user now has a license, which a desktop app activates.
//! let license = billing.licenses("user_42").await?.remove(0);
//! let activation = billing
//!     .activate(&ActivationRequest {
//!         license_key: license.key.expose(),
//!         fingerprint: "machine-1",
//!         name: Some("Laptop"),
//!         platform: None,
//!         app_version: None,
//!         client_addr: None,
//!     })
//!     .await?;
//! assert!(activation.created);
//! let validation = billing.validate(license.key.expose(), Some("machine-1")).await?;
//! assert_eq!(validation.code.as_str(), "VALID");
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! # #[cfg(not(all(feature = "sqlite", feature = "stripe-api")))]
//! # fn main() {}
//! ```

#![deny(missing_docs)]

#[cfg(feature = "stripe-api")]
pub mod actions;
pub mod admin_licenses;
pub mod admin_reads;
pub mod admin_tokens;
pub mod background;
pub mod billing;
pub mod certificate;
pub mod domain;
pub mod events;
pub mod grace;
pub mod licensing;
pub(crate) mod messages;
#[cfg(feature = "stripe-api")]
pub mod plan_check;
// The customer portal's sessions (issue 19).
pub mod portal;
// The vendor console's overview (issue 19).
pub mod overview;
pub mod reads;
pub mod storage;
pub mod stripe;
pub mod stripe_sync;
pub mod validation_view;
#[cfg(feature = "vendor-webhooks")]
pub mod vendor_webhooks;

pub use billing::{Billing, BillingConfig, WebhookError, WebhookGroupStats, WebhookOutcome, WebhookReceipt};
