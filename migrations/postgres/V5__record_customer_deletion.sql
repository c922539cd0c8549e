-- Stripe can delete a customer; we keep the row (its subscriptions, payments
-- and audit trail stay readable) and record when.
ALTER TABLE customers ADD COLUMN deleted_at timestamptz;

-- A paid invoice proves its subscription was entitled, whatever order the
-- subscription's own events arrive in: looked up when one has no license.
CREATE INDEX payments_paid_subscription_idx ON payments (stripe_subscription_id) WHERE status = 'paid';
