//! Operations: metrics, readiness, request ids, graceful shutdown.

use crate::helpers::*;
use billing_core::storage::license_work::{Changeset, LicenseKeys};
use billing_core::storage::Store;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
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

    // The hub reads the outbox after each commit's wake-up, so the lag is
    // 0 once it has caught up with the activation's event.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let text = loop {
        let response = app.http.get(app.url("/metrics")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
        let text = response.text().await.unwrap();
        if text.contains("billing_outbox_lag_events 0") || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
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
async fn readyz_answers_503_naming_migrations_while_the_database_is_not_at_this_builds_schema() {
    let app = spawn_app().await;
    let readyz = || async {
        let response = app.http.get(app.url("/readyz")).send().await.unwrap();
        (response.status().as_u16(), response.json::<Value>().await.unwrap())
    };
    let expected_not_ready = json!({ "migrations": false, "database": true, "signing_key": true, "accepting": true });
    for (case, drift, undo) in [
        (
            "a newer release's migration",
            "INSERT INTO refinery_schema_history (version, name, applied_on, checksum)
             VALUES (99, 'from_a_newer_release', '2030-01-01T00:00:00Z', '42')",
            "DELETE FROM refinery_schema_history WHERE version = 99",
        ),
        (
            "a migration never applied",
            "UPDATE refinery_schema_history SET version = 98 WHERE version = 4",
            "UPDATE refinery_schema_history SET version = 4 WHERE version = 98",
        ),
        (
            "a migration file changed since it was applied",
            "UPDATE refinery_schema_history SET checksum = checksum || '0' WHERE version = 2",
            "UPDATE refinery_schema_history SET checksum = substr(checksum, 1, length(checksum) - 1) WHERE version = 2",
        ),
    ] {
        app.db.execute(drift).await;
        let (status, body) = readyz().await;
        assert_eq!(
            (status, &body["status"], &body["checks"]),
            (503, &json!("not_ready"), &expected_not_ready),
            "{case}"
        );
        app.db.execute(undo).await;
        let (status, body) = readyz().await;
        assert_eq!((status, &body["status"]), (200, &json!("ready")), "{case}, undone: {body}");
    }
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_webhook_finish_and_refuses_new_connections() {
    let mut app = spawn_app().await;
    // Hold the subscription's lock so the delivery is provably in flight,
    // blocked inside its unit of work, when shutdown begins: on PostgreSQL
    // the lock of its identity (there is no row yet), on SQLite the writer.
    enum Blocker {
        Postgres(tokio_postgres::Client),
        /// A unit of work whose decision waits, holding the writer, until
        /// its sender is dropped.
        Sqlite(std::sync::mpsc::Sender<()>, tokio::task::JoinHandle<()>),
    }
    let blocker = match &app.store {
        billing_core::storage::any::StoreLocation::Postgres(url) => {
            let client = connect(url).await;
            client.batch_execute("BEGIN; SELECT pg_advisory_xact_lock(hashtextextended('sub_1', 0))").await.unwrap();
            Blocker::Postgres(client)
        }
        billing_core::storage::any::StoreLocation::Sqlite(_) => {
            let (release, released) = std::sync::mpsc::channel::<()>();
            let (holding, held) = tokio::sync::oneshot::channel();
            let store = app.billing.store().clone();
            let holder = tokio::spawn(async move {
                let wait = move |_| {
                    let _ = holding.send(());
                    let _ = released.recv();
                    (Changeset::default(), ())
                };
                store.license_work(LicenseKeys::Nothing, wait).await.unwrap();
            });
            held.await.expect("the writer is held");
            Blocker::Sqlite(release, holder)
        }
    };
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

    match blocker {
        Blocker::Postgres(client) => client.batch_execute("ROLLBACK").await.unwrap(),
        Blocker::Sqlite(release, holder) => {
            drop(release);
            holder.await.unwrap();
        }
    }
    let response = delivery.await.unwrap().expect("the in-flight request is answered");
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["outcome"], "processed");
    assert_eq!(app.count("subscriptions").await, 1);
}

/// A `billing-server` process, the address it listens on, and what it has
/// printed so far.
pub(crate) struct ServerProcess {
    child: std::process::Child,
    addr: String,
    output: Arc<Mutex<Vec<String>>>,
}

impl ServerProcess {
    /// A server on `store`, keeping its files in `data_dir`.
    async fn start(store: &TestStore, data_dir: &std::path::Path) -> Self {
        let env = [
            ("DATABASE_URL", store.url()),
            ("BILLING_DATA_DIR", data_dir.display().to_string()),
            ("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET.to_owned()),
        ];
        Self::start_in(&std::env::temp_dir(), &env).await
    }

    /// A server started in `dir` with nothing in its environment but `PATH`,
    /// a free port, JSON logs (to find the port) and `env`.
    pub(crate) async fn start_in(dir: &std::path::Path, env: &[(&str, String)]) -> Self {
        Self::start_under_umask(dir, env, None).await
    }

    /// As [`Self::start_in`], with the process's umask set to `umask` (octal).
    async fn start_under_umask(dir: &std::path::Path, env: &[(&str, String)], umask: Option<&str>) -> Self {
        let binary = env!("CARGO_BIN_EXE_billing-server");
        let mut command = std::process::Command::new(binary);
        if let Some(umask) = umask {
            command = std::process::Command::new("sh");
            command.args(["-c", &format!("umask {umask} && exec \"$0\""), binary]);
        }
        command
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("BILLING_ADDR", "127.0.0.1:0")
            .env("BILLING_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k, v)));
        Self::spawn(command).await
    }

    /// Runs `command` (the server, configured by the caller) and waits for
    /// its start-up banner, which names the address it listens on.
    pub(crate) async fn spawn(mut command: std::process::Command) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut child = command.stdout(std::process::Stdio::piped()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let output = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let lines_seen = output.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let (mut tx, mut addr) = (Some(tx), None);
            // Keeps draining so the server never blocks on a full pipe.
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let listening = serde_json::from_str::<Value>(&line).ok().and_then(|entry| {
                    (entry["fields"]["message"] == "billing-server listening")
                        .then(|| entry["fields"]["addr"].as_str().map(str::to_owned))?
                });
                // The start-up banner is printed after the JSON log line (if
                // logs are on) and names the address too.
                let banner = line.strip_prefix("billing-server listening on http://");
                addr = addr.or(listening).or_else(|| Some(banner?.split(' ').next()?.to_owned()));
                let banner = banner.is_some();
                lines_seen.lock().unwrap().push(line);
                if banner {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr.clone());
                    }
                }
            }
        });
        match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(Some(addr))) => Self { child, addr, output },
            other => {
                let _ = child.kill();
                panic!("the server never printed its banner after saying (in JSON) that it was listening: {other:?}");
            }
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn printed(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    pub(crate) async fn deliver(&self, event: &Value) -> Value {
        let body = serde_json::to_vec(event).unwrap();
        let response = reqwest::Client::new()
            .post(self.url("/api/stripe/webhooks/handler"))
            .header("Stripe-Signature", sign(&body))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "delivery of {}", event["id"]);
        response.json().await.unwrap()
    }

    pub(crate) fn signal(&self, signal: &str) {
        let sent = std::process::Command::new("kill").args([signal, &self.child.id().to_string()]).status().unwrap();
        assert!(sent.success());
    }

    pub(crate) async fn wait(mut self, within: Duration) -> std::process::ExitStatus {
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
    let response = reqwest::get(server.url("/healthz")).await.unwrap();
    assert_eq!(response.status(), 200);
    server.signal("-TERM");
    let exit = server.wait(Duration::from_secs(15)).await;
    assert!(exit.success(), "exit status {exit:?}");
    let _ = std::fs::remove_dir_all(data_dir);
}

