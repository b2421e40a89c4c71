//! The [`Kubelet`] handle: start, observe, admit, restart, crash, shut down.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{UnixListener, UnixSocket};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;

use crate::api::registration_server::RegistrationServer;
use crate::conn::KillSwitch;
use crate::error::{AdmissionError, SimError, StartError};
use crate::state::{RegistrationService, Shared};
use crate::types::{
    Admission, AllocationRecord, Capacity, DeviceState, EndpointInfo, Options, Pod,
    RegistrationRecord, socket_path_ok,
};
use crate::util::{clean_dir, ensure_checkpoint};
use crate::{KUBELET_SOCKET, admission};

/// `listen()` backlog; the kernel caps it at `net.core.somaxconn`, as for grpc-go.
const BACKLOG: u32 = 4096;

/// A running Registration server on `kubelet.sock`.
struct ServerHandle {
    task: JoinHandle<Result<(), tonic::transport::Error>>,
    /// Every accepted connection; dropping it closes them.
    connections: KillSwitch,
}

impl ServerHandle {
    /// Stops serving at once, as grpc-go's `Server.Stop` (which the kubelet calls) and as a
    /// killed process: every connection closed, in-flight calls cut off, the listener closed
    /// when this returns. The socket file is left to the caller.
    async fn kill(self) {
        self.connections.kill();
        self.task.abort();
        // Resolves once the task's future, and with it the listener, is dropped.
        let _ = self.task.await;
    }
}

/// The simulated kubelet device manager. Dropping it aborts its tasks and closes its
/// connections; prefer [`Kubelet::shutdown`].
pub struct Kubelet {
    shared: Arc<Shared>,
    server: Option<ServerHandle>,
    /// The PodResources server, when [`Options::pod_resources_socket`] is set.
    pod_resources: Option<tokio::task::JoinHandle<()>>,
}

impl Kubelet {
    /// Starts the kubelet, as its device manager does at process start: creates the
    /// directory (mode 0750), cleans it ([`Options::cleanup`]: by default every top-level
    /// non-directory entry except `kubelet_internal_checkpoint`), creates that checkpoint
    /// file if absent, binds `<dir>/kubelet.sock`, waits [`Options::listen_delay`], listens
    /// and serves `v1beta1.Registration` with gRPC default limits. The socket accepts
    /// connections when this returns. This is kubelet instance ([`generation`](Self::generation)) 0.
    pub async fn start(opts: Options) -> Result<Kubelet, SimError> {
        let shared = Shared::new(opts);
        let server = boot(&shared, 0, Duration::ZERO).await?;
        let pod_resources = match shared.opts.pod_resources_socket.clone() {
            Some(path) => Some(crate::pod_resources::serve(&shared, &path)?),
            None => None,
        };
        Ok(Kubelet {
            shared,
            server: Some(server),
            pod_resources,
        })
    }

    /// The options the simulator runs with.
    pub fn options(&self) -> &Options {
        &self.shared.opts
    }

    /// `<dir>/kubelet.sock`.
    pub fn socket_path(&self) -> PathBuf {
        self.shared.opts.dir.join(KUBELET_SOCKET)
    }

    /// When `kubelet.sock` was last bound: by [`start`](Self::start),
    /// [`restart`](Self::restart) or [`start_again`](Self::start_again). The file appears
    /// here (the inotify CREATE a plugin waits for); connections are refused until
    /// [`socket_listening_at`](Self::socket_listening_at).
    pub fn socket_bound_at(&self) -> Option<Instant> {
        self.shared.lock().socket_bound_at
    }

    /// When `listen()` on the last bound `kubelet.sock` returned: from then on connections
    /// are accepted. `None` between a bind and its listen. Measure "registered within N ms
    /// of kubelet.sock accepting connections" from here (compare with
    /// [`RegistrationRecord::received_at`]).
    pub fn socket_listening_at(&self) -> Option<Instant> {
        self.shared.lock().socket_listening_at
    }

    /// The current (or, after a [`crash`](Self::crash), the last) kubelet instance: 0 after
    /// [`start`](Self::start), +1 per [`restart`](Self::restart) or
    /// [`start_again`](Self::start_again). Matches [`RegistrationRecord::generation`].
    pub fn generation(&self) -> u64 {
        self.shared.lock().epoch
    }

    /// Whether the Registration server is up (false after [`crash`](Self::crash) until
    /// [`start_again`](Self::start_again)).
    pub fn is_serving(&self) -> bool {
        self.server.is_some()
    }

    /// Every Register call so far (accepted or not), oldest first, across kubelet instances.
    pub fn registrations(&self) -> Vec<RegistrationRecord> {
        self.shared.lock().registrations.clone()
    }

