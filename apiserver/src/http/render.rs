//! The forms a read can take, chosen by the `Accept` header as kube-apiserver chooses them:
//! - the objects themselves (`application/json`);
//! - a `Table` (`application/json;as=Table;v=v1;g=meta.k8s.io`): one row per object with the
//!   kind's columns from [`keel_schemas::columns`]: what `kubectl get` prints;
//! - metadata only (`as=PartialObjectMetadata` or `as=PartialObjectMetadataList`): what
//!   kube-rs' metadata watchers and other controllers that need no spec read.
//!
//! Lists, single objects and watch events are all rendered here, so a `Table` watch and a
//! `Table` list have the same columns.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use keel_schemas::Kind;
use keel_schemas::columns::columns;

use super::status::{ApiError, ApiResult};

/// How a read answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// The objects as stored.
    Object,
    /// A `Table` of `meta.k8s.io/{version}`, its rows carrying `include`.
    Table {
        version: &'static str,
        include: Include,
    },
    /// `PartialObjectMetadata` (or its list) of `meta.k8s.io/{version}`.
    Metadata { version: &'static str },
}

/// What each row of a table carries besides its cells (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Include {
    /// Nothing.
    None,
    /// The object's metadata as a `PartialObjectMetadata` (the default).
    Metadata,
    /// The whole object.
    Object,
}

/// The form the client asks for: the first media range of `accept` the server can give
/// (kube-apiserver's order), with `includeObject` from the query. No `Accept` at all means
/// JSON objects; one that names only forms Keel does not serve (protobuf, YAML, a Table of an
/// unknown version) is a 406.
pub(crate) fn negotiate(accept: Option<&str>, query: &HashMap<String, String>) -> ApiResult<Form> {
    let include = match query.get("includeObject").map(String::as_str) {
        None | Some("") | Some("Metadata") => Include::Metadata,
        Some("None") => Include::None,
        Some("Object") => Include::Object,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "includeObject={other:?}: use None, Metadata or Object"
            )));
        }
    };
    let Some(accept) = accept.map(str::trim).filter(|a| !a.is_empty()) else {
        return Ok(Form::Object);
    };
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let params: HashMap<String, String> = parts
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| {
                (
                    k.trim().to_ascii_lowercase(),
                    v.trim().trim_matches('"').to_string(),
                )
            })
            .collect();
        if params
            .get("q")
            .is_some_and(|q| q.parse::<f32>().is_ok_and(|q| q <= 0.0))
        {
            continue;
        }
        if !matches!(media.as_str(), "application/json" | "application/*" | "*/*") {
            continue;
        }
        let Some(as_) = params.get("as") else {
            return Ok(Form::Object);
        };
        let version = match (
            params.get("g").map(String::as_str),
            params.get("v").map(String::as_str),
        ) {
            (Some("meta.k8s.io"), Some("v1")) => "v1",
            (Some("meta.k8s.io"), Some("v1beta1")) => "v1beta1",
            _ => continue,
        };
        match as_.as_str() {
            "Table" => return Ok(Form::Table { version, include }),
            "PartialObjectMetadata" | "PartialObjectMetadataList" => {
                return Ok(Form::Metadata { version });
            }
            _ => continue,
        }
    }
    Err(ApiError::not_acceptable(format!(
        "none of the accepted media types ({accept}) can be served: use application/json, \
         optionally with as=Table or as=PartialObjectMetadata(List);g=meta.k8s.io;v=v1"
    )))
}

/// `PartialObjectMetadata` of an object.
fn partial(version: &str, object: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": format!("meta.k8s.io/{version}"),
        "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

/// A table of `objects` of `kind`; `list_meta` is the list's `metadata` (resourceVersion,
/// continue), empty for one object.
fn table(
    kind: &Kind,
    version: &str,
    include: Include,
    objects: &[Value],
    list_meta: Value,
) -> Value {
    let cols = columns(kind);
    let definitions: Vec<Value> = cols
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "type": c.cell_type,
                "format": c.format,
                "description": c.description,
                "priority": c.priority,
            })
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut row = Map::new();
            row.insert(
                "cells".into(),
                Value::Array(cols.iter().map(|c| (c.cell)(o)).collect()),
            );
            match include {
                Include::None => {}
                Include::Metadata => {
                    row.insert("object".into(), partial(version, o));
                }
                Include::Object => {
                    row.insert("object".into(), o.clone());
                }
            }
            Value::Object(row)
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": format!("meta.k8s.io/{version}"),
        "metadata": list_meta,
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

