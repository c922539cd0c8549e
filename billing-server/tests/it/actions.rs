//! Dashboard actions against a local server answering like Stripe: exact
//! requests, retries with one idempotency key, failures that change
//! nothing, and convergence with the webhook that follows.

use crate::helpers::*;
use serde_json::{json, Value};
use wiremock::matchers::query_param;
use wiremock::{MockServer, ResponseTemplate};

struct Setup {
    app: TestApp,
    stripe: MockServer,
}

/// The Stripe object for user `u` in a given state.
fn stripe_subscription(status: &str, price: &str, cancel_at_period_end: bool) -> Value {
    let mut object = subscription("sub_u", "cus_u", status, price, Some("u"));
    object["cancel_at_period_end"] = json!(cancel_at_period_end);
    object["items"]["data"][0]["current_period_start"] = json!(period_start());
    object["items"]["data"][0]["current_period_end"] = json!(period_end());
    object
}

async fn setup() -> Setup {
    let stripe = MockServer::start().await;
    let app = spawn_app_with(Options { stripe_api_base: Some(stripe.uri()), ..Default::default() }).await;
    app.deliver(&event(
        "evt_created",
        "customer.subscription.created",
        now() - 100,
        stripe_subscription("active", PRICE_PRO, false),
    ))
    .await;
    Setup { app, stripe }
}

/// The (method, path, form, idempotency key) of every request Stripe received.
async fn stripe_calls(stripe: &MockServer) -> Vec<(String, String, Vec<(String, String)>, String)> {
    let mut calls = Vec::new();
    for r in stripe.received_requests().await.unwrap() {
        calls.push((r.method.to_string(), r.url.path().to_owned(), form_pairs(&r.body), idempotency_key_of(&r)));
    }
    calls
}

fn cancel_form() -> Vec<(&'static str, String)> {
    vec![("cancel_at_period_end", "true".into())]
}

fn change_plan_form() -> Vec<(&'static str, String)> {
    vec![
        ("items[0][id]", "si_sub_u".into()),
        ("items[0][price]", PRICE_BASIC.into()),
        ("proration_behavior", "create_prorations".into()),
    ]
}

async fn act(app: &TestApp, route: &str, body: Value) -> (u16, Value) {
    let response = app.http.post(app.url(route)).bearer_auth(jwt_for("u")).json(&body).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

fn checkout_form() -> Vec<(&'static str, String)> {
    vec![
        ("mode", "subscription".into()),
        ("line_items[0][price]", PRICE_BASIC.into()),
        ("line_items[0][quantity]", "1".into()),
        ("success_url", "https://app.example/ok".into()),
        ("cancel_url", "https://app.example/no".into()),
        ("client_reference_id", "u".into()),
        ("subscription_data[metadata][user_id]", "u".into()),
        ("metadata[user_id]", "u".into()),
        ("customer", "cus_u".into()),
    ]
}

fn portal_form() -> Vec<(&'static str, String)> {
    vec![("customer", "cus_u".into()), ("return_url", "https://app.example/account".into())]
}

async fn audit_rows(app: &TestApp) -> i64 {
    app.count("subscription_changes").await
}

#[tokio::test]
async fn cancel_at_period_end_shows_at_once_and_its_webhook_changes_nothing() {
    let Setup { app, stripe } = setup().await;
    stripe_write("POST", "/v1/subscriptions/sub_u", "cancel", cancel_form())
        .respond_with(ResponseTemplate::new(200).set_body_json(stripe_subscription("active", PRICE_PRO, true)))
        .expect(1)
        .mount(&stripe)
        .await;
    let (status, body) = act(&app, "/api/subscriptions/cancel", json!({ "at_period_end": true })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["subscription"]["cancel_at_period_end"], true);
    assert_eq!(app.get_current_subscription("u").await["cancel_at_period_end"], true);
    let history = app.get_history("u").await;
    assert_eq!(
        (history[0]["kind"].as_str(), history[0]["actor"].as_str()),
        (Some("cancel_at_period_end_changed"), Some("user:u"))
    );
    let topics: Vec<String> = app.db.strings("SELECT topic FROM outbox_events").await;
    assert!(topics.contains(&"subscription.updated".to_owned()));

    // Stripe's webhook for the same change, a moment later: converges.
    let rows = audit_rows(&app).await;
    let outbox = app.count("outbox_events").await;
    app.deliver(&event(
        "evt_cancel",
        "customer.subscription.updated",
        now(),
        stripe_subscription("active", PRICE_PRO, true),
    ))
    .await;
    assert_eq!(audit_rows(&app).await, rows, "no second audit row for the same change");
    assert_eq!(app.count("outbox_events").await, outbox, "nothing new to tell clients");
    assert_eq!(app.get_current_subscription("u").await["cancel_at_period_end"], true);
}

#[tokio::test]
async fn cancel_now_deletes_the_subscription_and_expires_the_license() {
    let Setup { app, stripe } = setup().await;
    stripe_write("DELETE", "/v1/subscriptions/sub_u", "cancel-now", vec![])
        .respond_with(ResponseTemplate::new(200).set_body_json(stripe_subscription("canceled", PRICE_PRO, false)))
        .expect(1)
        .mount(&stripe)
        .await;
    let (status, body) = act(&app, "/api/subscriptions/cancel", json!({ "at_period_end": false })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["subscription"]["status"], "canceled");
    assert_eq!(app.get_licenses("u").await[0]["status"], "expired");
    let (status, body) = act(&app, "/api/subscriptions/cancel", json!({})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("CONFLICT")), "already ended");
}

