//! Licensing use cases: activate, card-less trials, validate, heartbeat,
//! deactivate, the dashboard's terminals, and the reaper of dead devices.
//! Each license's devices are judged by its plan (floating or node-locked,
//! its heartbeat window and certificate lifetime, the server's where the
//! plan sets none).

use crate::billing::{rfc3339, Billing, BillingConfig};
use crate::certificate::{self, CertificateClaims, SigningKey};
use crate::domain::device::{
    self, ActivationPlan, ActivationRefusal, Liveness, TextRefusal, ValidationQuery, MAX_DEVICE_TEXT_CHARS,
};
use crate::domain::offline_activation::OfflineActivationRequest;
use crate::domain::{
    license, ActivationToken, Actor, Device, DeviceStatus, License, LicenseKey, LicenseOverrides, LicenseSource,
    LicenseStatus, LicenseTerms, Plan, PlanCatalog, Timestamp, Topic, ValidationCode,
};
use crate::messages::license_message;
use crate::storage::license_work::{
    Changeset, DeviceActivation, DeviceAudit, HeartbeatWrite, LicenseAudit, LicenseBundle, LicenseKeys, TrialUse,
};
use crate::storage::{OutboxMessage, Store, StoreError};
use serde_json::json;
use std::sync::Arc;
use uuid::Uuid;

/// An air-gapped activation's lifetime on a license whose plan the catalog
/// does not hold: a plan's own default.
const DEFAULT_OFFLINE_ACTIVATION: time::Duration =
    time::Duration::days(crate::domain::plan::DEFAULT_OFFLINE_ACTIVATION_DAYS as i64);

/// Settings of the licensing rules.
#[derive(Clone, Debug)]
pub struct LicensingConfig {
    /// A device silent for longer than this is dead.
    pub heartbeat_window: time::Duration,
    /// How long an offline certificate lasts (capped by paid-through + grace).
    pub offline_ttl: time::Duration,
    /// Signs offline certificates.
    pub signing_key: Arc<SigningKey>,
    /// The `iss` claim of certificates.
    pub issuer: String,
}

impl LicensingConfig {
    /// Defaults: 600 s heartbeat window, 7-day certificates.
    pub fn new(signing_key: Arc<SigningKey>) -> Self {
        Self {
            heartbeat_window: time::Duration::seconds(600),
            offline_ttl: time::Duration::days(7),
            signing_key,
            issuer: "billing-server".to_owned(),
        }
    }
}

/// What a device sends to activate.
#[derive(Debug, Clone)]
pub struct ActivationRequest<'a> {
    /// The license key as typed.
    pub license_key: &'a str,
    /// Machine fingerprint.
    pub fingerprint: &'a str,
    /// Display name.
    pub name: Option<&'a str>,
    /// Platform.
    pub platform: Option<&'a str>,
    /// App version.
    pub app_version: Option<&'a str>,
    /// Where the request came from, for the audit trail.
    pub client_addr: Option<std::net::IpAddr>,
}

/// What a machine sends to start a trial.
#[derive(Debug, Clone)]
pub struct TrialRequest<'a> {
    /// The plan to try; `None`: the first plan offering trials.
    pub plan: Option<&'a str>,
    /// Machine fingerprint.
    pub fingerprint: &'a str,
    /// Display name.
    pub name: Option<&'a str>,
    /// Platform.
    pub platform: Option<&'a str>,
    /// App version.
    pub app_version: Option<&'a str>,
    /// Where the request came from, for the audit trail.
    pub client_addr: Option<std::net::IpAddr>,
}

/// A successful activation.
#[derive(Debug)]
pub struct Activation {
    /// Shown once; the device authenticates with it.
    pub token: ActivationToken,
    /// The device.
    pub device: Device,
    /// Its license.
    pub license: License,
    /// Signed offline certificate.
    pub certificate: String,
    /// When the certificate expires.
    pub certificate_expires_at: Timestamp,
    /// A new slot (vs. the fingerprint's existing one).
    pub created: bool,
}

/// A heartbeat's answer.
#[derive(Debug)]
pub struct Heartbeat {
    /// The device, as updated.
    pub device: Device,
    /// Its license.
    pub license: License,
    /// A fresh certificate.
    pub certificate: String,
}

/// A validation's answer.
#[derive(Debug)]
pub struct Validation {
    /// The verdict.
    pub code: ValidationCode,
    /// The license, when the key names one.
    pub license: Option<License>,
}

/// Why a licensing call was refused.
#[derive(Debug, thiserror::Error)]
pub enum LicensingError {
    /// No license has this key (or the key is malformed).
    #[error("license not found")]
    LicenseNotFound,
    /// The license cannot take new activations.
    #[error("license is {}", .0.as_str())]
    LicenseNotActive(LicenseStatus),
    /// All device slots are taken.
    #[error("all {max_devices} device slots of this license are in use")]
    TooManyDevices {
        /// The limit.
        max_devices: u32,
    },
    /// The activation token is unknown or superseded.
    #[error("activation token is not valid")]
    InvalidToken,
    /// The device was deactivated; activate again to use it.
    #[error("this device was deactivated; activate again")]
    DeviceDeactivated,
    /// The device missed its heartbeat window; activate again.
    #[error("this device missed its heartbeat window; activate again")]
    HeartbeatDead,
    /// No such device among the caller's.
    #[error("device not found")]
    DeviceNotFound,
    /// The plan asked for offers no trial (or does not exist), or no plan
    /// offers one.
    #[error("no trial is offered for this plan")]
    NoTrial,
    /// This machine has had its trial of this plan.
    #[error("this machine has already had a trial of this plan")]
    TrialUsed,
    /// A field is not acceptable.
    #[error("{0}")]
    Invalid(&'static str),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a device left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeactivationReason {
    /// The app deactivated itself.
    App,
    /// Removed from the dashboard.
    Dashboard,
    /// Evicted by a plan downgrade.
    Downgrade,
}

impl DeactivationReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::App => "app",
            Self::Dashboard => "dashboard",
            Self::Downgrade => "downgrade",
        }
    }
}

/// A device's text fields, for their refusal messages.
#[derive(Clone, Copy)]
enum DeviceField {
    Fingerprint,
    Name,
    Platform,
    AppVersion,
}

// The refusal messages below name the limit.
const _: () = assert!(MAX_DEVICE_TEXT_CHARS == 256);

fn check_field(value: Option<&str>, field: DeviceField) -> Result<(), LicensingError> {
    use DeviceField::*;
    use TextRefusal::*;
    let Err(refusal) = value.map_or(Ok(()), device::check_device_text) else { return Ok(()) };
    Err(LicensingError::Invalid(match (field, refusal) {
        (Fingerprint, TooLong) => "fingerprint is longer than 256 characters",
        (Name, TooLong) => "name is longer than 256 characters",
        (Platform, TooLong) => "platform is longer than 256 characters",
        (AppVersion, TooLong) => "app_version is longer than 256 characters",
        (Fingerprint, HiddenCharacter) => "fingerprint has control, bidirectional or zero-width characters",
        (Name, HiddenCharacter) => "name has control, bidirectional or zero-width characters",
        (Platform, HiddenCharacter) => "platform has control, bidirectional or zero-width characters",
        (AppVersion, HiddenCharacter) => "app_version has control, bidirectional or zero-width characters",
    }))
}

