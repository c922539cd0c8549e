//! # `action_overhead`: the server's own cost on a dashboard action
//!
//! `POST /api/subscriptions/cancel` and `/reactivate`, alternately, on
//! `billing-server` started in-process on a fresh store, with "Stripe" a
//! trivial hyper server on loopback that answers at once (it flips
//! `cancel_at_period_end` as asked). Each action validates, calls Stripe with
//! an idempotency key, and writes subscription + audit row + outbox event in
//! one transaction. Printed beside it, measured by the same client in the
//! same run: a direct round trip to the Stripe stub (what Stripe costs here)
//! and a trivial hyper handler (what HTTP costs here). Overhead = action −
//! stub round trip. Target: action p99 < 10 ms. No timing is asserted.
//!
//! ```text
//! cargo bench -p billing-server --bench action_overhead
//! BENCH_STORE=sqlite cargo bench -p billing-server --bench action_overhead
//! ```
//!
//! Needs PostgreSQL at `TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432`, trust auth) unless `BENCH_STORE=sqlite`.
//! `BENCH_ACTIONS` (default 2000) sets how many actions are timed.

use billing_core::certificate::SigningKey;
use billing_core::domain::{Plan, PlanCatalog};
use billing_core::licensing::LicensingConfig;
use billing_core::storage::any::{AnyStore, StoreLocation};
use billing_core::storage::Store;
use billing_core::stripe::{StripeClient, WebhookSecrets};
use billing_core::{Billing, BillingConfig};
use billing_server::{AppState, ServerOptions};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WEBHOOK_SECRET: &str = "whsec_bench";
const JWT_SECRET: &str = "bench-jwt-secret";

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn subscription(cancel_at_period_end: bool) -> Value {
    json!({
        "id": "sub_bench", "object": "subscription", "customer": "cus_bench", "status": "active",
        "cancel_at_period_end": cancel_at_period_end, "metadata": { "user_id": "bench-user" },
        "items": { "data": [{ "id": "si_bench", "price": { "id": "price_pro" },
                              "current_period_start": now() - 86_400, "current_period_end": now() + 30 * 86_400 }] }
    })
}

