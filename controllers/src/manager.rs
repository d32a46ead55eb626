//! [`run_manager`]: the cluster-wide controllers (scheduler, node lifecycle, garbage
//! collector, rollouts, ...), run by whichever server holds the `kube-system/keel-controllers` Lease. Every
//! server campaigns; exactly one runs the controllers; when it stops renewing (it died, or
//! lost the cluster), another takes over within the Lease's duration.
//!
//! Each controller talks to the API as itself (`system:keel-controller:NAME`, with the
//! ClusterRole `system:controller:NAME` that grants exactly what it reads and writes), as
//! kube-controller-manager does with `--use-service-account-credentials`; the election
//! itself runs as `system:keel-controller-manager`.

use std::sync::Arc;
use std::time::Duration;

use keel_client::Client;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::node_lifecycle::{self, NodeLifecycleConfig};
use crate::{gc, scheduler};
use keel_runtime::{LeaderConfig, elect};

/// The Lease the controller managers contend for.
pub const CONTROLLERS_LEASE: &str = "keel-controllers";

/// The client each controller talks with, by controller name (`scheduler`,
/// `garbage-collector`, ...): one that authenticates as that controller.
pub type Clients = Arc<dyn Fn(&str) -> Client + Send + Sync>;

/// How the controller manager runs.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// This instance's identity in the Lease (unique per process).
    pub identity: String,
    /// Leader election timings.
    pub lease_duration: Duration,
    /// The leader steps down when it could not renew for this long.
    pub renew_deadline: Duration,
    /// How often candidates try.
    pub retry_period: Duration,
    /// Node lifecycle timings.
    pub nodes: NodeLifecycleConfig,
    /// The OVN northbound database (`tcp:HOST:PORT` or `unix:PATH`); none: no network
    /// controller.
    pub ovn_nb: Option<String>,
    /// The external network of VPCs' source NAT.
    pub ovn_external: Option<crate::network::External>,
    /// The load balancer controller's settings (the VIP pool).
    pub load_balancers: crate::loadbalancers::LoadBalancerConfig,
    /// The cluster's pod range, split into one range per node (none: nodes get no range).
    pub pod_ranges: Option<crate::node_ipam::PodRanges>,
    /// The cluster's Service range (none: no service controller).
    pub service_range: Option<crate::services::ServiceRange>,
    /// The cluster's DNS (none: no cluster DNS controller).
    pub cluster_dns: Option<keel_schemas::net::ClusterDns>,
    /// The cluster CA (PEM) pods verify the API with, published in every namespace's
    /// `kube-root-ca.crt` ConfigMap (none: not published).
    pub ca_pem: Option<String>,
}

// === impl ManagerConfig ===

impl ManagerConfig {
    /// Kubernetes' defaults, for the instance `identity`.
    pub fn new(identity: &str) -> ManagerConfig {
        let election = LeaderConfig::new("kube-system", CONTROLLERS_LEASE, identity);
        ManagerConfig {
            identity: identity.to_string(),
            lease_duration: election.lease_duration,
            renew_deadline: election.renew_deadline,
            retry_period: election.retry_period,
            nodes: NodeLifecycleConfig::default(),
            ovn_nb: None,
            ovn_external: None,
            load_balancers: Default::default(),
            pod_ranges: Some(crate::node_ipam::PodRanges::default()),
            service_range: Some(crate::services::ServiceRange::default()),
            cluster_dns: Some(keel_schemas::net::ClusterDns::default()),
            ca_pem: None,
        }
    }
}

