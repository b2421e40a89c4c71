//! End-to-end tests of the simulator against a tiny in-process fake device plugin.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use kubelet_sim::api::device_plugin_server::{DevicePlugin, DevicePluginServer};
use kubelet_sim::api::registration_client::RegistrationClient;
use kubelet_sim::api::{self, ListAndWatchResponse};
use kubelet_sim::{
    AdmissionError, CHECKPOINT_FILE, Capacity, Cleanup, Container, Kubelet, KubeletVersion,
    MAX_RECV_MESSAGE_SIZE, Options, Pod,
};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::transport::{Channel, Endpoint, Server, Uri};
use tonic::{Code, Request, Response, Status};

const WAIT: Duration = Duration::from_secs(20);
const GPU: &str = "example.com/gpu";

/// A short temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "ks-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dev(id: &str, health: &str) -> api::Device {
    api::Device {
        id: id.to_string(),
        health: health.to_string(),
        topology: None,
    }
}

/// What the fake plugin serves and what it saw.
struct PluginState {
    devices: watch::Sender<Vec<api::Device>>,
    options: api::DevicePluginOptions,
    options_calls: AtomicUsize,
    /// While false, GetDevicePluginOptions waits (the kubelet is stuck inside Register).
    options_gate: watch::Sender<bool>,
    /// GetDevicePluginOptions calls that have started.
    options_entered: watch::Sender<usize>,
    allocate_calls: Mutex<Vec<Vec<String>>>,
    preferred_calls: Mutex<Vec<api::ContainerPreferredAllocationRequest>>,
    preferred_answer: Mutex<Vec<String>>,
    allocate_error: Mutex<Option<Status>>,
    pre_start_calls: Mutex<Vec<Vec<String>>>,
    /// Set to end every ListAndWatch stream with an error.
    kill: watch::Sender<bool>,
    /// Number of ListAndWatch streams that ended.
    streams_closed: watch::Sender<usize>,
}

#[derive(Clone)]
struct FakePlugin(Arc<PluginState>);

#[tonic::async_trait]
impl DevicePlugin for FakePlugin {
    async fn get_device_plugin_options(
        &self,
        _: Request<api::Empty>,
    ) -> Result<Response<api::DevicePluginOptions>, Status> {
        self.0.options_calls.fetch_add(1, Ordering::SeqCst);
        self.0.options_entered.send_modify(|n| *n += 1);
        let mut gate = self.0.options_gate.subscribe();
        let _ = gate.wait_for(|open| *open).await;
        Ok(Response::new(self.0.options))
    }

    type ListAndWatchStream = ReceiverStream<Result<ListAndWatchResponse, Status>>;

    async fn list_and_watch(
        &self,
        _: Request<api::Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        let state = Arc::clone(&self.0);
        let mut devices = state.devices.subscribe();
        let mut kill = state.kill.subscribe();
        tokio::spawn(async move {
            loop {
                let msg = ListAndWatchResponse {
                    devices: devices.borrow_and_update().clone(),
                };
                if tx.send(Ok(msg)).await.is_err() {
                    break;
                }
                tokio::select! {
                    r = devices.changed() => if r.is_err() { break },
                    _ = tx.closed() => break,
                    _ = async { kill.wait_for(|k| *k).await.map(|_| ()) } => {
                        let _ = tx.send(Err(Status::unavailable("plugin stopped"))).await;
                        break;
                    }
                }
            }
            state.streams_closed.send_modify(|n| *n += 1);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_preferred_allocation(
        &self,
        request: Request<api::PreferredAllocationRequest>,
    ) -> Result<Response<api::PreferredAllocationResponse>, Status> {
        let mut req = request.into_inner();
        self.0
            .preferred_calls
            .lock()
            .unwrap()
            .push(req.container_requests.remove(0));
        let ids = self.0.preferred_answer.lock().unwrap().clone();
        Ok(Response::new(api::PreferredAllocationResponse {
            container_responses: vec![api::ContainerPreferredAllocationResponse {
                device_i_ds: ids,
            }],
        }))
    }

    async fn allocate(
        &self,
        request: Request<api::AllocateRequest>,
    ) -> Result<Response<api::AllocateResponse>, Status> {
        if let Some(e) = self.0.allocate_error.lock().unwrap().clone() {
            return Err(e);
        }
        let ids = request.into_inner().container_requests[0]
            .devices_ids
            .clone();
        self.0.allocate_calls.lock().unwrap().push(ids.clone());
        let mut sorted = ids;
        sorted.sort();
        let response = api::ContainerAllocateResponse {
            envs: [("VISIBLE_DEVICES".to_string(), sorted.join(","))].into(),
            ..Default::default()
        };
        Ok(Response::new(api::AllocateResponse {
            container_responses: vec![response],
        }))
    }

    async fn pre_start_container(
        &self,
        request: Request<api::PreStartContainerRequest>,
    ) -> Result<Response<api::PreStartContainerResponse>, Status> {
        let mut ids = request.into_inner().devices_ids;
        ids.sort();
        self.0.pre_start_calls.lock().unwrap().push(ids);
        Ok(Response::new(api::PreStartContainerResponse {}))
    }
}

/// A fake plugin serving on `<dir>/<name>`.
struct Plugin {
    state: Arc<PluginState>,
    socket: PathBuf,
    name: String,
    stop: Option<oneshot::Sender<()>>,
}

impl Plugin {
    async fn start(dir: &Path, name: &str, devices: Vec<api::Device>, preferred: bool) -> Self {
        let options = api::DevicePluginOptions {
            pre_start_required: false,
            get_preferred_allocation_available: preferred,
        };
        Self::start_with(dir, name, devices, options).await
    }

    async fn start_with(
        dir: &Path,
        name: &str,
        devices: Vec<api::Device>,
        options: api::DevicePluginOptions,
    ) -> Self {
        let state = Arc::new(PluginState {
            devices: watch::channel(devices).0,
            options,
            options_calls: AtomicUsize::new(0),
            options_gate: watch::channel(true).0,
            options_entered: watch::channel(0).0,
            allocate_calls: Mutex::default(),
            preferred_calls: Mutex::default(),
            preferred_answer: Mutex::default(),
            allocate_error: Mutex::default(),
            pre_start_calls: Mutex::default(),
            kill: watch::channel(false).0,
            streams_closed: watch::channel(0).0,
        });
        let socket = dir.join(name);
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).unwrap();
        let (stop, rx) = oneshot::channel::<()>();
        let svc = DevicePluginServer::new(FakePlugin(Arc::clone(&state)));
        tokio::spawn(async move {
            Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                    let _ = rx.await;
                })
                .await
        });
        Plugin {
            state,
            socket,
            name: name.to_string(),
            stop: Some(stop),
        }
    }

