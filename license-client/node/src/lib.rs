//! Node-API binding of license-client, for Node and Electron's main process
//! (Node-API is ABI-stable: one build serves both).
//!
//! Async methods return Promises resolved from napi's Tokio runtime, so the
//! event loop never blocks; event callbacks are queued onto the JS thread
//! through a ThreadsafeFunction; failures reject with an `Error` carrying a
//! stable `code` (the server's, e.g. `TOO_MANY_DEVICES`, or the client's,
//! e.g. `NETWORK`, `NOT_ACTIVATED`).

#![deny(unsafe_code)]

use license_client as lc;
use napi::bindgen_prelude::JsObjectValue;
use napi::bindgen_prelude::{within_runtime_if_available, PromiseRaw};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Env, JsValue, Status};
use napi_derive::napi;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Options of `new LicenseClient(options)`.
#[napi(object)]
pub struct LicenseClientOptions {
    /// Base URL of the billing server, e.g. `https://licensing.example.com`.
    pub server_url: String,
    /// Directory for the activation state (created if missing), e.g.
    /// `path.join(app.getPath('userData'), 'license')` in Electron.
    pub store_path: String,
    /// The vendor's license-signing public key, built into the app: a JWK (as
    /// JSON text) or its base64url `x`. When absent, the server's key is
    /// fetched and pinned in the store on first activation.
    pub public_key: Option<String>,
    /// Salt of the machine fingerprint; use something unique to your app
    /// (default `license-client`).
    pub app_salt: Option<String>,
    /// Reported as the device's app version.
    pub app_version: Option<String>,
    /// When this build was released, RFC 3339 (e.g. `2026-03-01T00:00:00Z`,
    /// or `date.toISOString()`): sent on validation and checked offline, so
    /// that a license whose updates window closed before it answers
    /// `UPDATES_EXPIRED`. Absent: no window is checked.
    pub app_released_at: Option<String>,
    /// Timeout of each request in milliseconds (default 30000).
    pub request_timeout_ms: Option<u32>,
}

/// How the device describes itself when activating.
#[napi(object)]
pub struct ActivateOptions {
    /// Display name shown in the customer's dashboard (e.g. the host name).
    pub name: Option<String>,
    /// Platform; defaults to the OS (`linux`, `windows`, `macos`).
    pub platform: Option<String>,
    /// App version; defaults to the client's `appVersion`.
    pub app_version: Option<String>,
}

/// A license as the server reports it.
#[napi(object)]
pub struct License {
    /// License id.
    pub id: String,
    /// `active`, `suspended`, `expired` or `revoked`.
    pub status: String,
    /// Plan id.
    pub plan: Option<String>,
    /// Device limit.
    pub max_devices: u32,
    /// Paid through (RFC 3339).
    pub expires_at: Option<String>,
    /// End of the payment grace period (RFC 3339).
    pub grace_ends_at: Option<String>,
    /// The plan's features.
    pub entitlements: Vec<String>,
    /// `subscription` or `perpetual` (absent from a server that predates them).
    pub kind: Option<String>,
    /// Builds released after this (RFC 3339) are not covered; absent: every build is.
    pub updates_until: Option<String>,
    /// A card-less trial (`expiresAt` is when it ends).
    pub trial: bool,
}

/// This device as the server records it.
#[napi(object)]
pub struct Device {
    /// Device id.
    pub id: String,
    /// The license it uses.
    pub license_id: String,
    /// The hashed machine fingerprint.
    pub fingerprint: String,
    /// Display name.
    pub name: Option<String>,
    /// Platform.
    pub platform: Option<String>,
    /// App version.
    pub app_version: Option<String>,
    /// `active`, `deactivated` or `dead`.
    pub status: String,
    /// Active and heard from within the heartbeat window.
    pub alive: bool,
    /// When it was (last) activated (RFC 3339).
    pub activated_at: String,
    /// Last heartbeat (RFC 3339).
    pub last_seen_at: String,
    /// When it was deactivated (RFC 3339).
    pub deactivated_at: Option<String>,
    /// Activated from the owner's dashboard for a machine with no network
    /// (`importOfflineActivation`): it never heartbeats.
    pub air_gapped: bool,
}

/// A successful activation.
#[napi(object)]
pub struct ActivationResult {
    /// This device's id.
    pub device_id: String,
    /// A new slot (true) or this machine's existing one (false).
    pub created: bool,
    /// This device.
    pub device: Device,
    /// The license.
    pub license: License,
    /// Heartbeats must come at least this often (seconds).
    pub heartbeat_window_secs: f64,
    /// When the offline certificate expires (Unix seconds).
    pub certificate_expires_at: f64,
}

