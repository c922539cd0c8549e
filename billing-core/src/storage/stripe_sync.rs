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

use crate::domain::{Device, License, PaymentStatus};
use std::collections::{BTreeSet, HashMap, HashSet};
use uuid::Uuid;

pub use super::changeset::{
    Changeset, DeliveryRecord, DeviceAudit, DisputeRecord, HeldSubscription, NewCustomer, NewInvoiceCharge,
    NewPurchase, PaymentUpsert, SubscriptionAudit,
};

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
    /// `cs_…` of payment-mode checkouts: the purchases held for them (and
    /// their licenses), locked.
    pub checkout_sessions: BTreeSet<String>,
    /// `pi_…` a charge names: the purchases it paid for (and their
    /// licenses), locked.
    pub payment_intents: BTreeSet<String>,
    /// `pi_…` and `ch_…` an invoice's payment or a charge names: what was
    /// recorded as paying an invoice under them, read; the subscriptions of
    /// those invoices are locked and read with the others.
    pub invoice_charges: BTreeSet<String>,
    /// `dp_…`: what was recorded of those disputes, locked.
    pub disputes: BTreeSet<String>,
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
    /// Its e-mail address, as last kept.
    pub email: Option<String>,
    /// The `created` of what that address came from (an event, or a
    /// backfill's list read).
    pub email_created: Option<i64>,
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
    /// By Stripe invoice id (or, for a Checkout payment, its payment
    /// intent's).
    pub payments: HashMap<String, PaymentStatus>,
    /// Perpetual licenses bought through Checkout, by `cs_…`.
    pub purchases: HashMap<String, HeldPurchase>,
    /// What paid subscription invoices, by payment key (`pi_…`, or `ch_…`
    /// for a charge without a payment intent).
    pub invoice_charges: HashMap<String, HeldInvoiceCharge>,
    /// Disputes seen, by `dp_…`.
    pub disputes: HashMap<String, DisputeRecord>,
}

/// What paid a subscription invoice, as recorded when it was paid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldInvoiceCharge {
    /// `in_…`
    pub invoice_id: String,
    /// `ch_…`, when the payment named it.
    pub charge_id: Option<String>,
    /// `sub_…` of the invoice's payment row, once it is held.
    pub subscription: Option<String>,
}

/// A perpetual license bought through one Checkout Session.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldPurchase {
    /// The license it issued.
    pub license: License,
    /// `pi_…`: what a later charge names.
    pub payment_intent: Option<String>,
}
