//! Runs the example service: `DATABASE_URL` (PostgreSQL or sqlite://file;
//! unset: ./embedded-data), `STRIPE_WEBHOOK_SECRET`, listening on
//! `EMBEDDED_ADDR` (default 127.0.0.1:3000).

use anyhow::Context;
use billing_core::certificate::SigningKey;
use billing_core::domain::PlanCatalog;
use billing_core::licensing::LicensingConfig;
use billing_core::storage::any::{AnyStore, StoreLocation};
use billing_core::storage::Store;
use billing_core::stripe::WebhookSecrets;
use billing_core::{Billing, BillingConfig};
use std::sync::Arc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL").ok();
    let location = StoreLocation::from_url(url.as_deref(), "embedded-data".as_ref()).map_err(anyhow::Error::msg)?;
    // The service's own pool: 4 connections are plenty for these two routes.
    let store = AnyStore::open(&location, 4).await.context("cannot open the store")?;
    store.migrate().await.context("cannot migrate")?;
    let licensing = LicensingConfig::new(Arc::new(SigningKey::from_pkcs8(&SigningKey::generate_pkcs8())?));
    let secrets = std::env::var("STRIPE_WEBHOOK_SECRET").ok().and_then(|s| WebhookSecrets::parse(&s));
    let billing =
        Billing::new(store, BillingConfig::new(PlanCatalog::default(), licensing).with_webhook_secrets(secrets));
    let addr = std::env::var("EMBEDDED_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("embedded-service listening on http://{addr}");
    // The engine's own work (dead devices, lapsed licenses, the vendor's
    // webhooks), beside the routes, until Ctrl-C; then both stop.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let background = tokio::spawn({
        let (billing, mut stopped) = (billing.clone(), stopped.clone());
        async move {
            billing
                .run_background(None, async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
        }
    });
    let mut stopped = stopped;
    axum::serve(listener, embedded_service::router(billing))
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            let _ = stop.send(true);
            let _ = stopped.wait_for(|s| *s).await;
        })
        .await?;
    background.await?;
    Ok(())
}