/// A verdict.
#[napi(object)]
pub struct ValidationResult {
    /// Whether the app may run licensed.
    pub valid: bool,
    /// `VALID`, `REVOKED`, `EXPIRED`, `SUSPENDED`, `UPDATES_EXPIRED`,
    /// `NOT_FOUND`, `NOT_ACTIVATED`, `HEARTBEAT_DEAD`, or offline only
    /// `CERTIFICATE_EXPIRED`, `INVALID_CERTIFICATE`, `FINGERPRINT_MISMATCH`,
    /// `CLOCK_ROLLBACK`.
    pub code: String,
    /// Decided from the stored certificate because the server did not answer.
    pub offline: bool,
    /// The license as last known.
    pub license: Option<License>,
    /// The end of the license's updates window (RFC 3339), as last known:
    /// builds released after it answer `UPDATES_EXPIRED`. Absent: every build is covered.
    pub updates_until: Option<String>,
}

/// A successful heartbeat.
#[napi(object)]
pub struct HeartbeatResult {
    /// This device.
    pub device: Device,
    /// The license now.
    pub license: License,
    /// The window the server enforces (seconds).
    pub heartbeat_window_secs: f64,
    /// When the refreshed offline certificate expires (Unix seconds).
    pub certificate_expires_at: f64,
}

/// What a subscription delivers: `type` is `connected`, `disconnected`,
/// `stopped` (for good; see `code`), or an event type such as
/// `license.created`, `license.updated`, `subscription.updated`, `device.activated`,
/// `device.deactivated`, `device.dead`, `device.updated`, `payment.updated`.
#[napi(object)]
pub struct LicenseEvent {
    /// What happened.
    #[napi(js_name = "type")]
    pub kind: String,
    /// The event id (events only).
    pub id: Option<String>,
    /// The event's JSON data (events only).
    pub data: Option<serde_json::Value>,
    /// The verdict after the client refreshed its state (events and stops).
    pub state: Option<ValidationResult>,
    /// Why the stream stopped: `UNAUTHORIZED` (activate again), `HTTP_<status>`, `CLOSED`.
    pub code: Option<String>,
}

fn license(l: lc::LicenseInfo) -> License {
    License {
        id: l.id,
        status: l.status,
        plan: l.plan,
        max_devices: l.max_devices,
        expires_at: l.expires_at,
        grace_ends_at: l.grace_ends_at,
        entitlements: l.entitlements,
        kind: l.kind,
        updates_until: l.updates_until,
        trial: l.trial,
    }
}

fn device(d: lc::Device) -> Device {
    Device {
        id: d.id,
        license_id: d.license_id,
        fingerprint: d.fingerprint,
        name: d.name,
        platform: d.platform,
        app_version: d.app_version,
        status: d.status,
        alive: d.alive,
        activated_at: d.activated_at,
        last_seen_at: d.last_seen_at,
        deactivated_at: d.deactivated_at,
        air_gapped: d.air_gapped,
    }
}

fn activation_options(options: Option<ActivateOptions>) -> lc::ActivationOptions {
    options.map_or_else(lc::ActivationOptions::default, |o| lc::ActivationOptions {
        name: o.name,
        platform: o.platform,
        app_version: o.app_version,
    })
}

fn activation_result(a: lc::Activation) -> ActivationResult {
    ActivationResult {
        device_id: a.device.id.clone(),
        created: a.created,
        device: device(a.device),
        license: license(a.license),
        heartbeat_window_secs: a.heartbeat_window_secs as f64,
        certificate_expires_at: a.certificate_expires_at as f64,
    }
}

fn validation(v: lc::Validation) -> ValidationResult {
    ValidationResult {
        valid: v.valid,
        code: v.code.as_str().to_owned(),
        offline: v.offline,
        license: v.license.map(license),
        updates_until: v.updates_until,
    }
}

fn event(update: lc::StreamUpdate) -> LicenseEvent {
    let plain = |kind: &str| LicenseEvent { kind: kind.to_owned(), id: None, data: None, state: None, code: None };
    match update {
        lc::StreamUpdate::Connected => plain("connected"),
        lc::StreamUpdate::Disconnected => plain("disconnected"),
        lc::StreamUpdate::Event(e) => LicenseEvent {
            kind: e.payload.topic().to_owned(),
            id: e.id,
            data: Some(e.payload.data()),
            state: e.state.map(validation),
            code: None,
        },
        lc::StreamUpdate::Stopped(stop) => {
            LicenseEvent { code: Some(stop.code), state: stop.state.map(validation), ..plain("stopped") }
        }
    }
}

