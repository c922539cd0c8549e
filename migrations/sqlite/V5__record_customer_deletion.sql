-- The SQLite twin of migrations/postgres/V5.
ALTER TABLE customers ADD COLUMN deleted_at INTEGER;

CREATE INDEX payments_paid_subscription_idx ON payments (stripe_subscription_id) WHERE status = 'paid';
