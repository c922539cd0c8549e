//! Devices, validation, heartbeats, certificates, terminals and rate limits.

use crate::helpers::*;
use serde_json::{json, Value};

#[tokio::test]
async fn activation_returns_a_token_device_license_and_certificate() {
    let app = spawn_app().await;
    let key = app.issue_license("u", PRICE_PRO).await;
    let response = app.activate(&key, "fp-1").await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert!(body["activation_token"].as_str().unwrap().starts_with("act_"));
    assert_eq!(body["device"]["fingerprint"], "fp-1");
    assert_eq!(body["device"]["alive"], true);
    assert_eq!(body["license"]["status"], "active");
    assert_eq!(body["license"]["max_devices"], 3);
    assert_eq!(body["license"]["entitlements"], json!(["export"]));
    assert_eq!(body["certificate"].as_str().unwrap().split('.').count(), 3);
    // Only the hash is stored.
    let stored = app.db.bytes("SELECT token_hash FROM devices").await;
    assert_eq!(stored.len(), 32);
}

#[tokio::test]
async fn reactivating_a_fingerprint_reuses_its_slot_and_retires_the_old_token() {
    let app = spawn_app().await;
    let key = app.issue_license("u", PRICE_BASIC).await;
    let first = app.activate_ok(&key, "fp-1").await;
    let response = app.activate(&key, "fp-1").await;
    assert_eq!(response.status(), 200, "same fingerprint again");
    let second: Value = response.json().await.unwrap();
    assert_eq!(first["device"]["id"], second["device"]["id"]);
    assert_ne!(first["activation_token"], second["activation_token"]);
    assert_eq!(app.heartbeat(first["activation_token"].as_str().unwrap()).await.status(), 401);
    assert_eq!(app.heartbeat(second["activation_token"].as_str().unwrap()).await.status(), 200);
}

#[tokio::test]
async fn more_devices_than_the_plan_allows_are_refused() {
    let app = spawn_app().await;
    let key = app.issue_license("u", PRICE_BASIC).await;
    app.activate_ok(&key, "fp-1").await;
    let response = app.activate(&key, "fp-2").await;
    assert_eq!(response.status(), 409);
    assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], "TOO_MANY_DEVICES");
}

#[tokio::test]
async fn concurrent_activations_never_exceed_the_limit() {
    let app = spawn_app().await;
    let key = app.issue_license("u", PRICE_PRO).await;
    let attempts = (0..12).map(|i| {
        let (app, key) = (&app, &key);
        async move { app.activate(key, &format!("fp-{i}")).await.status().as_u16() }
    });
    let statuses = futures_util::future::join_all(attempts).await;
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 3, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 9, "{statuses:?}");
    let active = app.db.int("SELECT count(*) FROM devices WHERE status = 'active'").await;
    assert_eq!(active, 3);
}

#[tokio::test]
async fn heartbeats_and_activations_on_one_license_never_deadlock() {
    // An activation locks the license and then its devices; a heartbeat
    // holds its device, so it must not then wait for the license.
    let app = spawn_app().await;
    let key = app.issue_license("u", PRICE_PRO).await;
    let token = app.activate_ok(&key, "fp-held").await["activation_token"].as_str().unwrap().to_owned();
    for round in 0..5 {
        let heartbeats = (0..10).map(|_| {
            let (app, token) = (&app, &token);
            async move { app.heartbeat(token).await.status().as_u16() }
        });
        let activations = (0..10).map(|i| {
            let (app, key) = (&app, &key);
            async move { app.activate(key, &format!("fp-{round}-{i}")).await.status().as_u16() }
        });
        let (heartbeats, activations) = futures_util::future::join(
            futures_util::future::join_all(heartbeats),
            futures_util::future::join_all(activations),
        )
        .await;
        assert!(heartbeats.iter().all(|s| *s == 200), "round {round}: {heartbeats:?}");
        assert!(activations.iter().all(|s| *s == 201 || *s == 409), "round {round}: {activations:?}");
    }
}

