//! Persistence. The only module that knows SQL.
//!
//! A [`Store`] offers reads and two kinds of unit of work, each one
//! transaction: [`Store::sync_stripe`] ([`stripe_sync`]) and
//! [`Store::license_work`] ([`license_work`]). Each *loads* what its keys
//! name (locks taken in the one order), hands the bundle to a pure
//! *decision*, and *applies* the [`changeset::Changeset`] it returns (state +
//! audit + outbox) with the commit; on any failure nothing is written.

pub mod admin_reads;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub mod any;
pub mod backfill_runs;
// The customer portal's one-time codes (issue 19).
pub mod changeset;
pub mod license_work;
pub mod migration_check;
pub mod portal_sessions;
// The vendor console's overview (issue 19).
pub mod overview;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod stripe_sync;

use crate::domain::admin::Scopes;
use crate::domain::{
    Device, DeviceStatus, License, LicenseSource, LicenseTerms, Payment, PaymentStatus, Subscription, Timestamp,
};
use serde_json::Value;
use std::future::Future;
use uuid::Uuid;

/// A storage failure. Messages name what failed, never row contents.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or a connection could not be had.
    #[error("database unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A query failed.
    #[error("database query failed")]
    Query(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A stored value cannot be read back into the domain (e.g. an unknown status).
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    /// Migrations could not be applied.
    #[error("migrations failed")]
    Migration(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The envelope facts of a webhook delivery, recorded for deduplication.
#[derive(Debug, Clone)]
pub struct EventRecord<'a> {
    /// `evt_…`
    pub id: &'a str,
    /// Event type.
    pub kind: &'a str,
    /// Stripe's `created`.
    pub created: i64,
    /// Payload API version.
    pub api_version: Option<&'a str>,
    /// `data.object.id`, when the object has one.
    pub object_id: Option<&'a str>,
    /// The body as received (its signature checked then), kept so the
    /// delivery can be replayed.
    pub payload: &'a [u8],
}

/// An audit-trail row, as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEntry {
    /// Monotonic id.
    pub id: i64,
    /// Our subscription id.
    pub subscription_id: Uuid,
    /// Change kind (see [`SubscriptionChange::kind`](crate::domain::subscription::SubscriptionChange::kind)).
    pub kind: String,
    /// Status before, for status changes.
    pub from_status: Option<String>,
    /// Status after.
    pub to_status: Option<String>,
    /// Details.
    pub detail: Value,
    /// `stripe`, `user:<id>` or `system`.
    pub actor: String,
    /// The Stripe event that caused it, if any.
    pub stripe_event_id: Option<String>,
    /// When it was recorded.
    pub created_at: Timestamp,
}

/// A stored payment.
#[derive(Debug, Clone, PartialEq)]
pub struct PaymentRecord {
    /// Our id.
    pub id: Uuid,
    /// What Stripe reported.
    pub payment: Payment,
    /// First recorded.
    pub created_at: Timestamp,
}

/// A client-visible change to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    /// The license whose clients should hear it (None: operators only).
    pub license_id: Option<Uuid>,
    /// What kind of change: the SSE event name and vendor webhook type.
    pub topic: crate::domain::Topic,
    /// JSON body.
    pub payload: Value,
}

/// A published outbox row.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    /// Monotonic id, the SSE `id:`.
    pub id: i64,
    /// Target license.
    pub license_id: Option<Uuid>,
    /// Event name, as stored: text rather than a [`crate::domain::Topic`] so
    /// that an instance still running an older build, on a database shared
    /// with a newer one, relays topics it does not know instead of failing
    /// every read of the outbox after them.
    pub topic: String,
    /// JSON body.
    pub payload: Value,
    /// When it was committed.
    pub created_at: Timestamp,
}

/// An admin API token as stored: never the token, only its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTokenRecord {
    /// Our id.
    pub id: Uuid,
    /// Unique among live tokens; the audit trail's `admin:<name>`.
    pub name: String,
    /// What it may do.
    pub scopes: Scopes,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last authenticated a request (to the minute).
    pub last_used_at: Option<Timestamp>,
    /// When it was revoked; a revoked token authenticates nothing.
    pub revoked_at: Option<Timestamp>,
}

// --- Admin license writes (issue 14) ---

/// A license with what the admin API shows beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenseRecord {
    /// The license.
    pub license: License,
    /// Its user: a manual license's own, a Stripe license's customer's
    /// (None while the customer is not linked to a user).
    pub owner_user_id: Option<String>,
    /// When it was issued.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

