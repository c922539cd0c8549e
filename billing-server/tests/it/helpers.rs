//! `spawn_app()`: a server on a fresh store, and verb_noun helpers to talk
//! to it. The store is PostgreSQL (a fresh database per test) or, with
//! `TEST_STORE=sqlite`, the embedded store (a fresh file per test): every
//! test runs against both in CI.

use billing_core::certificate::SigningKey;
use billing_core::domain::{Plan, PlanCatalog};
use billing_core::events::HubConfig;
use billing_core::licensing::LicensingConfig;
use billing_core::storage::any::{AnyStore, StoreLocation};
use billing_core::storage::Store;
use billing_core::stripe::{StripeClient, WebhookSecrets};
use billing_core::{Billing, BillingConfig};
use billing_server::{AppState, ServerOptions};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

pub const WEBHOOK_SECRET: &str = "whsec_test_0123456789abcdef";
pub const JWT_SECRET: &str = "test-jwt-secret-that-is-long-enough";
pub const PRICE_PRO: &str = "price_pro_monthly";
pub const PRICE_BASIC: &str = "price_basic_monthly";

pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// Which backend the suite runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

pub fn backend() -> Backend {
    match std::env::var("TEST_STORE").as_deref() {
        Ok("sqlite") => Backend::Sqlite,
        Ok("postgres") | Err(_) => Backend::Postgres,
        Ok(other) => panic!("TEST_STORE must be postgres or sqlite, not {other:?}"),
    }
}

/// A store created for one test and removed after it.
pub struct TestStore {
    pub location: StoreLocation,
    owned: bool,
}

impl TestStore {
    pub async fn create() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let location = match backend() {
            Backend::Postgres => {
                let name = format!("billing_test_{id}");
                let admin = connect(&format!("{}/postgres", admin_url())).await;
                admin.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create test database");
                StoreLocation::Postgres(format!("{}/{name}", admin_url()))
            }
            Backend::Sqlite => {
                StoreLocation::Sqlite(std::env::temp_dir().join(format!("billing_test_{id}")).join("billing.sqlite3"))
            }
        };
        Self { location, owned: true }
    }

    /// Another handle on a store some other test app owns.
    pub fn shared(location: &StoreLocation) -> Self {
        Self { location: location.clone(), owned: false }
    }

    /// The `DATABASE_URL` that selects this store.
    pub fn url(&self) -> String {
        match &self.location {
            StoreLocation::Postgres(url) => url.clone(),
            StoreLocation::Sqlite(path) => format!("sqlite://{}", path.display()),
        }
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        match &self.location {
            StoreLocation::Sqlite(path) => {
                let _ = std::fs::remove_dir_all(path.parent().expect("a per-test directory"));
            }
            StoreLocation::Postgres(url) => {
                let name = url.rsplit('/').next().unwrap().to_owned();
                // Drop runs inside the test's runtime; use a thread with its own.
                let _ = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                    rt.block_on(async {
                        let admin = connect(&format!("{}/postgres", admin_url())).await;
                        let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
                    });
                })
                .join();
            }
        }
    }
}

/// Direct access to the test's database for assertions, on either backend.
pub enum TestDb {
    Postgres(tokio_postgres::Client),
    Sqlite(std::path::PathBuf),
}

impl TestDb {
    pub async fn open(location: &StoreLocation) -> Self {
        match location {
            StoreLocation::Postgres(url) => TestDb::Postgres(connect(url).await),
            StoreLocation::Sqlite(path) => TestDb::Sqlite(path.clone()),
        }
    }

