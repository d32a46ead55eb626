//! The OVSDB client against a real `ovsdb-server` serving OVN's northbound schema, checked
//! with `ovn-nbctl`, a client Keel did not write.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use keel_e2e::ovn::Ovn;

use keel_ovsdb::data::{Replica, named, set, strings, uuid};
use keel_ovsdb::{Ovsdb, OvsdbError};
use serde_json::json;

#[tokio::test]
async fn transactions_and_monitors_against_a_real_ovsdb_server() {
    let nb = Ovn::nb_only();
    let db = Ovsdb::connect(&nb.nb()).await.unwrap();
    assert!(
        db.list_dbs()
            .await
            .unwrap()
            .contains(&"OVN_Northbound".to_string())
    );
    let mut monitor = db
        .monitor("OVN_Northbound", &["Logical_Switch", "Logical_Switch_Port"])
        .await
        .unwrap();
    assert!(monitor.initial.is_empty());

    // A switch and a port in one transaction (the port is not a root row: the switch refers
    // to it by its named uuid).
    let results = db
        .transact(
            "OVN_Northbound",
            &[
                json!({"op": "insert", "table": "Logical_Switch_Port", "uuid-name": "p",
                       "row": {"name": "web-1", "addresses": set([json!("52:54:00:00:00:01 10.0.0.5")])}}),
                json!({"op": "insert", "table": "Logical_Switch",
                       "row": {"name": "front", "ports": set([named("p")]),
                               "external_ids": ["map", [["keel-uid", "u-1"]]]}}),
            ],
        )
        .await
        .unwrap();
    let switch = results[1]["uuid"][1].as_str().unwrap().to_string();
    assert!(nb.nbctl(&["show"]).contains("web-1"));
    assert_eq!(
        nb.nbctl(&["get", "Logical_Switch", "front", "external_ids:keel-uid"])
            .trim(),
        "u-1"
    );

    let mut replica = Replica::default();
    let update = tokio::time::timeout(Duration::from_secs(5), monitor.next())
        .await
        .unwrap()
        .unwrap();
    replica.apply(&update);
    let (_, row) = replica.rows("Logical_Switch").next().unwrap();
    assert_eq!(row["name"], "front");
    assert_eq!(replica.rows("Logical_Switch_Port").count(), 1);

    // A change made by another client shows up in the monitor.
    nb.nbctl(&["ls-del", "front"]);
    let update = tokio::time::timeout(Duration::from_secs(5), monitor.next())
        .await
        .unwrap()
        .unwrap();
    replica.apply(&update);
    assert_eq!(replica.rows("Logical_Switch").count(), 0);

    // A failing operation names itself, and nothing of the transaction is applied.
    let err = db
        .transact(
            "OVN_Northbound",
            &[
                json!({"op": "insert", "table": "Logical_Switch", "row": {"name": "x"}}),
                json!({"op": "update", "table": "Logical_Switch",
                       "where": [["_uuid", "==", uuid(&switch)]], "row": {"name": "y"}}),
                json!({"op": "wait", "table": "Logical_Switch", "timeout": 0,
                       "where": [["name", "==", "x"]], "columns": ["name"], "until": "==", "rows": []}),
            ],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, OvsdbError::Operation { index: 2, .. }),
        "{err}"
    );
    assert!(nb.nbctl(&["ls-list"]).trim().is_empty(), "rolled back");

    // Bad requests get the server's error, not a hang.
    let err = db.transact("No_Such_Db", &[]).await.unwrap_err();
    assert!(
        err.to_string().contains("No_Such_Db") || err.to_string().contains("unknown database"),
        "{err}"
    );
    assert_eq!(strings(&json!(["set", ["a"]])), vec!["a"]);
}

#[tokio::test]
async fn a_refused_address_and_a_bad_one_say_so() {
    let err = Ovsdb::connect("unix:/nonexistent/nb.sock")
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("/nonexistent/nb.sock"), "{err}");
    let err = Ovsdb::connect("ssl:1.2.3.4:6641").await.err().unwrap();
    assert!(matches!(err, OvsdbError::Address(_)), "{err}");
}
