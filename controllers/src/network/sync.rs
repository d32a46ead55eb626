//! The difference between the northbound rows Keel wants and the rows there are, as the
//! operations of one transaction — a pure function of a [`Replica`] and the desired rows.
//!
//! Keel's rows are found by `external_ids:keel-key`. A missing row is inserted, a changed
//! one updated (only the columns Keel sets), an owned root row nobody wants any more
//! deleted; owned non-root rows (ports, ACLs) go when their parent stops referring to them.
//! Rows without a `keel-key` are never touched, and a Keel parent keeps the foreign rows it
//! refers to. When nothing differs there is no operation at all.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::topology::{DesiredRow, KEY};
use keel_ovsdb::data::{Replica, Row, atoms, named, set, string_map, uuid, uuids};

/// The northbound tables Keel writes, in the order rows may be inserted.
pub const TABLES: [&str; 12] = [
    "DHCP_Options",
    "ACL",
    "Gateway_Chassis",
    "NAT",
    "Logical_Router_Static_Route",
    "Logical_Router_Port",
    "Logical_Switch_Port",
    "Load_Balancer_Health_Check",
    "Load_Balancer",
    "Logical_Switch",
    "Logical_Router",
    "Port_Group",
];
/// The tables whose rows live without a parent (deleted explicitly). Switches and routers
/// refer to load balancers weakly: a deleted Load_Balancer leaves them by itself.
const ROOTS: [&str; 5] = [
    "DHCP_Options",
    "Load_Balancer",
    "Logical_Switch",
    "Logical_Router",
    "Port_Group",
];

/// An owned row found in the replica.
struct Found<'a> {
    table: &'a str,
    uuid: &'a str,
    row: &'a Row,
}

/// The operations that make the database hold `desired` (empty when it already does).
pub fn operations(replica: &Replica, desired: &[DesiredRow]) -> Vec<Value> {
    // Keel's rows by key; a second row with the same key is a stray to remove.
    let mut found: BTreeMap<&str, Found<'_>> = BTreeMap::new();
    let mut strays: Vec<(&str, &str)> = Vec::new();
    let mut owned_uuids: BTreeSet<&str> = BTreeSet::new();
    for table in TABLES {
        for (u, row) in replica.rows(table) {
            let Some(key) = row_key(row) else { continue };
            owned_uuids.insert(u.as_str());
            if found.contains_key(key) {
                strays.push((table, u.as_str()));
            } else {
                found.insert(
                    key,
                    Found {
                        table,
                        uuid: u.as_str(),
                        row,
                    },
                );
            }
        }
    }
    let wanted: BTreeSet<&str> = desired.iter().map(|d| d.key.as_str()).collect();
    // New rows get a name the transaction refers to them by.
    let names: BTreeMap<&str, String> = desired
        .iter()
        .filter(|d| found.get(d.key.as_str()).is_none_or(|f| f.table != d.table))
        .enumerate()
        .map(|(i, d)| (d.key.as_str(), format!("row{i}")))
        .collect();
    let resolve = |key: &str| -> Option<Value> {
        match (names.get(key), found.get(key)) {
            (Some(n), _) => Some(named(n)),
            (None, Some(f)) => Some(uuid(f.uuid)),
            (None, None) => None,
        }
    };
    let mut ops = Vec::new();
    for d in desired {
        let existing = found.get(d.key.as_str()).filter(|f| f.table == d.table);
        let mut columns = d.columns.clone();
        for (column, keys) in &d.refs {
            let mut refs: Vec<Value> = keys.iter().filter_map(|k| resolve(k)).collect();
            // A Keel row keeps what others made it refer to.
            if let Some(f) = existing {
                for u in f.row.get(*column).map(uuids).unwrap_or_default() {
                    if !owned_uuids.contains(u.as_str()) {
                        refs.push(uuid(&u));
                    }
                }
            }
            columns.insert(column.to_string(), set(refs));
        }
        match existing {
            None => ops.push(json!({
                "op": "insert", "table": d.table, "row": columns,
                "uuid-name": names.get(d.key.as_str()),
            })),
            Some(f) => {
                let changed: serde_json::Map<String, Value> = columns
                    .into_iter()
                    .filter(|(c, v)| !same(v, f.row.get(c)))
                    .collect();
                if !changed.is_empty() {
                    ops.push(json!({
                        "op": "update", "table": d.table,
                        "where": [["_uuid", "==", uuid(f.uuid)]], "row": changed,
                    }));
                }
            }
        }
    }
    let unwanted_roots = found
        .iter()
        .filter(|(k, f)| ROOTS.contains(&f.table) && !wanted.contains(*k))
        .map(|(_, f)| (f.table, f.uuid));
    for (table, u) in unwanted_roots.chain(strays.into_iter().filter(|(t, _)| ROOTS.contains(t))) {
        ops.push(json!({"op": "delete", "table": table, "where": [["_uuid", "==", uuid(u)]]}));
    }
    ops
}

