//! A thin hyper 1.x HTTP front for billing-core: routing, authentication,
//! JSON in and out.

pub mod admin;
pub mod auth;
pub mod client_addr;
pub mod config;
pub mod config_file;
pub mod error;
pub mod http;
pub mod last_event_id;
pub mod metrics;
pub mod ratelimit;
pub mod routes;
pub mod sse;
pub mod stream_conn;
pub mod stripe_cli;
pub mod views;

use anyhow::Context;
use auth::JwtVerifier;
use billing_core::certificate::SigningKey;
use billing_core::events::{EventHub, HubConfig};
use billing_core::licensing::LicensingConfig;
use billing_core::storage::any::AnyStore;
use billing_core::storage::Store;
use billing_core::storage::StoreError;
use billing_core::stripe::{StripeClient, WebhookSecrets};
use billing_core::vendor_webhooks::VendorWebhookSettings;
use billing_core::{Billing, BillingConfig};
use config::Config;
use hyper::header::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use ratelimit::{AttemptLimiter, FailureLimiter};
use secrecy::ExposeSecret;
use std::future::Future;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

/// Everything a request handler needs.
pub struct AppState {
    /// The engine.
    pub billing: Billing<AnyStore>,
    /// Live event fan-out.
    pub hub: Arc<EventHub<AnyStore>>,
    /// Dashboard token verification; None while `BILLING_JWT_SECRET` is unset.
    pub jwt: Option<JwtVerifier>,
    /// The base of portal session URLs (`BILLING_PUBLIC_URL`).
    pub public_url: Option<String>,
    /// Request body cap.
    pub max_body_bytes: usize,
    /// How long a request body may take to arrive whole.
    pub body_timeout: Duration,
    /// Places for request bodies still arriving (see [`http::GuardedBody`]).
    pub pending_bodies: Arc<tokio::sync::Semaphore>,
    /// How long a connection may take to send a request head, and may sit
    /// idle between keep-alive requests.
    pub header_read_timeout: Duration,
    /// The route table.
    pub router: routes::Router,
    /// Proxies whose forwarding headers name the client (`ClientAddr`).
    pub trusted_proxies: client_addr::TrustedProxies,
    /// Failed lookups per client address.
    pub failures_by_addr: FailureLimiter<IpAddr>,
    /// Failed activations per license key (hash).
    pub failures_by_key: FailureLimiter<Vec<u8>>,
    /// Trial requests per client address, every one counted.
    pub trials_by_addr: AttemptLimiter<IpAddr>,
    /// How often the reaper looks for dead devices.
    pub reaper_interval: Duration,
    /// Flips to true when the server shuts down (ends SSE streams).
    pub shutdown: watch::Sender<bool>,
    /// Prometheus metrics.
    pub metrics: metrics::Metrics,
    next_request_id: AtomicU64,
}

/// Server settings beyond the engine's.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Dashboard JWT secret.
    pub jwt_secret: Option<Vec<u8>>,
    /// The server's address as browsers reach it (portal session URLs).
    pub public_url: Option<String>,
    /// Request body cap.
    pub max_body_bytes: usize,
    /// How long a request body may take to arrive whole (408 after).
    pub body_timeout: Duration,
    /// How many request bodies may be arriving at once (503 beyond).
    pub max_pending_bodies: usize,
    /// How long a connection may take to send a request head, and may sit
    /// idle between keep-alive requests.
    pub header_read_timeout: Duration,
    /// Failed lookups per address (and per key) and minute.
    pub rate_limit_per_minute: u32,
    /// Trial requests per address and hour.
    pub trials_per_hour: u32,
    /// Event hub settings.
    pub hub: HubConfig,
    /// Proxies whose forwarding headers name the client.
    pub trusted_proxies: client_addr::TrustedProxies,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            public_url: None,
            max_body_bytes: 1 << 20,
            body_timeout: Duration::from_secs(config::DEFAULT_BODY_TIMEOUT_SECS),
            max_pending_bodies: config::DEFAULT_MAX_PENDING_BODIES,
            header_read_timeout: Duration::from_secs(30),
            rate_limit_per_minute: 60,
            trials_per_hour: config::DEFAULT_TRIALS_PER_HOUR,
            hub: HubConfig::default(),
            trusted_proxies: client_addr::TrustedProxies::default(),
        }
    }
}

