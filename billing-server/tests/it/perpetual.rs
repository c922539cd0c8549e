//! Perpetual purchases through Stripe Checkout (issue 17): the exact
//! one-time-payment session a perpetual plan asks Stripe for.

use crate::helpers::*;
use billing_core::domain::{LicenseKind, Plan, PlanCatalog};
use serde_json::{json, Value};
use wiremock::{MockServer, ResponseTemplate};

const PRICE_STUDIO: &str = "price_studio_once";

/// The usual `pro` and `basic`, and a perpetual `studio` with a year of updates.
fn perpetual_plans() -> PlanCatalog {
    let mut all: Vec<Plan> = plans().all().to_vec();
    all.push(Plan {
        kind: LicenseKind::Perpetual,
        updates_months: Some(12),
        ..Plan::new("studio", "Studio", PRICE_STUDIO, 2)
    });
    PlanCatalog::new(all).unwrap()
}

async fn perpetual_app(stripe: &MockServer) -> TestApp {
    spawn_app_with(Options {
        stripe_api_base: Some(stripe.uri()),
        plans: Some(perpetual_plans()),
        ..Default::default()
    })
    .await
}

/// The form a perpetual checkout for `user` sends, less how the customer is named.
fn perpetual_checkout_form(user: &str) -> Vec<(&'static str, String)> {
    vec![
        ("mode", "payment".into()),
        ("line_items[0][price]", PRICE_STUDIO.into()),
        ("line_items[0][quantity]", "1".into()),
        ("success_url", "https://app.example/ok".into()),
        ("cancel_url", "https://app.example/no".into()),
        ("client_reference_id", user.into()),
        ("metadata[user_id]", user.into()),
        ("metadata[plan]", "studio".into()),
        ("payment_intent_data[metadata][user_id]", user.into()),
    ]
}

async fn checkout(app: &TestApp, user: &str) -> (u16, Value) {
    let response = app
        .http
        .post(app.url("/api/stripe/checkout/create"))
        .bearer_auth(jwt_for(user))
        .json(&json!({ "plan": "studio", "success_url": "https://app.example/ok", "cancel_url": "https://app.example/no" }))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

fn session_answer(id: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({ "id": id, "url": format!("https://checkout.stripe.com/c/{id}") }))
}

#[tokio::test]
async fn a_perpetual_checkout_for_a_new_customer_asks_stripe_to_create_one() {
    let stripe = MockServer::start().await;
    let app = perpetual_app(&stripe).await;
    let mut form = perpetual_checkout_form("newbie");
    form.push(("customer_creation", "always".into()));
    stripe_write("POST", "/v1/checkout/sessions", "checkout", form)
        .respond_with(session_answer("cs_new"))
        .expect(1)
        .mount(&stripe)
        .await;
    let (status, body) = checkout(&app, "newbie").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({ "id": "cs_new", "url": "https://checkout.stripe.com/c/cs_new" }));
}

#[tokio::test]
async fn a_perpetual_checkout_reuses_the_customer_and_is_not_refused_for_a_subscription() {
    let stripe = MockServer::start().await;
    let app = perpetual_app(&stripe).await;
    app.deliver(&event(
        "evt_sub",
        "customer.subscription.created",
        now() - 100,
        subscription("sub_u", "cus_u", "active", PRICE_PRO, Some("u")),
    ))
    .await;
    let mut form = perpetual_checkout_form("u");
    form.push(("customer", "cus_u".into()));
    stripe_write("POST", "/v1/checkout/sessions", "checkout", form)
        .respond_with(session_answer("cs_u"))
        .expect(1)
        .mount(&stripe)
        .await;
    let (status, body) = checkout(&app, "u").await;
    assert_eq!((status, body["id"].as_str()), (200, Some("cs_u")), "{body}");
}

