//! Shared simulator state, the Registration service and the plugin endpoints
//! (dial-back, GetDevicePluginOptions, ListAndWatch).
//!
//! Two tables mirror the kubelet's two layers: the registration server's *clients* (one per
//! Register call, each owning a connection and its ListAndWatch stream; see
//! `plugin/v1beta1/handler.go`) and the device manager's *endpoints* (one per resource,
//! replaced by every successful registration; see `manager.go`). Device updates are keyed
//! by resource only, so every open stream of a resource feeds it.

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
use crate::conn::KillSwitch;
use crate::types::{
    Capacity, DeviceState, EndpointInfo, KubeletVersion, Options, Pod, RegistrationRecord,
};
use crate::util::{is_extended_resource_name, join_clean, recv_error_string};
use crate::{HEALTHY, MAX_RECV_MESSAGE_SIZE, VERSION};

pub(crate) type PluginClient = DevicePluginClient<Channel>;

/// What a stream closed by the kubelet itself reports (grpc-go's `ErrClientConnClosing`).
const CLIENT_CONN_CLOSING: &str =
    "rpc error: code = Canceled desc = grpc: the client connection is closing";

/// The device manager's endpoint of a resource: the newest successful registration.
pub(crate) struct PluginEndpoint {
    /// The id of the client (connection) it was created from.
    pub id: u64,
    pub path: PathBuf,
    pub options: DevicePluginOptions,
    /// `None` once stopped.
    pub client: Option<PluginClient>,
    pub stream_error: Option<String>,
    pub updates: u64,
}

impl PluginEndpoint {
    pub(crate) fn stop(&mut self) {
        self.client = None;
    }
}

/// A connection the kubelet holds to a plugin socket (one per successful dial-back), with
/// its ListAndWatch stream. Dropping it closes the connection and the stream.
pub(crate) struct PluginConn {
    pub resource: String,
    pub path: PathBuf,
    /// Closes the connection when dropped.
    _kill: KillSwitch,
    /// The ListAndWatch task while the stream is open.
    pub stream: Option<JoinHandle<()>>,
}

impl Drop for PluginConn {
    fn drop(&mut self) {
        if let Some(t) = self.stream.take() {
            t.abort();
        }
    }
}

/// An entry of the registration server's client map.
pub(crate) struct ClientKey {
    pub resource: String,
    pub path: PathBuf,
    pub id: u64,
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
    /// Times `PluginDisconnected` stopped the endpoint and marked every device
    /// unhealthy while it had some: each is a dip of the node's allocatable.
    pub disconnects: u64,
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
    /// The kubelet instance: 0 at the first start, +1 at every later start. Registrations
    /// taken by an older instance are refused.
    pub epoch: u64,
    /// Whether the instance `epoch` is up (between its start and its stop or crash).
    pub serving: bool,
    pub next_id: u64,
    pub resources: BTreeMap<String, ResourceState>,
    pub registrations: Vec<RegistrationRecord>,
    /// When `kubelet.sock` was last bound (start or restart).
    pub socket_bound_at: Option<Instant>,
    /// When `listen()` on the last bound `kubelet.sock` returned.
    pub socket_listening_at: Option<Instant>,
    /// Connections to plugins by client id (including old ones still open beside a newer
    /// registration, and ones whose stream ended but that the kubelet never closed).
    pub conns: BTreeMap<u64, PluginConn>,
    /// The registration server's client map (≥1.25), oldest first: 1.25–1.35 at most one
    /// entry per resource, ≥1.36 one per (resource, socket path).
    pub clients: Vec<ClientKey>,
    pub allocations: Vec<Allocation>,
    /// Admitted pods by name.
    pub pods: BTreeMap<String, Pod>,
    /// Every ListAndWatch message taken in, per resource, in order (with
    /// [`Options::record_updates`]).
    pub updates: BTreeMap<String, Vec<Vec<DeviceState>>>,
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

