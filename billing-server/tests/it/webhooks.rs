//! `POST /api/stripe/webhooks/handler`: signatures, idempotency, ordering,
//! both payload shapes, failures and retries.

use crate::helpers::*;
use serde_json::{json, Value};

const T: i64 = 1_764_000_000;

#[tokio::test]
async fn subscription_created_issues_a_license_visible_to_its_user() {
    let app = spawn_app().await;
    let sub = subscription("sub_1", "cus_1", "active", PRICE_PRO, Some("user_1"));
    assert_eq!(app.deliver(&event("evt_1", "customer.subscription.created", T, sub)).await, "processed");

    let current = app.get_current_subscription("user_1").await;
    assert_eq!(current["status"], "active");
    assert_eq!(current["plan"], "pro");
    assert_eq!(current["cancel_at_period_end"], false);
    assert_eq!(current["current_period_end"], "2025-12-24T16:00:00Z");

    let licenses = app.get_licenses("user_1").await;
    assert_eq!(licenses.len(), 1);
    assert_eq!(licenses[0]["status"], "active");
    assert_eq!(licenses[0]["max_devices"], 3);
    let key = licenses[0]["key"].as_str().unwrap();
    assert!(billing_core::domain::LicenseKey::parse(key).is_some(), "grouped license key");
    assert_eq!(app.get_current_subscription("someone_else").await, Value::Null);
}

#[tokio::test]
async fn subscription_before_checkout_is_kept_and_linked_when_checkout_arrives() {
    let app = spawn_app().await;
    let sub = subscription("sub_1", "cus_1", "active", PRICE_PRO, None);
    app.deliver(&event("evt_sub", "customer.subscription.created", T, sub)).await;
    assert_eq!(app.get_current_subscription("user_1").await, Value::Null);
    assert_eq!(app.count("subscriptions").await, 1);

    app.deliver(&event("evt_co", "checkout.session.completed", T + 1, checkout("cs_1", "cus_1", "sub_1", "user_1")))
        .await;
    assert_eq!(app.get_current_subscription("user_1").await["status"], "active");
    assert_eq!(app.get_licenses("user_1").await.len(), 1);
}

#[tokio::test]
async fn stale_update_arriving_last_does_not_overwrite_newer_state() {
    let app = spawn_app().await;
    let user = Some("user_1");
    app.deliver(&event(
        "evt_new",
        "customer.subscription.updated",
        T + 10,
        subscription("sub_1", "cus_1", "past_due", PRICE_PRO, user),
    ))
    .await;
    let outcome = app
        .deliver(&event(
            "evt_old",
            "customer.subscription.updated",
            T + 5,
            subscription("sub_1", "cus_1", "active", PRICE_PRO, user),
        ))
        .await;
    assert_eq!(outcome, "processed");
    assert_eq!(app.get_current_subscription("user_1").await["status"], "past_due");
    assert_eq!(app.webhook_status("evt_old").await.unwrap().0, "processed");
}

#[tokio::test]
async fn same_second_ambiguity_without_api_key_applies_the_later_arrival() {
    let app = spawn_app().await;
    let user = Some("user_1");
    app.deliver(&event(
        "evt_a",
        "customer.subscription.updated",
        T,
        subscription("sub_1", "cus_1", "active", PRICE_PRO, user),
    ))
    .await;
    let mut scheduled = subscription("sub_1", "cus_1", "active", PRICE_PRO, user);
    scheduled["cancel_at_period_end"] = json!(true);
    app.deliver(&event("evt_b", "customer.subscription.updated", T, scheduled)).await;
    assert_eq!(app.get_current_subscription("user_1").await["cancel_at_period_end"], true);
}

