//! Wire formats of the admin reads (issue 14).

use super::{DeviceView, SubscriptionView};
use billing_core::admin_reads::CustomerAccount;
use billing_core::billing::rfc3339;
use billing_core::domain::device::Liveness;
use billing_core::domain::Timestamp;
use billing_core::storage::admin_reads::{AuditRecord, LicenseDetail, LicenseSummary, ListedLicense, StripeDelivery};
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
    /// The client address of the request that made the change (behind a
    /// trusted proxy, the one it names); absent for Stripe and the server.
    #[serde(skip_serializing_if = "Option::is_none")]
    client_addr: Option<String>,
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
            client_addr: e.client_addr.map(|a| a.to_string()),
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
    kind: String,
    updates_until: Option<String>,
    trial: bool,
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
            kind: l.kind.clone(),
            updates_until: l.updates_until.map(rfc3339),
            trial: l.trial,
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

/// What an admin set on a license, kept across Stripe events.
#[derive(Serialize)]
pub struct OverridesView {
    max_devices: Option<u32>,
    expires_at: Option<String>,
    suspended_at: Option<String>,
}

/// A license as the admin API shows it.
#[derive(Serialize)]
pub struct AdminLicenseView {
    id: Uuid,
    key: String,
    user_id: Option<String>,
    /// Effective at the time of the answer (a lapsed grace period reads as
    /// `suspended`, a passed hard expiry as `expired`).
    status: &'static str,
    plan: Option<String>,
    max_devices: u32,
    expires_at: Option<String>,
    grace_ends_at: Option<String>,
    entitlements: Vec<String>,
    metadata: serde_json::Map<String, Value>,
    source: &'static str,
    kind: &'static str,
    updates_until: Option<String>,
    trial: bool,
    subscription_id: Option<Uuid>,
    device_count: i64,
    overrides: OverridesView,
    created_at: String,
    updated_at: String,
}

impl AdminLicenseView {
    /// The view at `now`.
    pub fn new(listed: &ListedLicense, now: Timestamp) -> Self {
        let (record, l) = (&listed.record, &listed.record.license);
        let o = &l.overrides;
        Self {
            id: l.id,
            key: l.key.expose().to_owned(),
            user_id: record.owner_user_id.clone(),
            status: l.effective_status(now).as_str(),
            plan: l.terms.plan_id.clone(),
            max_devices: l.terms.max_devices,
            expires_at: l.terms.expires_at.map(rfc3339),
            grace_ends_at: l.terms.grace_ends_at.map(rfc3339),
            entitlements: l.entitlements.clone(),
            metadata: l.metadata.clone(),
            source: l.source.as_str(),
            kind: l.kind.as_str(),
            updates_until: l.updates_until.map(rfc3339),
            trial: l.trial,
            subscription_id: l.subscription_id,
            device_count: listed.device_count,
            overrides: OverridesView {
                max_devices: o.max_devices,
                expires_at: o.expires_at.map(rfc3339),
                suspended_at: o.suspended_at.map(rfc3339),
            },
            created_at: rfc3339(record.created_at),
            updated_at: rfc3339(record.updated_at),
        }
    }
}

/// `GET /api/admin/licenses/{id}`: the license with its devices and subscription.
#[derive(Serialize)]
pub struct AdminLicenseDetailView {
    #[serde(flatten)]
    license: AdminLicenseView,
    devices: Vec<DeviceView>,
    subscription: Option<SubscriptionView>,
}

impl AdminLicenseDetailView {
    /// The view at `now`; devices judged by `liveness` (the license's plan's).
    pub fn new(detail: &LicenseDetail, now: Timestamp, liveness: Liveness) -> Self {
        Self {
            license: AdminLicenseView::new(&detail.listed, now),
            devices: detail.devices.iter().map(|d| DeviceView::new(d, now, liveness)).collect(),
            subscription: detail.subscription.as_ref().map(SubscriptionView::from),
        }
    }
}

/// The export's columns: the CSV header, the NDJSON keys.
/// `kind`, `updates_until` and `trial` came later, so they come last.
pub const EXPORT_COLUMNS: [&str; 12] = [
    "id",
    "key",
    "user_id",
    "plan",
    "status",
    "device_count",
    "source",
    "created_at",
    "expires_at",
    "kind",
    "updates_until",
    "trial",
];

/// One NDJSON line of the export: [`EXPORT_COLUMNS`] as keys, `null` for an
/// absent user, plan, expiry or updates window.
pub fn export_ndjson(listed: &ListedLicense, now: Timestamp) -> String {
    let (record, l) = (&listed.record, &listed.record.license);
    let mut line = serde_json::json!({
        "id": l.id,
        "key": l.key.expose(),
        "user_id": record.owner_user_id,
        "plan": l.terms.plan_id,
        "status": l.effective_status(now).as_str(),
        "device_count": listed.device_count,
        "source": l.source.as_str(),
        "created_at": rfc3339(record.created_at),
        "expires_at": l.terms.expires_at.map(rfc3339),
        "kind": l.kind.as_str(),
        "updates_until": l.updates_until.map(rfc3339),
        "trial": l.trial,
    })
    .to_string();
    line.push('\n');
    line
}

/// One CSV record of the export, in [`EXPORT_COLUMNS`] order (empty for an
/// absent user, plan, expiry or updates window; `trial` as `true`/`false`).
pub fn export_csv(listed: &ListedLicense, now: Timestamp) -> String {
    let (record, l) = (&listed.record, &listed.record.license);
    let fields = [
        l.id.to_string(),
        l.key.expose().to_owned(),
        record.owner_user_id.clone().unwrap_or_default(),
        l.terms.plan_id.clone().unwrap_or_default(),
        l.effective_status(now).as_str().to_owned(),
        listed.device_count.to_string(),
        l.source.as_str().to_owned(),
        rfc3339(record.created_at),
        l.terms.expires_at.map(rfc3339).unwrap_or_default(),
        l.kind.as_str().to_owned(),
        l.updates_until.map(rfc3339).unwrap_or_default(),
        l.trial.to_string(),
    ];
    csv_record(fields.iter().map(String::as_str))
}

/// An RFC 4180 record: fields holding a comma, a quote, CR or LF are quoted,
/// quotes inside doubled; CRLF ends it.
pub fn csv_record<'a>(fields: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for (i, field) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if field.contains([',', '"', '\r', '\n']) {
            out.push('"');
            out.push_str(&field.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(field);
        }
    }
    out.push_str("\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::csv_record;

    #[test]
    fn csv_fields_are_quoted_only_when_they_must_be() {
        assert_eq!(csv_record(["a", "b c", ""]), "a,b c,\r\n");
        assert_eq!(
            csv_record(["x,y", "say \"hi\"", "two\nlines", "cr\r"]),
            "\"x,y\",\"say \"\"hi\"\"\",\"two\nlines\",\"cr\r\"\r\n"
        );
    }
}
