//! Conditions as Kubernetes keeps them: one entry per type, `lastTransitionTime` moving only
//! when the status changes.

use keel_schemas::kinds::core::KubeCondition;
use keel_schemas::kinds::{Condition as Entry, ConditionStatus};
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

/// One entry of a typed object's `conditions`: Keel's [`Entry`] or Kubernetes' per-kind
/// [`KubeCondition`] (a Node's).
pub trait ConditionEntry: Sized {
    /// The type.
    fn type_(&self) -> &str;
    /// `True`, `False` or `Unknown`.
    fn status(&self) -> &str;
    /// The reason and message.
    fn said(&self) -> (Option<&str>, Option<&str>);
    /// `lastTransitionTime`.
    fn transition_time(&self) -> Option<&str>;
    /// The entry for `condition`, changed at `time`, replacing `old` (if any).
    fn make(condition: &Condition<'_>, time: Option<String>, old: Option<&Self>) -> Self;
}

impl ConditionEntry for Entry {
    fn type_(&self) -> &str {
        &self.type_
    }

    fn status(&self) -> &str {
        match self.status {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }

    fn said(&self) -> (Option<&str>, Option<&str>) {
        (self.reason.as_deref(), self.message.as_deref())
    }

    fn transition_time(&self) -> Option<&str> {
        self.last_transition_time.as_deref()
    }

    fn make(condition: &Condition<'_>, time: Option<String>, old: Option<&Self>) -> Self {
        Entry {
            type_: condition.type_.to_string(),
            status: match condition.status {
                "True" => ConditionStatus::True,
                "False" => ConditionStatus::False,
                _ => ConditionStatus::Unknown,
            },
            reason: Some(condition.reason.to_string()),
            message: Some(condition.message.to_string()),
            last_transition_time: time,
            observed_generation: old.and_then(|o| o.observed_generation),
        }
    }
}

impl ConditionEntry for KubeCondition {
    fn type_(&self) -> &str {
        &self.type_
    }

    fn status(&self) -> &str {
        &self.status
    }

    fn said(&self) -> (Option<&str>, Option<&str>) {
        (self.reason.as_deref(), self.message.as_deref())
    }

    fn transition_time(&self) -> Option<&str> {
        self.last_transition_time.as_deref()
    }

    fn make(condition: &Condition<'_>, time: Option<String>, old: Option<&Self>) -> Self {
        KubeCondition {
            type_: condition.type_.to_string(),
            status: condition.status.to_string(),
            reason: Some(condition.reason.to_string()),
            message: Some(condition.message.to_string()),
            last_heartbeat_time: old.and_then(|o| o.last_heartbeat_time.clone()),
            last_probe_time: old.and_then(|o| o.last_probe_time.clone()),
            last_transition_time: time,
        }
    }
}

/// Sets `condition` among a typed object's `conditions` (as [`set_condition`] does in JSON):
/// returns whether anything changed; `lastTransitionTime` moves to `now` only when the
/// status changes (or the condition is new).
pub fn set_typed_condition<C: ConditionEntry>(
    list: &mut Vec<C>,
    condition: &Condition<'_>,
    now: &str,
) -> bool {
    match list.iter_mut().find(|c| c.type_() == condition.type_) {
        Some(existing) => {
            let transition = existing.status() != condition.status;
            let same =
                !transition && existing.said() == (Some(condition.reason), Some(condition.message));
            if same {
                return false;
            }
            let time = if transition {
                Some(now.to_string())
            } else {
                existing.transition_time().map(str::to_string)
            };
            *existing = C::make(condition, time, Some(existing));
            true
        }
        None => {
            list.push(C::make(condition, Some(now.to_string()), None));
            true
        }
    }
}

/// The status (`True`, `False`, `Unknown`) of the condition `type_` among a typed object's
/// `conditions`, if present.
pub fn typed_condition_status<'a, C: ConditionEntry>(
    list: &'a [C],
    type_: &str,
) -> Option<&'a str> {
    list.iter().find(|c| c.type_() == type_).map(|c| c.status())
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

    /// The typed form keeps conditions as the JSON form does.
    #[test]
    fn typed_conditions_move_their_time_only_on_status_change() {
        let mut list: Vec<Entry> = Vec::new();
        let ready = |s, r| Condition::ready(s, r, "");
        assert!(set_typed_condition(
            &mut list,
            &ready("False", "Starting"),
            "t1"
        ));
        assert!(!set_typed_condition(
            &mut list,
            &ready("False", "Starting"),
            "t2"
        ));
        assert!(set_typed_condition(
            &mut list,
            &ready("False", "Booting"),
            "t3"
        ));
        assert_eq!(list[0].last_transition_time.as_deref(), Some("t1"));
        assert!(set_typed_condition(
            &mut list,
            &ready("True", "Running"),
            "t4"
        ));
        assert_eq!(list[0].last_transition_time.as_deref(), Some("t4"));
        assert_eq!(typed_condition_status(&list, "Ready"), Some("True"));
        assert_eq!(typed_condition_status(&list, "Other"), None);
        assert_eq!(list.len(), 1);
    }
}