/// A JS `Error` with `code` set, thrown synchronously.
fn sync_error(e: lc::Error) -> napi::Error<String> {
    napi::Error::new(e.code().to_owned(), e.to_string())
}

/// Runs `work` on napi's Tokio runtime and returns a Promise settled on the
/// JS thread: resolved with `convert(value)`, or rejected with an `Error`
/// whose `code` is the client's error code.
fn promise<'env, T, V, F>(env: &'env Env, work: F, convert: fn(T) -> V) -> napi::Result<PromiseRaw<'env, V>>
where
    T: Send + 'static,
    V: napi::bindgen_prelude::ToNapiValue + 'static,
    F: Future<Output = Result<T, lc::Error>> + Send + 'static,
{
    env.spawn_future_with_callback(async move { Ok(work.await) }, move |env, outcome| match outcome {
        Ok(value) => Ok(convert(value)),
        Err(e) => {
            let mut error = env.create_error(napi::Error::new(Status::GenericFailure, e.to_string()))?;
            error.set_named_property("code", e.code())?;
            Err(napi::Error::from(error.to_unknown()))
        }
    })
}

type EventCallback =
    ThreadsafeFunction<LicenseEvent, napi::bindgen_prelude::Unknown<'static>, LicenseEvent, Status, false>;
type SubscriptionSlot = Arc<Mutex<Option<lc::Subscription>>>;

/// A desktop app's license: activation, validation (online, else offline
/// from the signed certificate), heartbeats and live events.
#[napi]
pub struct LicenseClient {
    inner: lc::LicenseClient,
    // Open subscriptions stay open until closed, even if their handle is
    // garbage-collected (like an EventSource).
    subscriptions: Arc<Mutex<Vec<SubscriptionSlot>>>,
}

#[napi]
impl LicenseClient {
    /// Opens (or creates) the store and computes this machine's fingerprint.
    /// Throws on a bad server URL, public key or unusable store directory.
    #[napi(constructor)]
    pub fn new(options: LicenseClientOptions) -> napi::Result<Self, String> {
        let mut config = lc::ClientConfig::new(options.server_url, options.store_path);
        if let Some(key) = options.public_key {
            config.public_key = Some(lc::PublicKey::parse(&key).map_err(sync_error)?);
        }
        if let Some(salt) = options.app_salt {
            config.app_salt = salt;
        }
        config.app_version = options.app_version;
        if let Some(released) = options.app_released_at {
            config.app_released_at = Some(lc::parse_release_date(&released).map_err(sync_error)?);
        }
        if let Some(ms) = options.request_timeout_ms {
            config.request_timeout = Duration::from_millis(u64::from(ms));
        }
        let inner = lc::LicenseClient::new(config).map_err(sync_error)?;
        Ok(Self { inner, subscriptions: Arc::default() })
    }

    /// This machine's fingerprint (a salted SHA-256 of the OS machine id).
    #[napi(getter)]
    pub fn fingerprint(&self) -> String {
        self.inner.fingerprint().as_str().to_owned()
    }

    /// Whether an activation is stored.
    #[napi(getter)]
    pub fn activated(&self) -> bool {
        self.inner.is_activated()
    }

    /// The license as last known, or `null` when not activated.
    #[napi(getter)]
    pub fn license(&self) -> Option<License> {
        self.inner.license().map(license)
    }

    /// This device as last reported, or `null` when not activated.
    #[napi(getter)]
    pub fn device(&self) -> Option<Device> {
        self.inner.device().map(device)
    }