/// The columns a license carries besides its terms, as the stores read
/// them, checked into their domain types.
pub(crate) struct LicenseExtras {
    pub(crate) source: LicenseSource,
    pub(crate) entitlements: Vec<String>,
    pub(crate) metadata: serde_json::Map<String, Value>,
    pub(crate) max_devices_override: Option<u32>,
}

impl LicenseExtras {
    pub(crate) fn decode(
        source: &str,
        entitlements: Value,
        metadata: Value,
        max_devices_override: Option<i64>,
    ) -> Result<Self, StoreError> {
        let source =
            LicenseSource::parse(source).ok_or_else(|| StoreError::Corrupt("unknown license source".into()))?;
        let entitlements = serde_json::from_value(entitlements)
            .map_err(|_| StoreError::Corrupt("license entitlements are not a list of strings".into()))?;
        let Value::Object(metadata) = metadata else {
            return Err(StoreError::Corrupt("license metadata is not an object".into()));
        };
        let max_devices_override = max_devices_override
            .map(|n| u32::try_from(n).map_err(|_| StoreError::Corrupt("negative max_devices_override".into())))
            .transpose()?;
        Ok(Self { source, entitlements, metadata, max_devices_override })
    }
}

/// A license kind as the stores' text columns hold it.
pub(crate) fn license_kind(stored: &str) -> Result<crate::domain::LicenseKind, StoreError> {
    crate::domain::LicenseKind::parse(stored).ok_or_else(|| StoreError::Corrupt("unknown license kind".into()))
}

/// A device limit as the stores' integer columns hold it.
pub(crate) fn max_devices_column(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

// --- Webhooks to the vendor (issue 14) ---

/// A webhook endpoint to create.
#[derive(Debug, Clone)]
pub struct NewWebhookEndpoint<'a> {
    /// Its id.
    pub id: Uuid,
    /// Where messages are posted.
    pub url: &'a str,
    /// The event types it receives, or `["*"]`.
    pub events: &'a [String],
    /// The vendor's note.
    pub description: Option<&'a str>,
    /// `whsec_…`, kept to sign every message.
    pub secret: &'a str,
}

/// A stored webhook endpoint, without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEndpoint {
    /// Its id.
    pub id: Uuid,
    /// Where messages are posted.
    pub url: String,
    /// The event types it receives, or `["*"]`.
    pub events: Vec<String>,
    /// The vendor's note.
    pub description: Option<String>,
    /// When it was created.
    pub created_at: Timestamp,
}

/// Where a message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookMessageStatus {
    /// To be sent (again), at `next_attempt_at`.
    Pending,
    /// A 2xx answer was received.
    Delivered,
    /// Every attempt failed, or its endpoint was deleted.
    Failed,
}

impl WebhookMessageStatus {
    /// As stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    /// Reads the stored spelling.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pending" => Some(Self::Pending),
            "delivered" => Some(Self::Delivered),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// One recorded attempt to send a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookAttempt {
    /// When it was sent.
    pub attempted_at: Timestamp,
    /// The receiver's status code, when it answered.
    pub status_code: Option<u16>,
    /// What went wrong, when it did (never the response body).
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: i64,
    /// When the message is tried again; None once delivered or failed.
    pub next_attempt_at: Option<Timestamp>,
}

/// A message to one endpoint, with its attempts.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookDelivery {
    /// `msg_…`, the `webhook-id`.
    pub id: String,
    /// The endpoint it goes to.
    pub endpoint_id: Uuid,
    /// Its event type.
    pub event_type: String,
    /// Where it stands.
    pub status: WebhookMessageStatus,
    /// Attempts made.
    pub attempts: i32,
    /// When it is due, while pending.
    pub next_attempt_at: Option<Timestamp>,
    /// When it was written (with the change it announces).
    pub created_at: Timestamp,
    /// When it was delivered.
    pub delivered_at: Option<Timestamp>,
    /// Its attempts, oldest first.
    pub attempt_log: Vec<WebhookAttempt>,
}

/// A position in an endpoint's deliveries (newest first): the last one seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookDeliveryCursor {
    /// Its `created_at`.
    pub created_at: Timestamp,
    /// Its id.
    pub id: String,
}

/// What [`Store::claim_webhook_messages`] may take.
#[derive(Debug, Clone)]
pub struct WebhookClaim<'a> {
    /// Messages due by now.
    pub now: Timestamp,
    /// A claimed message is due again at this time unless its attempt is
    /// recorded first (its sender died).
    pub lease_until: Timestamp,
    /// The claim's token; only its holder records the attempt.
    pub lease: Uuid,
    /// Endpoints this sender is still busy with: none of theirs.
    pub busy_endpoints: &'a [Uuid],
    /// At most this many per endpoint.
    pub per_endpoint: i64,
    /// At most this many in all.
    pub limit: i64,
}

