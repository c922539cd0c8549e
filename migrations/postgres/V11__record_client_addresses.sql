-- Where a change was asked from: the client address of the request (behind
-- a trusted proxy, the address it names). NULL for Stripe's deliveries and
-- the server's own background work.
ALTER TABLE subscription_changes ADD COLUMN client_addr text;
ALTER TABLE license_changes ADD COLUMN client_addr text;
ALTER TABLE device_changes ADD COLUMN client_addr text;
