//! The admin API's door: every `/api/admin/...` route, whoever adds it,
//! refuses a request without a live admin token holding its scope (the one
//! exception, `GET /api/admin/token`, answers any live token with its own
//! name and scopes), and such a refusal changes nothing stored.

use crate::helpers::*;
use billing_server::routes::ROUTES;
use reqwest::Method;
use serde_json::{json, Value};

const SCOPES: [&str; 8] = [
    "licenses:read",
    "licenses:write",
    "customers:read",
    "devices:write",
    "events:read",
    "stripe:write",
    "webhooks:write",
    "portal:write",
];

/// Every admin route with its path parameters filled in with ids that exist
/// nowhere (a refusal must not depend on the target).
fn admin_routes() -> Vec<(Method, String)> {
    let routes: Vec<(Method, String)> = ROUTES
        .iter()
        .filter(|(_, path, _)| path.starts_with("/api/admin/"))
        .map(|(method, path, _)| {
            let filled: Vec<String> = path
                .split('/')
                .map(|segment| match segment.starts_with('{') {
                    true => uuid::Uuid::new_v4().to_string(),
                    false => segment.to_owned(),
                })
                .collect();
            (Method::from_bytes(method.as_str().as_bytes()).unwrap(), filled.join("/"))
        })
        .collect();
    assert!(routes.len() >= 10, "the admin API has its routes: {routes:?}");
    routes
}

