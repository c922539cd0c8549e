//! # `webhook_ingest`: how fast signed Stripe webhooks are acknowledged
//!
//! One run, on a fresh store chosen by `BENCH_STORE`: a PostgreSQL database
//! `billing_bench_<uuid>` (`postgres`, the default; dropped `WITH (FORCE)` at
//! the end) or an SQLite file in a temporary directory (`sqlite`; the
//! directory is removed at the end), measures:
//!
//! 1. **Baseline**: what the store's engine alone commits on this machine.
//!    * PostgreSQL: `pgbench` against that same database with a custom
//!      script of one single-row `INSERT` per transaction, `-n -c
//!      <concurrency> -j 2 -T <secs>`: what PostgreSQL commits with as many
//!      clients as the HTTP load has requests in flight. Its tps and average
//!      latency (and p50/p99/max from its per-transaction log) are printed.
//!    * SQLite (`pgbench` is PostgreSQL-only): a loop in this process of
//!      single-row `INSERT` transactions (`BEGIN IMMEDIATE` … `COMMIT`) for
//!      `<secs>` on a scratch file beside the store's, opened with the
//!      store's pragmas (WAL, `synchronous = FULL`, `busy_timeout`), through
//!      the `rusqlite` that `deadpool-sqlite` re-exports. One writer, as the
//!      store has one writer connection: every commit is one WAL fsync.
//! 2. **`POST /api/stripe/webhooks/handler`** on `billing-server` started
//!    in-process as the integration tests start it (`AnyStore::open` on the
//!    `StoreLocation` with the pool size, migrations, `Billing`, `AppState`,
//!    `billing_server::serve` on `127.0.0.1:0`). N events are built and
//!    signed beforehand
//!    (`WebhookSecrets::sign`) in the shapes of `tests/it/helpers.rs`: for
//!    each of N/4 distinct subscriptions (each with its own customer and
//!    `metadata.user_id`), in Stripe's order,
//!    * `customer.subscription.created` (basic plan: customer, subscription,
//!      audit row, license issued; no client-visible change),
//!    * `invoice.paid` (a payment row),
//!    * `customer.subscription.updated` upgrading to pro (license terms
//!      updated; `license.updated` + `subscription.updated` go to the outbox),
//!    * `customer.subscription.updated` scheduling cancellation at period end
//!      (`subscription.updated` goes to the outbox),
//!
//!    so half of the events write to the outbox (and so, on PostgreSQL, take
//!    its global advisory lock). The lifecycles are interleaved so that the
//!    events of one subscription are 1,024 positions apart in the stream (or
//!    64 x concurrency, when more) and so never in flight together. After a
//!    warm-up with separate subscriptions, the events are posted by a
//!    closed-loop load generator: `concurrency` tasks sharing one keep-alive
//!    `reqwest` client, each with one request in flight. The acknowledgement
//!    latency of a delivery runs from sending the request to having read the
//!    whole response. Every response must be a 2xx; anything else counts as
//!    a failure. Around the measured events the server's
//!    `Billing::webhook_group_stats` is read twice: the difference gives the
//!    mean group size (deliveries per unit of work) of the phase.
//! 3. **The same at 1 in flight**: `BENCH_SERIAL_EVENTS` more events, of
//!    other subscriptions, built and signed the same way just before, posted
//!    by one closed-loop task to the same server, with their own latency,
//!    CPU and group size figures.
//!
//! On PostgreSQL only, while the measured events of step 2 are posted, the server's
//! sessions are sampled every 200 ms (`pg_stat_activity`, `pg_locks`; more
//! often, the sampling itself showed as ~1.5 % of the machine): the
//! mean number in each state and wait event, and how many wait for the
//! outbox's global advisory lock or for a new subscription's lock, show where
//! the time goes. SQLite has no equivalent; the sampling is skipped.
//!
//! The table at the end (its header line and row labels name the store)
//! shows, for steps 2 and 3, events/s, average/p50/p99/max latency,
//! failures and the mean group size beside the baseline figures and the
//! targets: at `BENCH_CONCURRENCY` in flight, events/s at least 0.4 x the
//! baseline's tps of the same run (none without a baseline) and a p99 under
//! 10 ms; at 1 in flight, no fewer events/s than the reference recorded in
//! this file (`SERIAL_REFERENCE_POSTGRES`; none for SQLite). Each row
//! shows the cores used during its
//! measurement: `app` (pgbench itself, or this process, which is the server
//! *and* the load generator, and runs the SQLite baseline), `pg` (all
//! PostgreSQL processes: ~0 with `BENCH_STORE=sqlite`, which uses none),
//! `other` (the rest of the machine: anything above ~0.1 means something
//! else ran and the figures are pessimistic) and the CPU time (app + pg) per
//! operation, whence the most the machine's cores could do. No timing is
//! asserted. Server logs are not collected (no `tracing` subscriber is
//! installed).
//!
//! ## Running
//!
//! ```text
//! cargo bench -p billing-server --bench webhook_ingest
//! BENCH_STORE=sqlite cargo bench -p billing-server --bench webhook_ingest
//! ```
//!
//! ## Prerequisites
//!
//! * With `BENCH_STORE=postgres` (the default): PostgreSQL at
//!   `postgres://postgres@127.0.0.1:5432` with trust authentication
//!   (override with `TEST_DATABASE_URL`, without a database name, as for the
//!   integration tests), and `pgbench` on `PATH` or in
//!   `/usr/lib/postgresql/<version>/bin` (or named by `BENCH_PGBENCH`);
//!   without it the baseline is skipped.
//! * With `BENCH_STORE=sqlite`: nothing (the file goes to the system's
//!   temporary directory, so the figures are those of its file system).
//! * Linux (`/proc` is read for the CPU figures).
//!
//! ## Knobs (environment variables)
//!
//! `BENCH_STORE` (`postgres`, the default, or `sqlite`),
//! `BENCH_CONCURRENCY` (16: requests in flight and `pgbench` clients),
//! `BENCH_EVENTS` (20000, rounded up to a multiple of 4),
//! `BENCH_WARMUP_EVENTS` (1000), `BENCH_SERIAL_EVENTS` (2000, rounded up to
//! a multiple of 4: step 3), `BENCH_PGBENCH_SECS` (5: the length of
//! either store's baseline),
//! `BENCH_DB_POOL_SIZE` (4 per core, the server's default
//! `BILLING_DB_POOL_SIZE`; PostgreSQL only, SQLite has one writer and a
//! fixed reader pool), `BENCH_SYNCHRONOUS_COMMIT` (unset: the server's
//! setting; e.g. `off` sets it on the bench database, for `pgbench` and the
//! server alike; PostgreSQL only, refused with `sqlite`), `BENCH_PGBENCH`,
//! `TEST_DATABASE_URL`.

