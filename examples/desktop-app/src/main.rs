//! A desktop-style program licensed with license-client: it activates once,
//! checks its license at start-up (online, or offline from the stored
//! certificate), keeps its device alive with heartbeats, and reacts to
//! license events until Ctrl-C.
//!
//! ```text
//! cargo run -p desktop-app -- --server http://127.0.0.1:8080 --key ABCD-… [--public-key <x or JWK>]
//! ```

use anyhow::{bail, Context};
use clap::Parser;
use license_client::{ActivationOptions, ClientConfig, LicenseClient, PublicKey, StreamUpdate};
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "A desktop app that licenses itself against billing-server")]
struct Args {
    /// The billing server.
    #[arg(long, env = "LICENSE_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Where the activation is kept (default: the OS's per-user data directory).
    #[arg(long, env = "LICENSE_STORE")]
    store: Option<PathBuf>,
    /// License key to activate with, if this machine is not activated yet.
    #[arg(long, env = "LICENSE_KEY")]
    key: Option<String>,
    /// The vendor's public key (a JWK's `x`, or the JWK). A real app builds it
    /// in; without it the server's key is fetched and pinned on activation.
    #[arg(long, env = "LICENSE_PUBLIC_KEY")]
    public_key: Option<String>,
    /// Deactivate this machine (free its slot) and exit.
    #[arg(long)]
    deactivate: bool,
    /// Exit after this many seconds instead of waiting for Ctrl-C.
    #[arg(long)]
    run_for: Option<u64>,
}

/// `$XDG_DATA_HOME`, `~/Library/Application Support` or `%APPDATA%`, plus the app's folder.
fn default_store() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let base = if cfg!(target_os = "windows") {
        std::env::var_os("APPDATA").map(PathBuf::from).unwrap_or(home)
    } else if cfg!(target_os = "macos") {
        home.join("Library/Application Support")
    } else {
        std::env::var_os("XDG_DATA_HOME").map(PathBuf::from).unwrap_or_else(|| home.join(".local/share"))
    };
    base.join("desktop-app-example").join("license")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into())).init();
    let args = Args::parse();
    let mut config = ClientConfig::new(&args.server, args.store.clone().unwrap_or_else(default_store));
    config.app_salt = "com.example.desktop-app".into();
    config.app_version = Some(env!("CARGO_PKG_VERSION").into());
    if let Some(key) = &args.public_key {
        config.public_key = Some(PublicKey::parse(key).context("--public-key is not an Ed25519 key")?);
    }
    let client = LicenseClient::new(config).context("cannot open the license store")?;

    if args.deactivate {
        match client.deactivate().await? {
            Some(device) => println!("deactivated device {}", device.id),
            None => println!("this machine was not activated"),
        }
        return Ok(());
    }

    if !client.is_activated() {
        let Some(key) = &args.key else { bail!("this machine is not activated: pass --key <license key>") };
        let name = std::env::var("HOSTNAME").ok().or_else(|| std::env::var("COMPUTERNAME").ok());
        let activation = client
            .activate(key, ActivationOptions { name, ..Default::default() })
            .await
            .with_context(|| "activation failed")?;
        println!(
            "activated device {} on plan {} ({}; {} devices allowed)",
            activation.device.id,
            activation.license.plan.as_deref().unwrap_or("-"),
            if activation.created { "new slot" } else { "existing slot" },
            activation.license.max_devices
        );
    }

    let verdict = client.validate().await?;
    println!(
        "license {} ({}{})",
        if verdict.valid { "valid" } else { "NOT valid" },
        verdict.code,
        if verdict.offline { ", offline" } else { "" }
    );
    if !verdict.valid {
        bail!("running unlicensed is not allowed: {}", verdict.code);
    }

    client.start_heartbeat()?;
    let events = client.subscribe(|update| match update {
        StreamUpdate::Connected => println!("listening for license changes"),
        StreamUpdate::Disconnected => println!("connection lost; reconnecting"),
        StreamUpdate::Event(event) => {
            let state = event.state.as_ref().map_or("unknown".to_owned(), |s| s.code.to_string());
            println!("{} {} -> license now {state}", event.payload.topic(), event.payload.data());
            if event.state.is_some_and(|s| !s.valid) {
                println!("the license is no longer valid: switch the app to its unlicensed mode");
            }
        }
        StreamUpdate::Stopped(stop) => println!("event stream stopped: {}", stop.code),
    })?;

    match args.run_for {
        Some(seconds) => tokio::time::sleep(std::time::Duration::from_secs(seconds)).await,
        None => tokio::signal::ctrl_c().await?,
    }
    events.close();
    client.stop_heartbeat();
    Ok(())
}
