//! A host's resolver configuration (`resolv.conf`): what pods that use the host's DNS are
//! given, and where the DNS server forwards names outside Keel's zones.

/// What a host's `resolv.conf` says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolver {
    /// `nameserver` addresses, in order.
    pub nameservers: Vec<String>,
    /// The search domains (the last `search` or `domain` line).
    pub searches: Vec<String>,
    /// `options` words.
    pub options: Vec<String>,
}

impl Resolver {
    /// Parses `resolv.conf` text; what is not understood is skipped.
    pub fn parse(text: &str) -> Resolver {
        let mut r = Resolver::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => r.nameservers.extend(words.next().map(str::to_string)),
                // The last search (or domain) line wins.
                Some("search" | "domain") => r.searches = words.map(str::to_string).collect(),
                Some("options") => r.options.extend(words.map(str::to_string)),
                _ => {}
            }
        }
        r
    }

    /// The host's resolver: `/etc/resolv.conf`, or systemd-resolved's upstream list when
    /// that names only its local stub (which a pod cannot reach).
    pub fn host() -> Resolver {
        let read = |path: &str| std::fs::read_to_string(path).map(|t| Resolver::parse(&t));
        let etc = read("/etc/resolv.conf").unwrap_or_default();
        let stub = !etc.nameservers.is_empty()
            && etc.nameservers.iter().all(|n| {
                n.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
            });
        if stub && let Ok(upstream) = read("/run/systemd/resolve/resolv.conf") {
            return upstream;
        }
        etc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_text_is_read_as_resolvers_do() {
        let r = Resolver::parse(
            "domain a.example\nsearch b.example c.example ; note\nnameserver 127.0.0.53\nbogus\noptions ndots:2 rotate\n",
        );
        assert_eq!(r.nameservers, ["127.0.0.53"]);
        assert_eq!(r.searches, ["b.example", "c.example"]);
        assert_eq!(r.options, ["ndots:2", "rotate"]);
    }
}