    async fn register(&self, kubelet: &Kubelet, resource: &str) -> Result<(), Status> {
        register(
            &kubelet.socket_path(),
            &self.name,
            resource,
            "v1beta1",
            Some(self.state.options),
        )
        .await
    }

    fn set_devices(&self, devices: Vec<api::Device>) {
        self.state.devices.send_replace(devices);
    }

    async fn wait_streams_closed(&self, n: usize) {
        let mut rx = self.state.streams_closed.subscribe();
        tokio::time::timeout(WAIT, rx.wait_for(|c| *c >= n))
            .await
            .expect("stream not closed in time")
            .unwrap();
    }

    /// Ends the ListAndWatch streams with an error and stops serving.
    fn stop(&mut self) {
        self.state.kill.send_replace(true);
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn uds_channel(path: &Path) -> Channel {
    let path = path.to_path_buf();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(p).await?)) }
        }))
        .await
        .unwrap()
}

async fn register(
    kubelet_sock: &Path,
    endpoint: &str,
    resource: &str,
    version: &str,
    options: Option<api::DevicePluginOptions>,
) -> Result<(), Status> {
    let mut client = RegistrationClient::new(uds_channel(kubelet_sock).await);
    client
        .register(api::RegisterRequest {
            version: version.to_string(),
            endpoint: endpoint.to_string(),
            resource_name: resource.to_string(),
            options,
        })
        .await
        .map(|_| ())
}

fn cap(capacity: usize, allocatable: usize) -> Capacity {
    Capacity {
        capacity,
        allocatable,
    }
}

async fn wait_status(kubelet: &Kubelet, resource: &str, want: Capacity) {
    kubelet
        .wait_until(|s| s.get(resource) == Some(&want), WAIT)
        .await
        .unwrap();
}

fn gpu_pod(name: &str, n: u64) -> Pod {
    Pod::new(name).container(Container::new("main").limit(GPU, n))
}

#[tokio::test]
async fn valid_registration_reports_capacity() {
    let dir = TempDir::new();
    let kubelet = Kubelet::start(Options::new(&dir.0)).await.unwrap();
    assert!(kubelet.socket_path().exists());
    let plugin = Plugin::start(
        &dir.0,
        "gpu.sock",
        vec![dev("a", "Healthy"), dev("b", "Healthy")],
        true,
    )
    .await;
    plugin.register(&kubelet, GPU).await.unwrap();
    wait_status(&kubelet, GPU, cap(2, 2)).await;

    let regs = kubelet.registrations();
    assert_eq!(regs.len(), 1);
    assert!(regs[0].accepted);
    assert_eq!(regs[0].endpoint_path, dir.0.join("gpu.sock"));
    assert_eq!(regs[0].plugin_options, Some(plugin.state.options));
    assert_eq!(plugin.state.options_calls.load(Ordering::SeqCst), 1);
    let ep = kubelet.endpoint(GPU).unwrap();
    assert!(!ep.stopped);
    assert!(ep.options.get_preferred_allocation_available);
    kubelet.shutdown().await;
    assert!(!dir.0.join("kubelet.sock").exists());
}

