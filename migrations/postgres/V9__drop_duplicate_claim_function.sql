-- Claims are made by `sync_stripe`'s load, where a duplicate is simply not
-- claimed: nothing calls V4's function any more.
DROP FUNCTION billing_webhook_event_already_applied();
