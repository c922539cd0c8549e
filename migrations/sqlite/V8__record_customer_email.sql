-- The SQLite twin of migrations/postgres/V9.
ALTER TABLE customers ADD COLUMN email TEXT;
ALTER TABLE customers ADD COLUMN email_created INTEGER;
CREATE INDEX customers_email_idx ON customers (lower(email)) WHERE email IS NOT NULL;
CREATE INDEX customers_created_idx ON customers (created_at DESC, id DESC);
