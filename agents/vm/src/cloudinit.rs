//! The cloud-init NoCloud seed of a VM: `user-data`, `meta-data` and `network-config` on an
//! ISO 9660 image labelled `cidata` (what `cloud-localds` makes), attached read-only.
//!
//! User data is checked before it reaches a guest: a `#cloud-config` document must be YAML
//! mapping, and anything else must be a form cloud-init knows; a malformed one fails the VM
//! with a message naming the problem instead of booting a guest that silently ignores it.

use std::path::Path;

use keel_schemas::kinds::compute::CloudInit;

/// The first lines cloud-init recognises, besides `#cloud-config`.
const OTHER_FORMATS: [&str; 6] = [
    "#!",
    "#include",
    "#cloud-boothook",
    "#upstart-job",
    "#part-handler",
    "Content-Type:",
];
/// The tools that make an ISO 9660 image, in order of preference, with their arguments.
const ISO_TOOLS: [&str; 3] = ["genisoimage", "mkisofs", "xorrisofs"];

/// Why a seed could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CloudInitError {
    /// The user or network data is malformed.
    #[error("spec.cloudInit.{field}: {message}")]
    Invalid {
        /// `userData` or `networkData`.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// No tool to make the image is installed.
    #[error("no genisoimage, mkisofs or xorrisofs on this node to make the cloud-init seed")]
    NoTool,
    /// The image could not be made.
    #[error("cannot make the cloud-init seed {path}: {message}")]
    Build {
        /// The image.
        path: String,
        /// What failed.
        message: String,
    },
}

// === impl CloudInitError ===

impl CloudInitError {
    /// The reason a VM condition gives for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            CloudInitError::Invalid { .. } => "InvalidCloudInit",
            CloudInitError::NoTool | CloudInitError::Build { .. } => "CloudInitSeedFailed",
        }
    }
}

/// Checks the user and network data.
pub fn validate(data: &CloudInit) -> Result<(), CloudInitError> {
    if let Some(user) = &data.user_data {
        let first = user.lines().next().unwrap_or("").trim_end();
        if first == "#cloud-config" {
            let rest = user.split_once('\n').map(|(_, r)| r).unwrap_or("");
            yaml_mapping(rest).map_err(|message| CloudInitError::Invalid {
                field: "userData",
                message: format!("#cloud-config is not a YAML mapping: {message}"),
            })?;
        } else if !OTHER_FORMATS.iter().any(|f| first.starts_with(f)) {
            return Err(CloudInitError::Invalid {
                field: "userData",
                message: format!(
                    "starts with {:?}: user data must start with #cloud-config, #! (a script), #include, #cloud-boothook or be a MIME multipart message",
                    first.chars().take(40).collect::<String>()
                ),
            });
        }
    }
    if let Some(network) = &data.network_data {
        yaml_mapping(network).map_err(|message| CloudInitError::Invalid {
            field: "networkData",
            message: format!("not a YAML mapping: {message}"),
        })?;
    }
    Ok(())
}

fn yaml_mapping(text: &str) -> Result<(), String> {
    match serde_norway::from_str::<serde_norway::Value>(text) {
        Ok(serde_norway::Value::Mapping(_) | serde_norway::Value::Null) => Ok(()),
        Ok(other) => Err(format!("the document is a {}", kind_of(&other))),
        Err(e) => Err(e.to_string()),
    }
}

fn kind_of(v: &serde_norway::Value) -> &'static str {
    match v {
        serde_norway::Value::Sequence(_) => "list",
        serde_norway::Value::String(_) => "string",
        serde_norway::Value::Number(_) => "number",
        serde_norway::Value::Bool(_) => "boolean",
        _ => "scalar",
    }
}

/// Writes the seed image for `data` to `path` (after [`validate`]); `instance_id` and
/// `hostname` go into `meta-data`.
pub async fn write_seed(
    path: &Path,
    data: &CloudInit,
    instance_id: &str,
    hostname: &str,
) -> Result<(), CloudInitError> {
    validate(data)?;
    let build = |message: String| CloudInitError::Build {
        path: path.display().to_string(),
        message,
    };
    let staging = path.with_extension("d");
    let _ = tokio::fs::remove_dir_all(&staging).await;
    tokio::fs::create_dir_all(&staging)
        .await
        .map_err(|e| build(e.to_string()))?;
    let mut files = vec![
        (
            "meta-data",
            format!("instance-id: {instance_id}\nlocal-hostname: {hostname}\n"),
        ),
        ("user-data", data.user_data.clone().unwrap_or_default()),
    ];
    if let Some(network) = &data.network_data {
        files.push(("network-config", network.clone()));
    }
    for (name, text) in &files {
        tokio::fs::write(staging.join(name), text)
            .await
            .map_err(|e| build(e.to_string()))?;
    }
    let mut last_error = None;
    for tool in ISO_TOOLS {
        let out = tokio::process::Command::new(tool)
            .arg("-quiet")
            .arg("-output")
            .arg(path)
            .args(["-volid", "cidata", "-joliet", "-rock"])
            .args(files.iter().map(|(name, _)| staging.join(name)))
            .output()
            .await;
        match out {
            Ok(out) if out.status.success() => {
                let _ = tokio::fs::remove_dir_all(&staging).await;
                return Ok(());
            }
            Ok(out) => {
                last_error = Some(build(format!(
                    "{tool}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => last_error = Some(build(format!("{tool}: {e}"))),
        }
    }
    let _ = tokio::fs::remove_dir_all(&staging).await;
    Err(last_error.unwrap_or(CloudInitError::NoTool))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> CloudInit {
        CloudInit {
            user_data: Some(text.into()),
            network_data: None,
        }
    }

    #[test]
    fn user_data_is_checked_before_it_reaches_a_guest() {
        assert!(validate(&user("#cloud-config\npackages: [nginx]\n")).is_ok());
        assert!(validate(&user("#cloud-config\n")).is_ok());
        assert!(validate(&user("#!/bin/sh\necho hi\n")).is_ok());
        assert!(validate(&user("Content-Type: multipart/mixed; boundary=x\n")).is_ok());
        let bad = validate(&user("#cloud-config\npackages: [nginx\n")).unwrap_err();
        assert_eq!(bad.reason(), "InvalidCloudInit");
        assert!(
            bad.to_string()
                .starts_with("spec.cloudInit.userData: #cloud-config is not a YAML mapping"),
            "{bad}"
        );
        let list = validate(&user("#cloud-config\n- a\n- b\n")).unwrap_err();
        assert!(list.to_string().contains("is a list"), "{list}");
        let unknown = validate(&user("packages: [nginx]\n")).unwrap_err();
        assert!(
            unknown
                .to_string()
                .contains("must start with #cloud-config"),
            "{unknown}"
        );
        let network = validate(&CloudInit {
            user_data: None,
            network_data: Some("version: [2\n".into()),
        })
        .unwrap_err();
        assert!(
            network
                .to_string()
                .starts_with("spec.cloudInit.networkData"),
            "{network}"
        );
    }
}