#[tokio::test]
async fn kill_9_loses_nothing_that_was_acknowledged() {
    let store = TestStore::create().await;
    let data_dir = temp_dir("kill9");
    let server = ServerProcess::start(&store, &data_dir).await;
    let created = |i: usize| {
        event(
            &format!("evt_{i}"),
            "customer.subscription.created",
            now(),
            subscription(&format!("sub_{i}"), &format!("cus_{i}"), "active", PRICE_PRO, Some("u")),
        )
    };
    for i in 0..20 {
        server.deliver(&created(i)).await;
    }
    server.signal("-KILL");
    server.wait(Duration::from_secs(5)).await;

    // A fresh process on the same store and data directory has everything.
    let server = ServerProcess::start(&store, &data_dir).await;
    let app_db = TestDb::open(&store.location).await;
    assert_eq!(app_db.int("SELECT count(*) FROM subscriptions").await, 20);
    assert_eq!(app_db.int("SELECT count(*) FROM licenses").await, 20);
    assert_eq!(app_db.int("SELECT count(*) FROM webhook_events WHERE status = 'processed'").await, 20);
    let again = server.deliver(&created(0)).await;
    assert_eq!(again["outcome"], "duplicate", "the dedup record survived too");
    server.signal("-TERM");
    server.wait(Duration::from_secs(15)).await;
    let _ = std::fs::remove_dir_all(data_dir);
}

