//! Label and field selectors, with Kubernetes' syntax: `app=web,tier!=db,env in (a,b),!old`
//! and `metadata.name=x,spec.nodeName!=y`.

use serde_json::Value;

use super::status::{ApiError, ApiResult};

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LabelSelector(Vec<Requirement>);

/// A parsed field selector: equality tests on dotted paths of the object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldSelector(Vec<(String, bool, String)>);

// === impl LabelSelector ===

impl LabelSelector {
    /// Parses a selector, saying which part is wrong.
    pub(crate) fn parse(text: &str) -> ApiResult<LabelSelector> {
        let bad = |part: &str| {
            ApiError::bad_request(format!(
                "unable to parse requirement {part:?} of labelSelector {text:?}"
            ))
        };
        let mut out = Vec::new();
        for part in split_top(text) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let req = if let Some(key) = part.strip_prefix('!') {
                Requirement::NotExists(label_key(key.trim()).ok_or_else(|| bad(part))?)
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(
                    label_key(k.trim()).ok_or_else(|| bad(part))?,
                    v.trim().to_string(),
                )
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(
                    label_key(k.trim()).ok_or_else(|| bad(part))?,
                    v.trim().to_string(),
                )
            } else if let Some((k, set)) = split_set(part, " notin ") {
                Requirement::NotIn(
                    label_key(k).ok_or_else(|| bad(part))?,
                    set.ok_or_else(|| bad(part))?,
                )
            } else if let Some((k, set)) = split_set(part, " in ") {
                Requirement::In(
                    label_key(k).ok_or_else(|| bad(part))?,
                    set.ok_or_else(|| bad(part))?,
                )
            } else {
                Requirement::Exists(label_key(part).ok_or_else(|| bad(part))?)
            };
            out.push(req);
        }
        Ok(LabelSelector(out))
    }

    /// Whether an object's labels satisfy every requirement.
    pub(crate) fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, set) => get(k).is_some_and(|v| set.iter().any(|s| s == v)),
            Requirement::NotIn(k, set) => get(k).is_none_or(|v| !set.iter().any(|s| s == v)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        })
    }
}

/// Splits at commas outside parentheses.
fn split_top(text: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// `key op (a, b)` into the key and the values (`None` when the set is malformed).
fn split_set<'a>(part: &'a str, op: &str) -> Option<(&'a str, Option<Vec<String>>)> {
    let (key, rest) = part.split_once(op)?;
    let set = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .map(|inner| {
            inner
                .split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect()
        });
    Some((key.trim(), set))
}

fn label_key(key: &str) -> Option<String> {
    let ok = !key.is_empty()
        && key.len() <= 317
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    ok.then(|| key.to_string())
}

// === impl FieldSelector ===

impl FieldSelector {
    /// Parses `path=value` and `path!=value` terms.
    pub(crate) fn parse(text: &str) -> ApiResult<FieldSelector> {
        let mut out = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (path, equal, value) = if let Some((p, v)) = part.split_once("!=") {
                (p, false, v)
            } else if let Some((p, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (p, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector term {part:?}: want path=value or path!=value"
                )));
            };
            let path = path.trim();
            let field_path = |s: &str| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
            };
            if !path.split('.').all(field_path) {
                return Err(ApiError::bad_request(format!(
                    "invalid field path {path:?} in field selector"
                )));
            }
            out.push((path.to_string(), equal, value.trim().to_string()));
        }
        Ok(FieldSelector(out))
    }

    /// The one name the selector asks for, when it is exactly `metadata.name=NAME` (what a
    /// kubelet-style watch of a single object sends): authorization treats it as that name.
    pub(crate) fn single_name(&self) -> Option<&str> {
        match self.0.as_slice() {
            [(path, true, value)] if path == "metadata.name" && !value.is_empty() => Some(value),
            _ => None,
        }
    }

    /// Whether the object's fields satisfy every term (a missing field is the empty string).
    pub(crate) fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(path, equal, value)| {
            let field = path.split('.').fold(object, |v, seg| &v[seg]);
            let text = match field {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (text == *value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn label_selectors_follow_kubernetes() {
        let obj = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&obj);
        assert!(m(""));
        assert!(m("app=web") && m("app==web") && m("tier!=db") && m("app"));
        assert!(m("app in (web, api),tier notin (db)") && m("!old"));
        assert!(!m("app=api") && !m("!app") && !m("env in (prod)") && !m("app,env"));
        for bad in ["app in web", "=x", "a b=c", "in (x)"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn field_selectors_look_up_paths() {
        let obj = json!({"metadata": {"name": "a", "namespace": "n"}, "spec": {"nodeName": "h1"}});
        let m = |s: &str| FieldSelector::parse(s).unwrap().matches(&obj);
        assert!(
            m("metadata.name=a,spec.nodeName=h1") && m("status.phase=") && m("spec.nodeName!=h2")
        );
        assert!(!m("metadata.name=b"));
        assert!(FieldSelector::parse("nonsense").is_err());
        assert!(FieldSelector::parse("a..b=c").is_err());
    }
}
