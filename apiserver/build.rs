//! Generates the tonic client and server of Keel's two gRPC services from Rust definitions
//! (no .proto files and no protoc): messages are serde types carried by a bincode codec.

use tonic_build::manual::{Builder, Method, Service};

fn method(
    name: &str,
    route: &str,
    input: &str,
    output: &str,
) -> tonic_build::manual::MethodBuilder {
    Method::builder()
        .name(name)
        .route_name(route)
        .input_type(format!("crate::raft::wire::{input}"))
        .output_type(format!("crate::raft::wire::{output}"))
        .codec_path("crate::raft::codec::BincodeCodec")
}

fn main() {
    let raft = Service::builder()
        .name("Raft")
        .package("keel.raft")
        .comment("Raft messages between the servers of one cluster.")
        .method(
            method(
                "append_entries",
                "AppendEntries",
                "AppendCall",
                "AppendReply",
            )
            .build(),
        )
        .method(method("vote", "Vote", "VoteCall", "VoteReply").build())
        .method(
            method(
                "install_snapshot",
                "InstallSnapshot",
                "SnapshotCall",
                "SnapshotReply",
            )
            .build(),
        )
        .build();
    let cluster = Service::builder()
        .name("Cluster")
        .package("keel.raft")
        .comment("The replicated store as a service: proposals, reads, watches, membership.")
        .method(method("propose", "Propose", "ProposeCall", "ProposeReply").build())
        .method(method("range", "Range", "RangeCall", "RangeReply").build())
        .method(method("read_index", "ReadIndex", "ReadIndexCall", "ReadIndexReply").build())
        .method(
            method("watch", "Watch", "WatchCall", "WatchReply")
                .server_streaming()
                .build(),
        )
        .method(method("join", "Join", "JoinCall", "JoinReply").build())
        .method(method("add_server", "AddServer", "AddServerCall", "AddServerReply").build())
        .method(
            method(
                "remove_server",
                "RemoveServer",
                "RemoveServerCall",
                "RemoveServerReply",
            )
            .build(),
        )
        .method(method("status", "Status", "StatusCall", "StatusReply").build())
        .build();
    Builder::new().compile(&[raft, cluster]);
}
