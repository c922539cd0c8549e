//! Licenses follow what Stripe meant, in whatever order its events arrive:
//! a stale snapshot changes no state but is still evidence that the
//! subscription was paid for; so is a paid invoice. Also what customer and
//! checkout events record.

use crate::helpers::*;
use serde_json::{json, Value};

fn snapshot_event(id: &str, kind: &str, created: i64, status: &str) -> Value {
    event(id, kind, created, subscription("sub_1", "cus_1", status, PRICE_PRO, Some("u")))
}

async fn license_of_u(app: &TestApp) -> Option<Value> {
    let licenses = app.get_licenses("u").await;
    assert!(licenses.len() <= 1, "one license per subscription: {licenses:?}");
    licenses.into_iter().next()
}

/// Delivers `events` in this order to a fresh app and returns the license.
async fn license_after(events: &[&Value]) -> Option<Value> {
    let app = spawn_app().await;
    for event in events {
        app.deliver(event).await;
    }
    license_of_u(&app).await
}

fn without_identity(license: Option<Value>) -> Option<Value> {
    license.map(|mut l| {
        for key in ["id", "key", "devices"] {
            l.as_object_mut().unwrap().remove(key);
        }
        l
    })
}

#[tokio::test]
async fn a_cancellation_that_overtakes_the_activation_still_leaves_the_expired_license() {
    let t = now();
    let active = snapshot_event("evt_1", "customer.subscription.created", t, "active");
    let canceled = snapshot_event("evt_2", "customer.subscription.deleted", t + 1, "canceled");
    let in_order = without_identity(license_after(&[&active, &canceled]).await);
    assert_eq!(in_order.as_ref().map(|l| l["status"].clone()), Some(json!("expired")));
    assert_eq!(without_identity(license_after(&[&canceled, &active]).await), in_order);
}

#[tokio::test]
async fn a_past_due_snapshot_that_overtakes_the_activation_keeps_the_license_in_its_grace() {
    let t = now();
    let active = snapshot_event("evt_1", "customer.subscription.created", t, "active");
    let past_due = snapshot_event("evt_2", "customer.subscription.updated", t + 1, "past_due");
    let again = snapshot_event("evt_3", "customer.subscription.updated", t + 2, "past_due");
    let in_order = without_identity(license_after(&[&active, &past_due, &again]).await).unwrap();
    assert_eq!(in_order["status"], "active");
    let grace_end = time::OffsetDateTime::from_unix_timestamp(t + 1 + 7 * 24 * 3600).unwrap();
    assert_eq!(in_order["grace_ends_at"], billing_core::billing::rfc3339(grace_end));
    // The later past-due update first: grace still counts from the first.
    for order in [[&again, &past_due, &active], [&past_due, &again, &active], [&again, &active, &past_due]] {
        assert_eq!(without_identity(license_after(&order).await).as_ref(), Some(&in_order));
    }
}

#[tokio::test]
async fn a_paid_invoice_proves_entitlement_whichever_comes_first() {
    let t = now();
    let paid = event("evt_inv", "invoice.paid", t, invoice("in_1", "cus_1", "sub_1", 1900));
    let canceled = snapshot_event("evt_2", "customer.subscription.deleted", t + 1, "canceled");
    let before = without_identity(license_after(&[&paid, &canceled]).await);
    assert_eq!(before.as_ref().map(|l| l["status"].clone()), Some(json!("expired")), "{before:?}");
    assert_eq!(without_identity(license_after(&[&canceled, &paid]).await), before);
}

#[tokio::test]
async fn a_subscription_that_never_started_gets_no_license_in_any_order() {
    let t = now();
    let incomplete = snapshot_event("evt_1", "customer.subscription.created", t, "incomplete");
    let failed = event("evt_f", "invoice.payment_failed", t + 1, invoice("in_1", "cus_1", "sub_1", 1900));
    let expired = snapshot_event("evt_2", "customer.subscription.updated", t + 2, "incomplete_expired");
    let canceled = snapshot_event("evt_3", "customer.subscription.deleted", t + 3, "canceled");
    for order in [
        vec![&incomplete, &failed, &expired, &canceled],
        vec![&canceled, &expired, &failed, &incomplete],
        vec![&expired, &incomplete, &canceled, &failed],
    ] {
        assert_eq!(license_after(&order).await, None);
    }
}

