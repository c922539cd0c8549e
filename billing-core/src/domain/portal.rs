//! The customer portal's one-time codes (issue 19): what a vendor's backend
//! hands a customer so that the portal page opens for that user alone.

use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use std::fmt;

/// How long a code may wait to be exchanged.
pub const CODE_TTL: time::Duration = time::Duration::minutes(5);

/// How long the credential a code is exchanged for lasts.
pub const SESSION_TTL: time::Duration = time::Duration::minutes(30);

const CODE_PREFIX: &str = "pcs_";

/// A one-time portal code such as `pcs_…`: 256 random bits, put in the
/// portal URL once and stored only as its SHA-256. `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct PortalCode(String);

impl fmt::Debug for PortalCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PortalCode(<redacted>)")
    }
}

impl PortalCode {
    /// 256 fresh random bits from the operating system.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        SystemRandom::new().fill(&mut bytes).expect("the operating system RNG is available");
        Self(format!("{CODE_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// Wraps a presented code; one that is not ours simply matches nothing.
    pub fn presented(code: &str) -> Self {
        Self(code.to_owned())
    }

    /// Whether a presented string has our shape, so that a lookup is spent
    /// only on plausible codes.
    pub fn looks_like(code: &str) -> bool {
        code.len() == CODE_PREFIX.len() + 43
            && code.starts_with(CODE_PREFIX)
            && code[CODE_PREFIX.len()..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }

    /// The code, for the URL it is handed out in.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// SHA-256 of the code: what is stored and looked up.
    pub fn hash(&self) -> Vec<u8> {
        ring::digest::digest(&ring::digest::SHA256, self.0.as_bytes()).as_ref().to_vec()
    }
}

/// Why a portal session was not created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPortalSession {
    /// The user id is empty, too long or has control characters.
    #[error("user_id must be 1 to 255 characters without control characters")]
    UserId,
    /// The return URL is not an absolute http(s) URL.
    #[error("return_url must be an absolute http:// or https:// URL of at most 2048 characters")]
    ReturnUrl,
}

/// Checks a portal session's user id: it becomes a dashboard token's `sub`,
/// which the server refuses empty or with control characters.
pub fn check_user_id(user_id: &str) -> Result<(), InvalidPortalSession> {
    let fine = !user_id.is_empty() && user_id.len() <= 255 && !user_id.chars().any(char::is_control);
    fine.then_some(()).ok_or(InvalidPortalSession::UserId)
}

/// Checks a return URL: the portal links back to it, so only a web address
/// (no `javascript:`, no relative path) is accepted.
pub fn check_return_url(url: &str) -> Result<(), InvalidPortalSession> {
    let lower = url.to_ascii_lowercase();
    let rest = lower.strip_prefix("https://").or_else(|| lower.strip_prefix("http://"));
    let fine = url.len() <= 2048
        && rest.is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
        && !url.chars().any(|c| c.is_control() || c.is_whitespace());
    fine.then_some(()).ok_or(InvalidPortalSession::ReturnUrl)
}

/// Why a presented code opened nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeRefusal {
    /// The code was exchanged already.
    Used,
    /// The code waited too long.
    Expired,
}

/// Why a stored code that could not be claimed was refused: a use wins over
/// an expiry (the customer did open the portal with it).
pub fn refusal(used_at: Option<super::Timestamp>, expires_at: super::Timestamp, now: super::Timestamp) -> CodeRefusal {
    match used_at {
        Some(_) => CodeRefusal::Used,
        None if expires_at <= now => CodeRefusal::Expired,
        // Claimable, yet the claim lost a race with another exchange.
        None => CodeRefusal::Used,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn codes_have_their_shape_and_hash_to_what_is_stored() {
        let code = PortalCode::generate();
        assert!(PortalCode::looks_like(code.expose()));
        assert_eq!(PortalCode::presented(code.expose()).hash(), code.hash());
        assert_ne!(PortalCode::generate(), code);
        assert!(!PortalCode::looks_like("pcs_short"));
        assert!(!PortalCode::looks_like(&format!("adm_{}", &code.expose()[4..])));
        assert_eq!(format!("{code:?}"), "PortalCode(<redacted>)");
    }

    #[test]
    fn user_ids_and_return_urls_are_checked() {
        fn check(url: &str, fine: bool) {
            assert_eq!(check_return_url(url).is_ok(), fine, "{url}");
        }
        check("https://app.example.com/account", true);
        check("http://localhost:3000/", true);
        check("HTTPS://APP.EXAMPLE.COM", true);
        check("javascript:alert(1)", false);
        check("/account", false);
        check("https://", false);
        check("https:///path", false);
        check("https://app.example.com/a b", false);
        check(&format!("https://e.com/{}", "a".repeat(2048)), false);
        assert!(check_user_id("user_1").is_ok());
        assert_eq!(check_user_id(""), Err(InvalidPortalSession::UserId));
        assert_eq!(check_user_id("a\nb"), Err(InvalidPortalSession::UserId));
        assert_eq!(check_user_id(&"u".repeat(256)), Err(InvalidPortalSession::UserId));
    }

    #[test]
    fn a_use_wins_over_an_expiry() {
        let now = datetime!(2026-12-01 12:00 UTC);
        let before = now - time::Duration::minutes(1);
        let after = now + time::Duration::minutes(1);
        assert_eq!(refusal(Some(before), before, now), CodeRefusal::Used);
        assert_eq!(refusal(None, before, now), CodeRefusal::Expired);
        assert_eq!(refusal(None, now, now), CodeRefusal::Expired);
        assert_eq!(refusal(None, after, now), CodeRefusal::Used);
    }
}
