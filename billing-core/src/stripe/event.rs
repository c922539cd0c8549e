//! Stripe event envelopes and the objects we act on, in both payload shapes:
//! before API version 2025-03-31 ("basil") the period sits on the
//! subscription and an invoice names its `subscription`; from basil on the
//! period sits on each item and the invoice names it under
//! `parent.subscription_details.subscription`.

use crate::domain::{from_unix, Payment, PaymentStatus, SubscriptionSnapshot, SubscriptionStatus, Timestamp};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use std::collections::HashMap;

/// A verified event envelope.
#[derive(Debug, Clone)]
pub struct Event {
    /// `evt_…`
    pub id: String,
    /// e.g. `customer.subscription.updated`
    pub kind: String,
    /// When Stripe created the event (Unix seconds): the version of the
    /// snapshot it carries.
    pub created: i64,
    /// The API version the payload is shaped by.
    pub api_version: Option<String>,
    /// The `id` of `data.object`, when it has one (operators search
    /// deliveries by it).
    pub object_id: Option<String>,
    /// What the event says, for the types we act on.
    pub payload: EventPayload,
}

/// The part of an event we act on.
#[derive(Debug, Clone)]
pub enum EventPayload {
    /// `checkout.session.completed` and
    /// `checkout.session.async_payment_succeeded` (a delayed payment that
    /// cleared: the session now says `payment_status: paid`).
    CheckoutCompleted(CheckoutSession),
    /// `checkout.session.async_payment_failed`: a delayed payment that did
    /// not clear.
    CheckoutPaymentFailed(CheckoutSession),
    /// `customer.subscription.*`
    Subscription(SubscriptionSnapshot),
    /// `invoice.paid`, `invoice.payment_succeeded`, `invoice.payment_failed`,
    /// `invoice.payment_action_required`, with what paid it when the
    /// payload says (before basil: the invoice's `payment_intent` and
    /// `charge`; from basil on: its `payments`, when included).
    Invoice(Payment, Vec<InvoiceCharge>),
    /// `invoice_payment.paid` (basil on): the payment intent (or charge)
    /// that paid an invoice.
    InvoicePayment(InvoiceCharge),
    /// `customer.created`, `customer.updated`, `customer.deleted`
    Customer(StripeCustomer),
    /// `charge.refunded`
    ChargeRefunded(Charge),
    /// `charge.dispute.created`, `charge.dispute.closed`
    Dispute(Dispute),
    /// Any other type: acknowledged and recorded as ignored.
    Ignored,
}

/// A completed Checkout Session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutSession {
    /// `cs_…`
    pub id: String,
    /// `subscription`, `payment` or `setup`.
    pub mode: String,
    /// Our dashboard's user id, passed when the session was created.
    pub client_reference_id: Option<String>,
    /// `metadata.user_id`, the other place a user id may travel.
    pub metadata_user_id: Option<String>,
    /// `cus_…`
    pub customer: Option<String>,
    /// `sub_…` (subscription mode only).
    pub subscription: Option<String>,
    /// `paid`, `unpaid` or `no_payment_required`.
    pub payment_status: Option<String>,
    /// `pi_…` (payment mode): what the charge, its refunds and disputes name.
    pub payment_intent: Option<String>,
    /// `metadata.plan`: the plan a perpetual checkout was created for.
    pub metadata_plan: Option<String>,
    /// In the currency's smallest unit.
    pub amount_total: Option<i64>,
    /// e.g. `eur`.
    pub currency: Option<String>,
}

impl CheckoutSession {
    /// The user this checkout belongs to.
    pub fn user_id(&self) -> Option<&str> {
        self.client_reference_id.as_deref().or(self.metadata_user_id.as_deref())
    }
}

/// A charge, as far as its refunds go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// `ch_…`
    pub id: String,
    /// `pi_…`: how the charge is linked to what it paid for.
    pub payment_intent: Option<String>,
    /// What was charged, in the currency's smallest unit.
    pub amount: i64,
    /// How much of it has been refunded so far.
    pub amount_refunded: i64,
    /// e.g. `eur`.
    pub currency: Option<String>,
}

impl Charge {
    /// Whether all of it has been refunded.
    pub fn fully_refunded(&self) -> bool {
        self.amount_refunded >= self.amount
    }
}

/// What paid an invoice: the payment intent, or the charge when it has
/// none. A later refund or dispute names them; recorded, they link it to
/// the invoice's subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceCharge {
    /// `in_…`
    pub invoice_id: String,
    /// `pi_…`
    pub payment_intent: Option<String>,
    /// `ch_…`
    pub charge: Option<String>,
}

