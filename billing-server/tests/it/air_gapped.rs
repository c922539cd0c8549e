//! Air-gapped activation (issue 17): `POST /api/terminals/offline-activation`
//! takes a slot for a machine with no network from its owner's dashboard and
//! answers a long-lived certificate. (The round trip through license-client
//! is in license-client's own tests.)

use crate::helpers::*;
use billing_core::admin_licenses::NewLicense;
use billing_core::domain::offline_activation::OfflineActivationRequest;
use billing_core::domain::{Actor, LicenseKey, Plan, PlanCatalog};
use serde_json::{json, Value};

const DAY: i64 = 24 * 3600;

/// `pro` (3 devices, floating, 30-day air-gapped activations) and `basic`
/// (1 device, the default 365 days).
fn air_gapped_plans() -> PlanCatalog {
    PlanCatalog::new(vec![
        Plan { offline_activation_days: 30, ..Plan::new("pro", "Pro", PRICE_PRO, 3) },
        Plan::new("basic", "Basic", PRICE_BASIC, 1),
    ])
    .unwrap()
}

async fn air_gapped_app(clock: &TestClock) -> TestApp {
    spawn_app_with(Options { clock: Some(clock.clock()), plans: Some(air_gapped_plans()), ..Default::default() }).await
}

/// What license-client's `offline_activation_request` produces for `key` on
/// the machine `fingerprint`.
fn request_for(key: &str, fingerprint: &str) -> String {
    OfflineActivationRequest {
        license_key_sha256: LicenseKey::parse(key).unwrap().lookup_hash(),
        fingerprint: fingerprint.to_owned(),
        name: Some("Lab bench".to_owned()),
        platform: Some("windows".to_owned()),
        app_version: Some("4.1.0".to_owned()),
    }
    .encode()
}