#[tokio::test]
async fn activation_refuses_bad_input_and_unusable_licenses() {
    let app = spawn_app().await;
    let key = app.issue_license("u", PRICE_PRO).await;
    let malformed = app.http.post(app.url("/api/license/activate")).body("{oops").send().await.unwrap();
    assert_eq!(malformed.status(), 400);
    assert_eq!(malformed.json::<Value>().await.unwrap()["error"]["code"], "MALFORMED_JSON");
    let missing = app.post_json("/api/license/activate", &json!({ "license_key": key })).await;
    assert_eq!(missing.status(), 400);
    let empty_fp = app.post_json("/api/license/activate", &json!({ "license_key": key, "fingerprint": " " })).await;
    assert_eq!(empty_fp.status(), 400);
    let unknown = app.activate("AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA", "fp").await;
    assert_eq!(unknown.status(), 404);
    assert_eq!(unknown.json::<Value>().await.unwrap()["error"]["code"], "LICENSE_NOT_FOUND");
    app.deliver(&event(
        "evt_unpaid",
        "customer.subscription.updated",
        now(),
        subscription("sub_u", "cus_u", "unpaid", PRICE_PRO, Some("u")),
    ))
    .await;
    let suspended = app.activate(&key, "fp").await;
    assert_eq!(suspended.status(), 403);
    assert_eq!(suspended.json::<Value>().await.unwrap()["error"]["code"], "SUSPENDED");
    assert_eq!(app.count("devices").await, 0);
}

#[tokio::test]
async fn validation_answers_each_code_in_order() {
    let clock = TestClock::default();
    let app =
        spawn_app_with(Options { clock: Some(clock.clock()), heartbeat_window_secs: Some(5), ..Default::default() })
            .await;
    let key = app.issue_license("u", PRICE_PRO).await;
    let code = |v: Value| (v["valid"].as_bool().unwrap(), v["code"].as_str().unwrap().to_owned());

    assert_eq!(code(app.validate("AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA", None).await), (false, "NOT_FOUND".into()));
    assert_eq!(code(app.validate("not a key", Some("fp")).await), (false, "NOT_FOUND".into()));
    assert_eq!(code(app.validate(&key, None).await), (true, "VALID".into()));
    assert_eq!(code(app.validate(&key, Some("fp-1")).await), (false, "NOT_ACTIVATED".into()));
    app.activate_ok(&key, "fp-1").await;
    let valid = app.validate(&key, Some("fp-1")).await;
    assert_eq!(code(valid.clone()), (true, "VALID".into()));
    assert_eq!(valid["license"]["plan"], "pro");
    clock.advance(6);
    assert_eq!(code(app.validate(&key, Some("fp-1")).await), (false, "HEARTBEAT_DEAD".into()));

    app.deliver(&event(
        "e_unpaid",
        "customer.subscription.updated",
        now(),
        subscription("sub_u", "cus_u", "unpaid", PRICE_PRO, Some("u")),
    ))
    .await;
    assert_eq!(code(app.validate(&key, Some("fp-1")).await), (false, "SUSPENDED".into()));
    app.deliver(&event(
        "e_cancel",
        "customer.subscription.deleted",
        now() + 1,
        subscription("sub_u", "cus_u", "canceled", PRICE_PRO, Some("u")),
    ))
    .await;
    assert_eq!(code(app.validate(&key, Some("fp-1")).await), (false, "EXPIRED".into()));
    let license_id = app.billing.license_by_key(&key).await.unwrap().unwrap().id;
    app.billing.revoke_license(&billing_core::domain::Actor::admin("ops"), license_id).await.unwrap();
    assert_eq!(code(app.validate(&key, Some("fp-1")).await), (false, "REVOKED".into()));

    let missing = app.post_json("/api/license/validate", &json!({ "fingerprint": "fp" })).await;
    assert_eq!(missing.status(), 400);
    let malformed = app.http.post(app.url("/api/license/validate")).body("[").send().await.unwrap();
    assert_eq!(malformed.status(), 400);
}

