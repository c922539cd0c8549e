//! What a unit of work writes: the [`Changeset`] a pure decision returns
//! and a store applies atomically, each kind of row in its last state and
//! in the order the decisions made them.

use crate::domain::subscription::SubscriptionChange;
use crate::domain::{Device, DeviceStatus, License, LicenseTerms, Payment, Subscription, Timestamp};
use crate::storage::OutboxMessage;
use serde_json::Value;
use uuid::Uuid;

/// A subscription as held, with its customer's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldSubscription {
    /// The subscription.
    pub subscription: Subscription,
    /// Our id of its customer.
    pub customer_id: Uuid,
}

/// How a claimed delivery is recorded, when not as plainly `processed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryRecord {
    /// Applied, with a note (e.g. a stale snapshot).
    Noted(&'static str),
    /// A type we do not act on.
    Ignored,
    /// Not applied by this transaction: it is claimable again (e.g. a
    /// same-second snapshot that waits for Stripe's current object).
    Released(&'static str),
}

/// An audit-trail row of a subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionAudit {
    /// Our subscription id.
    pub subscription_id: Uuid,
    /// What changed.
    pub change: SubscriptionChange,
    /// `stripe`, `user:<id>`, `system`, …
    pub actor: String,
    /// The event that caused it.
    pub stripe_event_id: Option<String>,
    /// Where the request that caused it came from.
    pub client_addr: Option<std::net::IpAddr>,
}

/// A device audit row.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceAudit {
    /// The device.
    pub device_id: Uuid,
    /// Its license.
    pub license_id: Uuid,
    /// `deactivated`, …
    pub kind: &'static str,
    /// Who did it.
    pub actor: String,
    /// Details.
    pub detail: Value,
    /// Where the request that caused it came from.
    pub client_addr: Option<std::net::IpAddr>,
}

/// A customer row to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCustomer {
    /// Our id.
    pub id: Uuid,
    /// `cus_…`
    pub stripe_customer_id: String,
    /// Its user, when known.
    pub user_id: Option<String>,
}

/// A payment to store.
#[derive(Debug, Clone, PartialEq)]
pub struct PaymentUpsert {
    /// Its customer.
    pub customer_id: Uuid,
    /// What Stripe reported.
    pub payment: Payment,
    /// False when a row is held already (its status moves up).
    pub new: bool,
}

/// A Checkout purchase to record, after the license it issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPurchase {
    /// `cs_…`
    pub stripe_checkout_session_id: String,
    /// The license it issued (among the changeset's new licenses).
    pub license_id: Uuid,
    /// Our id of the buyer's customer, when the session names one.
    pub customer_id: Option<Uuid>,
    /// `pi_…`
    pub stripe_payment_intent_id: Option<String>,
}

/// What paid a subscription invoice, to record (kept if recorded before).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewInvoiceCharge {
    /// `pi_…`, or `ch_…` for a charge without a payment intent.
    pub payment_key: String,
    /// `in_…`
    pub invoice_id: String,
    /// `ch_…`, when known.
    pub charge_id: Option<String>,
}

/// A dispute of a linked charge as far as it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisputeRecord {
    /// The license the disputed charge paid for.
    pub license_id: Uuid,
    /// Stripe's status, e.g. `needs_response`, `won`, `lost`.
    pub status: String,
    /// Whether it closed: then nothing opens it again.
    pub closed: bool,
}

/// A device to write with the hash of its new activation token: a new
/// slot, or a held slot taken again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceActivation {
    /// The device as it is to be stored.
    pub device: Device,
    /// The hash of the token it now authenticates with (never the token).
    pub token_hash: Vec<u8>,
    /// When it dies if silent ([`crate::domain::device::Liveness::deadline`]):
    /// what the reaper sweeps by.
    pub heartbeat_deadline: Option<Timestamp>,
}

/// A heartbeat to record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatWrite {
    /// The device heard from.
    pub device_id: Uuid,
    /// When.
    pub at: Timestamp,
    /// Its new deadline (none for a node-locked plan).
    pub heartbeat_deadline: Option<Timestamp>,
}

/// A trial taken: the plan and machine that may never take another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrialUse {
    /// The plan's id.
    pub plan_id: String,
    /// SHA-256 of the device fingerprint.
    pub fingerprint_hash: Vec<u8>,
    /// The trial's license.
    pub license_id: Uuid,
}

/// A `license_changes` row: what happened to a license that no
/// subscription's audit trail records (admin changes, manual licenses).
#[derive(Debug, Clone, PartialEq)]
pub struct LicenseAudit {
    /// The license.
    pub license_id: Uuid,
    /// `issued`, `suspended`, `devices_reset`, …
    pub kind: &'static str,
    /// Who did it.
    pub actor: String,
    /// Details.
    pub detail: Value,
    /// Where the request that caused it came from.
    pub client_addr: Option<std::net::IpAddr>,
}