#[tokio::test]
async fn reactivate_only_while_cancellation_is_pending() {
    let Setup { app, stripe } = setup().await;
    let (status, body) = act(&app, "/api/subscriptions/reactivate", json!({})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("CONFLICT")));
    assert!(stripe.received_requests().await.unwrap().is_empty(), "refused without calling Stripe");

    app.deliver(&event(
        "evt_sched",
        "customer.subscription.updated",
        now() - 50,
        stripe_subscription("active", PRICE_PRO, true),
    ))
    .await;
    stripe_write("POST", "/v1/subscriptions/sub_u", "reactivate", vec![("cancel_at_period_end", "false".into())])
        .respond_with(ResponseTemplate::new(200).set_body_json(stripe_subscription("active", PRICE_PRO, false)))
        .expect(1)
        .mount(&stripe)
        .await;
    let (status, body) = act(&app, "/api/subscriptions/reactivate", Value::Null).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["subscription"]["cancel_at_period_end"], false);
}

#[tokio::test]
async fn change_plan_swaps_the_item_and_a_downgrade_evicts_least_recently_seen_devices() {
    let Setup { app, stripe } = setup().await;
    let key = app.get_licenses("u").await[0]["key"].as_str().unwrap().to_owned();
    let oldest = app.activate_ok(&key, "fp-1").await;
    let middle = app.activate_ok(&key, "fp-2").await;
    let newest = app.activate_ok(&key, "fp-3").await;
    let mut events = EventReader::new(app.open_event_stream(&key, &jwt_for("u"), None).await);

    for (body, code) in [(json!({ "plan": "pro" }), "SAME_PLAN"), (json!({ "plan": "team" }), "UNKNOWN_PLAN")] {
        let (_, answer) = act(&app, "/api/subscriptions/change-plan", body).await;
        assert_eq!(answer["error"]["code"], code);
    }
    assert!(stripe.received_requests().await.unwrap().is_empty(), "refused without calling Stripe");

    stripe_write("POST", "/v1/subscriptions/sub_u", "change-plan", change_plan_form())
        .respond_with(ResponseTemplate::new(200).set_body_json(stripe_subscription("active", PRICE_BASIC, false)))
        .expect(1)
        .mount(&stripe)
        .await;
    let (status, body) = act(&app, "/api/subscriptions/change-plan", json!({ "plan": "basic" })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["subscription"]["plan"], "basic");
    assert_eq!(app.get_licenses("u").await[0]["max_devices"], 1);

    let evicted = [events.next_of("device.deactivated").await, events.next_of("device.deactivated").await];
    let ids: Vec<&Value> = evicted.iter().map(|m| &m.data["device_id"]).collect();
    assert!(ids.contains(&&oldest["device"]["id"]) && ids.contains(&&middle["device"]["id"]), "{ids:?}");
    assert!(evicted.iter().all(|m| m.data["reason"] == "downgrade"));
    assert_eq!(
        app.heartbeat(newest["activation_token"].as_str().unwrap()).await.status(),
        200,
        "the most recent stays"
    );
    assert_eq!(app.heartbeat(oldest["activation_token"].as_str().unwrap()).await.status(), 410);
}

