//! # `license_load`: throughput, latency and memory of the licensing hot paths
//!
//! One run measures, on whatever machine it runs on (the figures are only
//! meaningful relative to each other and to the machine's core count, which
//! is printed: server, load generator and PostgreSQL, when used, all share
//! it), with the server on the store chosen by `BENCH_STORE` (`postgres`, the
//! default, or `sqlite`; named in the header line and in the rows of the
//! server's figures):
//!
//! 1. **Baseline**: a trivial hyper 1.x HTTP/1.1 server (this bench binary
//!    re-executed as a separate process with `LICENSE_LOAD_ROLE=baseline`)
//!    that reads the request body and answers a fixed small JSON 200. It is
//!    driven by the same load generator as (2), so it shows the ceiling the
//!    machine, hyper and the load generator allow. When the SSE phase runs,
//!    two fresh baseline processes also hold N idle event streams each, to
//!    show the memory floor of a stream: one through hyper (`GET /sse`: a
//!    hello, then a pending body) and one written straight to the socket with
//!    no HTTP library (`GET /raw-sse`, recognised by peeking the request).
//! 2. **`POST /api/license/validate`** on the real `billing-server` binary
//!    (a separate process on a fresh store: a PostgreSQL database, or with
//!    `BENCH_STORE=sqlite` an SQLite file, `DATABASE_URL=sqlite://<temporary
//!    directory>/billing.sqlite3`) with valid license keys and activated
//!    fingerprints: requests/s and p50/p99/max latency, plus how the CPU time
//!    was split between server, load generator, PostgreSQL (~0 on SQLite,
//!    which runs inside the server) and the rest of the machine during the
//!    measurement. The licenses are seeded through the server itself, on
//!    either store: signed `customer.subscription.created` webhooks, then
//!    `GET /api/licenses` and `POST /api/license/activate`.
//! 3. **SSE**: N (default 10,000) concurrent `GET /api/events/{licenseKey}`
//!    streams, spread over L (default 100) licenses, held open against the
//!    server; its resident memory (`VmRSS` of `/proc/<pid>/status`) before and
//!    with them connected; then C (default 200) client-visible changes, each a
//!    signed `customer.subscription.updated` webhook toggling
//!    `cancel_at_period_end`, sent one after the other. For every stream
//!    subscribed to the changed license the latency from *just before the
//!    webhook is sent* (so an upper bound of commit-to-client: it includes the
//!    webhook's own processing up to the commit) to the moment the stream
//!    reads the `subscription.updated` event is recorded; p50/p99/max and the
//!    number of deliveries (expected: C x N/L) are printed.
//!
//! The load generator is closed-loop: a fixed number of keep-alive HTTP/1.1
//! connections (default 32), each with one request in flight, after a
//! warm-up. It is a minimal HTTP/1.1 client on raw tokio `TcpStream`s (one
//! precomputed request per connection, `Content-Length`-framed responses) so
//! that it takes as little as possible of the CPU it shares with the server;
//! latency is measured from writing a request to reading the end of its
//! response. The SSE clients are raw `TcpStream`s too (a request, then lines).
//! No timing is asserted; the last table shows every figure beside its target.
//!
//! ## Running
//!
//! ```text
//! ulimit -n 20000   # the SSE phase needs > 10,000 descriptors in this process and in the server
//! cargo bench -p billing-server --bench license_load
//! BENCH_STORE=sqlite cargo bench -p billing-server --bench license_load
//! ```
//!
//! Cargo builds the `billing-server` binary (with the bench profile) before
//! the bench and hands its path over as `CARGO_BIN_EXE_billing-server`;
//! `BENCH_SERVER_BIN` overrides it.
//!
//! ## Prerequisites
//!
//! * With `BENCH_STORE=postgres` (the default): PostgreSQL reachable at
//!   `postgres://postgres@127.0.0.1:5432` with trust authentication
//!   (override with `BENCH_ADMIN_DATABASE_URL`, without the database name).
//!   A database `billing_bench_<uuid>` is created for the run and dropped
//!   `WITH (FORCE)` at the end.
//! * With `BENCH_STORE=sqlite`: nothing; the SQLite file lives in the run's
//!   temporary directory (under the system's, beside the plans file and the
//!   signing key), removed at the end.
//! * An open-files limit (soft) of at least streams + 1,000; it is checked at
//!   start and the SSE phase is skipped with a message when it is too low
//!   (raising it from inside would need `unsafe`, which the workspace forbids).
//! * Linux (`/proc` is read for memory and CPU figures).
//!
//! ## Knobs (environment variables)
//!
//! `BENCH_STORE` (`postgres`, the default, or `sqlite`),
//! `BENCH_CONNECTIONS` (32), `BENCH_WARMUP_SECS` (2), `BENCH_SECS` (6),
//! `BENCH_SSE_STREAMS` (10000), `BENCH_LICENSES` (100), `BENCH_SSE_CHANGES`
//! (200), `BENCH_SSE_ONE_AT_A_TIME` (0; 1: each change waits until every
//! stream read the previous one, and the webhook-to-last-stream time of
//! each is printed), `BENCH_SSE_SOURCES` (8: streams connect from
//! 127.0.0.2 to 127.0.0.9, round robin; 0: from the system's choice),
//! `BENCH_SSE_OPEN_PER_SEC` (0: as fast as 256 opening at a time allow),
//! `BENCH_DB_POOL_SIZE` (4 per core, the server's `BILLING_DB_POOL_SIZE`;
//! PostgreSQL only), `BENCH_SERVER_BIN`, `BENCH_ADMIN_DATABASE_URL`
//! (PostgreSQL only), `BENCH_PAUSE_SECS` (0:
//! seconds to hold the SSE streams open after the changes, e.g. to attach
//! `perf record -p <server pid>`).

use anyhow::{bail, ensure, Context};
use billing_core::certificate::SigningKey;
use billing_core::stripe::WebhookSecrets;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ROLE_ENV: &str = "LICENSE_LOAD_ROLE";
const WEBHOOK_SECRET: &str = "whsec_bench_0123456789abcdef";
const JWT_SECRET: &str = "bench-jwt-secret-that-is-long-enough";
const PRICE: &str = "price_pro";
const BASELINE_BODY: &[u8] = br#"{"valid":true,"code":"VALID","license":null}"#;