impl InvoiceCharge {
    /// The key it is recorded under: its payment intent, else its charge.
    pub fn key(&self) -> Option<&str> {
        self.payment_intent.as_deref().or(self.charge.as_deref())
    }
}

/// A dispute (chargeback or inquiry) of a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispute {
    /// `dp_…`
    pub id: String,
    /// `ch_…`
    pub charge: String,
    /// `pi_…`
    pub payment_intent: Option<String>,
    /// e.g. `needs_response`, `won`, `lost`, `warning_closed`.
    pub status: String,
    /// Whether the event reports it closed (`charge.dispute.closed`).
    pub closed: bool,
}

/// A Stripe customer, as far as linking it to a user goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeCustomer {
    /// `cus_…`
    pub id: String,
    /// `metadata.user_id`, when the vendor put one there.
    pub user_id: Option<String>,
    /// Whether the event reports the customer deleted.
    pub deleted: bool,
    /// The customer's e-mail address, as Stripe holds it.
    pub email: Option<String>,
}

/// A payload that could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// Not a Stripe event envelope.
    #[error("malformed event envelope: {0}")]
    Envelope(#[source] serde_json::Error),
    /// An event type we act on, with an object we cannot read.
    #[error("malformed {kind} object: {reason}")]
    Object {
        /// The event type.
        kind: String,
        /// What was wrong (field names only; never values).
        reason: String,
    },
}

/// A string from the payload that may be stored. PostgreSQL cannot hold a
/// NUL in `text` and SQLite can: refusing it while parsing keeps it away
/// from both stores, so they answer alike (and nothing is stored).
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.contains('\0') {
            return Err(serde::de::Error::custom("a string contains NUL"));
        }
        Ok(Self(text))
    }
}

impl From<Text> for String {
    fn from(text: Text) -> Self {
        text.0
    }
}

fn text(value: Option<Text>) -> Option<String> {
    value.map(String::from)
}

#[derive(Deserialize)]
struct Envelope {
    id: Text,
    #[serde(rename = "type")]
    kind: Text,
    created: i64,
    api_version: Option<Text>,
    data: EnvelopeData,
}

#[derive(Deserialize)]
struct EnvelopeData {
    object: Value,
}

impl Event {
    /// Parses a raw, already verified, webhook body.
    pub fn parse(body: &[u8]) -> Result<Self, EventError> {
        let envelope: Envelope = serde_json::from_slice(body).map_err(EventError::Envelope)?;
        let object_error = |reason: String| EventError::Object { kind: envelope.kind.0.clone(), reason };
        let payload = match envelope.kind.0.as_str() {
            "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
                EventPayload::CheckoutCompleted(parse_checkout(&envelope.data.object).map_err(object_error)?)
            }
            "checkout.session.async_payment_failed" => {
                EventPayload::CheckoutPaymentFailed(parse_checkout(&envelope.data.object).map_err(object_error)?)
            }
            "customer.subscription.created"
            | "customer.subscription.updated"
            | "customer.subscription.deleted"
            | "customer.subscription.paused"
            | "customer.subscription.resumed"
            | "customer.subscription.trial_will_end" => {
                EventPayload::Subscription(parse_subscription(&envelope.data.object).map_err(object_error)?)
            }
            "invoice.paid" | "invoice.payment_succeeded" => {
                invoice(&envelope, PaymentStatus::Paid).map_err(object_error)?
            }
            "customer.created" | "customer.updated" | "customer.deleted" => EventPayload::Customer(
                parse_customer(&envelope.data.object, envelope.kind.0 == "customer.deleted").map_err(object_error)?,
            ),
            "invoice.payment_failed" => invoice(&envelope, PaymentStatus::Failed).map_err(object_error)?,
            "charge.refunded" => {
                EventPayload::ChargeRefunded(parse_charge(&envelope.data.object).map_err(object_error)?)
            }
            "charge.dispute.created" | "charge.dispute.closed" => EventPayload::Dispute(
                parse_dispute(&envelope.data.object, envelope.kind.0 == "charge.dispute.closed")
                    .map_err(object_error)?,
            ),
            "invoice.payment_action_required" => {
                invoice(&envelope, PaymentStatus::ActionRequired).map_err(object_error)?
            }
            "invoice_payment.paid" => {
                EventPayload::InvoicePayment(parse_invoice_payment(&envelope.data.object).map_err(object_error)?)
            }
            _ => EventPayload::Ignored,
        };
        let object_id = match envelope.data.object.get("id") {
            Some(Value::String(id)) if !id.contains('\0') => Some(id.clone()),
            _ => None,
        };
        Ok(Self {
            id: envelope.id.into(),
            kind: envelope.kind.into(),
            created: envelope.created,
            api_version: text(envelope.api_version),
            object_id,
            payload,
        })
    }
}