/// A message claimed for sending, with what sending it needs.
#[derive(Clone, PartialEq)]
pub struct ClaimedWebhook {
    /// `msg_…`
    pub message_id: String,
    /// Its endpoint.
    pub endpoint_id: Uuid,
    /// The endpoint's URL.
    pub url: String,
    /// The endpoint's secret (`whsec_…`).
    pub secret: String,
    /// Its event type.
    pub event_type: String,
    /// The time of the change it announces.
    pub event_at: Timestamp,
    /// The event's data.
    pub payload: Value,
    /// Attempts made before this one.
    pub attempts: i32,
}

impl std::fmt::Debug for ClaimedWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimedWebhook")
            .field("message_id", &self.message_id)
            .field("endpoint_id", &self.endpoint_id)
            .field("event_type", &self.event_type)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// The outcome of one attempt, to record.
#[derive(Debug, Clone)]
pub struct WebhookAttemptRecord<'a> {
    /// The message.
    pub message_id: &'a str,
    /// The claim it was sent under.
    pub lease: Uuid,
    /// What happened.
    pub attempt: &'a WebhookAttempt,
    /// Where the message stands now.
    pub status: WebhookMessageStatus,
}

/// What a manual retry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookRetry {
    /// The message is due now.
    Scheduled,
    /// It was delivered already.
    AlreadyDelivered,
    /// No such message, or its endpoint was deleted.
    NotFound,
}

