//! License keys and the rule that derives a license's terms from its
//! subscription.

pub use super::plan::LicenseKind;
use super::{Plan, Subscription, SubscriptionStatus, Timestamp};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Crockford's base32 alphabet: no I, L, O or U, so keys read aloud and typed
/// from paper survive.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// 160 random bits: 32 characters of 5 bits each.
const KEY_BYTES: usize = 20;
const KEY_CHARS: usize = 32;
const GROUP: usize = 4;

/// A license key such as `7KQ2-M9XD-…` (8 groups of 4). Its `Debug` output is
/// redacted so it cannot leak through logs.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LicenseKey(String);

impl std::fmt::Debug for LicenseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LicenseKey(<redacted>)")
    }
}

impl LicenseKey {
    /// A fresh key with 160 bits from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_BYTES];
        SystemRandom::new().fill(&mut bytes).expect("the operating system RNG is available");
        let mut chars = String::with_capacity(KEY_CHARS + KEY_CHARS / GROUP);
        let mut acc: u32 = 0;
        let mut bits = 0;
        for byte in bytes {
            acc = (acc << 8) | u32::from(byte);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                push_grouped(&mut chars, ALPHABET[((acc >> bits) & 31) as usize]);
            }
        }
        Self(chars)
    }

    /// Accepts what a user types: any case, with or without dashes or spaces,
    /// and Crockford's look-alikes (O→0, I/L→1).
    pub fn parse(input: &str) -> Option<Self> {
        let mut chars = String::with_capacity(KEY_CHARS + KEY_CHARS / GROUP);
        let mut count = 0;
        for c in input.chars() {
            let c = match c.to_ascii_uppercase() {
                '-' | ' ' => continue,
                'O' => '0',
                'I' | 'L' => '1',
                c if c.is_ascii() && ALPHABET.contains(&(c as u8)) => c,
                _ => return None,
            };
            count += 1;
            if count > KEY_CHARS {
                return None;
            }
            push_grouped(&mut chars, c as u8);
        }
        (count == KEY_CHARS).then_some(Self(chars))
    }

    /// The canonical grouped form, for showing to the key's owner only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// SHA-256 of the canonical form: what lookups use, so comparing keys
    /// never depends on how many leading characters match.
    pub fn lookup_hash(&self) -> Vec<u8> {
        ring::digest::digest(&ring::digest::SHA256, self.0.as_bytes()).as_ref().to_vec()
    }
}

fn push_grouped(out: &mut String, c: u8) {
    let written = out.len() - out.len() / (GROUP + 1);
    if written > 0 && written.is_multiple_of(GROUP) {
        out.push('-');
    }
    out.push(c as char);
}

/// Whether a license currently entitles its devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LicenseStatus {
    /// Usable.
    Active,
    /// Temporarily unusable: payment trouble or a paused subscription.
    Suspended,
    /// The subscription ended.
    Expired,
    /// Withdrawn by the vendor; never restored by Stripe events.
    Revoked,
}

impl LicenseStatus {
    /// Storage and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }

    /// Parses the storage spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "active" => Self::Active,
            "suspended" => Self::Suspended,
            "expired" => Self::Expired,
            "revoked" => Self::Revoked,
            _ => return None,
        })
    }
}

/// What a license allows, derived from its subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenseTerms {
    /// Stored status (before grace expiry is taken into account).
    pub status: LicenseStatus,
    /// Device slots.
    pub max_devices: u32,
    /// The paid-through date.
    pub expires_at: Option<Timestamp>,
    /// While past due, the moment the license stops working.
    pub grace_ends_at: Option<Timestamp>,
    /// Plan the terms come from.
    pub plan_id: Option<String>,
}

/// Where a license comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LicenseSource {
    /// Issued for a Stripe subscription; its terms follow the subscription.
    Stripe,
    /// Issued by the vendor itself (a comp, a reseller deal, a
    /// replacement): no subscription, Stripe events never touch it.
    Manual,
}

impl LicenseSource {
    /// Storage and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stripe => "stripe",
            Self::Manual => "manual",
        }
    }

    /// Parses the storage spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "stripe" => Self::Stripe,
            "manual" => Self::Manual,
            _ => return None,
        })
    }
}

/// What an admin set on a license. Terms derived from Stripe give way to
/// these, so later Stripe events cannot undo them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LicenseOverrides {
    /// A device limit that replaces the plan's.
    pub max_devices: Option<u32>,
    /// An expiry that replaces Stripe's period end; the license is expired
    /// from then on, whatever the subscription says.
    pub expires_at: Option<Timestamp>,
    /// When an admin suspended it; only an admin reinstatement clears it.
    pub suspended_at: Option<Timestamp>,
    /// When the charge that paid for it was disputed: suspended until the
    /// dispute closes (only the dispute's end clears it, and what the
    /// license is then follows from its source and the admin's fields).
    pub disputed_at: Option<Timestamp>,
}

/// A license as we hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct License {
    /// Our id.
    pub id: Uuid,
    /// The subscription it belongs to (None for a manual license).
    pub subscription_id: Option<Uuid>,
    /// Stripe-issued or manual.
    pub source: LicenseSource,
    /// The user a manual license was issued to (a Stripe license's user is
    /// its customer's).
    pub user_id: Option<String>,
    /// The key itself.
    pub key: LicenseKey,
    /// Current terms, admin overrides applied.
    pub terms: LicenseTerms,
    /// Entitlements granted on top of the plan's features.
    pub entitlements: Vec<String>,
    /// The vendor's own notes (a CRM id, an order number); never interpreted.
    pub metadata: serde_json::Map<String, Value>,
    /// What an admin set, kept across Stripe events.
    pub overrides: LicenseOverrides,
    /// Subscription or perpetual, as issued: a plan that changes kind in
    /// the plans file does not change the licenses already sold.
    pub kind: LicenseKind,
    /// Builds released after this are not covered (a perpetual license's
    /// updates window); `None`: every build is.
    pub updates_until: Option<Timestamp>,
    /// A card-less trial ([`crate::licensing`]'s trials).
    pub trial: bool,
}

impl License {
    /// A fresh perpetual license of `plan` bought by `user_id` through a
    /// Checkout payment at `paid_at`, with a new key: active, no expiry, its
    /// updates window running from the payment.
    pub fn for_purchase(user_id: &str, plan: &Plan, paid_at: Timestamp) -> Self {
        Self {
            subscription_id: None,
            user_id: Some(user_id.to_owned()),
            kind: LicenseKind::Perpetual,
            updates_until: updates_window_end(plan, paid_at),
            ..Self::for_subscription(
                Uuid::nil(),
                LicenseTerms {
                    status: LicenseStatus::Active,
                    max_devices: plan.max_devices,
                    expires_at: None,
                    grace_ends_at: None,
                    plan_id: Some(plan.id.0.clone()),
                },
            )
        }
    }

