//! Property tests of the Stripe event parser: payloads of both API shapes,
//! generated with arbitrary values, parse to the snapshot they describe, and
//! nothing a sender can put in a body makes the parser panic.

use billing_core::domain::{from_unix, PaymentStatus, SubscriptionStatus, Timestamp};
use billing_core::stripe::{Event, EventPayload};
use proptest::prelude::*;
use serde_json::{json, Value};

/// Every instant `time` can represent, in Unix seconds.
const EARLIEST: i64 = -377_705_116_800;
const LATEST: i64 = 253_402_300_799;

const SUBSCRIPTION_KINDS: &[&str] = &[
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
    "customer.subscription.trial_will_end",
];

const STATUSES: &[(&str, SubscriptionStatus)] = &[
    ("incomplete", SubscriptionStatus::Incomplete),
    ("incomplete_expired", SubscriptionStatus::IncompleteExpired),
    ("trialing", SubscriptionStatus::Trialing),
    ("active", SubscriptionStatus::Active),
    ("past_due", SubscriptionStatus::PastDue),
    ("unpaid", SubscriptionStatus::Unpaid),
    ("canceled", SubscriptionStatus::Canceled),
    ("paused", SubscriptionStatus::Paused),
];

const INVOICE_KINDS: &[(&str, PaymentStatus)] = &[
    ("invoice.paid", PaymentStatus::Paid),
    ("invoice.payment_succeeded", PaymentStatus::Paid),
    ("invoice.payment_failed", PaymentStatus::Failed),
    ("invoice.payment_action_required", PaymentStatus::ActionRequired),
];

fn instant() -> impl Strategy<Value = i64> {
    EARLIEST..=LATEST
}

fn at(seconds: Option<i64>) -> Option<Timestamp> {
    seconds.map(|s| from_unix(s).unwrap())
}

/// Ids as Stripe writes them, and stranger ones: any string must survive.
fn stripe_id(prefix: &'static str) -> impl Strategy<Value = String> {
    prop_oneof!["[A-Za-z0-9]{1,24}".prop_map(move |tail| format!("{prefix}{tail}")), any::<String>(),]
}

/// A reference Stripe either leaves as an id or expands into an object.
fn reference(id: &str, expanded: bool) -> Value {
    if expanded {
        json!({ "id": id, "object": "expanded" })
    } else {
        json!(id)
    }
}

fn envelope(id: &str, kind: &str, created: i64, api_version: Option<&str>, object: Value) -> Vec<u8> {
    let mut envelope =
        json!({ "id": id, "object": "event", "type": kind, "created": created, "data": { "object": object } });
    if let Some(version) = api_version {
        envelope["api_version"] = json!(version);
    }
    serde_json::to_vec(&envelope).unwrap()
}

#[derive(Debug, Clone)]
struct GeneratedSubscription {
    id: String,
    customer: String,
    customer_expanded: bool,
    status: usize,
    cancel_at_period_end: Option<bool>,
    cancel_at: Option<i64>,
    canceled_at: Option<i64>,
    ended_at: Option<i64>,
    trial_end: Option<i64>,
    period: Option<(i64, i64)>,
    /// Basil (2025-03-31 on) puts the period on the item, older versions on
    /// the subscription.
    basil: bool,
    item: Option<GeneratedItem>,
    user_id: Option<String>,
}

#[derive(Debug, Clone)]
struct GeneratedItem {
    id: String,
    price: Option<String>,
    /// Old payloads name the price under `plan` as well, or only there.
    price_under_plan: bool,
}

fn item() -> impl Strategy<Value = GeneratedItem> {
    (stripe_id("si_"), proptest::option::of(stripe_id("price_")), any::<bool>())
        .prop_map(|(id, price, price_under_plan)| GeneratedItem { id, price, price_under_plan })
}

prop_compose! {
    fn subscription()(
        id in stripe_id("sub_"),
        customer in stripe_id("cus_"),
        customer_expanded in any::<bool>(),
        status in 0..STATUSES.len(),
        cancel_at_period_end in proptest::option::of(any::<bool>()),
        cancel_at in proptest::option::of(instant()),
        canceled_at in proptest::option::of(instant()),
        ended_at in proptest::option::of(instant()),
        trial_end in proptest::option::of(instant()),
        period in proptest::option::of((instant(), instant())),
        basil in any::<bool>(),
        item in proptest::option::of(item()),
        user_id in proptest::option::of(any::<String>()),
    ) -> GeneratedSubscription {
        // Basil always has an item to carry the period.
        let item = if basil && item.is_none() {
            Some(GeneratedItem { id: "si_1".into(), price: None, price_under_plan: false })
        } else {
            item
        };
        GeneratedSubscription {
            id, customer, customer_expanded, status, cancel_at_period_end, cancel_at, canceled_at, ended_at,
            trial_end, period, basil, item, user_id,
        }
    }
}

