//! Webhooks to the vendor's systems: every message is verified by the
//! `standardwebhooks` npm package (not our code) in a Node receiver
//! (`webhook_receiver/receiver.js`), which reports each request it got.

use crate::helpers::*;
use billing_core::domain::vendor_webhook::RetrySchedule;
use billing_core::domain::Topic;
use billing_core::storage::any::AnyStore;
use billing_core::storage::license_work::{Changeset, DeviceActivation, LicenseKeys};
use billing_core::storage::{NewWebhookEndpoint, OutboxMessage, Store, WebhookDelivery, WebhookMessageStatus};
use billing_core::vendor_webhooks::{EndpointError, VendorWebhookSettings};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn receiver_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/webhook_receiver")
}

/// `npm ci` once per run unless `scripts/test` already installed it.
fn install_receiver() {
    static INSTALLED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    INSTALLED.get_or_init(|| {
        if receiver_dir().join("node_modules/standardwebhooks/package.json").is_file() {
            return;
        }
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(receiver_dir())
            .status()
            .expect("npm runs");
        assert!(status.success(), "npm ci of the webhook receiver failed");
    });
}

/// How the receiver answers.
#[derive(Clone, Copy)]
enum Answer {
    Ok,
    FailFirst(u32),
    Never,
}

/// A running Node receiver and what it has reported so far.
struct Receiver {
    child: std::process::Child,
    seen: Arc<Mutex<Vec<Value>>>,
    count: tokio::sync::watch::Receiver<usize>,
}

impl Receiver {
    async fn start(secret: &str, port: u16, answer: Answer) -> Self {
        install_receiver();
        let mut command = std::process::Command::new("node");
        command.arg("receiver.js").args(["--secret", secret, "--port", &port.to_string()]);
        match answer {
            Answer::Ok => {}
            Answer::FailFirst(n) => {
                command.args(["--fail", &n.to_string()]);
            }
            Answer::Never => {
                command.arg("--hang");
            }
        }
        let mut child =
            command.current_dir(receiver_dir()).stdout(std::process::Stdio::piped()).spawn().expect("node runs");
        let stdout = child.stdout.take().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (count_tx, count) = tokio::sync::watch::channel(0);
        let (port_tx, port_rx) = tokio::sync::oneshot::channel();
        let lines = seen.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut port_tx = Some(port_tx);
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let entry: Value = serde_json::from_str(&line).expect("the receiver prints JSON lines");
                if let Some(port) = entry["listening"].as_u64() {
                    if let Some(tx) = port_tx.take() {
                        let _ = tx.send(port as u16);
                    }
                    continue;
                }
                let mut lines = lines.lock().unwrap();
                lines.push(entry);
                count_tx.send_replace(lines.len());
            }
        });
        let listening = tokio::time::timeout(Duration::from_secs(20), port_rx)
            .await
            .expect("the receiver starts listening")
            .unwrap();
        assert_eq!(listening, port);
        Self { child, seen, count }
    }

    /// Waits until the receiver has reported `n` requests.
    async fn wait_for(&mut self, n: usize, within: Duration) -> Vec<Value> {
        let reached = tokio::time::timeout(within, self.count.wait_for(|c| *c >= n)).await.map(drop);
        let seen = self.seen();
        assert!(reached.is_ok(), "expected {n} requests within {within:?}, got {}: {seen:?}", seen.len());
        seen
    }

    fn seen(&self) -> Vec<Value> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on (yet).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn settings(schedule: &[u64]) -> VendorWebhookSettings {
    VendorWebhookSettings {
        retry_schedule: RetrySchedule::new(schedule.iter().copied().map(Duration::from_secs).collect()),
        allow_private: true,
        poll_interval: Duration::from_millis(200),
        ..VendorWebhookSettings::default()
    }
}

async fn spawn_hooks_app(schedule: &[u64]) -> TestApp {
    spawn_app_with(Options { vendor_webhooks: Some(settings(schedule)), ..Options::default() }).await
}

/// Registers an endpoint through the use case; returns (id, secret).
async fn create_endpoint(app: &TestApp, url: &str, events: &[&str]) -> (uuid::Uuid, String) {
    let events: Vec<String> = events.iter().map(|e| e.to_string()).collect();
    let created = app.billing.create_webhook_endpoint(url, &events, Some("test receiver")).await.unwrap();
    (created.endpoint.id, created.secret.expose())
}

