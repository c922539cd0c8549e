//! Operations: metrics, readiness, request ids, graceful shutdown.

use crate::helpers::*;
use billing_core::storage::{Store, StoreTx};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[tokio::test]
async fn metrics_count_requests_webhooks_and_streams() {
    let app = spawn_app().await;
    app.http.get(app.url("/healthz")).send().await.unwrap();
    app.http.get(app.url("/healthz")).send().await.unwrap();
    app.http.get(app.url("/nope")).send().await.unwrap();
    let key = app.issue_license("u", PRICE_PRO).await;
    app.post_raw_webhook(b"{}".to_vec(), Some("t=1,v1=00")).await;
    let unhandled = event("evt_charge", "charge.succeeded", now(), json!({ "id": "ch_1", "object": "charge" }));
    assert_eq!(app.deliver(&unhandled).await, "ignored");
    assert_eq!(app.deliver(&unhandled).await, "duplicate");
    let refuse = match backend() {
        Backend::Postgres => {
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION 'refused by the test'; END $$;
             CREATE TRIGGER refuse_licenses BEFORE INSERT ON licenses FOR EACH ROW EXECUTE FUNCTION refuse();"
        }
        Backend::Sqlite => {
            "CREATE TRIGGER refuse_licenses BEFORE INSERT ON licenses BEGIN SELECT RAISE(ABORT, 'refused'); END;"
        }
    };
    app.db.execute(refuse).await;
    let failing = event(
        "evt_failing",
        "customer.subscription.created",
        now(),
        subscription("sub_failing", "cus_failing", "active", PRICE_PRO, Some("v")),
    );
    assert_eq!(app.post_stripe_webhook(&failing).await.status(), 500);
    let token = app.activate_ok(&key, "fp").await["activation_token"].as_str().unwrap().to_owned();
    let _stream = EventReader::new(app.open_event_stream(&key, &token, None).await);

    let response = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = response.text().await.unwrap();
    for line in [
        r#"billing_http_requests_total{method="GET",route="/healthz",status="200"} 2"#,
        r#"billing_http_requests_total{method="GET",route="unmatched",status="404"} 1"#,
        r#"billing_webhook_events_total{outcome="processed",type="customer.subscription.created"} 1"#,
        r#"billing_webhook_events_total{outcome="rejected",type="unverified"} 1"#,
        r#"billing_webhook_events_total{outcome="ignored",type="charge.succeeded"} 1"#,
        r#"billing_webhook_events_total{outcome="duplicate",type="charge.succeeded"} 1"#,
        r#"billing_webhook_events_total{outcome="failed",type="customer.subscription.created"} 1"#,
        r#"billing_http_request_duration_seconds_count{method="POST",route="/api/license/activate",status="201"} 1"#,
        "billing_sse_streams_open 1",
        "billing_outbox_lag_events 0",
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
    assert!(!text.contains(&key), "no license key in metrics");
    if backend() == Backend::Postgres {
        assert!(text.contains(r#"billing_db_pool_connections{state="max"} 8"#), "{text}");
    }
}

#[tokio::test]
async fn readyz_reports_its_checks_and_request_ids_are_echoed() {
    let app = spawn_app().await;
    let response = app.http.get(app.url("/readyz")).header("x-request-id", "abc-123").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "abc-123");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"], json!({ "migrations": true, "database": true, "signing_key": true, "accepting": true }));
    let generated =
        app.http.get(app.url("/healthz")).header("x-request-id", "bad id with spaces").send().await.unwrap();
    assert!(generated.headers()["x-request-id"].to_str().unwrap().starts_with("req-"));
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_webhook_finish_and_refuses_new_connections() {
    let mut app = spawn_app().await;
    // Hold the subscription's lock so the delivery is provably in flight,
    // blocked inside its unit of work, when shutdown begins.
    let mut blocker = app.billing.store().begin().await.unwrap();
    blocker.lock_subscription("sub_1").await.unwrap();
    let delivery = {
        let e = event(
            "evt_inflight",
            "customer.subscription.created",
            now(),
            subscription("sub_1", "cus_1", "active", PRICE_PRO, Some("u")),
        );
        let body = serde_json::to_vec(&e).unwrap();
        let signature = sign(&body);
        let http = app.http.clone();
        let url = app.url("/api/stripe/webhooks/handler");
        tokio::spawn(async move { http.post(url).header("Stripe-Signature", signature).body(body).send().await })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // The delivery and this scrape itself.
        let metrics = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
        if metrics.contains("billing_http_requests_in_flight 2") {
            break;
        }
        assert!(Instant::now() < deadline, "the delivery never started");
        tokio::task::yield_now().await;
    }

    let address = app.address.clone();
    app.stop();
    // New connections are refused once the listener is closed.
    let refused_deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match reqwest::Client::new().get(format!("{address}/healthz")).send().await {
            Err(e) if e.is_connect() => break,
            _ => assert!(Instant::now() < refused_deadline, "still accepting after shutdown"),
        }
        tokio::task::yield_now().await;
    }

    drop(blocker);
    let response = delivery.await.unwrap().expect("the in-flight request is answered");
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["outcome"], "processed");
    assert_eq!(app.count("subscriptions").await, 1);
}

/// A `billing-server` process on `store`, and the address it listens on.
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
            .env("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
            .env("BILLING_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut lines = std::io::BufReader::new(stdout).lines();
            let addr = lines.by_ref().map_while(Result::ok).find_map(|line| {
                let entry: Value = serde_json::from_str(&line).ok()?;
                (entry["fields"]["message"] == "billing-server listening")
                    .then(|| entry["fields"]["addr"].as_str().map(str::to_owned))?
            });
            let _ = tx.send(addr);
            lines.for_each(drop); // keep draining so the server never blocks on a full pipe
        });
        match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(Some(addr))) => Self { child, addr },
            other => {
                let _ = child.kill();
                panic!("the server never said (in JSON) that it was listening: {other:?}");
            }
        }
    }

    async fn wait(mut self, within: Duration) -> std::process::ExitStatus {
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + within;
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    return status;
                }
                if Instant::now() > deadline {
                    self.child.kill().unwrap();
                    panic!("no exit within {within:?}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .await
        .unwrap()
    }
}

