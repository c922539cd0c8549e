//! The admin API's reads (issue 14): Stripe deliveries and their replay, the
//! audit walk, customers; their refusals of bad input.

use crate::helpers::*;
use billing_core::domain::LicenseKey;
use billing_core::storage::{EventRecord, Store};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use uuid::Uuid;

async fn get(app: &TestApp, token: &str, path: &str) -> Value {
    app.admin_ok(Method::GET, path, token, None, 200).await
}

/// Every item of a cursor walk of `path` (which has a query string already
/// or not), `limit` per page, with the number of pages it took.
async fn walk(app: &TestApp, token: &str, path: &str, items: &str, limit: usize) -> (Vec<Value>, usize) {
    let separator = if path.contains('?') { '&' } else { '?' };
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page_path = match &cursor {
            Some(c) => format!("{path}{separator}limit={limit}&cursor={c}"),
            None => format!("{path}{separator}limit={limit}"),
        };
        let page = get(app, token, &page_path).await;
        pages += 1;
        let got = page[items].as_array().unwrap_or_else(|| panic!("{page_path}: {page}"));
        assert!(got.len() <= limit, "{page_path}: a page holds at most its limit");
        all.extend(got.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return (all, pages),
        }
        assert!(pages < 10_000, "the walk ends");
    }
}

/// A manual license of `user` written as V6 stores one (until the issuing
/// use case lands, no core call writes one). Returns its id.
async fn insert_manual_license(app: &TestApp, user: &str) -> Uuid {
    let id = Uuid::new_v4();
    let key = LicenseKey::generate();
    let hash: String = key.lookup_hash().iter().map(|b| format!("{b:02x}")).collect();
    let hash = match backend() {
        Backend::Postgres => format!("'\\x{hash}'::bytea"),
        Backend::Sqlite => format!("X'{hash}'"),
    };
    app.db
        .execute(&format!(
            "INSERT INTO licenses (id, key, key_hash, status, plan_id, max_devices, source, user_id)
             VALUES ('{id}', '{}', {hash}, 'active', 'pro', 2, 'manual', '{user}')",
            key.expose()
        ))
        .await;
    id
}

fn subscription_event(id: &str, user: &str, created: i64) -> Value {
    let mut object = subscription(&format!("sub_{user}"), &format!("cus_{user}"), "active", PRICE_PRO, Some(user));
    object["items"]["data"][0]["current_period_start"] = json!(period_start());
    object["items"]["data"][0]["current_period_end"] = json!(period_end());
    event(id, "customer.subscription.created", created, object)
}

