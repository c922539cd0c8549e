-- A webhook delivery is claimed by a statement sent in the same pipeline as
-- the transaction's next statement, possibly its COMMIT. A duplicate must
-- therefore abort the transaction rather than merely claim nothing: the
-- claim calls this when the delivery was already applied. It fails as the
-- duplicate key it is.
CREATE FUNCTION billing_webhook_event_already_applied() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'webhook event already applied'
        USING ERRCODE = 'unique_violation', CONSTRAINT = 'webhook_events_pkey';
END
$$;
