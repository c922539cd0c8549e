//! Fan-out of committed outbox events to live subscribers (the SSE streams).
//!
//! One [`EventHub`] per process reads the outbox in id order whenever the
//! store signals a commit (PostgreSQL `LISTEN/NOTIFY`, so commits made by
//! other instances arrive too) and hands each event to the subscribers of
//! its license. The outbox is the source of truth: a subscriber resuming
//! from `Last-Event-ID` replays from it, then continues live with neither a
//! gap nor a duplicate. A subscriber too slow to drain its bounded buffer is
//! dropped (its stream ends) and resumes with `Last-Event-ID`; it never
//! slows the others. A stream that belongs to a device ends after the event
//! saying that device left its license: its token is refused from then on,
//! so nothing more is for it.

use crate::billing::error_chain;
use crate::domain::Topic;
use crate::storage::{OutboxEvent, Store, StoreError};
use crate::validation_view::ValidationView;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;
use uuid::Uuid;

const PAGE: i64 = 500;

/// Whether `event` says that `device_id` left its license, which makes it
/// the last event of that device's stream.
pub fn ends_device_stream(event: &OutboxEvent, device_id: Uuid) -> bool {
    matches!(Topic::parse(&event.topic), Some(Topic::DeviceDeactivated | Topic::DeviceDead))
        && event.payload.get("device_id").and_then(serde_json::Value::as_str).and_then(|id| Uuid::parse_str(id).ok())
            == Some(device_id)
}

/// Hub settings.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Events buffered per subscriber before it counts as too slow.
    pub buffer: usize,
    /// How long outbox rows are kept for replay.
    pub retention: time::Duration,
    /// How often the outbox is re-read even without a notification.
    pub poll_interval: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self { buffer: 64, retention: time::Duration::days(7), poll_interval: Duration::from_secs(5) }
    }
}

/// An event as the hub hands it to every subscriber of its license: one
/// allocation shared by all of them, and one wire encoding, made by the
/// first stream that writes it and reused by the rest.
#[derive(Debug)]
pub struct SharedEvent {
    event: OutboxEvent,
    encoded: OnceLock<Bytes>,
}

impl SharedEvent {
    /// Wraps an event read from the outbox.
    pub fn new(event: OutboxEvent) -> Self {
        Self { event, encoded: OnceLock::new() }
    }

    /// Its encoding by `encode`, computed once for every stream it reaches
    /// (every caller must pass the same encoding).
    pub fn encoded(&self, encode: impl FnOnce(&OutboxEvent) -> Bytes) -> Bytes {
        self.encoded.get_or_init(|| encode(&self.event)).clone()
    }
}

impl std::ops::Deref for SharedEvent {
    type Target = OutboxEvent;

    fn deref(&self) -> &OutboxEvent {
        &self.event
    }
}

type Sender = mpsc::Sender<Arc<SharedEvent>>;

#[derive(Default)]
struct Subscribers {
    next_id: u64,
    by_license: HashMap<Uuid, Vec<(u64, Sender)>>,
}

/// The per-process dispatcher.
pub struct EventHub<S: Store> {
    store: S,
    config: HubConfig,
    subscribers: Arc<Mutex<Subscribers>>,
    cursor: AtomicI64,
    open: Arc<AtomicUsize>,
    dropped_slow: AtomicUsize,
    /// Kept exact by this hub: every event read drops its license.
    view: Option<Arc<ValidationView>>,
}

impl<S: Store> EventHub<S> {
    /// A hub starting after the newest committed event.
    pub async fn start(store: S, config: HubConfig) -> Result<Arc<Self>, StoreError> {
        Self::start_with_view(store, config, None).await
    }

    /// [`Self::start`], keeping `view` (the engine's
    /// [`crate::Billing::validation_view`]) current: while it runs and
    /// hears every commit, the view answers validations from memory.
    pub async fn start_with_view(
        store: S,
        config: HubConfig,
        view: Option<Arc<ValidationView>>,
    ) -> Result<Arc<Self>, StoreError> {
        let cursor = store.latest_outbox_id().await?;
        Ok(Arc::new(Self {
            store,
            config,
            subscribers: Arc::default(),
            cursor: AtomicI64::new(cursor),
            open: Arc::default(),
            dropped_slow: AtomicUsize::new(0),
            view,
        }))
    }

