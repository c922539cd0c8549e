//! A real billing-server in-process on a fresh PostgreSQL database, which
//! tests stop and start again (on the same address, as a restart would), and
//! license clients with their own store directories and clocks.

use billing_core::certificate::SigningKey;
use billing_core::domain::{Actor, Plan, PlanCatalog};
use billing_core::events::HubConfig;
use billing_core::licensing::LicensingConfig;
use billing_core::storage::any::{AnyStore, StoreLocation};
use billing_core::storage::Store;
use billing_core::stripe::WebhookSecrets;
use billing_core::{Billing, BillingConfig};
use billing_server::{AppState, ServerOptions};
use license_client::{ClientConfig, LicenseClient, PublicKey, StreamUpdate};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub const WEBHOOK_SECRET: &str = "whsec_test_license_client";
pub const PRICE_PRO: &str = "price_pro";
pub const PRICE_BASIC: &str = "price_basic";
/// How long a test waits for something asynchronous before failing.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect to PostgreSQL");
    tokio::spawn(connection);
    client
}

/// A database created for one test and dropped after it.
pub struct TestDatabase {
    name: String,
    pub url: String,
}

impl TestDatabase {
    pub async fn create() -> Self {
        let name = format!("license_client_test_{}", uuid::Uuid::new_v4().simple());
        let admin = connect(&format!("{}/postgres", admin_url())).await;
        admin.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create test database");
        let url = format!("{}/{name}", admin_url());
        Self { name, url }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
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

/// One signing key for the whole run, so every server instance agrees.
pub fn signing_key() -> Arc<SigningKey> {
    static KEY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    Arc::new(SigningKey::from_pkcs8(KEY.get_or_init(SigningKey::generate_pkcs8)).unwrap())
}

fn plans() -> PlanCatalog {
    let plan = |id: &str, price: &str, max_devices| Plan {
        amount: Some(1900),
        currency: Some("usd".into()),
        interval: Some("month".into()),
        features: vec!["export".into()],
        ..Plan::new(id, &id.to_uppercase(), price, max_devices)
    };
    PlanCatalog::new(vec![plan("pro", PRICE_PRO, 2), plan("basic", PRICE_BASIC, 1)]).unwrap()
}

/// A running server instance.
pub struct TestServer {
    pub address: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Stops the server and waits until it has (its streams end, its port is free).
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("the server task ends cleanly");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The server side of a test: a database, the engine on it, and whichever
/// server instance is running.
pub struct TestEnv {
    pub billing: Billing<AnyStore>,
    pub db: tokio_postgres::Client,
    stores: Vec<PathBuf>,
    // Last: the database is dropped after everything using it.
    _database: TestDatabase,
}

impl TestEnv {
    pub async fn new() -> Self {
        Self::with_heartbeat_window(600).await
    }

    pub async fn with_heartbeat_window(heartbeat_window_secs: i64) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let database = TestDatabase::create().await;
        let store = AnyStore::open(&StoreLocation::Postgres(database.url.clone()), 8).await.unwrap();
        store.migrate().await.expect("migrations apply");
        let licensing = LicensingConfig {
            heartbeat_window: time::Duration::seconds(heartbeat_window_secs),
            ..LicensingConfig::new(signing_key())
        };
        let config = BillingConfig::new(plans(), licensing).with_webhook_secrets(WebhookSecrets::parse(WEBHOOK_SECRET));
        let billing = Billing::new(store, config);
        Self { db: connect(&database.url).await, billing, stores: Vec::new(), _database: database }
    }

    /// Starts a server instance on `address` (a restart reuses the old one's),
    /// or on a free port.
    pub async fn start_server(&self, address: Option<SocketAddr>) -> TestServer {
        let options = ServerOptions {
            jwt_secret: None,
            max_body_bytes: 1 << 20,
            rate_limit_per_minute: 600,
            hub: HubConfig { poll_interval: Duration::from_secs(30), ..HubConfig::default() },
            trusted_proxies: Default::default(),
            ..ServerOptions::default()
        };
        // A new AppState (event hub, limiters) over the same database, as a new process would have.
        let state = AppState::new(self.billing.clone(), options).await.unwrap();
        let listener = tokio::net::TcpListener::bind(address.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()))
            .await
            .expect("bind the server address");
        let address = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(billing_server::serve(listener, Arc::new(state), async {
            let _ = rx.await;
        }));
        TestServer { address, shutdown: Some(tx), task: Some(task) }
    }

    /// Delivers a signed Stripe webhook straight to the engine (works while
    /// no server instance runs).
    pub async fn deliver(&self, event: &Value) {
        let body = serde_json::to_vec(event).unwrap();
        let signature = WebhookSecrets::parse(WEBHOOK_SECRET).unwrap().sign(&body, now());
        self.billing.ingest_webhook(&body, Some(&signature)).await.expect("webhook applies");
    }

    /// Creates an active subscription for `user` and returns its license key.
    pub async fn issue_license(&self, user: &str, price: &str) -> String {
        let object = stripe_subscription(user, price, false);
        self.deliver(&event(&format!("evt_create_{user}"), "customer.subscription.created", now() - 60, object)).await;
        self.billing.licenses(user).await.unwrap()[0].key.expose().to_owned()
    }

    /// A `customer.subscription.updated` for `user`'s subscription.
    pub async fn update_subscription(&self, user: &str, event_id: &str, price: &str, cancel_at_period_end: bool) {
        let object = stripe_subscription(user, price, cancel_at_period_end);
        self.deliver(&event(event_id, "customer.subscription.updated", now() + self.next_second(), object)).await;
    }

    /// Strictly increasing `created` offsets, so updates apply in order.
    fn next_second(&self) -> i64 {
        static COUNTER: AtomicI64 = AtomicI64::new(1);
        COUNTER.fetch_add(1, Ordering::SeqCst)
    }

    /// A perpetual license of `user` on pro whose updates window ends at
    /// `updates_until`, issued by the vendor; its key.
    pub async fn issue_perpetual(&self, user: &str, updates_until: time::OffsetDateTime) -> String {
        let request = billing_core::admin_licenses::NewLicense {
            user_id: user.into(),
            plan: "pro".into(),
            kind: Some(billing_core::domain::LicenseKind::Perpetual),
            updates_until: Some(updates_until),
            ..Default::default()
        };
        let issued = self.billing.issue_manual_license(&Actor::admin("sales"), request).await.expect("issued");
        issued.record.license.key.expose().to_owned()
    }

    /// Deactivates a device the way the dashboard does.
    pub async fn deactivate_from_dashboard(&self, device_id: &str) {
        let id = uuid::Uuid::parse_str(device_id).unwrap();
        self.billing.deactivate_device_of_user(None, id, &Actor::user("admin")).await.expect("device deactivates");
    }

    /// The server's public key, as an app would have it built in.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_jwk(&self.billing.public_jwk()).unwrap()
    }

