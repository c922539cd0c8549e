//! The outbox messages the use cases write: what a license's devices and
//! the vendor's systems hear of a change. Pure.

use crate::billing::rfc3339;
use crate::domain::{License, Subscription, Topic};
use crate::storage::OutboxMessage;
use serde_json::json;
use uuid::Uuid;

/// The topic of a license's changed terms.
pub const LICENSE_UPDATED: Topic = Topic::LicenseUpdated;
/// The topic of a newly issued license (Stripe's or an admin's).
pub const LICENSE_CREATED: Topic = Topic::LicenseCreated;

/// `license.updated`: what a license's devices need to know of its terms.
pub(crate) fn license_updated(license: &License) -> OutboxMessage {
    license_message(LICENSE_UPDATED, license)
}

/// `license.updated` with why it changed (a refund, a dispute).
pub(crate) fn license_updated_because(license: &License, reason: &str) -> OutboxMessage {
    let mut message = license_updated(license);
    message.payload["reason"] = json!(reason);
    message
}

pub(crate) fn license_message(topic: Topic, license: &License) -> OutboxMessage {
    let t = &license.terms;
    OutboxMessage {
        license_id: Some(license.id),
        topic,
        payload: json!({
            "license_id": license.id,
            "status": t.status,
            "max_devices": t.max_devices,
            "plan": t.plan_id,
            "expires_at": t.expires_at.map(rfc3339),
            "grace_ends_at": t.grace_ends_at.map(rfc3339),
            "kind": license.kind,
            "updates_until": license.updates_until.map(rfc3339),
            "trial": license.trial,
        }),
    }
}

pub(crate) fn subscription_updated(license_id: Uuid, sub: &Subscription) -> OutboxMessage {
    let s = &sub.snapshot;
    OutboxMessage {
        license_id: Some(license_id),
        topic: Topic::SubscriptionUpdated,
        payload: json!({
            "license_id": license_id,
            "status": s.status,
            "cancel_at_period_end": s.cancel_at_period_end,
            "current_period_end": s.current_period_end.map(rfc3339),
            "plan": sub.plan_id,
        }),
    }
}
