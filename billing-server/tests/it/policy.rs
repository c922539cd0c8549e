//! What plans say about their licenses (issue 17): node-locked and floating
//! devices across the heartbeat window, per-plan heartbeat windows and
//! certificate lifetimes, and the updates window of perpetual licenses.

use crate::helpers::*;
use billing_core::domain::{DevicePolicy, LicenseKind, Plan, PlanCatalog};
use reqwest::Method;
use serde_json::{json, Value};

/// Floating `basic` (the server's 5 s window), node-locked `locked`, a
/// floating `short` plan with its own 30 s window and one-hour
/// certificates, and a perpetual `studio` with a year of updates; one slot
/// each.
fn policy_plans() -> PlanCatalog {
    PlanCatalog::new(vec![
        Plan::new("basic", "Basic", PRICE_BASIC, 1),
        Plan { device_policy: DevicePolicy::NodeLocked, ..Plan::new("locked", "Locked", "price_locked", 1) },
        Plan {
            heartbeat_window_secs: Some(30),
            offline_ttl_secs: Some(3600),
            ..Plan::new("short", "Short", "price_short", 1)
        },
        Plan {
            kind: LicenseKind::Perpetual,
            updates_months: Some(12),
            ..Plan::new("studio", "Studio", "price_studio", 1)
        },
    ])
    .unwrap()
}

async fn policy_app(clock: &TestClock) -> TestApp {
    spawn_app_with(Options {
        clock: Some(clock.clock()),
        heartbeat_window_secs: Some(5),
        plans: Some(policy_plans()),
        ..Default::default()
    })
    .await
}

/// A manual license of `plan` issued through the admin API; its view.
async fn issue(app: &TestApp, body: Value) -> Value {
    let token = app.admin_token(&["licenses:write"]).await;
    app.admin_ok(Method::POST, "/api/admin/licenses", &token, Some(&body), 201).await["license"].clone()
}

async fn issue_on(app: &TestApp, plan: &str) -> String {
    issue(app, json!({ "user_id": "u", "plan": plan })).await["key"].as_str().unwrap().to_owned()
}

/// A certificate's claims, unverified (`licensing.rs` verifies them with a JOSE library).
fn claims(certificate: &Value) -> Value {
    use base64::Engine;
    let payload = certificate.as_str().unwrap().split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn code(verdict: &Value) -> (bool, &str) {
    (verdict["valid"].as_bool().unwrap(), verdict["code"].as_str().unwrap())
}

fn token(activation: &Value) -> String {
    activation["activation_token"].as_str().unwrap().to_owned()
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    billing_core::billing::rfc3339(t)
}

fn parse(text: &Value) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(text.as_str().unwrap(), &time::format_description::well_known::Rfc3339).unwrap()
}