/// The plans and the server's heartbeat window: what judges a license's
/// devices in the decisions.
#[derive(Clone, Copy)]
pub(crate) struct DeviceRules<'a> {
    pub(crate) plans: &'a PlanCatalog,
    pub(crate) heartbeat_window: time::Duration,
}

impl<'a> DeviceRules<'a> {
    fn of(config: &'a BillingConfig) -> Self {
        Self { plans: &config.plans, heartbeat_window: config.licensing.heartbeat_window }
    }

    fn liveness(&self, license: &License) -> Liveness {
        Liveness::of_license(license, self.plans, self.heartbeat_window)
    }
}

impl BillingConfig {
    /// The catalog plan a license's terms name, if the catalog holds it.
    pub fn plan_of(&self, license: &License) -> Option<&Plan> {
        license.terms.plan_id.as_deref().and_then(|id| self.plans.by_id(id))
    }

    /// How `license`'s devices keep their slots: its plan's policy and
    /// heartbeat window, the server's window where the plan sets none.
    pub fn liveness_of(&self, license: &License) -> Liveness {
        DeviceRules::of(self).liveness(license)
    }

    /// How long `license`'s offline certificates last: its plan's
    /// `offline_ttl_secs`, else the server's.
    pub fn offline_ttl_of(&self, license: &License) -> time::Duration {
        let server = self.licensing.offline_ttl;
        self.plan_of(license).map_or(server, |plan| plan.offline_ttl(server))
    }
}

fn check_device_fields(
    fingerprint: &str,
    name: Option<&str>,
    platform: Option<&str>,
    app_version: Option<&str>,
) -> Result<(), LicensingError> {
    if fingerprint.trim().is_empty() {
        return Err(LicensingError::Invalid("fingerprint must not be empty"));
    }
    check_field(Some(fingerprint), DeviceField::Fingerprint)?;
    check_field(name, DeviceField::Name)?;
    check_field(platform, DeviceField::Platform)?;
    check_field(app_version, DeviceField::AppVersion)
}

impl<S: Store> Billing<S> {
    fn licensing(&self) -> &LicensingConfig {
        &self.config().licensing
    }

    /// How `license`'s devices keep their slots (see [`BillingConfig::liveness_of`]).
    pub fn liveness_of(&self, license: &License) -> Liveness {
        self.config().liveness_of(license)
    }

    /// Activates a license on a device.
    pub async fn activate(&self, request: &ActivationRequest<'_>) -> Result<Activation, LicensingError> {
        check_device_fields(request.fingerprint, request.name, request.platform, request.app_version)?;
        let key = LicenseKey::parse(request.license_key).ok_or(LicensingError::LicenseNotFound)?;
        let now = self.now();
        let config = self.config_arc();
        let token = ActivationToken::generate();
        let activating = Activating::new(
            &token,
            request.fingerprint,
            request.name,
            request.platform,
            request.app_version,
            request.client_addr,
        );
        let keys = LicenseKeys::ActivationOf { key_hash: key.lookup_hash() };
        let (license, device, created) = self
            .license_work(keys, move |bundle| {
                let rules = DeviceRules::of(&config);
                Changeset::from_decision(|changes| decide_activation(bundle, activating, now, rules, changes))
            })
            .await??;
        let (certificate, certificate_expires_at) = self.signed_certificate(&license, &device, now, None);
        Ok(Activation { token, device, license, certificate, certificate_expires_at, created })
    }

    /// Starts a card-less trial of a plan on a machine: a license of its
    /// own (`trial`, expiring after the plan's `trial_days`) with this
    /// device activated on it, once per plan and machine, ever. Announced
    /// as `license.created` and `device.activated`.
    pub async fn start_trial(&self, request: &TrialRequest<'_>) -> Result<Activation, LicensingError> {
        check_device_fields(request.fingerprint, request.name, request.platform, request.app_version)?;
        let plan = self.plans().trial_plan(request.plan).ok_or(LicensingError::NoTrial)?.clone();
        let now = self.now();
        let config = self.config_arc();
        let token = ActivationToken::generate();
        let activating = Activating::new(
            &token,
            request.fingerprint,
            request.name,
            request.platform,
            request.app_version,
            request.client_addr,
        );
        let fingerprint_hash = trial_fingerprint_hash(request.fingerprint);
        let keys = LicenseKeys::Trial { plan_id: plan.id.0.clone(), fingerprint_hash: fingerprint_hash.clone() };
        let (license, device) = self
            .license_work(keys, move |bundle| {
                let window = config.licensing.heartbeat_window;
                let trial = Trying { plan: &plan, fingerprint_hash, activating, key: LicenseKey::generate() };
                Changeset::from_decision(|changes| decide_trial(bundle, trial, now, window, changes))
            })
            .await??;
        let (certificate, certificate_expires_at) = self.signed_certificate(&license, &device, now, None);
        tracing::info!(license_id = %license.id, plan = ?license.terms.plan_id, "trial started");
        Ok(Activation { token, device, license, certificate, certificate_expires_at, created: true })
    }

    /// Activates a license for a machine with no network, from its owner's
    /// dashboard: the slot is taken as by an activation (refused when full
    /// or when the license is not `user_id`'s, which reads as not found), the
    /// device is air-gapped (it never heartbeats, so it keeps the slot until
    /// deactivated), and the answer is a certificate lasting the plan's
    /// `offline_activation_days`, capped like any certificate. No token is
    /// handed out: the machine could not use one.
    pub async fn activate_air_gapped(
        &self,
        user_id: &str,
        request: &OfflineActivationRequest,
        actor: &Actor,
    ) -> Result<Activation, LicensingError> {
        check_device_fields(
            &request.fingerprint,
            request.name.as_deref(),
            request.platform.as_deref(),
            request.app_version.as_deref(),
        )?;
        let now = self.now();
        let config = self.config_arc();
        // Never shown: it only keeps the slot's token column filled with
        // something no one holds.
        let token = ActivationToken::generate();
        let activating = Activating {
            actor: actor.clone(),
            owner: Some(user_id.to_owned()),
            air_gapped: true,
            ..Activating::new(
                &token,
                &request.fingerprint,
                request.name.as_deref(),
                request.platform.as_deref(),
                request.app_version.as_deref(),
                None,
            )
        };
        let keys = LicenseKeys::ActivationOf { key_hash: request.license_key_sha256.clone() };
        let (license, device, created) = self
            .license_work(keys, move |bundle| {
                let rules = DeviceRules::of(&config);
                Changeset::from_decision(|changes| decide_activation(bundle, activating, now, rules, changes))
            })
            .await??;
        let lifetime = self.config().plan_of(&license).map_or(DEFAULT_OFFLINE_ACTIVATION, Plan::offline_activation);
        let (certificate, certificate_expires_at) = self.signed_certificate(&license, &device, now, Some(lifetime));
        tracing::info!(license_id = %license.id, device_id = %device.id, "air-gapped activation");
        Ok(Activation { token, device, license, certificate, certificate_expires_at, created })
    }

    /// Validates a key, and optionally that a fingerprint is alive on it.
    pub async fn validate(&self, license_key: &str, fingerprint: Option<&str>) -> Result<Validation, LicensingError> {
        self.validate_with_release(license_key, fingerprint, None).await
    }