#[tokio::test]
async fn validation_errors_word_for_word() {
    let dir = TempDir::new();
    let kubelet = Kubelet::start(Options::new(&dir.0)).await.unwrap();
    let sock = kubelet.socket_path();

    let err = register(&sock, "x.sock", GPU, "v1alpha", None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unknown);
    assert_eq!(
        err.message(),
        r#"requested API version "v1alpha" is not supported by kubelet. Supported version is ["v1beta1"]"#
    );

    for bad in ["gpu", "kubernetes.io/gpu", "Vendor.com/gpu"] {
        let err = register(&sock, "x.sock", bad, "v1beta1", None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unknown);
        assert_eq!(
            err.message(),
            format!(r#"the ResourceName "{bad}" is invalid"#)
        );
    }
    let regs = kubelet.registrations();
    assert_eq!(regs.len(), 4);
    assert!(regs.iter().all(|r| !r.accepted && r.error.is_some()));
    assert!(kubelet.node_status().is_empty());
}

#[tokio::test]
async fn dial_back_failure_when_nothing_serves() {
    let dir = TempDir::new();
    let mut opts = Options::new(&dir.0);
    opts.dial_timeout = Duration::from_millis(200);
    let kubelet = Kubelet::start(opts).await.unwrap();
    let err = register(&kubelet.socket_path(), "nothing.sock", GPU, "v1beta1", None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unknown);
    assert_eq!(
        err.message(),
        "failed to dial device plugin: context deadline exceeded"
    );
    assert!(kubelet.node_status().is_empty());
    assert!(kubelet.endpoint(GPU).is_none());
}

#[tokio::test]
async fn health_change_drops_allocatable() {
    let dir = TempDir::new();
    let kubelet = Kubelet::start(Options::new(&dir.0)).await.unwrap();
    let plugin = Plugin::start(
        &dir.0,
        "gpu.sock",
        vec![dev("a", "Healthy"), dev("b", "Healthy")],
        false,
    )
    .await;
    plugin.register(&kubelet, GPU).await.unwrap();
    wait_status(&kubelet, GPU, cap(2, 2)).await;

    // Anything but exactly "Healthy" is unhealthy.
    plugin.set_devices(vec![dev("a", "Healthy"), dev("b", "healthy")]);
    wait_status(&kubelet, GPU, cap(2, 1)).await;
    let devices = kubelet.devices(GPU);
    assert!(devices[0].healthy);
    assert!(!devices[1].healthy);
    assert_eq!(devices[1].health, "healthy");

    // Full replacement: a vanished device is gone.
    plugin.set_devices(vec![dev("a", "Healthy")]);
    wait_status(&kubelet, GPU, cap(1, 1)).await;
}

#[tokio::test]
async fn stream_end_marks_all_unhealthy() {
    let dir = TempDir::new();
    let kubelet = Kubelet::start(Options::new(&dir.0)).await.unwrap();
    let mut plugin = Plugin::start(
        &dir.0,
        "gpu.sock",
        vec![dev("a", "Healthy"), dev("b", "Healthy")],
        false,
    )
    .await;
    plugin.register(&kubelet, GPU).await.unwrap();
    wait_status(&kubelet, GPU, cap(2, 2)).await;
    plugin.stop();
    wait_status(&kubelet, GPU, cap(2, 0)).await;
    let ep = kubelet.endpoint(GPU).unwrap();
    assert!(ep.stopped);
    assert_eq!(
        ep.stream_error.as_deref(),
        Some("rpc error: code = Unavailable desc = plugin stopped")
    );

    assert_eq!(
        kubelet.admit(&gpu_pod("p", 1)).await.unwrap_err(),
        AdmissionError::OutOfResource {
            resource: GPU.to_string(),
            requested: 1,
            used: 0,
            capacity: 0
        }
    );
    kubelet.expire_stopped_endpoints();
    assert_eq!(kubelet.node_status().get(GPU), Some(&cap(0, 0)));
}

#[tokio::test]
async fn admit_calls_preferred_allocation_and_allocate() {
    let dir = TempDir::new();
    let kubelet = Kubelet::start(Options::new(&dir.0)).await.unwrap();
    let plugin = Plugin::start(
        &dir.0,
        "gpu.sock",
        vec![
            dev("a", "Healthy"),
            dev("b", "Healthy"),
            dev("c", "Healthy"),
        ],
        true,
    )
    .await;
    plugin.register(&kubelet, GPU).await.unwrap();
    wait_status(&kubelet, GPU, cap(3, 3)).await;

    *plugin.state.preferred_answer.lock().unwrap() = vec!["c".to_string(), "zzz".to_string()];
    let admission = kubelet.admit(&gpu_pod("p1", 1)).await.unwrap();
    let main = admission.container("main").unwrap();
    assert_eq!(main.resources[GPU].device_ids, vec!["c".to_string()]);
    assert_eq!(main.merged.envs["VISIBLE_DEVICES"], "c");
    assert_eq!(
        *plugin.state.allocate_calls.lock().unwrap(),
        vec![vec!["c".to_string()]]
    );
    let preferred = plugin.state.preferred_calls.lock().unwrap()[0].clone();
    let mut available = preferred.available_device_i_ds.clone();
    available.sort();
    assert_eq!(available, ["a", "b", "c"]);
    assert!(preferred.must_include_device_i_ds.is_empty());
    assert_eq!(preferred.allocation_size, 1);

    // The kubelet fills the rest itself when the preference is short.
    *plugin.state.preferred_answer.lock().unwrap() = vec![];
    let admission = kubelet.admit(&gpu_pod("p2", 2)).await.unwrap();
    assert_eq!(
        admission.containers[0].resources[GPU].device_ids,
        ["a", "b"]
    );
    let mut last = plugin.state.allocate_calls.lock().unwrap()[1].clone();
    last.sort();
    assert_eq!(last, ["a", "b"]);
    assert_eq!(kubelet.allocated(GPU).len(), 3);

    // Resource fit: nothing left.
    let err = kubelet.admit(&gpu_pod("p3", 1)).await.unwrap_err();
    assert_eq!(err.reason(), format!("OutOf{GPU}"));

    kubelet.release("p1");
    let admission = kubelet.admit(&gpu_pod("p3", 1)).await.unwrap();
    assert_eq!(admission.containers[0].resources[GPU].device_ids, ["c"]);
}

#[tokio::test]
async fn device_manager_errors_without_fit_check() {
    let dir = TempDir::new();
    let mut opts = Options::new(&dir.0);
    opts.fit_check = false;
    let kubelet = Kubelet::start(opts).await.unwrap();
    let plugin = Plugin::start(&dir.0, "gpu.sock", vec![dev("a", "Healthy")], false).await;
    plugin.register(&kubelet, GPU).await.unwrap();
    wait_status(&kubelet, GPU, cap(1, 1)).await;

    let err = kubelet.admit(&gpu_pod("p1", 2)).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "Pod was rejected: Allocate failed due to requested number of devices unavailable for {GPU}. Requested: 2, Available: 1, which is unexpected"
        )
    );
    assert_eq!(err.reason(), "UnexpectedAdmissionError");

    *plugin.state.allocate_error.lock().unwrap() = Some(Status::invalid_argument("boom"));
    let err = kubelet.admit(&gpu_pod("p2", 1)).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "Pod was rejected: Allocate failed due to rpc error: code = InvalidArgument desc = boom, which is unexpected"
    );
    assert!(kubelet.allocations().is_empty());

    plugin.set_devices(vec![dev("a", "Unhealthy")]);
    wait_status(&kubelet, GPU, cap(1, 0)).await;
    let err = kubelet.admit(&gpu_pod("p3", 1)).await.unwrap_err();
    assert_eq!(
        err.inner(),
        Some(
            format!("no healthy devices present; cannot allocate unhealthy devices {GPU}").as_str()
        )
    );
}

