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

/// A subscriber the hub writes to itself, synchronously, as it dispatches:
/// a stream whose connection handed itself over to the hub once its replay
/// was written ([`EventStream::park`]), so that an idle stream is no task
/// and a broadcast wakes none. Every method must return at once (a
/// non-blocking write, never a wait): the hub calls them holding its lock.
pub trait ParkedSubscriber: Send {
    /// Hands over a live event (never one already delivered); `false` when
    /// the subscriber is gone (closed, too slow to take it whole, or the
    /// event said its device left), and it is dropped.
    fn offer(&mut self, event: &SharedEvent) -> bool;
    /// A periodic look: whether the peer is still there (and, with
    /// `keep_alive`, a keep-alive written); `false` when it is gone.
    fn tick(&mut self, keep_alive: bool) -> bool;
    /// The hub stops serving it (shutdown): a last word, then it is dropped.
    fn close(&mut self);
}

/// What a parking stream hands to [`EventStream::park`]'s constructor.
pub struct Parking {
    /// The license.
    pub license_id: Uuid,
    /// The device whose stream this is, if it is one's.
    pub device: Option<Uuid>,
    /// Events that reached the stream but were not handed out yet, in
    /// order: to be written before anything the hub offers.
    pub pending: Vec<Arc<SharedEvent>>,
    /// The last of `pending` said the device left: write them and end.
    pub finished: bool,
}

struct ParkedEntry {
    subscriber: Box<dyn ParkedSubscriber>,
    delivered: i64,
    open: Arc<AtomicUsize>,
}

impl Drop for ParkedEntry {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

enum Subscriber {
    Channel(Sender),
    Parked(ParkedEntry),
}

#[derive(Default)]
struct Subscribers {
    next_id: u64,
    by_license: HashMap<Uuid, Vec<(u64, Subscriber)>>,
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
                list.retain_mut(|(_, subscriber)| match subscriber {
                    Subscriber::Channel(tx) => match tx.try_send(event.clone()) {
                        Ok(()) => true,
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            self.dropped_slow.fetch_add(1, Ordering::Relaxed);
                            false
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => false,
                    },
                    Subscriber::Parked(entry) if event.id <= entry.delivered => true,
                    Subscriber::Parked(entry) => {
                        entry.delivered = event.id;
                        entry.subscriber.offer(&event)
                    }
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
            subscribers.by_license.entry(license_id).or_default().push((id, Subscriber::Channel(tx)));
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
            registration: Registration {
                id,
                license_id,
                subscribers: self.subscribers.clone(),
                open: self.open.clone(),
                parked: false,
            },
        };
        // Registered before reading, so nothing committed from here on can
        // be missed; duplicates are filtered by id.
        stream.fill_replay().await?;
        Ok(stream)
    }

    /// Looks at every parked stream (and, with `keep_alive`, writes each a
    /// keep-alive), dropping those whose peer is gone.
    pub fn tick_parked(&self, keep_alive: bool) {
        self.retain_parked(|subscriber| subscriber.tick(keep_alive));
    }

    /// Closes every parked stream (shutdown: they reconnect elsewhere).
    pub fn close_parked(&self) {
        self.retain_parked(|subscriber| {
            subscriber.close();
            false
        });
    }

    fn retain_parked(&self, mut keep: impl FnMut(&mut dyn ParkedSubscriber) -> bool) {
        let mut subscribers = self.subscribers.lock().expect("subscriber lock is never poisoned");
        subscribers.by_license.retain(|_, list| {
            list.retain_mut(|(_, subscriber)| match subscriber {
                Subscriber::Parked(entry) => keep(entry.subscriber.as_mut()),
                Subscriber::Channel(_) => true,
            });
            !list.is_empty()
        });
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
    /// Its place was handed to a parked subscriber, which now counts as
    /// open and is removed by the hub.
    parked: bool,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.parked {
            return;
        }
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
    registration: Registration,
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

    /// Whether events from the outbox are still to be replayed before the
    /// live ones.
    pub fn replaying(&self) -> bool {
        !self.replay.is_empty() || self.replay_cursor.is_some()
    }

    /// Hands the stream over to the hub: `make` gets what reached the
    /// stream but was not handed out yet and returns the subscriber the
    /// hub will offer every later event to (or `None`: it ended while
    /// writing those). Refused (the stream back) while it is replaying,
    /// once it ended, or when the hub already dropped it as too slow; the
    /// caller then goes on reading it. `make` runs under the hub's lock:
    /// it must not block.
    pub fn park(mut self, make: impl FnOnce(Parking) -> Option<Box<dyn ParkedSubscriber>>) -> Result<(), Box<Self>> {
        if self.replaying() || self.finished {
            return Err(Box::new(self));
        }
        let subscribers = self.registration.subscribers.clone();
        let mut subscribers = subscribers.lock().expect("subscriber lock is never poisoned");
        let (id, license_id) = (self.registration.id, self.registration.license_id);
        let held = subscribers.by_license.get(&license_id).is_some_and(|list| list.iter().any(|(i, _)| *i == id));
        if !held {
            drop(subscribers);
            return Err(Box::new(self));
        }
        let mut pending = Vec::new();
        while let Ok(event) = self.live.try_recv() {
            if event.id > self.delivered && !self.finished {
                pending.push(self.hand_out(event));
            }
        }
        let parking = Parking { license_id, device: self.device, pending, finished: self.finished };
        let parked = make(parking).filter(|_| !self.finished);
        let list = subscribers.by_license.get_mut(&license_id).expect("held above");
        let place = list.iter().position(|(i, _)| *i == id).expect("held above");
        match parked {
            Some(subscriber) => {
                let open = self.registration.open.clone();
                list[place].1 = Subscriber::Parked(ParkedEntry { subscriber, delivered: self.delivered, open });
            }
            None => {
                list.remove(place);
                if list.is_empty() {
                    subscribers.by_license.remove(&license_id);
                }
                self.registration.open.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.registration.parked = true;
        drop(subscribers);
        Ok(())
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
