//! The columns a table of each kind shows: what `kubectl get` prints from the API server's
//! `Table` responses and what `keelctl get` prints, defined once here (the role of a CRD's
//! `additionalPrinterColumns`).
//!
//! Every table starts with `Name` and ends with `Age`; in between come the kind's own
//! columns. A column of priority 0 is always shown, one of priority 1 only with `-o wide`.
//! Cells are JSON values: a string, a number, or null for a field that is not set (printed
//! `<none>`).

use serde_json::Value;

use crate::Kind;
use crate::time::age;

/// One column of a kind's table.
#[derive(Debug)]
pub struct Column {
    /// The title (`Phase`; kubectl prints it upper-cased).
    pub name: &'static str,
    /// The OpenAPI type of its cells: `string` or `integer`.
    pub cell_type: &'static str,
    /// `name` for the column that names the object, else empty.
    pub format: &'static str,
    /// What the column shows.
    pub description: &'static str,
    /// 0: always shown; 1: only in wide output.
    pub priority: u8,
    /// The cell of an object.
    pub cell: fn(&Value) -> Value,
}

const fn text(name: &'static str, description: &'static str, cell: fn(&Value) -> Value) -> Column {
    Column {
        name,
        cell_type: "string",
        format: "",
        description,
        priority: 0,
        cell,
    }
}

const fn number(
    name: &'static str,
    description: &'static str,
    cell: fn(&Value) -> Value,
) -> Column {
    Column {
        cell_type: "integer",
        ..text(name, description, cell)
    }
}

const fn wide(column: Column) -> Column {
    Column {
        priority: 1,
        ..column
    }
}

/// The column that names the object.
pub static NAME: Column = Column {
    format: "name",
    ..text(
        "Name",
        "Name must be unique within a namespace. It is required when creating resources.",
        |o| {
            // kubectl marks the default StorageClass so (`local-path (default)`).
            let default_class = o["kind"] == "StorageClass"
                && o["metadata"]["annotations"][crate::kinds::storage::DEFAULT_CLASS_ANNOTATION]
                    == "true";
            match (at(o, "metadata.name"), default_class) {
                (Value::String(name), true) => Value::String(format!("{name} (default)")),
                (name, _) => name,
            }
        },
    )
};