    fn sqlite<T: Send + 'static>(
        path: &std::path::Path,
        f: impl FnOnce(&deadpool_sqlite::rusqlite::Connection) -> T + Send + 'static,
    ) -> impl std::future::Future<Output = T> {
        let path = path.to_owned();
        async move {
            tokio::task::spawn_blocking(move || {
                let conn = deadpool_sqlite::rusqlite::Connection::open(&path).unwrap();
                conn.busy_timeout(Duration::from_secs(10)).unwrap();
                f(&conn)
            })
            .await
            .unwrap()
        }
    }

    /// Runs statements (no results).
    pub async fn execute(&self, sql: &str) {
        match self {
            TestDb::Postgres(c) => c.batch_execute(sql).await.unwrap(),
            TestDb::Sqlite(path) => {
                let sql = sql.to_owned();
                Self::sqlite(path, move |c| c.execute_batch(&sql).unwrap()).await
            }
        }
    }

    /// The first column of every row, as text.
    pub async fn strings(&self, sql: &str) -> Vec<String> {
        match self {
            TestDb::Postgres(c) => c.query(sql, &[]).await.unwrap().iter().map(|r| r.get(0)).collect(),
            TestDb::Sqlite(path) => {
                let sql = sql.to_owned();
                Self::sqlite(path, move |c| {
                    let mut statement = c.prepare(&sql).unwrap();
                    statement.query_map([], |r| r.get::<_, String>(0)).unwrap().map(Result::unwrap).collect()
                })
                .await
            }
        }
    }

    /// The first column of every row, as integers.
    pub async fn ints(&self, sql: &str) -> Vec<i64> {
        match self {
            TestDb::Postgres(c) => c.query(sql, &[]).await.unwrap().iter().map(|r| r.get(0)).collect(),
            TestDb::Sqlite(path) => {
                let sql = sql.to_owned();
                Self::sqlite(path, move |c| {
                    let mut statement = c.prepare(&sql).unwrap();
                    statement.query_map([], |r| r.get::<_, i64>(0)).unwrap().map(Result::unwrap).collect()
                })
                .await
            }
        }
    }

    /// A single integer.
    pub async fn int(&self, sql: &str) -> i64 {
        self.ints(sql).await[0]
    }

    /// Every row of every table, as sorted text: equal before and after a
    /// request exactly when the request changed nothing stored.
    pub async fn fingerprint(&self) -> Vec<String> {
        match self {
            TestDb::Postgres(c) => {
                let tables: Vec<String> = c
                    .query("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1", &[])
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                let mut rows = Vec::new();
                for table in tables {
                    let sql = format!("SELECT t::text FROM {table} t ORDER BY 1");
                    for row in c.query(&sql, &[]).await.unwrap() {
                        rows.push(format!("{table}: {}", row.get::<_, String>(0)));
                    }
                }
                rows
            }
            TestDb::Sqlite(path) => {
                Self::sqlite(path, |c| {
                    let mut tables =
                        c.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY 1").unwrap();
                    let tables: Vec<String> = tables.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
                    let mut rows = Vec::new();
                    for table in tables {
                        let mut statement = c.prepare(&format!("SELECT * FROM \"{table}\"")).unwrap();
                        let columns = statement.column_count();
                        let mut result = statement.query([]).unwrap();
                        while let Some(row) = result.next().unwrap() {
                            let values: Vec<String> =
                                (0..columns).map(|i| format!("{:?}", row.get_ref(i).unwrap())).collect();
                            rows.push(format!("{table}: {}", values.join(",")));
                        }
                    }
                    rows.sort();
                    rows
                })
                .await
            }
        }
    }

    /// A single blob.
    pub async fn bytes(&self, sql: &str) -> Vec<u8> {
        match self {
            TestDb::Postgres(c) => c.query_one(sql, &[]).await.unwrap().get(0),
            TestDb::Sqlite(path) => {
                let sql = sql.to_owned();
                Self::sqlite(path, move |c| c.query_row(&sql, [], |r| r.get(0)).unwrap()).await
            }
        }
    }
}

/// [`TestApp::admin_token`] as a free function.
pub async fn admin_token(app: &TestApp, scopes: &[&str]) -> String {
    app.admin_token(scopes).await
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect to PostgreSQL");
    tokio::spawn(connection);
    client
}

/// One signing key for the whole test run (so two instances agree).
pub fn signing_key() -> Arc<SigningKey> {
    static KEY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    Arc::new(SigningKey::from_pkcs8(KEY.get_or_init(SigningKey::generate_pkcs8)).unwrap())
}

pub fn plans() -> PlanCatalog {
    let plan = |id: &str, price: &str, max_devices| Plan {
        amount: Some(1900),
        currency: Some("usd".into()),
        interval: Some("month".into()),
        features: vec!["export".into()],
        ..Plan::new(id, &id.to_uppercase(), price, max_devices)
    };
    PlanCatalog::new(vec![plan("pro", PRICE_PRO, 3), plan("basic", PRICE_BASIC, 1)]).unwrap()
}

