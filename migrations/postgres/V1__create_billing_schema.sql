-- Customers link a Stripe customer to our dashboard's user id. The user may
-- be unknown for a while: a subscription event can arrive before the
-- checkout that names the user.
CREATE TABLE customers (
    id                 uuid PRIMARY KEY,
    stripe_customer_id text NOT NULL UNIQUE,
    user_id            text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX customers_user_id_idx ON customers (user_id);

CREATE TABLE subscriptions (
    id                     uuid PRIMARY KEY,
    stripe_subscription_id text NOT NULL UNIQUE,
    customer_id            uuid NOT NULL REFERENCES customers (id),
    status                 text NOT NULL CHECK (status IN ('incomplete', 'incomplete_expired', 'trialing',
                               'active', 'past_due', 'unpaid', 'canceled', 'paused')),
    plan_id                text,
    price_id               text,
    item_id                text,
    cancel_at_period_end   boolean NOT NULL,
    cancel_at              timestamptz,
    canceled_at            timestamptz,
    ended_at               timestamptz,
    current_period_start   timestamptz,
    current_period_end     timestamptz,
    trial_end              timestamptz,
    metadata_user_id       text,
    past_due_since         timestamptz,
    -- `created` of the Stripe event whose snapshot this row holds; stale
    -- deliveries compare against it.
    source_created         bigint NOT NULL,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscriptions_customer_id_idx ON subscriptions (customer_id);

CREATE TABLE licenses (
    id              uuid PRIMARY KEY,
    subscription_id uuid NOT NULL UNIQUE REFERENCES subscriptions (id),
    key             text NOT NULL UNIQUE,
    -- SHA-256 of the key: lookups go through it.
    key_hash        bytea NOT NULL UNIQUE,
    status          text NOT NULL CHECK (status IN ('active', 'suspended', 'expired', 'revoked')),
    plan_id         text,
    max_devices     integer NOT NULL CHECK (max_devices > 0),
    expires_at      timestamptz,
    grace_ends_at   timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE payments (
    id                     uuid PRIMARY KEY,
    stripe_invoice_id      text NOT NULL UNIQUE,
    customer_id            uuid NOT NULL REFERENCES customers (id),
    stripe_subscription_id text,
    amount                 bigint NOT NULL,
    currency               text NOT NULL,
    status                 text NOT NULL CHECK (status IN ('paid', 'failed', 'action_required')),
    paid_at                timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payments_customer_id_idx ON payments (customer_id, created_at DESC);

-- The audit trail: one row per fact, whoever caused it.
CREATE TABLE subscription_changes (
    id              bigserial PRIMARY KEY,
    subscription_id uuid NOT NULL REFERENCES subscriptions (id),
    kind            text NOT NULL,
    from_status     text,
    to_status       text,
    detail          jsonb NOT NULL DEFAULT '{}',
    actor           text NOT NULL,
    stripe_event_id text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscription_changes_subscription_idx ON subscription_changes (subscription_id, id DESC);

-- Every delivery we accepted. A row is written in the same transaction as
-- the event's effects, so its presence means "applied"; failures are
-- recorded afterwards in their own statement.
CREATE TABLE webhook_events (
    id           text PRIMARY KEY,
    type         text NOT NULL,
    created      bigint NOT NULL,
    api_version  text,
    status       text NOT NULL CHECK (status IN ('processing', 'processed', 'ignored', 'failed')),
    note         text,
    attempts     integer NOT NULL DEFAULT 1,
    last_error   text,
    received_at  timestamptz NOT NULL DEFAULT now(),
    processed_at timestamptz
);

-- Client-visible changes, written in the transaction that made them. Ids are
-- handed out under a transaction-scoped advisory lock, so they become
-- visible in id order: the SSE replay log can use "id > last seen".
CREATE TABLE outbox_events (
    id         bigserial PRIMARY KEY,
    license_id uuid,
    topic      text NOT NULL,
    payload    jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_events_license_idx ON outbox_events (license_id, id);