#[tokio::test]
async fn stripe_deliveries_are_listed_with_their_outcome_and_filtered_by_status() {
    let app = spawn_app().await;
    let token = app.admin_token(&["events:read"]).await;
    let created = subscription_event("evt_sub", "ada", now() - 60);
    assert_eq!(app.deliver(&created).await, "processed");
    assert_eq!(app.deliver(&created).await, "duplicate");
    assert_eq!(app.deliver(&created).await, "duplicate");
    let ping = event("evt_ping", "product.created", now() - 30, json!({ "id": "prod_1", "object": "product" }));
    assert_eq!(app.deliver(&ping).await, "ignored");
    let body = serde_json::to_vec(&subscription_event("evt_failed", "bob", now() - 10)).unwrap();
    let record = EventRecord {
        id: "evt_failed",
        kind: "customer.subscription.created",
        created: now() - 10,
        api_version: Some("2025-03-31.basil"),
        object_id: Some("sub_bob"),
        payload: &body,
    };
    app.billing.store().record_event_failure(&record, "database query failed").await.unwrap();

    let listed = get(&app, &token, "/api/admin/stripe-events").await;
    let ids: Vec<&str> = listed["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["evt_failed", "evt_ping", "evt_sub"], "newest first");
    assert_eq!(listed["next_cursor"], Value::Null, "one page holds them all");
    let sub = &listed["events"][2];
    assert_eq!(
        (&sub["type"], &sub["object_id"], &sub["status"], &sub["attempts"], &sub["duplicates"], &sub["error"]),
        (
            &json!("customer.subscription.created"),
            &json!("sub_ada"),
            &json!("processed"),
            &json!(1),
            &json!(2),
            &Value::Null
        )
    );
    assert!(sub["received_at"].is_string() && sub["processed_at"].is_string());
    let failed = &listed["events"][0];
    assert_eq!((&failed["status"], &failed["error"]), (&json!("failed"), &json!("database query failed")));
    assert_eq!(failed["processed_at"], Value::Null);

    for (status, expected) in
        [("processed", "evt_sub"), ("duplicate", "evt_sub"), ("ignored", "evt_ping"), ("failed", "evt_failed")]
    {
        let page = get(&app, &token, &format!("/api/admin/stripe-events?status={status}")).await;
        let ids: Vec<&str> = page["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
        assert_eq!(ids, [expected], "status={status}");
    }
    let (walked, pages) = walk(&app, &token, "/api/admin/stripe-events", "events", 1).await;
    let walked: Vec<&str> = walked.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!((walked, pages), (vec!["evt_failed", "evt_ping", "evt_sub"], 3), "one per page, the last says so");
}

/// A subscription event recorded as failed with its real signed body, as
/// `ingest_webhook` records a failed attempt.
async fn record_failed_delivery(app: &TestApp, id: &str, user: &str) -> Vec<u8> {
    let body = serde_json::to_vec(&subscription_event(id, user, now() - 60)).unwrap();
    let record = EventRecord {
        id,
        kind: "customer.subscription.created",
        created: now() - 60,
        api_version: Some("2025-03-31.basil"),
        object_id: Some("sub_x"),
        payload: &body,
    };
    app.billing.store().record_event_failure(&record, "database unavailable").await.unwrap();
    body
}

#[tokio::test]
async fn a_failed_delivery_replayed_is_applied_and_a_second_replay_changes_nothing() {
    let app = spawn_app().await;
    let token = app.admin_token(&["stripe:write"]).await;
    record_failed_delivery(&app, "evt_lost", "carol").await;
    assert!(app.get_licenses("carol").await.is_empty(), "the failed attempt applied nothing");

    let replay = app.admin_ok(Method::POST, "/api/admin/stripe-events/evt_lost/replay", &token, None, 200).await;
    assert_eq!(replay["outcome"], "processed", "{replay}");
    assert_eq!((&replay["event"]["status"], &replay["event"]["attempts"]), (&json!("processed"), &json!(2)));
    assert_eq!(replay["event"]["error"], Value::Null);
    let licenses = app.get_licenses("carol").await;
    assert_eq!(licenses.len(), 1, "the replay issued the license");
    assert_eq!(licenses[0]["plan"], "pro");
    assert_eq!(app.webhook_status("evt_lost").await, Some(("processed".to_owned(), 2, None)));

    let before = app.db.fingerprint().await;
    let again = app.admin_ok(Method::POST, "/api/admin/stripe-events/evt_lost/replay", &token, None, 200).await;
    assert_eq!(again["outcome"], "duplicate", "{again}");
    assert_eq!((&again["event"]["attempts"], &again["event"]["duplicates"]), (&json!(2), &json!(0)));
    assert_eq!(app.db.fingerprint().await, before, "a second replay changes nothing, not even the duplicate count");

    // Stripe's own retry of the replayed event is a duplicate too.
    assert_eq!(app.deliver(&subscription_event("evt_lost", "carol", now() - 60)).await, "duplicate");
}

#[tokio::test]
async fn a_delivery_that_failed_for_real_is_replayed_once_stripe_answers() {
    // Two same-second snapshots that differ are settled by asking Stripe;
    // while Stripe fails, the delivery fails (and is recorded with its body).
    let stripe = wiremock::MockServer::start().await;
    let app = spawn_app_with(Options { stripe_api_base: Some(stripe.uri()), ..Options::default() }).await;
    let token = app.admin_token(&["stripe:write"]).await;
    let created = now() - 120;
    let first = subscription_event("evt_first", "dora", created);
    assert_eq!(app.deliver(&first).await, "processed");
    let mut past_due = first.clone();
    past_due["id"] = json!("evt_second");
    past_due["type"] = json!("customer.subscription.updated");
    past_due["data"]["object"]["status"] = json!("past_due");
    let refetch = stripe_read("/v1/subscriptions/sub_dora", vec![]);
    let failing =
        refetch.respond_with(wiremock::ResponseTemplate::new(500)).named("Stripe down").mount_as_scoped(&stripe);
    let guard = failing.await;
    let response = app.post_stripe_webhook(&past_due).await;
    assert_eq!(response.status(), 500, "{}", response.text().await.unwrap());
    assert_eq!(app.webhook_status("evt_second").await.map(|s| s.0), Some("failed".to_owned()));
    drop(guard);

    let mut current = past_due["data"]["object"].clone();
    current["status"] = json!("past_due");
    stripe_read("/v1/subscriptions/sub_dora", vec![])
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(&current))
        .expect(1)
        .mount(&stripe)
        .await;
    let replay = app.admin_ok(Method::POST, "/api/admin/stripe-events/evt_second/replay", &token, None, 200).await;
    assert_eq!(replay["outcome"], "processed", "{replay}");
    assert_eq!(app.get_current_subscription("dora").await["status"], "past_due", "the replay applied Stripe's answer");
    let again = app.admin_ok(Method::POST, "/api/admin/stripe-events/evt_second/replay", &token, None, 200).await;
    assert_eq!(again["outcome"], "duplicate", "and asked Stripe only once");
}

#[tokio::test]
async fn replaying_an_unknown_or_payloadless_delivery_is_refused() {
    let app = spawn_app().await;
    let token = app.admin_token(&["stripe:write"]).await;
    let missing = app.admin_ok(Method::POST, "/api/admin/stripe-events/evt_nope/replay", &token, None, 404).await;
    assert_eq!(missing["error"]["code"], "NOT_FOUND");
    // A row from before V6 kept payloads.
    app.db
        .execute(
            "INSERT INTO webhook_events (id, type, created, status, last_error)
             VALUES ('evt_old', 'customer.subscription.updated', 1764000000, 'failed', 'boom')",
        )
        .await;
    let before = app.db.fingerprint().await;
    let old = app.admin_ok(Method::POST, "/api/admin/stripe-events/evt_old/replay", &token, None, 409).await;
    assert_eq!(old["error"]["code"], "NOT_REPLAYABLE");
    assert_eq!(app.db.fingerprint().await, before);
}

#[tokio::test]
async fn the_audit_walk_returns_every_entry_once_from_every_source() {
    let app = spawn_app().await;
    let token = app.admin_token(&["events:read"]).await;
    let key = app.issue_license("erin", PRICE_PRO).await;
    let license_id = app.get_licenses("erin").await[0]["id"].as_str().unwrap().to_owned();
    app.activate_ok(&key, "fp-erin").await;
    let device_id = app.db.strings("SELECT CAST(id AS TEXT) FROM devices").await.remove(0);
    let mut cancel = subscription_event("evt_cancel", "erin", now() - 30);
    cancel["type"] = json!("customer.subscription.updated");
    cancel["data"]["object"]["cancel_at_period_end"] = json!(true);
    assert_eq!(app.deliver(&cancel).await, "processed");
    app.issue_license("frank", PRICE_BASIC).await;
    let manual = insert_manual_license(&app, "erin").await;
    app.db
        .execute(&format!(
            "INSERT INTO license_changes (license_id, kind, actor, detail)
             VALUES ('{manual}', 'issued', 'admin:ops', '{{\"plan\": \"pro\"}}')"
        ))
        .await;

    let (all, pages) = walk(&app, &token, "/api/admin/audit", "entries", 2).await;
    assert!(pages >= 3, "several pages");
    let ids: Vec<&str> = all.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), ids.len(), "each entry once: {ids:?}");
    let (single, _) = walk(&app, &token, "/api/admin/audit", "entries", 500).await;
    assert_eq!(single, all, "the walk is the one-page listing, in order");
    let times: Vec<&str> = all.iter().map(|e| e["at"].as_str().unwrap()).collect();
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted, "newest first");
    for prefix in ["sub_", "dev_", "lic_"] {
        assert!(ids.iter().any(|id| id.starts_with(prefix)), "an entry from {prefix}: {ids:?}");
    }
    let cancel_entry = all
        .iter()
        .find(|e| e["action"] == "cancel_at_period_end_changed" || e["detail"]["stripe_event_id"] == "evt_cancel")
        .unwrap_or_else(|| panic!("the cancellation is audited: {all:#?}"));
    assert_eq!((&cancel_entry["actor"], &cancel_entry["license_id"]), (&json!("stripe"), &json!(license_id)));
    assert!(cancel_entry["subscription_id"].is_string());
    let activated = all.iter().find(|e| e["id"].as_str().unwrap().starts_with("dev_")).unwrap();
    assert_eq!((&activated["action"], &activated["license_id"]), (&json!("activated"), &json!(license_id)));
    assert_eq!(
        (&activated["detail"]["device_id"], &activated["detail"]["new_slot"]),
        (&json!(device_id), &json!(true))
    );
    let issued = all.iter().find(|e| e["id"].as_str().unwrap().starts_with("lic_")).unwrap();
    assert_eq!(
        (&issued["actor"], &issued["action"], &issued["detail"]),
        (&json!("admin:ops"), &json!("issued"), &json!({ "plan": "pro" }))
    );
    assert!(issued.get("subscription_id").is_none(), "a manual license has no subscription: {issued}");

    let (of_license, _) = walk(&app, &token, &format!("/api/admin/audit?license_id={license_id}"), "entries", 3).await;
    assert!(!of_license.is_empty());
    assert!(of_license.iter().all(|e| e["license_id"] == json!(license_id)), "{of_license:#?}");
    let (of_erin, _) = walk(&app, &token, "/api/admin/audit?user_id=erin", "entries", 3).await;
    assert_eq!(of_erin.len(), of_license.len() + 1, "erin's Stripe license and her manual one");
    let (of_frank, _) = walk(&app, &token, "/api/admin/audit?user_id=frank", "entries", 50).await;
    assert_eq!(of_erin.len() + of_frank.len(), all.len(), "every entry is erin's or frank's");
}

