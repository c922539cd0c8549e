//! Any webhook body: `Event::parse` answers Ok or Err, never panics.
#![no_main]

use billing_core::stripe::Event;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let _ = Event::parse(body);
});
