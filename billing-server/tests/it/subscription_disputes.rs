//! Refunds and disputes of subscription invoices (issue 17): a charge is
//! linked to a subscription's license only through what paid its invoice,
//! as recorded when it was paid (the invoice's `payment_intent`/`charge`
//! before basil, `invoice_payment.paid` from basil on). Stripe's API is
//! the fake one, and nothing here may call it: linking never asks Stripe.

use crate::helpers::*;
use serde_json::{json, Value};
use wiremock::MockServer;

/// How the subscription's invoice was paid, by payload shape.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// Before 2025-03-31: the invoice names its payment intent and charge.
    PreBasil,
    /// Basil on: the invoice names neither; `invoice_payment.paid` does.
    Basil,
}

const SHAPES: [Shape; 2] = [Shape::PreBasil, Shape::Basil];

struct Subscribed {
    app: TestApp,
    stripe: MockServer,
    key: String,
    events: EventReader,
}

impl Subscribed {
    /// Nothing asked Stripe's API anything.
    async fn stripe_was_not_called(&self) {
        let requests = self.stripe.received_requests().await.unwrap();
        assert!(
            requests.is_empty(),
            "Stripe was called: {:?}",
            requests.iter().map(|r| r.url.path()).collect::<Vec<_>>()
        );
    }
}

fn with_api_version(mut event: Value, version: &str) -> Value {
    event["api_version"] = json!(version);
    event
}

/// The paid invoice `in_s` of `sub_s`, paid by `pi_s` (charge `ch_s`), as
/// Stripe delivers it in `shape`: one event before basil, two from basil on.
fn invoice_paid(shape: Shape, created: i64) -> Vec<Value> {
    match shape {
        Shape::PreBasil => {
            let object = json!({
                "id": "in_s", "object": "invoice", "customer": "cus_s", "subscription": "sub_s",
                "currency": "eur", "amount_paid": 1900, "amount_due": 1900, "status": "paid",
                "payment_intent": "pi_s", "charge": "ch_s", "status_transitions": { "paid_at": created }
            });
            vec![with_api_version(event("evt_in_paid", "invoice.paid", created, object), "2024-06-20")]
        }
        Shape::Basil => {
            let mut paid = invoice("in_s", "cus_s", "sub_s", 1900);
            paid["currency"] = json!("eur");
            vec![
                with_api_version(event("evt_in_paid", "invoice.paid", created, paid), "2025-03-31.basil"),
                with_api_version(
                    event("evt_inpay", "invoice_payment.paid", created, invoice_payment()),
                    "2025-03-31.basil",
                ),
            ]
        }
    }
}

fn invoice_payment() -> Value {
    json!({
        "id": "inpay_s", "object": "invoice_payment", "amount_paid": 1900, "amount_requested": 1900,
        "currency": "eur", "invoice": "in_s", "is_default": true, "livemode": false, "status": "paid",
        "payment": { "type": "payment_intent", "payment_intent": "pi_s" },
        "status_transitions": { "canceled_at": null, "paid_at": now() - 50 }
    })
}

/// User `s` with an active `pro` subscription whose first invoice was paid
/// in `shape`, its license activated on one device whose stream is open.
async fn subscribed(shape: Shape) -> Subscribed {
    let stripe = MockServer::start().await;
    let app = spawn_app_with(Options { stripe_api_base: Some(stripe.uri()), ..Default::default() }).await;
    app.deliver(&event(
        "evt_sub",
        "customer.subscription.created",
        now() - 100,
        subscription("sub_s", "cus_s", "active", PRICE_PRO, Some("s")),
    ))
    .await;
    for delivery in invoice_paid(shape, now() - 50) {
        app.deliver(&delivery).await;
    }
    let key = the_license(&app).await["key"].as_str().unwrap().to_owned();
    let token = app.activate_ok(&key, "fp-1").await["activation_token"].as_str().unwrap().to_owned();
    let response = app.open_event_stream(&key, &token, None).await;
    assert_eq!(response.status(), 200);
    Subscribed { app, stripe, key, events: EventReader::new(response) }
}