#[tokio::test]
async fn same_second_ambiguity_with_api_key_refetches_from_stripe() {
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let stripe = MockServer::start().await;
    let mut truth = subscription("sub_1", "cus_1", "past_due", PRICE_PRO, Some("user_1"));
    truth["cancel_at_period_end"] = json!(true);
    Mock::given(method("GET"))
        .and(path("/v1/subscriptions/sub_1"))
        .and(header("authorization", "Bearer sk_test_123"))
        .and(header("stripe-version", billing_core::stripe::client::STRIPE_VERSION))
        .respond_with(ResponseTemplate::new(200).set_body_json(&truth))
        .expect(1)
        .mount(&stripe)
        .await;
    let app = spawn_app_with(Options { stripe_api_base: Some(stripe.uri()), ..Default::default() }).await;
    let user = Some("user_1");
    app.deliver(&event(
        "evt_a",
        "customer.subscription.created",
        T,
        subscription("sub_1", "cus_1", "active", PRICE_PRO, user),
    ))
    .await;
    app.deliver(&event(
        "evt_b",
        "customer.subscription.updated",
        T,
        subscription("sub_1", "cus_1", "past_due", PRICE_PRO, user),
    ))
    .await;
    let current = app.get_current_subscription("user_1").await;
    assert_eq!((current["status"].as_str(), current["cancel_at_period_end"].as_bool()), (Some("past_due"), Some(true)));
}

#[tokio::test]
async fn duplicate_event_is_acknowledged_and_changes_nothing() {
    let app = spawn_app().await;
    let e = event(
        "evt_1",
        "customer.subscription.created",
        T,
        subscription("sub_1", "cus_1", "active", PRICE_PRO, Some("u")),
    );
    assert_eq!(app.deliver(&e).await, "processed");
    let history = app.get_history("u").await;
    assert_eq!(app.deliver(&e).await, "duplicate");
    assert_eq!(app.get_history("u").await, history);
    assert_eq!((app.count("subscriptions").await, app.count("licenses").await), (1, 1));
}

#[tokio::test]
async fn concurrent_deliveries_for_one_subscription_create_one_row() {
    let app = spawn_app().await;
    let statuses = ["incomplete", "active", "active", "past_due", "active", "trialing", "active", "active"];
    let deliveries = statuses.iter().enumerate().map(|(i, status)| {
        let mut sub = subscription("sub_1", "cus_1", status, PRICE_PRO, Some("u"));
        sub["cancel_at_period_end"] = json!(i % 2 == 0);
        let e = event(&format!("evt_{i}"), "customer.subscription.updated", T + i as i64, sub);
        let app = &app;
        async move { app.post_stripe_webhook(&e).await.status() }
    });
    let results = futures_util::future::join_all(deliveries).await;
    assert!(results.iter().all(|s| *s == 200), "{results:?}");
    assert_eq!(app.count("customers").await, 1);
    assert_eq!(app.count("subscriptions").await, 1);
    assert_eq!(app.count("licenses").await, 1);
    // The newest event (created T+7) wins whatever the arrival order.
    let current = app.get_current_subscription("u").await;
    assert_eq!((current["status"].as_str(), current["cancel_at_period_end"].as_bool()), (Some("active"), Some(false)));
}

#[tokio::test]
async fn concurrent_deliveries_that_issue_a_license_issue_exactly_one() {
    // The subscription exists without a license; whichever delivery first
    // makes it active issues one while the others wait for the
    // subscription's lock, and they must then see that license, not issue
    // another (which the unique index would refuse with a 500).
    let app = spawn_app().await;
    for round in 0..5 {
        let (sub_id, customer, user) = (format!("sub_{round}"), format!("cus_{round}"), format!("u{round}"));
        let incomplete = subscription(&sub_id, &customer, "incomplete", PRICE_PRO, Some(&user));
        app.deliver(&event(&format!("evt_{round}_0"), "customer.subscription.created", T, incomplete)).await;
        let deliveries = (1..=8).map(|i| {
            let mut sub = subscription(&sub_id, &customer, "active", PRICE_PRO, Some(&user));
            sub["cancel_at_period_end"] = json!(i % 2 == 0);
            let e = event(&format!("evt_{round}_{i}"), "customer.subscription.updated", T + i, sub);
            let app = &app;
            async move { app.post_stripe_webhook(&e).await.status() }
        });
        let results = futures_util::future::join_all(deliveries).await;
        assert!(results.iter().all(|s| *s == 200), "round {round}: {results:?}");
        let licenses = app.get_licenses(&user).await;
        assert_eq!(licenses.len(), 1, "round {round}");
        assert_eq!(licenses[0]["status"], "active");
        // The newest event (created T+8) wins whatever the arrival order.
        assert_eq!(app.get_current_subscription(&user).await["cancel_at_period_end"], true);
    }
    assert_eq!(app.count("licenses").await, 5);
}

