//! Conditions as Kubernetes keeps them: one entry per type, `lastTransitionTime` moving only
//! when the status changes.

use keel_schemas::wellknown::READY;
use serde_json::{Value, json};

/// One condition to set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition<'a> {
    /// The type (`Ready`, `Scheduled`).
    pub type_: &'a str,
    /// `True`, `False` or `Unknown`.
    pub status: &'a str,
    /// A CamelCase reason.
    pub reason: &'a str,
    /// Details for people.
    pub message: &'a str,
}

// === impl Condition ===

impl<'a> Condition<'a> {
    /// A condition of `type_`.
    pub fn new(type_: &'a str, status: &'a str, reason: &'a str, message: &'a str) -> Self {
        Condition {
            type_,
            status,
            reason,
            message,
        }
    }

    /// The `Ready` condition most objects report.
    pub fn ready(status: &'a str, reason: &'a str, message: &'a str) -> Self {
        Condition::new(READY, status, reason, message)
    }
}

/// Sets `condition` in the `conditions` array of `status` (created if missing). Returns
/// whether anything changed. `lastTransitionTime` is set to `now` only when the status
/// changes (or the condition is new).
pub fn set_condition(status: &mut Value, condition: &Condition<'_>, now: &str) -> bool {
    if !status.is_object() {
        *status = json!({});
    }
    if !status["conditions"].is_array() {
        status["conditions"] = json!([]);
    }
    let Some(list) = status["conditions"].as_array_mut() else {
        return false;
    };
    let entry = json!({
        "type": condition.type_, "status": condition.status,
        "reason": condition.reason, "message": condition.message,
    });
    match list
        .iter_mut()
        .find(|c| c["type"].as_str() == Some(condition.type_))
    {
        Some(existing) => {
            let transition = existing["status"].as_str() != Some(condition.status);
            let same = !transition
                && existing["reason"].as_str() == Some(condition.reason)
                && existing["message"].as_str() == Some(condition.message);
            if same {
                return false;
            }
            let time = if transition {
                Value::String(now.to_string())
            } else {
                existing["lastTransitionTime"].clone()
            };
            let mut entry = entry;
            entry["lastTransitionTime"] = time;
            *existing = entry;
            true
        }
        None => {
            let mut entry = entry;
            entry["lastTransitionTime"] = Value::String(now.to_string());
            list.push(entry);
            true
        }
    }
}

/// The condition of `type_` in an object's `status.conditions`.
pub fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"].as_str() == Some(type_))
}

/// The status (`True`, `False`, `Unknown`) of the condition `type_`, if present.
pub fn condition_status<'a>(object: &'a Value, type_: &str) -> Option<&'a str> {
    condition(object, type_)?["status"].as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let mut status = Value::Null;
        let ready = |s, r| Condition {
            type_: "Ready",
            status: s,
            reason: r,
            message: "",
        };
        assert!(set_condition(
            &mut status,
            &ready("False", "Starting"),
            "t1"
        ));
        assert!(!set_condition(
            &mut status,
            &ready("False", "Starting"),
            "t2"
        ));
        assert!(set_condition(&mut status, &ready("False", "Booting"), "t3"));
        assert_eq!(status["conditions"][0]["lastTransitionTime"], "t1");
        assert!(set_condition(&mut status, &ready("True", "Running"), "t4"));
        assert_eq!(status["conditions"][0]["lastTransitionTime"], "t4");
        let obj = json!({"status": status});
        assert_eq!(condition_status(&obj, "Ready"), Some("True"));
        assert_eq!(condition_status(&obj, "Other"), None);
        assert_eq!(obj["status"]["conditions"].as_array().unwrap().len(), 1);
    }
}