    /// A fresh license of a Stripe subscription, with a new key.
    pub fn for_subscription(subscription_id: Uuid, terms: LicenseTerms) -> Self {
        Self {
            id: Uuid::new_v4(),
            subscription_id: Some(subscription_id),
            source: LicenseSource::Stripe,
            user_id: None,
            key: LicenseKey::generate(),
            terms,
            entitlements: Vec::new(),
            metadata: serde_json::Map::new(),
            overrides: LicenseOverrides::default(),
            kind: LicenseKind::Subscription,
            updates_until: None,
            trial: false,
        }
    }

    /// Whether this license covers a build released at `released_at`: a
    /// build released after its updates window closed is not covered.
    pub fn covers_release(&self, released_at: Timestamp) -> bool {
        self.updates_until.is_none_or(|until| released_at <= until)
    }

    /// The status at `now`: a past-due license whose grace has run out is
    /// suspended, and one past a [hard expiry](License::hard_expiry) is
    /// expired, even before any event says so.
    pub fn effective_status(&self, now: Timestamp) -> LicenseStatus {
        match self.terms.status {
            LicenseStatus::Revoked => LicenseStatus::Revoked,
            _ if self.hard_expiry().is_some_and(|end| now >= end) => LicenseStatus::Expired,
            _ => effective_status(&self.terms, now),
        }
    }

    /// The moment the license stops working whatever Stripe says: the
    /// expiry of a manual license, or an admin's expiry override. A Stripe
    /// license's own period end is no such moment (Stripe renews it).
    pub fn hard_expiry(&self) -> Option<Timestamp> {
        match self.source {
            LicenseSource::Manual => self.terms.expires_at,
            LicenseSource::Stripe => self.overrides.expires_at,
        }
    }

    /// The plan's features followed by the license's own entitlements,
    /// each once.
    pub fn entitlements_with(&self, plan: Option<&Plan>) -> Vec<String> {
        let mut all: Vec<String> = plan.map(|p| p.features.clone()).unwrap_or_default();
        for e in &self.entitlements {
            if !all.contains(e) {
                all.push(e.clone());
            }
        }
        all
    }
}

/// The end of the updates window of a perpetual license of `plan` bought
/// at `bought_at`: `updates_months` calendar months later (on the last day
/// of a shorter month: 31 January plus one month is 28 or 29 February);
/// `None` for updates forever (or a subscription plan).
pub fn updates_window_end(plan: &Plan, bought_at: Timestamp) -> Option<Timestamp> {
    plan.updates_months.filter(|_| plan.kind == LicenseKind::Perpetual).map(|months| add_months(bought_at, months))
}

/// `t` plus `months` calendar months, the day clamped to the month's length.
fn add_months(t: Timestamp, months: u32) -> Timestamp {
    let total = i64::from(t.year()) * 12 + i64::from(u8::from(t.month())) - 1 + i64::from(months);
    let year = i32::try_from(total.div_euclid(12)).unwrap_or(i32::MAX);
    let month =
        time::Month::try_from(u8::try_from(total.rem_euclid(12) + 1).unwrap_or(12)).unwrap_or(time::Month::December);
    let day = t.day().min(month.length(year));
    // Within the plans file's limit (a century) every date exists.
    time::Date::from_calendar_date(year, month, day).map_or(t, |date| t.replace_date(date))
}

/// See [`License::effective_status`].
pub fn effective_status(terms: &LicenseTerms, now: Timestamp) -> LicenseStatus {
    match (terms.status, terms.grace_ends_at) {
        (LicenseStatus::Active, Some(end)) if now >= end => LicenseStatus::Suspended,
        (status, _) => status,
    }
}

/// The terms of a license whose grace ran out by `now` (stored as still
/// active): the same, suspended. `None` when nothing lapsed.
pub fn lapsed(terms: &LicenseTerms, now: Timestamp) -> Option<LicenseTerms> {
    match effective_status(terms, now) {
        status if status != terms.status => Some(LicenseTerms { status, ..terms.clone() }),
        _ => None,
    }
}

/// The terms a subscription gives its license at `now`.
///
/// `held` keeps what Stripe events cannot change: a revoked license stays
/// revoked, and an unknown price keeps the device limit it had. A past-due
/// subscription keeps its license active until `grace` after it fell due,
/// suspended from then on. `overrides` win over the subscription: an admin
/// device limit survives a plan change (which still changes the plan), an
/// admin suspension holds whatever the subscription's status, and an
/// expiry override replaces the period end — so a renewal makes a license
/// whose subscription ended usable until then.
pub fn terms_for(
    sub: &Subscription,
    plan: Option<&Plan>,
    held: Option<&LicenseTerms>,
    overrides: &LicenseOverrides,
    grace: time::Duration,
    now: Timestamp,
) -> LicenseTerms {
    use SubscriptionStatus::*;
    let snap = &sub.snapshot;
    let mut grace_ends_at = None;
    let from_subscription = match snap.status {
        Active | Trialing => LicenseStatus::Active,
        PastDue => {
            grace_ends_at = sub.past_due_since.map(|t| t + grace);
            LicenseStatus::Active
        }
        Paused | Unpaid | Incomplete => LicenseStatus::Suspended,
        Canceled | IncompleteExpired => LicenseStatus::Expired,
    };
    let from_subscription = match overrides.expires_at {
        Some(until) if now >= until => LicenseStatus::Expired,
        Some(_) if from_subscription == LicenseStatus::Expired => LicenseStatus::Active,
        _ => from_subscription,
    };
    let terms = LicenseTerms {
        status: overlay(from_subscription, held, overrides),
        max_devices: overrides.max_devices.or(plan.map(|p| p.max_devices)).or(held.map(|h| h.max_devices)).unwrap_or(1),
        expires_at: overrides.expires_at.or(snap.current_period_end).or(snap.trial_end),
        grace_ends_at,
        plan_id: plan.map(|p| p.id.0.clone()).or_else(|| held.and_then(|h| h.plan_id.clone())),
    };
    lapsed(&terms, now).unwrap_or(terms)
}