mod support;

use anyhow::{ensure, Context};
use billing_core::storage::any::StoreLocation;
use billing_core::stripe::WebhookSecrets;
use deadpool_sqlite::rusqlite;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{
    cpu_count, env_number, group_stats_between, load_client, pg_connect, post_all, unix_now, BenchDatabase, CpuSample,
    CpuSplit, Delivery, LoadResult, Percentiles, Server, PRICE_BASIC, PRICE_PRO, WEBHOOK_PATH, WEBHOOK_SECRET,
};

/// Targets, printed beside the figures (never asserted): events/s at least
/// this share of the baseline's tps measured in the same run, with a p99
/// under this many ms, at `BENCH_CONCURRENCY` in flight.
const TARGET_SHARE_OF_BASELINE_TPS: f64 = 0.4;
const TARGET_P99_MS: f64 = 10.0;

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let settings = Settings::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(settings))
}

// ---------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------

/// The store under test (`BENCH_STORE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Sqlite => "sqlite",
        }
    }
}

#[derive(Debug, Clone)]
struct Settings {
    backend: Backend,
    concurrency: usize,
    events: usize,
    warmup_events: usize,
    serial_events: usize,
    pgbench_secs: u64,
    pool_size: usize,
    synchronous_commit: Option<String>,
    admin_url: String,
}