#[tokio::test]
async fn customers_are_found_by_user_stripe_customer_or_email_with_what_they_hold() {
    let app = spawn_app().await;
    let token = app.admin_token(&["customers:read"]).await;
    app.issue_license("gina", PRICE_PRO).await;
    let customer = |kind: &str, id: &str, created: i64, email: &str| {
        event(id, kind, created, json!({ "id": "cus_gina", "object": "customer", "email": email, "metadata": {} }))
    };
    assert_eq!(
        app.deliver(&customer("customer.updated", "evt_new", now() - 10, "Gina@Example.com")).await,
        "processed"
    );
    // An older event arriving late does not bring back the old address.
    assert_eq!(
        app.deliver(&customer("customer.created", "evt_old", now() - 100, "old@example.com")).await,
        "processed"
    );
    app.issue_license("hank", PRICE_BASIC).await;
    insert_manual_license(&app, "ivy").await;
    insert_manual_license(&app, "gina").await;

    let all = get(&app, &token, "/api/admin/customers").await;
    let users: Vec<&str> =
        all["customers"].as_array().unwrap().iter().map(|c| c["user_id"].as_str().unwrap()).collect();
    assert_eq!(users, ["ivy", "hank", "gina"], "newest first, gina once");
    let ivy = &all["customers"][0];
    assert_eq!((&ivy["stripe_customer_id"], &ivy["subscriptions"]), (&Value::Null, &json!([])));
    assert_eq!(ivy["licenses"].as_array().unwrap().len(), 1);
    assert_eq!(ivy["licenses"][0]["source"], "manual");
    assert!(ivy.get("email").is_none());

    for q in ["gina", "cus_gina", "gina@example.COM"] {
        let found = get(&app, &token, &format!("/api/admin/customers?q={q}")).await;
        let found = found["customers"].as_array().unwrap();
        assert_eq!(found.len(), 1, "q={q}: {found:?}");
        let gina = &found[0];
        assert_eq!(
            (&gina["user_id"], &gina["stripe_customer_id"], &gina["email"]),
            (&json!("gina"), &json!("cus_gina"), &json!("Gina@Example.com"))
        );
        assert_eq!(gina["subscriptions"].as_array().unwrap().len(), 1);
        assert_eq!(gina["subscriptions"][0]["stripe_subscription_id"], "sub_gina");
        let mut sources: Vec<&str> =
            gina["licenses"].as_array().unwrap().iter().map(|l| l["source"].as_str().unwrap()).collect();
        sources.sort();
        assert_eq!(sources, ["manual", "stripe"], "her Stripe license and her manual one");
        assert!(gina["licenses"].as_array().unwrap().iter().all(|l| l.get("key").is_none()), "no keys");
    }
    let none = get(&app, &token, "/api/admin/customers?q=old%40example.com").await;
    assert_eq!(none["customers"], json!([]));
    let (walked, pages) = walk(&app, &token, "/api/admin/customers", "customers", 1).await;
    assert_eq!((walked, pages), (all["customers"].as_array().unwrap().clone(), 3));
}