fn invoice(envelope: &Envelope, status: PaymentStatus) -> Result<EventPayload, String> {
    let object = &envelope.data.object;
    let payment = parse_invoice(object, status, envelope.created)?;
    let charges = match status {
        PaymentStatus::Paid => parse_invoice_charges(object, &payment.stripe_invoice_id)?,
        _ => Vec::new(),
    };
    Ok(EventPayload::Invoice(payment, charges))
}

/// A reference Stripe either leaves as an id or expands into an object.
#[derive(Deserialize)]
#[serde(untagged)]
enum Expandable {
    Id(Text),
    Object { id: Text },
}

impl Expandable {
    fn into_id(self) -> String {
        match self {
            Expandable::Id(id) | Expandable::Object { id } => id.into(),
        }
    }
}

#[derive(Deserialize)]
struct RawSubscription {
    id: Text,
    customer: Expandable,
    status: Text,
    #[serde(default)]
    cancel_at_period_end: bool,
    cancel_at: Option<i64>,
    canceled_at: Option<i64>,
    ended_at: Option<i64>,
    current_period_start: Option<i64>,
    current_period_end: Option<i64>,
    trial_end: Option<i64>,
    items: Option<RawList<RawItem>>,
    #[serde(default)]
    metadata: HashMap<String, Value>,
}

#[derive(Deserialize)]
struct RawList<T> {
    data: Vec<T>,
}

#[derive(Deserialize)]
struct RawItem {
    id: Text,
    price: Option<RawPrice>,
    plan: Option<RawPrice>,
    current_period_start: Option<i64>,
    current_period_end: Option<i64>,
}

#[derive(Deserialize)]
struct RawPrice {
    id: Text,
}

fn time_field(name: &str, seconds: Option<i64>) -> Result<Option<Timestamp>, String> {
    seconds.map(|s| from_unix(s).ok_or_else(|| format!("`{name}` is out of range"))).transpose()
}

/// Parses a subscription object of any supported API version (webhook
/// payloads and API responses share the shape).
pub fn parse_subscription(object: &Value) -> Result<SubscriptionSnapshot, String> {
    let raw = RawSubscription::deserialize(object).map_err(|e| e.to_string())?;
    let status = SubscriptionStatus::parse(&raw.status.0).ok_or_else(|| "unknown `status`".to_owned())?;
    let first_item = raw.items.and_then(|items| items.data.into_iter().next());
    // Basil moved the period onto items; older versions have it at the top.
    let (period_start, period_end) = match &first_item {
        Some(item) if raw.current_period_end.is_none() => (item.current_period_start, item.current_period_end),
        _ => (raw.current_period_start, raw.current_period_end),
    };
    let price_id = first_item.as_ref().and_then(|i| i.price.as_ref().or(i.plan.as_ref())).map(|p| p.id.0.clone());
    Ok(SubscriptionSnapshot {
        stripe_subscription_id: raw.id.into(),
        stripe_customer_id: raw.customer.into_id(),
        status,
        price_id,
        item_id: first_item.map(|i| i.id.into()),
        cancel_at_period_end: raw.cancel_at_period_end,
        cancel_at: time_field("cancel_at", raw.cancel_at)?,
        canceled_at: time_field("canceled_at", raw.canceled_at)?,
        ended_at: time_field("ended_at", raw.ended_at)?,
        current_period_start: time_field("current_period_start", period_start)?,
        current_period_end: time_field("current_period_end", period_end)?,
        trial_end: time_field("trial_end", raw.trial_end)?,
        user_id: metadata_user_id(&raw.metadata)?,
    })
}

fn metadata_user_id(metadata: &HashMap<String, Value>) -> Result<Option<String>, String> {
    metadata_text(metadata, "user_id")
}

fn metadata_text(metadata: &HashMap<String, Value>, key: &str) -> Result<Option<String>, String> {
    match metadata.get(key).and_then(Value::as_str) {
        Some(value) if value.contains('\0') => Err(format!("`metadata.{key}` contains NUL")),
        value => Ok(value.filter(|s| !s.is_empty()).map(str::to_owned)),
    }
}

