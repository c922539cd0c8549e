//! # `storm`: Stripe's deliveries at their worst, against the real binary
//!
//! `cargo bench -p billing-server --bench storm` generates `BENCH_CUSTOMERS`
//! (default 1,000) customers' lifecycles (`tests/it/lifecycles.rs`: signups,
//! abandoned checkouts, trials, renewals, failed payments, recoveries, plan
//! changes, cancellations, pauses, deleted customers) and runs two
//! `billing-server` processes (the binary this package builds), each on a
//! fresh store:
//!
//! 1. **truth**: every customer's events delivered once, in order.
//! 2. **storm**: all events shuffled together, 30 % of them twice,
//!    `BENCH_IN_FLIGHT` (default 16) at a time; any delivery not answered
//!    200 (refused, cut off, or sent to a dead server) is retried until it
//!    is. Meanwhile the server is killed with `kill -9` and restarted
//!    `BENCH_KILLS` times (default 5) at evenly spread points of the run,
//!    and, on PostgreSQL, the PostgreSQL cluster is restarted once half-way
//!    (`BENCH_PG_RESTART`, default
//!    `pg_ctlcluster --skip-systemctl-redirect <newest> main restart`;
//!    empty: no restart).
//!
//! Then every customer's state as the dashboard reads it (current
//! subscription, licenses, payments, without ids and keys) is compared
//! between the two, and also the set of deleted customers, linked users and
//! recorded events. It prints how many customers differ (must be 0; the
//! process exits 1 otherwise) beside the figures of the run.
//!
//! `BENCH_STORE=postgres` (default; databases on `TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432`, dropped at the end) or `sqlite`
//! (files in a temporary directory). `BENCH_SEED` replays a storm.

#[path = "../tests/it/lifecycles.rs"]
#[allow(dead_code)]
mod lifecycles;

use futures_util::StreamExt;
use lifecycles::{comparable, generate, Lifecycle, Rng};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WEBHOOK_SECRET: &str = "whsec_storm_0123456789abcdef";
const JWT_SECRET: &str = "storm-jwt-secret-that-is-long-enough";
const PRICES: [&str; 2] = ["price_storm_pro", "price_storm_basic"];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Where a server keeps its state.
enum StoreKind {
    Postgres { admin_url: String, database: String },
    Sqlite { file: PathBuf },
}

impl StoreKind {
    fn url(&self) -> String {
        match self {
            Self::Postgres { admin_url, database } => format!("{admin_url}/{database}"),
            Self::Sqlite { file } => format!("sqlite://{}", file.display()),
        }
    }
}

/// One `billing-server` process, restartable on the same address and store.
struct Server {
    child: Option<Child>,
    addr: String,
    env: Vec<(String, String)>,
}

impl Server {
    fn start(store: &StoreKind, dir: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let plans = dir.join("plans.toml");
        std::fs::write(
            &plans,
            format!(
                "[[plans]]\nid = \"pro\"\nname = \"Pro\"\nstripe_price_id = \"{}\"\nmax_devices = 3\n\n\
                 [[plans]]\nid = \"basic\"\nname = \"Basic\"\nstripe_price_id = \"{}\"\nmax_devices = 1\n",
                PRICES[0], PRICES[1]
            ),
        )
        .unwrap();
        let env = vec![
            ("DATABASE_URL".into(), store.url()),
            ("BILLING_DATA_DIR".into(), dir.display().to_string()),
            ("BILLING_ADDR".into(), format!("127.0.0.1:{port}")),
            ("BILLING_PLANS".into(), plans.display().to_string()),
            ("STRIPE_WEBHOOK_SECRET".into(), WEBHOOK_SECRET.into()),
            ("BILLING_JWT_SECRET".into(), JWT_SECRET.into()),
            ("RUST_LOG".into(), "error".into()),
        ];
        let mut server = Self { child: None, addr: format!("http://127.0.0.1:{port}"), env };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_billing-server"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("billing-server starts");
        self.child = Some(child);
    }

    /// `kill -9`, then a new process on the same address and store.
    fn kill_and_restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
        }
        self.spawn();
    }
}