#[tokio::test]
async fn checkout_creates_a_subscription_session_reusing_the_customer() {
    let Setup { app, stripe } = setup().await;
    let (status, body) = act(
        &app,
        "/api/stripe/checkout/create",
        json!({ "plan": "basic", "success_url": "https://app.example/ok", "cancel_url": "https://app.example/no" }),
    )
    .await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("CONFLICT")), "already subscribed");

    app.deliver(&event(
        "evt_end",
        "customer.subscription.deleted",
        now(),
        stripe_subscription("canceled", PRICE_PRO, false),
    ))
    .await;
    stripe_write("POST", "/v1/checkout/sessions", "checkout", checkout_form())
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({ "id": "cs_1", "url": "https://checkout.stripe.com/c/cs_1" })),
        )
        .expect(1)
        .mount(&stripe)
        .await;
    let (status, body) = act(
        &app,
        "/api/stripe/checkout/create",
        json!({ "plan": "basic", "success_url": "https://app.example/ok", "cancel_url": "https://app.example/no" }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({ "id": "cs_1", "url": "https://checkout.stripe.com/c/cs_1" }));

    let (status, _) = act(
        &app,
        "/api/stripe/checkout/create",
        json!({ "plan": "basic", "success_url": "javascript:x", "cancel_url": "https://a/b" }),
    )
    .await;
    assert_eq!(status, 400);
    let (status, body) = act(
        &app,
        "/api/stripe/checkout/create",
        json!({ "plan": "gold", "success_url": "https://a/b", "cancel_url": "https://a/b" }),
    )
    .await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("UNKNOWN_PLAN")));
}