    /// A fresh store directory, removed with the environment.
    pub fn store_dir(&mut self) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("license-client-it-{}", uuid::Uuid::new_v4().simple()));
        self.stores.push(dir.clone());
        dir
    }

    /// A client of `server` storing into `store`. `machine` stands for the
    /// machine: a different one gives a different fingerprint.
    pub fn client(&self, server_url: &str, store: &std::path::Path, machine: &str, clock: &TestClock) -> LicenseClient {
        self.client_of_build(server_url, store, machine, clock, None)
    }

    /// [`Self::client`] of a build released at `released_at`.
    pub fn client_of_build(
        &self,
        server_url: &str,
        store: &std::path::Path,
        machine: &str,
        clock: &TestClock,
        released_at: Option<SystemTime>,
    ) -> LicenseClient {
        let mut config = ClientConfig::new(server_url, store);
        config.app_released_at = released_at;
        config.app_salt = format!("license-client-tests/{machine}");
        config.app_version = Some("1.2.3".into());
        config.request_timeout = Duration::from_secs(5);
        config.clock = clock.clock();
        LicenseClient::new(config).expect("client opens its store")
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        for dir in &self.stores {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A Stripe event envelope.
pub fn event(id: &str, kind: &str, created: i64, object: Value) -> Value {
    json!({
        "id": id, "object": "event", "type": kind, "created": created, "api_version": "2025-03-31.basil",
        "livemode": false, "pending_webhooks": 1, "data": { "object": object }
    })
}

/// `user`'s subscription (basil shape), paid for the next 30 days. The
/// period is fixed for the run, so updates that only flip a flag do not
/// change the license (no extra `license.updated` events).
pub fn stripe_subscription(user: &str, price: &str, cancel_at_period_end: bool) -> Value {
    static START: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let start = *START.get_or_init(now);
    json!({
        "id": format!("sub_{user}"), "object": "subscription", "customer": format!("cus_{user}"), "status": "active",
        "cancel_at_period_end": cancel_at_period_end, "cancel_at": null, "canceled_at": null, "ended_at": null,
        "trial_end": null, "metadata": { "user_id": user }, "created": start - 3600,
        "items": { "object": "list", "data": [{
            "id": format!("si_{user}"), "object": "subscription_item",
            "price": { "id": price, "object": "price" },
            "current_period_start": start - 60, "current_period_end": start + 30 * 24 * 3600
        }]}
    })
}

/// A wall clock the test can set back and forth.
#[derive(Clone, Default)]
pub struct TestClock(Arc<AtomicI64>);

impl TestClock {
    pub fn set_offset(&self, seconds: i64) {
        self.0.store(seconds, Ordering::SeqCst);
    }

    pub fn clock(&self) -> license_client::Clock {
        let offset = self.0.clone();
        Arc::new(move || {
            let offset = offset.load(Ordering::SeqCst);
            let delta = Duration::from_secs(offset.unsigned_abs());
            if offset >= 0 {
                SystemTime::now() + delta
            } else {
                SystemTime::now() - delta
            }
        })
    }
}

/// What a subscription delivered, in order.
pub struct Updates(mpsc::UnboundedReceiver<StreamUpdate>);

impl Updates {
    /// A callback for `subscribe` and the receiving end.
    pub fn channel() -> (impl Fn(StreamUpdate) + Send + Sync + 'static, Self) {
        let (tx, rx) = mpsc::unbounded_channel();
        (move |update| drop(tx.send(update)), Self(rx))
    }

    /// The next update, failing the test after [`DEADLINE`].
    pub async fn next(&mut self) -> StreamUpdate {
        tokio::time::timeout(DEADLINE, self.0.recv())
            .await
            .expect("an update within the deadline")
            .expect("the subscription is still delivering")
    }

    /// Skips to the first update matching `want`.
    pub async fn until(&mut self, what: &str, want: impl Fn(&StreamUpdate) -> bool) -> StreamUpdate {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let update = tokio::time::timeout_at(deadline, self.0.recv())
                .await
                .unwrap_or_else(|_| panic!("no {what} within the deadline"))
                .unwrap_or_else(|| panic!("the subscription ended before {what}"));
            if want(&update) {
                return update;
            }
        }
    }

    /// Skips to the next event and returns it.
    pub async fn next_event(&mut self) -> license_client::LicenseEvent {
        match self.until("an event", |u| matches!(u, StreamUpdate::Event(_))).await {
            StreamUpdate::Event(event) => event,
            _ => unreachable!(),
        }
    }
}