/// The object's age.
pub static AGE: Column = text(
    "Age",
    "How long ago the object was created (metadata.creationTimestamp).",
    |o| {
        Value::String(age(o["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap_or_default()))
    },
);

static VIRTUAL_MACHINE: &[Column] = &[
    text("Phase", "The VM's lifecycle phase.", |o| {
        at(o, "status.phase")
    }),
    text("Ready", "The status of the Ready condition.", |o| {
        condition(o, "Ready")
    }),
    text("Node", "The host the VM runs on.", |o| {
        at(o, "status.nodeName")
    }),
    number("CPU", "Virtual CPUs.", |o| at(o, "spec.cpu")),
    text("Memory", "Guest memory.", |o| at(o, "spec.memory")),
    wide(text("IP", "The address of the first NIC.", |o| {
        at(o, "status.interfaces.0.ip")
    })),
];

static VPC: &[Column] = &[text("CIDR", "The VPC's address range.", |o| {
    at(o, "spec.cidr")
})];

static SUBNET: &[Column] = &[
    text("VPC", "The VPC the subnet belongs to.", |o| {
        at(o, "spec.vpc")
    }),
    text("CIDR", "The subnet's address range.", |o| {
        at(o, "spec.cidr")
    }),
    text("Gateway", "The subnet's gateway address.", |o| {
        at(o, "spec.gateway")
    }),
];

static SECURITY_GROUP: &[Column] = &[
    number("Ingress", "Inbound rules.", |o| count(o, "spec.ingress")),
    number("Egress", "Outbound rules.", |o| count(o, "spec.egress")),
];

static ZONE: &[Column] = &[
    text("Domain", "The zone's domain.", |o| at(o, "spec.domain")),
    number("Serial", "The SOA serial served.", |o| {
        at(o, "status.serial")
    }),
    number("Records", "Records served, generated ones included.", |o| {
        at(o, "status.recordCount")
    }),
    text("Ready", "The status of the Ready condition.", |o| {
        condition(o, "Ready")
    }),
    wide(text(
        "Served-By",
        "The nodes answering at the current serial.",
        |o| {
            let nodes = o["status"]["servedBy"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let names: Vec<&str> = nodes.iter().filter_map(Value::as_str).collect();
            Value::String(names.join(","))
        },
    )),
];

static BUCKET: &[Column] = &[
    text("Bucket", "The S3 bucket name.", |o| {
        at(o, "spec.bucketName")
    }),
    text("Ready", "The status of the Ready condition.", |o| {
        condition(o, "Ready")
    }),
    wide(text(
        "Endpoint",
        "The S3 endpoint serving the bucket.",
        |o| at(o, "status.endpoint"),
    )),
];

static LOAD_BALANCER: &[Column] = &[
    text("VIP", "The virtual IP clients connect to.", |o| {
        at(o, "spec.vip")
    }),
    text("Ports", "The listeners' ports.", |o| {
        let ports: Vec<String> = o["spec"]["listeners"]
            .as_array()
            .map(|ls| ls.iter().map(|l| l["port"].to_string()).collect())
            .unwrap_or_default();
        Value::String(ports.join(","))
    }),
    text("Ready", "The status of the Ready condition.", |o| {
        condition(o, "Ready")
    }),
];

static GIT_REPOSITORY: &[Column] = &[
    text("URL", "The repository's URL.", |o| at(o, "spec.url")),
    text("Ready", "The status of the Ready condition.", |o| {
        condition(o, "Ready")
    }),
];

static REVISION: &[Column] = &[
    text("Target", "The object this revision belongs to.", |o| {
        Value::String(format!(
            "{}/{}",
            o["spec"]["target"]["kind"].as_str().unwrap_or_default(),
            o["spec"]["target"]["name"].as_str().unwrap_or_default()
        ))
    }),
    number("Revision", "The revision's number.", |o| {
        at(o, "spec.revision")
    }),
    text(
        "Phase",
        "Whether the revision is current, rolled back, ...",
        |o| at(o, "status.phase"),
    ),
];

static NAMESPACE: &[Column] = &[text(
    "Status",
    "Active, or Terminating while it is deleted.",
    |o| at(o, "status.phase"),
)];

static NODE: &[Column] = &[
    text("Status", "Ready, NotReady or Unknown.", |o| {
        let ready = o["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
            .and_then(|c| c["status"].as_str());
        let status = match ready {
            Some("True") => "Ready",
            Some(_) => "NotReady",
            None => "Unknown",
        };
        let cordoned = o["spec"]["unschedulable"] == true;
        Value::String(if cordoned {
            format!("{status},SchedulingDisabled")
        } else {
            status.to_string()
        })
    }),
    text("Version", "The agent's version.", |o| {
        at(o, "status.nodeInfo.kubeletVersion")
    }),
    wide(text(
        "Internal-IP",
        "The node's address in the cluster.",
        |o| {
            let addresses = o["status"]["addresses"].as_array();
            let internal = addresses.and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"));
            internal.map_or(Value::Null, |a| a["address"].clone())
        },
    )),
    wide(text("Kernel-Version", "The host's kernel.", |o| {
        at(o, "status.nodeInfo.kernelVersion")
    })),
    wide(text(
        "Container-Runtime",
        "The runtime that runs the node's pods (containerd://1.6.20).",
        |o| at(o, "status.nodeInfo.containerRuntimeVersion"),
    )),
];

static POD: &[Column] = &[
    text("Ready", "Containers ready, of all.", |o| {
        let statuses = o["status"]["containerStatuses"].as_array();
        let ready = statuses.map_or(0, |s| s.iter().filter(|c| c["ready"] == true).count());
        let total = o["spec"]["containers"].as_array().map_or(0, Vec::len);
        Value::String(format!("{ready}/{total}"))
    }),
    text(
        "Status",
        "The pod's phase, or why a container waits or ended (CrashLoopBackOff, ErrImagePull, Completed), as kubectl shows it.",
        pod_status,
    ),
    number("Restarts", "Restarts of its containers.", |o| {
        let statuses = o["status"]["containerStatuses"].as_array();
        let restarts: i64 = statuses.map_or(0, |s| {
            s.iter().filter_map(|c| c["restartCount"].as_i64()).sum()
        });
        Value::from(restarts)
    }),
    wide(text("IP", "The pod's address.", |o| at(o, "status.podIP"))),
    wide(text("Node", "The node the pod runs on.", |o| {
        at(o, "spec.nodeName")
    })),
];

/// A pod's status as kubectl prints it: the reason a container waits or ended, else the
/// phase; `Terminating` while it is deleted.
fn pod_status(o: &Value) -> Value {
    if o["metadata"]["deletionTimestamp"].is_string() {
        return Value::String("Terminating".into());
    }
    let mut reason = o["status"]["reason"]
        .as_str()
        .or(o["status"]["phase"].as_str())
        .unwrap_or("Pending")
        .to_string();
    let init = o["status"]["initContainerStatuses"].as_array();
    let init_waiting = init.into_iter().flatten().find_map(|c| {
        let state = &c["state"];
        let why = state["waiting"]["reason"]
            .as_str()
            .filter(|r| *r != "PodInitializing");
        why.or(state["terminated"]["reason"]
            .as_str()
            .filter(|_| state["terminated"]["exitCode"] != 0))
            .map(|r| format!("Init:{r}"))
    });
    if let Some(r) = init_waiting {
        return Value::String(r);
    }
    for c in o["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let state = &c["state"];
        if let Some(r) = state["waiting"]["reason"]
            .as_str()
            .filter(|r| !r.is_empty())
        {
            reason = r.to_string();
        } else if let Some(r) = state["terminated"]["reason"]
            .as_str()
            .filter(|r| !r.is_empty())
        {
            reason = r.to_string();
        }
    }
    Value::String(reason)
}

static DEPLOYMENT: &[Column] = &[
    text("Ready", "Ready pods, of those wanted.", |o| {
        let ready = o["status"]["readyReplicas"].as_i64().unwrap_or(0);
        let wanted = o["spec"]["replicas"].as_i64().unwrap_or(1);
        Value::String(format!("{ready}/{wanted}"))
    }),
    number("Up-to-date", "Pods of the current template.", |o| {
        Value::from(o["status"]["updatedReplicas"].as_i64().unwrap_or(0))
    }),
    number("Available", "Pods available to serve.", |o| {
        Value::from(o["status"]["availableReplicas"].as_i64().unwrap_or(0))
    }),
    wide(text(
        "Images",
        "The images of the template's containers.",
        template_images,
    )),
];

static DAEMON_SET: &[Column] = &[
    number("Desired", "Nodes that should run its pod.", |o| {
        Value::from(o["status"]["desiredNumberScheduled"].as_i64().unwrap_or(0))
    }),
    number("Current", "Nodes that run it.", |o| {
        Value::from(o["status"]["currentNumberScheduled"].as_i64().unwrap_or(0))
    }),
    number("Ready", "Nodes whose pod is ready.", |o| {
        Value::from(o["status"]["numberReady"].as_i64().unwrap_or(0))
    }),
    number(
        "Up-to-date",
        "Nodes whose pod is of the current template.",
        |o| Value::from(o["status"]["updatedNumberScheduled"].as_i64().unwrap_or(0)),
    ),
    number("Available", "Nodes whose pod is available.", |o| {
        Value::from(o["status"]["numberAvailable"].as_i64().unwrap_or(0))
    }),
    wide(text(
        "Images",
        "The images of the template's containers.",
        template_images,
    )),
];

static JOB: &[Column] = &[
    text("Status", "Running, Complete, Failed or Suspended.", |o| {
        let conditions = o["status"]["conditions"].as_array();
        let done = conditions.into_iter().flatten().find(|c| {
            c["status"] == "True"
                && matches!(
                    c["type"].as_str(),
                    Some("Complete" | "Failed" | "Suspended")
                )
        });
        Value::String(
            done.and_then(|c| c["type"].as_str())
                .unwrap_or("Running")
                .to_string(),
        )
    }),
    text(
        "Completions",
        "Pods that succeeded, of those wanted.",
        |o| {
            let done = o["status"]["succeeded"].as_i64().unwrap_or(0);
            let wanted = o["spec"]["completions"].as_i64().unwrap_or(1);
            Value::String(format!("{done}/{wanted}"))
        },
    ),
    text(
        "Duration",
        "From its start to its completion, or to now.",
        |o| {
            let start = o["status"]["startTime"]
                .as_str()
                .and_then(crate::time::parse_rfc3339);
            let end = o["status"]["completionTime"]
                .as_str()
                .and_then(crate::time::parse_rfc3339)
                .unwrap_or_else(crate::time::now_secs);
            Value::String(start.map_or(String::new(), |s| format!("{}s", end.saturating_sub(s))))
        },
    ),
    wide(text(
        "Images",
        "The images of the template's containers.",
        template_images,
    )),
];

static CRON_JOB: &[Column] = &[
    text("Schedule", "When it makes a Job.", |o| {
        o["spec"]["schedule"].clone()
    }),
    text("Timezone", "The zone the schedule is read in.", |o| {
        o["spec"]["timeZone"].clone()
    }),
    text("Suspend", "Whether no run starts.", |o| {
        Value::String(o["spec"]["suspend"].as_bool().unwrap_or(false).to_string())
    }),
    number("Active", "Its Jobs that run.", |o| {
        Value::from(o["status"]["active"].as_array().map_or(0, Vec::len))
    }),
    text("Last Schedule", "The last time a Job was made for.", |o| {
        o["status"]["lastScheduleTime"].clone()
    }),
];

static STATEFUL_SET: &[Column] = &[
    text("Ready", "Ready pods out of those wanted.", |o| {
        Value::String(format!(
            "{}/{}",
            o["status"]["readyReplicas"].as_i64().unwrap_or(0),
            o["spec"]["replicas"].as_i64().unwrap_or(1)
        ))
    }),
    wide(text(
        "Containers",
        "The names of the template's containers.",
        |o| {
            let names: Vec<&str> = o["spec"]["template"]["spec"]["containers"]
                .as_array()
                .map(|cs| cs.iter().filter_map(|c| c["name"].as_str()).collect())
                .unwrap_or_default();
            Value::String(names.join(","))
        },
    )),
    wide(text(
        "Images",
        "The images of the template's containers.",
        template_images,
    )),
];

/// The access modes as kubectl abbreviates them (`RWO,ROX`).
fn access_modes(modes: &Value) -> Value {
    let short: Vec<&str> = modes
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|m| match m.as_str()? {
                    "ReadWriteOnce" => Some("RWO"),
                    "ReadOnlyMany" => Some("ROX"),
                    "ReadWriteMany" => Some("RWX"),
                    "ReadWriteOncePod" => Some("RWOP"),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Value::String(short.join(","))
}

static PERSISTENT_VOLUME_CLAIM: &[Column] = &[
    text("Status", "Pending, Bound or Lost.", |o| {
        o["status"]["phase"].clone()
    }),
    text("Volume", "The volume it is bound to.", |o| {
        o["spec"]["volumeName"].clone()
    }),
    text("Capacity", "Its volume's size.", |o| {
        o["status"]["capacity"]["storage"].clone()
    }),
    text("Access Modes", "Its volume's access modes.", |o| {
        access_modes(&o["status"]["accessModes"])
    }),
    text("StorageClass", "The class that provisions it.", |o| {
        o["spec"]["storageClassName"].clone()
    }),
];

static PERSISTENT_VOLUME: &[Column] = &[
    text("Capacity", "Its size.", |o| {
        o["spec"]["capacity"]["storage"].clone()
    }),
    text("Access Modes", "How it may be mounted.", |o| {
        access_modes(&o["spec"]["accessModes"])
    }),
    text(
        "Reclaim Policy",
        "What becomes of it when its claim goes.",
        |o| o["spec"]["persistentVolumeReclaimPolicy"].clone(),
    ),
    text("Status", "Available, Bound, Released or Failed.", |o| {
        o["status"]["phase"].clone()
    }),
    text("Claim", "The claim it is bound to.", |o| {
        let claim = &o["spec"]["claimRef"];
        match (claim["namespace"].as_str(), claim["name"].as_str()) {
            (Some(ns), Some(name)) => Value::String(format!("{ns}/{name}")),
            _ => Value::Null,
        }
    }),
    text("StorageClass", "The class it belongs to.", |o| {
        o["spec"]["storageClassName"].clone()
    }),
];

static STORAGE_CLASS: &[Column] = &[
    text("Provisioner", "Who makes its volumes.", |o| {
        o["provisioner"].clone()
    }),
    text("ReclaimPolicy", "Delete or Retain.", |o| {
        Value::String(o["reclaimPolicy"].as_str().unwrap_or("Delete").to_string())
    }),
    text("VolumeBindingMode", "When its volumes are made.", |o| {
        Value::String(
            o["volumeBindingMode"]
                .as_str()
                .unwrap_or("Immediate")
                .to_string(),
        )
    }),
    text("AllowVolumeExpansion", "Whether claims may grow.", |o| {
        Value::String(
            o["allowVolumeExpansion"]
                .as_bool()
                .unwrap_or(false)
                .to_string(),
        )
    }),
];

static REPLICA_SET: &[Column] = &[
    number("Desired", "Pods wanted.", |o| {
        Value::from(o["spec"]["replicas"].as_i64().unwrap_or(1))
    }),
    number("Current", "Pods it has.", |o| {
        Value::from(o["status"]["replicas"].as_i64().unwrap_or(0))
    }),
    number("Ready", "Ready pods.", |o| {
        Value::from(o["status"]["readyReplicas"].as_i64().unwrap_or(0))
    }),
    wide(text(
        "Images",
        "The images of the template's containers.",
        template_images,
    )),
];

/// The images of a workload's template, comma-separated.
fn template_images(o: &Value) -> Value {
    let containers = o["spec"]["template"]["spec"]["containers"].as_array();
    let images: Vec<&str> = containers
        .into_iter()
        .flatten()
        .filter_map(|c| c["image"].as_str())
        .collect();
    Value::String(images.join(","))
}

static ENDPOINT_SLICE: &[Column] = &[
    text("AddressType", "IPv4, IPv6 or FQDN.", |o| {
        at(o, "addressType")
    }),
    text("Ports", "The ports of the endpoints.", |o| {
        let ports: Vec<String> = o["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["port"].as_i64().map(|n| n.to_string()))
            .collect();
        Value::String(if ports.is_empty() {
            "<unset>".into()
        } else {
            ports.join(",")
        })
    }),
    text("Endpoints", "The endpoints' addresses.", |o| {
        let addresses: Vec<&str> = o["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|e| e["addresses"].as_array().into_iter().flatten())
            .filter_map(Value::as_str)
            .collect();
        Value::String(if addresses.is_empty() {
            "<unset>".into()
        } else {
            addresses.join(",")
        })
    }),
];

static SERVICE: &[Column] = &[
    text("Type", "ClusterIP, NodePort or LoadBalancer.", |o| {
        at(o, "spec.type")
    }),
    text("Cluster-IP", "The service's cluster IP.", |o| {
        at(o, "spec.clusterIP")
    }),
];

static EVENT: &[Column] = &[
    text("Type", "Normal or Warning.", |o| at(o, "type")),
    text("Reason", "Why the event happened, in one word.", |o| {
        at(o, "reason")
    }),
    text("Object", "The object the event is about.", |o| {
        Value::String(format!(
            "{}/{}",
            o["involvedObject"]["kind"]
                .as_str()
                .unwrap_or_default()
                .to_lowercase(),
            o["involvedObject"]["name"].as_str().unwrap_or_default()
        ))
    }),
    text("Message", "What happened.", |o| at(o, "message")),
];

static SECRET: &[Column] = &[
    text("Type", "The secret's type.", |o| at(o, "type")),
    number("Data", "Keys in the secret.", |o| count(o, "data")),
];

static CONFIG_MAP: &[Column] = &[number("Data", "Keys in the config map.", |o| {
    count(o, "data")
})];

static LEASE: &[Column] = &[text("Holder", "Who holds the lease.", |o| {
    at(o, "spec.holderIdentity")
})];

static SERVICE_ACCOUNT: &[Column] = &[number("Secrets", "Secrets the account lists.", |o| {
    count(o, "secrets")
})];

static ROLE: &[Column] = &[number("Rules", "The role's own rules.", |o| {
    count(o, "rules")
})];

static BINDING: &[Column] = &[
    text("Role", "The role granted.", |o| {
        Value::String(format!(
            "{}/{}",
            o["roleRef"]["kind"].as_str().unwrap_or_default(),
            o["roleRef"]["name"].as_str().unwrap_or_default()
        ))
    }),
    wide(text("Users", "Users granted the role.", |o| {
        subjects(o, "User")
    })),
    wide(text("Groups", "Groups granted the role.", |o| {
        subjects(o, "Group")
    })),
    wide(text(
        "ServiceAccounts",
        "Service accounts granted the role.",
        |o| subjects(o, "ServiceAccount"),
    )),
];

static CLUSTER_IMAGE: &[Column] = &[
    text("Source", "Where the image is: a host path or a URL.", |o| {
        let spec = &o["spec"];
        spec["path"]
            .as_str()
            .or(spec["url"].as_str())
            .map_or(Value::Null, |s| Value::String(s.to_string()))
    }),
    text("Format", "The format the image must have.", |o| {
        at(o, "spec.format")
    }),
];

static RESOURCE_QUOTA: &[Column] = &[text(
    "Request",
    "What the namespace uses of each limit, as used/hard.",
    |o| {
        let hard = o["status"]["hard"]
            .as_object()
            .or(o["spec"]["hard"].as_object());
        let cells: Vec<String> = hard
            .into_iter()
            .flatten()
            .map(|(k, h)| {
                let used = o["status"]["used"][k].as_str().unwrap_or("0");
                format!(
                    "{k}: {used}/{}",
                    h.as_str().map_or(h.to_string(), str::to_string)
                )
            })
            .collect();
        Value::String(cells.join(", "))
    },
)];

/// As Kubernetes prints LimitRanges: when it was made (Keel's `Age` follows, as everywhere).
static LIMIT_RANGE: &[Column] = &[text(
    "Created At",
    "When the LimitRange was made (metadata.creationTimestamp).",
    |o| at(o, "metadata.creationTimestamp"),
)];

static USER_TOKEN: &[Column] = &[
    text("User", "The user the token authenticates.", |o| {
        at(o, "spec.user")
    }),
    text("Groups", "The user's groups.", |o| {
        let groups: Vec<&str> = o["spec"]["groups"]
            .as_array()
            .map(|gs| gs.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        Value::String(groups.join(","))
    }),
    text("Expires", "When the token stops working.", |o| {
        at(o, "spec.expirationTimestamp")
    }),
];

/// The kind's own columns (without `Name` and `Age`).
pub fn kind_columns(kind: &Kind) -> &'static [Column] {
    match kind.kind {
        "VirtualMachine" => VIRTUAL_MACHINE,
        "VPC" => VPC,
        "Subnet" => SUBNET,
        "SecurityGroup" => SECURITY_GROUP,
        "Zone" => ZONE,
        "Bucket" => BUCKET,
        "LoadBalancer" => LOAD_BALANCER,
        "GitRepository" => GIT_REPOSITORY,
        "Revision" => REVISION,
        "Namespace" => NAMESPACE,
        "Node" => NODE,
        "Pod" => POD,
        "Service" => SERVICE,
        "Deployment" => DEPLOYMENT,
        "EndpointSlice" => ENDPOINT_SLICE,
        "ReplicaSet" => REPLICA_SET,
        "Job" => JOB,
        "CronJob" => CRON_JOB,
        "DaemonSet" => DAEMON_SET,
        "StatefulSet" => STATEFUL_SET,
        "PersistentVolumeClaim" => PERSISTENT_VOLUME_CLAIM,
        "PersistentVolume" => PERSISTENT_VOLUME,
        "StorageClass" => STORAGE_CLASS,
        "Event" => EVENT,
        "Secret" => SECRET,
        "ConfigMap" => CONFIG_MAP,
        "Lease" => LEASE,
        "ServiceAccount" => SERVICE_ACCOUNT,
        "Role" | "ClusterRole" => ROLE,
        "RoleBinding" | "ClusterRoleBinding" => BINDING,
        "UserToken" => USER_TOKEN,
        "ResourceQuota" => RESOURCE_QUOTA,
        "LimitRange" => LIMIT_RANGE,
        "ClusterImage" => CLUSTER_IMAGE,
        _ => &[],
    }
}

/// Every column of the kind's table: `Name`, the kind's own, `Age`.
pub fn columns(kind: &Kind) -> Vec<&'static Column> {
    std::iter::once(&NAME)
        .chain(kind_columns(kind))
        .chain(std::iter::once(&AGE))
        .collect()
}

/// A cell as text, as kubectl prints it: null is `<none>`.
pub fn cell_text(cell: &Value) -> String {
    match cell {
        Value::Null => "<none>".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The value at a dotted path (`spec.cidr`, `status.interfaces.0.ip`), or null.
pub fn at(object: &Value, path: &str) -> Value {
    path.split('.')
        .try_fold(object, |v, seg| match seg.parse::<usize>() {
            Ok(i) => v.get(i),
            Err(_) => v.get(seg),
        })
        .cloned()
        .unwrap_or(Value::Null)
}

/// How many entries the list or map at `path` has (0 when it is not set).
fn count(object: &Value, path: &str) -> Value {
    let n = match at(object, path) {
        Value::Array(a) => a.len(),
        Value::Object(o) => o.len(),
        _ => 0,
    };
    Value::from(n)
}

/// The names of a binding's subjects of `kind` (service accounts as `NAMESPACE/NAME`).
fn subjects(object: &Value, kind: &str) -> Value {
    let names: Vec<String> = object["subjects"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["kind"] == kind)
        .map(|s| match s["namespace"].as_str() {
            Some(ns) if kind == "ServiceAccount" => {
                format!("{ns}/{}", s["name"].as_str().unwrap_or_default())
            }
            _ => s["name"].as_str().unwrap_or_default().to_string(),
        })
        .collect();
    Value::String(names.join(","))
}

/// The status (`True`, `False`, `Unknown`) of the condition of type `kind`, or null.
fn condition(object: &Value, kind: &str) -> Value {
    object["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
        .map_or(Value::Null, |c| c["status"].clone())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{lookup, registry};

    #[test]
    fn every_kind_has_name_first_and_age_last() {
        for kind in registry() {
            let cols = columns(kind);
            assert_eq!(cols[0].name, "Name", "{}", kind.kind);
            assert_eq!(cols[0].format, "name");
            assert_eq!(cols[cols.len() - 1].name, "Age");
            assert!(cols.len() > 2, "{} has no columns of its own", kind.kind);
            for c in &cols {
                assert!(matches!(c.cell_type, "string" | "integer"), "{}", c.name);
                assert!(!c.description.is_empty(), "{}", c.name);
                // An empty object gives a cell for every column, never a panic.
                let _ = (c.cell)(&json!({}));
            }
        }
    }

    #[test]
    fn cells_read_the_object() {
        let vm = lookup("vm").unwrap();
        let o = json!({
            "metadata": {"name": "web-1", "creationTimestamp": "2000-01-01T00:00:00Z"},
            "spec": {"cpu": 2, "memory": "2Gi"},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                       "interfaces": [{"ip": "10.0.1.5"}]},
        });
        let cells: Vec<String> = columns(vm)
            .iter()
            .map(|c| cell_text(&(c.cell)(&o)))
            .collect();
        assert_eq!(
            cells[..7],
            ["web-1", "Running", "True", "<none>", "2", "2Gi", "10.0.1.5"]
        );
        assert!(cells[7].ends_with('y'), "{}", cells[7]);
        let sg = lookup("sg").unwrap();
        let o = json!({"spec": {"ingress": [{}, {}], "egress": []}});
        let cells: Vec<Value> = kind_columns(sg).iter().map(|c| (c.cell)(&o)).collect();
        assert_eq!(cells, [json!(2), json!(0)]);
    }
}