/// A `...List` in the asked form.
pub(crate) fn list(kind: &Kind, form: Form, items: Vec<Value>, list_meta: Value) -> Value {
    match form {
        Form::Object => json!({
            "apiVersion": kind.api_version(),
            "kind": format!("{}List", kind.kind),
            "metadata": list_meta,
            "items": items,
        }),
        Form::Table { version, include } => table(kind, version, include, &items, list_meta),
        Form::Metadata { version } => json!({
            "kind": "PartialObjectMetadataList",
            "apiVersion": format!("meta.k8s.io/{version}"),
            "metadata": list_meta,
            "items": items.iter().map(|o| partial(version, o)).collect::<Vec<_>>(),
        }),
    }
}

/// One object in the asked form (a GET, or the object of a watch event).
pub(crate) fn object(kind: &Kind, form: Form, object: Value) -> Value {
    match form {
        Form::Object => object,
        Form::Table { version, include } => {
            let rv = object["metadata"]["resourceVersion"].clone();
            let meta = if rv.is_string() {
                json!({"resourceVersion": rv})
            } else {
                json!({})
            };
            table(kind, version, include, std::slice::from_ref(&object), meta)
        }
        Form::Metadata { version } => partial(version, &object),
    }
}

/// The object of a watch BOOKMARK: only `metadata` (the resourceVersion, and an annotation
/// on the bookmark that ends the initial events) matters, in the asked form; a `Table` has
/// no rows.
pub(crate) fn bookmark(kind: &Kind, form: Form, metadata: Value) -> Value {
    match form {
        Form::Object => json!({
            "apiVersion": kind.api_version(),
            "kind": kind.kind,
            "metadata": metadata,
        }),
        Form::Table { version, include } => table(kind, version, include, &[], metadata),
        Form::Metadata { version } => partial(version, &json!({"metadata": metadata})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn accept_headers_choose_the_form() {
        let none = q(&[]);
        assert_eq!(negotiate(None, &none).unwrap(), Form::Object);
        assert_eq!(negotiate(Some("*/*"), &none).unwrap(), Form::Object);
        // What kubectl get sends.
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(
            negotiate(Some(kubectl), &none).unwrap(),
            Form::Table {
                version: "v1",
                include: Include::Metadata
            }
        );
        assert_eq!(
            negotiate(Some(kubectl), &q(&[("includeObject", "Object")])).unwrap(),
            Form::Table {
                version: "v1",
                include: Include::Object
            }
        );
        assert_eq!(
            negotiate(
                Some("application/json; as=PartialObjectMetadataList; g=meta.k8s.io; v=v1"),
                &none
            )
            .unwrap(),
            Form::Metadata { version: "v1" }
        );
        // Protobuf first, JSON as the fallback.
        assert_eq!(
            negotiate(
                Some("application/vnd.kubernetes.protobuf, application/json"),
                &none
            )
            .unwrap(),
            Form::Object
        );
        // A Table of another group, then nothing Keel serves.
        let err = negotiate(
            Some("application/json;as=Table;v=v2;g=example.com,application/yaml"),
            &none,
        )
        .unwrap_err();
        assert_eq!(err.code, 406, "{}", err.message);
        let err = negotiate(Some("application/json"), &q(&[("includeObject", "All")])).unwrap_err();
        assert!(err.message.contains("includeObject"), "{}", err.message);
    }

    #[test]
    fn tables_have_a_row_per_object() {
        let vpc = keel_schemas::lookup("vpc").unwrap();
        let objects = vec![
            json!({"metadata": {"name": "a", "resourceVersion": "7", "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": {"cidr": "10.0.0.0/16"}}),
            json!({"metadata": {"name": "b"}, "spec": {}}),
        ];
        let form = Form::Table {
            version: "v1",
            include: Include::Metadata,
        };
        let t = list(vpc, form, objects.clone(), json!({"resourceVersion": "9"}));
        assert_eq!(t["kind"], "Table");
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["Name", "CIDR", "Age"]);
        assert_eq!(t["rows"][0]["cells"][1], "10.0.0.0/16");
        assert_eq!(t["rows"][1]["cells"][1], Value::Null);
        assert_eq!(t["rows"][1]["cells"][2], "<unknown>");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["rows"][0]["object"]["metadata"]["name"], "a");
        assert_eq!(t["metadata"]["resourceVersion"], "9");
        let one = object(vpc, form, objects[0].clone());
        assert_eq!(one["rows"].as_array().unwrap().len(), 1);
        assert_eq!(one["metadata"]["resourceVersion"], "7");
        let bare = object(
            vpc,
            Form::Table {
                version: "v1",
                include: Include::None,
            },
            objects[0].clone(),
        );
        assert!(bare["rows"][0].get("object").is_none());
        let meta = list(vpc, Form::Metadata { version: "v1" }, objects, json!({}));
        assert_eq!(meta["kind"], "PartialObjectMetadataList");
        assert_eq!(meta["items"][1]["metadata"]["name"], "b");
        assert!(meta["items"][0].get("spec").is_none());
    }
}