    /// Number of ListAndWatch streams the kubelet holds open for `resource`, including old
    /// streams kept open beside a newer registration (1.25+).
    pub fn open_streams(&self, resource: &str) -> usize {
        self.shared.lock().open_streams(resource)
    }

    /// How often the kubelet disconnected `resource`'s plugin client and marked
    /// every device unhealthy (`PluginDisconnected`): each time, the node's
    /// allocatable for it dropped to 0 until a new stream's first list.
    pub fn disconnects(&self, resource: &str) -> u64 {
        self.shared
            .lock()
            .resources
            .get(resource)
            .map_or(0, |r| r.disconnects)
    }

    /// Node capacity/allocatable per device-plugin resource: capacity = healthy + unhealthy,
    /// allocatable = healthy. A resource appears after its first ListAndWatch message (or a
    /// stream failure) and never disappears (0/0 after a restart until re-registration).
    pub fn node_status(&self) -> BTreeMap<String, Capacity> {
        self.shared.lock().node_status()
    }

    /// Devices of `resource` as last reported (empty if unknown).
    pub fn devices(&self, resource: &str) -> Vec<DeviceState> {
        self.shared
            .lock()
            .resources
            .get(resource)
            .map(|r| r.devices.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Every ListAndWatch message of `resource` the kubelet took in, oldest first, each as
    /// the device list it left (sorted by id); empty unless [`Options::record_updates`].
    pub fn device_updates(&self, resource: &str) -> Vec<Vec<DeviceState>> {
        self.shared
            .lock()
            .updates
            .get(resource)
            .cloned()
            .unwrap_or_default()
    }

    /// The current endpoint of `resource`, if any.
    pub fn endpoint(&self, resource: &str) -> Option<EndpointInfo> {
        self.shared.lock().endpoint_info(resource)
    }

    /// Every device assignment held (pods admitted and not released).
    pub fn allocations(&self) -> Vec<AllocationRecord> {
        self.shared
            .lock()
            .allocations
            .iter()
            .map(|a| AllocationRecord {
                pod: a.pod.clone(),
                container: a.container.clone(),
                resource: a.resource.clone(),
                device_ids: a.ids.iter().cloned().collect(),
            })
            .collect()
    }

    /// Device ids of `resource` currently assigned to some container.
    pub fn allocated(&self, resource: &str) -> BTreeSet<String> {
        self.shared.lock().allocated(resource)
    }

    /// Waits until `pred(node_status)` holds. Event-driven: re-evaluated on every state change.
    /// The timeout error includes the node status at that moment.
    pub async fn wait_until<F>(&self, pred: F, timeout: Duration) -> Result<(), SimError>
    where
        F: Fn(&BTreeMap<String, Capacity>) -> bool,
    {
        self.wait_for("node status condition", timeout, |k| pred(&k.node_status()))
            .await
    }

    /// Waits until `pred(registrations)` holds (e.g. a rejected registration was recorded).
    pub async fn wait_for_registrations<F>(
        &self,
        pred: F,
        timeout: Duration,
    ) -> Result<(), SimError>
    where
        F: Fn(&[RegistrationRecord]) -> bool,
    {
        self.wait_for("registration condition", timeout, |k| {
            pred(&k.shared.lock().registrations)
        })
        .await
    }

    /// Waits until `pred(self)` holds; the general form of the `wait_*` helpers. Re-evaluated
    /// on every state change (registrations, stream openings and endpings, device updates,
    /// socket bind and listen).
    pub async fn wait_for<F>(
        &self,
        waiting_for: &'static str,
        timeout: Duration,
        pred: F,
    ) -> Result<(), SimError>
    where
        F: Fn(&Kubelet) -> bool,
    {
        let mut rx = self.shared.subscribe();
        let wait = async {
            loop {
                rx.borrow_and_update();
                if pred(self) {
                    return;
                }
                if rx.changed().await.is_err() {
                    // Unreachable while `self` holds the sender; avoid a busy loop anyway.
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| SimError::Timeout {
                timeout,
                waiting_for,
                node_status: self.node_status(),
            })
    }

    /// Admits a pod: resource-fit check (if [`Options::fit_check`]), then for every container
    /// (init containers first) and every device-plugin resource in its limits the device
    /// manager's checks, GetPreferredAllocation (when the plugin asked for it) and one
    /// Allocate RPC. On failure the pod's devices are released and the kubelet's rejection
    /// message is returned. Resources unknown to the device manager are ignored.
    pub async fn admit(&self, pod: &Pod) -> Result<Admission, AdmissionError> {
        admission::admit(&self.shared, pod).await
    }

    /// Starts (or restarts) a container of an admitted pod: calls PreStartContainer with the
    /// container's device ids for every resource whose plugin set `pre_start_required`
    /// (30 s timeout). Skipped for resources whose plugin has not re-registered since a
    /// kubelet restart.
    pub async fn start_container(&self, pod_name: &str, container: &str) -> Result<(), StartError> {
        admission::start_container(&self.shared, pod_name, container).await
    }

    /// Deletes a pod: its devices become free for later admissions.
    pub fn release(&self, pod_name: &str) {
        {
            let mut st = self.shared.lock();
            st.allocations.retain(|a| a.pod != pod_name);
            st.pods.remove(pod_name);
        }
        self.shared.notify();
    }

    /// Simulates a graceful kubelet restart. The stop, as the kubelet's registration server
    /// does it: every plugin client is disconnected (plugins see their ListAndWatch streams
    /// end), then grpc-go's `Server.Stop` closes every connection on `kubelet.sock` at once
    /// and the listener, whose close removes `kubelet.sock`. Then the next instance starts:
    /// directory clean-up (as in [`start`](Self::start)), [`Options::restart_delay`], bind of
    /// a fresh `kubelet.sock` (an inotify CREATE), [`Options::listen_delay`], listen. Known
    /// resources read 0/0 until their plugin registers again; allocations are kept. Works on
    /// a crashed kubelet too.
    pub async fn restart(&mut self) -> Result<(), SimError> {
        self.stop_gracefully().await;
        let epoch = self.next_epoch();
        self.server = Some(boot(&self.shared, epoch, self.shared.opts.restart_delay).await?);
        tracing::info!(dir = %self.shared.opts.dir.display(), "kubelet restarted");
        Ok(())
    }

    /// Simulates a kubelet crash (SIGKILL): every connection is dropped at once, on
    /// `kubelet.sock` and to plugins (plugins see their ListAndWatch streams end), and the
    /// listener is closed **without** removing `kubelet.sock`: a stale socket file stays at
    /// the path and a connect to it fails with `ECONNREFUSED` until
    /// [`start_again`](Self::start_again). Registrations in flight are refused. Known
    /// resources read 0/0; allocations are kept (as in the checkpoint). No-op on a kubelet
    /// that is not serving.
    pub async fn crash(&mut self) {
        if let Some(server) = self.server.take() {
            self.shared.lock().serving = false;
            server.kill().await;
        }
        self.shared.lock().drop_endpoints();
        self.shared.notify();
        tracing::info!(dir = %self.shared.opts.dir.display(), "kubelet crashed");
    }

    /// Starts the next kubelet instance on the same state (its
    /// [`generation`](Self::generation) is one more), as a supervisor does after a crash: the
    /// start sequence of [`start`](Self::start) (directory clean-up, which deletes the stale
    /// `kubelet.sock`, then bind, [`Options::listen_delay`], listen), without
    /// [`Options::restart_delay`]. A kubelet still serving is [crashed](Self::crash) first.
    pub async fn start_again(&mut self) -> Result<(), SimError> {
        if self.server.is_some() {
            self.crash().await;
        }
        let epoch = self.next_epoch();
        self.server = Some(boot(&self.shared, epoch, Duration::ZERO).await?);
        tracing::info!(dir = %self.shared.opts.dir.display(), "kubelet started again");
        Ok(())
    }

    /// Drops the ListAndWatch stream of `resource` without a restart, as a kubelet does when
    /// it tears a client down (the 1.25–1.35 re-registration race, a connection error): the
    /// current client's connection is closed, the endpoint stops and every device turns
    /// unhealthy; only a new registration brings it back. Older streams kept open beside it
    /// are not touched. Returns whether the current endpoint had an open stream to drop.
    pub fn drop_stream(&self, resource: &str) -> bool {
        let dropped = self
            .shared
            .lock()
            .drop_stream(self.shared.opts.version, resource);
        self.shared.notify();
        dropped
    }

    /// Forces the 5-minute expiry of stopped endpoints now: their resources drop to 0/0
    /// (the key stays in node status).
    pub fn expire_stopped_endpoints(&self) {
        {
            let mut st = self.shared.lock();
            for r in st.resources.values_mut() {
                let stopped = r.endpoint.as_ref().is_none_or(|e| e.client.is_none());
                if stopped {
                    r.devices.clear();
                }
            }
        }
        self.shared.notify();
    }

    /// Stops as [`restart`](Self::restart) does: closes plugin connections, then every
    /// connection on `kubelet.sock`, and removes `kubelet.sock` (as grpc-go's listener does
    /// on close). A crashed kubelet's stale socket is left alone.
    pub async fn shutdown(mut self) {
        self.stop_gracefully().await;
    }

    /// The kubelet's own stop of the current instance, if serving.
    async fn stop_gracefully(&mut self) {
        self.shared.lock().serving = false;
        // `server.Stop`: clients first, then the gRPC server.
        self.shared.lock().drop_endpoints();
        self.shared.notify();
        if let Some(server) = self.server.take() {
            server.kill().await;
            let _ = std::fs::remove_file(self.socket_path());
        }
    }

    fn next_epoch(&self) -> u64 {
        let mut st = self.shared.lock();
        st.epoch += 1;
        st.epoch
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        if let Some(task) = self.pod_resources.take() {
            task.abort();
        }
        self.shared.lock().serving = false;
        if let Some(server) = self.server.take() {
            server.connections.kill();
            server.task.abort();
        }
        self.shared.lock().drop_endpoints();
    }
}

/// The start sequence of kubelet instance `epoch`: directory (0750), clean-up, checkpoint
/// file, `delay`, then [`serve`].
async fn boot(shared: &Arc<Shared>, epoch: u64, delay: Duration) -> Result<ServerHandle, SimError> {
    let dir = &shared.opts.dir;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .map_err(|source| SimError::Io {
            op: "create_dir_all",
            path: dir.clone(),
            source,
        })?;
    let removed = clean_dir(dir, shared.opts.cleanup)?;
    tracing::debug!(?removed, "cleaned the device-plugin directory");
    ensure_checkpoint(dir)?;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    serve(shared, epoch).await
}

/// Binds `kubelet.sock` (the file appears; connects are refused), waits
/// [`Options::listen_delay`], listens, and serves Registration in a background task.
async fn serve(shared: &Arc<Shared>, epoch: u64) -> Result<ServerHandle, SimError> {
    let path = shared.opts.dir.join(KUBELET_SOCKET);
    socket_path_ok(&path)?;
    let socket = bind(&path)?;
    {
        let mut st = shared.lock();
        st.socket_bound_at = Some(Instant::now());
        st.socket_listening_at = None;
    }
    shared.notify();
    if !shared.opts.listen_delay.is_zero() {
        tokio::time::sleep(shared.opts.listen_delay).await;
    }
    let listener = listen(socket, &path)?;
    {
        let mut st = shared.lock();
        st.socket_listening_at = Some(Instant::now());
        st.serving = true;
    }
    shared.notify();
    let connections = KillSwitch::new();
    let guard = connections.handle();
    let incoming =
        UnixListenerStream::new(listener).map(move |conn| conn.map(|stream| guard.guard(stream)));
    let service = RegistrationServer::new(RegistrationService {
        shared: Arc::clone(shared),
        epoch,
    });
    let task = tokio::spawn(async move {
        Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await
    });
    Ok(ServerHandle { task, connections })
}

/// `socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC)` and `bind()`: the socket
/// file exists, but a connect fails with `ECONNREFUSED` until [`listen`].
fn bind(path: &Path) -> Result<UnixSocket, SimError> {
    let io = |op| {
        move |source| SimError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    };
    let socket = UnixSocket::new_stream().map_err(io("socket"))?;
    socket.bind(path).map_err(io("bind"))?;
    Ok(socket)
}

/// `listen()`, registering the (non-blocking) socket with the tokio reactor.
fn listen(socket: UnixSocket, path: &Path) -> Result<UnixListener, SimError> {
    socket.listen(BACKLOG).map_err(|source| SimError::Io {
        op: "listen",
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>(_: &T) {}

    /// The handle and its futures can move across tasks (e.g. `tokio::spawn` in a demo).
    #[allow(dead_code)]
    fn futures_are_send(k: &Kubelet, pod: &Pod) {
        assert_send_sync(k);
        fn send<T: Send>(_: T) {}
        send(k.admit(pod));
        send(k.start_container("p", "c"));
        send(k.wait_until(|_| true, Duration::from_secs(1)));
        send(Kubelet::start(Options::new("/tmp/x")));
    }

    #[allow(dead_code)]
    fn mut_futures_are_send(k: &mut Kubelet) {
        fn send<T: Send>(_: T) {}
        send(k.crash());
        send(k.start_again());
        send(k.restart());
    }

    /// The bind-to-listen gap, without timing: after `bind()` the file exists and a connect
    /// is refused; after `listen()` it is accepted, with a non-blocking, reactor-registered
    /// listener.
    #[tokio::test]
    async fn connects_are_refused_between_bind_and_listen() {
        let dir = std::env::temp_dir().join(format!("ksb-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(KUBELET_SOCKET);

        let socket = bind(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()));
        let err = std::os::unix::net::UnixStream::connect(&path).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);

        let listener = listen(socket, &path).unwrap();
        let (client, accepted) =
            tokio::join!(tokio::net::UnixStream::connect(&path), listener.accept());
        client.unwrap();
        accepted.unwrap();
        drop(listener);
        // Closing the listener leaves the file behind, refusing connections (a crash).
        assert!(path.exists());
        let err = std::os::unix::net::UnixStream::connect(&path).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
