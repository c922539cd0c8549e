-- Activations of a license on a machine ("terminals" in the dashboard).
CREATE TABLE devices (
    id                uuid PRIMARY KEY,
    license_id        uuid NOT NULL REFERENCES licenses (id),
    fingerprint       text NOT NULL,
    name              text,
    platform          text,
    app_version       text,
    -- SHA-256 of the activation token; the token itself is shown once.
    token_hash        bytea UNIQUE,
    status            text NOT NULL CHECK (status IN ('active', 'deactivated', 'dead')),
    activated_at      timestamptz NOT NULL,
    last_heartbeat_at timestamptz NOT NULL,
    deactivated_at    timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (license_id, fingerprint)
);
CREATE INDEX devices_alive_idx ON devices (last_heartbeat_at) WHERE status = 'active';

-- Audit of device lifecycle: activations, deactivations (by whom), deaths.
CREATE TABLE device_changes (
    id         bigserial PRIMARY KEY,
    device_id  uuid NOT NULL REFERENCES devices (id),
    license_id uuid NOT NULL REFERENCES licenses (id),
    kind       text NOT NULL,
    actor      text NOT NULL,
    detail     jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX device_changes_device_idx ON device_changes (device_id, id DESC);

CREATE INDEX outbox_events_created_idx ON outbox_events (created_at);
