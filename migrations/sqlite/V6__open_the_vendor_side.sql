-- The SQLite twin of migrations/postgres/V6. SQLite cannot drop a NOT NULL,
-- so `licenses` is rebuilt (the store runs migrations with foreign keys off
-- and checks them afterwards; references to `licenses` follow the rename).
CREATE TABLE licenses_v6 (
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
    CHECK ((source = 'stripe') = (subscription_id IS NOT NULL))
) STRICT;
INSERT INTO licenses_v6 (id, subscription_id, key, key_hash, status, plan_id, max_devices, expires_at,
                         grace_ends_at, created_at, updated_at)
    SELECT id, subscription_id, key, key_hash, status, plan_id, max_devices, expires_at,
           grace_ends_at, created_at, updated_at
    FROM licenses;
DROP TABLE licenses;
ALTER TABLE licenses_v6 RENAME TO licenses;
CREATE INDEX licenses_in_grace_idx ON licenses (grace_ends_at) WHERE status = 'active' AND grace_ends_at IS NOT NULL;
CREATE INDEX licenses_user_id_idx ON licenses (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX licenses_created_idx ON licenses (created_at DESC, id DESC);
CREATE INDEX devices_license_idx ON devices (license_id);

CREATE TABLE license_changes (
    id         INTEGER PRIMARY KEY,
    license_id TEXT NOT NULL REFERENCES licenses (id),
    kind       TEXT NOT NULL,
    actor      TEXT NOT NULL,
    detail     TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(detail)),
    created_at INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER))
) STRICT;
CREATE INDEX license_changes_license_idx ON license_changes (license_id, id DESC);
CREATE INDEX license_changes_created_idx ON license_changes (created_at DESC, id DESC);
CREATE INDEX subscription_changes_created_idx ON subscription_changes (created_at DESC, id DESC);
CREATE INDEX device_changes_created_idx ON device_changes (created_at DESC, id DESC);
CREATE INDEX device_changes_license_idx ON device_changes (license_id, id DESC);

-- Scopes as a JSON array of strings.
CREATE TABLE admin_tokens (
    id           TEXT NOT NULL PRIMARY KEY,
    name         TEXT NOT NULL,
    token_hash   BLOB NOT NULL UNIQUE,
    scopes       TEXT NOT NULL CHECK (json_valid(scopes)),
    created_at   INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    last_used_at INTEGER,
    revoked_at   INTEGER
) STRICT;
CREATE UNIQUE INDEX admin_tokens_live_name_idx ON admin_tokens (name) WHERE revoked_at IS NULL;

ALTER TABLE webhook_events ADD COLUMN payload BLOB;
ALTER TABLE webhook_events ADD COLUMN object_id TEXT;
ALTER TABLE webhook_events ADD COLUMN duplicates INTEGER NOT NULL DEFAULT 0;
CREATE INDEX webhook_events_received_idx ON webhook_events (received_at DESC, id DESC);