#[tokio::test]
async fn billing_portal_and_payment_method_use_the_callers_own_customer() {
    let Setup { app, stripe } = setup().await;
    stripe_write("POST", "/v1/billing_portal/sessions", "portal", portal_form())
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({ "id": "bps_1", "url": "https://billing.stripe.com/p/1" })),
        )
        .expect(1)
        .mount(&stripe)
        .await;
    let (status, body) =
        act(&app, "/api/stripe/billing/portal", json!({ "return_url": "https://app.example/account" })).await;
    assert_eq!((status, body["url"].as_str()), (200, Some("https://billing.stripe.com/p/1")));

    stripe_read("/v1/customers/cus_u", vec![("expand[]", "invoice_settings.default_payment_method".into())])
        .and(query_param("expand[]", "invoice_settings.default_payment_method"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "cus_u",
            "invoice_settings": { "default_payment_method": { "id": "pm_1", "card": { "brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2030 } } }
        })))
        .expect(1)
        .mount(&stripe)
        .await;
    let body = app.get_as("/api/stripe/billing/payment-method", "u").await;
    assert_eq!(
        body,
        json!({ "payment_method": { "brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2030 } })
    );

    let nobody = app
        .http
        .post(app.url("/api/stripe/billing/portal"))
        .bearer_auth(jwt_for("nobody"))
        .json(&json!({ "return_url": "https://a/b" }))
        .send()
        .await
        .unwrap();
    assert_eq!(nobody.status(), 404);
    assert_eq!(app.get_as("/api/stripe/billing/payment-method", "nobody").await, json!({ "payment_method": null }));
}

#[tokio::test]
async fn sync_repairs_a_missed_webhook() {
    let Setup { app, stripe } = setup().await;
    stripe_read(
        "/v1/subscriptions",
        vec![("customer", "cus_u".into()), ("status", "all".into()), ("limit", "100".into())],
    )
    .and(query_param("customer", "cus_u"))
    .and(query_param("status", "all"))
    .respond_with(ResponseTemplate::new(200).set_body_json(
        json!({ "object": "list", "has_more": false, "data": [stripe_subscription("past_due", PRICE_PRO, false)] }),
    ))
    .expect(1)
    .mount(&stripe)
    .await;
    let (status, body) = act(&app, "/api/stripe/subscriptions/sync", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed"], 1);
    assert_eq!(body["subscriptions"][0]["status"], "past_due");
    assert_eq!(app.get_current_subscription("u").await["status"], "past_due");
}

#[tokio::test]
async fn a_declined_card_keeps_stripes_message_and_changes_nothing() {
    let Setup { app, stripe } = setup().await;
    stripe_write("POST", "/v1/subscriptions/sub_u", "change-plan", change_plan_form())
        .respond_with(ResponseTemplate::new(402).set_body_json(
            json!({ "error": { "type": "card_error", "code": "card_declined", "message": "Your card was declined." } }),
        ))
        .expect(1)
        .mount(&stripe)
        .await;
    let before = (app.get_current_subscription("u").await, audit_rows(&app).await, app.count("outbox_events").await);
    let (status, body) = act(&app, "/api/subscriptions/change-plan", json!({ "plan": "basic" })).await;
    assert_eq!(status, 402);
    assert_eq!(body["error"], json!({ "code": "CARD_ERROR", "message": "Your card was declined." }));
    assert_eq!(
        (app.get_current_subscription("u").await, audit_rows(&app).await, app.count("outbox_events").await),
        before
    );
}

#[tokio::test]
async fn stripe_errors_are_retried_with_the_same_idempotency_key() {
    let Setup { app, stripe } = setup().await;
    stripe_write("POST", "/v1/subscriptions/sub_u", "cancel", cancel_form())
        .respond_with(
            ResponseTemplate::new(500).set_body_json(json!({ "error": { "type": "api_error", "message": "boom" } })),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .expect(1)
        .mount(&stripe)
        .await;
    stripe_write("POST", "/v1/subscriptions/sub_u", "cancel", cancel_form())
        .respond_with(ResponseTemplate::new(200).set_body_json(stripe_subscription("active", PRICE_PRO, true)))
        .expect(1)
        .mount(&stripe)
        .await;
    let (status, _) = act(&app, "/api/subscriptions/cancel", json!({})).await;
    assert_eq!(status, 200);
    let requests = stripe.received_requests().await.unwrap();
    assert_eq!(requests.len(), 2);
    let keys: Vec<_> = requests.iter().map(|r| r.headers["idempotency-key"].to_str().unwrap().to_owned()).collect();
    assert_eq!(keys[0], keys[1]);
    assert!(is_idempotency_key_for("cancel", &keys[0]), "{}", keys[0]);
    let calls = stripe_calls(&stripe).await;
    assert_eq!(calls[0], calls[1], "the retry is the same request");
}

#[tokio::test]
async fn stripe_down_or_slow_answers_502_and_changes_nothing() {
    let Setup { app, stripe } = setup().await;
    stripe_write("POST", "/v1/subscriptions/sub_u", "cancel", cancel_form())
        .respond_with(ResponseTemplate::new(503))
        .expect(3)
        .mount(&stripe)
        .await;
    let before = (app.get_current_subscription("u").await, audit_rows(&app).await);
    let (status, body) = act(&app, "/api/subscriptions/cancel", json!({})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (502, Some("STRIPE_UNAVAILABLE")));
    let keys: std::collections::HashSet<_> = stripe
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| r.headers["idempotency-key"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys.len(), 1, "one key across the three attempts");
    assert!(keys.iter().all(|k| is_idempotency_key_for("cancel", k)), "{keys:?}");
    let calls = stripe_calls(&stripe).await;
    assert!(calls.len() == 3 && calls.iter().all(|c| *c == calls[0]), "three identical attempts: {calls:?}");
    assert_eq!((app.get_current_subscription("u").await, audit_rows(&app).await), before);

    stripe.reset().await;
    stripe_write("DELETE", "/v1/subscriptions/sub_u", "cancel-now", vec![])
        .respond_with(
            ResponseTemplate::new(200)
                .set_delay(std::time::Duration::from_secs(2))
                .set_body_json(stripe_subscription("canceled", PRICE_PRO, false)),
        )
        .expect(3)
        .mount(&stripe)
        .await;
    let (status, body) = act(&app, "/api/subscriptions/cancel", json!({ "at_period_end": false })).await;
    assert_eq!(status, 502, "timeouts count as unavailable");
    assert_eq!(body["error"]["code"], "STRIPE_UNAVAILABLE");
    assert_eq!(app.get_current_subscription("u").await["status"], "active");
    let calls = stripe_calls(&stripe).await;
    assert!(calls.len() == 3 && calls.iter().all(|c| *c == calls[0]), "three identical attempts: {calls:?}");
    assert!(is_idempotency_key_for("cancel-now", &calls[0].3), "{}", calls[0].3);
}

#[tokio::test]
async fn should_retry_false_is_honoured() {
    let Setup { app, stripe } = setup().await;
    stripe_write("POST", "/v1/subscriptions/sub_u", "cancel", cancel_form())
        .respond_with(ResponseTemplate::new(409).insert_header("Stripe-Should-Retry", "false").set_body_json(json!({ "error": { "type": "idempotency_error", "message": "Keys for idempotent requests can only be used with the same parameters." } })))
        .expect(1)
        .mount(&stripe)
        .await;
    let (status, body) = act(&app, "/api/subscriptions/cancel", json!({})).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "STRIPE_REQUEST_FAILED");
}

#[tokio::test]
async fn actions_without_a_stripe_key_are_switched_off() {
    let app = spawn_app().await;
    app.deliver(&event(
        "e",
        "customer.subscription.created",
        now(),
        subscription("sub_u", "cus_u", "active", PRICE_PRO, Some("u")),
    ))
    .await;
    let (status, body) = act(&app, "/api/subscriptions/cancel", json!({})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("STRIPE_DISABLED")));
}

#[tokio::test]
async fn action_bodies_are_checked_before_anything_happens() {
    let Setup { app, stripe } = setup().await;
    let jwt = jwt_for("u");
    let malformed = app
        .http
        .post(app.url("/api/subscriptions/change-plan"))
        .bearer_auth(&jwt)
        .body("{\"plan\":")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    let wrong_type = app
        .http
        .post(app.url("/api/subscriptions/cancel"))
        .bearer_auth(&jwt)
        .json(&json!({ "at_period_end": "yes" }))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_type.status(), 400);
    let big = app
        .http
        .post(app.url("/api/subscriptions/change-plan"))
        .bearer_auth(&jwt)
        .body(vec![b' '; (1 << 20) + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    assert!(stripe.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn callers_act_only_on_their_own_subscription_unless_admin() {
    let Setup { app, stripe } = setup().await;
    // Someone with no subscription: 404 from every subscription action.
    for (route, body) in [
        ("/api/subscriptions/cancel", json!({})),
        ("/api/subscriptions/reactivate", json!({})),
        ("/api/subscriptions/change-plan", json!({ "plan": "basic" })),
    ] {
        let response = app.http.post(app.url(route)).bearer_auth(jwt_for("mallory")).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 404, "{route}");
        assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], "NO_SUBSCRIPTION");
    }
    // Naming another user is refused to non-admins.
    let response = app
        .http
        .post(app.url("/api/subscriptions/cancel?user_id=u"))
        .bearer_auth(jwt_for("mallory"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let response =
        app.http.get(app.url("/api/licenses?user_id=u")).bearer_auth(jwt_for("mallory")).send().await.unwrap();
    assert_eq!(response.status(), 403);
    assert!(stripe.received_requests().await.unwrap().is_empty());

    // An admin may act for them.
    stripe_write("POST", "/v1/subscriptions/sub_u", "cancel", cancel_form())
        .respond_with(ResponseTemplate::new(200).set_body_json(stripe_subscription("active", PRICE_PRO, true)))
        .expect(1)
        .mount(&stripe)
        .await;
    let admin = token(&json!({ "sub": "support-1", "role": "admin", "exp": now() + 600 }), JWT_SECRET);
    let response = app
        .http
        .post(app.url("/api/subscriptions/cancel?user_id=u"))
        .bearer_auth(&admin)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(app.get_history("u").await[0]["actor"], "user:support-1");
}

#[tokio::test]
async fn every_write_is_retried_as_the_identical_request_under_its_own_key() {
    struct Case {
        action: &'static str,
        /// Delivered first, to put the subscription in the state the action needs.
        before: Option<Value>,
        route: &'static str,
        body: Value,
        verb: &'static str,
        stripe_path: &'static str,
        form: Vec<(&'static str, String)>,
        /// Stripe's first, failed, answer.
        failure: ResponseTemplate,
        answer: Value,
    }
    let api_error = |status: u16| {
        ResponseTemplate::new(status)
            .set_body_json(json!({ "error": { "type": "api_error", "message": "An unknown error occurred" } }))
    };
    let session = json!({ "id": "cs_1", "url": "https://checkout.stripe.com/c/cs_1" });
    let cases = vec![
        Case {
            action: "cancel",
            before: None,
            route: "/api/subscriptions/cancel",
            body: json!({}),
            verb: "POST",
            stripe_path: "/v1/subscriptions/sub_u",
            form: cancel_form(),
            failure: api_error(500),
            answer: stripe_subscription("active", PRICE_PRO, true),
        },
        Case {
            action: "cancel-now",
            before: None,
            route: "/api/subscriptions/cancel",
            body: json!({ "at_period_end": false }),
            verb: "DELETE",
            stripe_path: "/v1/subscriptions/sub_u",
            form: vec![],
            // Longer than the client's timeout: the retry must not be a second cancellation.
            failure: ResponseTemplate::new(200)
                .set_delay(std::time::Duration::from_secs(2))
                .set_body_json(stripe_subscription("canceled", PRICE_PRO, false)),
            answer: stripe_subscription("canceled", PRICE_PRO, false),
        },
        Case {
            action: "reactivate",
            before: Some(event(
                "evt_sched",
                "customer.subscription.updated",
                now() - 50,
                stripe_subscription("active", PRICE_PRO, true),
            )),
            route: "/api/subscriptions/reactivate",
            body: json!({}),
            verb: "POST",
            stripe_path: "/v1/subscriptions/sub_u",
            form: vec![("cancel_at_period_end", "false".into())],
            failure: api_error(503),
            answer: stripe_subscription("active", PRICE_PRO, false),
        },
        Case {
            action: "change-plan",
            before: None,
            route: "/api/subscriptions/change-plan",
            body: json!({ "plan": "basic" }),
            verb: "POST",
            stripe_path: "/v1/subscriptions/sub_u",
            form: change_plan_form(),
            failure: ResponseTemplate::new(429).set_body_json(
                json!({ "error": { "type": "invalid_request_error", "code": "rate_limit", "message": "Too many requests" } }),
            ),
            answer: stripe_subscription("active", PRICE_BASIC, false),
        },
        Case {
            action: "checkout",
            before: Some(event(
                "evt_end",
                "customer.subscription.deleted",
                now(),
                stripe_subscription("canceled", PRICE_PRO, false),
            )),
            route: "/api/stripe/checkout/create",
            body: json!({ "plan": "basic", "success_url": "https://app.example/ok", "cancel_url": "https://app.example/no" }),
            verb: "POST",
            stripe_path: "/v1/checkout/sessions",
            form: checkout_form(),
            failure: api_error(502),
            answer: session.clone(),
        },
        Case {
            action: "portal",
            before: None,
            route: "/api/stripe/billing/portal",
            body: json!({ "return_url": "https://app.example/account" }),
            verb: "POST",
            stripe_path: "/v1/billing_portal/sessions",
            form: portal_form(),
            failure: ResponseTemplate::new(409).insert_header("Stripe-Should-Retry", "true").set_body_json(
                json!({ "error": { "type": "invalid_request_error", "code": "lock_timeout", "message": "locked" } }),
            ),
            answer: json!({ "id": "bps_1", "url": "https://billing.stripe.com/p/1" }),
        },
    ];
    let mut keys = std::collections::HashSet::new();
    for case in cases {
        let Setup { app, stripe } = setup().await;
        if let Some(event) = &case.before {
            app.deliver(event).await;
        }
        stripe_write(case.verb, case.stripe_path, case.action, case.form.clone())
            .respond_with(case.failure)
            .up_to_n_times(1)
            .with_priority(1)
            .expect(1)
            .mount(&stripe)
            .await;
        stripe_write(case.verb, case.stripe_path, case.action, case.form.clone())
            .respond_with(ResponseTemplate::new(200).set_body_json(&case.answer))
            .expect(1)
            .mount(&stripe)
            .await;
        let (status, body) = act(&app, case.route, case.body).await;
        assert_eq!(status, 200, "{}: {body}", case.action);
        stripe.verify().await;
        let calls = stripe_calls(&stripe).await;
        assert_eq!(calls.len(), 2, "{}", case.action);
        assert_eq!(calls[0], calls[1], "{}: the retry is the identical request, same key", case.action);
        let (verb, route, mut form, key) = calls[0].clone();
        let mut want: Vec<(String, String)> = case.form.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
        form.sort();
        want.sort();
        assert_eq!((verb.as_str(), route.as_str(), form), (case.verb, case.stripe_path, want), "{}", case.action);
        assert!(is_idempotency_key_for(case.action, &key), "{}: {key}", case.action);
        for other in ["cancel", "cancel-now", "reactivate", "change-plan", "checkout", "portal"] {
            assert_eq!(is_idempotency_key_for(other, &key), other == case.action, "{key} is {other}'s");
        }
        assert!(keys.insert(key), "{}: a key used before", case.action);
    }
}

#[tokio::test]
async fn stripe_refusing_our_key_or_ids_is_a_502_not_the_users_error() {
    // What Stripe says when our key is wrong, lacks permissions, or an id we
    // stored does not exist: none of it is the user's doing or for their eyes.
    for (status, kind, code, message) in [
        (401, "invalid_request_error", None, "Invalid API Key provided: sk_test_********************_123"),
        (
            403,
            "invalid_request_error",
            Some("secret_key_required"),
            "The provided key 'rk_test_*****123' does not have the required permissions for this endpoint on account 'acct_1SECRET'.",
        ),
        (404, "invalid_request_error", Some("resource_missing"), "No such subscription: 'sub_u'"),
    ] {
        let Setup { app, stripe } = setup().await;
        let refusal = ResponseTemplate::new(status)
            .insert_header("Stripe-Should-Retry", "false")
            .set_body_json(json!({ "error": { "type": kind, "code": code, "message": message } }));
        stripe_write("POST", "/v1/subscriptions/sub_u", "cancel", cancel_form())
            .respond_with(refusal.clone())
            .expect(1)
            .mount(&stripe)
            .await;
        stripe_read("/v1/customers/cus_u", vec![("expand[]", "invoice_settings.default_payment_method".into())])
            .respond_with(refusal)
            .expect(1)
            .mount(&stripe)
            .await;
        let before = (app.get_current_subscription("u").await, audit_rows(&app).await, app.count("outbox_events").await);
        let generic = json!({ "error": { "code": "STRIPE_UNAVAILABLE", "message": "Stripe is unavailable; try again shortly" } });

        let (answer, body) = act(&app, "/api/subscriptions/cancel", json!({})).await;
        assert_eq!((answer, &body), (502, &generic), "Stripe {status} on a write");
        let response =
            app.http.get(app.url("/api/stripe/billing/payment-method")).bearer_auth(jwt_for("u")).send().await.unwrap();
        assert_eq!(response.status(), 502, "Stripe {status} on a read");
        assert_eq!(response.json::<Value>().await.unwrap(), generic, "Stripe {status} on a read");

        stripe.verify().await;
        assert_eq!(
            (app.get_current_subscription("u").await, audit_rows(&app).await, app.count("outbox_events").await),
            before,
            "Stripe {status}: nothing changed"
        );
    }
}

#[tokio::test]
async fn an_empty_repeated_or_smuggled_user_id_never_reaches_stripe() {
    let Setup { app, stripe } = setup().await;
    let admin = token(&json!({ "sub": "support-1", "role": "admin", "exp": now() + 600 }), JWT_SECRET);
    let checkout =
        json!({ "plan": "basic", "success_url": "https://app.example/ok", "cancel_url": "https://app.example/no" });
    let routes = [
        ("/api/stripe/checkout/create", checkout.clone()),
        ("/api/stripe/billing/portal", json!({ "return_url": "https://app.example/account" })),
        ("/api/subscriptions/cancel", json!({})),
        ("/api/subscriptions/change-plan", json!({ "plan": "basic" })),
        ("/api/stripe/subscriptions/sync", json!({})),
    ];
    let before = audit_rows(&app).await;
    for (route, body) in &routes {
        for query in ["?user_id=", "?user_id=u&user_id=someone_else", "?user_id=u%00"] {
            let path = format!("{route}{query}");
            let response = app.http.post(app.url(&path)).bearer_auth(&admin).json(body).send().await.unwrap();
            let status = response.status();
            let answer: Value = response.json().await.unwrap();
            assert_eq!(
                (status.as_u16(), &answer["error"]["code"]),
                (400, &json!("INVALID_REQUEST")),
                "{path}: {answer}"
            );
        }
        // A body naming a user is refused too: only the query names one.
        let mut smuggled = body.clone();
        smuggled["user_id"] = json!("someone_else");
        let response = app.http.post(app.url(route)).bearer_auth(&admin).json(&smuggled).send().await.unwrap();
        assert_eq!(response.status(), 400, "{route} with a user_id in its body");
    }
    assert!(stripe.received_requests().await.unwrap().is_empty(), "Stripe was called");
    assert_eq!(audit_rows(&app).await, before);
}
