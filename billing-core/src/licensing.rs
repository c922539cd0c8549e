//! Licensing use cases: activate, validate, heartbeat, deactivate, the
//! dashboard's terminals, and the reaper of dead devices.

use crate::billing::{rfc3339, Billing};
use crate::certificate::{self, CertificateClaims, SigningKey};
use crate::domain::device::{self, ActivationPlan, ActivationRefusal, TextRefusal, MAX_DEVICE_TEXT_CHARS};
use crate::domain::{
    ActivationToken, Actor, Device, DeviceStatus, License, LicenseKey, LicenseStatus, Timestamp, ValidationCode,
};
use crate::events;
use crate::storage::{OutboxMessage, Store, StoreError, StoreTx};
use serde_json::json;
use std::sync::Arc;
use uuid::Uuid;

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

impl<S: Store> Billing<S> {
    fn licensing(&self) -> &LicensingConfig {
        &self.config().licensing
    }

    /// Activates a license on a device.
    pub async fn activate(&self, request: &ActivationRequest<'_>) -> Result<Activation, LicensingError> {
        if request.fingerprint.trim().is_empty() {
            return Err(LicensingError::Invalid("fingerprint must not be empty"));
        }
        check_field(Some(request.fingerprint), DeviceField::Fingerprint)?;
        check_field(request.name, DeviceField::Name)?;
        check_field(request.platform, DeviceField::Platform)?;
        check_field(request.app_version, DeviceField::AppVersion)?;
        let key = LicenseKey::parse(request.license_key).ok_or(LicensingError::LicenseNotFound)?;
        let now = self.now();
        let window = self.licensing().heartbeat_window;
        let mut tx = self.store().begin().await?;
        let license = tx.lock_license_by_key_hash(&key.lookup_hash()).await?.ok_or(LicensingError::LicenseNotFound)?;
        let devices = tx.devices_of_license(license.id).await?;
        let plan =
            device::plan_activation(&license, &devices, request.fingerprint, now, window).map_err(|r| match r {
                ActivationRefusal::LicenseNotActive(status) => LicensingError::LicenseNotActive(status),
                ActivationRefusal::TooManyDevices { max_devices } => LicensingError::TooManyDevices { max_devices },
            })?;
        let token = ActivationToken::generate();
        let mut device = Device {
            id: Uuid::new_v4(),
            license_id: license.id,
            fingerprint: request.fingerprint.to_owned(),
            name: request.name.map(str::to_owned),
            platform: request.platform.map(str::to_owned),
            app_version: request.app_version.map(str::to_owned),
            status: DeviceStatus::Active,
            activated_at: now,
            last_heartbeat_at: now,
            deactivated_at: None,
        };
        let created = match plan {
            ActivationPlan::New => {
                tx.insert_device(&device, &token.hash()).await?;
                true
            }
            ActivationPlan::Reuse(id) => {
                device.id = id;
                tx.reactivate_device(&device, &token.hash()).await?;
                false
            }
        };
        tx.record_device_change(&device, "activated", &Actor::System, json!({ "new_slot": created })).await?;
        tx.enqueue(&device_message("device.activated", &device, None)).await?;
        tx.commit().await?;
        let certificate = self.certificate(&license, &device, now);
        Ok(Activation { token, device, license, certificate, created })
    }

    /// Validates a key, and optionally that a fingerprint is alive on it.
    pub async fn validate(&self, license_key: &str, fingerprint: Option<&str>) -> Result<Validation, LicensingError> {
        let Some(key) = LicenseKey::parse(license_key) else {
            return Ok(Validation { code: ValidationCode::NotFound, license: None });
        };
        let (license, device) = self.store().license_and_device(&key.lookup_hash(), fingerprint).await?;
        let now = self.now();
        let code = device::validate(
            license.as_ref(),
            fingerprint.is_some(),
            device.as_ref(),
            now,
            self.licensing().heartbeat_window,
        );
        Ok(Validation { code, license })
    }