impl Drop for ServerProcess {
    /// A failing test must not leave its server running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_else(|| panic!("not a JSON error: {body}"))
}

#[tokio::test]
async fn with_nothing_configured_the_binary_serves_licensing_from_an_embedded_store() {
    if backend() == Backend::Postgres {
        // One run is enough: this test chooses its own store (none).
        eprintln!("skipped on postgres: the binary under test picks its own embedded store; the sqlite run covers it");
        return;
    }
    let dir = temp_dir("zero-config");
    std::fs::create_dir_all(&dir).unwrap();
    let server = ServerProcess::start_in(&dir, &[]).await;
    let printed = server.printed();
    for expected in [
        "store: embedded sqlite at billing-data/billing.sqlite3",
        "webhooks: off",
        "dashboard: off",
        "stripe actions: off",
        "until STRIPE_WEBHOOK_SECRET is set",
        "until BILLING_JWT_SECRET is set",
    ] {
        assert!(printed.contains(expected), "{expected:?} not in:\n{printed}");
    }
    assert!(dir.join("billing-data/billing.sqlite3").is_file());
    let key_file = dir.join("billing-data/license-signing-key.pem");
    assert!(std::fs::read_to_string(&key_file).unwrap().contains("PRIVATE KEY"));

    let http = reqwest::Client::new();
    let webhook = http
        .post(server.url("/api/stripe/webhooks/handler"))
        .header("Stripe-Signature", "t=1,v1=00")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(webhook.status(), 503);
    assert_eq!(error_code(&webhook.json().await.unwrap()), "WEBHOOKS_DISABLED");
    let dashboard = http.get(server.url("/api/subscriptions/current")).bearer_auth(jwt_for("u")).send().await.unwrap();
    assert_eq!(dashboard.status(), 503);
    assert_eq!(error_code(&dashboard.json().await.unwrap()), "DASHBOARD_DISABLED");

    // Licensing works, signed with the generated key, which a restart keeps.
    let jwk: Value = http.get(server.url("/api/license/public-key")).send().await.unwrap().json().await.unwrap();
    assert_eq!(jwk["jwk"]["kty"], "OKP");
    let unknown = json!({ "license_key": "AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA" });
    let validated: Value =
        http.post(server.url("/api/license/validate")).json(&unknown).send().await.unwrap().json().await.unwrap();
    assert_eq!((validated["valid"].as_bool(), validated["code"].as_str()), (Some(false), Some("NOT_FOUND")));
    server.signal("-TERM");
    assert!(server.wait(Duration::from_secs(15)).await.success());
    let again = ServerProcess::start_in(&dir, &[]).await;
    let jwk_again: Value = http.get(again.url("/api/license/public-key")).send().await.unwrap().json().await.unwrap();
    assert_eq!(jwk_again, jwk, "the generated key is kept, not regenerated");
    again.signal("-TERM");
    again.wait(Duration::from_secs(15)).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn keygen_writes_a_key_once_that_the_server_signs_with() {
    if backend() == Backend::Postgres {
        eprintln!("skipped on postgres: keygen touches no store; the sqlite run covers it");
        return;
    }
    let dir = temp_dir("keygen");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("vendor-key.pem");
    let keygen = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_billing-server"))
            .args(["keygen", "--out"])
            .arg(&out)
            .output()
            .unwrap()
    };
    let first = keygen();
    assert!(first.status.success(), "{first:?}");
    let printed = String::from_utf8(first.stdout).unwrap();
    let written = std::fs::read_to_string(&out).unwrap();
    assert!(written.contains("BEGIN PRIVATE KEY"));
    assert!(!printed.contains(written.lines().nth(1).unwrap()), "the private key is not printed");
    let printed_jwk: Value = serde_json::from_str(printed.lines().last().unwrap()).unwrap();

    let second = keygen();
    assert!(!second.status.success(), "an existing key is never overwritten");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), written);

    let server = ServerProcess::start_in(
        &dir,
        &[("BILLING_LICENSE_SIGNING_KEY", out.display().to_string()), ("BILLING_DATA_DIR", dir.display().to_string())],
    )
    .await;
    let served: Value = reqwest::get(server.url("/api/license/public-key")).await.unwrap().json().await.unwrap();
    assert_eq!(served["jwk"], printed_jwk, "the server signs with the key keygen wrote");
    server.signal("-TERM");
    server.wait(Duration::from_secs(15)).await;
    let _ = std::fs::remove_dir_all(dir);
}

