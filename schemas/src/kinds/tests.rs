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

/// A value of `schema` with every property it names (the first alternative of a `oneOf` or
/// `anyOf`, the first value of an `enum`): what a tenant may write, all at once.
fn everything(
    schema: &serde_json::Value,
    root: &serde_json::Value,
    depth: usize,
) -> serde_json::Value {
    use serde_json::Value;
    assert!(
        depth < 32,
        "a schema that nests this deep recurses: {schema}"
    );
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.trim_start_matches("#/$defs/");
        return everything(&root["$defs"][name], root, depth + 1);
    }
    for choice in ["oneOf", "anyOf", "allOf"] {
        if let Some(first) = schema[choice].as_array().and_then(|a| a.first()) {
            let mut merged = everything(first, root, depth + 1);
            if let (Some(own), Value::Object(m)) = (schema["properties"].as_object(), &mut merged) {
                for (k, v) in own {
                    m.insert(k.clone(), everything(v, root, depth + 1));
                }
            }
            return merged;
        }
    }
    if let Some(v) = schema.get("const") {
        return v.clone();
    }
    if let Some(v) = schema["enum"].as_array().and_then(|e| e.first()) {
        return v.clone();
    }
    let type_ = match &schema["type"] {
        Value::Array(types) => types.first().and_then(Value::as_str).unwrap_or("object"),
        Value::String(t) => t.as_str(),
        _ if schema.get("properties").is_some() => "object",
        _ => "string",
    };
    match type_ {
        "object" => {
            let mut out = serde_json::Map::new();
            for (k, v) in schema["properties"].as_object().into_iter().flatten() {
                out.insert(k.clone(), everything(v, root, depth + 1));
            }
            if let Some(values) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                out.insert("key".into(), everything(values, root, depth + 1));
            }
            Value::Object(out)
        }
        "array" => Value::Array(vec![everything(&schema["items"], root, depth + 1)]),
        "integer" | "number" => json!(1),
        "boolean" => json!(true),
        "null" => Value::Null,
        _ => json!("1"),
    }
}

/// `rules`: fields whose valid values validation decides rather than the schema — left out
/// (`None`: refused with a reason), or given a value it accepts.
fn decodes_everything<T: DeserializeOwned>(plural: &str, rules: &[(&str, Option<&str>)]) {
    fn apply(value: &mut serde_json::Value, rules: &[(&str, Option<&str>)]) {
        match value {
            serde_json::Value::Object(map) => {
                for (field, valid) in rules {
                    match valid {
                        None => drop(map.remove(*field)),
                        Some(v) if map.contains_key(*field) => {
                            drop(map.insert(field.to_string(), json!(v)))
                        }
                        Some(_) => {}
                    }
                }
                map.values_mut().for_each(|v| apply(v, rules));
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| apply(v, rules)),
            _ => {}
        }
    }
    let kind = lookup(plural).unwrap();
    let schema = crate::schema::schema(kind);
    let mut object = everything(schema, schema, 0);
    apply(&mut object, rules);
    // Pruning (what a cache does before decoding) keeps every field the schema names.
    let mut pruned = object.clone();
    assert_eq!(
        crate::prune(kind, &mut pruned),
        Vec::<String>::new(),
        "{plural}"
    );
    assert_eq!(pruned, object, "{plural}");
    if let Err(e) = serde_json::from_value::<T>(object.clone()) {
        panic!("{plural}: a field its schema allows does not decode: {e}\n{object:#}");
    }
}

/// Every field each of Keel's own kinds' schemas allows decodes into its struct: a typed
/// cache never leaves out an object the API server accepted (the structs are closed).
#[test]
fn every_field_a_schema_allows_decodes_into_its_type() {
    decodes_everything::<VirtualMachine>("virtualmachines", &[]);
    decodes_everything::<ClusterImage>("clusterimages", &[]);
    decodes_everything::<Vpc>("vpcs", &[]);
    decodes_everything::<Subnet>("subnets", &[]);
    decodes_everything::<SecurityGroup>("securitygroups", &[]);
    decodes_everything::<LoadBalancer>("loadbalancers", &[]);
    decodes_everything::<Zone>("zones", &[]);
    decodes_everything::<Bucket>("buckets", &[]);
    decodes_everything::<GitRepository>("gitrepositories", &[]);
    decodes_everything::<Revision>("revisions", &[]);
    decodes_everything::<ResourceQuota>("resourcequotas", &[]);
    // Kubernetes' ratio is named so that it is refused with a reason; the types limited are
    // checked by validation (which names the ones Keel does not limit).
    let limits = [
        ("maxLimitRequestRatio", None),
        ("type", Some("VirtualMachine")),
    ];
    decodes_everything::<LimitRange>("limitranges", &limits);
    decodes_everything::<super::access::UserToken>("usertokens", &[]);
    decodes_everything::<Node>("nodes", &[]);
    decodes_everything::<Namespace>("namespaces", &[]);
    decodes_everything::<Lease>("leases", &[]);
    decodes_everything::<Secret>("secrets", &[]);
    decodes_everything::<ServiceAccount>("serviceaccounts", &[]);
}
