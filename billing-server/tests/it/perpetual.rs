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
