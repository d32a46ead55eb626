//! `get` (tables with columns per kind, `-o yaml|json|wide|name`, `-w`, `-l`, `-A`) and
//! `describe` (spec, status, conditions and recent events).

use clap::Args;
use keel_schemas::time::age;
use keel_schemas::{Kind, Scope, columns};
use serde_json::Value;

use super::manifest::to_yaml;
use super::resource;
use super::{CtlError, Ctx};

/// Arguments of `keelctl get`.
#[derive(Args, Debug)]
pub struct GetArgs {
    /// The kind (or kinds, comma-separated; or KIND/NAME).
    kind: String,
    /// Names (all objects when none).
    names: Vec<String>,
    /// Output: wide, yaml, json or name (a table when not given).
    #[arg(short = 'o', long)]
    output: Option<String>,
    /// Only objects whose labels match (`app=web,tier!=db`).
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// List across all namespaces.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// After listing, watch for changes.
    #[arg(short = 'w', long)]
    watch: bool,
}

/// The value at a dotted path, as text (`<none>` when not set).
fn at(object: &Value, path: &str) -> String {
    columns::cell_text(&columns::at(object, path))
}

/// A table of objects, with the kind's columns (those of priority 1 only when `wide`).
fn table(kind: &Kind, objects: &[Value], all_namespaces: bool, wide: bool, header: bool) -> String {
    let cols: Vec<&columns::Column> = columns::columns(kind)
        .into_iter()
        .filter(|c| wide || c.priority == 0)
        .collect();
    let namespaced = all_namespaces && kind.scope == Scope::Namespaced;
    let mut rows: Vec<Vec<String>> = Vec::new();
    if header {
        let mut h = Vec::new();
        if namespaced {
            h.push("NAMESPACE".to_string());
        }
        h.extend(cols.iter().map(|c| c.name.to_uppercase()));
        rows.push(h);
    }
    for o in objects {
        let mut r = Vec::new();
        if namespaced {
            r.push(at(o, "metadata.namespace"));
        }
        r.extend(cols.iter().map(|c| columns::cell_text(&(c.cell)(o))));
        rows.push(r);
    }
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, String::len))
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            let line: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
                .collect();
            format!("{}\n", line.join("   ").trim_end())
        })
        .collect()
}

fn print_objects(
    kind: &Kind,
    objects: &[Value],
    args: &GetArgs,
    header: bool,
) -> Result<(), CtlError> {
    match args.output.as_deref() {
        None | Some("wide") => {
            if objects.is_empty() && header {
                eprintln!("No resources found.");
            } else {
                print!(
                    "{}",
                    table(
                        kind,
                        objects,
                        args.all_namespaces,
                        args.output.is_some(),
                        header
                    )
                );
            }
        }
        Some("name") => {
            for o in objects {
                println!("{}", resource::display(kind, &at(o, "metadata.name")));
            }
        }
        Some("json") => {
            let out = if objects.len() == 1 && !args.names.is_empty() {
                objects[0].clone()
            } else {
                serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects})
            };
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        }
        Some("yaml") => {
            let out = if objects.len() == 1 && !args.names.is_empty() {
                objects[0].clone()
            } else {
                serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects})
            };
            print!("{}", to_yaml(&out));
        }
        Some(other) => {
            return Err(CtlError(format!(
                "unknown output format {other:?}: use wide, yaml, json or name"
            )));
        }
    }
    Ok(())
}

