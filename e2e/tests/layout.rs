//! The crates' layout, as Cargo resolves it: the host agent is built from the runtime, the
//! OVSDB client and the schemas, never from the cluster controllers (what a host runs must
//! not reach what only the elected server runs); the runtime, the OVSDB client, the store,
//! and the host's roles split out of the agent (`keel-host`, `keel-workload`, `keel-vm`,
//! `keel-lb`, `keel-dns`, `keel-storage`) depend on no Keel crate above them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

/// The Keel crates `package` depends on (normal, build and dev edges, transitively).
fn keel_dependencies(package: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = Command::new(cargo)
        .current_dir(root)
        .args(["tree", "--offline", "-p", package, "-e", "normal,build,dev"])
        .args(["--prefix", "none", "--format", "{p}"])
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut crates: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with("keel-") && *name != package)
        .map(str::to_string)
        .collect();
    crates.sort();
    crates.dedup();
    crates
}

#[test]
fn the_agent_never_depends_on_the_cluster_controllers() {
    let agent = keel_dependencies("keel-agent");
    assert!(
        !agent.iter().any(|c| c == "keel-controllers"),
        "keel-agent depends on {agent:?}"
    );
    for role in ["keel-vm", "keel-dns", "keel-storage", "keel-lb"] {
        assert!(agent.iter().any(|c| c == role), "{agent:?}");
    }
    // The runtime and the OVSDB client are below the controllers and the agent.
    for (package, allowed) in [
        ("keel-runtime", &["keel-client", "keel-schemas"][..]),
        (
            "keel-ovsdb",
            &["keel-e2e", "keel-client", "keel-schemas"][..],
        ),
        ("keel-store", &[][..]),
        ("keel-host", &["keel-client", "keel-schemas"][..]),
        (
            "keel-lb",
            &["keel-client", "keel-schemas", "keel-runtime", "keel-host"][..],
        ),
        (
            "keel-dns",
            &["keel-client", "keel-schemas", "keel-runtime", "keel-host"][..],
        ),
        (
            "keel-storage",
            &["keel-client", "keel-schemas", "keel-runtime", "keel-host"][..],
        ),
        (
            "keel-workload",
            &["keel-client", "keel-schemas", "keel-runtime"][..],
        ),
        (
            "keel-vm",
            &[
                "keel-client",
                "keel-schemas",
                "keel-runtime",
                "keel-ovsdb",
                "keel-host",
                "keel-workload",
            ][..],
        ),
    ] {
        let deps = keel_dependencies(package);
        let above: Vec<_> = deps
            .iter()
            .filter(|d| !allowed.contains(&d.as_str()))
            .collect();
        assert!(above.is_empty(), "{package} depends on {above:?}");
    }
}

/// The product's source files (not tests, benches or these end-to-end drivers, which write
/// manifests as a user would), each cut at its `#[cfg(test)]` module.
fn product_sources() -> Vec<(std::path::PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut out = Vec::new();
    let mut dirs: Vec<std::path::PathBuf> = [
        "schemas",
        "apiserver",
        "client",
        "runtime",
        "ovsdb",
        "controllers",
        "agents",
        "agents/host",
        "agents/lb",
        "agents/dns",
        "agents/storage",
        "agents/workload",
        "agents/vm",
        "cli",
    ]
    .iter()
    .map(|c| root.join(c).join("src"))
    .collect();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if path.is_dir() {
                if name != "tests" {
                    dirs.push(path);
                }
            } else if name.ends_with(".rs") && name != "tests.rs" {
                let text = std::fs::read_to_string(&path).unwrap();
                let code = match text.find("#[cfg(test)]") {
                    Some(at) => text[..at].to_string(),
                    None => text,
                };
                out.push((path, code));
            }
        }
    }
    out
}

#[test]
fn every_keel_dev_name_is_spelled_once_in_wellknown() {
    let mut strays = Vec::new();
    let mut names = Vec::new();
    for (path, code) in product_sources() {
        if path.ends_with("schemas/src/wellknown.rs") {
            names.extend(
                code.split("\"keel.dev/")
                    .skip(1)
                    .filter_map(|rest| rest.split('"').next().map(str::to_string)),
            );
            continue;
        }
        for (n, line) in code.lines().enumerate() {
            let doc = line.trim_start().starts_with("//");
            if line.contains("\"keel.dev/") && !doc {
                strays.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(names.len() > 10, "wellknown holds the names: {names:?}");
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "one meaning per name: {names:?}");
    assert!(
        strays.is_empty(),
        "keel.dev/ names outside keel_schemas::wellknown:\n{}",
        strays.join("\n")
    );
}