impl GeneratedSubscription {
    fn to_json(&self) -> Value {
        let mut object = json!({
            "id": self.id,
            "object": "subscription",
            "customer": reference(&self.customer, self.customer_expanded),
            "status": STATUSES[self.status].0,
            "cancel_at": self.cancel_at,
            "canceled_at": self.canceled_at,
            "ended_at": self.ended_at,
            "trial_end": self.trial_end,
        });
        if let Some(flag) = self.cancel_at_period_end {
            object["cancel_at_period_end"] = json!(flag);
        }
        if let Some(user) = &self.user_id {
            object["metadata"] = json!({ "user_id": user, "other": 1 });
        }
        if let Some(item) = &self.item {
            let mut item_json = json!({ "id": item.id, "object": "subscription_item" });
            if let Some(price) = &item.price {
                item_json["plan"] = json!({ "id": price });
                if !item.price_under_plan {
                    item_json["price"] = json!({ "id": price, "object": "price" });
                }
            }
            if let (true, Some((start, end))) = (self.basil, self.period) {
                item_json["current_period_start"] = json!(start);
                item_json["current_period_end"] = json!(end);
            }
            object["items"] = json!({ "object": "list", "data": [item_json] });
        }
        if let (false, Some((start, end))) = (self.basil, self.period) {
            object["current_period_start"] = json!(start);
            object["current_period_end"] = json!(end);
        }
        object
    }
}

#[derive(Debug, Clone)]
enum InvoiceSubscription {
    None,
    /// Before basil: `subscription`, as an id or expanded.
    TopLevel(String, bool),
    /// Basil: `parent.subscription_details.subscription`.
    Parent(String, bool),
}

fn invoice_subscription() -> impl Strategy<Value = InvoiceSubscription> {
    prop_oneof![
        Just(InvoiceSubscription::None),
        (stripe_id("sub_"), any::<bool>()).prop_map(|(id, e)| InvoiceSubscription::TopLevel(id, e)),
        (stripe_id("sub_"), any::<bool>()).prop_map(|(id, e)| InvoiceSubscription::Parent(id, e)),
    ]
}

