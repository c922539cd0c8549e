//! The dashboard's read routes.

use crate::helpers::*;
use serde_json::Value;

const T: i64 = 1_764_000_000;

#[tokio::test]
async fn healthz_answers_once_the_database_does() {
    let app = spawn_app().await;
    let response = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-request-id"));
}

#[tokio::test]
async fn plans_are_listed_in_file_order() {
    let app = spawn_app().await;
    let plans = app.get_as("/api/subscriptions/plans", "u").await;
    let ids: Vec<_> = plans["plans"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["pro", "basic"]);
    assert_eq!(plans["plans"][0]["max_devices"], 3);
}

#[tokio::test]
async fn a_user_without_anything_sees_empty_state() {
    let app = spawn_app().await;
    assert_eq!(app.get_current_subscription("nobody").await, Value::Null);
    assert!(app.get_licenses("nobody").await.is_empty());
    assert!(app.get_history("nobody").await.is_empty());
    assert!(app.get_payments("nobody").await.is_empty());
}

#[tokio::test]
async fn users_see_only_their_own_records() {
    let app = spawn_app().await;
    app.deliver(&event(
        "e1",
        "customer.subscription.created",
        T,
        subscription("sub_a", "cus_a", "active", PRICE_PRO, Some("alice")),
    ))
    .await;
    app.deliver(&event(
        "e2",
        "customer.subscription.created",
        T,
        subscription("sub_b", "cus_b", "active", PRICE_BASIC, Some("bob")),
    ))
    .await;
    app.deliver(&event("e3", "invoice.paid", T, invoice("in_a", "cus_a", "sub_a", 1900))).await;

    assert_eq!(app.get_current_subscription("alice").await["stripe_subscription_id"], "sub_a");
    assert_eq!(app.get_current_subscription("bob").await["stripe_subscription_id"], "sub_b");
    assert_eq!(app.get_payments("alice").await.len(), 1);
    assert!(app.get_payments("bob").await.is_empty());
    let alice_key = app.get_licenses("alice").await[0]["key"].clone();
    let bob_key = app.get_licenses("bob").await[0]["key"].clone();
    assert_ne!(alice_key, bob_key);
    let alice_sub = app.get_history("alice").await[0]["subscription_id"].clone();
    assert!(app.get_history("bob").await.iter().all(|c| c["subscription_id"] != alice_sub));
}

#[tokio::test]
async fn history_lists_changes_newest_first_with_their_actor() {
    let app = spawn_app().await;
    app.deliver(&event(
        "e1",
        "customer.subscription.created",
        T,
        subscription("sub_1", "cus_1", "trialing", PRICE_BASIC, Some("u")),
    ))
    .await;
    app.deliver(&event(
        "e2",
        "customer.subscription.updated",
        T + 1,
        subscription("sub_1", "cus_1", "active", PRICE_PRO, Some("u")),
    ))
    .await;
    let history = app.get_history("u").await;
    let kinds: Vec<_> = history.iter().map(|c| c["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["plan_changed", "status_changed", "created"]);
    assert!(history.iter().all(|c| c["actor"] == "stripe"));
    assert_eq!(history[0]["stripe_event_id"], "e2");
    assert_eq!(app.get_licenses("u").await[0]["max_devices"], 3, "device limit follows the plan");
}

#[tokio::test]
async fn user_id_is_percent_decoded_and_empty_or_repeated_is_refused() {
    let app = spawn_app().await;
    app.issue_license("auth0|u2", PRICE_PRO).await;
    app.issue_license("ana maria", PRICE_BASIC).await;
    let admin = token(&serde_json::json!({ "sub": "support-1", "role": "admin", "exp": now() + 600 }), JWT_SECRET);
    let get = |query: &str, jwt: &str| {
        app.http.get(app.url(&format!("/api/licenses?{query}"))).bearer_auth(jwt.to_owned()).send()
    };
    let max_devices = |body: &Value| -> Vec<Value> {
        body["licenses"].as_array().into_iter().flatten().map(|l| l["max_devices"].clone()).collect()
    };
    for (query, want) in [("user_id=auth0%7Cu2", 3), ("user_id=ana%20maria", 1), ("user_id=ana+maria", 1)] {
        let response = get(query, &admin).await.unwrap();
        assert_eq!(response.status(), 200, "{query}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(max_devices(&body), vec![Value::from(want)], "{query}: {body}");
    }
    // A user naming themself, encoded, is themself (not "another user": 403).
    let response = get("user_id=auth0%7Cu2", &jwt_for("auth0|u2")).await.unwrap();
    assert_eq!(response.status(), 200);

    for query in ["user_id=", "user_id", "user_id=auth0%7Cu2&user_id=ana%20maria", "user_id=u&user_id=u", "user_id=%00"]
    {
        for jwt in [&admin, &jwt_for("u")] {
            let response = get(query, jwt).await.unwrap();
            assert_eq!(response.status(), 400, "{query}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "INVALID_REQUEST", "{query}: {body}");
        }
    }
}
