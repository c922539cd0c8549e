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

impl AdminReadStore for AnyStore {
    delegate! { &self;
        fn licenses_page(filter: &LicenseFilter, now: Timestamp, after: Option<&LicenseCursor>, limit: i64)
            -> Result<Vec<ListedLicense>, StoreError>;
        fn license_detail(license_id: Uuid) -> Result<Option<LicenseDetail>, StoreError>;
        fn stripe_deliveries(status: Option<DeliveryStatus>, after: Option<&DeliveryCursor>, limit: i64)
            -> Result<Vec<StripeDelivery>, StoreError>;
        fn stripe_delivery(event_id: &str) -> Result<Option<StripeDelivery>, StoreError>;
        fn stored_delivery(event_id: &str) -> Result<Option<StoredDelivery>, StoreError>;
        fn audit_entries(filter: &AuditFilter, after: Option<&AuditCursor>, limit: i64)
            -> Result<Vec<AuditRecord>, StoreError>;
        fn customers(q: Option<&str>, after: Option<&CustomerCursor>, limit: i64)
            -> Result<Vec<CustomerRecord>, StoreError>;
        fn subscriptions_of_customers(customer_ids: &[Uuid]) -> Result<Vec<(Uuid, Subscription)>, StoreError>;
        fn licenses_of_customers(customer_ids: &[Uuid], user_ids: &[String]) -> Result<Vec<LicenseSummary>, StoreError>;
    }
}
