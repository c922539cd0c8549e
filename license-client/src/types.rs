//! What the client reports: the server's license and device views, and
//! validation verdicts.

use serde::{Deserialize, Serialize};

/// A license as the server shows it to a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseInfo {
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
    #[serde(default)]
    pub entitlements: Vec<String>,
    /// `subscription` or `perpetual` (`None` from a server that predates them).
    #[serde(default)]
    pub kind: Option<String>,
    /// Builds released after this (RFC 3339) are not covered: validation
    /// answers `UPDATES_EXPIRED` for them. `None`: every build is.
    #[serde(default)]
    pub updates_until: Option<String>,
    /// A card-less trial (`expires_at` is when it ends).
    #[serde(default)]
    pub trial: bool,
}

/// This device as the server records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Device id.
    pub id: String,
    /// The license it uses.
    pub license_id: String,
    /// The hashed fingerprint.
    pub fingerprint: String,
    /// Display name.
    pub name: Option<String>,
    /// OS / platform.
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
    /// Activated from the dashboard for a machine with no network
    /// ([`crate::LicenseClient::import_offline_activation`]): it never
    /// heartbeats and keeps its slot until deactivated.
    #[serde(default)]
    pub air_gapped: bool,
}

/// How the device describes itself when activating.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActivationOptions {
    /// Display name shown in the customer's dashboard (e.g. the host name).
    pub name: Option<String>,
    /// Platform; defaults to the OS (`linux`, `windows`, `macos`, …).
    pub platform: Option<String>,
    /// App version; defaults to [`crate::ClientConfig::app_version`].
    pub app_version: Option<String>,
}

/// A successful activation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activation {
    /// This device.
    pub device: Device,
    /// The license.
    pub license: LicenseInfo,
    /// A new slot (true) or this machine's existing one (false).
    pub created: bool,
    /// Heartbeats must come at least this often.
    pub heartbeat_window_secs: u64,
    /// When the offline certificate expires (Unix seconds).
    pub certificate_expires_at: i64,
}

/// A successful heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// This device.
    pub device: Device,
    /// The license now.
    pub license: LicenseInfo,
    /// The window the server enforces.
    pub heartbeat_window_secs: u64,
    /// When the refreshed offline certificate expires (Unix seconds).
    pub certificate_expires_at: i64,
}

/// Why a license is (not) usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValidationCode {
    /// Good to go.
    Valid,
    /// No license has this key.
    NotFound,
    /// Withdrawn by the vendor.
    Revoked,
    /// The subscription ended.
    Expired,
    /// Payment trouble or paused.
    Suspended,
    /// This build was released after the license's updates window closed
    /// ([`crate::ClientConfig::app_released_at`]): an older build, or a
    /// renewed window, is needed.
    UpdatesExpired,
    /// This device is not activated (never, or deactivated).
    NotActivated,
    /// This device missed its heartbeat window; activate again.
    HeartbeatDead,
    /// Offline: the stored certificate is past its `exp`; go online.
    CertificateExpired,
    /// Offline: the stored certificate does not verify with the vendor key.
    InvalidCertificate,
    /// Offline: the certificate belongs to another machine.
    FingerprintMismatch,
    /// Offline: the clock is behind a time already seen; offline validity is
    /// refused until the clock is right again (or the server is reachable).
    ClockRollback,
    /// A code this version does not know (from a newer server).
    Other(String),
}

impl ValidationCode {
    /// The codes the server answers `validate` with, in the order it checks
    /// them (the offline-only codes are the client's own).
    pub const SERVER_CODES: [ValidationCode; 8] = [
        Self::NotFound,
        Self::Revoked,
        Self::Expired,
        Self::Suspended,
        Self::UpdatesExpired,
        Self::NotActivated,
        Self::HeartbeatDead,
        Self::Valid,
    ];

    /// The wire spelling, e.g. `HEARTBEAT_DEAD`.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Valid => "VALID",
            Self::NotFound => "NOT_FOUND",
            Self::Revoked => "REVOKED",
            Self::Expired => "EXPIRED",
            Self::Suspended => "SUSPENDED",
            Self::UpdatesExpired => "UPDATES_EXPIRED",
            Self::NotActivated => "NOT_ACTIVATED",
            Self::HeartbeatDead => "HEARTBEAT_DEAD",
            Self::CertificateExpired => "CERTIFICATE_EXPIRED",
            Self::InvalidCertificate => "INVALID_CERTIFICATE",
            Self::FingerprintMismatch => "FINGERPRINT_MISMATCH",
            Self::ClockRollback => "CLOCK_ROLLBACK",
            Self::Other(code) => code,
        }
    }

    /// Parses the wire spelling (unknown codes are kept as [`Self::Other`]).
    pub fn parse(code: &str) -> Self {
        match code {
            "VALID" => Self::Valid,
            "NOT_FOUND" | "LICENSE_NOT_FOUND" => Self::NotFound,
            "REVOKED" => Self::Revoked,
            "EXPIRED" => Self::Expired,
            "SUSPENDED" => Self::Suspended,
            "UPDATES_EXPIRED" => Self::UpdatesExpired,
            "NOT_ACTIVATED" | "UNAUTHORIZED" | "DEVICE_DEACTIVATED" => Self::NotActivated,
            "HEARTBEAT_DEAD" => Self::HeartbeatDead,
            "CERTIFICATE_EXPIRED" => Self::CertificateExpired,
            "INVALID_CERTIFICATE" => Self::InvalidCertificate,
            "FINGERPRINT_MISMATCH" => Self::FingerprintMismatch,
            "CLOCK_ROLLBACK" => Self::ClockRollback,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The code for a license status other than `active`.
    pub(crate) fn of_status(status: &str) -> Option<Self> {
        match status {
            "active" => None,
            "revoked" => Some(Self::Revoked),
            "expired" => Some(Self::Expired),
            "suspended" => Some(Self::Suspended),
            other => Some(Self::Other(other.to_ascii_uppercase())),
        }
    }
}

impl std::fmt::Display for ValidationCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ValidationCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A verdict: from the server when it answered, else from the stored
/// certificate (`offline: true`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Validation {
    /// Whether the app may run licensed.
    pub valid: bool,
    /// Why.
    pub code: ValidationCode,
    /// Decided from the stored certificate because the server did not answer.
    pub offline: bool,
    /// The license as last known.
    pub license: Option<LicenseInfo>,
    /// The end of the license's updates window (RFC 3339), as last known:
    /// builds released after it are not covered. `None`: every build is.
    pub updates_until: Option<String>,
}

impl Validation {
    pub(crate) fn new(code: ValidationCode, offline: bool, license: Option<LicenseInfo>) -> Self {
        let updates_until = license.as_ref().and_then(|l| l.updates_until.clone());
        Self { valid: code == ValidationCode::Valid, code, offline, license, updates_until }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_ones_are_kept() {
        for code in ValidationCode::SERVER_CODES {
            assert_eq!(ValidationCode::parse(code.as_str()), code);
            assert!(!matches!(code, ValidationCode::Other(_)));
        }
        assert_eq!(ValidationCode::parse("DEVICE_DEACTIVATED"), ValidationCode::NotActivated);
        assert_eq!(ValidationCode::parse("NEW_CODE"), ValidationCode::Other("NEW_CODE".into()));
        assert_eq!(serde_json::to_string(&ValidationCode::ClockRollback).unwrap(), "\"CLOCK_ROLLBACK\"");
        assert_eq!(ValidationCode::of_status("active"), None);
        assert_eq!(ValidationCode::of_status("revoked"), Some(ValidationCode::Revoked));
    }
}
