//! # `admin_export`: streaming every license out of the admin API
//!
//! `GET /api/admin/licenses/export?format=ndjson|csv` on the real
//! `billing-server` binary (a separate process on a fresh PostgreSQL
//! database), for a small and a large store (default 1,000 and 10,000
//! manual licenses, seeded straight into the database), measuring:
//!
//! * the time to read the whole export, licenses/s and bytes;
//! * the server's peak resident memory growth during it: the peak (`VmHWM`
//!   of `/proc/<pid>/status`) is reset through `/proc/<pid>/clear_refs`
//!   just before the request, so growth = peak − resident before. An
//!   export that held every license in memory would grow with the store;
//!   a streamed one stays flat;
//! * beside it, the baseline: PostgreSQL's own `COPY (SELECT …) TO STDOUT`
//!   of the same columns in the same order, read by this process — the
//!   floor for getting those rows off the database.
//!
//! ```text
//! cargo bench -p billing-server --bench admin_export
//! BENCH_LICENSES=50000 cargo bench -p billing-server --bench admin_export
//! ```
//!
//! Prerequisites: Linux, PostgreSQL at `postgres://postgres@127.0.0.1:5432`
//! with trust authentication (`BENCH_ADMIN_DATABASE_URL` overrides it,
//! without a database name); a database `billing_bench_export_<uuid>` is
//! created and dropped. `BENCH_SERVER_BIN` overrides the server binary.
//! No figure is asserted.

use anyhow::{bail, ensure, Context};
use billing_core::domain::LicenseKey;
use futures_util::StreamExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Database {
    admin_url: String,
    name: String,
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                &format!("{}/postgres", self.admin_url),
                "-qc",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .status();
    }
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run())
}

fn proc_status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with(field)).with_context(|| format!("no {field} in status"))?;
    Ok(line.split_whitespace().nth(1).context("a number")?.parse()?)
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Inserts manual licenses until the store holds `total`.
async fn seed(db: &tokio_postgres::Client, from: usize, total: usize) -> anyhow::Result<()> {
    const BATCH: usize = 1_000;
    let mut next = from;
    while next < total {
        let count = BATCH.min(total - next);
        let mut sql = String::from(
            "INSERT INTO licenses (id, key, key_hash, status, plan_id, max_devices, source, user_id, created_at) VALUES ",
        );
        for i in 0..count {
            let key = LicenseKey::generate();
            let hash: String = key.lookup_hash().iter().map(|b| format!("{b:02x}")).collect();
            let n = next + i;
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "('{}', '{}', '\\x{hash}', 'active', 'pro', 3, 'manual', 'user_{n}@example.com', now() - interval '{n} seconds')",
                uuid::Uuid::new_v4(),
                key.expose()
            ));
        }
        db.batch_execute(&sql).await?;
        next += count;
    }
    Ok(())
}

struct Figures {
    seconds: f64,
    lines: usize,
    bytes: usize,
    rss_before_kib: u64,
    peak_kib: u64,
}

async fn export(http: &reqwest::Client, base: &str, token: &str, format: &str, pid: u32) -> anyhow::Result<Figures> {
    let rss_before_kib = proc_status_kib(pid, "VmRSS:")?;
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").context("resetting the server's peak RSS")?;
    let started = Instant::now();
    let response =
        http.get(format!("{base}/api/admin/licenses/export?format={format}")).bearer_auth(token).send().await?;
    ensure!(response.status() == 200, "export answered {}", response.status());
    let mut body = response.bytes_stream();
    let (mut lines, mut bytes) = (0, 0);
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        bytes += chunk.len();
        lines += chunk.iter().filter(|&&b| b == b'\n').count();
    }
    let seconds = started.elapsed().as_secs_f64();
    let peak_kib = proc_status_kib(pid, "VmHWM:")?;
    Ok(Figures { seconds, lines, bytes, rss_before_kib, peak_kib })
}

