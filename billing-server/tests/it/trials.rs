//! Card-less trials (issue 17): `POST /api/license/trial` answers like an
//! activation with a trial license, once per plan and machine, ever,
//! rate-limited per client address.

use crate::helpers::*;
use billing_core::domain::{Plan, PlanCatalog};
use serde_json::{json, Value};

/// `basic` without trials, `pro` with 14 days (the first with trials),
/// `team` with 30.
fn trial_plans() -> PlanCatalog {
    PlanCatalog::new(vec![
        Plan::new("basic", "Basic", PRICE_BASIC, 1),
        Plan { trial_days: Some(14), features: vec!["export".into()], ..Plan::new("pro", "Pro", PRICE_PRO, 2) },
        Plan { trial_days: Some(30), ..Plan::new("team", "Team", "price_team", 5) },
    ])
    .unwrap()
}

async fn trial_app(clock: &TestClock, trials_per_hour: u32) -> TestApp {
    spawn_app_with(Options {
        clock: Some(clock.clock()),
        plans: Some(trial_plans()),
        trials_per_hour: Some(trials_per_hour),
        ..Default::default()
    })
    .await
}

async fn start_trial(app: &TestApp, body: Value) -> (u16, Value) {
    let response = app.post_json("/api/license/trial", &body).await;
    (response.status().as_u16(), response.json().await.unwrap())
}

fn parse(text: &Value) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(text.as_str().unwrap(), &time::format_description::well_known::Rfc3339).unwrap()
}

#[tokio::test]
async fn a_trial_answers_like_an_activation_with_a_trial_license_of_the_plan() {
    let clock = TestClock::default();
    let app = trial_app(&clock, 100).await;
    let (status, trial) = start_trial(
        &app,
        json!({ "fingerprint": "fp-1", "name": "Laptop", "platform": "macos", "app_version": "2.0" }),
    )
    .await;
    assert_eq!(status, 201, "{trial}");
    assert!(trial["activation_token"].as_str().unwrap().starts_with("act_"));
    let license = &trial["license"];
    assert_eq!(license["trial"], true);
    assert_eq!(
        (license["plan"].as_str(), license["max_devices"].as_i64(), license["status"].as_str()),
        (Some("pro"), Some(2), Some("active")),
        "the first plan with trial_days"
    );
    assert_eq!((license["kind"].as_str(), license["entitlements"].clone()), (Some("subscription"), json!(["export"])));
    let ends = parse(&license["expires_at"]);
    let expected = time::OffsetDateTime::now_utc() + time::Duration::days(14);
    assert!((ends - expected).abs() < time::Duration::minutes(1), "{ends} vs {expected}");
    assert_eq!(
        (trial["device"]["fingerprint"].as_str(), trial["device"]["name"].as_str()),
        (Some("fp-1"), Some("Laptop"))
    );
    assert_eq!(trial["heartbeat_window_secs"], 600);

    // The key it hands out works like any license key; the certificate ends with the trial.
    let key = trial["license_key"].as_str().unwrap().to_owned();
    let verdict = app.validate(&key, Some("fp-1")).await;
    assert_eq!((verdict["valid"].as_bool(), verdict["license"]["trial"].as_bool()), (Some(true), Some(true)));
    use base64::Engine;
    let payload = trial["certificate"].as_str().unwrap().split('.').nth(1).unwrap();
    let claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!((claims["trial"].as_bool(), claims["plan"].as_str()), (Some(true), Some("pro")));
    assert!(claims["exp"].as_i64().unwrap() <= ends.unix_timestamp());
    let beat = app.heartbeat(trial["activation_token"].as_str().unwrap()).await;
    assert_eq!(beat.status(), 200);

    // Audited with the app as actor and its address, announced, recorded.
    let audit = app.db.strings("SELECT kind || ' ' || actor || ' ' || client_addr FROM license_changes").await;
    assert_eq!(audit, ["issued system 127.0.0.1"]);
    let devices = app.db.strings("SELECT kind || ' ' || client_addr FROM device_changes").await;
    assert_eq!(devices, ["activated 127.0.0.1"]);
    let topics = app.db.strings("SELECT topic FROM outbox_events ORDER BY id").await;
    assert_eq!(topics, ["license.created", "device.activated"]);
    assert_eq!(app.count("trial_uses").await, 1);
    let stored_fingerprints = app.db.ints("SELECT CAST(length(fingerprint_hash) AS BIGINT) FROM trial_uses").await;
    assert_eq!(stored_fingerprints, [32], "a hash, not the fingerprint");

    // The plan asked for is the one tried.
    let (status, team) = start_trial(&app, json!({ "fingerprint": "fp-1", "plan": "team" })).await;
    assert_eq!(status, 201, "{team}");
    assert_eq!((team["license"]["plan"].as_str(), team["license"]["max_devices"].as_i64()), (Some("team"), Some(5)));
}