/// Arbitrary JSON, nested a few levels, with the field names the parser
/// looks for among the keys so that objects half match.
fn any_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        proptest::sample::select(vec![
            "id",
            "customer",
            "status",
            "items",
            "data",
            "price",
            "plan",
            "current_period_end",
            "metadata",
            "user_id",
            "subscription",
            "parent",
            "subscription_details",
            "currency",
            "amount_paid",
            "status_transitions",
            "paid_at",
            "mode",
            "object",
            "type",
            "created",
        ])
        .prop_map(str::to_owned),
        any::<String>(),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        proptest::sample::select(vec!["active", "past_due", "sub_1", "cus_1", "usd", "\0"]).prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn a_subscription_of_either_shape_parses_to_the_snapshot_it_describes(
        sub in subscription(),
        kind in proptest::sample::select(SUBSCRIPTION_KINDS),
        created in instant(),
    ) {
        let version = if sub.basil { "2025-03-31.basil" } else { "2024-06-20" };
        let body = envelope("evt_1", kind, created, Some(version), sub.to_json());
        let event = Event::parse(&body).unwrap();
        prop_assert_eq!((event.id.as_str(), event.kind.as_str(), event.created), ("evt_1", kind, created));
        prop_assert_eq!(event.api_version.as_deref(), Some(version));
        let EventPayload::Subscription(snapshot) = event.payload else {
            panic!("{kind} is a subscription event")
        };
        prop_assert_eq!(&snapshot.stripe_subscription_id, &sub.id);
        prop_assert_eq!(&snapshot.stripe_customer_id, &sub.customer);
        prop_assert_eq!(snapshot.status, STATUSES[sub.status].1);
        prop_assert_eq!(snapshot.price_id.as_ref(), sub.item.as_ref().and_then(|i| i.price.as_ref()));
        prop_assert_eq!(snapshot.item_id.as_ref(), sub.item.as_ref().map(|i| &i.id));
        prop_assert_eq!(snapshot.cancel_at_period_end, sub.cancel_at_period_end.unwrap_or(false));
        prop_assert_eq!(snapshot.cancel_at, at(sub.cancel_at));
        prop_assert_eq!(snapshot.canceled_at, at(sub.canceled_at));
        prop_assert_eq!(snapshot.ended_at, at(sub.ended_at));
        prop_assert_eq!(snapshot.trial_end, at(sub.trial_end));
        prop_assert_eq!(snapshot.current_period_start, at(sub.period.map(|p| p.0)));
        prop_assert_eq!(snapshot.current_period_end, at(sub.period.map(|p| p.1)));
        prop_assert_eq!(snapshot.user_id, sub.user_id.filter(|u| !u.is_empty()));
    }

    #[test]
    fn an_invoice_finds_its_subscription_in_either_shape(
        id in stripe_id("in_"),
        customer in stripe_id("cus_"),
        customer_expanded in any::<bool>(),
        subscription in invoice_subscription(),
        (kind, status) in proptest::sample::select(INVOICE_KINDS),
        amount_paid in proptest::option::of(any::<i64>()),
        amount_due in proptest::option::of(any::<i64>()),
        currency in "[a-z]{3}",
        paid_at in proptest::option::of(instant()),
        created in instant(),
    ) {
        let mut object = json!({
            "id": id, "object": "invoice", "customer": reference(&customer, customer_expanded), "currency": currency,
            "status_transitions": { "paid_at": paid_at },
        });
        if let Some(amount) = amount_paid {
            object["amount_paid"] = json!(amount);
        }
        if let Some(amount) = amount_due {
            object["amount_due"] = json!(amount);
        }
        let expected_subscription = match &subscription {
            InvoiceSubscription::None => None,
            InvoiceSubscription::TopLevel(sub, expanded) => {
                object["subscription"] = reference(sub, *expanded);
                Some(sub.clone())
            }
            InvoiceSubscription::Parent(sub, expanded) => {
                object["subscription"] = Value::Null;
                object["parent"] = json!({ "type": "subscription_details",
                                           "subscription_details": { "subscription": reference(sub, *expanded) } });
                Some(sub.clone())
            }
        };
        let EventPayload::Invoice(payment, _) = Event::parse(&envelope("evt_1", kind, created, None, object)).unwrap().payload else {
            panic!("{kind} is an invoice event")
        };
        prop_assert_eq!(&payment.stripe_invoice_id, &id);
        prop_assert_eq!(&payment.stripe_customer_id, &customer);
        prop_assert_eq!(payment.stripe_subscription_id, expected_subscription);
        prop_assert_eq!(payment.status, status);
        prop_assert_eq!(&payment.currency, &currency);
        if status == PaymentStatus::Paid {
            prop_assert_eq!(payment.amount, amount_paid.unwrap_or(0));
            prop_assert_eq!(payment.paid_at, at(Some(paid_at.unwrap_or(created))));
        } else {
            prop_assert_eq!(payment.amount, amount_due.unwrap_or(0));
            prop_assert_eq!(payment.paid_at, None);
        }
    }

    #[test]
    fn arbitrary_bytes_are_answered_without_panicking(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = Event::parse(&body);
    }

    #[test]
    fn arbitrary_json_under_any_event_type_is_answered_without_panicking(
        kind in prop_oneof![
            proptest::sample::select(SUBSCRIPTION_KINDS).prop_map(str::to_owned),
            proptest::sample::select(INVOICE_KINDS).prop_map(|(kind, _)| kind.to_owned()),
            Just("checkout.session.completed".to_owned()),
            any::<String>(),
        ],
        created in any::<i64>(),
        object in any_json(),
    ) {
        let _ = Event::parse(&envelope("evt_1", &kind, created, None, object.clone()));
        let _ = Event::parse(&serde_json::to_vec(&object).unwrap());
    }

    /// A real-looking object with one field replaced by anything: the parser
    /// must answer (Ok or Err) whichever field it is.
    #[test]
    fn a_valid_object_with_one_field_replaced_is_answered_without_panicking(
        sub in subscription(),
        field in any::<prop::sample::Index>(),
        replacement in any_json(),
        created in any::<i64>(),
    ) {
        let mut object = sub.to_json();
        let map = object.as_object_mut().unwrap();
        let name = map.keys().nth(field.index(map.len())).unwrap().clone();
        map.insert(name, replacement);
        let _ = Event::parse(&envelope("evt_1", "customer.subscription.updated", created, None, object));
    }
}