async fn wait_ready(http: &reqwest::Client, addr: &str) {
    for _ in 0..600 {
        if let Ok(r) = http.get(format!("{addr}/healthz")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("billing-server at {addr} did not come up");
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn sign(body: &[u8]) -> String {
    billing_core::stripe::WebhookSecrets::parse(WEBHOOK_SECRET).unwrap().sign(body, now())
}

fn jwt_for(user_id: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({ "sub": user_id, "exp": now() + 3600 }),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

/// Posts one event; true when the server acknowledged it.
async fn post(http: &reqwest::Client, addr: &str, body: &[u8]) -> bool {
    let request = http
        .post(format!("{addr}/api/stripe/webhooks/handler"))
        .header("content-type", "application/json")
        .header("stripe-signature", sign(body))
        .body(body.to_vec())
        .timeout(Duration::from_secs(10));
    matches!(request.send().await, Ok(r) if r.status() == 200)
}

async fn get(http: &reqwest::Client, addr: &str, path: &str, user_id: &str) -> Value {
    for _ in 0..50 {
        if let Ok(r) = http.get(format!("{addr}{path}")).bearer_auth(jwt_for(user_id)).send().await {
            if r.status() == 200 {
                return r.json().await.unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("GET {path} for {user_id} kept failing");
}

async fn state_of(http: &reqwest::Client, addr: &str, user_id: &str) -> Value {
    comparable(
        get(http, addr, "/api/subscriptions/current", user_id).await["subscription"].clone(),
        get(http, addr, "/api/licenses", user_id).await["licenses"].as_array().unwrap().clone(),
        get(http, addr, "/api/payments/history", user_id).await["payments"].as_array().unwrap().clone(),
    )
}

fn pg_restart_command() -> Option<String> {
    if let Ok(command) = std::env::var("BENCH_PG_RESTART") {
        return (!command.trim().is_empty()).then_some(command);
    }
    let mut versions: Vec<String> =
        std::fs::read_dir("/etc/postgresql").ok()?.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    versions.sort_by_key(|v| v.parse::<u32>().unwrap_or(0));
    Some(format!("pg_ctlcluster --skip-systemctl-redirect {} main restart", versions.last()?))
}

async fn psql(admin_url: &str, sql: &str) {
    let (client, connection) = tokio_postgres::connect(&format!("{admin_url}/postgres"), tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL at TEST_DATABASE_URL");
    tokio::spawn(connection);
    client.batch_execute(sql).await.unwrap();
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let customers: usize = env_or("BENCH_CUSTOMERS", 1000);
    let kills: usize = env_or("BENCH_KILLS", 5);
    let in_flight: usize = env_or("BENCH_IN_FLIGHT", 16);
    let seed: u64 = env_or("BENCH_SEED", now() as u64);
    let postgres = std::env::var("BENCH_STORE").map_or(true, |s| s != "sqlite");
    let admin_url = std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let dir = std::env::temp_dir().join(format!("billing-storm-{}", std::process::id()));
    let store = |name: &str| {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        if postgres {
            StoreKind::Postgres {
                admin_url: admin_url.clone(),
                database: format!("billing_storm_{name}_{}", std::process::id()),
            }
        } else {
            StoreKind::Sqlite { file: dir.join(name).join("billing.sqlite3") }
        }
    };
    let (truth_store, storm_store) = (store("truth"), store("storm"));
    for s in [&truth_store, &storm_store] {
        if let StoreKind::Postgres { database, .. } = s {
            psql(&admin_url, &format!("CREATE DATABASE {database}")).await;
        }
    }

    let lives = generate(customers, seed, now(), PRICES);
    let distinct: usize = lives.iter().map(|l| l.events.len()).sum();
    println!(
        "storm: {customers} customers, {distinct} events, seed {seed}, store {}",
        if postgres { "postgres" } else { "sqlite" }
    );
    let http = reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap();

    let truth = Server::start(&truth_store, &dir.join("truth"));
    wait_ready(&http, &truth.addr).await;
    let started = Instant::now();
    futures_util::stream::iter(&lives)
        .for_each_concurrent(in_flight, |life: &Lifecycle| {
            let (http, addr) = (&http, truth.addr.as_str());
            async move {
                for event in &life.events {
                    let body = serde_json::to_vec(event).unwrap();
                    while !post(http, addr, &body).await {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        })
        .await;
    println!("truth: in order, exactly once, {:.1} s", started.elapsed().as_secs_f64());

    let mut rng = Rng::new(seed ^ 0x5EED);
    let mut deliveries: Vec<Vec<u8>> =
        lives.iter().flat_map(|l| &l.events).map(|e| serde_json::to_vec(e).unwrap()).collect();
    let duplicates: Vec<Vec<u8>> = deliveries.iter().filter(|_| rng.chance(30)).cloned().collect();
    deliveries.extend(duplicates);
    rng.shuffle(&mut deliveries);
    let total = deliveries.len();

    let storm = Arc::new(Mutex::new(Server::start(&storm_store, &dir.join("storm"))));
    let addr = storm.lock().unwrap().addr.clone();
    wait_ready(&http, &addr).await;
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let attempts = Arc::new(AtomicUsize::new(0));
    // The chaos: kill -9 at evenly spread points, PostgreSQL restarted half-way.
    let chaos = {
        let (storm, acknowledged) = (storm.clone(), acknowledged.clone());
        let pg_restart = if postgres { pg_restart_command() } else { None };
        tokio::spawn(async move {
            let mut log = Vec::new();
            let mut pg_restart = pg_restart;
            for k in 1..=kills {
                let at = total * k / (kills + 1);
                while acknowledged.load(Ordering::Relaxed) < at {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                storm.lock().unwrap().kill_and_restart();
                log.push(format!("kill -9 at {at} acknowledged"));
                if k >= kills / 2 {
                    if let Some(command) = pg_restart.take() {
                        let status = Command::new("sh").arg("-c").arg(&command).status();
                        log.push(format!(
                            "`{command}` at {} acknowledged: {status:?}",
                            acknowledged.load(Ordering::Relaxed)
                        ));
                    }
                }
            }
            log
        })
    };
    let started = Instant::now();
    futures_util::stream::iter(deliveries.iter())
        .for_each_concurrent(in_flight, |body| {
            let (http, addr, acknowledged, attempts) = (&http, addr.as_str(), &acknowledged, &attempts);
            async move {
                loop {
                    attempts.fetch_add(1, Ordering::Relaxed);
                    if post(http, addr, body).await {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                acknowledged.fetch_add(1, Ordering::Relaxed);
            }
        })
        .await;
    let storm_secs = started.elapsed().as_secs_f64();
    for line in chaos.await.unwrap() {
        println!("chaos: {line}");
    }
    wait_ready(&http, &addr).await;
    println!(
        "storm: {total} deliveries ({} duplicates), {} attempts, {storm_secs:.1} s, {:.0} deliveries/s",
        total - distinct,
        attempts.load(Ordering::Relaxed),
        total as f64 / storm_secs
    );

    let mut differing = Vec::new();
    for life in &lives {
        let expected = state_of(&http, &truth.addr, &life.user_id).await;
        let got = state_of(&http, &addr, &life.user_id).await;
        if expected != got {
            differing.push(format!("{}:\n  in order: {expected}\n  storm:    {got}", life.user_id));
        }
    }
    for line in differing.iter().take(5) {
        println!("{line}");
    }
    println!("\n| store | customers | events | deliveries | attempts | kills | customers differing |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {} | {customers} | {distinct} | {total} | {} | {kills} | **{}** |",
        if postgres { "postgres" } else { "sqlite" },
        attempts.load(Ordering::Relaxed),
        differing.len()
    );
    drop(truth);
    drop(storm);
    for s in [&truth_store, &storm_store] {
        if let StoreKind::Postgres { database, .. } = s {
            psql(&admin_url, &format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)")).await;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if !differing.is_empty() {
        std::process::exit(1);
    }
}