/// Stripe events for a subscription that starts, then falls past due: the
/// first issues a license (`license.created`), the second changes the
/// subscription and its license's terms (a grace period), so
/// `subscription.updated` and `license.updated` reach the outbox too.
fn lifecycle(n: usize) -> [Value; 2] {
    let (id, customer) = (format!("sub_v{n}"), format!("cus_v{n}"));
    let started = subscription(&id, &customer, "active", PRICE_PRO, Some("u_vendor"));
    let past_due = subscription(&id, &customer, "past_due", PRICE_PRO, Some("u_vendor"));
    [
        event(&format!("evt_v{n}_a"), "customer.subscription.created", now() - 10, started),
        event(&format!("evt_v{n}_b"), "customer.subscription.updated", now(), past_due),
    ]
}

async fn start_subscription(app: &TestApp, n: usize) {
    for event in lifecycle(n) {
        assert_eq!(app.deliver(&event).await, "processed");
    }
}

async fn deliveries(app: &TestApp, endpoint: uuid::Uuid) -> Vec<WebhookDelivery> {
    app.billing.webhook_deliveries(endpoint, 100, None).await.unwrap().deliveries
}

/// Waits until the endpoint's messages satisfy `done`.
async fn wait_for_deliveries(
    app: &TestApp,
    endpoint: uuid::Uuid,
    within: Duration,
    done: impl Fn(&[WebhookDelivery]) -> bool,
) -> Vec<WebhookDelivery> {
    let deadline = Instant::now() + within;
    let mut changes = app.billing.store().watch_outbox().await.unwrap();
    loop {
        let now = deliveries(app, endpoint).await;
        if done(&now) {
            return now;
        }
        assert!(Instant::now() < deadline, "deliveries never reached the expected state: {now:#?}");
        // Attempts write no outbox row: re-read on a short tick as well.
        let _ = tokio::time::timeout(Duration::from_millis(50), changes.recv()).await;
    }
}

/// The outbox as (type, data) pairs: what the vendor must hear.
async fn outbox(app: &TestApp) -> BTreeSet<(String, String)> {
    let events = app.billing.store().outbox_after(0, None, 1_000).await.unwrap();
    events.into_iter().map(|e| (e.topic, e.payload.to_string())).collect()
}

fn as_pairs(seen: &[Value]) -> BTreeSet<(String, String)> {
    seen.iter().map(|r| (r["payload"]["type"].as_str().unwrap().to_owned(), r["payload"]["data"].to_string())).collect()
}

#[tokio::test]
async fn every_change_reaches_the_vendor_signed_and_verified_by_a_standard_webhooks_library() {
    let app = spawn_hooks_app(&[1]).await;
    let port = free_port();
    let (endpoint, secret) = create_endpoint(&app, &format!("http://127.0.0.1:{port}/hooks"), &["*"]).await;
    assert!(secret.starts_with("whsec_"));
    let mut receiver = Receiver::start(&secret, port, Answer::Ok).await;

    start_subscription(&app, 1).await;
    let expected = outbox(&app).await;
    let types: BTreeSet<&str> = expected.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(types, BTreeSet::from(["license.created", "license.updated", "subscription.updated"]), "{expected:?}");
    let seen = receiver.wait_for(expected.len(), Duration::from_secs(20)).await;

    for request in &seen {
        assert_eq!(request["verified"], true, "the library refused it: {request}");
        assert_eq!((request["method"].as_str(), request["path"].as_str()), (Some("POST"), Some("/hooks")));
        assert_eq!(request["content_type"], "application/json");
        assert!(request["id"].as_str().unwrap().starts_with("msg_"));
        let timestamp: i64 = request["timestamp"].as_str().unwrap().parse().unwrap();
        assert!((timestamp - now()).abs() < 60, "webhook-timestamp is the attempt's time");
        let event_time = request["payload"]["timestamp"].as_str().unwrap();
        time::OffsetDateTime::parse(event_time, &time::format_description::well_known::Rfc3339)
            .expect("the body's timestamp is RFC 3339");
    }
    assert_eq!(as_pairs(&seen), expected, "one message per outbox event, with its data");

    let recorded = wait_for_deliveries(&app, endpoint, Duration::from_secs(10), |d| {
        d.len() == expected.len() && d.iter().all(|m| m.status == WebhookMessageStatus::Delivered)
    })
    .await;
    for message in &recorded {
        assert_eq!(message.attempts, 1);
        assert_eq!(message.attempt_log.len(), 1);
        assert_eq!(message.attempt_log[0].status_code, Some(200));
        assert_eq!((message.attempt_log[0].error.as_ref(), message.attempt_log[0].next_attempt_at), (None, None));
        assert!(seen.iter().any(|r| r["id"] == message.id.as_str()));
    }
}

