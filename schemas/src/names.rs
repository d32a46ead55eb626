//! Name syntax: Kubernetes object names (DNS-1123 and DNS-1035), label keys and values, and
//! DNS names as they appear in zones, and S3 bucket names.

use std::net::Ipv4Addr;

/// Longest DNS-1123 label (and label value, and label key name).
pub const MAX_LABEL: usize = 63;
/// Longest DNS-1123 subdomain.
pub const MAX_SUBDOMAIN: usize = 253;

/// Whether `s` is a DNS-1123 label: 1 to 63 lowercase letters, digits and '-', starting and
/// ending with a letter or digit (`web-1`). Keel's own kinds and Namespaces are named so.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    let ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= MAX_LABEL
        && b.iter().all(|c| ok(c) || *c == b'-')
        && b.first().is_some_and(ok)
        && b.last().is_some_and(ok)
}

/// Whether `s` is a DNS-1035 label: a DNS-1123 label that starts with a letter (Services).
pub fn is_dns1035_label(s: &str) -> bool {
    is_dns_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// Whether `s` is a DNS-1123 subdomain: DNS-1123 labels joined by '.', at most 253
/// characters (`shop.example`, `node-1.rack-2`).
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_SUBDOMAIN && s.split('.').all(is_dns_label)
}

/// What is wrong with a label or annotation key, if anything: an optional DNS-1123 subdomain
/// prefix and '/', then a name of 1 to 63 letters, digits, '-', '_' and '.', starting and ending
/// with a letter or digit (`app`, `app.kubernetes.io/name`).
pub fn label_key_problem(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix.filter(|p| !is_dns_subdomain(p)) {
        return Some(format!(
            "prefix {p:?} must be a DNS-1123 subdomain (lowercase letters, digits, '-' and '.')"
        ));
    }
    if name.is_empty() {
        return Some("name part must not be empty".into());
    }
    label_value_problem(name).map(|p| format!("name part {p}"))
}

/// What is wrong with a label value, if anything: empty, or at most 63 letters, digits, '-',
/// '_' and '.', starting and ending with a letter or digit.
pub fn label_value_problem(value: &str) -> Option<String> {
    let b = value.as_bytes();
    if b.len() > MAX_LABEL {
        return Some(format!("must be at most {MAX_LABEL} characters"));
    }
    let inner = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.');
    let ok = b.is_empty()
        || (b.iter().all(inner)
            && b.first().is_some_and(u8::is_ascii_alphanumeric)
            && b.last().is_some_and(u8::is_ascii_alphanumeric));
    (!ok).then(|| {
        "must consist of letters, digits, '-', '_' and '.', and start and end with a letter or digit"
            .into()
    })
}

/// Whether `s` is one DNS label as zones use them: 1 to 63 letters, digits, '-' and '_', not
/// starting or ending with '-' (underscores appear in `_sip._tcp`).
pub(crate) fn is_host_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_LABEL
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_'))
        && b.first() != Some(&b'-')
        && b.last() != Some(&b'-')
}

/// Whether `s` is a DNS name, relative or fully qualified (with a trailing '.'), of host labels.
pub(crate) fn is_domain_name(s: &str) -> bool {
    let body = s.strip_suffix('.').unwrap_or(s);
    !body.is_empty() && body.len() <= MAX_SUBDOMAIN && body.split('.').all(is_host_label)
}

/// Whether `s` is a fully qualified domain name: a DNS name ending with '.' (`shop.example.`).
pub fn is_fqdn(s: &str) -> bool {
    s.ends_with('.') && is_domain_name(s)
}

/// What is wrong with an S3 bucket name, if anything: 3 to 63 lowercase letters, digits, '.'
/// and '-', starting and ending with a letter or digit, no `..`, not shaped like an IPv4 address.
pub fn bucket_name_problem(name: &str) -> Option<&'static str> {
    let b = name.as_bytes();
    let edge = |c: Option<&u8>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !(3..=63).contains(&b.len()) {
        Some("a bucket name has 3 to 63 characters")
    } else if !b
        .iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'-'))
    {
        Some("a bucket name has only lowercase letters, digits, '.' and '-'")
    } else if !edge(b.first()) || !edge(b.last()) {
        Some("a bucket name starts and ends with a letter or digit")
    } else if name.contains("..") {
        Some("a bucket name has no two adjacent dots")
    } else if name.parse::<Ipv4Addr>().is_ok() {
        Some("a bucket name must not look like an IP address")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_follow_kubernetes() {
        for ok in ["web-1", "a", "0abc", &"x".repeat(63)] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in ["", "Web", "web_1", "-web", "web-", "a.b", &"x".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
        assert!(is_dns1035_label("web"));
        assert!(!is_dns1035_label("1web"));
        assert!(is_dns_subdomain("node-1.rack-2"));
        assert!(!is_dns_subdomain("node-1..rack"));
        assert!(!is_dns_subdomain(&format!("{}.x", "a".repeat(252))));
    }

    #[test]
    fn label_keys_and_values() {
        assert_eq!(label_key_problem("app"), None);
        assert_eq!(label_key_problem("app.kubernetes.io/name"), None);
        assert_eq!(label_key_problem("keel.dev/kvm"), None);
        assert!(label_key_problem("Bad_Prefix/x").is_some());
        assert!(label_key_problem("keel.dev/").is_some());
        assert!(label_key_problem("-app").is_some());
        assert_eq!(label_value_problem(""), None);
        assert_eq!(label_value_problem("v1.2_3-x"), None);
        assert!(label_value_problem("a b").is_some());
        assert!(label_value_problem(&"v".repeat(64)).is_some());
    }

    #[test]
    fn dns_names() {
        assert!(is_fqdn("shop.example."));
        assert!(is_fqdn("example."));
        assert!(!is_fqdn("shop.example"));
        assert!(!is_fqdn("."));
        assert!(!is_fqdn("shop..example."));
        assert!(!is_fqdn("-shop.example."));
        assert!(is_domain_name("_sip._tcp"));
        assert!(is_domain_name("mail.shop.example."));
        assert!(!is_domain_name("mail shop"));
    }
}
