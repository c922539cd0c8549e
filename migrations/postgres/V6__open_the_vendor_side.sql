-- The vendor's side (issue 14): licenses the vendor issues itself, admin
-- overrides that Stripe events do not undo, admin API tokens, and enough of
-- each Stripe delivery to list and replay it.

-- A manual license (a comp, a reseller deal, a replacement) has no
-- subscription behind it and names its user itself.
ALTER TABLE licenses ALTER COLUMN subscription_id DROP NOT NULL;
ALTER TABLE licenses
    ADD COLUMN source               text NOT NULL DEFAULT 'stripe' CHECK (source IN ('stripe', 'manual')),
    ADD COLUMN user_id              text,
    ADD COLUMN entitlements         jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN metadata             jsonb NOT NULL DEFAULT '{}',
    -- Admin overrides: the terms Stripe events derive give way to them.
    ADD COLUMN max_devices_override integer CHECK (max_devices_override > 0),
    ADD COLUMN expires_at_override  timestamptz,
    -- Set by an admin suspension, cleared only by an admin reinstatement.
    ADD COLUMN admin_suspended_at   timestamptz,
    ADD CONSTRAINT licenses_source_matches_subscription
        CHECK ((source = 'stripe') = (subscription_id IS NOT NULL));
CREATE INDEX licenses_user_id_idx ON licenses (user_id) WHERE user_id IS NOT NULL;
-- Admin listings walk licenses newest first with a (created_at, id) cursor.
CREATE INDEX licenses_created_idx ON licenses (created_at DESC, id DESC);
CREATE INDEX devices_license_idx ON devices (license_id);

-- Changes to a license itself that no subscription carries: admin actions
-- (issue, override, suspend, reinstate, revoke, renew), on any license.
CREATE TABLE license_changes (
    id         bigserial PRIMARY KEY,
    license_id uuid NOT NULL REFERENCES licenses (id),
    kind       text NOT NULL,
    actor      text NOT NULL,
    detail     jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX license_changes_license_idx ON license_changes (license_id, id DESC);
CREATE INDEX license_changes_created_idx ON license_changes (created_at DESC, id DESC);
CREATE INDEX subscription_changes_created_idx ON subscription_changes (created_at DESC, id DESC);
CREATE INDEX device_changes_created_idx ON device_changes (created_at DESC, id DESC);
CREATE INDEX device_changes_license_idx ON device_changes (license_id, id DESC);

-- Admin API tokens, stored only as the SHA-256 of the token. A name is
-- unique among live tokens; a revoked token keeps its row (and its name in
-- the audit trail).
CREATE TABLE admin_tokens (
    id           uuid PRIMARY KEY,
    name         text NOT NULL,
    token_hash   bytea NOT NULL UNIQUE,
    scopes       text[] NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE UNIQUE INDEX admin_tokens_live_name_idx ON admin_tokens (name) WHERE revoked_at IS NULL;

-- What a replay needs: the signed body as received (its signature was
-- checked then), the object it was about, and how often it came again.
ALTER TABLE webhook_events
    ADD COLUMN payload    bytea,
    ADD COLUMN object_id  text,
    ADD COLUMN duplicates integer NOT NULL DEFAULT 0;
CREATE INDEX webhook_events_received_idx ON webhook_events (received_at DESC, id DESC);
