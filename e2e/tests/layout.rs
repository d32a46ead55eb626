//! The crates' layout, as Cargo resolves it: the host agent is built from the runtime, the
//! OVSDB client and the schemas, never from the cluster controllers (what a host runs must
//! not reach what only the elected server runs), and the runtime and the OVSDB client
//! depend on no Keel crate above them.

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
    assert!(agent.iter().any(|c| c == "keel-runtime"), "{agent:?}");
    // The runtime and the OVSDB client are below the controllers and the agent.
    for (package, allowed) in [
        ("keel-runtime", &["keel-client", "keel-schemas"][..]),
        (
            "keel-ovsdb",
            &["keel-e2e", "keel-client", "keel-schemas"][..],
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
