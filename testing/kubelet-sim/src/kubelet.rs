//! The [`Kubelet`] handle: start, observe, admit, restart, shut down.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;

use crate::api::registration_server::RegistrationServer;
use crate::error::{AdmissionError, SimError, StartError};
use crate::state::{RegistrationService, Shared};
use crate::types::{
    Admission, AllocationRecord, Capacity, DeviceState, EndpointInfo, Options, Pod,
    RegistrationRecord, socket_path_ok,
};
use crate::util::clean_sockets;
use crate::{KUBELET_SOCKET, admission};

/// A running Registration server on `kubelet.sock`.
struct ServerHandle {
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl ServerHandle {
    /// Graceful stop, bounded; the server is aborted if connections linger.
    async fn stop(self) {
        let _ = self.shutdown.send(());
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(1), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

/// The simulated kubelet device manager. Dropping it aborts its tasks; prefer
/// [`Kubelet::shutdown`].
pub struct Kubelet {
    shared: Arc<Shared>,
    server: Option<ServerHandle>,
}

impl Kubelet {
    /// Creates the directory, deletes every top-level socket in it (everything else, including
    /// `kubelet_internal_checkpoint`, is kept), binds `<dir>/kubelet.sock` and serves
    /// `v1beta1.Registration` with gRPC default limits. The socket exists when this returns.
    pub async fn start(opts: Options) -> Result<Kubelet, SimError> {
        let dir = opts.dir.clone();
        std::fs::create_dir_all(&dir).map_err(|source| SimError::Io {
            op: "create_dir_all",
            path: dir.clone(),
            source,
        })?;
        clean_sockets(&dir)?;
        let shared = Shared::new(opts);
        let server = serve(&shared, 0)?;
        Ok(Kubelet {
            shared,
            server: Some(server),
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

    /// When `kubelet.sock` was last bound: by [`start`](Self::start) or the latest
    /// [`restart`](Self::restart). The inotify CREATE a plugin waits for happens here.
    pub fn socket_bound_at(&self) -> Option<std::time::Instant> {
        self.shared.lock().socket_bound_at
    }

    /// Every Register call so far (accepted or not), oldest first.
    pub fn registrations(&self) -> Vec<RegistrationRecord> {
        self.shared.lock().registrations.clone()
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

    /// Waits until `pred(self)` holds; the general form of the `wait_*` helpers.
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

    /// Simulates a kubelet restart: stops the Registration server, closes every plugin
    /// connection (plugins see their ListAndWatch streams cancelled), deletes all top-level
    /// sockets, waits [`Options::restart_delay`], then binds a fresh `kubelet.sock` (an
    /// inotify CREATE). Known resources read 0/0 until their plugin registers again;
    /// allocations are kept.
    pub async fn restart(&mut self) -> Result<(), SimError> {
        let epoch = {
            let mut st = self.shared.lock();
            st.epoch += 1;
            st.epoch
        };
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
        self.shared.lock().drop_endpoints();
        self.shared.notify();
        clean_sockets(&self.shared.opts.dir)?;
        tokio::time::sleep(self.shared.opts.restart_delay).await;
        self.server = Some(serve(&self.shared, epoch)?);
        tracing::info!(dir = %self.shared.opts.dir.display(), "kubelet restarted");
        Ok(())
    }

    /// Drops the ListAndWatch stream of `resource` without a restart, as a
    /// kubelet does when it tears a client down (the 1.25–1.35 re-registration
    /// race, a connection error): the endpoint stops and every device turns
    /// unhealthy; only a new registration brings it back. Returns
    /// whether there was a stream to drop.
    pub fn drop_stream(&self, resource: &str) -> bool {
        let dropped = {
            let mut st = self.shared.lock();
            match st.resources.get_mut(resource) {
                Some(r) => match r.endpoint.as_mut() {
                    Some(ep) if ep.client.is_some() => {
                        ep.stop();
                        for d in r.devices.values_mut() {
                            d.healthy = false;
                        }
                        true
                    }
                    _ => false,
                },
                None => false,
            }
        };
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

    /// Stops serving, closes plugin connections and removes `kubelet.sock` (as grpc-go's
    /// listener does on close).
    pub async fn shutdown(mut self) {
        self.shared.lock().epoch += 1;
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
        self.shared.lock().drop_endpoints();
        self.shared.notify();
        let _ = std::fs::remove_file(self.socket_path());
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.task.abort();
        }
        self.shared.lock().drop_endpoints();
    }
}

/// Binds `kubelet.sock` and serves Registration in a background task.
fn serve(shared: &Arc<Shared>, epoch: u64) -> Result<ServerHandle, SimError> {
    let path = shared.opts.dir.join(KUBELET_SOCKET);
    socket_path_ok(&path)?;
    let listener = UnixListener::bind(&path).map_err(|source| SimError::Io {
        op: "bind",
        path: path.clone(),
        source,
    })?;
    shared.lock().socket_bound_at = Some(std::time::Instant::now());
    let (shutdown, rx) = oneshot::channel::<()>();
    let service = RegistrationServer::new(RegistrationService {
        shared: Arc::clone(shared),
        epoch,
    });
    let task = tokio::spawn(async move {
        Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                let _ = rx.await;
            })
            .await
    });
    Ok(ServerHandle { shutdown, task })
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
}