#[tokio::test]
async fn a_receiver_failing_twice_gets_the_message_three_times_with_one_webhook_id() {
    let app = spawn_hooks_app(&[1, 1, 1]).await;
    let port = free_port();
    let (endpoint, secret) =
        create_endpoint(&app, &format!("http://127.0.0.1:{port}/"), &["subscription.updated"]).await;
    let mut receiver = Receiver::start(&secret, port, Answer::FailFirst(2)).await;

    start_subscription(&app, 1).await;
    let seen = receiver.wait_for(3, Duration::from_secs(20)).await;
    let ids: BTreeSet<&str> = seen.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1, "every attempt carries the same webhook-id: {seen:?}");
    let answered: Vec<i64> = seen.iter().map(|r| r["answered"].as_i64().unwrap()).collect();
    assert_eq!(answered, [500, 500, 200]);
    assert!(seen.iter().all(|r| r["verified"] == true && r["payload"]["type"] == "subscription.updated"));
    let bodies: BTreeSet<String> = seen.iter().map(|r| r["payload"].to_string()).collect();
    assert_eq!(bodies.len(), 1, "retries send the same body");

    let recorded = wait_for_deliveries(&app, endpoint, Duration::from_secs(10), |d| {
        d.first().is_some_and(|m| m.status == WebhookMessageStatus::Delivered)
    })
    .await;
    assert_eq!(recorded.len(), 1, "only the subscribed event type");
    let message = &recorded[0];
    assert_eq!((message.id.as_str(), message.attempts), (*ids.first().unwrap(), 3));
    let codes: Vec<Option<u16>> = message.attempt_log.iter().map(|a| a.status_code).collect();
    assert_eq!(codes, [Some(500), Some(500), Some(200)]);
    let log = &message.attempt_log;
    assert!(log[0].next_attempt_at.is_some() && log[1].next_attempt_at.is_some() && log[2].next_attempt_at.is_none());
    assert_eq!(log[0].error.as_deref(), Some("the receiver answered 500"));
    // The schedule's 1 s between attempts was kept.
    assert!(log[1].attempted_at - log[0].attempted_at >= time::Duration::seconds(1));
    assert!(message.delivered_at.is_some());
}

#[tokio::test]
async fn a_receiver_that_never_answers_does_not_delay_two_others() {
    let app = spawn_hooks_app(&[60]).await;
    let hanging_port = free_port();
    let (hanging, hanging_secret) = create_endpoint(&app, &format!("http://127.0.0.1:{hanging_port}/"), &["*"]).await;
    let _stuck = Receiver::start(&hanging_secret, hanging_port, Answer::Never).await;
    let mut others = Vec::new();
    for _ in 0..2 {
        let port = free_port();
        let (_, secret) = create_endpoint(&app, &format!("http://127.0.0.1:{port}/"), &["*"]).await;
        others.push(Receiver::start(&secret, port, Answer::Ok).await);
    }

    // More messages than the hanging endpoint's batch, so it holds some in
    // flight and has more waiting behind them.
    let started = Instant::now();
    for n in 0..6 {
        start_subscription(&app, n).await;
    }
    let expected = outbox(&app).await;
    assert_eq!(expected.len(), 18, "three events per lifecycle: {expected:?}");
    for receiver in &mut others {
        let seen = receiver.wait_for(expected.len(), Duration::from_secs(8)).await;
        assert_eq!(as_pairs(&seen), expected);
    }
    assert!(
        started.elapsed() < VendorWebhookSettings::default().attempt_timeout,
        "the others were served before the hanging receiver's first attempt timed out ({:?})",
        started.elapsed()
    );
    let stuck = deliveries(&app, hanging).await;
    assert_eq!(stuck.len(), expected.len());
    assert!(stuck.iter().all(|m| m.status == WebhookMessageStatus::Pending && m.attempts == 0), "{stuck:#?}");
}

