-- The customer portal (issue 19): the one-time codes a vendor's backend
-- hands a customer (`POST /api/admin/portal-sessions`). Only a code's
-- SHA-256 is stored; a code opens the portal once (used_at), before
-- expires_at. created_by is the audit trail's actor of the token that made
-- it (`admin:<name>`); used_from the address that exchanged it.
CREATE TABLE portal_sessions (
    code_hash  bytea PRIMARY KEY,
    user_id    text NOT NULL,
    return_url text,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz,
    used_from  text
);
CREATE INDEX portal_sessions_expires_idx ON portal_sessions (expires_at);