    /// Activates `licenseKey` on this machine and stores the activation.
    #[napi(ts_return_type = "Promise<ActivationResult>")]
    pub fn activate<'env>(
        &self,
        env: &'env Env,
        license_key: String,
        options: Option<ActivateOptions>,
    ) -> napi::Result<PromiseRaw<'env, ActivationResult>> {
        let client = self.inner.clone();
        let options = activation_options(options);
        promise(env, async move { client.activate(&license_key, options).await }, activation_result)
    }

    /// Starts an air-gapped activation of `licenseKey` on this machine: the
    /// answer is one line (`oar1.…`, never the key) for the license's owner
    /// to paste into their dashboard, whose response goes to
    /// `importOfflineActivation`. Throws `INVALID_LICENSE_KEY` for what
    /// cannot be a key.
    #[napi]
    pub fn offline_activation_request(
        &self,
        license_key: String,
        options: Option<ActivateOptions>,
    ) -> napi::Result<String, String> {
        self.inner.offline_activation_request(&license_key, activation_options(options)).map_err(sync_error)
    }

    /// Imports the dashboard's response to `offlineActivationRequest`: it
    /// must verify with the app's `publicKey` and be for this machine
    /// (`FINGERPRINT_MISMATCH` otherwise). Afterwards `validate()` answers
    /// from it alone (`offline: true`) until it expires.
    #[napi]
    pub fn import_offline_activation(&self, response: String) -> napi::Result<ActivationResult, String> {
        self.inner.import_offline_activation(&response).map(activation_result).map_err(sync_error)
    }

    /// The verdict: the server's when it answers, else the stored
    /// certificate's (`offline: true`). Not activated resolves with
    /// `code: 'NOT_ACTIVATED'`.
    #[napi(ts_return_type = "Promise<ValidationResult>")]
    pub fn validate<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, ValidationResult>> {
        let client = self.inner.clone();
        promise(env, async move { client.validate().await }, validation)
    }

    /// The stored certificate's verdict, without asking the server.
    #[napi]
    pub fn validate_offline(&self) -> napi::Result<ValidationResult, String> {
        self.inner.validate_offline().map(validation).map_err(sync_error)
    }

    /// Sends one heartbeat and stores the refreshed certificate.
    #[napi(ts_return_type = "Promise<HeartbeatResult>")]
    pub fn heartbeat<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, HeartbeatResult>> {
        let client = self.inner.clone();
        promise(env, async move { client.heartbeat().await }, |h: lc::Heartbeat| HeartbeatResult {
            device: device(h.device),
            license: license(h.license),
            heartbeat_window_secs: h.heartbeat_window_secs as f64,
            certificate_expires_at: h.certificate_expires_at as f64,
        })
    }

    /// Frees this device's slot and forgets the activation; resolves with
    /// the device, or `null` if there was nothing (left) to deactivate.
    #[napi(ts_return_type = "Promise<Device | null>")]
    pub fn deactivate<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, Option<Device>>> {
        let client = self.inner.clone();
        promise(env, async move { client.deactivate().await }, |d: Option<lc::Device>| d.map(device))
    }

    /// Starts background heartbeats (a third of the server's window, jittered,
    /// backing off on errors). They stop on `stopHeartbeat()`, `deactivate()`
    /// or when the server ends the activation. They do not keep Node alive.
    #[napi]
    pub fn start_heartbeat(&self) -> napi::Result<(), String> {
        within_runtime_if_available(|| self.inner.start_heartbeat()).map_err(sync_error)
    }

    /// Stops background heartbeats.
    #[napi]
    pub fn stop_heartbeat(&self) {
        self.inner.stop_heartbeat();
    }

    /// Whether background heartbeats are running.
    #[napi(getter)]
    pub fn heartbeat_running(&self) -> bool {
        self.inner.is_heartbeat_running()
    }

    /// Listens to this license's events. `callback` runs on the JS thread
    /// with each `LicenseEvent`, after the client refreshed its stored state.
    /// Reconnects with backoff and resumes with `Last-Event-ID`; stops on a
    /// refusal (`type: 'stopped'`). Keeps Node alive until `close()`.
    #[napi(ts_args_type = "callback: (event: LicenseEvent) => void")]
    pub fn subscribe(&self, callback: EventCallback) -> napi::Result<Subscription, String> {
        let callback = Arc::new(callback);
        let on_update = move |update| {
            callback.call(event(update), ThreadsafeFunctionCallMode::NonBlocking);
        };
        let subscription = within_runtime_if_available(|| self.inner.subscribe(on_update)).map_err(sync_error)?;
        let slot: SubscriptionSlot = Arc::new(Mutex::new(Some(subscription)));
        let mut open = self.subscriptions.lock().unwrap_or_else(PoisonError::into_inner);
        open.retain(|s| s.lock().unwrap_or_else(PoisonError::into_inner).as_ref().is_some_and(|s| !s.is_closed()));
        open.push(slot.clone());
        Ok(Subscription { slot })
    }
}

/// An open event subscription.
#[napi]
pub struct Subscription {
    slot: SubscriptionSlot,
}

#[napi]
impl Subscription {
    /// Stops the stream; no callback runs after the ones already queued.
    #[napi]
    pub fn close(&self) {
        if let Some(subscription) = self.slot.lock().unwrap_or_else(PoisonError::into_inner).take() {
            subscription.close();
        }
    }

    /// Whether the stream has stopped (closed, or stopped by itself).
    #[napi(getter)]
    pub fn closed(&self) -> bool {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner).as_ref().is_none_or(|s| s.is_closed())
    }
}