/// A storage backend.
pub trait Store: Clone + Send + Sync + 'static {
    /// One Stripe unit of work, atomically: claims the deliveries `keys`
    /// names and locks and reads every row they touch ([`stripe_sync`] has
    /// the lock order), hands that bundle to `decide`, writes the changeset
    /// it returns and commits. A delivery that was applied before is
    /// claimed by no one and absent from the bundle's `claimed`. On failure
    /// nothing is written.
    fn sync_stripe<T, F>(
        &self,
        keys: stripe_sync::StripeKeys,
        decide: F,
    ) -> impl Future<Output = Result<T, StoreError>> + Send
    where
        T: Send + 'static,
        F: FnOnce(stripe_sync::StripeBundle) -> (stripe_sync::Changeset, T) + Send + 'static;

    /// One license-centred unit of work, atomically: locks and reads what
    /// `keys` names ([`license_work`] has the lock order), hands that bundle
    /// to `decide`, writes the changeset it returns and commits. An empty
    /// changeset commits nothing. On failure nothing is written.
    fn license_work<T, F>(
        &self,
        keys: license_work::LicenseKeys,
        decide: F,
    ) -> impl Future<Output = Result<T, StoreError>> + Send
    where
        T: Send + 'static,
        F: FnOnce(license_work::LicenseBundle) -> (changeset::Changeset, T) + Send + 'static;

    /// Applies pending migrations.
    fn migrate(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Checks the database answers.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Records a failed delivery outside any transaction, so the failure
    /// survives the rollback of the attempt.
    fn record_event_failure(
        &self,
        event: &EventRecord<'_>,
        error: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Subscriptions whose customer belongs to `user_id`, most recently updated first.
    fn subscriptions_of_user(
        &self,
        user_id: &str,
    ) -> impl Future<Output = Result<Vec<Subscription>, StoreError>> + Send;

    /// The audit trail of the user's subscriptions, newest first.
    fn changes_of_user(
        &self,
        user_id: &str,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<ChangeEntry>, StoreError>> + Send;

    /// The user's payments, newest first.
    fn payments_of_user(
        &self,
        user_id: &str,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<PaymentRecord>, StoreError>> + Send;

    /// The Stripe customer ids linked to the user, oldest first.
    fn stripe_customers_of_user(&self, user_id: &str) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// The user's licenses, oldest first.
    fn licenses_of_user(&self, user_id: &str) -> impl Future<Output = Result<Vec<License>, StoreError>> + Send;

    /// Outbox rows after `after_id`, optionally for one license, in id order.
    fn outbox_after(
        &self,
        after_id: i64,
        license_id: Option<Uuid>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<OutboxEvent>, StoreError>> + Send;

    /// The license with this key hash (see [`crate::domain::LicenseKey::lookup_hash`]).
    fn license_by_key_hash(&self, key_hash: &[u8]) -> impl Future<Output = Result<Option<License>, StoreError>> + Send;

    /// The license with this key hash and, when a fingerprint is given, its
    /// device with that fingerprint: validation's one read.
    fn license_and_device(
        &self,
        key_hash: &[u8],
        fingerprint: Option<&str>,
    ) -> impl Future<Output = Result<(Option<License>, Option<Device>), StoreError>> + Send;

    /// The active device holding this activation-token hash, with its license.
    fn device_by_token_hash(
        &self,
        token_hash: &[u8],
    ) -> impl Future<Output = Result<Option<Device>, StoreError>> + Send;

    /// Every device on the user's licenses, most recently seen first.
    fn devices_of_user(&self, user_id: &str) -> impl Future<Output = Result<Vec<Device>, StoreError>> + Send;

    /// Whether `license_id` belongs to `user_id`.
    fn license_belongs_to(
        &self,
        license_id: Uuid,
        user_id: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The highest outbox id (0 when empty).
    fn latest_outbox_id(&self) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Deletes outbox rows created before `before`; returns how many.
    fn prune_outbox(&self, before: Timestamp) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// A signal for every committed outbox write, from any instance sharing
    /// the database. The receiver also gets a signal after a reconnect, when
    /// notifications may have been missed.
    fn watch_outbox(&self) -> impl Future<Output = Result<tokio::sync::mpsc::Receiver<()>, StoreError>> + Send;

    /// Status of a recorded delivery (`processed`, `ignored`, `failed`), for operators and tests.
    fn webhook_event_status(
        &self,
        event_id: &str,
    ) -> impl Future<Output = Result<Option<(String, i32, Option<String>)>, StoreError>> + Send;

    // --- Admin reads (issue 14): Stripe deliveries ---

    /// Counts one more delivery of an event that was already applied (its
    /// transaction was refused, so this is written on its own).
    fn record_event_duplicate(&self, event_id: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    // --- admin API tokens ---

    /// Stores a new token's hash; `false` (and nothing stored) when a live
    /// token already has this name.
    fn insert_admin_token(
        &self,
        id: Uuid,
        name: &str,
        token_hash: &[u8],
        scopes: &Scopes,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The live (unrevoked) token with this hash.
    fn admin_token_by_hash(
        &self,
        token_hash: &[u8],
    ) -> impl Future<Output = Result<Option<AdminTokenRecord>, StoreError>> + Send;

    /// Every token, revoked ones included, oldest first.
    fn admin_tokens(&self) -> impl Future<Output = Result<Vec<AdminTokenRecord>, StoreError>> + Send;

    /// Revokes the live token with this name; `false` when there is none.
    fn revoke_admin_token(&self, name: &str, at: Timestamp) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Records a use of the token, at most once a minute (a write per
    /// request would make every admin read a write).
    fn touch_admin_token(&self, id: Uuid, at: Timestamp) -> impl Future<Output = Result<(), StoreError>> + Send;

    // --- Webhooks to the vendor (issue 14) ---

    /// Stores a new endpoint.
    fn create_webhook_endpoint(
        &self,
        endpoint: &NewWebhookEndpoint<'_>,
    ) -> impl Future<Output = Result<WebhookEndpoint, StoreError>> + Send;

    /// Live endpoints, oldest first.
    fn webhook_endpoints(&self) -> impl Future<Output = Result<Vec<WebhookEndpoint>, StoreError>> + Send;

    /// A live endpoint.
    fn webhook_endpoint(&self, id: Uuid) -> impl Future<Output = Result<Option<WebhookEndpoint>, StoreError>> + Send;

    /// Deletes a live endpoint at `at`; its pending messages fail. False
    /// when there was no such live endpoint.
    fn delete_webhook_endpoint(&self, id: Uuid, at: Timestamp)
        -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// An endpoint's messages, newest first, after `cursor`, with their attempts.
    fn webhook_deliveries(
        &self,
        endpoint_id: Uuid,
        cursor: Option<&WebhookDeliveryCursor>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<WebhookDelivery>, StoreError>> + Send;

    /// Makes a pending or failed message of a live endpoint due at `now`.
    fn retry_webhook_message(
        &self,
        message_id: &str,
        now: Timestamp,
    ) -> impl Future<Output = Result<WebhookRetry, StoreError>> + Send;

    /// Leases due messages for sending (skipping those another sender
    /// holds), earliest due first.
    fn claim_webhook_messages(
        &self,
        claim: &WebhookClaim<'_>,
    ) -> impl Future<Output = Result<Vec<ClaimedWebhook>, StoreError>> + Send;

    /// Records an attempt and where its message now stands, if the attempt
    /// still holds the message's lease; returns whether it did.
    fn record_webhook_attempt(
        &self,
        record: &WebhookAttemptRecord<'_>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// When the next pending message is due (possibly already).
    fn next_webhook_due(&self) -> impl Future<Output = Result<Option<Timestamp>, StoreError>> + Send;
}