#[derive(Default)]
pub struct Options {
    pub stripe_api_base: Option<String>,
    pub grace_days: Option<i64>,
    pub clock: Option<billing_core::billing::Clock>,
    pub max_body_bytes: Option<usize>,
    pub heartbeat_window_secs: Option<i64>,
    pub rate_limit_per_minute: Option<u32>,
    pub trials_per_hour: Option<u32>,
    /// A catalog other than [`plans`].
    pub plans: Option<PlanCatalog>,
    pub trusted_proxies: Option<billing_server::client_addr::TrustedProxies>,
    pub store: Option<StoreLocation>,
    /// `BILLING_PUBLIC_URL` (portal session URLs).
    pub public_url: Option<String>,
    pub body_timeout: Option<Duration>,
    pub max_pending_bodies: Option<usize>,
    pub header_read_timeout: Option<Duration>,
    // Webhooks to the vendor (issue 14): retry schedule, private targets.
    pub vendor_webhooks: Option<billing_core::vendor_webhooks::VendorWebhookSettings>,
    /// Licenses the validation view holds (default: the engine's).
    pub validation_cache: Option<usize>,
}

impl Options {
    /// A second instance on another app's store.
    pub fn sharing(app: &TestApp) -> Self {
        Self { store: Some(app.store.clone()), ..Self::default() }
    }
}

