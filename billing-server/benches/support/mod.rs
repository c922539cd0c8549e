//! What the webhook benches share, so that they measure alike: the run's
//! PostgreSQL databases, billing-server started in-process, the closed-loop
//! load generator, percentiles and the CPU split. Included by each bench
//! binary with `mod support;`.

// Each bench binary compiles its own copy of this module and uses a subset.
#![allow(dead_code)]

use anyhow::Context;
use billing_core::certificate::SigningKey;
use billing_core::domain::{Plan, PlanCatalog};
use billing_core::licensing::LicensingConfig;
use billing_core::storage::any::{AnyStore, StoreLocation};
use billing_core::storage::Store;
use billing_core::stripe::WebhookSecrets;
use billing_core::{Billing, BillingConfig, WebhookGroupStats};
use billing_server::{AppState, ServerOptions};
use bytes::Bytes;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const WEBHOOK_SECRET: &str = "whsec_bench_0123456789abcdef";
pub const PRICE_BASIC: &str = "price_basic_monthly";
pub const PRICE_PRO: &str = "price_pro_monthly";
pub const WEBHOOK_PATH: &str = "/api/stripe/webhooks/handler";

pub fn env_number(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().with_context(|| format!("{name} must be a number")),
        _ => Ok(default),
    }
}

/// The server's default pool size (`BILLING_DB_POOL_SIZE`): 4 per core.
pub fn default_pool_size() -> u64 {
    4 * cpu_count() as u64
}

pub fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

// ---------------------------------------------------------------------------
// PostgreSQL: the run's databases
// ---------------------------------------------------------------------------

/// A fresh database `<prefix>_<uuid>`, dropped `WITH (FORCE)` when this is
/// dropped.
pub struct BenchDatabase {
    admin_url: String,
    pub name: String,
}

impl BenchDatabase {
    pub async fn create(admin_url: &str, prefix: &str) -> anyhow::Result<Self> {
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let admin = pg_connect(&format!("{admin_url}/postgres")).await?;
        admin.batch_execute(&format!("CREATE DATABASE {name}")).await.context("CREATE DATABASE")?;
        Ok(Self { admin_url: admin_url.to_owned(), name })
    }

    pub fn url(&self) -> String {
        format!("{}/{}", self.admin_url, self.name)
    }
}

impl Drop for BenchDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Runs inside the bench's runtime: use a thread with its own.
        let dropped = std::thread::spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let admin = pg_connect(&format!("{admin_url}/postgres")).await?;
                admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await?;
                Ok(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => eprintln!("dropped database {}", self.name),
            _ => eprintln!("WARNING: could not drop database {}; drop it by hand", self.name),
        }
    }
}

pub async fn pg_connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {url} (see TEST_DATABASE_URL)"))?;
    tokio::spawn(connection);
    Ok(client)
}

// ---------------------------------------------------------------------------
// billing-server, in-process as in tests/it/helpers.rs
// ---------------------------------------------------------------------------

pub fn plans() -> PlanCatalog {
    let plan = |id: &str, price: &str, max_devices| Plan {
        amount: Some(1900),
        currency: Some("usd".into()),
        interval: Some("month".into()),
        features: vec!["export".into()],
        ..Plan::new(id, &id.to_uppercase(), price, max_devices)
    };
    PlanCatalog::new(vec![plan("pro", PRICE_PRO, 3), plan("basic", PRICE_BASIC, 1)]).expect("a valid catalog")
}

pub struct Server {
    pub address: String,
    /// A handle on the server's engine (clones share its counters).
    billing: Billing<AnyStore>,
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// `AnyStore::open` on `location` with `pool_size`, migrations,
    /// `Billing`, `AppState`, `billing_server::serve` on `127.0.0.1:0`.
    pub async fn start(location: &StoreLocation, pool_size: usize) -> anyhow::Result<Self> {
        let store = AnyStore::open(location, pool_size)
            .await
            .map_err(|e| anyhow::anyhow!(billing_core::billing::error_chain(&e)))?;
        store.migrate().await.map_err(|e| anyhow::anyhow!(billing_core::billing::error_chain(&e)))?;
        let signing_key = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8()).expect("a generated key loads");
        let config = BillingConfig::new(plans(), LicensingConfig::new(Arc::new(signing_key)))
            .with_webhook_secrets(WebhookSecrets::parse(WEBHOOK_SECRET));
        let billing = Billing::new(store, config);
        let state = AppState::new(billing.clone(), ServerOptions::default()).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = format!("http://{}", listener.local_addr()?);
        let (shutdown, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(billing_server::serve(listener, Arc::new(state), async {
            let _ = stopped.await;
        }));
        Ok(Self { address, billing, shutdown, task })
    }

