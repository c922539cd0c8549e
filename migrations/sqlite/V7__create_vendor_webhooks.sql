-- The SQLite twin of migrations/postgres/V7 (events as a JSON array of strings).
CREATE TABLE webhook_endpoints (
    id          TEXT NOT NULL PRIMARY KEY,
    url         TEXT NOT NULL,
    events      TEXT NOT NULL CHECK (json_valid(events)),
    description TEXT,
    secret      TEXT NOT NULL,
    created_at  INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    deleted_at  INTEGER
) STRICT;
CREATE INDEX webhook_endpoints_created_idx ON webhook_endpoints (created_at, id);

CREATE TABLE webhook_messages (
    id              TEXT NOT NULL PRIMARY KEY,
    endpoint_id     TEXT NOT NULL REFERENCES webhook_endpoints (id),
    event_type      TEXT NOT NULL,
    payload         TEXT NOT NULL CHECK (json_valid(payload)),
    event_at        INTEGER NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    lease           TEXT,
    created_at      INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    delivered_at    INTEGER
) STRICT;
CREATE INDEX webhook_messages_due_idx ON webhook_messages (next_attempt_at) WHERE status = 'pending';
-- A claim reads each endpoint's due messages as one range of this index.
CREATE INDEX webhook_messages_pending_idx ON webhook_messages (endpoint_id, next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX webhook_messages_endpoint_idx ON webhook_messages (endpoint_id, created_at DESC, id DESC);

CREATE TABLE webhook_attempts (
    id              INTEGER PRIMARY KEY,
    message_id      TEXT NOT NULL REFERENCES webhook_messages (id),
    attempted_at    INTEGER NOT NULL,
    status_code     INTEGER,
    error           TEXT,
    duration_ms     INTEGER NOT NULL,
    next_attempt_at INTEGER
) STRICT;
CREATE INDEX webhook_attempts_message_idx ON webhook_attempts (message_id, id);
