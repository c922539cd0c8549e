//! Domain types and pure business rules: no I/O, no clock, no randomness
//! except where a value is generated on purpose (license keys).

pub mod admin;
pub mod cursor;
pub mod device;
pub mod license;
pub mod offline_activation;
pub mod payment;
// The vendor console's overview (issue 19).
pub mod overview;
pub mod plan;
// The customer portal's one-time codes (issue 19).
pub mod portal;
pub mod subscription;
// One enum for the outbox topics (SSE event names, vendor webhook event types).
pub mod topic;
// Webhooks to the vendor (issue 14).
pub mod vendor_webhook;

pub use device::{ActivationToken, Device, DeviceStatus, ValidationCode};
pub use license::{License, LicenseKey, LicenseOverrides, LicenseSource, LicenseStatus, LicenseTerms};
pub use payment::{Payment, PaymentStatus};
pub use plan::{DevicePolicy, LicenseKind, Plan, PlanCatalog, PlanId};
pub use subscription::{Subscription, SubscriptionSnapshot, SubscriptionStatus};
pub use topic::Topic;

use std::net::IpAddr;

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
        /// The address the request came from, when it came over the network.
        client_addr: Option<IpAddr>,
    },
    /// Background work of the server itself (grace expiry, heartbeat reaper).
    System,
    /// A desktop app acting on its own device (activation, deactivation):
    /// labelled `system` like the server's own work, as it always was, since
    /// the app holds no identity beyond the device the row names.
    Device {
        /// The address the request came from.
        client_addr: Option<IpAddr>,
    },
    /// A vendor's script or operator through the admin API, by token name.
    Admin {
        /// The name the token was created with.
        token_name: String,
        /// The address the request came from, when it came over the network.
        client_addr: Option<IpAddr>,
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
            Actor::User { user_id, .. } => format!("user:{user_id}"),
            Actor::System | Actor::Device { .. } => "system".to_owned(),
            Actor::Admin { token_name, .. } => format!("admin:{token_name}"),
            Actor::Backfill => "stripe:backfill".to_owned(),
        }
    }

    /// A dashboard user, acting from no known address.
    pub fn user(user_id: impl Into<String>) -> Self {
        Actor::User { user_id: user_id.into(), client_addr: None }
    }

    /// An admin token, used from no known address.
    pub fn admin(token_name: impl Into<String>) -> Self {
        Actor::Admin { token_name: token_name.into(), client_addr: None }
    }

    /// The same actor, acting from `addr` (a request of a user, an admin or an app).
    pub fn from_addr(mut self, addr: IpAddr) -> Self {
        if let Actor::User { client_addr, .. } | Actor::Admin { client_addr, .. } | Actor::Device { client_addr } =
            &mut self
        {
            *client_addr = Some(addr);
        }
        self
    }

    /// Where the request that made the change came from, for the audit trail.
    pub fn client_addr(&self) -> Option<IpAddr> {
        match self {
            Actor::User { client_addr, .. } | Actor::Admin { client_addr, .. } | Actor::Device { client_addr } => {
                *client_addr
            }
            Actor::Stripe { .. } | Actor::System | Actor::Backfill => None,
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
