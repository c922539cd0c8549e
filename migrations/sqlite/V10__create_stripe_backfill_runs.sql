-- The SQLite twin of migrations/postgres/V10.
CREATE TABLE stripe_backfill_runs (
    id          TEXT NOT NULL PRIMARY KEY,
    status      TEXT NOT NULL CHECK (status IN ('running', 'finished', 'superseded')),
    since       INTEGER,
    resource    TEXT NOT NULL,
    after_id    TEXT,
    counts      TEXT NOT NULL CHECK (json_valid(counts)),
    started_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    finished_at INTEGER
) STRICT;
CREATE INDEX stripe_backfill_runs_running_idx ON stripe_backfill_runs (started_at DESC) WHERE status = 'running';
