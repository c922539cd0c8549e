-- The SQLite twin of migrations/postgres/V14.
CREATE TABLE invoice_charges (
    payment_key       TEXT NOT NULL PRIMARY KEY,
    stripe_invoice_id TEXT NOT NULL,
    stripe_charge_id  TEXT,
    created_at        INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER))
) STRICT;
CREATE INDEX invoice_charges_charge_idx ON invoice_charges (stripe_charge_id) WHERE stripe_charge_id IS NOT NULL;

CREATE TABLE charge_disputes (
    stripe_dispute_id TEXT NOT NULL PRIMARY KEY,
    license_id        TEXT NOT NULL REFERENCES licenses (id),
    status            TEXT NOT NULL,
    closed            INTEGER NOT NULL CHECK (closed IN (0, 1)),
    created_at        INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    updated_at        INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER))
) STRICT;
CREATE INDEX charge_disputes_open_idx ON charge_disputes (license_id) WHERE closed = 0;
