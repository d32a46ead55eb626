//! Byte quantities as Kubernetes writes them: `512Mi`, `1Gi`, `10G`, `1.5Gi`, `100`.

use serde_json::Value;

/// Suffixes and the number of bytes each stands for.
const SUFFIXES: &[(&str, u128)] = &[
    ("", 1),
    ("k", 1_000),
    ("M", 1_000_000),
    ("G", 1_000_000_000),
    ("T", 1_000_000_000_000),
    ("P", 1_000_000_000_000_000),
    ("E", 1_000_000_000_000_000_000),
    ("Ki", 1 << 10),
    ("Mi", 1 << 20),
    ("Gi", 1 << 30),
    ("Ti", 1 << 40),
    ("Pi", 1 << 50),
    ("Ei", 1 << 60),
];

/// What a byte quantity must look like, as errors say it.
pub const BYTES_RULE: &str = "must be a byte quantity: a number with an optional suffix Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P or E (512Mi, 1Gi, 10G)";

/// The number of bytes a quantity stands for: digits with an optional decimal fraction, then
/// an optional suffix, binary (`Ki`, `Mi`, `Gi`, `Ti`, `Pi`, `Ei`: powers of 1024) or decimal
/// (`k`, `M`, `G`, `T`, `P`, `E`: powers of 1000). `None` for anything else, and for a fraction
/// that is not a whole number of bytes (`0.1Ki`).
///
/// ```
/// assert_eq!(keel_schemas::parse_quantity("1Gi"), Some(1 << 30));
/// assert_eq!(keel_schemas::parse_quantity("1.5k"), Some(1500));
/// assert_eq!(keel_schemas::parse_quantity("1GB"), None);
/// ```
pub fn parse_quantity(s: &str) -> Option<u128> {
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let multiplier = SUFFIXES.iter().find(|(n, _)| *n == suffix)?.1;
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) if !f.is_empty() && !f.contains('.') => (w, f),
        Some(_) => return None,
        None => (number, ""),
    };
    if whole.is_empty() {
        return None;
    }
    let whole: u128 = whole.parse().ok()?;
    let mut bytes = whole.checked_mul(multiplier)?;
    if !fraction.is_empty() {
        let digits = u32::try_from(fraction.len()).ok()?;
        let scale = 10u128.checked_pow(digits)?;
        let part = fraction.parse::<u128>().ok()?.checked_mul(multiplier)?;
        if part % scale != 0 {
            return None;
        }
        bytes = bytes.checked_add(part / scale)?;
    }
    Some(bytes)
}

/// The bytes of a quantity written as a string or as a plain JSON integer.
pub fn quantity_of(value: &Value) -> Option<u128> {
    match value {
        Value::String(s) => parse_quantity(s),
        Value::Number(n) => n.as_u64().map(u128::from),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_decimal_and_plain_quantities() {
        assert_eq!(parse_quantity("100"), Some(100));
        assert_eq!(parse_quantity("0"), Some(0));
        assert_eq!(parse_quantity("512Mi"), Some(512 << 20));
        assert_eq!(parse_quantity("1Gi"), Some(1 << 30));
        assert_eq!(parse_quantity("10G"), Some(10_000_000_000));
        assert_eq!(parse_quantity("1.5Gi"), Some(3 << 29));
        assert_eq!(parse_quantity("2k"), Some(2000));
        assert_eq!(parse_quantity("1Ei"), Some(1 << 60));
        assert_eq!(quantity_of(&serde_json::json!(4096)), Some(4096));
    }

    #[test]
    fn refuses_what_is_not_a_byte_quantity() {
        for bad in [
            "", "Gi", "1GB", "1K", "1 Gi", "-1", "1.", ".5", "1.2.3", "0.1Ki", "500m", "1e3",
        ] {
            assert_eq!(parse_quantity(bad), None, "{bad:?}");
        }
        assert_eq!(parse_quantity(&"9".repeat(60)), None, "overflow");
        assert_eq!(quantity_of(&serde_json::json!(-1)), None);
    }
}
