//! A thin hyper 1.x HTTP front for billing-core: routing, authentication,
//! JSON in and out.

pub mod auth;
pub mod config;
pub mod error;
pub mod http;
pub mod routes;
pub mod views;

use auth::JwtVerifier;
use billing_core::storage::postgres::PgStore;
use billing_core::storage::Store;
use billing_core::stripe::{StripeClient, WebhookSecrets};
use billing_core::{Billing, BillingConfig};
use config::Config;
use hyper::header::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use secrecy::ExposeSecret;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tracing::Instrument;

/// Everything a request handler needs.
pub struct AppState {
    /// The engine.
    pub billing: Billing<PgStore>,
    /// Dashboard token verification; None while `BILLING_JWT_SECRET` is unset.
    pub jwt: Option<JwtVerifier>,
    /// Request body cap.
    pub max_body_bytes: usize,
    /// The route table.
    pub router: routes::Router,
    next_request_id: AtomicU64,
}

impl AppState {
    /// Connects the store, applies migrations and wires the engine.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let store = PgStore::connect(&config.database_url, config.pool_size)?;
        store.migrate().await.map_err(|e| anyhow::anyhow!(billing_core::billing::error_chain(&e)))?;
        let stripe = config
            .stripe_secret_key
            .as_ref()
            .map(|key| StripeClient::new(key.expose_secret(), config.stripe_api_base.clone()));
        let billing = Billing::new(
            store,
            BillingConfig {
                plans: config.plans.clone(),
                grace: time::Duration::days(i64::from(config.grace_days)),
                webhook_secrets: config.webhook_secret.as_ref().and_then(|s| WebhookSecrets::parse(s.expose_secret())),
                stripe,
            },
        );
        Ok(Self::new(
            billing,
            config.jwt_secret.as_ref().map(|s| s.expose_secret().as_bytes().to_vec()),
            config.max_body_bytes,
        ))
    }

    /// Wires an already-built engine.
    pub fn new(billing: Billing<PgStore>, jwt_secret: Option<Vec<u8>>, max_body_bytes: usize) -> Self {
        Self {
            billing,
            jwt: jwt_secret.map(|s| JwtVerifier::new(&s)),
            max_body_bytes,
            router: routes::Router::new(),
            next_request_id: AtomicU64::new(1),
        }
    }
}

/// How long in-flight requests may run after shutdown is requested.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves on an already-bound listener until `shutdown` resolves, then stops
/// accepting and lets in-flight requests finish (up to [`SHUTDOWN_GRACE`]).
pub async fn serve(listener: TcpListener, state: Arc<AppState>, shutdown: impl Future<Output = ()>) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(Duration::from_secs(30));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let service = service_fn(move |request| handle(state.clone(), request));
                let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "connection closed with error");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!("in-flight requests did not finish within the shutdown grace period");
    }
}

async fn handle(
    state: Arc<AppState>,
    request: hyper::Request<hyper::body::Incoming>,
) -> Result<http::Response, std::convert::Infallible> {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("req-{}", state.next_request_id.fetch_add(1, Ordering::Relaxed)));
    let route = routes::route_label(&state, request.method(), request.uri().path());
    let span = tracing::info_span!("request", id = %request_id, method = %request.method(), route);
    let started = std::time::Instant::now();
    let mut response = routes::dispatch(state, request).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::info!(status = response.status().as_u16(), elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "done");
    });
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    Ok(response)
}
