//! One DevicePlugin gRPC server: one resource, one Unix socket.
//!
//! The handlers are thin: they look up the current state and call the pure
//! core ([`gpu_slicer_core::allocate`], [`gpu_slicer_core::placement`]). The device list lives in
//! a `watch` channel so that ListAndWatch re-sends the full list the moment
//! it changes, with no polling.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use std::time::Duration;
use tokio::net::UnixListener;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{UnixListenerStream, WatchStream};
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use std::collections::HashMap;

use crate::kubelet::connection::Closable;
use crate::metrics::Metrics;
use gpu_slicer_api::device_plugin_server::{DevicePlugin, DevicePluginServer};
use gpu_slicer_api::{
    AllocateRequest, AllocateResponse, ContainerPreferredAllocationResponse, Device,
    DevicePluginOptions, Empty, ListAndWatchResponse, NumaNode, PreStartContainerRequest,
    PreStartContainerResponse, PreferredAllocationRequest, PreferredAllocationResponse,
    TopologyInfo,
};
use gpu_slicer_core::allocate::{AllocateError, NodeDeviceFiles, allocate};
use gpu_slicer_core::config::{Flags, ResourceName};
use gpu_slicer_core::health::HealthState;
use gpu_slicer_core::placement::{LinkScores, PlacementError, preferred};
use gpu_slicer_core::plan::Resource;

pub const HEALTHY: &str = "Healthy";
pub const UNHEALTHY: &str = "Unhealthy";

/// Options sent both in `RegisterRequest.options` and from
/// GetDevicePluginOptions (kubelets ≥ 1.25 read only the latter).
pub fn options() -> DevicePluginOptions {
    DevicePluginOptions {
        pre_start_required: false,
        get_preferred_allocation_available: true,
    }
}

/// Everything a resource's handlers read, swapped as a whole on change.
#[derive(Debug)]
pub struct ResourceState {
    pub resource: Arc<Resource>,
    /// Health of physical devices, shared by every resource of the node.
    pub health: Arc<HealthState>,
    pub flags: Flags,
    pub files: Arc<NodeDeviceFiles>,
    pub links: Arc<LinkScores>,
    /// Which resource each advertised id belongs to, node-wide: lets a
    /// request that mixes resources be told apart from an unknown id.
    pub owners: Arc<HashMap<String, ResourceName>>,
}

/// The gRPC status for a refused Allocate: a code that fits, NVIDIA's words.
fn allocate_status(error: AllocateError, owners: &HashMap<String, ResourceName>) -> Status {
    match &error {
        AllocateError::UnknownDevice { resource, id } => match owners.get(id) {
            Some(owner) => Status::invalid_argument(format!(
                "invalid allocation request for \"{resource}\": invalid request: device {id} belongs to \
                 resource {owner}; one request cannot mix resources"
            )),
            None => Status::not_found(error.to_string()),
        },
        AllocateError::TooManySharedDevices { .. }
        | AllocateError::TooManyMpsReplicas { .. }
        | AllocateError::MpsReplicasOnSeveralGpus { .. }
        | AllocateError::NoDevices { .. }
        | AllocateError::DuplicateDevice { .. } => Status::invalid_argument(error.to_string()),
    }
}

/// The shared, live state of one resource: what the handlers answer from,
/// and the device list ListAndWatch streams.
#[derive(Debug, Clone)]
pub struct ResourceHandle {
    state: watch::Sender<Arc<ResourceState>>,
    list: watch::Sender<Arc<ListAndWatchResponse>>,
}

impl ResourceHandle {
    pub fn new(state: ResourceState) -> Self {
        let list = device_list(&state.resource, &state.health);
        ResourceHandle {
            state: watch::Sender::new(Arc::new(state)),
            list: watch::Sender::new(Arc::new(list)),
        }
    }

    pub fn state(&self) -> Arc<ResourceState> {
        self.state.borrow().clone()
    }