#[tokio::test]
async fn unknown_resource_admitted_without_devices() {
    let dir = TempDir::new();
    let kubelet = Kubelet::start(Options::new(&dir.0)).await.unwrap();
    let pod = Pod::new("p").container(Container::new("c").limit("other.com/thing", 3));
    let admission = kubelet.admit(&pod).await.unwrap();
    assert!(admission.containers[0].resources.is_empty());
    assert!(kubelet.allocations().is_empty());
}

#[tokio::test]
async fn restart_deletes_sockets_and_recreates_kubelet_sock() {
    let dir = TempDir::new();
    let mut kubelet = Kubelet::start(Options::new(&dir.0)).await.unwrap();
    let plugin = Plugin::start(
        &dir.0,
        "gpu.sock",
        vec![dev("a", "Healthy"), dev("b", "Healthy")],
        false,
    )
    .await;
    plugin.register(&kubelet, GPU).await.unwrap();
    wait_status(&kubelet, GPU, cap(2, 2)).await;
    kubelet.admit(&gpu_pod("p1", 1)).await.unwrap();
    std::fs::write(dir.0.join("kubelet_internal_checkpoint"), "{}").unwrap();
    std::fs::write(
        dir.0.join("notes.txt"),
        "deleted like any other non-directory",
    )
    .unwrap();
    std::fs::create_dir(dir.0.join("keep")).unwrap();
    std::fs::write(dir.0.join("keep/config.yaml"), "kept").unwrap();

    kubelet.restart().await.unwrap();

    assert!(!plugin.socket.exists(), "plugin socket must be deleted");
    assert_eq!(
        std::fs::read_to_string(dir.0.join("kubelet_internal_checkpoint")).unwrap(),
        "{}"
    );
    assert!(!dir.0.join("notes.txt").exists());
    assert!(dir.0.join("keep/config.yaml").exists());
    assert_eq!(kubelet.generation(), 1);
    // kubelet.sock is a new file (deleted, then bound again). Its inode
    // number may be reused by the file system, as with a real kubelet, so
    // only its existence as a socket is checked, not a new inode.
    let meta = std::fs::metadata(kubelet.socket_path()).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()));
    assert_eq!(kubelet.node_status().get(GPU), Some(&cap(0, 0)));
    assert_eq!(kubelet.allocations().len(), 1);
    plugin.wait_streams_closed(1).await;

    // The plugin comes back on a fresh socket and registers again.
    let plugin2 = Plugin::start(
        &dir.0,
        "gpu.sock",
        vec![dev("a", "Healthy"), dev("b", "Healthy")],
        false,
    )
    .await;
    plugin2.register(&kubelet, GPU).await.unwrap();
    wait_status(&kubelet, GPU, cap(2, 2)).await;
    let admission = kubelet.admit(&gpu_pod("p2", 1)).await.unwrap();
    assert_ne!(
        admission.containers[0].resources[GPU].device_ids,
        kubelet.allocations()[0].device_ids,
        "kept allocation must not be handed out twice"
    );
    kubelet.shutdown().await;
}

#[tokio::test]
async fn old_kubelet_registers_asynchronously() {
    let dir = TempDir::new();
    let mut opts = Options::new(&dir.0);
    opts.version = KubeletVersion::new(1, 24);
    opts.dial_timeout = Duration::from_millis(200);
    let kubelet = Kubelet::start(opts).await.unwrap();
    let plugin = Plugin::start(&dir.0, "gpu.sock", vec![dev("a", "Healthy")], true).await;
    plugin.register(&kubelet, GPU).await.unwrap();
    wait_status(&kubelet, GPU, cap(1, 1)).await;
    assert_eq!(plugin.state.options_calls.load(Ordering::SeqCst), 0);
    assert!(kubelet.registrations()[0].plugin_options.is_none());
    assert!(
        kubelet
            .endpoint(GPU)
            .unwrap()
            .options
            .get_preferred_allocation_available
    );

    // A ≤1.24 kubelet accepts a registration whose endpoint never answers and only logs
    // the failed background dial.
    register(
        &kubelet.socket_path(),
        "nope.sock",
        "example.com/other",
        "v1beta1",
        None,
    )
    .await
    .unwrap();
    kubelet
        .wait_for_registrations(|r| r.len() == 2 && r[1].error.is_some(), WAIT)
        .await
        .unwrap();
    let rec = &kubelet.registrations()[1];
    assert!(rec.accepted);
    assert_eq!(
        rec.error.as_deref(),
        Some("Failed to dial device plugin with request: context deadline exceeded")
    );
    assert!(!kubelet.node_status().contains_key("example.com/other"));
}