    /// Records a heartbeat from the device holding `token`.
    pub async fn heartbeat(&self, token: &str) -> Result<Heartbeat, LicensingError> {
        let now = self.now();
        let mut tx = self.store().begin().await?;
        let device = self.live_device(&mut tx, token, now).await?;
        let Some(device) = device else {
            // The death was recorded; tell the app.
            tx.commit().await?;
            return Err(LicensingError::HeartbeatDead);
        };
        tx.touch_device(device.id, now).await?;
        // Read, not locked: this holds the device, and an activation or a
        // downgrade locks the license first and then its devices.
        let license = tx.license(device.license_id).await?.ok_or(LicensingError::InvalidToken)?;
        tx.commit().await?;
        let device = Device { last_heartbeat_at: now, ..device };
        let certificate = self.certificate(&license, &device, now);
        Ok(Heartbeat { device, license, certificate })
    }

    /// Deactivates the device holding `token`, freeing its slot.
    pub async fn deactivate(&self, token: &str) -> Result<Device, LicensingError> {
        let now = self.now();
        let mut tx = self.store().begin().await?;
        let device = tx
            .lock_device_by_token_hash(&ActivationToken::presented(token).hash())
            .await?
            .ok_or(LicensingError::InvalidToken)?;
        if device.status == DeviceStatus::Deactivated {
            return Err(LicensingError::DeviceDeactivated);
        }
        let device = deactivate_in(&mut tx, device, DeactivationReason::App, &Actor::System, now).await?;
        tx.commit().await?;
        Ok(device)
    }

    /// Looks up the device of a token; records its death if it is overdue
    /// (returning None then).
    async fn live_device(&self, tx: &mut S::Tx, token: &str, now: Timestamp) -> Result<Option<Device>, LicensingError> {
        let device = tx
            .lock_device_by_token_hash(&ActivationToken::presented(token).hash())
            .await?
            .ok_or(LicensingError::InvalidToken)?;
        match device.status {
            DeviceStatus::Deactivated => Err(LicensingError::DeviceDeactivated),
            DeviceStatus::Dead => Err(LicensingError::HeartbeatDead),
            DeviceStatus::Active if device.is_overdue(now, self.licensing().heartbeat_window) => {
                declare_dead(tx, &device, now).await?;
                Ok(None)
            }
            DeviceStatus::Active => Ok(Some(device)),
        }
    }

