//! Wire formats of the admin reads (issue 14).

use super::SubscriptionView;
use billing_core::admin_reads::CustomerAccount;
use billing_core::billing::rfc3339;
use billing_core::storage::admin_reads::{AuditRecord, LicenseSummary, StripeDelivery};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// A recorded Stripe delivery.
#[derive(Serialize)]
pub struct StripeDeliveryView {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    object_id: Option<String>,
    status: String,
    attempts: i32,
    error: Option<String>,
    note: Option<String>,
    duplicates: i32,
    received_at: String,
    processed_at: Option<String>,
}

impl From<&StripeDelivery> for StripeDeliveryView {
    fn from(d: &StripeDelivery) -> Self {
        Self {
            id: d.id.clone(),
            kind: d.kind.clone(),
            object_id: d.object_id.clone(),
            status: d.status.clone(),
            attempts: d.attempts,
            error: d.error.clone(),
            note: d.note.clone(),
            duplicates: d.duplicates,
            received_at: rfc3339(d.received_at),
            processed_at: d.processed_at.map(rfc3339),
        }
    }
}

/// One entry of the audit trail, from whichever table it comes.
#[derive(Serialize)]
pub struct AuditEntryView {
    /// `sub_<n>`, `dev_<n>` or `lic_<n>`: unique across the three tables.
    id: String,
    at: String,
    actor: String,
    action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    license_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subscription_id: Option<Uuid>,
    detail: Value,
}

impl From<&AuditRecord> for AuditEntryView {
    fn from(e: &AuditRecord) -> Self {
        // A subscription change keeps its statuses and Stripe event, a
        // device change its device, in columns of their own; the entry
        // carries them in its detail, so every entry has one shape.
        let mut detail = match &e.detail {
            Value::Object(map) => map.clone(),
            Value::Null => serde_json::Map::new(),
            other => serde_json::Map::from_iter([("value".to_owned(), other.clone())]),
        };
        for (name, value) in
            [("from_status", &e.from_status), ("to_status", &e.to_status), ("stripe_event_id", &e.stripe_event_id)]
        {
            if let Some(value) = value {
                detail.entry(name).or_insert_with(|| Value::String(value.clone()));
            }
        }
        if let Some(device_id) = e.device_id {
            detail.entry("device_id").or_insert_with(|| Value::String(device_id.to_string()));
        }
        Self {
            id: format!("{}_{}", e.source.prefix(), e.id),
            at: rfc3339(e.at),
            actor: e.actor.clone(),
            action: e.kind.clone(),
            license_id: e.license_id,
            subscription_id: e.subscription_id,
            detail: Value::Object(detail),
        }
    }
}

/// A license as a customer listing shows it: no key (`customers:read` does
/// not grant license keys; `licenses:read` does, on the license routes).
#[derive(Serialize)]
pub struct CustomerLicenseView {
    id: Uuid,
    source: String,
    status: String,
    plan: Option<String>,
    max_devices: i32,
    expires_at: Option<String>,
    subscription_id: Option<Uuid>,
    created_at: String,
}

impl From<&LicenseSummary> for CustomerLicenseView {
    fn from(l: &LicenseSummary) -> Self {
        Self {
            id: l.id,
            source: l.source.clone(),
            status: l.status.clone(),
            plan: l.plan_id.clone(),
            max_devices: l.max_devices,
            expires_at: l.expires_at.map(rfc3339),
            subscription_id: l.subscription_id,
            created_at: rfc3339(l.created_at),
        }
    }
}

/// A customer with its subscriptions and licenses.
#[derive(Serialize)]
pub struct CustomerView {
    user_id: Option<String>,
    stripe_customer_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<String>,
    subscriptions: Vec<SubscriptionView>,
    licenses: Vec<CustomerLicenseView>,
}

impl From<&CustomerAccount> for CustomerView {
    fn from(a: &CustomerAccount) -> Self {
        Self {
            user_id: a.customer.user_id.clone(),
            stripe_customer_id: a.customer.stripe_customer_id.clone(),
            email: a.customer.email.clone(),
            subscriptions: a.subscriptions.iter().map(SubscriptionView::from).collect(),
            licenses: a.licenses.iter().map(CustomerLicenseView::from).collect(),
        }
    }
}