/// Targets, printed beside the figures (never asserted).
const TARGET_RPS: f64 = 10_000.0;
const TARGET_P99_MS: f64 = 5.0;
const TARGET_RSS_MB: f64 = 100.0;
const TARGET_SSE_P99_MS: f64 = 50.0;

fn main() -> anyhow::Result<()> {
    if std::env::var(ROLE_ENV).as_deref() == Ok("baseline") {
        return baseline_server();
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let settings = Settings::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        // On Ctrl-C or SIGTERM the run is dropped, so its guards stop the
        // server and drop the database (or remove the SQLite file).
        tokio::select! {
            result = run(settings) => result,
            signal = interrupted() => bail!("interrupted by {signal}; cleaned up"),
        }
    })
}

async fn interrupted() -> &'static str {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "Ctrl-C",
        _ = terminate => "SIGTERM",
    }
}

// ---------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------

/// The server's store (`BENCH_STORE`).
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
    connections: usize,
    warmup: Duration,
    duration: Duration,
    sse_streams: usize,
    licenses: usize,
    sse_changes: usize,
    /// Each change waits until every stream had the previous one.
    one_at_a_time: bool,
    /// Streams connect from 127.0.0.2 up to this many addresses (0: the system's choice).
    sse_sources: usize,
    /// Streams opened per second (0: as fast as 256 at a time allow).
    open_per_sec: u64,
    pool_size: usize,
    pause: Duration,
    admin_url: String,
    server_bin: PathBuf,
}

fn env_number(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().with_context(|| format!("{name} must be a number")),
        _ => Ok(default),
    }
}

impl Settings {
    fn from_env() -> anyhow::Result<Self> {
        let licenses = env_number("BENCH_LICENSES", 100)?.max(1) as usize;
        let backend = match std::env::var("BENCH_STORE").as_deref().map(str::trim) {
            Err(_) | Ok("" | "postgres") => Backend::Postgres,
            Ok("sqlite") => Backend::Sqlite,
            Ok(other) => bail!("BENCH_STORE must be postgres or sqlite, not {other:?}"),
        };
        Ok(Self {
            backend,
            connections: env_number("BENCH_CONNECTIONS", 32)?.max(1) as usize,
            warmup: Duration::from_secs(env_number("BENCH_WARMUP_SECS", 2)?),
            duration: Duration::from_secs(env_number("BENCH_SECS", 6)?.max(1)),
            sse_streams: env_number("BENCH_SSE_STREAMS", 10_000)? as usize,
            licenses,
            sse_changes: env_number("BENCH_SSE_CHANGES", 200)? as usize,
            one_at_a_time: env_number("BENCH_SSE_ONE_AT_A_TIME", 0)? != 0,
            sse_sources: env_number("BENCH_SSE_SOURCES", 8)?.min(200) as usize,
            open_per_sec: env_number("BENCH_SSE_OPEN_PER_SEC", 0)?,
            pool_size: env_number(
                "BENCH_DB_POOL_SIZE",
                4 * std::thread::available_parallelism().map_or(2, |n| n.get()) as u64,
            )?
            .max(1) as usize,
            pause: Duration::from_secs(env_number("BENCH_PAUSE_SECS", 0)?),
            admin_url: std::env::var("BENCH_ADMIN_DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned()),
            server_bin: std::env::var_os("BENCH_SERVER_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_billing-server"))),
        })
    }
}

// ---------------------------------------------------------------------------
// The baseline server (a separate process: this binary in another role)
// ---------------------------------------------------------------------------

fn baseline_server() -> anyhow::Result<()> {
    // The parent closes our stdin when it is done (or dies): exit then.
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        std::process::exit(0);
    });
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("listening {}", listener.local_addr()?);
        std::io::stdout().flush()?;
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(Duration::from_secs(30));
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let builder = builder.clone();
            tokio::spawn(async move {
                let mut first = [0u8; 16];
                let peeked = stream.peek(&mut first).await.unwrap_or(0);
                if first[..peeked].starts_with(b"GET /raw-sse") {
                    raw_idle_stream(stream).await;
                } else {
                    let _ = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), BaselineService).await;
                }
            });
        }
    })
}

/// The trivial handler: `/sse` is an idle event stream (a hello, then
/// nothing); anything else reads the body and answers a fixed JSON.
#[derive(Clone, Copy)]
struct BaselineService;

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for BaselineService {
    type Response = hyper::Response<http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>>;
    type Error = hyper::http::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, request: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        Box::pin(async move {
            let builder = hyper::Response::builder().header(hyper::header::CACHE_CONTROL, "no-store");
            if request.uri().path() == "/sse" {
                let hello = Bytes::from_static(b"retry: 2000\n: connected\n\n");
                let frames = futures_util::stream::once(async move { hello })
                    .chain(futures_util::stream::pending())
                    .map(|b| Ok(hyper::body::Frame::data(b)));
                let body = http_body_util::StreamBody::new(frames).boxed_unsync();
                return builder.header(hyper::header::CONTENT_TYPE, "text/event-stream").body(body);
            }
            // Read the body, as the real handler does.
            let _ = request.into_body().collect().await;
            let body = Full::new(Bytes::from_static(BASELINE_BODY)).boxed_unsync();
            builder.header(hyper::header::CONTENT_TYPE, "application/json").body(body)
        })
    }
}