impl Settings {
    fn from_env() -> anyhow::Result<Self> {
        let backend = match std::env::var("BENCH_STORE").as_deref().map(str::trim) {
            Err(_) | Ok("" | "postgres") => Backend::Postgres,
            Ok("sqlite") => Backend::Sqlite,
            Ok(other) => anyhow::bail!("BENCH_STORE must be postgres or sqlite, not {other:?}"),
        };
        let synchronous_commit = std::env::var("BENCH_SYNCHRONOUS_COMMIT").ok().filter(|v| !v.trim().is_empty());
        if let Some(value) = &synchronous_commit {
            ensure!(
                ["on", "off", "local", "remote_write", "remote_apply"].contains(&value.as_str()),
                "BENCH_SYNCHRONOUS_COMMIT must be on, off, local, remote_write or remote_apply"
            );
            ensure!(backend == Backend::Postgres, "BENCH_SYNCHRONOUS_COMMIT is PostgreSQL-only (BENCH_STORE=sqlite)");
        }
        Ok(Self {
            backend,
            concurrency: env_number("BENCH_CONCURRENCY", 16)?.max(1) as usize,
            events: (env_number("BENCH_EVENTS", 20_000)?.max(1) as usize).next_multiple_of(STEPS.len()),
            warmup_events: (env_number("BENCH_WARMUP_EVENTS", 1_000)? as usize).next_multiple_of(STEPS.len()),
            serial_events: (env_number("BENCH_SERIAL_EVENTS", 2_000)? as usize).next_multiple_of(STEPS.len()),
            pgbench_secs: env_number("BENCH_PGBENCH_SECS", 5)?,
            pool_size: env_number("BENCH_DB_POOL_SIZE", support::default_pool_size())?.max(1) as usize,
            synchronous_commit,
            admin_url: std::env::var("TEST_DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned()),
        })
    }
}

// ---------------------------------------------------------------------------
// The store (a PostgreSQL database or an SQLite file) and temporary files
// ---------------------------------------------------------------------------

/// A temporary directory (the `pgbench` script and logs; the SQLite store
/// and the SQLite baseline's scratch file), removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn create() -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("billing_bench_{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The run's store: a fresh PostgreSQL database, or an SQLite file in the
/// run's temporary directory (removed with it).
enum BenchStore {
    Postgres {
        /// Opened after the database's settings were applied, so it sees them.
        session: tokio_postgres::Client,
        database: BenchDatabase,
    },
    Sqlite {
        path: PathBuf,
    },
}

const TABLES: [&str; 6] =
    ["customers", "subscriptions", "licenses", "payments", "subscription_changes", "outbox_events"];
const NOTES_SQL: &str = "SELECT note, count(*) FROM webhook_events WHERE note IS NOT NULL GROUP BY note ORDER BY note";

impl BenchStore {
    async fn create(settings: &Settings, files: &Path) -> anyhow::Result<Self> {
        if settings.backend == Backend::Sqlite {
            return Ok(Self::Sqlite { path: files.join("billing.sqlite3") });
        }
        let database = BenchDatabase::create(&settings.admin_url, "billing_bench").await?;
        if let Some(value) = &settings.synchronous_commit {
            let admin = pg_connect(&database.url()).await?;
            admin.batch_execute(&format!("ALTER DATABASE {} SET synchronous_commit = {value}", database.name)).await?;
        }
        let session = pg_connect(&database.url()).await?; // a new session sees the database's settings
        Ok(Self::Postgres { session, database })
    }

    fn location(&self) -> StoreLocation {
        match self {
            Self::Postgres { database, .. } => StoreLocation::Postgres(database.url()),
            Self::Sqlite { path } => StoreLocation::Sqlite(path.clone()),
        }
    }

    /// The database URL, for PostgreSQL-only steps.
    fn postgres_url(&self) -> Option<String> {
        match self {
            Self::Postgres { database, .. } => Some(database.url()),
            Self::Sqlite { .. } => None,
        }
    }

    /// Engine, version, durability setting and where the data lives.
    async fn describe(&self) -> anyhow::Result<String> {
        Ok(match self {
            Self::Postgres { session, database } => {
                let synchronous_commit: String = session.query_one("SHOW synchronous_commit", &[]).await?.get(0);
                let version: String = session.query_one("SHOW server_version", &[]).await?.get(0);
                format!(
                    "store: postgres (PostgreSQL {version}, synchronous_commit = {synchronous_commit}), database {}",
                    database.name
                )
            }
            Self::Sqlite { path } => format!(
                "store: sqlite (SQLite {}, WAL, synchronous = FULL), file {}",
                rusqlite::version(),
                path.display()
            ),
        })
    }

    /// Rows of each of [`TABLES`], and events processed with each note.
    async fn counts(&self) -> anyhow::Result<(Vec<(String, i64)>, Vec<(String, i64)>)> {
        match self {
            Self::Postgres { session, .. } => {
                let mut tables = Vec::new();
                for table in TABLES {
                    let count: i64 = session.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await?.get(0);
                    tables.push((table.to_owned(), count));
                }
                let notes = session.query(NOTES_SQL, &[]).await?.iter().map(|row| (row.get(0), row.get(1))).collect();
                Ok((tables, notes))
            }
            Self::Sqlite { path } => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    let db = rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
                    let mut tables = Vec::new();
                    for table in TABLES {
                        let count: i64 = db.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?;
                        tables.push((table.to_owned(), count));
                    }
                    let notes = db
                        .prepare(NOTES_SQL)?
                        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect::<rusqlite::Result<_>>()?;
                    Ok((tables, notes))
                })
                .await?
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Baseline: one single-row INSERT per transaction (pgbench, or an SQLite loop)
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct BaselineResult {
    /// The table's row label.
    label: String,
    tps: f64,
    latency_avg_ms: f64,
    /// From pgbench's per-transaction log, or timed by the SQLite loop.
    latency: Percentiles,
    cpu: CpuSplit,
}

fn find_pgbench() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("BENCH_PGBENCH") {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join("pgbench")).collect::<Vec<_>>())
        .unwrap_or_default();
    let mut versioned: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| dirs.flatten().map(|d| d.path().join("bin/pgbench")).collect())
        .unwrap_or_default();
    versioned.sort();
    versioned.reverse(); // the newest major version first
    on_path.into_iter().chain(versioned).find(|p| p.is_file())
}