    /// Stops and forgets every endpoint and closes every plugin connection (kubelet process
    /// gone); resources become empty placeholders (0/0).
    pub fn drop_endpoints(&mut self) {
        self.conns.clear();
        self.clients.clear();
        for r in self.resources.values_mut() {
            r.endpoint = None;
            r.devices.clear();
        }
    }

    /// Whether registrations taken by instance `epoch` may still change anything.
    fn live(&self, epoch: u64) -> bool {
        self.serving && self.epoch == epoch
    }

    /// Whether client `id` has its ListAndWatch stream open.
    fn stream_open(&self, id: u64) -> bool {
        self.conns.get(&id).is_some_and(|c| c.stream.is_some())
    }

    /// Number of ListAndWatch streams held open for `resource`.
    pub fn open_streams(&self, resource: &str) -> usize {
        self.conns
            .values()
            .filter(|c| c.resource == resource && c.stream.is_some())
            .count()
    }

    /// `registerClient`: 1.25–1.35 replace the resource's entry, ≥1.36 append.
    fn register_client(&mut self, v: KubeletVersion, resource: &str, path: &Path, id: u64) {
        if !v.clients_keyed_by_socket() {
            self.clients.retain(|c| c.resource != resource);
        }
        self.clients.push(ClientKey {
            resource: resource.to_string(),
            path: path.to_path_buf(),
            id,
        });
    }

    /// `getClient`: by resource (1.25–1.35) or by (resource, path) (≥1.36), first match.
    fn lookup_client(
        &self,
        v: KubeletVersion,
        resource: &str,
        path: &Path,
    ) -> Option<(u64, PathBuf)> {
        self.clients
            .iter()
            .find(|c| c.resource == resource && (!v.clients_keyed_by_socket() || c.path == path))
            .map(|c| (c.id, c.path.clone()))
    }

    /// `deregisterClient`: removes whatever entry `lookup_client` finds.
    fn deregister_client(&mut self, v: KubeletVersion, resource: &str, path: &Path) {
        if let Some(i) = self.clients.iter().position(|c| {
            c.resource == resource && (!v.clients_keyed_by_socket() || c.path == path)
        }) {
            self.clients.remove(i);
        }
    }

    /// `disconnectClient` (≥1.25): deregisters the client, closes its connection (its stream,
    /// if still open, ends) and reports the resource disconnected.
    fn disconnect_client(&mut self, v: KubeletVersion, resource: &str, id: u64, path: &Path) {
        self.deregister_client(v, resource, path);
        if let Some(conn) = self.conns.remove(&id)
            && conn.stream.is_some()
            && let Some(ep) = self.endpoint_mut(resource, id)
        {
            ep.stream_error = Some(CLIENT_CONN_CLOSING.to_string());
        }
        self.plugin_disconnected(v, resource, path);
    }

    /// `PluginDisconnected`: the resource's endpoint, whichever it is, is stopped and all its
    /// devices turn unhealthy. ≥1.36 (assumed from PR #135437): only when the endpoint was
    /// created from a client of the same socket path.
    fn plugin_disconnected(&mut self, v: KubeletVersion, resource: &str, path: &Path) {
        let Some(res) = self.resources.get_mut(resource) else {
            return;
        };
        let Some(ep) = res.endpoint.as_mut() else {
            return;
        };
        if v.clients_keyed_by_socket() && ep.path != path {
            return;
        }
        ep.stop();
        res.disconnects += 1;
        for d in res.devices.values_mut() {
            d.healthy = false;
        }
        res.in_status = true;
    }

    fn endpoint_mut(&mut self, resource: &str, id: u64) -> Option<&mut PluginEndpoint> {
        self.resources
            .get_mut(resource)?
            .endpoint
            .as_mut()
            .filter(|e| e.id == id)
    }