    /// [`Billing::validate`], and when `app_released_at` is given, that the
    /// license's updates window covers a build released then
    /// (`UPDATES_EXPIRED` otherwise).
    pub async fn validate_with_release(
        &self,
        license_key: &str,
        fingerprint: Option<&str>,
        app_released_at: Option<Timestamp>,
    ) -> Result<Validation, LicensingError> {
        let Some(key) = LicenseKey::parse(license_key) else {
            return Ok(Validation { code: ValidationCode::NotFound, license: None });
        };
        let key_hash = key.lookup_hash();
        let now = self.now();
        let verdict = |license: &Option<License>, device: &Option<Device>| {
            let server = Liveness::floating(self.licensing().heartbeat_window);
            let liveness = license.as_ref().map_or(server, |l| self.liveness_of(l));
            let query =
                ValidationQuery { fingerprint_given: fingerprint.is_some(), device: device.as_ref(), app_released_at };
            device::validate(license.as_ref(), query, now, liveness)
        };
        if let Some((license, device)) = self.validation_view().lookup(&key_hash, fingerprint) {
            let license = Some(license);
            let code = verdict(&license, &device);
            // Heartbeats on other instances never reach the view: what
            // looks dead from here is asked of the store.
            if code != ValidationCode::HeartbeatDead {
                return Ok(Validation { code, license });
            }
        }
        let (license, device) = self.read_for_validation(&key_hash, fingerprint).await?;
        let code = verdict(&license, &device);
        Ok(Validation { code, license })
    }

    /// The store's answer for a validation, kept in the view.
    async fn read_for_validation(
        &self,
        key_hash: &[u8],
        fingerprint: Option<&str>,
    ) -> Result<(Option<License>, Option<Device>), StoreError> {
        let view = self.validation_view();
        // Taken before the read, so that a change committed meanwhile keeps it out of the view.
        let epoch = view.epoch();
        let (license, device) = self.store().license_and_device(key_hash, fingerprint).await?;
        if let Some(license) = &license {
            view.fill(key_hash, epoch, license, fingerprint, device.as_ref());
        }
        Ok((license, device))
    }

    /// Records a heartbeat from the device holding `token`.
    pub async fn heartbeat(&self, token: &str) -> Result<Heartbeat, LicensingError> {
        let now = self.now();
        let config = self.config_arc();
        let keys = LicenseKeys::DeviceByToken { token_hash: ActivationToken::presented(token).hash() };
        let (device, license) = self
            .license_work(keys, move |bundle| {
                let rules = DeviceRules::of(&config);
                Changeset::from_decision(|changes| decide_heartbeat(bundle, now, rules, changes))
            })
            .await??;
        self.validation_view().record_heartbeat(license.id, device.id, now);
        let certificate = self.certificate(&license, &device, now);
        Ok(Heartbeat { device, license, certificate })
    }

    /// Deactivates the device holding `token`, freeing its slot; the app
    /// asked from `client_addr`.
    pub async fn deactivate(
        &self,
        token: &str,
        client_addr: Option<std::net::IpAddr>,
    ) -> Result<Device, LicensingError> {
        let now = self.now();
        let keys = LicenseKeys::DeviceByToken { token_hash: ActivationToken::presented(token).hash() };
        self.license_work(keys, move |bundle| {
            Changeset::from_decision(|changes| decide_app_deactivation(bundle, client_addr, now, changes))
        })
        .await?
    }

    /// Marks every overdue device dead (audit row + `device.dead` event),
    /// each judged by its license's plan. Returns how many. Runs
    /// periodically; safe on several instances.
    pub async fn reap_dead_devices(&self) -> Result<usize, StoreError> {
        let now = self.now();
        let mut total = 0;
        loop {
            let keys = LicenseKeys::OverdueDevices { now, limit: 500 };
            let config = self.config_arc();
            let reaping = self
                .license_work(keys, move |bundle| {
                    let rules = DeviceRules::of(&config);
                    Changeset::from_decision(|changes| decide_reaping(bundle, now, rules, changes))
                })
                .await?;
            total += reaping.dead;
            if reaping.swept == 0 {
                return Ok(total);
            }
        }
    }

    /// The caller's devices across their licenses.
    pub async fn devices_of_user(&self, user_id: &str) -> Result<Vec<Device>, StoreError> {
        self.store().devices_of_user(user_id).await
    }

    /// Deactivates a device from the dashboard. `user_id` None acts as an
    /// admin on any device.
    pub async fn deactivate_device_of_user(
        &self,
        user_id: Option<&str>,
        device_id: Uuid,
        actor: &Actor,
    ) -> Result<Device, LicensingError> {
        let now = self.now();
        let keys = LicenseKeys::DeviceOfUser { device_id, user_id: user_id.map(str::to_owned) };
        let actor = actor.clone();
        self.license_work(keys, move |bundle| {
            Changeset::from_decision(|changes| decide_dashboard_removal(bundle, &actor, now, changes))
        })
        .await?
    }

    /// Renames a device from the dashboard; returns it with how its
    /// license keeps slots.
    pub async fn rename_device_of_user(
        &self,
        user_id: Option<&str>,
        device_id: Uuid,
        name: &str,
        actor: &Actor,
    ) -> Result<(Device, Liveness), LicensingError> {
        let name = name.trim();
        if name.is_empty() {
            return Err(LicensingError::Invalid("name must not be empty"));
        }
        check_field(Some(name), DeviceField::Name)?;
        let keys = LicenseKeys::DeviceOfUser { device_id, user_id: user_id.map(str::to_owned) };
        let (name, actor) = (name.to_owned(), actor.clone());
        let config = self.config_arc();
        self.license_work(keys, move |bundle| {
            let server = Liveness::floating(config.licensing.heartbeat_window);
            let liveness = bundle.license().map_or(server, |held| config.liveness_of(&held.record.license));
            let (changes, renamed) = Changeset::from_decision(|changes| decide_rename(bundle, name, &actor, changes));
            (changes, renamed.map(|device| (device, liveness)))
        })
        .await?
    }

    /// Signs an offline certificate for a device, lasting its plan's
    /// offline TTL (capped by paid-through plus grace).
    pub fn certificate(&self, license: &License, device: &Device, now: Timestamp) -> String {
        self.signed_certificate(license, device, now, None).0
    }

    /// A certificate lasting `ttl` from `now` (the plan's offline TTL when
    /// `None`), capped by paid-through plus grace (a hard expiry caps it
    /// with no grace), and when it expires.
    fn signed_certificate(
        &self,
        license: &License,
        device: &Device,
        now: Timestamp,
        ttl: Option<time::Duration>,
    ) -> (String, Timestamp) {
        let cfg = self.licensing();
        let grace = self.config().grace;
        let ttl = ttl.unwrap_or_else(|| self.config().offline_ttl_of(license));
        // A hard expiry (manual, or an admin's) has no grace after it.
        let exp = match license.hard_expiry() {
            Some(end) => certificate::expiry(now, ttl, Some(end), time::Duration::ZERO),
            None => certificate::expiry(now, ttl, license.terms.expires_at, grace),
        };
        let signed = cfg.signing_key.sign(&CertificateClaims {
            iss: cfg.issuer.clone(),
            sub: license.id.to_string(),
            license_id: license.id.to_string(),
            device_id: device.id.to_string(),
            fingerprint: device.fingerprint.clone(),
            plan: license.terms.plan_id.clone(),
            status: license.effective_status(now).as_str().to_owned(),
            max_devices: license.terms.max_devices,
            entitlements: self.entitlements(license),
            kind: license.kind.as_str().to_owned(),
            updates_until: license.updates_until.map(|t| t.unix_timestamp()),
            trial: license.trial,
            iat: now.unix_timestamp(),
            expires_at: license.terms.expires_at.map(|t| t.unix_timestamp()),
            exp: exp.unix_timestamp(),
        });
        (signed, exp)
    }

