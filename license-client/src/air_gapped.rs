//! Air-gapped activation: a machine that never reaches the server hands its
//! owner a request to paste into their dashboard, and imports the
//! certificate the dashboard answers.
//!
//! The request is `oar1.` followed by unpadded base64url of
//! `{"license_key_sha256", "fingerprint", "name"?, "platform"?, "app_version"?}`:
//! the license is named by the SHA-256 of its canonical key (what the server
//! looks keys up by), never by the key, so the request carries nothing that
//! activates anything. The answer is a certificate, signed like every other
//! and bound to this machine's fingerprint.

use crate::types::{ActivationOptions, Device, LicenseInfo};
use crate::{CertificateClaims, Error};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use serde::Serialize;

/// The version prefix of a request.
pub const REQUEST_PREFIX: &str = "oar1.";

/// Crockford's base32 alphabet, which license keys are written in.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const KEY_CHARS: usize = 32;
const GROUP: usize = 4;

/// A key as the server stores it (`XXXX-XXXX-…`, upper case, Crockford's
/// look-alikes folded), from what a user typed; `None` when it cannot be a key.
pub(crate) fn canonical_key(input: &str) -> Option<String> {
    let mut out = String::with_capacity(KEY_CHARS + KEY_CHARS / GROUP);
    let mut count = 0;
    for c in input.chars() {
        let c = match c.to_ascii_uppercase() {
            '-' | ' ' => continue,
            'O' => '0',
            'I' | 'L' => '1',
            c if c.is_ascii() && ALPHABET.contains(&(c as u8)) => c,
            _ => return None,
        };
        if count > 0 && count % GROUP == 0 {
            out.push('-');
        }
        out.push(c);
        count += 1;
        if count > KEY_CHARS {
            return None;
        }
    }
    (count == KEY_CHARS).then_some(out)
}

#[derive(Serialize)]
struct WireRequest<'a> {
    license_key_sha256: String,
    fingerprint: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    app_version: Option<&'a str>,
}

/// The request for the canonical `key` on the machine `fingerprint`.
pub(crate) fn request(key: &str, fingerprint: &str, device: &ActivationOptions) -> String {
    let hash = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let wire = WireRequest {
        license_key_sha256: B64.encode(hash.as_ref()),
        fingerprint,
        name: device.name.as_deref(),
        platform: device.platform.as_deref(),
        app_version: device.app_version.as_deref(),
    };
    format!("{REQUEST_PREFIX}{}", B64.encode(serde_json::to_vec(&wire).expect("a request serialises")))
}

/// Unix seconds as RFC 3339 (`""` when out of range, which a certificate's
/// times never are).
fn rfc3339(unix: i64) -> String {
    crate::client::rfc3339(unix).unwrap_or_default()
}

/// The license as an imported certificate describes it.
pub(crate) fn license_of(claims: &CertificateClaims) -> LicenseInfo {
    LicenseInfo {
        id: claims.license_id.clone(),
        status: claims.status.clone(),
        plan: claims.plan.clone(),
        max_devices: claims.max_devices,
        expires_at: claims.expires_at.map(rfc3339),
        grace_ends_at: None,
        entitlements: claims.entitlements.clone(),
        kind: claims.kind.clone(),
        updates_until: claims.updates_until.map(rfc3339),
        trial: claims.trial,
    }
}

/// This machine's device as the dashboard activated it.
pub(crate) fn device_of(claims: &CertificateClaims, described: &ActivationOptions) -> Device {
    Device {
        id: claims.device_id.clone(),
        license_id: claims.license_id.clone(),
        fingerprint: claims.fingerprint.clone(),
        name: described.name.clone(),
        platform: described.platform.clone(),
        app_version: described.app_version.clone(),
        status: "active".to_owned(),
        alive: true,
        activated_at: rfc3339(claims.iat),
        last_seen_at: rfc3339(claims.iat),
        deactivated_at: None,
        air_gapped: true,
    }
}

/// The canonical form of a typed key, or [`Error::InvalidLicenseKey`].
pub(crate) fn check_key(input: &str) -> Result<String, Error> {
    canonical_key(input).ok_or(Error::InvalidLicenseKey)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_read_as_the_server_reads_them() {
        let canonical = "7KQ2-M9XD-0000-1111-ABCD-EFGH-JKMN-PQRS";
        assert_eq!(canonical_key(canonical).as_deref(), Some(canonical));
        assert_eq!(canonical_key(" 7kq2m9xdooooiiiiabcdefghjkmnpqrs ").as_deref(), Some(canonical), "case, O, I");
        assert_eq!(canonical_key("7KQ2 M9XD 0000 LLLL ABCD EFGH JKMN PQRS").as_deref(), Some(canonical), "L is 1");
        for bad in ["", "7KQ2", &format!("{canonical}-0"), "UUUU-M9XD-0000-1111-ABCD-EFGH-JKMN-PQRS"] {
            assert_eq!(canonical_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_request_names_the_key_by_its_hash_only() {
        let key = "7KQ2-M9XD-0000-1111-ABCD-EFGH-JKMN-PQRS";
        let device = ActivationOptions { name: Some("Lab".into()), platform: None, app_version: Some("2.0".into()) };
        let wire = request(key, "fp-1", &device);
        let json: serde_json::Value =
            serde_json::from_slice(&B64.decode(wire.strip_prefix(REQUEST_PREFIX).unwrap()).unwrap()).unwrap();
        let hash = B64.encode(ring::digest::digest(&ring::digest::SHA256, key.as_bytes()).as_ref());
        assert_eq!(
            json,
            serde_json::json!({ "license_key_sha256": hash, "fingerprint": "fp-1", "name": "Lab", "app_version": "2.0" })
        );
        assert!(!wire.contains("7KQ2") && !String::from_utf8_lossy(&B64.decode(&wire[5..]).unwrap()).contains("7KQ2"));
    }
}
