//! # `stripe_sync_h2h`: billing-server against `@supabase/stripe-sync-engine`
//!
//! The engine's own workload, `customer.subscription.updated` deliveries,
//! posted to both systems by the same load generator (`support::post_all`:
//! closed loop, `BENCH_CONCURRENCY` tasks sharing one keep-alive `reqwest`
//! client, one request in flight each) against the same PostgreSQL server,
//! one system at a time, each on a fresh database of its own
//! (`h2h_billing_<uuid>`, `h2h_engine_<uuid>`, dropped `WITH (FORCE)` at
//! the end):
//!
//! * **billing-server**, started in-process as `webhook_ingest` starts it
//!   (`support::Server`: migrations, default pool size), at
//!   `POST /api/stripe/webhooks/handler`. Per event it verifies the
//!   signature, records the delivery, and applies the snapshot in one
//!   transaction: customer, subscription, license (issued on the first
//!   event, its terms changed with the plan), audit rows, outbox rows.
//! * **the engine** (`scripts/bench-stripe-sync-engine/server.js`, version
//!   pinned in its `package-lock.json`) run by `node` as a child process:
//!   `POST /webhook` calls `StripeSync.processWebhook(body, signature)`
//!   (stripe-node's `constructEventAsync` checks the signature), which
//!   upserts `stripe.subscriptions` and `stripe.subscription_items` and
//!   looks for deleted items, in autocommit statements on its `pg` pool; it
//!   answers 200 once they are done. Its migrations (`runMigrations`) run
//!   at its start-up. It is configured to call no Stripe API: no
//!   `revalidateObjectsViaStripeApi`, `autoExpandLists` and
//!   `backfillRelatedEntities` off (the subscription handler then trusts
//!   the payload; the secret key is a placeholder). The script counts the
//!   Stripe API requests the engine attempts (stripe-node's `request`
//!   event) and the bench prints that count, which must be 0.
//!
//! The deliveries: `BENCH_H2H_EVENTS` (20,000) events for
//! `BENCH_H2H_SUBSCRIPTIONS` (2,000) subscriptions, in rounds of one event
//! per subscription, so one subscription's events are a round apart and
//! never in flight together. Each event carries a full Stripe subscription
//! object (basil shape, as Stripe sends today: the fields of
//! `tests/fixtures/stripe-events/subscription_created.json`, periods on the
//! item) with `previous_attributes`; a subscription's events have
//! `created` one second apart, increasing, and alternate its plan between
//! basic and pro; only its last event schedules the cancellation at period
//! end. Both systems get the same bytes, signed with the same secret (each
//! system's copy is signed just before its run, so both are well inside
//! Stripe's five-minute tolerance). Before each measured run a warm-up
//! posts `BENCH_H2H_WARMUP_EVENTS` (1,000) events of other subscriptions
//! (so connections, JIT and caches are warm on both sides).
//!
//! Every response must be a 2xx, anything else counts as a failure. After
//! each run the bench checks each database: it must hold one row per bench
//! subscription, and each in its last event's state (cancellation
//! scheduled), so that neither side is fast by dropping work.
//!
//! Printed for each run: events/s, average/p50/p99/max latency (from sending
//! a request to having read the whole response), failures, and the cores
//! used during the measured run: `bench` (this process: the load generator,
//! and for billing-server the server too), `node` (the engine's process),
//! `pg` (all PostgreSQL processes of the machine), `other` (the rest of the
//! machine: above ~0.1 something else ran and the figures are pessimistic),
//! and the CPU time (bench + node + pg) per event. Then billing-server's
//! events/s over the engine's, beside the target (3x). No timing is
//! asserted. With `BENCH_ROUNDS` = 2 or more, the systems alternate which
//! goes first, each round on fresh databases.
//!
//! ## Running
//!
//! ```text
//! npm ci --prefix scripts/bench-stripe-sync-engine
//! cargo bench -p billing-server --bench stripe_sync_h2h
//! ```
//!
//! ## Prerequisites
//!
//! PostgreSQL at `postgres://postgres@127.0.0.1:5432` with trust
//! authentication (`TEST_DATABASE_URL`, without a database name, as for the
//! integration tests); Node.js 20 (`node` on `PATH`, or `BENCH_NODE`) with
//! the script's packages installed as above; Linux (`/proc` for the CPU
//! figures).
//!
//! ## Knobs (environment variables)
//!
//! `BENCH_CONCURRENCY` (16), `BENCH_H2H_EVENTS` (20000, rounded up to a
//! multiple of the subscriptions), `BENCH_H2H_SUBSCRIPTIONS` (2000),
//! `BENCH_H2H_WARMUP_EVENTS` (1000), `BENCH_ROUNDS` (1),
//! `BENCH_DB_POOL_SIZE` (billing-server's pool: 4 per core, its default),
//! `BENCH_ENGINE_POOL_MAX` (the engine's `poolConfig.max`; unset: the
//! engine's default, 10), `BENCH_NODE`, `TEST_DATABASE_URL`.

