//! The storage conformance suite: what `Store` promises (its two seams,
//! `sync_stripe` and `license_work`, included), written
//! once and run against the backend `TEST_STORE` selects: PostgreSQL (the
//! default; a fresh database per test on `TEST_DATABASE_URL`) or, with
//! `TEST_STORE=sqlite`, the embedded store (a fresh file per test).
//! `scripts/test` runs it both ways. Where the backends are allowed to differ
//! (when a deferred write reports its failure, how soon a NOTIFY arrives),
//! the test says so and holds each backend to what it promises.
//!
//! At the end, the billing and licensing use cases run over the selected
//! store, and over both stores at once with their results compared.
//! SQLite-only behaviour (WAL, the file, a SIGKILLed writer) is tested in
//! `sqlite_store.rs`.
#![cfg(all(feature = "postgres", feature = "sqlite"))]

use billing_core::billing::{error_chain, Clock};
use billing_core::certificate::SigningKey;
use billing_core::domain::{
    Actor, Device, DeviceStatus, License, LicenseKey, LicenseKind, LicenseOverrides, LicenseSource, LicenseStatus,
    LicenseTerms, Payment, PaymentStatus, Plan, PlanCatalog, Subscription, SubscriptionSnapshot, SubscriptionStatus,
    Timestamp, Topic,
};
use billing_core::licensing::{ActivationRequest, LicensingConfig, LicensingError};
use billing_core::storage::any::{AnyStore, StoreLocation};
use billing_core::storage::backfill_runs::{BackfillCheckpoint, BackfillRunStore};
use billing_core::storage::license_work::{
    DeviceActivation, HeartbeatWrite, LicenseAudit, LicenseBundle, LicenseKeys, TrialUse,
};
use billing_core::storage::postgres::OUTBOX_CHANNEL;
use billing_core::storage::stripe_sync::{
    Changeset, DeliveryClaim, DeliveryRecord, DeviceAudit, HeldCustomer, HeldSubscription, NewCustomer, PaymentUpsert,
    StripeBundle, StripeKeys, SubscriptionAudit,
};
use billing_core::storage::{EventRecord, OutboxMessage, Store, StoreError};
// Webhooks to the vendor (issue 14).
use billing_core::storage::{
    NewWebhookEndpoint, WebhookAttempt, WebhookAttemptRecord, WebhookClaim, WebhookDeliveryCursor,
    WebhookMessageStatus, WebhookRetry,
};
use billing_core::stripe::WebhookSecrets;
use billing_core::{Billing, BillingConfig};
use deadpool_sqlite::rusqlite;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use time::macros::datetime;
use tokio::sync::mpsc::Receiver;
use uuid::Uuid;

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// Which backend a store is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Postgres,
    Sqlite,
}

/// The backend under test: `TEST_STORE=postgres` (the default) or `sqlite`,
/// as for the server's integration suite.
fn backend() -> Backend {
    match std::env::var("TEST_STORE").as_deref() {
        Ok("sqlite") => Backend::Sqlite,
        Ok("postgres") | Err(_) => Backend::Postgres,
        Ok(other) => panic!("TEST_STORE must be postgres or sqlite, not {other:?}"),
    }
}

fn pg_admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

async fn pg_connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect to PostgreSQL");
    tokio::spawn(connection);
    client
}

/// Connections a test store may open (the busiest test runs ten tasks at once).
const POOL_SIZE: usize = 16;

/// A database of one test's own: on PostgreSQL a database created for it,
/// on SQLite a file in a directory of its own; removed when dropped.
struct TestDb {
    backend: Backend,
    location: StoreLocation,
}

impl TestDb {
    async fn create(backend: Backend) -> Self {
        let id = Uuid::new_v4().simple();
        let location = match backend {
            Backend::Postgres => {
                let name = format!("billing_conformance_{id}");
                let admin = pg_connect(&format!("{}/postgres", pg_admin_url())).await;
                admin.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create test database");
                StoreLocation::Postgres(format!("{}/{name}", pg_admin_url()))
            }
            Backend::Sqlite => {
                StoreLocation::Sqlite(std::env::temp_dir().join(format!("billing-conformance-{id}")).join("billing.db"))
            }
        };
        Self { backend, location }
    }

    /// A new store on this database (not migrated).
    async fn open(&self) -> AnyStore {
        let store = AnyStore::open(&self.location, POOL_SIZE).await.expect("open store");
        assert_eq!(store.kind(), self.backend.kind());
        store
    }

    /// One integer from `sql`, which both dialects must accept; read past the
    /// store, on a connection of its own.
    async fn count(&self, sql: &str) -> i64 {
        match &self.location {
            StoreLocation::Postgres(url) => pg_connect(url).await.query_one(sql, &[]).await.unwrap().get(0),
            StoreLocation::Sqlite(path) => {
                let (path, sql) = (path.clone(), sql.to_owned());
                tokio::task::spawn_blocking(move || sqlite_raw(&path).query_row(&sql, [], |r| r.get(0)).unwrap())
                    .await
                    .unwrap()
            }
        }
    }

    /// The first column of every row of `sql`, as text; as [`TestDb::count`].
    async fn texts(&self, sql: &str) -> Vec<String> {
        match &self.location {
            StoreLocation::Postgres(url) => {
                pg_connect(url).await.query(sql, &[]).await.unwrap().iter().map(|r| r.get(0)).collect()
            }
            StoreLocation::Sqlite(path) => {
                let (path, sql) = (path.clone(), sql.to_owned());
                tokio::task::spawn_blocking(move || {
                    let raw = sqlite_raw(&path);
                    let mut statement = raw.prepare(&sql).unwrap();
                    statement.query_map([], |r| r.get(0)).unwrap().collect::<Result<_, _>>().unwrap()
                })
                .await
                .unwrap()
            }
        }
    }
}

impl TestDb {
    /// Every row of every table, as sorted text: equal before and after a
    /// unit of work exactly when it committed nothing.
    async fn fingerprint(&self) -> Vec<String> {
        let mut rows = match &self.location {
            StoreLocation::Postgres(url) => {
                let client = pg_connect(url).await;
                let tables = client
                    .query("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1", &[])
                    .await
                    .unwrap();
                let mut rows = Vec::new();
                for table in tables.iter().map(|r| r.get::<_, String>(0)) {
                    for row in client.query(&format!("SELECT t::text FROM {table} t"), &[]).await.unwrap() {
                        rows.push(format!("{table}: {}", row.get::<_, String>(0)));
                    }
                }
                rows
            }
            StoreLocation::Sqlite(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    let raw = sqlite_raw(&path);
                    let mut tables = raw.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").unwrap();
                    let tables: Vec<String> = tables.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
                    let mut rows = Vec::new();
                    for table in tables {
                        let mut statement = raw.prepare(&format!("SELECT * FROM \"{table}\"")).unwrap();
                        let columns = statement.column_count();
                        let mut result = statement.query([]).unwrap();
                        while let Some(row) = result.next().unwrap() {
                            let values: Vec<String> =
                                (0..columns).map(|i| format!("{:?}", row.get_ref(i).unwrap())).collect();
                            rows.push(format!("{table}: {}", values.join(",")));
                        }
                    }
                    rows
                })
                .await
                .unwrap()
            }
        };
        rows.sort();
        rows
    }

    /// Runs `sql` in a transaction of the test's own, past the store, and
    /// leaves it open (on SQLite holding the file's write lock) until
    /// [`Held::end`].
    async fn hold(&self, sql: &str) -> Held {
        match &self.location {
            StoreLocation::Postgres(url) => {
                let client = pg_connect(url).await;
                client.batch_execute(&format!("BEGIN; {sql}")).await.unwrap();
                Held::Postgres(client)
            }
            StoreLocation::Sqlite(path) => {
                let (path, sql) = (path.clone(), sql.to_owned());
                let (begun, has_begun) = tokio::sync::oneshot::channel();
                let (end, ending) = std::sync::mpsc::channel::<bool>();
                let thread = tokio::task::spawn_blocking(move || {
                    let raw = sqlite_raw(&path);
                    raw.execute_batch(&format!("BEGIN IMMEDIATE; {sql}")).unwrap();
                    begun.send(()).unwrap();
                    let commit = ending.recv().unwrap_or(false);
                    raw.execute_batch(if commit { "COMMIT" } else { "ROLLBACK" }).unwrap();
                });
                has_begun.await.unwrap();
                Held::Sqlite(end, thread)
            }
        }
    }
}

/// An open transaction of [`TestDb::hold`].
enum Held {
    Postgres(tokio_postgres::Client),
    Sqlite(std::sync::mpsc::Sender<bool>, tokio::task::JoinHandle<()>),
}

impl Held {
    /// Commits or rolls back.
    async fn end(self, commit: bool) {
        let end = if commit { "COMMIT" } else { "ROLLBACK" };
        match self {
            Held::Postgres(client) => client.batch_execute(end).await.unwrap(),
            Held::Sqlite(ending, thread) => {
                ending.send(commit).unwrap();
                thread.await.unwrap();
            }
        }
    }
}

impl Backend {
    fn kind(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        }
    }
}

fn sqlite_raw(path: &PathBuf) -> rusqlite::Connection {
    let raw = rusqlite::Connection::open(path).expect("open raw connection");
    raw.busy_timeout(Duration::from_secs(10)).unwrap();
    raw
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match &self.location {
            StoreLocation::Sqlite(path) => {
                let _ = std::fs::remove_dir_all(path.parent().expect("a per-test directory"));
            }
            StoreLocation::Postgres(url) => {
                let name = url.rsplit('/').next().expect("a database name").to_owned();
                // Drop runs inside the test's runtime; use a thread with its own.
                let _ = std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                    runtime.block_on(async {
                        let admin = pg_connect(&format!("{}/postgres", pg_admin_url())).await;
                        let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
                    });
                })
                .join();
            }
        }
    }
}

/// A migrated store on a fresh database of the backend under test. Keep the
/// `TestDb` alive as long as the store.
async fn fresh_store() -> (TestDb, AnyStore) {
    let db = TestDb::create(backend()).await;
    let store = db.open().await;
    store.migrate().await.expect("migrate");
    (db, store)
}

/// How long PostgreSQL may take to deliver a NOTIFY to a watcher (it comes
/// on a connection of its own, after the commit has returned).
const NOTIFY_WITHIN: Duration = Duration::from_secs(10);

/// Asserts that `watch` has a wake-up. The embedded store signals before
/// `commit` returns, so it must be there already; PostgreSQL's NOTIFY may
/// take a moment.
async fn assert_woken(backend: Backend, watch: &mut Receiver<()>, why: &str) {
    match backend {
        Backend::Sqlite => assert_eq!(watch.try_recv(), Ok(()), "{why}"),
        Backend::Postgres => {
            let woken = tokio::time::timeout(NOTIFY_WITHIN, watch.recv()).await;
            assert_eq!(woken, Ok(Some(())), "{why}");
        }
    }
}

/// Every NOTIFY on the outbox channel, heard on a connection of the test's
/// own (PostgreSQL only: the embedded store signals in-process, before
/// `commit` returns). PostgreSQL delivers notifications in commit order, so
/// a marker sent after an action arrives after anything the action sent:
/// "nothing before the marker" proves nothing was sent, without waiting.
struct NotifyLog {
    client: tokio_postgres::Client,
    received: tokio::sync::mpsc::UnboundedReceiver<String>,
    markers: u32,
}

impl NotifyLog {
    async fn listen(db: &TestDb) -> Option<Self> {
        use futures_util::StreamExt;
        let StoreLocation::Postgres(url) = &db.location else { return None };
        let (client, mut connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
        let (tx, received) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if let tokio_postgres::AsyncMessage::Notification(n) = message {
                    let _ = tx.send(n.payload().to_owned());
                }
            }
        });
        client.batch_execute(&format!("LISTEN {OUTBOX_CHANNEL}")).await.unwrap();
        Some(Self { client, received, markers: 0 })
    }

    /// The payloads of the notifications sent since the previous call (the
    /// store's own are empty strings). The marker wakes the store's watchers
    /// too, like any notification.
    async fn sent_since_last(&mut self) -> Vec<String> {
        self.markers += 1;
        let marker = format!("marker {}", self.markers);
        self.client.batch_execute(&format!("NOTIFY {OUTBOX_CHANNEL}, '{marker}'")).await.unwrap();
        let mut sent = Vec::new();
        loop {
            let payload = tokio::time::timeout(NOTIFY_WITHIN, self.received.recv())
                .await
                .expect("the marker comes back")
                .expect("the listening connection is open");
            if payload == marker {
                return sent;
            }
            sent.push(payload);
        }
    }
}

/// Asserts that nothing signalled `watch`: on PostgreSQL, that no NOTIFY
/// was sent (then the marker's wake-up is taken, so the watcher is left
/// with nothing pending and nothing in flight).
async fn assert_not_woken(backend: Backend, log: &mut Option<NotifyLog>, watch: &mut Receiver<()>, why: &str) {
    if let Some(log) = log {
        assert_eq!(log.sent_since_last().await, Vec::<String>::new(), "{why}: notified");
        assert_woken(backend, watch, "the marker reaches the watcher").await;
    }
    assert!(watch.try_recv().is_err(), "{why}");
}

fn event(id: &str) -> EventRecord<'_> {
    EventRecord {
        id,
        kind: "customer.subscription.updated",
        created: 1_764_000_000,
        api_version: Some("2025-03-31"),
        object_id: Some("sub_1"),
        payload: b"{}",
    }
}

fn message(license_id: Option<Uuid>, n: i64) -> OutboxMessage {
    OutboxMessage { license_id, topic: Topic::LicenseUpdated, payload: json!({ "n": n }) }
}

fn at(seconds: i64, nanos: i64) -> Timestamp {
    Timestamp::from_unix_timestamp(seconds).unwrap() + time::Duration::nanoseconds(nanos)
}

/// What PostgreSQL's `timestamptz` keeps of an instant: whole microseconds
/// counted from 2000-01-01, truncated toward that epoch.
fn as_postgres_keeps(t: Timestamp) -> Timestamp {
    let epoch = datetime!(2000-01-01 0:00 UTC);
    epoch + time::Duration::microseconds((t - epoch).whole_microseconds() as i64)
}

/// A subscription with every field set, sub-microsecond digits included,
/// and instants before 2000 and before 1970.
fn full_subscription(stripe_id: &str, customer: &str, user: &str) -> Subscription {
    Subscription {
        id: Uuid::new_v4(),
        snapshot: SubscriptionSnapshot {
            stripe_subscription_id: stripe_id.to_owned(),
            stripe_customer_id: customer.to_owned(),
            status: SubscriptionStatus::Trialing,
            price_id: Some("price_pro_monthly".to_owned()),
            item_id: Some("si_1".to_owned()),
            cancel_at_period_end: true,
            cancel_at: Some(at(1_766_592_000, 999_999_999)),
            canceled_at: Some(at(946_684_799, 999_999_500)),
            ended_at: Some(at(-86_401, 123_456_789)),
            current_period_start: Some(at(1_764_000_000, 1_000)),
            current_period_end: Some(at(1_766_592_000, 0)),
            trial_end: None,
            user_id: Some(user.to_owned()),
        },
        plan_id: Some("pro".to_owned()),
        past_due_since: Some(Timestamp::now_utc()),
        source_created: 1_764_000_123,
    }
}

/// `sub` as any store must give it back.
fn as_stored(sub: &Subscription) -> Subscription {
    let keep = |t: Option<Timestamp>| t.map(as_postgres_keeps);
    let s = &sub.snapshot;
    Subscription {
        snapshot: SubscriptionSnapshot {
            cancel_at: keep(s.cancel_at),
            canceled_at: keep(s.canceled_at),
            ended_at: keep(s.ended_at),
            current_period_start: keep(s.current_period_start),
            current_period_end: keep(s.current_period_end),
            trial_end: keep(s.trial_end),
            ..s.clone()
        },
        past_due_since: keep(sub.past_due_since),
        ..sub.clone()
    }
}

/// Creates customer `cus`, subscription `sub_id` and its license through one
/// Stripe unit of work; returns them.
async fn seed_license<S: Store>(store: &S, sub_id: &str, cus: &str, user: &str) -> (Subscription, License) {
    let customer = Uuid::new_v4();
    let sub = full_subscription(sub_id, cus, user);
    let license = License::for_subscription(
        sub.id,
        LicenseTerms {
            status: LicenseStatus::Active,
            max_devices: 3,
            expires_at: Some(at(1_766_592_000, 500)),
            grace_ends_at: None,
            plan_id: Some("pro".to_owned()),
        },
    );
    let changes = Changeset {
        new_customers: vec![NewCustomer {
            id: customer,
            stripe_customer_id: cus.to_owned(),
            user_id: Some(user.into()),
        }],
        subscriptions: vec![HeldSubscription { subscription: sub.clone(), customer_id: customer }],
        new_licenses: vec![license.clone()],
        ..Changeset::default()
    };
    apply(store, keys(&[], &[sub_id], &[cus], &[]), changes).await.unwrap();
    (sub, license)
}

/// A delivery to claim, with the envelope facts of [`event`].
fn claim(id: &str) -> DeliveryClaim {
    DeliveryClaim {
        id: id.to_owned(),
        kind: "customer.subscription.updated".to_owned(),
        created: 1_764_000_000,
        api_version: Some("2025-03-31".to_owned()),
        object_id: Some("sub_1".to_owned()),
        payload: b"{}".to_vec().into(),
    }
}

/// What a Stripe unit of work names: deliveries to claim, rows to lock.
fn keys(claims: &[&str], subscriptions: &[&str], customers: &[&str], invoices: &[&str]) -> StripeKeys {
    let set = |ids: &[&str]| ids.iter().map(|id| id.to_string()).collect();
    let mut keys = StripeKeys {
        subscriptions: set(subscriptions),
        customers: set(customers),
        invoices: set(invoices),
        ..StripeKeys::default()
    };
    for id in claims {
        keys.claim(claim(id));
    }
    keys
}

/// One Stripe unit of work that writes `changes` whatever it loads; returns
/// what it loaded.
async fn apply<S: Store>(store: &S, keys: StripeKeys, changes: Changeset) -> Result<StripeBundle, StoreError> {
    store.sync_stripe(keys, move |bundle| (changes, bundle)).await
}

/// What a unit of work naming `keys` loads; it writes nothing but its claims.
async fn load<S: Store>(store: &S, keys: StripeKeys) -> StripeBundle {
    apply(store, keys, Changeset::default()).await.expect("load")
}