#[tokio::test]
async fn nothing_is_sent_for_a_rolled_back_change() {
    let app = spawn_hooks_app(&[1]).await;
    let port = free_port();
    let (endpoint, secret) = create_endpoint(&app, &format!("http://127.0.0.1:{port}/"), &["license.updated"]).await;
    let mut receiver = Receiver::start(&secret, port, Answer::Ok).await;
    let message = |marker: &str| OutboxMessage {
        license_id: None,
        topic: Topic::LicenseUpdated,
        payload: json!({ "marker": marker }),
    };

    // A change whose unit of work fails (a device of no license) is rolled
    // back with its outbox row.
    let ghost = billing_core::domain::Device {
        id: uuid::Uuid::new_v4(),
        license_id: uuid::Uuid::new_v4(),
        fingerprint: "fp-ghost".into(),
        name: None,
        platform: None,
        app_version: None,
        status: billing_core::domain::DeviceStatus::Active,
        activated_at: time::OffsetDateTime::now_utc(),
        last_heartbeat_at: time::OffsetDateTime::now_utc(),
        deactivated_at: None,
        air_gapped: false,
    };
    let rolled_back = Changeset {
        outbox: vec![message("rolled back")],
        new_devices: vec![DeviceActivation { device: ghost, token_hash: b"ghost".to_vec(), heartbeat_deadline: None }],
        ..Changeset::default()
    };
    let store = app.billing.store();
    store.license_work(LicenseKeys::Nothing, move |_| (rolled_back, ())).await.expect_err("refused");
    let committed = Changeset { outbox: vec![message("committed")], ..Changeset::default() };
    store.license_work(LicenseKeys::Nothing, move |_| (committed, ())).await.unwrap();

    let seen = receiver.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(seen[0]["payload"]["data"], json!({ "marker": "committed" }));
    let recorded = wait_for_deliveries(&app, endpoint, Duration::from_secs(10), |d| {
        d.iter().all(|m| m.status == WebhookMessageStatus::Delivered)
    })
    .await;
    assert_eq!(recorded.len(), 1, "the rolled-back change wrote no message");
    // Nothing more arrives: the committed message was the last one due.
    assert_eq!(app.billing.store().next_webhook_due().await.unwrap(), None);
    assert_eq!(receiver.seen().len(), 1);
}

#[tokio::test]
async fn private_targets_are_refused_without_the_flag_on_create_and_at_send_time() {
    let app = spawn_app_with(Options {
        vendor_webhooks: Some(VendorWebhookSettings { allow_private: false, ..settings(&[60]) }),
        ..Options::default()
    })
    .await;
    let events = vec!["*".to_owned()];
    for url in [
        "https://127.0.0.1/hooks",
        "https://localhost:8443/hooks",
        "https://[::1]/",
        "https://10.0.0.7/",
        "https://192.168.1.20/",
        "https://169.254.169.254/latest/meta-data",
        "https://100.64.0.1/",
        "https://[fd00::1]/",
        "https://[::ffff:127.0.0.1]/",
        "https://0.0.0.0/",
    ] {
        let refused = app.billing.create_webhook_endpoint(url, &events, None).await;
        assert!(matches!(refused, Err(EndpointError::ForbiddenTarget(_))), "{url}: {refused:?}");
    }
    let plain = app.billing.create_webhook_endpoint("http://93.184.216.34/", &events, None).await;
    assert!(matches!(plain, Err(EndpointError::InvalidUrl("must use https"))), "{plain:?}");
    assert!(app.billing.webhook_endpoints().await.unwrap().is_empty(), "nothing was stored");

    // Endpoints stored while private targets were allowed (or whose name
    // resolved elsewhere then: DNS rebinding) are checked again when sending.
    let port = free_port();
    let secret = billing_core::domain::vendor_webhook::WebhookSecret::generate().expose();
    let store_endpoint = |url: String| {
        let (store, events, secret) = (app.billing.store().clone(), events.clone(), secret.clone());
        async move {
            let endpoint = NewWebhookEndpoint {
                id: uuid::Uuid::new_v4(),
                url: &url,
                events: &events,
                description: None,
                secret: &secret,
            };
            store.create_webhook_endpoint(&endpoint).await.unwrap().id
        }
    };
    let plain_http = store_endpoint(format!("http://127.0.0.1:{port}/")).await;
    let loopback = store_endpoint(format!("https://localhost:{port}/")).await;
    let receiver = Receiver::start(&secret, port, Answer::Ok).await;
    start_subscription(&app, 1).await;
    for (endpoint, error) in [
        (plain_http, "the endpoint url must use https"),
        (loopback, "the endpoint url points to a loopback address; webhooks are only sent to public addresses"),
    ] {
        let recorded = wait_for_deliveries(&app, endpoint, Duration::from_secs(10), |d| {
            !d.is_empty() && d.iter().all(|m| m.attempts == 1)
        })
        .await;
        for message in &recorded {
            let attempt = &message.attempt_log[0];
            // Refused before connecting: not "could not connect", no status.
            assert_eq!((attempt.status_code, attempt.error.as_deref()), (None, Some(error)));
        }
    }
    assert!(receiver.seen().is_empty(), "nothing reached the private address");
}

