//! Any request head on an event-stream connection: parsed or refused with
//! one of the two documented codes, never a panic.
#![no_main]

use billing_server::stream_conn::parse_head;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|head: &[u8]| {
    let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 5000));
    if let Err(error) = parse_head(head, peer) {
        assert!(matches!(error.code, "MALFORMED_REQUEST" | "HEADERS_TOO_LARGE"), "{}", error.code);
    }
});