    /// The kubelet tears the current client of `resource` down (connection closed, endpoint
    /// stopped, devices unhealthy). Returns false when its stream is not open.
    pub fn drop_stream(&mut self, v: KubeletVersion, resource: &str) -> bool {
        let Some((id, path)) = self
            .resources
            .get(resource)
            .and_then(|r| r.endpoint.as_ref())
            .map(|e| (e.id, e.path.clone()))
        else {
            return false;
        };
        if !self.stream_open(id) {
            return false;
        }
        if v.sync_register() {
            self.disconnect_client(v, resource, id, &path);
        } else {
            self.conns.remove(&id);
            if let Some(ep) = self.endpoint_mut(resource, id) {
                ep.stream_error = Some(CLIENT_CONN_CLOSING.to_string());
            }
            self.plugin_disconnected(v, resource, &path);
        }
        true
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
                let kill = KillSwitch::new();
                match shared.dial(&endpoint_path, &kill).await {
                    Ok(client) => {
                        let id = shared.lock().new_id();
                        shared.install(
                            epoch,
                            id,
                            &req.resource_name,
                            endpoint_path,
                            options,
                            client,
                            kill,
                        );
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
        let resource = req.resource_name.as_str();
        // `connectClient`: the client is registered before it is dialled, and deregistered
        // (whatever entry the key finds by then) if the dial or the options call fails.
        let id = {
            let mut st = self.lock();
            let id = st.new_id();
            if st.live(epoch) {
                st.register_client(self.version(), resource, endpoint_path, id);
            }
            id
        };
        let kill = KillSwitch::new();
        let connected = self.connect(endpoint_path, &kill).await;
        let (client, options) = match connected {
            Ok(c) => c,
            Err(e) => {
                {
                    let mut st = self.lock();
                    if st.live(epoch) {
                        st.deregister_client(self.version(), resource, endpoint_path);
                    }
                }
                self.notify();
                return Err(e);
            }
        };
        rec.plugin_options = Some(options);
        if !self.install(
            epoch,
            id,
            resource,
            endpoint_path.to_path_buf(),
            options,
            client,
            kill,
        ) {
            return Err("kubelet is restarting".to_string());
        }
        Ok(())
    }

    /// Dial-back and GetDevicePluginOptions (≥1.25).
    async fn connect(
        &self,
        path: &Path,
        kill: &KillSwitch,
    ) -> Result<(PluginClient, DevicePluginOptions), String> {
        let mut client = self
            .dial(path, kill)
            .await
            .map_err(|e| format!("failed to dial device plugin: {e}"))?;
        let options = client
            .get_device_plugin_options(api::Empty {})
            .await
            .map_err(|s| {
                format!(
                    "failed to get device plugin options: {}",
                    recv_error_string(&s)
                )
            })?
            .into_inner();
        Ok((client, options))
    }

    /// Blocking dial with the kubelet's semantics: retry until the deadline, then
    /// `context deadline exceeded`. Requests carry `:authority localhost`. Every connection
    /// made for the client is closed when `kill` fires or is dropped.
    async fn dial(&self, path: &Path, kill: &KillSwitch) -> Result<PluginClient, String> {
        const DEADLINE: &str = "context deadline exceeded";
        if self.opts.fail_dial {
            return Err(DEADLINE.to_string());
        }
        let guard = kill.handle();
        let attempts = async {
            let mut backoff = Duration::from_millis(10);
            loop {
                let p = path.to_path_buf();
                let guard = guard.clone();
                let connector = tower::service_fn(move |_: Uri| {
                    let p = p.clone();
                    let guard = guard.clone();
                    async move {
                        let stream = UnixStream::connect(p).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(guard.guard(stream)))
                    }
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

    /// `PluginConnected` and `runClient`: makes the client the endpoint of `resource` and
    /// starts its ListAndWatch. ≥1.25 leaves the previous connection and stream open; ≤1.24
    /// stops the previous endpoint and closes its connection. Returns false (and closes the
    /// connection) if the kubelet stopped or restarted meanwhile.
    #[allow(clippy::too_many_arguments)]
    fn install(
        self: &Arc<Self>,
        epoch: u64,
        id: u64,
        resource: &str,
        path: PathBuf,
        options: DevicePluginOptions,
        client: PluginClient,
        kill: KillSwitch,
    ) -> bool {
        {
            let mut st = self.lock();
            if !st.live(epoch) {
                return false;
            }
            let task = tokio::spawn(list_and_watch(
                Arc::clone(self),
                resource.to_string(),
                id,
                client.clone(),
            ));
            let previous = st
                .resources
                .entry(resource.to_string())
                .or_default()
                .endpoint
                .replace(PluginEndpoint {
                    id,
                    path: path.clone(),
                    options,
                    client: Some(client),
                    stream_error: None,
                    updates: 0,
                });
            if !self.version().sync_register()
                && let Some(old) = previous
            {
                st.conns.remove(&old.id);
            }
            st.conns.insert(
                id,
                PluginConn {
                    resource: resource.to_string(),
                    path,
                    _kill: kill,
                    stream: Some(task),
                },
            );
        }
        self.notify();
        true
    }

    /// `genericDeviceUpdateCallback`: one ListAndWatch message of any open stream of the
    /// resource replaces its device set ("last message wins").
    fn apply_update(&self, resource: &str, id: u64, msg: api::ListAndWatchResponse) {
        {
            let mut st = self.lock();
            if !st.stream_open(id) {
                return;
            }
            let Some(res) = st.resources.get_mut(resource) else {
                return;
            };
            if let Some(ep) = res.endpoint.as_mut().filter(|e| e.id == id) {
                ep.updates += 1;
            }
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
            let total = res.devices.len();
            let list: Option<Vec<DeviceState>> = self
                .opts
                .record_updates
                .then(|| res.devices.values().cloned().collect());
            if let Some(list) = list {
                st.updates
                    .entry(resource.to_owned())
                    .or_default()
                    .push(list);
            }
            tracing::debug!(resource, total, "processed device updates");
        }
        self.notify();
    }

    /// A stream ended on its own (error or EOF); no retry. ≤1.24: the connection is closed and
    /// the endpoint stopped if it is still this client's. ≥1.25 (`runClient`): the client the
    /// map holds under the key, which may be a *newer* one, is disconnected; if none, the
    /// connection stays open and nothing else happens.
    fn stream_ended(&self, resource: &str, id: u64, reason: String) {
        {
            let v = self.version();
            let mut st = self.lock();
            // Closed by the kubelet already: nothing more.
            let Some(conn) = st.conns.get_mut(&id) else {
                return;
            };
            // Detach (not abort): this is the task itself.
            drop(conn.stream.take());
            let path = conn.path.clone();
            tracing::warn!(resource, error = %reason, "ListAndWatch ended unexpectedly for device plugin");
            if let Some(ep) = st.endpoint_mut(resource, id) {
                ep.stream_error = Some(reason);
            }
            if !v.sync_register() {
                st.conns.remove(&id);
                if st.endpoint_mut(resource, id).is_some() {
                    st.plugin_disconnected(v, resource, &path);
                }
            } else if let Some((current, current_path)) = st.lookup_client(v, resource, &path) {
                if current != id {
                    tracing::warn!(
                        resource,
                        "an older stream ended: tearing down the newer client"
                    );
                }
                st.disconnect_client(v, resource, current, &current_path);
            }
        }
        self.notify();
    }
}

impl State {
    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

async fn list_and_watch(shared: Arc<Shared>, resource: String, id: u64, mut client: PluginClient) {
    let reason = match client.list_and_watch(api::Empty {}).await {
        Err(s) => recv_error_string(&s),
        Ok(resp) => {
            let mut stream = resp.into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(msg)) => shared.apply_update(&resource, id, msg),
                    Ok(None) => break "EOF".to_string(),
                    Err(s) => break recv_error_string(&s),
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