/// Customer `cus`, created, or linked to `user` when it has no user yet: the
/// tests' find-or-create through the seam. Returns our id.
async fn customer<S: Store>(store: &S, cus: &str, user: Option<&str>) -> Uuid {
    let (stripe_id, user) = (cus.to_owned(), user.map(str::to_owned));
    let decide = move |bundle: StripeBundle| {
        let mut changes = Changeset::default();
        let id = match bundle.customers.get(&stripe_id) {
            Some(held) => {
                if let (None, Some(user)) = (&held.user_id, user) {
                    changes.customer_links.push((held.id, user));
                }
                held.id
            }
            None => {
                let id = Uuid::new_v4();
                changes.new_customers.push(NewCustomer { id, stripe_customer_id: stripe_id, user_id: user });
                id
            }
        };
        (changes, id)
    };
    store.sync_stripe(keys(&[], &[], &[cus], &[]), decide).await.unwrap()
}

/// A manual license of `user`: a row a unit of work can insert with no
/// parent row.
fn manual_license(user: &str) -> License {
    License {
        id: Uuid::new_v4(),
        subscription_id: None,
        source: LicenseSource::Manual,
        user_id: Some(user.to_owned()),
        key: LicenseKey::generate(),
        terms: LicenseTerms {
            status: LicenseStatus::Active,
            max_devices: 1,
            expires_at: None,
            grace_ends_at: None,
            plan_id: None,
        },
        entitlements: Vec::new(),
        metadata: serde_json::Map::new(),
        overrides: LicenseOverrides::default(),
        kind: LicenseKind::Subscription,
        updates_until: None,
        trial: false,
    }
}

/// One license unit of work that writes `changes` whatever it loads;
/// returns what it loaded.
async fn work<S: Store>(store: &S, keys: LicenseKeys, changes: Changeset) -> Result<LicenseBundle, StoreError> {
    store.license_work(keys, move |bundle| (changes, bundle)).await
}

/// What a license unit of work naming `keys` loads; it writes nothing.
async fn load_license<S: Store>(store: &S, keys: LicenseKeys) -> LicenseBundle {
    work(store, keys, Changeset::default()).await.expect("load")
}

/// Commits `messages` to the outbox in one unit of work.
async fn publish<S: Store>(store: &S, messages: Vec<OutboxMessage>) {
    let changes = Changeset { outbox: messages, ..Changeset::default() };
    work(store, LicenseKeys::Nothing, changes).await.expect("published");
}

/// The heartbeat window of the devices these tests write.
const WINDOW: time::Duration = time::Duration::minutes(10);

/// A device activated with a token hash, as a changeset holds it, due
/// [`WINDOW`] after it was last heard from.
fn activation(device: &Device, token_hash: &[u8]) -> DeviceActivation {
    DeviceActivation {
        device: device.clone(),
        token_hash: token_hash.to_vec(),
        heartbeat_deadline: Some(device.last_heartbeat_at + WINDOW),
    }
}

/// Adds a write that cannot succeed (a device of no license) to `changes`,
/// so that applying them fails and writes nothing; returns the error.
async fn apply_failing<S: Store>(store: &S, mut changes: Changeset) -> StoreError {
    let ghost = device(Uuid::new_v4(), "fp_ghost", Timestamp::now_utc());
    changes.new_devices.push(activation(&ghost, b"token-ghost"));
    let err = work(store, LicenseKeys::Nothing, changes).await.expect_err("foreign keys are enforced");
    assert!(matches!(err, StoreError::Query(_)), "{err:?}");
    err
}

fn device(license_id: Uuid, fingerprint: &str, seen: Timestamp) -> Device {
    Device {
        id: Uuid::new_v4(),
        license_id,
        fingerprint: fingerprint.to_owned(),
        name: Some(format!("{fingerprint} laptop")),
        platform: Some("linux".to_owned()),
        app_version: None,
        status: DeviceStatus::Active,
        activated_at: seen,
        last_heartbeat_at: seen,
        deactivated_at: None,
        air_gapped: false,
    }
}

// ---------------------------------------------------------------------------
// Schema and migrations
// ---------------------------------------------------------------------------

#[tokio::test]
async fn migrating_twice_is_a_no_op() {
    let (db, store) = fresh_store().await;
    store.migrate().await.expect("second migrate");
    let reopened = db.open().await;
    reopened.migrate().await.expect("migrate after reopening");

    let applied = db.texts("SELECT version || ' ' || name FROM refinery_schema_history ORDER BY version").await;
    // Every migration file of this dialect, in order: the same list in both
    // dialects is checked by the migration_check unit tests.
    let dialect = match backend() {
        Backend::Postgres => "postgres",
        Backend::Sqlite => "sqlite",
    };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations").join(dialect);
    let mut expected: Vec<(u32, String)> = std::fs::read_dir(dir)
        .expect("migrations directory")
        .map(|entry| {
            let file = entry.expect("migration file").file_name().into_string().expect("UTF-8 name");
            let (version, name) =
                file.trim_start_matches('V').trim_end_matches(".sql").split_once("__").expect("V<n>__name");
            (version.parse().expect("numeric version"), name.to_owned())
        })
        .collect();
    expected.sort();
    let expected: Vec<String> = expected.into_iter().map(|(v, n)| format!("{v} {n}")).collect();
    assert!(expected.len() >= 6, "{expected:?}");
    assert_eq!(applied, expected);
    for table in [
        "customers",
        "subscriptions",
        "licenses",
        "payments",
        "subscription_changes",
        "webhook_events",
        "outbox_events",
        "devices",
        "device_changes",
        "license_changes",
        "admin_tokens",
        "trial_uses",
    ] {
        assert_eq!(db.count(&format!("SELECT count(*) FROM {table}")).await, 0, "{table} exists, empty");
    }
    store.ping().await.expect("ping");
    reopened.ping().await.expect("ping after reopening");
}

// ---------------------------------------------------------------------------
// Units of work
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_claimed_event_is_a_duplicate_and_a_failed_one_is_claimed_again() {
    let (db, store) = fresh_store().await;
    let record = |id: &str, how| Changeset { deliveries: vec![(id.to_owned(), how)], ..Changeset::default() };

    let first =
        apply(&store, keys(&["evt_1"], &[], &[], &[]), record("evt_1", DeliveryRecord::Noted("stale snapshot")))
            .await
            .unwrap();
    assert_eq!(first.claimed, HashSet::from(["evt_1".to_owned()]));
    let processed = Some(("processed".to_owned(), 1, None));
    assert_eq!(store.webhook_event_status("evt_1").await.unwrap(), processed);

    // A duplicate is claimed by no one: it is absent from `claimed`, its row
    // is left as it was, and the rest of its group applies.
    let claimed_only = |bundle: StripeBundle| {
        let mut changes = Changeset::default();
        for id in &bundle.claimed {
            changes.new_customers.push(NewCustomer {
                id: Uuid::new_v4(),
                stripe_customer_id: format!("cus_{id}"),
                user_id: Some("user_duplicate".to_owned()),
            });
        }
        (changes, bundle.claimed)
    };
    let claimed = store.sync_stripe(keys(&["evt_1", "evt_4"], &[], &[], &[]), claimed_only).await.unwrap();
    assert_eq!(claimed, HashSet::from(["evt_4".to_owned()]), "a duplicate claim");
    let before = db.fingerprint().await;
    let claimed = store.sync_stripe(keys(&["evt_1"], &[], &[], &[]), claimed_only).await.unwrap();
    assert!(claimed.is_empty(), "a duplicate claim");
    assert_eq!(db.fingerprint().await, before, "a group of duplicates writes nothing");
    assert_eq!(store.webhook_event_status("evt_1").await.unwrap(), processed, "unchanged");
    let duplicate = store.stripe_delivery("evt_1").await.unwrap().unwrap();
    assert_eq!((duplicate.attempts, duplicate.note.as_deref()), (1, Some("stale snapshot")), "unchanged");
    assert_eq!(store.stripe_customers_of_user("user_duplicate").await.unwrap(), ["cus_evt_4"], "nothing for evt_1");
    // A failure is not recorded over a processed delivery.
    store.record_event_failure(&event("evt_1"), "boom").await.unwrap();
    assert_eq!(store.webhook_event_status("evt_1").await.unwrap(), processed);

    store.record_event_failure(&event("evt_2"), "first failure").await.unwrap();
    store.record_event_failure(&event("evt_2"), "second failure").await.unwrap();
    assert_eq!(
        store.webhook_event_status("evt_2").await.unwrap(),
        Some(("failed".to_owned(), 2, Some("second failure".to_owned())))
    );
    let again = apply(&store, keys(&["evt_2"], &[], &[], &[]), record("evt_2", DeliveryRecord::Ignored)).await.unwrap();
    assert!(again.claimed.contains("evt_2"), "a failed delivery is claimed again");
    assert_eq!(store.webhook_event_status("evt_2").await.unwrap(), Some(("ignored".to_owned(), 3, None)));

    // A claim rolled back is no claim: here the apply fails (cus_evt_4 exists).
    let failing = Changeset {
        new_customers: vec![NewCustomer { id: Uuid::new_v4(), stripe_customer_id: "cus_evt_4".into(), user_id: None }],
        ..Changeset::default()
    };
    let err = apply(&store, keys(&["evt_3"], &[], &[], &[]), failing).await.expect_err("a unique violation");
    assert!(matches!(err, StoreError::Query(_)), "{err:?}");
    assert_eq!(store.webhook_event_status("evt_3").await.unwrap(), None, "rolled back with its unit of work");
    let third = load(&store, keys(&["evt_3"], &[], &[], &[])).await;
    assert!(third.claimed.contains("evt_3"), "the first claim was rolled back");
    assert_eq!(store.webhook_event_status("evt_3").await.unwrap(), processed);
}

