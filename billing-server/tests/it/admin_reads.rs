//! The admin API's reads (issue 14): Stripe deliveries and their replay, the
//! audit walk, customers; their refusals of bad input.

use crate::helpers::*;
use billing_core::admin_licenses::NewLicense;
use billing_core::domain::{Actor, LicenseKey};
use billing_core::storage::{EventRecord, Store};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use uuid::Uuid;

/// An RFC 3339 timestamp of an answer (compared as instants: the text drops
/// trailing zeros of the fraction, so it does not sort as the time does).
fn instant(value: &Value) -> time::OffsetDateTime {
    let text = value.as_str().unwrap_or_else(|| panic!("not a timestamp: {value}"));
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap()
}

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

/// A manual license of `user` on the pro plan, issued through the core use
/// case as the admin route does. Returns its id.
async fn issue_manual(app: &TestApp, user: &str) -> Uuid {
    let request = NewLicense { user_id: user.to_owned(), plan: "pro".to_owned(), ..NewLicense::default() };
    let actor = Actor::admin("ops");
    app.billing.issue_manual_license(&actor, request).await.expect("issued").record.license.id
}

/// `count` manual licenses of `user`, `per_statement` to an INSERT (rows of
/// one statement share their `created_at`, so the walk must break ties by
/// id). Returns their ids.
async fn bulk_insert_licenses(app: &TestApp, user: &str, count: usize, per_statement: usize) -> Vec<Uuid> {
    let mut ids = Vec::with_capacity(count);
    for chunk in (0..count).collect::<Vec<_>>().chunks(per_statement) {
        let rows: Vec<String> = chunk
            .iter()
            .map(|_| {
                let (id, key) = (Uuid::new_v4(), LicenseKey::generate());
                ids.push(id);
                let hash: String = key.lookup_hash().iter().map(|b| format!("{b:02x}")).collect();
                let hash = match backend() {
                    Backend::Postgres => format!("'\\x{hash}'::bytea"),
                    Backend::Sqlite => format!("X'{hash}'"),
                };
                format!("('{id}', '{}', {hash}, 'active', 'pro', 2, 'manual', '{user}')", key.expose())
            })
            .collect();
        app.db
            .execute(&format!(
                "INSERT INTO licenses (id, key, key_hash, status, plan_id, max_devices, source, user_id) VALUES {}",
                rows.join(", ")
            ))
            .await;
    }
    ids
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
    let manual = issue_manual(&app, "erin").await;

    let (all, pages) = walk(&app, &token, "/api/admin/audit", "entries", 2).await;
    assert!(pages >= 3, "several pages");
    let ids: Vec<&str> = all.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), ids.len(), "each entry once: {ids:?}");
    let (single, _) = walk(&app, &token, "/api/admin/audit", "entries", 500).await;
    assert_eq!(single, all, "the walk is the one-page listing, in order");
    let times: Vec<time::OffsetDateTime> = all.iter().map(|e| instant(&e["at"])).collect();
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
    assert_eq!((&issued["actor"], &issued["action"]), (&json!("admin:ops"), &json!("issued")));
    assert_eq!((&issued["license_id"], &issued["detail"]["plan"]), (&json!(manual), &json!("pro")));
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
    issue_manual(&app, "ivy").await;
    issue_manual(&app, "gina").await;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_license_walk_returns_each_pre_existing_license_once_while_others_are_issued() {
    let app = spawn_app().await;
    let token = app.admin_token(&["licenses:read"]).await;
    let stripe_key = app.issue_license("walker", PRICE_PRO).await;
    let mut existing: BTreeSet<String> =
        bulk_insert_licenses(&app, "bulk", 1_050, 150).await.into_iter().map(|id| id.to_string()).collect();
    existing.insert(app.get_licenses("walker").await[0]["id"].as_str().unwrap().to_owned());

    // Issued while the walk runs, through the core use case.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let inserter = {
        let (billing, stop) = (app.billing.clone(), stop.clone());
        tokio::spawn(async move {
            let mut issued = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let request =
                    NewLicense { user_id: format!("late_{issued}"), plan: "basic".to_owned(), ..NewLicense::default() };
                billing.issue_manual_license(&Actor::admin("ops"), request).await.unwrap();
                issued += 1;
            }
            issued
        })
    };
    let (walked, pages) = walk(&app, &token, "/api/admin/licenses", "licenses", 97).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let issued_meanwhile = inserter.await.unwrap();
    assert!(issued_meanwhile > 0, "licenses were issued during the walk");
    assert!(pages > 10, "{pages} pages");

    let ids: Vec<String> = walked.iter().map(|l| l["id"].as_str().unwrap().to_owned()).collect();
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(unique.len(), ids.len(), "no license twice");
    assert!(existing.is_subset(&unique), "every license that existed when the walk began, exactly once");
    assert!(ids.len() <= existing.len() + issued_meanwhile, "nothing that does not exist");
    let order: Vec<(time::OffsetDateTime, &str)> =
        walked.iter().map(|l| (instant(&l["created_at"]), l["id"].as_str().unwrap())).collect();
    let mut newest_first = order.clone();
    newest_first.sort_by(|a, b| b.cmp(a));
    assert_eq!(order, newest_first, "newest first by (created_at, id)");
    let stripe = walked.iter().find(|l| l["key"] == json!(stripe_key)).expect("the Stripe license is listed");
    assert_eq!(
        (&stripe["source"], &stripe["user_id"], &stripe["plan"]),
        (&json!("stripe"), &json!("walker"), &json!("pro"))
    );
    assert!(stripe["subscription_id"].is_string());
}

