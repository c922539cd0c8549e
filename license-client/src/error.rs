//! What can go wrong, each with a stable `code` for apps (and the Node binding).

use std::path::PathBuf;

/// An error of a license-client operation. Messages never contain the
/// license key or the activation token.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server refused the request with `{"error":{"code","message"}}`
    /// (e.g. `TOO_MANY_DEVICES`, `REVOKED`, `HEARTBEAT_DEAD`, `RATE_LIMITED`).
    #[error("the license server refused: {message} ({code}, HTTP {status})")]
    Server {
        /// HTTP status.
        status: u16,
        /// The server's error code.
        code: String,
        /// The server's explanation.
        message: String,
    },
    /// The server could not be reached, or did not answer in time.
    #[error("cannot reach the license server")]
    Network(#[source] reqwest::Error),
    /// The server answered with something that is not the documented JSON.
    #[error("the license server sent an unexpected response")]
    InvalidResponse(#[source] serde_json::Error),
    /// The operation needs an activation and this store has none.
    #[error("this device is not activated")]
    NotActivated,
    /// A certificate from the server does not verify with the vendor's public key.
    #[error("the license certificate does not verify with the vendor's public key")]
    InvalidCertificate,
    /// The configured (or served) public key is not an Ed25519 key.
    #[error("the public key is not an Ed25519 key (a JWK with kty OKP, crv Ed25519, or its base64url `x`)")]
    InvalidPublicKey,
    /// The server URL cannot be used.
    #[error("the server URL must start with http:// or https://")]
    InvalidServerUrl,
    /// The store directory could not be read or written.
    #[error("cannot read or write the license store at {}", path.display())]
    Store {
        /// The file or directory involved.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Background work needs a Tokio runtime and there is none on this thread.
    #[error("no Tokio runtime is running on this thread")]
    NoRuntime,
    /// An app release date that is not an RFC 3339 timestamp.
    #[error("the app's release date must be an RFC 3339 timestamp, e.g. 2026-03-01T00:00:00Z")]
    InvalidReleaseDate,
    /// What was given as a license key cannot be one (32 characters of
    /// Crockford base32, with or without dashes).
    #[error("this is not a license key")]
    InvalidLicenseKey,
    /// An air-gapped machine cannot fetch the vendor's key: the app must
    /// carry it ([`crate::ClientConfig::public_key`]).
    #[error("no vendor public key is configured, and an air-gapped machine cannot fetch one")]
    NoPublicKey,
    /// The offline activation response is for another machine.
    #[error("this offline activation response is for another machine")]
    FingerprintMismatch,
    /// An offline activation response arrived with no request made on this
    /// machine for it.
    #[error("no offline activation request was made on this machine")]
    NoOfflineRequest,
    /// An air-gapped activation has no server to heartbeat, listen to or
    /// deactivate with: its owner removes it from their dashboard.
    #[error("this activation is air-gapped: it has no server to talk to")]
    AirGapped,
}

impl Error {
    /// A stable machine-readable code: the server's code for refusals,
    /// otherwise one of `NETWORK`, `INVALID_RESPONSE`, `NOT_ACTIVATED`,
    /// `INVALID_CERTIFICATE`, `INVALID_PUBLIC_KEY`, `INVALID_SERVER_URL`,
    /// `STORE`, `NO_RUNTIME`, `INVALID_RELEASE_DATE`, `INVALID_LICENSE_KEY`,
    /// `NO_PUBLIC_KEY`, `FINGERPRINT_MISMATCH`, `NO_OFFLINE_REQUEST`,
    /// `AIR_GAPPED`.
    pub fn code(&self) -> &str {
        match self {
            Self::Server { code, .. } => code,
            Self::Network(_) => "NETWORK",
            Self::InvalidResponse(_) => "INVALID_RESPONSE",
            Self::NotActivated => "NOT_ACTIVATED",
            Self::InvalidCertificate => "INVALID_CERTIFICATE",
            Self::InvalidPublicKey => "INVALID_PUBLIC_KEY",
            Self::InvalidServerUrl => "INVALID_SERVER_URL",
            Self::Store { .. } => "STORE",
            Self::NoRuntime => "NO_RUNTIME",
            Self::InvalidReleaseDate => "INVALID_RELEASE_DATE",
            Self::InvalidLicenseKey => "INVALID_LICENSE_KEY",
            Self::NoPublicKey => "NO_PUBLIC_KEY",
            Self::FingerprintMismatch => "FINGERPRINT_MISMATCH",
            Self::NoOfflineRequest => "NO_OFFLINE_REQUEST",
            Self::AirGapped => "AIR_GAPPED",
        }
    }

    /// The server gave no verdict (unreachable, overloaded, rate limiting):
    /// validation falls back to the stored certificate.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Network(_) => true,
            Self::Server { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// The server says this activation is over (unknown token, deactivated,
    /// dead): retrying will not help, activating again will.
    pub fn is_activation_lost(&self) -> bool {
        matches!(self, Self::Server { status: 401 | 410, .. } | Self::NotActivated)
    }

    pub(crate) fn store(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Store { path, source }
    }
}

impl From<reqwest::Error> for Error {
    fn from(e: reqwest::Error) -> Self {
        // The URL may hold the license key (the event stream's path).
        Self::Network(e.without_url())
    }
}