/// Serves `handler` on a loopback port; returns its base URL.
async fn serve_fn<F>(handler: F) -> String
where
    F: Fn(Bytes) -> Bytes + Send + Sync + Clone + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = stream.set_nodelay(true);
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let handler = handler.clone();
                    async move {
                        let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        Ok::<_, Infallible>(
                            hyper::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(handler(body)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    base
}

struct BenchStore {
    location: StoreLocation,
    cleanup: Box<dyn FnOnce()>,
}

async fn fresh_store() -> BenchStore {
    let id = uuid::Uuid::new_v4().simple().to_string();
    if std::env::var("BENCH_STORE").as_deref() == Ok("sqlite") {
        let dir = std::env::temp_dir().join(format!("billing_bench_{id}"));
        let location = StoreLocation::Sqlite(dir.join("billing.sqlite3"));
        return BenchStore { location, cleanup: Box::new(move || drop(std::fs::remove_dir_all(dir))) };
    }
    let admin = std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let name = format!("billing_bench_{id}");
    let (client, connection) =
        tokio_postgres::connect(&format!("{admin}/postgres"), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    let location = StoreLocation::Postgres(format!("{admin}/{name}"));
    let cleanup = Box::new(move || {
        let _ = std::process::Command::new("psql")
            .args([&format!("{admin}/postgres"), "-qc", &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")])
            .status();
    });
    BenchStore { location, cleanup }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1e3
}

async fn time_requests(label: &str, count: usize, mut send: impl AsyncFnMut(usize) -> u16) -> (String, Vec<Duration>) {
    let mut latencies = Vec::with_capacity(count);
    for i in 0..count {
        let started = Instant::now();
        let status = send(i).await;
        latencies.push(started.elapsed());
        assert_eq!(status, 200, "{label} request {i} failed");
    }
    latencies.sort();
    (label.to_owned(), latencies)
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let actions: usize = std::env::var("BENCH_ACTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);

    let stripe_base = serve_fn(|form: Bytes| {
        let cancel = String::from_utf8_lossy(&form).contains("cancel_at_period_end=true");
        Bytes::from(subscription(cancel).to_string())
    })
    .await;
    let trivial_base = serve_fn(|_| Bytes::from_static(br#"{"ok":true}"#)).await;

    let store_handle = fresh_store().await;
    let store = AnyStore::open(&store_handle.location, 16).await.unwrap();
    store.migrate().await.unwrap();
    let plan = Plan::new("pro", "Pro", "price_pro", 3);
    let licensing = LicensingConfig::new(Arc::new(SigningKey::from_pkcs8(&SigningKey::generate_pkcs8()).unwrap()));
    let config = BillingConfig::new(PlanCatalog::new(vec![plan]).unwrap(), licensing)
        .with_webhook_secrets(WebhookSecrets::parse(WEBHOOK_SECRET))
        .with_stripe(Some(StripeClient::new("sk_bench", stripe_base.clone())));
    let billing = Billing::new(store, config);
    let options = ServerOptions { jwt_secret: Some(JWT_SECRET.as_bytes().to_vec()), ..ServerOptions::default() };
    let state = Arc::new(AppState::new(billing, options).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(billing_server::serve(listener, state, std::future::pending()));

    let http = reqwest::Client::new();
    // The subscription the actions work on, delivered as Stripe would.
    let event = json!({ "id": "evt_bench", "type": "customer.subscription.created", "created": now(),
                        "data": { "object": subscription(false) } })
    .to_string();
    let signature = WebhookSecrets::parse(WEBHOOK_SECRET).unwrap().sign(event.as_bytes(), now());
    let delivered = http
        .post(format!("{server}/api/stripe/webhooks/handler"))
        .header("Stripe-Signature", signature)
        .body(event)
        .send()
        .await
        .unwrap();
    assert_eq!(delivered.status(), 200);
    let jwt = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "sub": "bench-user", "exp": now() + 3600 }),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();

    let action = async |i: usize| {
        let route = if i.is_multiple_of(2) { "cancel" } else { "reactivate" };
        let response = http
            .post(format!("{server}/api/subscriptions/{route}"))
            .bearer_auth(&jwt)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let _ = response.bytes().await;
        status
    };
    let stub = async |_| {
        let response = http
            .post(format!("{stripe_base}/v1/subscriptions/sub_bench"))
            .form(&[("cancel_at_period_end", "true")])
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let _ = response.bytes().await;
        status
    };
    let trivial = async |_| {
        let response = http.get(format!("{trivial_base}/")).send().await.unwrap();
        let status = response.status().as_u16();
        let _ = response.bytes().await;
        status
    };

    // Warm-up: connections, prepared statements, caches.
    time_requests("warm-up", 200, action).await;
    time_requests("warm-up", 200, stub).await;
    let rows = [
        time_requests("trivial hyper handler", actions, trivial).await,
        time_requests("Stripe stub round trip", actions, stub).await,
        time_requests("dashboard action (cancel/reactivate)", actions, action).await,
    ];

    let backend =
        if std::env::var("BENCH_STORE").as_deref() == Ok("sqlite") { "embedded SQLite" } else { "PostgreSQL" };
    println!("\naction_overhead · store: {backend} · {actions} sequential requests each · one keep-alive client");
    println!("{:<40} {:>9} {:>9} {:>9} {:>9}", "", "p50 ms", "p99 ms", "max ms", "req/s");
    for (label, latencies) in &rows {
        let total: Duration = latencies.iter().sum();
        println!(
            "{label:<40} {:>9.3} {:>9.3} {:>9.3} {:>9.0}",
            percentile(latencies, 0.50),
            percentile(latencies, 0.99),
            percentile(latencies, 1.0),
            latencies.len() as f64 / total.as_secs_f64()
        );
    }
    let overhead_p50 = percentile(&rows[2].1, 0.50) - percentile(&rows[1].1, 0.50);
    let overhead_p99 = percentile(&rows[2].1, 0.99) - percentile(&rows[1].1, 0.99);
    println!("server overhead (action − stub): p50 {overhead_p50:.3} ms, p99 {overhead_p99:.3} ms · target: action p99 < 10 ms");
    (store_handle.cleanup)();
}