#[tokio::test]
async fn a_silent_device_dies_frees_its_slot_and_must_activate_again() {
    let clock = TestClock::default();
    let app =
        spawn_app_with(Options { clock: Some(clock.clock()), heartbeat_window_secs: Some(5), ..Default::default() })
            .await;
    let key = app.issue_license("u", PRICE_BASIC).await;
    let first = app.activate_ok(&key, "laptop").await;
    let token = first["activation_token"].as_str().unwrap().to_owned();
    assert_eq!(app.heartbeat(&token).await.status(), 200);
    assert_eq!(app.activate(&key, "desktop").await.status(), 409, "slot taken while alive");

    clock.advance(6);
    // The server's own reaper (every quarter window) may record it first,
    // or hold it (skipped, then) while this one looks.
    let reaped = app.billing.reap_dead_devices().await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while app.db.int("SELECT count(*) FROM device_changes WHERE kind = 'dead'").await == 0 {
        assert!(std::time::Instant::now() < deadline, "the silent device is never declared dead");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(reaped <= 1, "{reaped}");
    assert_eq!(app.billing.reap_dead_devices().await.unwrap(), 0, "recorded once");
    assert_eq!(app.activate(&key, "desktop").await.status(), 201, "the dead device's slot is free");

    let late = app.heartbeat(&token).await;
    assert_eq!(late.status(), 410);
    let error: Value = late.json().await.unwrap();
    assert_eq!(error["error"]["code"], "HEARTBEAT_DEAD");
    assert!(error["error"]["message"].as_str().unwrap().contains("activate again"));
    let kinds: Vec<String> = app.db.strings("SELECT kind FROM device_changes ORDER BY id").await;
    assert_eq!(kinds, ["activated", "dead", "activated"]);
    let topics: Vec<String> =
        app.db.strings("SELECT topic FROM outbox_events WHERE topic LIKE 'device.%' ORDER BY id").await;
    assert_eq!(topics, ["device.activated", "device.dead", "device.activated"]);
}

#[tokio::test]
async fn an_overdue_heartbeat_is_refused_even_before_the_reaper_runs() {
    let clock = TestClock::default();
    let app =
        spawn_app_with(Options { clock: Some(clock.clock()), heartbeat_window_secs: Some(5), ..Default::default() })
            .await;
    let key = app.issue_license("u", PRICE_BASIC).await;
    let token = app.activate_ok(&key, "laptop").await["activation_token"].as_str().unwrap().to_owned();
    clock.advance(6);
    assert_eq!(app.heartbeat(&token).await.status(), 410);
    assert_eq!(app.count("device_changes").await, 2, "activation and death recorded");
}

#[tokio::test]
async fn heartbeat_and_deactivate_require_a_valid_activation_token() {
    let app = spawn_app().await;
    let key = app.issue_license("u", PRICE_BASIC).await;
    for token in [None, Some("act_unknown"), Some("")] {
        let mut request = app.http.post(app.url("/api/license/heartbeat"));
        if let Some(t) = token {
            request = request.header("Authorization", format!("Bearer {t}"));
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{token:?}");
        assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], "UNAUTHORIZED");
    }
    let token = app.activate_ok(&key, "fp").await["activation_token"].as_str().unwrap().to_owned();
    let response = app.http.post(app.url("/api/license/deactivate")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["device"]["status"], "deactivated");
    assert_eq!(app.heartbeat(&token).await.status(), 410);
    assert_eq!(app.activate(&key, "other").await.status(), 201, "slot freed");
    assert_eq!(app.http.post(app.url("/api/license/deactivate")).send().await.unwrap().status(), 401);
}