async fn the_license(app: &TestApp) -> Value {
    let licenses = app.get_licenses("s").await;
    assert_eq!(licenses.len(), 1, "{licenses:?}");
    licenses[0].clone()
}

/// A dispute of the invoice's charge, as Stripe sends it: `charge` and
/// `payment_intent` (basil keeps both on a dispute).
fn dispute(id: &str, status: &str) -> Value {
    json!({
        "id": id, "object": "dispute", "amount": 1900, "currency": "eur", "charge": "ch_s",
        "payment_intent": "pi_s", "status": status, "reason": "fraudulent"
    })
}

fn refunded_charge(amount_refunded: i64) -> Value {
    json!({
        "id": "ch_s", "object": "charge", "amount": 1900, "amount_refunded": amount_refunded, "currency": "eur",
        "payment_intent": "pi_s", "refunded": amount_refunded == 1900, "customer": "cus_s"
    })
}

fn verdict_code(verdict: &Value) -> (bool, String) {
    (verdict["valid"].as_bool().unwrap(), verdict["code"].as_str().unwrap().to_owned())
}

async fn note_of(app: &TestApp, event_id: &str) -> String {
    let notes = app.db.strings(&format!("SELECT note FROM webhook_events WHERE id = '{event_id}'")).await;
    notes.into_iter().next().unwrap_or_else(|| panic!("{event_id} has no note"))
}

async fn license_change_kinds(app: &TestApp) -> Vec<String> {
    app.db.strings("SELECT kind FROM license_changes ORDER BY id").await
}

async fn license_change_reasons(app: &TestApp) -> Vec<String> {
    let sql = if backend() == Backend::Sqlite {
        "SELECT json_extract(detail, '$.reason') FROM license_changes ORDER BY id"
    } else {
        "SELECT detail->>'reason' FROM license_changes ORDER BY id"
    };
    app.db.strings(sql).await
}