    /// Replaces the state; the device list is re-sent only if it changed.
    pub fn update(&self, state: ResourceState) {
        let list = device_list(&state.resource, &state.health);
        self.state.send_replace(Arc::new(state));
        self.list.send_if_modified(|current| {
            if **current == list {
                false
            } else {
                *current = Arc::new(list);
                true
            }
        });
    }

    fn subscribe(&self) -> watch::Receiver<Arc<ListAndWatchResponse>> {
        self.list.subscribe()
    }
}

/// The full list the kubelet gets. A device is unhealthy when its physical
/// device (MIG device or GPU) or its parent GPU is.
fn device_list(resource: &Resource, health: &HealthState) -> ListAndWatchResponse {
    ListAndWatchResponse {
        devices: resource
            .devices
            .iter()
            .map(|d| Device {
                id: d.id.clone(),
                health: if health.is_healthy(&d.physical.uuid)
                    && health.is_healthy(&d.physical.gpu_uuid)
                {
                    HEALTHY.into()
                } else {
                    UNHEALTHY.into()
                },
                topology: d.physical.numa_node.map(|id| TopologyInfo {
                    nodes: vec![NumaNode { id }],
                }),
            })
            .collect(),
    }
}

/// The ListAndWatch streams a server has seen open and close, counted
/// rather than queued: the daemon reads the counts when woken, so no channel
/// can grow and no transition is lost.
#[derive(Debug, Default)]
pub struct StreamCounts {
    opened: AtomicU64,
    closed: AtomicU64,
}

impl StreamCounts {
    /// (opened, closed) so far.
    pub fn get(&self) -> (u64, u64) {
        (
            self.opened.load(Ordering::Acquire),
            self.closed.load(Ordering::Acquire),
        )
    }
}

/// Where a server reports its streams: its own counts, and the daemon's
/// wake-up shared by every server.
#[derive(Debug, Clone)]
pub struct StreamReport {
    pub counts: Arc<StreamCounts>,
    pub wake: Arc<Notify>,
}

impl StreamReport {
    fn opened(&self) {
        self.counts.opened.fetch_add(1, Ordering::AcqRel);
        self.wake.notify_one();
    }

    fn closed(&self) {
        self.counts.closed.fetch_add(1, Ordering::AcqRel);
        self.wake.notify_one();
    }
}

/// Told the device ids of every container request Allocate granted: a pod
/// now holds them (what the MIG state publisher shows at once, before the
/// kubelet's PodResources lists them).
#[derive(Clone)]
pub struct OnAllocated(pub Arc<dyn Fn(&[String]) + Send + Sync>);

impl std::fmt::Debug for OnAllocated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnAllocated")
    }
}

/// The gRPC service of one resource on one server.
#[derive(Debug, Clone)]
pub struct PluginService {
    name: ResourceName,
    handle: ResourceHandle,
    metrics: Metrics,
    streams: StreamReport,
    responses: Arc<AtomicU64>,
    on_allocated: Option<OnAllocated>,
}

/// Reports the end of a ListAndWatch stream when the stream is dropped,
/// which is what happens when the kubelet goes away or closes it, or when
/// the server closes the connection.
struct StreamGuard(StreamReport);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.closed();
    }
}

impl PluginService {
    pub fn new(
        name: ResourceName,
        handle: ResourceHandle,
        metrics: Metrics,
        streams: StreamReport,
        on_allocated: Option<OnAllocated>,
    ) -> Self {
        PluginService {
            name,
            handle,
            metrics,
            streams,
            responses: Arc::new(AtomicU64::new(0)),
            on_allocated,
        }
    }

    /// A UUIDv4-shaped id per Allocate response (the CDI annotation key
    /// suffix), unique within and across processes.
    fn response_id(&self) -> String {
        use std::hash::{BuildHasher, RandomState};
        let n = self.responses.fetch_add(1, Ordering::Relaxed);
        let seed = RandomState::new();
        let a = seed.hash_one((n, std::process::id()));
        let b = seed.hash_one((a, n));
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | (b >> 48) & 0x3fff,
            b & 0xffff_ffff_ffff
        )
    }
}

