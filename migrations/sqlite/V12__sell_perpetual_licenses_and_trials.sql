-- The SQLite twin of migrations/postgres/V12 (same dialect mapping as V1).

ALTER TABLE licenses ADD COLUMN kind TEXT NOT NULL DEFAULT 'subscription'
    CHECK (kind IN ('subscription', 'perpetual'));
ALTER TABLE licenses ADD COLUMN updates_until INTEGER;
ALTER TABLE licenses ADD COLUMN trial INTEGER NOT NULL DEFAULT 0 CHECK (trial IN (0, 1));

ALTER TABLE devices ADD COLUMN heartbeat_deadline INTEGER;
UPDATE devices SET heartbeat_deadline = last_heartbeat_at WHERE status = 'active';
CREATE INDEX devices_deadline_idx ON devices (heartbeat_deadline) WHERE status = 'active';
DROP INDEX devices_alive_idx;

CREATE TABLE trial_uses (
    plan_id          TEXT NOT NULL,
    fingerprint_hash BLOB NOT NULL,
    license_id       TEXT NOT NULL REFERENCES licenses (id),
    created_at       INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    PRIMARY KEY (plan_id, fingerprint_hash)
) STRICT;