async fn run_pgbench(
    pgbench: &Path,
    database_url: &str,
    settings: &Settings,
    files: &Path,
) -> anyhow::Result<BaselineResult> {
    let db = pg_connect(database_url).await?;
    db.batch_execute(
        "CREATE TABLE bench_baseline (id bigserial PRIMARY KEY, payload text, created_at timestamptz DEFAULT now())",
    )
    .await
    .context("create the pgbench table")?;
    let script = files.join("insert_one_row.sql");
    std::fs::write(&script, "INSERT INTO bench_baseline (payload) VALUES ('x');\n")?;
    let log_prefix = files.join("pgbench_log");
    let mut command = std::process::Command::new(pgbench);
    command
        .args(["-n", "-c", &settings.concurrency.to_string(), "-j", "2", "-T", &settings.pgbench_secs.to_string()])
        .arg("-f")
        .arg(&script)
        .arg("-l")
        .arg(format!("--log-prefix={}", log_prefix.display()))
        .arg(database_url);
    let child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", pgbench.display()))?;
    let pid = child.id();
    let output = tokio::task::spawn_blocking(move || child.wait_with_output());
    // pgbench's backends exit with it, taking their CPU counters along: sample
    // inside the run, skipping connection set-up and tear-down.
    let margin = Duration::from_millis(500);
    tokio::time::sleep(margin).await;
    let before = CpuSample::take(&[pid]);
    tokio::time::sleep(Duration::from_secs(settings.pgbench_secs).saturating_sub(2 * margin).max(margin)).await;
    let cpu = CpuSplit::between(&before, &CpuSample::take(&[pid]));
    let output = output.await?.context("pgbench did not finish")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(output.status.success(), "pgbench failed: {}{}", stdout, String::from_utf8_lossy(&output.stderr));
    let figure = |prefix: &str| -> anyhow::Result<f64> {
        let line =
            stdout.lines().find(|l| l.starts_with(prefix)).with_context(|| format!("no `{prefix}` in {stdout}"))?;
        let value = line[prefix.len()..].split_whitespace().next().unwrap_or_default();
        value.parse().with_context(|| format!("cannot read `{line}`"))
    };
    // Per-transaction log lines: `client_id transaction_no time_us script_no epoch epoch_us`.
    let mut latencies = Vec::new();
    for entry in std::fs::read_dir(files)?.flatten() {
        if entry.file_name().to_string_lossy().starts_with("pgbench_log") {
            let log = std::fs::read_to_string(entry.path())?;
            latencies.extend(
                log.lines().filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok()).map(Duration::from_micros),
            );
        }
    }
    Ok(BaselineResult {
        label: format!("pgbench 1-row INSERT, -c {} -j 2", settings.concurrency),
        tps: figure("tps = ")?,
        latency_avg_ms: figure("latency average = ")?,
        latency: Percentiles::of(&mut latencies),
        cpu,
    })
}

/// The SQLite baseline: `BEGIN IMMEDIATE`, a single-row `INSERT`, `COMMIT`,
/// in a loop for `secs` on one connection to a scratch file opened with the
/// store's pragmas (billing-core's `storage/sqlite.rs`: WAL, `synchronous =
/// FULL`, `fullfsync`, a busy timeout). Blocking: run it off the async
/// threads. The CPU figures are this process's, which runs nothing else
/// meanwhile.
fn sqlite_baseline(path: &Path, secs: u64) -> anyhow::Result<BaselineResult> {
    let db = rusqlite::Connection::open(path).context("open the SQLite baseline's scratch file")?;
    db.busy_timeout(Duration::from_secs(5))?;
    let mode: String = db.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    ensure!(mode.eq_ignore_ascii_case("wal"), "the SQLite baseline's file cannot use a write-ahead log ({mode})");
    db.pragma_update(None, "synchronous", "FULL")?;
    db.pragma_update(None, "fullfsync", true)?;
    db.execute_batch(
        "CREATE TABLE bench_baseline (id INTEGER PRIMARY KEY, payload TEXT, created_at TEXT DEFAULT CURRENT_TIMESTAMP)",
    )?;
    let insert_one = || -> rusqlite::Result<()> {
        db.execute_batch("BEGIN IMMEDIATE")?;
        db.prepare_cached("INSERT INTO bench_baseline (payload) VALUES ('x')")?.execute([])?;
        db.execute_batch("COMMIT")
    };
    for _ in 0..100 {
        insert_one()?; // warm-up: the WAL file, the statement cache
    }
    let me = std::process::id();
    let length = Duration::from_secs(secs.max(1));
    let mut latencies = Vec::new();
    let before = CpuSample::take(&[me]);
    let started = Instant::now();
    while started.elapsed() < length {
        let sent = Instant::now();
        insert_one()?;
        latencies.push(sent.elapsed());
    }
    let elapsed = started.elapsed();
    let cpu = CpuSplit::between(&before, &CpuSample::take(&[me]));
    let transactions = latencies.len();
    Ok(BaselineResult {
        label: "sqlite 1-row INSERT txns, 1 writer".to_owned(),
        tps: transactions as f64 / elapsed.as_secs_f64(),
        latency_avg_ms: latencies.iter().sum::<Duration>().as_secs_f64() * 1e3 / transactions.max(1) as f64,
        latency: Percentiles::of(&mut latencies),
        cpu,
    })
}