    /// Whether the validation view may answer: only while every commit
    /// reaches this hub as it happens.
    fn view_live(&self, live: bool) {
        if let Some(view) = self.view.as_ref().filter(|view| view.is_live() != live) {
            view.set_live(live);
        }
    }

    /// Dispatches until `shutdown` resolves. Also prunes the outbox hourly.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut wakeups = match self.store.watch_outbox().await {
            Ok(rx) => Some(rx),
            Err(e) => {
                tracing::error!(error = %error_chain(&e), "cannot watch the outbox; falling back to polling");
                None
            }
        };
        let mut poll = tokio::time::interval(self.config.poll_interval);
        let mut prune = tokio::time::interval(Duration::from_secs(3600));
        self.view_live(wakeups.is_some());
        loop {
            tokio::select! {
                _ = &mut shutdown => {
                    self.view_live(false);
                    return;
                }
                woke = async { match &mut wakeups { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                    if woke.is_none() {
                        tracing::warn!("outbox notifications stopped; polling, and validating from the store");
                        wakeups = None;
                        self.view_live(false);
                    }
                }
                _ = poll.tick() => {}
                _ = prune.tick() => {
                    let before = time::OffsetDateTime::now_utc() - self.config.retention;
                    match self.store.prune_outbox(before).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(deleted = n, "pruned outbox"),
                        Err(e) => tracing::warn!(error = %error_chain(&e), "outbox pruning failed"),
                    }
                    continue;
                }
            }
            match self.dispatch_new().await {
                Ok(()) => self.view_live(wakeups.is_some()),
                Err(e) => {
                    // Commits it could not read may be missing from the view.
                    self.view_live(false);
                    tracing::warn!(error = %error_chain(&e), "outbox dispatch failed; retrying on next wake-up");
                }
            }
        }
    }

    /// Reads events committed since the last dispatch and delivers them.
    pub async fn dispatch_new(&self) -> Result<(), StoreError> {
        loop {
            let cursor = self.cursor.load(Ordering::Acquire);
            let events = self.store.outbox_after(cursor, None, PAGE).await?;
            let Some(last) = events.last().map(|e| e.id) else { return Ok(()) };
            if let Some(view) = &self.view {
                events.iter().filter_map(|e| e.license_id).for_each(|id| view.invalidate(id));
            }
            let mut subscribers = self.subscribers.lock().expect("subscriber lock is never poisoned");
            for event in events.iter() {
                let Some(license_id) = event.license_id else { continue };
                let Some(list) = subscribers.by_license.get_mut(&license_id) else { continue };
                let event = Arc::new(SharedEvent::new(event.clone()));
                list.retain(|(_, tx)| match tx.try_send(event.clone()) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        self.dropped_slow.fetch_add(1, Ordering::Relaxed);
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                });
                if list.is_empty() {
                    subscribers.by_license.remove(&license_id);
                }
            }
            drop(subscribers);
            self.cursor.store(last, Ordering::Release);
            if (events.len() as i64) < PAGE {
                return Ok(());
            }
        }
    }

    /// Subscribes to a license's events; with `last_event_id`, first replays
    /// everything after it.
    pub async fn subscribe(&self, license_id: Uuid, last_event_id: Option<i64>) -> Result<EventStream<S>, StoreError> {
        let (tx, rx) = mpsc::channel(self.config.buffer);
        let id = {
            let mut subscribers = self.subscribers.lock().expect("subscriber lock is never poisoned");
            subscribers.next_id += 1;
            let id = subscribers.next_id;
            subscribers.by_license.entry(license_id).or_default().push((id, tx));
            id
        };
        self.open.fetch_add(1, Ordering::Relaxed);
        let mut stream = EventStream {
            store: self.store.clone(),
            license_id,
            replay: VecDeque::new(),
            replay_cursor: last_event_id,
            delivered: last_event_id.unwrap_or(0),
            device: None,
            finished: false,
            live: rx,
            _registration: Registration {
                id,
                license_id,
                subscribers: self.subscribers.clone(),
                open: self.open.clone(),
            },
        };
        // Registered before reading, so nothing committed from here on can
        // be missed; duplicates are filtered by id.
        stream.fill_replay().await?;
        Ok(stream)
    }

    /// Open subscriptions.
    pub fn open_streams(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Subscribers dropped for being too slow, since start.
    pub fn dropped_slow(&self) -> usize {
        self.dropped_slow.load(Ordering::Relaxed)
    }

    /// The last outbox id dispatched.
    pub fn cursor(&self) -> i64 {
        self.cursor.load(Ordering::Acquire)
    }
}

