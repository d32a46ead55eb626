//! The host side of VPC networking: a VM's tap devices plugged into the integration bridge
//! `br-int` of the host's Open vSwitch, with `external_ids:iface-id` naming the NIC's OVN
//! logical port, so that `ovn-controller` binds them. Spoken over OVSDB to the local
//! `Open_vSwitch` database, like the network controller speaks to OVN's.

use keel_ovsdb::data::{map, named, set, string_map, strings, uuid, uuids};
use keel_ovsdb::{Ovsdb, OvsdbError};
use serde_json::{Value, json};

use keel_host::Capability;

/// The local database.
const DB: &str = "Open_vSwitch";
/// The integration bridge `ovn-controller` manages.
pub const BRIDGE: &str = "br-int";
/// The external id naming the VM a port was plugged for.
const VM_ID: &str = "keel-vm";

/// Whether this host can put guests on VPC networks: its Open vSwitch answers, `br-int`
/// exists and `ovn-controller` is configured (`external_ids:ovn-remote`).
pub async fn probe(addr: &str) -> Capability {
    let missing = |reason, message: String| Capability {
        type_: "NetworkAvailable",
        available: false,
        reason,
        message: format!(
            "{message}; VMs get no VPC networking here (QEMU user networking instead)"
        ),
    };
    let db = match Ovsdb::connect(addr).await {
        Ok(db) => db,
        Err(e) => {
            return missing(
                "OVSUnreachable",
                format!("cannot reach the Open vSwitch database: {e}"),
            );
        }
    };
    let answer = db
        .transact(
            DB,
            &[
                json!({"op": "select", "table": "Bridge", "where": [["name", "==", BRIDGE]], "columns": ["name"]}),
                json!({"op": "select", "table": "Open_vSwitch", "where": [], "columns": ["external_ids"]}),
            ],
        )
        .await;
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            return missing(
                "OVSUnreachable",
                format!("the Open vSwitch database at {addr}: {e}"),
            );
        }
    };
    if answer[0]["rows"].as_array().is_none_or(Vec::is_empty) {
        return missing(
            "NoIntegrationBridge",
            format!("{BRIDGE} does not exist (is ovn-controller running?)"),
        );
    }
    let ids = answer[1]["rows"][0]
        .get("external_ids")
        .map(string_map)
        .unwrap_or_default();
    match (ids.get("ovn-remote"), ids.get("system-id")) {
        (Some(remote), Some(chassis)) => Capability {
            type_: "NetworkAvailable",
            available: true,
            reason: "OVNReady",
            message: format!("{BRIDGE} is up; ovn-controller (chassis {chassis}) follows {remote}"),
        },
        _ => missing(
            "OVNNotConfigured",
            "external_ids:ovn-remote or system-id is not set".into(),
        ),
    }
}

/// The name of the tap device of NIC `index` of the VM with `uid` (at most 15 bytes).
pub fn tap_name(uid: &str, index: usize) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in uid.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("kt{h:08x}{index}")
}

/// Plugs the tap `tap` into `br-int` as the OVN logical port `port` (nothing when it is
/// plugged already).
pub async fn plug(addr: &str, tap: &str, port: &str, vm_uid: &str) -> Result<(), OvsdbError> {
    // QEMU makes the tap (`script=no`), maybe after its QMP socket, and leaves it down.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::path::Path::new("/sys/class/net").join(tap).exists() {
        if std::time::Instant::now() > deadline {
            return Err(OvsdbError::Protocol {
                addr: addr.to_string(),
                message: format!("the tap {tap} did not appear"),
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let up = tokio::process::Command::new("ip")
        .args(["link", "set", "dev", tap, "up"])
        .output()
        .await;
    if let Ok(out) = &up
        && !out.status.success()
    {
        tracing::warn!(tap, error = %String::from_utf8_lossy(&out.stderr).trim(), "cannot bring the tap up");
    }
    let db = Ovsdb::connect(addr).await?;
    let existing = db
        .transact(DB, &[json!({"op": "select", "table": "Port", "where": [["name", "==", tap]], "columns": ["name"]})])
        .await?;
    if existing[0]["rows"]
        .as_array()
        .is_some_and(|r| !r.is_empty())
    {
        return Ok(());
    }
    let iface_ids = [
        ("iface-id".to_string(), port.to_string()),
        (VM_ID.to_string(), vm_uid.to_string()),
    ];
    let port_ids = [(VM_ID.to_string(), vm_uid.to_string())];
    db.transact(
        DB,
        &[
            json!({"op": "insert", "table": "Interface", "uuid-name": "iface",
                   "row": {"name": tap, "external_ids": map(iface_ids.iter().map(|(k, v)| (k, v)))}}),
            json!({"op": "insert", "table": "Port", "uuid-name": "port",
                   "row": {"name": tap, "interfaces": named("iface"), "external_ids": map(port_ids.iter().map(|(k, v)| (k, v)))}}),
            json!({"op": "mutate", "table": "Bridge", "where": [["name", "==", BRIDGE]],
                   "mutations": [["ports", "insert", set([named("port")])]]}),
        ],
    )
    .await?;
    Ok(())
}

/// Removes the ports plugged for the VM with `vm_uid` from `br-int`.
pub async fn unplug(addr: &str, vm_uid: &str) -> Result<usize, OvsdbError> {
    let db = Ovsdb::connect(addr).await?;
    let answer = db
        .transact(
            DB,
            &[json!({"op": "select", "table": "Port", "where": [], "columns": ["_uuid", "name", "external_ids"]})],
        )
        .await?;
    let ours: Vec<Value> = answer[0]["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| {
            r.get("external_ids")
                .map(string_map)
                .and_then(|m| m.get(VM_ID).cloned())
                .as_deref()
                == Some(vm_uid)
        })
        .flat_map(|r| uuids(&r["_uuid"]))
        .map(|u| uuid(&u))
        .collect();
    if ours.is_empty() {
        return Ok(0);
    }
    let n = ours.len();
    db.transact(
        DB,
        &[
            json!({"op": "mutate", "table": "Bridge", "where": [["name", "==", BRIDGE]],
                 "mutations": [["ports", "delete", set(ours)]]}),
        ],
    )
    .await?;
    Ok(n)
}

/// The names of the ports on `br-int` (for tests and diagnostics).
pub async fn ports(addr: &str) -> Result<Vec<String>, OvsdbError> {
    let db = Ovsdb::connect(addr).await?;
    let answer = db
        .transact(
            DB,
            &[json!({"op": "select", "table": "Port", "where": [], "columns": ["name"]})],
        )
        .await?;
    Ok(answer[0]["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| strings(&r["name"]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_fit_linux_and_differ_per_vm_and_nic() {
        let a = tap_name("0b8f2a0e-1c1d-4f4e-9c1a-3e2f1d0c9b8a", 0);
        assert!(a.len() <= 15, "{a}");
        assert_ne!(a, tap_name("0b8f2a0e-1c1d-4f4e-9c1a-3e2f1d0c9b8a", 1));
        assert_ne!(a, tap_name("another", 0));
        assert_eq!(a, tap_name("0b8f2a0e-1c1d-4f4e-9c1a-3e2f1d0c9b8a", 0));
    }
}