/// The terms of a manual license at `now`: active until its expiry (never,
/// without one), expired from then on; the plan gives the device limit
/// unless an admin set one. A plan since removed from the catalog keeps
/// what the license had.
pub fn manual_terms(
    plan: Option<&Plan>,
    held: Option<&LicenseTerms>,
    overrides: &LicenseOverrides,
    now: Timestamp,
) -> LicenseTerms {
    let by_date = match overrides.expires_at {
        Some(until) if now >= until => LicenseStatus::Expired,
        _ => LicenseStatus::Active,
    };
    LicenseTerms {
        status: overlay(by_date, held, overrides),
        max_devices: overrides.max_devices.or(plan.map(|p| p.max_devices)).or(held.map(|h| h.max_devices)).unwrap_or(1),
        expires_at: overrides.expires_at,
        grace_ends_at: None,
        plan_id: plan.map(|p| p.id.0.clone()).or_else(|| held.and_then(|h| h.plan_id.clone())),
    }
}

/// Revocation is final; an expiry comes before a suspension (the order in
/// which validation reports them); an admin suspension holds over whatever
/// the license's source says.
fn overlay(from_source: LicenseStatus, held: Option<&LicenseTerms>, overrides: &LicenseOverrides) -> LicenseStatus {
    match held {
        Some(h) if h.status == LicenseStatus::Revoked => LicenseStatus::Revoked,
        _ if from_source == LicenseStatus::Expired => LicenseStatus::Expired,
        _ if overrides.suspended_at.is_some() || overrides.disputed_at.is_some() => LicenseStatus::Suspended,
        _ => from_source,
    }
}

/// What to do with a subscription's license after the subscription changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LicenseDecision {
    /// Nothing changes.
    Keep,
    /// Issue the subscription's first license with these terms.
    Issue(LicenseTerms),
    /// Replace the terms of the existing license.
    Update(LicenseTerms),
}

/// A license is issued once, as soon as anything proves that its
/// subscription was entitled (`entitled`: a snapshot in a status that
/// [proves it](super::SubscriptionStatus::proves_entitlement), current or
/// stale, or a paid invoice), whatever order those proofs arrive in; its
/// terms always follow the subscription as it now is, under the held
/// license's admin overrides. So a subscription whose `canceled` snapshot
/// overtook its `active` one still ends with an expired license, as
/// in-order delivery would leave it.
pub fn decide(
    sub: &Subscription,
    plan: Option<&Plan>,
    held: Option<&License>,
    entitled: bool,
    grace: time::Duration,
    now: Timestamp,
) -> LicenseDecision {
    match held {
        None if entitled => {
            LicenseDecision::Issue(terms_for(sub, plan, None, &LicenseOverrides::default(), grace, now))
        }
        None => LicenseDecision::Keep,
        Some(h) => {
            let next = terms_for(sub, plan, Some(&h.terms), &h.overrides, grace, now);
            if next == h.terms {
                LicenseDecision::Keep
            } else {
                LicenseDecision::Update(next)
            }
        }
    }
}

/// Limits of what an admin may set on a license.
pub mod limits {
    /// The largest device limit an admin may set.
    pub const MAX_DEVICES: u32 = 10_000;
    /// Longest entitlement, in characters.
    pub const ENTITLEMENT_CHARS: usize = 64;
    /// Most entitlements on one license.
    pub const ENTITLEMENTS: usize = 100;
    /// Most metadata keys.
    pub const METADATA_KEYS: usize = 50;
    /// Largest metadata object, serialized, in bytes.
    pub const METADATA_BYTES: usize = 8 * 1024;
    /// Longest renewal in days.
    pub const RENEWAL_DAYS: i64 = 3650;
    /// Longest user id of a manual license, in characters.
    pub const USER_ID_CHARS: usize = 256;
}

// The refusal messages below name the limits.
const _: () = assert!(limits::MAX_DEVICES == 10_000 && limits::ENTITLEMENT_CHARS == 64 && limits::ENTITLEMENTS == 100);
const _: () = assert!(limits::METADATA_KEYS == 50 && limits::METADATA_BYTES == 8192 && limits::RENEWAL_DAYS == 3650);
const _: () = assert!(limits::USER_ID_CHARS == 256);

/// Why an admin's input for a license was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LicenseInputError {
    /// Outside 1..=10,000.
    #[error("max_devices must be between 1 and 10000")]
    MaxDevices,
    /// Not after now.
    #[error("expires_at must be in the future")]
    ExpiryNotInFuture,
    /// Renewal date not after now.
    #[error("until must be in the future")]
    RenewalNotInFuture,
    /// Renewal days outside 1..=3650.
    #[error("days must be between 1 and 3650")]
    RenewalDays,
    /// Empty, too long, or with hidden characters.
    #[error("each entitlement must be 1 to 64 characters without control or invisible characters")]
    Entitlement,
    /// More than 100.
    #[error("at most 100 entitlements")]
    TooManyEntitlements,
    /// More than 50 keys.
    #[error("metadata may have at most 50 keys")]
    TooManyMetadataKeys,
    /// Larger than 8 KiB.
    #[error("metadata may be at most 8192 bytes as JSON")]
    MetadataTooLarge,
    /// Empty, too long, or with hidden characters.
    #[error("user_id must be 1 to 256 characters without control or invisible characters")]
    UserId,
    /// Not a plan of the configured catalog.
    #[error("plan is not in the catalog")]
    UnknownPlan,
    /// A free plan label (no catalog configured) that is empty, too long or hidden.
    #[error("plan must be 1 to 64 characters without control or invisible characters")]
    PlanLabel,
}

/// The plan a manual license is issued on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManualPlan<'a> {
    /// A plan of the catalog: its device limit and features apply.
    Catalog(&'a Plan),
    /// A label, accepted only while no plans are configured (the
    /// zero-setup start, where there is nothing to check it against).
    Label(&'a str),
}

/// Resolves a requested plan: it must be the catalog's once one is
/// configured; before that, any short printable label names it.
pub fn manual_plan<'a>(
    catalog: &'a super::PlanCatalog,
    requested: &'a str,
) -> Result<ManualPlan<'a>, LicenseInputError> {
    if let Some(plan) = catalog.by_id(requested) {
        return Ok(ManualPlan::Catalog(plan));
    }
    if !catalog.all().is_empty() {
        return Err(LicenseInputError::UnknownPlan);
    }
    let printable = super::device::check_device_text(requested).is_ok();
    match (1..=64).contains(&requested.chars().count()) && !requested.trim().is_empty() && printable {
        true => Ok(ManualPlan::Label(requested)),
        false => Err(LicenseInputError::PlanLabel),
    }
}

