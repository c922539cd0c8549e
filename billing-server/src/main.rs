//! The `billing-server` binary: `serve` (default), `migrate`, `keygen` and
//! `admin-token`.

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
    /// Create, list and revoke admin API tokens (the store is the one
    /// DATABASE_URL names, as for `serve`).
    AdminToken {
        #[command(subcommand)]
        command: AdminTokenCommand,
    },
}

#[derive(Subcommand)]
enum AdminTokenCommand {
    /// Create a token and print it, alone on the last line of stdout. It is
    /// shown once: only its hash is stored.
    Create {
        /// A unique name (letters, digits, '-', '_', '.'); the audit trail
        /// names the token's actions `admin:<name>`.
        #[arg(long)]
        name: String,
        /// Comma-separated: licenses:read, licenses:write, customers:read,
        /// devices:write, events:read, stripe:write, webhooks:write, or * for
        /// all (the default).
        #[arg(long, default_value = "*")]
        scopes: String,
    },
    /// List tokens (never the tokens themselves).
    List,
    /// Revoke the live token with this name: it stops working at once.
    Revoke {
        /// The token's name.
        #[arg(long)]
        name: String,
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
    if matches!(cli.command, Some(Command::AdminToken { .. })) {
        // stdout is the command's answer (scripts capture the token from
        // it); the store's start-up chatter is not.
        let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    } else if config.log_json {
        tracing_subscriber::fmt().json().with_current_span(true).with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    match cli.command.unwrap_or(Command::Serve) {
        Command::Keygen { .. } => unreachable!("handled above"),
        Command::AdminToken { command } => admin_token(&config, command).await,
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
                StoreLocation::Postgres(_) => match state.billing.store() {
                    AnyStore::Postgres(pg) => format!("postgresql (sslmode={})", pg.ssl_mode()),
                    _ => "postgresql".to_owned(),
                },
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
            // Handlers installed before the first request is answered: a
            // signal that arrived before them would kill the process.
            let shutdown = shutdown_signal()?;
            billing_server::serve(listener, state, shutdown).await;
            tracing::info!("stopped");
            Ok(())
        }
    }
}

/// Ctrl-C or SIGTERM, whichever comes first, listened for from now on.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    #[cfg(unix)]
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot listen for SIGINT")?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! { _ = terminate.recv() => {}, _ = interrupt.recv() => {} }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    })
}

fn keygen(out: &std::path::Path) -> anyhow::Result<()> {
    let key = billing_server::write_new_key(out)?;
    println!("wrote {} (kid {})", out.display(), key.kid());
    println!("set BILLING_LICENSE_SIGNING_KEY={} and embed this public key in your app:", out.display());
    println!("{}", key.public_jwk());
    Ok(())
}

async fn admin_token(config: &Config, command: AdminTokenCommand) -> anyhow::Result<()> {
    use billing_core::domain::admin::Scopes;
    let chain = |e: &(dyn std::error::Error + 'static)| anyhow::anyhow!(billing_core::billing::error_chain(e));
    let store = AnyStore::open(&config.store, 1).await.map_err(|e| chain(&e))?;
    store.migrate().await.map_err(|e| chain(&e))?;
    let billing = billing_server::engine(store, config)?;
    match command {
        AdminTokenCommand::Create { name, scopes } => {
            let scopes = Scopes::parse_list(&scopes)?;
            let (record, token) = billing.create_admin_token(&name, scopes).await.map_err(|e| chain(&e))?;
            println!(
                "created admin token {:?} with scopes {}; it is shown once:",
                record.name,
                record.scopes.names().join(",")
            );
            println!("{}", token.expose());
        }
        AdminTokenCommand::List => {
            let tokens = billing.admin_tokens().await.map_err(|e| chain(&e))?;
            let seconds =
                |t: time::OffsetDateTime| billing_core::billing::rfc3339(t.replace_nanosecond(0).unwrap_or(t));
            let when = |t: Option<time::OffsetDateTime>| t.map_or_else(|| "-".to_owned(), seconds);
            println!("{:<24} {:<8} {:<21} {:<21} scopes", "name", "status", "created", "last used");
            for t in tokens {
                let status = if t.revoked_at.is_some() { "revoked" } else { "live" };
                println!(
                    "{:<24} {:<8} {:<21} {:<21} {}",
                    t.name,
                    status,
                    seconds(t.created_at),
                    when(t.last_used_at),
                    t.scopes.names().join(",")
                );
            }
        }
        AdminTokenCommand::Revoke { name } => {
            if !billing.revoke_admin_token(&name).await.map_err(|e| chain(&e))? {
                anyhow::bail!("no live admin token is named {name:?}");
            }
            println!("revoked admin token {name:?}");
        }
    }
    Ok(())
}

fn on_off(enabled: bool) -> &'static str {
    if enabled {
        "on"
    } else {
        "off"
    }
}
