//! Validation answered from memory (issue 18), and never stale: a change
//! committed through any instance is seen by `validate` on every instance,
//! an instance reads its own writes at once, heartbeats recorded elsewhere
//! keep a device alive, and the view stays bounded.

use crate::helpers::*;
use billing_core::domain::Actor;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Validates on `app` until `code` is answered (the outbox carries the
/// change from the instance that committed it); panics after 10 s.
async fn until_code(app: &TestApp, key: &str, fingerprint: Option<&str>, code: &str) -> Duration {
    let started = Instant::now();
    loop {
        let verdict = app.validate(key, fingerprint).await;
        if verdict["code"] == code {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "still {verdict} instead of {code}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn license_id(app: &TestApp, key: &str) -> uuid::Uuid {
    app.billing.license_by_key(key).await.unwrap().expect("the license exists").id
}

fn hits(app: &TestApp) -> u64 {
    app.billing.validation_view().stats().hits
}

#[tokio::test]
async fn a_change_committed_through_one_instance_is_seen_by_validate_on_another() {
    if backend() == Backend::Sqlite {
        eprintln!("skipped on sqlite: the embedded store serves one instance; scaling out is PostgreSQL's job");
        return;
    }
    let one = spawn_app().await;
    let two = spawn_app_with(Options::sharing(&one)).await;
    let key = one.issue_license("u", PRICE_PRO).await;
    let activation = one.activate_ok(&key, "fp-1").await;
    until_code(&two, &key, Some("fp-1"), "VALID").await;
    // Once two's hub has read the activation's events, two answers from memory.
    let before = hits(&two);
    let started = Instant::now();
    while hits(&two) == before {
        assert_eq!(two.validate(&key, Some("fp-1")).await["code"], "VALID");
        assert!(started.elapsed() < Duration::from_secs(10), "never answered from memory");
    }

    // A deactivation on one: two's held device is dropped.
    let device_id = activation["device"]["id"].as_str().unwrap();
    let removed = one
        .http
        .delete(one.url(&format!("/api/terminals/{device_id}")))
        .bearer_auth(jwt_for("u"))
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 200);
    until_code(&two, &key, Some("fp-1"), "NOT_ACTIVATED").await;

    // An activation on one: two sees the new device.
    one.activate_ok(&key, "fp-2").await;
    until_code(&two, &key, Some("fp-2"), "VALID").await;

    // A revocation on one.
    one.billing.revoke_license(&Actor::admin("ops"), license_id(&one, &key).await).await.unwrap();
    until_code(&two, &key, Some("fp-2"), "REVOKED").await;
    until_code(&two, &key, None, "REVOKED").await;
    let verdict: Value = two.validate(&key, None).await;
    assert_eq!(verdict["license"]["status"], "revoked");
}

#[tokio::test]
async fn heartbeats_recorded_by_another_instance_keep_a_device_alive_and_death_is_seen() {
    if backend() == Backend::Sqlite {
        eprintln!("skipped on sqlite: the embedded store serves one instance");
        return;
    }
    let clock = TestClock::default();
    let one = spawn_app_with(Options { clock: Some(clock.clock()), ..Default::default() }).await;
    let two = spawn_app_with(Options { clock: Some(clock.clock()), ..Options::sharing(&one) }).await;
    let key = one.issue_license("u", PRICE_PRO).await;
    let token = one.activate_ok(&key, "fp-1").await["activation_token"].as_str().unwrap().to_owned();
    assert_eq!(two.validate(&key, Some("fp-1")).await["code"], "VALID");
    assert_eq!(two.validate(&key, Some("fp-1")).await["code"], "VALID", "held by two now");

    // The device beats through one only; two's memory has the activation time.
    clock.advance(500);
    assert_eq!(one.heartbeat(&token).await.status(), 200);
    clock.advance(200);
    assert_eq!(two.validate(&key, Some("fp-1")).await["code"], "VALID", "alive: the heartbeat on one counts");

    // Silent past its window since that heartbeat: dead, on both.
    clock.advance(500);
    assert_eq!(two.validate(&key, Some("fp-1")).await["code"], "HEARTBEAT_DEAD");
    assert_eq!(one.validate(&key, Some("fp-1")).await["code"], "HEARTBEAT_DEAD");
}

#[tokio::test]
async fn an_instance_reads_its_own_writes_at_once() {
    let app = spawn_app().await;
    let key = app.issue_license("u", PRICE_PRO).await;
    assert_eq!(app.validate(&key, Some("fp-1")).await["code"], "NOT_ACTIVATED");
    assert_eq!(app.validate(&key, Some("fp-1")).await["code"], "NOT_ACTIVATED", "held: no device");
    let token = app.activate_ok(&key, "fp-1").await["activation_token"].as_str().unwrap().to_owned();
    assert_eq!(app.validate(&key, Some("fp-1")).await["code"], "VALID", "the activation, with no wait");
    let deactivated =
        app.http.post(app.url("/api/license/deactivate")).bearer_auth(&token).send().await.unwrap().status();
    assert_eq!(deactivated, 200);
    assert_eq!(app.validate(&key, Some("fp-1")).await["code"], "NOT_ACTIVATED");
    app.billing.suspend_license(&Actor::admin("ops"), license_id(&app, &key).await).await.unwrap();
    assert_eq!(app.validate(&key, None).await["code"], "SUSPENDED");
    assert!(hits(&app) > 0, "some answers came from memory");
}

#[tokio::test]
async fn the_view_stays_exact_under_concurrent_activations_at_the_device_limit() {
    let app = std::sync::Arc::new(spawn_app().await);
    // pro: 3 devices.
    let key = app.issue_license("u", PRICE_PRO).await;
    let fingerprints: Vec<String> = (0..12).map(|i| format!("fp-{i}")).collect();
    for fingerprint in &fingerprints {
        assert_eq!(app.validate(&key, Some(fingerprint)).await["code"], "NOT_ACTIVATED");
    }
    let tasks: Vec<_> = fingerprints
        .iter()
        .map(|fingerprint| {
            let (app, key, fingerprint) = (app.clone(), key.clone(), fingerprint.clone());
            tokio::spawn(async move {
                let status = app.activate(&key, &fingerprint).await.status().as_u16();
                // Validations racing the other activations.
                let code = app.validate(&key, Some(&fingerprint)).await["code"].as_str().unwrap().to_owned();
                (fingerprint, status, code)
            })
        })
        .collect();
    let mut activated = Vec::new();
    for task in tasks {
        let (fingerprint, status, code) = task.await.unwrap();
        assert!(status == 201 || status == 409, "{status}");
        assert_eq!(code == "VALID", status == 201, "{fingerprint}: {status} then {code}");
        if status == 201 {
            activated.push(fingerprint);
        }
    }
    assert_eq!(activated.len(), 3, "exactly the device limit");
    for fingerprint in &fingerprints {
        let expected = if activated.contains(fingerprint) { "VALID" } else { "NOT_ACTIVATED" };
        assert_eq!(app.validate(&key, Some(fingerprint)).await["code"], expected, "{fingerprint}");
    }
}

#[tokio::test]
async fn a_view_smaller_than_the_licenses_answers_every_one_correctly_and_stays_bounded() {
    let app = spawn_app_with(Options { validation_cache: Some(2), ..Default::default() }).await;
    let mut keys = Vec::new();
    for user in ["a", "b", "c", "d", "e"] {
        let key = app.issue_license(user, PRICE_PRO).await;
        app.activate_ok(&key, &format!("fp-{user}")).await;
        keys.push((user, key));
    }
    // Round after round, each license asked about twice in a row: the
    // second is answered from memory, though every license was evicted
    // since the last round.
    for _ in 0..3 {
        for (user, key) in &keys {
            for _ in 0..2 {
                assert_eq!(app.validate(key, Some(&format!("fp-{user}"))).await["code"], "VALID", "{user}");
                assert_eq!(app.validate(key, Some("fp-stranger")).await["code"], "NOT_ACTIVATED", "{user}");
            }
        }
    }
    let stats = app.billing.validation_view().stats();
    assert!(stats.licenses <= 2, "{stats:?}");
    assert!(stats.hits > 0 && stats.misses > 0, "{stats:?}");

    // An unknown key is never held: a license issued later with it is found.
    let unknown = "AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA";
    assert_eq!(app.validate(unknown, None).await["code"], "NOT_FOUND");

    // Without a view, the same answers.
    let uncached = spawn_app_with(Options { validation_cache: Some(0), ..Default::default() }).await;
    let key = uncached.issue_license("z", PRICE_PRO).await;
    uncached.activate_ok(&key, "fp-z").await;
    assert_eq!(uncached.validate(&key, Some("fp-z")).await["code"], "VALID");
    assert_eq!(uncached.billing.validation_view().stats().hits, 0);
}