/// A payment-mode Checkout Session of `studio` for user `u`, as Stripe
/// delivers it (no line items: webhooks carry none).
fn session(id: &str, payment_status: &str) -> Value {
    json!({
        "id": id, "object": "checkout.session", "mode": "payment", "status": "complete",
        "payment_status": payment_status, "client_reference_id": "u", "customer": "cus_u",
        "payment_intent": format!("pi_{id}"), "subscription": null, "amount_total": 4900, "currency": "eur",
        "metadata": { "user_id": "u", "plan": "studio" }
    })
}

async fn app_without_stripe_api() -> TestApp {
    spawn_app_with(Options { plans: Some(perpetual_plans()), ..Default::default() }).await
}

fn parse_time(value: &Value) -> time::OffsetDateTime {
    let text = value.as_str().unwrap_or_else(|| panic!("not a time: {value}"));
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap()
}

/// The note a delivery was recorded with (ids here are plain test ids).
async fn note_of(app: &TestApp, event_id: &str) -> String {
    let notes = app.db.strings(&format!("SELECT note FROM webhook_events WHERE id = '{event_id}'")).await;
    notes.into_iter().next().unwrap_or_else(|| panic!("{event_id} has no note"))
}

/// The user's licenses, asserting there is exactly one.
async fn the_license(app: &TestApp) -> Value {
    let licenses = app.get_licenses("u").await;
    assert_eq!(licenses.len(), 1, "{licenses:?}");
    licenses[0].clone()
}