// ---------------------------------------------------------------------------
// Events: realistic subscription lifecycles, pre-built and signed
// ---------------------------------------------------------------------------

/// One step of a subscription's lifecycle, in the order Stripe sends them.
#[derive(Debug, Clone, Copy)]
enum Step {
    Created,
    InvoicePaid,
    Upgraded,
    CancelScheduled,
}

const STEPS: [Step; 4] = [Step::Created, Step::InvoicePaid, Step::Upgraded, Step::CancelScheduled];

/// A subscription object in the basil shape (period on the item).
fn subscription_object(sub: &str, customer: &str, user: &str, price: &str, cancel: bool, period: (i64, i64)) -> Value {
    json!({
        "id": sub, "object": "subscription", "customer": customer, "status": "active",
        "cancel_at_period_end": cancel, "cancel_at": if cancel { json!(period.1) } else { Value::Null },
        "canceled_at": null, "ended_at": null, "trial_end": null,
        "metadata": { "user_id": user }, "created": period.0,
        "items": { "object": "list", "data": [{
            "id": format!("si_{sub}"), "object": "subscription_item",
            "price": { "id": price, "object": "price" },
            "current_period_start": period.0, "current_period_end": period.1
        }]}
    })
}

fn invoice_object(invoice: &str, customer: &str, sub: &str, paid_at: i64) -> Value {
    json!({
        "id": invoice, "object": "invoice", "customer": customer, "currency": "usd",
        "amount_paid": 1900, "amount_due": 1900,
        "parent": { "subscription_details": { "subscription": sub } },
        "status_transitions": { "paid_at": paid_at }
    })
}

/// The event of `step` for subscription `n` (named with `prefix`).
fn lifecycle_event(prefix: &str, n: usize, step: Step, start: i64) -> Value {
    let (sub, customer, user) =
        (format!("sub_{prefix}_{n}"), format!("cus_{prefix}_{n}"), format!("user_{prefix}_{n}"));
    let period = (start, start + 30 * 24 * 3600);
    // A second apart, so every event is newer than the one before it.
    let (kind, created, object) = match step {
        Step::Created => (
            "customer.subscription.created",
            start,
            subscription_object(&sub, &customer, &user, PRICE_BASIC, false, period),
        ),
        Step::InvoicePaid => {
            ("invoice.paid", start + 1, invoice_object(&format!("in_{prefix}_{n}"), &customer, &sub, start))
        }
        Step::Upgraded => (
            "customer.subscription.updated",
            start + 2,
            subscription_object(&sub, &customer, &user, PRICE_PRO, false, period),
        ),
        Step::CancelScheduled => (
            "customer.subscription.updated",
            start + 3,
            subscription_object(&sub, &customer, &user, PRICE_PRO, true, period),
        ),
    };
    json!({
        "id": format!("evt_{prefix}_{n}_{}", format!("{step:?}").to_lowercase()), "object": "event",
        "type": kind, "created": created, "api_version": "2025-03-31.basil",
        "livemode": false, "pending_webhooks": 1, "data": { "object": object }
    })
}

/// `events` deliveries (a multiple of 4): the lifecycles of `events / 4`
/// subscriptions, interleaved in lanes of `lag` subscriptions so that one
/// subscription's consecutive events are about `4 * lag` positions apart.
fn build_deliveries(prefix: &str, events: usize, lag: usize, secrets: &WebhookSecrets) -> Vec<Delivery> {
    let subscriptions = events / STEPS.len();
    let chunks = subscriptions.div_ceil(lag);
    let now = unix_now();
    let start = now - 24 * 3600;
    let mut deliveries = Vec::with_capacity(events);
    for slot in 0..chunks + STEPS.len() - 1 {
        for lane in 0..lag {
            for (offset, &step) in STEPS.iter().enumerate() {
                let Some(chunk) = slot.checked_sub(offset).filter(|c| *c < chunks) else { continue };
                let n = chunk * lag + lane;
                if n < subscriptions {
                    let body = serde_json::to_vec(&lifecycle_event(prefix, n, step, start)).expect("JSON encodes");
                    let signature = secrets.sign(&body, now);
                    deliveries.push(Delivery { body: body.into(), signature });
                }
            }
        }
    }
    debug_assert_eq!(deliveries.len(), events);
    deliveries
}

