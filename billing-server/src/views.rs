//! Wire formats. Core types are not serialized directly: these DTOs are the
//! public contract and change only by addition.

// Admin reads (issue 14).
pub mod admin_reads;

use billing_core::billing::rfc3339;
use billing_core::domain::device::Liveness;
use billing_core::domain::{Device, DeviceStatus, License, Plan, Subscription, Timestamp};
use billing_core::storage::{ChangeEntry, PaymentRecord};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

fn ts(t: Option<Timestamp>) -> Option<String> {
    t.map(rfc3339)
}

/// A subscription as the dashboard sees it.
#[derive(Serialize)]
pub struct SubscriptionView {
    id: Uuid,
    stripe_subscription_id: String,
    status: &'static str,
    plan: Option<String>,
    price_id: Option<String>,
    cancel_at_period_end: bool,
    cancel_at: Option<String>,
    canceled_at: Option<String>,
    current_period_start: Option<String>,
    current_period_end: Option<String>,
    trial_end: Option<String>,
    past_due_since: Option<String>,
}

impl From<&Subscription> for SubscriptionView {
    fn from(s: &Subscription) -> Self {
        let snap = &s.snapshot;
        Self {
            id: s.id,
            stripe_subscription_id: snap.stripe_subscription_id.clone(),
            status: snap.status.as_str(),
            plan: s.plan_id.clone(),
            price_id: snap.price_id.clone(),
            cancel_at_period_end: snap.cancel_at_period_end,
            cancel_at: ts(snap.cancel_at),
            canceled_at: ts(snap.canceled_at),
            current_period_start: ts(snap.current_period_start),
            current_period_end: ts(snap.current_period_end),
            trial_end: ts(snap.trial_end),
            past_due_since: ts(s.past_due_since),
        }
    }
}

/// An audit-trail entry.
#[derive(Serialize)]
pub struct ChangeView {
    id: i64,
    subscription_id: Uuid,
    kind: String,
    from_status: Option<String>,
    to_status: Option<String>,
    detail: Value,
    actor: String,
    stripe_event_id: Option<String>,
    created_at: String,
}

impl From<&ChangeEntry> for ChangeView {
    fn from(c: &ChangeEntry) -> Self {
        Self {
            id: c.id,
            subscription_id: c.subscription_id,
            kind: c.kind.clone(),
            from_status: c.from_status.clone(),
            to_status: c.to_status.clone(),
            detail: c.detail.clone(),
            actor: c.actor.clone(),
            stripe_event_id: c.stripe_event_id.clone(),
            created_at: rfc3339(c.created_at),
        }
    }
}

/// A payment.
#[derive(Serialize)]
pub struct PaymentView {
    id: Uuid,
    amount: i64,
    currency: String,
    status: &'static str,
    stripe_invoice_id: String,
    stripe_subscription_id: Option<String>,
    paid_at: Option<String>,
    created_at: String,
}

impl From<&PaymentRecord> for PaymentView {
    fn from(p: &PaymentRecord) -> Self {
        Self {
            id: p.id,
            amount: p.payment.amount,
            currency: p.payment.currency.clone(),
            status: p.payment.status.as_str(),
            stripe_invoice_id: p.payment.stripe_invoice_id.clone(),
            stripe_subscription_id: p.payment.stripe_subscription_id.clone(),
            paid_at: ts(p.payment.paid_at),
            created_at: rfc3339(p.created_at),
        }
    }
}

/// A license, shown to its owner with its key.
#[derive(Serialize)]
pub struct LicenseView {
    id: Uuid,
    key: String,
    status: &'static str,
    plan: Option<String>,
    max_devices: u32,
    expires_at: Option<String>,
    grace_ends_at: Option<String>,
    kind: &'static str,
    updates_until: Option<String>,
    trial: bool,
    devices: Vec<DeviceView>,
}