#[tokio::test]
async fn unknown_event_types_and_bad_urls_are_refused() {
    let app = spawn_hooks_app(&[1]).await;
    let create = |url: &'static str, events: Vec<&'static str>| {
        let events: Vec<String> = events.into_iter().map(str::to_owned).collect();
        let billing = app.billing.clone();
        async move { billing.create_webhook_endpoint(url, &events, None).await }
    };
    assert!(matches!(create("https://example.com/", vec!["license.deleted"]).await, Err(EndpointError::Events(_))));
    assert!(matches!(create("https://example.com/", vec![]).await, Err(EndpointError::Events(_))));
    assert!(matches!(create("https://example.com/", vec!["*", "device.dead"]).await, Err(EndpointError::Events(_))));
    assert!(matches!(create("not a url", vec!["*"]).await, Err(EndpointError::InvalidUrl(_))));
    assert!(matches!(create("https://u:p@example.com/", vec!["*"]).await, Err(EndpointError::InvalidUrl(_))));
    assert!(app.billing.webhook_endpoints().await.unwrap().is_empty());
    let created = create("http://127.0.0.1:9/", vec!["license.created", "device.dead"]).await.unwrap();
    assert_eq!(created.endpoint.events, ["license.created", "device.dead"]);
}

#[tokio::test]
async fn a_failed_message_can_be_retried_and_a_deleted_endpoint_gets_nothing_more() {
    let app = spawn_hooks_app(&[]).await;
    let port = free_port();
    let (endpoint, secret) =
        create_endpoint(&app, &format!("http://127.0.0.1:{port}/"), &["subscription.updated"]).await;
    let mut receiver = Receiver::start(&secret, port, Answer::FailFirst(1)).await;
    start_subscription(&app, 1).await;
    let failed = wait_for_deliveries(&app, endpoint, Duration::from_secs(10), |d| {
        d.first().is_some_and(|m| m.status == WebhookMessageStatus::Failed)
    })
    .await;
    assert_eq!((failed[0].attempts, failed[0].next_attempt_at), (1, None), "no retries in an empty schedule");

    app.billing.retry_webhook_delivery(&failed[0].id).await.unwrap();
    let seen = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(seen[0]["id"], seen[1]["id"]);
    wait_for_deliveries(&app, endpoint, Duration::from_secs(10), |d| {
        d.first().is_some_and(|m| m.status == WebhookMessageStatus::Delivered && m.attempts == 2)
    })
    .await;
    let again = app.billing.retry_webhook_delivery(&failed[0].id).await;
    assert!(matches!(again, Err(EndpointError::AlreadyDelivered)), "{again:?}");
    let unknown = app.billing.retry_webhook_delivery("msg_unknown").await;
    assert!(matches!(unknown, Err(EndpointError::NotFound)), "{unknown:?}");

    app.billing.delete_webhook_endpoint(endpoint).await.unwrap();
    assert!(app.billing.webhook_endpoints().await.unwrap().is_empty());
    start_subscription(&app, 2).await;
    assert_eq!(app.billing.store().next_webhook_due().await.unwrap(), None, "no message for a deleted endpoint");
    assert!(matches!(app.billing.delete_webhook_endpoint(endpoint).await, Err(EndpointError::NotFound)));
    assert!(matches!(app.billing.webhook_deliveries(endpoint, 10, None).await, Err(EndpointError::NotFound)));
    assert_eq!(receiver.seen().len(), 2);
}