#[tokio::test]
async fn a_node_locked_device_keeps_its_slot_across_the_heartbeat_window_and_a_floating_one_loses_it() {
    let clock = TestClock::default();
    let app = policy_app(&clock).await;
    let (floating, locked) = (issue_on(&app, "basic").await, issue_on(&app, "locked").await);
    let floating_device = app.activate_ok(&floating, "fp-floating").await;
    let locked_device = app.activate_ok(&locked, "fp-locked").await;
    assert_eq!(locked_device["heartbeat_window_secs"], 5, "the server's window: the plan sets none");

    clock.advance(6);
    assert_eq!(code(&app.validate(&floating, Some("fp-floating")).await), (false, "HEARTBEAT_DEAD"));
    assert_eq!(code(&app.validate(&locked, Some("fp-locked")).await), (true, "VALID"), "never HEARTBEAT_DEAD");
    clock.advance(24 * 3600);
    assert_eq!(code(&app.validate(&locked, Some("fp-locked")).await), (true, "VALID"), "a day later too");

    // The server's own reaper may get there first: wait for the one death.
    app.billing.reap_dead_devices().await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while app.db.int("SELECT count(*) FROM device_changes WHERE kind = 'dead'").await == 0 {
        assert!(std::time::Instant::now() < deadline, "the floating device is never declared dead");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let dead = app.db.strings("SELECT CAST(device_id AS TEXT) FROM device_changes WHERE kind = 'dead'").await;
    assert_eq!(dead, [floating_device["device"]["id"].as_str().unwrap()], "the reaper leaves the node-locked one");
    assert_eq!(app.billing.reap_dead_devices().await.unwrap(), 0);
    let statuses = app.db.strings("SELECT fingerprint || ':' || status FROM devices ORDER BY fingerprint").await;
    assert_eq!(statuses, ["fp-floating:dead", "fp-locked:active"]);

    // The floating slot is free; the node-locked one is still held.
    assert_eq!(app.activate(&floating, "fp-other").await.status(), 201);
    let refused = app.activate(&locked, "fp-other").await;
    assert_eq!(refused.status(), 409);
    assert_eq!(refused.json::<Value>().await.unwrap()["error"]["code"], "TOO_MANY_DEVICES");

    // Its heartbeat only refreshes "last seen"; the floating one must activate again.
    let beat = app.heartbeat(&token(&locked_device)).await;
    assert_eq!(beat.status(), 200);
    let beat: Value = beat.json().await.unwrap();
    assert_eq!((beat["device"]["alive"].as_bool(), beat["device"]["status"].as_str()), (Some(true), Some("active")));
    assert!(parse(&beat["device"]["last_seen_at"]) > parse(&locked_device["device"]["last_seen_at"]));
    assert_eq!(app.heartbeat(&token(&floating_device)).await.status(), 410);
    let terminals = app.get_as("/api/terminals", "u").await["terminals"].as_array().unwrap().clone();
    let locked_view = terminals.iter().find(|t| t["fingerprint"] == "fp-locked").unwrap();
    assert_eq!((locked_view["alive"].as_bool(), locked_view["status"].as_str()), (Some(true), Some("active")));

    // Deactivating frees a node-locked slot.
    let off = app.http.post(app.url("/api/license/deactivate")).bearer_auth(token(&locked_device)).send().await;
    assert_eq!(off.unwrap().status(), 200);
    assert_eq!(app.activate(&locked, "fp-other").await.status(), 201);
}

#[tokio::test]
async fn per_plan_heartbeat_windows_and_offline_ttls_show_in_answers_certificates_and_the_reaper() {
    let clock = TestClock::default();
    let app = policy_app(&clock).await;
    let (short, basic) = (issue_on(&app, "short").await, issue_on(&app, "basic").await);
    let on_short = app.activate_ok(&short, "fp-short").await;
    let on_basic = app.activate_ok(&basic, "fp-basic").await;
    assert_eq!(
        (on_short["heartbeat_window_secs"].as_i64(), on_basic["heartbeat_window_secs"].as_i64()),
        (Some(30), Some(5))
    );
    let (short_claims, basic_claims) = (claims(&on_short["certificate"]), claims(&on_basic["certificate"]));
    let lifetime = |c: &Value| c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap();
    assert_eq!(lifetime(&short_claims), 3600, "the plan's offline_ttl_secs");
    assert_eq!(lifetime(&basic_claims), 7 * 24 * 3600, "the server's");
    assert_eq!((short_claims["plan"].as_str(), short_claims["kind"].as_str()), (Some("short"), Some("subscription")));

    let beat: Value = app.heartbeat(&token(&on_short)).await.json().await.unwrap();
    assert_eq!(beat["heartbeat_window_secs"], 30);
    assert_eq!(lifetime(&claims(&beat["certificate"])), 3600, "a heartbeat's certificate too");
    app.heartbeat(&token(&on_basic)).await;

    // Past the server's 5 s but within the short plan's 30 s: only basic's device dies.
    clock.advance(10);
    assert_eq!(code(&app.validate(&short, Some("fp-short")).await), (true, "VALID"));
    assert_eq!(code(&app.validate(&basic, Some("fp-basic")).await), (false, "HEARTBEAT_DEAD"));
    app.billing.reap_dead_devices().await.unwrap();
    let alive = app.db.strings("SELECT fingerprint FROM devices WHERE status = 'active'").await;
    assert_eq!(alive, ["fp-short"]);
    assert_eq!(app.heartbeat(&token(&on_short)).await.status(), 200, "still within its own window");

    clock.advance(31);
    assert_eq!(code(&app.validate(&short, Some("fp-short")).await), (false, "HEARTBEAT_DEAD"));
    app.billing.reap_dead_devices().await.unwrap();
    assert_eq!(app.db.int("SELECT count(*) FROM devices WHERE status = 'active'").await, 0);
}

#[tokio::test]
async fn a_stored_deadline_of_another_window_is_judged_by_the_plan_as_configured_now() {
    // As the migration leaves every device (its deadline its last
    // heartbeat) or a plan whose window grew: the sweep finds the device,
    // and the plan, not the stored deadline, decides.
    let clock = TestClock::default();
    let app = policy_app(&clock).await;
    let (short, locked) = (issue_on(&app, "short").await, issue_on(&app, "locked").await);
    app.activate_ok(&short, "fp-short").await;
    app.activate_ok(&locked, "fp-locked").await;
    app.db.execute("UPDATE devices SET heartbeat_deadline = last_heartbeat_at").await;
    clock.advance(10);
    assert_eq!(app.billing.reap_dead_devices().await.unwrap(), 0, "both alive by their plans");
    assert_eq!(app.db.int("SELECT count(*) FROM devices WHERE heartbeat_deadline IS NULL").await, 1, "node-locked");
    assert_eq!(app.db.int("SELECT count(*) FROM devices WHERE status = 'active'").await, 2);
    clock.advance(30);
    app.billing.reap_dead_devices().await.unwrap();
    assert_eq!(app.db.strings("SELECT fingerprint FROM devices WHERE status = 'dead'").await, ["fp-short"]);
}

#[tokio::test]
async fn updates_expired_answers_for_builds_released_after_the_window_and_comes_after_suspended() {
    let clock = TestClock::default();
    let app = policy_app(&clock).await;
    // Whole seconds: stores keep microseconds, and a release on the window's
    // last instant must compare equal.
    let until = (time::OffsetDateTime::now_utc() - time::Duration::days(30)).replace_nanosecond(0).unwrap();
    let license = issue(&app, json!({ "user_id": "u", "plan": "studio", "updates_until": rfc3339(until) })).await;
    assert_eq!((license["kind"].as_str(), license["trial"].as_bool()), (Some("perpetual"), Some(false)));
    assert_eq!(parse(&license["updates_until"]).unix_timestamp(), until.unix_timestamp());
    let key = license["key"].as_str().unwrap().to_owned();
    let validate = |released: Option<time::OffsetDateTime>, fingerprint: Option<&'static str>| {
        let (app, key) = (&app, key.clone());
        async move {
            let body = json!({
                "license_key": key, "fingerprint": fingerprint, "app_released_at": released.map(rfc3339)
            });
            let response = app.post_json("/api/license/validate", &body).await;
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };
    let before = until - time::Duration::days(1);
    let after = until + time::Duration::days(1);
    assert_eq!(code(&validate(Some(before), None).await), (true, "VALID"), "released within the window");
    assert_eq!(code(&validate(Some(until), None).await), (true, "VALID"), "on its last day");
    assert_eq!(code(&validate(None, None).await), (true, "VALID"), "no release date: no window to check");
    let expired = validate(Some(after), None).await;
    assert_eq!(code(&expired), (false, "UPDATES_EXPIRED"));
    assert_eq!(expired["license"]["kind"], "perpetual");
    assert_eq!(parse(&expired["license"]["updates_until"]).unix_timestamp(), until.unix_timestamp());
    assert_eq!(
        code(&validate(Some(after), Some("fp-nowhere")).await),
        (false, "UPDATES_EXPIRED"),
        "before NOT_ACTIVATED"
    );
    assert_eq!(code(&validate(Some(before), Some("fp-nowhere")).await), (false, "NOT_ACTIVATED"));

    // The certificate carries the window; the owner's dashboard shows it.
    let activation = app.activate_ok(&key, "fp-1").await;
    let certified = claims(&activation["certificate"]);
    assert_eq!(certified["updates_until"].as_i64(), Some(until.unix_timestamp()));
    assert_eq!((certified["kind"].as_str(), certified["trial"].as_bool()), (Some("perpetual"), Some(false)));
    assert_eq!(activation["license"]["updates_until"], license["updates_until"]);
    let listed = app.get_licenses("u").await;
    assert_eq!(
        (listed[0]["kind"].as_str(), listed[0]["updates_until"].clone()),
        (Some("perpetual"), license["updates_until"].clone())
    );
    assert_eq!(code(&validate(Some(after), Some("fp-1")).await), (false, "UPDATES_EXPIRED"));
    assert_eq!(code(&validate(Some(before), Some("fp-1")).await), (true, "VALID"));

    // Suspended and revoked come first.
    let admin = app.admin_token(&["licenses:write"]).await;
    let id = license["id"].as_str().unwrap();
    app.admin_ok(Method::POST, &format!("/api/admin/licenses/{id}/suspend"), &admin, None, 200).await;
    assert_eq!(code(&validate(Some(after), Some("fp-1")).await), (false, "SUSPENDED"));
    app.admin_ok(Method::POST, &format!("/api/admin/licenses/{id}/reinstate"), &admin, None, 200).await;
    // The vendor moves the window: the same build is covered again.
    let moved = rfc3339(after + time::Duration::days(1));
    let patched = app
        .admin_ok(
            Method::PATCH,
            &format!("/api/admin/licenses/{id}"),
            &admin,
            Some(&json!({ "updates_until": moved })),
            200,
        )
        .await;
    assert_eq!(
        parse(&patched["license"]["updates_until"]).unix_timestamp(),
        (after + time::Duration::days(1)).unix_timestamp()
    );
    assert_eq!(code(&validate(Some(after), Some("fp-1")).await), (true, "VALID"));
    app.admin_ok(Method::POST, &format!("/api/admin/licenses/{id}/revoke"), &admin, None, 200).await;
    assert_eq!(code(&validate(Some(after + time::Duration::days(9)), Some("fp-1")).await), (false, "REVOKED"));
}

#[tokio::test]
async fn a_malformed_release_date_is_refused_with_the_usual_error() {
    let clock = TestClock::default();
    let app = policy_app(&clock).await;
    let key = issue_on(&app, "studio").await;
    for bad in [json!("yesterday"), json!("2026-13-01T00:00:00Z"), json!("2026-03-01"), json!(1_767_225_600)] {
        let response =
            app.post_json("/api/license/validate", &json!({ "license_key": key, "app_released_at": bad })).await;
        assert_eq!(response.status(), 400, "{bad}");
        let error: Value = response.json().await.unwrap();
        assert!(error["error"]["code"].is_string() && error["error"]["message"].is_string(), "{error}");
        if bad.is_string() {
            assert_eq!(error["error"]["code"], "INVALID_REQUEST");
            assert!(error["error"]["message"].as_str().unwrap().contains("app_released_at"), "{error}");
        }
    }
}

#[tokio::test]
async fn a_perpetual_license_issued_without_a_window_gets_its_plans_months_and_a_plan_without_none() {
    let clock = TestClock::default();
    let app = policy_app(&clock).await;
    let studio = issue(&app, json!({ "user_id": "u", "plan": "studio" })).await;
    assert_eq!(studio["kind"], "perpetual", "the plan's kind");
    let until = parse(&studio["updates_until"]);
    let now = time::OffsetDateTime::now_utc();
    let expected = now.replace_year(now.year() + 1).unwrap_or(now + time::Duration::days(365));
    assert!((until - expected).abs() < time::Duration::minutes(5), "{until} vs {expected}");
    let basic = issue(&app, json!({ "user_id": "u", "plan": "basic" })).await;
    assert_eq!((basic["kind"].as_str(), basic["updates_until"].clone()), (Some("subscription"), Value::Null));
    let forever = issue(&app, json!({ "user_id": "u", "plan": "basic", "kind": "perpetual" })).await;
    assert_eq!((forever["kind"].as_str(), forever["updates_until"].clone()), (Some("perpetual"), Value::Null));
    let plans = app.get_as("/api/subscriptions/plans", "u").await["plans"].clone();
    let studio_plan = plans.as_array().unwrap().iter().find(|p| p["id"] == "studio").unwrap().clone();
    assert_eq!(
        (studio_plan["kind"].as_str(), studio_plan["updates_months"].as_i64(), studio_plan["device_policy"].as_str()),
        (Some("perpetual"), Some(12), Some("floating"))
    );
}