/// An idle event stream without hyper: the head and a hello written straight
/// to the socket, then a small read that only notices the client leaving.
/// The floor of an SSE path that bypasses hyper's per-connection buffers.
async fn raw_idle_stream(mut stream: TcpStream) {
    let mut head = [0u8; 512];
    let mut read = 0;
    while !head[..read].windows(4).any(|w| w == b"\r\n\r\n") && read < head.len() {
        match stream.read(&mut head[read..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => read += n,
        }
    }
    let response: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-store\r\n\
        transfer-encoding: chunked\r\n\r\n19\r\nretry: 2000\n: connected\n\n\r\n";
    if stream.write_all(response).await.is_err() {
        return;
    }
    let mut sink = [0u8; 64];
    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
}

/// A child process killed (and reaped) when dropped.
struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

async fn start_baseline() -> anyhow::Result<(ChildGuard, SocketAddr)> {
    let exe = std::env::current_exe().context("cannot locate the bench executable")?;
    let mut child = std::process::Command::new(exe)
        .env(ROLE_ENV, "baseline")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start the baseline server")?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let guard = ChildGuard { child };
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await??;
    let addr = line.trim().strip_prefix("listening ").context("baseline server did not report its address")?;
    Ok((guard, addr.parse()?))
}

// ---------------------------------------------------------------------------
// The billing server (a separate process) and its store
// ---------------------------------------------------------------------------

/// The run's database, dropped `WITH (FORCE)` when this is dropped.
struct BenchDatabase {
    admin_url: String,
    name: String,
}

impl BenchDatabase {
    async fn create(admin_url: &str) -> anyhow::Result<Self> {
        let name = format!("billing_bench_{}", uuid::Uuid::new_v4().simple());
        let admin = pg_connect(&format!("{admin_url}/postgres")).await?;
        admin.batch_execute(&format!("CREATE DATABASE {name}")).await.context("CREATE DATABASE")?;
        Ok(Self { admin_url: admin_url.to_owned(), name })
    }

    fn url(&self) -> String {
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

async fn pg_connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {url} (see BENCH_ADMIN_DATABASE_URL)"))?;
    tokio::spawn(connection);
    Ok(client)
}

/// The temporary directory of the plans file, the signing key and, with
/// `BENCH_STORE=sqlite`, the store's file.
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

/// The server's store: a fresh PostgreSQL database (dropped at the end), or
/// an SQLite file in the run's temporary directory (removed with it). The
/// server creates and migrates either at start; the data is seeded through
/// its HTTP routes, whatever the store.
enum BenchStore {
    Postgres(BenchDatabase),
    Sqlite(PathBuf),
}

impl BenchStore {
    async fn create(settings: &Settings, files: &Path) -> anyhow::Result<Self> {
        Ok(match settings.backend {
            Backend::Postgres => Self::Postgres(BenchDatabase::create(&settings.admin_url).await?),
            Backend::Sqlite => Self::Sqlite(files.join("billing.sqlite3")),
        })
    }

    /// The server's `DATABASE_URL`.
    fn database_url(&self) -> String {
        match self {
            Self::Postgres(database) => database.url(),
            Self::Sqlite(path) => format!("sqlite://{}", path.display()),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Postgres(database) => format!("postgres, database {}", database.name),
            Self::Sqlite(path) => format!("sqlite, file {}", path.display()),
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn start_billing_server(
    settings: &Settings,
    database_url: &str,
    files: &Path,
) -> anyhow::Result<(ChildGuard, SocketAddr)> {
    ensure!(
        settings.server_bin.exists(),
        "server binary {} is missing; build it with `cargo build --release -p billing-server` \
         or set BENCH_SERVER_BIN",
        settings.server_bin.display()
    );
    let plans = files.join("plans.toml");
    std::fs::write(
        &plans,
        format!(
            "[[plans]]\nid = \"pro\"\nname = \"Pro\"\nstripe_price_id = \"{PRICE}\"\nmax_devices = 100000\n\
             features = [\"export\"]\n"
        ),
    )?;
    let key = files.join("license-signing-key.pem");
    std::fs::write(&key, SigningKey::to_pem(&SigningKey::generate_pkcs8()))?;
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mut command = std::process::Command::new(&settings.server_bin);
    for (name, _) in billing_server::config::VARIABLES {
        command.env_remove(name);
    }
    command
        .env("DATABASE_URL", database_url)
        .env("BILLING_ADDR", addr.to_string())
        .env("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
        .env("BILLING_JWT_SECRET", JWT_SECRET)
        .env("BILLING_PLANS", &plans)
        .env("BILLING_LICENSE_SIGNING_KEY", &key)
        .env("BILLING_DB_POOL_SIZE", settings.pool_size.to_string())
        .env("BILLING_RATE_LIMIT_PER_MINUTE", "100000000")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let child = command.spawn().with_context(|| format!("cannot start {}", settings.server_bin.display()))?;
    let mut guard = ChildGuard { child };
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = guard.exited() {
            bail!("billing-server exited during start-up ({status})");
        }
        if let Ok(response) = http.get(format!("http://{addr}/healthz")).send().await {
            if response.status() == 200 {
                return Ok((guard, addr));
            }
        }
        ensure!(Instant::now() < deadline, "billing-server did not answer /healthz within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// Fixtures: licenses issued through signed webhooks, then activated
// ---------------------------------------------------------------------------

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn jwt_for(user_id: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({ "sub": user_id, "exp": unix_now() + 3600 }),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("HS256 tokens encode")
}

/// A subscription event in the shape of tests/it/helpers.rs.
fn subscription_event(event_id: &str, kind: &str, created: i64, user: usize, cancel: bool, period_end: i64) -> Value {
    let sub = format!("sub_bench_{user}");
    let object = json!({
        "id": sub, "object": "subscription", "customer": format!("cus_bench_{user}"), "status": "active",
        "cancel_at_period_end": cancel, "cancel_at": null, "canceled_at": null, "ended_at": null,
        "trial_end": null, "metadata": { "user_id": format!("bench_user_{user}") }, "created": created,
        "items": { "object": "list", "data": [{
            "id": format!("si_{sub}"), "object": "subscription_item",
            "price": { "id": PRICE, "object": "price" },
            "current_period_start": created, "current_period_end": period_end
        }]}
    });
    json!({
        "id": event_id, "object": "event", "type": kind, "created": created, "api_version": "2025-03-31.basil",
        "livemode": false, "pending_webhooks": 1, "data": { "object": object }
    })
}

/// A webhook body and its `Stripe-Signature`, ready to send.
fn signed(event: &Value) -> (Vec<u8>, String) {
    let body = serde_json::to_vec(event).expect("JSON serializes");
    let signature = WebhookSecrets::parse(WEBHOOK_SECRET).expect("secret parses").sign(&body, unix_now());
    (body, signature)
}

async fn post_webhook(http: &reqwest::Client, base: &str, body: Vec<u8>, signature: &str) -> anyhow::Result<()> {
    let response = http
        .post(format!("{base}/api/stripe/webhooks/handler"))
        .header("Stripe-Signature", signature)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await?;
    let status = response.status();
    let text = response.text().await?;
    ensure!(status == 200 && text.contains("\"processed\""), "webhook answered {status}: {text}");
    Ok(())
}

#[derive(Debug, Clone)]
struct Fixture {
    key: String,
    fingerprint: String,
    token: String,
}

/// Times of the issuing events; updates must come later to be applied.
struct Timeline {
    created: i64,
    period_end: i64,
}

async fn issue_and_activate(
    http: &reqwest::Client,
    base: &str,
    user: usize,
    timeline: &Timeline,
) -> anyhow::Result<Fixture> {
    let event = subscription_event(
        &format!("evt_bench_create_{user}"),
        "customer.subscription.created",
        timeline.created,
        user,
        false,
        timeline.period_end,
    );
    let (body, signature) = signed(&event);
    post_webhook(http, base, body, &signature).await?;
    let licenses: Value = http
        .get(format!("{base}/api/licenses"))
        .bearer_auth(jwt_for(&format!("bench_user_{user}")))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let key = licenses["licenses"][0]["key"].as_str().context("no license was issued")?.to_owned();
    let fingerprint = format!("fp-bench-{user}");
    let response = http
        .post(format!("{base}/api/license/activate"))
        .json(&json!({ "license_key": key, "fingerprint": fingerprint, "name": "bench", "platform": "linux" }))
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await?;
    ensure!(status == 200 || status == 201, "activation answered {status}: {body}");
    let token = body["activation_token"].as_str().context("no activation token")?.to_owned();
    Ok(Fixture { key, fingerprint, token })
}

// ---------------------------------------------------------------------------
// /proc readings: memory and CPU time
// ---------------------------------------------------------------------------

/// A `kB` field of `/proc/<pid>/status`, in MiB.
fn proc_status_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
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

fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[derive(Debug, Clone, Copy)]
struct CpuSample {
    at: Instant,
    server: u64,
    bench: u64,
    postgres: u64,
    machine: (u64, u64),
}

impl CpuSample {
    fn take(server_pid: u32) -> Self {
        Self {
            at: Instant::now(),
            server: process_cpu_ns(server_pid),
            bench: process_cpu_ns(std::process::id()),
            postgres: postgres_cpu_ns(),
            machine: machine_jiffies(),
        }
    }
}

/// Cores used on average between two samples.
#[derive(Debug, Clone, Copy, Default)]
struct CpuSplit {
    server: f64,
    loadgen: f64,
    postgres: f64,
    machine: f64,
}

impl CpuSplit {
    fn between(a: &CpuSample, b: &CpuSample) -> Self {
        let wall = b.at.duration_since(a.at).as_nanos().max(1) as f64;
        let cores = |x: u64, y: u64| y.saturating_sub(x) as f64 / wall;
        let (busy, total) = (b.machine.0.saturating_sub(a.machine.0), b.machine.1.saturating_sub(a.machine.1));
        Self {
            server: cores(a.server, b.server),
            loadgen: cores(a.bench, b.bench),
            postgres: cores(a.postgres, b.postgres),
            machine: busy as f64 / total.max(1) as f64 * cpu_count() as f64,
        }
    }

    fn describe(&self) -> String {
        let other = (self.machine - self.server - self.loadgen - self.postgres).max(0.0);
        format!(
            "server {:.2}, load generator {:.2}, postgres {:.2}, other {:.2} = {:.2} of {} cores busy",
            self.server,
            self.loadgen,
            self.postgres,
            other,
            self.machine,
            cpu_count()
        )
    }
}

// ---------------------------------------------------------------------------
// The load generator: closed loop, keep-alive HTTP/1.1 on raw TcpStreams
// ---------------------------------------------------------------------------

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    buf.reserve(4096);
    if stream.read_buf(buf).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Reads one `Content-Length`-framed response; returns its status.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u16> {
    let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).map_err(|_| invalid("non-UTF-8 head"))?;
            let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).ok_or_else(|| invalid("no status"))?;
            let length: usize = head
                .split("\r\n")
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
                })
                .ok_or_else(|| invalid("no content-length"))?;
            let total = end + 4 + length;
            while buf.len() < total {
                read_more(stream, buf).await?;
            }
            buf.drain(..total);
            return Ok(status);
        }
        read_more(stream, buf).await?;
    }
}

async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// [`connect`] from a chosen loopback address: one source address has only
/// ~28,000 ephemeral ports towards one server port.
async fn connect_from(source: std::net::IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[derive(Default)]
struct ConnectionStats {
    requests: u64,
    non_200: u64,
    reconnects: u64,
    latencies_us: Vec<u32>,
}

async fn drive_connection(
    addr: SocketAddr,
    request: Arc<Vec<u8>>,
    start: Instant,
    end: Instant,
) -> std::io::Result<ConnectionStats> {
    let mut stats = ConnectionStats { latencies_us: Vec::with_capacity(1 << 16), ..Default::default() };
    let mut stream = connect(addr).await?;
    let mut buf = Vec::with_capacity(8192);
    loop {
        let sent = Instant::now();
        if sent >= end {
            return Ok(stats);
        }
        let answered = async {
            stream.write_all(&request).await?;
            read_response(&mut stream, &mut buf).await
        }
        .await;
        let status = match answered {
            Ok(status) => status,
            Err(_) => {
                stats.reconnects += 1;
                buf.clear();
                stream = connect(addr).await?;
                continue;
            }
        };
        if sent >= start {
            let micros = sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
            stats.latencies_us.push(micros);
            stats.requests += 1;
            if status != 200 {
                stats.non_200 += 1;
            }
        }
    }
}

struct LoadReport {
    requests: u64,
    non_200: u64,
    reconnects: u64,
    seconds: f64,
    latencies_us: Vec<u32>,
    cpu: CpuSplit,
}

impl LoadReport {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        percentile(&self.latencies_us, p) as f64 / 1000.0
    }

    fn max_ms(&self) -> f64 {
        self.latencies_us.last().copied().unwrap_or(0) as f64 / 1000.0
    }
}

/// `p` in 0..=100 of a sorted slice.
fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs `connections` closed-loop connections, connection `i` sending
/// `requests[i % requests.len()]`, for warm-up + measurement.
async fn drive(
    addr: SocketAddr,
    requests: &[Arc<Vec<u8>>],
    connections: usize,
    warmup: Duration,
    duration: Duration,
    server_pid: u32,
) -> anyhow::Result<LoadReport> {
    let start = Instant::now() + warmup;
    let end = start + duration;
    let tasks: Vec<_> = (0..connections)
        .map(|i| tokio::spawn(drive_connection(addr, requests[i % requests.len()].clone(), start, end)))
        .collect();
    tokio::time::sleep_until(start.into()).await;
    let before = CpuSample::take(server_pid);
    tokio::time::sleep_until(end.into()).await;
    let after = CpuSample::take(server_pid);
    let mut report = LoadReport {
        requests: 0,
        non_200: 0,
        reconnects: 0,
        seconds: duration.as_secs_f64(),
        latencies_us: Vec::new(),
        cpu: CpuSplit::between(&before, &after),
    };
    for task in tasks {
        let stats = task.await?.context("a load connection failed")?;
        report.requests += stats.requests;
        report.non_200 += stats.non_200;
        report.reconnects += stats.reconnects;
        report.latencies_us.extend(stats.latencies_us);
    }
    report.latencies_us.sort_unstable();
    Ok(report)
}

fn post_request(addr: SocketAddr, path: &str, body: &Value) -> Arc<Vec<u8>> {
    let body = serde_json::to_vec(body).expect("JSON serializes");
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    Arc::new(request)
}

fn print_load(name: &str, report: &LoadReport) {
    println!(
        "  {name}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} requests in {:.1} s, {} non-200, {} \
         reconnects)",
        report.rps(),
        report.percentile_ms(50.0),
        report.percentile_ms(99.0),
        report.max_ms(),
        report.requests,
        report.seconds,
        report.non_200,
        report.reconnects
    );
    println!("    CPU (cores): {}", report.cpu.describe());
}

// ---------------------------------------------------------------------------
// SSE: many raw streams, deliveries timed on arrival
// ---------------------------------------------------------------------------

/// One `subscription.updated` event read by a stream.
struct Delivery {
    /// 0-based count of such events on this stream (= the change round).
    nth: u32,
    cancel_at_period_end: bool,
    at: Instant,
}

struct StreamResult {
    license: usize,
    deliveries: Vec<Delivery>,
    ended_early: bool,
}

/// Opens one stream; `Ok(stream, leftover bytes)` after a 200 head.
/// Opens a stream from `source` (the system's choice when `None`).
async fn open_stream(
    addr: SocketAddr,
    path: &str,
    bearer: Option<&str>,
    source: Option<std::net::IpAddr>,
) -> Result<(TcpStream, Vec<u8>), String> {
    let attempt = async {
        let mut stream = match source {
            None => connect(addr).await.map_err(|e| format!("connect: {e}"))?,
            Some(ip) => connect_from(ip, addr).await.map_err(|e| format!("connect from {ip}: {e}"))?,
        };
        let authorization = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{authorization}\r\n");
        stream.write_all(request.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::with_capacity(1024);
        loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                if !head.starts_with("HTTP/1.1 200") {
                    return Err(head.lines().next().unwrap_or_default().to_owned());
                }
                buf.drain(..end + 4);
                return Ok((stream, buf));
            }
            read_more(&mut stream, &mut buf).await.map_err(|e| format!("read head: {e}"))?;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), attempt)
        .await
        .unwrap_or_else(|_| Err("no response head within 20 s".to_owned()))
}

/// Opens `count` idle streams to `path` (at most 256 opening at once) and
/// holds them, draining whatever arrives, until `stop`. Returns how many
/// opened and the first refusal.
async fn open_idle_streams(
    addr: SocketAddr,
    path: &'static str,
    count: usize,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (tokio::task::JoinSet<()>, usize, Option<String>) {
    let opening = Arc::new(tokio::sync::Semaphore::new(256));
    let (opened_tx, mut opened_rx) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
    let mut streams = tokio::task::JoinSet::new();
    for _ in 0..count {
        let (opening, opened_tx, mut stop) = (opening.clone(), opened_tx.clone(), stop.clone());
        streams.spawn(async move {
            let permit = opening.acquire_owned().await.expect("semaphore stays open");
            let opened = open_stream(addr, path, None, None).await;
            drop(permit);
            let (mut stream, _) = match opened {
                Ok(opened) => opened,
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                    return;
                }
            };
            let _ = opened_tx.send(Ok(()));
            let mut sink = [0u8; 256];
            loop {
                tokio::select! {
                    read = stream.read(&mut sink) => if !matches!(read, Ok(n) if n > 0) { return },
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        });
    }
    let (mut open, mut refusal) = (0, None);
    for _ in 0..count {
        match opened_rx.recv().await {
            Some(Ok(())) => open += 1,
            Some(Err(e)) => refusal = refusal.or(Some(e)),
            None => break,
        }
    }
    (streams, open, refusal)
}

/// Reads SSE lines (the chunked framing's size lines are ignored) until
/// `stop`, timing each `subscription.updated` event.
async fn hold_stream(
    mut stream: TcpStream,
    mut buf: Vec<u8>,
    license: usize,
    delivered: Arc<AtomicU64>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> StreamResult {
    let mut result = StreamResult { license, deliveries: Vec::new(), ended_early: false };
    let mut event = String::new();
    let mut arrived = Instant::now();
    loop {
        while let Some(newline) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=newline).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end();
            if let Some(name) = line.strip_prefix("event: ") {
                name.clone_into(&mut event);
            } else if let Some(data) = line.strip_prefix("data: ") {
                if event == "subscription.updated" {
                    let cancel = serde_json::from_str::<Value>(data)
                        .ok()
                        .and_then(|v| v["cancel_at_period_end"].as_bool())
                        .unwrap_or(false);
                    result.deliveries.push(Delivery {
                        nth: result.deliveries.len() as u32,
                        cancel_at_period_end: cancel,
                        at: arrived,
                    });
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
            } else if line.is_empty() {
                event.clear();
            }
        }
        if buf.capacity() > 4096 {
            buf.shrink_to(1024);
        }
        tokio::select! {
            read = read_more(&mut stream, &mut buf) => {
                arrived = Instant::now();
                if read.is_err() {
                    result.ended_early = true;
                    return result;
                }
            }
            _ = stop.wait_for(|s| *s) => return result,
        }
    }
}

struct SseReport {
    streams_open: usize,
    open_failures: Vec<String>,
    open_seconds: f64,
    rss_idle_mib: f64,
    rss_open_mib: f64,
    rss_after_mib: f64,
    hwm_mib: f64,
    bench_rss_mib: f64,
    changes: usize,
    expected: u64,
    delivered: u64,
    mismatched: u64,
    ended_early: usize,
    latencies_us: Vec<u64>,
    webhook_rtt_us: Vec<u64>,
    /// `BENCH_SSE_ONE_AT_A_TIME`: per change, webhook sent to the last of
    /// its streams reading it.
    last_stream_us: Vec<u64>,
    changes_seconds: f64,
    cpu_changes: CpuSplit,
}

async fn sse_phase(
    settings: &Settings,
    addr: SocketAddr,
    server: &ChildGuard,
    fixtures: &[Fixture],
    timeline: &Timeline,
) -> anyhow::Result<SseReport> {
    let pid = server.pid();
    let rss_idle_mib = proc_status_mib(pid, "VmRSS:").unwrap_or(0.0);
    let delivered = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (opened_tx, mut opened_rx) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
    let opening = Arc::new(tokio::sync::Semaphore::new(256));
    let mut streams = tokio::task::JoinSet::new();
    let started = Instant::now();
    let mut per_license = vec![0u64; fixtures.len()];
    let mut pace = (settings.open_per_sec > 0)
        .then(|| tokio::time::interval(Duration::from_secs_f64(1.0 / settings.open_per_sec as f64)));
    for i in 0..settings.sse_streams {
        if let Some(pace) = pace.as_mut() {
            pace.tick().await;
        }
        let source = (settings.sse_sources > 0)
            .then(|| std::net::IpAddr::from([127, 0, 0, 2 + (i % settings.sse_sources) as u8]));
        let license = i % fixtures.len();
        per_license[license] += 1;
        let fixture = fixtures[license].clone();
        let (opening, opened_tx, delivered, stop) =
            (opening.clone(), opened_tx.clone(), delivered.clone(), stop_rx.clone());
        streams.spawn(async move {
            let permit = opening.acquire_owned().await.expect("semaphore stays open");
            let path = format!("/api/events/{}", fixture.key);
            let opened = open_stream(addr, &path, Some(&fixture.token), source).await;
            drop(permit);
            match opened {
                Ok((stream, buf)) => {
                    let _ = opened_tx.send(Ok(()));
                    Some(hold_stream(stream, buf, license, delivered, stop).await)
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                    None
                }
            }
        });
    }
    drop(opened_tx);
    let mut streams_open = 0;
    let mut open_failures = Vec::new();
    // Every task reports once (and keeps its sender while it holds the stream).
    for _ in 0..settings.sse_streams {
        match opened_rx.recv().await {
            Some(Ok(())) => streams_open += 1,
            Some(Err(e)) => open_failures.push(e),
            None => break,
        }
    }
    let open_seconds = started.elapsed().as_secs_f64();
    println!(
        "  opened {streams_open} streams in {open_seconds:.1} s ({} failed{})",
        open_failures.len(),
        open_failures.first().map(|e| format!(", first: {e}")).unwrap_or_default()
    );
    // Let allocations settle, then read the server's memory with the streams connected.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_open_mib = proc_status_mib(pid, "VmRSS:").unwrap_or(0.0);
    println!("  server VmRSS: {rss_idle_mib:.1} MiB before the streams, {rss_open_mib:.1} MiB with them");

    // The changes, one after the other, round-robin over the licenses.
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");
    let rounds = settings.sse_changes.div_ceil(fixtures.len());
    let mut sent_at: Vec<Vec<Option<Instant>>> = vec![vec![None; fixtures.len()]; rounds];
    let mut webhook_rtt_us = Vec::with_capacity(settings.sse_changes);
    let mut last_stream_us = Vec::with_capacity(settings.sse_changes);
    let mut expected = 0u64;
    let cpu_before = CpuSample::take(pid);
    let changes_started = Instant::now();
    for change in 0..settings.sse_changes {
        let (round, license) = (change / fixtures.len(), change % fixtures.len());
        let event = subscription_event(
            &format!("evt_bench_update_{license}_{round}"),
            "customer.subscription.updated",
            timeline.created + 1 + round as i64,
            license,
            round.is_multiple_of(2),
            timeline.period_end,
        );
        let (body, signature) = signed(&event);
        let sent = Instant::now();
        post_webhook(&http, &base, body, &signature).await?;
        webhook_rtt_us.push(sent.elapsed().as_micros() as u64);
        sent_at[round][license] = Some(sent);
        expected += per_license[license];
        if settings.one_at_a_time {
            let deadline = Instant::now() + Duration::from_secs(15);
            while delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
                tokio::task::yield_now().await;
            }
            last_stream_us.push(sent.elapsed().as_micros() as u64);
        }
    }
    last_stream_us.sort_unstable();
    let changes_seconds = changes_started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(15);
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu_after = CpuSample::take(pid);
    let rss_after_mib = proc_status_mib(pid, "VmRSS:").unwrap_or(0.0);
    let hwm_mib = proc_status_mib(pid, "VmHWM:").unwrap_or(0.0);
    let bench_rss_mib = proc_status_mib(std::process::id(), "VmRSS:").unwrap_or(0.0);
    if !settings.pause.is_zero() {
        println!("  holding the streams open for {} s (server pid {pid})", settings.pause.as_secs());
        tokio::time::sleep(settings.pause).await;
    }
    stop_tx.send_replace(true);

    let mut latencies_us = Vec::with_capacity(expected as usize);
    let (mut mismatched, mut ended_early, mut counted) = (0u64, 0usize, 0u64);
    while let Some(joined) = streams.join_next().await {
        let Some(result) = joined? else { continue };
        ended_early += usize::from(result.ended_early);
        for delivery in &result.deliveries {
            counted += 1;
            let round = delivery.nth as usize;
            let sent = sent_at.get(round).and_then(|r| r[result.license]);
            match sent {
                Some(sent) if delivery.cancel_at_period_end == round.is_multiple_of(2) => {
                    latencies_us.push(delivery.at.saturating_duration_since(sent).as_micros() as u64);
                }
                _ => mismatched += 1,
            }
        }
    }
    latencies_us.sort_unstable();
    webhook_rtt_us.sort_unstable();
    Ok(SseReport {
        streams_open,
        open_failures,
        open_seconds,
        rss_idle_mib,
        rss_open_mib,
        rss_after_mib,
        hwm_mib,
        bench_rss_mib,
        changes: settings.sse_changes,
        expected,
        delivered: counted,
        mismatched,
        ended_early,
        latencies_us,
        webhook_rtt_us,
        last_stream_us,
        changes_seconds,
        cpu_changes: CpuSplit::between(&cpu_before, &cpu_after),
    })
}

/// Resident memory of the trivial server holding idle streaming responses:
/// what hyper's HTTP/1 connections cost before any application state.
struct StreamFloor {
    open: usize,
    rss_before_mib: f64,
    rss_open_mib: f64,
}

impl StreamFloor {
    fn per_stream_kib(&self) -> f64 {
        (self.rss_open_mib - self.rss_before_mib) * 1024.0 / self.open.max(1) as f64
    }
}

async fn idle_stream_floor(addr: SocketAddr, pid: u32, path: &'static str, count: usize) -> StreamFloor {
    let rss_before_mib = proc_status_mib(pid, "VmRSS:").unwrap_or(0.0);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (mut streams, open, refusal) = open_idle_streams(addr, path, count, stop_rx).await;
    if let Some(refusal) = refusal {
        println!("  baseline stream refused: {refusal}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_open_mib = proc_status_mib(pid, "VmRSS:").unwrap_or(0.0);
    stop_tx.send_replace(true);
    while streams.join_next().await.is_some() {}
    StreamFloor { open, rss_before_mib, rss_open_mib }
}

// ---------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------

/// The soft open-files limit of this process (children inherit it).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.trim_start_matches("Max open files").split_whitespace().next()?;
    if soft == "unlimited" {
        Some(u64::MAX)
    } else {
        soft.parse().ok()
    }
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let pool = match settings.backend {
        Backend::Postgres => format!("server pool {}", settings.pool_size),
        Backend::Sqlite => "server pool: PostgreSQL only".to_owned(),
    };
    println!(
        "license_load: store {}, {} CPUs, {} connections, {} s warm-up + {} s measurement, {} SSE streams over {} \
         licenses, {} changes, {pool}",
        settings.backend.name(),
        cpu_count(),
        settings.connections,
        settings.warmup.as_secs(),
        settings.duration.as_secs(),
        settings.sse_streams,
        settings.licenses,
        settings.sse_changes,
    );
    let needed = settings.sse_streams as u64 + 1000;
    let fd_limit = open_files_limit().unwrap_or(0);
    let sse_allowed = settings.sse_streams > 0 && fd_limit >= needed;
    if settings.sse_streams > 0 && !sse_allowed {
        println!(
            "  WARNING: the open-files limit is {fd_limit}, the SSE phase needs at least {needed} (in this process \
             and in the server it starts): run `ulimit -n {}` first. The SSE phase is skipped.",
            needed.max(20_000)
        );
    }

    // 1. Baseline.
    println!("[1/3] baseline: trivial hyper server (separate process)");
    let (baseline_child, baseline_addr) = start_baseline().await?;
    let baseline_request = post_request(
        baseline_addr,
        "/api/license/validate",
        &json!({ "license_key": "AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA", "fingerprint": "fp-bench-0" }),
    );
    let baseline = drive(
        baseline_addr,
        &[baseline_request],
        settings.connections,
        settings.warmup.min(Duration::from_secs(1)),
        settings.duration,
        baseline_child.pid(),
    )
    .await?;
    print_load("baseline", &baseline);
    drop(baseline_child);
    let baseline_sse = if sse_allowed {
        let mut floors = Vec::new();
        for (label, path) in [("hyper", "/sse"), ("raw tokio, no hyper", "/raw-sse")] {
            // A fresh process each: freed memory is not returned to the system.
            let (child, addr) = start_baseline().await?;
            let floor = idle_stream_floor(addr, child.pid(), path, settings.sse_streams).await;
            drop(child);
            println!(
                "  baseline idle streams ({label}): {} open, VmRSS {:.1} MiB before, {:.1} MiB with them",
                floor.open, floor.rss_before_mib, floor.rss_open_mib
            );
            floors.push((label, floor));
        }
        floors
    } else {
        Vec::new()
    };

    // 2. Validate, on the real server.
    let files = TempDir::create()?;
    let store = BenchStore::create(&settings, &files.0).await?;
    let (server, addr) = start_billing_server(&settings, &store.database_url(), &files.0).await?;
    let backend = settings.backend.name();
    println!(
        "[2/3] POST /api/license/validate: billing-server pid {} on {addr}, store {}",
        server.pid(),
        store.describe()
    );
    let setup_started = Instant::now();
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");
    let now = unix_now();
    let timeline = Timeline { created: now - 3600, period_end: now + 30 * 24 * 3600 };
    let fixtures: Vec<Fixture> = futures_util::stream::iter(
        (0..settings.licenses).map(|user| issue_and_activate(&http, &base, user, &timeline)),
    )
    .buffered(8)
    .collect::<Vec<_>>()
    .await
    .into_iter()
    .collect::<anyhow::Result<_>>()?;
    let check: Value = http
        .post(format!("{base}/api/license/validate"))
        .json(&json!({ "license_key": fixtures[0].key, "fingerprint": fixtures[0].fingerprint }))
        .send()
        .await?
        .json()
        .await?;
    ensure!(check["valid"] == true, "the fixture does not validate: {check}");
    println!(
        "  {} licenses issued (signed webhooks) and activated in {:.1} s; validate answers {}",
        fixtures.len(),
        setup_started.elapsed().as_secs_f64(),
        check["code"]
    );
    let validate_requests: Vec<_> = fixtures
        .iter()
        .map(|f| {
            post_request(addr, "/api/license/validate", &json!({ "license_key": f.key, "fingerprint": f.fingerprint }))
        })
        .collect();
    let validate =
        drive(addr, &validate_requests, settings.connections, settings.warmup, settings.duration, server.pid()).await?;
    print_load(&format!("validate ({backend})"), &validate);

    // 3. SSE.
    let sse = if sse_allowed {
        println!("[3/3] SSE ({backend}): {} streams over {} licenses", settings.sse_streams, fixtures.len());
        Some(sse_phase(&settings, addr, &server, &fixtures, &timeline).await?)
    } else {
        None
    };
    drop(server);
    drop(store);
    drop(files);

    print_summary(&settings, &baseline, &baseline_sse, &validate, sse.as_ref());
    Ok(())
}

fn print_summary(
    settings: &Settings,
    baseline: &LoadReport,
    baseline_sse: &[(&str, StreamFloor)],
    validate: &LoadReport,
    sse: Option<&SseReport>,
) {
    let b = settings.backend.name();
    // PostgreSQL's CPU, beside the server's; the sqlite store runs inside the server.
    let pg_note = if settings.backend == Backend::Sqlite { " (pg unused by sqlite: ~0)" } else { "" };
    let rows: Vec<(String, String, String)> = {
        let mut rows = vec![
            ("baseline (trivial hyper) req/s".into(), format!("{:.0}", baseline.rps()), "-".into()),
            (
                "baseline p50 / p99 latency".into(),
                format!("{:.2} / {:.2} ms", baseline.percentile_ms(50.0), baseline.percentile_ms(99.0)),
                "-".into(),
            ),
            (format!("validate ({b}) req/s"), format!("{:.0}", validate.rps()), format!(">= {TARGET_RPS:.0}")),
            (
                format!("validate ({b}) p50 / p99 latency"),
                format!("{:.2} / {:.2} ms", validate.percentile_ms(50.0), validate.percentile_ms(99.0)),
                format!("p99 < {TARGET_P99_MS} ms"),
            ),
            (
                format!("validate ({b}) non-200 / reconnects"),
                format!("{} / {}", validate.non_200, validate.reconnects),
                "0 / 0".into(),
            ),
            (
                format!("validate ({b}) CPU: server / loadgen / pg"),
                format!(
                    "{:.2} / {:.2} / {:.2} cores{pg_note}",
                    validate.cpu.server, validate.cpu.loadgen, validate.cpu.postgres
                ),
                "-".into(),
            ),
        ];
        for (label, floor) in baseline_sse {
            rows.push((
                format!("baseline idle streams VmRSS ({label})"),
                format!(
                    "{:.1} MiB with {} open ({:.1} KiB per stream)",
                    floor.rss_open_mib,
                    floor.open,
                    floor.per_stream_kib()
                ),
                "-".into(),
            ));
        }
        match sse {
            Some(s) => {
                rows.extend([
                    (
                        format!("SSE ({b}) streams open"),
                        format!(
                            "{} of {} ({:.1} s to open, {} refused)",
                            s.streams_open,
                            settings.sse_streams,
                            s.open_seconds,
                            s.open_failures.len()
                        ),
                        format!("{}", settings.sse_streams),
                    ),
                    (format!("server ({b}) VmRSS before streams"), format!("{:.1} MiB", s.rss_idle_mib), "-".into()),
                    (
                        format!("server ({b}) VmRSS with streams"),
                        format!("{:.1} MiB", s.rss_open_mib),
                        format!("< {TARGET_RSS_MB:.0} MB"),
                    ),
                    (
                        format!("server ({b}) VmRSS after events / VmHWM"),
                        format!("{:.1} / {:.1} MiB", s.rss_after_mib, s.hwm_mib),
                        "-".into(),
                    ),
                    (
                        format!("server ({b}) memory per stream"),
                        format!("{:.1} KiB", (s.rss_open_mib - s.rss_idle_mib) * 1024.0 / s.streams_open.max(1) as f64),
                        "-".into(),
                    ),
                    ("load generator VmRSS".into(), format!("{:.1} MiB", s.bench_rss_mib), "-".into()),
                    (
                        format!("SSE ({b}) changes / deliveries"),
                        format!(
                            "{} changes in {:.1} s; {} of {} delivered ({} mismatched, {} streams ended early)",
                            s.changes, s.changes_seconds, s.delivered, s.expected, s.mismatched, s.ended_early
                        ),
                        format!("{} of {}", s.expected, s.expected),
                    ),
                    (
                        format!("SSE ({b}) send-to-client p50 / p99 / max"),
                        format!(
                            "{:.2} / {:.2} / {:.2} ms",
                            percentile(&s.latencies_us, 50.0) as f64 / 1e3,
                            percentile(&s.latencies_us, 99.0) as f64 / 1e3,
                            s.latencies_us.last().copied().unwrap_or(0) as f64 / 1e3
                        ),
                        format!("p99 < {TARGET_SSE_P99_MS:.0} ms"),
                    ),
                    (
                        format!("SSE ({b}) webhook to last stream p50 / p99"),
                        match s.last_stream_us.is_empty() {
                            true => "- (BENCH_SSE_ONE_AT_A_TIME=1 measures it)".into(),
                            false => format!(
                                "{:.2} / {:.2} ms over {} changes, one at a time",
                                percentile(&s.last_stream_us, 50.0) as f64 / 1e3,
                                percentile(&s.last_stream_us, 99.0) as f64 / 1e3,
                                s.last_stream_us.len()
                            ),
                        },
                        "p99 < 20 ms (one license's 10,000 streams)".into(),
                    ),
                    (
                        format!("webhook ({b}) round trip p50 / p99"),
                        format!(
                            "{:.2} / {:.2} ms",
                            percentile(&s.webhook_rtt_us, 50.0) as f64 / 1e3,
                            percentile(&s.webhook_rtt_us, 99.0) as f64 / 1e3
                        ),
                        "-".into(),
                    ),
                    (
                        format!("CPU during changes ({b}): srv / pg / all"),
                        format!(
                            "{:.2} / {:.2} / {:.2} cores{pg_note}",
                            s.cpu_changes.server, s.cpu_changes.postgres, s.cpu_changes.machine
                        ),
                        "-".into(),
                    ),
                ]);
            }
            None => rows.push((format!("SSE ({b}) phase"), "skipped (open-files limit)".into(), "-".into())),
        }
        rows
    };
    let widths = rows.iter().fold((11, 5, 6), |(a, b, c), (x, y, z)| (a.max(x.len()), b.max(y.len()), c.max(z.len())));
    println!();
    let sharing = match settings.backend {
        Backend::Postgres => "the server, the load generator and PostgreSQL",
        Backend::Sqlite => "the server (with its embedded SQLite) and the load generator",
    };
    println!(
        "license_load summary · store: {b} ({} CPUs shared by {sharing}; {} connections)",
        cpu_count(),
        settings.connections
    );
    println!(
        "| {:<a$} | {:<b$} | {:<c$} |",
        "measurement",
        "value",
        "target",
        a = widths.0,
        b = widths.1,
        c = widths.2
    );
    println!("|{}|{}|{}|", "-".repeat(widths.0 + 2), "-".repeat(widths.1 + 2), "-".repeat(widths.2 + 2));
    for (name, value, target) in &rows {
        println!("| {name:<a$} | {value:<b$} | {target:<c$} |", a = widths.0, b = widths.1, c = widths.2);
    }
}
