//! What a desktop app links to license itself against billing-server:
//! activation, heartbeats, online and offline validation, live license events.
//!
//! ```no_run
//! # async fn run() -> Result<(), license_client::Error> {
//! use license_client::{ActivationOptions, ClientConfig, LicenseClient, PublicKey};
//!
//! let mut config = ClientConfig::new("https://licensing.example.com", "/home/me/.config/my-app/license");
//! config.public_key = Some(PublicKey::parse("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")?);
//! config.app_salt = "com.example.my-app".into();
//! let client = LicenseClient::new(config)?;
//! if !client.is_activated() {
//!     client.activate("ABCD-EFGH-…", ActivationOptions::default()).await?;
//! }
//! client.start_heartbeat()?;
//! let verdict = client.validate().await?; // online, or offline from the certificate
//! assert!(verdict.valid);
//! let _events = client.subscribe(|update| println!("{update:?}"))?;
//! # Ok(()) }
//! ```

pub mod air_gapped;
mod api;
pub mod certificate;
mod client;
mod error;
pub mod events;
pub mod fingerprint;
pub mod heartbeat;
pub mod offline;
mod store;
mod transport;
mod types;

pub use certificate::{CertificateClaims, PublicKey};
pub use client::{parse_release_date, ClientConfig, Clock, LicenseClient, EVENT_READ_TIMEOUT};
pub use error::Error;
pub use events::{EventName, EventPayload, LicenseEvent, StreamStop, StreamUpdate, Subscription};
pub use fingerprint::{Fingerprint, FingerprintSource};
pub use store::STATE_FILE;
pub use types::{Activation, ActivationOptions, Device, Heartbeat, LicenseInfo, Validation, ValidationCode};
