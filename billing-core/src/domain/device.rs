//! Devices ("terminals"): activations of a license on one machine, kept
//! alive by heartbeats. The rules for activating and validating live here.

pub use super::plan::DevicePolicy;
use super::{License, LicenseStatus, Plan, Timestamp};
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
    /// Activated from a dashboard for a machine with no network: it never
    /// heartbeats, so it keeps its slot until deactivated, whatever its
    /// plan's policy.
    pub air_gapped: bool,
}

/// How the devices of one license keep their slots: its plan's policy and
/// heartbeat window, the server's window where the plan sets none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// Floating (silent devices die) or node-locked (slots kept).
    pub policy: DevicePolicy,
    /// How long a device may be silent; for a node-locked plan only how
    /// often its app is told to beat.
    pub heartbeat_window: time::Duration,
}

impl Liveness {
    /// Today's rule: floating, with this window.
    pub fn floating(heartbeat_window: time::Duration) -> Self {
        Self { policy: DevicePolicy::Floating, heartbeat_window }
    }

    /// The liveness of a license of `plan` (`None`: a plan the catalog does
    /// not hold, which is floating with the server's window).
    pub fn of(plan: Option<&Plan>, server_window: time::Duration) -> Self {
        match plan {
            Some(plan) => Self { policy: plan.device_policy, heartbeat_window: plan.heartbeat_window(server_window) },
            None => Self::floating(server_window),
        }
    }

    /// The liveness of `license`'s devices: its catalog plan's.
    pub fn of_license(license: &License, plans: &super::PlanCatalog, server_window: time::Duration) -> Self {
        Self::of(license.terms.plan_id.as_deref().and_then(|id| plans.by_id(id)), server_window)
    }

    /// How `device` itself keeps its slot under this liveness: an
    /// air-gapped device cannot heartbeat, so it is node-locked whatever
    /// its plan says.
    pub fn of_device(self, device: &Device) -> Self {
        match device.air_gapped {
            true => Self { policy: DevicePolicy::NodeLocked, ..self },
            false => self,
        }
    }

    /// When a device last heard from at `heard_at` dies if it stays silent;
    /// never under a node-locked plan.
    pub fn deadline(&self, heard_at: Timestamp) -> Option<Timestamp> {
        match self.policy {
            DevicePolicy::Floating => Some(heard_at + self.heartbeat_window),
            DevicePolicy::NodeLocked => None,
        }
    }
}

impl Device {
    /// Active and, under a floating plan, heard from within the window.
    pub fn is_alive(&self, now: Timestamp, liveness: Liveness) -> bool {
        self.status == DeviceStatus::Active && !self.missed_heartbeat(now, liveness)
    }

    /// Active by its stored status but, under a floating plan, silent for
    /// longer than the window: dead, even if the reaper has not recorded it
    /// yet. Never under a node-locked plan.
    pub fn is_overdue(&self, now: Timestamp, liveness: Liveness) -> bool {
        self.status == DeviceStatus::Active && self.missed_heartbeat(now, liveness)
    }

    /// When this device dies if it stays silent after `heard_at`; never when
    /// node-locked or air-gapped.
    pub fn deadline(&self, heard_at: Timestamp, liveness: Liveness) -> Option<Timestamp> {
        liveness.of_device(self).deadline(heard_at)
    }

    fn missed_heartbeat(&self, now: Timestamp, liveness: Liveness) -> bool {
        self.deadline(self.last_heartbeat_at, liveness).is_some_and(|deadline| now > deadline)
    }
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
    liveness: Liveness,
) -> Result<ActivationPlan, ActivationRefusal> {
    let status = license.effective_status(now);
    if status != LicenseStatus::Active {
        return Err(ActivationRefusal::LicenseNotActive(status));
    }
    let existing = devices.iter().find(|d| d.fingerprint == fingerprint);
    if existing.is_some_and(|d| d.is_alive(now, liveness)) {
        return Ok(ActivationPlan::Reuse(existing.map(|d| d.id).expect("checked above")));
    }
    let alive = devices.iter().filter(|d| d.is_alive(now, liveness)).count();
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
    /// The running build was released after the license's updates window.
    UpdatesExpired,
    /// A fingerprint was given and it is not activated on this license.
    NotActivated,
    /// The fingerprint's device missed its heartbeat window.
    HeartbeatDead,
    /// Good to go.
    Valid,
}

