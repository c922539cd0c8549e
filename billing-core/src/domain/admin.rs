//! TEMPORARY stand-in for the lead's admin-token scopes (issue 14), so that
//! the admin license routes build and are tested before main has them.
//! Dropped in favour of main's version on merge.

/// What an admin token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `licenses:read`
    LicensesRead,
    /// `licenses:write`
    LicensesWrite,
    /// `customers:read`
    CustomersRead,
    /// `devices:write`
    DevicesWrite,
    /// `events:read`
    EventsRead,
    /// `stripe:write`
    StripeWrite,
    /// `webhooks:write`
    WebhooksWrite,
    /// `*`
    All,
}

impl Scope {
    /// The spelling on the command line and in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LicensesRead => "licenses:read",
            Self::LicensesWrite => "licenses:write",
            Self::CustomersRead => "customers:read",
            Self::DevicesWrite => "devices:write",
            Self::EventsRead => "events:read",
            Self::StripeWrite => "stripe:write",
            Self::WebhooksWrite => "webhooks:write",
            Self::All => "*",
        }
    }

    /// Parses [`Scope::as_str`]'s spelling.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::LicensesRead,
            Self::LicensesWrite,
            Self::CustomersRead,
            Self::DevicesWrite,
            Self::EventsRead,
            Self::StripeWrite,
            Self::WebhooksWrite,
            Self::All,
        ]
        .into_iter()
        .find(|scope| scope.as_str() == s)
    }
}
