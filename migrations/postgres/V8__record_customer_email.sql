-- The admin customer search (issue 14) finds a customer by e-mail, which
-- V6 does not keep. `email_created` is the `created` of the Stripe event the
-- address came from: a customer.updated delivered late must not bring back
-- an older address.
ALTER TABLE customers
    ADD COLUMN email         text,
    ADD COLUMN email_created bigint;
CREATE INDEX customers_email_idx ON customers (lower(email)) WHERE email IS NOT NULL;
-- The admin customer listing walks customers newest first.
CREATE INDEX customers_created_idx ON customers (created_at DESC, id DESC);