#[tokio::test]
async fn certificates_verify_with_a_standard_jose_library() {
    let app = spawn_app().await;
    let key = app.issue_license("u", PRICE_PRO).await;
    let activation = app.activate_ok(&key, "fp-1").await;
    let jwk: Value = app.http.get(app.url("/api/license/public-key")).send().await.unwrap().json().await.unwrap();
    let jwk = &jwk["jwk"];
    assert_eq!((jwk["kty"].as_str(), jwk["crv"].as_str()), (Some("OKP"), Some("Ed25519")));

    // jsonwebtoken is an independent JOSE implementation (ed25519-dalek underneath).
    let decoding = jsonwebtoken::DecodingKey::from_ed_components(jwk["x"].as_str().unwrap()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_required_spec_claims(&["exp", "iat"]);
    let certificate = activation["certificate"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(certificate).unwrap();
    assert_eq!(header.kid.as_deref(), jwk["kid"].as_str());
    let claims = jsonwebtoken::decode::<Value>(certificate, &decoding, &validation).unwrap().claims;
    assert_eq!(claims["license_id"], activation["license"]["id"]);
    assert_eq!(claims["fingerprint"], "fp-1");
    assert_eq!(claims["plan"], "pro");
    assert_eq!(claims["status"], "active");
    assert_eq!(claims["max_devices"], 3);
    assert_eq!(claims["entitlements"], json!(["export"]));
    let (iat, exp) = (claims["iat"].as_i64().unwrap(), claims["exp"].as_i64().unwrap());
    assert!(exp > iat && exp - iat <= 7 * 24 * 3600, "ttl capped at 7 days: {iat}..{exp}");

    // A tampered certificate does not verify.
    let mut parts: Vec<String> = certificate.split('.').map(str::to_owned).collect();
    parts[1] = parts[1].replacen('e', "f", 1);
    assert!(jsonwebtoken::decode::<Value>(&parts.join("."), &decoding, &validation).is_err());

    let heartbeat: Value = app.heartbeat(activation["activation_token"].as_str().unwrap()).await.json().await.unwrap();
    assert!(jsonwebtoken::decode::<Value>(heartbeat["certificate"].as_str().unwrap(), &decoding, &validation).is_ok());
}

#[tokio::test]
async fn certificate_expiry_never_passes_paid_through_plus_grace() {
    let app = spawn_app().await;
    // Period ends in 2 days; grace is 7 days: 9 days > 7-day TTL, so TTL wins.
    // Period that ended long ago (but still active): capped at end + grace.
    let mut sub = subscription("sub_u", "cus_u", "active", PRICE_PRO, Some("u"));
    let period_end = now() - 6 * 24 * 3600;
    sub["items"]["data"][0]["current_period_end"] = json!(period_end);
    app.deliver(&event("e1", "customer.subscription.created", now(), sub)).await;
    let key = app.get_licenses("u").await[0]["key"].as_str().unwrap().to_owned();
    let certificate = app.activate_ok(&key, "fp").await["certificate"].as_str().unwrap().to_owned();
    let payload = certificate.split('.').nth(1).unwrap();
    use base64::Engine;
    let claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(claims["exp"].as_i64().unwrap(), period_end + 7 * 24 * 3600);
}

#[tokio::test]
async fn terminals_list_rename_and_remote_deactivation_stay_within_the_owner() {
    let app = spawn_app().await;
    let key = app.issue_license("alice", PRICE_PRO).await;
    let bob_key = app.issue_license("bob", PRICE_PRO).await;
    let device = app.activate_ok(&key, "fp-a").await;
    let bob_device = app.activate_ok(&bob_key, "fp-b").await;
    let id = device["device"]["id"].as_str().unwrap();
    let bob_id = bob_device["device"]["id"].as_str().unwrap();

    let list = app.get_as("/api/terminals", "alice").await;
    let terminals = list["terminals"].as_array().unwrap();
    assert_eq!(terminals.len(), 1);
    assert_eq!((terminals[0]["name"].as_str(), terminals[0]["platform"].as_str()), (Some("fp-a"), Some("linux")));
    assert_eq!(terminals[0]["alive"], true);
    assert!(terminals[0]["last_seen_at"].is_string());
    assert_eq!(app.get_licenses("alice").await[0]["devices"].as_array().unwrap().len(), 1);

    let jwt = jwt_for("alice");
    let rename = app
        .http
        .patch(app.url(&format!("/api/terminals/{id}")))
        .bearer_auth(&jwt)
        .json(&json!({ "name": "Work laptop" }))
        .send()
        .await
        .unwrap();
    assert_eq!(rename.status(), 200);
    assert_eq!(rename.json::<Value>().await.unwrap()["terminal"]["name"], "Work laptop");
    let bad =
        app.http.patch(app.url(&format!("/api/terminals/{id}"))).bearer_auth(&jwt).body("{").send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let empty = app
        .http
        .patch(app.url(&format!("/api/terminals/{id}")))
        .bearer_auth(&jwt)
        .json(&json!({ "name": "" }))
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), 400);

    for (method, path) in [
        (reqwest::Method::DELETE, format!("/api/terminals/{bob_id}")),
        (reqwest::Method::PATCH, format!("/api/terminals/{bob_id}")),
        (reqwest::Method::DELETE, "/api/terminals/not-a-uuid".to_owned()),
    ] {
        let response = app
            .http
            .request(method.clone(), app.url(&path))
            .bearer_auth(&jwt)
            .json(&json!({ "name": "mine" }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{method} {path}");
    }
    assert_eq!(app.http.delete(app.url(&format!("/api/terminals/{id}"))).send().await.unwrap().status(), 401);

    let deleted = app.http.delete(app.url(&format!("/api/terminals/{id}"))).bearer_auth(&jwt).send().await.unwrap();
    assert_eq!(deleted.status(), 200);
    assert_eq!(deleted.json::<Value>().await.unwrap()["terminal"]["status"], "deactivated");
    assert_eq!(app.heartbeat(device["activation_token"].as_str().unwrap()).await.status(), 410);
    assert_eq!(app.heartbeat(bob_device["activation_token"].as_str().unwrap()).await.status(), 200, "bob untouched");
    let actor = app.db.strings("SELECT actor FROM device_changes WHERE kind = 'deactivated'").await.remove(0);
    assert_eq!(actor, "user:alice");
}

#[tokio::test]
async fn failed_lookups_are_rate_limited_per_address_then_everything_is_refused() {
    let app = spawn_app_with(Options { rate_limit_per_minute: Some(3), ..Default::default() }).await;
    let key = app.issue_license("u", PRICE_PRO).await;
    for _ in 0..3 {
        assert_eq!(app.validate("AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA", None).await["code"], "NOT_FOUND");
    }
    let limited = app
        .post_json("/api/license/validate", &json!({ "license_key": "BBBB-BBBB-BBBB-BBBB-BBBB-BBBB-BBBB-BBBB" }))
        .await;
    assert_eq!(limited.status(), 429);
    let retry_after: u64 = limited.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after));
    assert_eq!(limited.json::<Value>().await.unwrap()["error"]["code"], "RATE_LIMITED");
    // While blocked, a hit is refused too, so it cannot be told from a miss.
    let hit = app.post_json("/api/license/validate", &json!({ "license_key": key })).await;
    assert_eq!(hit.status(), 429);
    assert_eq!(app.activate(&key, "fp").await.status(), 429);
}