fn expected_updates_until(paid_at: i64) -> time::OffsetDateTime {
    let plans = perpetual_plans();
    let studio = plans.by_id("studio").unwrap();
    billing_core::domain::license::updates_window_end(
        studio,
        time::OffsetDateTime::from_unix_timestamp(paid_at).unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_paid_session_issues_one_perpetual_license_with_its_payment() {
    let app = app_without_stripe_api().await;
    let paid_at = now() - 30;
    let completed = event("evt_paid", "checkout.session.completed", paid_at, session("cs_1", "paid"));
    assert_eq!(app.deliver(&completed).await, "processed");
    let license = the_license(&app).await;
    assert_eq!(
        (license["kind"].as_str(), license["status"].as_str(), license["plan"].as_str(), &license["expires_at"]),
        (Some("perpetual"), Some("active"), Some("studio"), &Value::Null),
        "{license}"
    );
    assert_eq!(parse_time(&license["updates_until"]), expected_updates_until(paid_at));
    let payments = app.get_payments("u").await;
    assert_eq!(payments.len(), 1, "{payments:?}");
    assert_eq!((payments[0]["status"].as_str(), payments[0]["amount"].as_i64()), (Some("paid"), Some(4900)));

    // The same delivery again, and the same session under another event.
    assert_eq!(app.deliver(&completed).await, "duplicate");
    app.deliver(&event("evt_again", "checkout.session.async_payment_succeeded", paid_at + 5, session("cs_1", "paid")))
        .await;
    assert_eq!(the_license(&app).await["key"], license["key"], "one license per session");
    assert_eq!(app.get_payments("u").await.len(), 1, "one payment per session");
    assert_eq!(app.count("purchases").await, 1);
    assert_eq!(note_of(&app, "evt_again").await, "checkout's license already issued");
    let topics = app.db.strings("SELECT topic FROM outbox_events").await;
    assert_eq!(topics.iter().filter(|t| *t == "license.created").count(), 1, "{topics:?}");
}

#[tokio::test]
async fn an_unpaid_session_issues_nothing_until_its_delayed_payment_succeeds() {
    let app = app_without_stripe_api().await;
    let created = now() - 60;
    app.deliver(&event("evt_open", "checkout.session.completed", created, session("cs_2", "unpaid"))).await;
    assert!(app.get_licenses("u").await.is_empty(), "not paid yet");
    assert_eq!(note_of(&app, "evt_open").await, "checkout not paid yet");

    let paid_at = created + 20;
    app.deliver(&event("evt_cleared", "checkout.session.async_payment_succeeded", paid_at, session("cs_2", "paid")))
        .await;
    let license = the_license(&app).await;
    assert_eq!((license["kind"].as_str(), license["status"].as_str()), (Some("perpetual"), Some("active")));
    assert_eq!(parse_time(&license["updates_until"]), expected_updates_until(paid_at));

    // A late redelivery of the unpaid completion undoes nothing.
    app.deliver(&event("evt_open_late", "checkout.session.completed", created, session("cs_2", "unpaid"))).await;
    assert_eq!(the_license(&app).await, license);
}

#[tokio::test]
async fn out_of_order_deliveries_issue_one_license() {
    let app = app_without_stripe_api().await;
    let created = now() - 60;
    app.deliver(&event(
        "evt_cleared",
        "checkout.session.async_payment_succeeded",
        created + 20,
        session("cs_3", "paid"),
    ))
    .await;
    app.deliver(&event("evt_open", "checkout.session.completed", created, session("cs_3", "unpaid"))).await;
    let license = the_license(&app).await;
    assert_eq!(license["status"], "active");
    assert_eq!(app.count("purchases").await, 1);
    // A failure reported after the payment cleared does not demote it.
    app.deliver(&event("evt_failed", "checkout.session.async_payment_failed", created + 10, session("cs_3", "unpaid")))
        .await;
    let payments = app.get_payments("u").await;
    assert_eq!((payments.len(), payments[0]["status"].as_str()), (1, Some("paid")), "{payments:?}");
    assert_eq!(the_license(&app).await, license);
}

#[tokio::test]
async fn a_failed_delayed_payment_is_recorded_and_issues_nothing() {
    let app = app_without_stripe_api().await;
    let created = now() - 60;
    app.deliver(&event("evt_open", "checkout.session.completed", created, session("cs_4", "unpaid"))).await;
    app.deliver(&event("evt_failed", "checkout.session.async_payment_failed", created + 20, session("cs_4", "unpaid")))
        .await;
    assert!(app.get_licenses("u").await.is_empty());
    let payments = app.get_payments("u").await;
    assert_eq!((payments.len(), payments[0]["status"].as_str()), (1, Some("failed")), "{payments:?}");
    assert_eq!(app.count("purchases").await, 0);
}

#[tokio::test]
async fn a_paid_session_without_a_user_or_a_perpetual_plan_issues_nothing() {
    let app = app_without_stripe_api().await;
    let mut anonymous = session("cs_5", "paid");
    anonymous["client_reference_id"] = Value::Null;
    anonymous["metadata"] = json!({ "plan": "studio" });
    app.deliver(&event("evt_anon", "checkout.session.completed", now(), anonymous)).await;
    let mut subscription_plan = session("cs_6", "paid");
    subscription_plan["metadata"]["plan"] = json!("pro");
    app.deliver(&event("evt_pro", "checkout.session.completed", now(), subscription_plan)).await;
    assert!(app.get_licenses("u").await.is_empty());
    assert_eq!(note_of(&app, "evt_anon").await, "checkout names no user");
    assert_eq!(note_of(&app, "evt_pro").await, "checkout names no perpetual plan");
}

/// A perpetual license bought through checkout `cs_r` (paid by `pi_cs_r`),
/// activated on one device whose event stream is open.
async fn bought_and_listening(app: &TestApp) -> (String, EventReader) {
    app.deliver(&event("evt_bought", "checkout.session.completed", now() - 60, session("cs_r", "paid"))).await;
    let key = the_license(app).await["key"].as_str().unwrap().to_owned();
    let token = app.activate_ok(&key, "fp-1").await["activation_token"].as_str().unwrap().to_owned();
    let response = app.open_event_stream(&key, &token, None).await;
    assert_eq!(response.status(), 200);
    (key, EventReader::new(response))
}

fn charge(payment_intent: &str, amount_refunded: i64) -> Value {
    json!({
        "id": "ch_r", "object": "charge", "amount": 4900, "amount_refunded": amount_refunded, "currency": "eur",
        "payment_intent": payment_intent, "refunded": amount_refunded == 4900, "customer": "cus_u"
    })
}

fn dispute(payment_intent: &str, status: &str) -> Value {
    json!({
        "id": "dp_r", "object": "dispute", "amount": 4900, "currency": "eur", "charge": "ch_r",
        "payment_intent": payment_intent, "status": status, "reason": "fraudulent"
    })
}

fn verdict_code(verdict: &Value) -> (bool, &str) {
    (verdict["valid"].as_bool().unwrap(), verdict["code"].as_str().unwrap())
}

async fn license_change_kinds(app: &TestApp) -> Vec<String> {
    app.db.strings("SELECT kind FROM license_changes ORDER BY id").await
}

#[tokio::test]
async fn a_full_refund_revokes_the_license_and_tells_its_device() {
    let app = app_without_stripe_api().await;
    let (key, mut events) = bought_and_listening(&app).await;
    app.deliver(&event("evt_refund", "charge.refunded", now(), charge("pi_cs_r", 4900))).await;
    let message = events.next_of("license.updated").await;
    assert_eq!((message.data["status"].as_str(), message.data["reason"].as_str()), (Some("revoked"), Some("refund")));
    assert_eq!(verdict_code(&app.validate(&key, Some("fp-1")).await), (false, "REVOKED"));
    assert_eq!(license_change_kinds(&app).await, ["issued", "revoked"]);
}

#[tokio::test]
async fn a_partial_refund_is_recorded_and_changes_nothing() {
    let app = app_without_stripe_api().await;
    let (key, _events) = bought_and_listening(&app).await;
    let outbox = app.count("outbox_events").await;
    app.deliver(&event("evt_partial", "charge.refunded", now(), charge("pi_cs_r", 1000))).await;
    assert_eq!(verdict_code(&app.validate(&key, Some("fp-1")).await), (true, "VALID"));
    assert_eq!(license_change_kinds(&app).await, ["issued", "partially_refunded"]);
    assert_eq!(note_of(&app, "evt_partial").await, "partial refund: the license is kept");
    assert_eq!(app.count("outbox_events").await, outbox, "nothing to tell the device");
}

#[tokio::test]
async fn a_dispute_suspends_the_license_and_winning_it_restores_it() {
    let app = app_without_stripe_api().await;
    let (key, mut events) = bought_and_listening(&app).await;
    app.deliver(&event("evt_dispute", "charge.dispute.created", now() - 10, dispute("pi_cs_r", "needs_response")))
        .await;
    let message = events.next_of("license.updated").await;
    assert_eq!(
        (message.data["status"].as_str(), message.data["reason"].as_str()),
        (Some("suspended"), Some("dispute"))
    );
    assert_eq!(verdict_code(&app.validate(&key, Some("fp-1")).await), (false, "SUSPENDED"));
    // The same dispute delivered again changes nothing.
    app.deliver(&event("evt_dispute_again", "charge.dispute.created", now() - 5, dispute("pi_cs_r", "needs_response")))
        .await;
    assert_eq!(note_of(&app, "evt_dispute_again").await, "dispute already open");

    app.deliver(&event("evt_won", "charge.dispute.closed", now(), dispute("pi_cs_r", "won"))).await;
    let message = events.next_of("license.updated").await;
    assert_eq!(
        (message.data["status"].as_str(), message.data["reason"].as_str()),
        (Some("active"), Some("dispute_won"))
    );
    assert_eq!(verdict_code(&app.validate(&key, Some("fp-1")).await), (true, "VALID"));
    assert_eq!(license_change_kinds(&app).await, ["issued", "suspended", "reinstated"]);
}

#[tokio::test]
async fn a_lost_dispute_revokes_the_license() {
    let app = app_without_stripe_api().await;
    let (key, mut events) = bought_and_listening(&app).await;
    app.deliver(&event("evt_dispute", "charge.dispute.created", now() - 10, dispute("pi_cs_r", "needs_response")))
        .await;
    assert_eq!(events.next_of("license.updated").await.data["status"], "suspended");
    app.deliver(&event("evt_lost", "charge.dispute.closed", now(), dispute("pi_cs_r", "lost"))).await;
    let message = events.next_of("license.updated").await;
    assert_eq!(
        (message.data["status"].as_str(), message.data["reason"].as_str()),
        (Some("revoked"), Some("dispute_lost"))
    );
    assert_eq!(verdict_code(&app.validate(&key, Some("fp-1")).await), (false, "REVOKED"));
}

#[tokio::test]
async fn an_admin_suspension_outlasts_a_won_dispute() {
    let app = app_without_stripe_api().await;
    let (key, _events) = bought_and_listening(&app).await;
    let id = the_license(&app).await["id"].as_str().unwrap().to_owned();
    app.deliver(&event("evt_dispute", "charge.dispute.created", now() - 10, dispute("pi_cs_r", "needs_response")))
        .await;
    let token = app.admin_token(&["licenses:write"]).await;
    app.admin_ok(reqwest::Method::POST, &format!("/api/admin/licenses/{id}/suspend"), &token, None, 200).await;
    app.deliver(&event("evt_won", "charge.dispute.closed", now(), dispute("pi_cs_r", "won"))).await;
    assert_eq!(verdict_code(&app.validate(&key, Some("fp-1")).await), (false, "SUSPENDED"), "the admin's holds");
    app.admin_ok(reqwest::Method::POST, &format!("/api/admin/licenses/{id}/reinstate"), &token, None, 200).await;
    assert_eq!(verdict_code(&app.validate(&key, Some("fp-1")).await), (true, "VALID"));
}

#[tokio::test]
async fn a_charge_we_hold_no_payment_for_is_recorded_and_ignored() {
    let app = app_without_stripe_api().await;
    let (key, _events) = bought_and_listening(&app).await;
    // A subscription's invoice charge, and a charge of some other sale.
    app.deliver(&event(
        "evt_sub",
        "customer.subscription.created",
        now() - 100,
        subscription("sub_u", "cus_u", "active", PRICE_PRO, Some("u")),
    ))
    .await;
    let licenses_before = app.get_licenses("u").await;
    let outbox = app.count("outbox_events").await;
    app.deliver(&event("evt_other_refund", "charge.refunded", now(), charge("pi_unknown", 4900))).await;
    app.deliver(&event("evt_other_dispute", "charge.dispute.created", now(), dispute("pi_unknown", "needs_response")))
        .await;
    let mut no_intent = dispute("pi_unknown", "needs_response");
    no_intent["payment_intent"] = Value::Null;
    app.deliver(&event("evt_bare_dispute", "charge.dispute.created", now(), no_intent)).await;
    for id in ["evt_other_refund", "evt_other_dispute", "evt_bare_dispute"] {
        assert_eq!(note_of(&app, id).await, "charge not linked to a license: ignored", "{id}");
    }
    assert_eq!(app.get_licenses("u").await, licenses_before);
    assert_eq!(app.count("outbox_events").await, outbox);
    assert_eq!(verdict_code(&app.validate(&key, Some("fp-1")).await), (true, "VALID"));
}

#[tokio::test]
async fn a_purchased_license_shows_in_the_admin_customer_listing_with_its_kind_and_window() {
    let app = app_without_stripe_api().await;
    let paid_at = now() - 60;
    app.deliver(&event("evt_bought", "checkout.session.completed", paid_at, session("cs_l", "paid"))).await;
    let token = app.admin_token(&["customers:read"]).await;
    let found = app.admin_ok(reqwest::Method::GET, "/api/admin/customers?q=u", &token, None, 200).await;
    let licenses = found["customers"][0]["licenses"].as_array().unwrap().clone();
    assert_eq!(licenses.len(), 1, "{found}");
    let license = &licenses[0];
    assert_eq!(
        (&license["kind"], &license["trial"], &license["source"]),
        (&json!("perpetual"), &json!(false), &json!("stripe"))
    );
    assert_eq!(parse_time(&license["updates_until"]), expected_updates_until(paid_at));
}
