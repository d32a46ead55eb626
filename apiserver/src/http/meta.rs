//! Object metadata the server owns: uid, timestamps, resourceVersion, generation.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// Now, as RFC 3339 in UTC with second precision (`2026-11-23T14:05:09Z`), as Kubernetes
/// writes timestamps.
pub(crate) fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

/// Seconds since the epoch as RFC 3339 in UTC.
pub(crate) fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Seconds from one RFC 3339 UTC timestamp (as [`rfc3339`] writes them) to another.
pub(crate) fn seconds_between(from: &str, to: &str) -> Option<u64> {
    Some(parse_rfc3339(to)?.saturating_sub(parse_rfc3339(from)?))
}

/// Seconds since the epoch of `YYYY-MM-DDTHH:MM:SS` (a trailing zone is ignored: UTC).
fn parse_rfc3339(t: &str) -> Option<u64> {
    let n = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    u64::try_from((era * 146_097 + doe - 719_468) * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

/// The object's `metadata`, created if missing; `None` if the object is not a JSON object.
pub(crate) fn metadata(object: &mut Value) -> Option<&mut serde_json::Map<String, Value>> {
    let obj = object.as_object_mut()?;
    let meta = obj.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    meta.as_object_mut()
}

/// A string field of `metadata`.
pub(crate) fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object["metadata"][field].as_str().filter(|s| !s.is_empty())
}

/// Sets `metadata.resourceVersion`.
pub(crate) fn set_resource_version(object: &mut Value, revision: u64) {
    if let Some(meta) = metadata(object) {
        meta.insert("resourceVersion".into(), json!(revision.to_string()));
    }
}

/// The finalizers of an object.
pub(crate) fn finalizers(object: &Value) -> Vec<String> {
    object["metadata"]["finalizers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The object with the fields the server owns taken out, as the store keeps it.
pub(crate) fn for_storage(object: &Value) -> Vec<u8> {
    let mut stored = object.clone();
    if let Some(meta) = metadata(&mut stored) {
        meta.remove("resourceVersion");
        meta.remove("managedFields");
        meta.remove("selfLink");
    }
    // Serializing a `Value` cannot fail.
    serde_json::to_vec(&stored).unwrap_or_default()
}

/// A fresh uid.
pub(crate) fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_441_509), "2026-11-23T13:45:09Z");
        assert_eq!(now_rfc3339().len(), 20);
        assert_eq!(
            seconds_between("2026-11-23T13:45:09Z", &rfc3339(1_795_441_519)),
            Some(10)
        );
        assert_eq!(seconds_between("garbage", "2026-11-23T13:45:09Z"), None);
    }

    #[test]
    fn storage_drops_server_fields() {
        let obj = json!({"metadata": {"name": "a", "resourceVersion": "5", "managedFields": []}});
        let stored: Value = serde_json::from_slice(&for_storage(&obj)).unwrap();
        assert_eq!(stored, json!({"metadata": {"name": "a"}}));
    }
}
