//! Devices ("terminals"): activations of a license on one machine, kept
//! alive by heartbeats. The rules for activating and validating live here.

use super::{License, LicenseStatus, Timestamp};
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use serde::Serialize;
use uuid::Uuid;

/// Lifecycle of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    /// Activated; alive while it keeps sending heartbeats.
    Active,
    /// Deactivated by the app or from the dashboard.
    Deactivated,
    /// Missed its heartbeat window; its slot is free.
    Dead,
}

impl DeviceStatus {
    /// Storage spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Deactivated => "deactivated",
            Self::Dead => "dead",
        }
    }

    /// Parses the storage spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "active" => Self::Active,
            "deactivated" => Self::Deactivated,
            "dead" => Self::Dead,
            _ => return None,
        })
    }
}

/// A device as we hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Our id.
    pub id: Uuid,
    /// The license it uses.
    pub license_id: Uuid,
    /// The app's machine fingerprint (already hashed by the client).
    pub fingerprint: String,
    /// Display name.
    pub name: Option<String>,
    /// OS / platform string.
    pub platform: Option<String>,
    /// App version string.
    pub app_version: Option<String>,
    /// Stored status (see [`Device::is_alive`] for the time-aware view).
    pub status: DeviceStatus,
    /// When it was (last) activated.
    pub activated_at: Timestamp,
    /// Last heartbeat (activation counts as one).
    pub last_heartbeat_at: Timestamp,
    /// When it was deactivated.
    pub deactivated_at: Option<Timestamp>,
}

impl Device {
    /// Active and heard from within the window.
    pub fn is_alive(&self, now: Timestamp, window: time::Duration) -> bool {
        self.status == DeviceStatus::Active && !missed_heartbeat(self.last_heartbeat_at, now, window)
    }

    /// Active by its stored status but silent for longer than the window:
    /// dead, even if the reaper has not recorded it yet.
    pub fn is_overdue(&self, now: Timestamp, window: time::Duration) -> bool {
        self.status == DeviceStatus::Active && missed_heartbeat(self.last_heartbeat_at, now, window)
    }
}

fn missed_heartbeat(last: Timestamp, now: Timestamp, window: time::Duration) -> bool {
    now - last > window
}

/// The secret a device authenticates with after activation. Shown once;
/// only its hash is stored. `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct ActivationToken(String);

impl std::fmt::Debug for ActivationToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ActivationToken(<redacted>)")
    }
}

const TOKEN_PREFIX: &str = "act_";

impl ActivationToken {
    /// 256 fresh random bits.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        SystemRandom::new().fill(&mut bytes).expect("the operating system RNG is available");
        Self(format!("{TOKEN_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// Wraps a presented token (any string; an unknown one simply matches nothing).
    pub fn presented(token: &str) -> Self {
        Self(token.to_owned())
    }

    /// Whether the string looks like one of our tokens (vs. a dashboard JWT).
    pub fn looks_like(token: &str) -> bool {
        token.starts_with(TOKEN_PREFIX)
    }

    /// The token, for the one response that hands it out.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// SHA-256 of the token: what is stored and looked up, so comparisons
    /// never depend on the secret's bytes.
    pub fn hash(&self) -> Vec<u8> {
        ring::digest::digest(&ring::digest::SHA256, self.0.as_bytes()).as_ref().to_vec()
    }
}

/// Why an activation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivationRefusal {
    /// The license is not usable (revoked, expired or suspended).
    LicenseNotActive(LicenseStatus),
    /// All slots are taken by live devices.
    TooManyDevices {
        /// The limit.
        max_devices: u32,
    },
}

/// How an activation proceeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActivationPlan {
    /// The fingerprint already has a slot on this license: reuse it with a fresh token.
    Reuse(Uuid),
    /// A new slot.
    New,
}

