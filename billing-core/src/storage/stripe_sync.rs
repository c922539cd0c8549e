//! The storage seam of the Stripe units of work: what a group of Stripe
//! inputs (webhook deliveries, snapshots the API just returned) needs
//! *loaded*, the [`StripeBundle`] the store hands to the pure decision, and
//! the [`Changeset`] the decision hands back to be *applied*.
//!
//! [`Store::sync_stripe`](super::Store::sync_stripe) runs the three steps as
//! one transaction: load (claim the deliveries, lock and read every row the
//! group touches, in the one lock order), decide (a plain function, no I/O),
//! apply (every write of the changeset, then commit). On PostgreSQL the load
//! is one pipelined round trip and the apply with its `COMMIT` another; on
//! SQLite the three run in one blocking call on the writer connection.

use crate::domain::subscription::SubscriptionChange;
use crate::domain::{Device, DeviceStatus, License, LicenseTerms, Payment, PaymentStatus, Subscription, Timestamp};
use crate::storage::OutboxMessage;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap, HashSet};
use uuid::Uuid;

/// A delivery to claim: the envelope facts recorded for deduplication and
/// the body, kept so that it can be replayed.
#[derive(Debug, Clone)]
pub struct DeliveryClaim {
    /// `evt_…`
    pub id: String,
    /// Event type.
    pub kind: String,
    /// Stripe's `created`.
    pub created: i64,
    /// Payload API version.
    pub api_version: Option<String>,
    /// `data.object.id`, when the object has one.
    pub object_id: Option<String>,
    /// The body as received.
    pub payload: bytes::Bytes,
}

/// What a group needs: the deliveries to claim and the Stripe ids whose
/// rows are locked and read. Ids are kept sorted, which is the order their
/// locks are taken in (so two groups cannot wait on each other).
#[derive(Debug, Clone, Default)]
pub struct StripeKeys {
    /// Deliveries to claim, at most one per event id, sorted by id.
    pub deliveries: Vec<DeliveryClaim>,
    /// `sub_…`: locked (also when no row exists yet), with their licenses
    /// and the devices of those.
    pub subscriptions: BTreeSet<String>,
    /// `cus_…`: locked when they exist.
    pub customers: BTreeSet<String>,
    /// `in_…`: the payments held for them, locked.
    pub invoices: BTreeSet<String>,
}

impl StripeKeys {
    /// Adds a delivery to claim; false when the group already claims it.
    pub fn claim(&mut self, claim: DeliveryClaim) -> bool {
        match self.deliveries.binary_search_by(|c| c.id.as_str().cmp(&claim.id)) {
            Ok(_) => false,
            Err(at) => {
                self.deliveries.insert(at, claim);
                true
            }
        }
    }
}

/// A customer as held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldCustomer {
    /// Our id.
    pub id: Uuid,
    /// The dashboard user it is linked to.
    pub user_id: Option<String>,
}

/// A subscription as held, with its customer's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldSubscription {
    /// The subscription.
    pub subscription: Subscription,
    /// Our id of its customer.
    pub customer_id: Uuid,
}

/// Everything a group's decisions read, locked for the transaction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StripeBundle {
    /// Event ids this transaction claimed (new, or failed before). Any other
    /// delivery of the group was applied already: a duplicate.
    pub claimed: HashSet<String>,
    /// By Stripe subscription id.
    pub subscriptions: HashMap<String, HeldSubscription>,
    /// By our subscription id.
    pub licenses: HashMap<Uuid, License>,
    /// By license id, oldest activation first.
    pub devices: HashMap<Uuid, Vec<Device>>,
    /// By Stripe customer id.
    pub customers: HashMap<String, HeldCustomer>,
    /// Stripe subscription ids with a paid invoice.
    pub paid_subscriptions: HashSet<String>,
    /// By Stripe invoice id.
    pub payments: HashMap<String, PaymentStatus>,
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
}

impl Changeset {
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
        if let Some(issued) = self.new_licenses.iter_mut().find(|l| l.id == license_id) {
            issued.terms = terms;
        } else if let Some(earlier) = self.license_terms.iter_mut().find(|(id, _)| *id == license_id) {
            earlier.1 = terms;
        } else {
            self.license_terms.push((license_id, terms));
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
