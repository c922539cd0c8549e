//! The `billing-server` binary: `serve` (default) and `migrate`.

use anyhow::Context;
use billing_core::storage::postgres::PgStore;
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
            let store = PgStore::connect(&config.database_url, 1)?;
            store.migrate().await.map_err(|e| anyhow::anyhow!(billing_core::billing::error_chain(&e)))?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Serve => {
            let state = Arc::new(AppState::build(&config).await.context("failed to start")?);
            let listener = tokio::net::TcpListener::bind(config.addr)
                .await
                .with_context(|| format!("cannot listen on {}", config.addr))?;
            tracing::info!(
                addr = %listener.local_addr()?,
                webhooks = state.billing.webhooks_enabled(),
                dashboard = state.jwt.is_some(),
                plans = state.billing.plans().all().len(),
                "billing-server listening"
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
    use billing_core::certificate::SigningKey;
    use std::io::Write;
    let der = SigningKey::generate_pkcs8();
    let key = SigningKey::from_pkcs8(&der).expect("a generated key loads");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file =
        options.open(out).with_context(|| format!("cannot create {} (it must not exist yet)", out.display()))?;
    file.write_all(SigningKey::to_pem(&der).as_bytes())?;
    println!("wrote {} (kid {})", out.display(), key.kid());
    println!("set BILLING_LICENSE_SIGNING_KEY={} and embed this public key in your app:", out.display());
    println!("{}", key.public_jwk());
    Ok(())
}