#[derive(Deserialize)]
struct RawCustomer {
    id: Text,
    #[serde(default)]
    metadata: HashMap<String, Value>,
    email: Option<Text>,
}

pub(crate) fn parse_customer(object: &Value, deleted: bool) -> Result<StripeCustomer, String> {
    let raw = RawCustomer::deserialize(object).map_err(|e| e.to_string())?;
    Ok(StripeCustomer {
        id: raw.id.into(),
        user_id: metadata_user_id(&raw.metadata)?,
        deleted,
        email: text(raw.email).filter(|e| !e.is_empty()),
    })
}

#[derive(Deserialize)]
struct RawCheckout {
    id: Text,
    mode: Text,
    client_reference_id: Option<Text>,
    customer: Option<Expandable>,
    subscription: Option<Expandable>,
    #[serde(default)]
    metadata: HashMap<String, Value>,
    payment_status: Option<Text>,
    payment_intent: Option<Expandable>,
    amount_total: Option<i64>,
    currency: Option<Text>,
}

pub(crate) fn parse_checkout(object: &Value) -> Result<CheckoutSession, String> {
    let raw = RawCheckout::deserialize(object).map_err(|e| e.to_string())?;
    Ok(CheckoutSession {
        id: raw.id.into(),
        mode: raw.mode.into(),
        client_reference_id: text(raw.client_reference_id).filter(|s| !s.is_empty()),
        metadata_user_id: metadata_user_id(&raw.metadata)?,
        customer: raw.customer.map(Expandable::into_id),
        subscription: raw.subscription.map(Expandable::into_id),
        payment_status: text(raw.payment_status),
        payment_intent: raw.payment_intent.map(Expandable::into_id),
        metadata_plan: metadata_text(&raw.metadata, "plan")?,
        amount_total: raw.amount_total,
        currency: text(raw.currency),
    })
}

#[derive(Deserialize)]
struct RawCharge {
    id: Text,
    payment_intent: Option<Expandable>,
    amount: i64,
    #[serde(default)]
    amount_refunded: i64,
    currency: Option<Text>,
}

fn parse_charge(object: &Value) -> Result<Charge, String> {
    let raw = RawCharge::deserialize(object).map_err(|e| e.to_string())?;
    Ok(Charge {
        id: raw.id.into(),
        payment_intent: raw.payment_intent.map(Expandable::into_id),
        amount: raw.amount,
        amount_refunded: raw.amount_refunded,
        currency: text(raw.currency),
    })
}

#[derive(Deserialize)]
struct RawDispute {
    id: Text,
    charge: Expandable,
    payment_intent: Option<Expandable>,
    status: Text,
}

fn parse_dispute(object: &Value, closed: bool) -> Result<Dispute, String> {
    let raw = RawDispute::deserialize(object).map_err(|e| e.to_string())?;
    Ok(Dispute {
        id: raw.id.into(),
        charge: raw.charge.into_id(),
        payment_intent: raw.payment_intent.map(Expandable::into_id),
        status: raw.status.into(),
        closed,
    })
}

/// What paid an invoice, in either shape: before basil the invoice names its
/// `payment_intent` and `charge`; from basil on it has neither, and its
/// `payments` list (when the payload includes it) holds each paid
/// `invoice_payment`.
#[derive(Deserialize)]
struct RawInvoiceCharges {
    payment_intent: Option<Expandable>,
    charge: Option<Expandable>,
    payments: Option<RawList<RawInvoicePayment>>,
}

#[derive(Deserialize)]
struct RawInvoicePayment {
    invoice: Option<Expandable>,
    payment: Option<RawPaymentRef>,
    status: Option<Text>,
}

#[derive(Deserialize)]
struct RawPaymentRef {
    payment_intent: Option<Expandable>,
    charge: Option<Expandable>,
}

pub(crate) fn parse_invoice_charges(object: &Value, invoice_id: &str) -> Result<Vec<InvoiceCharge>, String> {
    let raw = RawInvoiceCharges::deserialize(object).map_err(|e| e.to_string())?;
    let mut charges = Vec::new();
    let top = InvoiceCharge {
        invoice_id: invoice_id.to_owned(),
        payment_intent: raw.payment_intent.map(Expandable::into_id),
        charge: raw.charge.map(Expandable::into_id),
    };
    if top.key().is_some() {
        charges.push(top);
    }
    for payment in raw.payments.map(|l| l.data).unwrap_or_default() {
        if payment.status.as_ref().is_some_and(|s| s.0 != "paid") {
            continue;
        }
        let Some(paid_by) = payment.payment else { continue };
        let charge = InvoiceCharge {
            invoice_id: invoice_id.to_owned(),
            payment_intent: paid_by.payment_intent.map(Expandable::into_id),
            charge: paid_by.charge.map(Expandable::into_id),
        };
        if charge.key().is_some() && !charges.iter().any(|c| c.key() == charge.key()) {
            charges.push(charge);
        }
    }
    Ok(charges)
}

