//! The admin API's read use cases (issue 14) and the replay of a Stripe
//! delivery: cursor-paginated listings of Stripe deliveries, the audit
//! trail and customers.

use crate::billing::{Billing, WebhookError, WebhookOutcome};
use crate::domain::cursor::{AuditCursor, CustomerCursor, DeliveryCursor, LicenseCursor, PageLimit};
use crate::domain::{Actor, LicenseKey, Subscription};
use crate::storage::admin_reads::{
    AdminReadStore, AuditFilter, AuditRecord, CustomerRecord, DeliveryStatus, LicenseDetail, LicenseFilter,
    LicenseSearch, LicenseSummary, ListedLicense, StripeDelivery,
};
use crate::storage::{Store, StoreError};
use crate::stripe::{Event, EventError};
use uuid::Uuid;

/// One page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The items, in the listing's order.
    pub items: Vec<T>,
    /// The token of the next page; None on the last one.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Cuts `rows` (read one beyond the limit) to a page: the extra row,
    /// when there is one, only says that another page follows.
    fn of(mut rows: Vec<T>, limit: PageLimit, cursor: impl Fn(&T) -> String) -> Self {
        let more = rows.len() > limit.get();
        rows.truncate(limit.get());
        let next_cursor = if more { rows.last().map(cursor) } else { None };
        Self { items: rows, next_cursor }
    }
}

/// One row more than the page holds, so a page knows whether another follows.
fn read_limit(limit: PageLimit) -> i64 {
    limit.get() as i64 + 1
}

/// A customer with what it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomerAccount {
    /// The customer.
    pub customer: CustomerRecord,
    /// Its subscriptions, newest first.
    pub subscriptions: Vec<Subscription>,
    /// Its licenses (through its subscriptions, and its user's manual
    /// ones), newest first.
    pub licenses: Vec<LicenseSummary>,
}

/// What a replay did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// `processed`/`ignored` when this replay applied the event, `duplicate`
    /// when it had already been applied (nothing changed).
    pub outcome: WebhookOutcome,
    /// The delivery as recorded after the replay.
    pub delivery: StripeDelivery,
}