#[tokio::test]
async fn deliveries_are_paged_newest_first_with_a_cursor() {
    let app = spawn_hooks_app(&[3600]).await;
    // Nobody listens: every message stays pending after one attempt.
    let (endpoint, _) = create_endpoint(&app, &format!("http://127.0.0.1:{}/", free_port()), &["*"]).await;
    for n in 0..3 {
        start_subscription(&app, n).await;
    }
    let total = outbox(&app).await.len();
    assert_eq!(total, 9);
    let all = deliveries(&app, endpoint).await;
    assert_eq!(all.len(), total);
    let mut walked = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = app.billing.webhook_deliveries(endpoint, 2, cursor.as_deref()).await.unwrap();
        assert!(page.deliveries.len() <= 2);
        walked.extend(page.deliveries.into_iter().map(|d| d.id));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(walked, all.iter().map(|d| d.id.clone()).collect::<Vec<_>>(), "each once, newest first");
    assert!(all.windows(2).all(|w| w[0].created_at >= w[1].created_at));
    let bad = app.billing.webhook_deliveries(endpoint, 2, Some("not-a-cursor")).await;
    assert!(matches!(bad, Err(EndpointError::BadCursor)));
}

/// The server binary, for the `kill -9` test.
struct ServerProcess {
    child: std::process::Child,
    addr: String,
}

