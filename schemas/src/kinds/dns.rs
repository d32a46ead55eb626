//! Zone.

use serde::{Deserialize, Serialize};

use super::{Condition, LabelSelector, Object, kind_spec};

/// A DNS zone (`zone.schema.json`).
pub type Zone = Object<ZoneSpec, ZoneStatus>;

kind_spec!(ZoneSpec => "Zone");

/// Desired content of a zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZoneSpec {
    /// FQDN of the zone, with the trailing dot (immutable).
    pub domain: String,
    /// Default TTL (default 3600).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
    /// SOA data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soa: Option<Soa>,
    /// Records written by hand.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<Record>,
    /// Records generated from objects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub auto_records: Vec<AutoRecord>,
    /// PTR records for a subnet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reverse: Option<Reverse>,
    /// Name servers (NS at the apex; default: the SOA's primary name server).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub name_servers: Vec<String>,
    /// Source CIDRs allowed to AXFR the zone (default: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_transfer: Vec<String>,
    /// Health wait of a rollout, in seconds (default 60).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress_deadline_seconds: Option<u32>,
    /// Revisions kept (default 10).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision_history_limit: Option<u32>,
}

/// SOA data of a zone (the serial is in status).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Soa {
    /// MNAME (default `ns1.<domain>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_name_server: Option<String>,
    /// RNAME as an email address (default `hostmaster@<domain>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_email: Option<String>,
    /// Refresh seconds (default 3600).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh: Option<u32>,
    /// Retry seconds (default 900).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<u32>,
    /// Expire seconds (default 1209600).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expire: Option<u32>,
    /// Negative-caching TTL (default 300).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minimum: Option<u32>,
}

/// One record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Record {
    /// Owner name: `@`, relative, or absolute inside the zone.
    pub name: String,
    /// Record type.
    #[serde(rename = "type")]
    pub type_: RecordType,
    /// Record data in zone-file form.
    pub value: String,
    /// TTL (default: the zone's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
}

/// DNS record types a zone serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum RecordType {
    /// IPv4 address.
    A,
    /// IPv6 address.
    Aaaa,
    /// Alias.
    Cname,
    /// Mail exchanger.
    Mx,
    /// Text.
    Txt,
    /// Name server.
    Ns,
    /// Service location.
    Srv,
    /// Pointer (reverse).
    Ptr,
    /// Certification authority authorization.
    Caa,
}

/// Records generated for objects selected by labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AutoRecord {
    /// Only objects whose labels match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Only VMs with a NIC in this VPC (and only those NICs' addresses).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vpc: Option<String>,
    /// Of which kind.
    pub kind: AutoRecordKind,
    /// TTL (default: the zone's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
}

/// Kinds that get generated records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AutoRecordKind {
    /// A VM's NIC addresses.
    VirtualMachine,
    /// A load balancer's VIP.
    LoadBalancer,
    /// A Service's names by Kubernetes' DNS specification: `<service>.<namespace>.svc`
    /// (its ClusterIP, or a headless Service's ready endpoints), SRV records of its named
    /// ports, and a CNAME for an ExternalName Service.
    Service,
    /// A pod's `<a-b-c-d>.<namespace>.pod` name for its address.
    Pod,
}

/// PTR records for a subnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Reverse {
    /// IPv4 subnet.
    pub subnet: String,
    /// Target name with `{a}`..`{d}` placeholders.
    pub pattern: String,
}

/// Observed state of a zone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZoneStatus {
    /// Generation last acted on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// SOA serial served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<u32>,
    /// Records served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_count: Option<u64>,
    /// Addresses (ip:port) of the servers answering at the current serial.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub name_servers: Vec<String>,
    /// Nodes answering at the current serial.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub served_by: Vec<String>,
    /// Generated records, with fully qualified names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<Record>,
    /// The reverse zone served for `spec.reverse`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reverse: Option<ReverseStatus>,
}

/// The reverse zone of a subnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReverseStatus {
    /// Its origins: one per /24 (/16, /8) block the subnet covers, so that a /20 is 16
    /// zones such as `16.20.10.in-addr.arpa.` and claims no address outside it.
    pub domains: Vec<String>,
    /// The subnet's CIDR.
    pub cidr: String,
}