/// Decides an activation of `fingerprint` on `license`, given the devices
/// the license has. Devices that are dead, deactivated or overdue do not
/// hold a slot.
pub fn plan_activation(
    license: &License,
    devices: &[Device],
    fingerprint: &str,
    now: Timestamp,
    window: time::Duration,
) -> Result<ActivationPlan, ActivationRefusal> {
    let status = license.effective_status(now);
    if status != LicenseStatus::Active {
        return Err(ActivationRefusal::LicenseNotActive(status));
    }
    let existing = devices.iter().find(|d| d.fingerprint == fingerprint);
    if existing.is_some_and(|d| d.is_alive(now, window)) {
        return Ok(ActivationPlan::Reuse(existing.map(|d| d.id).expect("checked above")));
    }
    let alive = devices.iter().filter(|d| d.is_alive(now, window)).count();
    if alive >= license.terms.max_devices as usize {
        return Err(ActivationRefusal::TooManyDevices { max_devices: license.terms.max_devices });
    }
    Ok(existing.map_or(ActivationPlan::New, |d| ActivationPlan::Reuse(d.id)))
}

/// The answer of a validation, checked in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ValidationCode {
    /// No license has this key.
    NotFound,
    /// Withdrawn by the vendor.
    Revoked,
    /// The subscription ended.
    Expired,
    /// Payment trouble or paused.
    Suspended,
    /// A fingerprint was given and it is not activated on this license.
    NotActivated,
    /// The fingerprint's device missed its heartbeat window.
    HeartbeatDead,
    /// Good to go.
    Valid,
}

impl ValidationCode {
    /// The wire spelling, e.g. `HEARTBEAT_DEAD`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "NOT_FOUND",
            Self::Revoked => "REVOKED",
            Self::Expired => "EXPIRED",
            Self::Suspended => "SUSPENDED",
            Self::NotActivated => "NOT_ACTIVATED",
            Self::HeartbeatDead => "HEARTBEAT_DEAD",
            Self::Valid => "VALID",
        }
    }
}

/// Validates a license (and optionally one device of it) at `now`.
/// `device` is the device with the presented fingerprint, if any.
pub fn validate(
    license: Option<&License>,
    fingerprint_given: bool,
    device: Option<&Device>,
    now: Timestamp,
    window: time::Duration,
) -> ValidationCode {
    let Some(license) = license else { return ValidationCode::NotFound };
    match license.effective_status(now) {
        LicenseStatus::Revoked => return ValidationCode::Revoked,
        LicenseStatus::Expired => return ValidationCode::Expired,
        LicenseStatus::Suspended => return ValidationCode::Suspended,
        LicenseStatus::Active => {}
    }
    if !fingerprint_given {
        return ValidationCode::Valid;
    }
    match device {
        Some(d) if d.status == DeviceStatus::Dead || d.is_overdue(now, window) => ValidationCode::HeartbeatDead,
        Some(d) if d.status == DeviceStatus::Active => ValidationCode::Valid,
        _ => ValidationCode::NotActivated,
    }
}

/// On a downgrade, which live devices lose their slot: the least recently
/// seen beyond the new limit.
pub fn evicted_by_limit(devices: &[Device], max_devices: u32, now: Timestamp, window: time::Duration) -> Vec<Uuid> {
    let mut alive: Vec<&Device> = devices.iter().filter(|d| d.is_alive(now, window)).collect();
    alive.sort_by(|a, b| b.last_heartbeat_at.cmp(&a.last_heartbeat_at).then(a.id.cmp(&b.id)));
    alive.into_iter().skip(max_devices as usize).map(|d| d.id).collect()
}

/// The longest text a device may carry in a field (name, fingerprint,
/// platform, app version), in characters: a limit in bytes would give
/// accented and non-Latin names a fraction of the room.
pub const MAX_DEVICE_TEXT_CHARS: usize = 256;

/// Why a device's text field is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextRefusal {
    /// Longer than [`MAX_DEVICE_TEXT_CHARS`].
    TooLong,
    /// Holds a control, bidirectional-formatting or zero-width character.
    HiddenCharacter,
}