#[tokio::test]
async fn a_license_past_due_beyond_its_grace_is_suspended_once_and_its_devices_hear_it() {
    let clock = TestClock::default();
    let app = spawn_app_with(Options { clock: Some(clock.clock()), grace_days: Some(7), ..Default::default() }).await;
    let key = app.issue_license("u", PRICE_PRO).await;
    let token = app.activate_ok(&key, "fp-1").await["activation_token"].as_str().unwrap().to_owned();
    let update = |id: &str, created: i64, status: &str| {
        event(
            id,
            "customer.subscription.updated",
            created,
            subscription("sub_u", "cus_u", status, PRICE_PRO, Some("u")),
        )
    };
    let mut events = EventReader::new(app.open_event_stream(&key, &token, None).await);
    app.deliver(&update("e_past_due", now() + 1, "past_due")).await;
    // The stream may replay what preceded it; the past-due notice is the
    // first with a grace period, and the license is still active then.
    let notice = loop {
        let message = events.next_of("license.updated").await;
        if !message.data["grace_ends_at"].is_null() {
            break message;
        }
    };
    assert_eq!(notice.data["status"], "active");

    assert_eq!(app.billing.suspend_lapsed_licenses().await.unwrap(), 0, "still within its grace period");
    assert_eq!(app.validate(&key, None).await["code"], "VALID");
    clock.advance(7 * 24 * 3600 + 1);
    assert_eq!(app.billing.suspend_lapsed_licenses().await.unwrap(), 1);
    assert_eq!(app.billing.suspend_lapsed_licenses().await.unwrap(), 0, "suspended once");

    assert_eq!(events.next_of("license.updated").await.data["status"], "suspended");
    assert_eq!(app.get_licenses("u").await[0]["status"], "suspended");
    assert_eq!(app.validate(&key, None).await["code"], "SUSPENDED");
    let history = app.get_history("u").await;
    assert_eq!((history[0]["kind"].as_str(), history[0]["actor"].as_str()), (Some("grace_expired"), Some("system")));

    // Stripe retrying the invoice changes nothing; paying it restores the
    // license. (Signed at the server's clock, which is a week ahead.)
    let deliver_later = |e: Value| {
        let body = serde_json::to_vec(&e).unwrap();
        let signature =
            billing_core::stripe::WebhookSecrets::parse(WEBHOOK_SECRET).unwrap().sign(&body, now() + 7 * 24 * 3600 + 1);
        let app = &app;
        async move { assert_eq!(app.post_raw_webhook(body, Some(&signature)).await.status(), 200) }
    };
    deliver_later(update("e_still_past_due", now() + 2, "past_due")).await;
    assert_eq!(app.get_licenses("u").await[0]["status"], "suspended");
    deliver_later(update("e_paid", now() + 3, "active")).await;
    assert_eq!(events.next_of("license.updated").await.data["status"], "active", "no event in between");
    assert_eq!(app.validate(&key, None).await["code"], "VALID");
}