#[tokio::test]
async fn a_delivery_arriving_while_an_earlier_attempt_records_its_failure_is_applied() {
    let app = spawn_app().await;
    let billing_core::storage::any::StoreLocation::Postgres(url) = &app.store else {
        eprintln!("skipped on sqlite: its one writer cannot interleave the failure record and the retry");
        return;
    };
    // An earlier attempt failed and is recording so, in a transaction not
    // yet committed, when Stripe's retry arrives.
    let earlier = connect(url).await;
    earlier
        .batch_execute(&format!(
            "BEGIN; INSERT INTO webhook_events (id, type, created, status, last_error)
                    VALUES ('evt_retry', 'customer.subscription.created', {T}, 'failed', 'boom')"
        ))
        .await
        .unwrap();
    let e = event(
        "evt_retry",
        "customer.subscription.created",
        T,
        subscription("sub_1", "cus_1", "active", PRICE_PRO, Some("u")),
    );
    let retry = tokio::spawn({
        let (http, url) = (app.http.clone(), format!("{}/api/stripe/webhooks/handler", app.address));
        let body = serde_json::to_vec(&e).unwrap();
        async move {
            let response = http.post(url).header("Stripe-Signature", sign(&body)).body(body).send().await.unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        }
    });
    // Proof that the retry waits for the failure record: PostgreSQL reports
    // a session blocked by the earlier attempt's.
    let earlier_pid: i32 = earlier.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let observer = connect(url).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let blocked: i64 = observer
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))", &[&earlier_pid])
            .await
            .unwrap()
            .get(0);
        if blocked > 0 {
            break;
        }
        assert!(!retry.is_finished(), "the retry finished without waiting for the failure record");
        assert!(std::time::Instant::now() < deadline, "the retry never waited for the failure record");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(!retry.is_finished(), "the retry waits for the failure record");
    earlier.batch_execute("COMMIT").await.unwrap();
    let (status, body) = retry.await.unwrap();
    // Not taken for a duplicate: that would tell Stripe to stop retrying an
    // event that was never applied.
    assert_eq!((status.as_u16(), body["outcome"].as_str()), (200, Some("processed")), "{body}");
    assert_eq!(app.webhook_status("evt_retry").await, Some(("processed".to_owned(), 2, None)));
    assert_eq!(app.get_current_subscription("u").await["status"], "active");
}

#[tokio::test]
async fn pre_basil_payloads_are_read_like_basil_ones() {
    let app = spawn_app().await;
    let old = json!({
        "id": "sub_old", "object": "subscription", "customer": "cus_old", "status": "active",
        "cancel_at_period_end": false, "current_period_start": T, "current_period_end": T + 2_592_000,
        "metadata": { "user_id": "u" },
        "items": { "data": [{ "id": "si_1", "price": { "id": PRICE_BASIC }, "plan": { "id": PRICE_BASIC } }] }
    });
    let mut envelope = event("evt_old", "customer.subscription.created", T, old);
    envelope["api_version"] = json!("2020-03-02");
    app.deliver(&envelope).await;
    let old_invoice = json!({ "id": "in_old", "customer": "cus_old", "subscription": "sub_old", "currency": "usd",
                              "amount_paid": 900, "amount_due": 900 });
    app.deliver(&event("evt_inv_old", "invoice.paid", T, old_invoice)).await;
    app.deliver(&event("evt_inv_new", "invoice.paid", T, invoice("in_new", "cus_old", "sub_old", 1900))).await;

    let current = app.get_current_subscription("u").await;
    assert_eq!(current["plan"], "basic");
    assert_eq!(current["current_period_end"], "2025-12-24T16:00:00Z");
    let payments = app.get_payments("u").await;
    let subs: Vec<_> = payments.iter().map(|p| p["stripe_subscription_id"].as_str().unwrap()).collect();
    assert_eq!(subs, ["sub_old", "sub_old"]);
}

