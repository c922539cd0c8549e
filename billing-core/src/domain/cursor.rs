//! Keyset cursors for the admin listings: the position of the last item a
//! page returned, so the next page starts strictly after it whatever was
//! inserted meanwhile (an offset would skip or repeat rows under inserts).
//!
//! A cursor travels as an opaque token: base64url (no padding) of
//! `<list>|<unix microseconds>|<tie-breakers…>`. The list tag makes a cursor
//! of one listing unusable on another; anything that does not parse back is
//! refused rather than read as "from the start".

use super::Timestamp;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use uuid::Uuid;

/// The longest token accepted: far above any cursor we issue, far below
/// anything worth decoding.
const MAX_TOKEN_CHARS: usize = 512;

/// A timestamp as the stores keep it: whole Unix microseconds.
pub fn to_micros(t: Timestamp) -> i64 {
    i64::try_from(t.unix_timestamp_nanos().div_euclid(1000)).unwrap_or(i64::MAX)
}

/// The timestamp of whole Unix microseconds, if representable.
pub fn from_micros(micros: i64) -> Option<Timestamp> {
    Timestamp::from_unix_timestamp_nanos(i128::from(micros) * 1000).ok()
}

/// How many items a page holds: 1 to [`PageLimit::MAX`], [`PageLimit::DEFAULT`]
/// unless asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimit(usize);

impl PageLimit {
    /// The most a page holds.
    pub const MAX: usize = 500;
    /// A page's size when none is asked for.
    pub const DEFAULT: Self = Self(50);

    /// A limit in range.
    pub fn new(limit: usize) -> Option<Self> {
        (1..=Self::MAX).contains(&limit).then_some(Self(limit))
    }

    /// Reads the decimal digits of a `limit` parameter (no sign, no spaces).
    pub fn parse(text: &str) -> Option<Self> {
        if text.is_empty() || text.len() > 3 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Self::new(text.parse().ok()?)
    }

    /// The number of items.
    pub fn get(self) -> usize {
        self.0
    }
}

fn encode(parts: &[&str]) -> String {
    URL_SAFE_NO_PAD.encode(parts.join("|"))
}

/// The `|`-separated fields of a token of list `tag`, which must number `n`
/// after the tag.
fn decode(token: &str, tag: &str, n: usize) -> Option<Vec<String>> {
    if token.is_empty() || token.len() > MAX_TOKEN_CHARS {
        return None;
    }
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(token).ok()?).ok()?;
    let mut fields = text.split('|');
    if fields.next()? != tag {
        return None;
    }
    let rest: Vec<String> = fields.map(str::to_owned).collect();
    (rest.len() == n).then_some(rest)
}

fn micros_field(field: &str) -> Option<Timestamp> {
    // `i64::from_str` accepts a leading `+`; a cursor we issued never has one.
    if field.starts_with('+') {
        return None;
    }
    from_micros(field.parse().ok()?)
}

/// Position in the license listing: newest first by (`created_at`, `id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LicenseCursor {
    /// The last license's creation time.
    pub created_at: Timestamp,
    /// The last license's id.
    pub id: Uuid,
}

impl LicenseCursor {
    /// The opaque token.
    pub fn encode(&self) -> String {
        encode(&["lic", &to_micros(self.created_at).to_string(), &self.id.hyphenated().to_string()])
    }

    /// Reads a token issued by [`LicenseCursor::encode`].
    pub fn parse(token: &str) -> Option<Self> {
        let fields = decode(token, "lic", 2)?;
        let id = Uuid::parse_str(&fields[1]).ok().filter(|id| id.hyphenated().to_string() == fields[1])?;
        Some(Self { created_at: micros_field(&fields[0])?, id })
    }
}

/// Which audit table an entry comes from. The order of the variants is the
/// order entries of one instant are listed in (newest first: licenses,
/// devices, subscriptions), part of the audit walk's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AuditSource {
    /// `subscription_changes`
    Subscription,
    /// `device_changes`
    Device,
    /// `license_changes`
    License,
}