/// `keelctl get`.
pub async fn get(ctx: &Ctx, args: &GetArgs) -> Result<(), CtlError> {
    let (kinds, names): (Vec<&'static Kind>, Vec<String>) =
        if let Some((k, n)) = args.kind.split_once('/') {
            (vec![resource::kind(k)?], vec![n.to_string()])
        } else {
            let kinds = args
                .kind
                .split(',')
                .map(resource::kind)
                .collect::<Result<Vec<_>, _>>()?;
            (kinds, args.names.clone())
        };
    let query = args
        .selector
        .as_ref()
        .map(|s| format!("?labelSelector={}", encode(s)))
        .unwrap_or_default();
    for (i, kind) in kinds.iter().enumerate() {
        let ns = (!args.all_namespaces).then_some(ctx.namespace.as_str());
        let mut objects = Vec::new();
        let mut revision = String::new();
        if names.is_empty() {
            let list = ctx
                .client
                .get(&format!("{}{query}", resource::collection(kind, ns)))
                .await?;
            revision = list["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            objects = list["items"].as_array().cloned().unwrap_or_default();
        } else {
            for n in &names {
                let o = ctx
                    .client
                    .get(&resource::item(kind, &ctx.namespace, n))
                    .await?;
                // Watch on from the newest of them.
                let rv = o["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default();
                if rv.parse::<u64>().unwrap_or(0) > revision.parse::<u64>().unwrap_or(0) {
                    revision = rv.to_string();
                }
                objects.push(o);
            }
        }
        if i > 0 && args.output.is_none() {
            println!();
        }
        print_objects(kind, &objects, args, true)?;
        if args.watch {
            return watch(ctx, kind, ns, &names, &revision, args).await;
        }
    }
    Ok(())
}

/// `get -w`: prints each change as it comes.
async fn watch(
    ctx: &Ctx,
    kind: &Kind,
    ns: Option<&str>,
    names: &[String],
    revision: &str,
    args: &GetArgs,
) -> Result<(), CtlError> {
    let mut query = format!("?watch=true&resourceVersion={revision}");
    if let Some(s) = &args.selector {
        query.push_str(&format!("&labelSelector={}", encode(s)));
    }
    if let [name] = names {
        query.push_str(&format!("&fieldSelector=metadata.name%3D{}", encode(name)));
    }
    let mut w = ctx
        .client
        .watch(&format!("{}{query}", resource::collection(kind, ns)))
        .await?;
    use std::io::Write;
    while let Some(event) = w.next().await {
        let event = event?;
        let name = event["object"]["metadata"]["name"]
            .as_str()
            .unwrap_or_default();
        if !names.is_empty() && !names.iter().any(|n| n == name) {
            continue;
        }
        match event["type"].as_str() {
            Some("ERROR") => {
                return Err(CtlError(format!(
                    "watch ended: {}",
                    event["object"]["message"]
                )));
            }
            Some("BOOKMARK") => continue,
            _ => print_objects(kind, &[event["object"].clone()], args, false)?,
        }
        let _ = std::io::stdout().flush();
    }
    Ok(())
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// `keelctl describe KIND NAME`.
pub async fn describe(ctx: &Ctx, kind: &str, name: &str) -> Result<(), CtlError> {
    let kind = resource::kind(kind)?;
    let o = ctx
        .client
        .get(&resource::item(kind, &ctx.namespace, name))
        .await?;
    let meta = &o["metadata"];
    let mut out = String::new();
    out.push_str(&format!("Name:         {}\n", at(&o, "metadata.name")));
    if kind.scope == Scope::Namespaced {
        out.push_str(&format!("Namespace:    {}\n", at(&o, "metadata.namespace")));
    }
    out.push_str(&format!(
        "Kind:         {} ({})\n",
        kind.kind,
        kind.api_version()
    ));
    for (title, field) in [("Labels:", "labels"), ("Annotations:", "annotations")] {
        let entries: Vec<String> = meta[field]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| !k.starts_with("kubectl.kubernetes.io/"))
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        out.push_str(&format!(
            "{title:<14}{}\n",
            if entries.is_empty() {
                "<none>".into()
            } else {
                entries.join("\n              ")
            }
        ));
    }
    out.push_str(&format!(
        "Created:      {} ({} ago)\n",
        at(&o, "metadata.creationTimestamp"),
        age(meta["creationTimestamp"].as_str().unwrap_or_default())
    ));
    if meta["deletionTimestamp"].is_string() {
        out.push_str(&format!(
            "Deleting:     since {}; finalizers {}\n",
            at(&o, "metadata.deletionTimestamp"),
            meta["finalizers"]
        ));
    }
    for section in ["spec", "status"] {
        let mut body = o[section].clone();
        if section == "status"
            && let Some(s) = body.as_object_mut()
        {
            s.remove("conditions");
        }
        if !body.is_null() && body != serde_json::json!({}) {
            out.push_str(&format!("{}:\n", capitalize(section)));
            for line in to_yaml(&body).lines() {
                out.push_str(&format!("  {line}\n"));
            }
        }
    }
    if let Some(conditions) = o["status"]["conditions"].as_array() {
        out.push_str("Conditions:\n  TYPE                STATUS   REASON               MESSAGE\n");
        for c in conditions {
            out.push_str(&format!(
                "  {:<19} {:<8} {:<20} {}\n",
                at(c, "type"),
                at(c, "status"),
                at(c, "reason"),
                c["message"].as_str().unwrap_or_default()
            ));
        }
    }
    let ns = if kind.scope == Scope::Namespaced {
        ctx.namespace.as_str()
    } else {
        "default"
    };
    let selector = format!(
        "involvedObject.name={name},involvedObject.kind={}",
        kind.kind
    );
    let events = ctx
        .client
        .get(&format!(
            "/api/v1/namespaces/{ns}/events?fieldSelector={}",
            encode(&selector)
        ))
        .await
        .ok()
        .and_then(|l| l["items"].as_array().cloned())
        .unwrap_or_default();
    if events.is_empty() {
        out.push_str("Events:       <none>\n");
    } else {
        out.push_str("Events:\n  TYPE      REASON               AGE     MESSAGE\n");
        for e in events.iter().rev().take(20).rev() {
            let when = e["lastTimestamp"]
                .as_str()
                .or(e["metadata"]["creationTimestamp"].as_str())
                .unwrap_or_default();
            out.push_str(&format!(
                "  {:<9} {:<20} {:<7} {}\n",
                at(e, "type"),
                at(e, "reason"),
                age(when),
                e["message"].as_str().unwrap_or_default()
            ));
        }
    }
    print!("{out}");
    Ok(())
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn tables_have_kind_columns_and_ages() {
        let vpc = keel_schemas::lookup("vpc").unwrap();
        let objects = vec![
            json!({"metadata": {"name": "main", "namespace": "shop", "creationTimestamp": "2000-01-01T00:00:00Z"}, "spec": {"cidr": "10.0.0.0/16"}}),
        ];
        let t = table(vpc, &objects, true, false, true);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("NAMESPACE   NAME   CIDR") && lines[0].ends_with("AGE"),
            "{t}"
        );
        assert!(
            lines[1].contains("shop")
                && lines[1].contains("10.0.0.0/16")
                && lines[1].ends_with('y'),
            "{t}"
        );
        assert_eq!(encode("app=web,x in (a)"), "app%3Dweb%2Cx%20in%20%28a%29");
    }
}
