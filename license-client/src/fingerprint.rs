//! Machine fingerprints. The operating system's machine id survives restarts
//! and reinstalls of the app; it is hashed (SHA-256) with an app-specific
//! salt, so the raw id never leaves the machine and two vendors' apps on one
//! machine send unrelated fingerprints.
//!
//! Sources: `/etc/machine-id` or `/var/lib/dbus/machine-id` on Linux,
//! `HKLM\SOFTWARE\Microsoft\Cryptography\MachineGuid` on Windows,
//! `IOPlatformUUID` (from `ioreg`) on macOS.
//!
//! Fallback, when none can be read (containers with an empty machine-id,
//! locked-down systems, other OSes): a random 128-bit id created once and
//! kept in `machine-id` in the store directory. It is stable across restarts
//! and app updates, but not across a wipe of the store directory: after one,
//! the machine activates as a new device (the old one's slot frees itself
//! when its heartbeats stop).

use crate::store;
use crate::Error;
use std::path::Path;

/// The fallback id's file name inside the store directory.
pub const FALLBACK_FILE: &str = "machine-id";

/// Where a fingerprint's machine id came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FingerprintSource {
    /// The operating system's machine id.
    Os,
    /// The random id persisted in the store directory.
    Fallback,
}

/// A salted SHA-256 of a machine id, as lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    hex: String,
    source: FingerprintSource,
}

impl Fingerprint {
    /// Hashes `machine_id` with `app_salt`.
    pub fn from_machine_id(app_salt: &str, machine_id: &str, source: FingerprintSource) -> Self {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"license-client fingerprint v1\0");
        ctx.update(app_salt.as_bytes());
        ctx.update(b"\0");
        ctx.update(machine_id.trim().to_ascii_lowercase().as_bytes());
        Self { hex: hex(ctx.finish().as_ref()), source }
    }

    /// The hex digest sent to the server.
    pub fn as_str(&self) -> &str {
        &self.hex
    }

    /// Where the machine id came from.
    pub fn source(&self) -> FingerprintSource {
        self.source
    }
}

/// This machine's fingerprint for the app salted `app_salt`, falling back to
/// an id persisted in `store_dir` (see the module docs).
pub fn machine_fingerprint(app_salt: &str, store_dir: &Path) -> Result<Fingerprint, Error> {
    if let Some(id) = os_machine_id() {
        return Ok(Fingerprint::from_machine_id(app_salt, &id, FingerprintSource::Os));
    }
    let id = fallback_machine_id(store_dir)?;
    Ok(Fingerprint::from_machine_id(app_salt, &id, FingerprintSource::Fallback))
}

/// The random id in `store_dir`, created on first use.
pub fn fallback_machine_id(store_dir: &Path) -> Result<String, Error> {
    let path = store_dir.join(FALLBACK_FILE);
    if let Some(id) = std::fs::read_to_string(&path).ok().as_deref().and_then(parse_hex_id) {
        return Ok(id);
    }
    store::create_dir(store_dir)?;
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the operating system RNG is available");
    let fresh = format!("{}\n", hex(&bytes));
    let stored = store::create_once(store_dir, FALLBACK_FILE, fresh.as_bytes()).map_err(Error::store(&path))?;
    match std::str::from_utf8(&stored).ok().and_then(parse_hex_id) {
        Some(id) => Ok(id),
        // Garbage in the file: replace it.
        None => {
            store::write_atomically(store_dir, FALLBACK_FILE, fresh.as_bytes()).map_err(Error::store(&path))?;
            Ok(fresh.trim().to_owned())
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A machine-id file's content: 32 hex digits. systemd's `uninitialized`
/// and empty files (common in containers) are not ids.
fn parse_hex_id(text: &str) -> Option<String> {
    let id = text.trim();
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id.bytes().any(|b| b != b'0'))
        .then(|| id.to_ascii_lowercase())
}

#[cfg(target_os = "linux")]
fn os_machine_id() -> Option<String> {
    ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok().as_deref().and_then(parse_hex_id))
}

#[cfg(target_os = "windows")]
fn os_machine_id() -> Option<String> {
    // reg.exe avoids a registry crate; /reg:64 reads the 64-bit view even from
    // a 32-bit process (MachineGuid lives only there).
    let output = std::process::Command::new("reg")
        .args(["query", r"HKLM\SOFTWARE\Microsoft\Cryptography", "/v", "MachineGuid", "/reg:64"])
        .output()
        .ok()?;
    parse_reg_query(&String::from_utf8_lossy(&output.stdout))
}

#[cfg(target_os = "macos")]
fn os_machine_id() -> Option<String> {
    let output =
        std::process::Command::new("/usr/sbin/ioreg").args(["-rd1", "-c", "IOPlatformExpertDevice"]).output().ok()?;
    parse_ioreg(&String::from_utf8_lossy(&output.stdout))
}

#[cfg(not(any(target_os = "linux", target_os = "windows", target_os = "macos")))]
fn os_machine_id() -> Option<String> {
    None
}

/// `MachineGuid    REG_SZ    1c2a…` from `reg query`.
#[cfg(any(target_os = "windows", test))]
fn parse_reg_query(output: &str) -> Option<String> {
    output.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        (fields.next()? == "MachineGuid" && fields.next()? == "REG_SZ")
            .then(|| fields.next())
            .flatten()
            .filter(|v| v.len() >= 32)
            .map(str::to_owned)
    })
}

