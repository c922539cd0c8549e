//! The reads behind the admin API (issue 14): Stripe deliveries, the audit
//! trail across its three tables, customers. A trait of its own so that
//! these queries live in files of their own per backend
//! (`postgres/admin_reads.rs`, `sqlite/admin_reads.rs`).
//!
//! Every listing is a keyset walk (see [`crate::domain::cursor`]): rows
//! strictly after the cursor in the listing's order, at most `limit`.

use super::{LicenseRecord, Store, StoreError};
use crate::domain::cursor::{AuditCursor, AuditSource, CustomerCursor, DeliveryCursor, LicenseCursor};
use crate::domain::{Device, LicenseStatus, Subscription, Timestamp};
use serde_json::Value;
use std::future::Future;
use uuid::Uuid;

/// Which Stripe deliveries to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Applied (possibly changing nothing, e.g. a stale snapshot).
    Processed,
    /// Delivered more than once (whatever became of the first delivery).
    Duplicate,
    /// A type we do not act on.
    Ignored,
    /// Its last attempt failed; Stripe retries it, or an admin replays it.
    Failed,
}

impl DeliveryStatus {
    /// Reads the API's spelling.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "processed" => Some(Self::Processed),
            "duplicate" => Some(Self::Duplicate),
            "ignored" => Some(Self::Ignored),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }

    /// The API's spelling (the stored status, except for `duplicate`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Processed => "processed",
            Self::Duplicate => "duplicate",
            Self::Ignored => "ignored",
            Self::Failed => "failed",
        }
    }
}

/// A recorded Stripe delivery, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeDelivery {
    /// `evt_…`
    pub id: String,
    /// Event type.
    pub kind: String,
    /// `data.object.id`, when recorded.
    pub object_id: Option<String>,
    /// `processed`, `ignored` or `failed`.
    pub status: String,
    /// How many times it was attempted (failed attempts and the last one).
    pub attempts: i32,
    /// The last failure, while it is failed.
    pub error: Option<String>,
    /// A note the processing left (e.g. a stale snapshot).
    pub note: Option<String>,
    /// How many deliveries after the first were duplicates.
    pub duplicates: i32,
    /// First received.
    pub received_at: Timestamp,
    /// When it was applied.
    pub processed_at: Option<Timestamp>,
}

impl StripeDelivery {
    /// Where the next page starts after this delivery.
    pub fn cursor(&self) -> DeliveryCursor {
        DeliveryCursor { received_at: self.received_at, id: self.id.clone() }
    }
}

/// What a replay needs of a recorded delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDelivery {
    /// `processed`, `ignored` or `failed`.
    pub status: String,
    /// The body as received; None for deliveries recorded before payloads were kept.
    pub payload: Option<Vec<u8>>,
}

/// Which audit entries to list: all, or those about one license, or about
/// the licenses and subscriptions of one user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only entries about this license (its subscription's changes included).
    pub license_id: Option<Uuid>,
    /// Only entries about this user's subscriptions and licenses, whether
    /// linked through Stripe or issued to the user by hand.
    pub user_id: Option<String>,
}

/// One row of one of the three audit tables.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// The table.
    pub source: AuditSource,
    /// The row id in that table.
    pub id: i64,
    /// When it was recorded.
    pub at: Timestamp,
    /// `stripe`, `user:<id>`, `admin:<name>` or `system`.
    pub actor: String,
    /// The change kind.
    pub kind: String,
    /// The license concerned (for a subscription change: its license, if issued).
    pub license_id: Option<Uuid>,
    /// Our subscription concerned, if any.
    pub subscription_id: Option<Uuid>,
    /// The device concerned (device changes).
    pub device_id: Option<Uuid>,
    /// Status before (subscription status changes).
    pub from_status: Option<String>,
    /// Status after.
    pub to_status: Option<String>,
    /// The Stripe event behind a subscription change.
    pub stripe_event_id: Option<String>,
    /// Details as recorded.
    pub detail: Value,
    /// Where the request that caused it came from (none for Stripe's
    /// deliveries and background work).
    pub client_addr: Option<std::net::IpAddr>,
}

impl AuditRecord {
    /// Where the next page starts after this entry.
    pub fn cursor(&self) -> AuditCursor {
        AuditCursor { at: self.at, source: self.source, id: self.id }
    }
}

/// A customer as listed: a Stripe customer, or a user known only from
/// manual licenses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerRecord {
    /// Its place in the listing.
    pub position: CustomerCursor,
    /// Our customer id (None for a user with manual licenses only).
    pub customer_id: Option<Uuid>,
    /// The dashboard user, when known.
    pub user_id: Option<String>,
    /// `cus_…` (None for a user with manual licenses only).
    pub stripe_customer_id: Option<String>,
    /// As Stripe last reported it.
    pub email: Option<String>,
}