/// An `invoice_payment` object (basil on): the invoice and what paid it.
fn parse_invoice_payment(object: &Value) -> Result<InvoiceCharge, String> {
    let raw = RawInvoicePayment::deserialize(object).map_err(|e| e.to_string())?;
    let invoice_id = raw.invoice.ok_or_else(|| "missing field `invoice`".to_owned())?.into_id();
    let paid_by = raw.payment.ok_or_else(|| "missing field `payment`".to_owned())?;
    Ok(InvoiceCharge {
        invoice_id,
        payment_intent: paid_by.payment_intent.map(Expandable::into_id),
        charge: paid_by.charge.map(Expandable::into_id),
    })
}

#[derive(Deserialize)]
struct RawInvoice {
    id: Option<Text>,
    customer: Expandable,
    subscription: Option<Expandable>,
    parent: Option<RawInvoiceParent>,
    #[serde(default)]
    amount_paid: i64,
    #[serde(default)]
    amount_due: i64,
    currency: Text,
    status_transitions: Option<RawStatusTransitions>,
}

#[derive(Deserialize)]
struct RawInvoiceParent {
    subscription_details: Option<RawSubscriptionDetails>,
}

#[derive(Deserialize)]
struct RawSubscriptionDetails {
    subscription: Option<Expandable>,
}

#[derive(Deserialize)]
struct RawStatusTransitions {
    paid_at: Option<i64>,
}

