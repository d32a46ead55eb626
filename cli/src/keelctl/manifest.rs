//! Manifests: YAML or JSON files with one or more objects, from files, folders or stdin.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::CtlError;

/// One object read from a manifest, with where it came from.
pub struct Manifest {
    /// The object.
    pub object: Value,
    /// `file` (document N) for messages.
    pub source: String,
}

/// Reads every object of `-f` arguments: files, folders (their `.yaml`, `.yml` and `.json`
/// files, sorted, not recursive) or `-` for stdin. `List` objects are expanded.
pub fn read(paths: &[String]) -> Result<Vec<Manifest>, CtlError> {
    let mut out = Vec::new();
    for path in paths {
        if path == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| CtlError(format!("cannot read stdin: {e}")))?;
            parse(&text, "stdin", &mut out)?;
            continue;
        }
        let p = Path::new(path);
        let files: Vec<PathBuf> = if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| CtlError(format!("cannot read {path}: {e}")))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.extension()
                        .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
                })
                .collect();
            files.sort();
            files
        } else {
            vec![p.to_path_buf()]
        };
        for file in files {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| CtlError(format!("cannot read {}: {e}", file.display())))?;
            parse(&text, &file.display().to_string(), &mut out)?;
        }
    }
    if out.is_empty() {
        return Err(CtlError("no objects passed to apply".into()));
    }
    Ok(out)
}

/// Parses YAML (a superset of JSON) documents; errors say which file, which document, and
/// where in it.
pub fn parse(text: &str, name: &str, out: &mut Vec<Manifest>) -> Result<(), CtlError> {
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = serde_norway::Value::deserialize(doc)
            .map_err(|e| CtlError(format!("error parsing {name} (document {}): {e}", i + 1)))?;
        if value.is_null() {
            continue;
        }
        let object: Value = serde_json::to_value(&value)
            .map_err(|e| CtlError(format!("error parsing {name} (document {}): {e}", i + 1)))?;
        let source = format!("{name} (document {})", i + 1);
        if !object.is_object() {
            return Err(CtlError(format!("{source}: not an object")));
        }
        match object["kind"].as_str() {
            Some(k) if k.ends_with("List") && object["items"].is_array() => {
                for item in object["items"].as_array().into_iter().flatten() {
                    out.push(Manifest {
                        object: item.clone(),
                        source: source.clone(),
                    });
                }
            }
            _ => out.push(Manifest { object, source }),
        }
    }
    Ok(())
}

/// An object as YAML, the way `-o yaml` prints it.
pub fn to_yaml(value: &Value) -> String {
    serde_norway::to_string(value).unwrap_or_else(|_| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_lists_and_errors() {
        let mut out = Vec::new();
        parse(
            "a: 1\nkind: X\n---\n---\nkind: ThingList\nitems: [{kind: A}, {kind: B}]\n",
            "f.yaml",
            &mut out,
        )
        .unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out[2].object["kind"], "B");
        let err = parse("kind: X\n---\n: : bad\n  - [", "f.yaml", &mut Vec::new()).unwrap_err();
        assert!(err.0.contains("f.yaml (document 2)"), "{err}");
        assert!(parse("- 1\n- 2\n", "l.yaml", &mut Vec::new()).is_err());
    }
}