async fn status_and_reason(events: &mut EventReader) -> (String, String) {
    let message = events.next_of("license.updated").await;
    (message.data["status"].as_str().unwrap().to_owned(), message.data["reason"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn a_dispute_suspends_the_subscription_s_license_and_winning_it_restores_it() {
    for shape in SHAPES {
        let mut s = subscribed(shape).await;
        let app = &s.app;
        app.deliver(&event("evt_dispute", "charge.dispute.created", now() - 10, dispute("dp_1", "needs_response")))
            .await;
        assert_eq!(status_and_reason(&mut s.events).await, ("suspended".into(), "dispute".into()), "{shape:?}");
        assert_eq!(verdict_code(&s.app.validate(&s.key, Some("fp-1")).await), (false, "SUSPENDED".into()));
        assert_eq!(the_license(&s.app).await["status"], "suspended");

        s.app.deliver(&event("evt_won", "charge.dispute.closed", now(), dispute("dp_1", "won"))).await;
        assert_eq!(status_and_reason(&mut s.events).await, ("active".into(), "dispute_won".into()), "{shape:?}");
        assert_eq!(verdict_code(&s.app.validate(&s.key, Some("fp-1")).await), (true, "VALID".into()));
        assert_eq!(license_change_kinds(&s.app).await, ["suspended", "reinstated"], "{shape:?}");
        assert_eq!(license_change_reasons(&s.app).await, ["dispute", "dispute_won"]);
        s.stripe_was_not_called().await;
    }
}

#[tokio::test]
async fn a_lost_dispute_revokes_the_subscription_s_license() {
    for shape in SHAPES {
        let mut s = subscribed(shape).await;
        s.app
            .deliver(&event("evt_dispute", "charge.dispute.created", now() - 10, dispute("dp_1", "needs_response")))
            .await;
        assert_eq!(status_and_reason(&mut s.events).await.0, "suspended");
        s.app.deliver(&event("evt_lost", "charge.dispute.closed", now(), dispute("dp_1", "lost"))).await;
        assert_eq!(status_and_reason(&mut s.events).await, ("revoked".into(), "dispute_lost".into()), "{shape:?}");
        assert_eq!(verdict_code(&s.app.validate(&s.key, Some("fp-1")).await), (false, "REVOKED".into()));
        // The subscription renewing afterwards does not bring it back.
        let mut renewed = subscription("sub_s", "cus_s", "active", PRICE_PRO, Some("s"));
        renewed["current_period_end"] = json!(period_end() + 30 * 86_400);
        s.app.deliver(&event("evt_renewed", "customer.subscription.updated", now() + 5, renewed)).await;
        assert_eq!(the_license(&s.app).await["status"], "revoked");
        s.stripe_was_not_called().await;
    }
}

#[tokio::test]
async fn the_subscription_changing_during_a_dispute_keeps_its_license_suspended() {
    let mut s = subscribed(Shape::Basil).await;
    s.app.deliver(&event("evt_dispute", "charge.dispute.created", now() - 10, dispute("dp_1", "needs_response"))).await;
    assert_eq!(status_and_reason(&mut s.events).await.0, "suspended");
    let downgraded = subscription("sub_s", "cus_s", "active", PRICE_BASIC, Some("s"));
    s.app.deliver(&event("evt_downgraded", "customer.subscription.updated", now() - 5, downgraded)).await;
    let license = the_license(&s.app).await;
    assert_eq!((license["status"].as_str(), license["plan"].as_str()), (Some("suspended"), Some("basic")), "{license}");
    s.app.deliver(&event("evt_won", "charge.dispute.closed", now(), dispute("dp_1", "won"))).await;
    let license = the_license(&s.app).await;
    assert_eq!((license["status"].as_str(), license["plan"].as_str()), (Some("active"), Some("basic")), "{license}");
}

#[tokio::test]
async fn refunds_of_a_subscription_invoice_are_recorded_and_change_nothing() {
    for shape in SHAPES {
        let s = subscribed(shape).await;
        let before = the_license(&s.app).await;
        let outbox = s.app.count("outbox_events").await;
        s.app.deliver(&event("evt_partial", "charge.refunded", now() - 5, refunded_charge(500))).await;
        s.app.deliver(&event("evt_full", "charge.refunded", now(), refunded_charge(1900))).await;
        for id in ["evt_partial", "evt_full"] {
            assert_eq!(note_of(&s.app, id).await, "subscription invoice refunded: the license is kept", "{shape:?}");
        }
        assert_eq!(license_change_kinds(&s.app).await, ["partially_refunded", "refunded"], "{shape:?}");
        assert_eq!(license_change_reasons(&s.app).await, ["refund", "refund"]);
        assert_eq!(the_license(&s.app).await, before);
        assert_eq!(s.app.count("outbox_events").await, outbox, "nothing to tell the device");
        assert_eq!(verdict_code(&s.app.validate(&s.key, Some("fp-1")).await), (true, "VALID".into()));
        s.stripe_was_not_called().await;
    }
}

#[tokio::test]
async fn an_unlinkable_charge_is_recorded_and_ignored() {
    let s = subscribed(Shape::PreBasil).await;
    // A second subscription of the same customer whose invoice recorded no
    // payment (basil, no invoice_payment.paid yet): its charge links to nothing.
    s.app
        .deliver(&event("evt_in_other", "invoice.paid", now() - 40, invoice("in_other", "cus_s", "sub_s", 1900)))
        .await;
    let before = the_license(&s.app).await;
    let outbox = s.app.count("outbox_events").await;
    let mut unknown = dispute("dp_x", "needs_response");
    (unknown["payment_intent"], unknown["charge"]) = (json!("pi_other"), json!("ch_other"));
    s.app.deliver(&event("evt_unknown_dispute", "charge.dispute.created", now(), unknown)).await;
    let mut refund = refunded_charge(1900);
    (refund["id"], refund["payment_intent"]) = (json!("ch_other"), json!("pi_other"));
    s.app.deliver(&event("evt_unknown_refund", "charge.refunded", now(), refund)).await;
    for id in ["evt_unknown_dispute", "evt_unknown_refund"] {
        assert_eq!(note_of(&s.app, id).await, "charge not linked to a license: ignored", "{id}");
    }
    assert_eq!(s.app.db.int("SELECT count(*) FROM webhook_events WHERE id LIKE 'evt_unknown_%'").await, 2, "recorded");
    assert_eq!(the_license(&s.app).await, before);
    assert_eq!(s.app.count("outbox_events").await, outbox);
    assert_eq!(s.app.count("license_changes").await, 0);
    s.stripe_was_not_called().await;
}

#[tokio::test]
async fn duplicate_dispute_deliveries_change_nothing_more() {
    let mut s = subscribed(Shape::PreBasil).await;
    let opened = event("evt_dispute", "charge.dispute.created", now() - 10, dispute("dp_1", "needs_response"));
    s.app.deliver(&opened).await;
    assert_eq!(status_and_reason(&mut s.events).await.0, "suspended");
    s.app.deliver(&opened).await;
    s.app
        .deliver(&event("evt_dispute_2", "charge.dispute.created", now() - 9, dispute("dp_1", "needs_response")))
        .await;
    assert_eq!(note_of(&s.app, "evt_dispute_2").await, "dispute already open");
    let won = event("evt_won", "charge.dispute.closed", now(), dispute("dp_1", "won"));
    s.app.deliver(&won).await;
    s.app.deliver(&won).await;
    s.app.deliver(&event("evt_won_2", "charge.dispute.closed", now() + 1, dispute("dp_1", "won"))).await;
    assert_eq!(note_of(&s.app, "evt_won_2").await, "dispute already closed");
    assert_eq!(license_change_kinds(&s.app).await, ["suspended", "reinstated"]);
    assert_eq!(verdict_code(&s.app.validate(&s.key, Some("fp-1")).await), (true, "VALID".into()));
    // The paid invoice delivered again records nothing new either.
    for delivery in invoice_paid(Shape::PreBasil, now() - 50) {
        s.app.deliver(&with_id(delivery, "evt_in_paid_again")).await;
    }
    assert_eq!(note_of(&s.app, "evt_in_paid_again").await, "payment already recorded");
    assert_eq!(s.app.count("invoice_charges").await, 1);
}

fn with_id(mut event: Value, id: &str) -> Value {
    event["id"] = json!(id);
    event
}

#[tokio::test]
async fn a_dispute_closed_before_its_opening_arrives_ends_as_in_order_delivery_does() {
    for (status, valid, code) in [("won", true, "VALID"), ("lost", false, "REVOKED")] {
        for shape in SHAPES {
            let s = subscribed(shape).await;
            s.app.deliver(&event("evt_closed", "charge.dispute.closed", now(), dispute("dp_1", status))).await;
            s.app
                .deliver(&event(
                    "evt_opened_late",
                    "charge.dispute.created",
                    now() - 10,
                    dispute("dp_1", "needs_response"),
                ))
                .await;
            assert_eq!(note_of(&s.app, "evt_opened_late").await, "dispute already closed", "{status} {shape:?}");
            assert_eq!(
                verdict_code(&s.app.validate(&s.key, Some("fp-1")).await),
                (valid, code.to_owned()),
                "{status} {shape:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_basil_invoice_payment_recorded_before_its_invoice_links_once_the_invoice_arrives() {
    let stripe = MockServer::start().await;
    let app = spawn_app_with(Options { stripe_api_base: Some(stripe.uri()), ..Default::default() }).await;
    let basil = "2025-03-31.basil";
    app.deliver(&with_api_version(event("evt_inpay", "invoice_payment.paid", now() - 60, invoice_payment()), basil))
        .await;
    app.deliver(&event(
        "evt_sub",
        "customer.subscription.created",
        now() - 100,
        subscription("sub_s", "cus_s", "active", PRICE_PRO, Some("s")),
    ))
    .await;
    // Not yet linked: the invoice's payment row, which names the subscription, has not arrived.
    app.deliver(&event("evt_early", "charge.dispute.created", now() - 30, dispute("dp_0", "warning_needs_response")))
        .await;
    assert_eq!(note_of(&app, "evt_early").await, "charge not linked to a license: ignored");
    let mut paid = invoice("in_s", "cus_s", "sub_s", 1900);
    paid["currency"] = json!("eur");
    app.deliver(&with_api_version(event("evt_in_paid", "invoice.paid", now() - 50, paid), basil)).await;
    app.deliver(&event("evt_dispute", "charge.dispute.created", now() - 10, dispute("dp_1", "needs_response"))).await;
    assert_eq!(the_license(&app).await["status"], "suspended");
    assert!(stripe.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_dispute_s_deliveries_arriving_together_in_any_order_end_as_in_order_delivery_does() {
    for (status, expected) in [("won", "active"), ("lost", "revoked")] {
        for reversed in [false, true] {
            let s = subscribed(Shape::Basil).await;
            let mut deliveries = [
                event("evt_opened", "charge.dispute.created", now() - 10, dispute("dp_1", "needs_response")),
                event("evt_opened_again", "charge.dispute.created", now() - 9, dispute("dp_1", "needs_response")),
                event("evt_closed", "charge.dispute.closed", now(), dispute("dp_1", status)),
                event("evt_closed_again", "charge.dispute.closed", now() + 1, dispute("dp_1", status)),
            ];
            if reversed {
                deliveries.reverse();
            }
            // Each one twice, all at once: they meet in groups of any make-up.
            let all: Vec<Value> = deliveries.iter().chain(deliveries.iter()).cloned().collect();
            let answers = futures_util::future::join_all(all.iter().map(|e| s.app.post_stripe_webhook(e))).await;
            assert!(answers.iter().all(|a| a.status() == 200), "every delivery acknowledged");
            let license = the_license(&s.app).await;
            assert_eq!(license["status"], expected, "{status}, reversed: {reversed}");
            let disputed = s.app.db.int("SELECT count(*) FROM licenses WHERE disputed_at IS NOT NULL").await;
            assert_eq!(disputed, 0, "no dispute left open");
            assert_eq!(s.app.count("charge_disputes").await, 1);
        }
    }
}

#[tokio::test]
async fn a_license_disputed_twice_is_restored_only_once_both_disputes_are_won() {
    let mut s = subscribed(Shape::PreBasil).await;
    // The next month's invoice, paid by `pi_s2`.
    let object = json!({
        "id": "in_s2", "object": "invoice", "customer": "cus_s", "subscription": "sub_s", "currency": "eur",
        "amount_paid": 1900, "amount_due": 1900, "status": "paid", "payment_intent": "pi_s2", "charge": "ch_s2",
        "status_transitions": { "paid_at": now() - 40 }
    });
    s.app.deliver(&with_api_version(event("evt_in2_paid", "invoice.paid", now() - 40, object), "2024-06-20")).await;
    let mut second = dispute("dp_2", "needs_response");
    (second["charge"], second["payment_intent"]) = (json!("ch_s2"), json!("pi_s2"));
    s.app.deliver(&event("evt_open_1", "charge.dispute.created", now() - 20, dispute("dp_1", "needs_response"))).await;
    assert_eq!(status_and_reason(&mut s.events).await.0, "suspended");
    s.app.deliver(&event("evt_open_2", "charge.dispute.created", now() - 15, second.clone())).await;
    s.app.deliver(&event("evt_won_1", "charge.dispute.closed", now() - 10, dispute("dp_1", "won"))).await;
    assert_eq!(note_of(&s.app, "evt_won_1").await, "another dispute of the license is open");
    assert_eq!(verdict_code(&s.app.validate(&s.key, Some("fp-1")).await), (false, "SUSPENDED".into()));
    second["status"] = json!("won");
    s.app.deliver(&event("evt_won_2", "charge.dispute.closed", now(), second)).await;
    assert_eq!(status_and_reason(&mut s.events).await, ("active".into(), "dispute_won".into()));
    assert_eq!(verdict_code(&s.app.validate(&s.key, Some("fp-1")).await), (true, "VALID".into()));
}
