-- The SQLite twin of migrations/postgres/V1: the same tables, columns,
-- constraints and indexes. Dialect mapping, kept consistent by the store
-- (billing-core/src/storage/sqlite.rs):
--   uuid        -> TEXT, lower-case hyphenated
--   timestamptz -> INTEGER, Unix microseconds, UTC (PostgreSQL's precision)
--   boolean     -> INTEGER 0/1
--   bytea       -> BLOB
--   jsonb       -> TEXT holding valid JSON
--   bigserial   -> INTEGER PRIMARY KEY AUTOINCREMENT (monotonic, never reused)
-- Tables are STRICT so a value of the wrong type is refused, as PostgreSQL
-- would. The store binds every timestamp itself (the transaction's start
-- time where PostgreSQL uses now()); the defaults serve hand-written SQL.

-- Customers link a Stripe customer to our dashboard's user id. The user may
-- be unknown for a while: a subscription event can arrive before the
-- checkout that names the user.
CREATE TABLE customers (
    id                 TEXT NOT NULL PRIMARY KEY,
    stripe_customer_id TEXT NOT NULL UNIQUE,
    user_id            TEXT,
    created_at         INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    updated_at         INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER))
) STRICT;
CREATE INDEX customers_user_id_idx ON customers (user_id);

CREATE TABLE subscriptions (
    id                     TEXT NOT NULL PRIMARY KEY,
    stripe_subscription_id TEXT NOT NULL UNIQUE,
    customer_id            TEXT NOT NULL REFERENCES customers (id),
    status                 TEXT NOT NULL CHECK (status IN ('incomplete', 'incomplete_expired', 'trialing',
                               'active', 'past_due', 'unpaid', 'canceled', 'paused')),
    plan_id                TEXT,
    price_id               TEXT,
    item_id                TEXT,
    cancel_at_period_end   INTEGER NOT NULL CHECK (cancel_at_period_end IN (0, 1)),
    cancel_at              INTEGER,
    canceled_at            INTEGER,
    ended_at               INTEGER,
    current_period_start   INTEGER,
    current_period_end     INTEGER,
    trial_end              INTEGER,
    metadata_user_id       TEXT,
    past_due_since         INTEGER,
    -- `created` of the Stripe event whose snapshot this row holds; stale
    -- deliveries compare against it.
    source_created         INTEGER NOT NULL,
    created_at             INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    updated_at             INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER))
) STRICT;
CREATE INDEX subscriptions_customer_id_idx ON subscriptions (customer_id);

CREATE TABLE licenses (
    id              TEXT NOT NULL PRIMARY KEY,
    subscription_id TEXT NOT NULL UNIQUE REFERENCES subscriptions (id),
    key             TEXT NOT NULL UNIQUE,
    -- SHA-256 of the key: lookups go through it.
    key_hash        BLOB NOT NULL UNIQUE,
    status          TEXT NOT NULL CHECK (status IN ('active', 'suspended', 'expired', 'revoked')),
    plan_id         TEXT,
    max_devices     INTEGER NOT NULL CHECK (max_devices > 0 AND max_devices <= 2147483647),
    expires_at      INTEGER,
    grace_ends_at   INTEGER,
    created_at      INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    updated_at      INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER))
) STRICT;

CREATE TABLE payments (
    id                     TEXT NOT NULL PRIMARY KEY,
    stripe_invoice_id      TEXT NOT NULL UNIQUE,
    customer_id            TEXT NOT NULL REFERENCES customers (id),
    stripe_subscription_id TEXT,
    amount                 INTEGER NOT NULL,
    currency               TEXT NOT NULL,
    status                 TEXT NOT NULL CHECK (status IN ('paid', 'failed', 'action_required')),
    paid_at                INTEGER,
    created_at             INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    updated_at             INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER))
) STRICT;
CREATE INDEX payments_customer_id_idx ON payments (customer_id, created_at DESC);

-- The audit trail: one row per fact, whoever caused it.
CREATE TABLE subscription_changes (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription_id TEXT NOT NULL REFERENCES subscriptions (id),
    kind            TEXT NOT NULL,
    from_status     TEXT,
    to_status       TEXT,
    detail          TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(detail)),
    actor           TEXT NOT NULL,
    stripe_event_id TEXT,
    created_at      INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER))
) STRICT;
CREATE INDEX subscription_changes_subscription_idx ON subscription_changes (subscription_id, id DESC);

-- Every delivery we accepted. A row is written in the same transaction as
-- the event's effects, so its presence means "applied"; failures are
-- recorded afterwards in their own statement.
CREATE TABLE webhook_events (
    id           TEXT NOT NULL PRIMARY KEY,
    type         TEXT NOT NULL,
    created      INTEGER NOT NULL,
    api_version  TEXT,
    status       TEXT NOT NULL CHECK (status IN ('processing', 'processed', 'ignored', 'failed')),
    note         TEXT,
    attempts     INTEGER NOT NULL DEFAULT 1,
    last_error   TEXT,
    received_at  INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    processed_at INTEGER
) STRICT;

-- Client-visible changes, written in the transaction that made them. Write
-- transactions are serialised (one writer), so ids become visible in id
-- order: the SSE replay log can use "id > last seen". AUTOINCREMENT keeps
-- ids growing even after pruning deletes the newest rows.
CREATE TABLE outbox_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    license_id TEXT,
    topic      TEXT NOT NULL,
    payload    TEXT NOT NULL CHECK (json_valid(payload)),
    created_at INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER))
) STRICT;
CREATE INDEX outbox_events_license_idx ON outbox_events (license_id, id);