#[tokio::test]
async fn every_signature_failure_is_refused_and_stores_nothing() {
    let app = spawn_app().await;
    let body = serde_json::to_vec(&event(
        "evt_1",
        "customer.subscription.created",
        T,
        subscription("sub_1", "cus_1", "active", PRICE_PRO, None),
    ))
    .unwrap();
    let good = sign(&body);
    let v1 = good.split_once(",v1=").unwrap().1.to_owned();
    let other_secret = billing_core::stripe::WebhookSecrets::parse("whsec_other").unwrap().sign(&body, now());
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing header", None),
        ("empty header", Some(String::new())),
        ("no timestamp", Some(format!("v1={v1}"))),
        ("no v1", Some(format!("t={}", now()))),
        ("only v0", Some(format!("t={},v0={v1}", now()))),
        ("too old", Some(format!("t={},v1={v1}", now() - 301))),
        ("from the future", Some(format!("t={},v1={v1}", now() + 301))),
        ("wrong secret", Some(other_secret)),
        ("tampered signature", Some(format!("t={},v1={}", now(), "0".repeat(64)))),
    ];
    for (case, header) in cases {
        let response = app.post_raw_webhook(body.clone(), header.as_deref()).await;
        assert_eq!(response.status(), 400, "{case}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "INVALID_SIGNATURE", "{case}");
    }
    let mut tampered = body.clone();
    tampered.extend_from_slice(b" ");
    assert_eq!(app.post_raw_webhook(tampered, Some(&good)).await.status(), 400, "tampered body");
    assert_eq!(app.count("webhook_events").await, 0);
    assert_eq!(app.count("subscriptions").await, 0);
}

#[tokio::test]
async fn rotated_secrets_sign_with_several_v1_and_any_may_match() {
    let app = spawn_app().await;
    let body = serde_json::to_vec(&event("evt_1", "ping", T, json!({}))).unwrap();
    let good = sign(&body);
    let (t, v1) = good.split_once(",v1=").unwrap();
    let header = format!("{t},v1={},v1={v1}", "ab".repeat(32));
    assert_eq!(app.post_raw_webhook(body, Some(&header)).await.status(), 200);
}

#[tokio::test]
async fn oversized_and_malformed_bodies_are_refused() {
    let app = spawn_app_with(Options { max_body_bytes: Some(4096), ..Default::default() }).await;
    let big = vec![b' '; 8192];
    let response = app.post_raw_webhook(big.clone(), Some(&sign(&big))).await;
    assert_eq!(response.status(), 413);
    assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], "PAYLOAD_TOO_LARGE");
    let garbage = b"{not json".to_vec();
    let response = app.post_raw_webhook(garbage.clone(), Some(&sign(&garbage))).await;
    assert_eq!(response.status(), 400);
    assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], "MALFORMED_EVENT");
    assert_eq!(app.count("webhook_events").await, 0);
}