type ListAndWatchStream =
    Pin<Box<dyn Stream<Item = Result<ListAndWatchResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl DevicePlugin for PluginService {
    async fn get_device_plugin_options(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<DevicePluginOptions>, Status> {
        Ok(Response::new(options()))
    }

    type ListAndWatchStream = ListAndWatchStream;

    /// Sends the full list now and again on every change. The stream never
    /// ends on its own (the kubelet treats an ended stream as a dead
    /// plugin): it ends when its connection closes, which
    /// [`RunningServer::stop`] does.
    async fn list_and_watch(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        self.streams.opened();
        let guard = StreamGuard(self.streams.clone());
        let stream = WatchStream::new(self.handle.subscribe())
            .map(move |list| {
                let _alive = &guard;
                Ok(ListAndWatchResponse::clone(&list))
            })
            .chain(tokio_stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_preferred_allocation(
        &self,
        request: Request<PreferredAllocationRequest>,
    ) -> Result<Response<PreferredAllocationResponse>, Status> {
        let state = self.handle.state();
        let policy = state.flags.plugin.shared_devices_allocation_policy;
        let mut container_responses = Vec::new();
        for req in request.into_inner().container_requests {
            let size = usize::try_from(req.allocation_size).unwrap_or(0);
            let ids = preferred(
                &state.resource,
                &req.available_device_i_ds,
                &req.must_include_device_i_ds,
                size,
                policy,
                &state.links,
            )
            .map_err(|e| {
                let message = format!("error getting list of preferred allocation devices: {e}");
                match e {
                    PlacementError::NotEnoughDevices => Status::resource_exhausted(message),
                    _ => Status::invalid_argument(message),
                }
            })?;
            container_responses.push(ContainerPreferredAllocationResponse { device_i_ds: ids });
        }
        Ok(Response::new(PreferredAllocationResponse {
            container_responses,
        }))
    }

    async fn allocate(
        &self,
        request: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        let state = self.handle.state();
        let mut container_responses = Vec::new();
        for req in request.into_inner().container_requests {
            let response = allocate(
                &state.resource,
                &req.devices_ids,
                &state.flags,
                &state.files,
                &self.response_id(),
            )
            .map_err(|e| {
                tracing::warn!(resource = %state.resource.name, error = %e, "Allocate refused");
                self.metrics.count_allocation(self.name.as_str(), false);
                allocate_status(e, &state.owners)
            })?;
            self.metrics.count_allocation(self.name.as_str(), true);
            tracing::debug!(resource = %state.resource.name, devices = ?req.devices_ids, "allocated");
            if let Some(OnAllocated(tell)) = &self.on_allocated {
                tell(&req.devices_ids);
            }
            container_responses.push(crate::kubelet::wire::container_response(response));
        }
        Ok(Response::new(AllocateResponse {
            container_responses,
        }))
    }

    async fn pre_start_container(
        &self,
        _: Request<PreStartContainerRequest>,
    ) -> Result<Response<PreStartContainerResponse>, Status> {
        Ok(Response::new(PreStartContainerResponse {}))
    }
}

/// A running server on a socket; dropping it does not stop it: call [`stop`](Self::stop).
#[derive(Debug)]
pub struct RunningServer {
    pub socket: PathBuf,
    /// Identity of the socket file we bound: only that file is removed on stop.
    identity: Option<(u64, u64)>,
    streams: Arc<StreamCounts>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// The largest request accepted: the kubelet's own gRPC limit (4 MiB), so a
/// client cannot make the daemon hold more (a 60 MB Allocate once raised the
/// resident set by 60 MB for good). A GetPreferredAllocation listing 10,000
/// replica ids is about 0.5 MB.
const MAX_DECODE_BYTES: usize = gpu_slicer_core::plan::KUBELET_MAX_MESSAGE;
const WINDOW_BYTES: u32 = 4 << 20;
/// Mode of the plugin sockets: the owner (root, like the kubelet) only.
pub const SOCKET_MODE: u32 = 0o600;
/// How long a stopping server may take once its connections are closed.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// Binds `socket` (replacing a stale file) and serves `service` on it. The
/// listener is bound before this returns, so a kubelet dialing back during
/// Register always finds it.
pub fn serve(
    socket: &Path,
    name: ResourceName,
    handle: ResourceHandle,
    metrics: Metrics,
    wake: Arc<Notify>,
    on_allocated: Option<OnAllocated>,
) -> std::io::Result<RunningServer> {
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(socket)?;
    // Explicit, not the umask's (0777 under umask 000): only the kubelet,
    // which runs as root, connects.
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(SOCKET_MODE))?;
    let identity = crate::host::files::socket_identity(socket);
    let stop = CancellationToken::new();
    let counts = Arc::new(StreamCounts::default());
    let service = PluginService::new(
        name,
        handle,
        metrics,
        StreamReport {
            counts: counts.clone(),
            wake,
        },
        on_allocated,
    );
    let closer = stop.clone();
    let incoming =
        UnixListenerStream::new(listener).map(move |io| io.map(|io| Closable::new(io, &closer)));
    let shutdown = stop.clone().cancelled_owned();
    let path = socket.to_path_buf();
    let task = tokio::spawn(async move {
        // Large HTTP/2 windows: a GetPreferredAllocation request lists every
        // available id (~460 KB for 10,000 replicas); with the 64 KiB default
        // the kubelet would wait on several window updates per call.
        let result = tonic::transport::Server::builder()
            .initial_stream_window_size(Some(WINDOW_BYTES))
            .initial_connection_window_size(Some(WINDOW_BYTES))
            .add_service(
                DevicePluginServer::new(service).max_decoding_message_size(MAX_DECODE_BYTES),
            )
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        if let Err(e) = result {
            tracing::error!(socket = %path.display(), error = %e, "gRPC server failed");
        }
    });
    Ok(RunningServer {
        socket: socket.to_path_buf(),
        identity,
        streams: counts,
        stop,
        task,
    })
}

impl RunningServer {
    /// (opened, closed) ListAndWatch streams so far.
    pub fn stream_counts(&self) -> (u64, u64) {
        self.streams.get()
    }

    /// Whether the file at the socket path is still the one this server bound.
    pub fn socket_in_place(&self) -> bool {
        self.identity.is_some()
            && crate::host::files::socket_identity(&self.socket) == self.identity
    }

    /// Stops serving: closes every connection (which ends its ListAndWatch
    /// streams) and removes the socket file if it is still the one we bound
    /// (a newer server may already listen on the same path).
    pub async fn stop(self) {
        self.stop.cancel();
        let mut task = self.task;
        if tokio::time::timeout(STOP_GRACE, &mut task).await.is_err() {
            task.abort();
            let _ = task.await;
        }
        if self.identity.is_some()
            && crate::host::files::socket_identity(&self.socket) == self.identity
        {
            let _ = std::fs::remove_file(&self.socket);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpu_slicer_core::config::{Config, ReplicatedResource};
    use gpu_slicer_core::gpu::simulated;
    use gpu_slicer_core::plan::{list_and_watch_len, plan};
    use prost::Message as _;

    /// The core's size rule (used to refuse lists over the kubelet's 4 MiB)
    /// is the wire's: it counts every device as `Unhealthy`, two bytes more
    /// than `Healthy`, so a health change never crosses the limit.
    #[test]
    fn the_core_computes_the_encoded_list_size() {
        for (instance, numa) in [("g5.48xlarge", None), ("p4d.24xlarge", Some(1))] {
            let mut inventory = simulated::from_instance(instance, None).expect("preset");
            for gpu in &mut inventory.gpus {
                gpu.numa_node = numa;
            }
            let mut config = Config::default();
            config.sharing.time_slicing.resources =
                vec![ReplicatedResource::every("nvidia.com/gpu", 1000)];
            let planned = plan(&inventory, &config);
            let resource = &planned.resources[0];
            let wire = device_list(resource, &HealthState::default()).encoded_len();
            assert_eq!(
                list_and_watch_len(resource),
                wire + 2 * resource.devices.len(),
                "{instance}"
            );
        }
    }
}
