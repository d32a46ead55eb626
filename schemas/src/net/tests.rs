//! Tests of CIDR, port list, host:port and MAC parsing.

use super::*;

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap()
}

#[test]
fn cidrs_parse_for_both_families() {
    let v4 = cidr("10.20.1.0/24");
    assert_eq!(v4.prefix(), 24);
    assert!(v4.is_network_address());
    assert_eq!(v4.first_host(), Some("10.20.1.1".parse().unwrap()));
    assert_eq!(v4.broadcast(), Some("10.20.1.255".parse().unwrap()));
    let v6 = cidr("fd00:10::/64");
    assert!(v6.contains("fd00:10::5".parse().unwrap()));
    assert_eq!(v6.first_host(), Some("fd00:10::1".parse().unwrap()));
    assert_eq!(v6.broadcast(), None);
    let sloppy = cidr("10.20.1.7/16");
    assert!(!sloppy.is_network_address());
    assert_eq!(sloppy.network().to_string(), "10.20.0.0");
    assert_eq!(cidr("0.0.0.0/0").network().to_string(), "0.0.0.0");
    assert!(cidr("::/0").contains("2001:db8::1".parse().unwrap()));
    assert_eq!(cidr("10.0.0.5/32").first_host(), None);
}

#[test]
fn bad_cidrs_say_why() {
    for (bad, why) in [
        ("10.0.0.0", "CIDR notation"),
        ("10.0.0.0/33", "0 to 32"),
        ("fd00::/129", "0 to 128"),
        ("10.0.0/8", "not an IPv4 or IPv6"),
        ("10.0.0.0/x", "prefix length"),
        ("10.0.0.0/+8", "prefix length"),
    ] {
        let err = bad.parse::<Cidr>().unwrap_err();
        assert!(err.contains(why), "{bad}: {err}");
    }
}

#[test]
fn containment_of_ranges_and_addresses() {
    assert!(cidr_contains("10.20.0.0/16", "10.20.1.0/24"));
    assert!(cidr_contains("10.20.0.0/16", "10.20.0.0/16"));
    assert!(cidr_contains("10.20.0.0/16", "10.20.255.254"));
    assert!(!cidr_contains("10.20.0.0/16", "10.0.0.0/8"));
    assert!(!cidr_contains("10.20.0.0/16", "10.21.0.0/24"));
    assert!(!cidr_contains("10.20.0.0/16", "fd00::/64"));
    assert!(cidr_contains("fd00::/48", "fd00:0:0:1::/64"));
    assert!(cidr_contains("0.0.0.0/0", "192.168.1.1"));
    assert!(!cidr_contains("garbage", "10.0.0.0/8"));
    assert!(!cidr_contains("10.0.0.0/8", "garbage"));
}

#[test]
fn port_lists_and_ranges() {
    assert_eq!(parse_port_ranges("80,443"), Ok(vec![(80, 80), (443, 443)]));
    assert_eq!(parse_port_ranges("1000-2000"), Ok(vec![(1000, 2000)]));
    assert_eq!(
        parse_port_ranges("22, 8000-8080"),
        Ok(vec![(22, 22), (8000, 8080)])
    );
    assert_eq!(parse_port_ranges("65535"), Ok(vec![(65535, 65535)]));
    for bad in ["", "0", "65536", "80,", "2000-1000", "http", "1-2-3", "-5"] {
        assert!(parse_port_ranges(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn host_ports_and_macs() {
    assert_eq!(parse_host_port("10.0.0.1:80"), Ok(("10.0.0.1", 80)));
    assert_eq!(parse_host_port("[fd00::1]:8080"), Ok(("fd00::1", 8080)));
    assert_eq!(parse_host_port("app.example:443"), Ok(("app.example", 443)));
    for bad in [
        "10.0.0.1",
        "10.0.0.1:0",
        "fd00::1:80",
        "[fd00::1]80",
        "a b:80",
        ":80",
    ] {
        assert!(parse_host_port(bad).is_err(), "{bad:?}");
    }
    assert!(is_unicast_mac("52:54:00:12:34:56"));
    assert!(!is_unicast_mac("01:00:5e:00:00:01"), "multicast");
    assert!(!is_unicast_mac("52:54:00:12:34"));
    assert!(!is_unicast_mac("52-54-00-12-34-56"));
    assert!(!is_unicast_mac("5:54:00:12:34:56:"));
}

#[test]
fn status_codes_and_http_paths() {
    assert_eq!(parse_status_codes("200"), Ok(vec![(200, 200)]));
    assert_eq!(
        parse_status_codes("200-299, 301"),
        Ok(vec![(200, 299), (301, 301)])
    );
    assert!(parse_status_codes("99").is_err());
    assert!(
        parse_status_codes("300-200")
            .unwrap_err()
            .contains("ends before")
    );
    assert!(parse_status_codes("ok").is_err());
    assert_eq!(http_path_problem("/healthz?full=1"), None);
    assert!(
        http_path_problem("healthz")
            .unwrap()
            .contains("start with '/'")
    );
    assert!(http_path_problem("/a b").unwrap().contains("' '"));
    assert!(http_path_problem("/a\r\nHost: x").is_some());
    assert!(http_path_problem(&format!("/{}", "a".repeat(1024))).is_some());
}

#[test]
fn addresses_are_classed_as_the_host_the_link_private_or_public() {
    use super::AddressClass::*;
    for (ip, class) in [
        ("0.0.0.0", Unspecified),
        ("::", Unspecified),
        ("127.0.0.1", Loopback),
        ("127.255.0.9", Loopback),
        ("::1", Loopback),
        ("::ffff:127.0.0.1", Loopback),
        ("169.254.169.254", LinkLocal),
        ("fe80::1", LinkLocal),
        ("224.0.0.1", Multicast),
        ("255.255.255.255", Multicast),
        ("ff02::1", Multicast),
        ("10.1.2.3", Private),
        ("172.16.0.1", Private),
        ("192.168.1.1", Private),
        ("100.64.0.1", Private),
        ("fd00::1", Private),
        ("0.1.2.3", Reserved),
        ("192.0.2.1", Reserved),
        ("198.18.0.1", Reserved),
        ("240.0.0.1", Reserved),
        ("2001:db8::1", Reserved),
        ("8.8.8.8", Public),
        ("100.128.0.1", Public),
        ("172.32.0.1", Public),
        ("2a00:1450::1", Public),
        ("::ffff:8.8.8.8", Public),
    ] {
        let parsed: IpAddr = ip.parse().unwrap();
        assert_eq!(super::AddressClass::of(parsed), class, "{ip}");
    }
}