#[tokio::test]
async fn unknown_types_and_real_fixtures_are_acknowledged() {
    let app = spawn_app().await;
    assert_eq!(app.deliver(&event("evt_x", "product.created", T, json!({"id": "prod_1"}))).await, "ignored");
    for name in ["checkout_session_completed.json", "invoice_upcoming.json", "subscription_created.json"] {
        let path = format!("{}/../tests/fixtures/stripe-events/{name}", env!("CARGO_MANIFEST_DIR"));
        let body = std::fs::read(&path).unwrap();
        let response = app.post_raw_webhook(body.clone(), Some(&sign(&body))).await;
        assert_eq!(response.status(), 200, "{name}: {}", response.text().await.unwrap());
    }
    assert_eq!(app.webhook_status("evt_x").await.unwrap().0, "ignored");
    // The payment-mode checkout creates no subscription; the subscription
    // fixture creates one (with no user yet).
    assert_eq!(app.count("subscriptions").await, 1);
    assert_eq!(app.count("webhook_events").await, 4);
}

#[tokio::test]
async fn a_failed_delivery_rolls_back_and_succeeds_when_retried() {
    let app = spawn_app().await;
    // A real failure inside the transaction, after several rows were written.
    let (refuse, allow) = match backend() {
        Backend::Postgres => (
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION 'licenses are refused by the test'; END $$;
             CREATE TRIGGER refuse_licenses BEFORE INSERT ON licenses FOR EACH ROW EXECUTE FUNCTION refuse();",
            "DROP TRIGGER refuse_licenses ON licenses",
        ),
        Backend::Sqlite => (
            "CREATE TRIGGER refuse_licenses BEFORE INSERT ON licenses
             BEGIN SELECT RAISE(ABORT, 'licenses are refused by the test'); END;",
            "DROP TRIGGER refuse_licenses",
        ),
    };
    app.db.execute(refuse).await;
    let e = event(
        "evt_1",
        "customer.subscription.created",
        T,
        subscription("sub_1", "cus_1", "active", PRICE_PRO, Some("u")),
    );
    let response = app.post_stripe_webhook(&e).await;
    assert_eq!(response.status(), 500);
    assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], "PROCESSING_FAILED");
    let (status, attempts, error) = app.webhook_status("evt_1").await.unwrap();
    assert_eq!((status.as_str(), attempts), ("failed", 1));
    assert!(error.unwrap().contains("database query failed"));
    assert_eq!((app.count("subscriptions").await, app.count("customers").await), (0, 0), "rolled back");

    app.db.execute(allow).await;
    assert_eq!(app.deliver(&e).await, "processed");
    let (status, attempts, error) = app.webhook_status("evt_1").await.unwrap();
    assert_eq!((status.as_str(), attempts, error), ("processed", 2, None));
    assert_eq!(app.get_licenses("u").await.len(), 1);
    assert_eq!(app.deliver(&e).await, "duplicate");
}

