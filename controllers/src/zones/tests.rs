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