/// Every write of a unit of work, in the order the decisions made them.
/// Rows written twice (a subscription two events of one group moved) are
/// held once, in their last state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changeset {
    /// Deliveries recorded otherwise than as plainly processed.
    pub deliveries: Vec<(String, DeliveryRecord)>,
    /// Customers first seen.
    pub new_customers: Vec<NewCustomer>,
    /// Customers held without a user that are now linked to one.
    pub customer_links: Vec<(Uuid, String)>,
    /// E-mail addresses, with the `created` of the event that carried them.
    pub customer_emails: Vec<(Uuid, Option<String>, i64)>,
    /// Customers Stripe deleted.
    pub deleted_customers: Vec<Uuid>,
    /// Subscriptions to insert or update, each in its last state.
    pub subscriptions: Vec<HeldSubscription>,
    /// Audit rows, in order.
    pub subscription_audit: Vec<SubscriptionAudit>,
    /// Licenses issued.
    pub new_licenses: Vec<License>,
    /// Checkout purchases, after their licenses.
    pub new_purchases: Vec<NewPurchase>,
    /// What paid subscription invoices, recorded once per payment key.
    pub invoice_charges: Vec<NewInvoiceCharge>,
    /// Disputes, by `dp_…`, each in its last state.
    pub disputes: Vec<(String, DisputeRecord)>,
    /// Held licenses' new terms, each in its last state.
    pub license_terms: Vec<(Uuid, LicenseTerms)>,
    /// Payments, each in its last state.
    pub payments: Vec<PaymentUpsert>,
    /// Devices moved to another status (deactivated on a downgrade).
    pub device_statuses: Vec<(Uuid, DeviceStatus, Timestamp)>,
    /// Device audit rows, in order.
    pub device_audit: Vec<DeviceAudit>,
    /// Client-visible changes, in order.
    pub outbox: Vec<OutboxMessage>,
    /// Held licenses whose admin fields changed too (overrides,
    /// entitlements, metadata): written whole, terms included.
    pub saved_licenses: Vec<License>,
    /// `license_changes` rows, in order.
    pub license_audit: Vec<LicenseAudit>,
    /// Devices activated in a new slot.
    pub new_devices: Vec<DeviceActivation>,
    /// Held devices activated again: new token, details and times, active.
    pub reactivated_devices: Vec<DeviceActivation>,
    /// Heartbeats: devices heard from at a time.
    pub heartbeats: Vec<HeartbeatWrite>,
    /// Devices whose heartbeat deadline is corrected (the reaper's, after
    /// a plan's window or policy changed).
    pub device_deadlines: Vec<(Uuid, Option<Timestamp>)>,
    /// Trials taken (after the licenses they issue).
    pub trial_uses: Vec<TrialUse>,
    /// Devices renamed.
    pub device_names: Vec<(Uuid, String)>,
}

impl Changeset {
    /// Runs a decision that writes into a changeset: what a unit of work's
    /// `decide` hands back, its writes with its result.
    pub fn from_decision<R>(decide: impl FnOnce(&mut Changeset) -> R) -> (Changeset, R) {
        let mut changes = Changeset::default();
        let result = decide(&mut changes);
        (changes, result)
    }

    /// Whether nothing at all is written.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Stores `subscription`, replacing an earlier state of it in this changeset.
    pub fn save_subscription(&mut self, held: HeldSubscription) {
        match self.subscriptions.iter_mut().find(|s| s.subscription.id == held.subscription.id) {
            Some(earlier) => *earlier = held,
            None => self.subscriptions.push(held),
        }
    }

    /// Sets a license's terms: a license this changeset issues is issued
    /// with them, a held one is updated once, to the last.
    pub fn set_license_terms(&mut self, license_id: Uuid, terms: LicenseTerms) {
        // A license this changeset also writes whole is written with them
        // (the whole write comes after the terms' updates).
        if let Some(saved) = self.saved_licenses.iter_mut().find(|l| l.id == license_id) {
            saved.terms = terms.clone();
        }
        if let Some(issued) = self.new_licenses.iter_mut().find(|l| l.id == license_id) {
            issued.terms = terms;
        } else if let Some(earlier) = self.license_terms.iter_mut().find(|(id, _)| *id == license_id) {
            earlier.1 = terms;
        } else {
            self.license_terms.push((license_id, terms));
        }
    }

    /// Records a dispute's state, replacing an earlier one in this changeset.
    pub fn save_dispute(&mut self, dispute_id: &str, record: DisputeRecord) {
        match self.disputes.iter_mut().find(|(id, _)| id == dispute_id) {
            Some(earlier) => earlier.1 = record,
            None => self.disputes.push((dispute_id.to_owned(), record)),
        }
    }

    /// Stores a payment, replacing an earlier state of it in this changeset
    /// (a row this changeset inserts stays an insert).
    pub fn save_payment(&mut self, upsert: PaymentUpsert) {
        let invoice = &upsert.payment.stripe_invoice_id;
        match self.payments.iter_mut().find(|p| &p.payment.stripe_invoice_id == invoice) {
            Some(earlier) => {
                let new = earlier.new;
                *earlier = PaymentUpsert { new, ..upsert };
            }
            None => self.payments.push(upsert),
        }
    }

    /// Keeps a customer's e-mail address as of the event `created`: the
    /// newest event's address per customer (the store keeps it only if no
    /// newer one is held).
    pub fn set_customer_email(&mut self, customer_id: Uuid, email: Option<String>, created: i64) {
        match self.customer_emails.iter_mut().find(|(id, _, _)| *id == customer_id) {
            Some(earlier) if earlier.2 <= created => *earlier = (customer_id, email, created),
            Some(_) => {}
            None => self.customer_emails.push((customer_id, email, created)),
        }
    }

    /// Records how a delivery ends, replacing an earlier record of it.
    pub fn record_delivery(&mut self, event_id: &str, record: DeliveryRecord) {
        match self.deliveries.iter_mut().find(|(id, _)| id == event_id) {
            Some(earlier) => earlier.1 = record,
            None => self.deliveries.push((event_id.to_owned(), record)),
        }
    }
}