fn temp_dir(label: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("billing-{label}-{}", uuid::Uuid::new_v4()))
}

#[tokio::test]
async fn the_binary_exits_cleanly_on_sigterm() {
    let store = TestStore::create().await;
    let data_dir = temp_dir("sigterm");
    let server = ServerProcess::start(&store, &data_dir).await;
    let response = reqwest::get(format!("http://{}/healthz", server.addr)).await.unwrap();
    assert_eq!(response.status(), 200);
    let status = std::process::Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = server.wait(Duration::from_secs(15)).await;
    assert!(exit.success(), "exit status {exit:?}");
    let _ = std::fs::remove_dir_all(data_dir);
}

#[tokio::test]
async fn kill_9_loses_nothing_that_was_acknowledged() {
    let store = TestStore::create().await;
    let data_dir = temp_dir("kill9");
    let server = ServerProcess::start(&store, &data_dir).await;
    let http = reqwest::Client::new();
    for i in 0..20 {
        let e = event(
            &format!("evt_{i}"),
            "customer.subscription.created",
            now(),
            subscription(&format!("sub_{i}"), &format!("cus_{i}"), "active", PRICE_PRO, Some("u")),
        );
        let body = serde_json::to_vec(&e).unwrap();
        let response = http
            .post(format!("http://{}/api/stripe/webhooks/handler", server.addr))
            .header("Stripe-Signature", sign(&body))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let killed = std::process::Command::new("kill").args(["-KILL", &server.child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    server.wait(Duration::from_secs(5)).await;

    // A fresh process on the same store and data directory has everything.
    let server = ServerProcess::start(&store, &data_dir).await;
    let app_db = TestDb::open(&store.location).await;
    assert_eq!(app_db.int("SELECT count(*) FROM subscriptions").await, 20);
    assert_eq!(app_db.int("SELECT count(*) FROM licenses").await, 20);
    assert_eq!(app_db.int("SELECT count(*) FROM webhook_events WHERE status = 'processed'").await, 20);
    let e = event(
        "evt_0",
        "customer.subscription.created",
        now(),
        subscription("sub_0", "cus_0", "active", PRICE_PRO, Some("u")),
    );
    let body = serde_json::to_vec(&e).unwrap();
    let again: Value = http
        .post(format!("http://{}/api/stripe/webhooks/handler", server.addr))
        .header("Stripe-Signature", sign(&body))
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["outcome"], "duplicate", "the dedup record survived too");
    let _ = std::process::Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status();
    server.wait(Duration::from_secs(15)).await;
    let _ = std::fs::remove_dir_all(data_dir);
}
