//! The `billing-server` binary: `serve` (default) and `migrate`.

use anyhow::Context;
use billing_core::storage::any::{AnyStore, StoreLocation};
use billing_core::storage::Store;
use billing_server::config::Config;
use billing_server::AppState;
use clap::{Parser, Subcommand};
use std::sync::Arc;

#[derive(Parser)]
#[command(version, about = "Stripe-synced billing and desktop licensing server")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Apply migrations and serve HTTP (the default).
    Serve,
    /// Apply pending migrations and exit.
    Migrate,
    /// Write a new Ed25519 license-signing key (PKCS#8 PEM) for BILLING_LICENSE_SIGNING_KEY.
    Keygen {
        /// Where to write the key; an existing file is never overwritten.
        #[arg(long, default_value = "license-signing-key.pem")]
        out: std::path::PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Keygen { out }) = &cli.command {
        return keygen(out);
    }
    let config = Config::from_env()?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if config.log_json {
        tracing_subscriber::fmt().json().with_current_span(true).with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    match cli.command.unwrap_or(Command::Serve) {
        Command::Keygen { .. } => unreachable!("handled above"),
        Command::Migrate => {
            let store = AnyStore::open(&config.store, 1)
                .await
                .map_err(|e| anyhow::anyhow!(billing_core::billing::error_chain(&e)))?;
            store.migrate().await.map_err(|e| anyhow::anyhow!(billing_core::billing::error_chain(&e)))?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Serve => {
            let state = Arc::new(AppState::build(&config).await.context("failed to start")?);
            let listener = tokio::net::TcpListener::bind(config.addr)
                .await
                .with_context(|| format!("cannot listen on {}", config.addr))?;
            let store = match &config.store {
                StoreLocation::Postgres(_) => "postgresql".to_owned(),
                StoreLocation::Sqlite(path) => format!("embedded sqlite at {}", path.display()),
            };
            if !state.billing.webhooks_enabled() {
                tracing::warn!("Stripe webhooks are off (503) until STRIPE_WEBHOOK_SECRET is set");
            }
            if state.jwt.is_none() {
                tracing::warn!("dashboard routes are off (503) until BILLING_JWT_SECRET is set");
            }
            if state.billing.config().stripe.is_none() {
                tracing::warn!("dashboard actions through Stripe are off (503) until STRIPE_SECRET_KEY is set");
            }
            tracing::info!(
                addr = %listener.local_addr()?,
                store = %store,
                webhooks = state.billing.webhooks_enabled(),
                dashboard = state.jwt.is_some(),
                stripe_actions = state.billing.config().stripe.is_some(),
                plans = state.billing.plans().all().len(),
                "billing-server listening"
            );
            println!(
                "billing-server listening on http://{} · store: {store} · webhooks: {} · dashboard: {} · stripe actions: {}",
                listener.local_addr()?,
                on_off(state.billing.webhooks_enabled()),
                on_off(state.jwt.is_some()),
                on_off(state.billing.config().stripe.is_some()),
            );
            billing_server::serve(listener, state, shutdown_signal()).await;
            tracing::info!("stopped");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = terminate => {} }
}

fn keygen(out: &std::path::Path) -> anyhow::Result<()> {
    let key = billing_server::write_new_key(out)?;
    println!("wrote {} (kid {})", out.display(), key.kid());
    println!("set BILLING_LICENSE_SIGNING_KEY={} and embed this public key in your app:", out.display());
    println!("{}", key.public_jwk());
    Ok(())
}

fn on_off(enabled: bool) -> &'static str {
    if enabled {
        "on"
    } else {
        "off"
    }
}
