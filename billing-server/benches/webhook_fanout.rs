//! # `webhook_fanout`: webhooks to the vendor under the webhook-ingest load
//!
//! One run on a fresh store (`BENCH_STORE`: `postgres`, the default, a
//! database `billing_bench_<uuid>` dropped at the end; or `sqlite`, a file in
//! a temporary directory): `billing-server` in-process (as the integration
//! tests start it) with three webhook endpoints subscribed to `*`, each a
//! local HTTP receiver in this process that checks every message's
//! signature and answers 200. Signed Stripe events are posted by
//! `BENCH_CONCURRENCY` closed-loop tasks, per subscription in Stripe's order
//! (`customer.subscription.created`; `customer.subscription.updated` to
//! past due: `subscription.updated` and `license.updated` reach the
//! outbox), so every second event fans out to the three endpoints.
//!
//! Printed: events/s acknowledged, messages/s delivered (from the first
//! event posted to the last message received, and in the drain after the
//! last acknowledgement), and the loss check: every outbox event reached
//! every receiver, each message's signature verified, and the store holds
//! every message as delivered. No timing is asserted.
//!
//! ```text
//! cargo bench -p billing-server --bench webhook_fanout
//! BENCH_STORE=sqlite BENCH_EVENTS=4000 cargo bench -p billing-server --bench webhook_fanout
//! ```
//!
//! Knobs: `BENCH_STORE`, `BENCH_EVENTS` (8000, rounded to even),
//! `BENCH_CONCURRENCY` (16), `TEST_DATABASE_URL` (as for the tests).

use anyhow::{ensure, Context};
use billing_core::certificate::SigningKey;
use billing_core::domain::vendor_webhook::WebhookSecret;
use billing_core::domain::{Plan, PlanCatalog};
use billing_core::licensing::LicensingConfig;
use billing_core::storage::any::{AnyStore, StoreLocation};
use billing_core::storage::Store;
use billing_core::stripe::WebhookSecrets;
use billing_core::vendor_webhooks::VendorWebhookSettings;
use billing_core::{Billing, BillingConfig};
use billing_server::{AppState, ServerOptions};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const STRIPE_SECRET: &str = "whsec_bench_0123456789abcdef";
const PRICE: &str = "price_pro_monthly";
const RECEIVERS: usize = 3;

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run())
}

fn env_number(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => v.trim().parse().with_context(|| format!("{name} must be a whole number")),
    }
}

fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

async fn pg_admin(statement: &str) -> anyhow::Result<()> {
    let (client, connection) = tokio_postgres::connect(&format!("{}/postgres", admin_url()), tokio_postgres::NoTls)
        .await
        .context("connect to PostgreSQL")?;
    tokio::spawn(connection);
    client.batch_execute(statement).await?;
    Ok(())
}

/// What one receiver got: distinct message ids, requests, bad signatures.
struct Received {
    secret: Mutex<Option<WebhookSecret>>,
    ids: Mutex<HashSet<String>>,
    requests: AtomicUsize,
    bad_signatures: AtomicUsize,
    last_at: Mutex<Option<Instant>>,
}

async fn start_receiver(received: Arc<Received>) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let received = received.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let received = received.clone();
                    async move {
                        let header = |name: &str| {
                            request.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
                        };
                        let (id, timestamp, signature) =
                            (header("webhook-id"), header("webhook-timestamp"), header("webhook-signature"));
                        let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let expected = received
                            .secret
                            .lock()
                            .unwrap()
                            .as_ref()
                            .map(|secret| secret.sign(&id, timestamp.parse().unwrap_or_default(), &body));
                        if expected.as_deref() != Some(signature.as_str()) {
                            received.bad_signatures.fetch_add(1, Ordering::Relaxed);
                        }
                        received.requests.fetch_add(1, Ordering::Relaxed);
                        received.ids.lock().unwrap().insert(id);
                        *received.last_at.lock().unwrap() = Some(Instant::now());
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    Ok(addr)
}