#[tokio::test]
async fn refused_activations_are_rate_limited_per_key_whatever_the_address() {
    let app = spawn_app_with(Options { rate_limit_per_minute: Some(3), ..Default::default() }).await;
    let full = app.issue_license("u", PRICE_BASIC).await;
    let other = app.issue_license("v", PRICE_BASIC).await;
    app.activate_ok(&full, "fp-1").await;
    // Each attempt from its own loopback address, so no address reaches its limit.
    let activate_from = |n: u8, key: &str| {
        let client = reqwest::Client::builder().local_address(std::net::IpAddr::from([127, 0, 0, n])).build().unwrap();
        let request = client
            .post(app.url("/api/license/activate"))
            .json(&json!({ "license_key": key, "fingerprint": format!("fp-from-{n}") }));
        async move { request.send().await.unwrap() }
    };
    for n in 2..=4 {
        let refused = activate_from(n, &full).await;
        assert_eq!(refused.status(), 409, "attempt from 127.0.0.{n}");
        assert_eq!(refused.json::<Value>().await.unwrap()["error"]["code"], "TOO_MANY_DEVICES");
    }
    let limited = activate_from(5, &full).await;
    assert_eq!(limited.status(), 429, "the key is limited, from a fresh address too");
    assert_eq!(limited.json::<Value>().await.unwrap()["error"]["code"], "RATE_LIMITED");
    assert_eq!(activate_from(5, &other).await.status(), 201, "that address and other keys are not");
    assert_eq!(app.count("devices").await, 2);
}

#[tokio::test]
async fn device_names_are_limited_in_characters_and_refuse_hidden_ones() {
    let app = spawn_app().await;
    let key = app.issue_license("u", PRICE_PRO).await;
    let activate = |name: String| {
        let body = json!({ "license_key": key, "fingerprint": "fp-names", "name": name, "platform": "linux" });
        let request = app.http.post(app.url("/api/license/activate")).json(&body);
        async move { request.send().await.unwrap() }
    };
    // "Invoice\u{202E}fdp.exe" shows as "Invoiceexe.pdf".
    let refused = [
        ("257 characters", "é".repeat(257), "longer than 256 characters"),
        ("right-to-left override", "Invoice\u{202E}fdp.exe".to_owned(), "bidirectional"),
        ("first-strong isolate", "laptop\u{2068}".to_owned(), "bidirectional"),
        ("zero-width space", "lap\u{200B}top".to_owned(), "zero-width"),
        ("byte order mark", "\u{FEFF}laptop".to_owned(), "zero-width"),
        ("control character", "lap\u{7}top".to_owned(), "control"),
    ];
    for (case, name, message) in refused {
        let response = activate(name).await;
        assert_eq!(response.status(), 400, "{case}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "INVALID_REQUEST", "{case}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(message), "{case}: {body}");
        assert_eq!(app.count("devices").await, 0, "{case}: a device was stored");
    }
    // 200 × "é" is 400 bytes and 200 characters: within the limit.
    let accented = "é".repeat(200);
    let response = activate(accented.clone()).await;
    assert_eq!(response.status(), 201);
    let device: Value = response.json().await.unwrap();
    assert_eq!(device["device"]["name"], accented.as_str());

    // Renaming from the dashboard follows the same rules, and a refusal keeps the name.
    let id = device["device"]["id"].as_str().unwrap();
    let rename = |name: &str| {
        let request = app.http.patch(app.url(&format!("/api/terminals/{id}"))).bearer_auth(jwt_for("u"));
        request.json(&json!({ "name": name })).send()
    };
    let response = rename("Invoice\u{202E}fdp.exe").await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], "INVALID_REQUEST");
    let response = rename(&"日".repeat(256)).await.unwrap();
    assert_eq!(response.status(), 200);
    let terminals = app.get_as("/api/terminals", "u").await;
    assert_eq!(terminals["terminals"][0]["name"], "日".repeat(256));
    assert_eq!(app.count("device_changes").await, 2, "activation and the one accepted rename");
}

#[tokio::test]
async fn heartbeat_and_deactivate_refuse_two_authorization_headers() {
    let app = spawn_app().await;
    let key = app.issue_license("u", PRICE_BASIC).await;
    let token = app.activate_ok(&key, "fp").await["activation_token"].as_str().unwrap().to_owned();
    for route in ["/api/license/heartbeat", "/api/license/deactivate"] {
        let response = app
            .http
            .post(app.url(route))
            .header("Authorization", format!("Bearer {token}"))
            .header("Authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{route}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "UNAUTHORIZED", "{route}");
        assert!(body["error"]["message"].as_str().unwrap().contains("more than one Authorization"), "{body}");
    }
    assert_eq!(app.count("device_changes").await, 1, "only the activation: nothing was deactivated");
    assert_eq!(app.heartbeat(&token).await.status(), 200, "the device still works");
}
