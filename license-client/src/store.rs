//! The activation state on disk: one JSON file in a caller-chosen directory,
//! replaced atomically (temp file, fsync, rename, fsync of the directory) so
//! a crash leaves either the old or the new state, never a torn one.

use crate::types::{Device, LicenseInfo};
use crate::Error;
use serde::{Deserialize, Serialize};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The state file's name inside the store directory.
pub const STATE_FILE: &str = "license-state.json";

/// A secret kept in the state file: `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Everything the client remembers between runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct StoredState {
    /// The vendor key fetched on first activation when the app configured
    /// none (base64url), kept across deactivations.
    #[serde(default)]
    pub pinned_key: Option<String>,
    /// The latest wall-clock time (Unix seconds) this client has seen, from
    /// its own clock or a certificate's `iat`: the clock-rollback guard.
    #[serde(default)]
    pub last_seen: i64,
    /// The current activation, if any.
    #[serde(default)]
    pub activation: Option<ActivationState>,
    /// The last air-gapped activation request made here, until its response
    /// is imported: the key it is for and how the device described itself.
    #[serde(default)]
    pub offline_request: Option<OfflineRequestState>,
}

/// An air-gapped activation request awaiting its response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct OfflineRequestState {
    pub license_key: Secret,
    pub name: Option<String>,
    pub platform: Option<String>,
    pub app_version: Option<String>,
}

/// One activation of a license on this machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ActivationState {
    pub license_key: Secret,
    pub activation_token: Secret,
    pub fingerprint: String,
    pub device: Device,
    pub license: LicenseInfo,
    /// The latest certificate (compact JWS).
    pub certificate: String,
    pub heartbeat_window_secs: u64,
    /// The server's last refusal (e.g. `REVOKED`, `HEARTBEAT_DEAD`): offline
    /// validation repeats it instead of trusting an older certificate.
    #[serde(default)]
    pub refusal: Option<String>,
    /// The last event received, to resume the stream with `Last-Event-ID`.
    #[serde(default)]
    pub last_event_id: Option<String>,
    /// When the server last answered (Unix seconds, our clock).
    #[serde(default)]
    pub last_online_at: Option<i64>,
    /// Activated from the dashboard for this machine with no network: no
    /// activation token (`activation_token` is empty), validated offline
    /// only.
    #[serde(default)]
    pub air_gapped: bool,
}

/// Loads the state, or the empty state when there is none. A file that is
/// not valid JSON (edited by hand; our writes are atomic) is moved aside to
/// `license-state.json.corrupt` and the client starts unactivated.
pub(crate) fn load(dir: &Path) -> Result<StoredState, Error> {
    let path = dir.join(STATE_FILE);
    match fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(state) => Ok(state),
            Err(_) => {
                tracing::warn!(path = %path.display(), "license state is unreadable; moving it aside and starting over");
                fs::rename(&path, dir.join(format!("{STATE_FILE}.corrupt"))).map_err(Error::store(&path))?;
                Ok(StoredState::default())
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StoredState::default()),
        Err(e) => Err(Error::store(&path)(e)),
    }
}

/// Writes the state atomically.
pub(crate) fn save(dir: &Path, state: &StoredState) -> Result<(), Error> {
    let bytes = serde_json::to_vec_pretty(state).expect("the state serializes");
    write_atomically(dir, STATE_FILE, &bytes).map_err(Error::store(dir.join(STATE_FILE)))
}

/// Creates the store directory (owner-only on Unix: it holds secrets).
pub(crate) fn create_dir(dir: &Path) -> Result<(), Error> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(Error::store(dir))
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn temp_path(dir: &Path, name: &str) -> PathBuf {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

fn write_temp(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let tmp = temp_path(dir, name);
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&tmp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    match written {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Replaces `dir/name` with `bytes`: readers see the old or the new content.
pub(crate) fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = write_temp(dir, name, bytes)?;
    if let Err(e) = fs::rename(&tmp, dir.join(name)) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

/// Creates `dir/name` with `bytes` unless it exists; either way returns what
/// the file holds afterwards (so two processes racing agree on one value).
pub(crate) fn create_once(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let target = dir.join(name);
    let tmp = write_temp(dir, name, bytes)?;
    let linked = fs::hard_link(&tmp, &target);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => sync_dir(dir)?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        // File systems without hard links: fall back to a plain exclusive create.
        Err(_) => {
            let mut options = OpenOptions::new();
            options.write(true).create_new(true);
            if let Ok(mut file) = options.open(&target) {
                file.write_all(bytes)?;
                file.sync_all()?;
            }
        }
    }
    fs::read(&target)
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    // Windows has no directory handles to flush; its rename is already durable
    // once the file's data was flushed.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("license-client-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        create_dir(&dir).unwrap();
        dir
    }

    #[test]
    fn state_round_trips_and_leaves_no_temp_files() {
        let dir = temp_dir("roundtrip");
        assert!(load(&dir).unwrap().activation.is_none(), "no file is the empty state");
        let state =
            StoredState { pinned_key: Some("k".into()), last_seen: 42, activation: None, offline_request: None };
        save(&dir, &state).unwrap();
        save(&dir, &StoredState { last_seen: 43, ..state }).unwrap();
        assert_eq!(load(&dir).unwrap().last_seen, 43);
        let names: Vec<String> =
            fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, [STATE_FILE]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unreadable_state_is_moved_aside() {
        let dir = temp_dir("corrupt");
        fs::write(dir.join(STATE_FILE), b"{torn").unwrap();
        assert_eq!(load(&dir).unwrap().last_seen, 0);
        assert!(dir.join(format!("{STATE_FILE}.corrupt")).exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn create_once_keeps_the_first_value() {
        let dir = temp_dir("once");
        assert_eq!(create_once(&dir, "id", b"first").unwrap(), b"first");
        assert_eq!(create_once(&dir, "id", b"second").unwrap(), b"first");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let secret = Secret::new("act_secret");
        assert_eq!(format!("{secret:?}"), "<redacted>");
        assert_eq!(serde_json::to_string(&secret).unwrap(), "\"act_secret\"");
    }
}