impl LicenseView {
    /// The view at `now` (grace expiry shows as `suspended`), with the
    /// license's devices.
    pub fn new(license: &License, devices: Vec<DeviceView>, now: Timestamp) -> Self {
        let t = &license.terms;
        Self {
            id: license.id,
            key: license.key.expose().to_owned(),
            status: license.effective_status(now).as_str(),
            plan: t.plan_id.clone(),
            max_devices: t.max_devices,
            expires_at: ts(t.expires_at),
            grace_ends_at: ts(t.grace_ends_at),
            kind: license.kind.as_str(),
            updates_until: ts(license.updates_until),
            trial: license.trial,
            devices,
        }
    }
}

/// A plan on sale.
#[derive(Serialize)]
pub struct PlanView<'a> {
    id: &'a str,
    name: &'a str,
    stripe_price_id: &'a str,
    max_devices: u32,
    amount: Option<i64>,
    currency: Option<&'a str>,
    interval: Option<&'a str>,
    features: &'a [String],
    kind: &'static str,
    updates_months: Option<u32>,
    device_policy: &'static str,
    trial_days: Option<u32>,
}

impl<'a> From<&'a Plan> for PlanView<'a> {
    fn from(p: &'a Plan) -> Self {
        Self {
            id: p.id.as_str(),
            name: &p.name,
            stripe_price_id: &p.stripe_price_id,
            max_devices: p.max_devices,
            amount: p.amount,
            currency: p.currency.as_deref(),
            interval: p.interval.as_deref(),
            features: &p.features,
            kind: p.kind.as_str(),
            updates_months: p.updates_months,
            device_policy: p.device_policy.as_str(),
            trial_days: p.trial_days,
        }
    }
}

/// A device, for its app and for the dashboard's terminals.
#[derive(Serialize)]
pub struct DeviceView {
    id: Uuid,
    license_id: Uuid,
    fingerprint: String,
    name: Option<String>,
    platform: Option<String>,
    app_version: Option<String>,
    status: &'static str,
    alive: bool,
    activated_at: String,
    last_seen_at: String,
    deactivated_at: Option<String>,
    air_gapped: bool,
}

impl DeviceView {
    /// The view at `now`, judged by its license's `liveness`.
    pub fn new(d: &Device, now: Timestamp, liveness: Liveness) -> Self {
        let status = if d.is_overdue(now, liveness) { DeviceStatus::Dead } else { d.status };
        Self {
            id: d.id,
            license_id: d.license_id,
            fingerprint: d.fingerprint.clone(),
            name: d.name.clone(),
            platform: d.platform.clone(),
            app_version: d.app_version.clone(),
            status: status.as_str(),
            alive: d.is_alive(now, liveness),
            activated_at: rfc3339(d.activated_at),
            last_seen_at: rfc3339(d.last_heartbeat_at),
            deactivated_at: ts(d.deactivated_at),
            air_gapped: d.air_gapped,
        }
    }
}

/// A license as its desktop app sees it (no key: the app has it).
#[derive(Serialize)]
pub struct LicenseInfo {
    id: Uuid,
    status: &'static str,
    plan: Option<String>,
    max_devices: u32,
    expires_at: Option<String>,
    grace_ends_at: Option<String>,
    entitlements: Vec<String>,
    kind: &'static str,
    updates_until: Option<String>,
    trial: bool,
}

impl LicenseInfo {
    /// The view at `now`.
    pub fn new(license: &License, entitlements: Vec<String>, now: Timestamp) -> Self {
        let t = &license.terms;
        Self {
            id: license.id,
            status: license.effective_status(now).as_str(),
            plan: t.plan_id.clone(),
            max_devices: t.max_devices,
            expires_at: ts(t.expires_at),
            grace_ends_at: ts(t.grace_ends_at),
            entitlements,
            kind: license.kind.as_str(),
            updates_until: ts(license.updates_until),
            trial: license.trial,
        }
    }
}