impl ServerProcess {
    async fn start(store: &TestStore, data_dir: &std::path::Path) -> Self {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_billing-server"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", store.url())
            .env("BILLING_DATA_DIR", data_dir)
            .env("BILLING_ADDR", "127.0.0.1:0")
            .env("BILLING_LOG_FORMAT", "json")
            .env("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
            .env("BILLING_WEBHOOK_ALLOW_PRIVATE", "true")
            .env("BILLING_WEBHOOK_RETRY_SCHEDULE", "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let Ok(entry) = serde_json::from_str::<Value>(&line) else { continue };
                if entry["fields"]["message"] == "billing-server listening" {
                    if let (Some(tx), Some(addr)) = (tx.take(), entry["fields"]["addr"].as_str()) {
                        let _ = tx.send(addr.to_owned());
                    }
                }
            }
        });
        let addr = tokio::time::timeout(Duration::from_secs(30), rx).await.expect("the server starts").unwrap();
        Self { child, addr }
    }

    async fn deliver(&self, event: &Value) {
        let body = serde_json::to_vec(event).unwrap();
        let response = reqwest::Client::new()
            .post(format!("http://{}/api/stripe/webhooks/handler", self.addr))
            .header("Stripe-Signature", sign(&body))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    fn kill_9(mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test]
async fn a_receiver_down_across_a_kill_9_of_the_server_gets_every_message_after_the_restart() {
    let store = TestStore::create().await;
    let data_dir = std::env::temp_dir().join(format!("billing-hooks-kill9-{}", uuid::Uuid::new_v4()));
    let port = free_port();
    let secret = {
        let handle = AnyStore::open(&store.location, 2).await.unwrap();
        handle.migrate().await.unwrap();
        let billing = billing_core::Billing::new(
            handle,
            billing_core::BillingConfig::new(plans(), billing_core::licensing::LicensingConfig::new(signing_key()))
                .with_vendor_webhooks(settings(&[1])),
        );
        let created = billing
            .create_webhook_endpoint(&format!("http://127.0.0.1:{port}/"), &["*".to_owned()], None)
            .await
            .unwrap();
        created.secret.expose()
    };

    let server = ServerProcess::start(&store, &data_dir).await;
    for n in 0..5 {
        for event in lifecycle(n) {
            server.deliver(&event).await;
        }
    }
    let db = TestDb::open(&store.location).await;
    // Attempts are failing (nothing listens) while the server dies.
    let tried = Instant::now();
    while db.int("SELECT count(*) FROM webhook_attempts").await == 0 {
        assert!(tried.elapsed() < Duration::from_secs(10), "the server never tried to deliver");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.kill_9();
    let expected = db.int("SELECT count(*) FROM outbox_events").await as usize;
    assert_eq!(expected, 15, "three events per lifecycle");
    assert_eq!(db.int("SELECT count(*) FROM webhook_messages").await as usize, expected);
    assert_eq!(db.int("SELECT count(*) FROM webhook_messages WHERE status = 'delivered'").await, 0);

    let mut receiver = Receiver::start(&secret, port, Answer::Ok).await;
    let server = ServerProcess::start(&store, &data_dir).await;
    // A message claimed when the server died waits out its lease (the
    // attempt timeout and a margin) before it is sent again.
    let seen = receiver.wait_for(expected, Duration::from_secs(40)).await;
    assert!(seen.iter().all(|r| r["verified"] == true));
    let ids: BTreeSet<&str> = seen.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), expected, "every message, each once");
    let delivered = Instant::now();
    loop {
        let count = db.int("SELECT count(*) FROM webhook_messages WHERE status = 'delivered'").await as usize;
        if count == expected {
            break;
        }
        assert!(delivered.elapsed() < Duration::from_secs(10), "{count} of {expected} recorded as delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(server);
    let _ = std::fs::remove_dir_all(data_dir);
}

#[tokio::test]
async fn the_admin_routes_create_list_page_retry_and_delete_endpoints() {
    let app = spawn_hooks_app(&[]).await;
    let token = app.admin_token(&["webhooks:write"]).await;
    let port = free_port();
    let body = json!({ "url": format!("http://127.0.0.1:{port}/in"), "events": ["subscription.updated"], "description": "CRM" });
    let created = app.admin_ok(reqwest::Method::POST, "/api/admin/webhook-endpoints", &token, Some(&body), 201).await;
    let endpoint = &created["endpoint"];
    let secret = endpoint["secret"].as_str().unwrap().to_owned();
    let key = secret.strip_prefix("whsec_").expect("a whsec_ secret");
    use base64::Engine;
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(key).unwrap().len(), 32);
    assert_eq!(endpoint["events"], json!(["subscription.updated"]));
    assert_eq!((endpoint["description"].as_str(), endpoint["url"].as_str()), (Some("CRM"), body["url"].as_str()));
    let id = endpoint["id"].as_str().unwrap().to_owned();

    let listed = app.admin_ok(reqwest::Method::GET, "/api/admin/webhook-endpoints", &token, None, 200).await;
    assert_eq!(listed["endpoints"].as_array().unwrap().len(), 1);
    assert!(listed["endpoints"][0].get("secret").is_none(), "the secret is shown only once: {listed}");
    assert!(!listed.to_string().contains(key));

    let mut receiver = Receiver::start(&secret, port, Answer::FailFirst(1)).await;
    start_subscription(&app, 1).await;
    let deliveries_path = format!("/api/admin/webhook-endpoints/{id}/deliveries?limit=10");
    wait_for_deliveries(&app, id.parse().unwrap(), Duration::from_secs(10), |d| {
        d.first().is_some_and(|m| m.status == WebhookMessageStatus::Failed)
    })
    .await;
    let failed = app.admin_ok(reqwest::Method::GET, &deliveries_path, &token, None, 200).await;
    assert_eq!(failed["deliveries"][0]["status"], "failed", "{failed}");
    let message = &failed["deliveries"][0];
    assert_eq!((message["attempt_count"].as_i64(), failed["next_cursor"].as_str()), (Some(1), None));
    assert_eq!(message["attempts"][0]["status_code"], 500);
    assert_eq!(message["attempts"][0]["error"], "the receiver answered 500");
    assert!(message["attempts"][0]["at"].is_string() && message["attempts"][0]["next_attempt_at"].is_null());
    let message_id = message["id"].as_str().unwrap().to_owned();

    let retry = format!("/api/admin/webhook-deliveries/{message_id}/retry");
    let retried = app.admin_ok(reqwest::Method::POST, &retry, &token, None, 202).await;
    assert_eq!(retried, json!({ "delivery": { "id": message_id, "status": "pending" } }));
    let seen = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!((seen[1]["id"].as_str(), seen[1]["answered"].as_i64()), (Some(message_id.as_str()), Some(200)));
    wait_for_deliveries(&app, id.parse().unwrap(), Duration::from_secs(10), |d| {
        d[0].status == WebhookMessageStatus::Delivered
    })
    .await;
    let again = app.admin_ok(reqwest::Method::POST, &retry, &token, None, 409).await;
    assert_eq!(again["error"]["code"], "ALREADY_DELIVERED");
    let unknown =
        app.admin_ok(reqwest::Method::POST, "/api/admin/webhook-deliveries/msg_x/retry", &token, None, 404).await;
    assert_eq!(unknown["error"]["code"], "NOT_FOUND");

    let bad_cursor = format!("/api/admin/webhook-endpoints/{id}/deliveries?cursor=nope");
    let refused = app.admin_ok(reqwest::Method::GET, &bad_cursor, &token, None, 400).await;
    assert_eq!(refused["error"]["code"], "INVALID_REQUEST");
    let bad_limit = format!("/api/admin/webhook-endpoints/{id}/deliveries?limit=0");
    app.admin_ok(reqwest::Method::GET, &bad_limit, &token, None, 400).await;

    let path = format!("/api/admin/webhook-endpoints/{id}");
    let deleted = app.admin_ok(reqwest::Method::DELETE, &path, &token, None, 200).await;
    assert_eq!(deleted, json!({ "id": id, "deleted": true }));
    app.admin_ok(reqwest::Method::DELETE, &path, &token, None, 404).await;
    app.admin_ok(reqwest::Method::GET, &format!("{path}/deliveries"), &token, None, 404).await;
    app.admin_ok(reqwest::Method::DELETE, "/api/admin/webhook-endpoints/not-a-uuid", &token, None, 404).await;
    let listed = app.admin_ok(reqwest::Method::GET, "/api/admin/webhook-endpoints", &token, None, 200).await;
    assert_eq!(listed, json!({ "endpoints": [] }));
}

#[tokio::test]
async fn bad_endpoint_requests_are_refused_clearly_and_store_nothing() {
    let app = spawn_app_with(Options {
        vendor_webhooks: Some(VendorWebhookSettings { allow_private: false, ..settings(&[1]) }),
        ..Options::default()
    })
    .await;
    let token = app.admin_token(&["*"]).await;
    let path = "/api/admin/webhook-endpoints";
    for (body, code, message) in [
        (
            json!({ "url": "https://127.0.0.1/", "events": ["*"] }),
            "INVALID_REQUEST",
            "url points to a loopback address",
        ),
        (json!({ "url": "https://10.1.2.3/", "events": ["*"] }), "INVALID_REQUEST", "url points to a private address"),
        (json!({ "url": "http://93.184.216.34/", "events": ["*"] }), "INVALID_REQUEST", "url must use https"),
        (
            json!({ "url": "https://93.184.216.34/", "events": ["license.deleted"] }),
            "INVALID_REQUEST",
            "unknown event type",
        ),
        (json!({ "url": "https://93.184.216.34/", "events": [] }), "INVALID_REQUEST", "at least one"),
        (json!({ "url": "https://93.184.216.34/", "events": ["*"], "secret": "mine" }), "INVALID_REQUEST", "secret"),
        (json!({ "events": ["*"] }), "INVALID_REQUEST", "url"),
        (
            json!({ "url": "https://93.184.216.34/", "events": ["*"], "description": "x".repeat(501) }),
            "INVALID_REQUEST",
            "500",
        ),
    ] {
        let refused = app.admin_ok(reqwest::Method::POST, path, &token, Some(&body), 400).await;
        assert_eq!(refused["error"]["code"], code, "{body}: {refused}");
        let text = refused["error"]["message"].as_str().unwrap();
        assert!(text.contains(message), "{body}: {text}");
    }
    let malformed = app.http.post(app.url(path)).bearer_auth(&token).body("{").send().await.unwrap();
    assert_eq!(malformed.status(), 400);
    let listed = app.admin_ok(reqwest::Method::GET, path, &token, None, 200).await;
    assert_eq!(listed, json!({ "endpoints": [] }));
    assert_eq!(app.db.int("SELECT count(*) FROM webhook_endpoints").await, 0);
}