impl AuditSource {
    /// The rank the stores sort by.
    pub fn rank(self) -> i64 {
        match self {
            Self::Subscription => 0,
            Self::Device => 1,
            Self::License => 2,
        }
    }

    /// The source of a rank.
    pub fn from_rank(rank: i64) -> Option<Self> {
        match rank {
            0 => Some(Self::Subscription),
            1 => Some(Self::Device),
            2 => Some(Self::License),
            _ => None,
        }
    }

    /// The prefix of entry ids from this source (`sub_12`, `dev_7`, `lic_3`),
    /// which keeps ids unique across the three tables.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Subscription => "sub",
            Self::Device => "dev",
            Self::License => "lic",
        }
    }
}

/// Position in the audit walk: newest first by (`at`, source, `id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditCursor {
    /// When the last entry was recorded.
    pub at: Timestamp,
    /// Its table.
    pub source: AuditSource,
    /// Its row id in that table.
    pub id: i64,
}

impl AuditCursor {
    /// The opaque token.
    pub fn encode(&self) -> String {
        encode(&["aud", &to_micros(self.at).to_string(), &self.source.rank().to_string(), &self.id.to_string()])
    }

    /// Reads a token issued by [`AuditCursor::encode`].
    pub fn parse(token: &str) -> Option<Self> {
        let fields = decode(token, "aud", 3)?;
        let source = AuditSource::from_rank(fields[1].parse().ok()?)?;
        let id: i64 = fields[2].parse().ok().filter(|id| *id > 0 && !fields[2].starts_with('+'))?;
        Some(Self { at: micros_field(&fields[0])?, source, id })
    }
}

/// Position in the list of Stripe deliveries: newest first by
/// (`received_at`, event id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryCursor {
    /// When the last delivery was first received.
    pub received_at: Timestamp,
    /// Its event id.
    pub id: String,
}

impl DeliveryCursor {
    /// The opaque token.
    pub fn encode(&self) -> String {
        encode(&["evt", &to_micros(self.received_at).to_string(), &self.id])
    }

    /// Reads a token issued by [`DeliveryCursor::encode`]. Event ids hold
    /// no `|` (a field separator) and no control characters.
    pub fn parse(token: &str) -> Option<Self> {
        let fields = decode(token, "evt", 2)?;
        let id = fields[1].clone();
        if id.is_empty() || id.chars().any(char::is_control) {
            return None;
        }
        Some(Self { received_at: micros_field(&fields[0])?, id })
    }
}

/// Position in the customer listing: newest first by (`created_at`, kind,
/// key), where a Stripe customer's key is our customer id and a user known
/// only from manual licenses is keyed by the user id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerCursor {
    /// When the last customer was first seen.
    pub created_at: Timestamp,
    /// 0 for a Stripe customer, 1 for a user with manual licenses only.
    pub kind: i64,
    /// Its key within its kind.
    pub key: String,
}

impl CustomerCursor {
    /// The opaque token. A user id may hold `|`: it is the last field, so
    /// it is taken whole.
    pub fn encode(&self) -> String {
        encode(&["cus", &to_micros(self.created_at).to_string(), &self.kind.to_string(), &self.key])
    }