async fn copy_baseline(db: &tokio_postgres::Client) -> anyhow::Result<(f64, usize)> {
    let started = Instant::now();
    let stream = db
        .copy_out(
            "COPY (SELECT l.id, l.key, COALESCE(l.user_id, c.user_id), l.plan_id, l.status, l.source, \
                          (SELECT count(*) FROM devices d WHERE d.license_id = l.id AND d.status = 'active'), \
                          l.created_at, l.expires_at \
                     FROM licenses l LEFT JOIN subscriptions s ON s.id = l.subscription_id \
                     LEFT JOIN customers c ON c.id = s.customer_id \
                    ORDER BY l.created_at DESC, l.id DESC) TO STDOUT",
        )
        .await?;
    futures_util::pin_mut!(stream);
    let mut bytes = 0;
    while let Some(chunk) = stream.next().await {
        bytes += chunk?.len();
    }
    Ok((started.elapsed().as_secs_f64(), bytes))
}

async fn run() -> anyhow::Result<()> {
    let admin_url =
        std::env::var("BENCH_ADMIN_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let large: usize = std::env::var("BENCH_LICENSES").ok().map(|v| v.parse()).transpose()?.unwrap_or(10_000);
    let small = (large / 10).max(1);
    let binary = std::env::var("BENCH_SERVER_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_billing-server").into());

    let database = Database {
        admin_url: admin_url.clone(),
        name: format!("billing_bench_export_{}", uuid::Uuid::new_v4().simple()),
    };
    connect(&format!("{admin_url}/postgres"))
        .await?
        .batch_execute(&format!("CREATE DATABASE {}", database.name))
        .await?;
    let database_url = format!("{admin_url}/{}", database.name);
    let files = std::env::temp_dir().join(&database.name);
    std::fs::create_dir_all(&files)?;

    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let server = ChildGuard(
        Command::new(&binary)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &database_url)
            .env("BILLING_DATA_DIR", &files)
            .env("BILLING_ADDR", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {binary}"))?,
    );
    let pid = server.0.id();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.get(format!("{base}/readyz")).send().await.map(|r| r.status() != 200).unwrap_or(true) {
        if Instant::now() > deadline {
            bail!("the server did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let created = Command::new(&binary)
        .args(["admin-token", "create", "--name", "bench"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &database_url)
        .env("BILLING_DATA_DIR", &files)
        .output()?;
    ensure!(created.status.success(), "admin-token create: {}", String::from_utf8_lossy(&created.stderr));
    let token = String::from_utf8(created.stdout)?.lines().last().context("a token")?.trim().to_owned();

    let db = connect(&database_url).await?;
    println!(
        "admin_export: billing-server on PostgreSQL, {} CPU cores; baseline: COPY (SELECT the same columns, same order) TO STDOUT",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:>9} {:>7} {:>9} {:>10} {:>11} {:>9} {:>16} {:>13}",
        "licenses", "format", "seconds", "licenses/s", "MiB", "lines", "peak RSS growth", "COPY seconds"
    );
    let mut seeded = 0;
    for size in [small, large] {
        seed(&db, seeded, size).await?;
        seeded = size;
        // One untimed pass warms the server's connections and PostgreSQL's cache.
        export(&http, &base, &token, "ndjson", pid).await?;
        let (copy_seconds, _) = copy_baseline(&db).await?;
        for format in ["ndjson", "csv"] {
            let f = export(&http, &base, &token, format, pid).await?;
            let expected = size + usize::from(format == "csv");
            ensure!(
                f.lines == expected,
                "{format} export of {size} licenses had {} lines, expected {expected}",
                f.lines
            );
            println!(
                "{:>9} {:>7} {:>9.3} {:>10.0} {:>11.2} {:>9} {:>12} KiB {:>13.3}",
                size,
                format,
                f.seconds,
                size as f64 / f.seconds,
                f.bytes as f64 / (1024.0 * 1024.0),
                f.lines,
                f.peak_kib.saturating_sub(f.rss_before_kib),
                copy_seconds
            );
        }
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&files);
    Ok(())
}
