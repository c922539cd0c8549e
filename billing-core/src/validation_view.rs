//! An exact in-memory view of what validation reads: licenses by key hash,
//! and the devices of each by fingerprint, filled on a miss from the store
//! and bounded in size.
//!
//! Exactness rests on three rules:
//! - Every change a verdict depends on commits an outbox row naming its
//!   license, and the [`crate::events::EventHub`] that reads the outbox (on
//!   every instance, woken by each commit) drops that license from the
//!   view; this instance's own units of work drop theirs as they commit,
//!   so a caller reads its own writes.
//! - A fill races with a change only if an invalidation happens between the
//!   read and the fill; every invalidation moves an epoch, and a fill made
//!   from a read older than the current epoch is discarded.
//! - Heartbeats commit no outbox row. The view keeps the last-seen time this
//!   instance knows, which only ever lags the truth, so a device it sees
//!   alive is alive; one it sees overdue is looked up in the store again
//!   before `HEARTBEAT_DEAD` is answered.
//!
//! The view caches only while a hub feeds it ([`ValidationView::set_live`]):
//! without one (no hub, or its commit notifications lost), every
//! validation reads the store, as it would without a view.

use crate::domain::{Device, License, Timestamp};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};
use uuid::Uuid;

/// Licenses kept by default.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// The view; one per engine, shared by its clones.
pub struct ValidationView {
    state: RwLock<ViewState>,
    /// Moves on every invalidation: a fill from an older read is stale.
    epoch: AtomicU64,
    live: AtomicBool,
    capacity: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Default)]
struct ViewState {
    by_key: HashMap<Vec<u8>, Entry>,
    key_of: HashMap<Uuid, Vec<u8>>,
    /// Fill order, for eviction; may name keys since dropped.
    order: VecDeque<Vec<u8>>,
}

struct Entry {
    license: License,
    /// Fingerprints asked about: their device, or none on this license.
    devices: HashMap<String, Option<Device>>,
}

/// What the view holds for a validation: the license, and the
/// fingerprint's device (none when the license has none with it, or when no
/// fingerprint was asked about).
pub(crate) type Held = (License, Option<Device>);

/// Counters of a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewStats {
    /// Licenses held.
    pub licenses: usize,
    /// Device answers held (fingerprints asked about, with or without a device).
    pub devices: usize,
    /// Validations answered from memory.
    pub hits: u64,
    /// Validations that read the store.
    pub misses: u64,
}

