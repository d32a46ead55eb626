//! etcd on this machine: a 1- or 3-member cluster of `etcd` processes on loopback, and a
//! client of its v3 KV service with just the messages the benchmark sends.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

use crate::{eventually, free_port};

/// `etcdserverpb.PutRequest` (fields the benchmark uses).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutRequest {
    /// The key.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// The value.
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `etcdserverpb.ResponseHeader`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResponseHeader {
    /// The cluster's id.
    #[prost(uint64, tag = "1")]
    pub cluster_id: u64,
    /// The answering member's id.
    #[prost(uint64, tag = "2")]
    pub member_id: u64,
    /// The store revision.
    #[prost(int64, tag = "3")]
    pub revision: i64,
    /// The Raft term.
    #[prost(uint64, tag = "4")]
    pub raft_term: u64,
}

/// `etcdserverpb.PutResponse` (header only).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutResponse {
    /// The header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
}

/// `etcdserverpb.RangeRequest` (fields the benchmark uses).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RangeRequest {
    /// The key.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// Read the member's copy without a quorum round.
    #[prost(bool, tag = "7")]
    pub serializable: bool,
}

/// `mvccpb.KeyValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    /// The key.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// Its create revision.
    #[prost(int64, tag = "2")]
    pub create_revision: i64,
    /// Its mod revision.
    #[prost(int64, tag = "3")]
    pub mod_revision: i64,
    /// Its version.
    #[prost(int64, tag = "4")]
    pub version: i64,
    /// The value.
    #[prost(bytes = "vec", tag = "5")]
    pub value: Vec<u8>,
}

/// `etcdserverpb.RangeResponse` (fields the benchmark reads).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RangeResponse {
    /// The header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    /// The keys found.
    #[prost(message, repeated, tag = "2")]
    pub kvs: Vec<KeyValue>,
}

/// `etcdserverpb.Compare` (create-revision form).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Compare {
    /// EQUAL = 0.
    #[prost(int32, tag = "1")]
    pub result: i32,
    /// CREATE = 1.
    #[prost(int32, tag = "2")]
    pub target: i32,
    /// The key.
    #[prost(bytes = "vec", tag = "3")]
    pub key: Vec<u8>,
    /// The create revision compared with.
    #[prost(int64, tag = "5")]
    pub create_revision: i64,
}

/// `etcdserverpb.RequestOp` (put form).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RequestOp {
    /// The put.
    #[prost(message, optional, tag = "2")]
    pub request_put: Option<PutRequest>,
}

/// `etcdserverpb.TxnRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TxnRequest {
    /// Conditions.
    #[prost(message, repeated, tag = "1")]
    pub compare: Vec<Compare>,
    /// Operations when they hold.
    #[prost(message, repeated, tag = "2")]
    pub success: Vec<RequestOp>,
}

/// `etcdserverpb.TxnResponse` (fields the benchmark reads).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TxnResponse {
    /// The header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    /// Whether the compares held.
    #[prost(bool, tag = "2")]
    pub succeeded: bool,
}

/// A client of one etcd member's KV service.
#[derive(Clone)]
pub struct EtcdClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl EtcdClient {
    /// Connects to `addr` (`host:port`).
    pub async fn connect(addr: &str) -> Result<EtcdClient, String> {
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await
            .map_err(|e| format!("cannot connect to etcd at {addr}: {e}"))?;
        Ok(EtcdClient {
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    async fn unary<Req, Resp>(&self, path: &'static str, req: Req) -> Result<Resp, String>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = self.grpc.clone();
        grpc.ready().await.map_err(|e| e.to_string())?;
        let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
        grpc.unary(
            tonic::Request::new(req),
            PathAndQuery::from_static(path),
            codec,
        )
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| format!("etcd: {s}"))
    }

    /// Puts a key.
    pub async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), String> {
        let _: PutResponse = self
            .unary("/etcdserverpb.KV/Put", PutRequest { key, value })
            .await?;
        Ok(())
    }

    /// Creates a key that must not exist, as kube-apiserver creates objects.
    pub async fn create(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), String> {
        let txn = TxnRequest {
            compare: vec![Compare {
                result: 0,
                target: 1,
                key: key.clone(),
                create_revision: 0,
            }],
            success: vec![RequestOp {
                request_put: Some(PutRequest { key, value }),
            }],
        };
        let resp: TxnResponse = self.unary("/etcdserverpb.KV/Txn", txn).await?;
        if resp.succeeded {
            Ok(())
        } else {
            Err("the key exists".into())
        }
    }

    /// Reads a key.
    pub async fn get(&self, key: Vec<u8>, linearizable: bool) -> Result<(), String> {
        let _: RangeResponse = self
            .unary(
                "/etcdserverpb.KV/Range",
                RangeRequest {
                    key,
                    serializable: !linearizable,
                },
            )
            .await?;
        Ok(())
    }
}

/// A running etcd cluster; its processes are killed when dropped.
pub struct EtcdCluster {
    /// Client addresses of the members.
    pub client_addrs: Vec<String>,
    children: Vec<Child>,
}

impl EtcdCluster {
    /// Starts `n` members with data dirs under `root`.
    pub async fn start(bin: &Path, root: &Path, n: usize) -> Result<EtcdCluster, String> {
        let members: Vec<(String, u16, u16)> = (0..n)
            .map(|i| (format!("m{i}"), free_port(), free_port()))
            .collect();
        let initial = members
            .iter()
            .map(|(name, _, peer)| format!("{name}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut children = Vec::new();
        for (name, client, peer) in &members {
            let data: PathBuf = root.join(format!("etcd-{name}"));
            let child = Command::new(bin)
                .arg("--name")
                .arg(name)
                .arg("--data-dir")
                .arg(&data)
                .arg("--listen-client-urls")
                .arg(format!("http://127.0.0.1:{client}"))
                .arg("--advertise-client-urls")
                .arg(format!("http://127.0.0.1:{client}"))
                .arg("--listen-peer-urls")
                .arg(format!("http://127.0.0.1:{peer}"))
                .arg("--initial-advertise-peer-urls")
                .arg(format!("http://127.0.0.1:{peer}"))
                .arg("--initial-cluster")
                .arg(&initial)
                .arg("--initial-cluster-state")
                .arg("new")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
            children.push(child);
        }
        let cluster = EtcdCluster {
            client_addrs: members
                .iter()
                .map(|(_, client, _)| format!("127.0.0.1:{client}"))
                .collect(),
            children,
        };
        for addr in &cluster.client_addrs {
            eventually("etcd to take writes", Duration::from_secs(30), || async {
                let c = EtcdClient::connect(addr).await.ok()?;
                c.put(b"/ready".to_vec(), b"1".to_vec()).await.ok()
            })
            .await?;
        }
        Ok(cluster)
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
