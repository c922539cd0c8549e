//! Air-gapped activation requests: what a machine with no network hands its
//! owner to paste into the dashboard. The request names the license by the
//! SHA-256 of its key ([`super::LicenseKey::lookup_hash`]), never the key: a
//! 160-bit random key cannot be recovered from its hash, and the hash alone
//! activates nothing (the dashboard call also needs the owner's session).
//!
//! Wire form: `oar1.` followed by unpadded base64url of a JSON object
//! `{"license_key_sha256", "fingerprint", "name"?, "platform"?, "app_version"?}`
//! (`license_key_sha256` itself unpadded base64url). license-client writes
//! it; the answer is an offline certificate, which needs no wrapper.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// The version prefix of a request.
pub const REQUEST_PREFIX: &str = "oar1.";

/// The longest request accepted, in bytes: four device fields of at most 256
/// characters (up to 4 bytes each in UTF-8), JSON-escaped at worst 6 bytes a
/// character, then base64 (4/3), with room for the hash and the names.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// An air-gapped machine's activation request, as decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfflineActivationRequest {
    /// SHA-256 of the canonical license key.
    #[serde(with = "base64url")]
    pub license_key_sha256: Vec<u8>,
    /// The machine fingerprint, as online activation sends it.
    pub fingerprint: String,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// App version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_version: Option<String>,
}

/// Why a pasted request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestRefusal {
    /// Longer than [`MAX_REQUEST_BYTES`].
    TooLong,
    /// Not an `oar1.` request (another version, or not one at all).
    UnknownFormat,
    /// The prefix is right but what follows does not decode.
    Malformed,
}

impl RequestRefusal {
    /// The refusal in words, for the person who pasted it.
    pub fn message(self) -> &'static str {
        match self {
            Self::TooLong => "request is too long to be an offline activation request",
            Self::UnknownFormat => "request is not an offline activation request (it starts with \"oar1.\")",
            Self::Malformed => "request is damaged: copy it again, whole",
        }
    }
}

impl OfflineActivationRequest {
    /// Decodes a pasted request; whitespace around and inside it (a mail
    /// client's line breaks) is ignored.
    pub fn parse(text: &str) -> Result<Self, RequestRefusal> {
        if text.len() > MAX_REQUEST_BYTES {
            return Err(RequestRefusal::TooLong);
        }
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let body = compact.strip_prefix(REQUEST_PREFIX).ok_or(RequestRefusal::UnknownFormat)?;
        let json = B64.decode(body).map_err(|_| RequestRefusal::Malformed)?;
        let request: Self = serde_json::from_slice(&json).map_err(|_| RequestRefusal::Malformed)?;
        match request.license_key_sha256.len() {
            32 => Ok(request),
            _ => Err(RequestRefusal::Malformed),
        }
    }

    /// The wire form.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("a request serialises");
        format!("{REQUEST_PREFIX}{}", B64.encode(json))
    }
}

mod base64url {
    use super::{Engine, B64};
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&B64.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        B64.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::LicenseKey;

    fn request() -> OfflineActivationRequest {
        OfflineActivationRequest {
            license_key_sha256: LicenseKey::generate().lookup_hash(),
            fingerprint: "fp-1".into(),
            name: Some("Lab PC «3»".into()),
            platform: Some("windows".into()),
            app_version: None,
        }
    }

    #[test]
    fn a_request_survives_its_wire_form_and_a_mail_clients_line_breaks() {
        let request = request();
        let wire = request.encode();
        assert!(wire.starts_with("oar1.") && !wire.contains(['=', '+', '/']));
        assert_eq!(OfflineActivationRequest::parse(&wire), Ok(request.clone()));
        let wrapped: String =
            wire.as_bytes().chunks(20).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join("\r\n");
        assert_eq!(OfflineActivationRequest::parse(&format!("  {wrapped}\n")), Ok(request));
    }

    #[test]
    fn what_is_not_a_request_is_refused_by_what_is_wrong_with_it() {
        use RequestRefusal::*;
        let parse = OfflineActivationRequest::parse;
        assert_eq!(parse("oar2.e30"), Err(UnknownFormat));
        assert_eq!(parse("7KQ2-M9XD-AAAA-BBBB"), Err(UnknownFormat));
        assert_eq!(parse("oar1.!!!"), Err(Malformed));
        assert_eq!(parse(&format!("oar1.{}", B64.encode("[1,2]"))), Err(Malformed));
        let short_hash = r#"{"license_key_sha256":"AAAA","fingerprint":"fp"}"#;
        assert_eq!(parse(&format!("oar1.{}", B64.encode(short_hash))), Err(Malformed));
        assert_eq!(parse(&"a".repeat(MAX_REQUEST_BYTES + 1)), Err(TooLong));
    }
}
