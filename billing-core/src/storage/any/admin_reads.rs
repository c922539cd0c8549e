//! [`AdminReadStore`] dispatch for [`AnyStore`].

use super::AnyStore;
use crate::domain::cursor::{AuditCursor, CustomerCursor, DeliveryCursor, LicenseCursor};
use crate::domain::{Subscription, Timestamp};
use crate::storage::admin_reads::{
    AdminReadStore, AuditFilter, AuditRecord, CustomerRecord, DeliveryStatus, LicenseDetail, LicenseFilter,
    LicenseSummary, ListedLicense, StoredDelivery, StripeDelivery,
};
use crate::storage::StoreError;
use uuid::Uuid;

/// Calls the same method on whichever store this is.
macro_rules! dispatch {
    ($self:ident.$method:ident($($arg:expr),*)) => {
        match $self {
            #[cfg(feature = "postgres")]
            AnyStore::Postgres(s) => s.$method($($arg),*).await,
            #[cfg(feature = "sqlite")]
            AnyStore::Sqlite(s) => s.$method($($arg),*).await,
        }
    };
}

impl AdminReadStore for AnyStore {
    async fn licenses_page(
        &self,
        filter: &LicenseFilter,
        now: Timestamp,
        after: Option<&LicenseCursor>,
        limit: i64,
    ) -> Result<Vec<ListedLicense>, StoreError> {
        dispatch!(self.licenses_page(filter, now, after, limit))
    }

    async fn license_detail(&self, license_id: Uuid) -> Result<Option<LicenseDetail>, StoreError> {
        dispatch!(self.license_detail(license_id))
    }

    async fn stripe_deliveries(
        &self,
        status: Option<DeliveryStatus>,
        after: Option<&DeliveryCursor>,
        limit: i64,
    ) -> Result<Vec<StripeDelivery>, StoreError> {
        dispatch!(self.stripe_deliveries(status, after, limit))
    }

    async fn stripe_delivery(&self, event_id: &str) -> Result<Option<StripeDelivery>, StoreError> {
        dispatch!(self.stripe_delivery(event_id))
    }

    async fn stored_delivery(&self, event_id: &str) -> Result<Option<StoredDelivery>, StoreError> {
        dispatch!(self.stored_delivery(event_id))
    }

    async fn audit_entries(
        &self,
        filter: &AuditFilter,
        after: Option<&AuditCursor>,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        dispatch!(self.audit_entries(filter, after, limit))
    }

    async fn customers(
        &self,
        q: Option<&str>,
        after: Option<&CustomerCursor>,
        limit: i64,
    ) -> Result<Vec<CustomerRecord>, StoreError> {
        dispatch!(self.customers(q, after, limit))
    }

    async fn subscriptions_of_customers(&self, customer_ids: &[Uuid]) -> Result<Vec<(Uuid, Subscription)>, StoreError> {
        dispatch!(self.subscriptions_of_customers(customer_ids))
    }

    async fn licenses_of_customers(
        &self,
        customer_ids: &[Uuid],
        user_ids: &[String],
    ) -> Result<Vec<LicenseSummary>, StoreError> {
        dispatch!(self.licenses_of_customers(customer_ids, user_ids))
    }
}