    /// Reads a token issued by [`CustomerCursor::encode`].
    pub fn parse(token: &str) -> Option<Self> {
        if token.is_empty() || token.len() > MAX_TOKEN_CHARS {
            return None;
        }
        let text = String::from_utf8(URL_SAFE_NO_PAD.decode(token).ok()?).ok()?;
        let mut fields = text.splitn(4, '|');
        if fields.next()? != "cus" {
            return None;
        }
        let created_at = micros_field(fields.next()?)?;
        let kind = match fields.next()? {
            "0" => 0,
            "1" => 1,
            _ => return None,
        };
        let key = fields.next()?.to_owned();
        if key.is_empty() || key.chars().any(char::is_control) {
            return None;
        }
        Some(Self { created_at, kind, key })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn cursors_read_back_what_they_wrote() {
        let at = datetime!(2026-12-01 11:22:33.123456 UTC);
        let license = LicenseCursor { created_at: at, id: Uuid::new_v4() };
        assert_eq!(LicenseCursor::parse(&license.encode()), Some(license));
        for source in [AuditSource::Subscription, AuditSource::Device, AuditSource::License] {
            let audit = AuditCursor { at, source, id: 42 };
            assert_eq!(AuditCursor::parse(&audit.encode()), Some(audit));
        }
        let delivery = DeliveryCursor { received_at: at, id: "evt_1".into() };
        assert_eq!(DeliveryCursor::parse(&delivery.encode()), Some(delivery));
        let customer = CustomerCursor { created_at: at, kind: 1, key: "user|with|bars".into() };
        assert_eq!(CustomerCursor::parse(&customer.encode()), Some(customer));
    }

    #[test]
    fn tokens_that_we_did_not_issue_are_refused() {
        let at = datetime!(2026-12-01 0:00 UTC);
        let license = LicenseCursor { created_at: at, id: Uuid::nil() }.encode();
        let audit = AuditCursor { at, source: AuditSource::Device, id: 7 }.encode();
        let check = |token: &str| {
            assert_eq!(LicenseCursor::parse(token), None, "{token:?}");
            assert_eq!(AuditCursor::parse(token), None, "{token:?}");
            assert_eq!(DeliveryCursor::parse(token), None, "{token:?}");
            assert_eq!(CustomerCursor::parse(token), None, "{token:?}");
        };
        check("");
        check("not base64!");
        check(&"A".repeat(MAX_TOKEN_CHARS + 4));
        check(&URL_SAFE_NO_PAD.encode("lic|x|00000000-0000-0000-0000-000000000000"));
        check(&URL_SAFE_NO_PAD.encode("lic|+1|00000000-0000-0000-0000-000000000000"));
        check(&URL_SAFE_NO_PAD.encode("lic|1|00000000000000000000000000000000"));
        check(&URL_SAFE_NO_PAD.encode("aud|1|9|1"));
        check(&URL_SAFE_NO_PAD.encode("aud|1|0|-1"));
        check(&URL_SAFE_NO_PAD.encode("evt|1|"));
        check(&URL_SAFE_NO_PAD.encode("evt|1|a\nb"));
        check(&URL_SAFE_NO_PAD.encode("cus|1|2|u"));
        check(&URL_SAFE_NO_PAD.encode([0xff, 0xfe]));
        // A cursor of one listing is not one of another.
        assert_eq!(AuditCursor::parse(&license), None);
        assert_eq!(LicenseCursor::parse(&audit), None);
        assert!(LicenseCursor::parse(&license).is_some() && AuditCursor::parse(&audit).is_some());
    }

    #[test]
    fn page_limits_are_one_to_five_hundred_digits_only() {
        let check = |text: &str, expected: Option<usize>| {
            assert_eq!(PageLimit::parse(text).map(PageLimit::get), expected, "{text:?}")
        };
        check("1", Some(1));
        check("50", Some(50));
        check("500", Some(500));
        check("007", Some(7));
        check("0", None);
        check("501", None);
        check("-1", None);
        check("+5", None);
        check(" 5", None);
        check("", None);
        check("99999999999999999999", None);
        assert_eq!(PageLimit::DEFAULT.get(), 50);
    }

    #[test]
    fn microseconds_round_trip() {
        let at = datetime!(1999-12-31 23:59:59.999999 UTC);
        assert_eq!(from_micros(to_micros(at)), Some(at));
        assert_eq!(from_micros(i64::MAX), None);
    }
}
