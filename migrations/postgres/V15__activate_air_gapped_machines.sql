-- Air-gapped activation (issue 17): a device activated from its owner's
-- dashboard for a machine with no network. It cannot heartbeat, so it keeps
-- its slot until deactivated whatever its plan's policy, and has no
-- heartbeat deadline.
ALTER TABLE devices ADD COLUMN air_gapped boolean NOT NULL DEFAULT false;
