-- How desktop software is sold (issue 17): licenses bought once
-- (perpetual) with an updates window, card-less trials, and devices whose
-- plans keep their slots.

-- A license's kind is kept as issued (a plan's may change in the plans
-- file; a license already sold stays what it was). `updates_until`: builds
-- released after it are not covered. `trial`: a card-less trial.
ALTER TABLE licenses
    ADD COLUMN kind          text NOT NULL DEFAULT 'subscription' CHECK (kind IN ('subscription', 'perpetual')),
    ADD COLUMN updates_until timestamptz,
    ADD COLUMN trial         boolean NOT NULL DEFAULT false;

-- When a silent device is dead: its last heartbeat plus its plan's window;
-- NULL when its plan keeps slots (node-locked). The reaper sweeps this
-- index and judges what it finds by the plan as configured now, so a
-- deadline stamped under another window is corrected, not trusted; the one
-- every active device gets here (its last heartbeat) is corrected by the
-- first sweep.
ALTER TABLE devices ADD COLUMN heartbeat_deadline timestamptz;
UPDATE devices SET heartbeat_deadline = last_heartbeat_at WHERE status = 'active';
CREATE INDEX devices_deadline_idx ON devices (heartbeat_deadline) WHERE status = 'active';
-- The reaper's old sweep order, which nothing else reads.
DROP INDEX devices_alive_idx;

-- One trial per plan and machine, ever: the key is the SHA-256 of the
-- device fingerprint, so a trial expired or deactivated long ago still
-- counts.
CREATE TABLE trial_uses (
    plan_id          text NOT NULL,
    fingerprint_hash bytea NOT NULL,
    license_id       uuid NOT NULL REFERENCES licenses (id),
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (plan_id, fingerprint_hash)
);
