//! Shared simulator state, the Registration service and the plugin endpoints
//! (dial-back, GetDevicePluginOptions, ListAndWatch).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint as TonicEndpoint, Uri};
use tonic::{Request, Response, Status};

use crate::api::device_plugin_client::DevicePluginClient;
use crate::api::registration_server::Registration;
use crate::api::{self, DevicePluginOptions};
use crate::types::{
    Capacity, DeviceState, EndpointInfo, KubeletVersion, Options, Pod, RegistrationRecord,
};
use crate::util::{grpc_error_string, is_extended_resource_name, join_clean};
use crate::{HEALTHY, MAX_RECV_MESSAGE_SIZE, VERSION};

pub(crate) type PluginClient = DevicePluginClient<Channel>;

/// The kubelet's connection to one registered plugin.
pub(crate) struct PluginEndpoint {
    pub id: u64,
    pub path: PathBuf,
    pub options: DevicePluginOptions,
    /// `None` once stopped (connection closed).
    pub client: Option<PluginClient>,
    pub stream_error: Option<String>,
    pub updates: u64,
    pub task: Option<JoinHandle<()>>,
}

impl PluginEndpoint {
    pub(crate) fn stop(&mut self) {
        self.client = None;
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Per-resource device-manager state.
#[derive(Default)]
pub(crate) struct ResourceState {
    /// Current endpoint; `None` before the first registration or after a restart
    /// (placeholder).
    pub endpoint: Option<PluginEndpoint>,
    pub devices: BTreeMap<String, DeviceState>,
    /// The kubelet has a device entry for the resource (first ListAndWatch message, stream
    /// failure, or restart placeholder): it appears in node status and counts as registered.
    pub in_status: bool,
}

/// A cached allocation of (pod, container, resource).
pub(crate) struct Allocation {
    pub pod: String,
    pub container: String,
    pub resource: String,
    pub ids: BTreeSet<String>,
    pub response: api::ContainerAllocateResponse,
}

#[derive(Default)]
pub(crate) struct State {
    /// Incremented at each (re)start; registrations from an older server are refused.
    pub epoch: u64,
    pub next_id: u64,
    pub resources: BTreeMap<String, ResourceState>,
    pub registrations: Vec<RegistrationRecord>,
    /// When `kubelet.sock` was last bound (start or restart).
    pub socket_bound_at: Option<Instant>,
    pub allocations: Vec<Allocation>,
    /// Admitted pods by name.
    pub pods: BTreeMap<String, Pod>,
}

impl State {
    pub fn node_status(&self) -> BTreeMap<String, Capacity> {
        self.resources
            .iter()
            .filter(|(_, r)| r.in_status)
            .map(|(name, r)| {
                let allocatable = r.devices.values().filter(|d| d.healthy).count();
                (
                    name.clone(),
                    Capacity {
                        capacity: r.devices.len(),
                        allocatable,
                    },
                )
            })
            .collect()
    }

    pub fn allocated(&self, resource: &str) -> BTreeSet<String> {
        self.allocations
            .iter()
            .filter(|a| a.resource == resource)
            .flat_map(|a| a.ids.iter().cloned())
            .collect()
    }

    pub fn endpoint_info(&self, resource: &str) -> Option<EndpointInfo> {
        let ep = self.resources.get(resource)?.endpoint.as_ref()?;
        Some(EndpointInfo {
            path: ep.path.clone(),
            options: ep.options,
            stopped: ep.client.is_none(),
            stream_error: ep.stream_error.clone(),
            updates: ep.updates,
        })
    }

    /// Stops and forgets every endpoint; resources become empty placeholders (0/0).
    pub fn drop_endpoints(&mut self) {
        for r in self.resources.values_mut() {
            if let Some(mut ep) = r.endpoint.take() {
                ep.stop();
            }
            r.devices.clear();
        }
    }
}

pub(crate) struct Shared {
    pub opts: Options,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    /// Pods are admitted one at a time.
    pub admission: tokio::sync::Mutex<()>,
}

impl Shared {
    pub fn new(opts: Options) -> Arc<Self> {
        Arc::new(Shared {
            opts,
            state: Mutex::new(State::default()),
            changed: watch::channel(0).0,
            admission: tokio::sync::Mutex::new(()),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes every waiter.
    pub fn notify(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn version(&self) -> KubeletVersion {
        self.opts.version
    }

    fn record(&self, rec: RegistrationRecord) -> usize {
        let idx = {
            let mut st = self.lock();
            st.registrations.push(rec);
            st.registrations.len() - 1
        };
        self.notify();
        idx
    }

    /// The body of `Register`: `Err` carries the text returned with status `Unknown`.
    async fn register(
        self: &Arc<Self>,
        epoch: u64,
        req: api::RegisterRequest,
    ) -> Result<(), String> {
        let received_at = Instant::now();
        let endpoint_path = join_clean(&self.opts.dir, &req.endpoint);
        let mut rec = RegistrationRecord {
            resource_name: req.resource_name.clone(),
            endpoint: req.endpoint.clone(),
            endpoint_path: endpoint_path.clone(),
            version: req.version.clone(),
            accepted: false,
            error: None,
            request_options: req.options,
            plugin_options: None,
            generation: epoch,
            received_at,
            answered_at: received_at,
        };
        let outcome = self
            .register_inner(epoch, &req, &endpoint_path, &mut rec)
            .await;
        match &outcome {
            Ok(()) => {
                tracing::info!(resource = %req.resource_name, endpoint = %endpoint_path.display(), "registered device plugin");
                rec.accepted = true;
            }
            Err(e) => {
                tracing::warn!(resource = %req.resource_name, error = %e, "device plugin registration failed");
                rec.error = Some(e.clone());
            }
        }
        rec.answered_at = Instant::now();
        let idx = self.record(rec);
        if outcome.is_ok() && !self.version().sync_register() {
            // ≤1.24: dial asynchronously after answering, use the request's options.
            let shared = Arc::clone(self);
            let options = req.options.unwrap_or_default();
            tokio::spawn(async move {
                match shared.dial(&endpoint_path).await {
                    Ok(client) => {
                        shared.install(epoch, &req.resource_name, endpoint_path, options, client);
                    }
                    Err(e) => {
                        let msg = format!("Failed to dial device plugin with request: {e}");
                        tracing::warn!(resource = %req.resource_name, "{msg}");
                        if let Some(r) = shared.lock().registrations.get_mut(idx) {
                            r.error = Some(msg);
                        }
                        shared.notify();
                    }
                }
            });
        }
        outcome
    }

    async fn register_inner(
        self: &Arc<Self>,
        epoch: u64,
        req: &api::RegisterRequest,
        endpoint_path: &Path,
        rec: &mut RegistrationRecord,
    ) -> Result<(), String> {
        if req.version != VERSION {
            return Err(format!(
                "requested API version {:?} is not supported by kubelet. Supported version is [\"{VERSION}\"]",
                req.version
            ));
        }
        if !is_extended_resource_name(&req.resource_name) {
            return Err(format!(
                "the ResourceName {:?} is invalid",
                req.resource_name
            ));
        }
        if !self.version().sync_register() {
            return Ok(());
        }
        let mut client = self
            .dial(endpoint_path)
            .await
            .map_err(|e| format!("failed to dial device plugin: {e}"))?;
        let options = client
            .get_device_plugin_options(api::Empty {})
            .await
            .map_err(|s| {
                format!(
                    "failed to get device plugin options: {}",
                    grpc_error_string(&s)
                )
            })?
            .into_inner();
        rec.plugin_options = Some(options);
        if !self.install(
            epoch,
            &req.resource_name,
            endpoint_path.to_path_buf(),
            options,
            client,
        ) {
            return Err("kubelet is restarting".to_string());
        }
        Ok(())
    }

    /// Blocking dial with the kubelet's semantics: retry until the deadline, then
    /// `context deadline exceeded`. Requests carry `:authority localhost`.
    async fn dial(&self, path: &Path) -> Result<PluginClient, String> {
        const DEADLINE: &str = "context deadline exceeded";
        if self.opts.fail_dial {
            return Err(DEADLINE.to_string());
        }
        let attempts = async {
            let mut backoff = Duration::from_millis(10);
            loop {
                let p = path.to_path_buf();
                let connector = tower::service_fn(move |_: Uri| {
                    let p = p.clone();
                    async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(p).await?)) }
                });
                match TonicEndpoint::from_static("http://localhost")
                    .connect_with_connector(connector)
                    .await
                {
                    Ok(channel) => return channel,
                    Err(e) => {
                        tracing::debug!(path = %path.display(), error = %e, "dial failed, retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_millis(500));
                    }
                }
            }
        };
        let channel = tokio::time::timeout(self.opts.dial_timeout, attempts)
            .await
            .map_err(|_| DEADLINE.to_string())?;
        Ok(DevicePluginClient::new(channel).max_decoding_message_size(MAX_RECV_MESSAGE_SIZE))
    }

    /// Makes a plugin the endpoint of `resource` (replacing any previous one) and starts its
    /// ListAndWatch. Returns false if the kubelet restarted meanwhile.
    fn install(
        self: &Arc<Self>,
        epoch: u64,
        resource: &str,
        path: PathBuf,
        options: DevicePluginOptions,
        client: PluginClient,
    ) -> bool {
        {
            let mut st = self.lock();
            if st.epoch != epoch {
                return false;
            }
            st.next_id += 1;
            let id = st.next_id;
            let task = tokio::spawn(list_and_watch(
                Arc::clone(self),
                resource.to_string(),
                id,
                client.clone(),
            ));
            let res = st.resources.entry(resource.to_string()).or_default();
            if let Some(mut old) = res.endpoint.take() {
                old.stop();
            }
            res.endpoint = Some(PluginEndpoint {
                id,
                path,
                options,
                client: Some(client),
                stream_error: None,
                updates: 0,
                task: Some(task),
            });
        }
        self.notify();
        true
    }

    /// Applies one ListAndWatch message (full replacement).
    fn apply_update(&self, resource: &str, id: u64, msg: api::ListAndWatchResponse) {
        {
            let mut st = self.lock();
            let Some(res) = st.resources.get_mut(resource) else {
                return;
            };
            let Some(ep) = res.endpoint.as_mut().filter(|e| e.id == id) else {
                return;
            };
            ep.updates += 1;
            res.devices = msg
                .devices
                .into_iter()
                .map(|d| {
                    let state = DeviceState {
                        healthy: d.health == HEALTHY,
                        numa_nodes: d
                            .topology
                            .map(|t| t.nodes.iter().map(|n| n.id).collect())
                            .unwrap_or_default(),
                        health: d.health,
                        id: d.id,
                    };
                    (state.id.clone(), state)
                })
                .collect();
            res.in_status = true;
            tracing::debug!(
                resource,
                total = res.devices.len(),
                "processed device updates"
            );
        }
        self.notify();
    }

    /// The stream ended: all devices unhealthy, endpoint stopped, no retry.
    fn stream_ended(&self, resource: &str, id: u64, reason: String) {
        {
            let mut st = self.lock();
            let Some(res) = st.resources.get_mut(resource) else {
                return;
            };
            let Some(ep) = res.endpoint.as_mut().filter(|e| e.id == id) else {
                return;
            };
            tracing::warn!(resource, error = %reason, "ListAndWatch ended unexpectedly for device plugin");
            ep.client = None;
            ep.task = None;
            ep.stream_error = Some(reason);
            for d in res.devices.values_mut() {
                d.healthy = false;
            }
            res.in_status = true;
        }
        self.notify();
    }
}

async fn list_and_watch(shared: Arc<Shared>, resource: String, id: u64, mut client: PluginClient) {
    let reason = match client.list_and_watch(api::Empty {}).await {
        Err(s) => grpc_error_string(&s),
        Ok(resp) => {
            let mut stream = resp.into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(msg)) => shared.apply_update(&resource, id, msg),
                    Ok(None) => break "EOF".to_string(),
                    Err(s) => break grpc_error_string(&s),
                }
            }
        }
    };
    shared.stream_ended(&resource, id, reason);
}

/// `v1beta1.Registration` as served on `kubelet.sock`.
pub(crate) struct RegistrationService {
    pub shared: Arc<Shared>,
    pub epoch: u64,
}

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn register(
        &self,
        request: Request<api::RegisterRequest>,
    ) -> Result<Response<api::Empty>, Status> {
        match self.shared.register(self.epoch, request.into_inner()).await {
            Ok(()) => Ok(Response::new(api::Empty {})),
            Err(e) => Err(Status::unknown(e)),
        }
    }
}
