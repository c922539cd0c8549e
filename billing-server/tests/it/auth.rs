//! Dashboard authentication failures: always 401 with a JSON error.

use crate::helpers::*;
use serde_json::{json, Value};

/// Every route authenticated by the dashboard JWT.
const DASHBOARD_ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/subscriptions/current"),
    ("GET", "/api/subscriptions/history"),
    ("GET", "/api/subscriptions/billing-history"),
    ("GET", "/api/payments/history"),
    ("GET", "/api/subscriptions/plans"),
    ("GET", "/api/licenses"),
    ("GET", "/api/terminals"),
    ("DELETE", "/api/terminals/00000000-0000-0000-0000-000000000001"),
    ("PATCH", "/api/terminals/00000000-0000-0000-0000-000000000001"),
    ("POST", "/api/subscriptions/cancel"),
    ("POST", "/api/subscriptions/reactivate"),
    ("POST", "/api/subscriptions/change-plan"),
    ("POST", "/api/stripe/checkout/create"),
    ("POST", "/api/stripe/billing/portal"),
    ("GET", "/api/stripe/billing/payment-method"),
    ("POST", "/api/stripe/subscriptions/sync"),
];

#[tokio::test]
async fn every_dashboard_route_refuses_bad_tokens_with_401_json() {
    let app = spawn_app().await;
    let bad_tokens: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("not a jwt", Some("garbage".into())),
        ("wrong secret", Some(token(&json!({"sub": "u", "exp": now() + 600}), "another-secret"))),
        ("expired", Some(token(&json!({"sub": "u", "exp": now() - 120}), JWT_SECRET))),
        ("no exp", Some(token(&json!({"sub": "u"}), JWT_SECRET))),
        ("no sub", Some(token(&json!({"exp": now() + 600}), JWT_SECRET))),
        ("empty sub", Some(token(&json!({"sub": "", "exp": now() + 600}), JWT_SECRET))),
        (
            "alg none",
            Some(format!(
                "{}.{}.",
                b64(r#"{"alg":"none","typ":"JWT"}"#),
                b64(&json!({"sub":"u","exp":now()+600}).to_string())
            )),
        ),
    ];
    for (method, route) in DASHBOARD_ROUTES {
        for (case, token) in &bad_tokens {
            let mut request = app.http.request(method.parse().unwrap(), app.url(route)).json(&json!({}));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "{route} with {case}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "UNAUTHORIZED", "{route} with {case}");
            assert!(body["error"]["message"].is_string());
            let message = body["error"]["message"].as_str().unwrap();
            assert!(!message.contains(JWT_SECRET) && !message.contains("another-secret"), "{message}");
        }
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json_errors() {
    let app = spawn_app().await;
    let response = app.http.get(app.url("/api/nope")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], "NOT_FOUND");
    let response = app.http.get(app.url("/api/stripe/webhooks/handler")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], "METHOD_NOT_ALLOWED");
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}