// ---------------------------------------------------------------------------
// What the server's PostgreSQL sessions wait for
// ---------------------------------------------------------------------------

/// Mean number of the bench database's client sessions in each state (and
/// wait event) over the measured run, sampled from `pg_stat_activity`, and
/// of sessions waiting for an advisory lock, by key space, from `pg_locks`:
/// two-key advisory locks are the outbox lock (billing-core's `OUTBOX_LOCK`),
/// one-key ones the locks guarding a subscription's first insert (an
/// existing subscription is locked by its row: those waits show among the
/// states as `Lock: transactionid` or `Lock: tuple`).
#[derive(Debug, Default)]
struct Activity {
    samples: u64,
    states: BTreeMap<String, u64>,
    outbox_lock_waiters: u64,
    subscription_lock_waiters: u64,
}

const ACTIVITY_SQL: &str =
    "SELECT state || coalesce(' (' || wait_event_type || ': ' || wait_event || ')', ''), count(*)
      FROM pg_stat_activity
     WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()
     GROUP BY 1";
const ADVISORY_WAITERS_SQL: &str = "SELECT count(*) FILTER (WHERE objsubid = 2), count(*) FILTER (WHERE objsubid = 1)
      FROM pg_locks
     WHERE locktype = 'advisory' AND NOT granted
       AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";

/// Samples every 200 ms until `stop` flips.
async fn sample_activity(
    database_url: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Activity> {
    let db = pg_connect(&database_url).await?;
    let mut activity = Activity::default();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return Ok(activity),
            _ = tick.tick() => {}
        }
        for row in db.query(ACTIVITY_SQL, &[]).await? {
            let state: Option<String> = row.get(0);
            *activity.states.entry(state.unwrap_or_else(|| "?".into())).or_default() += row.get::<_, i64>(1) as u64;
        }
        let waiters = db.query_one(ADVISORY_WAITERS_SQL, &[]).await?;
        activity.outbox_lock_waiters += waiters.get::<_, i64>(0) as u64;
        activity.subscription_lock_waiters += waiters.get::<_, i64>(1) as u64;
        activity.samples += 1;
    }
}

impl Activity {
    fn print(&self) {
        let mean = |total: u64| total as f64 / self.samples.max(1) as f64;
        println!("  PostgreSQL sessions of the bench database, mean over {} samples of the run:", self.samples);
        let mut states: Vec<_> = self.states.iter().collect();
        states.sort_by(|a, b| b.1.cmp(a.1));
        for (state, total) in states {
            println!("    {:>6.2}  {state}", mean(*total));
        }
        println!(
            "    waiting for an advisory lock: {:.2} for the outbox lock, {:.2} for a new subscription's lock",
            mean(self.outbox_lock_waiters),
            mean(self.subscription_lock_waiters)
        );
    }
}

// ---------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------

/// One measured phase: a closed-loop load at one concurrency.
struct Phase {
    concurrency: usize,
    load: LoadResult,
    latency: Percentiles,
    cpu: CpuSplit,
    /// Deliveries per unit of work during the phase (`Billing::webhook_group_stats`).
    mean_group_size: f64,
}

impl Phase {
    async fn measure(
        server: &Server,
        http: &reqwest::Client,
        deliveries: Arc<Vec<Delivery>>,
        concurrency: usize,
    ) -> Self {
        let me = std::process::id();
        let groups_before = server.group_stats();
        let before = CpuSample::take(&[me]);
        let mut load = post_all(http, &server.webhook_url(), deliveries, concurrency).await;
        let cpu = CpuSplit::between(&before, &CpuSample::take(&[me]));
        let groups = group_stats_between(groups_before, server.group_stats());
        let latency = Percentiles::of(&mut load.latencies);
        Self { concurrency, load, latency, cpu, mean_group_size: groups.mean_group_size() }
    }

    fn events_per_sec(&self) -> f64 {
        self.load.events_per_sec()
    }

    fn report(&self) {
        println!(
            "  {} in flight: {} events in {:.2} s; mean group size {:.2}; outcomes: {}",
            self.concurrency,
            self.load.latencies.len(),
            self.load.elapsed.as_secs_f64(),
            self.mean_group_size,
            self.load.outcomes_line()
        );
    }
}

/// Events/s at 1 in flight measured on this machine (idle, release) before
/// webhook deliveries were grouped into shared units of work, at the
/// commit named: the "no slower than today at 1 in flight" reference.
/// Measured with that commit's own bench, `BENCH_CONCURRENCY=1
/// BENCH_EVENTS=2000` (1,006 and 1,021 events/s in two runs; the higher
/// is kept). Machine-specific: re-measure on another machine. On SQLite
/// (1,149 events/s at the same commit, same invocation) no reference is
/// recorded, so the row is not judged.
fn serial_reference(backend: Backend) -> Option<(f64, &'static str)> {
    match backend {
        Backend::Postgres => Some((SERIAL_REFERENCE_POSTGRES, SERIAL_REFERENCE_COMMIT)),
        Backend::Sqlite => None,
    }
}
const SERIAL_REFERENCE_POSTGRES: f64 = 1_021.0;
const SERIAL_REFERENCE_COMMIT: &str = "0d1e18c";