    /// Marks every overdue device dead (audit row + `device.dead` event).
    /// Returns how many. Runs periodically; safe on several instances.
    pub async fn reap_dead_devices(&self) -> Result<usize, StoreError> {
        let now = self.now();
        let cutoff = now - self.licensing().heartbeat_window;
        let mut total = 0;
        loop {
            let mut tx = self.store().begin().await?;
            let overdue = tx.lock_overdue_devices(cutoff, 500).await?;
            if overdue.is_empty() {
                return Ok(total);
            }
            for device in &overdue {
                declare_dead(&mut tx, device, now).await?;
            }
            tx.commit().await?;
            total += overdue.len();
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
        let mut tx = self.store().begin().await?;
        let device = tx.lock_device_of_user(device_id, user_id).await?.ok_or(LicensingError::DeviceNotFound)?;
        if device.status == DeviceStatus::Deactivated {
            return Ok(device);
        }
        let device = deactivate_in(&mut tx, device, DeactivationReason::Dashboard, actor, now).await?;
        tx.commit().await?;
        Ok(device)
    }

    /// Renames a device from the dashboard.
    pub async fn rename_device_of_user(
        &self,
        user_id: Option<&str>,
        device_id: Uuid,
        name: &str,
        actor: &Actor,
    ) -> Result<Device, LicensingError> {
        let name = name.trim();
        if name.is_empty() {
            return Err(LicensingError::Invalid("name must not be empty"));
        }
        check_field(Some(name), DeviceField::Name)?;
        let mut tx = self.store().begin().await?;
        let device = tx.lock_device_of_user(device_id, user_id).await?.ok_or(LicensingError::DeviceNotFound)?;
        tx.rename_device(device.id, name).await?;
        let device = Device { name: Some(name.to_owned()), ..device };
        tx.record_device_change(&device, "renamed", actor, json!({ "name": name })).await?;
        tx.enqueue(&device_message("device.updated", &device, None)).await?;
        tx.commit().await?;
        Ok(device)
    }

    /// Signs an offline certificate for a device.
    pub fn certificate(&self, license: &License, device: &Device, now: Timestamp) -> String {
        let cfg = self.licensing();
        let grace = self.config().grace;
        // A hard expiry (manual, or an admin's) has no grace after it.
        let exp = match license.hard_expiry() {
            Some(end) => certificate::expiry(now, cfg.offline_ttl, Some(end), time::Duration::ZERO),
            None => certificate::expiry(now, cfg.offline_ttl, license.terms.expires_at, grace),
        };
        cfg.signing_key.sign(&CertificateClaims {
            iss: cfg.issuer.clone(),
            sub: license.id.to_string(),
            license_id: license.id.to_string(),
            device_id: device.id.to_string(),
            fingerprint: device.fingerprint.clone(),
            plan: license.terms.plan_id.clone(),
            status: license.effective_status(now).as_str().to_owned(),
            max_devices: license.terms.max_devices,
            entitlements: self.entitlements(license),
            iat: now.unix_timestamp(),
            exp: exp.unix_timestamp(),
        })
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
        let window = self.licensing().heartbeat_window;
        Ok(license
            .zip(device)
            .filter(|(license, device)| device.license_id == license.id && device.is_alive(self.now(), window)))
    }

    /// Whether the device holding `token` is still alive (neither
    /// deactivated nor dead).
    pub async fn device_of_token_is_alive(&self, token: &str) -> Result<bool, StoreError> {
        let device = self.store().device_by_token_hash(&ActivationToken::presented(token).hash()).await?;
        Ok(device.is_some_and(|d| d.is_alive(self.now(), self.licensing().heartbeat_window)))
    }

    /// The license with this key (for the event stream's authorisation).
    pub async fn license_by_key(&self, license_key: &str) -> Result<Option<License>, StoreError> {
        match LicenseKey::parse(license_key) {
            Some(key) => self.store().license_by_key_hash(&key.lookup_hash()).await,
            None => Ok(None),
        }
    }
}

/// Deactivates a device inside a transaction, with audit and event.
pub(crate) async fn deactivate_in<T: StoreTx>(
    tx: &mut T,
    device: Device,
    reason: DeactivationReason,
    actor: &Actor,
    now: Timestamp,
) -> Result<Device, StoreError> {
    tx.set_device_status(device.id, DeviceStatus::Deactivated, now).await?;
    let device = Device { status: DeviceStatus::Deactivated, deactivated_at: Some(now), ..device };
    tx.record_device_change(&device, "deactivated", actor, json!({ "reason": reason.as_str() })).await?;
    tx.enqueue(&device_message(events::DEVICE_DEACTIVATED, &device, Some(reason.as_str()))).await?;
    Ok(device)
}

async fn declare_dead<T: StoreTx>(tx: &mut T, device: &Device, now: Timestamp) -> Result<(), StoreError> {
    tx.set_device_status(device.id, DeviceStatus::Dead, now).await?;
    let dead = Device { status: DeviceStatus::Dead, deactivated_at: Some(now), ..device.clone() };
    tx.record_device_change(
        &dead,
        "dead",
        &Actor::System,
        json!({ "last_heartbeat_at": rfc3339(device.last_heartbeat_at) }),
    )
    .await?;
    tx.enqueue(&device_message(events::DEVICE_DEAD, &dead, Some("heartbeat_missed"))).await?;
    Ok(())
}

pub(crate) fn device_message(topic: &'static str, device: &Device, reason: Option<&str>) -> OutboxMessage {
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