pub(crate) fn parse_invoice(object: &Value, status: PaymentStatus, event_created: i64) -> Result<Payment, String> {
    let raw = RawInvoice::deserialize(object).map_err(|e| e.to_string())?;
    let id = text(raw.id).ok_or_else(|| "missing field `id`".to_owned())?;
    let subscription = raw
        .subscription
        .or_else(|| raw.parent.and_then(|p| p.subscription_details).and_then(|d| d.subscription))
        .map(Expandable::into_id);
    let paid_at = match status {
        PaymentStatus::Paid => {
            time_field("paid_at", raw.status_transitions.and_then(|t| t.paid_at).or(Some(event_created)))?
        }
        _ => None,
    };
    Ok(Payment {
        stripe_invoice_id: id,
        stripe_customer_id: raw.customer.into_id(),
        stripe_subscription_id: subscription,
        amount: if status == PaymentStatus::Paid { raw.amount_paid } else { raw.amount_due },
        currency: raw.currency.into(),
        status,
        paid_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/../tests/fixtures/stripe-events/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn envelope(kind: &str, object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({"id": "evt_1", "type": kind, "created": 1_700_000_000, "data": {"object": object}}))
            .unwrap()
    }

    #[test]
    fn pre_basil_subscription_fixture_reads_period_from_the_top() {
        let event = Event::parse(&fixture("subscription_created.json")).unwrap();
        let EventPayload::Subscription(s) = event.payload else { panic!("not a subscription") };
        assert_eq!(s.stripe_subscription_id, "sub_JdIzvfy6o5GZRd");
        assert_eq!(s.stripe_customer_id, "cus_IhGfebO16cMIGN");
        assert_eq!(s.current_period_end, from_unix(1_625_740_918));
        assert_eq!(s.price_id.as_deref(), Some("price_1IDQm5JDPojXS6LNM31hxKzp"));
        assert_eq!(s.user_id, None);
    }

    #[test]
    fn basil_subscription_reads_period_from_items() {
        let body = envelope(
            "customer.subscription.updated",
            json!({"id": "sub_1", "customer": {"id": "cus_1"}, "status": "past_due", "cancel_at_period_end": true,
                   "metadata": {"user_id": "u1"},
                   "items": {"data": [{"id": "si_1", "price": {"id": "price_pro"},
                                       "current_period_start": 1_700_000_000, "current_period_end": 1_702_592_000}]}}),
        );
        let EventPayload::Subscription(s) = Event::parse(&body).unwrap().payload else { panic!() };
        assert_eq!(s.status, SubscriptionStatus::PastDue);
        assert_eq!(s.current_period_end, from_unix(1_702_592_000));
        assert_eq!(s.stripe_customer_id, "cus_1");
        assert_eq!(s.user_id.as_deref(), Some("u1"));
        assert!(s.cancel_at_period_end);
    }

    #[test]
    fn invoices_find_their_subscription_in_both_shapes() {
        let old = envelope(
            "invoice.paid",
            json!({"id": "in_1", "customer": "cus_1", "subscription": "sub_1", "amount_paid": 1900,
                   "amount_due": 1900, "currency": "eur", "status_transitions": {"paid_at": 1_700_000_100}}),
        );
        let basil = envelope(
            "invoice.payment_failed",
            json!({"id": "in_2", "customer": "cus_1", "amount_paid": 0, "amount_due": 1900, "currency": "eur",
                   "parent": {"subscription_details": {"subscription": "sub_1"}}}),
        );
        let EventPayload::Invoice(p, _) = Event::parse(&old).unwrap().payload else { panic!() };
        assert_eq!(
            (p.stripe_subscription_id.as_deref(), p.amount, p.status),
            (Some("sub_1"), 1900, PaymentStatus::Paid)
        );
        assert_eq!(p.paid_at, from_unix(1_700_000_100));
        let EventPayload::Invoice(p, _) = Event::parse(&basil).unwrap().payload else { panic!() };
        assert_eq!(
            (p.stripe_subscription_id.as_deref(), p.amount, p.status),
            (Some("sub_1"), 1900, PaymentStatus::Failed)
        );
        assert_eq!(p.paid_at, None);
    }

    #[test]
    fn paid_invoices_name_what_paid_them_in_both_shapes() {
        let old = envelope(
            "invoice.paid",
            json!({"id": "in_1", "customer": "cus_1", "subscription": "sub_1", "amount_paid": 1900,
                   "currency": "eur", "payment_intent": "pi_1", "charge": {"id": "ch_1"}}),
        );
        let EventPayload::Invoice(_, charges) = Event::parse(&old).unwrap().payload else { panic!() };
        let pi_1 = InvoiceCharge {
            invoice_id: "in_1".into(),
            payment_intent: Some("pi_1".into()),
            charge: Some("ch_1".into()),
        };
        assert_eq!(charges, [pi_1]);
        // Basil: nothing on the invoice itself, the payments list when included.
        let basil = envelope(
            "invoice.payment_succeeded",
            json!({"id": "in_2", "customer": "cus_1", "amount_paid": 1900, "currency": "eur",
                   "parent": {"subscription_details": {"subscription": "sub_1"}},
                   "payments": {"object": "list", "data": [
                       {"id": "inpay_0", "invoice": "in_2", "status": "canceled",
                        "payment": {"type": "payment_intent", "payment_intent": "pi_0"}},
                       {"id": "inpay_1", "invoice": "in_2", "status": "paid",
                        "payment": {"type": "payment_intent", "payment_intent": "pi_2"}}]}}),
        );
        let EventPayload::Invoice(_, charges) = Event::parse(&basil).unwrap().payload else { panic!() };
        assert_eq!(charges.iter().map(|c| c.key()).collect::<Vec<_>>(), [Some("pi_2")]);
        let without = envelope(
            "invoice.paid",
            json!({"id": "in_3", "customer": "cus_1", "amount_paid": 1900, "currency": "eur",
                   "parent": {"subscription_details": {"subscription": "sub_1"}}}),
        );
        let EventPayload::Invoice(_, charges) = Event::parse(&without).unwrap().payload else { panic!() };
        assert!(charges.is_empty());
        let failed = envelope(
            "invoice.payment_failed",
            json!({"id": "in_4", "customer": "cus_1", "amount_due": 1900, "currency": "eur", "payment_intent": "pi_4"}),
        );
        let EventPayload::Invoice(_, charges) = Event::parse(&failed).unwrap().payload else { panic!() };
        assert!(charges.is_empty(), "only a paid invoice's payment can be refunded or disputed");
    }

    #[test]
    fn an_invoice_payment_names_its_invoice_and_payment_intent_or_charge() {
        let paid = envelope(
            "invoice_payment.paid",
            json!({"id": "inpay_1", "object": "invoice_payment", "amount_paid": 1900, "currency": "eur",
                   "invoice": "in_1", "is_default": true, "status": "paid",
                   "payment": {"type": "payment_intent", "payment_intent": "pi_1"},
                   "status_transitions": {"paid_at": 1_700_000_000, "canceled_at": null}}),
        );
        let event = Event::parse(&paid).unwrap();
        assert_eq!(event.object_id.as_deref(), Some("inpay_1"));
        let EventPayload::InvoicePayment(c) = event.payload else { panic!() };
        assert_eq!((c.invoice_id.as_str(), c.key()), ("in_1", Some("pi_1")));
        let by_charge = envelope(
            "invoice_payment.paid",
            json!({"id": "inpay_2", "invoice": {"id": "in_2"}, "status": "paid",
                   "payment": {"type": "charge", "charge": "ch_2"}}),
        );
        let EventPayload::InvoicePayment(c) = Event::parse(&by_charge).unwrap().payload else { panic!() };
        assert_eq!((c.invoice_id.as_str(), c.key(), c.charge.as_deref()), ("in_2", Some("ch_2"), Some("ch_2")));
        assert!(Event::parse(&envelope("invoice_payment.paid", json!({"id": "inpay_3"}))).is_err());
    }

    #[test]
    fn the_object_id_and_a_customer_email_are_read() {
        let event = Event::parse(&envelope(
            "customer.updated",
            json!({"id": "cus_1", "email": "ada@example.com", "metadata": {"user_id": "u1"}}),
        ))
        .unwrap();
        assert_eq!(event.object_id.as_deref(), Some("cus_1"));
        let EventPayload::Customer(c) = event.payload else { panic!("not a customer") };
        assert_eq!((c.email.as_deref(), c.user_id.as_deref(), c.deleted), (Some("ada@example.com"), Some("u1"), false));
        let EventPayload::Customer(c) =
            Event::parse(&envelope("customer.created", json!({"id": "cus_2", "email": ""}))).unwrap().payload
        else {
            panic!("not a customer")
        };
        assert_eq!(c.email, None, "an empty address is no address");
        let ignored = Event::parse(&envelope("ping", json!({"object": "thing"}))).unwrap();
        assert_eq!(ignored.object_id, None, "an object without an id");
    }

    #[test]
    fn payment_mode_checkout_fixture_has_no_subscription() {
        let EventPayload::CheckoutCompleted(c) =
            Event::parse(&fixture("checkout_session_completed.json")).unwrap().payload
        else {
            panic!()
        };
        assert_eq!((c.mode.as_str(), c.subscription.as_deref(), c.user_id()), ("payment", None, None));
        assert_eq!(
            (c.payment_status.as_deref(), c.payment_intent.as_deref(), c.metadata_plan.as_deref()),
            (Some("paid"), Some("pi_1IqxJOJDPojXS6LN9uOebAea"), None)
        );
        assert_eq!((c.amount_total, c.currency.as_deref()), (Some(999), Some("eur")));
    }

    #[test]
    fn charges_and_disputes_name_their_payment_intent() {
        let refunded = envelope(
            "charge.refunded",
            json!({"id": "ch_1", "object": "charge", "amount": 4900, "amount_refunded": 1000, "currency": "eur",
                   "payment_intent": "pi_1", "refunded": false}),
        );
        let EventPayload::ChargeRefunded(c) = Event::parse(&refunded).unwrap().payload else { panic!() };
        assert_eq!((c.id.as_str(), c.payment_intent.as_deref(), c.fully_refunded()), ("ch_1", Some("pi_1"), false));
        let closed = envelope(
            "charge.dispute.closed",
            json!({"id": "dp_1", "object": "dispute", "charge": {"id": "ch_1"}, "payment_intent": "pi_1",
                   "status": "won", "amount": 4900}),
        );
        let EventPayload::Dispute(d) = Event::parse(&closed).unwrap().payload else { panic!() };
        assert_eq!(
            (d.charge.as_str(), d.payment_intent.as_deref(), d.status.as_str(), d.closed),
            ("ch_1", Some("pi_1"), "won", true)
        );
        let created =
            envelope("charge.dispute.created", json!({"id": "dp_2", "charge": "ch_2", "status": "needs_response"}));
        let EventPayload::Dispute(d) = Event::parse(&created).unwrap().payload else { panic!() };
        assert_eq!((d.payment_intent, d.closed), (None, false));
    }

    #[test]
    fn delayed_payment_events_carry_the_session() {
        let session = json!({"id": "cs_1", "mode": "payment", "payment_status": "paid", "client_reference_id": "u1",
                             "payment_intent": {"id": "pi_1"}, "metadata": {"plan": "studio", "user_id": "u1"},
                             "customer": "cus_1", "amount_total": 4900, "currency": "eur"});
        let EventPayload::CheckoutCompleted(c) =
            Event::parse(&envelope("checkout.session.async_payment_succeeded", session.clone())).unwrap().payload
        else {
            panic!("not a checkout")
        };
        assert_eq!((c.payment_intent.as_deref(), c.metadata_plan.as_deref()), (Some("pi_1"), Some("studio")));
        let failed = Event::parse(&envelope("checkout.session.async_payment_failed", session)).unwrap();
        assert!(matches!(failed.payload, EventPayload::CheckoutPaymentFailed(c) if c.id == "cs_1"));
    }

    #[test]
    fn upcoming_invoice_fixture_without_id_is_ignored() {
        let event = Event::parse(&fixture("invoice_upcoming.json")).unwrap();
        assert_eq!(event.kind, "invoice.upcoming");
        assert!(matches!(event.payload, EventPayload::Ignored));
    }

    #[test]
    fn known_type_with_unreadable_object_is_an_error_naming_no_values() {
        let err =
            Event::parse(&envelope("invoice.paid", json!({"customer": "cus_secret", "currency": "eur"}))).unwrap_err();
        assert!(err.to_string().contains("`id`"), "{err}");
        assert!(!err.to_string().contains("cus_secret"));
        let err = Event::parse(&envelope(
            "customer.subscription.updated",
            json!({"id": "sub_1", "customer": "c", "status": "weird"}),
        ))
        .unwrap_err();
        assert!(err.to_string().contains("status"));
        assert!(matches!(Event::parse(b"not json"), Err(EventError::Envelope(_))));
    }

    #[test]
    fn a_nul_in_any_string_we_would_store_is_refused() {
        let nul = "x\u{0}y";
        let subscription = || subscription_object("sub_1");
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("event id", with_envelope_field("id", nul, "ping", json!({}))),
            ("event type", with_envelope_field("type", nul, "ping", json!({}))),
            ("api_version", with_envelope_field("api_version", nul, "ping", json!({}))),
            ("subscription id", envelope("customer.subscription.updated", subscription_object(nul))),
            ("customer", envelope("customer.subscription.updated", with(subscription(), "customer", json!(nul)))),
            (
                "expanded customer",
                envelope("customer.subscription.updated", with(subscription(), "customer", json!({ "id": nul }))),
            ),
            ("status", envelope("customer.subscription.updated", with(subscription(), "status", json!(nul)))),
            (
                "metadata user_id",
                envelope("customer.subscription.updated", with(subscription(), "metadata", json!({ "user_id": nul }))),
            ),
            (
                "price",
                envelope(
                    "customer.subscription.updated",
                    with(subscription(), "items", json!({"data": [{"id": "si_1", "price": {"id": nul}}]})),
                ),
            ),
            (
                "checkout client_reference_id",
                envelope(
                    "checkout.session.completed",
                    json!({"id": "cs_1", "mode": "subscription", "client_reference_id": nul}),
                ),
            ),
            ("checkout mode", envelope("checkout.session.completed", json!({"id": "cs_1", "mode": nul}))),
            ("customer email", envelope("customer.updated", json!({"id": "cus_1", "email": nul}))),
            ("invoice currency", envelope("invoice.paid", json!({"id": "in_1", "customer": "cus_1", "currency": nul}))),
            (
                "invoice subscription",
                envelope(
                    "invoice.paid",
                    json!({"id": "in_1", "customer": "cus_1", "currency": "eur",
                           "parent": {"subscription_details": {"subscription": nul}}}),
                ),
            ),
        ];
        for (field, body) in cases {
            assert!(Event::parse(&body).is_err(), "a NUL in the {field} was accepted");
        }
        // The same payloads without the NUL are read.
        assert!(Event::parse(&envelope("customer.subscription.updated", subscription())).is_ok());
        assert!(Event::parse(&with_envelope_field("id", "evt_2", "ping", json!({}))).is_ok());
    }

    fn subscription_object(id: &str) -> Value {
        json!({"id": id, "customer": "cus_1", "status": "active", "metadata": {"user_id": "u1"}})
    }

    fn with(mut object: Value, field: &str, value: Value) -> Value {
        object[field] = value;
        object
    }

    fn with_envelope_field(field: &str, value: &str, kind: &str, object: Value) -> Vec<u8> {
        let mut envelope = json!({"id": "evt_1", "type": kind, "created": 1_700_000_000, "data": {"object": object}});
        envelope[field] = json!(value);
        serde_json::to_vec(&envelope).unwrap()
    }
}
