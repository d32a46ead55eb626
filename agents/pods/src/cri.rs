//! The CRI v1 client: the `runtime.v1` RuntimeService and ImageService of the Kubernetes
//! Container Runtime Interface, spoken over gRPC on containerd's unix socket.
//!
//! `cri/runtime.v1.rs` is generated from `proto/cri-api-v1.proto` (k8s.io/cri-api, Apache
//! 2.0) by `tonic-prost-build` 0.14 with `build_server(false)` and `build_transport(false)`,
//! and kept in the tree so that building Keel needs no `protoc`. To regenerate it, run
//! `tonic_prost_build::configure().build_server(false).build_transport(false)
//! .out_dir(DIR).compile_protos(&["cri-api-v1.proto"], &["proto"])` in a scratch crate.

use std::path::Path;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint, Uri};

#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]
pub mod v1 {
    //! The generated CRI v1 messages and clients.
    include!("cri/runtime.v1.rs");
}

pub use v1::image_service_client::ImageServiceClient;
pub use v1::runtime_service_client::RuntimeServiceClient;

/// How long one CRI call may take before it counts as failed (an image pull is given more).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a pull may take.
pub const PULL_TIMEOUT: Duration = Duration::from_secs(600);

/// Why talking to the runtime failed.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// A call failed.
    #[error("{call}: {}", .status.message())]
    Call {
        /// The CRI method.
        call: &'static str,
        /// What the runtime answered.
        status: tonic::Status,
    },
}

/// A connection to a CRI runtime: both services over one channel (cheap to clone).
#[derive(Clone, Debug)]
pub struct Cri {
    /// The runtime service (sandboxes, containers, exec).
    pub runtime: RuntimeServiceClient<Channel>,
    /// The image service (pulls).
    pub images: ImageServiceClient<Channel>,
}

// === impl CriError ===

impl CriError {
    /// The error of call `call`.
    pub fn call(call: &'static str) -> impl FnOnce(tonic::Status) -> CriError {
        move |status| CriError::Call { call, status }
    }

    /// The gRPC code the runtime answered, if it answered.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            CriError::Call { status, .. } => Some(status.code()),
        }
    }
}

// === impl Cri ===

impl Cri {
    /// Connects (lazily: the first call dials) to the runtime's unix socket at `path`.
    pub fn new(path: &Path) -> Cri {
        let socket = path.to_path_buf();
        // The URI is required by the API and ignored by the connector.
        let channel = Endpoint::from_static("http://[::]:0")
            .timeout(CALL_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }));
        Cri {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        }
    }

    /// The runtime's name and version (`containerd`, `1.6.20~ds1`).
    pub async fn version(&self) -> Result<v1::VersionResponse, CriError> {
        let request = v1::VersionRequest {
            version: "v1".into(),
        };
        let response = self.runtime.clone().version(request).await;
        Ok(response.map_err(CriError::call("Version"))?.into_inner())
    }
}
