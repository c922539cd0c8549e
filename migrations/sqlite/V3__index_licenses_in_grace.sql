-- The reaper looks for active licenses whose grace period has ended.
CREATE INDEX licenses_in_grace_idx ON licenses (grace_ends_at) WHERE status = 'active' AND grace_ends_at IS NOT NULL;