    /// What a license grants: its plan's features and its own entitlements.
    pub fn entitlements(&self, license: &License) -> Vec<String> {
        license.entitlements_with(license.terms.plan_id.as_deref().and_then(|p| self.plans().by_id(p)))
    }

    /// The license-signing public key as a JWK.
    pub fn public_jwk(&self) -> serde_json::Value {
        self.licensing().signing_key.public_jwk()
    }

    /// Whether `token` authorises listening to `license_id`'s events: an
    /// active device of that license.
    pub async fn device_token_grants(&self, token: &str, license_id: Uuid) -> Result<bool, StoreError> {
        let device = self.store().device_by_token_hash(&ActivationToken::presented(token).hash()).await?;
        Ok(device.is_some_and(|d| d.license_id == license_id && d.status == DeviceStatus::Active))
    }

    /// The license of `license_key` and the device holding `token`, when
    /// that device is alive on that license: who may open a device's event
    /// stream. Both are looked up whatever the first lookup found, so a
    /// refusal does the same work whether or not the key exists.
    pub async fn event_stream_device(
        &self,
        license_key: &str,
        token: &str,
    ) -> Result<Option<(License, Device)>, StoreError> {
        let license = self.license_by_key(license_key).await?;
        let device = self.store().device_by_token_hash(&ActivationToken::presented(token).hash()).await?;
        Ok(license.zip(device).filter(|(license, device)| {
            device.license_id == license.id && device.is_alive(self.now(), self.liveness_of(license))
        }))
    }

    /// Whether the device holding `token` is still alive (neither
    /// deactivated nor dead) on `license`.
    pub async fn device_of_token_is_alive(&self, token: &str, license: &License) -> Result<bool, StoreError> {
        let device = self.store().device_by_token_hash(&ActivationToken::presented(token).hash()).await?;
        Ok(device.is_some_and(|d| d.license_id == license.id && d.is_alive(self.now(), self.liveness_of(license))))
    }

    /// The user's devices across their licenses, each with how its
    /// license keeps slots, most recently seen first (the dashboard's
    /// terminals).
    pub async fn terminals_of_user(&self, user_id: &str) -> Result<Vec<(Device, Liveness)>, StoreError> {
        let licenses = self.store().licenses_of_user(user_id).await?;
        let devices = self.store().devices_of_user(user_id).await?;
        let server = Liveness::floating(self.licensing().heartbeat_window);
        Ok(devices
            .into_iter()
            .map(|d| {
                let liveness = licenses.iter().find(|l| l.id == d.license_id).map_or(server, |l| self.liveness_of(l));
                (d, liveness)
            })
            .collect())
    }

    /// The license with this key (for the event stream's authorisation).
    pub async fn license_by_key(&self, license_key: &str) -> Result<Option<License>, StoreError> {
        match LicenseKey::parse(license_key) {
            Some(key) => self.store().license_by_key_hash(&key.lookup_hash()).await,
            None => Ok(None),
        }
    }
}

/// A device to activate, as the request gave it, with the id a new slot
/// gets, its new token's hash and who activates it.
struct Activating {
    device_id: Uuid,
    token_hash: Vec<u8>,
    fingerprint: String,
    name: Option<String>,
    platform: Option<String>,
    app_version: Option<String>,
    /// The app itself, or the owner from the dashboard for an air-gapped
    /// machine.
    actor: Actor,
    /// The user whose license it must be: the dashboard's caller. `None`
    /// for an app, which proves itself with the key.
    owner: Option<String>,
    air_gapped: bool,
}

impl Activating {
    /// A new slot's device as an app's request describes it, to hold `token`.
    fn new(
        token: &ActivationToken,
        fingerprint: &str,
        name: Option<&str>,
        platform: Option<&str>,
        app_version: Option<&str>,
        client_addr: Option<std::net::IpAddr>,
    ) -> Self {
        Self {
            device_id: Uuid::new_v4(),
            token_hash: token.hash(),
            fingerprint: fingerprint.to_owned(),
            name: name.map(str::to_owned),
            platform: platform.map(str::to_owned),
            app_version: app_version.map(str::to_owned),
            actor: Actor::Device { client_addr },
            owner: None,
            air_gapped: false,
        }
    }

    /// The device as it is stored on `license_id`, active from `now`; the
    /// token hash and the actor.
    fn into_device(self, license_id: Uuid, now: Timestamp) -> (Device, Vec<u8>, Actor) {
        let Self { device_id, token_hash, fingerprint, name, platform, app_version, actor, owner: _, air_gapped } =
            self;
        let device = Device {
            id: device_id,
            license_id,
            fingerprint,
            name,
            platform,
            app_version,
            status: DeviceStatus::Active,
            activated_at: now,
            last_heartbeat_at: now,
            deactivated_at: None,
            air_gapped,
        };
        (device, token_hash, actor)
    }
}

/// An activation: a new slot, or the fingerprint's own taken again, with a
/// new token. Returns the license, the device and whether the slot is new.
fn decide_activation(
    bundle: LicenseBundle,
    activating: Activating,
    now: Timestamp,
    rules: DeviceRules<'_>,
    changes: &mut Changeset,
) -> Result<(License, Device, bool), LicensingError> {
    let held = bundle.licenses.into_iter().next().ok_or(LicensingError::LicenseNotFound)?;
    if activating.owner.as_ref().is_some_and(|owner| held.record.owner_user_id.as_ref() != Some(owner)) {
        return Err(LicensingError::LicenseNotFound);
    }
    let liveness = rules.liveness(&held.record.license);
    let plan = device::plan_activation(&held.record.license, &held.devices, &activating.fingerprint, now, liveness)
        .map_err(|r| match r {
            ActivationRefusal::LicenseNotActive(status) => LicensingError::LicenseNotActive(status),
            ActivationRefusal::TooManyDevices { max_devices } => LicensingError::TooManyDevices { max_devices },
        })?;
    let (mut device, token_hash, actor) = activating.into_device(held.record.license.id, now);
    let heartbeat_deadline = device.deadline(now, liveness);
    let created = match plan {
        ActivationPlan::New => {
            changes.new_devices.push(DeviceActivation { device: device.clone(), token_hash, heartbeat_deadline });
            true
        }
        ActivationPlan::Reuse(id) => {
            device.id = id;
            changes.reactivated_devices.push(DeviceActivation {
                device: device.clone(),
                token_hash,
                heartbeat_deadline,
            });
            false
        }
    };
    let detail = match device.air_gapped {
        true => json!({ "new_slot": created, "air_gapped": true }),
        false => json!({ "new_slot": created }),
    };
    changes.device_audit.push(device_audit(&device, "activated", &actor, detail));
    changes.outbox.push(device_message(Topic::DeviceActivated, &device, None));
    Ok((held.record.license, device, created))
}

/// A heartbeat of a live device, which moves its deadline by its plan's
/// window (a node-locked plan's devices have none, so a heartbeat only
/// refreshes when they were last seen); one found overdue is declared dead
/// (and the app told so, with the death recorded).
fn decide_heartbeat(
    bundle: LicenseBundle,
    now: Timestamp,
    rules: DeviceRules<'_>,
    changes: &mut Changeset,
) -> Result<(Device, License), LicensingError> {
    let license = bundle.license().map(|held| held.record.license.clone());
    let liveness = license.as_ref().map_or(Liveness::floating(rules.heartbeat_window), |l| rules.liveness(l));
    let device = live_device(bundle.device(), now, liveness, changes)?;
    let license = license.ok_or(LicensingError::InvalidToken)?;
    changes.heartbeats.push(HeartbeatWrite {
        device_id: device.id,
        at: now,
        heartbeat_deadline: device.deadline(now, liveness),
    });
    Ok((Device { last_heartbeat_at: now, ..device }, license))
}

