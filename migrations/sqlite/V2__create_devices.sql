-- Activations of a license on a machine ("terminals" in the dashboard).
-- Same dialect mapping as V1.
CREATE TABLE devices (
    id                TEXT NOT NULL PRIMARY KEY,
    license_id        TEXT NOT NULL REFERENCES licenses (id),
    fingerprint       TEXT NOT NULL,
    name              TEXT,
    platform          TEXT,
    app_version       TEXT,
    -- SHA-256 of the activation token; the token itself is shown once.
    token_hash        BLOB UNIQUE,
    status            TEXT NOT NULL CHECK (status IN ('active', 'deactivated', 'dead')),
    activated_at      INTEGER NOT NULL,
    last_heartbeat_at INTEGER NOT NULL,
    deactivated_at    INTEGER,
    created_at        INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    updated_at        INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    UNIQUE (license_id, fingerprint)
) STRICT;
CREATE INDEX devices_alive_idx ON devices (last_heartbeat_at) WHERE status = 'active';

-- Audit of device lifecycle: activations, deactivations (by whom), deaths.
CREATE TABLE device_changes (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id  TEXT NOT NULL REFERENCES devices (id),
    license_id TEXT NOT NULL REFERENCES licenses (id),
    kind       TEXT NOT NULL,
    actor      TEXT NOT NULL,
    detail     TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(detail)),
    created_at INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER))
) STRICT;
CREATE INDEX device_changes_device_idx ON device_changes (device_id, id DESC);

CREATE INDEX outbox_events_created_idx ON outbox_events (created_at);