pub struct TestApp {
    pub address: String,
    pub http: reqwest::Client,
    pub db: TestDb,
    pub billing: Billing<AnyStore>,
    pub store: StoreLocation,
    shutdown: Option<oneshot::Sender<()>>,
    // Last: the store is removed after the server stopped using it.
    _store: TestStore,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub async fn spawn_app_with(options: Options) -> TestApp {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let test_store = match &options.store {
        Some(location) => TestStore::shared(location),
        None => TestStore::create().await,
    };
    let store = AnyStore::open(&test_store.location, 8).await.unwrap();
    store.migrate().await.expect("migrations apply");
    let stripe = options.stripe_api_base.map(|base| {
        StripeClient::new("sk_test_123", base)
            .with_timeout(Duration::from_millis(500))
            .with_retries(2, Duration::from_millis(10))
    });
    let licensing = LicensingConfig {
        heartbeat_window: time::Duration::seconds(options.heartbeat_window_secs.unwrap_or(600)),
        ..LicensingConfig::new(signing_key())
    };
    let config = BillingConfig::new(options.plans.unwrap_or_else(plans), licensing)
        .with_grace(time::Duration::days(options.grace_days.unwrap_or(7)))
        .with_webhook_secrets(WebhookSecrets::parse(WEBHOOK_SECRET))
        .with_stripe(stripe)
        .with_vendor_webhooks(options.vendor_webhooks.unwrap_or_default());
    let config = match options.validation_cache {
        Some(licenses) => config.with_validation_cache(licenses),
        None => config,
    };
    let mut billing = Billing::new(store, config);
    if let Some(clock) = options.clock {
        billing = billing.with_clock(clock);
    }
    let defaults = ServerOptions::default();
    let server_options = ServerOptions {
        jwt_secret: Some(JWT_SECRET.as_bytes().to_vec()),
        public_url: options.public_url,
        max_body_bytes: options.max_body_bytes.unwrap_or(1 << 20),
        body_timeout: options.body_timeout.unwrap_or(defaults.body_timeout),
        max_pending_bodies: options.max_pending_bodies.unwrap_or(defaults.max_pending_bodies),
        header_read_timeout: options.header_read_timeout.unwrap_or(defaults.header_read_timeout),
        rate_limit_per_minute: options.rate_limit_per_minute.unwrap_or(60),
        trials_per_hour: options.trials_per_hour.unwrap_or(defaults.trials_per_hour),
        hub: HubConfig { poll_interval: Duration::from_secs(30), ..HubConfig::default() },
        trusted_proxies: options.trusted_proxies.unwrap_or_default(),
    };
    let state = AppState::new(billing.clone(), server_options).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = oneshot::channel();
    tokio::spawn(billing_server::serve(listener, Arc::new(state), async {
        let _ = rx.await;
    }));
    TestApp {
        address,
        http: reqwest::Client::new(),
        db: TestDb::open(&test_store.location).await,
        store: test_store.location.clone(),
        billing,
        shutdown: Some(tx),
        _store: test_store,
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The current period of every "live" test subscription: fixed for the whole
/// run, so two snapshots built a second apart do not differ by a renewal.
pub fn period_start() -> i64 {
    period_bounds().0
}

pub fn period_end() -> i64 {
    period_bounds().1
}

fn period_bounds() -> (i64, i64) {
    static BOUNDS: std::sync::OnceLock<(i64, i64)> = std::sync::OnceLock::new();
    *BOUNDS.get_or_init(|| (now() - 10 * 24 * 3600, now() + 20 * 24 * 3600))
}

pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

pub fn sign(body: &[u8]) -> String {
    WebhookSecrets::parse(WEBHOOK_SECRET).unwrap().sign(body, now())
}

pub fn jwt_for(user_id: &str) -> String {
    token(&json!({ "sub": user_id, "exp": now() + 600 }), JWT_SECRET)
}

pub fn token(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A Stripe event envelope.
pub fn event(id: &str, kind: &str, created: i64, object: Value) -> Value {
    json!({
        "id": id, "object": "event", "type": kind, "created": created, "api_version": "2025-03-31.basil",
        "livemode": false, "pending_webhooks": 1, "data": { "object": object }
    })
}

/// A subscription object in the basil shape (period on the item).
pub fn subscription(id: &str, customer: &str, status: &str, price: &str, user_id: Option<&str>) -> Value {
    let metadata = match user_id {
        Some(u) => json!({ "user_id": u }),
        None => json!({}),
    };
    json!({
        "id": id, "object": "subscription", "customer": customer, "status": status,
        "cancel_at_period_end": false, "cancel_at": null, "canceled_at": null, "ended_at": null,
        "trial_end": null, "metadata": metadata, "created": 1_764_000_000,
        "items": { "object": "list", "data": [{
            "id": format!("si_{id}"), "object": "subscription_item",
            "price": { "id": price, "object": "price" },
            "current_period_start": 1_764_000_000, "current_period_end": 1_766_592_000
        }]}
    })
}

pub fn checkout(id: &str, customer: &str, subscription: &str, user_id: &str) -> Value {
    json!({
        "id": id, "object": "checkout.session", "mode": "subscription", "client_reference_id": user_id,
        "customer": customer, "subscription": subscription, "metadata": {}, "payment_status": "paid"
    })
}

pub fn invoice(id: &str, customer: &str, subscription: &str, amount: i64) -> Value {
    json!({
        "id": id, "object": "invoice", "customer": customer, "currency": "usd",
        "amount_paid": amount, "amount_due": amount,
        "parent": { "subscription_details": { "subscription": subscription } },
        "status_transitions": { "paid_at": 1_764_000_100 }
    })
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn post_stripe_webhook(&self, event: &Value) -> reqwest::Response {
        let body = serde_json::to_vec(event).unwrap();
        let signature = sign(&body);
        self.post_raw_webhook(body, Some(&signature)).await
    }

    pub async fn post_raw_webhook(&self, body: Vec<u8>, signature: Option<&str>) -> reqwest::Response {
        let mut request = self.http.post(self.url("/api/stripe/webhooks/handler")).body(body);
        if let Some(signature) = signature {
            request = request.header("Stripe-Signature", signature);
        }
        request.send().await.expect("server answers")
    }

    /// Posts and asserts a 200, returning the outcome.
    pub async fn deliver(&self, event: &Value) -> String {
        let response = self.post_stripe_webhook(event).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "delivery of {} failed: {body}", event["id"]);
        body["outcome"].as_str().unwrap().to_owned()
    }

    pub async fn get_as(&self, path: &str, user_id: &str) -> Value {
        let response = self.http.get(self.url(path)).bearer_auth(jwt_for(user_id)).send().await.unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.unwrap()
    }

    pub async fn get_current_subscription(&self, user_id: &str) -> Value {
        self.get_as("/api/subscriptions/current", user_id).await["subscription"].clone()
    }

    pub async fn get_licenses(&self, user_id: &str) -> Vec<Value> {
        self.get_as("/api/licenses", user_id).await["licenses"].as_array().unwrap().clone()
    }

    pub async fn get_history(&self, user_id: &str) -> Vec<Value> {
        self.get_as("/api/subscriptions/history", user_id).await["changes"].as_array().unwrap().clone()
    }

    pub async fn get_payments(&self, user_id: &str) -> Vec<Value> {
        self.get_as("/api/payments/history", user_id).await["payments"].as_array().unwrap().clone()
    }

    pub async fn count(&self, table: &str) -> i64 {
        self.db.int(&format!("SELECT count(*) FROM {table}")).await
    }

    pub async fn webhook_status(&self, event_id: &str) -> Option<(String, i32, Option<String>)> {
        self.billing.store().webhook_event_status(event_id).await.unwrap()
    }
}

/// A clock tests can move forward.
#[derive(Clone, Default)]
pub struct TestClock(Arc<std::sync::atomic::AtomicI64>);

impl TestClock {
    pub fn advance(&self, seconds: i64) {
        self.0.fetch_add(seconds, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn clock(&self) -> billing_core::billing::Clock {
        let offset = self.0.clone();
        Arc::new(move || {
            time::OffsetDateTime::now_utc() + time::Duration::seconds(offset.load(std::sync::atomic::Ordering::SeqCst))
        })
    }
}

/// One parsed SSE message.
#[derive(Debug, Clone, PartialEq)]
pub struct SseMessage {
    pub id: Option<i64>,
    pub event: String,
    pub data: Value,
}

/// Reads an SSE response message by message.
pub struct EventReader {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
    pub retry_seen: bool,
}

impl EventReader {
    pub fn new(response: reqwest::Response) -> Self {
        Self { body: Box::pin(response.bytes_stream()), buffer: String::new(), retry_seen: false }
    }

    /// The next message with data, or None when the server closed the stream.
    pub async fn next(&mut self) -> Option<SseMessage> {
        use futures_util::StreamExt;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, String::from("message"), None);
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = v.parse().ok();
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(v).expect("data is JSON"));
                    } else if line.starts_with("retry: ") {
                        self.retry_seen = true;
                    }
                }
                if let Some(data) = data {
                    return Some(SseMessage { id, event, data });
                }
            }
            match tokio::time::timeout(Duration::from_secs(10), self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.buffer.push_str(std::str::from_utf8(&chunk).unwrap()),
                Ok(Some(Err(_))) | Ok(None) => return None,
                Err(_) => panic!("no SSE message within 10 s"),
            }
        }
    }

    /// The next message of a given type, skipping others.
    pub async fn next_of(&mut self, event: &str) -> SseMessage {
        loop {
            let message = self.next().await.unwrap_or_else(|| panic!("stream ended before a {event} message"));
            if message.event == event {
                return message;
            }
        }
    }
}

