//! `get` (tables with columns per kind, `-o yaml|json|wide|name`, `-w`, `-l`, `-A`) and
//! `describe` (spec, status, conditions and recent events).

use std::time::{SystemTime, UNIX_EPOCH};

use clap::Args;
use keel_schemas::{Kind, Scope};
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

/// A column: header and how to read it from an object.
struct Column {
    header: &'static str,
    value: fn(&Value) -> String,
    wide_only: bool,
}

const fn col(header: &'static str, value: fn(&Value) -> String) -> Column {
    Column {
        header,
        value,
        wide_only: false,
    }
}

/// The value at a dotted path (`spec.cidr`, `spec.nics.0.subnet`), as text.
fn at(object: &Value, path: &str) -> String {
    let v = path
        .split('.')
        .fold(object, |v, seg| match seg.parse::<usize>() {
            Ok(i) => &v[i],
            Err(_) => &v[seg],
        });
    match v {
        Value::Null => "<none>".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn count(object: &Value, path: &str) -> String {
    let v = path.split('.').fold(object, |v, seg| &v[seg]);
    match v {
        Value::Array(a) => a.len().to_string(),
        Value::Object(o) => o.len().to_string(),
        _ => "0".into(),
    }
}

/// The status of condition `kind` (`True`, `False`, `Unknown`), or `<none>`.
fn condition(object: &Value, kind: &str) -> String {
    object["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("<none>")
        .to_string()
}

fn columns(kind: &Kind) -> Vec<Column> {
    match kind.kind {
        "VirtualMachine" => vec![
            col("PHASE", |o| at(o, "status.phase")),
            col("READY", |o| condition(o, "Ready")),
            col("NODE", |o| at(o, "status.nodeName")),
            col("CPU", |o| at(o, "spec.cpu")),
            col("MEMORY", |o| at(o, "spec.memory")),
            Column {
                header: "IP",
                value: |o| at(o, "status.interfaces.0.ip"),
                wide_only: true,
            },
        ],
        "VPC" => vec![col("CIDR", |o| at(o, "spec.cidr"))],
        "Subnet" => vec![
            col("VPC", |o| at(o, "spec.vpc")),
            col("CIDR", |o| at(o, "spec.cidr")),
            col("GATEWAY", |o| at(o, "spec.gateway")),
        ],
        "SecurityGroup" => vec![
            col("INGRESS", |o| count(o, "spec.ingress")),
            col("EGRESS", |o| count(o, "spec.egress")),
        ],
        "Zone" => vec![
            col("DOMAIN", |o| at(o, "spec.domain")),
            col("RECORDS", |o| count(o, "spec.records")),
        ],
        "Bucket" => vec![
            col("BUCKET", |o| at(o, "spec.bucketName")),
            col("READY", |o| condition(o, "Ready")),
            Column {
                header: "ENDPOINT",
                value: |o| at(o, "status.endpoint"),
                wide_only: true,
            },
        ],
        "LoadBalancer" => vec![
            col("VIP", |o| at(o, "spec.vip")),
            col("PORTS", |o| {
                o["spec"]["listeners"]
                    .as_array()
                    .map(|ls| {
                        ls.iter()
                            .map(|l| at(l, "port"))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default()
            }),
            col("READY", |o| condition(o, "Ready")),
        ],
        "GitRepository" => vec![
            col("URL", |o| at(o, "spec.url")),
            col("READY", |o| condition(o, "Ready")),
        ],
        "Revision" => vec![
            col("TARGET", |o| {
                format!(
                    "{}/{}",
                    at(o, "spec.target.kind"),
                    at(o, "spec.target.name")
                )
            }),
            col("REVISION", |o| at(o, "spec.revision")),
            col("PHASE", |o| at(o, "status.phase")),
        ],
        "Namespace" => vec![col("STATUS", |o| at(o, "status.phase"))],
        "Node" => vec![col("STATUS", |o| match condition(o, "Ready").as_str() {
            "True" => "Ready".into(),
            "<none>" => "Unknown".into(),
            _ => "NotReady".into(),
        })],
        "Pod" => vec![
            col("STATUS", |o| at(o, "status.phase")),
            col("NODE", |o| at(o, "spec.nodeName")),
        ],
        "Service" => vec![
            col("TYPE", |o| at(o, "spec.type")),
            col("CLUSTER-IP", |o| at(o, "spec.clusterIP")),
        ],
        "Event" => vec![
            col("TYPE", |o| at(o, "type")),
            col("REASON", |o| at(o, "reason")),
            col("OBJECT", |o| {
                format!(
                    "{}/{}",
                    at(o, "involvedObject.kind").to_lowercase(),
                    at(o, "involvedObject.name")
                )
            }),
            col("MESSAGE", |o| at(o, "message")),
        ],
        "Secret" => vec![
            col("TYPE", |o| at(o, "type")),
            col("DATA", |o| count(o, "data")),
        ],
        "ConfigMap" => vec![col("DATA", |o| count(o, "data"))],
        "Lease" => vec![col("HOLDER", |o| at(o, "spec.holderIdentity"))],
        _ => vec![],
    }
}

/// How long ago an RFC 3339 timestamp was, kubectl-style (`42s`, `5m`, `3h`, `12d`).
fn age(timestamp: &str) -> String {
    let Some(then) = parse_rfc3339(timestamp) else {
        return "<unknown>".into();
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let secs = now.saturating_sub(then);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Seconds since the epoch of `YYYY-MM-DDTHH:MM:SSZ`.
fn parse_rfc3339(t: &str) -> Option<u64> {
    let n = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    // Days from civil (Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

/// A table of objects.
fn table(kind: &Kind, objects: &[Value], all_namespaces: bool, wide: bool, header: bool) -> String {
    let cols: Vec<Column> = columns(kind)
        .into_iter()
        .filter(|c| wide || !c.wide_only)
        .collect();
    let mut rows: Vec<Vec<String>> = Vec::new();
    if header {
        let mut h = Vec::new();
        if all_namespaces && kind.scope == Scope::Namespaced {
            h.push("NAMESPACE".to_string());
        }
        h.push("NAME".into());
        h.extend(cols.iter().map(|c| c.header.to_string()));
        h.push("AGE".into());
        rows.push(h);
    }
    for o in objects {
        let mut r = Vec::new();
        if all_namespaces && kind.scope == Scope::Namespaced {
            r.push(at(o, "metadata.namespace"));
        }
        r.push(at(o, "metadata.name"));
        r.extend(cols.iter().map(|c| (c.value)(o)));
        r.push(age(o["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap_or_default()));
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
                && lines[1].ends_with('d'),
            "{t}"
        );
        assert_eq!(parse_rfc3339("1970-01-02T00:00:01Z"), Some(86_401));
        assert_eq!(parse_rfc3339("2026-11-23T13:45:09Z"), Some(1_795_441_509));
        assert_eq!(encode("app=web,x in (a)"), "app%3Dweb%2Cx%20in%20%28a%29");
    }
}