impl ValidationCode {
    /// Every code, in the order they are checked (the documented order).
    pub const ALL: [ValidationCode; 8] = [
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
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "NOT_FOUND",
            Self::Revoked => "REVOKED",
            Self::Expired => "EXPIRED",
            Self::Suspended => "SUSPENDED",
            Self::UpdatesExpired => "UPDATES_EXPIRED",
            Self::NotActivated => "NOT_ACTIVATED",
            Self::HeartbeatDead => "HEARTBEAT_DEAD",
            Self::Valid => "VALID",
        }
    }
}

/// What a validation is asked about besides the license.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidationQuery<'a> {
    /// Whether a fingerprint was given.
    pub fingerprint_given: bool,
    /// The license's device with that fingerprint, if any.
    pub device: Option<&'a Device>,
    /// When the running build was released, if the app said.
    pub app_released_at: Option<Timestamp>,
}

/// Validates a license (and optionally one device of it) at `now`, its
/// devices judged by `liveness` (its plan's). Checked in
/// [`ValidationCode::ALL`]'s order: a node-locked license's device is never
/// `HEARTBEAT_DEAD` (one recorded dead before its plan kept slots is
/// `NOT_ACTIVATED`: it must activate again).
pub fn validate(
    license: Option<&License>,
    query: ValidationQuery<'_>,
    now: Timestamp,
    liveness: Liveness,
) -> ValidationCode {
    let Some(license) = license else { return ValidationCode::NotFound };
    match license.effective_status(now) {
        LicenseStatus::Revoked => return ValidationCode::Revoked,
        LicenseStatus::Expired => return ValidationCode::Expired,
        LicenseStatus::Suspended => return ValidationCode::Suspended,
        LicenseStatus::Active => {}
    }
    if query.app_released_at.is_some_and(|released| !license.covers_release(released)) {
        return ValidationCode::UpdatesExpired;
    }
    if !query.fingerprint_given {
        return ValidationCode::Valid;
    }
    let floating = |d: &Device| liveness.of_device(d).policy == DevicePolicy::Floating;
    match query.device {
        Some(d) if floating(d) && (d.status == DeviceStatus::Dead || d.is_overdue(now, liveness)) => {
            ValidationCode::HeartbeatDead
        }
        Some(d) if d.status == DeviceStatus::Active => ValidationCode::Valid,
        _ => ValidationCode::NotActivated,
    }
}

