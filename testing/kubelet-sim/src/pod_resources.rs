//! The kubelet's PodResources API (`v1.PodResourcesLister/List`), served on
//! [`Options::pod_resources_socket`](crate::Options::pod_resources_socket)
//! when set: every admitted pod (not yet released) with, per container, the
//! device ids it holds per resource, as the kubelet answers from its device
//! manager. Pods are in namespace `default`; no topology is reported (the
//! kubelet leaves it empty for devices without NUMA affinity too).
//!
//! The real kubelet serves this socket for as long as it runs; the
//! simulator serves it from [`Kubelet::start`](crate::Kubelet::start) until
//! the `Kubelet` is dropped, across its simulated restarts.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use crate::SimError;
use crate::api::pod_resources::pod_resources_lister_server::{
    PodResourcesLister, PodResourcesListerServer,
};
use crate::api::pod_resources::{
    ContainerDevices, ContainerResources, ListPodResourcesRequest, ListPodResourcesResponse,
    PodResources,
};
use crate::state::Shared;

struct Lister {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl PodResourcesLister for Lister {
    async fn list(
        &self,
        _request: Request<ListPodResourcesRequest>,
    ) -> Result<Response<ListPodResourcesResponse>, Status> {
        // pod -> container -> resource -> ids
        let mut pods: BTreeMap<String, BTreeMap<String, BTreeMap<String, Vec<String>>>> =
            BTreeMap::new();
        for a in &self.shared.lock().allocations {
            pods.entry(a.pod.clone())
                .or_default()
                .entry(a.container.clone())
                .or_default()
                .entry(a.resource.clone())
                .or_default()
                .extend(a.ids.iter().cloned());
        }
        let pod_resources = pods
            .into_iter()
            .map(|(name, containers)| PodResources {
                name,
                namespace: "default".into(),
                containers: containers
                    .into_iter()
                    .map(|(name, devices)| ContainerResources {
                        name,
                        devices: devices
                            .into_iter()
                            .map(|(resource_name, device_ids)| ContainerDevices {
                                resource_name,
                                device_ids,
                                topology: None,
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(ListPodResourcesResponse { pod_resources }))
    }
}

/// Binds `path` (replacing a stale socket, as the kubelet does) and serves.
pub(crate) fn serve(
    shared: &Arc<Shared>,
    path: &Path,
) -> Result<tokio::task::JoinHandle<()>, SimError> {
    let io = |op| {
        move |source| SimError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io("create_dir_all"))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("remove stale socket")(e)),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(io("bind"))?;
    let service = PodResourcesListerServer::new(Lister {
        shared: Arc::clone(shared),
    });
    Ok(tokio::spawn(async move {
        let _ = Server::builder()
            .add_service(service)
            .serve_with_incoming(UnixListenerStream::new(listener))
            .await;
    }))
}
