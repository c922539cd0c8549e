//! Admin API tokens and their scopes: what a vendor's script may do.

use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use std::fmt;

/// One permission of an admin token. `All` (`*`) grants every other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Read licenses (lists, search, one license, export).
    LicensesRead,
    /// Issue and change licenses (overrides, suspend, revoke, renew).
    LicensesWrite,
    /// Read customers.
    CustomersRead,
    /// Deactivate devices.
    DevicesWrite,
    /// Read the audit trail and the recorded Stripe deliveries.
    EventsRead,
    /// Replay recorded Stripe deliveries.
    StripeWrite,
    /// Manage the vendor's webhook endpoints.
    WebhooksWrite,
    /// Open the customer portal for a user (portal sessions).
    PortalWrite,
    /// Everything.
    All,
}

impl Scope {
    /// Every scope, in the order the CLI lists them.
    pub const EVERY: [Scope; 9] = [
        Scope::LicensesRead,
        Scope::LicensesWrite,
        Scope::CustomersRead,
        Scope::DevicesWrite,
        Scope::EventsRead,
        Scope::StripeWrite,
        Scope::WebhooksWrite,
        Scope::PortalWrite,
        Scope::All,
    ];

    /// The spelling on the CLI, in storage and in errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LicensesRead => "licenses:read",
            Self::LicensesWrite => "licenses:write",
            Self::CustomersRead => "customers:read",
            Self::DevicesWrite => "devices:write",
            Self::EventsRead => "events:read",
            Self::StripeWrite => "stripe:write",
            Self::WebhooksWrite => "webhooks:write",
            Self::PortalWrite => "portal:write",
            Self::All => "*",
        }
    }

    /// Parses one spelling of [`Scope::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::EVERY.into_iter().find(|scope| scope.as_str() == s)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a list of scopes was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// A name that is not a scope (the name itself is not secret).
    #[error("unknown scope {0:?}; known scopes: licenses:read, licenses:write, customers:read, devices:write, events:read, stripe:write, webhooks:write, portal:write, *")]
    Unknown(String),
    /// No scope at all.
    #[error("at least one scope is required")]
    Empty,
}

/// The scopes a token holds: sorted, without duplicates, never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scopes(Vec<Scope>);

impl Scopes {
    /// Every permission (`*`): the default for a new token.
    pub fn all() -> Self {
        Self(vec![Scope::All])
    }

    /// Parses names such as `licenses:read`, refusing unknown ones.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, ScopeError> {
        let mut scopes = names
            .into_iter()
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(|name| Scope::parse(name).ok_or_else(|| ScopeError::Unknown(name.to_owned())))
            .collect::<Result<Vec<_>, _>>()?;
        scopes.sort();
        scopes.dedup();
        if scopes.is_empty() {
            return Err(ScopeError::Empty);
        }
        Ok(Self(scopes))
    }

    /// Parses the CLI's comma-separated form.
    pub fn parse_list(list: &str) -> Result<Self, ScopeError> {
        Self::parse(list.split(','))
    }

    /// Whether these scopes permit `needed`.
    pub fn allows(&self, needed: Scope) -> bool {
        self.0.iter().any(|&held| held == Scope::All || held == needed)
    }

    /// The scopes, sorted.
    pub fn iter(&self) -> impl Iterator<Item = Scope> + '_ {
        self.0.iter().copied()
    }

    /// Their spellings, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        self.iter().map(Scope::as_str).collect()
    }
}

const TOKEN_PREFIX: &str = "adm_";

/// An admin API token such as `adm_…`: 256 random bits, shown once when
/// created and stored only as its SHA-256. `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    /// 256 fresh random bits from the operating system.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        SystemRandom::new().fill(&mut bytes).expect("the operating system RNG is available");
        Self(format!("{TOKEN_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// Wraps a presented token; one that is not ours simply matches nothing.
    pub fn presented(token: &str) -> Self {
        Self(token.to_owned())
    }

    /// Whether a presented string has our shape (a dashboard JWT does not),
    /// so that a lookup is spent only on plausible tokens.
    pub fn looks_like(token: &str) -> bool {
        token.len() == TOKEN_PREFIX.len() + 43
            && token.starts_with(TOKEN_PREFIX)
            && token[TOKEN_PREFIX.len()..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }

    /// The token, for the one place that prints it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// SHA-256 of the token: what is stored and looked up.
    pub fn hash(&self) -> Vec<u8> {
        ring::digest::digest(&ring::digest::SHA256, self.0.as_bytes()).as_ref().to_vec()
    }
}

/// Why a token name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a token name is 1 to 64 characters of letters, digits, '-', '_' and '.'")]
pub struct InvalidTokenName;

/// Checks a token's name: it becomes the audit trail's actor (`admin:<name>`),
/// so it is short and printable.
pub fn check_token_name(name: &str) -> Result<(), InvalidTokenName> {
    let fine = (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    fine.then_some(()).ok_or(InvalidTokenName)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_sort_dedup_and_refuse_unknown_names() {
        let scopes = Scopes::parse_list("licenses:write, licenses:read,licenses:write").unwrap();
        assert_eq!(scopes.names(), ["licenses:read", "licenses:write"]);
        assert_eq!(Scopes::parse_list("licenses:admin"), Err(ScopeError::Unknown("licenses:admin".into())));
        assert_eq!(Scopes::parse_list(" , "), Err(ScopeError::Empty));
        for scope in Scope::EVERY {
            assert_eq!(Scope::parse(scope.as_str()), Some(scope));
        }
    }

    #[test]
    fn a_scope_allows_only_itself_and_star_allows_everything() {
        let read = Scopes::parse_list("licenses:read").unwrap();
        assert!(read.allows(Scope::LicensesRead));
        assert!(!read.allows(Scope::LicensesWrite));
        assert!(!read.allows(Scope::All));
        for scope in Scope::EVERY {
            assert!(Scopes::all().allows(scope));
        }
    }

    #[test]
    fn tokens_are_random_shaped_and_redacted() {
        let a = AdminToken::generate();
        assert_ne!(a, AdminToken::generate());
        assert!(AdminToken::looks_like(a.expose()), "{}", a.expose().len());
        assert!(!AdminToken::looks_like("eyJhbGciOiJIUzI1NiJ9.e30.sig"));
        assert!(!AdminToken::looks_like(&format!("{}!", &a.expose()[..a.expose().len() - 1])));
        assert_eq!(format!("{a:?}"), "AdminToken(<redacted>)");
        assert_eq!(a.hash().len(), 32);
    }

    #[test]
    fn token_names_are_short_and_printable() {
        assert!(check_token_name("ci-deploy_2.0").is_ok());
        for bad in ["", "has space", "new\nline", "é", &"a".repeat(65), "admin:x"] {
            assert!(check_token_name(bad).is_err(), "{bad:?}");
        }
    }
}