/// The names of the migration files (`V<n>__<name>.sql`), in version order:
/// what a fresh database holds once migrated, with no list kept by hand.
fn migration_names() -> Vec<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations/postgres");
    let mut versions: Vec<(u32, String)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|entry| {
            let file = entry.unwrap().file_name().into_string().unwrap();
            let (version, name) = file.strip_prefix('V')?.strip_suffix(".sql")?.split_once("__")?;
            Some((version.parse().unwrap(), name.to_owned()))
        })
        .collect();
    versions.sort();
    assert!(versions.len() >= 7, "{versions:?}");
    versions.into_iter().map(|(_, name)| name).collect()
}

#[tokio::test]
async fn migrate_applies_the_schema_once_and_exits() {
    let store = TestStore::create().await;
    let data_dir = temp_dir("migrate");
    let migrate = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_billing-server"))
            .arg("migrate")
            .env_clear()
            .env("DATABASE_URL", store.url())
            .env("BILLING_DATA_DIR", &data_dir)
            .output()
            .unwrap()
    };
    let db = TestDb::open(&store.location).await;
    for run in ["first", "second"] {
        let output = migrate();
        assert!(output.status.success(), "{run} run: {output:?}");
        let applied = db.strings("SELECT name FROM refinery_schema_history ORDER BY version").await;
        assert_eq!(applied, migration_names(), "{run} run");
    }
    assert_eq!(db.int("SELECT count(*) FROM licenses").await, 0);
    let _ = std::fs::remove_dir_all(data_dir);
}