async fn run(settings: Settings) -> anyhow::Result<()> {
    let files = TempDir::create()?;
    let store = BenchStore::create(&settings, &files.0).await?;
    let backend = settings.backend.name();
    println!("webhook_ingest: {} cores, {}", cpu_count(), store.describe().await?);
    let pool = match settings.backend {
        Backend::Postgres => format!("server pool {} connections", settings.pool_size),
        Backend::Sqlite => "server: one writer connection and a reader pool (BENCH_DB_POOL_SIZE unused)".to_owned(),
    };
    println!(
        "  concurrency {}, N = {} events (+{} warm-up), then {} events at 1 in flight, {pool}",
        settings.concurrency, settings.events, settings.warmup_events, settings.serial_events
    );

    let baseline = match &store {
        BenchStore::Postgres { database, .. } => {
            println!("[1/3] baseline: pgbench, one single-row INSERT per transaction, {} s", settings.pgbench_secs);
            match find_pgbench() {
                Some(path) => Some(run_pgbench(&path, &database.url(), &settings, &files.0).await?),
                None => {
                    println!("  WARNING: pgbench not found (set BENCH_PGBENCH); baseline skipped");
                    None
                }
            }
        }
        BenchStore::Sqlite { .. } => {
            println!(
                "[1/3] baseline (pgbench is PostgreSQL-only): SQLite, one single-row INSERT per transaction, one \
                 writer, WAL + synchronous = FULL on a scratch file, {} s",
                settings.pgbench_secs.max(1)
            );
            let (scratch, secs) = (files.0.join("baseline.sqlite3"), settings.pgbench_secs);
            Some(tokio::task::spawn_blocking(move || sqlite_baseline(&scratch, secs)).await??)
        }
    };

    println!(
        "[2/3] POST {WEBHOOK_PATH}: in-process server on {backend}, {} in flight, signing events",
        settings.concurrency
    );
    let server = Server::start(&store.location(), settings.pool_size).await?;
    let secrets = WebhookSecrets::parse(WEBHOOK_SECRET).expect("a secret is configured");
    let lag = (16 * settings.concurrency).max(256);
    let warmup = Arc::new(build_deliveries("warm", settings.warmup_events, lag, &secrets));
    let measured = Arc::new(build_deliveries("bench", settings.events, lag, &secrets));
    let http = load_client(settings.concurrency)?;

    let warm = post_all(&http, &server.webhook_url(), warmup, settings.concurrency).await;
    println!(
        "  warm-up: {} events, {:.0} events/s, {} failures",
        warm.latencies.len(),
        warm.events_per_sec(),
        warm.failures
    );
    let (stop_sampling, stopped) = tokio::sync::watch::channel(false);
    let sampler = store.postgres_url().map(|url| tokio::spawn(sample_activity(url, stopped)));
    let concurrent = Phase::measure(&server, &http, measured, settings.concurrency).await;
    stop_sampling.send_replace(true);
    let activity = match sampler {
        Some(sampler) => Some(sampler.await?),
        None => None,
    };
    concurrent.report();

    println!("[3/3] the same, 1 in flight: {} events of other subscriptions", settings.serial_events);
    // Signed only now: the signatures' timestamps must be within Stripe's
    // five-minute tolerance when they arrive.
    let serial_deliveries = Arc::new(build_deliveries("serial", settings.serial_events, lag, &secrets));
    let serial = Phase::measure(&server, &http, serial_deliveries, 1).await;
    serial.report();
    server.stop().await;

    let failure = [&warm.first_failure, &concurrent.load.first_failure, &serial.load.first_failure]
        .into_iter()
        .find_map(Option::as_ref);
    if let Some(failure) = failure {
        println!("  first failure: {failure}");
    }
    let (tables, notes) = store.counts().await?;
    let rows: Vec<String> = tables.iter().map(|(table, count)| format!("{table} {count}")).collect();
    println!("  rows written (warm-up included): {}", rows.join(", "));
    for (note, count) in notes {
        println!("  events processed with the note {note:?}: {count}");
    }
    match activity {
        Some(Ok(activity)) => activity.print(),
        Some(Err(e)) => println!("  could not sample pg_stat_activity: {e:#}"),
        None => println!("  session sampling (pg_stat_activity, pg_locks) is PostgreSQL-only: skipped"),
    }

    let cores = |c: f64| format!("{c:.2}");
    println!();
    println!("webhook_ingest results · store: {backend} · {} cores", cpu_count());
    println!(
        "{:<46} {:>13} {:>7} {:>7} {:>7} {:>7} {:>5} {:>5} | {:>5} {:>5} {:>5} {:>7}",
        "cores used / ms of CPU per op ->",
        "throughput",
        "avg ms",
        "p50 ms",
        "p99 ms",
        "max ms",
        "fail",
        "group",
        "app",
        "pg",
        "other",
        "CPU ms"
    );
    match &baseline {
        Some(b) => println!(
            "{:<46} {:>9.0} tps {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>5} {:>5} | {:>5} {:>5} {:>5} {:>7.3}",
            b.label,
            b.tps,
            b.latency_avg_ms,
            b.latency.p50_ms,
            b.latency.p99_ms,
            b.latency.max_ms,
            0,
            "",
            cores(b.cpu.app()),
            cores(b.cpu.postgres),
            cores(b.cpu.other()),
            b.cpu.ms_per_op(b.tps)
        ),
        None => println!("{:<46} {:>13}", "pgbench", "skipped"),
    }
    for (phase, events) in [(&concurrent, settings.events), (&serial, settings.serial_events)] {
        println!(
            "{:<46} {:>8.0} ev/s {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>5} {:>5.2} | {:>5} {:>5} {:>5} {:>7.3}",
            format!("webhooks ({backend}), {} in flight, N = {events}", phase.concurrency),
            phase.events_per_sec(),
            phase.load.average_ms(),
            phase.latency.p50_ms,
            phase.latency.p99_ms,
            phase.latency.max_ms,
            phase.load.failures,
            phase.mean_group_size,
            cores(phase.cpu.app()),
            cores(phase.cpu.postgres),
            cores(phase.cpu.other()),
            phase.cpu.ms_per_op(phase.events_per_sec())
        );
    }
    let target_events_per_sec = baseline.as_ref().map(|b| TARGET_SHARE_OF_BASELINE_TPS * b.tps);
    println!(
        "{:<46} {:>13} {:>7} {:>7} {:>7.2} {:>7} {:>5} {:>5} |",
        format!("target, {} in flight ({TARGET_SHARE_OF_BASELINE_TPS} x baseline tps)", settings.concurrency),
        target_events_per_sec.map_or("no baseline".to_owned(), |t| format!("{t:.0} ev/s")),
        "",
        "",
        TARGET_P99_MS,
        "",
        0,
        ""
    );
    let reference = serial_reference(settings.backend);
    match reference {
        Some((events_per_sec, commit)) => println!(
            "{:<46} {:>8.0} ev/s {:>7} {:>7} {:>7} {:>7} {:>5} {:>5} |",
            format!("reference, 1 in flight (at {commit})"),
            events_per_sec,
            "",
            "",
            "",
            "",
            0,
            ""
        ),
        None => println!("{:<46} {:>13}", "reference, 1 in flight", "none recorded for this store"),
    }
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let events_verdict = match target_events_per_sec {
        Some(target) => format!(
            "{} ({:.2} x baseline tps)",
            verdict(concurrent.events_per_sec() >= target),
            concurrent.events_per_sec() / (target / TARGET_SHARE_OF_BASELINE_TPS)
        ),
        None => "not judged (no baseline)".to_owned(),
    };
    let serial_verdict = match reference {
        Some((events_per_sec, _)) => format!(
            "{} ({:.2} x the reference)",
            if serial.events_per_sec() >= events_per_sec { "no slower" } else { "SLOWER" },
            serial.events_per_sec() / events_per_sec
        ),
        None => "not judged (no reference)".to_owned(),
    };
    println!(
        "{} in flight: events/s target {events_verdict}, p99 target {}; 1 in flight: {serial_verdict}.",
        settings.concurrency,
        verdict(concurrent.latency.p99_ms < TARGET_P99_MS),
    );
    let (app, pg) = match settings.backend {
        Backend::Postgres => (
            "the process driving PostgreSQL (pgbench; for webhooks this process: server and load generator)",
            "all PostgreSQL processes",
        ),
        Backend::Sqlite => (
            "this process (the SQLite baseline loop; for webhooks the server with its embedded SQLite, and the \
             load generator)",
            "all PostgreSQL processes, unused by the sqlite store (~0; more is other load on the machine)",
        ),
    };
    println!(
        "group: deliveries per unit of work (webhook_group_stats over the phase); app: {app}; pg: {pg}; other: the \
         rest of the machine's busy CPU ({} cores; above ~0.1 the figures are pessimistic); CPU ms: (app + pg) CPU \
         time per operation, so {} cores allow at most ~{:.0} webhook events/s.",
        cpu_count(),
        cpu_count(),
        cpu_count() as f64 * 1e3 / concurrent.cpu.ms_per_op(concurrent.events_per_sec()).max(1e-9)
    );
    drop(store);
    drop(files);
    Ok(())
}
