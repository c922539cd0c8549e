//! The customer portal's sessions (issue 19): the vendor's backend creates
//! one with an admin token (`portal:write`), the page exchanges its
//! one-time code for a dashboard token of that user alone.

use crate::helpers::*;
use reqwest::Method;
use serde_json::{json, Value};

async fn create_session(app: &TestApp, token: &str, body: &Value) -> Value {
    app.admin_ok(Method::POST, "/api/admin/portal-sessions", token, Some(body), 201).await
}

fn code_of(url: &str) -> String {
    url.split_once("#code=").expect("the code is in the fragment").1.to_owned()
}

async fn exchange(app: &TestApp, code: &str) -> (u16, Value) {
    let response = app.post_json("/api/portal/session", &json!({ "code": code })).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn assert_error(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
}

#[tokio::test]
async fn a_portal_code_opens_the_dashboard_routes_for_its_user_alone() {
    let app = spawn_app().await;
    let key = app.issue_license("user_portal", PRICE_PRO).await;
    app.issue_license("user_other", PRICE_PRO).await;
    let token = app.admin_token(&["portal:write"]).await;

    let created = create_session(
        &app,
        &token,
        &json!({ "user_id": "user_portal", "return_url": "https://app.example.com/account" }),
    )
    .await;
    let url = created["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("{}/portal#code=pcs_", app.address)), "{url}");
    let expires_at = time::OffsetDateTime::parse(
        created["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let in_minutes = (expires_at - time::OffsetDateTime::now_utc()).whole_seconds();
    assert!((280..=300).contains(&in_minutes), "valid for five minutes, not {in_minutes}s");

    // Only the code's hash is stored, with who asked for it.
    let code = code_of(url);
    let stored = app.db.strings("SELECT created_by || ' ' || user_id FROM portal_sessions").await;
    assert_eq!(stored.len(), 1);
    assert!(stored[0].starts_with("admin:test-") && stored[0].ends_with(" user_portal"), "{stored:?}");
    assert!(!app.db.fingerprint().await.iter().any(|row| row.contains(&code)), "the code itself is stored");

    let (status, granted) = exchange(&app, &code).await;
    assert_eq!(status, 200, "{granted}");
    assert_eq!(granted["token_type"], "Bearer");
    assert_eq!(granted["user_id"], "user_portal");
    assert_eq!(granted["return_url"], "https://app.example.com/account");
    let credential = granted["token"].as_str().unwrap();

    let licenses: Value =
        app.http.get(app.url("/api/licenses")).bearer_auth(credential).send().await.unwrap().json().await.unwrap();
    let keys: Vec<&str> = licenses["licenses"].as_array().unwrap().iter().map(|l| l["key"].as_str().unwrap()).collect();
    assert_eq!(keys, [key.as_str()], "the user's own license, and no other");
    // Not an admin: another user's data stays closed.
    let other = app.http.get(app.url("/api/licenses?user_id=user_other")).bearer_auth(credential).send().await.unwrap();
    assert_ne!(other.status().as_u16(), 200, "a portal token reads another user's licenses");
}

#[tokio::test]
async fn a_used_expired_or_unknown_code_is_refused_in_words() {
    let clock = TestClock::default();
    let app = spawn_app_with(Options { clock: Some(clock.clock()), ..Options::default() }).await;
    let token = app.admin_token(&["portal:write"]).await;

    let used = code_of(create_session(&app, &token, &json!({ "user_id": "u1" })).await["url"].as_str().unwrap());
    assert_eq!(exchange(&app, &used).await.0, 200);
    let (status, body) = exchange(&app, &used).await;
    assert_eq!(status, 410, "{body}");
    assert_error(&body, "PORTAL_CODE_USED");

    let late = code_of(create_session(&app, &token, &json!({ "user_id": "u2" })).await["url"].as_str().unwrap());
    clock.advance(301);
    let (status, body) = exchange(&app, &late).await;
    assert_eq!(status, 410, "{body}");
    assert_error(&body, "PORTAL_CODE_EXPIRED");
    // Refused, it stays unused (and refused).
    assert_eq!(app.db.int("SELECT count(*) FROM portal_sessions WHERE used_at IS NOT NULL").await, 1);

    let unknown = billing_core::domain::portal::PortalCode::generate();
    for code in [unknown.expose(), "not-a-code"] {
        let (status, body) = exchange(&app, code).await;
        assert_eq!(status, 401, "{body}");
        assert_error(&body, "PORTAL_CODE_INVALID");
        assert!(!body.to_string().contains(unknown.expose()), "echoes the code: {body}");
    }
}

#[tokio::test]
async fn a_code_is_exchanged_once_even_when_raced() {
    let app = spawn_app().await;
    let token = app.admin_token(&["*"]).await;
    let code = code_of(create_session(&app, &token, &json!({ "user_id": "u_race" })).await["url"].as_str().unwrap());
    let attempts = (0..8).map(|_| exchange(&app, &code));
    let statuses: Vec<u16> = futures_util::future::join_all(attempts).await.into_iter().map(|(s, _)| s).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 410), "{statuses:?}");
}

#[tokio::test]
async fn portal_sessions_check_their_input_and_use_the_public_url() {
    let app =
        spawn_app_with(Options { public_url: Some("https://billing.example.com".into()), ..Options::default() }).await;
    let token = app.admin_token(&["portal:write"]).await;
    for body in [
        json!({}),
        json!({ "user_id": "" }),
        json!({ "user_id": "u\u{0}" }),
        json!({ "user_id": "u", "return_url": "javascript:alert(1)" }),
        json!({ "user_id": "u", "return_url": "/relative" }),
        json!({ "user_id": "u", "extra": true }),
    ] {
        let body = app.admin_ok(Method::POST, "/api/admin/portal-sessions", &token, Some(&body), 400).await;
        assert_error(&body, "INVALID_REQUEST");
    }
    assert_eq!(app.count("portal_sessions").await, 0, "a refused request stored a session");

    let created = create_session(&app, &token, &json!({ "user_id": "u" })).await;
    assert!(created["url"].as_str().unwrap().starts_with("https://billing.example.com/portal#code=pcs_"), "{created}");

    let reader = app.admin_token(&["licenses:read"]).await;
    let body =
        app.admin_ok(Method::POST, "/api/admin/portal-sessions", &reader, Some(&json!({ "user_id": "u" })), 403).await;
    assert_error(&body, "INSUFFICIENT_SCOPE");
}

#[tokio::test]
async fn the_portal_page_and_its_assets_are_served_with_a_strict_content_security_policy() {
    let app = spawn_app().await;
    let page = app.http.get(app.url("/portal")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    for directive in ["default-src 'self'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"] {
        assert!(csp.contains(directive), "{csp} lacks {directive}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    let html = page.text().await.unwrap();
    // Every script and stylesheet is a file of ours: nothing inline, nothing elsewhere.
    assert!(html.contains(r#"<script type="module" src="/assets/portal.js"></script>"#), "{html}");
    assert_eq!(html.matches("<script").count(), 1, "one script, by reference");
    assert!(!html.contains(" style=") && !html.contains("<style"), "inline style");
    let handler = html.split(" on").skip(1).any(|rest| {
        let name: String = rest.chars().take_while(char::is_ascii_alphabetic).collect();
        !name.is_empty() && rest[name.len()..].starts_with('=')
    });
    assert!(!handler, "an inline event handler");
    assert!(!html.contains("http://") && !html.contains("https://"), "a resource from elsewhere");

    for (file, content_type) in [
        ("portal.js", "text/javascript; charset=utf-8"),
        ("common.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
    ] {
        let asset = app.http.get(app.url(&format!("/assets/{file}"))).send().await.unwrap();
        assert_eq!(asset.status(), 200, "{file}");
        assert_eq!(asset.headers()["content-type"], content_type, "{file}");
        assert!(asset.headers().contains_key("content-security-policy"), "{file}");
        let text = asset.text().await.unwrap();
        assert!(!text.contains("innerHTML") && !text.contains("eval("), "{file} builds markup from strings");
        assert!(!text.contains("https://") && !text.contains("http://"), "{file} reaches elsewhere");
    }
    let missing = app.http.get(app.url("/assets/../Cargo.toml")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let missing = app.http.get(app.url("/assets/nope.js")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.json::<Value>().await.unwrap()["error"]["code"], "NOT_FOUND");
}

#[tokio::test]
async fn a_token_learns_its_own_name_and_scopes_and_nothing_else() {
    let app = spawn_app().await;
    let token = app.admin_token(&["licenses:write", "licenses:read"]).await;
    let me = app.admin_ok(Method::GET, "/api/admin/token", &token, None, 200).await;
    assert!(me["name"].as_str().unwrap().starts_with("test-"), "{me}");
    assert_eq!(me["scopes"], json!(["licenses:read", "licenses:write"]));
    assert_eq!(me.as_object().unwrap().len(), 2, "{me}");
    let refused = app.admin_ok(Method::GET, "/api/admin/token", "adm_nope", None, 401).await;
    assert_error(&refused, "UNAUTHORIZED");

    let page = app.http.get(app.url("/console")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("script-src 'self'"));
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"<script type="module" src="/assets/console.js"></script>"#), "{html}");
    assert_eq!(html.matches("<script").count(), 1, "one script, by reference");
}

#[tokio::test]
async fn the_overview_counts_active_licenses_devices_seen_deliveries_today_and_activations_per_day() {
    let app = spawn_app().await;
    let token = app.admin_token(&["licenses:read"]).await;
    let empty = app.admin_ok(Method::GET, "/api/admin/overview", &token, None, 200).await;
    assert_eq!(empty["active_licenses"], 0);
    assert_eq!(empty["activations_per_day"].as_array().unwrap().len(), 30);
    assert!(empty["activations_per_day"].as_array().unwrap().iter().all(|d| d["count"] == 0), "{empty}");

    let key = app.issue_license("user_overview", PRICE_PRO).await;
    app.issue_license("user_overview_2", PRICE_PRO).await;
    app.activate_ok(&key, "fp-1").await;
    app.activate_ok(&key, "fp-2").await;
    let overview = app.admin_ok(Method::GET, "/api/admin/overview", &token, None, 200).await;
    assert_eq!(overview["active_licenses"], 2, "{overview}");
    assert_eq!(overview["devices_seen_last_hour"], 2, "{overview}");
    assert_eq!(overview["stripe_events_today"], 2, "{overview}");
    let days = overview["activations_per_day"].as_array().unwrap();
    let today = time::OffsetDateTime::now_utc().date().to_string();
    assert_eq!(days.last().unwrap(), &json!({ "day": today, "count": 2 }), "{overview}");
    assert_eq!(days.iter().map(|d| d["count"].as_i64().unwrap()).sum::<i64>(), 2);

    let writer = app.admin_token(&["webhooks:write"]).await;
    let refused = app.admin_ok(Method::GET, "/api/admin/overview", &writer, None, 403).await;
    assert_error(&refused, "INSUFFICIENT_SCOPE");
}