/// `"IOPlatformUUID" = "5A1B…"` from `ioreg`.
#[cfg(any(target_os = "macos", test))]
fn parse_ioreg(output: &str) -> Option<String> {
    output.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "\"IOPlatformUUID\"")
            .then(|| value.trim().trim_matches('"').to_owned())
            .filter(|v| v.len() >= 32)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_salted_hashes_of_the_normalised_id() {
        let a = Fingerprint::from_machine_id("app-a", "3D1219C7C4C5404AAA1F6D2A48ADFDA4\n", FingerprintSource::Os);
        let same = Fingerprint::from_machine_id("app-a", "3d1219c7c4c5404aaa1f6d2a48adfda4", FingerprintSource::Os);
        let other_app =
            Fingerprint::from_machine_id("app-b", "3d1219c7c4c5404aaa1f6d2a48adfda4", FingerprintSource::Os);
        assert_eq!(a, same);
        assert_ne!(a.as_str(), other_app.as_str());
        assert_eq!(a.as_str().len(), 64);
        assert!(!a.as_str().contains("3d1219c7"), "the raw id does not show");
    }

    #[test]
    fn machine_ids_parse_from_each_platform_format() {
        assert_eq!(
            parse_hex_id("3d1219c7c4c5404aaa1f6d2a48adfda4\n").as_deref(),
            Some("3d1219c7c4c5404aaa1f6d2a48adfda4")
        );
        for bad in ["", "uninitialized\n", "00000000000000000000000000000000", "xyz"] {
            assert_eq!(parse_hex_id(bad), None, "{bad:?}");
        }
        let reg = "\r\nHKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Cryptography\r\n    MachineGuid    REG_SZ    \
                   1c2a3b4d-5e6f-7081-92a3-b4c5d6e7f809\r\n\r\n";
        assert_eq!(parse_reg_query(reg).as_deref(), Some("1c2a3b4d-5e6f-7081-92a3-b4c5d6e7f809"));
        assert_eq!(parse_reg_query("ERROR: The system was unable to find the specified registry key"), None);
        let ioreg =
            "+-o J314sAP  <class IOPlatformExpertDevice>\n    {\n      \"IOPlatformSerialNumber\" = \"C02X\"\n      \
                     \"IOPlatformUUID\" = \"5A1B2C3D-4E5F-6071-8293-A4B5C6D7E8F9\"\n    }\n";
        assert_eq!(parse_ioreg(ioreg).as_deref(), Some("5A1B2C3D-4E5F-6071-8293-A4B5C6D7E8F9"));
        assert_eq!(parse_ioreg("nothing here"), None);
    }

    #[test]
    fn the_fallback_id_is_created_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("license-client-fallback-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = fallback_machine_id(&dir).unwrap();
        assert_eq!(first.len(), 32);
        assert_eq!(fallback_machine_id(&dir).unwrap(), first, "stable across restarts");
        std::fs::write(dir.join(FALLBACK_FILE), "garbage").unwrap();
        let replaced = fallback_machine_id(&dir).unwrap();
        assert_ne!(replaced, first);
        assert_eq!(fallback_machine_id(&dir).unwrap(), replaced);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
