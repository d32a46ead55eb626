//! Rules for the workload kinds (`apps/v1` Deployment, ReplicaSet, DaemonSet and
//! StatefulSet, `batch/v1` Job and CronJob): the selector must select the template's labels,
//! and the template's pod spec follows the pod rules; a Job's pods restart `Never` or
//! `OnFailure`, a StatefulSet's `Always`; a CronJob's schedule and time zone must be ones it
//! can run on; a StatefulSet's claim templates are named claims.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Field, core};
use crate::kinds::LabelSelector;
use crate::validate::FieldError;

pub(super) fn job(spec: Option<&Field<'_>>, errors: &mut Vec<FieldError>) {
    let Some(spec) = spec else { return };
    if let Some(template) = spec.get("template")
        && let Some(pod) = template.get("spec")
    {
        match pod.get("restartPolicy") {
            Some(policy) if !matches!(policy.str(), Some("Never" | "OnFailure")) => {
                errors.push(FieldError::unsupported(
                    policy.path.clone(),
                    policy.value,
                    &[Value::from("Never"), Value::from("OnFailure")],
                ));
            }
            Some(_) => {}
            None => errors.push(FieldError::required(
                format!("{}.restartPolicy", pod.path),
                "a job's pods restart Never or OnFailure",
            )),
        }
    }
    workload(Some(spec), errors);
}

/// The longest CronJob name: its Jobs add `-<minutes since the epoch>` (11 characters) and
/// carry their name in a label (63 at most), as Kubernetes bounds it.
const CRON_JOB_NAME_MAX: usize = 52;

pub(super) fn cron_job(root: &Field<'_>, errors: &mut Vec<FieldError>) {
    if let Some(name) = root.get("metadata").and_then(|m| m.get("name"))
        && let Some(text) = name.str()
        && text.len() > CRON_JOB_NAME_MAX
    {
        errors.push(FieldError::invalid(
            name.path.clone(),
            name.value,
            &format!("must be no more than {CRON_JOB_NAME_MAX} characters"),
        ));
    }
    let Some(spec) = root.get("spec") else { return };
    if let Some(schedule) = spec.get("schedule")
        && let Some(text) = schedule.str()
        && let Err(why) = crate::cron::Schedule::parse(text)
    {
        errors.push(FieldError::invalid(
            schedule.path.clone(),
            schedule.value,
            &why,
        ));
    }
    if let Some(zone) = spec.get("timeZone")
        && let Some(name) = zone.str()
        && let Err(why) = crate::cron::time_zone(Some(name))
    {
        errors.push(FieldError::invalid(zone.path.clone(), zone.value, &why));
    }
    if let Some(template) = spec.get("jobTemplate") {
        job(template.get("spec").as_ref(), errors);
    }
}

/// The longest StatefulSet name: its pods' `controller-revision-hash` label is
/// `<name>-<hash>` (up to 10 more characters) in 63, as Kubernetes bounds it; its pods are
/// named `<name>-<ordinal>` and take that as their hostname, a DNS label.
const STATEFUL_SET_NAME_MAX: usize = 52;

pub(super) fn stateful_set(root: &Field<'_>, errors: &mut Vec<FieldError>) {
    if let Some(name) = root.get("metadata").and_then(|m| m.get("name"))
        && let Some(text) = name.str()
    {
        if !crate::names::is_dns_label(text) {
            errors.push(name.invalid(super::LABEL_RULE));
        } else if text.len() > STATEFUL_SET_NAME_MAX {
            errors.push(name.invalid(&format!(
                "must be no more than {STATEFUL_SET_NAME_MAX} characters"
            )));
        }
    }
    let Some(spec) = root.get("spec") else { return };
    if let Some(policy) = spec
        .get("template")
        .and_then(|t| t.get("spec"))
        .and_then(|p| p.get("restartPolicy"))
        && policy.str() != Some("Always")
    {
        errors.push(FieldError::unsupported(
            policy.path.clone(),
            policy.value,
            &[Value::from("Always")],
        ));
    }
    if let Some(service) = spec.get("serviceName")
        && service
            .str()
            .is_some_and(|s| !s.is_empty() && !crate::names::is_dns1035_label(s))
    {
        errors.push(service.invalid(super::LABEL1035_RULE));
    }
    let claims = spec.items_of("volumeClaimTemplates");
    let mut names = Vec::new();
    for claim in &claims {
        let meta = claim.get("metadata");
        match meta.as_ref().and_then(|m| m.get("name")) {
            Some(name) if name.str().is_some_and(crate::names::is_dns_label) => {
                names.push(name);
            }
            Some(name) => errors.push(name.invalid(super::LABEL_RULE)),
            None => errors.push(FieldError::required(
                format!("{}.metadata.name", claim.path),
                "the claims' name, and the name of the pod volume they are",
            )),
        }
        match claim.get("spec") {
            Some(spec) => super::storage::claim_spec(&spec, errors),
            None => errors.push(FieldError::required(
                format!("{}.spec", claim.path),
                "the claims' spec",
            )),
        }
    }
    super::unique(names, errors);
    workload(Some(&spec), errors);
}

pub(super) fn workload(spec: Option<&Field<'_>>, errors: &mut Vec<FieldError>) {
    let Some(spec) = spec else { return };
    let Some(template) = spec.get("template") else {
        return;
    };
    let selector = spec
        .get("selector")
        .and_then(|s| serde_json::from_value::<LabelSelector>(s.value.clone()).ok());
    let labels: BTreeMap<String, String> = template
        .get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(|l| serde_json::from_value(l.value.clone()).ok())
        .unwrap_or_default();
    if let Some(selector) = selector
        && !selector.matches(&labels)
    {
        let path = format!("{}.metadata.labels", template.path);
        let value = serde_json::to_value(&labels).unwrap_or_default();
        errors.push(FieldError::invalid(
            path,
            &value,
            "`selector` does not match template `labels`",
        ));
    }
    core::pod(template.get("spec").as_ref(), errors);
}
