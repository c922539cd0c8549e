-- Signed webhooks to the vendor's own systems (issue 14). An endpoint keeps
-- its secret (it signs every message); a deleted endpoint keeps its row and
-- its history.
CREATE TABLE webhook_endpoints (
    id          uuid PRIMARY KEY,
    url         text NOT NULL,
    -- Event types, or '*' for all of them.
    events      text[] NOT NULL,
    description text,
    secret      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX webhook_endpoints_created_idx ON webhook_endpoints (created_at, id);

-- One message per endpoint and outbox event, written in the outbox's own
-- transaction. Its id is the `webhook-id` of every attempt; the body is
-- rebuilt from (event_type, event_at, payload), so retries send the same
-- bytes. `next_attempt_at` is also the claim lease: a claimed message is
-- pushed past the attempt's timeout, so a sender that dies mid-attempt
-- leaves it due again.
CREATE TABLE webhook_messages (
    id              text PRIMARY KEY,
    endpoint_id     uuid NOT NULL REFERENCES webhook_endpoints (id),
    event_type      text NOT NULL,
    payload         jsonb NOT NULL,
    event_at        timestamptz NOT NULL,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    -- Who holds the current claim; an attempt is recorded only by its holder.
    lease           uuid,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz
);
CREATE INDEX webhook_messages_due_idx ON webhook_messages (next_attempt_at) WHERE status = 'pending';
-- A claim reads each endpoint's due messages as one range of this index.
CREATE INDEX webhook_messages_pending_idx ON webhook_messages (endpoint_id, next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX webhook_messages_endpoint_idx ON webhook_messages (endpoint_id, created_at DESC, id DESC);

CREATE TABLE webhook_attempts (
    id              bigserial PRIMARY KEY,
    message_id      text NOT NULL REFERENCES webhook_messages (id),
    attempted_at    timestamptz NOT NULL,
    status_code     integer,
    error           text,
    duration_ms     integer NOT NULL,
    -- When the message is tried again; NULL once delivered or failed.
    next_attempt_at timestamptz
);
CREATE INDEX webhook_attempts_message_idx ON webhook_attempts (message_id, id);
