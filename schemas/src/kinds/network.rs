//! VPC, Subnet, SecurityGroup and LoadBalancer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Condition, LabelSelector, Object, kind_spec};

/// A VPC (`vpc.schema.json`).
pub type Vpc = Object<VpcSpec, VpcStatus>;
/// A subnet (`subnet.schema.json`).
pub type Subnet = Object<SubnetSpec, SubnetStatus>;
/// A security group (`securitygroup.schema.json`).
pub type SecurityGroup = Object<SecurityGroupSpec, SecurityGroupStatus>;
/// A load balancer (`loadbalancer.schema.json`).
pub type LoadBalancer = Object<LoadBalancerSpec, LoadBalancerStatus>;

kind_spec!(
    VpcSpec => "VPC",
    SubnetSpec => "Subnet",
    SecurityGroupSpec => "SecurityGroup",
    LoadBalancerSpec => "LoadBalancer",
);

/// Desired state of a VPC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VpcSpec {
    /// Address range (immutable).
    pub cidr: String,
    /// Source NAT to the external network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snat: Option<Snat>,
}

/// Source NAT of a VPC.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Snat {
    /// The external address (allocated when absent).
    #[serde(rename = "externalIP", skip_serializing_if = "Option::is_none")]
    pub external_ip: Option<String>,
}

/// Observed state of a VPC.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VpcStatus {
    /// Generation last acted on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// OVN logical router.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub router: Option<String>,
    /// Attached subnets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<String>,
    /// The external address of the source NAT.
    #[serde(rename = "externalIP", skip_serializing_if = "Option::is_none")]
    pub external_ip: Option<String>,
}

/// Desired state of a subnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubnetSpec {
    /// VPC the subnet belongs to (immutable).
    pub vpc: String,
    /// Address range (immutable).
    pub cidr: String,
    /// Gateway address (default: first host address).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// DHCP settings (default enabled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dhcp: Option<Dhcp>,
    /// Addresses and ranges never allocated.
    #[serde(default, rename = "excludeIPs", skip_serializing_if = "Vec::is_empty")]
    pub exclude_ips: Vec<String>,
}

/// DHCP on a subnet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Dhcp {
    /// Serve DHCP (default true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// DNS servers handed out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_servers: Vec<String>,
    /// Lease time in seconds (default 3600).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_seconds: Option<u32>,
    /// DNS search domain handed out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain_name: Option<String>,
}

/// Observed state of a subnet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubnetStatus {
    /// Generation last acted on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Free addresses.
    #[serde(rename = "availableIPs", skip_serializing_if = "Option::is_none")]
    pub available_ips: Option<u64>,
    /// Allocated addresses.
    #[serde(rename = "usedIPs", skip_serializing_if = "Option::is_none")]
    pub used_ips: Option<u64>,
    /// OVN logical switch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub switch: Option<String>,
    /// Allocated addresses: address to owner (`<VM uid>/<NIC index>`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub allocations: BTreeMap<String, String>,
}

/// Desired rules of a security group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecurityGroupSpec {
    /// Rules for incoming traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IngressRule>,
    /// Rules for outgoing traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressRule>,
}

/// Allow incoming traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressRule {
    /// Protocol.
    pub protocol: RuleProtocol,
    /// Ports and ranges ("80,443", "1000-2000").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ports: Option<String>,
    /// Where the traffic comes from.
    pub from: Peer,
    /// Why the rule exists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Allow outgoing traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressRule {
    /// Protocol.
    pub protocol: RuleProtocol,
    /// Ports and ranges ("80,443", "1000-2000").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ports: Option<String>,
    /// Where the traffic goes.
    pub to: Peer,
    /// Why the rule exists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Protocol of a security group rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum RuleProtocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP and ICMPv6.
    Icmp,
    /// Any protocol.
    Any,
}

/// The other end of a rule: exactly one field is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Peer {
    /// Address range.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// NICs of this security group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_group: Option<String>,
}

/// Observed state of a security group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecurityGroupStatus {
    /// Generation last acted on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Desired state of a load balancer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerSpec {
    /// Virtual IP (allocated when unset; immutable once set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vip: Option<String>,
    /// Subnet of the VIP (immutable once set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// Ports on the VIP.
    pub listeners: Vec<Listener>,
    /// Where connections go.
    pub backends: Backends,
    /// Backend choice (default round-robin).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<Algorithm>,
    /// Active health check (default TCP every 5 s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Health wait of a rollout, in seconds (default 120).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress_deadline_seconds: Option<u32>,
    /// Revisions kept (default 10).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision_history_limit: Option<u32>,
}

/// A port on the VIP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    /// Optional name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// TCP or UDP.
    pub protocol: ListenerProtocol,
    /// Port on the VIP.
    pub port: u16,
    /// Port on selected backends (default: port).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
}

/// Protocol of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ListenerProtocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl ListenerProtocol {
    /// `TCP` or `UDP`, as the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerProtocol::Tcp => "TCP",
            ListenerProtocol::Udp => "UDP",
        }
    }
}

/// Backends of a load balancer: exactly one field is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backends {
    /// VMs selected by label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Fixed host:port addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// A Service of the namespace, reached at its ClusterIP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// How a backend is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// In turn.
    RoundRobin,
    /// Fewest open connections.
    LeastConnections,
    /// By client address.
    SourceHash,
}

/// Active health check.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    /// TCP or HTTP (default TCP).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<HealthCheckType>,
    /// HTTP path (default `/`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// HTTP codes that count as healthy (default `200-399`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_codes: Option<String>,
    /// Port to check (default: the backend's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Seconds between checks (default 5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<u32>,
    /// Seconds a check may take (default 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
    /// Successes to become healthy (default 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
    /// Failures to become unhealthy (default 3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
}

/// Kind of health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HealthCheckType {
    /// A TCP connection succeeds.
    Tcp,
    /// An HTTP GET answers 2xx or 3xx.
    Http,
}

/// Observed state of a load balancer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerStatus {
    /// Generation last acted on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// VIP in use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vip: Option<String>,
    /// Node serving the VIP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Backends and their health.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<BackendStatus>,
}

/// One backend's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendStatus {
    /// host:port.
    pub address: String,
    /// The VM it is, for backends chosen by selector.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtual_machine: Option<String>,
    /// Whether it gets new connections (unset until checked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
    /// When it was last checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_check_time: Option<String>,
    /// What the last check saw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_check_result: Option<String>,
    /// Connections open to it now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<u64>,
    /// Left the spec; open connections drain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draining: Option<bool>,
}
