//! [`LicenseClient`]: the operations an app calls.

use crate::api::{ActivateRequest, Api};
use crate::certificate::{self, CertificateClaims, PublicKey};
use crate::events::{self, StreamUpdate, Subscription};
use crate::fingerprint::{self, Fingerprint};
use crate::store::{self, ActivationState, OfflineRequestState, Secret, StoredState};
use crate::types::{Activation, ActivationOptions, Device, Heartbeat, LicenseInfo, Validation, ValidationCode};
use crate::{air_gapped, heartbeat, offline, Error};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// The wall clock, injectable for tests.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// How long the event stream may stay silent before it counts as dead (the
/// server sends a keep-alive every 15 s).
pub const EVENT_READ_TIMEOUT: Duration = Duration::from_secs(45);

/// Settings of a [`LicenseClient`].
#[derive(Clone)]
pub struct ClientConfig {
    /// The billing server, e.g. `https://licensing.example.com`.
    pub server_url: String,
    /// Where the activation state (and the fallback machine id) is kept;
    /// created if missing. One directory per app and OS user.
    pub store_dir: PathBuf,
    /// The vendor's license-signing key, built into the app. When `None`,
    /// the key is fetched from the server on first activation and pinned in
    /// the store (trust on first use).
    pub public_key: Option<PublicKey>,
    /// Salt of the machine fingerprint: use something unique to your app.
    pub app_salt: String,
    /// Sent as the device's `app_version` unless an activation says otherwise.
    pub app_version: Option<String>,
    /// When this build was released (see [`parse_release_date`]): sent on
    /// validation, and checked offline against the certificate, so that a
    /// license whose updates window closed before it answers
    /// `UPDATES_EXPIRED`. `None`: no window is checked.
    pub app_released_at: Option<SystemTime>,
    /// Timeout of each API request.
    pub request_timeout: Duration,
    /// The wall clock.
    pub clock: Clock,
}

impl ClientConfig {
    /// Defaults: no built-in key (fetched and pinned), salt `license-client`,
    /// 30 s requests, the system clock.
    pub fn new(server_url: impl Into<String>, store_dir: impl Into<PathBuf>) -> Self {
        Self {
            server_url: server_url.into(),
            store_dir: store_dir.into(),
            public_key: None,
            app_salt: "license-client".to_owned(),
            app_version: None,
            app_released_at: None,
            request_timeout: Duration::from_secs(30),
            clock: Arc::new(SystemTime::now),
        }
    }
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("server_url", &self.server_url)
            .field("store_dir", &self.store_dir)
            .field("public_key", &self.public_key)
            .field("app_version", &self.app_version)
            .field("app_released_at", &self.app_released_at)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    api: Api,
    events_http: reqwest::Client,
    store_dir: PathBuf,
    public_key: Option<PublicKey>,
    app_version: Option<String>,
    /// [`ClientConfig::app_released_at`] in Unix seconds.
    app_released_at: Option<i64>,
    fingerprint: Fingerprint,
    clock: Clock,
    state: Mutex<StoredState>,
    heartbeat: Mutex<Option<watch::Sender<bool>>>,
}

/// A desktop app's license: activation, validation, heartbeats and events.
/// Cheap to clone (shared state); persisted in [`ClientConfig::store_dir`].
#[derive(Clone)]
pub struct LicenseClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LicenseClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LicenseClient").field("store_dir", &self.inner.store_dir).finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Reads an app's release date written as RFC 3339 (e.g.
/// `2026-03-01T00:00:00Z`), for [`ClientConfig::app_released_at`].
pub fn parse_release_date(text: &str) -> Result<SystemTime, Error> {
    let parsed = time::OffsetDateTime::parse(text.trim(), &time::format_description::well_known::Rfc3339)
        .map_err(|_| Error::InvalidReleaseDate)?;
    Ok(SystemTime::from(parsed))
}

/// Unix seconds as RFC 3339, as the server writes and reads times.
pub(crate) fn rfc3339(unix: i64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp(unix).ok()?;
    t.format(&time::format_description::well_known::Rfc3339).ok()
}