#[tokio::test]
async fn a_claim_waits_for_an_uncommitted_claim_of_the_same_delivery() {
    for commit in [false, true] {
        let (db, store) = fresh_store().await;
        let holder = db
            .hold("INSERT INTO webhook_events (id, type, created, status) VALUES ('evt_race', 'held', 1, 'processed')")
            .await;
        assert_eq!(store.webhook_event_status("evt_race").await.unwrap(), None, "uncommitted claims are invisible");
        let racing = tokio::spawn({
            let store = store.clone();
            async move { load(&store, keys(&["evt_race"], &[], &[], &[])).await.claimed }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!racing.is_finished(), "commit {commit}: the claim waits for the uncommitted one");
        holder.end(commit).await;
        let claimed = tokio::time::timeout(Duration::from_secs(10), racing).await.expect("no deadlock").unwrap();
        let kind = store.stripe_delivery("evt_race").await.unwrap().expect("recorded").kind;
        match commit {
            true => {
                assert!(claimed.is_empty(), "applied by the other transaction: a duplicate");
                assert_eq!(kind, "held");
            }
            false => {
                assert_eq!(claimed, HashSet::from(["evt_race".to_owned()]), "the other one rolled back");
                assert_eq!(kind, "customer.subscription.updated", "recorded by this claim");
            }
        }
    }
}

#[tokio::test]
async fn a_group_claims_each_delivery_once() {
    let (_db, store) = fresh_store().await;
    store.record_event_failure(&event("evt_failed"), "boom").await.unwrap();
    load(&store, keys(&["evt_done"], &[], &[], &[])).await;

    let mut group = keys(&["evt_new", "evt_failed", "evt_done"], &[], &[], &[]);
    assert!(!group.claim(claim("evt_new")), "the group claims it already");
    assert_eq!(
        group.deliveries.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["evt_done", "evt_failed", "evt_new"]
    );
    let bundle = load(&store, group).await;
    assert_eq!(
        bundle.claimed,
        HashSet::from(["evt_new".to_owned(), "evt_failed".to_owned()]),
        "new and failed before; not the processed one"
    );
    assert_eq!(store.webhook_event_status("evt_new").await.unwrap(), Some(("processed".to_owned(), 1, None)));
    assert_eq!(store.webhook_event_status("evt_failed").await.unwrap(), Some(("processed".to_owned(), 2, None)));
    assert_eq!(store.webhook_event_status("evt_done").await.unwrap(), Some(("processed".to_owned(), 1, None)));
}

#[tokio::test]
async fn a_released_delivery_is_left_as_it_was_before_the_claim() {
    let (db, store) = fresh_store().await;
    store.record_event_failure(&event("evt_failed"), "first failure").await.unwrap();
    store.record_event_failure(&event("evt_failed"), "second failure").await.unwrap();
    let before = db.fingerprint().await;
    let release = Changeset {
        deliveries: vec![
            ("evt_new".to_owned(), DeliveryRecord::Released("waits for Stripe")),
            ("evt_failed".to_owned(), DeliveryRecord::Released("waits for Stripe")),
        ],
        ..Changeset::default()
    };
    let bundle = apply(&store, keys(&["evt_new", "evt_failed"], &[], &[], &[]), release).await.unwrap();
    assert_eq!(bundle.claimed.len(), 2, "both were claimed");
    assert_eq!(store.webhook_event_status("evt_new").await.unwrap(), None, "a new one leaves no row");
    assert_eq!(
        store.webhook_event_status("evt_failed").await.unwrap(),
        Some(("failed".to_owned(), 2, Some("waits for Stripe".to_owned()))),
        "a failed one is failed again, its attempts as before, with why it waits"
    );
    assert_eq!(db.fingerprint().await.len(), before.len(), "no row more or less");
    let again = load(&store, keys(&["evt_new", "evt_failed"], &[], &[], &[])).await;
    assert_eq!(again.claimed.len(), 2, "both are claimable again");
    assert_eq!(store.webhook_event_status("evt_failed").await.unwrap(), Some(("processed".to_owned(), 3, None)));
}

#[tokio::test]
async fn every_part_of_a_changeset_is_applied_and_loaded_back() {
    use billing_core::domain::subscription::SubscriptionChange;
    let (db, store) = fresh_store().await;
    let hook = endpoint(&store, &["license.updated"]).await;
    let (sub, license) = seed_license(&store, "sub_1", "cus_1", "user_1").await;
    // Whole microseconds, so that what is written reads back equal.
    let whole = LicenseTerms { expires_at: Some(at(1_766_592_000, 0)), ..license.terms.clone() };
    let seen = at(1_764_000_500, 0);
    let (a, b) = (device(license.id, "fp_a", seen), device(license.id, "fp_b", seen + time::Duration::seconds(1)));
    let inserted =
        Changeset { new_devices: vec![activation(&b, b"token-b"), activation(&a, b"token-a")], ..Changeset::default() };
    work(&store, LicenseKeys::Nothing, inserted).await.unwrap();
    let customer_id = load(&store, keys(&[], &["sub_1"], &[], &[])).await.subscriptions["sub_1"].customer_id;

    // A second subscription, issued its license with every column set, and
    // the first one's license, devices and audit in the same changeset.
    let sub_2 = full_subscription("sub_2", "cus_1", "user_1");
    let issued = License {
        entitlements: vec!["export".into()],
        metadata: [("order".to_owned(), json!("R-2"))].into_iter().collect(),
        overrides: LicenseOverrides {
            max_devices: Some(5),
            expires_at: Some(at(1_800_000_000, 0)),
            suspended_at: None,
            disputed_at: None,
        },
        ..License::for_subscription(sub_2.id, LicenseTerms { max_devices: 5, ..whole.clone() })
    };
    let terms = LicenseTerms {
        status: LicenseStatus::Suspended,
        max_devices: 1,
        grace_ends_at: Some(at(1_765_000_000, 0)),
        ..whole.clone()
    };
    let off = at(1_764_000_900, 0);
    let mut changes = Changeset {
        subscriptions: vec![HeldSubscription { subscription: sub_2.clone(), customer_id }],
        subscription_audit: vec![SubscriptionAudit {
            subscription_id: sub_2.id,
            change: SubscriptionChange::StatusChanged {
                from: SubscriptionStatus::Incomplete,
                to: SubscriptionStatus::Trialing,
            },
            actor: "stripe".into(),
            stripe_event_id: Some("evt_2".into()),
            client_addr: None,
        }],
        new_licenses: vec![issued.clone()],
        device_statuses: vec![(a.id, DeviceStatus::Deactivated, off)],
        device_audit: vec![
            DeviceAudit {
                device_id: a.id,
                license_id: license.id,
                kind: "deactivated",
                actor: "stripe".into(),
                detail: json!({ "why": "downgrade" }),
                client_addr: None,
            },
            DeviceAudit {
                device_id: b.id,
                license_id: license.id,
                kind: "kept",
                actor: "admin:ops".into(),
                detail: json!({}),
                client_addr: Some("2001:db8::7".parse().unwrap()),
            },
        ],
        outbox: (1..=3).map(|n| message(Some(license.id), n)).collect(),
        ..Changeset::default()
    };
    changes.set_license_terms(license.id, LicenseTerms { max_devices: 2, ..terms.clone() });
    changes.set_license_terms(license.id, terms.clone());
    assert_eq!(changes.license_terms.len(), 1, "held once, in its last state");
    apply(&store, keys(&[], &["sub_1", "sub_2"], &[], &[]), changes).await.unwrap();

    let bundle = load(&store, keys(&[], &["sub_1", "sub_2"], &[], &[])).await;
    assert_eq!(bundle.subscriptions["sub_2"], HeldSubscription { subscription: as_stored(&sub_2), customer_id });
    assert_eq!(bundle.licenses.get(&sub_2.id), Some(&issued), "issued with every column");
    assert_eq!(store.license_by_key_hash(&issued.key.lookup_hash()).await.unwrap(), Some(issued.clone()));
    let first = &bundle.licenses[&sub.id];
    assert_eq!(first.terms, terms, "the last terms");
    let devices: Vec<_> =
        bundle.devices[&license.id].iter().map(|d| (d.fingerprint.as_str(), d.status, d.deactivated_at)).collect();
    assert_eq!(
        devices,
        [("fp_a", DeviceStatus::Deactivated, Some(off)), ("fp_b", DeviceStatus::Active, None)],
        "oldest activation first, with their new statuses"
    );
    assert_eq!(bundle.devices.get(&issued.id), Some(&Vec::new()));
    let audit = db.texts("SELECT kind || ':' || actor || ':' || device_id FROM device_changes ORDER BY id").await;
    assert_eq!(audit, [format!("deactivated:stripe:{}", a.id), format!("kept:admin:ops:{}", b.id)], "in order");
    let page =
        store.audit_entries(&AuditFilter { license_id: Some(license.id), user_id: None }, None, 10).await.unwrap();
    let addrs: Vec<_> =
        page.iter().filter(|e| e.device_id.is_some()).map(|e| (e.kind.as_str(), e.client_addr)).collect();
    assert_eq!(
        addrs,
        [("kept", Some("2001:db8::7".parse().unwrap())), ("deactivated", None)],
        "where each was asked from"
    );
    let history = store.changes_of_user("user_1", 10).await.unwrap();
    assert_eq!(
        history
            .iter()
            .map(|c| (c.subscription_id, c.to_status.as_deref(), c.stripe_event_id.as_deref()))
            .collect::<Vec<_>>(),
        [(sub_2.id, Some("trialing"), Some("evt_2"))]
    );
    let outbox = store.outbox_after(0, Some(license.id), 10).await.unwrap();
    assert_eq!(outbox.iter().map(|e| e.payload["n"].as_i64().unwrap()).collect::<Vec<_>>(), [1, 2, 3], "in order");
    assert!(outbox.windows(2).all(|w| w[1].id == w[0].id + 1));
    let messages = store.webhook_deliveries(hook, None, 10).await.unwrap();
    assert_eq!(messages.len(), 3, "one vendor message per outbox row of a subscribed topic");
    assert!(messages.iter().all(|m| m.event_type == "license.updated" && m.status == WebhookMessageStatus::Pending));
}

#[tokio::test]
async fn a_failing_statement_in_the_apply_commits_nothing() {
    let (db, store) = fresh_store().await;
    let (sub, license) = seed_license(&store, "sub_1", "cus_1", "user_1").await;
    let before = db.fingerprint().await;
    let customer_id = load(&store, keys(&[], &["sub_1"], &[], &[])).await.subscriptions["sub_1"].customer_id;
    let orphan = License::for_subscription(Uuid::new_v4(), license.terms.clone());
    let moved = Subscription { source_created: sub.source_created + 1, ..sub.clone() };
    let everything = |failing: Changeset| Changeset {
        deliveries: vec![("evt_x".to_owned(), DeliveryRecord::Noted("applied"))],
        subscriptions: vec![HeldSubscription { subscription: moved.clone(), customer_id }],
        license_terms: vec![(license.id, LicenseTerms { max_devices: 9, ..license.terms.clone() })],
        outbox: vec![message(Some(license.id), 1)],
        ..failing
    };
    for (case, failing) in [
        (
            "a customer that exists (the first statement)",
            Changeset {
                new_customers: vec![NewCustomer {
                    id: Uuid::new_v4(),
                    stripe_customer_id: "cus_1".into(),
                    user_id: None,
                }],
                ..Changeset::default()
            },
        ),
        (
            "a license of no subscription (a later one)",
            Changeset { new_licenses: vec![orphan.clone()], ..Changeset::default() },
        ),
    ] {
        let err =
            apply(&store, keys(&["evt_x"], &["sub_1"], &["cus_1"], &[]), everything(failing)).await.expect_err(case);
        assert!(matches!(err, StoreError::Query(_)), "{case}: {err:?}");
        assert!(!error_chain(&err).contains(orphan.key.expose()), "no row contents in errors");
        assert_eq!(db.fingerprint().await, before, "{case}: nothing committed");
    }
    assert!(store.outbox_after(0, None, 10).await.unwrap().is_empty());
    assert!(load(&store, keys(&["evt_x"], &[], &[], &[])).await.claimed.contains("evt_x"), "claimable again");
}

#[tokio::test]
async fn new_customers_and_links_give_a_user_once_and_never_steal_it() {
    let (_db, store) = fresh_store().await;
    let id = customer(&store, "cus_1", None).await;
    assert_eq!(customer(&store, "cus_1", None).await, id, "loaded, not created again");
    let held = load(&store, keys(&[], &[], &["cus_1", "cus_missing"], &[])).await.customers;
    let unlinked = HeldCustomer { id, user_id: None, email: None, email_created: None };
    assert_eq!(held, HashMap::from([("cus_1".to_owned(), unlinked)]));

    assert_eq!(customer(&store, "cus_1", Some("user_1")).await, id, "linking keeps the id");
    // A link to a customer that has a user already changes nothing.
    let steal = Changeset { customer_links: vec![(id, "user_2".to_owned())], ..Changeset::default() };
    apply(&store, keys(&[], &[], &["cus_1"], &[]), steal).await.unwrap();
    let other = customer(&store, "cus_2", Some("user_2")).await;
    assert_ne!(other, id);
    let held = load(&store, keys(&[], &[], &["cus_1"], &[])).await.customers;
    assert_eq!(
        held["cus_1"],
        HeldCustomer { id, user_id: Some("user_1".to_owned()), email: None, email_created: None }
    );

    // The address is loaded with the `created` it came with.
    let email = Changeset { customer_emails: vec![(id, Some("a@example.com".into()), 1_700)], ..Changeset::default() };
    apply(&store, keys(&[], &[], &["cus_1"], &[]), email).await.unwrap();
    let held = load(&store, keys(&[], &[], &["cus_1"], &[])).await.customers;
    assert_eq!((held["cus_1"].email.as_deref(), held["cus_1"].email_created), (Some("a@example.com"), Some(1_700)));

    assert_eq!(store.stripe_customers_of_user("user_1").await.unwrap(), ["cus_1"]);
    assert_eq!(store.stripe_customers_of_user("user_2").await.unwrap(), ["cus_2"], "cus_1 is not stolen");
    customer(&store, "cus_3", Some("user_1")).await;
    assert_eq!(store.stripe_customers_of_user("user_1").await.unwrap(), ["cus_1", "cus_3"], "oldest first");
}

#[tokio::test]
async fn a_saved_subscription_reads_back_field_for_field_at_microsecond_precision() {
    let (_db, store) = fresh_store().await;
    let sub = full_subscription("sub_1", "cus_1", "user_1");
    let sub_1 = || keys(&[], &["sub_1"], &["cus_1"], &[]);

    let customer = Uuid::new_v4();
    let first = Changeset {
        new_customers: vec![NewCustomer { id: customer, stripe_customer_id: "cus_1".into(), user_id: None }],
        subscriptions: vec![HeldSubscription { subscription: sub.clone(), customer_id: customer }],
        ..Changeset::default()
    };
    let before = apply(&store, sub_1(), first).await.unwrap();
    assert!(before.subscriptions.is_empty() && before.customers.is_empty(), "nothing held yet");

    let held = load(&store, sub_1()).await.subscriptions.remove("sub_1").expect("saved");
    assert_eq!(held, HeldSubscription { subscription: as_stored(&sub), customer_id: customer });
    let held = held.subscription;
    // Like PostgreSQL: sub-microsecond digits are cut toward 2000-01-01, so
    // earlier instants round up.
    assert_eq!(held.snapshot.cancel_at, Some(datetime!(2025-12-24 16:00:00.999999 UTC)));
    assert_eq!(held.snapshot.canceled_at, Some(datetime!(2000-01-01 0:00 UTC)));
    assert_eq!(held.snapshot.ended_at, Some(datetime!(1969-12-30 23:59:59.123457 UTC)));

    // An update replaces every field, clearing what became empty.
    let next = Subscription {
        snapshot: SubscriptionSnapshot {
            status: SubscriptionStatus::PastDue,
            price_id: None,
            item_id: None,
            cancel_at_period_end: false,
            cancel_at: None,
            canceled_at: None,
            ended_at: None,
            trial_end: Some(at(1_770_000_000, 42_000)),
            user_id: None,
            ..held.snapshot.clone()
        },
        plan_id: None,
        past_due_since: None,
        source_created: held.source_created + 1,
        ..held.clone()
    };
    let update = Changeset {
        subscriptions: vec![HeldSubscription { subscription: next.clone(), customer_id: customer }],
        ..Changeset::default()
    };
    apply(&store, sub_1(), update).await.unwrap();
    let bundle = load(&store, sub_1()).await;
    assert_eq!(bundle.subscriptions["sub_1"].subscription, next);

    // The customer's user, not the snapshot's, decides whose it is.
    assert!(store.subscriptions_of_user("user_1").await.unwrap().is_empty());
    assert_eq!(
        bundle.customers["cus_1"],
        HeldCustomer { id: customer, user_id: None, email: None, email_created: None }
    );
    customer_link(&store, customer, "user_1").await;
    let bundle = load(&store, sub_1()).await;
    assert_eq!(bundle.subscriptions["sub_1"].customer_id, customer);
    assert_eq!(bundle.customers["cus_1"].user_id.as_deref(), Some("user_1"));
    assert_eq!(store.subscriptions_of_user("user_1").await.unwrap(), [next]);
}

async fn customer_link<S: Store>(store: &S, customer: Uuid, user: &str) {
    let link = Changeset { customer_links: vec![(customer, user.to_owned())], ..Changeset::default() };
    apply(store, StripeKeys::default(), link).await.unwrap();
}

#[tokio::test]
async fn a_subscription_written_twice_in_one_changeset_is_stored_in_its_last_state() {
    let (_db, store) = fresh_store().await;
    let customer = Uuid::new_v4();
    let sub = full_subscription("sub_1", "cus_1", "user_1");
    let last = Subscription {
        snapshot: SubscriptionSnapshot { status: SubscriptionStatus::Active, ..sub.snapshot.clone() },
        source_created: sub.source_created + 5,
        ..sub.clone()
    };
    let mut changes = Changeset {
        new_customers: vec![NewCustomer { id: customer, stripe_customer_id: "cus_1".into(), user_id: None }],
        ..Changeset::default()
    };
    changes.save_subscription(HeldSubscription { subscription: sub.clone(), customer_id: customer });
    changes.save_subscription(HeldSubscription { subscription: last.clone(), customer_id: customer });
    assert_eq!(changes.subscriptions.len(), 1, "held once");
    apply(&store, keys(&[], &["sub_1"], &[], &[]), changes).await.unwrap();
    let held = load(&store, keys(&[], &["sub_1"], &[], &[])).await.subscriptions;
    assert_eq!(held.len(), 1);
    assert_eq!(held["sub_1"].subscription, as_stored(&last));
}

#[tokio::test]
async fn a_saved_subscription_carries_its_audit_rows_in_order() {
    use billing_core::domain::subscription::SubscriptionChange;
    let (_db, store) = fresh_store().await;
    let sub = full_subscription("sub_1", "cus_1", "user_1");
    let actor = Actor::Stripe { event_id: "evt_7".to_owned() };
    let changes = [
        SubscriptionChange::StatusChanged { from: SubscriptionStatus::Trialing, to: SubscriptionStatus::Active },
        SubscriptionChange::StatusChanged { from: SubscriptionStatus::Active, to: SubscriptionStatus::PastDue },
        SubscriptionChange::StatusChanged { from: SubscriptionStatus::PastDue, to: SubscriptionStatus::Canceled },
    ];

    let customer = Uuid::new_v4();
    let held = HeldSubscription { subscription: sub.clone(), customer_id: customer };
    let first = Changeset {
        new_customers: vec![NewCustomer {
            id: customer,
            stripe_customer_id: "cus_1".into(),
            user_id: Some("user_1".into()),
        }],
        subscriptions: vec![held.clone()],
        subscription_audit: changes
            .iter()
            .map(|change| SubscriptionAudit {
                subscription_id: sub.id,
                change: change.clone(),
                actor: actor.label(),
                stripe_event_id: Some("evt_7".to_owned()),
                client_addr: actor.client_addr(),
            })
            .collect(),
        ..Changeset::default()
    };
    apply(&store, keys(&[], &["sub_1"], &[], &[]), first).await.unwrap();
    let again = Changeset { subscriptions: vec![held], ..Changeset::default() };
    apply(&store, keys(&[], &["sub_1"], &[], &[]), again).await.unwrap();

    let rows = store.changes_of_user("user_1", 10).await.unwrap();
    let read: Vec<_> = rows
        .iter()
        .rev()
        .map(|c| {
            (
                c.subscription_id,
                c.from_status.as_deref(),
                c.to_status.as_deref(),
                c.actor.as_str(),
                c.stripe_event_id.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        read,
        [
            (sub.id, Some("trialing"), Some("active"), actor.label().as_str(), Some("evt_7")),
            (sub.id, Some("active"), Some("past_due"), actor.label().as_str(), Some("evt_7")),
            (sub.id, Some("past_due"), Some("canceled"), actor.label().as_str(), Some("evt_7")),
        ],
        "oldest first here; a save without changes adds none"
    );
    assert!(rows.iter().all(|c| c.kind == "status_changed"));
    assert!(rows.windows(2).all(|w| w[0].id > w[1].id), "ids drawn in the changeset's order");
}

#[tokio::test]
async fn licenses_devices_payments_and_audit_rows_read_back() {
    let (db, store) = fresh_store().await;
    let (sub, license) = seed_license(&store, "sub_1", "cus_1", "user_1").await;
    let stored_license =
        License { terms: LicenseTerms { expires_at: Some(at(1_766_592_000, 0)), ..license.terms.clone() }, ..license };
    let hash = stored_license.key.lookup_hash();
    assert_eq!(store.license_by_key_hash(&hash).await.unwrap().as_ref(), Some(&stored_license));
    assert_eq!(store.licenses_of_user("user_1").await.unwrap(), std::slice::from_ref(&stored_license));
    assert!(store.license_belongs_to(stored_license.id, "user_1").await.unwrap());
    assert!(!store.license_belongs_to(stored_license.id, "user_2").await.unwrap());

    let seen = at(1_764_000_500, 987_654_321);
    let a = device(stored_license.id, "fp_a", seen);
    let b = device(stored_license.id, "fp_b", seen + time::Duration::seconds(1));
    let bundle = load(&store, keys(&[], &["sub_1"], &[], &[])).await;
    assert_eq!(bundle.licenses.get(&sub.id), Some(&stored_license), "loaded with its subscription");
    assert_eq!(bundle.devices.get(&stored_license.id), Some(&Vec::new()), "a license without devices has none");
    let by_key = load_license(&store, LicenseKeys::ActivationOf { key_hash: hash.clone() }).await;
    let licenses: Vec<&License> = by_key.licenses.iter().map(|l| &l.record.license).collect();
    assert_eq!(licenses, [&stored_license]);
    assert_eq!(by_key.licenses[0].devices, [], "a license without devices has none");
    let by_id = load_license(&store, LicenseKeys::License { license_id: stored_license.id }).await;
    assert_eq!(by_id.license().map(|l| &l.record.license), Some(&stored_license));
    assert_eq!(by_id.license().and_then(|l| l.subscription.as_ref()), Some(&as_stored(&sub)), "with its subscription");
    assert_eq!(by_id.license().and_then(|l| l.record.owner_user_id.as_deref()), Some("user_1"));
    let terms = LicenseTerms { status: LicenseStatus::Suspended, max_devices: 1, ..stored_license.terms.clone() };
    let activated = Changeset {
        new_devices: vec![activation(&a, b"token-a"), activation(&b, b"token-b")],
        device_audit: vec![DeviceAudit {
            client_addr: None,
            device_id: a.id,
            license_id: stored_license.id,
            kind: "activated",
            actor: Actor::System.label(),
            detail: json!({ "new_slot": true }),
        }],
        license_terms: vec![(stored_license.id, terms.clone())],
        ..Changeset::default()
    };
    work(&store, LicenseKeys::ActivationOf { key_hash: hash.clone() }, activated).await.unwrap();
    let stored_license = License { terms, ..stored_license };

    let keep = |d: &Device| Device {
        activated_at: as_postgres_keeps(d.activated_at),
        last_heartbeat_at: as_postgres_keeps(d.last_heartbeat_at),
        deactivated_at: d.deactivated_at.map(as_postgres_keeps),
        ..d.clone()
    };
    let bundle = load(&store, keys(&[], &["sub_1"], &[], &[])).await;
    assert_eq!(bundle.licenses.get(&sub.id), Some(&stored_license));
    assert_eq!(bundle.devices.get(&stored_license.id), Some(&vec![keep(&a), keep(&b)]), "oldest activation first");
    assert_eq!(store.device_by_token_hash(b"token-a").await.unwrap(), Some(keep(&a)));
    let key_hash = stored_license.key.lookup_hash();
    let (license, device) = store.license_and_device(&key_hash, Some("fp_b")).await.unwrap();
    assert_eq!((license.as_ref(), device), (Some(&stored_license), Some(keep(&b))));
    let (license, device) = store.license_and_device(&key_hash, Some("fp_unknown")).await.unwrap();
    assert_eq!((license.as_ref(), device), (Some(&stored_license), None));
    assert_eq!(store.license_and_device(&key_hash, None).await.unwrap(), (Some(stored_license.clone()), None));
    assert_eq!(store.license_and_device(b"no such hash", Some("fp_b")).await.unwrap(), (None, None));
    assert_eq!(store.devices_of_user("user_1").await.unwrap(), [keep(&b), keep(&a)], "most recently seen first");

    let later = seen + time::Duration::minutes(20);
    let by_key = load_license(&store, LicenseKeys::ActivationOf { key_hash: hash.clone() }).await;
    assert_eq!(by_key.licenses[0].devices, [keep(&a), keep(&b)], "activation order");
    let by_token = load_license(&store, LicenseKeys::DeviceByToken { token_hash: b"token-b".to_vec() }).await;
    assert_eq!(by_token.devices, [keep(&b)]);
    assert_eq!(by_token.license().map(|l| &l.record.license), Some(&stored_license), "with its license");
    assert_eq!(by_token.license().map(|l| l.devices.len()), Some(0), "whose devices are not read");
    let of_user = |user: Option<&str>| LicenseKeys::DeviceOfUser { device_id: a.id, user_id: user.map(str::to_owned) };
    let mine = load_license(&store, of_user(Some("user_1"))).await;
    assert_eq!((mine.devices, mine.licenses.len()), (vec![keep(&a)], 1));
    let theirs = load_license(&store, of_user(Some("user_2"))).await;
    assert!(theirs.devices.is_empty() && theirs.licenses.is_empty(), "nothing of another user's");
    assert_eq!(load_license(&store, of_user(None)).await.devices, [keep(&a)], "None means any user");
    let touched = Changeset {
        heartbeats: vec![HeartbeatWrite { device_id: a.id, at: later, heartbeat_deadline: Some(later + WINDOW) }],
        device_names: vec![(a.id, "Work laptop".to_owned())],
        ..Changeset::default()
    };
    work(&store, of_user(Some("user_1")), touched).await.unwrap();
    // b's deadline (a second after seen + WINDOW) has passed, a's (later + WINDOW) not.
    let sweep = LicenseKeys::OverdueDevices { now: seen + WINDOW + time::Duration::seconds(2), limit: 10 };
    let overdue = load_license(&store, sweep.clone()).await;
    assert_eq!(overdue.devices, [keep(&b)], "only b's deadline has passed");
    let licenses: Vec<&License> = overdue.licenses.iter().map(|l| &l.record.license).collect();
    assert_eq!(licenses, [&stored_license], "with its license, whose plan judges it");
    assert_eq!(overdue.licenses[0].record.owner_user_id.as_deref(), Some("user_1"));
    let dead = Changeset { device_statuses: vec![(b.id, DeviceStatus::Dead, later)], ..Changeset::default() };
    work(&store, sweep.clone(), dead).await.unwrap();
    let overdue = load_license(&store, sweep).await;
    assert!(overdue.devices.is_empty() && overdue.licenses.is_empty(), "dead devices are not overdue");
    // Taken again for an air-gapped machine: the flag is stored with the slot.
    let again = Device { id: b.id, activated_at: later, last_heartbeat_at: later, air_gapped: true, ..b.clone() };
    let reactivated = Changeset { reactivated_devices: vec![activation(&again, b"token-b2")], ..Changeset::default() };
    work(&store, LicenseKeys::DeviceByToken { token_hash: b"token-b".to_vec() }, reactivated).await.unwrap();

    let a_now = Device { name: Some("Work laptop".to_owned()), last_heartbeat_at: later, ..a.clone() };
    assert_eq!(store.device_by_token_hash(b"token-a").await.unwrap(), Some(keep(&a_now)));
    assert_eq!(store.device_by_token_hash(b"token-b").await.unwrap(), None, "the old token is gone");
    assert_eq!(store.device_by_token_hash(b"token-b2").await.unwrap(), Some(keep(&again)));

    // Payments: inserted, then updated; what is held is loaded by invoice,
    // and a paid one marks its subscription.
    let failed = Payment {
        stripe_invoice_id: "in_1".to_owned(),
        stripe_customer_id: "cus_1".to_owned(),
        stripe_subscription_id: Some("sub_1".to_owned()),
        amount: 1900,
        currency: "usd".to_owned(),
        status: PaymentStatus::Failed,
        paid_at: None,
    };
    let paid = Payment { status: PaymentStatus::Paid, paid_at: Some(at(1_764_000_100, 777)), ..failed.clone() };
    let customer = customer(&store, "cus_1", None).await;
    let payment_keys = || keys(&[], &["sub_1", "sub_2"], &[], &["in_1", "in_2"]);
    let upsert = |payment: &Payment, new| Changeset {
        payments: vec![PaymentUpsert { customer_id: customer, payment: payment.clone(), new }],
        ..Changeset::default()
    };
    let before = apply(&store, payment_keys(), upsert(&failed, true)).await.unwrap();
    assert!(before.payments.is_empty() && before.paid_subscriptions.is_empty(), "nothing held yet");
    let held = load(&store, payment_keys()).await;
    assert_eq!(held.payments, HashMap::from([("in_1".to_owned(), PaymentStatus::Failed)]));
    assert!(held.paid_subscriptions.is_empty(), "a failed invoice proves nothing");
    let moved = Changeset {
        deleted_customers: vec![customer],
        subscription_audit: vec![SubscriptionAudit {
            client_addr: None,
            subscription_id: sub.id,
            change: billing_core::domain::subscription::SubscriptionChange::StatusChanged {
                from: SubscriptionStatus::Trialing,
                to: SubscriptionStatus::Active,
            },
            actor: Actor::Stripe { event_id: "evt_9".to_owned() }.label(),
            stripe_event_id: Some("evt_9".to_owned()),
        }],
        ..upsert(&paid, false)
    };
    apply(&store, payment_keys(), moved).await.unwrap();
    let held = load(&store, payment_keys()).await;
    assert_eq!(held.payments, HashMap::from([("in_1".to_owned(), PaymentStatus::Paid)]));
    assert_eq!(held.paid_subscriptions, HashSet::from(["sub_1".to_owned()]), "committed; not sub_2");
    let deleted_at = db.texts("SELECT CAST(deleted_at AS TEXT) FROM customers WHERE deleted_at IS NOT NULL").await;
    let deleted_again = Changeset { deleted_customers: vec![customer], ..Changeset::default() };
    apply(&store, StripeKeys::default(), deleted_again).await.unwrap();
    let payments = store.payments_of_user("user_1", 10).await.unwrap();
    assert_eq!(payments.len(), 1);
    assert_eq!(payments[0].payment, Payment { paid_at: Some(at(1_764_000_100, 0)), ..paid });
    let changes = store.changes_of_user("user_1", 10).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(
        (changes[0].kind.as_str(), changes[0].from_status.as_deref(), changes[0].to_status.as_deref()),
        ("status_changed", Some("trialing"), Some("active"))
    );
    assert_eq!((changes[0].actor.as_str(), changes[0].stripe_event_id.as_deref()), ("stripe", Some("evt_9")));
    assert_eq!(changes[0].subscription_id, sub.id);
    assert!(matches!(store.changes_of_user("user_1", -1).await, Err(StoreError::Query(_))), "negative LIMIT");
    let deleted = db.texts("SELECT stripe_customer_id FROM customers WHERE deleted_at IS NOT NULL").await;
    assert_eq!(deleted, ["cus_1"], "marked, kept with its history");
    assert_eq!(
        db.texts("SELECT CAST(deleted_at AS TEXT) FROM customers WHERE deleted_at IS NOT NULL").await,
        deleted_at,
        "marked once: a second deletion keeps the first's time"
    );
}

#[tokio::test]
async fn outbox_ids_increase_and_rows_appear_only_after_commit() {
    let (_db, store) = fresh_store().await;
    let license = Uuid::new_v4();
    assert_eq!(store.latest_outbox_id().await.unwrap(), 0);

    // The rows of a unit of work that does not commit are never seen.
    apply_failing(&store, Changeset { outbox: vec![message(Some(license), 0)], ..Changeset::default() }).await;
    assert!(store.outbox_after(0, None, 10).await.unwrap().is_empty(), "invisible unless committed");
    assert_eq!(store.latest_outbox_id().await.unwrap(), 0);
    publish(&store, vec![message(Some(license), 1), message(None, 2)]).await;

    let events = store.outbox_after(0, None, 10).await.unwrap();
    let [first, second] = [events[0].id, events[1].id];
    assert!(second > first, "enqueue order is id order");
    assert_eq!(
        (events[0].license_id, events[0].topic.as_str(), &events[0].payload),
        (Some(license), "license.updated", &json!({ "n": 1 }))
    );
    assert_eq!(events[1].license_id, None);
    assert_eq!(store.latest_outbox_id().await.unwrap(), second);

    publish(&store, vec![message(Some(license), 3)]).await;
    let third = store.latest_outbox_id().await.unwrap();
    assert!(third > second);
    let of_license: Vec<i64> = store.outbox_after(0, Some(license), 10).await.unwrap().iter().map(|e| e.id).collect();
    assert_eq!(of_license, [first, third]);
    let after_first: Vec<i64> = store.outbox_after(first, None, 1).await.unwrap().iter().map(|e| e.id).collect();
    assert_eq!(after_first, [second], "limit applies after the cursor");
    assert!(matches!(store.outbox_after(0, None, -1).await, Err(StoreError::Query(_))), "negative LIMIT");
}

#[tokio::test]
async fn a_failed_unit_of_work_rolls_back_and_frees_what_it_held() {
    let (_db, store) = fresh_store().await;
    let (_, license) = seed_license(&store, "sub_1", "cus_1", "user_1").await;
    let manual = manual_license("user_2");

    let failed = Changeset {
        new_licenses: vec![manual.clone()],
        new_devices: vec![activation(&device(license.id, "fp", Timestamp::now_utc()), b"token")],
        outbox: vec![message(Some(license.id), 1)],
        ..Changeset::default()
    };
    apply_failing(&store, failed).await;
    let held = LicenseKeys::License { license_id: license.id };

    // The next unit of work sees nothing of it, and may take what it held.
    let next = load_license(&store, LicenseKeys::DeviceByToken { token_hash: b"token".to_vec() }).await;
    assert!(next.devices.is_empty());
    assert!(load_license(&store, held).await.licenses[0].devices.is_empty());
    assert!(load_license(&store, LicenseKeys::License { license_id: manual.id }).await.licenses.is_empty());
    let taken = License { user_id: Some("user_3".to_owned()), ..manual.clone() };
    work(&store, LicenseKeys::Nothing, Changeset { new_licenses: vec![taken.clone()], ..Changeset::default() })
        .await
        .unwrap();
    assert!(store.licenses_of_user("user_2").await.unwrap().is_empty());
    assert_eq!(store.licenses_of_user("user_3").await.unwrap(), [taken]);
    assert_eq!(store.latest_outbox_id().await.unwrap(), 0);
}

#[tokio::test]
async fn a_failed_statement_fails_the_unit_of_work_and_writes_nothing() {
    let (_db, store) = fresh_store().await;
    let first = manual_license("user_1");
    let orphan = License::for_subscription(
        Uuid::new_v4(),
        LicenseTerms {
            status: LicenseStatus::Active,
            max_devices: 1,
            expires_at: None,
            grace_ends_at: None,
            plan_id: None,
        },
    );
    let both = Changeset { new_licenses: vec![first.clone(), orphan.clone()], ..Changeset::default() };
    let err = work(&store, LicenseKeys::Nothing, both).await.expect_err("foreign keys are enforced");
    assert!(matches!(err, StoreError::Query(_)), "{err:?}");
    assert!(!error_chain(&err).contains(orphan.key.expose()), "no row contents in errors");

    assert!(store.licenses_of_user("user_1").await.unwrap().is_empty(), "rolled back");
    work(&store, LicenseKeys::Nothing, Changeset { new_licenses: vec![first.clone()], ..Changeset::default() })
        .await
        .unwrap();
    assert_eq!(store.licenses_of_user("user_1").await.unwrap(), [first]);
}

#[tokio::test]
async fn a_failed_write_fails_the_commit() {
    // The failing write is the last statement before the COMMIT.
    let (_db, store) = fresh_store().await;
    apply_failing(&store, Changeset { new_licenses: vec![manual_license("user_1")], ..Changeset::default() }).await;
    assert!(store.licenses_of_user("user_1").await.unwrap().is_empty(), "rolled back");
    assert_eq!(store.device_by_token_hash(b"token-ghost").await.unwrap(), None);
}

#[tokio::test]
async fn a_license_unit_of_work_abandoned_mid_flight_is_all_or_nothing() {
    let (db, store) = fresh_store().await;
    let manual = manual_license("user_cancelled");
    {
        let changes = Changeset { new_licenses: vec![manual.clone()], ..Changeset::default() };
        let work = work(&store, LicenseKeys::License { license_id: manual.id }, changes);
        tokio::pin!(work);
        // Polled once, then abandoned, whether or not the statements finished.
        let _ = futures_util::poll!(work.as_mut());
    }
    if backend() == Backend::Postgres {
        let idle_in_transaction = "SELECT count(*) FROM pg_stat_activity
                                    WHERE datname = current_database() AND state LIKE 'idle in transaction%'";
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while db.count(idle_in_transaction).await > 0 {
            assert!(std::time::Instant::now() < deadline, "a session was left in a transaction");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // SQLite may have handed the work to its writer before it was
    // abandoned, and then commits it whole; PostgreSQL rolls it back.
    let next = tokio::time::timeout(
        Duration::from_secs(10),
        load_license(&store, LicenseKeys::License { license_id: manual.id }),
    )
    .await
    .expect("nothing left locked");
    match next.licenses.is_empty() {
        true => {
            let again = Changeset { new_licenses: vec![manual.clone()], ..Changeset::default() };
            work(&store, LicenseKeys::Nothing, again).await.expect("the abandoned insert was rolled back");
        }
        false => assert_ne!(backend(), Backend::Postgres, "PostgreSQL: rolled back"),
    }
    assert_eq!(store.licenses_of_user("user_cancelled").await.unwrap(), [manual]);
}

#[tokio::test]
async fn a_stripe_unit_of_work_abandoned_mid_flight_is_all_or_nothing() {
    let (db, store) = fresh_store().await;
    {
        let changes = Changeset {
            new_customers: vec![NewCustomer {
                id: Uuid::new_v4(),
                stripe_customer_id: "cus_cancelled".into(),
                user_id: Some("user_cancelled".into()),
            }],
            ..Changeset::default()
        };
        let work = apply(&store, keys(&["evt_cancelled"], &[], &["cus_cancelled"], &[]), changes);
        tokio::pin!(work);
        // Polled once, then abandoned (as when a client hangs up).
        let _ = futures_util::poll!(work.as_mut());
    }
    if backend() == Backend::Postgres {
        // Nothing went further than the load: no session is left inside it.
        let idle_in_transaction = "SELECT count(*) FROM pg_stat_activity
                                    WHERE datname = current_database() AND state LIKE 'idle in transaction%'";
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while db.count(idle_in_transaction).await > 0 {
            assert!(std::time::Instant::now() < deadline, "a session was left in a transaction");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // SQLite may have handed the work to its writer before it was abandoned,
    // and then commits it whole; PostgreSQL rolls it back. Never half.
    let next = tokio::time::timeout(Duration::from_secs(10), load(&store, keys(&["evt_cancelled"], &[], &[], &[])))
        .await
        .expect("nothing left locked");
    let customers = store.stripe_customers_of_user("user_cancelled").await.unwrap();
    match next.claimed.contains("evt_cancelled") {
        true => assert!(customers.is_empty(), "the abandoned claim was rolled back with its writes"),
        false => assert_eq!(customers, ["cus_cancelled"], "the abandoned claim was committed with its writes"),
    }
    if backend() == Backend::Postgres {
        assert!(next.claimed.contains("evt_cancelled"), "PostgreSQL: rolled back");
    }
}

#[tokio::test]
async fn watch_outbox_signals_after_commit_and_not_after_rollback() {
    let backend = backend();
    let (db, store) = fresh_store().await;
    let mut log = NotifyLog::listen(&db).await;
    let mut watch = store.watch_outbox().await.unwrap();
    // Like a fresh LISTEN, it starts with one wake-up for what it may have missed.
    assert_woken(backend, &mut watch, "a first wake-up").await;
    assert_not_woken(backend, &mut log, &mut watch, "only one").await;

    publish(&store, vec![message(None, 1)]).await;
    assert_woken(backend, &mut watch, "signalled once commit returned").await;
    if let Some(log) = &mut log {
        assert_eq!(log.sent_since_last().await, [""], "one NOTIFY for the commit");
        assert_woken(backend, &mut watch, "the marker reaches the watcher").await;
    }

    apply_failing(&store, Changeset { outbox: vec![message(None, 2)], ..Changeset::default() }).await;
    let licensed = Changeset { new_licenses: vec![manual_license("user_1")], ..Changeset::default() };
    work(&store, LicenseKeys::Nothing, licensed).await.unwrap();
    customer(&store, "cus_1", None).await;
    assert_not_woken(backend, &mut log, &mut watch, "neither a rollback nor a commit without outbox rows signals")
        .await;

    // A Stripe unit of work with outbox rows signals like any commit of them.
    let announced = Changeset { outbox: vec![message(None, 3), message(None, 4)], ..Changeset::default() };
    apply(&store, StripeKeys::default(), announced).await.unwrap();
    assert_woken(backend, &mut watch, "signalled once sync_stripe returned").await;
    if let Some(log) = &mut log {
        assert_eq!(log.sent_since_last().await, [""], "one NOTIFY for the unit of work");
        assert_woken(backend, &mut watch, "the marker reaches the watcher").await;
    }
    assert!(watch.try_recv().is_err(), "one wake-up for the unit of work");

    // Clones' watchers hear every commit; several commits before a read
    // leave one wake-up.
    let clone = store.clone();
    let mut second = clone.watch_outbox().await.unwrap();
    second.recv().await.unwrap();
    for n in 0..3 {
        publish(&clone, vec![message(None, n)]).await;
    }
    assert_woken(backend, &mut watch, "the first watcher hears the clone's commits").await;
    assert_woken(backend, &mut second, "the clone's watcher hears them").await;
    match &mut log {
        // What a PostgreSQL watcher receives after its first wake-up depends
        // on when its connection read the rest; that it can hold no more
        // than one is what bounds them.
        Some(log) => {
            assert_eq!(log.sent_since_last().await, ["", "", ""], "one NOTIFY per commit");
            assert_eq!((watch.max_capacity(), second.max_capacity()), (1, 1), "one wake-up for three commits");
        }
        None => {
            assert!(watch.try_recv().is_err(), "one wake-up for three commits");
            assert!(second.try_recv().is_err(), "one wake-up for three commits");
        }
    }

    drop(second);
    let announced = Changeset { outbox: vec![message(None, 9)], ..Changeset::default() };
    work(&store, LicenseKeys::Nothing, announced).await.expect("a closed watcher does not disturb commits");
    if let Some(log) = &mut log {
        assert_eq!(log.sent_since_last().await, [""], "the commit after the clone's watcher closed notified");
    }
    assert_woken(backend, &mut watch, "the remaining watcher still hears commits").await;
}

#[tokio::test]
async fn prune_outbox_deletes_old_rows_and_ids_are_never_reused() {
    let (_db, store) = fresh_store().await;
    publish(&store, vec![message(None, 1), message(None, 2)]).await;

    let events = store.outbox_after(0, None, 10).await.unwrap();
    let [first, last] = [events[0].id, events[1].id];
    let created = events[0].created_at;
    assert!((Timestamp::now_utc() - created).abs() < time::Duration::minutes(1), "created_at is the commit time");
    assert_eq!(store.prune_outbox(created).await.unwrap(), 0, "strictly before");
    assert_eq!(store.prune_outbox(created - time::Duration::days(7)).await.unwrap(), 0);
    assert_eq!(store.prune_outbox(created + time::Duration::microseconds(1)).await.unwrap(), 2);
    assert!(store.outbox_after(0, None, 10).await.unwrap().is_empty());
    assert_eq!(store.latest_outbox_id().await.unwrap(), 0);

    publish(&store, vec![message(None, 3)]).await;
    let next = store.latest_outbox_id().await.unwrap();
    assert!(next > last && last > first, "ids keep growing after the newest rows were pruned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_transactions_serialise_without_deadlock_or_busy_errors() {
    const TASKS: i64 = 8;
    const ROUNDS: i64 = 20;
    let (_db, store) = fresh_store().await;
    let writing = Arc::new(AtomicBool::new(true));

    // Readers watch the outbox while writers commit: what they see is
    // always a gap-free prefix, in id order.
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (store, writing) = (store.clone(), writing.clone());
            tokio::spawn(async move {
                let mut reads = 0;
                while writing.load(Ordering::Acquire) {
                    let ids: Vec<i64> = store.outbox_after(0, None, 10_000).await?.iter().map(|e| e.id).collect();
                    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "outbox has a gap or is out of order");
                    reads += 1;
                    tokio::task::yield_now().await;
                }
                Ok::<_, StoreError>(reads)
            })
        })
        .collect();

    let writers: Vec<_> = (0..TASKS)
        .map(|task| {
            let store = store.clone();
            tokio::spawn(async move {
                for round in 0..ROUNDS {
                    // A read-modify-write on one row: lost updates would show
                    // in the final count, and parallel first deliveries would
                    // both try to insert (the customer and the subscription).
                    let event_id = format!("evt_{task}_{round}");
                    let keys = keys(&[event_id.as_str()], &["sub_shared"], &["cus_shared"], &[]);
                    let claimed = store
                        .sync_stripe(keys, move |bundle| {
                            let mut changes = Changeset::default();
                            let customer_id = match bundle.customers.get("cus_shared") {
                                Some(held) => held.id,
                                None => {
                                    let id = Uuid::new_v4();
                                    changes.new_customers.push(NewCustomer {
                                        id,
                                        stripe_customer_id: "cus_shared".into(),
                                        user_id: Some("user_1".into()),
                                    });
                                    id
                                }
                            };
                            let next = match bundle.subscriptions.get("sub_shared") {
                                Some(held) => {
                                    let held = held.subscription.clone();
                                    Subscription { source_created: held.source_created + 1, ..held }
                                }
                                None => Subscription {
                                    source_created: 1,
                                    ..full_subscription("sub_shared", "cus_shared", "u")
                                },
                            };
                            changes.outbox.push(message(None, next.source_created));
                            changes.save_subscription(HeldSubscription { subscription: next, customer_id });
                            (changes, bundle.claimed)
                        })
                        .await?;
                    assert_eq!(claimed, HashSet::from([event_id]));
                }
                Ok::<_, StoreError>(())
            })
        })
        .collect();

    let all = async {
        for writer in writers {
            writer.await.expect("writer task").expect("no store error under contention");
        }
        writing.store(false, Ordering::Release);
        for reader in readers {
            reader.await.expect("reader task").expect("no store error for readers");
        }
    };
    tokio::time::timeout(Duration::from_secs(120), all).await.expect("no deadlock");

    let subs = store.subscriptions_of_user("user_1").await.unwrap();
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0].source_created, TASKS * ROUNDS, "every increment survived");
    let outbox = store.outbox_after(0, None, 10_000).await.unwrap();
    assert_eq!(outbox.len() as i64, TASKS * ROUNDS);
    let counters: Vec<i64> = outbox.iter().map(|e| e.payload["n"].as_i64().unwrap()).collect();
    assert_eq!(counters, (1..=TASKS * ROUNDS).collect::<Vec<_>>(), "ids follow commit order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_units_of_work_on_one_subscription_serialise_and_the_second_sees_the_first() {
    let (db, store) = fresh_store().await;
    let customer = customer(&store, "cus_1", Some("user_1")).await;
    // Both start while the subscription's lock is held elsewhere, so they
    // are certainly concurrent (on SQLite: the file's write lock).
    let holder = match backend() {
        Backend::Postgres => db.hold("SELECT pg_advisory_xact_lock(hashtextextended('sub_1', 0))").await,
        Backend::Sqlite => db.hold("").await,
    };
    let increment = |store: AnyStore| async move {
        store
            .sync_stripe(keys(&[], &["sub_1"], &[], &[]), move |bundle| {
                let seen = bundle.subscriptions.get("sub_1").map(|h| h.subscription.source_created);
                let next = match bundle.subscriptions.get("sub_1") {
                    Some(held) => Subscription {
                        source_created: held.subscription.source_created + 1,
                        ..held.subscription.clone()
                    },
                    None => Subscription { source_created: 1, ..full_subscription("sub_1", "cus_1", "user_1") },
                };
                let changes = Changeset {
                    subscriptions: vec![HeldSubscription { subscription: next, customer_id: customer }],
                    ..Changeset::default()
                };
                (changes, seen)
            })
            .await
            .unwrap()
    };
    let first = tokio::spawn(increment(store.clone()));
    let second = tokio::spawn(increment(store.clone()));
    if backend() == Backend::Postgres {
        let waiting = "SELECT count(*) FROM pg_stat_activity
                        WHERE datname = current_database() AND wait_event_type = 'Lock'";
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while db.count(waiting).await < 2 {
            assert!(std::time::Instant::now() < deadline, "both wait for the subscription");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    } else {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!first.is_finished() && !second.is_finished(), "both wait for the held lock");
    holder.end(false).await;
    let within = Duration::from_secs(10);
    let mut seen = [
        tokio::time::timeout(within, first).await.expect("no deadlock").unwrap(),
        tokio::time::timeout(within, second).await.expect("no deadlock").unwrap(),
    ];
    seen.sort();
    assert_eq!(seen, [None, Some(1)], "one inserted, the other loaded its commit");
    assert_eq!(store.subscriptions_of_user("user_1").await.unwrap()[0].source_created, 2, "no lost update");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn activations_of_one_license_serialise_and_each_sees_the_devices_before_it() {
    const TASKS: usize = 8;
    let (db, store) = fresh_store().await;
    let manual = manual_license("user_1");
    work(&store, LicenseKeys::Nothing, Changeset { new_licenses: vec![manual.clone()], ..Changeset::default() })
        .await
        .unwrap();
    // Held first, so that every activation is under way (waiting for the
    // license, on SQLite for the writer) before any proceeds.
    let holder = match backend() {
        Backend::Postgres => db.hold(&format!("SELECT 1 FROM licenses WHERE id = '{}' FOR UPDATE", manual.id)).await,
        Backend::Sqlite => db.hold("").await,
    };
    let activations: Vec<_> = (0..TASKS)
        .map(|n| {
            let (store, key_hash) = (store.clone(), manual.key.lookup_hash());
            tokio::spawn(async move {
                store
                    .license_work(LicenseKeys::ActivationOf { key_hash }, move |bundle| {
                        // One slot: a device is added only to a license without one.
                        let held = &bundle.licenses[0];
                        let mut changes = Changeset::default();
                        if held.devices.is_empty() {
                            let new = device(held.record.license.id, &format!("fp_{n}"), Timestamp::now_utc());
                            changes.new_devices.push(activation(&new, format!("token-{n}").as_bytes()));
                        }
                        (changes, held.devices.len())
                    })
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(activations.iter().all(|a| !a.is_finished()), "every activation waits for the held license");
    holder.end(false).await;
    let mut seen = Vec::new();
    for activation in activations {
        seen.push(activation.await.unwrap().expect("no store error under contention"));
    }
    seen.sort_unstable();
    assert_eq!(seen, [0].into_iter().chain([1; TASKS - 1]).collect::<Vec<_>>(), "one saw no device, then all saw it");
    let held = load_license(&store, LicenseKeys::License { license_id: manual.id }).await;
    assert_eq!(held.licenses[0].devices.len(), 1, "one slot, one device");
}

#[tokio::test]
async fn the_reaper_and_the_grace_sweep_skip_rows_another_unit_holds() {
    let (db, store) = fresh_store().await;
    let (_, license) = seed_license(&store, "sub_1", "cus_1", "user_1").await;
    let long_ago = Timestamp::now_utc() - time::Duration::hours(1);
    let (a, b) = (device(license.id, "fp_a", long_ago), device(license.id, "fp_b", long_ago));
    let lapsed = |user| License {
        terms: LicenseTerms { grace_ends_at: Some(long_ago), ..manual_license(user).terms },
        ..manual_license(user)
    };
    let (l1, l2) = (lapsed("user_2"), lapsed("user_3"));
    let seeded = Changeset {
        new_devices: vec![activation(&a, b"token-a"), activation(&b, b"token-b")],
        new_licenses: vec![l1.clone(), l2.clone()],
        ..Changeset::default()
    };
    work(&store, LicenseKeys::Nothing, seeded).await.unwrap();
    let now = Timestamp::now_utc();
    let overdue = LicenseKeys::OverdueDevices { now, limit: 10 };
    let past_grace = LicenseKeys::LicensesPastGrace { now, limit: 10 };
    let ids = |devices: &[Device]| devices.iter().map(|d| d.id).collect::<HashSet<_>>();
    let license_ids = |b: &LicenseBundle| b.licenses.iter().map(|l| l.record.license.id).collect::<HashSet<_>>();
    assert_eq!(ids(&load_license(&store, overdue.clone()).await.devices), HashSet::from([a.id, b.id]));
    assert_eq!(license_ids(&load_license(&store, past_grace.clone()).await), HashSet::from([l1.id, l2.id]));
    let limited = load_license(&store, LicenseKeys::OverdueDevices { now, limit: 1 }).await;
    assert_eq!(limited.devices.len(), 1, "at most the limit");
    if backend() == Backend::Postgres {
        // Another reaper holds a and l1: this one takes the rest, at once.
        let holder = db
            .hold(&format!(
                "SELECT 1 FROM devices WHERE id = '{}' FOR NO KEY UPDATE;
                 SELECT 1 FROM licenses WHERE id = '{}' FOR NO KEY UPDATE",
                a.id, l1.id
            ))
            .await;
        let within = Duration::from_secs(5);
        let reaped = tokio::time::timeout(within, load_license(&store, overdue)).await.expect("not blocked");
        assert_eq!(ids(&reaped.devices), HashSet::from([b.id]));
        let swept = tokio::time::timeout(within, load_license(&store, past_grace)).await.expect("not blocked");
        assert_eq!(license_ids(&swept), HashSet::from([l2.id]));
        holder.end(false).await;
    }
}

#[tokio::test]
async fn the_reaper_sweeps_by_stored_deadline_and_a_device_without_one_is_never_swept() {
    let (_db, store) = fresh_store().await;
    let manual = manual_license("user_1");
    let long_ago = Timestamp::now_utc() - time::Duration::days(30);
    let (due, locked, later) = (
        device(manual.id, "fp_due", long_ago),
        device(manual.id, "fp_locked", long_ago),
        device(manual.id, "fp_later", long_ago),
    );
    let future = Timestamp::now_utc() + time::Duration::hours(1);
    let seeded = Changeset {
        new_licenses: vec![manual.clone()],
        new_devices: vec![
            activation(&due, b"token-due"),
            DeviceActivation { heartbeat_deadline: None, ..activation(&locked, b"token-locked") },
            DeviceActivation { heartbeat_deadline: Some(future), ..activation(&later, b"token-later") },
        ],
        ..Changeset::default()
    };
    work(&store, LicenseKeys::Nothing, seeded).await.unwrap();
    let sweep = || LicenseKeys::OverdueDevices { now: Timestamp::now_utc(), limit: 10 };
    let ids = |b: &LicenseBundle| b.devices.iter().map(|d| d.id).collect::<Vec<_>>();
    assert_eq!(ids(&load_license(&store, sweep()).await), [due.id], "a silent node-locked device has no deadline");
    let corrected = Changeset { device_deadlines: vec![(due.id, Some(future))], ..Changeset::default() };
    work(&store, sweep(), corrected).await.unwrap();
    assert!(ids(&load_license(&store, sweep()).await).is_empty(), "a corrected deadline is not due yet");
    let beat = HeartbeatWrite { device_id: later.id, at: Timestamp::now_utc(), heartbeat_deadline: Some(long_ago) };
    work(&store, LicenseKeys::Nothing, Changeset { heartbeats: vec![beat], ..Changeset::default() }).await.unwrap();
    assert_eq!(ids(&load_license(&store, sweep()).await), [later.id], "a heartbeat writes the deadline it is given");
}

#[tokio::test]
async fn licenses_keep_their_kind_updates_window_and_trial_flag_and_a_trial_is_recorded_once() {
    let (_db, store) = fresh_store().await;
    let trial = License {
        kind: LicenseKind::Perpetual,
        updates_until: Some(at(1_790_000_000, 123_000)),
        trial: true,
        user_id: None,
        ..manual_license("nobody")
    };
    let hash = vec![7u8; 32];
    let taken = TrialUse { plan_id: "pro".into(), fingerprint_hash: hash.clone(), license_id: trial.id };
    let changes =
        Changeset { new_licenses: vec![trial.clone()], trial_uses: vec![taken.clone()], ..Changeset::default() };
    let tried =
        |plan: &str, hash: &[u8]| LicenseKeys::Trial { plan_id: plan.to_owned(), fingerprint_hash: hash.to_vec() };
    let before = work(&store, tried("pro", &hash), changes).await.unwrap();
    assert_eq!(before.used_trial, None, "no trial yet");
    assert!(before.licenses.is_empty() && before.devices.is_empty(), "a trial's unit reads nothing else");
    assert_eq!(
        store.license_by_key_hash(&trial.key.lookup_hash()).await.unwrap(),
        Some(trial.clone()),
        "read back whole"
    );
    assert_eq!(load_license(&store, tried("pro", &hash)).await.used_trial, Some(trial.id));
    assert_eq!(load_license(&store, tried("team", &hash)).await.used_trial, None, "per plan");
    assert_eq!(load_license(&store, tried("pro", &[8u8; 32])).await.used_trial, None, "per machine");
    let twice = Changeset { trial_uses: vec![taken], ..Changeset::default() };
    let err = work(&store, LicenseKeys::Nothing, twice).await.expect_err("one trial per plan and machine");
    assert!(matches!(err, StoreError::Query(_)), "{err:?}");

    // An admin save keeps the kind and trial flag and moves the window.
    let moved = License { updates_until: None, ..trial.clone() };
    work(&store, LicenseKeys::Nothing, Changeset { saved_licenses: vec![moved.clone()], ..Changeset::default() })
        .await
        .unwrap();
    assert_eq!(store.license_by_key_hash(&trial.key.lookup_hash()).await.unwrap(), Some(moved));
}

#[tokio::test]
async fn a_trial_waits_for_an_uncommitted_trial_of_the_same_plan_and_machine() {
    for commit in [false, true] {
        let (db, store) = fresh_store().await;
        let license = manual_license("nobody");
        work(&store, LicenseKeys::Nothing, Changeset { new_licenses: vec![license.clone()], ..Changeset::default() })
            .await
            .unwrap();
        let hash = [9u8; 32];
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        let holder = match backend() {
            // What a trial's own unit of work takes and writes.
            Backend::Postgres => {
                db.hold(&format!(
                    "SELECT pg_advisory_xact_lock(hashtextextended('trial pro {hex}', 0));
                     INSERT INTO trial_uses (plan_id, fingerprint_hash, license_id)
                     VALUES ('pro', '\\x{hex}', '{}')",
                    license.id
                ))
                .await
            }
            Backend::Sqlite => {
                db.hold(&format!(
                    "INSERT INTO trial_uses (plan_id, fingerprint_hash, license_id) VALUES ('pro', x'{hex}', '{}')",
                    license.id
                ))
                .await
            }
        };
        let racing = tokio::spawn({
            let store = store.clone();
            async move {
                let keys = LicenseKeys::Trial { plan_id: "pro".into(), fingerprint_hash: hash.to_vec() };
                load_license(&store, keys).await.used_trial
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!racing.is_finished(), "commit {commit}: the second trial waits for the first");
        holder.end(commit).await;
        let used = tokio::time::timeout(Duration::from_secs(10), racing).await.expect("no deadlock").unwrap();
        assert_eq!(used, commit.then_some(license.id), "commit {commit}: it sees what the first committed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heartbeats_and_downgrades_of_one_license_do_not_deadlock() {
    // A heartbeat holds its device and reads the license; a downgrade holds
    // the license, then its devices: if the heartbeat locked the license
    // too, the two would wait on each other.
    let (_db, store) = fresh_store().await;
    let manual = manual_license("user_1");
    let seen = Timestamp::now_utc();
    let devices: Vec<Device> = (0..4).map(|n| device(manual.id, &format!("fp_{n}"), seen)).collect();
    let seeded = Changeset {
        new_licenses: vec![manual.clone()],
        new_devices: devices.iter().enumerate().map(|(n, d)| activation(d, format!("token-{n}").as_bytes())).collect(),
        ..Changeset::default()
    };
    work(&store, LicenseKeys::Nothing, seeded).await.unwrap();
    let tasks: Vec<_> = (0..40)
        .map(|n| {
            let store = store.clone();
            let device_id = devices[n % devices.len()].id;
            let license_id = manual.id;
            tokio::spawn(async move {
                let (keys, changes) = match n % 2 {
                    0 => (
                        LicenseKeys::DeviceByToken { token_hash: format!("token-{}", n % 4).into_bytes() },
                        Changeset {
                            heartbeats: vec![HeartbeatWrite {
                                device_id,
                                at: Timestamp::now_utc(),
                                heartbeat_deadline: None,
                            }],
                            ..Changeset::default()
                        },
                    ),
                    _ => (
                        LicenseKeys::License { license_id },
                        Changeset { device_names: vec![(device_id, format!("renamed {n}"))], ..Changeset::default() },
                    ),
                };
                work(&store, keys, changes).await.map(drop)
            })
        })
        .collect();
    let all = async {
        for task in tasks {
            task.await.unwrap().expect("no deadlock error, no busy error");
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all).await.expect("no deadlock");
}

// ---------------------------------------------------------------------------
// Webhooks to the vendor (issue 14)
// ---------------------------------------------------------------------------

async fn endpoint(store: &AnyStore, events: &[&str]) -> Uuid {
    let events: Vec<String> = events.iter().map(|e| e.to_string()).collect();
    let new = NewWebhookEndpoint {
        id: Uuid::new_v4(),
        url: "https://hooks.example.com/in",
        events: &events,
        description: Some("crm"),
        secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    };
    let created = store.create_webhook_endpoint(&new).await.unwrap();
    assert_eq!((created.id, created.events, created.description.as_deref()), (new.id, events.clone(), Some("crm")));
    new.id
}

fn topic_message(topic: Topic, n: i64) -> OutboxMessage {
    OutboxMessage { license_id: None, topic, payload: json!({ "n": n, "nested": { "b": [1, 2], "a": null } }) }
}

fn claim_all(now: Timestamp, lease: Uuid) -> WebhookClaim<'static> {
    WebhookClaim {
        now,
        lease_until: now + time::Duration::seconds(15),
        lease,
        busy_endpoints: &[],
        per_endpoint: 100,
        limit: 100,
    }
}

#[tokio::test]
async fn enqueue_writes_one_message_per_subscribed_live_endpoint_and_none_on_rollback() {
    let (_db, store) = fresh_store().await;
    let all = endpoint(&store, &["*"]).await;
    let licenses = endpoint(&store, &["license.updated"]).await;
    let devices = endpoint(&store, &["device.dead"]).await;
    let deleted = endpoint(&store, &["*"]).await;
    assert!(store.delete_webhook_endpoint(deleted, Timestamp::now_utc()).await.unwrap());
    assert!(!store.delete_webhook_endpoint(deleted, Timestamp::now_utc()).await.unwrap(), "once");
    let live: Vec<Uuid> = store.webhook_endpoints().await.unwrap().iter().map(|e| e.id).collect();
    assert_eq!(live, [all, licenses, devices]);
    assert!(store.webhook_endpoint(deleted).await.unwrap().is_none());

    let rolled_back = Changeset { outbox: vec![topic_message(Topic::LicenseUpdated, 0)], ..Changeset::default() };
    apply_failing(&store, rolled_back).await;
    publish(&store, vec![topic_message(Topic::LicenseUpdated, 1), topic_message(Topic::SubscriptionUpdated, 2)]).await;

    let count = |id| {
        let store = store.clone();
        async move { store.webhook_deliveries(id, None, 100).await.unwrap() }
    };
    let to_all = count(all).await;
    assert_eq!(to_all.len(), 2);
    assert_eq!(count(licenses).await.len(), 1);
    assert!(count(devices).await.is_empty() && count(deleted).await.is_empty());
    let outbox = store.outbox_after(0, None, 10).await.unwrap();
    for message in &to_all {
        assert!(message.id.starts_with("msg_") && message.id.len() == 36, "{}", message.id);
        assert_eq!((message.status, message.attempts), (WebhookMessageStatus::Pending, 0));
        assert!(outbox.iter().any(|e| e.created_at == message.created_at), "written with the outbox rows");
    }

    let claimed = store.claim_webhook_messages(&claim_all(Timestamp::now_utc(), Uuid::new_v4())).await.unwrap();
    assert_eq!(claimed.len(), 3, "nothing of the rolled-back transaction");
    for message in &claimed {
        let event = outbox.iter().find(|e| e.topic == message.event_type).unwrap();
        assert_eq!((&message.payload, message.event_at), (&event.payload, event.created_at));
        assert_eq!((message.url.as_str(), message.attempts), ("https://hooks.example.com/in", 0));
        assert_eq!(message.secret, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    }
}

#[tokio::test]
async fn claims_lease_messages_per_endpoint_and_only_their_holder_records_the_attempt() {
    let (_db, store) = fresh_store().await;
    let first = endpoint(&store, &["*"]).await;
    let second = endpoint(&store, &["*"]).await;
    publish(&store, (0..3).map(|n| topic_message(Topic::LicenseUpdated, n)).collect()).await;
    let now = Timestamp::now_utc() + time::Duration::seconds(1);

    // Two per endpoint, none of a busy one.
    let lease = Uuid::new_v4();
    let busy = [second];
    let claim = WebhookClaim { per_endpoint: 2, busy_endpoints: &busy, ..claim_all(now, lease) };
    let claimed = store.claim_webhook_messages(&claim).await.unwrap();
    assert_eq!(claimed.len(), 2);
    assert!(claimed.iter().all(|m| m.endpoint_id == first));
    // Leased: another sender gets only what is left.
    let other = store.claim_webhook_messages(&claim_all(now, Uuid::new_v4())).await.unwrap();
    assert_eq!(other.iter().filter(|m| m.endpoint_id == first).count(), 1);
    assert_eq!(other.iter().filter(|m| m.endpoint_id == second).count(), 3);

    // The holder records; a stale claim records nothing.
    let failed = WebhookAttempt {
        attempted_at: now,
        status_code: Some(503),
        error: Some("the receiver answered 503".into()),
        duration_ms: 12,
        next_attempt_at: Some(now + time::Duration::seconds(5)),
    };
    let record =
        |lease, status| WebhookAttemptRecord { message_id: &claimed[0].message_id, lease, attempt: &failed, status };
    assert!(!store.record_webhook_attempt(&record(Uuid::new_v4(), WebhookMessageStatus::Pending)).await.unwrap());
    assert!(store.record_webhook_attempt(&record(lease, WebhookMessageStatus::Pending)).await.unwrap());
    assert!(!store.record_webhook_attempt(&record(lease, WebhookMessageStatus::Pending)).await.unwrap(), "once");
    assert_eq!(store.next_webhook_due().await.unwrap(), Some(as_postgres_keeps(now) + time::Duration::seconds(5)));
    let retried = store.claim_webhook_messages(&claim_all(now + time::Duration::seconds(6), lease)).await.unwrap();
    assert_eq!(retried.len(), 1, "due again after its delay; the others are still leased");
    assert_eq!((retried[0].message_id.as_str(), retried[0].attempts), (claimed[0].message_id.as_str(), 1));

    let delivered = WebhookAttempt { status_code: Some(200), error: None, next_attempt_at: None, ..failed.clone() };
    let done = WebhookAttemptRecord {
        message_id: &retried[0].message_id,
        lease,
        attempt: &delivered,
        status: WebhookMessageStatus::Delivered,
    };
    assert!(store.record_webhook_attempt(&done).await.unwrap());
    let history = store.webhook_deliveries(first, None, 10).await.unwrap();
    let message = history.iter().find(|m| m.id == retried[0].message_id).unwrap();
    assert_eq!((message.status, message.attempts, message.next_attempt_at), (WebhookMessageStatus::Delivered, 2, None));
    assert_eq!(message.delivered_at, Some(as_postgres_keeps(now)));
    let codes: Vec<Option<u16>> = message.attempt_log.iter().map(|a| a.status_code).collect();
    assert_eq!(codes, [Some(503), Some(200)]);
    assert_eq!(message.attempt_log[0].error.as_deref(), Some("the receiver answered 503"));
    assert_eq!(message.attempt_log[0].duration_ms, 12);

    // A manual retry: not of a delivered message; a leased one becomes due now.
    let retry_at = now + time::Duration::seconds(7);
    assert_eq!(store.retry_webhook_message(&message.id, retry_at).await.unwrap(), WebhookRetry::AlreadyDelivered);
    assert_eq!(store.retry_webhook_message("msg_nope", retry_at).await.unwrap(), WebhookRetry::NotFound);
    assert_eq!(store.retry_webhook_message(&claimed[1].message_id, retry_at).await.unwrap(), WebhookRetry::Scheduled);
    let again = store.claim_webhook_messages(&claim_all(retry_at, Uuid::new_v4())).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].message_id, claimed[1].message_id);

    // Deleting an endpoint fails its pending messages and hides them from retries.
    assert!(store.delete_webhook_endpoint(second, retry_at).await.unwrap());
    let stopped = store.webhook_deliveries(second, None, 10).await.unwrap();
    assert!(stopped.iter().all(|m| m.status == WebhookMessageStatus::Failed), "{stopped:?}");
    assert_eq!(store.retry_webhook_message(&stopped[0].id, retry_at).await.unwrap(), WebhookRetry::NotFound);
}

#[tokio::test]
async fn deliveries_page_newest_first_from_a_cursor() {
    let (_db, store) = fresh_store().await;
    let target = endpoint(&store, &["*"]).await;
    for n in 0..5 {
        publish(&store, vec![topic_message(Topic::LicenseUpdated, n)]).await;
    }
    let all = store.webhook_deliveries(target, None, 100).await.unwrap();
    assert_eq!(all.len(), 5);
    assert!(all.windows(2).all(|w| (w[0].created_at, &w[0].id) > (w[1].created_at, &w[1].id)));
    let after = WebhookDeliveryCursor { created_at: all[1].created_at, id: all[1].id.clone() };
    let rest: Vec<String> =
        store.webhook_deliveries(target, Some(&after), 100).await.unwrap().into_iter().map(|d| d.id).collect();
    assert_eq!(rest, all[2..].iter().map(|d| d.id.clone()).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------
// The use cases over both stores
// ---------------------------------------------------------------------------

const WEBHOOK_SECRET: &str = "whsec_test_0123456789abcdef";
const PRICE_PRO: &str = "price_pro_monthly";
const PRICE_BASIC: &str = "price_basic_monthly";
/// `created` of the first event.
const T: i64 = 1_764_000_000;

fn plans() -> PlanCatalog {
    let plan = |id: &str, price: &str, max_devices| Plan {
        amount: Some(1900),
        currency: Some("usd".into()),
        interval: Some("month".into()),
        features: vec!["export".into()],
        ..Plan::new(id, &id.to_uppercase(), price, max_devices)
    };
    PlanCatalog::new(vec![plan("pro", PRICE_PRO, 3), plan("basic", PRICE_BASIC, 1)]).unwrap()
}

/// A clock the scenario moves by hand, with sub-microsecond digits.
#[derive(Clone)]
struct TestClock(Arc<AtomicI64>);

impl TestClock {
    fn new() -> Self {
        Self(Arc::new(AtomicI64::new((T + 500) * 1_000_000_000 + 123_456_789)))
    }

    fn advance(&self, seconds: i64) {
        self.0.fetch_add(seconds * 1_000_000_000, Ordering::SeqCst);
    }

    fn now(&self) -> Timestamp {
        Timestamp::from_unix_timestamp_nanos(i128::from(self.0.load(Ordering::SeqCst))).unwrap()
    }

    fn clock(&self) -> Clock {
        let this = self.clone();
        Arc::new(move || this.now())
    }
}

fn billing<S: Store>(store: S, clock: &TestClock) -> Billing<S> {
    let key = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8()).unwrap();
    Billing::new(
        store,
        BillingConfig::new(plans(), LicensingConfig::new(Arc::new(key)))
            .with_webhook_secrets(WebhookSecrets::parse(WEBHOOK_SECRET)),
    )
    .with_clock(clock.clock())
}

fn stripe_event(id: &str, kind: &str, created: i64, object: Value) -> Value {
    json!({
        "id": id, "object": "event", "type": kind, "created": created, "api_version": "2025-03-31.basil",
        "livemode": false, "pending_webhooks": 1, "data": { "object": object }
    })
}

fn stripe_subscription(status: &str, price: &str) -> Value {
    json!({
        "id": "sub_1", "object": "subscription", "customer": "cus_1", "status": status,
        "cancel_at_period_end": false, "cancel_at": null, "canceled_at": null, "ended_at": null,
        "trial_end": null, "metadata": { "user_id": "user_1" }, "created": T,
        "items": { "object": "list", "data": [{
            "id": "si_1", "object": "subscription_item",
            "price": { "id": price, "object": "price" },
            "current_period_start": T, "current_period_end": T + 2_592_000
        }]}
    })
}

fn stripe_invoice(id: &str, amount: i64) -> Value {
    json!({
        "id": id, "object": "invoice", "customer": "cus_1", "currency": "usd",
        "amount_paid": amount, "amount_due": amount,
        "parent": { "subscription_details": { "subscription": "sub_1" } },
        "status_transitions": { "paid_at": T + 100 }
    })
}

fn rfc3339(t: Timestamp) -> String {
    billing_core::billing::rfc3339(t)
}

fn opt_rfc3339(t: Option<Timestamp>) -> Value {
    t.map_or(Value::Null, |t| Value::String(rfc3339(t)))
}

/// What the scenario observed, with uuids replaced by their order of
/// appearance so two runs can be compared.
#[derive(Default)]
struct Transcript {
    entries: Vec<Value>,
    ids: HashMap<String, usize>,
}

impl Transcript {
    fn note(&mut self, step: &str, value: Value) {
        let value = self.redact(value);
        self.entries.push(json!({ step: value }));
    }

    fn redact(&mut self, value: Value) -> Value {
        match value {
            Value::String(s) if Uuid::parse_str(&s).is_ok() => {
                let next = self.ids.len();
                Value::String(format!("uuid#{}", self.ids.entry(s).or_insert(next)))
            }
            Value::Array(items) => Value::Array(items.into_iter().map(|v| self.redact(v)).collect()),
            Value::Object(map) => {
                let mut entries: Vec<_> = map.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                Value::Object(entries.into_iter().map(|(k, v)| (k, self.redact(v))).collect())
            }
            other => other,
        }
    }
}

fn subscription_json(s: &Subscription) -> Value {
    let snap = &s.snapshot;
    json!({
        "id": s.id, "stripe_subscription_id": snap.stripe_subscription_id,
        "stripe_customer_id": snap.stripe_customer_id, "status": snap.status.as_str(), "price_id": snap.price_id,
        "item_id": snap.item_id, "cancel_at_period_end": snap.cancel_at_period_end,
        "cancel_at": opt_rfc3339(snap.cancel_at), "canceled_at": opt_rfc3339(snap.canceled_at),
        "ended_at": opt_rfc3339(snap.ended_at), "current_period_start": opt_rfc3339(snap.current_period_start),
        "current_period_end": opt_rfc3339(snap.current_period_end), "trial_end": opt_rfc3339(snap.trial_end),
        "user_id": snap.user_id, "plan_id": s.plan_id, "past_due_since": opt_rfc3339(s.past_due_since),
        "source_created": s.source_created,
    })
}

fn license_json(l: &License) -> Value {
    let t = &l.terms;
    json!({
        "id": l.id, "subscription_id": l.subscription_id, "status": t.status, "max_devices": t.max_devices,
        "expires_at": opt_rfc3339(t.expires_at), "grace_ends_at": opt_rfc3339(t.grace_ends_at), "plan_id": t.plan_id,
    })
}

fn device_json(d: &Device) -> Value {
    json!({
        "id": d.id, "license_id": d.license_id, "fingerprint": d.fingerprint, "name": d.name,
        "platform": d.platform, "app_version": d.app_version, "status": d.status,
        "activated_at": rfc3339(d.activated_at), "last_heartbeat_at": rfc3339(d.last_heartbeat_at),
        "deactivated_at": opt_rfc3339(d.deactivated_at),
    })
}

fn licensing_error(e: &LicensingError) -> Value {
    match e {
        LicensingError::Store(e) => panic!("store failed: {}", error_chain(e)),
        e => json!({ "error": format!("{e:?}") }),
    }
}

/// Signs and ingests one event; returns the outcome or the error.
async fn deliver<S: Store>(billing: &Billing<S>, clock: &TestClock, event: &Value) -> String {
    let body = serde_json::to_vec(event).unwrap();
    let signature = WebhookSecrets::parse(WEBHOOK_SECRET).unwrap().sign(&body, clock.now().unix_timestamp());
    match billing.ingest_webhook(&body, Some(&signature)).await {
        Ok(receipt) => receipt.outcome.as_str().to_owned(),
        Err(e) => format!("error: {}", error_chain(&e)),
    }
}

async fn activate<S: Store>(billing: &Billing<S>, key: &str, fingerprint: &str) -> Result<(String, Device), Value> {
    let request = ActivationRequest {
        license_key: key,
        fingerprint,
        name: Some(fingerprint),
        platform: Some("linux"),
        app_version: None,
        client_addr: None,
    };
    match billing.activate(&request).await {
        Ok(a) => Ok((a.token.expose().to_owned(), a.device)),
        Err(e) => Err(licensing_error(&e)),
    }
}

/// Webhooks (created, duplicate, newer, out-of-order, ignored, malformed and
/// retried, invoices, checkout, downgrade, cancellation), then activations,
/// validations, heartbeats, deaths, evictions and dashboard actions.
/// Asserts what the rules promise and records everything it saw.
async fn scenario<S: Store>(store: S) -> Vec<Value> {
    store.migrate().await.expect("migrate");
    let clock = TestClock::new();
    let billing = billing(store, &clock);
    let store = billing.store().clone();
    let mut t = Transcript::default();
    let mut watch = store.watch_outbox().await.unwrap();

    let created =
        stripe_event("evt_created", "customer.subscription.created", T, stripe_subscription("active", PRICE_PRO));
    assert_eq!(deliver(&billing, &clock, &created).await, "processed");
    assert_eq!(deliver(&billing, &clock, &created).await, "duplicate");
    let current = billing.current_subscription("user_1").await.unwrap().expect("subscription");
    assert_eq!((current.snapshot.status, current.plan_id.as_deref()), (SubscriptionStatus::Active, Some("pro")));
    t.note("created", subscription_json(&current));
    let licenses = billing.licenses("user_1").await.unwrap();
    assert_eq!(licenses.len(), 1);
    assert_eq!((licenses[0].terms.status, licenses[0].terms.max_devices), (LicenseStatus::Active, 3));
    let license = licenses[0].clone();
    let key = license.key.expose().to_owned();
    t.note("license", license_json(&license));

    let mut past_due = stripe_subscription("past_due", PRICE_PRO);
    past_due["cancel_at_period_end"] = json!(true);
    let newer = stripe_event("evt_past_due", "customer.subscription.updated", T + 10, past_due);
    assert_eq!(deliver(&billing, &clock, &newer).await, "processed");
    let stale =
        stripe_event("evt_stale", "customer.subscription.updated", T + 5, stripe_subscription("active", PRICE_PRO));
    assert_eq!(deliver(&billing, &clock, &stale).await, "processed", "stale deliveries are acknowledged");
    let current = billing.current_subscription("user_1").await.unwrap().unwrap();
    assert_eq!(current.snapshot.status, SubscriptionStatus::PastDue, "the stale snapshot did not win");
    assert_eq!(current.past_due_since, Some(at(T + 10, 0)), "grace runs from the past-due event");
    assert_eq!(current.source_created, T + 10);
    t.note("past_due", subscription_json(&current));
    t.note("grace", license_json(&billing.licenses("user_1").await.unwrap()[0]));
    for id in ["evt_created", "evt_past_due", "evt_stale"] {
        assert_eq!(store.webhook_event_status(id).await.unwrap(), Some(("processed".to_owned(), 1, None)));
    }
    assert_eq!(watch.try_recv(), Ok(()), "the hub would have been woken");

    clock.advance(60);
    let recovered = stripe_event(
        "evt_recovered",
        "customer.subscription.updated",
        T + 20,
        stripe_subscription("active", PRICE_PRO),
    );
    assert_eq!(deliver(&billing, &clock, &recovered).await, "processed");
    let ignored =
        stripe_event("evt_ignored", "product.created", T + 21, json!({ "id": "prod_1", "object": "product" }));
    assert_eq!(deliver(&billing, &clock, &ignored).await, "ignored");
    assert_eq!(store.webhook_event_status("evt_ignored").await.unwrap(), Some(("ignored".to_owned(), 1, None)));

    // A delivery we cannot read is refused and stores nothing (a retry of
    // the same bytes cannot fix it); a readable one under that id applies.
    let broken = stripe_event("evt_broken", "customer.subscription.updated", T + 22, json!({ "id": "sub_1" }));
    let failure = deliver(&billing, &clock, &broken).await;
    assert!(failure.starts_with("error: payload is not a Stripe event"), "{failure}");
    assert_eq!(store.webhook_event_status("evt_broken").await.unwrap(), None, "nothing stored");
    t.note("malformed", json!({ "outcome": failure }));
    let mut fixed = stripe_subscription("active", PRICE_PRO);
    fixed["cancel_at_period_end"] = json!(true);
    let fixed = stripe_event("evt_broken", "customer.subscription.updated", T + 22, fixed);
    assert_eq!(deliver(&billing, &clock, &fixed).await, "processed");
    assert_eq!(store.webhook_event_status("evt_broken").await.unwrap(), Some(("processed".to_owned(), 1, None)));

    let failed_invoice = stripe_event("evt_inv_failed", "invoice.payment_failed", T + 23, stripe_invoice("in_1", 1900));
    assert_eq!(deliver(&billing, &clock, &failed_invoice).await, "processed");
    let paid_invoice = stripe_event("evt_inv_paid", "invoice.paid", T + 24, stripe_invoice("in_1", 1900));
    assert_eq!(deliver(&billing, &clock, &paid_invoice).await, "processed");
    let late_failure = stripe_event("evt_inv_late", "invoice.payment_failed", T + 25, stripe_invoice("in_1", 1900));
    assert_eq!(deliver(&billing, &clock, &late_failure).await, "processed");
    let payments = billing.payment_history("user_1").await.unwrap();
    assert_eq!(payments.len(), 1);
    assert_eq!(payments[0].payment.status, PaymentStatus::Paid, "a paid invoice is never downgraded");
    let payment_json = |p: &billing_core::storage::PaymentRecord| {
        json!({ "invoice": p.payment.stripe_invoice_id, "subscription": p.payment.stripe_subscription_id,
                "amount": p.payment.amount, "currency": p.payment.currency, "status": p.payment.status.as_str(),
                "paid_at": opt_rfc3339(p.payment.paid_at) })
    };
    t.note("payments", Value::Array(payments.iter().map(payment_json).collect()));
    t.note("late_failure", json!(store.webhook_event_status("evt_inv_late").await.unwrap()));

    let checkout = json!({
        "id": "cs_2", "object": "checkout.session", "mode": "subscription", "client_reference_id": "user_2",
        "customer": "cus_2", "subscription": null, "metadata": {}, "payment_status": "paid"
    });
    let checkout = stripe_event("evt_checkout", "checkout.session.completed", T + 26, checkout);
    assert_eq!(deliver(&billing, &clock, &checkout).await, "processed");
    assert_eq!(store.stripe_customers_of_user("user_2").await.unwrap(), ["cus_2"]);
    assert!(billing.current_subscription("user_2").await.unwrap().is_none());

    // Licensing.
    let (_, a) = activate(&billing, &key, "fp_a").await.expect("first activation");
    clock.advance(1);
    let again = billing
        .activate(&ActivationRequest {
            license_key: &key,
            fingerprint: "fp_a",
            name: Some("renamed"),
            platform: None,
            app_version: Some("2.0"),
            client_addr: None,
        })
        .await
        .unwrap();
    assert!(!again.created, "the same fingerprint reuses its slot");
    assert_eq!(again.device.id, a.id);
    let token_a = again.token.expose().to_owned();
    clock.advance(1);
    let (token_b, _) = activate(&billing, &key, "fp_b").await.unwrap();
    clock.advance(1);
    let (token_c, _) = activate(&billing, &key, "fp_c").await.unwrap();
    clock.advance(1);
    let refused = activate(&billing, &key, "fp_d").await.unwrap_err();
    assert_eq!(refused, json!({ "error": "TooManyDevices { max_devices: 3 }" }));
    t.note("refused", refused);

    let mut codes = vec![];
    for (k, fp) in [(key.as_str(), None), (&key, Some("fp_a")), (&key, Some("fp_z")), ("NOT-A-KEY", None)] {
        codes.push(billing.validate(k, fp).await.unwrap().code.as_str());
    }
    assert_eq!(codes, ["VALID", "VALID", "NOT_ACTIVATED", "NOT_FOUND"]);
    t.note("validate", json!(codes));

    let beat = billing.heartbeat(&token_a).await.unwrap();
    assert_eq!(beat.device.last_heartbeat_at, clock.now());
    assert!(billing.device_token_grants(&token_a, license.id).await.unwrap());
    assert!(!billing.device_token_grants(&token_a, Uuid::new_v4()).await.unwrap());
    clock.advance(300);
    billing.heartbeat(&token_a).await.unwrap();
    clock.advance(1);
    billing.heartbeat(&token_b).await.unwrap();
    clock.advance(400);
    let dead = billing.heartbeat(&token_c).await.unwrap_err();
    assert!(matches!(dead, LicensingError::HeartbeatDead), "{dead:?}");
    assert!(matches!(billing.heartbeat(&token_c).await, Err(LicensingError::HeartbeatDead)));
    assert_eq!(billing.validate(&key, Some("fp_c")).await.unwrap().code.as_str(), "HEARTBEAT_DEAD");
    assert_eq!(billing.reap_dead_devices().await.unwrap(), 0, "c was declared dead by its heartbeat");
    clock.advance(300);
    assert_eq!(billing.reap_dead_devices().await.unwrap(), 2, "a and b went silent too");
    assert_eq!(billing.reap_dead_devices().await.unwrap(), 0);

    // Back to life, then a downgrade evicts the least recently seen.
    let (token_a, _) = activate(&billing, &key, "fp_a").await.unwrap();
    clock.advance(1);
    let (token_b, _) = activate(&billing, &key, "fp_b").await.unwrap();
    clock.advance(1);
    let (token_e, e) = activate(&billing, &key, "fp_e").await.unwrap();
    clock.advance(1);
    let downgrade = stripe_event(
        "evt_downgrade",
        "customer.subscription.updated",
        T + 30,
        stripe_subscription("active", PRICE_BASIC),
    );
    assert_eq!(deliver(&billing, &clock, &downgrade).await, "processed");
    t.note("downgraded", license_json(&billing.licenses("user_1").await.unwrap()[0]));
    assert!(matches!(billing.heartbeat(&token_a).await, Err(LicensingError::DeviceDeactivated)));
    assert!(matches!(billing.heartbeat(&token_b).await, Err(LicensingError::DeviceDeactivated)));
    billing.heartbeat(&token_e).await.expect("the most recently seen device keeps its slot");
    let refused = activate(&billing, &key, "fp_f").await.unwrap_err();
    assert_eq!(refused, json!({ "error": "TooManyDevices { max_devices: 1 }" }));

    let user = Actor::user("user_1");
    let (renamed, _) = billing.rename_device_of_user(Some("user_1"), e.id, "  Laptop ", &user).await.unwrap();
    assert_eq!(renamed.name.as_deref(), Some("Laptop"));
    let stranger = billing.rename_device_of_user(Some("user_2"), e.id, "Mine", &user).await.unwrap_err();
    assert!(matches!(stranger, LicensingError::DeviceNotFound), "{stranger:?}");
    let gone = billing.deactivate(&token_e, None).await.unwrap();
    assert_eq!(gone.status, DeviceStatus::Deactivated);
    assert!(matches!(billing.deactivate(&token_e, None).await, Err(LicensingError::DeviceDeactivated)));
    let kept = billing.deactivate_device_of_user(None, e.id, &Actor::System).await.unwrap();
    assert_eq!(kept.deactivated_at, Some(as_postgres_keeps(clock.now())), "already deactivated: unchanged");
    assert!(!billing.device_token_grants(&token_e, license.id).await.unwrap());

    clock.advance(60);
    let mut canceled = stripe_subscription("canceled", PRICE_BASIC);
    canceled["canceled_at"] = json!(T + 40);
    canceled["ended_at"] = json!(T + 40);
    let canceled = stripe_event("evt_canceled", "customer.subscription.deleted", T + 40, canceled);
    assert_eq!(deliver(&billing, &clock, &canceled).await, "processed");
    t.note("canceled", subscription_json(&billing.current_subscription("user_1").await.unwrap().unwrap()));
    t.note("ended_license", license_json(&billing.licenses("user_1").await.unwrap()[0]));
    assert_eq!(billing.validate(&key, None).await.unwrap().code.as_str(), "EXPIRED");

    // Everything the stores now hold, through their read paths.
    let mut devices = billing.devices_of_user("user_1").await.unwrap();
    assert_eq!(devices.len(), 4);
    devices.sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
    t.note("devices", Value::Array(devices.iter().map(device_json).collect()));
    let history = billing.subscription_history("user_1").await.unwrap();
    assert!(history.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    let history: Vec<Value> = history
        .iter()
        .map(|c| {
            json!({ "subscription_id": c.subscription_id, "kind": c.kind, "from": c.from_status, "to": c.to_status,
                    "detail": c.detail, "actor": c.actor, "event": c.stripe_event_id })
        })
        .collect();
    t.note("history", Value::Array(history));
    let outbox = store.outbox_after(0, None, 1000).await.unwrap();
    let first = outbox.first().expect("outbox rows").id;
    assert!(outbox.windows(2).all(|w| w[1].id == w[0].id + 1), "gap-free, in order");
    assert_eq!(store.latest_outbox_id().await.unwrap(), outbox.last().unwrap().id);
    let of_license = store.outbox_after(first, Some(license.id), 2).await.unwrap();
    assert_eq!(of_license.iter().map(|e| e.id).collect::<Vec<_>>(), [first + 1, first + 2]);
    let outbox: Vec<Value> = outbox
        .iter()
        .map(|e| json!({ "seq": e.id - first, "license_id": e.license_id, "topic": e.topic, "payload": e.payload }))
        .collect();
    t.note("outbox", Value::Array(outbox));
    assert!(store.license_belongs_to(license.id, "user_1").await.unwrap());
    assert!(!store.license_belongs_to(license.id, "user_2").await.unwrap());
    t.entries
}

#[tokio::test]
async fn billing_and_licensing_use_cases_run_on_the_store() {
    let (_db, store) = fresh_store().await;
    let transcript = scenario(store).await;
    assert!(transcript.len() > 10);
}

/// Not per backend: both stores at once, whichever `TEST_STORE` selects.
#[tokio::test]
async fn the_sqlite_store_gives_the_same_results_as_the_postgres_store() {
    let pg = TestDb::create(Backend::Postgres).await;
    let pg_store = pg.open().await;
    let sqlite = TestDb::create(Backend::Sqlite).await;
    let sqlite_store = sqlite.open().await;

    let from_pg = scenario(pg_store.clone()).await;
    let from_sqlite = scenario(sqlite_store.clone()).await;
    assert_eq!(from_pg.len(), from_sqlite.len());
    for (pg, sqlite) in from_pg.iter().zip(&from_sqlite) {
        assert_eq!(sqlite, pg, "SQLite (left) and PostgreSQL (right) differ");
    }

    // Instants at the edges of microsecond truncation come back the same.
    async fn round_trip<S: Store>(store: &S, sub: &Subscription) -> Subscription {
        let customer_id = customer(store, "cus_edges", Some("user_edges")).await;
        let save = Changeset {
            subscriptions: vec![HeldSubscription { subscription: sub.clone(), customer_id }],
            ..Changeset::default()
        };
        apply(store, keys(&[], &["sub_edges"], &[], &[]), save).await.unwrap();
        load(store, keys(&[], &["sub_edges"], &[], &[]))
            .await
            .subscriptions
            .remove("sub_edges")
            .expect("saved")
            .subscription
    }
    let sub = full_subscription("sub_edges", "cus_edges", "user_edges");
    let from_pg = round_trip(&pg_store, &sub).await;
    assert_eq!(round_trip(&sqlite_store, &sub).await, from_pg);
    assert_eq!(from_pg, as_stored(&sub), "the tests' model of PostgreSQL's truncation holds");
}

#[tokio::test]
async fn a_unit_of_work_abandoned_mid_flight_leaves_no_transaction_open() {
    let (db, store) = fresh_store().await;
    let (_, license) = seed_license(&store, "sub_1", "cus_1", "user_1").await;
    let idle_in_transaction = "SELECT count(*) FROM pg_stat_activity
                                WHERE datname = current_database() AND state LIKE 'idle in transaction%'";
    for round in 0..20 {
        let held = LicenseKeys::License { license_id: license.id };
        let changes = Changeset { outbox: vec![message(Some(license.id), round)], ..Changeset::default() };
        // Polled once, so it is under way, then given up (as when a client
        // hangs up and its request's future is dropped).
        let mut abandoned = Box::pin(work(&store, held.clone(), changes));
        let waker = std::task::Waker::noop();
        let _ = std::future::Future::poll(abandoned.as_mut(), &mut std::task::Context::from_waker(waker));
        drop(abandoned);
        // No pooled session is left inside the transaction (before anything
        // else could reuse it and so end it).
        if backend() == Backend::Postgres {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while db.count(idle_in_transaction).await > 0 {
                assert!(std::time::Instant::now() < deadline, "round {round}: a session was left in a transaction");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        // Committed or rolled back, the license is free again at once.
        let next = Changeset { outbox: vec![message(Some(license.id), 100 + round)], ..Changeset::default() };
        tokio::time::timeout(Duration::from_secs(5), work(&store, held, next))
            .await
            .unwrap_or_else(|_| panic!("round {round}: the license was left locked"))
            .unwrap();
    }
    let committed = db.count("SELECT count(*) FROM outbox_events WHERE CAST(payload->>'n' AS INTEGER) >= 100").await;
    assert_eq!(committed, 20, "every later transaction committed");
}

// ---------------------------------------------------------------------------
// Admin reads (issue 14): Stripe deliveries, the audit walk, customers
// ---------------------------------------------------------------------------

use billing_core::domain::cursor::{AuditSource, CustomerCursor, DeliveryCursor};
use billing_core::storage::admin_reads::{AdminReadStore, AuditFilter, DeliveryStatus};

impl TestDb {
    /// Runs statements that both dialects accept, past the store.
    async fn execute(&self, sql: &str) {
        match &self.location {
            StoreLocation::Postgres(url) => pg_connect(url).await.batch_execute(sql).await.unwrap(),
            StoreLocation::Sqlite(path) => {
                let (path, sql) = (path.clone(), sql.to_owned());
                tokio::task::spawn_blocking(move || sqlite_raw(&path).execute_batch(&sql).unwrap()).await.unwrap()
            }
        }
    }

    /// A manual license of `user` (V6's columns; no store method writes one here).
    async fn insert_manual_license(&self, user: &str) -> Uuid {
        let id = Uuid::new_v4();
        let key = LicenseKey::generate();
        let hash: String = key.lookup_hash().iter().map(|b| format!("{b:02x}")).collect();
        let hash = match self.backend {
            Backend::Postgres => format!("'\\x{hash}'::bytea"),
            Backend::Sqlite => format!("X'{hash}'"),
        };
        self.execute(&format!(
            "INSERT INTO licenses (id, key, key_hash, status, plan_id, max_devices, source, user_id)
             VALUES ('{id}', '{}', {hash}, 'active', 'pro', 2, 'manual', '{user}')",
            key.expose()
        ))
        .await;
        id
    }
}

fn delivery<'a>(id: &'a str, object_id: Option<&'a str>, payload: &'a [u8]) -> EventRecord<'a> {
    EventRecord { object_id, payload, ..event(id) }
}

/// `delivery` as a claim of a Stripe unit of work.
fn delivery_claim(id: &str, object_id: Option<&str>, payload: &[u8]) -> StripeKeys {
    let mut keys = StripeKeys::default();
    keys.claim(DeliveryClaim {
        object_id: object_id.map(str::to_owned),
        payload: payload.to_vec().into(),
        ..claim(id)
    });
    keys
}

#[tokio::test]
async fn deliveries_keep_their_payload_and_object_and_count_duplicates() {
    let (_db, store) = fresh_store().await;
    load(&store, delivery_claim("evt_ok", Some("sub_9"), b"{\"id\":\"evt_ok\"}")).await;
    let ignored = Changeset { deliveries: vec![("evt_ping".into(), DeliveryRecord::Ignored)], ..Changeset::default() };
    apply(&store, delivery_claim("evt_ping", None, b"ping"), ignored).await.unwrap();
    store.record_event_failure(&delivery("evt_bad", Some("in_1"), b"first body"), "boom").await.unwrap();
    store.record_event_failure(&delivery("evt_bad", Some("in_1"), b"second body"), "boom again").await.unwrap();
    store.record_event_duplicate("evt_ok").await.unwrap();
    store.record_event_duplicate("evt_ok").await.unwrap();
    store.record_event_duplicate("evt_unknown").await.expect("counting an unknown event changes nothing");

    let stored = store.stored_delivery("evt_ok").await.unwrap().unwrap();
    assert_eq!((stored.status.as_str(), stored.payload.as_deref()), ("processed", Some(&b"{\"id\":\"evt_ok\"}"[..])));
    let failed = store.stored_delivery("evt_bad").await.unwrap().unwrap();
    assert_eq!((failed.status.as_str(), failed.payload.as_deref()), ("failed", Some(&b"second body"[..])));
    assert_eq!(store.stored_delivery("evt_none").await.unwrap(), None);

    let ok = store.stripe_delivery("evt_ok").await.unwrap().unwrap();
    assert_eq!(
        (ok.kind.as_str(), ok.object_id.as_deref(), ok.status.as_str(), ok.attempts, ok.duplicates, ok.error),
        ("customer.subscription.updated", Some("sub_9"), "processed", 1, 2, None)
    );
    assert!(ok.processed_at.is_some());
    let bad = store.stripe_delivery("evt_bad").await.unwrap().unwrap();
    assert_eq!((bad.attempts, bad.error.as_deref(), bad.processed_at), (2, Some("boom again"), None));

    let ids = |page: Vec<billing_core::storage::admin_reads::StripeDelivery>| {
        page.into_iter().map(|d| d.id).collect::<Vec<_>>()
    };
    let of = |status| {
        let store = store.clone();
        async move { ids(store.stripe_deliveries(status, None, 10).await.unwrap()) }
    };
    assert_eq!(of(Some(DeliveryStatus::Processed)).await, ["evt_ok"]);
    assert_eq!(of(Some(DeliveryStatus::Ignored)).await, ["evt_ping"]);
    assert_eq!(of(Some(DeliveryStatus::Failed)).await, ["evt_bad"]);
    assert_eq!(of(Some(DeliveryStatus::Duplicate)).await, ["evt_ok"]);
    assert_eq!(of(None).await, ["evt_bad", "evt_ping", "evt_ok"], "newest first");

    // A failed delivery claimed again keeps the body it was applied with.
    let again = load(&store, delivery_claim("evt_bad", Some("in_1"), b"applied body")).await;
    assert!(again.claimed.contains("evt_bad"));
    let applied = store.stored_delivery("evt_bad").await.unwrap().unwrap();
    assert_eq!((applied.status.as_str(), applied.payload.as_deref()), ("processed", Some(&b"applied body"[..])));
}

#[tokio::test]
async fn the_delivery_walk_returns_each_delivery_once_in_order() {
    let (_db, store) = fresh_store().await;
    let ids: Vec<String> = (0..23).map(|n| format!("evt_{n:02}")).collect();
    for id in &ids {
        load(&store, delivery_claim(id, None, b"{}")).await;
    }
    let mut seen = Vec::new();
    let mut after: Option<DeliveryCursor> = None;
    loop {
        let page = store.stripe_deliveries(None, after.as_ref(), 4).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.cursor());
        seen.extend(page.into_iter().map(|d| (d.received_at, d.id)));
    }
    let mut expected = seen.clone();
    expected.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, expected, "newest first by (received_at, id)");
    let mut walked: Vec<String> = seen.into_iter().map(|(_, id)| id).collect();
    walked.sort();
    assert_eq!(walked, ids, "each delivery exactly once");
}

#[tokio::test]
async fn the_audit_walk_covers_three_tables_once_each_and_filters_by_license_and_user() {
    let (db, store) = fresh_store().await;
    let (sub, license) = seed_license(&store, "sub_1", "cus_1", "user_1").await;
    let (_, other) = seed_license(&store, "sub_2", "cus_2", "user_2").await;
    let manual = db.insert_manual_license("user_1").await;
    let seen = Timestamp::now_utc();
    let a = device(license.id, "fp_a", seen);
    let m = device(manual, "fp_m", seen);
    let status = |from, to| billing_core::domain::subscription::SubscriptionChange::StatusChanged { from, to };
    for round in 0..3 {
        let stripe = Actor::Stripe { event_id: format!("evt_{round}") };
        let activated = |d: &Device| DeviceAudit {
            client_addr: None,
            device_id: d.id,
            license_id: d.license_id,
            kind: "activated",
            actor: Actor::System.label(),
            detail: json!({ "round": round }),
        };
        let changes = Changeset {
            subscription_audit: vec![SubscriptionAudit {
                client_addr: None,
                subscription_id: sub.id,
                change: status(SubscriptionStatus::Trialing, SubscriptionStatus::Active),
                actor: stripe.label(),
                stripe_event_id: stripe.stripe_event_id().map(str::to_owned),
            }],
            new_devices: match round {
                0 => vec![activation(&a, b"token-a"), activation(&m, b"token-m")],
                _ => Vec::new(),
            },
            device_audit: vec![activated(&a), activated(&m)],
            ..Changeset::default()
        };
        work(&store, LicenseKeys::Nothing, changes).await.unwrap();
        db.execute(&format!(
            "INSERT INTO license_changes (license_id, kind, actor, detail) VALUES
                ('{manual}', 'renewed', 'admin:ops', '{{\"round\": {round}}}'),
                ('{}', 'suspended', 'admin:ops', '{{}}')",
            other.id
        ))
        .await;
    }

    let walk = |filter: AuditFilter, page_size: i64| {
        let store = store.clone();
        async move {
            let mut entries = Vec::new();
            let mut after = None;
            loop {
                let page = store.audit_entries(&filter, after.as_ref(), page_size).await.unwrap();
                assert!(page.len() as i64 <= page_size);
                let Some(last) = page.last() else { break };
                after = Some(last.cursor());
                entries.extend(page);
            }
            entries
        }
    };
    let all = walk(AuditFilter::default(), 4).await;
    let keys: Vec<_> = all.iter().map(|e| (e.at, e.source, e.id)).collect();
    let mut sorted = keys.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(keys, sorted, "newest first by (at, source, id)");
    let mut unique = keys.clone();
    unique.dedup();
    assert_eq!(unique.len(), 3 + 6 + 6, "three subscription, six device and six license changes, each once");

    let sub_entry = all.iter().find(|e| e.source == AuditSource::Subscription).unwrap();
    assert_eq!(
        (sub_entry.license_id, sub_entry.subscription_id, sub_entry.from_status.as_deref(), sub_entry.actor.as_str()),
        (Some(license.id), Some(sub.id), Some("trialing"), "stripe")
    );
    assert!(sub_entry.stripe_event_id.as_deref().is_some_and(|e| e.starts_with("evt_")));
    let manual_entry = all.iter().find(|e| e.source == AuditSource::License && e.license_id == Some(manual)).unwrap();
    assert_eq!((manual_entry.kind.as_str(), manual_entry.actor.as_str()), ("renewed", "admin:ops"));
    assert_eq!(manual_entry.subscription_id, None, "a manual license has no subscription");
    assert!(manual_entry.detail["round"].is_number());

    let of_license = walk(AuditFilter { license_id: Some(license.id), user_id: None }, 2).await;
    assert_eq!(of_license.len(), 3 + 3, "its subscription's changes and its device's");
    assert!(of_license.iter().all(|e| e.license_id == Some(license.id)));
    let of_user = walk(AuditFilter { license_id: None, user_id: Some("user_1".into()) }, 5).await;
    assert_eq!(of_user.len(), 3 + 6 + 3, "Stripe-linked and manual licenses of user_1");
    assert!(of_user.iter().all(|e| e.license_id == Some(license.id) || e.license_id == Some(manual)));
    let of_other = walk(AuditFilter { license_id: None, user_id: Some("user_2".into()) }, 50).await;
    assert_eq!(of_other.len(), 3);
    assert!(walk(AuditFilter { license_id: None, user_id: Some("nobody".into()) }, 50).await.is_empty());
}

#[tokio::test]
async fn customers_are_found_by_user_stripe_id_or_email_and_manual_only_users_appear() {
    let (db, store) = fresh_store().await;
    seed_license(&store, "sub_1", "cus_1", "user_1").await;
    let unlinked = customer(&store, "cus_unlinked", None).await;
    let linked = customer(&store, "cus_1", None).await;
    let emails = |list: &[(Uuid, &str, i64)]| Changeset {
        customer_emails: list.iter().map(|&(id, email, created)| (id, Some(email.to_owned()), created)).collect(),
        ..Changeset::default()
    };
    let both = || keys(&[], &[], &["cus_1", "cus_unlinked"], &[]);
    apply(&store, both(), emails(&[(linked, "Ada@Example.com", 200), (unlinked, "first@example.com", 100)]))
        .await
        .unwrap();
    // An older event's address does not replace a newer one's.
    apply(&store, both(), emails(&[(linked, "old@example.com", 100), (unlinked, "same-second@example.com", 100)]))
        .await
        .unwrap();
    let manual = db.insert_manual_license("user_manual").await;
    db.insert_manual_license("user_1").await;

    let find = |q: Option<&'static str>| {
        let store = store.clone();
        async move { store.customers(q, None, 10).await.unwrap() }
    };
    let all = find(None).await;
    let keys: Vec<_> = all.iter().map(|c| (c.stripe_customer_id.as_deref(), c.user_id.as_deref())).collect();
    assert_eq!(
        keys,
        [(None, Some("user_manual")), (Some("cus_unlinked"), None), (Some("cus_1"), Some("user_1"))],
        "newest first; user_1 has a Stripe customer, so is not listed a second time"
    );
    let by_email = find(Some("ada@EXAMPLE.com")).await;
    assert_eq!(by_email.len(), 1);
    assert_eq!(
        (by_email[0].stripe_customer_id.as_deref(), by_email[0].email.as_deref()),
        (Some("cus_1"), Some("Ada@Example.com"))
    );
    assert_eq!(find(Some("user_1")).await, by_email);
    assert_eq!(find(Some("cus_1")).await, by_email);
    assert_eq!(find(Some("same-second@example.com")).await[0].customer_id, Some(unlinked));
    assert!(find(Some("old@example.com")).await.is_empty());
    assert!(find(Some("first@example.com")).await.is_empty(), "a same-second update applies the later arrival");
    assert_eq!(find(Some("user_manual")).await[0].stripe_customer_id, None);

    // Page by page, each once.
    let first = store.customers(None, None, 2).await.unwrap();
    let cursor: CustomerCursor = first[1].position.clone();
    let rest = store.customers(None, Some(&cursor), 2).await.unwrap();
    assert_eq!([first, rest].concat(), all);

    let subscriptions = store.subscriptions_of_customers(&[linked, unlinked]).await.unwrap();
    assert_eq!(subscriptions.len(), 1);
    assert_eq!((subscriptions[0].0, subscriptions[0].1.snapshot.stripe_subscription_id.as_str()), (linked, "sub_1"));
    let licenses =
        store.licenses_of_customers(&[linked], &["user_1".to_owned(), "user_manual".to_owned()]).await.unwrap();
    let mut sources: Vec<_> = licenses.iter().map(|l| (l.source.as_str(), l.user_id.as_deref())).collect();
    sources.sort();
    assert_eq!(
        sources,
        [("manual", Some("user_1")), ("manual", Some("user_manual")), ("stripe", Some("user_1"))],
        "a Stripe license's user is its customer's"
    );
    assert!(licenses.iter().any(|l| l.id == manual && l.customer_id.is_none()));
}

#[tokio::test]
async fn the_license_listing_filters_by_the_effective_status_the_domain_computes() {
    use billing_core::domain::{LicenseOverrides, LicenseSource};
    use billing_core::storage::admin_reads::LicenseFilter;
    let (_db, store) = fresh_store().await;
    let now = Timestamp::now_utc();
    let (past, future) = (now - time::Duration::hours(1), now + time::Duration::hours(1));
    let terms = |status, expires_at, grace_ends_at| LicenseTerms {
        status,
        max_devices: 2,
        expires_at,
        grace_ends_at,
        plan_id: Some("pro".to_owned()),
    };
    let manual = |terms: LicenseTerms, overrides: LicenseOverrides| License {
        id: Uuid::new_v4(),
        subscription_id: None,
        source: LicenseSource::Manual,
        user_id: Some("user_m".to_owned()),
        key: LicenseKey::generate(),
        terms,
        entitlements: Vec::new(),
        metadata: serde_json::Map::new(),
        overrides,
        kind: LicenseKind::Subscription,
        updates_until: None,
        trial: false,
    };
    let none = LicenseOverrides::default();
    let (_, stripe_license) = seed_license(&store, "sub_1", "cus_1", "user_1").await;
    let stripe_expired = License {
        overrides: LicenseOverrides { expires_at: Some(past), ..none.clone() },
        ..License::for_subscription(Uuid::new_v4(), terms(LicenseStatus::Active, Some(future), None))
    };
    let cases = vec![
        manual(terms(LicenseStatus::Active, None, None), none.clone()),
        manual(terms(LicenseStatus::Active, Some(future), None), none.clone()),
        manual(terms(LicenseStatus::Active, Some(past), None), none.clone()),
        manual(terms(LicenseStatus::Active, None, Some(past)), none.clone()),
        manual(terms(LicenseStatus::Active, None, Some(future)), none.clone()),
        manual(
            terms(LicenseStatus::Suspended, None, None),
            LicenseOverrides { suspended_at: Some(past), ..none.clone() },
        ),
        manual(terms(LicenseStatus::Revoked, Some(past), Some(past)), none.clone()),
        // A Stripe license's own period end is no hard expiry.
        License { terms: terms(LicenseStatus::Active, Some(past), None), ..stripe_license.clone() },
    ];
    let inserted = Changeset {
        new_licenses: cases[..cases.len() - 1].to_vec(),
        license_terms: vec![(stripe_license.id, cases[cases.len() - 1].terms.clone())],
        ..Changeset::default()
    };
    work(&store, LicenseKeys::Nothing, inserted).await.unwrap();
    // A second Stripe license whose admin expiry override has passed.
    let customer = Uuid::new_v4();
    let sub_2 =
        Subscription { id: stripe_expired.subscription_id.unwrap(), ..full_subscription("sub_2", "cus_2", "user_2") };
    let second = Changeset {
        new_customers: vec![NewCustomer {
            id: customer,
            stripe_customer_id: "cus_2".into(),
            user_id: Some("user_2".into()),
        }],
        subscriptions: vec![HeldSubscription { subscription: sub_2, customer_id: customer }],
        new_licenses: vec![stripe_expired.clone()],
        ..Changeset::default()
    };
    apply(&store, keys(&[], &["sub_2"], &["cus_2"], &[]), second).await.unwrap();
    let all: Vec<License> = cases.into_iter().chain([stripe_expired]).collect();

    for status in [LicenseStatus::Active, LicenseStatus::Suspended, LicenseStatus::Expired, LicenseStatus::Revoked] {
        let filter = LicenseFilter { status: Some(status), ..LicenseFilter::default() };
        let mut listed: Vec<Uuid> =
            store.licenses_page(&filter, now, None, 100).await.unwrap().iter().map(|l| l.record.license.id).collect();
        let mut expected: Vec<Uuid> = all.iter().filter(|l| l.effective_status(now) == status).map(|l| l.id).collect();
        listed.sort();
        expected.sort();
        assert_eq!(listed, expected, "status {status:?}");
        assert!(!expected.is_empty(), "each status has a case: {status:?}");
    }
}

// --- Admin license writes (issue 14) ---

#[tokio::test]
async fn manual_licenses_and_admin_overrides_read_back_with_their_owner_and_subscription() {
    use billing_core::domain::{LicenseKey, LicenseOverrides, LicenseSource};
    let (db, store) = fresh_store().await;
    let (sub, stripe) = seed_license(&store, "sub_1", "cus_1", "user_1").await;
    let manual = License {
        id: Uuid::new_v4(),
        subscription_id: None,
        source: LicenseSource::Manual,
        user_id: Some("reseller_7".into()),
        key: LicenseKey::generate(),
        terms: LicenseTerms {
            status: LicenseStatus::Active,
            max_devices: 2,
            expires_at: Some(at(1_900_000_000, 123_000)),
            grace_ends_at: None,
            plan_id: Some("pro".into()),
        },
        entitlements: vec!["beta".into(), "élan".into()],
        metadata: [("order".to_owned(), json!("R-1")), ("n".to_owned(), json!(3))].into_iter().collect(),
        overrides: LicenseOverrides {
            max_devices: Some(2),
            expires_at: Some(at(1_900_000_000, 123_000)),
            suspended_at: None,
            disputed_at: None,
        },
        kind: LicenseKind::Perpetual,
        updates_until: Some(at(1_950_000_000, 456_000)),
        trial: false,
    };
    let audit = |license: &License, kind| LicenseAudit {
        client_addr: None,
        license_id: license.id,
        kind,
        actor: Actor::System.label(),
        detail: json!({ "plan": "pro" }),
    };
    let issued = Changeset {
        new_licenses: vec![manual.clone()],
        license_audit: vec![audit(&manual, "issued")],
        ..Changeset::default()
    };
    work(&store, LicenseKeys::Nothing, issued).await.unwrap();

    assert_eq!(store.license_by_key_hash(&manual.key.lookup_hash()).await.unwrap().as_ref(), Some(&manual));
    assert_eq!(store.licenses_of_user("reseller_7").await.unwrap(), std::slice::from_ref(&manual));
    assert!(store.license_belongs_to(manual.id, "reseller_7").await.unwrap());
    assert!(!store.license_belongs_to(manual.id, "user_1").await.unwrap());
    assert_eq!(store.licenses_of_user("user_1").await.unwrap().len(), 1, "the Stripe license only");

    let record = |license_id| {
        let store = store.clone();
        async move {
            let bundle = load_license(&store, LicenseKeys::License { license_id }).await;
            bundle.licenses.into_iter().next()
        }
    };
    let locked = record(manual.id).await.expect("exists");
    assert_eq!((&locked.record.license, locked.record.owner_user_id.as_deref()), (&manual, Some("reseller_7")));
    assert_eq!(locked.subscription, None);
    assert!(locked.record.updated_at >= locked.record.created_at);
    let locked = record(stripe.id).await.expect("exists");
    let stored_stripe = License {
        terms: LicenseTerms { expires_at: Some(at(1_766_592_000, 0)), ..stripe.terms.clone() },
        ..stripe.clone()
    };
    assert_eq!(locked.record.license, stored_stripe);
    assert_eq!(locked.record.owner_user_id.as_deref(), Some("user_1"), "a Stripe license's user is its customer's");
    assert_eq!(locked.subscription.as_ref(), Some(&as_stored(&sub)));
    assert!(record(Uuid::new_v4()).await.is_none());

    // Everything an admin may change is saved, and read back by every read.
    let overridden = License {
        terms: LicenseTerms { status: LicenseStatus::Suspended, max_devices: 9, ..stored_stripe.terms.clone() },
        entitlements: vec!["export".into()],
        metadata: [("crm".to_owned(), json!({ "id": 42 }))].into_iter().collect(),
        overrides: LicenseOverrides {
            max_devices: Some(9),
            expires_at: Some(at(1_800_000_000, 7_000)),
            suspended_at: Some(at(1_764_000_000, 5_000)),
            disputed_at: Some(at(1_764_000_100, 9_000)),
        },
        ..stored_stripe.clone()
    };
    let saved = Changeset {
        saved_licenses: vec![overridden.clone()],
        license_audit: vec![LicenseAudit { client_addr: None, detail: json!({}), ..audit(&overridden, "suspended") }],
        ..Changeset::default()
    };
    let before = work(&store, LicenseKeys::License { license_id: overridden.id }, saved).await.unwrap();
    assert_eq!(before.licenses[0].record.license, stored_stripe, "loaded before the change");
    let after = record(overridden.id).await.expect("exists");
    assert_eq!(after.record.license, overridden, "what was saved");
    assert!(after.record.updated_at >= before.licenses[0].record.updated_at);
    assert_eq!(after.record.created_at, before.licenses[0].record.created_at);
    assert_eq!(store.license_by_key_hash(&overridden.key.lookup_hash()).await.unwrap().as_ref(), Some(&overridden));
    let bundle = load(&store, keys(&[], &["sub_1"], &[], &[])).await;
    assert_eq!(bundle.licenses.get(&sub.id), Some(&overridden), "webhooks see the overrides");

    let rows = db.texts("SELECT kind || ':' || actor FROM license_changes ORDER BY id").await;
    assert_eq!(rows, ["issued:system", "suspended:system"]);
}

// ---------------------------------------------------------------------------
// Stripe backfill runs (issue 16)
// ---------------------------------------------------------------------------

fn backfill_checkpoint(resource: &str, after: Option<&str>, seen: u64) -> BackfillCheckpoint {
    BackfillCheckpoint {
        resource: resource.to_owned(),
        after: after.map(str::to_owned),
        counts: json!({ "customers": { "seen": seen, "skipped": { "why": 1 } } }),
    }
}

#[tokio::test]
async fn a_backfill_run_saves_its_checkpoints_until_finished_or_superseded() {
    let (_db, store) = fresh_store().await;
    assert_eq!(store.running_backfill_run().await.unwrap(), None);

    let first = Uuid::new_v4();
    store.start_backfill_run(first, Some(1_700_000_000), &backfill_checkpoint("customers", None, 0)).await.unwrap();
    let run = store.running_backfill_run().await.unwrap().expect("running");
    assert_eq!((run.id, run.since), (first, Some(1_700_000_000)));
    assert_eq!(run.checkpoint, backfill_checkpoint("customers", None, 0));
    assert!(run.updated_at >= run.started_at);

    let page = backfill_checkpoint("subscriptions", Some("sub_100"), 250);
    assert!(store.save_backfill_checkpoint(first, &page).await.unwrap());
    let run = store.running_backfill_run().await.unwrap().unwrap();
    assert_eq!(run.checkpoint, page, "read back as saved, counts included");

    // A new run supersedes it: the old one's checkpoints are refused.
    let second = Uuid::new_v4();
    store.start_backfill_run(second, None, &backfill_checkpoint("customers", None, 0)).await.unwrap();
    let run = store.running_backfill_run().await.unwrap().unwrap();
    assert_eq!((run.id, run.since), (second, None));
    assert!(!store.save_backfill_checkpoint(first, &page).await.unwrap(), "superseded");
    assert!(!store.finish_backfill_run(first, &page).await.unwrap(), "superseded");
    assert_eq!(
        store.running_backfill_run().await.unwrap().unwrap().checkpoint,
        backfill_checkpoint("customers", None, 0)
    );

    let done = backfill_checkpoint("checkout_sessions", None, 9_000);
    assert!(store.finish_backfill_run(second, &done).await.unwrap());
    assert_eq!(store.running_backfill_run().await.unwrap(), None, "nothing left to resume");
    assert!(!store.save_backfill_checkpoint(second, &page).await.unwrap(), "a finished run takes no checkpoint");
    assert!(!store.save_backfill_checkpoint(Uuid::new_v4(), &page).await.unwrap(), "nor does an unknown one");
}
