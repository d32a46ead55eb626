//! Tests of the zone controller's serial arithmetic.

use super::*;

#[test]
fn serials_only_go_up() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32;
    let first = next_serial(None);
    assert!(first >= now, "a new zone starts at the time now");
    assert_eq!(next_serial(Some(first)), first + 1, "then counts up");
    assert_eq!(
        next_serial(Some(now + 1000)),
        now + 1001,
        "ahead of the clock: still one more"
    );
    assert!(
        next_serial(Some(5)) >= now,
        "an old small serial jumps to the time now"
    );
    // RFC 1982: past 2^32 it wraps, and the wrapped value is "greater".
    assert!(next_serial(Some(u32::MAX)).wrapping_sub(u32::MAX) as i32 > 0);
}

#[test]
fn reverse_origins_cover_the_subnet_and_nothing_else() {
    let origins = |net: &str, prefix| reverse_origins(net.parse().unwrap(), prefix);
    assert_eq!(origins("10.20.1.0", 24), ["1.20.10.in-addr.arpa."]);
    assert_eq!(origins("10.20.1.128", 25), ["1.20.10.in-addr.arpa."]);
    let twenty = origins("10.20.16.0", 20);
    assert_eq!(twenty.len(), 16);
    assert_eq!(twenty[0], "16.20.10.in-addr.arpa.");
    assert_eq!(twenty[15], "31.20.10.in-addr.arpa.");
    assert_eq!(origins("10.20.0.0", 16), ["20.10.in-addr.arpa."]);
    assert_eq!(origins("172.16.0.0", 12).len(), 16);
    assert_eq!(origins("10.0.0.0", 8), ["10.in-addr.arpa."]);
}
