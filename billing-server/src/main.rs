//! The `billing-server` binary: `serve` (default), `migrate`, `keygen`,
//! `admin-token` and `stripe`.

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
    /// The configuration file (TOML; keys are the environment variables'
    /// names in lower case without BILLING_), instead of the one
    /// BILLING_CONFIG names; the environment overrides it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
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
    /// Catch up with Stripe (`sync`) and check the plans file against it
    /// (`check-plans`), with STRIPE_SECRET_KEY, on the store DATABASE_URL names.
    Stripe {
        #[command(subcommand)]
        command: StripeCommand,
    },
}

#[derive(Subcommand)]
enum StripeCommand {
    /// Page through Stripe's customers, subscriptions, paid invoices and
    /// completed Checkout Sessions and apply each as its webhook would be
    /// (a stale object never overwrites newer state; nothing is applied
    /// twice); checkpointed after every page; ends with a summary.
    Sync {
        /// Only objects created on or after this day (2024-01-31, UTC) or
        /// time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Continue the interrupted run from its last checkpoint.
        #[arg(long)]
        resume: bool,
        /// Requests per second to Stripe (default BILLING_STRIPE_SYNC_RATE, else 20).
        #[arg(long)]
        rate: Option<u32>,
    },
    /// Report plans whose price Stripe lacks or has inactive, and prices
    /// running subscriptions use that no plan names. Exit code 0 when all
    /// is well, 1 when something is wrong, 2 when the check failed.
    CheckPlans {
        /// Requests per second to Stripe (default BILLING_STRIPE_SYNC_RATE, else 20).
        #[arg(long)]
        rate: Option<u32>,
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
        /// devices:write, events:read, stripe:write, webhooks:write,
        /// portal:write, or * for
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
    let (config, config_notes) = billing_server::config_file::load(cli.config.as_deref())?;
    let filter = config.log_filter("info");
    if matches!(cli.command, Some(Command::AdminToken { .. } | Command::Stripe { .. })) {
        // stdout is the command's answer (scripts capture the token, the
        // backfill's summary from it); the store's start-up chatter is not.
        let filter = config.log_filter("warn");
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    } else if config.log_json {
        tracing_subscriber::fmt().json().with_current_span(true).with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    config_notes.log();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Keygen { .. } => unreachable!("handled above"),
        Command::AdminToken { command } => admin_token(&config, command).await,
        Command::Stripe { command: StripeCommand::Sync { since, resume, rate } } => {
            billing_server::stripe_cli::sync(&config, since.as_deref(), resume, rate).await
        }
        Command::Stripe { command: StripeCommand::CheckPlans { rate } } => {
            let code = billing_server::stripe_cli::check_plans(&config, rate).await;
            use std::io::Write as _;
            let _ = std::io::stdout().flush();
            std::process::exit(code);
        }
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
            // Handlers installed before the banner says the server is up: a
            // signal that arrived before them would kill the process.
            let shutdown = shutdown_signal()?;
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
