//! The dashboard's reads of a user's account.

use crate::billing::{Billing, ReadError};
use crate::domain::{License, Subscription};
use crate::storage::{ChangeEntry, PaymentRecord, Store};

impl<S: Store> Billing<S> {
    /// The subscription the dashboard shows for a user: the one that grants
    /// access if any, else the most recently updated.
    pub async fn current_subscription(&self, user_id: &str) -> Result<Option<Subscription>, ReadError> {
        let subs = self.store().subscriptions_of_user(user_id).await?;
        Ok(subs
            .iter()
            .find(|s| {
                !s.snapshot.status.is_terminal()
                    && s.snapshot.status != crate::domain::SubscriptionStatus::IncompleteExpired
            })
            .or(subs.first())
            .cloned())
    }

    /// The user's audit trail, newest first.
    pub async fn subscription_history(&self, user_id: &str) -> Result<Vec<ChangeEntry>, ReadError> {
        self.store().changes_of_user(user_id, 500).await
    }

    /// The user's payments, newest first.
    pub async fn payment_history(&self, user_id: &str) -> Result<Vec<PaymentRecord>, ReadError> {
        self.store().payments_of_user(user_id, 500).await
    }

    /// The user's licenses.
    pub async fn licenses(&self, user_id: &str) -> Result<Vec<License>, ReadError> {
        self.store().licenses_of_user(user_id).await
    }
}