async fn activate_offline(app: &TestApp, user: &str, request: &str) -> (u16, Value) {
    let response = app
        .http
        .post(app.url("/api/terminals/offline-activation"))
        .bearer_auth(jwt_for(user))
        .json(&json!({ "request": request }))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// The certificate's claims, verified with jsonwebtoken (not our code).
async fn verified_claims(app: &TestApp, certificate: &str) -> Value {
    let jwk: Value = app.http.get(app.url("/api/license/public-key")).send().await.unwrap().json().await.unwrap();
    let decoding = jsonwebtoken::DecodingKey::from_ed_components(jwk["jwk"]["x"].as_str().unwrap()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_required_spec_claims(&["exp", "iat"]);
    jsonwebtoken::decode::<Value>(certificate, &decoding, &validation).expect("the response verifies").claims
}

async fn issue_manual(app: &TestApp, user: &str, plan: &str) -> String {
    let request = NewLicense { user_id: user.to_owned(), plan: plan.to_owned(), ..NewLicense::default() };
    let issued = app.billing.issue_manual_license(&Actor::admin("ops"), request).await.expect("issued");
    issued.record.license.key.expose().to_owned()
}

#[tokio::test]
async fn an_air_gapped_machine_takes_a_slot_and_gets_a_certificate_lasting_its_plans_days() {
    let clock = TestClock::default();
    let app = air_gapped_app(&clock).await;
    let key = issue_manual(&app, "alice", "pro").await;
    let stream = app.open_event_stream(&key, &jwt_for("alice"), None).await;
    let mut events = EventReader::new(stream);

    let (status, answer) = activate_offline(&app, "alice", &request_for(&key, "fp-air")).await;
    assert_eq!(status, 201, "{answer}");
    let device = &answer["device"];
    assert_eq!(
        (device["fingerprint"].as_str(), device["name"].as_str(), device["platform"].as_str()),
        (Some("fp-air"), Some("Lab bench"), Some("windows"))
    );
    assert_eq!((device["air_gapped"].as_bool(), device["alive"].as_bool()), (Some(true), Some(true)));
    assert_eq!(answer["license"]["plan"], "pro");
    assert!(answer.get("activation_token").is_none(), "nothing the machine could use is handed out");

    let claims = verified_claims(&app, answer["response"].as_str().unwrap()).await;
    assert_eq!((claims["fingerprint"].as_str(), claims["device_id"].as_str()), (Some("fp-air"), device["id"].as_str()));
    let (iat, exp) = (claims["iat"].as_i64().unwrap(), claims["exp"].as_i64().unwrap());
    assert_eq!(exp - iat, 30 * DAY, "the plan's offline_activation_days, not its 7-day TTL");
    let expires_at = time::OffsetDateTime::parse(
        answer["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(expires_at.unix_timestamp(), exp);

    let activated = events.next_of("device.activated").await;
    assert_eq!(activated.data["device_id"], device["id"]);
    assert_eq!(
        app.db.strings("SELECT actor FROM device_changes").await,
        ["user:alice"],
        "the owner, from the dashboard"
    );

    // It never heartbeats, yet holds its slot long past the heartbeat window,
    // through the reaper.
    clock.advance(10 * DAY);
    app.billing.reap_dead_devices().await.unwrap();
    let verdict = app.validate(&key, Some("fp-air")).await;
    assert_eq!(verdict["code"], "VALID", "{verdict}");
    let terminals = app.get_as("/api/terminals", "alice").await;
    assert_eq!(terminals["terminals"][0]["status"], "active");
    assert_eq!(terminals["terminals"][0]["air_gapped"], true);
}

#[tokio::test]
async fn a_subscriptions_air_gapped_certificate_ends_with_paid_through_plus_grace() {
    let clock = TestClock::default();
    let app = air_gapped_app(&clock).await;
    // basic: the default 365 days, far past the paid period.
    let key = app.issue_license("bob", PRICE_BASIC).await;
    let (status, answer) = activate_offline(&app, "bob", &request_for(&key, "fp-air")).await;
    assert_eq!(status, 201, "{answer}");
    let claims = verified_claims(&app, answer["response"].as_str().unwrap()).await;
    assert_eq!(claims["exp"].as_i64().unwrap(), period_end() + 7 * DAY, "paid through plus 7 days of grace");
    assert_eq!(claims["expires_at"].as_i64(), Some(period_end()));
}

#[tokio::test]
async fn a_full_license_or_someone_elses_is_refused_and_nothing_is_stored() {
    let clock = TestClock::default();
    let app = air_gapped_app(&clock).await;
    let key = app.issue_license("carol", PRICE_BASIC).await;
    app.activate_ok(&key, "fp-online").await;
    let devices = app.count("devices").await;

    let (status, body) = activate_offline(&app, "carol", &request_for(&key, "fp-air")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("TOO_MANY_DEVICES")), "{body}");
    let (status, body) = activate_offline(&app, "mallory", &request_for(&key, "fp-air")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("LICENSE_NOT_FOUND")), "{body}");
    let unknown = LicenseKey::generate();
    let (status, _) = activate_offline(&app, "carol", &request_for(unknown.expose(), "fp-air")).await;
    assert_eq!(status, 404);
    assert_eq!(app.count("devices").await, devices);
    assert_eq!(app.count("device_changes").await, 1, "only the online activation");

    // Revoked: no activation of any kind.
    let pro = issue_manual(&app, "carol", "pro").await;
    let license = app.billing.license_by_key(&pro).await.unwrap().unwrap();
    app.billing.revoke_license(&Actor::admin("ops"), license.id).await.unwrap();
    let (status, body) = activate_offline(&app, "carol", &request_for(&pro, "fp-air")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("REVOKED")), "{body}");
}

#[tokio::test]
async fn deactivating_an_air_gapped_device_frees_its_slot() {
    let clock = TestClock::default();
    let app = air_gapped_app(&clock).await;
    let key = app.issue_license("dave", PRICE_BASIC).await;
    let (_, answer) = activate_offline(&app, "dave", &request_for(&key, "fp-air")).await;
    assert_eq!(app.activate(&key, "fp-online").await.status(), 409, "the air-gapped machine holds the one slot");

    let id = answer["device"]["id"].as_str().unwrap();
    let removed =
        app.http.delete(app.url(&format!("/api/terminals/{id}"))).bearer_auth(jwt_for("dave")).send().await.unwrap();
    assert_eq!(removed.status(), 200);
    assert_eq!(app.validate(&key, Some("fp-air")).await["code"], "NOT_ACTIVATED");
    assert_eq!(app.activate(&key, "fp-online").await.status(), 201, "slot freed");
}

#[tokio::test]
async fn bad_requests_are_refused_in_the_error_shape_and_change_nothing() {
    let clock = TestClock::default();
    let app = air_gapped_app(&clock).await;
    let key = app.issue_license("erin", PRICE_PRO).await;
    let url = app.url("/api/terminals/offline-activation");
    let good = json!({ "request": request_for(&key, "fp-air") });

    let unauthenticated = app.http.post(&url).json(&good).send().await.unwrap();
    assert_eq!(unauthenticated.status(), 401);
    let forged = token(&json!({ "sub": "erin", "exp": now() + 60 }), "wrong secret");
    assert_eq!(app.http.post(&url).bearer_auth(forged).json(&good).send().await.unwrap().status(), 401);

    let send = |body: String| {
        let request = app.http.post(&url).bearer_auth(jwt_for("erin")).header("content-type", "application/json");
        async move {
            let response = request.body(body).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let damaged = request_for(&key, "fp-air").replacen('e', "!", 1);
    let too_long_name = OfflineActivationRequest {
        license_key_sha256: LicenseKey::parse(&key).unwrap().lookup_hash(),
        fingerprint: "fp-air".into(),
        name: Some("n".repeat(300)),
        platform: None,
        app_version: None,
    }
    .encode();
    let cases = [
        ("not JSON", "{\"request\":".to_owned(), 400, "MALFORMED_JSON"),
        ("no request", "{}".to_owned(), 400, "INVALID_REQUEST"),
        ("unknown field", json!({ "request": "oar1.", "x": 1 }).to_string(), 400, "INVALID_REQUEST"),
        ("a license key instead", json!({ "request": key }).to_string(), 400, "INVALID_REQUEST"),
        ("damaged", json!({ "request": damaged }).to_string(), 400, "INVALID_REQUEST"),
        ("too long a name", json!({ "request": too_long_name }).to_string(), 400, "INVALID_REQUEST"),
        ("huge", json!({ "request": "a".repeat(2 << 20) }).to_string(), 413, "PAYLOAD_TOO_LARGE"),
    ];
    for (case, body, status, code) in cases {
        let (got, answer) = send(body).await;
        assert_eq!((got, answer["error"]["code"].as_str()), (status, Some(code)), "{case}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(!message.contains(&key) && message.len() < 200, "{case}: {message}");
    }
    assert_eq!(app.count("devices").await, 0);
}
