-- Perpetual licenses bought through Stripe Checkout (issue 17). A Stripe
-- license now comes from a subscription or from one paid Checkout Session;
-- a manual license still has no subscription.
ALTER TABLE licenses DROP CONSTRAINT licenses_source_matches_subscription;
ALTER TABLE licenses ADD CONSTRAINT licenses_manual_has_no_subscription
    CHECK (source = 'stripe' OR subscription_id IS NULL);

-- One license per session, ever (the primary key makes a duplicate or
-- out-of-order delivery issue nothing). The payment intent is what a later
-- charge (a refund, a dispute) names: it links the charge to its license.
CREATE TABLE purchases (
    stripe_checkout_session_id text PRIMARY KEY,
    license_id                 uuid NOT NULL UNIQUE REFERENCES licenses (id),
    customer_id                uuid REFERENCES customers (id),
    stripe_payment_intent_id   text UNIQUE,
    created_at                 timestamptz NOT NULL DEFAULT now()
);

-- While a dispute of the charge that paid for a license is open, the
-- license is suspended; only the dispute's end clears it (an admin's
-- suspension is kept apart, in admin_suspended_at).
ALTER TABLE licenses ADD COLUMN disputed_at timestamptz;