impl ValidationView {
    /// An empty view holding at most `capacity` licenses (0: none, every
    /// validation reads the store), not live yet.
    pub fn new(capacity: usize) -> Self {
        Self {
            state: RwLock::default(),
            epoch: AtomicU64::new(0),
            live: AtomicBool::new(false),
            capacity,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Turns caching on (a hub now reads every commit) or off (it stopped,
    /// or lost its notifications: what is held may go stale, so it is
    /// dropped).
    /// A view of capacity 0 never turns on.
    pub fn set_live(&self, live: bool) {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        // Either way, a read made before now must not be kept: before the
        // hub watched, a commit it will never dispatch may have followed it.
        self.epoch.fetch_add(1, Ordering::AcqRel);
        *state = ViewState::default();
        self.live.store(live && self.capacity > 0, Ordering::Release);
    }

    /// Whether the view answers from memory.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// The current epoch: take it before reading the store for a
    /// [`Self::fill`].
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// What is held for a validation of `key_hash` (and `fingerprint`);
    /// `None`: read the store, then [`Self::fill`].
    pub(crate) fn lookup(&self, key_hash: &[u8], fingerprint: Option<&str>) -> Option<Held> {
        if self.is_live() {
            let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(entry) = state.by_key.get(key_hash) {
                let device = match fingerprint {
                    None => Some(None),
                    Some(fingerprint) => entry.devices.get(fingerprint).cloned(),
                };
                if let Some(device) = device {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return Some((entry.license.clone(), device));
                }
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Keeps what the store answered to a read begun at `epoch`
    /// ([`Self::epoch`]), unless something was invalidated since.
    pub(crate) fn fill(
        &self,
        key_hash: &[u8],
        epoch: u64,
        license: &License,
        fingerprint: Option<&str>,
        device: Option<&Device>,
    ) {
        if !self.is_live() {
            return;
        }
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        // Checked under the lock that invalidations take.
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        if !state.by_key.contains_key(key_hash) {
            state.make_room(self.capacity);
            state.order.push_back(key_hash.to_vec());
            state.key_of.insert(license.id, key_hash.to_vec());
        }
        let entry = state
            .by_key
            .entry(key_hash.to_vec())
            .or_insert_with(|| Entry { license: license.clone(), devices: HashMap::new() });
        if let Some(fingerprint) = fingerprint {
            entry.devices.insert(fingerprint.to_owned(), device.cloned());
        }
    }

    /// Drops what is held of `license_id`: a change to it committed.
    pub fn invalidate(&self, license_id: Uuid) {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Some(key) = state.key_of.remove(&license_id) {
            state.by_key.remove(&key);
        }
    }

    /// This instance recorded a heartbeat of `device_id` on `license_id`.
    pub(crate) fn record_heartbeat(&self, license_id: Uuid, device_id: Uuid, at: Timestamp) {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let Some(key) = state.key_of.get(&license_id).cloned() else { return };
        let Some(entry) = state.by_key.get_mut(&key) else { return };
        for device in entry.devices.values_mut().flatten().filter(|d| d.id == device_id) {
            device.last_heartbeat_at = device.last_heartbeat_at.max(at);
        }
    }

    /// What the view holds and how it answered.
    pub fn stats(&self) -> ViewStats {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        ViewStats {
            licenses: state.by_key.len(),
            devices: state.by_key.values().map(|e| e.devices.len()).sum(),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }
}

impl ViewState {
    /// Evicts the oldest fills until one more fits.
    fn make_room(&mut self, capacity: usize) {
        while self.by_key.len() >= capacity {
            let Some(key) = self.order.pop_front() else { return };
            if let Some(entry) = self.by_key.remove(&key) {
                self.key_of.remove(&entry.license.id);
            }
        }
        // Keys dropped by invalidation linger in `order`; keep it bounded.
        if self.order.len() > capacity * 2 {
            let by_key = &self.by_key;
            self.order.retain(|key| by_key.contains_key(key));
        }
    }
}

impl std::fmt::Debug for ValidationView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidationView").field("live", &self.is_live()).field("stats", &self.stats()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::DeviceStatus;
    use crate::storage::license_work::fixtures::{device, license, NOW};

    fn live(capacity: usize) -> ValidationView {
        let view = ValidationView::new(capacity);
        view.set_live(true);
        view
    }

    /// A miss, and the epoch to fill it with.
    fn epoch_of(view: &ValidationView, key: &[u8], fingerprint: Option<&str>) -> u64 {
        let epoch = view.epoch();
        assert_eq!(view.lookup(key, fingerprint), None, "expected a miss");
        epoch
    }

    #[test]
    fn a_fill_is_answered_from_memory_until_its_license_changes() {
        let view = live(10);
        let l = license(2);
        let d = device(&l, "fp-1", 1, DeviceStatus::Active);
        let epoch = epoch_of(&view, b"k1", Some("fp-1"));
        view.fill(b"k1", epoch, &l, Some("fp-1"), Some(&d));
        assert_eq!(view.lookup(b"k1", Some("fp-1")), Some((l.clone(), Some(d.clone()))));
        assert_eq!(view.lookup(b"k1", None), Some((l.clone(), None)));
        assert_eq!(view.lookup(b"k1", Some("fp-2")), None, "a fingerprint not asked about yet");
        let epoch = epoch_of(&view, b"k1", Some("fp-2"));
        view.fill(b"k1", epoch, &l, Some("fp-2"), None);
        assert_eq!(view.lookup(b"k1", Some("fp-2")), Some((l.clone(), None)), "none, held");

        view.invalidate(l.id);
        assert_eq!(view.lookup(b"k1", None), None);
        assert_eq!(view.stats().licenses, 0);
    }

    #[test]
    fn a_fill_from_a_read_older_than_an_invalidation_is_discarded() {
        let view = live(10);
        let l = license(2);
        let epoch = epoch_of(&view, b"k1", None);
        // A change commits (to any license) between the read and the fill.
        view.invalidate(Uuid::new_v4());
        view.fill(b"k1", epoch, &l, None, None);
        assert_eq!(view.lookup(b"k1", None), None);
    }

    #[test]
    fn a_view_that_no_hub_feeds_holds_nothing() {
        let view = ValidationView::new(10);
        let l = license(1);
        let epoch = epoch_of(&view, b"k1", None);
        view.fill(b"k1", epoch, &l, None, None);
        assert_eq!(view.lookup(b"k1", None), None);
        view.set_live(true);
        let epoch = epoch_of(&view, b"k1", None);
        view.fill(b"k1", epoch, &l, None, None);
        assert!(view.lookup(b"k1", None).is_some());
        view.set_live(false);
        assert_eq!(view.stats().licenses, 0, "dropped when the hub stops");
    }

    #[test]
    fn the_view_holds_at_most_its_capacity_evicting_the_oldest() {
        let view = live(3);
        let none = ValidationView::new(0);
        none.set_live(true);
        assert!(!none.is_live(), "capacity 0 never caches");
        let licenses: Vec<License> = (0..5).map(|_| license(1)).collect();
        for (i, l) in licenses.iter().enumerate() {
            let key = [i as u8];
            let epoch = epoch_of(&view, &key, None);
            view.fill(&key, epoch, l, None, None);
        }
        assert_eq!(view.stats().licenses, 3);
        assert_eq!(view.lookup(&[0], None), None, "the oldest went first");
        assert!(view.lookup(&[4], None).is_some());
        view.invalidate(licenses[4].id);
        assert_eq!(view.stats().licenses, 2);
    }

    #[test]
    fn a_heartbeat_here_moves_the_held_last_seen_forward_only() {
        let view = live(10);
        let l = license(1);
        let d = device(&l, "fp-1", 30, DeviceStatus::Active);
        let epoch = epoch_of(&view, b"k", Some("fp-1"));
        view.fill(b"k", epoch, &l, Some("fp-1"), Some(&d));
        view.record_heartbeat(l.id, d.id, NOW);
        view.record_heartbeat(l.id, d.id, NOW - time::Duration::hours(1));
        let Some((_, Some(held))) = view.lookup(b"k", Some("fp-1")) else { panic!("held") };
        assert_eq!(held.last_heartbeat_at, NOW);
    }
}
