-- The SQLite twin of migrations/postgres/V16 (timestamps as Unix
-- microseconds).
CREATE TABLE portal_sessions (
    code_hash  BLOB NOT NULL PRIMARY KEY,
    user_id    TEXT NOT NULL,
    return_url TEXT,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    expires_at INTEGER NOT NULL,
    used_at    INTEGER,
    used_from  TEXT
) STRICT;
CREATE INDEX portal_sessions_expires_idx ON portal_sessions (expires_at);