#[tokio::test]
async fn invoices_become_one_payment_each_and_paid_is_final() {
    let app = spawn_app().await;
    app.deliver(&event(
        "evt_s",
        "customer.subscription.created",
        T,
        subscription("sub_1", "cus_1", "active", PRICE_PRO, Some("u")),
    ))
    .await;
    let inv = invoice("in_1", "cus_1", "sub_1", 1900);
    app.deliver(&event("evt_paid", "invoice.paid", T + 1, inv.clone())).await;
    app.deliver(&event("evt_succeeded", "invoice.payment_succeeded", T + 1, inv.clone())).await;
    app.deliver(&event("evt_late_fail", "invoice.payment_failed", T, inv)).await;
    app.deliver(&event("evt_f2", "invoice.payment_failed", T + 2, invoice("in_2", "cus_1", "sub_1", 2900))).await;
    app.deliver(&event("evt_p2", "invoice.paid", T + 3, invoice("in_2", "cus_1", "sub_1", 2900))).await;
    app.deliver(&event("evt_a3", "invoice.payment_action_required", T + 4, invoice("in_3", "cus_1", "sub_1", 900)))
        .await;

    let payments = app.get_payments("u").await;
    let summary: Vec<_> = payments
        .iter()
        .map(|p| {
            (p["stripe_invoice_id"].as_str().unwrap(), p["status"].as_str().unwrap(), p["amount"].as_i64().unwrap())
        })
        .collect();
    assert_eq!(summary.len(), 3);
    assert!(summary.contains(&("in_1", "paid", 1900)));
    assert!(summary.contains(&("in_2", "paid", 2900)));
    assert!(summary.contains(&("in_3", "action_required", 900)));
    assert_eq!(app.get_as("/api/subscriptions/billing-history", "u").await["payments"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn license_status_follows_the_subscription_through_its_life() {
    let app = spawn_app().await;
    // Recent events: grace runs from when the subscription fell past due.
    let t = now();
    let step = |n: i64, status: &str| {
        event(
            &format!("evt_{n}"),
            "customer.subscription.updated",
            t + n,
            subscription("sub_1", "cus_1", status, PRICE_PRO, Some("u")),
        )
    };
    app.deliver(&step(0, "incomplete")).await;
    assert!(app.get_licenses("u").await.is_empty(), "no license before first payment");
    app.deliver(&step(1, "active")).await;
    assert_eq!(license_status(&app).await, "active");
    app.deliver(&step(2, "past_due")).await;
    assert_eq!(license_status(&app).await, "active", "grace period");
    assert!(app.get_licenses("u").await[0]["grace_ends_at"].is_string());
    app.deliver(&step(3, "unpaid")).await;
    assert_eq!(license_status(&app).await, "suspended");
    app.deliver(&step(4, "active")).await;
    assert_eq!(license_status(&app).await, "active");
    app.deliver(&step(5, "canceled")).await;
    assert_eq!(license_status(&app).await, "expired");
    assert_eq!(app.count("licenses").await, 1, "issued once");

    let kinds: Vec<_> = app.get_history("u").await.iter().map(|c| c["to_status"].clone()).collect();
    assert_eq!(
        kinds,
        [json!("canceled"), json!("active"), json!("unpaid"), json!("past_due"), json!("active"), json!("incomplete")]
    );
    // Every license change was published for desktop clients.
    let topics: Vec<String> = app.db.strings("SELECT topic FROM outbox_events ORDER BY id").await;
    assert!(topics.iter().filter(|t| *t == "license.updated").count() >= 3, "{topics:?}");
}

#[tokio::test]
async fn past_due_license_is_suspended_once_grace_runs_out() {
    let later = time::OffsetDateTime::now_utc() + time::Duration::days(8);
    let app = spawn_app_with(Options { grace_days: Some(7), ..Default::default() }).await;
    app.deliver(&event(
        "evt_1",
        "customer.subscription.created",
        now(),
        subscription("sub_1", "cus_1", "active", PRICE_PRO, Some("u")),
    ))
    .await;
    app.deliver(&event(
        "evt_2",
        "customer.subscription.updated",
        now() + 1,
        subscription("sub_1", "cus_1", "past_due", PRICE_PRO, Some("u")),
    ))
    .await;
    let licenses = app.billing.licenses("u").await.unwrap();
    assert_eq!(licenses[0].effective_status(time::OffsetDateTime::now_utc()).as_str(), "active");
    assert_eq!(licenses[0].effective_status(later).as_str(), "suspended");
}

#[tokio::test]
async fn grace_counts_from_when_the_subscription_fell_past_due_not_from_when_we_heard() {
    // Our endpoint was down for ten days: the past-due event arrives late.
    let app = spawn_app_with(Options { grace_days: Some(7), ..Default::default() }).await;
    let ten_days_ago = now() - 10 * 24 * 3600;
    app.deliver(&event(
        "evt_1",
        "customer.subscription.created",
        ten_days_ago - 60,
        subscription("sub_1", "cus_1", "active", PRICE_PRO, Some("u")),
    ))
    .await;
    app.deliver(&event(
        "evt_2",
        "customer.subscription.updated",
        ten_days_ago,
        subscription("sub_1", "cus_1", "past_due", PRICE_PRO, Some("u")),
    ))
    .await;
    let license = &app.get_licenses("u").await[0];
    assert_eq!(license["status"], "suspended", "{license}");
    let grace_end = time::OffsetDateTime::from_unix_timestamp(ten_days_ago + 7 * 24 * 3600).unwrap();
    assert_eq!(license["grace_ends_at"], billing_core::billing::rfc3339(grace_end));
}

async fn license_status(app: &TestApp) -> String {
    app.get_licenses("u").await[0]["status"].as_str().unwrap().to_owned()
}

/// Every table a webhook can write to, with its row count.
async fn stored_rows(app: &TestApp) -> Vec<(&'static str, i64)> {
    let mut rows = Vec::new();
    for table in ["webhook_events", "customers", "subscriptions", "licenses", "payments", "subscription_changes"] {
        rows.push((table, app.count(table).await));
    }
    rows.push(("outbox_events", app.count("outbox_events").await));
    rows
}

#[tokio::test]
async fn signed_events_whose_object_cannot_be_read_are_refused_and_store_nothing() {
    let app = spawn_app().await;
    let nothing = stored_rows(&app).await;
    let sub = || subscription("sub_1", "cus_1", "active", PRICE_PRO, Some("u"));
    let mut unknown_status = sub();
    unknown_status["status"] = json!("on_vacation");
    let mut period_as_string = sub();
    period_as_string["items"]["data"][0]["current_period_end"] = json!("1766592000");
    let mut amount_as_string = invoice("in_1", "cus_1", "sub_1", 1900);
    amount_as_string["amount_paid"] = json!("1900");
    let mut nul_user = sub();
    nul_user["metadata"]["user_id"] = json!("u\u{0}2");
    let mut nul_currency = invoice("in_1", "cus_1", "sub_1", 1900);
    nul_currency["currency"] = json!("us\u{0}d");
    let cases = [
        ("unknown status", event("evt_status", "customer.subscription.updated", T, unknown_status)),
        ("period as a string", event("evt_period", "customer.subscription.created", T, period_as_string)),
        ("amount as a string", event("evt_amount", "invoice.paid", T, amount_as_string)),
        ("NUL in the event id", event("evt_\u{0}1", "customer.subscription.created", T, sub())),
        ("NUL in an ignored event's id", event("evt_\u{0}2", "customer.created", T, json!({"id": "cus_1"}))),
        ("NUL in metadata.user_id", event("evt_nul_user", "customer.subscription.created", T, nul_user)),
        ("NUL in the currency", event("evt_nul_currency", "invoice.payment_failed", T, nul_currency)),
        ("NUL in a customer's id", event("evt_nul_cus", "customer.updated", T, json!({ "id": "cus_\u{0}1" }))),
        (
            "NUL in a customer's user",
            event(
                "evt_nul_cus_user",
                "customer.created",
                T,
                json!({ "id": "cus_1", "metadata": { "user_id": "u\u{0}" } }),
            ),
        ),
        ("a customer without an id", event("evt_cus_no_id", "customer.deleted", T, json!({ "deleted": true }))),
    ];
    for (case, e) in &cases {
        let response = app.post_stripe_webhook(e).await;
        assert_eq!(response.status(), 400, "{case}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "MALFORMED_EVENT", "{case}: {body}");
        assert!(!body.to_string().contains("on_vacation") && !body.to_string().contains("1900"), "{case}: {body}");
        assert_eq!(stored_rows(&app).await, nothing, "{case}: something was stored");
        if let Some(id) = e["id"].as_str().filter(|id| !id.contains('\0')) {
            assert_eq!(app.webhook_status(id).await, None, "{case}: a failure was recorded");
        }
    }
    // The same deliveries, readable, are applied: the refusals were the payloads'.
    assert_eq!(app.deliver(&event("evt_ok", "customer.subscription.created", T, sub())).await, "processed");
}