#[tokio::test]
async fn payment_statuses_end_the_same_in_either_order() {
    let t = now();
    let failed = event("evt_f", "invoice.payment_failed", t, invoice("in_1", "cus_1", "sub_1", 1900));
    let action = event("evt_a", "invoice.payment_action_required", t + 1, invoice("in_1", "cus_1", "sub_1", 1900));
    let link = snapshot_event("evt_s", "customer.subscription.created", t, "incomplete");
    for order in [[&link, &failed, &action], [&link, &action, &failed]] {
        let app = spawn_app().await;
        for event in order {
            app.deliver(event).await;
        }
        let payments = app.get_payments("u").await;
        assert_eq!(payments.len(), 1);
        assert_eq!(payments[0]["status"], "action_required");
    }
}

#[tokio::test]
async fn customer_metadata_links_its_user_and_a_deletion_is_recorded() {
    let app = spawn_app().await;
    let t = now();
    let customer = |kind: &str, id: &str, created: i64| {
        event(id, kind, created, json!({ "id": "cus_1", "object": "customer", "metadata": { "user_id": "u" } }))
    };
    // A subscription that names no user, linked through its customer.
    let anonymous =
        event("evt_s", "customer.subscription.created", t, subscription("sub_1", "cus_1", "active", PRICE_PRO, None));
    assert_eq!(app.deliver(&anonymous).await, "processed");
    assert_eq!(app.get_current_subscription("u").await, Value::Null);
    assert_eq!(app.deliver(&customer("customer.updated", "evt_c1", t + 1)).await, "processed");
    assert_eq!(app.get_current_subscription("u").await["stripe_subscription_id"], "sub_1");
    assert_eq!(app.get_licenses("u").await.len(), 1);

    assert_eq!(app.deliver(&customer("customer.deleted", "evt_c2", t + 2)).await, "processed");
    let deleted = "SELECT stripe_customer_id FROM customers WHERE deleted_at IS NOT NULL";
    assert_eq!(app.db.strings(deleted).await, ["cus_1"]);
    // A late update neither revives nor relinks it; history stays readable.
    assert_eq!(app.deliver(&customer("customer.updated", "evt_c0", t)).await, "processed");
    assert_eq!(app.db.strings(deleted).await, ["cus_1"]);
    assert_eq!(app.get_current_subscription("u").await["stripe_subscription_id"], "sub_1");
}

#[tokio::test]
async fn checkout_linking_and_payments_leave_audit_rows() {
    let app = spawn_app().await;
    let t = now();
    let created = event(
        "evt_s",
        "customer.subscription.created",
        t,
        subscription("sub_1", "cus_1", "incomplete", PRICE_PRO, None),
    );
    app.deliver(&created).await;
    app.deliver(&event("evt_co", "checkout.session.completed", t + 1, checkout("cs_1", "cus_1", "sub_1", "u"))).await;
    app.deliver(&event("evt_f", "invoice.payment_failed", t + 2, invoice("in_1", "cus_1", "sub_1", 1900))).await;
    app.deliver(&event("evt_p", "invoice.paid", t + 3, invoice("in_1", "cus_1", "sub_1", 1900))).await;
    // A duplicate and a late failure record nothing more.
    app.deliver(&event("evt_p", "invoice.paid", t + 3, invoice("in_1", "cus_1", "sub_1", 1900))).await;
    app.deliver(&event("evt_f2", "invoice.payment_failed", t + 4, invoice("in_1", "cus_1", "sub_1", 1900))).await;

    let history = app.get_history("u").await;
    let rows: Vec<_> = history
        .iter()
        .map(|c| (c["kind"].as_str().unwrap(), c["detail"]["status"].clone(), c["stripe_event_id"].clone()))
        .collect();
    assert_eq!(
        rows,
        [
            ("payment", json!("paid"), json!("evt_p")),
            ("payment", json!("failed"), json!("evt_f")),
            ("checkout_linked", Value::Null, json!("evt_co")),
            ("created", json!("incomplete"), json!("evt_s")),
        ]
    );
    assert_eq!(
        history[0]["detail"],
        json!({ "invoice_id": "in_1", "status": "paid", "amount": 1900, "currency": "usd" })
    );
    assert_eq!(history[1]["actor"], "stripe");
    assert_eq!(history[2]["detail"], json!({ "checkout_session_id": "cs_1" }));
}
