//! The admin API's license and device writes: manual licenses, overrides,
//! suspension, revocation, renewal and device resets, as devices and
//! validation see them, and the refusals that change nothing.

use crate::helpers::*;
use billing_core::domain::{License, LicenseKey};
use billing_core::storage::Store;
use reqwest::Method;
use serde_json::{json, Value};

/// One admin request; `body` is sent as JSON.
async fn admin(app: &TestApp, method: Method, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    admin_raw(app, method, path, Some(token), body.map(|b| b.to_string())).await
}

/// One admin request with a raw body (or none) and an optional token.
async fn admin_raw(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<String>,
) -> (u16, Value) {
    let mut request = app.http.request(method, app.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.header("content-type", "application/json").body(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: not JSON: {text}")))
}

/// Issues a manual license and returns its view.
async fn issue_manual(app: &TestApp, token: &str, body: Value) -> Value {
    let (status, answer) = admin(app, Method::POST, "/api/admin/licenses", token, Some(body)).await;
    assert_eq!(status, 201, "{answer}");
    answer["license"].clone()
}

/// The license as stored, read through the store.
async fn stored(app: &TestApp, key: &str) -> License {
    let hash = LicenseKey::parse(key).unwrap().lookup_hash();
    app.billing.store().license_by_key_hash(&hash).await.unwrap().expect("the license exists")
}

/// What any refused request must leave as it was.
#[derive(Debug, PartialEq)]
struct Footprint {
    latest_outbox_id: i64,
    licenses: i64,
    license_changes: i64,
    device_changes: i64,
    active_devices: i64,
}

async fn footprint(app: &TestApp) -> Footprint {
    Footprint {
        latest_outbox_id: app.db.int("SELECT COALESCE(MAX(id), 0) FROM outbox_events").await,
        licenses: app.count("licenses").await,
        license_changes: app.count("license_changes").await,
        device_changes: app.count("device_changes").await,
        active_devices: app.db.int("SELECT count(*) FROM devices WHERE status = 'active'").await,
    }
}

/// The kinds of a license's `license_changes` rows, oldest first, after
/// checking that one admin token made them all (`admin:<name>`).
async fn changes_of(app: &TestApp, license_id: &str) -> Vec<String> {
    let rows =
        |column: &str| format!("SELECT {column} FROM license_changes WHERE license_id = '{license_id}' ORDER BY id");
    let actors = app.db.strings(&rows("actor")).await;
    assert!(actors.iter().all(|a| a.starts_with("admin:") && *a == actors[0]), "{actors:?}");
    app.db.strings(&rows("kind")).await
}

async fn topics_of(app: &TestApp, license_id: &str) -> Vec<String> {
    app.db.strings(&format!("SELECT topic FROM outbox_events WHERE license_id = '{license_id}' ORDER BY id")).await
}

fn in_days(days: i64) -> String {
    billing_core::billing::rfc3339(time::OffsetDateTime::now_utc() + time::Duration::days(days))
}

/// The claims of a certificate, unverified (other tests verify them).
fn claims(certificate: &str) -> Value {
    use base64::Engine;
    let payload = certificate.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn license_id_of(key_holder: &Value) -> String {
    key_holder["id"].as_str().unwrap().to_owned()
}

/// A Stripe license of `user` (on pro), its admin-facing id.
async fn stripe_license(app: &TestApp, user: &str) -> (String, String) {
    let key = app.issue_license(user, PRICE_PRO).await;
    let id = app.get_licenses(user).await[0]["id"].as_str().unwrap().to_owned();
    (key, id)
}

#[tokio::test]
async fn a_manual_license_activates_validates_streams_and_certifies_like_any_other() {
    let app = spawn_app().await;
    let token = admin_token(&app, &["licenses:write"]).await;
    let until = in_days(30);
    let license = issue_manual(
        &app,
        &token,
        json!({
            "user_id": "reseller_7", "plan": "pro", "max_devices": 2, "expires_at": until,
            "entitlements": ["beta", "export"], "metadata": { "order": "R-1001" }
        }),
    )
    .await;
    assert_eq!(license["source"], "manual");
    assert_eq!(license["user_id"], "reseller_7");
    assert_eq!(license["status"], "active");
    assert_eq!(license["plan"], "pro");
    assert_eq!(license["max_devices"], 2);
    assert_eq!(license["subscription_id"], Value::Null);
    assert_eq!(license["entitlements"], json!(["beta", "export"]));
    assert_eq!(license["metadata"], json!({ "order": "R-1001" }));
    assert_eq!(license["device_count"], 0);
    let expires = time::OffsetDateTime::parse(
        license["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let asked = time::OffsetDateTime::parse(&until, &time::format_description::well_known::Rfc3339).unwrap();
    assert_eq!(expires.unix_timestamp(), asked.unix_timestamp());
    let id = license_id_of(&license);
    let key = license["key"].as_str().unwrap().to_owned();
    assert_eq!(topics_of(&app, &id).await, ["license.created"]);
    assert_eq!(changes_of(&app, &id).await, ["issued"]);

    let activation = app.activate_ok(&key, "fp-1").await;
    assert_eq!(activation["license"]["status"], "active");
    let claims = claims(activation["certificate"].as_str().unwrap());
    assert_eq!(claims["license_id"], id.as_str());
    assert_eq!(claims["status"], "active");
    assert_eq!(claims["max_devices"], 2);
    assert_eq!(claims["entitlements"], json!(["export", "beta"]), "the plan's features, then the license's own");
    assert!(claims["exp"].as_i64().unwrap() <= asked.unix_timestamp(), "no certificate outlives the expiry");
    assert_eq!(app.validate(&key, Some("fp-1")).await["code"], "VALID");

    let device_token = activation["activation_token"].as_str().unwrap().to_owned();
    let mut events = EventReader::new(app.open_event_stream(&key, &device_token, None).await);
    let (status, _) =
        admin(&app, Method::PATCH, &format!("/api/admin/licenses/{id}"), &token, Some(json!({ "max_devices": 4 })))
            .await;
    assert_eq!(status, 200);
    let updated = events.next_of("license.updated").await;
    assert_eq!(
        (updated.data["license_id"].as_str(), updated.data["max_devices"].as_i64()),
        (Some(id.as_str()), Some(4))
    );
    app.activate_ok(&key, "fp-2").await;
    let third = app.activate_ok(&key, "fp-3").await;

    // Its user sees it in the dashboard and may listen to it there.
    let dashboard = app.get_licenses("reseller_7").await;
    assert_eq!((dashboard.len(), dashboard[0]["key"].as_str()), (1, Some(key.as_str())));
    assert_eq!(app.open_event_stream(&key, &jwt_for("reseller_7"), None).await.status(), 200);
    assert_eq!(app.open_event_stream(&key, &jwt_for("someone_else"), None).await.status(), 401);
    // Its devices are any device to the admin API.
    let devices = admin_token(&app, &["devices:write"]).await;
    let third_id = third["device"]["id"].as_str().unwrap();
    let (status, _) = admin(&app, Method::DELETE, &format!("/api/admin/devices/{third_id}"), &devices, None).await;
    assert_eq!(status, 200);
    assert_eq!(app.validate(&key, Some("fp-3")).await["code"], "NOT_ACTIVATED");
}

#[tokio::test]
async fn a_stripe_issued_license_is_announced_as_created() {
    let app = spawn_app().await;
    let (_, id) = stripe_license(&app, "alice").await;
    assert_eq!(topics_of(&app, &id).await, ["license.created"]);
}

#[tokio::test]
async fn overrides_suspension_renewal_and_revocation_answer_with_the_license_and_are_audited() {
    let app = spawn_app().await;
    let token = admin_token(&app, &["*"]).await;
    let (key, id) = stripe_license(&app, "alice").await;
    let path = |action: &str| format!("/api/admin/licenses/{id}{action}");

    let until = in_days(90);
    let (status, patched) = admin(
        &app,
        Method::PATCH,
        &path(""),
        &token,
        Some(json!({ "max_devices": 7, "expires_at": until, "entitlements": ["beta"], "metadata": { "crm": 42 } })),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    let license = &patched["license"];
    assert_eq!((license["source"].as_str(), license["user_id"].as_str()), (Some("stripe"), Some("alice")));
    assert!(license["subscription_id"].is_string());
    assert_eq!((license["max_devices"].as_i64(), license["overrides"]["max_devices"].as_i64()), (Some(7), Some(7)));
    assert_eq!(license["entitlements"], json!(["beta"]));
    assert_eq!(license["metadata"], json!({ "crm": 42 }));
    assert_eq!(license["expires_at"], license["overrides"]["expires_at"]);

    let (status, suspended) = admin(&app, Method::POST, &path("/suspend"), &token, None).await;
    assert_eq!((status, suspended["license"]["status"].as_str()), (200, Some("suspended")));
    assert!(suspended["license"]["overrides"]["suspended_at"].is_string());
    let (status, reinstated) = admin(&app, Method::POST, &path("/reinstate"), &token, Some(json!({}))).await;
    assert_eq!((status, reinstated["license"]["status"].as_str()), (200, Some("active")));
    assert_eq!(reinstated["license"]["overrides"]["suspended_at"], Value::Null);

    // Days count from the current expiry when it is later than now.
    let (status, renewed) = admin(&app, Method::POST, &path("/renew"), &token, Some(json!({ "days": 10 }))).await;
    assert_eq!(status, 200, "{renewed}");
    let expiry = |v: &Value| {
        time::OffsetDateTime::parse(v.as_str().unwrap(), &time::format_description::well_known::Rfc3339)
            .unwrap()
            .unix_timestamp()
    };
    assert_eq!(expiry(&renewed["license"]["expires_at"]), expiry(&license["expires_at"]) + 10 * 86_400);
    let until = in_days(400);
    let (status, renewed) = admin(&app, Method::POST, &path("/renew"), &token, Some(json!({ "until": until }))).await;
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(expiry(&renewed["license"]["expires_at"]), expiry(&json!(until)));

    // Clearing the overrides gives back the plan's limit and Stripe's period end.
    let (status, cleared) =
        admin(&app, Method::PATCH, &path(""), &token, Some(json!({ "max_devices": null, "expires_at": null }))).await;
    assert_eq!(status, 200, "{cleared}");
    assert_eq!(cleared["license"]["max_devices"], 3);
    assert_eq!(expiry(&cleared["license"]["expires_at"]), period_end());

    let (status, revoked) = admin(&app, Method::POST, &path("/revoke"), &token, None).await;
    assert_eq!((status, revoked["license"]["status"].as_str()), (200, Some("revoked")));
    assert_eq!(app.validate(&key, None).await["code"], "REVOKED");

    assert_eq!(
        changes_of(&app, &id).await,
        ["patched", "suspended", "reinstated", "renewed", "renewed", "patched", "revoked"]
    );
    let updates = topics_of(&app, &id).await.iter().filter(|t| *t == "license.updated").count();
    assert_eq!(updates, 7, "every change is announced");
}

#[tokio::test]
async fn a_repeated_suspension_changes_nothing_and_announces_nothing() {
    let app = spawn_app().await;
    let token = admin_token(&app, &["licenses:write"]).await;
    let (key, id) = stripe_license(&app, "alice").await;
    let (status, _) = admin(&app, Method::POST, &format!("/api/admin/licenses/{id}/suspend"), &token, None).await;
    assert_eq!(status, 200);
    let before = (footprint(&app).await, stored(&app, &key).await);
    let (status, again) = admin(&app, Method::POST, &format!("/api/admin/licenses/{id}/suspend"), &token, None).await;
    assert_eq!((status, again["license"]["status"].as_str()), (200, Some("suspended")));
    assert_eq!((footprint(&app).await, stored(&app, &key).await), before);
    // Reinstating a license no admin suspended changes nothing either.
    let (status, _) = admin(&app, Method::POST, &format!("/api/admin/licenses/{id}/reinstate"), &token, None).await;
    assert_eq!(status, 200);
    let before = footprint(&app).await;
    let (status, _) = admin(&app, Method::POST, &format!("/api/admin/licenses/{id}/reinstate"), &token, None).await;
    assert_eq!((status, footprint(&app).await), (200, before));
}

#[tokio::test]
async fn a_revoke_reaches_an_open_stream_and_validation_at_once_and_is_final() {
    let app = spawn_app().await;
    let token = admin_token(&app, &["*"]).await;
    let (key, id) = stripe_license(&app, "alice").await;
    let activation = app.activate_ok(&key, "fp-1").await;
    let device_token = activation["activation_token"].as_str().unwrap().to_owned();
    let device_id = activation["device"]["id"].as_str().unwrap().to_owned();
    let mut events = EventReader::new(app.open_event_stream(&key, &device_token, None).await);

    let (status, _) = admin(&app, Method::POST, &format!("/api/admin/licenses/{id}/revoke"), &token, None).await;
    assert_eq!(status, 200);
    let message = events.next_of("license.updated").await;
    assert_eq!(message.data["status"], "revoked");
    assert_eq!(app.validate(&key, Some("fp-1")).await["code"], "REVOKED");
    let heartbeat: Value = app.heartbeat(&device_token).await.json().await.unwrap();
    assert_eq!(claims(heartbeat["certificate"].as_str().unwrap())["status"], "revoked");

    // A Stripe event does not bring it back.
    let mut object = subscription("sub_alice", "cus_alice", "active", PRICE_BASIC, Some("alice"));
    object["items"]["data"][0]["current_period_end"] = json!(period_end());
    app.deliver(&event("evt_after_revoke", "customer.subscription.updated", now() + 5, object)).await;
    assert_eq!(app.validate(&key, None).await["code"], "REVOKED");

    let before = (footprint(&app).await, stored(&app, &key).await);
    let later: [(Method, String, Option<Value>); 7] = [
        (Method::PATCH, format!("/api/admin/licenses/{id}"), Some(json!({ "max_devices": 5 }))),
        (Method::POST, format!("/api/admin/licenses/{id}/suspend"), None),
        (Method::POST, format!("/api/admin/licenses/{id}/reinstate"), None),
        (Method::POST, format!("/api/admin/licenses/{id}/revoke"), None),
        (Method::POST, format!("/api/admin/licenses/{id}/renew"), Some(json!({ "days": 30 }))),
        (Method::POST, format!("/api/admin/licenses/{id}/reset-devices"), None),
        (Method::DELETE, format!("/api/admin/devices/{device_id}"), None),
    ];
    for (method, path, body) in later {
        let (status, answer) = admin(&app, method.clone(), &path, &token, body).await;
        assert_eq!((status, answer["error"]["code"].as_str()), (409, Some("CONFLICT")), "{method} {path}");
    }
    assert_eq!((footprint(&app).await, stored(&app, &key).await), before);
}

#[tokio::test]
async fn an_admin_suspension_reaches_the_stream_and_holds_whatever_stripe_says_later() {
    let app = spawn_app().await;
    let token = admin_token(&app, &["licenses:write"]).await;
    let (key, id) = stripe_license(&app, "alice").await;
    let device_token = app.activate_ok(&key, "fp-1").await["activation_token"].as_str().unwrap().to_owned();
    let mut events = EventReader::new(app.open_event_stream(&key, &device_token, None).await);

    let (status, _) = admin(&app, Method::POST, &format!("/api/admin/licenses/{id}/suspend"), &token, None).await;
    assert_eq!(status, 200);
    assert_eq!(events.next_of("license.updated").await.data["status"], "suspended");
    assert_eq!(app.validate(&key, Some("fp-1")).await["code"], "SUSPENDED");

    // Stripe says the subscription is active (and changes its plan): the
    // plan follows, the suspension holds.
    let mut object = subscription("sub_alice", "cus_alice", "active", PRICE_BASIC, Some("alice"));
    object["items"]["data"][0]["current_period_end"] = json!(period_end());
    app.deliver(&event("evt_active_again", "customer.subscription.updated", now() + 5, object)).await;
    let after_stripe = events.next_of("license.updated").await;
    assert_eq!(
        (after_stripe.data["status"].as_str(), after_stripe.data["plan"].as_str()),
        (Some("suspended"), Some("basic"))
    );
    assert_eq!(app.validate(&key, Some("fp-1")).await["code"], "SUSPENDED");

    let (status, _) = admin(&app, Method::POST, &format!("/api/admin/licenses/{id}/reinstate"), &token, None).await;
    assert_eq!(status, 200);
    assert_eq!(events.next_of("license.updated").await.data["status"], "active");
    assert_eq!(app.validate(&key, Some("fp-1")).await["code"], "VALID");
}

#[tokio::test]
async fn a_plan_change_after_a_device_limit_override_keeps_the_override() {
    let app = spawn_app().await;
    let token = admin_token(&app, &["licenses:write"]).await;
    let (key, id) = stripe_license(&app, "alice").await;
    let (status, _) =
        admin(&app, Method::PATCH, &format!("/api/admin/licenses/{id}"), &token, Some(json!({ "max_devices": 5 })))
            .await;
    assert_eq!(status, 200);
    let mut object = subscription("sub_alice", "cus_alice", "active", PRICE_BASIC, Some("alice"));
    object["items"]["data"][0]["current_period_end"] = json!(period_end());
    app.deliver(&event("evt_downgrade", "customer.subscription.updated", now() + 5, object)).await;
    let license = &app.get_licenses("alice").await[0];
    assert_eq!((license["plan"].as_str(), license["max_devices"].as_i64()), (Some("basic"), Some(5)));
    for fingerprint in ["a", "b", "c", "d", "e"] {
        app.activate_ok(&key, fingerprint).await;
    }
    assert_eq!(app.activate(&key, "f").await.status(), 409, "the override is the limit");
}

#[tokio::test]
async fn a_lower_device_limit_evicts_the_least_recently_seen_devices() {
    let app = spawn_app().await;
    let token = admin_token(&app, &["licenses:write"]).await;
    let (key, id) = stripe_license(&app, "alice").await;
    for fingerprint in ["a", "b", "c"] {
        app.activate_ok(&key, fingerprint).await;
    }
    let (status, answer) =
        admin(&app, Method::PATCH, &format!("/api/admin/licenses/{id}"), &token, Some(json!({ "max_devices": 1 })))
            .await;
    assert_eq!((status, answer["license"]["device_count"].as_i64()), (200, Some(1)));
    assert_eq!(app.db.int("SELECT count(*) FROM devices WHERE status = 'active'").await, 1);
    assert_eq!(app.validate(&key, Some("c")).await["code"], "VALID");
    assert_eq!(app.validate(&key, Some("a")).await["code"], "NOT_ACTIVATED");
}

#[tokio::test]
async fn a_device_reset_ends_the_device_streams_and_frees_every_slot() {
    let app = spawn_app().await;
    let token = admin_token(&app, &["devices:write"]).await;
    let (key, id) = stripe_license(&app, "alice").await;
    let first = app.activate_ok(&key, "fp-1").await;
    let first_token = first["activation_token"].as_str().unwrap().to_owned();
    app.activate_ok(&key, "fp-2").await;
    let mut stream = EventReader::new(app.open_event_stream(&key, &first_token, None).await);

    let (status, answer) =
        admin(&app, Method::POST, &format!("/api/admin/licenses/{id}/reset-devices"), &token, None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["license"]["device_count"], 0);
    assert!(
        answer["license"]["subscription"]["stripe_subscription_id"].is_string(),
        "shown as GET /api/admin/licenses/{{id}} shows it"
    );
    let devices = answer["license"]["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2);
    assert!(devices.iter().all(|d| d["status"] == "deactivated"), "{devices:?}");
    let mut left = Vec::new();
    while let Some(message) = stream.next().await {
        if message.event == "device.deactivated" {
            left.push(message.data["device_id"].clone());
        }
    }
    assert!(left.contains(&first["device"]["id"]), "the stream heard its own device leave, then ended: {left:?}");
    for fingerprint in ["fp-1", "fp-2"] {
        assert_eq!(app.validate(&key, Some(fingerprint)).await["code"], "NOT_ACTIVATED");
    }
    assert_eq!(app.heartbeat(&first_token).await.status(), 410);
    assert_eq!(changes_of(&app, &id).await, ["devices_reset"]);
    let actors = app.db.strings("SELECT DISTINCT actor FROM device_changes WHERE kind = 'deactivated'").await;
    assert!(actors.len() == 1 && actors[0].starts_with("admin:"), "{actors:?}");
    // Nothing left to reset: nothing written.
    let before = footprint(&app).await;
    let (status, _) = admin(&app, Method::POST, &format!("/api/admin/licenses/{id}/reset-devices"), &token, None).await;
    assert_eq!((status, footprint(&app).await), (200, before));
}

#[tokio::test]
async fn deleting_a_device_deactivates_it_and_ends_its_stream() {
    let app = spawn_app().await;
    let token = admin_token(&app, &["devices:write"]).await;
    let (key, _) = stripe_license(&app, "alice").await;
    let activation = app.activate_ok(&key, "fp-1").await;
    let device_token = activation["activation_token"].as_str().unwrap().to_owned();
    let device_id = activation["device"]["id"].as_str().unwrap().to_owned();
    let mut stream = EventReader::new(app.open_event_stream(&key, &device_token, None).await);

    let (status, answer) = admin(&app, Method::DELETE, &format!("/api/admin/devices/{device_id}"), &token, None).await;
    assert_eq!((status, answer["device"]["status"].as_str()), (200, Some("deactivated")), "{answer}");
    let message = stream.next_of("device.deactivated").await;
    assert_eq!(
        (message.data["device_id"].as_str(), message.data["reason"].as_str()),
        (Some(device_id.as_str()), Some("dashboard"))
    );
    assert!(stream.next().await.is_none(), "the device's stream ends");
    assert_eq!(app.validate(&key, Some("fp-1")).await["code"], "NOT_ACTIVATED");
    let actor = app.db.strings("SELECT actor FROM device_changes WHERE kind = 'deactivated'").await;
    assert!(actor[0].starts_with("admin:"), "{actor:?}");
    // Again: the device is as it was, and nothing is written.
    let before = footprint(&app).await;
    let (status, _) = admin(&app, Method::DELETE, &format!("/api/admin/devices/{device_id}"), &token, None).await;
    assert_eq!((status, footprint(&app).await), (200, before));
}

#[tokio::test]
async fn an_expiry_override_expires_the_license_when_it_passes_and_a_renewal_revives_an_ended_one() {
    let clock = TestClock::default();
    let app = spawn_app_with(Options { clock: Some(clock.clock()), ..Options::default() }).await;
    let token = admin_token(&app, &["licenses:write"]).await;
    let (key, id) = stripe_license(&app, "alice").await;
    let (status, _) = admin(
        &app,
        Method::PATCH,
        &format!("/api/admin/licenses/{id}"),
        &token,
        Some(json!({ "expires_at": billing_core::billing::rfc3339(time::OffsetDateTime::now_utc() + time::Duration::hours(1)) })),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(app.validate(&key, None).await["code"], "VALID");
    // The subscription ends (delivered before the clock moves: webhook
    // signatures carry the real time); the override, not Stripe's period
    // end, says until when the license works.
    let mut object = subscription("sub_alice", "cus_alice", "canceled", PRICE_PRO, Some("alice"));
    object["items"]["data"][0]["current_period_end"] = json!(period_end());
    app.deliver(&event("evt_canceled", "customer.subscription.deleted", now() + 5, object)).await;
    assert_eq!(app.validate(&key, None).await["code"], "VALID");
    clock.advance(2 * 3600);
    assert_eq!(app.validate(&key, None).await["code"], "EXPIRED", "the override is a hard expiry");
    assert_eq!(app.activate(&key, "fp").await.status(), 403);

    // A renewal makes the ended license usable until the new date.
    let (status, renewed) =
        admin(&app, Method::POST, &format!("/api/admin/licenses/{id}/renew"), &token, Some(json!({ "days": 30 })))
            .await;
    assert_eq!((status, renewed["license"]["status"].as_str()), (200, Some("active")), "{renewed}");
    assert_eq!(app.validate(&key, None).await["code"], "VALID");
    clock.advance(31 * 86_400);
    assert_eq!(app.validate(&key, None).await["code"], "EXPIRED");
}

#[tokio::test]
async fn bad_input_is_refused_clearly_and_changes_nothing() {
    let app = spawn_app().await;
    let token = admin_token(&app, &["*"]).await;
    let (key, id) = stripe_license(&app, "alice").await;
    let device_id = app.activate_ok(&key, "fp-1").await["device"]["id"].as_str().unwrap().to_owned();
    let unknown = uuid::Uuid::new_v4();
    let past = in_days(-1);
    let issue = "/api/admin/licenses".to_owned();
    let license = format!("/api/admin/licenses/{id}");
    let renew = format!("/api/admin/licenses/{id}/renew");
    let body = |v: Value| Some(v.to_string());
    let cases: Vec<(Method, String, Option<String>, u16, &str)> = vec![
        (Method::POST, issue.clone(), Some("{".into()), 400, "MALFORMED_JSON"),
        (
            Method::POST,
            issue.clone(),
            body(json!({ "user_id": "u", "plan": "pro", "colour": "red" })),
            400,
            "INVALID_REQUEST",
        ),
        (Method::POST, issue.clone(), body(json!({ "user_id": "u" })), 400, "INVALID_REQUEST"),
        (Method::POST, issue.clone(), body(json!({ "user_id": "u", "plan": "platinum" })), 422, "INVALID_REQUEST"),
        (
            Method::POST,
            issue.clone(),
            body(json!({ "user_id": "u", "plan": "pro", "max_devices": 0 })),
            422,
            "INVALID_REQUEST",
        ),
        (
            Method::POST,
            issue.clone(),
            body(json!({ "user_id": "u", "plan": "pro", "max_devices": 10_001 })),
            422,
            "INVALID_REQUEST",
        ),
        (
            Method::POST,
            issue.clone(),
            body(json!({ "user_id": "u", "plan": "pro", "max_devices": -3 })),
            422,
            "INVALID_REQUEST",
        ),
        (
            Method::POST,
            issue.clone(),
            body(json!({ "user_id": "u", "plan": "pro", "max_devices": 1.5 })),
            400,
            "INVALID_REQUEST",
        ),
        (
            Method::POST,
            issue.clone(),
            body(json!({ "user_id": "u", "plan": "pro", "max_devices": 1e30 })),
            400,
            "INVALID_REQUEST",
        ),
        (
            Method::POST,
            issue.clone(),
            body(json!({ "user_id": "u", "plan": "pro", "expires_at": past })),
            422,
            "INVALID_REQUEST",
        ),
        (
            Method::POST,
            issue.clone(),
            body(json!({ "user_id": "u", "plan": "pro", "expires_at": "tomorrow" })),
            400,
            "INVALID_REQUEST",
        ),
        (Method::POST, issue.clone(), body(json!({ "user_id": "", "plan": "pro" })), 422, "INVALID_REQUEST"),
        (
            Method::POST,
            issue.clone(),
            body(json!({ "user_id": "u", "plan": "pro", "entitlements": ["x".repeat(65)] })),
            422,
            "INVALID_REQUEST",
        ),
        (
            Method::POST,
            issue.clone(),
            body(json!({ "user_id": "u", "plan": "pro", "metadata": { "big": "x".repeat(9000) } })),
            422,
            "INVALID_REQUEST",
        ),
        (
            Method::POST,
            issue.clone(),
            body(json!({ "user_id": "u", "plan": "pro", "metadata": ["not", "an", "object"] })),
            400,
            "INVALID_REQUEST",
        ),
        (Method::PATCH, license.clone(), Some("not json".into()), 400, "MALFORMED_JSON"),
        (Method::PATCH, license.clone(), body(json!({ "status": "active" })), 400, "INVALID_REQUEST"),
        (Method::PATCH, license.clone(), body(json!({ "max_devices": 0 })), 422, "INVALID_REQUEST"),
        (Method::PATCH, license.clone(), body(json!({ "max_devices": 1_000_000 })), 422, "INVALID_REQUEST"),
        (Method::PATCH, license.clone(), body(json!({ "expires_at": past })), 422, "INVALID_REQUEST"),
        (Method::PATCH, format!("/api/admin/licenses/{unknown}"), body(json!({ "max_devices": 2 })), 404, "NOT_FOUND"),
        (Method::PATCH, "/api/admin/licenses/not-an-id".into(), body(json!({ "max_devices": 2 })), 404, "NOT_FOUND"),
        (Method::POST, renew.clone(), body(json!({})), 422, "INVALID_REQUEST"),
        (Method::POST, renew.clone(), body(json!({ "days": 3, "until": in_days(5) })), 422, "INVALID_REQUEST"),
        (Method::POST, renew.clone(), body(json!({ "days": 0 })), 422, "INVALID_REQUEST"),
        (Method::POST, renew.clone(), body(json!({ "days": 3651 })), 422, "INVALID_REQUEST"),
        (Method::POST, renew.clone(), body(json!({ "until": past })), 422, "INVALID_REQUEST"),
        (
            Method::POST,
            format!("/api/admin/licenses/{unknown}/renew"),
            body(json!({ "days": 0 })),
            422,
            "INVALID_REQUEST",
        ),
        (Method::POST, format!("/api/admin/licenses/{unknown}/renew"), body(json!({ "days": 3 })), 404, "NOT_FOUND"),
        (
            Method::POST,
            format!("/api/admin/licenses/{id}/suspend"),
            body(json!({ "reason": "x" })),
            400,
            "INVALID_REQUEST",
        ),
        (Method::POST, format!("/api/admin/licenses/{unknown}/suspend"), None, 404, "NOT_FOUND"),
        (Method::POST, format!("/api/admin/licenses/{unknown}/revoke"), None, 404, "NOT_FOUND"),
        (Method::POST, format!("/api/admin/licenses/{unknown}/reset-devices"), None, 404, "NOT_FOUND"),
        (Method::DELETE, format!("/api/admin/devices/{unknown}"), None, 404, "NOT_FOUND"),
        (Method::DELETE, "/api/admin/devices/12".into(), None, 404, "NOT_FOUND"),
        (
            Method::DELETE,
            format!("/api/admin/devices/{device_id}"),
            body(json!({ "now": true })),
            400,
            "INVALID_REQUEST",
        ),
    ];
    let before = (footprint(&app).await, stored(&app, &key).await);
    for (method, path, body, status, code) in cases {
        let label = format!("{method} {path} {body:?}");
        let (got, answer) = admin_raw(&app, method, &path, Some(&token), body).await;
        assert_eq!((got, answer["error"]["code"].as_str()), (status, Some(code)), "{label}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(!message.is_empty() && message.len() < 300, "{label}: {message}");
        assert!(!message.contains(&key), "{label}: {message}");
    }
    assert_eq!((footprint(&app).await, stored(&app, &key).await), before);
}

#[tokio::test]
async fn every_route_refuses_a_missing_unknown_or_insufficient_token_and_changes_nothing() {
    let app = spawn_app().await;
    let (key, id) = stripe_license(&app, "alice").await;
    let device_id = app.activate_ok(&key, "fp-1").await["device"]["id"].as_str().unwrap().to_owned();
    let licenses_only = admin_token(&app, &["licenses:write"]).await;
    let devices_only = admin_token(&app, &["devices:write"]).await;
    let read_only = admin_token(&app, &["licenses:read"]).await;
    let admin_jwt = token(&json!({ "sub": "boss", "role": "admin", "exp": now() + 600 }), JWT_SECRET);
    let routes: Vec<(Method, String, Option<Value>, &str)> = vec![
        (Method::POST, "/api/admin/licenses".into(), Some(json!({ "user_id": "u", "plan": "pro" })), "licenses:write"),
        (Method::PATCH, format!("/api/admin/licenses/{id}"), Some(json!({ "max_devices": 9 })), "licenses:write"),
        (Method::POST, format!("/api/admin/licenses/{id}/suspend"), None, "licenses:write"),
        (Method::POST, format!("/api/admin/licenses/{id}/reinstate"), None, "licenses:write"),
        (Method::POST, format!("/api/admin/licenses/{id}/revoke"), None, "licenses:write"),
        (Method::POST, format!("/api/admin/licenses/{id}/renew"), Some(json!({ "days": 5 })), "licenses:write"),
        (Method::DELETE, format!("/api/admin/devices/{device_id}"), None, "devices:write"),
        (Method::POST, format!("/api/admin/licenses/{id}/reset-devices"), None, "devices:write"),
    ];
    let before = (footprint(&app).await, stored(&app, &key).await);
    for (method, path, body, scope) in routes {
        let body = body.map(|b| b.to_string());
        let lacking = if scope == "licenses:write" { &devices_only } else { &licenses_only };
        let cases = [
            ("no token", None, 401, "UNAUTHORIZED"),
            ("unknown token", Some("adm_unknown"), 401, "UNAUTHORIZED"),
            ("the dashboard's admin JWT", None, 401, "UNAUTHORIZED"),
            ("a read-only token", Some(read_only.as_str()), 403, "INSUFFICIENT_SCOPE"),
            ("a token for the other scope", Some(lacking.as_str()), 403, "INSUFFICIENT_SCOPE"),
        ];
        for (label, bearer, status, code) in cases {
            let bearer = if label == "the dashboard's admin JWT" { Some(admin_jwt.as_str()) } else { bearer };
            let (got, answer) = admin_raw(&app, method.clone(), &path, bearer, body.clone()).await;
            assert_eq!((got, answer["error"]["code"].as_str()), (status, Some(code)), "{method} {path}: {label}");
        }
    }
    assert_eq!((footprint(&app).await, stored(&app, &key).await), before);
}