#[tokio::test]
async fn a_license_is_found_by_every_kind_of_search_term_and_filtered() {
    let app = spawn_app().await;
    let token = app.admin_token(&["licenses:read"]).await;
    let key = app.issue_license("lena", PRICE_PRO).await;
    app.activate_ok(&key, "fp-lena-laptop").await;
    let stripe = &app.get_licenses("lena").await[0];
    let stripe_id = stripe["id"].as_str().unwrap().to_owned();
    app.issue_license("mo", PRICE_BASIC).await;
    let manual = issue_manual(&app, "lena").await;
    let revoked = issue_manual(&app, "nina").await;
    app.billing.revoke_license(&Actor::admin("ops"), revoked).await.unwrap();

    let find = |q: String| {
        let (app, token) = (&app, &token);
        async move {
            let q = form_urlencoded::byte_serialize(q.as_bytes()).collect::<String>();
            let page = get(app, token, &format!("/api/admin/licenses?q={q}")).await;
            page["licenses"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    let spaced = key.replace('-', " ").to_lowercase();
    let bare = key.replace('-', "");
    for q in
        [key.clone(), spaced, bare, stripe_id.clone(), "cus_lena".into(), "sub_lena".into(), "fp-lena-laptop".into()]
    {
        assert_eq!(find(q.clone()).await, std::slice::from_ref(&stripe_id), "q={q}");
    }
    let lena = find("lena".into()).await;
    assert_eq!(lena.len(), 2, "her Stripe license and her manual one");
    assert!(lena.contains(&stripe_id) && lena.contains(&manual.to_string()));
    assert_eq!(find(manual.to_string()).await, [manual.to_string()]);
    assert!(find("nobody".into()).await.is_empty());
    assert!(find("ZZZZ-ZZZZ-ZZZZ-ZZZZ-ZZZZ-ZZZZ-ZZZZ-ZZZZ".into()).await.is_empty(), "a well-formed unknown key");

    let ids_of = |page: Value| -> Vec<String> {
        page["licenses"].as_array().unwrap().iter().map(|l| l["id"].as_str().unwrap().to_owned()).collect()
    };
    let revoked_only = ids_of(get(&app, &token, "/api/admin/licenses?status=revoked").await);
    assert_eq!(revoked_only, [revoked.to_string()]);
    let active = ids_of(get(&app, &token, "/api/admin/licenses?status=active").await);
    assert_eq!(active.len(), 3);
    let basic = get(&app, &token, "/api/admin/licenses?plan=basic").await;
    assert_eq!(basic["licenses"].as_array().unwrap().len(), 1);
    assert_eq!(basic["licenses"][0]["user_id"], "mo");
    let lenas_active = ids_of(get(&app, &token, "/api/admin/licenses?user_id=lena&status=active&plan=pro").await);
    assert_eq!(lenas_active.len(), 2);
    let listed_stripe = get(&app, &token, &format!("/api/admin/licenses?q={stripe_id}")).await;
    assert_eq!(listed_stripe["licenses"][0]["device_count"], 1);
}

#[tokio::test]
async fn one_license_is_shown_with_its_devices_and_subscription() {
    let app = spawn_app().await;
    let token = app.admin_token(&["licenses:read"]).await;
    let key = app.issue_license("olga", PRICE_PRO).await;
    app.activate_ok(&key, "fp-olga").await;
    let id = app.get_licenses("olga").await[0]["id"].as_str().unwrap().to_owned();
    let shown = get(&app, &token, &format!("/api/admin/licenses/{id}")).await;
    let license = &shown["license"];
    assert_eq!((&license["id"], &license["key"], &license["status"]), (&json!(id), &json!(key), &json!("active")));
    assert_eq!(
        (&license["source"], &license["user_id"], &license["max_devices"]),
        (&json!("stripe"), &json!("olga"), &json!(3))
    );
    assert_eq!(license["devices"].as_array().unwrap().len(), 1);
    assert_eq!(license["devices"][0]["fingerprint"], "fp-olga");
    assert_eq!(license["subscription"]["stripe_subscription_id"], "sub_olga");
    assert_eq!((&license["entitlements"], &license["metadata"]), (&json!([]), &json!({})));

    let manual = issue_manual(&app, "olga").await;
    let shown = get(&app, &token, &format!("/api/admin/licenses/{manual}")).await;
    assert_eq!((&shown["license"]["subscription"], &shown["license"]["devices"]), (&Value::Null, &json!([])));
    assert_eq!(shown["license"]["source"], "manual");

    for missing in [Uuid::new_v4().to_string(), "not-a-uuid".to_owned()] {
        let refused = app.admin_ok(Method::GET, &format!("/api/admin/licenses/{missing}"), &token, None, 404).await;
        assert_eq!(refused["error"]["code"], "NOT_FOUND");
    }
}

#[tokio::test]
async fn the_export_streams_every_license_once_as_ndjson_and_as_csv() {
    let app = spawn_app().await;
    let token = app.admin_token(&["licenses:read"]).await;
    let key = app.issue_license("pia", PRICE_PRO).await;
    app.activate_ok(&key, "fp-pia").await;
    let mut ids: BTreeSet<String> =
        bulk_insert_licenses(&app, "exported", 1_234, 400).await.into_iter().map(|id| id.to_string()).collect();
    let pia = app.get_licenses("pia").await[0]["id"].as_str().unwrap().to_owned();
    ids.insert(pia.clone());

    let response = app.admin(Method::GET, "/api/admin/licenses/export?format=ndjson", &token, None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let text = response.text().await.unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("each line is JSON")).collect();
    let exported: Vec<String> = lines.iter().map(|l| l["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(exported.len(), ids.len(), "each license once");
    assert_eq!(exported.iter().cloned().collect::<BTreeSet<_>>(), ids);
    let line = lines.iter().find(|l| l["id"] == json!(pia)).unwrap();
    assert_eq!(
        line,
        &json!({ "id": pia, "key": key, "user_id": "pia", "plan": "pro", "status": "active", "device_count": 1,
                 "source": "stripe", "created_at": line["created_at"], "expires_at": line["expires_at"],
                 "kind": "subscription", "updates_until": null, "trial": false })
    );

    let response = app.admin(Method::GET, "/api/admin/licenses/export?format=csv", &token, None).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    let text = response.text().await.unwrap();
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(text.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_owned).collect();
    assert_eq!(
        header,
        [
            "id",
            "key",
            "user_id",
            "plan",
            "status",
            "device_count",
            "source",
            "created_at",
            "expires_at",
            "kind",
            "updates_until",
            "trial"
        ]
    );
    let records: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("RFC 4180")).collect();
    let exported: Vec<String> = records.iter().map(|r| r[0].to_owned()).collect();
    assert_eq!(exported.len(), ids.len(), "each license once");
    assert_eq!(exported.iter().cloned().collect::<BTreeSet<_>>(), ids);
    let row = records.iter().find(|r| r[0] == pia).unwrap();
    let fields: Vec<&str> = row.iter().skip(1).take(6).collect();
    assert_eq!(fields, [key.as_str(), "pia", "pro", "active", "1", "stripe"]);
    assert_eq!(row.iter().skip(9).collect::<Vec<_>>(), ["subscription", "", "false"]);
}

#[tokio::test]
async fn bad_license_listing_and_export_requests_are_refused() {
    let app = spawn_app().await;
    let token = app.admin_token(&["licenses:read"]).await;
    app.issue_license("quinn", PRICE_PRO).await;
    get(&app, &token, "/api/admin/licenses").await;
    let before = app.db.fingerprint().await;
    for path in [
        "/api/admin/licenses?status=bogus",
        "/api/admin/licenses?status=Active",
        "/api/admin/licenses?limit=0",
        "/api/admin/licenses?limit=501",
        "/api/admin/licenses?cursor=bm90LWEtY3Vyc29y",
        "/api/admin/licenses?q=",
        "/api/admin/licenses?page=2",
        "/api/admin/licenses/export?format=xml",
        "/api/admin/licenses/export?format=csv&format=ndjson",
    ] {
        let refused = app.admin_ok(Method::GET, path, &token, None, 400).await;
        assert_eq!(refused["error"]["code"], "INVALID_REQUEST", "{path}: {refused}");
    }
    assert_eq!(app.db.fingerprint().await, before, "refused requests changed nothing");
}

#[tokio::test]
async fn listings_and_the_export_show_each_license_s_kind_updates_window_and_trial() {
    // `pro` offers trials here, so a trial license exists beside the others.
    let mut all: Vec<billing_core::domain::Plan> = plans().all().to_vec();
    for plan in &mut all {
        if plan.id.0 == "pro" {
            plan.trial_days = Some(14);
        }
    }
    let catalog = billing_core::domain::PlanCatalog::new(all).unwrap();
    let app = spawn_app_with(Options { plans: Some(catalog), ..Default::default() }).await;
    let token = app.admin_token(&["*"]).await;
    app.issue_license("lena", PRICE_PRO).await;
    let until = time::OffsetDateTime::now_utc().replace_nanosecond(0).unwrap() + time::Duration::days(365);
    let request = NewLicense {
        user_id: "lena".to_owned(),
        plan: "basic".to_owned(),
        kind: Some(billing_core::domain::LicenseKind::Perpetual),
        updates_until: Some(until),
        ..NewLicense::default()
    };
    let perpetual = app.billing.issue_manual_license(&Actor::admin("ops"), request).await.unwrap().record.license.id;
    let trial = app.post_json("/api/license/trial", &json!({ "fingerprint": "fp-trial" })).await;
    assert_eq!(trial.status(), 201);
    let trial: Value = trial.json().await.unwrap();
    let trial_id = trial["license"]["id"].as_str().unwrap().to_owned();

    let found = get(&app, &token, "/api/admin/customers?q=lena").await;
    let licenses = found["customers"][0]["licenses"].as_array().unwrap().clone();
    let shown: BTreeSet<(String, String, Option<i64>, bool)> = licenses
        .iter()
        .map(|l| {
            let updates = l["updates_until"].as_str().map(|_| instant(&l["updates_until"]).unix_timestamp());
            (
                l["plan"].as_str().unwrap().to_owned(),
                l["kind"].as_str().unwrap().to_owned(),
                updates,
                l["trial"].as_bool().unwrap(),
            )
        })
        .collect();
    let expected = BTreeSet::from([
        ("pro".to_owned(), "subscription".to_owned(), None, false),
        ("basic".to_owned(), "perpetual".to_owned(), Some(until.unix_timestamp()), false),
    ]);
    assert_eq!(shown, expected, "{licenses:?}");

    let listed = get(&app, &token, &format!("/api/admin/licenses/{trial_id}")).await;
    assert_eq!((&listed["license"]["trial"], &listed["license"]["kind"]), (&json!(true), &json!("subscription")));

    let text =
        app.admin(Method::GET, "/api/admin/licenses/export?format=ndjson", &token, None).await.text().await.unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let line_of =
        |id: &str| lines.iter().find(|l| l["id"] == id).unwrap_or_else(|| panic!("{id} not exported")).clone();
    let bought = line_of(&perpetual.to_string());
    assert_eq!((&bought["kind"], &bought["trial"]), (&json!("perpetual"), &json!(false)));
    assert_eq!(instant(&bought["updates_until"]), until);
    let tried = line_of(&trial_id);
    assert_eq!(
        (&tried["kind"], &tried["trial"], &tried["updates_until"]),
        (&json!("subscription"), &json!(true), &Value::Null)
    );

    let text =
        app.admin(Method::GET, "/api/admin/licenses/export?format=csv", &token, None).await.text().await.unwrap();
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(text.as_bytes());
    let records: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    let row = records.iter().find(|r| r[0] == perpetual.to_string()).unwrap();
    assert_eq!((&row[9], instant(&json!(&row[10])), &row[11]), ("perpetual", until, "false"));
    let row = records.iter().find(|r| r[0] == trial_id).unwrap();
    assert_eq!(row.iter().skip(9).collect::<Vec<_>>(), ["subscription", "", "true"]);
}