fn subscription(n: usize, status: &str) -> Value {
    json!({
        "id": format!("sub_f{n}"), "object": "subscription", "customer": format!("cus_f{n}"), "status": status,
        "cancel_at_period_end": false, "cancel_at": null, "canceled_at": null, "ended_at": null,
        "trial_end": null, "metadata": { "user_id": format!("user_f{n}") }, "created": 1_764_000_000,
        "items": { "object": "list", "data": [{
            "id": format!("si_f{n}"), "object": "subscription_item", "price": { "id": PRICE, "object": "price" },
            "current_period_start": 1_764_000_000, "current_period_end": 1_766_592_000
        }]}
    })
}

/// Signed bodies, the two events of a subscription `lag` positions apart.
fn deliveries(events: usize, secrets: &WebhookSecrets) -> Vec<(Vec<u8>, String)> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let subscriptions = events / 2;
    let lag = 256.min(subscriptions);
    let mut order = Vec::with_capacity(events);
    for block in (0..subscriptions).step_by(lag.max(1)) {
        let end = (block + lag).min(subscriptions);
        order.extend((block..end).map(|n| (n, "customer.subscription.created", "active", now - 10)));
        order.extend((block..end).map(|n| (n, "customer.subscription.updated", "past_due", now)));
    }
    order
        .into_iter()
        .enumerate()
        .map(|(i, (n, kind, status, created))| {
            let event = json!({
                "id": format!("evt_f{i}"), "object": "event", "type": kind, "created": created,
                "api_version": "2025-03-31.basil", "livemode": false, "pending_webhooks": 1,
                "data": { "object": subscription(n, status) }
            });
            let body = serde_json::to_vec(&event).expect("events serialize");
            let signature = secrets.sign(&body, time::OffsetDateTime::now_utc().unix_timestamp());
            (body, signature)
        })
        .collect()
}

async fn run() -> anyhow::Result<()> {
    let events = env_number("BENCH_EVENTS", 8_000)?.div_ceil(2) * 2;
    let concurrency = env_number("BENCH_CONCURRENCY", 16)?;
    // The baseline first: the same load on a fresh store with no endpoint,
    // so that what fan-out costs ingestion shows beside it.
    for endpoints in [0, RECEIVERS] {
        on_fresh_store(|location| async move { measure(&location, events, concurrency, endpoints).await }).await?;
    }
    Ok(())
}

async fn on_fresh_store<F, Fut>(run: F) -> anyhow::Result<()>
where
    F: FnOnce(StoreLocation) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let sqlite = std::env::var("BENCH_STORE").as_deref() == Ok("sqlite");
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (location, database) = if sqlite {
        let dir = std::env::temp_dir().join(format!("billing_bench_{id}"));
        (StoreLocation::Sqlite(dir.join("billing.sqlite3")), None)
    } else {
        let name = format!("billing_bench_{id}");
        pg_admin(&format!("CREATE DATABASE {name}")).await?;
        (StoreLocation::Postgres(format!("{}/{name}", admin_url())), Some(name))
    };
    let outcome = run(location.clone()).await;
    match (&location, database) {
        (StoreLocation::Sqlite(path), _) => {
            let _ = std::fs::remove_dir_all(path.parent().expect("a directory of its own"));
        }
        (_, Some(name)) => pg_admin(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await?,
        _ => {}
    }
    outcome
}

