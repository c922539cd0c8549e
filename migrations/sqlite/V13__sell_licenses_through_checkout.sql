-- The SQLite twin of migrations/postgres/V13. SQLite cannot change a CHECK,
-- so `licenses` is rebuilt as in V6 (migrations run with foreign keys off
-- and are checked afterwards; references to `licenses` follow the rename).
CREATE TABLE licenses_v13 (
    id                   TEXT NOT NULL PRIMARY KEY,
    subscription_id      TEXT UNIQUE REFERENCES subscriptions (id),
    key                  TEXT NOT NULL UNIQUE,
    key_hash             BLOB NOT NULL UNIQUE,
    status               TEXT NOT NULL CHECK (status IN ('active', 'suspended', 'expired', 'revoked')),
    plan_id              TEXT,
    max_devices          INTEGER NOT NULL CHECK (max_devices > 0 AND max_devices <= 2147483647),
    expires_at           INTEGER,
    grace_ends_at        INTEGER,
    created_at           INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    updated_at           INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    source               TEXT NOT NULL DEFAULT 'stripe' CHECK (source IN ('stripe', 'manual')),
    user_id              TEXT,
    entitlements         TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(entitlements)),
    metadata             TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata)),
    max_devices_override INTEGER CHECK (max_devices_override > 0 AND max_devices_override <= 2147483647),
    expires_at_override  INTEGER,
    admin_suspended_at   INTEGER,
    kind                 TEXT NOT NULL DEFAULT 'subscription' CHECK (kind IN ('subscription', 'perpetual')),
    updates_until        INTEGER,
    trial                INTEGER NOT NULL DEFAULT 0 CHECK (trial IN (0, 1)),
    disputed_at          INTEGER,
    CHECK (source = 'stripe' OR subscription_id IS NULL)
) STRICT;
INSERT INTO licenses_v13 (id, subscription_id, key, key_hash, status, plan_id, max_devices, expires_at,
                          grace_ends_at, created_at, updated_at, source, user_id, entitlements, metadata,
                          max_devices_override, expires_at_override, admin_suspended_at, kind, updates_until, trial)
    SELECT id, subscription_id, key, key_hash, status, plan_id, max_devices, expires_at,
           grace_ends_at, created_at, updated_at, source, user_id, entitlements, metadata,
           max_devices_override, expires_at_override, admin_suspended_at, kind, updates_until, trial
    FROM licenses;
DROP TABLE licenses;
ALTER TABLE licenses_v13 RENAME TO licenses;
CREATE INDEX licenses_in_grace_idx ON licenses (grace_ends_at) WHERE status = 'active' AND grace_ends_at IS NOT NULL;
CREATE INDEX licenses_user_id_idx ON licenses (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX licenses_created_idx ON licenses (created_at DESC, id DESC);

CREATE TABLE purchases (
    stripe_checkout_session_id TEXT NOT NULL PRIMARY KEY,
    license_id                 TEXT NOT NULL UNIQUE REFERENCES licenses (id),
    customer_id                TEXT REFERENCES customers (id),
    stripe_payment_intent_id   TEXT UNIQUE,
    created_at                 INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER))
) STRICT;