#[tokio::test]
async fn one_trial_per_fingerprint_and_plan_ever_trial_used_after_deactivation_and_after_expiry() {
    let clock = TestClock::default();
    let app = trial_app(&clock, 100).await;
    let (status, first) = start_trial(&app, json!({ "fingerprint": "fp-1" })).await;
    assert_eq!(status, 201);
    let used = |(status, body): (u16, Value)| {
        assert_eq!((status, body["error"]["code"].as_str()), (409, Some("TRIAL_USED")), "{body}");
    };
    used(start_trial(&app, json!({ "fingerprint": "fp-1" })).await);
    used(start_trial(&app, json!({ "fingerprint": "fp-1", "plan": "pro" })).await);

    let token = first["activation_token"].as_str().unwrap();
    let off = app.http.post(app.url("/api/license/deactivate")).bearer_auth(token).send().await.unwrap();
    assert_eq!(off.status(), 200);
    used(start_trial(&app, json!({ "fingerprint": "fp-1" })).await);

    clock.advance(15 * 24 * 3600);
    let key = first["license_key"].as_str().unwrap();
    assert_eq!(app.validate(key, None).await["code"], "EXPIRED", "the trial is over");
    used(start_trial(&app, json!({ "fingerprint": "fp-1" })).await);
    assert_eq!(app.activate(key, "fp-1").await.status(), 403, "an expired trial takes no activation");

    // Another machine, or another plan, may still try.
    assert_eq!(start_trial(&app, json!({ "fingerprint": "fp-2" })).await.0, 201);
    assert_eq!(start_trial(&app, json!({ "fingerprint": "fp-1", "plan": "team" })).await.0, 201);
    assert_eq!(app.db.int("SELECT count(*) FROM licenses WHERE trial").await, 3);
}

#[tokio::test]
async fn concurrent_trial_requests_of_one_machine_yield_exactly_one_trial() {
    let clock = TestClock::default();
    let app = trial_app(&clock, 100).await;
    let attempts = (0..10).map(|_| start_trial(&app, json!({ "fingerprint": "fp-racing", "plan": "pro" })));
    let answers = futures_util::future::join_all(attempts).await;
    let statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 9, "{statuses:?}");
    assert!(answers.iter().filter(|(s, _)| *s == 409).all(|(_, b)| b["error"]["code"] == "TRIAL_USED"));
    assert_eq!(app.db.int("SELECT count(*) FROM licenses WHERE trial").await, 1);
    assert_eq!(app.count("trial_uses").await, 1);
    assert_eq!(app.count("devices").await, 1);
    assert_eq!(app.db.int("SELECT count(*) FROM outbox_events WHERE topic = 'license.created'").await, 1);
}

#[tokio::test]
async fn trials_are_rate_limited_per_address_counting_every_attempt() {
    let clock = TestClock::default();
    let app = trial_app(&clock, 3).await;
    assert_eq!(start_trial(&app, json!({ "fingerprint": "fp-1" })).await.0, 201);
    assert_eq!(start_trial(&app, json!({ "fingerprint": "fp-1" })).await.0, 409, "refused, and counted");
    assert_eq!(start_trial(&app, json!({ "fingerprint": "fp-2", "plan": "basic" })).await.0, 404, "counted too");
    let limited = app.post_json("/api/license/trial", &json!({ "fingerprint": "fp-3" })).await;
    assert_eq!(limited.status(), 429);
    let retry_after: u64 = limited.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 60, "{retry_after}: a third of an hour at three an hour, give or take");
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["error"]["code"], "RATE_LIMITED");
    assert_eq!(app.count("trial_uses").await, 1, "nothing issued past the limit");
    // Another address is not limited.
    let elsewhere = reqwest::Client::builder().local_address(std::net::IpAddr::from([127, 0, 0, 9])).build().unwrap();
    let other = elsewhere.post(app.url("/api/license/trial")).json(&json!({ "fingerprint": "fp-3" })).send().await;
    assert_eq!(other.unwrap().status(), 201);
}

#[tokio::test]
async fn a_plan_without_trial_days_or_an_unknown_one_has_no_trial() {
    let clock = TestClock::default();
    let app = trial_app(&clock, 100).await;
    for plan in ["basic", "enterprise"] {
        let (status, body) = start_trial(&app, json!({ "fingerprint": "fp-1", "plan": plan })).await;
        assert_eq!((status, body["error"]["code"].as_str()), (404, Some("NO_TRIAL")), "{plan}: {body}");
    }
    let bad = start_trial(&app, json!({ "fingerprint": "" })).await;
    assert_eq!((bad.0, bad.1["error"]["code"].as_str()), (400, Some("INVALID_REQUEST")));
    let unknown_field = start_trial(&app, json!({ "fingerprint": "fp-1", "email": "a@b.c" })).await;
    assert_eq!(unknown_field.0, 400);
    assert_eq!(app.count("licenses").await, 0);

    // No plan of the catalog offers trials: none without naming a plan either.
    let plain = spawn_app().await;
    let (status, body) = start_trial(&plain, json!({ "fingerprint": "fp-1" })).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("NO_TRIAL")));
}

#[tokio::test]
async fn a_trial_request_that_is_not_json_or_too_large_is_refused_and_starts_nothing() {
    let clock = TestClock::default();
    let app = trial_app(&clock, 100).await;
    let send = |body: Vec<u8>| {
        app.http.post(app.url("/api/license/trial")).header("content-type", "application/json").body(body).send()
    };
    let not_json = send(b"{\"fingerprint\": ".to_vec()).await.unwrap();
    assert_eq!(not_json.status(), 400);
    let body: Value = not_json.json().await.unwrap();
    assert!(body["error"]["code"].is_string() && body["error"]["message"].is_string(), "{body}");
    let huge = format!("{{\"fingerprint\":\"{}\"}}", "f".repeat(2 << 20));
    let too_large = send(huge.into_bytes()).await.unwrap();
    assert_eq!(too_large.status(), 413);
    let body: Value = too_large.json().await.unwrap();
    assert_eq!(body["error"]["code"], "PAYLOAD_TOO_LARGE");
    assert_eq!((app.count("licenses").await, app.count("trial_uses").await), (0, 0), "nothing written");
}