struct Registration {
    id: u64,
    license_id: Uuid,
    subscribers: Arc<Mutex<Subscribers>>,
    open: Arc<AtomicUsize>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        let mut subscribers = self.subscribers.lock().expect("subscriber lock is never poisoned");
        if let Some(list) = subscribers.by_license.get_mut(&self.license_id) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                subscribers.by_license.remove(&self.license_id);
            }
        }
    }
}

/// One subscriber's ordered events: replay first, then live.
pub struct EventStream<S: Store> {
    store: S,
    license_id: Uuid,
    replay: VecDeque<OutboxEvent>,
    replay_cursor: Option<i64>,
    delivered: i64,
    /// The device whose stream this is, if it is one's.
    device: Option<Uuid>,
    /// Its device left: the event saying so was the last.
    finished: bool,
    live: mpsc::Receiver<Arc<SharedEvent>>,
    _registration: Registration,
}

impl<S: Store> EventStream<S> {
    async fn fill_replay(&mut self) -> Result<(), StoreError> {
        if let Some(cursor) = self.replay_cursor {
            let page = self.store.outbox_after(cursor, Some(self.license_id), PAGE).await?;
            self.replay_cursor = match page.last() {
                Some(last) if page.len() as i64 == PAGE => Some(last.id),
                _ => None,
            };
            self.replay.extend(page);
        }
        Ok(())
    }

    /// Ties the stream to a device: it ends after the event saying that the
    /// device was deactivated or declared dead (see [`ends_device_stream`]).
    pub fn for_device(mut self, device_id: Uuid) -> Self {
        self.device = Some(device_id);
        self
    }

    /// The next event, or `None` when the stream ended: the subscriber was
    /// too slow, or the hub stopped (reconnect with the last id), or the
    /// device it belongs to left (the previous event said so; do not
    /// reconnect, its token is refused).
    pub async fn next(&mut self) -> Result<Option<Arc<SharedEvent>>, StoreError> {
        if self.finished {
            return Ok(None);
        }
        loop {
            if self.replay.is_empty() && self.replay_cursor.is_some() {
                // Boxed: rarely needed, and it would otherwise enlarge every waiting `next`.
                Box::pin(self.fill_replay()).await?;
            }
            if let Some(event) = self.replay.pop_front() {
                return Ok(Some(self.hand_out(Arc::new(SharedEvent::new(event)))));
            }
            match self.live.recv().await {
                Some(event) if event.id <= self.delivered => continue,
                Some(event) => return Ok(Some(self.hand_out(event))),
                None => return Ok(None),
            }
        }
    }

    fn hand_out(&mut self, event: Arc<SharedEvent>) -> Arc<SharedEvent> {
        self.delivered = event.id;
        if self.device.is_some_and(|device| ends_device_stream(&event, device)) {
            self.finished = true;
        }
        event
    }

    /// The id of the last event handed out.
    pub fn last_delivered(&self) -> i64 {
        self.delivered
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(topic: Topic, payload: serde_json::Value, device_id: Uuid, expected: bool) {
        let event = OutboxEvent {
            id: 1,
            license_id: Some(Uuid::nil()),
            topic: topic.as_str().to_owned(),
            payload,
            created_at: time::OffsetDateTime::UNIX_EPOCH,
        };
        assert_eq!(ends_device_stream(&event, device_id), expected, "{topic} {}", event.payload);
    }

    #[test]
    fn only_the_news_that_this_device_left_ends_its_stream() {
        let (device, other) = (Uuid::new_v4(), Uuid::new_v4());
        check(Topic::DeviceDeactivated, json!({ "device_id": device, "reason": "app" }), device, true);
        check(Topic::DeviceDead, json!({ "device_id": device, "reason": "heartbeat_missed" }), device, true);
        check(Topic::DeviceDeactivated, json!({ "device_id": other }), device, false);
        check(Topic::DeviceDead, json!({ "device_id": other }), device, false);
        check(Topic::DeviceActivated, json!({ "device_id": device }), device, false);
        check(Topic::DeviceUpdated, json!({ "device_id": device }), device, false);
        check(Topic::LicenseUpdated, json!({ "status": "revoked" }), device, false);
        check(Topic::DeviceDeactivated, json!({ "device_id": "not a uuid" }), device, false);
        check(Topic::DeviceDeactivated, json!({}), device, false);
    }
}
