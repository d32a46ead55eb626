//! `explain`: a kind's or a field's documentation, from the schemas Keel validates with.

use serde_json::Value;

use super::CtlError;
use super::resource;

/// Explains `KIND` or `KIND.field.path`.
pub fn explain(target: &str) -> Result<String, CtlError> {
    let mut parts = target.split('.');
    let kind = resource::kind(parts.next().unwrap_or_default())?;
    let mut schema = keel_schemas::openapi_schema(kind);
    let mut field_schema = None;
    let mut path = Vec::new();
    for field in parts {
        let next = properties(schema)
            .and_then(|p| p.get(field))
            .ok_or_else(|| {
                CtlError(format!(
                    "field {field:?} does not exist in {}{}",
                    kind.kind,
                    path.iter().map(|p| format!(".{p}")).collect::<String>()
                ))
            })?;
        path.push(field);
        field_schema = Some(next);
        schema = element(next);
    }
    let mut out = format!(
        "KIND:     {}\nVERSION:  {}\n\n",
        kind.kind,
        kind.api_version()
    );
    if let Some(field) = path.last() {
        out.push_str(&format!(
            "FIELD:    {field} <{}>\n\n",
            type_name(field_schema.unwrap_or(schema))
        ));
    }
    out.push_str("DESCRIPTION:\n");
    for line in wrap(schema["description"].as_str().unwrap_or("<empty>"), 76) {
        out.push_str(&format!("    {line}\n"));
    }
    if let Some(props) = properties(schema) {
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        out.push_str("\nFIELDS:\n");
        for (name, sub) in props {
            let req = if required.contains(&name.as_str()) {
                " -required-"
            } else {
                ""
            };
            out.push_str(&format!("  {name}\t<{}>{req}\n", type_name(sub)));
            let first = sub["description"].as_str().unwrap_or_default();
            for line in wrap(first, 72) {
                out.push_str(&format!("    {line}\n"));
            }
            out.push('\n');
        }
    }
    Ok(out)
}

/// An object schema's fields.
fn properties(schema: &Value) -> Option<&serde_json::Map<String, Value>> {
    schema["properties"].as_object()
}

/// For a list, its items' schema; otherwise the schema.
fn element(schema: &Value) -> &Value {
    if schema["type"] == "array" {
        &schema["items"]
    } else {
        schema
    }
}

fn type_name(schema: &Value) -> String {
    if schema["type"] == "array" {
        return format!("[]{}", type_name(&schema["items"]));
    }
    match schema["type"].as_str() {
        Some("object") if schema["properties"].is_object() => "Object".into(),
        Some("object") => "map".into(),
        Some(t) => t.into(),
        None if schema["x-kubernetes-int-or-string"] == true => "IntOrString".into(),
        None => "Object".into(),
    }
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + word.len() + 1 > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_fields_are_explained() {
        let vm = explain("vm").unwrap();
        assert!(
            vm.contains("KIND:     VirtualMachine") && vm.contains("spec\t<Object>"),
            "{vm}"
        );
        let disks = explain("vm.spec.disks").unwrap();
        assert!(
            disks.contains("FIELD:    disks <[]Object>")
                && disks.contains("name\t<string> -required-"),
            "{disks}"
        );
        assert!(explain("vm.spec.nope").unwrap_err().0.contains("nope"));
        assert!(explain("frob").is_err());
    }
}
