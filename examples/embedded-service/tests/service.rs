//! Drives the axum service over HTTP against a fresh PostgreSQL database.

use billing_core::certificate::SigningKey;
use billing_core::domain::{Plan, PlanCatalog, PlanId};
use billing_core::licensing::LicensingConfig;
use billing_core::storage::any::{AnyStore, StoreLocation};
use billing_core::storage::Store;
use billing_core::stripe::WebhookSecrets;
use billing_core::{Billing, BillingConfig};
use serde_json::{json, Value};
use std::sync::Arc;

const SECRET: &str = "whsec_embedded";

async fn fresh_database() -> (String, String) {
    let admin_url = std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let name = format!("embedded_test_{}", uuid::Uuid::new_v4().simple());
    let (client, connection) =
        tokio_postgres::connect(&format!("{admin_url}/postgres"), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    (format!("{admin_url}/{name}"), name)
}

async fn drop_database(name: &str) {
    let admin_url = std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let (client, connection) =
        tokio_postgres::connect(&format!("{admin_url}/postgres"), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.unwrap();
}

#[tokio::test]
async fn the_embedded_routes_ingest_webhooks_and_check_licenses() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (url, name) = fresh_database().await;
    let store = AnyStore::open(&StoreLocation::Postgres(url), 2).await.unwrap();
    store.migrate().await.unwrap();
    let plan = Plan {
        id: PlanId("pro".into()),
        name: "Pro".into(),
        stripe_price_id: "price_pro".into(),
        max_devices: 1,
        amount: None,
        currency: None,
        interval: None,
        features: vec![],
    };
    let licensing = LicensingConfig::new(Arc::new(SigningKey::from_pkcs8(&SigningKey::generate_pkcs8()).unwrap()));
    let config = BillingConfig::new(PlanCatalog::new(vec![plan]).unwrap(), licensing)
        .with_webhook_secrets(WebhookSecrets::parse(SECRET));
    let billing = Billing::new(store, config);
    let billing_for_server = billing.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    // Serves until the test ends.
    tokio::spawn(async move { axum::serve(listener, embedded_service::router(billing_for_server)).await });
    let http = reqwest::Client::new();

    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let body = json!({
        "id": "evt_1", "type": "customer.subscription.created", "created": now,
        "data": { "object": {
            "id": "sub_1", "customer": "cus_1", "status": "active", "metadata": { "user_id": "u" },
            "items": { "data": [{ "id": "si_1", "price": { "id": "price_pro" },
                                  "current_period_start": now, "current_period_end": now + 2_592_000 }] }
        } }
    })
    .to_string();
    let signature = WebhookSecrets::parse(SECRET).unwrap().sign(body.as_bytes(), now);
    let post_hook = |signature: String| {
        http.post(format!("{base}/hooks/stripe")).header("Stripe-Signature", signature).body(body.clone()).send()
    };
    let first: Value = post_hook(signature.clone()).await.unwrap().json().await.unwrap();
    assert_eq!(first, json!({ "ok": true, "outcome": "processed" }));
    let again: Value = post_hook(signature).await.unwrap().json().await.unwrap();
    assert_eq!(again["outcome"], "duplicate");
    assert_eq!(post_hook(format!("t={now},v1=00")).await.unwrap().status(), 400);

    let key = billing.licenses("u").await.unwrap().remove(0).key;
    let check = |key: String| http.post(format!("{base}/v1/licenses/check")).json(&json!({ "key": key })).send();
    let valid: Value = check(key.expose().to_owned()).await.unwrap().json().await.unwrap();
    assert_eq!(valid, json!({ "ok": true, "code": "VALID", "plan": "pro" }));
    let unknown: Value = check("0000-0000-0000-0000-0000-0000-0000-0000".into()).await.unwrap().json().await.unwrap();
    assert_eq!(unknown["code"], "NOT_FOUND");
    drop_database(&name).await;
}