    /// The server's engine (what its routes call).
    pub fn billing(&self) -> &Billing<AnyStore> {
        &self.billing
    }

    /// The webhook endpoint's URL.
    pub fn webhook_url(&self) -> String {
        format!("{}{WEBHOOK_PATH}", self.address)
    }

    /// Cumulative: take the difference around a measured phase.
    pub fn group_stats(&self) -> WebhookGroupStats {
        self.billing.webhook_group_stats()
    }

    pub async fn stop(self) {
        let _ = self.shutdown.send(());
        let _ = tokio::time::timeout(Duration::from_secs(15), self.task).await;
    }
}

/// The groups and deliveries counted between two reads.
pub fn group_stats_between(before: WebhookGroupStats, after: WebhookGroupStats) -> WebhookGroupStats {
    WebhookGroupStats { groups: after.groups - before.groups, events: after.events - before.events }
}

// ---------------------------------------------------------------------------
// The load generator: closed loop, fixed concurrency, keep-alive
// ---------------------------------------------------------------------------

/// A signed delivery, ready to post.
pub struct Delivery {
    pub body: Bytes,
    pub signature: String,
}

/// Signs every body with `at` as the signature's timestamp (`t=`).
pub fn sign_all(bodies: &[Bytes], secrets: &WebhookSecrets, at: i64) -> Vec<Delivery> {
    bodies.iter().map(|body| Delivery { body: body.clone(), signature: secrets.sign(body, at) }).collect()
}

/// The client every load uses: as many idle keep-alive connections as
/// requests in flight, no Nagle delay.
pub fn load_client(concurrency: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder().pool_max_idle_per_host(concurrency).tcp_nodelay(true).build()?)
}

/// What one run of deliveries produced.
#[derive(Default)]
pub struct LoadResult {
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
    pub failures: usize,
    pub first_failure: Option<String>,
    /// The `outcome` field of 2xx answers (billing-server's), by value;
    /// `(none)` for answers without one.
    pub outcomes: BTreeMap<String, usize>,
}

impl LoadResult {
    fn merge(&mut self, other: LoadResult) {
        self.latencies.extend(other.latencies);
        self.failures += other.failures;
        self.first_failure = self.first_failure.take().or(other.first_failure);
        for (outcome, count) in other.outcomes {
            *self.outcomes.entry(outcome).or_default() += count;
        }
    }

    /// Deliveries answered (successfully or not) per second of the run.
    pub fn events_per_sec(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn average_ms(&self) -> f64 {
        self.latencies.iter().sum::<Duration>().as_secs_f64() * 1e3 / self.latencies.len().max(1) as f64
    }

    pub fn outcomes_line(&self) -> String {
        let outcomes: Vec<String> = self.outcomes.iter().map(|(o, n)| format!("{o} {n}")).collect();
        outcomes.join(", ")
    }
}

/// Posts every delivery to `url` from `concurrency` tasks sharing `http`,
/// each with one request in flight (closed loop), in the deliveries' order.
/// A delivery's latency runs from sending the request to having read the
/// whole response; any answer but a 2xx counts as a failure.
pub async fn post_all(
    http: &reqwest::Client,
    url: &str,
    deliveries: Arc<Vec<Delivery>>,
    concurrency: usize,
) -> LoadResult {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| tokio::spawn(post_some(http.clone(), url.to_owned(), deliveries.clone(), next.clone())))
        .collect();
    let mut result = LoadResult::default();
    for worker in workers {
        result.merge(worker.await.expect("a load worker panicked"));
    }
    result.elapsed = started.elapsed();
    result
}