#[tokio::test]
async fn init_container_devices_are_reused_and_pre_start_is_called() {
    let dir = TempDir::new();
    let kubelet = Kubelet::start(Options::new(&dir.0)).await.unwrap();
    let options = api::DevicePluginOptions {
        pre_start_required: true,
        get_preferred_allocation_available: false,
    };
    let plugin = Plugin::start_with(
        &dir.0,
        "gpu.sock",
        vec![dev("a", "Healthy"), dev("b", "Healthy")],
        options,
    )
    .await;
    plugin.register(&kubelet, GPU).await.unwrap();
    wait_status(&kubelet, GPU, cap(2, 2)).await;

    let pod = Pod::new("p")
        .init_container(Container::new("init").limit(GPU, 1))
        .container(Container::new("main").limit(GPU, 1));
    let admission = kubelet.admit(&pod).await.unwrap();
    let init_ids = &admission.container("init").unwrap().resources[GPU].device_ids;
    let main_ids = &admission.container("main").unwrap().resources[GPU].device_ids;
    assert_eq!(
        init_ids, main_ids,
        "app container reuses the init container's device"
    );
    assert_eq!(plugin.state.allocate_calls.lock().unwrap().len(), 2);
    assert_eq!(kubelet.allocated(GPU).len(), 1);

    kubelet.start_container("p", "main").await.unwrap();
    assert_eq!(
        *plugin.state.pre_start_calls.lock().unwrap(),
        vec![main_ids.clone()]
    );

    // Re-admitting with a different count is refused.
    let changed = Pod::new("p")
        .init_container(Container::new("init").limit(GPU, 1))
        .container(Container::new("main").limit(GPU, 2));
    let err = kubelet.admit(&changed).await.unwrap_err();
    assert_eq!(
        err.inner().unwrap(),
        format!(r#"pod "p" container "main" changed request for resource "{GPU}" from 1 to 2"#)
    );
    // A rejected pod holds nothing.
    assert!(kubelet.allocations().is_empty());
}

// ---------------------------------------------------------------------------------------
// Start-up clean-up, crash, start again, the bind-to-listen gap.

/// Sorted names of the entries of `dir`.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A socket file nothing listens on (what a killed process leaves behind).
fn stale_socket(path: &Path) {
    drop(std::os::unix::net::UnixListener::bind(path).unwrap());
}

fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path)
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
}

