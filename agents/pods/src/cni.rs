//! The pod network of a host without OVN: a Linux bridge with host-local addresses from the
//! node's `spec.podCIDR` (the cluster's node IPAM gives each node its own range), as k3s's
//! flannel in host-gw mode lays it out. containerd's CRI plugin runs the CNI plugins from
//! the configuration written here.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde_json::json;

/// The bridge the pods of this host are attached to.
pub const BRIDGE: &str = "keel-pods";
/// The network's name.
pub const NETWORK: &str = "keel-pods";
/// The configuration file's name (CRI takes the first in name order).
const CONFLIST: &str = "10-keel-pods.conflist";

/// An IPv4 range, `10.42.0.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The first address.
    pub network: Ipv4Addr,
    /// The prefix length.
    pub prefix: u8,
}

// === impl Cidr ===

impl Cidr {
    /// Parses `a.b.c.d/n`, with no host bits set.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (ip, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not an address range (a.b.c.d/n)"))?;
        let network: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{s:?}: {ip:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 30)
            .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to 30"))?;
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        if u32::from(network) & !mask != 0 {
            return Err(format!("{s:?} has host bits set"));
        }
        Ok(Cidr { network, prefix })
    }

    /// The first host address: the bridge's (the pods' gateway).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The CNI configuration list for pods of `range`, with address leases kept in `leases`.
pub fn conflist(range: Cidr, leases: &Path) -> serde_json::Value {
    json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": range.to_string(), "gateway": range.gateway().to_string()}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": leases.display().to_string(),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    })
}

/// Writes the configuration for `range` into `conf_dir` (only when it changed), and returns
/// its path.
pub fn write(conf_dir: &Path, range: Cidr, leases: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(conf_dir)?;
    let path = conf_dir.join(CONFLIST);
    let text = serde_json::to_string_pretty(&conflist(range, leases)).unwrap_or_default();
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &text)?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_name_their_gateway() {
        let r = Cidr::parse("10.42.3.0/24").unwrap();
        assert_eq!(r.gateway(), Ipv4Addr::new(10, 42, 3, 1));
        assert_eq!(r.to_string(), "10.42.3.0/24");
        assert!(
            Cidr::parse("10.42.3.1/24")
                .unwrap_err()
                .contains("host bits")
        );
        assert!(Cidr::parse("10.42.3.0").unwrap_err().contains("a.b.c.d/n"));
        assert!(Cidr::parse("10.42.3.0/31").unwrap_err().contains("prefix"));
        let c = conflist(r, Path::new("/leases"));
        assert_eq!(
            c["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.42.3.0/24"
        );
    }
}
