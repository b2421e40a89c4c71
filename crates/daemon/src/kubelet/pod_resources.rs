//! Which devices pods hold, from the kubelet's PodResources API (`List` on
//! `/var/lib/kubelet/pod-resources/kubelet.sock`): the device plugin API
//! has no release call, so only the kubelet knows whether a pod still holds
//! a device. A MIG layout change refuses GPUs whose devices a pod holds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gpu_slicer_api::pod_resources::ListPodResourcesRequest;
use gpu_slicer_api::pod_resources::pod_resources_lister_client::PodResourcesListerClient;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Endpoint, Uri};

/// Where the kubelet serves the API.
pub const DEFAULT_SOCKET: &str = "/var/lib/kubelet/pod-resources/kubelet.sock";

/// How long one `List` may take (the kubelet answers from memory).
pub const LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// The resources whose devices are looked at: NVIDIA's domain, which every
/// resource gpu-slicer advertises (renamed ones included) is in.
const RESOURCE_PREFIX: &str = "nvidia.com/";

/// One device a pod's container holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodDevice {
    /// `namespace/name`.
    pub pod: String,
    pub resource: String,
    pub device_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PodResourcesError {
    #[error(
        "cannot reach the kubelet's PodResources API at {}: {detail}; mount the kubelet's pod-resources directory (/var/lib/kubelet/pod-resources), or force the change",
        socket.display()
    )]
    Unreachable { socket: PathBuf, detail: String },
    #[error("the kubelet's PodResources List at {} failed: {status}", socket.display())]
    List { socket: PathBuf, status: String },
}

/// Every `nvidia.com/` device that pods hold now.
pub async fn list(socket: &Path) -> Result<Vec<PodDevice>, PodResourcesError> {
    let unreachable = |detail: String| PodResourcesError::Unreachable {
        socket: socket.to_path_buf(),
        detail,
    };
    let path = socket.to_path_buf();
    // The URI is ignored: the connector always dials the Unix socket.
    let channel = Endpoint::from_static("http://localhost")
        .connect_timeout(LIST_TIMEOUT)
        .timeout(LIST_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|e| unreachable(source_chain(&e)))?;
    let response = PodResourcesListerClient::new(channel)
        .list(ListPodResourcesRequest {})
        .await
        .map_err(|status| PodResourcesError::List {
            socket: socket.to_path_buf(),
            status: status.message().to_string(),
        })?;
    let mut out = Vec::new();
    for pod in response.into_inner().pod_resources {
        for container in pod.containers {
            for devices in container.devices {
                if !devices.resource_name.starts_with(RESOURCE_PREFIX) {
                    continue;
                }
                for device_id in devices.device_ids {
                    out.push(PodDevice {
                        pod: format!("{}/{}", pod.namespace, pod.name),
                        resource: devices.resource_name.clone(),
                        device_id,
                    });
                }
            }
        }
    }
    Ok(out)
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