/// Checks an admin device limit.
pub fn check_max_devices(requested: i64) -> Result<u32, LicenseInputError> {
    u32::try_from(requested).ok().filter(|n| (1..=limits::MAX_DEVICES).contains(n)).ok_or(LicenseInputError::MaxDevices)
}

/// Checks an admin expiry: only a future one makes sense (an admin ends a
/// license now by revoking or suspending it).
pub fn check_expires_at(requested: Timestamp, now: Timestamp) -> Result<Timestamp, LicenseInputError> {
    if requested > now {
        Ok(requested)
    } else {
        Err(LicenseInputError::ExpiryNotInFuture)
    }
}

/// Checks entitlements; a repeated one is kept once, in first place.
pub fn check_entitlements(requested: Vec<String>) -> Result<Vec<String>, LicenseInputError> {
    if requested.len() > limits::ENTITLEMENTS {
        return Err(LicenseInputError::TooManyEntitlements);
    }
    let mut kept: Vec<String> = Vec::with_capacity(requested.len());
    for e in requested {
        let chars = e.chars().count();
        if chars == 0 || chars > limits::ENTITLEMENT_CHARS || super::device::check_device_text(&e).is_err() {
            return Err(LicenseInputError::Entitlement);
        }
        if !kept.contains(&e) {
            kept.push(e);
        }
    }
    Ok(kept)
}

/// Checks the vendor's metadata for size.
pub fn check_metadata(
    requested: serde_json::Map<String, Value>,
) -> Result<serde_json::Map<String, Value>, LicenseInputError> {
    if requested.len() > limits::METADATA_KEYS {
        return Err(LicenseInputError::TooManyMetadataKeys);
    }
    let size = serde_json::to_vec(&requested).map_or(usize::MAX, |v| v.len());
    if size > limits::METADATA_BYTES {
        return Err(LicenseInputError::MetadataTooLarge);
    }
    Ok(requested)
}

/// Checks the user a manual license is issued to.
pub fn check_user_id(requested: &str) -> Result<(), LicenseInputError> {
    let chars = requested.chars().count();
    if requested.trim().is_empty()
        || chars > limits::USER_ID_CHARS
        || super::device::check_device_text(requested).is_err()
    {
        return Err(LicenseInputError::UserId);
    }
    Ok(())
}

/// How long an admin renews a license for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Until this date.
    Until(Timestamp),
    /// This many days past the current expiry, or past now if that is
    /// earlier (or there is none).
    Days(i64),
}

/// The new expiry of a renewal of a license expiring at `current`.
pub fn renewal_end(
    renewal: Renewal,
    current: Option<Timestamp>,
    now: Timestamp,
) -> Result<Timestamp, LicenseInputError> {
    match renewal {
        Renewal::Until(until) if until > now => Ok(until),
        Renewal::Until(_) => Err(LicenseInputError::RenewalNotInFuture),
        Renewal::Days(days) if (1..=limits::RENEWAL_DAYS).contains(&days) => {
            let from = current.map_or(now, |c| c.max(now));
            Ok(from + time::Duration::days(days))
        }
        Renewal::Days(_) => Err(LicenseInputError::RenewalDays),
    }
}

/// A change an admin makes to a license, its input already checked.
#[derive(Debug, Clone, PartialEq)]
pub enum AdminChange {
    /// Overrides and notes; `None` leaves a field as it is, `Some(None)`
    /// clears an override.
    Patch(LicensePatch),
    /// Suspends it until an admin reinstates it.
    Suspend,
    /// Lifts an admin suspension.
    Reinstate,
    /// Withdraws it for good.
    Revoke,
    /// Sets its expiry override to this date.
    Renew(Timestamp),
}

/// The fields of [`AdminChange::Patch`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LicensePatch {
    /// Device limit override (`Some(None)`: back to the plan's).
    pub max_devices: Option<Option<u32>>,
    /// Expiry override (`Some(None)`: back to the subscription's, or none
    /// for a manual license).
    pub expires_at: Option<Option<Timestamp>>,
    /// Replaces the entitlements.
    pub entitlements: Option<Vec<String>>,
    /// Replaces the metadata.
    pub metadata: Option<serde_json::Map<String, Value>>,
    /// Moves the end of the updates window (`Some(None)`: updates forever).
    pub updates_until: Option<Option<Timestamp>>,
}

impl AdminChange {
    /// The audit kind (`license_changes.kind`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Patch(_) => "patched",
            Self::Suspend => "suspended",
            Self::Reinstate => "reinstated",
            Self::Revoke => "revoked",
            Self::Renew(_) => "renewed",
        }
    }
}

/// An admin change refused by the license's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdminRefusal {
    /// The license is revoked: nothing but reads any more.
    #[error("the license is revoked")]
    Revoked,
}

/// The license after an admin change, its terms not yet re-derived (see
/// [`rederive`]): new overrides, entitlements or metadata, or the revoked
/// status. A revoked license takes no further change.
pub fn apply_admin_change(held: &License, change: &AdminChange, now: Timestamp) -> Result<License, AdminRefusal> {
    if held.terms.status == LicenseStatus::Revoked {
        return Err(AdminRefusal::Revoked);
    }
    let mut next = held.clone();
    match change {
        AdminChange::Patch(patch) => {
            if let Some(max_devices) = patch.max_devices {
                next.overrides.max_devices = max_devices;
            }
            if let Some(expires_at) = patch.expires_at {
                next.overrides.expires_at = expires_at;
            }
            if let Some(entitlements) = &patch.entitlements {
                next.entitlements = entitlements.clone();
            }
            if let Some(metadata) = &patch.metadata {
                next.metadata = metadata.clone();
            }
            if let Some(updates_until) = patch.updates_until {
                next.updates_until = updates_until;
            }
        }
        AdminChange::Suspend => {
            next.overrides.suspended_at = held.overrides.suspended_at.or(Some(now));
        }
        AdminChange::Reinstate => next.overrides.suspended_at = None,
        AdminChange::Revoke => next.terms.status = LicenseStatus::Revoked,
        AdminChange::Renew(until) => next.overrides.expires_at = Some(*until),
    }
    Ok(next)
}