/// Why a replay did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// No delivery with this event id was recorded.
    #[error("no such Stripe event")]
    NotFound,
    /// The delivery was recorded before payloads were kept.
    #[error("the delivery was recorded without its payload")]
    NoPayload,
    /// The stored payload no longer parses (a stricter parser since).
    #[error("the stored payload cannot be read")]
    Unreadable(#[source] EventError),
    /// Applying it failed again; the failure is recorded.
    #[error("applying the event failed")]
    Failed(#[source] WebhookError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a search term can find a license by: the term itself (ids, device
/// fingerprints and names), and the key or license id it parses as. A key
/// is matched by its hash, however it was typed (any case, dashes or
/// spaces), never compared as text.
pub fn license_search(term: &str) -> LicenseSearch {
    LicenseSearch {
        text: term.to_owned(),
        key_hash: LicenseKey::parse(term).map(|key| key.lookup_hash()),
        id: Uuid::parse_str(term).ok(),
    }
}

impl<S: Store + AdminReadStore> Billing<S> {
    /// Licenses newest first, filtered (effective statuses as of now).
    pub async fn admin_licenses(
        &self,
        filter: &LicenseFilter,
        limit: PageLimit,
        after: Option<&LicenseCursor>,
    ) -> Result<Page<ListedLicense>, StoreError> {
        let rows = self.store().licenses_page(filter, self.now(), after, read_limit(limit)).await?;
        Ok(Page::of(rows, limit, |l| l.cursor().encode()))
    }

    /// One batch of every license, newest first, after `after`: the export
    /// walks them batch by batch so that it never holds them all.
    pub async fn license_export_batch(
        &self,
        after: Option<&LicenseCursor>,
    ) -> Result<(Vec<ListedLicense>, Option<LicenseCursor>), StoreError> {
        let limit = PageLimit::new(PageLimit::MAX).expect("the largest page is a page");
        let rows = self.store().licenses_page(&LicenseFilter::default(), self.now(), after, read_limit(limit)).await?;
        let page = Page::of(rows, limit, |l| l.cursor().encode());
        let next = page.next_cursor.as_ref().and(page.items.last().map(ListedLicense::cursor));
        Ok((page.items, next))
    }

    /// One license with its devices and subscription.
    pub async fn admin_license(&self, license_id: Uuid) -> Result<Option<LicenseDetail>, StoreError> {
        self.store().license_detail(license_id).await
    }

    /// Recorded Stripe deliveries, newest first, optionally of one status.
    pub async fn stripe_deliveries(
        &self,
        status: Option<DeliveryStatus>,
        limit: PageLimit,
        after: Option<&DeliveryCursor>,
    ) -> Result<Page<StripeDelivery>, StoreError> {
        let rows = self.store().stripe_deliveries(status, after, read_limit(limit)).await?;
        Ok(Page::of(rows, limit, |d| d.cursor().encode()))
    }

    /// Applies a recorded delivery again from its stored payload, through
    /// the same unit of work as [`Billing::ingest_webhook`] (its signature
    /// was checked when it was received).
    ///
    /// What "again" means follows from the claim every unit of work makes:
    /// a delivery that failed is claimed and applied, exactly as Stripe's
    /// own retry would; one that was processed (or ignored) is refused by
    /// the claim and the replay reports `duplicate` and changes nothing.
    /// Forcing a processed event through once more would repeat effects
    /// that are not idempotent by nature (audit rows, device evictions) for
    /// no gain: the state it brought is already held, and a newer one has
    /// since been compared with it. An admin who doubts the current state
    /// asks Stripe for it (the subscription sync), not an old event.
    /// Racing Stripe's own retry is safe for the same reason: one claim wins.
    pub async fn replay_stripe_event(&self, event_id: &str, actor: &Actor) -> Result<Replay, ReplayError> {
        let stored = self.store().stored_delivery(event_id).await?.ok_or(ReplayError::NotFound)?;
        let payload = stored.payload.ok_or(ReplayError::NoPayload)?;
        let event = Event::parse(&payload).map_err(ReplayError::Unreadable)?;
        if event.id != event_id {
            return Err(ReplayError::Store(StoreError::Corrupt("a stored payload names another event".into())));
        }
        let receipt = self.apply_delivery(&event, &payload).await.map_err(ReplayError::Failed)?;
        tracing::info!(
            event_id,
            actor = %actor.label(),
            was = %stored.status,
            outcome = receipt.outcome.as_str(),
            "Stripe event replayed"
        );
        let delivery = self
            .store()
            .stripe_delivery(event_id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("a replayed delivery vanished".into()))?;
        Ok(Replay { outcome: receipt.outcome, delivery })
    }

    /// The audit trail across subscriptions, devices and licenses, newest first.
    pub async fn audit_trail(
        &self,
        filter: &AuditFilter,
        limit: PageLimit,
        after: Option<&AuditCursor>,
    ) -> Result<Page<AuditRecord>, StoreError> {
        let rows = self.store().audit_entries(filter, after, read_limit(limit)).await?;
        Ok(Page::of(rows, limit, |e| e.cursor().encode()))
    }

    /// Customers, newest first, with their subscriptions and licenses;
    /// `query` matches a user id, a Stripe customer id or an e-mail.
    pub async fn customer_accounts(
        &self,
        query: Option<&str>,
        limit: PageLimit,
        after: Option<&CustomerCursor>,
    ) -> Result<Page<CustomerAccount>, StoreError> {
        let page =
            Page::of(self.store().customers(query, after, read_limit(limit)).await?, limit, |c| c.position.encode());
        let customer_ids: Vec<_> = page.items.iter().filter_map(|c| c.customer_id).collect();
        let user_ids: Vec<String> = page.items.iter().filter_map(|c| c.user_id.clone()).collect();
        let (subscriptions, licenses) = if page.items.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            (
                self.store().subscriptions_of_customers(&customer_ids).await?,
                self.store().licenses_of_customers(&customer_ids, &user_ids).await?,
            )
        };
        let items = page
            .items
            .into_iter()
            .map(|customer| {
                let subscriptions = subscriptions
                    .iter()
                    .filter(|(owner, _)| Some(*owner) == customer.customer_id)
                    .map(|(_, s)| s.clone())
                    .collect();
                let licenses = licenses.iter().filter(|l| holds(&customer, l)).cloned().collect();
                CustomerAccount { customer, subscriptions, licenses }
            })
            .collect();
        Ok(Page { items, next_cursor: page.next_cursor })
    }
}

/// Whether a customer listing shows this license: one of the customer's
/// subscriptions', or a manual license of the customer's user.
fn holds(customer: &CustomerRecord, license: &LicenseSummary) -> bool {
    let through_stripe = customer.customer_id.is_some() && license.customer_id == customer.customer_id;
    // Issued by hand or bought once through Checkout: no subscription, the
    // license's own user.
    let own = license.subscription_id.is_none() && customer.user_id.is_some() && license.user_id == customer.user_id;
    through_stripe || own
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_term_is_read_as_a_key_an_id_or_plain_text() {
        let key = LicenseKey::generate();
        let typed = key.expose().replace('-', " ").to_lowercase();
        let search = license_search(&typed);
        assert_eq!((search.key_hash, search.id), (Some(key.lookup_hash()), None), "a key however it is typed");
        let id = Uuid::new_v4();
        // A UUID's 32 hex digits are also a well-formed key (of no license,
        // but looked up like any): both readings are searched.
        assert_eq!(license_search(&id.to_string()).id, Some(id));
        let search = license_search("cus_123");
        assert_eq!((search.text.as_str(), search.key_hash, search.id), ("cus_123", None, None));
    }

    #[test]
    fn a_page_read_one_beyond_its_limit_says_whether_another_follows() {
        let limit = PageLimit::new(2).unwrap();
        let full = Page::of(vec![1, 2, 3], limit, |n| n.to_string());
        assert_eq!((full.items, full.next_cursor), (vec![1, 2], Some("2".to_owned())));
        let last = Page::of(vec![1, 2], limit, |n| n.to_string());
        assert_eq!((last.items, last.next_cursor), (vec![1, 2], None));
        let empty = Page::of(Vec::<i32>::new(), limit, |n| n.to_string());
        assert_eq!((empty.items, empty.next_cursor), (vec![], None));
    }
}