/// Campaigns for the controllers' Lease (as `client`) and runs the controllers while
/// leading, each with its own client from `clients`, until `shutdown` turns true.
pub async fn run_manager(
    client: Client,
    clients: Clients,
    config: ManagerConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let (leading_tx, mut leading) = watch::channel(false);
    let election = LeaderConfig {
        lease_duration: config.lease_duration,
        renew_deadline: config.renew_deadline,
        retry_period: config.retry_period,
        ..LeaderConfig::new("kube-system", CONTROLLERS_LEASE, &config.identity)
    };
    let campaign = tokio::spawn(elect(
        client.clone(),
        election,
        leading_tx,
        shutdown.clone(),
    ));
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            r = leading.wait_for(|l| *l) => if r.is_err() { break },
        }
        let (stop_tx, stop) = watch::channel(false);
        let mut controllers = JoinSet::new();
        controllers.spawn(scheduler::run(
            clients("scheduler"),
            config.identity.clone(),
            stop.clone(),
        ));
        if let Some(ranges) = config.pod_ranges {
            controllers.spawn(crate::node_ipam::run(
                clients("node-ipam"),
                config.identity.clone(),
                ranges,
                stop.clone(),
            ));
        }
        if let Some(mut range) = config.service_range {
            range.reserved = config.cluster_dns.as_ref().map(|d| d.address);
            if let Some(address) = range.nth(1) {
                controllers.spawn(crate::kubernetes_service::run(
                    clients("kubernetes-service"),
                    address,
                    stop.clone(),
                ));
            }
            controllers.spawn(crate::services::run(
                clients("services"),
                config.identity.clone(),
                range,
                stop.clone(),
            ));
        }
        if let Some(dns) = &config.cluster_dns {
            controllers.spawn(crate::cluster_dns::run(
                clients("cluster-dns"),
                config.identity.clone(),
                dns.clone(),
                stop.clone(),
            ));
        }
        controllers.spawn(crate::replicasets::run(
            clients("replicasets"),
            config.identity.clone(),
            stop.clone(),
        ));
        controllers.spawn(crate::daemonsets::run(
            clients("daemonsets"),
            config.identity.clone(),
            stop.clone(),
        ));
        controllers.spawn(crate::statefulsets::run(
            clients("statefulsets"),
            config.identity.clone(),
            stop.clone(),
        ));
        controllers.spawn(crate::volumes::run(
            clients("volumes"),
            config.identity.clone(),
            stop.clone(),
        ));
        controllers.spawn(crate::jobs::run(
            clients("jobs"),
            config.identity.clone(),
            stop.clone(),
        ));
        controllers.spawn(crate::cronjobs::run(
            clients("cronjobs"),
            config.identity.clone(),
            stop.clone(),
        ));
        controllers.spawn(crate::deployments::run(
            clients("deployments"),
            config.identity.clone(),
            stop.clone(),
        ));
        controllers.spawn(node_lifecycle::run(
            clients("node-lifecycle"),
            config.identity.clone(),
            config.nodes,
            stop.clone(),
        ));
        if let Some(nb) = &config.ovn_nb {
            controllers.spawn(crate::network::run(
                clients("network"),
                crate::network::NetworkConfig {
                    nb: nb.clone(),
                    resync: std::time::Duration::from_secs(60),
                    external: config.ovn_external.clone(),
                },
                stop.clone(),
            ));
        }
        controllers.spawn(crate::buckets::run(
            clients("buckets"),
            config.identity.clone(),
            stop.clone(),
        ));
        controllers.spawn(crate::loadbalancers::run(
            clients("loadbalancers"),
            config.identity.clone(),
            config.load_balancers.clone(),
            stop.clone(),
        ));
        controllers.spawn(crate::zones::run(
            clients("zones"),
            config.identity.clone(),
            stop.clone(),
        ));
        controllers.spawn(crate::rollout::run(
            clients("rollout"),
            config.identity.clone(),
            stop.clone(),
        ));
        controllers.spawn(crate::serviceaccounts::run(
            clients("serviceaccounts"),
            config.ca_pem.clone(),
            stop.clone(),
        ));
        controllers.spawn(crate::resourcequotas::run(
            clients("resourcequotas"),
            stop.clone(),
        ));
        controllers.spawn(gc::run(clients("garbage-collector"), stop));
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => {}
            _ = leading.wait_for(|l| !*l) => {}
        }
        stop_tx.send_replace(true);
        while controllers.join_next().await.is_some() {}
        if *shutdown.borrow() {
            break;
        }
        tracing::warn!(identity = %config.identity, "controllers stopped: no longer the leader");
    }
    let _ = campaign.await;
}
