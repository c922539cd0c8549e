//! Drives the axum service over HTTP against a fresh PostgreSQL database.

use billing_core::certificate::SigningKey;
use billing_core::domain::{Plan, PlanCatalog};
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

/// A migrated store on a fresh database, and the database's name.
async fn fresh_store() -> (AnyStore, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (url, name) = fresh_database().await;
    let store = AnyStore::open(&StoreLocation::Postgres(url), 2).await.unwrap();
    store.migrate().await.unwrap();
    (store, name)
}

/// The one plan the service sells.
fn plans() -> PlanCatalog {
    let plan = Plan::new("pro", "Pro", "price_pro", 1);
    PlanCatalog::new(vec![plan]).unwrap()
}

#[tokio::test]
async fn the_embedded_routes_ingest_webhooks_and_check_licenses() {
    let (store, name) = fresh_store().await;
    let licensing = LicensingConfig::new(Arc::new(SigningKey::from_pkcs8(&SigningKey::generate_pkcs8()).unwrap()));
    let config = BillingConfig::new(plans(), licensing).with_webhook_secrets(WebhookSecrets::parse(SECRET));
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

/// The engine's background work runs inside the embedding service: a
/// past-due subscription's license is suspended once its grace period has
/// run out, with no billing-server anywhere.
#[tokio::test]
async fn the_background_work_suspends_a_license_whose_grace_ran_out() {
    let (store, name) = fresh_store().await;
    // A short heartbeat window makes the sweeps frequent (a quarter of it).
    let licensing = LicensingConfig {
        heartbeat_window: time::Duration::seconds(2),
        ..LicensingConfig::new(Arc::new(SigningKey::from_pkcs8(&SigningKey::generate_pkcs8()).unwrap()))
    };
    let config = BillingConfig::new(plans(), licensing)
        .with_webhook_secrets(WebhookSecrets::parse(SECRET))
        .with_grace(time::Duration::days(3));
    let offset = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let clock_offset = offset.clone();
    let billing = Billing::new(store, config).with_clock(Arc::new(move || {
        time::OffsetDateTime::now_utc()
            + time::Duration::seconds(clock_offset.load(std::sync::atomic::Ordering::Relaxed))
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn({
        let billing = billing.clone();
        async move { axum::serve(listener, embedded_service::router(billing)).await }
    });
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let background = tokio::spawn({
        let billing = billing.clone();
        async move {
            billing
                .run_background(None, async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
        }
    });

    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let body = json!({
        "id": "evt_due", "type": "customer.subscription.updated", "created": now,
        "data": { "object": {
            "id": "sub_due", "customer": "cus_due", "status": "past_due", "metadata": { "user_id": "late" },
            "items": { "data": [{ "id": "si_1", "price": { "id": "price_pro" },
                                  "current_period_start": now - 86_400, "current_period_end": now + 2_592_000 }] }
        } }
    })
    .to_string();
    let signature = WebhookSecrets::parse(SECRET).unwrap().sign(body.as_bytes(), now);
    let http = reqwest::Client::new();
    let hook = http.post(format!("{base}/hooks/stripe")).header("Stripe-Signature", signature).body(body);
    let answer: Value = hook.send().await.unwrap().json().await.unwrap();
    assert_eq!(answer["outcome"], "processed", "{answer}");
    let key = billing.licenses("late").await.unwrap().remove(0).key;
    let check = || http.post(format!("{base}/v1/licenses/check")).json(&json!({ "key": key.expose() })).send();
    let in_grace: Value = check().await.unwrap().json().await.unwrap();
    assert_eq!(in_grace["ok"], true, "past due, within its grace: {in_grace}");

    offset.store(4 * 86_400, std::sync::atomic::Ordering::Relaxed);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let stored = billing.licenses("late").await.unwrap().remove(0);
        if stored.terms.status == billing_core::domain::LicenseStatus::Suspended {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the license was never suspended: {:?}", stored.terms);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let suspended: Value = check().await.unwrap().json().await.unwrap();
    assert_eq!((&suspended["ok"], &suspended["code"]), (&json!(false), &json!("SUSPENDED")), "{suspended}");

    stop.send(true).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), background)
        .await
        .expect("the background work returns once stopped")
        .unwrap();
    drop_database(&name).await;
}