impl AppState {
    /// Connects the store, applies migrations and wires the engine.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let store = AnyStore::open(&config.store, config.pool_size)
            .await
            .map_err(|e| anyhow::anyhow!(billing_core::billing::error_chain(&e)))
            .context("cannot open the store")?;
        store.migrate().await.map_err(|e| anyhow::anyhow!(billing_core::billing::error_chain(&e)))?;
        let billing = engine(store, config)?;
        let options = ServerOptions {
            jwt_secret: config.jwt_secret.as_ref().map(|s| s.expose_secret().as_bytes().to_vec()),
            public_url: config.public_url.clone(),
            max_body_bytes: config.max_body_bytes,
            body_timeout: Duration::from_secs(config.body_timeout_secs),
            max_pending_bodies: config.max_pending_bodies,
            rate_limit_per_minute: config.rate_limit_per_minute,
            trials_per_hour: config.trials_per_hour,
            trusted_proxies: config.trusted_proxies.clone(),
            hub: HubConfig {
                retention: time::Duration::days(i64::from(config.outbox_retention_days)),
                ..HubConfig::default()
            },
            ..ServerOptions::default()
        };
        Ok(Self::new(billing, options).await?)
    }

    /// Wires an already-built engine.
    pub async fn new(billing: Billing<AnyStore>, options: ServerOptions) -> Result<Self, StoreError> {
        let hub =
            EventHub::start_with_view(billing.store().clone(), options.hub, Some(billing.validation_view().clone()))
                .await?;
        let per_minute = NonZeroU32::new(options.rate_limit_per_minute.max(1)).expect("at least one");
        let reaper_interval = billing.sweep_interval();
        Ok(Self {
            billing,
            hub,
            jwt: options.jwt_secret.map(|s| JwtVerifier::new(&s)),
            public_url: options.public_url,
            max_body_bytes: options.max_body_bytes,
            body_timeout: options.body_timeout,
            pending_bodies: Arc::new(tokio::sync::Semaphore::new(options.max_pending_bodies)),
            header_read_timeout: options.header_read_timeout,
            router: routes::Router::new(),
            trusted_proxies: options.trusted_proxies,
            failures_by_addr: FailureLimiter::per_minute(per_minute),
            failures_by_key: FailureLimiter::per_minute(per_minute),
            trials_by_addr: AttemptLimiter::per_hour(
                NonZeroU32::new(options.trials_per_hour.max(1)).expect("at least one"),
            ),
            reaper_interval,
            shutdown: watch::channel(false).0,
            metrics: metrics::Metrics::new(),
            next_request_id: AtomicU64::new(1),
        })
    }
}

/// The engine the configuration describes, over an opened store (the
/// license-signing key is loaded, or created in the data directory).
pub fn engine(store: AnyStore, config: &Config) -> anyhow::Result<Billing<AnyStore>> {
    let stripe = config
        .stripe_secret_key
        .as_ref()
        .map(|key| StripeClient::new(key.expose_secret(), config.stripe_api_base.clone()));
    engine_with_stripe(store, config, stripe)
}

/// [`engine`] with this Stripe client (the backfill's, rate-limited).
pub fn engine_with_stripe(
    store: AnyStore,
    config: &Config,
    stripe: Option<StripeClient>,
) -> anyhow::Result<Billing<AnyStore>> {
    let signing_key = match &config.license_signing_key {
        Some(path) => load_signing_key(path)?,
        None => load_or_create_signing_key(&config.data_dir.join("license-signing-key.pem"))?,
    };
    let mut licensing = LicensingConfig::new(Arc::new(signing_key));
    licensing.heartbeat_window = time::Duration::seconds(config.heartbeat_window_secs as i64);
    licensing.offline_ttl = time::Duration::seconds(config.offline_ttl_secs as i64);
    Ok(Billing::new(
        store,
        BillingConfig::new(config.plans.clone(), licensing)
            .with_grace(time::Duration::days(i64::from(config.grace_days)))
            .with_webhook_secrets(config.webhook_secret.as_ref().and_then(|s| WebhookSecrets::parse(s.expose_secret())))
            .with_stripe(stripe)
            .with_validation_cache(config.validation_cache_licenses)
            .with_vendor_webhooks(VendorWebhookSettings {
                retry_schedule: config.webhook_retry_schedule.clone(),
                allow_private: config.webhook_allow_private,
                ..VendorWebhookSettings::default()
            }),
    ))
}