/// A license as a customer listing shows it (no key: the customer scope
/// does not grant license keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenseSummary {
    /// Its id.
    pub id: Uuid,
    /// `stripe` or `manual`.
    pub source: String,
    /// Our subscription behind it (Stripe licenses).
    pub subscription_id: Option<Uuid>,
    /// The customer of that subscription.
    pub customer_id: Option<Uuid>,
    /// Its user: its own for a manual license, its customer's otherwise.
    pub user_id: Option<String>,
    /// Stored status.
    pub status: String,
    /// Plan.
    pub plan_id: Option<String>,
    /// Device limit.
    pub max_devices: i32,
    /// End of validity, if any.
    pub expires_at: Option<Timestamp>,
    /// Issued.
    pub created_at: Timestamp,
    /// `subscription` or `perpetual`.
    pub kind: String,
    /// The last release date its updates cover, if limited.
    pub updates_until: Option<Timestamp>,
    /// A card-less trial.
    pub trial: bool,
}

/// Which licenses to list. Every filter given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LicenseFilter {
    /// The license's user (a manual license's own, a Stripe license's customer's).
    pub user_id: Option<String>,
    /// The effective status (see [`crate::domain::License::effective_status`])
    /// at the time the listing is read.
    pub status: Option<LicenseStatus>,
    /// The plan id.
    pub plan: Option<String>,
    /// A search term (see [`LicenseSearch`]).
    pub search: Option<LicenseSearch>,
}

/// What `q` finds a license by: its key (by the hash of the key it parses
/// as), its id, its user id, its Stripe customer or subscription id, or the
/// fingerprint or name of one of its devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenseSearch {
    /// The term as given, compared with the ids and device fields.
    pub text: String,
    /// The lookup hash of the key the term parses as, if it parses as one.
    pub key_hash: Option<Vec<u8>>,
    /// The license id the term parses as, if it parses as one.
    pub id: Option<Uuid>,
}

/// A license as listed: its record and how many devices hold a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedLicense {
    /// The license with its owner and dates.
    pub record: LicenseRecord,
    /// Devices stored as active.
    pub device_count: i64,
}

impl ListedLicense {
    /// Where the next page starts after this license.
    pub fn cursor(&self) -> LicenseCursor {
        LicenseCursor { created_at: self.record.created_at, id: self.record.license.id }
    }
}

/// One license with everything about it the admin API shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenseDetail {
    /// The license.
    pub listed: ListedLicense,
    /// All its devices, in activation order.
    pub devices: Vec<Device>,
    /// Its subscription (None for a manual license).
    pub subscription: Option<Subscription>,
}

/// The admin API's reads.
pub trait AdminReadStore: Store {
    /// Licenses newest first by (`created_at`, `id`), after `after`, at
    /// most `limit`; `now` is the instant effective statuses are taken at.
    fn licenses_page(
        &self,
        filter: &LicenseFilter,
        now: Timestamp,
        after: Option<&LicenseCursor>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<ListedLicense>, StoreError>> + Send;

    /// One license with its devices and subscription.
    fn license_detail(
        &self,
        license_id: Uuid,
    ) -> impl Future<Output = Result<Option<LicenseDetail>, StoreError>> + Send;

    /// Recorded Stripe deliveries newest first (by first receipt), after
    /// `after`, at most `limit`.
    fn stripe_deliveries(
        &self,
        status: Option<DeliveryStatus>,
        after: Option<&DeliveryCursor>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<StripeDelivery>, StoreError>> + Send;

    /// The recorded delivery with this event id.
    fn stripe_delivery(
        &self,
        event_id: &str,
    ) -> impl Future<Output = Result<Option<StripeDelivery>, StoreError>> + Send;

    /// The status and stored body of a delivery, for a replay.
    fn stored_delivery(
        &self,
        event_id: &str,
    ) -> impl Future<Output = Result<Option<StoredDelivery>, StoreError>> + Send;

    /// Entries of all three audit tables newest first by (`at`, source,
    /// `id`), after `after`, at most `limit`.
    fn audit_entries(
        &self,
        filter: &AuditFilter,
        after: Option<&AuditCursor>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<AuditRecord>, StoreError>> + Send;

    /// Customers newest first, after `after`, at most `limit`; with `query`,
    /// only those whose user id or Stripe customer id is `query` or whose
    /// e-mail is `query` ignoring ASCII case.
    fn customers(
        &self,
        query: Option<&str>,
        after: Option<&CustomerCursor>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<CustomerRecord>, StoreError>> + Send;

    /// The subscriptions of these customers (with the customer's id), newest first.
    fn subscriptions_of_customers(
        &self,
        customer_ids: &[Uuid],
    ) -> impl Future<Output = Result<Vec<(Uuid, Subscription)>, StoreError>> + Send;

    /// The licenses of these customers' subscriptions and the manual
    /// licenses of these users, newest first.
    fn licenses_of_customers(
        &self,
        customer_ids: &[Uuid],
        user_ids: &[String],
    ) -> impl Future<Output = Result<Vec<LicenseSummary>, StoreError>> + Send;
}