async fn measure(location: &StoreLocation, events: usize, concurrency: usize, endpoints: usize) -> anyhow::Result<()> {
    let store = AnyStore::open(location, 4 * std::thread::available_parallelism().map_or(2, |n| n.get())).await?;
    store.migrate().await?;
    let plan = Plan {
        amount: Some(1900),
        currency: Some("usd".into()),
        interval: Some("month".into()),
        ..Plan::new("pro", "Pro", PRICE, 3)
    };
    let key = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8())?;
    let secrets = WebhookSecrets::parse(STRIPE_SECRET).context("a Stripe secret")?;
    let config = BillingConfig::new(PlanCatalog::new(vec![plan])?, LicensingConfig::new(Arc::new(key)))
        .with_webhook_secrets(Some(secrets.clone()))
        .with_vendor_webhooks(VendorWebhookSettings { allow_private: true, ..VendorWebhookSettings::default() });
    let billing = Billing::new(store, config);

    let mut receivers = Vec::new();
    for _ in 0..endpoints {
        let received = Arc::new(Received {
            secret: Mutex::new(None),
            ids: Mutex::new(HashSet::new()),
            requests: AtomicUsize::new(0),
            bad_signatures: AtomicUsize::new(0),
            last_at: Mutex::new(None),
        });
        let addr = start_receiver(received.clone()).await?;
        let created = billing.create_webhook_endpoint(&format!("http://{addr}/in"), &["*".to_owned()], None).await?;
        *received.secret.lock().unwrap() = Some(created.secret);
        receivers.push(received);
    }

    let state = AppState::new(billing.clone(), ServerOptions::default()).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/api/stripe/webhooks/handler", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(billing_server::serve(listener, Arc::new(state), async {
        let _ = stopped.await;
    }));

    let deliveries = Arc::new(deliveries(events, &secrets));
    let next = Arc::new(AtomicUsize::new(0));
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (deliveries, next, http, url) = (deliveries.clone(), next.clone(), http.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut failures = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((body, signature)) = deliveries.get(i) else { return failures };
                let sent = http.post(&url).header("Stripe-Signature", signature).body(body.clone()).send().await;
                if !sent.is_ok_and(|r| r.status() == 200) {
                    failures += 1;
                }
            }
        }));
    }
    let mut failures = 0;
    for task in tasks {
        failures += task.await?;
    }
    let acknowledged = started.elapsed();
    ensure!(failures == 0, "{failures} Stripe deliveries were not acknowledged");

    let outbox = billing.store().latest_outbox_id().await? as usize;
    let expected = outbox * endpoints;
    let deadline = Instant::now() + Duration::from_secs(300);
    let delivered = || receivers.iter().map(|r| r.ids.lock().unwrap().len()).sum::<usize>();
    let at_ack = delivered();
    while delivered() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last = receivers.iter().filter_map(|r| *r.last_at.lock().unwrap()).max().unwrap_or(started);
    let total = last - started;
    let drain = last.saturating_duration_since(started + acknowledged);
    let got = delivered();
    let requests: usize = receivers.iter().map(|r| r.requests.load(Ordering::Relaxed)).sum();
    let bad: usize = receivers.iter().map(|r| r.bad_signatures.load(Ordering::Relaxed)).sum();
    // Recorded as delivered too (the attempt rows trail the answers a little).
    let mut stored = 0;
    for endpoint in billing.webhook_endpoints().await? {
        let mut cursor = None;
        loop {
            let page = billing.webhook_deliveries(endpoint.id, 100, cursor.as_deref()).await?;
            stored += page.deliveries.iter().filter(|d| d.status.as_str() == "delivered").count();
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
    }
    let _ = stop.send(());

    let store_name = if matches!(location, StoreLocation::Sqlite(_)) { "sqlite" } else { "postgres" };
    if endpoints == 0 {
        println!("webhook_fanout ({store_name}): {events} Stripe events, concurrency {concurrency}");
        println!(
            "  baseline, no endpoint: {:.0} events/s acknowledged ({:.2} s); outbox events: {outbox}",
            events as f64 / acknowledged.as_secs_f64(),
            acknowledged.as_secs_f64()
        );
        return Ok(());
    }
    println!("  with {endpoints} endpoints subscribed to *:");
    println!(
        "  ingest: {:.0} events/s acknowledged ({:.2} s); outbox events: {outbox}",
        events as f64 / acknowledged.as_secs_f64(),
        acknowledged.as_secs_f64()
    );
    println!(
        "  fan-out: {got}/{expected} messages delivered in {:.2} s = {:.0} messages/s overall; \
         {at_ack} by the last acknowledgement, the rest in a {:.2} s drain",
        total.as_secs_f64(),
        got as f64 / total.as_secs_f64(),
        drain.as_secs_f64()
    );
    println!(
        "  loss check: {} (missing {}, duplicate sends {}, bad signatures {bad}, stored as delivered {stored})",
        if got == expected && bad == 0 { "none lost" } else { "LOSS" },
        expected - got.min(expected),
        requests - got,
    );
    ensure!(got == expected && bad == 0, "messages were lost or mis-signed");
    Ok(())
}
