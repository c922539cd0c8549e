-- What paid each subscription invoice (issue 17): the payment intent, or
-- the charge when there is none, recorded when the invoice was paid (the
-- invoice's own `payment_intent`/`charge` before basil, `invoice_payment`
-- from basil on). A later refund or dispute names them: through the
-- invoice's payment row they lead to its subscription and license, and
-- nothing else links a charge to a license.
CREATE TABLE invoice_charges (
    payment_key       text PRIMARY KEY,
    stripe_invoice_id text NOT NULL,
    stripe_charge_id  text,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX invoice_charges_charge_idx ON invoice_charges (stripe_charge_id) WHERE stripe_charge_id IS NOT NULL;

-- Each dispute of a linked charge, as far as it went: a closed one is
-- never opened again, so a `closed` that overtakes its `created` leaves
-- what in-order delivery does.
CREATE TABLE charge_disputes (
    stripe_dispute_id text PRIMARY KEY,
    license_id        uuid NOT NULL REFERENCES licenses (id),
    status            text NOT NULL,
    closed            boolean NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
-- A license's open disputes: one won while another is open keeps it suspended.
CREATE INDEX charge_disputes_open_idx ON charge_disputes (license_id) WHERE NOT closed;