/// Checks a device's text field. The dashboard shows these to people, so
/// characters that are invisible or reorder what is shown (a name that
/// reads differently than it is) are refused, as are control characters.
pub fn check_device_text(text: &str) -> Result<(), TextRefusal> {
    if text.chars().any(is_hidden) {
        return Err(TextRefusal::HiddenCharacter);
    }
    if text.chars().count() > MAX_DEVICE_TEXT_CHARS {
        return Err(TextRefusal::TooLong);
    }
    Ok(())
}

fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            // Arabic letter mark; zero-width space, non-joiner, joiner; LRM, RLM.
            '\u{061C}' | '\u{200B}'..='\u{200F}'
            // Embeddings and overrides (LRE, RLE, PDF, LRO, RLO).
            | '\u{202A}'..='\u{202E}'
            // Word joiner, invisible operators, isolates (LRI, RLI, FSI, PDI).
            | '\u{2060}'..='\u{2069}'
            // Zero-width no-break space (byte order mark).
            | '\u{FEFF}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::LicenseTerms;
    use time::macros::datetime;
    use time::Duration;

    const NOW: Timestamp = datetime!(2026-11-28 12:00 UTC);
    const WINDOW: Duration = Duration::minutes(10);

    fn license(status: LicenseStatus, max_devices: u32) -> License {
        let terms = LicenseTerms { status, max_devices, expires_at: None, grace_ends_at: None, plan_id: None };
        License { id: Uuid::from_u128(1), ..License::for_subscription(Uuid::from_u128(2), terms) }
    }

    fn device(n: u128, status: DeviceStatus, seen_minutes_ago: i64) -> Device {
        Device {
            id: Uuid::from_u128(n),
            license_id: Uuid::from_u128(1),
            fingerprint: format!("fp{n}"),
            name: None,
            platform: None,
            app_version: None,
            status,
            activated_at: NOW - Duration::days(1),
            last_heartbeat_at: NOW - Duration::minutes(seen_minutes_ago),
            deactivated_at: None,
        }
    }

    #[test]
    fn activation_respects_the_limit_counting_only_live_devices() {
        use DeviceStatus::*;
        let l = license(LicenseStatus::Active, 2);
        let two_live = [device(1, Active, 1), device(2, Active, 5)];
        assert_eq!(
            plan_activation(&l, &two_live, "fp3", NOW, WINDOW),
            Err(ActivationRefusal::TooManyDevices { max_devices: 2 })
        );
        assert_eq!(plan_activation(&l, &two_live, "fp1", NOW, WINDOW), Ok(ActivationPlan::Reuse(Uuid::from_u128(1))));
        let one_overdue = [device(1, Active, 1), device(2, Active, 11)];
        assert_eq!(plan_activation(&l, &one_overdue, "fp3", NOW, WINDOW), Ok(ActivationPlan::New));
        let one_gone = [device(1, Active, 1), device(2, Deactivated, 1), device(3, Dead, 30)];
        assert_eq!(plan_activation(&l, &one_gone, "fp4", NOW, WINDOW), Ok(ActivationPlan::New));
        assert_eq!(plan_activation(&l, &one_gone, "fp3", NOW, WINDOW), Ok(ActivationPlan::Reuse(Uuid::from_u128(3))));
        let full_with_dead_self = [device(1, Active, 1), device(2, Active, 1), device(3, Dead, 30)];
        assert_eq!(
            plan_activation(&license(LicenseStatus::Active, 2), &full_with_dead_self, "fp3", NOW, WINDOW),
            Err(ActivationRefusal::TooManyDevices { max_devices: 2 }),
            "a dead device coming back needs a free slot"
        );
    }

    #[test]
    fn activation_needs_an_active_license() {
        for status in [LicenseStatus::Suspended, LicenseStatus::Expired, LicenseStatus::Revoked] {
            assert_eq!(
                plan_activation(&license(status, 5), &[], "fp", NOW, WINDOW),
                Err(ActivationRefusal::LicenseNotActive(status))
            );
        }
    }

    #[test]
    fn validation_codes_come_in_the_documented_order() {
        use DeviceStatus::*;
        use ValidationCode as V;
        let active = license(LicenseStatus::Active, 2);
        let check = |l: Option<&License>, fp: bool, d: Option<&Device>, expected: V| {
            assert_eq!(validate(l, fp, d, NOW, WINDOW), expected);
        };
        check(None, true, None, V::NotFound);
        check(Some(&license(LicenseStatus::Revoked, 1)), true, Some(&device(1, Dead, 60)), V::Revoked);
        check(Some(&license(LicenseStatus::Expired, 1)), true, None, V::Expired);
        check(Some(&license(LicenseStatus::Suspended, 1)), true, None, V::Suspended);
        check(Some(&active), false, None, V::Valid);
        check(Some(&active), true, None, V::NotActivated);
        check(Some(&active), true, Some(&device(1, Deactivated, 1)), V::NotActivated);
        check(Some(&active), true, Some(&device(1, Dead, 60)), V::HeartbeatDead);
        check(Some(&active), true, Some(&device(1, Active, 11)), V::HeartbeatDead);
        check(Some(&active), true, Some(&device(1, Active, 9)), V::Valid);
    }

    #[test]
    fn downgrade_evicts_the_least_recently_seen() {
        use DeviceStatus::*;
        let devices = [device(1, Active, 3), device(2, Active, 1), device(3, Active, 2), device(4, Dead, 50)];
        assert_eq!(evicted_by_limit(&devices, 1, NOW, WINDOW), vec![Uuid::from_u128(3), Uuid::from_u128(1)]);
        assert!(evicted_by_limit(&devices, 3, NOW, WINDOW).is_empty());
    }

    #[test]
    fn tokens_are_random_prefixed_and_redacted() {
        let a = ActivationToken::generate();
        assert_ne!(a, ActivationToken::generate());
        assert!(ActivationToken::looks_like(a.expose()));
        assert_eq!(a.hash(), ActivationToken::presented(a.expose()).hash());
        assert_eq!(format!("{a:?}"), "ActivationToken(<redacted>)");
    }

    #[test]
    fn device_text_is_limited_in_characters_and_refuses_hidden_ones() {
        fn check(text: &str, expected: Result<(), TextRefusal>) {
            assert_eq!(check_device_text(text), expected, "{text:?}");
        }
        check("Ana's laptop", Ok(()));
        check(&"é".repeat(MAX_DEVICE_TEXT_CHARS), Ok(()));
        check(&"日".repeat(MAX_DEVICE_TEXT_CHARS), Ok(()));
        check("ThinkPad 🐧", Ok(()));
        check(&"é".repeat(MAX_DEVICE_TEXT_CHARS + 1), Err(TextRefusal::TooLong));
        check(&"a".repeat(MAX_DEVICE_TEXT_CHARS + 1), Err(TextRefusal::TooLong));
        let hidden = [
            '\u{0}', '\n', '\u{1B}', '\u{7F}', '\u{85}', '\u{061C}', '\u{200B}', '\u{200C}', '\u{200D}', '\u{200E}',
            '\u{200F}', '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2060}', '\u{2066}', '\u{2067}',
            '\u{2068}', '\u{2069}', '\u{FEFF}',
        ];
        for c in hidden {
            check(&format!("laptop{c}exe.txt"), Err(TextRefusal::HiddenCharacter));
        }
        // Neighbours of the refused ranges are ordinary text.
        for c in ['\u{061B}', '\u{2010}', '\u{201C}', '\u{2070}', '\u{FE70}'] {
            check(&format!("a{c}b"), Ok(()));
        }
    }
}