/// One closed-loop worker: takes the next delivery until none are left.
async fn post_some(
    http: reqwest::Client,
    url: String,
    deliveries: Arc<Vec<Delivery>>,
    next: Arc<AtomicUsize>,
) -> LoadResult {
    let mut result = LoadResult::default();
    loop {
        let Some(delivery) = deliveries.get(next.fetch_add(1, Ordering::Relaxed)) else { return result };
        let sent = Instant::now();
        let response = http
            .post(&url)
            .header("Content-Type", "application/json")
            .header("Stripe-Signature", &delivery.signature)
            .body(delivery.body.clone())
            .send()
            .await;
        let answer = match response {
            Ok(response) => {
                let status = response.status();
                response.bytes().await.map(|body| (status, body))
            }
            Err(e) => Err(e),
        };
        result.latencies.push(sent.elapsed());
        match answer {
            Ok((status, body)) if status.is_success() => {
                let outcome =
                    serde_json::from_slice::<Value>(&body).ok().and_then(|v| v["outcome"].as_str().map(str::to_owned));
                *result.outcomes.entry(outcome.unwrap_or_else(|| "(none)".into())).or_default() += 1;
            }
            Ok((status, body)) => {
                result.failures += 1;
                result.first_failure.get_or_insert_with(|| format!("{status}: {}", String::from_utf8_lossy(&body)));
            }
            Err(e) => {
                result.failures += 1;
                result.first_failure.get_or_insert_with(|| format!("request failed: {e}"));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Figures: percentiles and the CPU split
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(latencies: &mut [Duration]) -> Self {
        if latencies.is_empty() {
            return Self::default();
        }
        latencies.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
            latencies[rank - 1].as_secs_f64() * 1e3
        };
        Self { p50_ms: at(0.50), p99_ms: at(0.99), max_ms: at(1.0) }
    }
}

/// CPU time of every thread of a process, in ns (from schedstat).
fn process_cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

/// CPU time of every `postgres` process of the machine, in ns.
fn postgres_cpu_ns() -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres"))
        .map(process_cpu_ns)
        .sum()
}

/// (busy, total) jiffies of the whole machine.
fn machine_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[derive(Debug, Clone)]
pub struct CpuSample {
    at: Instant,
    processes: Vec<u64>,
    postgres: u64,
    machine: (u64, u64),
}

impl CpuSample {
    /// `processes`: the ones driving the store (pgbench, or this one, or
    /// this one and a child server), each counted on its own.
    pub fn take(processes: &[u32]) -> Self {
        Self {
            at: Instant::now(),
            processes: processes.iter().map(|&pid| process_cpu_ns(pid)).collect(),
            postgres: postgres_cpu_ns(),
            machine: machine_jiffies(),
        }
    }
}

/// Cores used on average between two samples.
#[derive(Debug, Clone, Default)]
pub struct CpuSplit {
    /// Per process, in the order given to [`CpuSample::take`].
    pub processes: Vec<f64>,
    pub postgres: f64,
    pub machine: f64,
}

impl CpuSplit {
    pub fn between(a: &CpuSample, b: &CpuSample) -> Self {
        let wall = b.at.duration_since(a.at).as_nanos().max(1) as f64;
        let (busy, total) = (b.machine.0.saturating_sub(a.machine.0), b.machine.1.saturating_sub(a.machine.1));
        Self {
            processes: a.processes.iter().zip(&b.processes).map(|(a, b)| b.saturating_sub(*a) as f64 / wall).collect(),
            postgres: b.postgres.saturating_sub(a.postgres) as f64 / wall,
            machine: busy as f64 / total.max(1) as f64 * cpu_count() as f64,
        }
    }

    /// The processes given to [`CpuSample::take`], together.
    pub fn app(&self) -> f64 {
        self.processes.iter().sum()
    }

    /// Busy cores outside the app and PostgreSQL: other work on the
    /// machine, which makes the run's figures pessimistic.
    pub fn other(&self) -> f64 {
        (self.machine - self.app() - self.postgres).max(0.0)
    }

    /// CPU time of the app and PostgreSQL per operation, in ms.
    pub fn ms_per_op(&self, ops_per_sec: f64) -> f64 {
        (self.app() + self.postgres) / ops_per_sec.max(1e-9) * 1e3
    }
}
