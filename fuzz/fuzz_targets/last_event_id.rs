//! Any `Last-Event-ID` value: refused, or a non-negative id that reads back
//! from its decimal form.
#![no_main]

use billing_server::last_event_id;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|value: &[u8]| {
    if let Some(id) = last_event_id::parse(value) {
        assert!(id >= 0);
        assert_eq!(last_event_id::parse(id.to_string().as_bytes()), Some(id));
    }
});
