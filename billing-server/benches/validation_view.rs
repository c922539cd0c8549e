//! # `validation_view`: validation from memory, across two instances
//!
//! Two billing-server instances in this process (each its own engine, pool,
//! event hub and `LISTEN` connection, as two processes would have) on one
//! fresh PostgreSQL database holding N (default 100,000) licenses, seeded
//! straight into it. Printed, beside their targets (never asserted):
//!
//! * **memory per cached license**: this process's resident memory before
//!   and after instance B has validated every license once (each validation
//!   a miss that fills B's view), divided by N; and the rate of those
//!   filling validations, the database's pace (B's view is lazy, so it is
//!   ready the moment it starts: the first validation is answered, from the
//!   database, as soon as the server listens);
//! * **validations from memory**: `Billing::validate` on B over the same
//!   keys, now all held, from 4 tasks, per second, beside the same calls
//!   on an engine without a view (`BILLING_VALIDATION_CACHE_LICENSES=0`),
//!   which reads the database each time;
//! * **cross-instance staleness**: C (default 200) times, a license held by
//!   B is suspended through A (its unit of work has committed when the call
//!   returns), and B validates it in a loop until it answers `SUSPENDED`:
//!   p50/p99/max of the time from A's commit to B's first fresh verdict
//!   (target p99 < 50 ms).
//!
//! ```text
//! cargo bench -p billing-server --bench validation_view
//! BENCH_LICENSES=20000 BENCH_CHANGES=500 cargo bench -p billing-server --bench validation_view
//! ```
//!
//! Prerequisites: Linux, PostgreSQL at `postgres://postgres@127.0.0.1:5432`
//! with trust authentication (`BENCH_ADMIN_DATABASE_URL` overrides it).

mod support;

use billing_core::certificate::SigningKey;
use billing_core::domain::{Actor, LicenseKey, ValidationCode};
use billing_core::licensing::LicensingConfig;
use billing_core::storage::any::{AnyStore, StoreLocation};
use billing_core::{Billing, BillingConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{env_number, BenchDatabase, Percentiles, Server};

const TARGET_STALENESS_P99_MS: f64 = 50.0;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or("VmRSS: 0 kB");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// `count` manual licenses of plan pro, straight into the database (as
/// `admin_export` seeds); their keys and ids.
async fn seed(db: &tokio_postgres::Client, count: usize) -> anyhow::Result<Vec<(String, uuid::Uuid)>> {
    let mut licenses = Vec::with_capacity(count);
    for batch in (0..count).collect::<Vec<_>>().chunks(1_000) {
        let mut sql = String::from(
            "INSERT INTO licenses (id, key, key_hash, status, plan_id, max_devices, source, user_id) VALUES ",
        );
        for (i, n) in batch.iter().enumerate() {
            let (key, id) = (LicenseKey::generate(), uuid::Uuid::new_v4());
            let hash: String = key.lookup_hash().iter().map(|b| format!("{b:02x}")).collect();
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "('{id}', '{}', '\\x{hash}', 'active', 'pro', 3, 'manual', 'user_{n}')",
                key.expose()
            ));
            licenses.push((key.expose().to_owned(), id));
        }
        db.batch_execute(&sql).await?;
    }
    Ok(licenses)
}

/// Validations per second of `billing` over `keys`, from 4 tasks for
/// `duration`.
async fn validations_per_sec(billing: &Billing<AnyStore>, keys: &[(String, uuid::Uuid)], duration: Duration) -> f64 {
    let keys = std::sync::Arc::new(keys.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>());
    let started = Instant::now();
    let tasks: Vec<_> = (0..4)
        .map(|t| {
            let (billing, keys) = (billing.clone(), keys.clone());
            tokio::spawn(async move {
                let mut done = 0u64;
                let mut i = t * 7919;
                while started.elapsed() < duration {
                    let verdict = billing.validate(&keys[i % keys.len()], None).await.expect("validates");
                    assert_eq!(verdict.code, ValidationCode::Valid);
                    done += 1;
                    i += 4;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("a validating task");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let licenses = env_number("BENCH_LICENSES", 100_000)? as usize;
    let changes = env_number("BENCH_CHANGES", 200)? as usize;
    let admin_url =
        std::env::var("BENCH_ADMIN_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
    let database = BenchDatabase::create(&admin_url, "billing_bench_view").await?;
    let location = StoreLocation::Postgres(database.url());
    let a = Server::start(&location, 8).await?;
    let b = Server::start(&location, 8).await?;
    let db = support::pg_connect(&database.url()).await?;
    let seeding = Instant::now();
    let keys = seed(&db, licenses).await?;
    println!(
        "validation_view: {licenses} licenses seeded in {:.1} s; {} cores; two instances on one PostgreSQL database",
        seeding.elapsed().as_secs_f64(),
        support::cpu_count()
    );

    // Memory: B validates every license once, each a miss that fills its view.
    let before = rss_kib();
    let filling = Instant::now();
    for (key, _) in &keys {
        assert_eq!(b.billing().validate(key, None).await.expect("validates").code, ValidationCode::Valid);
    }
    let fill_secs = filling.elapsed().as_secs_f64();
    let after = rss_kib();
    let stats = b.billing().validation_view().stats();
    let per_license = (after.saturating_sub(before) * 1024) as f64 / stats.licenses.max(1) as f64;
    println!(
        "  filling B's view: {} licenses held after {} validations from the database ({:.0}/s, {:.1} s)",
        stats.licenses,
        keys.len(),
        keys.len() as f64 / fill_secs,
        fill_secs
    );
    println!("  memory per cached license: {per_license:.0} bytes (RSS {before} -> {after} KiB)");

    // Throughput from memory, and from the database for comparison.
    let hits_before = b.billing().validation_view().stats().hits;
    let held = validations_per_sec(b.billing(), &keys, Duration::from_secs(3)).await;
    let hits = b.billing().validation_view().stats().hits - hits_before;
    let uncached = {
        let store = AnyStore::open(&location, 8).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let key = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8()).expect("a generated key loads");
        let config = BillingConfig::new(support::plans(), LicensingConfig::new(Arc::new(key))).with_validation_cache(0);
        validations_per_sec(&Billing::new(store, config), &keys, Duration::from_secs(3)).await
    };
    println!(
        "  Billing::validate, 4 tasks: {held:.0}/s from memory (hits: {}), {uncached:.0}/s reading PostgreSQL ({:.1}x)",
        hits,
        held / uncached.max(1.0)
    );

    // Staleness across instances.
    let mut latencies = Vec::with_capacity(changes);
    for (key, id) in keys.iter().take(changes) {
        assert_eq!(b.billing().validate(key, None).await?.code, ValidationCode::Valid, "held by B");
        a.billing().suspend_license(&Actor::admin("bench"), *id).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let committed = Instant::now();
        loop {
            if b.billing().validate(key, None).await?.code == ValidationCode::Suspended {
                break;
            }
            anyhow::ensure!(committed.elapsed() < Duration::from_secs(10), "B never saw the suspension");
            tokio::task::yield_now().await;
        }
        latencies.push(committed.elapsed());
    }
    let staleness = Percentiles::of(&mut latencies);
    println!(
        "  A's commit -> B's fresh verdict, {changes} suspensions: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target p99 < {TARGET_STALENESS_P99_MS} ms: {})",
        staleness.p50_ms,
        staleness.p99_ms,
        staleness.max_ms,
        if staleness.p99_ms < TARGET_STALENESS_P99_MS { "met" } else { "missed" }
    );
    a.stop().await;
    b.stop().await;
    Ok(())
}
