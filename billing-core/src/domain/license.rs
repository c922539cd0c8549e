//! License keys and the rule that derives a license's terms from its
//! subscription.

use super::{Plan, Subscription, SubscriptionStatus, Timestamp};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
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

/// A license as we hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct License {
    /// Our id.
    pub id: Uuid,
    /// The subscription it belongs to.
    pub subscription_id: Uuid,
    /// The key itself.
    pub key: LicenseKey,
    /// Current terms.
    pub terms: LicenseTerms,
}

impl License {
    /// The status at `now`: a past-due license whose grace has run out is
    /// suspended even before any event says so.
    pub fn effective_status(&self, now: Timestamp) -> LicenseStatus {
        effective_status(&self.terms, now)
    }
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
/// suspended from then on.
pub fn terms_for(
    sub: &Subscription,
    plan: Option<&Plan>,
    held: Option<&LicenseTerms>,
    grace: time::Duration,
    now: Timestamp,
) -> LicenseTerms {
    use SubscriptionStatus::*;
    let snap = &sub.snapshot;
    let mut grace_ends_at = None;
    let status = match snap.status {
        Active | Trialing => LicenseStatus::Active,
        PastDue => {
            grace_ends_at = sub.past_due_since.map(|t| t + grace);
            LicenseStatus::Active
        }
        Paused | Unpaid | Incomplete => LicenseStatus::Suspended,
        Canceled | IncompleteExpired => LicenseStatus::Expired,
    };
    let status = match held {
        Some(h) if h.status == LicenseStatus::Revoked => LicenseStatus::Revoked,
        _ => status,
    };
    let terms = LicenseTerms {
        status,
        max_devices: plan.map(|p| p.max_devices).or(held.map(|h| h.max_devices)).unwrap_or(1),
        expires_at: snap.current_period_end.or(snap.trial_end),
        grace_ends_at,
        plan_id: plan.map(|p| p.id.0.clone()).or_else(|| held.and_then(|h| h.plan_id.clone())),
    };
    lapsed(&terms, now).unwrap_or(terms)
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
/// terms always follow the subscription as it now is. So a subscription
/// whose `canceled` snapshot overtook its `active` one still ends with an
/// expired license, as in-order delivery would leave it.
pub fn decide(
    sub: &Subscription,
    plan: Option<&Plan>,
    held: Option<&LicenseTerms>,
    entitled: bool,
    grace: time::Duration,
    now: Timestamp,
) -> LicenseDecision {
    match held {
        None if entitled => LicenseDecision::Issue(terms_for(sub, plan, None, grace, now)),
        None => LicenseDecision::Keep,
        Some(h) => {
            let next = terms_for(sub, plan, Some(h), grace, now);
            if &next == h {
                LicenseDecision::Keep
            } else {
                LicenseDecision::Update(next)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::subscription::tests::snapshot;
    use crate::domain::PlanId;
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

    fn pro() -> Plan {
        Plan {
            id: PlanId("pro".into()),
            name: "Pro".into(),
            stripe_price_id: "price_pro".into(),
            max_devices: 3,
            amount: None,
            currency: None,
            interval: None,
            features: vec![],
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
            assert_eq!(terms_for(&sub(status), Some(&pro()), None, grace, NOW).status, expected, "{status:?}");
        }
    }

    #[test]
    fn past_due_is_active_until_grace_runs_out() {
        let mut s = sub(SubscriptionStatus::PastDue);
        s.past_due_since = Some(datetime!(2026-11-01 0:00 UTC));
        let terms = terms_for(&s, Some(&pro()), None, Duration::days(7), datetime!(2026-11-07 23:59 UTC));
        assert_eq!(terms.grace_ends_at, Some(datetime!(2026-11-08 0:00 UTC)));
        assert_eq!(terms.status, LicenseStatus::Active);
        assert_eq!(effective_status(&terms, datetime!(2026-11-07 23:59 UTC)), LicenseStatus::Active);
        assert_eq!(lapsed(&terms, datetime!(2026-11-07 23:59 UTC)), None);
        assert_eq!(effective_status(&terms, datetime!(2026-11-08 0:00 UTC)), LicenseStatus::Suspended);
        let suspended = lapsed(&terms, datetime!(2026-11-08 0:00 UTC)).expect("grace ran out");
        assert_eq!(suspended, LicenseTerms { status: LicenseStatus::Suspended, ..terms.clone() });
        // Terms computed after grace ran out say so themselves, so a later
        // event of the same past-due subscription changes nothing.
        let later = terms_for(&s, Some(&pro()), Some(&suspended), Duration::days(7), datetime!(2026-11-09 0:00 UTC));
        assert_eq!(later, suspended);
        assert_eq!(
            decide(&s, Some(&pro()), Some(&suspended), true, Duration::days(7), datetime!(2026-11-09 0:00 UTC)),
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
        assert_eq!(decide(&active, Some(&pro()), Some(&terms), true, grace, NOW), LicenseDecision::Keep);
        let canceled = sub(SubscriptionStatus::Canceled);
        let LicenseDecision::Update(next) = decide(&canceled, Some(&pro()), Some(&terms), true, grace, NOW) else {
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
        let next = terms_for(&sub(SubscriptionStatus::Active), None, Some(&held), grace, NOW);
        assert_eq!(next.status, LicenseStatus::Revoked);
        assert_eq!(next.max_devices, 5);
        assert_eq!(next.plan_id.as_deref(), Some("team"));
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