/// Reads the license-signing key from `path` (PKCS#8, PEM or DER).
pub fn load_signing_key(path: &std::path::Path) -> anyhow::Result<SigningKey> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read the license signing key {}", path.display()))?;
    SigningKey::from_pkcs8(&bytes).with_context(|| {
        format!("{} is not an Ed25519 PKCS#8 key; create one with `billing-server keygen`", path.display())
    })
}

/// The key kept in the data directory (created owner-only, 0700, if
/// missing), created on first start. Several instances on one PostgreSQL
/// must share one key: set `BILLING_LICENSE_SIGNING_KEY` for them instead.
pub fn load_or_create_signing_key(path: &std::path::Path) -> anyhow::Result<SigningKey> {
    if !path.exists() {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            billing_core::storage::sqlite::create_private_dir(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        write_new_key(path)?;
        tracing::info!(path = %path.display(), "generated a license signing key");
    }
    load_signing_key(path)
}

/// Writes a new PKCS#8 PEM key to `path`, which must not exist (mode 0600,
/// whatever the umask).
pub fn write_new_key(path: &std::path::Path) -> anyhow::Result<SigningKey> {
    use std::io::Write;
    let der = SigningKey::generate_pkcs8();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file =
        options.open(path).with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    // The umask only ever removes bits; this also undoes an owner-unreadable one.
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(SigningKey::to_pem(&der).as_bytes())?;
    file.sync_all()?;
    Ok(SigningKey::from_pkcs8(&der).expect("a generated key loads"))
}

/// Starts the engine's background work (`Billing::run_background`: the
/// event hub, the reaper of dead devices and lapsed licenses, the vendor's
/// webhooks) and the pruning of the failed-lookup limiters; all stop on
/// shutdown.
fn spawn_background(state: &Arc<AppState>) {
    let mut stop = state.shutdown.subscribe();
    let (billing, hub) = (state.billing.clone(), state.hub.clone());
    tokio::spawn(async move {
        billing
            .run_background(Some(hub), async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
    });
    // Parked event streams have no task: one looks at them all each
    // second (a client that hung up frees its stream) and keeps them alive.
    let parked = state.clone();
    tokio::spawn(async move {
        let mut stop = parked.shutdown.subscribe();
        let mut tick = tokio::time::interval(PARKED_TICK);
        let keep_alive_every = (sse::KEEP_ALIVE.as_secs() / PARKED_TICK.as_secs()).max(1);
        for n in 1u64.. {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tick.tick() => {}
            }
            parked.hub.tick_parked(n % keep_alive_every == 0);
        }
    });
    let state = state.clone();
    tokio::spawn(async move {
        let mut stop = state.shutdown.subscribe();
        let mut tick = tokio::time::interval(state.reaper_interval);
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tick.tick() => {}
            }
            state.failures_by_addr.prune();
            state.failures_by_key.prune();
            state.trials_by_addr.prune();
        }
    });
}

/// The client's address: the connection's peer, or the client a trusted
/// proxy names (see [`client_addr::TrustedProxies::client_addr`]).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

/// How long in-flight requests may run after shutdown is requested.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves on an already-bound listener until `shutdown` resolves, then stops
/// accepting and lets in-flight requests finish (up to [`SHUTDOWN_GRACE`]).
pub async fn serve(listener: TcpListener, state: Arc<AppState>, shutdown: impl Future<Output = ()>) {
    spawn_background(&state);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    // hyper restarts the header timer whenever a connection goes idle, so it
    // also ends keep-alive connections that send nothing more.
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(state.header_read_timeout)
        .max_buf_size(CONNECTION_BUFFER_BYTES);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (state, http1, watcher) = (state.clone(), builder.clone(), graceful.watcher());
                tokio::spawn(serve_connection(state, http1, watcher, stream, peer));
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    // Ends SSE streams (with a final `retry:`) so the connections can close.
    state.shutdown.send_replace(true);
    state.hub.close_parked();
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!("in-flight requests did not finish within the shutdown grace period");
    }
}