/// The device of a token when it is alive; one overdue is declared dead
/// in `changes` (and refused all the same).
fn live_device(
    device: Option<&Device>,
    now: Timestamp,
    liveness: Liveness,
    changes: &mut Changeset,
) -> Result<Device, LicensingError> {
    let device = device.ok_or(LicensingError::InvalidToken)?;
    match device.status {
        DeviceStatus::Deactivated => Err(LicensingError::DeviceDeactivated),
        DeviceStatus::Dead => Err(LicensingError::HeartbeatDead),
        DeviceStatus::Active if device.is_overdue(now, liveness) => {
            declare_dead(changes, device, now);
            Err(LicensingError::HeartbeatDead)
        }
        DeviceStatus::Active => Ok(device.clone()),
    }
}

/// The app deactivating its own device; a second time is refused.
fn decide_app_deactivation(
    bundle: LicenseBundle,
    client_addr: Option<std::net::IpAddr>,
    now: Timestamp,
    changes: &mut Changeset,
) -> Result<Device, LicensingError> {
    let device = bundle.devices.into_iter().next().ok_or(LicensingError::InvalidToken)?;
    if device.status == DeviceStatus::Deactivated {
        return Err(LicensingError::DeviceDeactivated);
    }
    Ok(deactivate(changes, device, DeactivationReason::App, &Actor::Device { client_addr }, now))
}

/// A removal from the dashboard; removing a removed device changes nothing.
fn decide_dashboard_removal(
    bundle: LicenseBundle,
    actor: &Actor,
    now: Timestamp,
    changes: &mut Changeset,
) -> Result<Device, LicensingError> {
    let device = bundle.devices.into_iter().next().ok_or(LicensingError::DeviceNotFound)?;
    if device.status == DeviceStatus::Deactivated {
        return Ok(device);
    }
    Ok(deactivate(changes, device, DeactivationReason::Dashboard, actor, now))
}

/// A new name for a device (`name` checked already).
fn decide_rename(
    bundle: LicenseBundle,
    name: String,
    actor: &Actor,
    changes: &mut Changeset,
) -> Result<Device, LicensingError> {
    let device = bundle.devices.into_iter().next().ok_or(LicensingError::DeviceNotFound)?;
    changes.device_names.push((device.id, name.clone()));
    let detail = json!({ "name": name });
    let device = Device { name: Some(name), ..device };
    changes.device_audit.push(device_audit(&device, "renamed", actor, detail));
    changes.outbox.push(device_message(Topic::DeviceUpdated, &device, None));
    Ok(device)
}

/// What one batch of the reaper did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reaping {
    /// Devices looked at (the batch loaded): none left means the sweep is done.
    swept: usize,
    /// Devices declared dead.
    dead: usize,
}

/// Each device past its stored deadline is judged by its license's plan
/// as configured now: overdue, it is declared dead; otherwise (its plan's
/// window grew, or it keeps slots now) its deadline is corrected, so that
/// the sweep does not find it again before it is due.
fn decide_reaping(bundle: LicenseBundle, now: Timestamp, rules: DeviceRules<'_>, changes: &mut Changeset) -> Reaping {
    let server = Liveness::floating(rules.heartbeat_window);
    let mut dead = 0;
    for device in &bundle.devices {
        let license = bundle.licenses.iter().find(|l| l.record.license.id == device.license_id);
        let liveness = license.map_or(server, |held| rules.liveness(&held.record.license));
        if device.is_overdue(now, liveness) {
            declare_dead(changes, device, now);
            dead += 1;
        } else {
            changes.device_deadlines.push((device.id, device.deadline(device.last_heartbeat_at, liveness)));
        }
    }
    Reaping { swept: bundle.devices.len(), dead }
}

/// SHA-256 of a fingerprint: what `trial_uses` keeps of the machine.
fn trial_fingerprint_hash(fingerprint: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, fingerprint.as_bytes()).as_ref().to_vec()
}

/// A trial to start: its plan (one with `trial_days`), the machine, and
/// the key its license gets.
struct Trying<'a> {
    plan: &'a Plan,
    fingerprint_hash: Vec<u8>,
    activating: Activating,
    key: LicenseKey,
}

/// A trial: unless this machine had one of this plan, a license of its own
/// (no user, `trial`, expiring after the plan's trial days, the plan's
/// kind, device limit and features) with this device activated on it,
/// the machine recorded as having had it, audited with the app as actor
/// and announced. Returns the license and the device.
fn decide_trial(
    bundle: LicenseBundle,
    trying: Trying<'_>,
    now: Timestamp,
    server_window: time::Duration,
    changes: &mut Changeset,
) -> Result<(License, Device), LicensingError> {
    if bundle.used_trial.is_some() {
        return Err(LicensingError::TrialUsed);
    }
    let Trying { plan, fingerprint_hash, activating, key } = trying;
    let length = plan.trial().ok_or(LicensingError::NoTrial)?;
    let overrides = LicenseOverrides { expires_at: Some(now + length), ..LicenseOverrides::default() };
    let license = crate::admin_licenses::as_stored(License {
        id: Uuid::new_v4(),
        subscription_id: None,
        source: LicenseSource::Manual,
        user_id: None,
        key,
        terms: LicenseTerms {
            plan_id: Some(plan.id.0.clone()),
            ..license::manual_terms(Some(plan), None, &overrides, now)
        },
        entitlements: Vec::new(),
        metadata: serde_json::Map::new(),
        overrides,
        kind: plan.kind,
        updates_until: None,
        trial: true,
    });
    let (device, token_hash, actor) = activating.into_device(license.id, now);
    let client_addr = actor.client_addr();
    let liveness = Liveness::of(Some(plan), server_window);
    changes.new_licenses.push(license.clone());
    changes.trial_uses.push(TrialUse { plan_id: plan.id.0.clone(), fingerprint_hash, license_id: license.id });
    changes.license_audit.push(LicenseAudit {
        license_id: license.id,
        kind: "issued",
        actor: actor.label(),
        detail: json!({
            "trial": true,
            "plan": plan.id,
            "expires_at": license.terms.expires_at.map(rfc3339),
            "device_id": device.id,
        }),
        client_addr,
    });
    changes.outbox.push(license_message(Topic::LicenseCreated, &license));
    changes.new_devices.push(DeviceActivation {
        device: device.clone(),
        token_hash,
        heartbeat_deadline: device.deadline(now, liveness),
    });
    changes.device_audit.push(device_audit(&device, "activated", &actor, json!({ "new_slot": true, "trial": true })));
    changes.outbox.push(device_message(Topic::DeviceActivated, &device, None));
    Ok((license, device))
}

/// Deactivates a device: its status, audit row and event. Returns it as
/// deactivated.
pub(crate) fn deactivate(
    changes: &mut Changeset,
    device: Device,
    reason: DeactivationReason,
    actor: &Actor,
    now: Timestamp,
) -> Device {
    changes.device_statuses.push((device.id, DeviceStatus::Deactivated, now));
    let device = Device { status: DeviceStatus::Deactivated, deactivated_at: Some(now), ..device };
    changes.device_audit.push(device_audit(&device, "deactivated", actor, json!({ "reason": reason.as_str() })));
    changes.outbox.push(device_message(Topic::DeviceDeactivated, &device, Some(reason.as_str())));
    device
}

