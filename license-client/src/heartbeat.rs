//! The background heartbeat loop.

use crate::client::{Inner, LicenseClient};
use std::sync::Weak;
use std::time::Duration;
use tokio::sync::watch;

/// The regular wait between heartbeats: a third of the server's window (two
/// beats may be lost before the device dies), jittered by ±10 % so a fleet of
/// devices does not beat in step. After `failures` consecutive failures the
/// wait backs off exponentially from 1 s, never beyond the regular wait.
/// `jitter` is uniform in `[0, 1)`.
pub fn next_delay(window_secs: u64, failures: u32, jitter: f64) -> Duration {
    let interval = (window_secs as f64 / 3.0).max(1.0);
    let base = match failures {
        0 => interval,
        n => 2f64.powi(n.min(16) as i32 - 1).min(interval),
    };
    Duration::from_secs_f64(base * (0.9 + 0.2 * jitter))
}

fn random_unit() -> f64 {
    let mut bytes = [0u8; 4];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the operating system RNG is available");
    f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0)
}

/// Beats until `stop` flips (or its sender is dropped), the client is
/// dropped, or the server says the activation is over.
pub(crate) async fn run(client: Weak<Inner>, mut stop: watch::Receiver<bool>) {
    let mut failures = 0u32;
    loop {
        let Some(window) = LicenseClient::upgrade(&client).and_then(|c| c.heartbeat_window_secs()) else { return };
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            _ = tokio::time::sleep(next_delay(window, failures, random_unit())) => {}
        }
        let Some(client) = LicenseClient::upgrade(&client) else { return };
        let result = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            result = client.heartbeat() => result,
        };
        match result {
            Ok(_) => failures = 0,
            Err(e) if e.is_activation_lost() => {
                tracing::warn!(code = e.code(), "heartbeats stopped: the server ended this activation");
                return;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(code = e.code(), failures, "heartbeat failed; backing off");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_follow_the_window_with_jitter_and_back_off_on_failures() {
        let secs = |window, failures, jitter| next_delay(window, failures, jitter).as_secs_f64();
        assert_eq!(secs(600, 0, 0.5), 200.0);
        assert_eq!(secs(600, 0, 0.0), 180.0);
        assert!((secs(600, 0, 0.999_999) - 220.0).abs() < 0.01);
        assert_eq!(secs(600, 1, 0.5), 1.0);
        assert_eq!(secs(600, 2, 0.5), 2.0);
        assert_eq!(secs(600, 5, 0.5), 16.0);
        assert_eq!(secs(600, 40, 0.5), 200.0, "capped at the regular interval");
        assert_eq!(secs(1, 0, 0.5), 1.0, "never below a second");
        let u = random_unit();
        assert!((0.0..1.0).contains(&u));
    }
}
