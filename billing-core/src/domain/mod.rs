//! Domain types and pure business rules: no I/O, no clock, no randomness
//! except where a value is generated on purpose (license keys).

pub mod admin;
pub mod cursor;
pub mod device;
pub mod license;
pub mod payment;
pub mod plan;
pub mod subscription;
// One enum for the outbox topics (SSE event names, vendor webhook event types).
pub mod topic;
// Webhooks to the vendor (issue 14).
pub mod vendor_webhook;

pub use device::{ActivationToken, Device, DeviceStatus, ValidationCode};
pub use license::{License, LicenseKey, LicenseOverrides, LicenseSource, LicenseStatus, LicenseTerms};
pub use payment::{Payment, PaymentStatus};
pub use plan::{Plan, PlanCatalog, PlanId};
pub use subscription::{Subscription, SubscriptionSnapshot, SubscriptionStatus};
pub use topic::Topic;

/// A point in time. All timestamps in the domain are UTC.
pub type Timestamp = time::OffsetDateTime;

/// Converts Stripe's Unix seconds into a [`Timestamp`], refusing values outside
/// the representable range instead of panicking.
pub fn from_unix(seconds: i64) -> Option<Timestamp> {
    Timestamp::from_unix_timestamp(seconds).ok()
}

/// Who caused a change recorded in the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A Stripe webhook delivery, by event id.
    Stripe {
        /// `evt_…`
        event_id: String,
    },
    /// A dashboard user acting on their own (or, as an admin, another) account.
    User {
        /// The acting user (the admin, when an admin acts for someone).
        user_id: String,
    },
    /// Background work of the server itself (grace expiry, heartbeat reaper).
    System,
    /// A vendor's script or operator through the admin API, by token name.
    Admin {
        /// The name the token was created with.
        token_name: String,
    },
    /// `billing-server stripe sync`: an object read from Stripe's list
    /// endpoints (no event behind it).
    Backfill,
}

impl Actor {
    /// The audit-trail spelling: `stripe`, `user:<id>`, `system`,
    /// `admin:<token name>` or `stripe:backfill`.
    pub fn label(&self) -> String {
        match self {
            Actor::Stripe { .. } => "stripe".to_owned(),
            Actor::User { user_id } => format!("user:{user_id}"),
            Actor::System => "system".to_owned(),
            Actor::Admin { token_name } => format!("admin:{token_name}"),
            Actor::Backfill => "stripe:backfill".to_owned(),
        }
    }

    /// The Stripe event id when the change came from a webhook.
    pub fn stripe_event_id(&self) -> Option<&str> {
        match self {
            Actor::Stripe { event_id } => Some(event_id),
            _ => None,
        }
    }
}