async fn send(app: &TestApp, method: &Method, path: &str, authorization: Option<&str>) -> (u16, Value) {
    let mut request = app.http.request(method.clone(), app.url(path));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    if *method != Method::GET && *method != Method::DELETE {
        request = request.json(&json!({}));
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

fn assert_error(body: &Value, code: &str, context: &str) {
    assert_eq!(body["error"]["code"], code, "{context}: {body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{context}: {body}");
}

async fn app_with_state() -> TestApp {
    let app = spawn_app_with(Options { rate_limit_per_minute: Some(100_000), ..Options::default() }).await;
    // Something to protect: a customer with a license and a device.
    let key = app.issue_license("user_auth", PRICE_PRO).await;
    app.activate_ok(&key, "fp-auth").await;
    app
}

#[tokio::test]
async fn every_admin_route_refuses_requests_without_a_live_token_and_changes_nothing() {
    let app = app_with_state().await;
    let revoked = app.admin_token(&["*"]).await;
    let revoked_name = app.billing.admin_tokens().await.unwrap().pop().unwrap().name;
    assert!(app.billing.revoke_admin_token(&revoked_name).await.unwrap());
    let unknown = billing_core::domain::admin::AdminToken::generate();
    let dashboard_admin = token(&json!({ "sub": "root", "role": "admin", "exp": now() + 3600 }), JWT_SECRET);
    let before = app.db.fingerprint().await;

    for (method, path) in admin_routes() {
        let cases = [
            ("no token", None),
            ("not a bearer token", Some("Basic YWRtaW46YWRtaW4=".to_owned())),
            ("unknown token", Some(format!("Bearer {}", unknown.expose()))),
            ("revoked token", Some(format!("Bearer {revoked}"))),
            ("dashboard admin JWT", Some(format!("Bearer {dashboard_admin}"))),
        ];
        for (case, authorization) in cases {
            let context = format!("{method} {path} with {case}");
            let (status, body) = send(&app, &method, &path, authorization.as_deref()).await;
            assert_eq!(status, 401, "{context}: {body}");
            assert_error(&body, "UNAUTHORIZED", &context);
            let shown = body.to_string();
            assert!(!shown.contains(&revoked) && !shown.contains(unknown.expose()), "{context}: echoes the token");
        }
    }
    assert_eq!(app.db.fingerprint().await, before, "refused requests changed stored state");
}

#[tokio::test]
async fn every_admin_route_needs_exactly_one_scope_and_star_grants_it() {
    let app = app_with_state().await;
    let mut tokens = Vec::new();
    for scope in SCOPES {
        tokens.push((scope, app.admin_token(&[scope]).await));
    }
    let everything = admin_token(&app, &["*"]).await;

    for (method, path) in admin_routes() {
        let mut granted = Vec::new();
        for (scope, token) in &tokens {
            let before = app.db.fingerprint().await;
            let (status, body) = send(&app, &method, &path, Some(&format!("Bearer {token}"))).await;
            let context = format!("{method} {path} with {scope}");
            if status == 403 {
                assert_error(&body, "INSUFFICIENT_SCOPE", &context);
                assert!(body["error"]["message"].as_str().unwrap().contains(':'), "names the scope: {body}");
                assert_eq!(app.db.fingerprint().await, before, "{context}: a refusal changed stored state");
            } else {
                assert_ne!(status, 401, "{context}: {body}");
                granted.push(*scope);
            }
        }
        // `GET /api/admin/token` tells any live token what it may do (the
        // console hides the rest); every other route needs its one scope.
        if path == "/api/admin/token" {
            assert_eq!(granted, SCOPES, "{method} {path} answers every live token");
        } else {
            assert_eq!(granted.len(), 1, "{method} {path} is open to exactly one scope, not {granted:?}");
        }
        let (status, body) = send(&app, &method, &path, Some(&format!("Bearer {everything}"))).await;
        assert!(status != 401 && status != 403, "{method} {path} with *: {status} {body}");
    }
}

#[tokio::test]
async fn failed_token_lookups_are_rate_limited_per_client() {
    let app = spawn_app_with(Options { rate_limit_per_minute: Some(3), ..Options::default() }).await;
    let good = app.admin_token(&["*"]).await;
    let path = admin_routes().into_iter().find(|(m, _)| *m == Method::GET).expect("an admin GET route").1;
    for attempt in 0..3 {
        let unknown = billing_core::domain::admin::AdminToken::generate();
        let (status, body) = send(&app, &Method::GET, &path, Some(&format!("Bearer {}", unknown.expose()))).await;
        assert_eq!(status, 401, "attempt {attempt}: {body}");
    }
    let unknown = billing_core::domain::admin::AdminToken::generate();
    let (status, body) = send(&app, &Method::GET, &path, Some(&format!("Bearer {}", unknown.expose()))).await;
    assert_eq!(status, 429, "{body}");
    assert_error(&body, "RATE_LIMITED", "the fourth failure");
    // While blocked, a good token is refused too: a hit must not be told
    // apart from a miss.
    let (status, _) = send(&app, &Method::GET, &path, Some(&format!("Bearer {good}"))).await;
    assert_eq!(status, 429);
}

#[tokio::test]
async fn a_revoked_token_stops_working_at_once() {
    let app = spawn_app().await;
    let token = app.admin_token(&["*"]).await;
    let nothing = app.admin_ok(Method::GET, "/api/admin/no-such-route", &token, None, 404).await;
    assert_error(&nothing, "NOT_FOUND", "an unknown admin path");
    let path = admin_routes().into_iter().find(|(m, _)| *m == Method::GET).expect("an admin GET route").1;
    let response = app.admin(Method::GET, &path, &token, None).await;
    assert!(response.status() != 401 && response.status() != 403, "{}", response.status());
    let used = app.billing.admin_tokens().await.unwrap().pop().unwrap();
    assert!(used.last_used_at.is_some(), "an allowed request records the token's use");
    let name = used.name;
    assert!(app.billing.revoke_admin_token(&name).await.unwrap());
    let (status, body) = send(&app, &Method::GET, &path, Some(&format!("Bearer {token}"))).await;
    assert_eq!(status, 401, "{body}");
    // The name is free again, and the old token stays dead.
    let scopes = billing_core::domain::admin::Scopes::all();
    let (_, fresh) = app.billing.create_admin_token(&name, scopes).await.unwrap();
    assert_ne!(fresh.expose(), token);
    let (status, _) = send(&app, &Method::GET, &path, Some(&format!("Bearer {token}"))).await;
    assert_eq!(status, 401);
    let listed = app.billing.admin_tokens().await.unwrap();
    assert_eq!(listed.iter().filter(|t| t.name == name).count(), 2);
    assert_eq!(listed.iter().filter(|t| t.name == name && t.revoked_at.is_none()).count(), 1);
}

#[tokio::test]
async fn the_cli_prints_the_token_alone_on_its_last_line_and_stores_only_its_hash() {
    let store = TestStore::create().await;
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_billing-server"))
            .args(args)
            .env("DATABASE_URL", store.url())
            .env("BILLING_DATA_DIR", std::env::temp_dir().join(format!("cli-{}", uuid::Uuid::new_v4().simple())))
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let created = run(&["admin-token", "create", "--name", "deploy", "--scopes", "licenses:read,licenses:write"]);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let stdout = String::from_utf8(created.stdout).unwrap();
    let token = stdout.lines().last().unwrap().to_owned();
    assert!(billing_core::domain::admin::AdminToken::looks_like(&token), "{stdout}");

    let db = TestDb::open(&store.location).await;
    let stored = db.fingerprint().await.join("\n");
    assert!(!stored.contains(&token), "the token itself is stored");

    let listed = run(&["admin-token", "list"]);
    let listing = String::from_utf8(listed.stdout).unwrap();
    assert!(listing.contains("deploy") && listing.contains("licenses:read,licenses:write"), "{listing}");
    assert!(!listing.contains(&token), "list shows the token");

    let again = run(&["admin-token", "create", "--name", "deploy"]);
    assert!(!again.status.success(), "a live name is taken");
    let bad = run(&["admin-token", "create", "--name", "x", "--scopes", "licenses:admin"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown scope"));

    let revoked = run(&["admin-token", "revoke", "--name", "deploy"]);
    assert!(revoked.status.success(), "{}", String::from_utf8_lossy(&revoked.stderr));
    let twice = run(&["admin-token", "revoke", "--name", "deploy"]);
    assert!(!twice.status.success(), "nothing left to revoke");
    let listing = String::from_utf8(run(&["admin-token", "list"]).stdout).unwrap();
    assert!(listing.contains("revoked"), "{listing}");
}