/// How often parked event streams are looked at.
const PARKED_TICK: Duration = Duration::from_secs(1);

/// The most hyper buffers per connection for reading a request head (and for
/// writing). hyper's default is ~400 KiB, which a client trickling a head
/// could hold for the whole header timeout; this is just above the 64 KiB a
/// request line needs before hyper calls its URI too long (414).
const CONNECTION_BUFFER_BYTES: usize = 80 * 1024;

async fn serve_connection(
    state: Arc<AppState>,
    http1: hyper::server::conn::http1::Builder,
    watcher: hyper_util::server::graceful::Watcher,
    mut stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
) {
    use stream_conn::FirstRequest;
    let mut stopping = state.shutdown.subscribe();
    let head_timeout = state.header_read_timeout;
    let first = tokio::select! {
        first = stream_conn::read_first_request(&mut stream, head_timeout) => first,
        _ = stopping.wait_for(|stopping| *stopping) => return,
    };
    let prefix = match first {
        Ok(FirstRequest::EventStream(head)) => {
            // Holding the watcher makes shutdown wait for the stream's last frame.
            let _watching = watcher;
            // Boxed, as the hyper branch below: this task lives as long as
            // its connection, so it should not reserve room for both.
            return Box::pin(stream_conn::serve_event_stream(state, stream, peer, head)).await;
        }
        Ok(FirstRequest::Other(prefix)) => prefix,
        Ok(FirstRequest::Nothing) | Err(_) => return,
    };
    let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let deadline = tokio::time::Instant::now() + state.body_timeout;
        let places = state.pending_bodies.clone();
        let mut request =
            request.map(|body| http_body_util::BodyExt::boxed(http::GuardedBody::new(body, deadline, places)));
        let client = state.trusted_proxies.client_addr(peer.ip(), request.headers());
        request.extensions_mut().insert(ClientAddr(client));
        // Boxed so the connection's task does not reserve room for the
        // largest handler future for as long as the connection lives.
        Box::pin(handle(state.clone(), request))
    });
    let io = TokioIo::new(stream_conn::Rewind::new(prefix, stream));
    if let Err(e) = Box::pin(watcher.watch(http1.serve_connection(io, service))).await {
        tracing::debug!(error = %e, "connection closed with error");
    }
}

/// Answers one request: request id, route label, metrics and the log line
/// around [`routes::dispatch`].
pub(crate) async fn handle(
    state: Arc<AppState>,
    request: hyper::Request<http::RequestBody>,
) -> Result<http::Response, std::convert::Infallible> {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("req-{}", state.next_request_id.fetch_add(1, Ordering::Relaxed)));
    let route = routes::route_label(&state, request.method(), request.uri().path());
    let method = request.method().clone();
    let client = request.extensions().get::<ClientAddr>().map_or_else(String::new, |a| a.0.to_string());
    let span = tracing::info_span!("request", id = %request_id, method = %method, route, client = %client);
    let started = std::time::Instant::now();
    state.metrics.in_flight.inc();
    let refusal = refuse_nul_in_uri(request.uri()).err();
    let mut response = match refusal {
        Some(refusal) => refusal.into_response(),
        None => routes::dispatch(state.clone(), request).instrument(span.clone()).await,
    };
    state.metrics.in_flight.dec();
    let elapsed = started.elapsed().as_secs_f64();
    state.metrics.observe_request(route, method.as_str(), response.status().as_u16(), elapsed);
    span.in_scope(|| {
        tracing::info!(status = response.status().as_u16(), elapsed_ms = elapsed * 1e3, "done");
    });
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    Ok(response)
}

/// A percent-encoded NUL anywhere in the path or query is refused here, for
/// every route: decoded, it would reach the store, which cannot keep it (a
/// raw NUL byte never gets this far: the request line parser refuses it, as
/// header parsing refuses one in a header value).
fn refuse_nul_in_uri(uri: &hyper::Uri) -> Result<(), error::ApiError> {
    let target = uri.path_and_query().map_or("", |p| p.as_str()).as_bytes();
    if target.windows(3).any(|w| w == b"%00") {
        return Err(error::ApiError::bad_request("INVALID_REQUEST", "the request URI must not contain NUL (%00)"));
    }
    Ok(())
}