/// On a downgrade, which live devices lose their slot: the least recently
/// seen beyond the new limit.
pub fn evicted_by_limit(devices: &[Device], max_devices: u32, now: Timestamp, liveness: Liveness) -> Vec<Uuid> {
    let mut alive: Vec<&Device> = devices.iter().filter(|d| d.is_alive(now, liveness)).collect();
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
    const WINDOW: Liveness = Liveness { policy: DevicePolicy::Floating, heartbeat_window: Duration::minutes(10) };
    const LOCKED: Liveness = Liveness { policy: DevicePolicy::NodeLocked, heartbeat_window: Duration::minutes(10) };

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
            air_gapped: false,
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
            let query = ValidationQuery { fingerprint_given: fp, device: d, app_released_at: None };
            assert_eq!(validate(l, query, NOW, WINDOW), expected);
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
    fn an_updates_window_that_closed_before_the_release_comes_after_suspended_and_before_the_device() {
        use DeviceStatus::*;
        use ValidationCode as V;
        let released = NOW - Duration::days(30);
        let window = |status, until| License { updates_until: Some(until), ..license(status, 2) };
        let check = |l: &License, d: Option<&Device>, released_at, expected: V| {
            let query = ValidationQuery { fingerprint_given: d.is_some(), device: d, app_released_at: released_at };
            assert_eq!(
                validate(Some(l), query, NOW, WINDOW),
                expected,
                "{:?} released {released_at:?}",
                l.updates_until
            );
        };
        let closed = window(LicenseStatus::Active, released - Duration::seconds(1));
        check(&closed, None, Some(released), V::UpdatesExpired);
        check(&closed, Some(&device(1, Active, 1)), Some(released), V::UpdatesExpired);
        check(&closed, Some(&device(1, Deactivated, 1)), Some(released), V::UpdatesExpired);
        check(&closed, Some(&device(1, Active, 1)), None, V::Valid);
        check(&window(LicenseStatus::Active, released), Some(&device(1, Active, 1)), Some(released), V::Valid);
        check(&window(LicenseStatus::Suspended, released - Duration::days(1)), None, Some(released), V::Suspended);
        check(&window(LicenseStatus::Revoked, released - Duration::days(1)), None, Some(released), V::Revoked);
        check(&license(LicenseStatus::Active, 2), None, Some(NOW + Duration::days(9999)), V::Valid);
        let order: Vec<&str> = V::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            order,
            [
                "NOT_FOUND",
                "REVOKED",
                "EXPIRED",
                "SUSPENDED",
                "UPDATES_EXPIRED",
                "NOT_ACTIVATED",
                "HEARTBEAT_DEAD",
                "VALID"
            ]
        );
    }

    #[test]
    fn a_node_locked_device_keeps_its_slot_however_long_it_is_silent() {
        use DeviceStatus::*;
        use ValidationCode as V;
        let l = license(LicenseStatus::Active, 1);
        let silent = device(1, Active, 60 * 24 * 365);
        assert!(silent.is_alive(NOW, LOCKED) && !silent.is_overdue(NOW, LOCKED));
        assert!(!silent.is_alive(NOW, WINDOW) && silent.is_overdue(NOW, WINDOW));
        let air_gapped = Device { air_gapped: true, ..silent.clone() };
        assert!(air_gapped.is_alive(NOW, WINDOW) && !air_gapped.is_overdue(NOW, WINDOW));
        assert_eq!(air_gapped.deadline(NOW, WINDOW), None);
        assert_eq!(LOCKED.deadline(NOW), None);
        assert_eq!(WINDOW.deadline(NOW), Some(NOW + Duration::minutes(10)));
        let query = |d| ValidationQuery { fingerprint_given: true, device: Some(d), app_released_at: None };
        assert_eq!(validate(Some(&l), query(&silent), NOW, LOCKED), V::Valid);
        assert_eq!(validate(Some(&l), query(&silent), NOW, WINDOW), V::HeartbeatDead);
        assert_eq!(validate(Some(&l), query(&air_gapped), NOW, WINDOW), V::Valid, "air-gapped: never dead");
        assert_eq!(validate(Some(&l), query(&device(1, Dead, 60)), NOW, LOCKED), V::NotActivated);
        assert_eq!(
            plan_activation(&l, std::slice::from_ref(&silent), "fp2", NOW, LOCKED),
            Err(ActivationRefusal::TooManyDevices { max_devices: 1 }),
            "the silent device still holds its slot"
        );
        assert_eq!(plan_activation(&l, std::slice::from_ref(&silent), "fp2", NOW, WINDOW), Ok(ActivationPlan::New));
        assert!(evicted_by_limit(&[silent.clone(), device(2, Active, 1)], 1, NOW, LOCKED).contains(&silent.id));
        let pro = crate::domain::Plan {
            device_policy: DevicePolicy::NodeLocked,
            heartbeat_window_secs: Some(60),
            ..crate::domain::Plan::new("pro", "Pro", "price", 1)
        };
        assert_eq!(
            Liveness::of(Some(&pro), Duration::minutes(10)),
            Liveness { policy: DevicePolicy::NodeLocked, heartbeat_window: Duration::minutes(1) }
        );
        assert_eq!(Liveness::of(None, Duration::minutes(10)), WINDOW);
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