impl TestApp {
    /// Creates an active subscription for `user` on `price` and returns its license key.
    pub async fn issue_license(&self, user: &str, price: &str) -> String {
        let sub = format!("sub_{user}");
        let cus = format!("cus_{user}");
        let mut object = subscription(&sub, &cus, "active", price, Some(user));
        object["items"]["data"][0]["current_period_start"] = json!(period_start());
        object["items"]["data"][0]["current_period_end"] = json!(period_end());
        self.deliver(&event(&format!("evt_create_{user}"), "customer.subscription.created", now() - 60, object)).await;
        self.get_licenses(user).await[0]["key"].as_str().unwrap().to_owned()
    }

    /// A new admin token with these scopes (`&["*"]` for all), as the CLI
    /// would create it.
    pub async fn admin_token(&self, scopes: &[&str]) -> String {
        let name = format!("test-{}", uuid::Uuid::new_v4().simple());
        let scopes = billing_core::domain::admin::Scopes::parse(scopes.iter().copied()).expect("known scopes");
        let (_, token) = self.billing.create_admin_token(&name, scopes).await.expect("token created");
        token.expose().to_owned()
    }

    /// An admin API request with a bearer token and an optional JSON body.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> reqwest::Response {
        let mut request = self.http.request(method, self.url(path)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        request.send().await.unwrap()
    }