#[tokio::test]
async fn bad_limits_cursors_statuses_and_parameters_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    let token = app.admin_token(&["*"]).await;
    app.issue_license("jack", PRICE_PRO).await;
    app.issue_license("kate", PRICE_PRO).await;
    // A first request marks the token used; the refusals below must then change nothing.
    let audit = get(&app, &token, "/api/admin/audit?limit=1").await;
    let audit_cursor = audit["next_cursor"].as_str().expect("more than one entry").to_owned();
    let before = app.db.fingerprint().await;
    let lists = ["/api/admin/stripe-events", "/api/admin/audit", "/api/admin/customers"];
    for list in lists {
        for query in [
            "limit=0",
            "limit=501",
            "limit=abc",
            "limit=-1",
            "limit=",
            "limit=1&limit=2",
            "cursor=garbage",
            "cursor=",
            "bogus=1",
        ] {
            let path = format!("{list}?{query}");
            let refused = app.admin_ok(Method::GET, &path, &token, None, 400).await;
            assert_eq!(refused["error"]["code"], "INVALID_REQUEST", "{path}: {refused}");
            assert!(refused["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
    }
    for path in [
        format!("/api/admin/stripe-events?cursor={audit_cursor}"),
        format!("/api/admin/customers?cursor={audit_cursor}"),
        "/api/admin/stripe-events?status=bogus".to_owned(),
        "/api/admin/stripe-events?status=PROCESSED".to_owned(),
        "/api/admin/audit?license_id=not-a-uuid".to_owned(),
        "/api/admin/audit?user_id=%01".to_owned(),
        "/api/admin/customers?q=".to_owned(),
    ] {
        let refused = app.admin_ok(Method::GET, &path, &token, None, 400).await;
        assert_eq!(refused["error"]["code"], "INVALID_REQUEST", "{path}: {refused}");
    }
    let secret = "4QR2-2SF6-DAPK-3XD8-VPN7-PT7F-78ZG-DSNJ";
    let refused = app.admin_ok(Method::GET, &format!("/api/admin/customers?limit={secret}"), &token, None, 400).await;
    assert!(!refused.to_string().contains("4QR2"), "a key-shaped input is not echoed: {refused}");
    assert_eq!(app.db.fingerprint().await, before, "refused requests changed nothing");
    let within = get(&app, &token, "/api/admin/audit?limit=500").await;
    assert_eq!(within["next_cursor"], Value::Null);
}