impl LicenseClient {
    /// Opens the store (creating it), computes the machine fingerprint and
    /// loads any stored activation. Installs rustls' ring provider as the
    /// process default unless one is installed already.
    pub fn new(config: ClientConfig) -> Result<Self, Error> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        store::create_dir(&config.store_dir)?;
        let fingerprint = fingerprint::machine_fingerprint(&config.app_salt, &config.store_dir)?;
        let state = store::load(&config.store_dir)?;
        let user_agent = concat!("license-client/", env!("CARGO_PKG_VERSION"));
        let http = reqwest::Client::builder()
            .user_agent(user_agent)
            .connect_timeout(Duration::from_secs(10))
            .timeout(config.request_timeout)
            .build()?;
        let events_http = reqwest::Client::builder()
            .user_agent(user_agent)
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(EVENT_READ_TIMEOUT)
            .build()?;
        Ok(Self {
            inner: Arc::new(Inner {
                api: Api::new(http, &config.server_url)?,
                events_http,
                store_dir: config.store_dir,
                public_key: config.public_key,
                app_version: config.app_version,
                app_released_at: config.app_released_at.map(unix_seconds),
                fingerprint,
                clock: config.clock,
                state: Mutex::new(state),
                heartbeat: Mutex::new(None),
            }),
        })
    }

    pub(crate) fn upgrade(inner: &Weak<Inner>) -> Option<Self> {
        inner.upgrade().map(|inner| Self { inner })
    }

    pub(crate) fn api(&self) -> &Api {
        &self.inner.api
    }

    pub(crate) fn events_http(&self) -> reqwest::Client {
        self.inner.events_http.clone()
    }

    /// This machine's fingerprint, as sent to the server.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.inner.fingerprint
    }

    /// Whether an activation is stored.
    pub fn is_activated(&self) -> bool {
        lock(&self.inner.state).activation.is_some()
    }

    /// This device as last reported by the server, if activated.
    pub fn device(&self) -> Option<Device> {
        lock(&self.inner.state).activation.as_ref().map(|a| a.device.clone())
    }

    /// The license as last known, if activated.
    pub fn license(&self) -> Option<LicenseInfo> {
        lock(&self.inner.state).activation.as_ref().map(|a| a.license.clone())
    }

    /// The vendor key in use: built in, or pinned on first activation.
    pub fn public_key(&self) -> Option<PublicKey> {
        self.inner
            .public_key
            .clone()
            .or_else(|| lock(&self.inner.state).pinned_key.as_deref().and_then(|k| PublicKey::from_base64url(k).ok()))
    }

    /// The stored certificate's claims (plan, entitlements, `exp`, …), if
    /// activated and it verifies with the vendor key.
    pub fn certificate(&self) -> Option<CertificateClaims> {
        let key = self.public_key()?;
        let certificate = lock(&self.inner.state).activation.as_ref()?.certificate.clone();
        certificate::verify(&certificate, &key).ok()
    }

    pub(crate) fn heartbeat_window_secs(&self) -> Option<u64> {
        lock(&self.inner.state).activation.as_ref().map(|a| a.heartbeat_window_secs)
    }

    fn now(&self) -> i64 {
        match (self.inner.clock)().duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(_) => 0,
        }
    }

    fn stored_activation(&self) -> Result<ActivationState, Error> {
        lock(&self.inner.state).activation.clone().ok_or(Error::NotActivated)
    }

    /// The stored activation when it talks to the server (not air-gapped).
    fn online_activation(&self) -> Result<ActivationState, Error> {
        let activation = self.stored_activation()?;
        match activation.air_gapped {
            true => Err(Error::AirGapped),
            false => Ok(activation),
        }
    }

    /// Changes the state and persists it atomically; memory follows only
    /// once the disk did.
    fn update<T>(&self, change: impl FnOnce(&mut StoredState) -> T) -> Result<T, Error> {
        let mut state = lock(&self.inner.state);
        let mut next = state.clone();
        let out = change(&mut next);
        store::save(&self.inner.store_dir, &next)?;
        *state = next;
        Ok(out)
    }

    /// Changes the activation that `token` belongs to; nothing if it was
    /// replaced or removed meanwhile (a late answer must not resurrect it).
    fn update_activation(
        &self,
        token: &Secret,
        change: impl FnOnce(&mut i64, &mut ActivationState),
    ) -> Result<(), Error> {
        self.update(|state| {
            if let Some(activation) = state.activation.as_mut().filter(|a| &a.activation_token == token) {
                change(&mut state.last_seen, activation);
            }
        })
    }

    async fn vendor_key(&self) -> Result<PublicKey, Error> {
        match self.public_key() {
            Some(key) => Ok(key),
            None => PublicKey::from_jwk(&self.inner.api.public_key().await?),
        }
    }

    /// Activates `license_key` on this machine (reusing its slot if it has
    /// one) and stores the activation. Without a built-in public key, the
    /// server's is fetched and pinned first. The certificate must verify.
    pub async fn activate(&self, license_key: &str, options: ActivationOptions) -> Result<Activation, Error> {
        let key = self.vendor_key().await?;
        let platform = options.platform.as_deref().unwrap_or(std::env::consts::OS);
        let request = ActivateRequest {
            license_key: license_key.trim(),
            fingerprint: self.inner.fingerprint.as_str(),
            name: options.name.as_deref(),
            platform: Some(platform),
            app_version: options.app_version.as_deref().or(self.inner.app_version.as_deref()),
        };
        let (created, response) = self.inner.api.activate(&request).await?;
        let claims = certificate::verify(&response.certificate, &key)?;
        let now = self.now();
        let pin = self.inner.public_key.is_none().then(|| key.to_base64url());
        let activation = ActivationState {
            license_key: Secret::new(license_key.trim()),
            activation_token: Secret::new(response.activation_token),
            fingerprint: self.inner.fingerprint.as_str().to_owned(),
            device: response.device.clone(),
            license: response.license.clone(),
            certificate: response.certificate,
            heartbeat_window_secs: response.heartbeat_window_secs,
            refusal: ValidationCode::of_status(&response.license.status).map(|c| c.as_str().to_owned()),
            last_event_id: None,
            last_online_at: Some(now),
            air_gapped: false,
        };
        self.update(|state| {
            let same_license = state.activation.as_ref().filter(|a| a.license.id == activation.license.id);
            let last_event_id = same_license.and_then(|a| a.last_event_id.clone());
            state.activation = Some(ActivationState { last_event_id, ..activation });
            state.pinned_key = pin.or(state.pinned_key.take());
            // The server just told us the time: a clock set wrongly forward
            // earlier stops counting once it is corrected.
            state.last_seen = now.max(claims.iat);
        })?;
        Ok(Activation {
            device: response.device,
            license: response.license,
            created,
            heartbeat_window_secs: response.heartbeat_window_secs,
            certificate_expires_at: claims.exp,
        })
    }

    /// Starts an air-gapped activation of `license_key` on this machine,
    /// which never reaches the server: the answer is one copy-pasteable
    /// line for the license's owner to paste into their dashboard (see
    /// [`crate::air_gapped`] for what it holds: never the key). The key
    /// and the device description are kept here until
    /// [`Self::import_offline_activation`]; a new request replaces them.
    pub fn offline_activation_request(&self, license_key: &str, options: ActivationOptions) -> Result<String, Error> {
        let key = air_gapped::check_key(license_key)?;
        let described = ActivationOptions {
            name: options.name,
            platform: Some(options.platform.unwrap_or_else(|| std::env::consts::OS.to_owned())),
            app_version: options.app_version.or_else(|| self.inner.app_version.clone()),
        };
        let request = air_gapped::request(&key, self.inner.fingerprint.as_str(), &described);
        self.update(|state| {
            state.offline_request = Some(OfflineRequestState {
                license_key: Secret::new(key),
                name: described.name,
                platform: described.platform,
                app_version: described.app_version,
            });
        })?;
        Ok(request)
    }

    /// Imports the dashboard's answer to [`Self::offline_activation_request`]
    /// (a certificate): it must verify with the vendor key the app carries
    /// ([`ClientConfig::public_key`], or one pinned earlier) and be for this
    /// machine. From then on [`Self::validate`] answers from it alone
    /// (`offline: true`) until it expires. Importing a renewed answer for
    /// the same license later works the same way.
    pub fn import_offline_activation(&self, response: &str) -> Result<Activation, Error> {
        let key = self.public_key().ok_or(Error::NoPublicKey)?;
        let certificate = response.split_whitespace().collect::<String>();
        let claims = certificate::verify(&certificate, &key)?;
        if claims.fingerprint != self.inner.fingerprint.as_str() {
            return Err(Error::FingerprintMismatch);
        }
        let now = self.now();
        let activation = self.update(|state| {
            let renewing = state.activation.as_ref().filter(|a| a.air_gapped && a.license.id == claims.license_id);
            let (license_key, described) = match (&state.offline_request, renewing) {
                (Some(request), _) => (
                    request.license_key.clone(),
                    ActivationOptions {
                        name: request.name.clone(),
                        platform: request.platform.clone(),
                        app_version: request.app_version.clone(),
                    },
                ),
                (None, Some(current)) => (
                    current.license_key.clone(),
                    ActivationOptions {
                        name: current.device.name.clone(),
                        platform: current.device.platform.clone(),
                        app_version: current.device.app_version.clone(),
                    },
                ),
                (None, None) => return Err(Error::NoOfflineRequest),
            };
            let activation = ActivationState {
                license_key,
                activation_token: Secret::new(""),
                fingerprint: self.inner.fingerprint.as_str().to_owned(),
                device: air_gapped::device_of(&claims, &described),
                license: air_gapped::license_of(&claims),
                certificate: certificate.clone(),
                heartbeat_window_secs: 0,
                refusal: None,
                last_event_id: None,
                last_online_at: None,
                air_gapped: true,
            };
            state.activation = Some(activation.clone());
            state.offline_request = None;
            state.last_seen = state.last_seen.max(now);
            Ok(activation)
        })??;
        Ok(Activation {
            device: activation.device,
            license: activation.license,
            created: true,
            heartbeat_window_secs: 0,
            certificate_expires_at: claims.exp,
        })
    }

    /// The verdict now: the server's when it answers (and the stored state
    /// follows it), else the stored certificate's (`offline: true`). Not
    /// activated is a verdict (`NOT_ACTIVATED`), not an error.
    pub async fn validate(&self) -> Result<Validation, Error> {
        let Some(activation) = lock(&self.inner.state).activation.clone() else {
            return Ok(Validation::new(ValidationCode::NotActivated, false, None));
        };
        if activation.air_gapped {
            return self.validate_offline();
        }
        let released = self.inner.app_released_at.and_then(rfc3339);
        let fingerprint = self.inner.fingerprint.as_str();
        let answer = match self.inner.api.validate(&activation.license_key, fingerprint, released.as_deref()).await {
            Ok(answer) => answer,
            Err(e) if e.is_unavailable() => {
                tracing::info!(code = e.code(), "license server unavailable; validating offline");
                return self.validate_offline();
            }
            Err(e) => return Err(e),
        };
        let code = ValidationCode::parse(&answer.code);
        let now = self.now();
        let license = answer.license.unwrap_or(activation.license);
        // An updates-window verdict is about this build, not the license:
        // offline, the certificate's window judges whichever build asks.
        let refused = !matches!(code, ValidationCode::Valid | ValidationCode::UpdatesExpired);
        self.update_activation(&activation.activation_token, |last_seen, a| {
            a.license = license.clone();
            a.refusal = refused.then(|| code.as_str().to_owned());
            a.last_online_at = Some(now);
            *last_seen = (*last_seen).max(now);
        })?;
        Ok(Validation::new(code, false, Some(license)))
    }

    /// The verdict of the stored certificate alone, without asking the
    /// server (see [`crate::offline`] for the checks and their order).
    pub fn validate_offline(&self) -> Result<Validation, Error> {
        let now = self.now();
        let (verdict, last_seen) = {
            let state = lock(&self.inner.state);
            let Some(activation) = &state.activation else {
                return Ok(Validation::new(ValidationCode::NotActivated, true, None));
            };
            let key = self
                .inner
                .public_key
                .clone()
                .or_else(|| state.pinned_key.as_deref().and_then(|k| PublicKey::from_base64url(k).ok()));
            let verdict = offline::verdict(
                activation,
                key.as_ref(),
                &offline::Asking {
                    fingerprint: self.inner.fingerprint.as_str(),
                    app_released_at: self.inner.app_released_at,
                },
                now,
                state.last_seen,
            );
            (verdict, state.last_seen)
        };
        if now > last_seen {
            self.update(|state| state.last_seen = state.last_seen.max(now))?;
        }
        Ok(verdict)
    }

    /// Tells the server this device is alive and stores the fresh
    /// certificate and license. When the server says the activation is over
    /// (401, 410), that is remembered so offline validation refuses too.
    pub async fn heartbeat(&self) -> Result<Heartbeat, Error> {
        let activation = self.online_activation()?;
        let response = match self.inner.api.heartbeat(&activation.activation_token).await {
            Ok(response) => response,
            Err(e) if e.is_activation_lost() => {
                let code = ValidationCode::parse(e.code());
                self.update_activation(&activation.activation_token, |_, a| {
                    a.refusal = Some(code.as_str().to_owned());
                })?;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let key = self.public_key().ok_or(Error::InvalidCertificate)?;
        let claims = certificate::verify(&response.certificate, &key)?;
        let now = self.now();
        self.update_activation(&activation.activation_token, |last_seen, a| {
            a.device = response.device.clone();
            a.license = response.license.clone();
            a.certificate = response.certificate.clone();
            a.heartbeat_window_secs = response.heartbeat_window_secs;
            a.refusal = ValidationCode::of_status(&response.license.status).map(|c| c.as_str().to_owned());
            a.last_online_at = Some(now);
            *last_seen = now.max(claims.iat);
        })?;
        Ok(Heartbeat {
            device: response.device,
            license: response.license,
            heartbeat_window_secs: response.heartbeat_window_secs,
            certificate_expires_at: claims.exp,
        })
    }

    /// Frees this device's slot on the server and forgets the activation
    /// (the pinned key and the clock guard stay). Stops the heartbeat loop.
    /// Returns the device, or `None` if there was no activation or the
    /// server had already ended it. An air-gapped activation is forgotten
    /// without asking the server (there is none to ask): its owner frees
    /// the slot from their dashboard.
    pub async fn deactivate(&self) -> Result<Option<Device>, Error> {
        let Some(activation) = lock(&self.inner.state).activation.clone() else { return Ok(None) };
        self.stop_heartbeat();
        // An air-gapped slot is freed from the dashboard; here it is only forgotten.
        let device = match activation.air_gapped {
            true => None,
            false => match self.inner.api.deactivate(&activation.activation_token).await {
                Ok(response) => Some(response.device),
                Err(e) if e.is_activation_lost() => None,
                Err(e) => return Err(e),
            },
        };
        self.update(|state| {
            if state.activation.as_ref().is_some_and(|a| a.activation_token == activation.activation_token) {
                state.activation = None;
            }
        })?;
        Ok(device)
    }

    /// Starts the background heartbeat loop on the current Tokio runtime
    /// (see [`heartbeat::next_delay`] for its timing). Does nothing if it
    /// runs already. It stops on [`Self::stop_heartbeat`], [`Self::deactivate`],
    /// when the server ends the activation, or when the client is dropped.
    pub fn start_heartbeat(&self) -> Result<(), Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        self.online_activation()?;
        let mut running = lock(&self.inner.heartbeat);
        if running.as_ref().is_some_and(|stop| !stop.is_closed()) {
            return Ok(());
        }
        let (stop, stopped) = watch::channel(false);
        runtime.spawn(heartbeat::run(Arc::downgrade(&self.inner), stopped));
        *running = Some(stop);
        Ok(())
    }

    /// Stops the background heartbeat loop, if running.
    pub fn stop_heartbeat(&self) {
        if let Some(stop) = lock(&self.inner.heartbeat).take() {
            let _ = stop.send(true);
        }
    }

    /// Whether the background heartbeat loop is running.
    pub fn is_heartbeat_running(&self) -> bool {
        lock(&self.inner.heartbeat).as_ref().is_some_and(|stop| !stop.is_closed())
    }

    /// Listens to the license's events on the current Tokio runtime:
    /// `on_update` gets connection changes, each event (after the client
    /// re-validated, so its stored state is fresh) and a final stop. See
    /// [`crate::events`].
    pub fn subscribe(&self, on_update: impl Fn(StreamUpdate) + Send + Sync + 'static) -> Result<Subscription, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let activation = self.online_activation()?;
        events::spawn(&runtime, self.clone(), activation, Arc::new(on_update))
    }

    pub(crate) fn remember_event_id(&self, token: &Secret, id: &str) -> Result<(), Error> {
        self.update_activation(token, |_, a| a.last_event_id = Some(id.to_owned()))
    }

    /// Re-validates after an event; when still valid online, a heartbeat
    /// fetches a certificate carrying the new terms for offline use.
    pub(crate) async fn refresh(&self) -> Option<Validation> {
        let validation = match self.validate().await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(code = e.code(), "re-validation after an event failed");
                return None;
            }
        };
        if validation.valid && !validation.offline {
            if let Err(e) = self.heartbeat().await {
                tracing::warn!(code = e.code(), "certificate refresh after an event failed");
            }
        }
        Some(validation)
    }
}