/// A license's terms re-derived from its source under its overrides:
/// from `sub` (its subscription as stored) for a Stripe license, from the
/// plan and dates for a manual one. `None` when a Stripe license comes
/// without its subscription.
pub fn rederive(
    license: &License,
    sub: Option<&Subscription>,
    plan: Option<&Plan>,
    grace: time::Duration,
    now: Timestamp,
) -> Option<LicenseTerms> {
    match (license.source, sub) {
        (LicenseSource::Stripe, Some(sub)) => {
            Some(terms_for(sub, plan, Some(&license.terms), &license.overrides, grace, now))
        }
        // Bought once through Checkout: no subscription to follow, terms
        // as for a license issued by hand.
        (LicenseSource::Stripe, None) if license.subscription_id.is_none() => {
            Some(manual_terms(plan, Some(&license.terms), &license.overrides, now))
        }
        (LicenseSource::Stripe, None) => None,
        (LicenseSource::Manual, _) => Some(manual_terms(plan, Some(&license.terms), &license.overrides, now)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::subscription::tests::snapshot;
    use crate::domain::{PlanCatalog, PlanId};
    use time::macros::datetime;
    use time::Duration;

    const NOW: Timestamp = datetime!(2026-11-15 0:00 UTC);

    fn sub(status: SubscriptionStatus) -> Subscription {
        Subscription {
            id: Uuid::nil(),
            snapshot: snapshot(status),
            plan_id: None,
            past_due_since: None,
            source_created: 0,
        }
    }

    fn none() -> LicenseOverrides {
        LicenseOverrides::default()
    }

    fn held(terms: LicenseTerms) -> License {
        License::for_subscription(Uuid::nil(), terms)
    }

    fn pro() -> Plan {
        Plan::new("pro", "Pro", "price_pro", 3)
    }

    #[test]
    fn a_perpetual_updates_window_counts_calendar_months_and_a_release_after_it_is_not_covered() {
        let perpetual = |months| Plan { kind: LicenseKind::Perpetual, updates_months: months, ..pro() };
        let check = |bought: Timestamp, months, expected: Option<Timestamp>| {
            assert_eq!(updates_window_end(&perpetual(months), bought), expected, "{bought} + {months:?}");
        };
        check(datetime!(2026-01-31 10:00 UTC), Some(1), Some(datetime!(2026-02-28 10:00 UTC)));
        check(datetime!(2028-01-31 10:00 UTC), Some(1), Some(datetime!(2028-02-29 10:00 UTC)));
        check(datetime!(2026-03-15 10:00 UTC), Some(12), Some(datetime!(2027-03-15 10:00 UTC)));
        check(datetime!(2026-11-30 10:00 UTC), Some(3), Some(datetime!(2027-02-28 10:00 UTC)));
        check(datetime!(2026-03-15 10:00 UTC), Some(1200), Some(datetime!(2126-03-15 10:00 UTC)));
        check(NOW, None, None);
        let subscription = Plan { updates_months: Some(12), ..pro() };
        assert_eq!(updates_window_end(&subscription, NOW), None, "only a perpetual plan has a window");

        let until = NOW + Duration::days(365);
        let license = License { updates_until: Some(until), ..held(active_terms()) };
        assert!(license.covers_release(until - Duration::days(100)));
        assert!(license.covers_release(until), "a build released on the last day is covered");
        assert!(!license.covers_release(until + Duration::seconds(1)));
        assert!(held(active_terms()).covers_release(NOW + Duration::days(100_000)), "no window: every build");
    }

    #[test]
    fn a_manual_plan_is_the_catalogs_once_one_is_configured_and_a_label_before() {
        let catalog = PlanCatalog::new(vec![pro()]).unwrap();
        assert_eq!(manual_plan(&catalog, "pro").map(|p| matches!(p, ManualPlan::Catalog(_))), Ok(true));
        assert_eq!(manual_plan(&catalog, "platinum"), Err(LicenseInputError::UnknownPlan));
        let none = PlanCatalog::default();
        assert_eq!(manual_plan(&none, "pro"), Ok(ManualPlan::Label("pro")));
        for bad in ["", "  ", "a\u{200b}b", &"p".repeat(65)] {
            assert_eq!(manual_plan(&none, bad), Err(LicenseInputError::PlanLabel), "{bad:?}");
        }
    }

    #[test]
    fn generated_keys_are_grouped_unique_and_parse_back() {
        let a = LicenseKey::generate();
        let b = LicenseKey::generate();
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 32 + 7);
        assert!(a.expose().split('-').all(|g| g.len() == 4));
        assert_eq!(LicenseKey::parse(a.expose()), Some(a.clone()));
        let sloppy = a.expose().to_lowercase().replace('-', " ");
        assert_eq!(LicenseKey::parse(&sloppy), Some(a.clone()));
        assert_eq!(format!("{a:?}"), "LicenseKey(<redacted>)");
    }

    #[test]
    fn parse_refuses_wrong_length_and_alphabet() {
        assert_eq!(LicenseKey::parse(""), None);
        assert_eq!(LicenseKey::parse("ABCD-EFGH"), None);
        assert_eq!(LicenseKey::parse(&"A".repeat(33)), None);
        assert_eq!(LicenseKey::parse(&format!("{}U", "A".repeat(31))), None);
        assert_eq!(LicenseKey::parse(&format!("{}é", "A".repeat(31))), None);
        assert_eq!(
            LicenseKey::parse("o".repeat(32).as_str()).unwrap().expose(),
            "0000-0000-0000-0000-0000-0000-0000-0000"
        );
    }

    #[test]
    fn license_status_follows_subscription_status() {
        use LicenseStatus as L;
        use SubscriptionStatus::*;
        let grace = Duration::days(7);
        for (status, expected) in [
            (Active, L::Active),
            (Trialing, L::Active),
            (PastDue, L::Active),
            (Paused, L::Suspended),
            (Unpaid, L::Suspended),
            (Incomplete, L::Suspended),
            (Canceled, L::Expired),
            (IncompleteExpired, L::Expired),
        ] {
            assert_eq!(terms_for(&sub(status), Some(&pro()), None, &none(), grace, NOW).status, expected, "{status:?}");
        }
    }

    #[test]
    fn past_due_is_active_until_grace_runs_out() {
        let mut s = sub(SubscriptionStatus::PastDue);
        s.past_due_since = Some(datetime!(2026-11-01 0:00 UTC));
        let terms = terms_for(&s, Some(&pro()), None, &none(), Duration::days(7), datetime!(2026-11-07 23:59 UTC));
        assert_eq!(terms.grace_ends_at, Some(datetime!(2026-11-08 0:00 UTC)));
        assert_eq!(terms.status, LicenseStatus::Active);
        assert_eq!(effective_status(&terms, datetime!(2026-11-07 23:59 UTC)), LicenseStatus::Active);
        assert_eq!(lapsed(&terms, datetime!(2026-11-07 23:59 UTC)), None);
        assert_eq!(effective_status(&terms, datetime!(2026-11-08 0:00 UTC)), LicenseStatus::Suspended);
        let suspended = lapsed(&terms, datetime!(2026-11-08 0:00 UTC)).expect("grace ran out");
        assert_eq!(suspended, LicenseTerms { status: LicenseStatus::Suspended, ..terms.clone() });
        // Terms computed after grace ran out say so themselves, so a later
        // event of the same past-due subscription changes nothing.
        let later =
            terms_for(&s, Some(&pro()), Some(&suspended), &none(), Duration::days(7), datetime!(2026-11-09 0:00 UTC));
        assert_eq!(later, suspended);
        assert_eq!(
            decide(
                &s,
                Some(&pro()),
                Some(&held(suspended.clone())),
                true,
                Duration::days(7),
                datetime!(2026-11-09 0:00 UTC)
            ),
            LicenseDecision::Keep
        );
    }

    #[test]
    fn issued_once_on_evidence_then_follows() {
        let grace = Duration::days(7);
        let entitled = |s: &Subscription| s.snapshot.status.proves_entitlement();
        let incomplete = sub(SubscriptionStatus::Incomplete);
        assert_eq!(decide(&incomplete, Some(&pro()), None, entitled(&incomplete), grace, NOW), LicenseDecision::Keep);
        let active = sub(SubscriptionStatus::Active);
        let LicenseDecision::Issue(terms) = decide(&active, Some(&pro()), None, entitled(&active), grace, NOW) else {
            panic!("active subscription without license must issue one");
        };
        assert_eq!(terms.max_devices, 3);
        assert_eq!(decide(&active, Some(&pro()), Some(&held(terms.clone())), true, grace, NOW), LicenseDecision::Keep);
        let canceled = sub(SubscriptionStatus::Canceled);
        let LicenseDecision::Update(next) =
            decide(&canceled, Some(&pro()), Some(&held(terms.clone())), true, grace, NOW)
        else {
            panic!("cancel must update");
        };
        assert_eq!(next.status, LicenseStatus::Expired);
    }

    #[test]
    fn evidence_that_arrives_after_the_end_issues_the_license_the_end_left() {
        let grace = Duration::days(7);
        let canceled = sub(SubscriptionStatus::Canceled);
        assert_eq!(decide(&canceled, Some(&pro()), None, false, grace, NOW), LicenseDecision::Keep, "no evidence yet");
        let LicenseDecision::Issue(terms) = decide(&canceled, Some(&pro()), None, true, grace, NOW) else {
            panic!("a stale active snapshot or a paid invoice proves the subscription was paid for");
        };
        assert_eq!((terms.status, terms.max_devices), (LicenseStatus::Expired, 3));
    }

    #[test]
    fn revoked_stays_revoked_and_unknown_price_keeps_limit() {
        let grace = Duration::days(7);
        let held = LicenseTerms {
            status: LicenseStatus::Revoked,
            max_devices: 5,
            expires_at: None,
            grace_ends_at: None,
            plan_id: Some("team".into()),
        };
        let next = terms_for(&sub(SubscriptionStatus::Active), None, Some(&held), &none(), grace, NOW);
        assert_eq!(next.status, LicenseStatus::Revoked);
        assert_eq!(next.max_devices, 5);
        assert_eq!(next.plan_id.as_deref(), Some("team"));
    }

    fn active_terms() -> LicenseTerms {
        terms_for(&sub(SubscriptionStatus::Active), Some(&pro()), None, &none(), Duration::days(7), NOW)
    }

    fn team() -> Plan {
        Plan { id: PlanId("team".into()), stripe_price_id: "price_team".into(), max_devices: 10, ..pro() }
    }

    #[test]
    fn an_override_device_limit_survives_a_plan_change_which_still_changes_the_plan() {
        let overrides = LicenseOverrides { max_devices: Some(7), ..none() };
        let held = active_terms();
        let next =
            terms_for(&sub(SubscriptionStatus::Active), Some(&team()), Some(&held), &overrides, Duration::days(7), NOW);
        assert_eq!((next.max_devices, next.plan_id.as_deref()), (7, Some("team")));
        let without =
            terms_for(&sub(SubscriptionStatus::Active), Some(&team()), Some(&held), &none(), Duration::days(7), NOW);
        assert_eq!(without.max_devices, 10);
    }

    #[test]
    fn an_admin_suspension_holds_whatever_the_subscription_says() {
        let overrides = LicenseOverrides { suspended_at: Some(NOW), ..none() };
        use SubscriptionStatus::*;
        for status in [Active, Trialing, PastDue, Paused, Unpaid] {
            let next = terms_for(&sub(status), Some(&pro()), Some(&active_terms()), &overrides, Duration::days(7), NOW);
            assert_eq!(next.status, LicenseStatus::Suspended, "{status:?}");
        }
        // An ended subscription reads as expired, which validation reports first.
        let ended = terms_for(&sub(Canceled), Some(&pro()), Some(&active_terms()), &overrides, Duration::days(7), NOW);
        assert_eq!(ended.status, LicenseStatus::Expired);
    }

    #[test]
    fn revoked_is_final_over_every_override() {
        let revoked = LicenseTerms { status: LicenseStatus::Revoked, ..active_terms() };
        let renewed = LicenseOverrides { expires_at: Some(NOW + Duration::days(30)), ..none() };
        let next =
            terms_for(&sub(SubscriptionStatus::Active), Some(&pro()), Some(&revoked), &renewed, Duration::days(7), NOW);
        assert_eq!(next.status, LicenseStatus::Revoked);
        assert_eq!(manual_terms(Some(&pro()), Some(&revoked), &renewed, NOW).status, LicenseStatus::Revoked);
        let license = License { terms: revoked, ..held(active_terms()) };
        assert_eq!(apply_admin_change(&license, &AdminChange::Reinstate, NOW), Err(AdminRefusal::Revoked));
        assert_eq!(apply_admin_change(&license, &AdminChange::Revoke, NOW), Err(AdminRefusal::Revoked));
    }

    #[test]
    fn an_expiry_override_replaces_the_period_end_and_revives_an_ended_subscription_until_then() {
        let until = NOW + Duration::days(30);
        let overrides = LicenseOverrides { expires_at: Some(until), ..none() };
        let grace = Duration::days(7);
        let active = terms_for(&sub(SubscriptionStatus::Active), Some(&pro()), None, &overrides, grace, NOW);
        assert_eq!((active.status, active.expires_at), (LicenseStatus::Active, Some(until)));
        let ended = terms_for(&sub(SubscriptionStatus::Canceled), Some(&pro()), None, &overrides, grace, NOW);
        assert_eq!((ended.status, ended.expires_at), (LicenseStatus::Active, Some(until)));
        let after = terms_for(&sub(SubscriptionStatus::Canceled), Some(&pro()), None, &overrides, grace, until);
        assert_eq!(after.status, LicenseStatus::Expired);
        // Computed before the date, the license still expires at it.
        let license = License { terms: ended, overrides, ..held(active_terms()) };
        assert_eq!(license.hard_expiry(), Some(until));
        assert_eq!(license.effective_status(until - Duration::seconds(1)), LicenseStatus::Active);
        assert_eq!(license.effective_status(until), LicenseStatus::Expired);
        // Without an override, Stripe's period end is no hard expiry.
        assert_eq!(held(active_terms()).hard_expiry(), None);
    }

    #[test]
    fn a_manual_license_is_active_until_its_expiry_then_expired() {
        let until = NOW + Duration::days(1);
        let dated = LicenseOverrides { expires_at: Some(until), ..none() };
        let terms = manual_terms(Some(&pro()), None, &dated, NOW);
        assert_eq!(
            terms,
            LicenseTerms {
                status: LicenseStatus::Active,
                max_devices: 3,
                expires_at: Some(until),
                grace_ends_at: None,
                plan_id: Some("pro".into())
            }
        );
        assert_eq!(manual_terms(Some(&pro()), None, &dated, until).status, LicenseStatus::Expired);
        let license = License { source: LicenseSource::Manual, subscription_id: None, terms, ..held(active_terms()) };
        assert_eq!(license.effective_status(until), LicenseStatus::Expired);
        let forever = manual_terms(Some(&pro()), None, &none(), NOW + Duration::days(10_000));
        assert_eq!((forever.status, forever.expires_at), (LicenseStatus::Active, None));
        let limited = LicenseOverrides { max_devices: Some(2), suspended_at: Some(NOW), ..none() };
        let terms = manual_terms(Some(&pro()), None, &limited, NOW);
        assert_eq!((terms.status, terms.max_devices), (LicenseStatus::Suspended, 2));
        // A plan since removed from the catalog keeps what the license had.
        let kept = manual_terms(None, Some(&terms), &none(), NOW);
        assert_eq!((kept.max_devices, kept.plan_id.as_deref()), (2, Some("pro")));
    }

    #[test]
    fn admin_input_is_checked_against_its_limits() {
        assert_eq!(check_max_devices(1), Ok(1));
        assert_eq!(check_max_devices(10_000), Ok(10_000));
        for bad in [0, -1, 10_001, i64::MAX, i64::from(u32::MAX) + 1] {
            assert_eq!(check_max_devices(bad), Err(LicenseInputError::MaxDevices), "{bad}");
        }
        assert_eq!(check_expires_at(NOW + Duration::seconds(1), NOW), Ok(NOW + Duration::seconds(1)));
        assert_eq!(check_expires_at(NOW, NOW), Err(LicenseInputError::ExpiryNotInFuture));
        assert_eq!(check_entitlements(vec!["a".into(), "b".into(), "a".into()]), Ok(vec!["a".into(), "b".into()]));
        assert_eq!(check_entitlements(vec!["é".repeat(64)]), Ok(vec!["é".repeat(64)]));
        for bad in ["", "a\u{0}b", "x\u{202E}y"] {
            assert_eq!(check_entitlements(vec![bad.into()]), Err(LicenseInputError::Entitlement), "{bad:?}");
        }
        assert_eq!(check_entitlements(vec!["a".repeat(65)]), Err(LicenseInputError::Entitlement));
        let many: Vec<String> = (0..101).map(|i| format!("e{i}")).collect();
        assert_eq!(check_entitlements(many[..100].to_vec()).map(|v| v.len()), Ok(100));
        assert_eq!(check_entitlements(many), Err(LicenseInputError::TooManyEntitlements));
        let keys = |n: usize| (0..n).map(|i| (format!("k{i}"), Value::from(i))).collect::<serde_json::Map<_, _>>();
        assert!(check_metadata(keys(50)).is_ok());
        assert_eq!(check_metadata(keys(51)), Err(LicenseInputError::TooManyMetadataKeys));
        let big =
            |n: usize| [("k".to_owned(), Value::from("x".repeat(n)))].into_iter().collect::<serde_json::Map<_, _>>();
        // `{"k":"…"}` is 8 bytes around the value.
        assert!(check_metadata(big(8192 - 8)).is_ok());
        assert_eq!(check_metadata(big(8192 - 7)), Err(LicenseInputError::MetadataTooLarge));
        assert_eq!(check_user_id("user_1"), Ok(()));
        for bad in ["", "  ", "a\nb"] {
            assert_eq!(check_user_id(bad), Err(LicenseInputError::UserId), "{bad:?}");
        }
        assert_eq!(check_user_id(&"u".repeat(257)), Err(LicenseInputError::UserId));
    }

    #[test]
    fn a_renewal_counts_days_from_the_later_of_now_and_the_current_expiry() {
        let later = NOW + Duration::days(10);
        assert_eq!(renewal_end(Renewal::Days(30), Some(later), NOW), Ok(later + Duration::days(30)));
        assert_eq!(renewal_end(Renewal::Days(30), Some(NOW - Duration::days(5)), NOW), Ok(NOW + Duration::days(30)));
        assert_eq!(renewal_end(Renewal::Days(1), None, NOW), Ok(NOW + Duration::days(1)));
        assert_eq!(renewal_end(Renewal::Days(3650), None, NOW), Ok(NOW + Duration::days(3650)));
        for bad in [0, -1, 3651] {
            assert_eq!(renewal_end(Renewal::Days(bad), None, NOW), Err(LicenseInputError::RenewalDays));
        }
        assert_eq!(renewal_end(Renewal::Until(later), None, NOW), Ok(later));
        assert_eq!(renewal_end(Renewal::Until(NOW), None, NOW), Err(LicenseInputError::RenewalNotInFuture));
    }

    #[test]
    fn admin_changes_set_overrides_and_a_repeated_suspension_changes_nothing() {
        let license = held(active_terms());
        let suspended = apply_admin_change(&license, &AdminChange::Suspend, NOW).unwrap();
        assert_eq!(suspended.overrides.suspended_at, Some(NOW));
        let again = apply_admin_change(&suspended, &AdminChange::Suspend, NOW + Duration::hours(1)).unwrap();
        assert_eq!(again, suspended, "the first suspension's time is kept");
        let reinstated = apply_admin_change(&suspended, &AdminChange::Reinstate, NOW).unwrap();
        assert_eq!(reinstated, license);
        let patch = LicensePatch {
            max_devices: Some(Some(9)),
            expires_at: Some(Some(NOW + Duration::days(2))),
            entitlements: Some(vec!["export".into()]),
            metadata: Some([("crm".to_owned(), Value::from("42"))].into_iter().collect()),
            updates_until: Some(Some(NOW + Duration::days(365))),
        };
        let patched = apply_admin_change(&license, &AdminChange::Patch(patch), NOW).unwrap();
        assert_eq!(patched.updates_until, Some(NOW + Duration::days(365)));
        assert_eq!(patched.overrides.max_devices, Some(9));
        assert_eq!(patched.overrides.expires_at, Some(NOW + Duration::days(2)));
        assert_eq!(patched.entitlements, ["export"]);
        assert_eq!(patched.metadata["crm"], "42");
        let cleared = LicensePatch { max_devices: Some(None), ..LicensePatch::default() };
        let cleared = apply_admin_change(&patched, &AdminChange::Patch(cleared), NOW).unwrap();
        assert_eq!(
            (cleared.overrides.max_devices, cleared.overrides.expires_at),
            (None, Some(NOW + Duration::days(2)))
        );
        let terms = rederive(&cleared, Some(&sub(SubscriptionStatus::Active)), Some(&pro()), Duration::days(7), NOW);
        assert_eq!(terms.map(|t| (t.max_devices, t.expires_at)), Some((3, Some(NOW + Duration::days(2)))));
        assert_eq!(rederive(&cleared, None, Some(&pro()), Duration::days(7), NOW), None);
        let revoked = apply_admin_change(&license, &AdminChange::Revoke, NOW).unwrap();
        let terms = rederive(&revoked, Some(&sub(SubscriptionStatus::Active)), Some(&pro()), Duration::days(7), NOW);
        assert_eq!(terms.map(|t| t.status), Some(LicenseStatus::Revoked));
    }

    #[test]
    fn entitlements_are_the_plans_features_then_the_licenses_own() {
        let plan = Plan { features: vec!["sync".into(), "export".into()], ..pro() };
        let license = License { entitlements: vec!["export".into(), "beta".into()], ..held(active_terms()) };
        assert_eq!(license.entitlements_with(Some(&plan)), ["sync", "export", "beta"]);
        assert_eq!(license.entitlements_with(None), ["export", "beta"]);
    }

    mod key_properties {
        use super::*;
        use proptest::prelude::*;

        /// 32 characters of the alphabet: any key, canonical or not yet grouped.
        fn key_chars() -> impl Strategy<Value = Vec<u8>> {
            proptest::collection::vec(proptest::sample::select(ALPHABET.to_vec()), KEY_CHARS)
        }

        fn grouped(chars: &[u8]) -> String {
            chars.chunks(GROUP).map(|g| std::str::from_utf8(g).unwrap()).collect::<Vec<_>>().join("-")
        }

        /// What parse promises of anything it accepts: the canonical shape.
        fn is_canonical(key: &LicenseKey) -> bool {
            let groups: Vec<&str> = key.expose().split('-').collect();
            groups.len() == KEY_CHARS / GROUP
                && groups.iter().all(|g| g.len() == GROUP && g.bytes().all(|b| ALPHABET.contains(&b)))
        }

        /// How a user may type one character of a key.
        fn typed(c: u8) -> BoxedStrategy<String> {
            let c = c as char;
            let mut spellings = vec![c.to_string(), c.to_ascii_lowercase().to_string()];
            match c {
                '0' => spellings.extend(["O".into(), "o".into()]),
                '1' => spellings.extend(["I".into(), "i".into(), "L".into(), "l".into()]),
                _ => {}
            }
            (proptest::sample::select(spellings), "[- ]{0,3}").prop_map(|(c, sep)| c + &sep).boxed()
        }

        #[test]
        fn generated_keys_always_parse_back_to_themselves() {
            for _ in 0..256 {
                let key = LicenseKey::generate();
                assert!(is_canonical(&key));
                assert_eq!(LicenseKey::parse(key.expose()), Some(key));
            }
        }

        proptest! {
            #[test]
            fn a_canonical_key_parses_to_itself(chars in key_chars()) {
                let text = grouped(&chars);
                let key = LicenseKey::parse(&text).unwrap();
                prop_assert_eq!(key.expose(), text.as_str());
            }

            #[test]
            fn any_case_dash_space_or_look_alike_spelling_parses_to_the_same_key(
                (chars, typing) in key_chars().prop_flat_map(|chars| {
                    let typing: Vec<_> = chars.iter().map(|&c| typed(c)).collect();
                    (Just(chars), typing)
                }),
                leading in "[- ]{0,3}",
            ) {
                let typed = leading + &typing.concat();
                prop_assert_eq!(LicenseKey::parse(&typed).map(|k| k.expose().to_owned()), Some(grouped(&chars)), "{}", typed);
            }

            #[test]
            fn anything_else_never_panics_and_never_yields_a_malformed_key(input in ".{0,80}") {
                if let Some(key) = LicenseKey::parse(&input) {
                    prop_assert!(is_canonical(&key));
                }
            }

            #[test]
            fn a_key_one_character_short_or_long_is_refused(
                chars in proptest::collection::vec(proptest::sample::select(ALPHABET.to_vec()), 0..80),
            ) {
                prop_assume!(chars.len() != KEY_CHARS);
                prop_assert_eq!(LicenseKey::parse(std::str::from_utf8(&chars).unwrap()), None);
                prop_assert_eq!(LicenseKey::parse(&grouped(&chars)), None);
            }

            #[test]
            fn a_character_outside_the_alphabet_is_refused(
                chars in key_chars(),
                index in any::<prop::sample::Index>(),
                intruder in any::<char>().prop_filter("typed forms of key characters", |&c| {
                    let upper = c.to_ascii_uppercase();
                    let typable = matches!(upper, '-' | ' ' | 'O' | 'I' | 'L') || (c.is_ascii() && ALPHABET.contains(&(upper as u8)));
                    !typable
                }),
            ) {
                let mut text = grouped(&chars);
                let i = index.index(text.len() + 1);
                text.insert(i, intruder);
                prop_assert_eq!(LicenseKey::parse(&text), None);
            }
        }
    }
}
