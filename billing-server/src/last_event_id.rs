//! The `Last-Event-ID` request header of an event stream.
//!
//! Its value is the id of the last event the client received, which this
//! server wrote as an outbox id: decimal digits, nothing else. Outbox ids
//! start at 1, so a negative or signed number was never sent by us and is
//! refused rather than read as "replay everything"; `0` is accepted and
//! means "before the first event", a sentinel clients use before they have
//! seen one.

/// The event id a `Last-Event-ID` value names, or `None` when the value is
/// not one: anything but ASCII digits (surrounding spaces and tabs aside,
/// as HTTP allows), or a number past `i64::MAX`.
pub fn parse(value: &[u8]) -> Option<i64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn reads_the_ids_we_send_and_nothing_else() {
        for (value, expected) in [
            (&b"42"[..], Some(42)),
            (b" 7\t", Some(7)),
            (b"0", Some(0)),
            (b"9223372036854775807", Some(i64::MAX)),
            (b"9223372036854775808", None),
            (b"-1", None),
            (b"+5", None),
            (b"", None),
            (b"  ", None),
            (b"1 2", None),
            (b"abc", None),
            (b"\xff", None),
        ] {
            assert_eq!(parse(value), expected, "{value:?}");
        }
    }
}