// A whole Stripe subscription object is one `json!` deeper than the default allows.
#![recursion_limit = "256"]

mod support;

use anyhow::{ensure, Context};
use billing_core::storage::any::StoreLocation;
use billing_core::stripe::WebhookSecrets;
use bytes::Bytes;
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;
use support::{
    cpu_count, env_number, load_client, pg_connect, post_all, sign_all, unix_now, BenchDatabase, CpuSample, CpuSplit,
    LoadResult, Percentiles, Server, PRICE_BASIC, PRICE_PRO, WEBHOOK_SECRET,
};

/// Target, printed beside the figures (never asserted): billing-server's
/// events/s over the engine's, measured in the same run.
const TARGET_RATIO: f64 = 3.0;
/// Names the bench's subscriptions, apart from the warm-up's.
const PREFIX: &str = "h2h";

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let settings = Settings::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(settings))
}

#[derive(Debug, Clone)]
struct Settings {
    concurrency: usize,
    subscriptions: usize,
    events: usize,
    warmup_events: usize,
    rounds: usize,
    pool_size: usize,
    engine_pool_max: Option<u64>,
    node: PathBuf,
    admin_url: String,
}

impl Settings {
    fn from_env() -> anyhow::Result<Self> {
        let subscriptions = env_number("BENCH_H2H_SUBSCRIPTIONS", 2_000)?.max(1) as usize;
        Ok(Self {
            concurrency: env_number("BENCH_CONCURRENCY", 16)?.max(1) as usize,
            subscriptions,
            events: (env_number("BENCH_H2H_EVENTS", 20_000)?.max(1) as usize).next_multiple_of(subscriptions),
            warmup_events: env_number("BENCH_H2H_WARMUP_EVENTS", 1_000)? as usize,
            rounds: env_number("BENCH_ROUNDS", 1)?.max(1) as usize,
            pool_size: env_number("BENCH_DB_POOL_SIZE", support::default_pool_size())?.max(1) as usize,
            engine_pool_max: std::env::var("BENCH_ENGINE_POOL_MAX")
                .ok()
                .filter(|v| !v.trim().is_empty())
                .map(|v| v.trim().parse().context("BENCH_ENGINE_POOL_MAX must be a number"))
                .transpose()?,
            node: std::env::var_os("BENCH_NODE").map_or_else(|| PathBuf::from("node"), PathBuf::from),
            admin_url: std::env::var("TEST_DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned()),
        })
    }
}

// ---------------------------------------------------------------------------
// The workload: full subscription objects, as Stripe sends them
// ---------------------------------------------------------------------------

fn price_object(price: &str, created: i64) -> Value {
    json!({
        "id": price, "object": "price", "active": true, "billing_scheme": "per_unit", "created": created,
        "currency": "usd", "custom_unit_amount": null, "livemode": false, "lookup_key": null, "metadata": {},
        "nickname": null, "product": format!("prod_{price}"),
        "recurring": { "aggregate_usage": null, "interval": "month", "interval_count": 1, "meter": null,
                       "trial_period_days": null, "usage_type": "licensed" },
        "tax_behavior": "unspecified", "tiers_mode": null, "transform_quantity": null, "type": "recurring",
        "unit_amount": 1900, "unit_amount_decimal": "1900"
    })
}

fn plan_object(price: &str, created: i64) -> Value {
    json!({
        "id": price, "object": "plan", "active": true, "aggregate_usage": null, "amount": 1900,
        "amount_decimal": "1900", "billing_scheme": "per_unit", "created": created, "currency": "usd",
        "interval": "month", "interval_count": 1, "livemode": false, "metadata": {}, "meter": null,
        "nickname": null, "product": format!("prod_{price}"), "tiers_mode": null, "transform_usage": null,
        "trial_period_days": null, "usage_type": "licensed"
    })
}

fn item_object(sub: &str, price: &str, start: i64, period: (i64, i64)) -> Value {
    json!({
        "id": format!("si_{sub}"), "object": "subscription_item", "billing_thresholds": null, "created": start,
        "current_period_end": period.1, "current_period_start": period.0, "discounts": [], "metadata": {},
        "plan": plan_object(price, start - 86_400), "price": price_object(price, start - 86_400), "quantity": 1,
        "subscription": sub, "tax_rates": []
    })
}

/// Subscription `n` after its `revision`-th change (of `last`).
fn subscription_object(prefix: &str, n: usize, revision: usize, last: usize, start: i64) -> Value {
    let sub = format!("sub_{prefix}_{n:06}");
    let price = if revision.is_multiple_of(2) { PRICE_BASIC } else { PRICE_PRO };
    let cancel = revision == last;
    let period = (start, start + 30 * 86_400);
    json!({
        "id": sub, "object": "subscription", "application": null, "application_fee_percent": null,
        "automatic_tax": { "disabled_reason": null, "enabled": false, "liability": null },
        "billing_cycle_anchor": start, "billing_cycle_anchor_config": null,
        "billing_mode": { "type": "classic" }, "billing_thresholds": null,
        "cancel_at": if cancel { json!(period.1) } else { Value::Null }, "cancel_at_period_end": cancel,
        "canceled_at": if cancel { json!(start + revision as i64) } else { Value::Null },
        "cancellation_details": { "comment": null, "feedback": null,
                                  "reason": if cancel { json!("cancellation_requested") } else { Value::Null } },
        "collection_method": "charge_automatically", "created": start, "currency": "usd",
        "customer": format!("cus_{prefix}_{n:06}"), "days_until_due": null,
        "default_payment_method": format!("pm_{prefix}_{n:06}"), "default_source": null, "default_tax_rates": [],
        "description": null, "discounts": [], "ended_at": null,
        "invoice_settings": { "account_tax_ids": null, "issuer": { "type": "self" } },
        "items": { "object": "list", "data": [item_object(&sub, price, start, period)], "has_more": false,
                   "total_count": 1, "url": format!("/v1/subscription_items?subscription={sub}") },
        "latest_invoice": format!("in_{prefix}_{n:06}_{revision}"), "livemode": false,
        "metadata": { "user_id": format!("user_{prefix}_{n:06}") },
        "next_pending_invoice_item_invoice": null, "on_behalf_of": null, "pause_collection": null,
        "payment_settings": { "payment_method_options": null, "payment_method_types": null,
                              "save_default_payment_method": "off" },
        "pending_invoice_item_interval": null, "pending_setup_intent": null, "pending_update": null,
        "plan": plan_object(price, start - 86_400), "quantity": 1, "schedule": null, "start_date": start,
        "status": "active", "test_clock": null, "transfer_data": null, "trial_end": null,
        "trial_settings": { "end_behavior": { "missing_payment_method": "create_invoice" } }, "trial_start": null
    })
}

/// What the `revision`-th change changed, as Stripe reports it.
fn previous_attributes(prefix: &str, n: usize, revision: usize, start: i64) -> Value {
    // The first change in the stream follows one from before it (the other plan).
    let before_revision = if revision == 0 { 1 } else { revision - 1 };
    let before = subscription_object(prefix, n, before_revision, usize::MAX, start);
    json!({ "items": before["items"], "plan": before["plan"], "latest_invoice": before["latest_invoice"] })
}

fn update_event(prefix: &str, n: usize, revision: usize, last: usize, start: i64) -> Value {
    let object = subscription_object(prefix, n, revision, last, start);
    let previous = if revision == last {
        json!({ "cancel_at": null, "cancel_at_period_end": false, "canceled_at": null,
                "cancellation_details": { "reason": null } })
    } else {
        previous_attributes(prefix, n, revision, start)
    };
    json!({
        "id": format!("evt_{prefix}_{n:06}_{revision:03}"), "object": "event", "api_version": "2025-03-31.basil",
        "created": start + 1 + revision as i64, "data": { "object": object, "previous_attributes": previous },
        "livemode": false, "pending_webhooks": 1,
        "request": { "id": format!("req_{prefix}_{n:06}_{revision:03}"), "idempotency_key": null },
        "type": "customer.subscription.updated"
    })
}

/// `events` bodies for `subscriptions` subscriptions (named with `prefix`),
/// in rounds of one event per subscription.
fn build_bodies(prefix: &str, subscriptions: usize, events: usize) -> Vec<Bytes> {
    let revisions = events.div_ceil(subscriptions);
    let start = unix_now() - 86_400;
    (0..revisions)
        .flat_map(|revision| (0..subscriptions).map(move |n| (revision, n)))
        .take(events)
        .map(|(revision, n)| {
            serde_json::to_vec(&update_event(prefix, n, revision, revisions - 1, start)).expect("JSON encodes").into()
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The engine's server, a child process
// ---------------------------------------------------------------------------

fn engine_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench-stripe-sync-engine")
}

/// The engine's version, from its installed package.
fn engine_version() -> anyhow::Result<String> {
    let manifest = engine_dir().join("node_modules/@supabase/stripe-sync-engine/package.json");
    let text = std::fs::read_to_string(&manifest).with_context(|| {
        format!("{} is missing: run `npm ci --prefix scripts/bench-stripe-sync-engine` first", manifest.display())
    })?;
    let manifest: Value = serde_json::from_str(&text)?;
    Ok(manifest["version"].as_str().unwrap_or("?").to_owned())
}

struct Engine {
    child: std::process::Child,
    address: String,
}

impl Engine {
    async fn start(settings: &Settings, database_url: &str) -> anyhow::Result<Self> {
        let mut command = std::process::Command::new(&settings.node);
        command
            .arg(engine_dir().join("server.js"))
            .env("DATABASE_URL", database_url)
            .env("WEBHOOK_SECRET", WEBHOOK_SECRET)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit());
        if let Some(max) = settings.engine_pool_max {
            command.env("POOL_MAX", max.to_string());
        }
        let mut child =
            command.spawn().with_context(|| format!("cannot run {} (set BENCH_NODE)", settings.node.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufReader::new(stdout).read_line(&mut line).map(|_| line)
        });
        let line = match tokio::time::timeout(std::time::Duration::from_secs(60), line).await {
            Ok(line) => line??,
            Err(_) => String::new(),
        };
        let port = serde_json::from_str::<Value>(&line).ok().and_then(|v| v["port"].as_u64());
        let Some(port) = port else {
            let _ = child.kill();
            let status = child.wait()?;
            anyhow::bail!("the engine's server did not start ({status}); its output: {line:?}");
        };
        Ok(Self { child, address: format!("http://127.0.0.1:{port}") })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stripe API requests the engine attempted so far.
    async fn stripe_api_requests(&self, http: &reqwest::Client) -> anyhow::Result<u64> {
        let stats: Value = http.get(format!("{}/stats", self.address)).send().await?.json().await?;
        stats["stripe_api_requests"].as_u64().context("no stripe_api_requests in /stats")
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Closing its stdin ends it; kill it if it does not go.
        drop(self.child.stdin.take());
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// One system's run
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    BillingServer,
    Engine,
}

struct Run {
    system: System,
    round: usize,
    load: LoadResult,
    latency: Percentiles,
    /// This process, then the engine's (0 for billing-server).
    cpu: CpuSplit,
    /// Bench subscriptions in the database, and of those in their last
    /// event's state.
    stored: (i64, i64),
    /// billing-server: deliveries per unit of work; the engine: Stripe API
    /// requests it attempted.
    note: String,
}

impl Run {
    fn label(&self, engine_version: &str) -> String {
        match self.system {
            System::BillingServer => format!("billing-server, round {}", self.round),
            System::Engine => format!("stripe-sync-engine {engine_version}, round {}", self.round),
        }
    }
}

async fn count_stored(database_url: &str, system: System) -> anyhow::Result<(i64, i64)> {
    let db = pg_connect(database_url).await?;
    let sql = match system {
        System::BillingServer => {
            "SELECT count(*), count(*) FILTER (WHERE cancel_at_period_end) FROM subscriptions
              WHERE stripe_subscription_id LIKE 'sub_' || $1 || '_%'"
        }
        System::Engine => {
            "SELECT count(*), count(*) FILTER (WHERE cancel_at_period_end) FROM stripe.subscriptions
              WHERE id LIKE 'sub_' || $1 || '_%'"
        }
    };
    let row = db.query_one(sql, &[&PREFIX]).await?;
    Ok((row.get(0), row.get(1)))
}

async fn run_system(
    system: System,
    round: usize,
    settings: &Settings,
    http: &reqwest::Client,
    bodies: &[Bytes],
    warmup: &[Bytes],
) -> anyhow::Result<Run> {
    let prefix = match system {
        System::BillingServer => "h2h_billing",
        System::Engine => "h2h_engine",
    };
    let database = BenchDatabase::create(&settings.admin_url, prefix).await?;
    let secrets = WebhookSecrets::parse(WEBHOOK_SECRET).expect("a secret is configured");
    let me = std::process::id();
    let (server, engine, url) = match system {
        System::BillingServer => {
            let server = Server::start(&StoreLocation::Postgres(database.url()), settings.pool_size).await?;
            let url = server.webhook_url();
            (Some(server), None, url)
        }
        System::Engine => {
            let engine = Engine::start(settings, &database.url()).await?;
            let url = format!("{}/webhook", engine.address);
            (None, Some(engine), url)
        }
    };
    let pids = [me, engine.as_ref().map_or(0, Engine::pid)];
    let warm = post_all(http, &url, Arc::new(sign_all(warmup, &secrets, unix_now())), settings.concurrency).await;
    let measured = Arc::new(sign_all(bodies, &secrets, unix_now()));
    let groups_before = server.as_ref().map(Server::group_stats);
    let before = CpuSample::take(&pids);
    let mut load = post_all(http, &url, measured, settings.concurrency).await;
    let cpu = CpuSplit::between(&before, &CpuSample::take(&pids));
    let note = match (&server, &engine) {
        (Some(server), _) => {
            let groups = support::group_stats_between(groups_before.unwrap_or_default(), server.group_stats());
            format!("outcomes: {}; mean group size {:.2}", load.outcomes_line(), groups.mean_group_size())
        }
        (_, Some(engine)) => format!("Stripe API requests attempted: {}", engine.stripe_api_requests(http).await?),
        _ => unreachable!("one system runs"),
    };
    if let Some(server) = server {
        server.stop().await;
    }
    drop(engine);
    load.first_failure = load.first_failure.or(warm.first_failure.map(|f| format!("(warm-up) {f}")));
    load.failures += warm.failures;
    let stored = count_stored(&database.url(), system).await?;
    let latency = Percentiles::of(&mut load.latencies);
    Ok(Run { system, round, load, latency, cpu, stored, note })
}

// ---------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------

async fn run(settings: Settings) -> anyhow::Result<()> {
    let engine_version = engine_version()?;
    ensure!(settings.warmup_events < 1_000_000, "BENCH_H2H_WARMUP_EVENTS is implausibly large");
    println!(
        "stripe_sync_h2h: {} cores; {} customer.subscription.updated for {} subscriptions, {} in flight, {} \
         warm-up events before each run, {} round(s)",
        cpu_count(),
        settings.events,
        settings.subscriptions,
        settings.concurrency,
        settings.warmup_events,
        settings.rounds
    );
    println!(
        "  billing-server: in-process, pool {} connections; stripe-sync-engine {engine_version} on {} (pool max {})",
        settings.pool_size,
        settings.node.display(),
        settings.engine_pool_max.map_or("10, its default".to_owned(), |m| m.to_string())
    );
    let bodies = build_bodies(PREFIX, settings.subscriptions, settings.events);
    let warm_subscriptions = settings.warmup_events.clamp(1, settings.subscriptions);
    let warmup = build_bodies("warm", warm_subscriptions, settings.warmup_events);
    let mean_bytes = bodies.iter().map(Bytes::len).sum::<usize>() / bodies.len().max(1);
    println!("  {} bytes per event on average, the same bytes for both", mean_bytes);
    let http = load_client(settings.concurrency)?;

    let mut runs = Vec::new();
    for round in 1..=settings.rounds {
        let order = if !round.is_multiple_of(2) {
            [System::BillingServer, System::Engine]
        } else {
            [System::Engine, System::BillingServer]
        };
        for system in order {
            let run = run_system(system, round, &settings, &http, &bodies, &warmup).await?;
            println!(
                "  {}: {} events in {:.2} s, {} failures; {}; stored: {} of {} subscriptions, {} in their last \
                 state{}",
                run.label(&engine_version),
                run.load.latencies.len(),
                run.load.elapsed.as_secs_f64(),
                run.load.failures,
                run.note,
                run.stored.0,
                settings.subscriptions,
                run.stored.1,
                run.load.first_failure.as_ref().map_or(String::new(), |f| format!("; first failure: {f}"))
            );
            runs.push(run);
        }
    }

    let cores = |c: f64| format!("{c:.2}");
    println!();
    println!(
        "stripe_sync_h2h results · {} customer.subscription.updated, {} subscriptions, {} in flight · {} cores",
        settings.events,
        settings.subscriptions,
        settings.concurrency,
        cpu_count()
    );
    println!(
        "{:<36} {:>10} {:>7} {:>7} {:>7} {:>7} {:>5} {:>6} | {:>5} {:>5} {:>5} {:>5} {:>7}",
        "cores used / ms of CPU per event ->",
        "events/s",
        "avg ms",
        "p50 ms",
        "p99 ms",
        "max ms",
        "fail",
        "stored",
        "bench",
        "node",
        "pg",
        "other",
        "CPU ms"
    );
    for run in &runs {
        let events_per_sec = run.load.events_per_sec();
        println!(
            "{:<36} {:>10.0} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>5} {:>6} | {:>5} {:>5} {:>5} {:>5} {:>7.3}",
            run.label(&engine_version),
            events_per_sec,
            run.load.average_ms(),
            run.latency.p50_ms,
            run.latency.p99_ms,
            run.latency.max_ms,
            run.load.failures,
            run.stored.0,
            cores(run.cpu.processes[0]),
            cores(run.cpu.processes[1]),
            cores(run.cpu.postgres),
            cores(run.cpu.other()),
            run.cpu.ms_per_op(events_per_sec)
        );
    }
    let mean_events_per_sec = |system: System| {
        let of: Vec<f64> = runs.iter().filter(|r| r.system == system).map(|r| r.load.events_per_sec()).collect();
        of.iter().sum::<f64>() / of.len().max(1) as f64
    };
    let ratio = mean_events_per_sec(System::BillingServer) / mean_events_per_sec(System::Engine).max(1e-9);
    let complete = runs
        .iter()
        .all(|r| r.load.failures == 0 && r.stored == (settings.subscriptions as i64, settings.subscriptions as i64));
    println!(
        "billing-server / stripe-sync-engine events/s: {ratio:.2}x (target >= {TARGET_RATIO}x: {}){}",
        if ratio >= TARGET_RATIO { "met" } else { "MISSED" },
        if complete {
            String::new()
        } else {
            "; NOT COMPARABLE: a run failed deliveries or did not store every subscription in its last state".to_owned()
        }
    );
    println!(
        "stored: bench subscriptions in the system's database after its run (expected {}); bench: this process \
         (load generator, and billing-server itself on its rows); node: the engine's process; pg: all PostgreSQL \
         processes; other: the rest of the machine's busy CPU; CPU ms: (bench + node + pg) per event.",
        settings.subscriptions
    );
    Ok(())
}