#[tokio::test]
async fn a_stream_cut_by_kill_9_resumes_with_last_event_id_losing_nothing() {
    let store = TestStore::create().await;
    let data_dir = temp_dir("sse-kill9");
    let server = ServerProcess::start(&store, &data_dir).await;
    let update = |id: &str, created: i64, cancel: bool| {
        let mut object = subscription("sub_u", "cus_u", "active", PRICE_PRO, Some("u"));
        object["cancel_at_period_end"] = json!(cancel);
        event(id, "customer.subscription.updated", created, object)
    };
    server
        .deliver(&event(
            "e0",
            "customer.subscription.created",
            now(),
            subscription("sub_u", "cus_u", "active", PRICE_PRO, Some("u")),
        ))
        .await;
    let db = TestDb::open(&store.location).await;
    let key = db.strings("SELECT key FROM licenses").await.remove(0);
    let http = reqwest::Client::new();
    let activation = json!({ "license_key": key, "fingerprint": "fp-1" });
    let activated: Value =
        http.post(server.url("/api/license/activate")).json(&activation).send().await.unwrap().json().await.unwrap();
    let token = activated["activation_token"].as_str().unwrap().to_owned();
    let open = |server: &ServerProcess, last_event_id: Option<i64>| {
        let mut request = http.get(server.url(&format!("/api/events/{key}"))).bearer_auth(&token);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        request.send()
    };
    let mut stream = EventReader::new(open(&server, None).await.unwrap());
    server.deliver(&update("e1", now() + 1, true)).await;
    let seen = stream.next_of("subscription.updated").await;
    assert_eq!(seen.data["cancel_at_period_end"], true);

    server.signal("-KILL");
    server.wait(Duration::from_secs(5)).await;
    assert!(stream.next().await.is_none(), "the stream is cut");

    // Changes land while the app is disconnected, then it resumes.
    let server = ServerProcess::start(&store, &data_dir).await;
    server.deliver(&update("e2", now() + 2, false)).await;
    server.deliver(&update("e3", now() + 3, true)).await;
    let mut resumed = EventReader::new(open(&server, seen.id).await.unwrap());
    let missed = [resumed.next_of("subscription.updated").await, resumed.next_of("subscription.updated").await];
    assert_eq!(missed.each_ref().map(|m| m.data["cancel_at_period_end"].clone()), [json!(false), json!(true)]);
    assert!(missed[0].id > seen.id && missed[1].id > missed[0].id, "in order, after the last one seen");
    server.signal("-TERM");
    server.wait(Duration::from_secs(15)).await;
    let _ = std::fs::remove_dir_all(data_dir);
}

#[cfg(unix)]
#[tokio::test]
async fn under_umask_000_the_data_directory_and_every_file_in_it_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("umask");
    std::fs::create_dir_all(&dir).unwrap();
    let data_dir = dir.join("billing-data");
    // With nothing configured, the embedded store; on PostgreSQL only the
    // signing key lives in the data directory.
    let (store, env) = match backend() {
        Backend::Sqlite => (None, vec![]),
        Backend::Postgres => {
            let store = TestStore::create().await;
            let env = vec![("DATABASE_URL", store.url())];
            (Some(store), env)
        }
    };
    let server = ServerProcess::start_under_umask(&dir, &env, Some("000")).await;
    // Answered once serving, so the SIGTERM below meets its handler.
    assert_eq!(reqwest::get(server.url("/healthz")).await.unwrap().status(), 200);
    let mut files = vec!["license-signing-key.pem"];
    if store.is_none() {
        files.extend(["billing.sqlite3", "billing.sqlite3-wal", "billing.sqlite3-shm"]);
    }
    let mode = |path: &std::path::Path| {
        let mode = std::fs::metadata(path).map(|m| m.permissions().mode() & 0o777);
        mode.map(|m| format!("{m:o}")).unwrap_or_else(|e| e.to_string())
    };
    // Looked at while the server runs: SQLite removes -wal and -shm on a clean close.
    let mut modes = vec![("billing-data".to_owned(), mode(&data_dir))];
    modes.extend(files.iter().map(|f| (f.to_string(), mode(&data_dir.join(f)))));
    server.signal("-TERM");
    assert!(server.wait(Duration::from_secs(15)).await.success());

    let mut expected = vec![("billing-data".to_owned(), "700".to_owned())];
    expected.extend(files.iter().map(|f| (f.to_string(), "600".to_owned())));
    assert_eq!(modes, expected);

    // `keygen` under the same umask.
    let out = dir.join("vendor-key.pem");
    let keygen = std::process::Command::new("sh")
        .args(["-c", "umask 000 && exec \"$0\" keygen --out \"$1\"", env!("CARGO_BIN_EXE_billing-server")])
        .arg(&out)
        .output()
        .unwrap();
    assert!(keygen.status.success(), "{keygen:?}");
    assert_eq!(mode(&out), "600");
    let _ = std::fs::remove_dir_all(dir);
}
