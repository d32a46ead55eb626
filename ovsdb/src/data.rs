//! OVSDB's data encoding (RFC 7047 §5.1): atoms, `["set", [...]]`, `["map", [[k, v], ...]]`,
//! `["uuid", "..."]` and `["named-uuid", "..."]` — and rows, monitor updates and an in-memory
//! replica of monitored tables.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// A row: column name to OVSDB-encoded value.
pub type Row = serde_json::Map<String, Value>;

/// One row's change in a monitor update.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RowUpdate {
    /// The row before (absent for an insert).
    pub old: Option<Row>,
    /// The row after (absent for a delete; all monitored columns otherwise).
    pub new: Option<Row>,
}

/// Changes to monitored tables: table, then row uuid.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TableUpdates(pub BTreeMap<String, BTreeMap<String, RowUpdate>>);

/// Monitored tables kept in memory: table, then row uuid, then the row.
#[derive(Debug, Clone, Default)]
pub struct Replica(pub BTreeMap<String, BTreeMap<String, Row>>);

// === impl TableUpdates ===

impl TableUpdates {
    /// Reads a `<table-updates>` object; what does not fit is skipped.
    pub fn parse(value: &Value) -> TableUpdates {
        let mut out = BTreeMap::new();
        for (table, rows) in value.as_object().into_iter().flatten() {
            let mut changes = BTreeMap::new();
            for (uuid, update) in rows.as_object().into_iter().flatten() {
                changes.insert(
                    uuid.clone(),
                    RowUpdate {
                        old: update.get("old").and_then(Value::as_object).cloned(),
                        new: update.get("new").and_then(Value::as_object).cloned(),
                    },
                );
            }
            out.insert(table.clone(), changes);
        }
        TableUpdates(out)
    }

    /// Whether there is no change.
    pub fn is_empty(&self) -> bool {
        self.0.values().all(BTreeMap::is_empty)
    }
}

// === impl Replica ===

impl Replica {
    /// Applies a monitor's initial rows or a later update.
    pub fn apply(&mut self, updates: &TableUpdates) {
        for (table, rows) in &updates.0 {
            let replica = self.0.entry(table.clone()).or_default();
            for (uuid, update) in rows {
                match &update.new {
                    Some(row) => {
                        replica.insert(uuid.clone(), row.clone());
                    }
                    None => {
                        replica.remove(uuid);
                    }
                }
            }
        }
    }

    /// The rows of `table`.
    pub fn rows(&self, table: &str) -> impl Iterator<Item = (&String, &Row)> {
        self.0.get(table).into_iter().flat_map(|t| t.iter())
    }
}

/// `["uuid", u]`.
pub fn uuid(u: &str) -> Value {
    json!(["uuid", u])
}

/// `["named-uuid", name]`: a row inserted earlier in the same transaction.
pub fn named(name: &str) -> Value {
    json!(["named-uuid", name])
}

/// A set of atoms.
pub fn set(items: impl IntoIterator<Item = Value>) -> Value {
    json!(["set", items.into_iter().collect::<Vec<_>>()])
}

/// A map of strings to strings.
pub fn map<'a>(pairs: impl IntoIterator<Item = (&'a String, &'a String)>) -> Value {
    let pairs: Vec<Value> = pairs.into_iter().map(|(k, v)| json!([k, v])).collect();
    json!(["map", pairs])
}

/// The atoms of a value that is an atom or a set.
pub fn atoms(value: &Value) -> Vec<&Value> {
    match value.as_array().map(Vec::as_slice) {
        Some([kind, items]) if kind == "set" => items.as_array().into_iter().flatten().collect(),
        _ => vec![value],
    }
}

/// The strings of a string atom or set.
pub fn strings(value: &Value) -> Vec<String> {
    atoms(value)
        .into_iter()
        .filter_map(|a| a.as_str().map(String::from))
        .collect()
}

/// The uuids of a uuid atom or set.
pub fn uuids(value: &Value) -> Vec<String> {
    atoms(value)
        .into_iter()
        .filter_map(|a| match a.as_array().map(Vec::as_slice) {
            Some([kind, u]) if kind == "uuid" => u.as_str().map(String::from),
            _ => None,
        })
        .collect()
}

/// A map of strings.
pub fn string_map(value: &Value) -> BTreeMap<String, String> {
    match value.as_array().map(Vec::as_slice) {
        Some([kind, pairs]) if kind == "map" => pairs
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p[0].as_str()?.to_string(), p[1].as_str()?.to_string())))
            .collect(),
        _ => BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atoms_sets_and_maps_round_trip() {
        let s = set([json!("a"), json!("b")]);
        assert_eq!(strings(&s), vec!["a", "b"]);
        assert_eq!(strings(&json!("solo")), vec!["solo"]);
        assert_eq!(uuids(&set([uuid("u1"), uuid("u2")])), vec!["u1", "u2"]);
        assert_eq!(uuids(&uuid("u3")), vec!["u3"]);
        let m: BTreeMap<String, String> = [("k".to_string(), "v".to_string())].into();
        assert_eq!(string_map(&map(&m)), m);
        assert!(string_map(&json!("x")).is_empty());
    }

    #[test]
    fn a_replica_follows_inserts_modifies_and_deletes() {
        let mut r = Replica::default();
        r.apply(&TableUpdates::parse(
            &json!({"T": {"u1": {"new": {"name": "a"}}, "u2": {"new": {"name": "b"}}}}),
        ));
        r.apply(&TableUpdates::parse(&json!({"T": {"u1": {"old": {"name": "a"}, "new": {"name": "A"}}, "u2": {"old": {"name": "b"}}}})));
        let rows: Vec<_> = r
            .rows("T")
            .map(|(u, row)| (u.clone(), row["name"].clone()))
            .collect();
        assert_eq!(rows, vec![("u1".to_string(), json!("A"))]);
        assert_eq!(r.rows("missing").count(), 0);
    }
}