fn declare_dead(changes: &mut Changeset, device: &Device, now: Timestamp) {
    changes.device_statuses.push((device.id, DeviceStatus::Dead, now));
    let dead = Device { status: DeviceStatus::Dead, deactivated_at: Some(now), ..device.clone() };
    let detail = json!({ "last_heartbeat_at": rfc3339(device.last_heartbeat_at) });
    changes.device_audit.push(device_audit(&dead, "dead", &Actor::System, detail));
    changes.outbox.push(device_message(Topic::DeviceDead, &dead, Some("heartbeat_missed")));
}

fn device_audit(device: &Device, kind: &'static str, actor: &Actor, detail: serde_json::Value) -> DeviceAudit {
    DeviceAudit {
        device_id: device.id,
        license_id: device.license_id,
        kind,
        actor: actor.label(),
        detail,
        client_addr: actor.client_addr(),
    }
}

pub(crate) fn device_message(topic: Topic, device: &Device, reason: Option<&str>) -> OutboxMessage {
    OutboxMessage {
        license_id: Some(device.license_id),
        topic,
        payload: json!({
            "license_id": device.license_id,
            "device_id": device.id,
            "fingerprint": device.fingerprint,
            "name": device.name,
            "status": device.status,
            "reason": reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::license_work::fixtures::{device, device_bundle, empty_bundle, license, license_bundle, NOW};

    const WINDOW: time::Duration = time::Duration::minutes(10);
    static NO_PLANS: std::sync::LazyLock<PlanCatalog> = std::sync::LazyLock::new(PlanCatalog::default);

    /// No catalog plan: every license floats with the server's window.
    fn rules() -> DeviceRules<'static> {
        DeviceRules { plans: &NO_PLANS, heartbeat_window: WINDOW }
    }
    const APP_ADDR: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7));

    fn activating(fingerprint: &str) -> Activating {
        Activating {
            device_id: Uuid::new_v4(),
            token_hash: b"token-hash".to_vec(),
            fingerprint: fingerprint.into(),
            name: Some("Laptop".into()),
            platform: Some("macos".into()),
            app_version: Some("2.0.0".into()),
            actor: Actor::Device { client_addr: Some(APP_ADDR) },
            owner: None,
            air_gapped: false,
        }
    }

    fn topics(changes: &Changeset) -> Vec<Topic> {
        changes.outbox.iter().map(|m| m.topic).collect()
    }

    fn audit_kinds(changes: &Changeset) -> Vec<&'static str> {
        changes.device_audit.iter().map(|a| a.kind).collect()
    }

    #[test]
    fn an_activation_in_a_new_slot_inserts_the_device_with_its_token_hash() {
        let held = license(2);
        let request = activating("fp-new");
        let new_id = request.device_id;
        let (changes, result) = Changeset::from_decision(|c| {
            decide_activation(license_bundle(held.clone(), Vec::new()), request, NOW, rules(), c)
        });
        let (returned, device, created) = result.unwrap();
        assert_eq!((returned, created), (held.clone(), true));
        assert_eq!(
            (device.id, device.status, device.activated_at, device.last_heartbeat_at),
            (new_id, DeviceStatus::Active, NOW, NOW)
        );
        assert_eq!(
            changes.new_devices,
            [DeviceActivation {
                device: device.clone(),
                token_hash: b"token-hash".to_vec(),
                heartbeat_deadline: Some(NOW + WINDOW)
            }]
        );
        assert!(changes.reactivated_devices.is_empty());
        assert_eq!(audit_kinds(&changes), ["activated"]);
        assert_eq!(changes.device_audit[0].detail, json!({ "new_slot": true }));
        assert_eq!(changes.device_audit[0].actor, "system");
        assert_eq!(topics(&changes), [Topic::DeviceActivated]);
        assert_eq!(changes.outbox[0].license_id, Some(held.id));
    }

    #[test]
    fn an_activation_of_a_known_fingerprint_takes_its_slot_again() {
        let held = license(1);
        let dead = device(&held, "fp-1", 60, DeviceStatus::Dead);
        let (changes, result) = Changeset::from_decision(|c| {
            decide_activation(license_bundle(held.clone(), vec![dead.clone()]), activating("fp-1"), NOW, rules(), c)
        });
        let (_, device, created) = result.unwrap();
        assert!(!created);
        assert_eq!((device.id, device.status, device.deactivated_at), (dead.id, DeviceStatus::Active, None));
        assert_eq!(device.name.as_deref(), Some("Laptop"), "the request's details replace the held ones");
        assert!(changes.new_devices.is_empty());
        assert_eq!(
            changes.reactivated_devices,
            [DeviceActivation { device, token_hash: b"token-hash".to_vec(), heartbeat_deadline: Some(NOW + WINDOW) }]
        );
        assert_eq!(changes.device_audit[0].detail, json!({ "new_slot": false }));
        assert_eq!(topics(&changes), [Topic::DeviceActivated]);
    }

    #[test]
    fn an_air_gapped_activation_keeps_its_slot_and_is_its_owners_alone() {
        let held = license(1);
        let from_dashboard = |owner: &str| Activating {
            actor: Actor::user(owner),
            owner: Some(owner.to_owned()),
            air_gapped: true,
            ..activating("fp-air")
        };
        let (changes, result) = Changeset::from_decision(|c| {
            decide_activation(license_bundle(held.clone(), Vec::new()), from_dashboard("user_2"), NOW, rules(), c)
        });
        assert!(matches!(result, Err(LicensingError::LicenseNotFound)), "someone else's: {result:?}");
        assert!(changes.is_empty());

        let (changes, result) = Changeset::from_decision(|c| {
            decide_activation(license_bundle(held.clone(), Vec::new()), from_dashboard("user_1"), NOW, rules(), c)
        });
        let (_, device, created) = result.unwrap();
        assert!(created && device.air_gapped);
        assert_eq!(changes.new_devices[0].heartbeat_deadline, None, "never swept: it cannot heartbeat");
        let audit = &changes.device_audit[0];
        assert_eq!(
            (audit.actor.as_str(), &audit.detail),
            ("user:user_1", &json!({ "new_slot": true, "air_gapped": true }))
        );
        assert_eq!(topics(&changes), [Topic::DeviceActivated]);

        // Years of silence later it still holds the slot.
        let silent = Device { last_heartbeat_at: NOW - time::Duration::days(300), ..device };
        let (_, result) = Changeset::from_decision(|c| {
            decide_activation(license_bundle(held.clone(), vec![silent]), activating("fp-2"), NOW, rules(), c)
        });
        assert!(matches!(result, Err(LicensingError::TooManyDevices { max_devices: 1 })), "{result:?}");
    }

    #[test]
    fn a_refused_activation_writes_nothing() {
        let held = license(1);
        let alive = device(&held, "fp-1", 1, DeviceStatus::Active);
        let (changes, result) = Changeset::from_decision(|c| {
            decide_activation(license_bundle(held.clone(), vec![alive]), activating("fp-2"), NOW, rules(), c)
        });
        assert!(matches!(result, Err(LicensingError::TooManyDevices { max_devices: 1 })), "{result:?}");
        assert!(changes.is_empty());

        let revoked = License {
            terms: crate::domain::LicenseTerms { status: LicenseStatus::Revoked, ..held.terms.clone() },
            ..held
        };
        let (changes, result) = Changeset::from_decision(|c| {
            decide_activation(license_bundle(revoked, Vec::new()), activating("fp-2"), NOW, rules(), c)
        });
        assert!(matches!(result, Err(LicensingError::LicenseNotActive(LicenseStatus::Revoked))), "{result:?}");
        assert!(changes.is_empty());

        let (changes, result) =
            Changeset::from_decision(|c| decide_activation(empty_bundle(), activating("fp-2"), NOW, rules(), c));
        assert!(matches!(result, Err(LicensingError::LicenseNotFound)), "{result:?}");
        assert!(changes.is_empty());
    }

    #[test]
    fn a_heartbeat_of_a_live_device_only_touches_it() {
        let held = license(1);
        let alive = device(&held, "fp-1", 5, DeviceStatus::Active);
        let (changes, result) =
            Changeset::from_decision(|c| decide_heartbeat(device_bundle(held.clone(), alive.clone()), NOW, rules(), c));
        let (device, license) = result.unwrap();
        assert_eq!((device.id, device.last_heartbeat_at, license), (alive.id, NOW, held));
        let beat = HeartbeatWrite { device_id: alive.id, at: NOW, heartbeat_deadline: Some(NOW + WINDOW) };
        assert_eq!(changes, Changeset { heartbeats: vec![beat], ..Changeset::default() });
    }

    #[test]
    fn a_heartbeat_of_an_overdue_device_records_its_death_and_is_refused() {
        let held = license(1);
        let overdue = device(&held, "fp-1", 11, DeviceStatus::Active);
        let (changes, result) =
            Changeset::from_decision(|c| decide_heartbeat(device_bundle(held, overdue.clone()), NOW, rules(), c));
        assert!(matches!(result, Err(LicensingError::HeartbeatDead)), "{result:?}");
        assert_eq!(changes.device_statuses, [(overdue.id, DeviceStatus::Dead, NOW)]);
        assert!(changes.heartbeats.is_empty());
        assert_eq!(audit_kinds(&changes), ["dead"]);
        assert_eq!(changes.device_audit[0].detail, json!({ "last_heartbeat_at": rfc3339(overdue.last_heartbeat_at) }));
        assert_eq!(topics(&changes), [Topic::DeviceDead]);
        assert_eq!(changes.outbox[0].payload["reason"], "heartbeat_missed");
        assert_eq!(changes.outbox[0].payload["status"], "dead");
    }

    #[test]
    fn a_heartbeat_of_a_device_that_left_or_of_no_device_writes_nothing() {
        let held = license(1);
        for (status, refused) in
            [(DeviceStatus::Deactivated, "DeviceDeactivated"), (DeviceStatus::Dead, "HeartbeatDead")]
        {
            let gone = device(&held, "fp-1", 1, status);
            let (changes, result) =
                Changeset::from_decision(|c| decide_heartbeat(device_bundle(held.clone(), gone), NOW, rules(), c));
            assert_eq!(format!("{:?}", result.unwrap_err()), refused);
            assert!(changes.is_empty());
        }
        let (changes, result) = Changeset::from_decision(|c| decide_heartbeat(empty_bundle(), NOW, rules(), c));
        assert!(matches!(result, Err(LicensingError::InvalidToken)), "{result:?}");
        assert!(changes.is_empty());
    }

    #[test]
    fn the_app_deactivates_its_device_once() {
        let held = license(1);
        let alive = device(&held, "fp-1", 1, DeviceStatus::Active);
        let (changes, result) = Changeset::from_decision(|c| {
            decide_app_deactivation(device_bundle(held.clone(), alive.clone()), Some(APP_ADDR), NOW, c)
        });
        let left = result.unwrap();
        assert_eq!((left.id, left.status, left.deactivated_at), (alive.id, DeviceStatus::Deactivated, Some(NOW)));
        assert_eq!(changes.device_statuses, [(alive.id, DeviceStatus::Deactivated, NOW)]);
        assert_eq!(audit_kinds(&changes), ["deactivated"]);
        assert_eq!(changes.device_audit[0].detail, json!({ "reason": "app" }));
        assert_eq!(changes.device_audit[0].client_addr, Some(APP_ADDR), "where the app asked from");
        assert_eq!(topics(&changes), [Topic::DeviceDeactivated]);
        assert_eq!(changes.outbox[0].payload["reason"], "app");

        let (changes, result) =
            Changeset::from_decision(|c| decide_app_deactivation(device_bundle(held, left), None, NOW, c));
        assert!(matches!(result, Err(LicensingError::DeviceDeactivated)), "{result:?}");
        assert!(changes.is_empty());
    }

    #[test]
    fn a_dashboard_removal_is_audited_with_its_actor_and_a_second_one_changes_nothing() {
        let held = license(1);
        let actor = Actor::user("user_1");
        let alive = device(&held, "fp-1", 1, DeviceStatus::Active);
        let (changes, result) = Changeset::from_decision(|c| {
            decide_dashboard_removal(device_bundle(held.clone(), alive.clone()), &actor, NOW, c)
        });
        let left = result.unwrap();
        assert_eq!(changes.device_audit[0].actor, "user:user_1");
        assert_eq!(changes.device_audit[0].detail, json!({ "reason": "dashboard" }));
        let (changes, result) =
            Changeset::from_decision(|c| decide_dashboard_removal(device_bundle(held, left.clone()), &actor, NOW, c));
        assert_eq!(result.unwrap(), left);
        assert!(changes.is_empty());
        let (changes, result) = Changeset::from_decision(|c| decide_dashboard_removal(empty_bundle(), &actor, NOW, c));
        assert!(matches!(result, Err(LicensingError::DeviceNotFound)), "{result:?}");
        assert!(changes.is_empty());
    }

    #[test]
    fn a_rename_writes_the_name_an_audit_row_and_device_updated() {
        let held = license(1);
        let actor = Actor::user("user_1");
        let alive = device(&held, "fp-1", 1, DeviceStatus::Active);
        let (changes, result) = Changeset::from_decision(|c| {
            decide_rename(device_bundle(held, alive.clone()), "Work laptop".into(), &actor, c)
        });
        assert_eq!(result.unwrap().name.as_deref(), Some("Work laptop"));
        assert_eq!(changes.device_names, [(alive.id, "Work laptop".to_owned())]);
        assert_eq!(audit_kinds(&changes), ["renamed"]);
        assert_eq!(changes.device_audit[0].detail, json!({ "name": "Work laptop" }));
        assert_eq!(topics(&changes), [Topic::DeviceUpdated]);
        assert_eq!(changes.outbox[0].payload["name"], "Work laptop");
        assert!(changes.device_statuses.is_empty());
    }

    #[test]
    fn the_reaper_declares_each_loaded_overdue_device_dead() {
        let held = license(3);
        let overdue =
            [device(&held, "fp-1", 30, DeviceStatus::Active), device(&held, "fp-2", 20, DeviceStatus::Active)];
        let bundle = LicenseBundle { devices: overdue.to_vec(), ..license_bundle(held, Vec::new()) };
        let (changes, reaped) = Changeset::from_decision(|c| decide_reaping(bundle, NOW, rules(), c));
        assert_eq!(reaped, Reaping { swept: 2, dead: 2 });
        let statuses: Vec<_> = overdue.iter().map(|d| (d.id, DeviceStatus::Dead, NOW)).collect();
        assert_eq!(changes.device_statuses, statuses);
        assert_eq!(audit_kinds(&changes), ["dead", "dead"]);
        assert_eq!(topics(&changes), [Topic::DeviceDead, Topic::DeviceDead]);
        assert!(changes.device_deadlines.is_empty());
        let (changes, reaped) = Changeset::from_decision(|c| decide_reaping(empty_bundle(), NOW, rules(), c));
        assert_eq!((reaped, changes.is_empty()), (Reaping { swept: 0, dead: 0 }, true));
    }

    #[test]
    fn the_reaper_judges_each_device_by_its_plan_and_corrects_the_deadlines_of_the_living() {
        use crate::domain::{DevicePolicy, Plan};
        let plans = PlanCatalog::new(vec![
            Plan { device_policy: DevicePolicy::NodeLocked, ..Plan::new("locked", "Locked", "price_l", 1) },
            Plan { heartbeat_window_secs: Some(3600), ..Plan::new("hourly", "Hourly", "price_h", 1) },
            Plan { heartbeat_window_secs: Some(60), ..Plan::new("minutely", "Minutely", "price_m", 1) },
        ])
        .unwrap();
        let rules = DeviceRules { plans: &plans, heartbeat_window: WINDOW };
        let on = |plan: &str| {
            let mut l = license(1);
            l.terms.plan_id = Some(plan.into());
            l
        };
        let (locked, hourly, minutely, unknown) = (on("locked"), on("hourly"), on("minutely"), on("gone"));
        // Each silent for 30 minutes: past the server's 10-minute window.
        let devices: Vec<Device> =
            [&locked, &hourly, &minutely, &unknown].iter().map(|l| device(l, "fp", 30, DeviceStatus::Active)).collect();
        let held = [&locked, &hourly, &minutely, &unknown]
            .iter()
            .map(|l| crate::storage::license_work::fixtures::held((*l).clone(), Vec::new()))
            .collect();
        let bundle = LicenseBundle { devices: devices.clone(), licenses: held, ..empty_bundle() };
        let (changes, reaped) = Changeset::from_decision(|c| decide_reaping(bundle, NOW, rules, c));
        assert_eq!(reaped, Reaping { swept: 4, dead: 2 });
        let dead: Vec<Uuid> = changes.device_statuses.iter().map(|(id, _, _)| *id).collect();
        assert_eq!(dead, [devices[2].id, devices[3].id], "the minutely plan's and the one no plan judges");
        let seen = devices[1].last_heartbeat_at;
        assert_eq!(
            changes.device_deadlines,
            [(devices[0].id, None), (devices[1].id, Some(seen + time::Duration::hours(1)))],
            "node-locked: no deadline; hourly: an hour after it was last heard"
        );
    }

    #[test]
    fn a_heartbeat_under_a_node_locked_plan_only_refreshes_last_seen() {
        use crate::domain::{DevicePolicy, Plan};
        let plans = PlanCatalog::new(vec![Plan {
            device_policy: DevicePolicy::NodeLocked,
            ..Plan::new("pro", "Pro", "price_pro", 1)
        }])
        .unwrap();
        let rules = DeviceRules { plans: &plans, heartbeat_window: WINDOW };
        let held = license(1);
        let silent_for_a_year = device(&held, "fp-1", 60 * 24 * 365, DeviceStatus::Active);
        let (changes, result) = Changeset::from_decision(|c| {
            decide_heartbeat(device_bundle(held.clone(), silent_for_a_year.clone()), NOW, rules, c)
        });
        assert_eq!(result.unwrap().0.last_heartbeat_at, NOW);
        assert_eq!(
            changes,
            Changeset {
                heartbeats: vec![HeartbeatWrite { device_id: silent_for_a_year.id, at: NOW, heartbeat_deadline: None }],
                ..Changeset::default()
            }
        );
    }

    fn trying<'a>(plan: &'a Plan, fingerprint: &str) -> Trying<'a> {
        Trying {
            plan,
            fingerprint_hash: trial_fingerprint_hash(fingerprint),
            activating: activating(fingerprint),
            key: LicenseKey::generate(),
        }
    }

    #[test]
    fn a_trial_issues_its_own_license_activates_the_device_and_records_the_machine() {
        use crate::domain::{LicenseKind, Plan};
        let plan = Plan {
            trial_days: Some(14),
            kind: LicenseKind::Perpetual,
            features: vec!["export".into()],
            ..Plan::new("studio", "Studio", "price_s", 2)
        };
        let (changes, result) =
            Changeset::from_decision(|c| decide_trial(empty_bundle(), trying(&plan, "fp-1"), NOW, WINDOW, c));
        let (license, device) = result.unwrap();
        assert!(license.trial);
        assert_eq!(
            (license.source, license.user_id.as_deref(), license.kind),
            (LicenseSource::Manual, None, LicenseKind::Perpetual)
        );
        assert_eq!(
            (license.terms.status, license.terms.max_devices, license.terms.plan_id.as_deref()),
            (LicenseStatus::Active, 2, Some("studio"))
        );
        assert_eq!(license.terms.expires_at, Some(NOW + time::Duration::days(14)));
        assert_eq!(license.hard_expiry(), Some(NOW + time::Duration::days(14)), "no grace after a trial");
        assert_eq!(license.effective_status(NOW + time::Duration::days(14)), LicenseStatus::Expired);
        assert_eq!(
            (device.license_id, device.status, device.fingerprint.as_str()),
            (license.id, DeviceStatus::Active, "fp-1")
        );
        assert_eq!(changes.new_licenses, std::slice::from_ref(&license));
        assert_eq!(
            changes.trial_uses,
            [TrialUse {
                plan_id: "studio".into(),
                fingerprint_hash: trial_fingerprint_hash("fp-1"),
                license_id: license.id
            }]
        );
        assert_eq!(changes.new_devices.len(), 1);
        assert_eq!(changes.new_devices[0].heartbeat_deadline, Some(NOW + WINDOW));
        assert_eq!(changes.license_audit.len(), 1);
        let audit = &changes.license_audit[0];
        assert_eq!((audit.kind, audit.actor.as_str(), audit.client_addr), ("issued", "system", Some(APP_ADDR)));
        assert_eq!(audit.detail["trial"], true);
        assert_eq!(audit_kinds(&changes), ["activated"]);
        assert_eq!(changes.device_audit[0].client_addr, Some(APP_ADDR));
        assert_eq!(topics(&changes), [Topic::LicenseCreated, Topic::DeviceActivated]);
        assert_eq!(changes.outbox[0].payload["trial"], true);
    }

    #[test]
    fn a_second_trial_of_a_plan_on_a_machine_writes_nothing() {
        let plan = crate::domain::Plan { trial_days: Some(14), ..crate::domain::Plan::new("pro", "Pro", "price", 1) };
        let tried = LicenseBundle { used_trial: Some(Uuid::new_v4()), ..empty_bundle() };
        let (changes, result) =
            Changeset::from_decision(|c| decide_trial(tried, trying(&plan, "fp-1"), NOW, WINDOW, c));
        assert!(matches!(result, Err(LicensingError::TrialUsed)), "{result:?}");
        assert!(changes.is_empty());
        assert_ne!(trial_fingerprint_hash("fp-1"), trial_fingerprint_hash("fp-2"));
        assert_eq!(trial_fingerprint_hash("fp-1").len(), 32);
    }
}
