//! Payments: one row per Stripe invoice, whatever number of events mention it.

use super::Timestamp;
use serde::{Deserialize, Serialize};

/// Where an invoice's payment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// Paid; final.
    Paid,
    /// A payment attempt failed.
    Failed,
    /// The customer must authenticate (3-D Secure) before it can be paid.
    ActionRequired,
}

impl PaymentStatus {
    /// Storage and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Paid => "paid",
            Self::Failed => "failed",
            Self::ActionRequired => "action_required",
        }
    }

    /// Parses the storage spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "paid" => Self::Paid,
            "failed" => Self::Failed,
            "action_required" => Self::ActionRequired,
            _ => return None,
        })
    }

    /// Whether a payment in status `self` may be overwritten by one in `next`:
    /// statuses only move up `failed` → `action_required` → `paid`, so the
    /// stored status is the highest any delivery reported, whatever order
    /// they came in (a late `payment_failed` never undoes `invoice.paid`).
    pub fn may_become(self, next: PaymentStatus) -> bool {
        next.rank() > self.rank()
    }

    fn rank(self) -> u8 {
        match self {
            Self::Failed => 0,
            Self::ActionRequired => 1,
            Self::Paid => 2,
        }
    }
}

/// An invoice payment as an event reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    /// `in_…`
    pub stripe_invoice_id: String,
    /// `cus_…`
    pub stripe_customer_id: String,
    /// `sub_…`, when the invoice belongs to a subscription.
    pub stripe_subscription_id: Option<String>,
    /// Minor units.
    pub amount: i64,
    /// Lower-case ISO code.
    pub currency: String,
    /// Outcome.
    pub status: PaymentStatus,
    /// When it was paid (paid invoices only).
    pub paid_at: Option<Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::PaymentStatus::*;

    #[test]
    fn statuses_only_move_up_so_order_does_not_matter() {
        assert!(!Paid.may_become(Failed));
        assert!(!Paid.may_become(ActionRequired));
        assert!(Failed.may_become(Paid));
        assert!(ActionRequired.may_become(Paid));
        assert!(Failed.may_become(ActionRequired));
        assert!(!ActionRequired.may_become(Failed), "either order ends action_required");
        assert!(!Failed.may_become(Failed));
    }
}