    /// [`TestApp::admin`], expecting `status`; returns the JSON body.
    pub async fn admin_ok(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
        status: u16,
    ) -> Value {
        let response = self.admin(method.clone(), path, token, body).await;
        let got = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert_eq!(got, status, "{method} {path}: {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http.post(self.url(path)).json(body).send().await.unwrap()
    }

    pub async fn activate(&self, key: &str, fingerprint: &str) -> reqwest::Response {
        self.post_json(
            "/api/license/activate",
            &json!({ "license_key": key, "fingerprint": fingerprint, "name": fingerprint, "platform": "linux" }),
        )
        .await
    }

    /// Activates and returns (status, body); asserts success.
    pub async fn activate_ok(&self, key: &str, fingerprint: &str) -> Value {
        let response = self.activate(key, fingerprint).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert!(status == 200 || status == 201, "activation failed: {status} {body}");
        body
    }

    pub async fn validate(&self, key: &str, fingerprint: Option<&str>) -> Value {
        let response =
            self.post_json("/api/license/validate", &json!({ "license_key": key, "fingerprint": fingerprint })).await;
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    pub async fn heartbeat(&self, token: &str) -> reqwest::Response {
        self.http.post(self.url("/api/license/heartbeat")).bearer_auth(token).send().await.unwrap()
    }

    pub async fn open_event_stream(&self, key: &str, token: &str, last_event_id: Option<i64>) -> reqwest::Response {
        let mut request = self.http.get(self.url(&format!("/api/events/{key}"))).bearer_auth(token);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        request.send().await.unwrap()
    }

    /// Stops the server (as a crash would end its streams).
    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Decodes an `application/x-www-form-urlencoded` body into ordered pairs.
pub fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).unwrap()
    }
    let text = std::str::from_utf8(body).unwrap();
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// A wiremock matcher: the form body holds exactly these pairs (any order).
pub struct FormIs(pub Vec<(&'static str, String)>);

impl wiremock::Match for FormIs {
    fn matches(&self, request: &wiremock::Request) -> bool {
        let mut got = form_pairs(&request.body);
        let mut want: Vec<(String, String)> = self.0.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
        got.sort();
        want.sort();
        got == want
    }
}

/// The `Idempotency-Key` of a request Stripe received (panics without one).
pub fn idempotency_key_of(request: &wiremock::Request) -> String {
    request
        .headers
        .get("idempotency-key")
        .unwrap_or_else(|| panic!("{} {} has no Idempotency-Key", request.method, request.url.path()))
        .to_str()
        .unwrap()
        .to_owned()
}

/// Whether `key` is exactly what `billing_core::actions` makes for `action`:
/// `billing-<action>-<a random UUID v4, hyphenated, lower case>`.
pub fn is_idempotency_key_for(action: &str, key: &str) -> bool {
    key.strip_prefix("billing-")
        .and_then(|rest| rest.strip_prefix(action))
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|id| uuid::Uuid::parse_str(id).ok().filter(|u| u.hyphenated().to_string() == id))
        .is_some_and(|u| u.get_version() == Some(uuid::Version::Random))
}

/// A wiremock matcher: the `Idempotency-Key` is one made for this action
/// (see [`is_idempotency_key_for`]), so `cancel` does not accept `cancel-now`'s.
pub struct IdempotencyKeyFor(pub &'static str);

impl wiremock::Match for IdempotencyKeyFor {
    fn matches(&self, request: &wiremock::Request) -> bool {
        let keys: Vec<_> = request.headers.get_all("idempotency-key").iter().collect();
        matches!(keys.as_slice(), [key] if key.to_str().is_ok_and(|k| is_idempotency_key_for(self.0, k)))
    }
}

/// A wiremock matcher: no `Idempotency-Key` (reads carry none).
pub struct NoIdempotencyKey;

impl wiremock::Match for NoIdempotencyKey {
    fn matches(&self, request: &wiremock::Request) -> bool {
        !request.headers.contains_key("idempotency-key")
    }
}

/// A wiremock matcher: the query string holds exactly these pairs (any order).
pub struct QueryIs(pub Vec<(&'static str, String)>);

impl wiremock::Match for QueryIs {
    fn matches(&self, request: &wiremock::Request) -> bool {
        let mut got: Vec<(String, String)> =
            request.url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        let mut want: Vec<(String, String)> = self.0.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
        got.sort();
        want.sort();
        got == want
    }
}

/// A request to the Stripe mock with our key and pinned API version.
pub fn stripe_mock(verb: &str, route: &str) -> wiremock::MockBuilder {
    wiremock::Mock::given(wiremock::matchers::method(verb))
        .and(wiremock::matchers::path(route))
        .and(wiremock::matchers::header("authorization", "Bearer sk_test_123"))
        .and(wiremock::matchers::header("stripe-version", billing_core::stripe::client::STRIPE_VERSION))
}

/// A write to Stripe, matched exactly: method, path, every form parameter
/// (`form` empty: no body at all) and an idempotency key made for `action`.
pub fn stripe_write(
    verb: &str,
    route: &str,
    action: &'static str,
    form: Vec<(&'static str, String)>,
) -> wiremock::MockBuilder {
    stripe_mock(verb, route).and(FormIs(form)).and(IdempotencyKeyFor(action))
}

/// A read from Stripe, matched exactly: `GET`, path, every query parameter,
/// no body and no idempotency key.
pub fn stripe_read(route: &str, query: Vec<(&'static str, String)>) -> wiremock::MockBuilder {
    stripe_mock("GET", route).and(QueryIs(query)).and(FormIs(vec![])).and(NoIdempotencyKey)
}