fn row_key(row: &Row) -> Option<&str> {
    let ids = row.get("external_ids")?.as_array()?;
    let pairs = ids.get(1)?.as_array()?;
    pairs
        .iter()
        .find(|p| p[0].as_str() == Some(KEY))
        .and_then(|p| p[1].as_str())
}

/// Whether the desired encoding `want` says what the database holds in `have` (a set of one
/// comes back as a bare atom; sets and maps come back in any order).
fn same(want: &Value, have: Option<&Value>) -> bool {
    let Some(have) = have else { return false };
    match want.as_array().map(Vec::as_slice) {
        Some([kind, _]) if kind == "set" => {
            let sorted = |v: &Value| {
                let mut items: Vec<String> = atoms(v).into_iter().map(Value::to_string).collect();
                items.sort();
                items
            };
            let want_items = sorted(want);
            // A row to be inserted in this transaction is never the same.
            !want_items.iter().any(|i| i.contains("named-uuid")) && want_items == sorted(have)
        }
        Some([kind, _]) if kind == "map" => string_map(want) == string_map(have),
        _ => want == have,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_ovsdb::data::TableUpdates;

    fn desired(
        table: &'static str,
        key: &str,
        name: &str,
        refs: Vec<(&'static str, Vec<String>)>,
    ) -> DesiredRow {
        let mut columns = serde_json::Map::new();
        columns.insert("name".into(), json!(name));
        columns.insert("external_ids".into(), json!(["map", [[KEY, key]]]));
        DesiredRow {
            table,
            key: key.into(),
            columns,
            refs,
        }
    }

    #[test]
    fn missing_rows_are_inserted_and_referred_to_by_name() {
        let want = vec![
            desired("Logical_Switch_Port", "p", "port", vec![]),
            desired(
                "Logical_Switch",
                "s",
                "switch",
                vec![("ports", vec!["p".into()])],
            ),
        ];
        let ops = operations(&Replica::default(), &want);
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[0]["op"], "insert");
        assert_eq!(
            ops[1]["row"]["ports"],
            json!(["set", [["named-uuid", "row0"]]])
        );
    }

    #[test]
    fn an_unchanged_database_needs_no_operation_and_drift_is_repaired() {
        let mut replica = Replica::default();
        replica.apply(&TableUpdates::parse(&json!({
            "Logical_Switch_Port": {
                "u-p": {"new": {"name": "port", "external_ids": ["map", [[KEY, "p"]]]}},
                "u-foreign": {"new": {"name": "admin's", "external_ids": ["map", []]}},
            },
            "Logical_Switch": {
                "u-s": {"new": {"name": "switch", "external_ids": ["map", [[KEY, "s"]]],
                                "ports": ["set", [["uuid", "u-p"], ["uuid", "u-foreign"]]]}},
                "u-old": {"new": {"name": "gone", "external_ids": ["map", [[KEY, "old"]]], "ports": ["set", []]}},
                "u-admin": {"new": {"name": "not ours", "external_ids": ["map", []], "ports": ["set", []]}},
            },
        })));
        let want = vec![
            desired("Logical_Switch_Port", "p", "port", vec![]),
            desired(
                "Logical_Switch",
                "s",
                "switch",
                vec![("ports", vec!["p".into()])],
            ),
        ];
        // Only the orphan goes; the foreign port stays on Keel's switch; the admin's switch
        // is not touched.
        let ops = operations(&replica, &want);
        assert_eq!(
            ops,
            vec![
                json!({"op": "delete", "table": "Logical_Switch", "where": [["_uuid", "==", ["uuid", "u-old"]]]})
            ]
        );
        // A renamed port is updated in place, and only its changed column.
        let want = vec![
            desired("Logical_Switch_Port", "p", "port-2", vec![]),
            desired(
                "Logical_Switch",
                "s",
                "switch",
                vec![("ports", vec!["p".into()])],
            ),
        ];
        let ops = operations(&replica, &want);
        assert_eq!(ops[0]["op"], "update");
        assert_eq!(ops[0]["row"], json!({"name": "port-2"}));
        assert!(same(&json!(["set", ["a"]]), Some(&json!("a"))));
        assert!(same(
            &json!(["set", ["a", "b"]]),
            Some(&json!(["set", ["b", "a"]]))
        ));
        assert!(!same(
            &json!(["set", [["named-uuid", "x"]]]),
            Some(&json!(["set", []]))
        ));
    }
}
