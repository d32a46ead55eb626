//! Rules for GitRepositories and Revisions.

use super::{Field, SUBDOMAIN_RULE};
use crate::names;
use crate::registry::lookup;
use crate::validate::FieldError;

pub(super) fn git_repository(spec: Option<&Field<'_>>, errors: &mut Vec<FieldError>) {
    let Some(spec) = spec else { return };
    if let Some(url) = spec.get("url")
        && url.str().is_some_and(|s| !is_git_url(s))
    {
        errors.push(url.invalid(
            "must be an https://, http://, ssh://, git:// or file:// URL, or user@host:path",
        ));
    }
    if let Some(r) = spec.get("ref") {
        let set: Vec<&str> = ["branch", "tag", "commit"]
            .into_iter()
            .filter(|k| r.get(k).is_some())
            .collect();
        if set.len() > 1 {
            let why = format!(
                "set at most one of branch, tag or commit, not {}",
                set.join(" and ")
            );
            errors.push(FieldError::forbidden(r.path.clone(), &why));
        }
        if let Some(commit) = r.get("commit") {
            let hex = |s: &str| s.chars().all(|c| c.is_ascii_hexdigit());
            if commit
                .str()
                .is_some_and(|s| !(hex(s) && matches!(s.len(), 40 | 64)))
            {
                errors.push(
                    commit.invalid("must be a full commit hash: 40 (or 64) hexadecimal digits"),
                );
            }
        }
        for name in ["branch", "tag"].into_iter().filter_map(|k| r.get(k)) {
            let bad = |s: &str| s.is_empty() || s.contains(char::is_whitespace) || s.contains("..");
            if name.str().is_some_and(bad) {
                errors.push(name.invalid("must be a Git ref name, without spaces or '..'"));
            }
        }
    }
    if let Some(path) = spec.get("path") {
        let escapes = |s: &str| s.starts_with('/') || s.split('/').any(|part| part == "..");
        if path.str().is_some_and(escapes) {
            errors.push(path.invalid("must be relative to the repository root, without '..'"));
        }
    }
    if let Some(name) = spec.get("secretRef").and_then(|r| r.get("name"))
        && name.str().is_some_and(|s| !names::is_dns_subdomain(s))
    {
        errors.push(name.invalid(SUBDOMAIN_RULE));
    }
}

fn is_git_url(s: &str) -> bool {
    let schemes = ["https://", "http://", "ssh://", "git://", "file://"];
    let with_scheme = schemes
        .iter()
        .any(|scheme| s.strip_prefix(scheme).is_some_and(|rest| !rest.is_empty()));
    let scp_like = match s.split_once(':') {
        Some((host, path)) => {
            let host = host.rsplit('@').next().unwrap_or(host);
            !path.is_empty() && !path.starts_with("//") && names::is_domain_name(host)
        }
        None => false,
    };
    (with_scheme || scp_like) && !s.contains(char::is_whitespace)
}

pub(super) fn revision(spec: Option<&Field<'_>>, errors: &mut Vec<FieldError>) {
    let Some(target) = spec.and_then(|s| s.get("target")) else {
        return;
    };
    if let (Some(kind), Some(api_version)) = (target.get("kind"), target.str_at("apiVersion")) {
        match kind.str().map(|k| (k, lookup(k))) {
            Some((_, None)) => errors.push(kind.invalid("is not a kind Keel serves")),
            Some((k, Some(found))) if found.api_version() != api_version || found.kind != k => {
                let why = format!("must be {} {}", found.api_version(), found.kind);
                errors.push(kind.invalid(&why));
            }
            _ => {}
        }
    }
    if let Some(name) = target.get("name")
        && name.str().is_some_and(|s| !names::is_dns_subdomain(s))
    {
        errors.push(name.invalid(SUBDOMAIN_RULE));
    }
}