/// Leftovers of an earlier kubelet and its plugins, of every kind.
fn leftovers(dir: &Path) {
    stale_socket(&dir.join("kubelet.sock"));
    stale_socket(&dir.join("old-plugin.sock"));
    std::fs::write(dir.join("notes.txt"), "x").unwrap();
    std::fs::write(dir.join(CHECKPOINT_FILE), r#"{"Data":{},"Checksum":1}"#).unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/config.yaml"), "x").unwrap();
    stale_socket(&dir.join("sub/nested.sock"));
    std::os::unix::fs::symlink(dir.join("sub"), dir.join("link")).unwrap();
}

#[tokio::test]
async fn start_deletes_every_non_directory_but_the_checkpoint() {
    let dir = TempDir::new();
    leftovers(&dir.0);
    let kubelet = Kubelet::start(Options::new(&dir.0)).await.unwrap();

    assert_eq!(names(&dir.0), ["kubelet.sock", CHECKPOINT_FILE, "sub"]);
    // Subdirectories are kept and not traversed; the checkpoint keeps its content.
    assert_eq!(names(&dir.0.join("sub")), ["config.yaml", "nested.sock"]);
    assert_eq!(
        std::fs::read_to_string(dir.0.join(CHECKPOINT_FILE)).unwrap(),
        r#"{"Data":{},"Checksum":1}"#
    );
    // The stale kubelet.sock was replaced by one that is served.
    let err = register(&kubelet.socket_path(), "x.sock", "bad", "v1beta1", None)
        .await
        .unwrap_err();
    assert_eq!(err.message(), r#"the ResourceName "bad" is invalid"#);
    kubelet.shutdown().await;
    assert_eq!(names(&dir.0), [CHECKPOINT_FILE, "sub"]);
}

#[tokio::test]
async fn start_creates_the_checkpoint_when_absent_and_restart_cleans_again() {
    let dir = TempDir::new();
    let mut kubelet = Kubelet::start(Options::new(&dir.0)).await.unwrap();
    let checkpoint = std::fs::read_to_string(dir.0.join(CHECKPOINT_FILE)).unwrap();
    assert!(checkpoint.contains("RegisteredDevices"), "{checkpoint}");

    std::fs::write(dir.0.join("written-later.txt"), "x").unwrap();
    kubelet.restart().await.unwrap();
    assert_eq!(names(&dir.0), ["kubelet.sock", CHECKPOINT_FILE]);
    assert_eq!(
        std::fs::read_to_string(dir.0.join(CHECKPOINT_FILE)).unwrap(),
        checkpoint
    );
    kubelet.shutdown().await;
}

#[tokio::test]
async fn sockets_only_cleanup_keeps_regular_files() {
    let dir = TempDir::new();
    leftovers(&dir.0);
    let mut opts = Options::new(&dir.0);
    opts.cleanup = Cleanup::Sockets;
    let kubelet = Kubelet::start(opts).await.unwrap();
    assert_eq!(
        names(&dir.0),
        ["kubelet.sock", CHECKPOINT_FILE, "link", "notes.txt", "sub"]
    );
    assert_eq!(names(&dir.0.join("sub")), ["config.yaml", "nested.sock"]);
    kubelet.shutdown().await;
}

#[tokio::test]
async fn crash_leaves_a_stale_socket_and_start_again_cleans_and_binds() {
    let dir = TempDir::new();
    let mut kubelet = Kubelet::start(Options::new(&dir.0)).await.unwrap();
    let plugin = Plugin::start(
        &dir.0,
        "gpu.sock",
        vec![dev("a", "Healthy"), dev("b", "Healthy")],
        false,
    )
    .await;
    plugin.register(&kubelet, GPU).await.unwrap();
    wait_status(&kubelet, GPU, cap(2, 2)).await;
    kubelet.admit(&gpu_pod("p1", 1)).await.unwrap();
    // A registration connection opened before the crash.
    let mut early = RegistrationClient::new(uds_channel(&kubelet.socket_path()).await);

    kubelet.crash().await;

    assert!(!kubelet.is_serving());
    // The socket file stays, but nothing accepts on it.
    assert!(is_socket(&kubelet.socket_path()), "stale kubelet.sock kept");
    let err = std::os::unix::net::UnixStream::connect(kubelet.socket_path()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    // Plugin connections dropped with the process: the stream ends.
    plugin.wait_streams_closed(1).await;
    assert_eq!(kubelet.open_streams(GPU), 0);
    assert!(plugin.socket.exists(), "a crash deletes nothing");
    // So did the connections to kubelet.sock: a Register on one fails at the transport.
    let before = kubelet.registrations().len();
    let err = early
        .register(api::RegisterRequest {
            version: "v1beta1".to_string(),
            endpoint: "gpu.sock".to_string(),
            resource_name: GPU.to_string(),
            options: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(kubelet.registrations().len(), before);
    assert_eq!(kubelet.node_status().get(GPU), Some(&cap(0, 0)));
    assert_eq!(kubelet.allocations().len(), 1, "allocations survive");

    let crashed_at = std::time::Instant::now();
    kubelet.start_again().await.unwrap();

    assert!(kubelet.is_serving());
    assert_eq!(kubelet.generation(), 1);
    assert!(
        !plugin.socket.exists(),
        "the start-up clean-up deletes plugin sockets"
    );
    assert!(is_socket(&kubelet.socket_path()));
    let bound = kubelet.socket_bound_at().unwrap();
    let listening = kubelet.socket_listening_at().unwrap();
    assert!(bound >= crashed_at && listening >= bound);
    std::os::unix::net::UnixStream::connect(kubelet.socket_path()).unwrap();

    let plugin2 = Plugin::start(
        &dir.0,
        "gpu.sock",
        vec![dev("a", "Healthy"), dev("b", "Healthy")],
        false,
    )
    .await;
    plugin2.register(&kubelet, GPU).await.unwrap();
    wait_status(&kubelet, GPU, cap(2, 2)).await;
    let per_generation = |g: u64| {
        kubelet
            .registrations()
            .iter()
            .filter(|r| r.accepted && r.resource_name == GPU && r.generation == g)
            .count()
    };
    assert_eq!((per_generation(0), per_generation(1)), (1, 1));

    // start_again on a serving kubelet crashes it first.
    kubelet.start_again().await.unwrap();
    assert_eq!(kubelet.generation(), 2);
    plugin2.wait_streams_closed(1).await;
    kubelet.shutdown().await;
    assert!(
        !dir.0.join("kubelet.sock").exists(),
        "a graceful stop removes the socket"
    );
}

#[tokio::test]
async fn connects_before_listen_are_refused() {
    let dir = TempDir::new();
    let mut opts = Options::new(&dir.0);
    // Long enough that the connect below happens inside the gap even on a loaded machine.
    opts.listen_delay = Duration::from_secs(3);
    let sock = dir.0.join("kubelet.sock");
    let starting = tokio::spawn(Kubelet::start(opts));

    // The file appears at bind(): a plugin's inotify CREATE.
    let deadline = std::time::Instant::now() + WAIT;
    while !sock.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "kubelet.sock never appeared"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let attempted = std::time::Instant::now();
    let early = std::os::unix::net::UnixStream::connect(&sock);

    let kubelet = starting.await.unwrap().unwrap();
    let bound = kubelet.socket_bound_at().unwrap();
    let listening = kubelet.socket_listening_at().unwrap();
    assert!(listening.duration_since(bound) >= Duration::from_secs(3));
    assert!(
        attempted < listening,
        "the test was starved for the whole listen delay"
    );
    assert_eq!(
        early.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );

    // Accepted once listening: a registration is received after socket_listening_at.
    let plugin = Plugin::start(&dir.0, "gpu.sock", vec![dev("a", "Healthy")], false).await;
    plugin.register(&kubelet, GPU).await.unwrap();
    assert!(kubelet.registrations()[0].received_at >= listening);
    kubelet.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Re-registration (reference §2.4).

const CONN_CLOSING: &str =
    "rpc error: code = Canceled desc = grpc: the client connection is closing";

fn devs(prefix: &str, n: usize) -> Vec<api::Device> {
    (0..n)
        .map(|i| dev(&format!("{prefix}{i}"), "Healthy"))
        .collect()
}

async fn wait_open_streams(kubelet: &Kubelet, n: usize) {
    kubelet
        .wait_for("open streams", WAIT, |k| k.open_streams(GPU) == n)
        .await
        .unwrap();
}

fn closed_streams(plugin: &Plugin) -> usize {
    *plugin.state.streams_closed.borrow()
}

#[tokio::test]
async fn re_registration_keeps_the_old_stream_whose_end_tears_down_the_new_endpoint() {
    let dir = TempDir::new();
    let kubelet = Kubelet::start(Options::new(&dir.0)).await.unwrap();
    assert!(kubelet.options().version.re_registration_race());
    let mut old = Plugin::start(&dir.0, "old.sock", devs("o", 2), false).await;
    old.register(&kubelet, GPU).await.unwrap();
    wait_status(&kubelet, GPU, cap(2, 2)).await;

    let new = Plugin::start(&dir.0, "new.sock", devs("n", 3), false).await;
    new.register(&kubelet, GPU).await.unwrap();
    wait_status(&kubelet, GPU, cap(3, 3)).await;
    // The old connection and stream are not closed: two streams feed the resource.
    assert_eq!(kubelet.open_streams(GPU), 2);
    assert_eq!(closed_streams(&old), 0);
    assert_eq!(kubelet.endpoint(GPU).unwrap().path, dir.0.join("new.sock"));

    // Last message wins, whichever stream it comes from.
    old.set_devices(devs("o", 1));
    wait_status(&kubelet, GPU, cap(1, 1)).await;
    new.set_devices(devs("n", 4));
    wait_status(&kubelet, GPU, cap(4, 4)).await;

    // The old instance goes away: its stream ends and the kubelet, looking the client up
    // by resource name, tears down the NEW one.
    old.stop();
    wait_status(&kubelet, GPU, cap(4, 0)).await;
    new.wait_streams_closed(1).await;
    wait_open_streams(&kubelet, 0).await;
    let ep = kubelet.endpoint(GPU).unwrap();
    assert!(ep.stopped);
    assert_eq!(ep.path, dir.0.join("new.sock"));
    assert_eq!(ep.stream_error.as_deref(), Some(CONN_CLOSING));

    // Nothing but another registration revives it.
    new.register(&kubelet, GPU).await.unwrap();
    wait_status(&kubelet, GPU, cap(4, 4)).await;
    assert_eq!(kubelet.open_streams(GPU), 1);
    assert!(!kubelet.endpoint(GPU).unwrap().stopped);
    kubelet.shutdown().await;
}

#[tokio::test]
async fn an_old_stream_ending_while_the_new_registration_dials_leaves_it_untracked() {
    let dir = TempDir::new();
    let kubelet = Kubelet::start(Options::new(&dir.0)).await.unwrap();
    let mut old = Plugin::start(&dir.0, "old.sock", devs("o", 2), false).await;
    old.register(&kubelet, GPU).await.unwrap();
    wait_status(&kubelet, GPU, cap(2, 2)).await;

    let mut new = Plugin::start(&dir.0, "new.sock", devs("n", 3), false).await;
    new.state.options_gate.send_replace(false);
    let registering = {
        let sock = kubelet.socket_path();
        let options = new.state.options;
        tokio::spawn(
            async move { register(&sock, "new.sock", GPU, "v1beta1", Some(options)).await },
        )
    };
    // The kubelet registered the new client, then got stuck in GetDevicePluginOptions.
    let mut entered = new.state.options_entered.subscribe();
    tokio::time::timeout(WAIT, entered.wait_for(|n| *n == 1))
        .await
        .unwrap()
        .unwrap();
    // The old stream ends now: the lookup finds the new client (not yet connected); the
    // endpoint in place, still the old one, is stopped.
    old.stop();
    wait_status(&kubelet, GPU, cap(2, 0)).await;
    assert_eq!(kubelet.endpoint(GPU).unwrap().path, dir.0.join("old.sock"));

    new.state.options_gate.send_replace(true);
    registering.await.unwrap().unwrap();
    wait_status(&kubelet, GPU, cap(3, 3)).await;
    assert_eq!(kubelet.open_streams(GPU), 1);

    // The kubelet no longer tracks the new client: when its stream ends, nothing happens.
    new.stop();
    kubelet
        .wait_for("new stream ended", WAIT, |k| {
            k.open_streams(GPU) == 0 && k.endpoint(GPU).unwrap().stream_error.is_some()
        })
        .await
        .unwrap();
    assert_eq!(kubelet.node_status()[GPU], cap(3, 3));
    assert!(!kubelet.endpoint(GPU).unwrap().stopped);
    kubelet.shutdown().await;
}

#[tokio::test]
async fn drop_stream_tears_down_only_the_current_client() {
    let dir = TempDir::new();
    let mut opts = Options::new(&dir.0);
    opts.fit_check = false;
    let kubelet = Kubelet::start(opts).await.unwrap();
    let old = Plugin::start(&dir.0, "old.sock", devs("o", 2), false).await;
    old.register(&kubelet, GPU).await.unwrap();
    let new = Plugin::start(&dir.0, "new.sock", devs("n", 3), false).await;
    new.register(&kubelet, GPU).await.unwrap();
    wait_status(&kubelet, GPU, cap(3, 3)).await;

    assert!(kubelet.drop_stream(GPU));
    new.wait_streams_closed(1).await;
    assert_eq!(kubelet.node_status()[GPU], cap(3, 0));
    assert_eq!(kubelet.open_streams(GPU), 1);
    assert_eq!(closed_streams(&old), 0);
    assert!(!kubelet.drop_stream(GPU), "nothing left to drop");

    // The old stream still feeds the resource, but the endpoint stays stopped.
    old.set_devices(devs("o", 1));
    wait_status(&kubelet, GPU, cap(1, 1)).await;
    let err = kubelet.admit(&gpu_pod("p", 1)).await.unwrap_err();
    assert_eq!(
        err.inner().unwrap(),
        format!(
            "endpoint {} has been stopped",
            dir.0.join("new.sock").display()
        )
    );
    kubelet.shutdown().await;
}

#[tokio::test]
async fn kubelet_1_36_keys_clients_by_socket_path() {
    let dir = TempDir::new();
    let mut opts = Options::new(&dir.0);
    opts.version = KubeletVersion::new(1, 36);
    let kubelet = Kubelet::start(opts).await.unwrap();
    let mut a = Plugin::start(&dir.0, "a.sock", devs("a", 2), false).await;
    a.register(&kubelet, GPU).await.unwrap();
    let mut b = Plugin::start(&dir.0, "b.sock", devs("b", 3), false).await;
    b.register(&kubelet, GPU).await.unwrap();
    wait_status(&kubelet, GPU, cap(3, 3)).await;
    assert_eq!(kubelet.open_streams(GPU), 2);

    // A different socket path: the old stream ending touches only its own client.
    a.stop();
    wait_open_streams(&kubelet, 1).await;
    assert_eq!(kubelet.node_status()[GPU], cap(3, 3));
    assert!(!kubelet.endpoint(GPU).unwrap().stopped);
    assert_eq!(closed_streams(&b), 0);

    // The same socket path (a new instance took b.sock over): still a race.
    std::fs::remove_file(&b.socket).unwrap();
    let c = Plugin::start(&dir.0, "b.sock", devs("c", 1), false).await;
    c.register(&kubelet, GPU).await.unwrap();
    wait_status(&kubelet, GPU, cap(1, 1)).await;
    assert_eq!(kubelet.open_streams(GPU), 2);
    b.stop();
    wait_status(&kubelet, GPU, cap(1, 0)).await;
    assert!(kubelet.endpoint(GPU).unwrap().stopped);
    kubelet.shutdown().await;
}

#[tokio::test]
async fn kubelet_1_24_closes_the_previous_connection() {
    let dir = TempDir::new();
    let mut opts = Options::new(&dir.0);
    opts.version = KubeletVersion::new(1, 24);
    let kubelet = Kubelet::start(opts).await.unwrap();
    let mut old = Plugin::start(&dir.0, "old.sock", devs("o", 2), false).await;
    old.register(&kubelet, GPU).await.unwrap();
    wait_status(&kubelet, GPU, cap(2, 2)).await;
    let new = Plugin::start(&dir.0, "new.sock", devs("n", 3), false).await;
    new.register(&kubelet, GPU).await.unwrap();
    wait_status(&kubelet, GPU, cap(3, 3)).await;
    old.wait_streams_closed(1).await;
    wait_open_streams(&kubelet, 1).await;
    old.stop();
    // Nothing for the kubelet to notice: the new endpoint stays.
    assert_eq!(kubelet.node_status()[GPU], cap(3, 3));
    assert!(!kubelet.endpoint(GPU).unwrap().stopped);
    kubelet.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// The 4 MiB receive limit (reference §4.4).

#[tokio::test]
async fn an_over_limit_list_and_watch_message_ends_the_stream() {
    use prost::Message;

    let dir = TempDir::new();
    let kubelet = Kubelet::start(Options::new(&dir.0)).await.unwrap();
    let plugin = Plugin::start(&dir.0, "gpu.sock", devs("g", 2), false).await;
    plugin.register(&kubelet, GPU).await.unwrap();
    wait_status(&kubelet, GPU, cap(2, 2)).await;

    // 40-character ids (`GPU-<uuid>` length): 53 bytes per device, 80 000 of them.
    let huge: Vec<api::Device> = (0..80_000)
        .map(|i| dev(&format!("GPU-{i:036}"), "Healthy"))
        .collect();
    let len = ListAndWatchResponse {
        devices: huge.clone(),
    }
    .encoded_len();
    assert!(len > MAX_RECV_MESSAGE_SIZE, "{len}");
    plugin.set_devices(huge);

    // The message is not applied; the stream ends; all devices unhealthy: 0/N.
    wait_status(&kubelet, GPU, cap(2, 0)).await;
    let ep = kubelet.endpoint(GPU).unwrap();
    assert!(ep.stopped);
    assert_eq!(
        ep.stream_error.unwrap(),
        format!(
            "rpc error: code = ResourceExhausted desc = grpc: received message larger than max ({len} vs. 4194304)"
        )
    );
    plugin.wait_streams_closed(1).await;
    assert_eq!(kubelet.open_streams(GPU), 0);
    kubelet.shutdown().await;
}
