//! Each kind's typed struct, filled in as a controller would, serializes to an object its
//! schema accepts and reads back equal.

use std::collections::BTreeMap;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::compute::*;
use super::core::*;
use super::dns::*;
use super::gitops::*;
use super::network::*;
use super::storage::*;
use super::*;
use crate::{lookup, validate};

mod keel;
mod kubernetes;

fn check<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(kind: &str, typed: &T) {
    let value = serde_json::to_value(typed).unwrap();
    let kind = lookup(kind).unwrap();
    assert_eq!(validate(kind, &value), Ok(()), "{value:#}");
    let back: T = serde_json::from_value(value).unwrap();
    assert_eq!(&back, typed);
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn ready() -> Condition {
    Condition {
        type_: "Ready".into(),
        status: ConditionStatus::True,
        reason: Some("Healthy".into()),
        message: None,
        last_transition_time: Some("2024-05-01T12:00:00Z".into()),
        observed_generation: Some(1),
    }
}

#[test]
fn every_typed_kind_is_registered() {
    for kind in [
        VirtualMachineSpec::kind(),
        VpcSpec::kind(),
        SubnetSpec::kind(),
        SecurityGroupSpec::kind(),
        LoadBalancerSpec::kind(),
        ZoneSpec::kind(),
        BucketSpec::kind(),
        GitRepositorySpec::kind(),
        RevisionSpec::kind(),
        <Option<NamespaceSpec>>::kind(),
        <Option<NodeSpec>>::kind(),
        PodSpec::kind(),
        ServiceSpec::kind(),
        <Option<LeaseSpec>>::kind(),
    ] {
        assert_eq!(lookup(kind.kind), Some(kind));
    }
}

#[test]
fn selectors_and_quantities() {
    let selector: LabelSelector = serde_json::from_value(json!({"matchLabels": {"app": "web"},
        "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}, {"key": "gone", "operator": "DoesNotExist"}]})).unwrap();
    assert!(selector.matches(&labels(&[("app", "web"), ("tier", "front")])));
    assert!(selector.matches(&labels(&[("app", "web")])));
    assert!(!selector.matches(&labels(&[("app", "web"), ("tier", "db")])));
    assert!(!selector.matches(&labels(&[("app", "web"), ("gone", "")])));
    assert!(!selector.matches(&labels(&[("app", "api")])));
    let q: Quantity = serde_json::from_value(json!(1048576)).unwrap();
    assert_eq!(q.bytes(), Some(1 << 20));
    assert_eq!(
        serde_json::to_value(Quantity::new("1Gi")).unwrap(),
        json!("1Gi")
    );
    assert!(
        serde_json::from_value::<VpcSpec>(json!({"cidr": "10.0.0.0/8", "extra": 1})).is_err(),
        "closed"
    );
    assert!(
        serde_json::from_value::<PodSpec>(json!({"containers": [], "dnsPolicy": "x"})).is_ok(),
        "open"
    );
}
