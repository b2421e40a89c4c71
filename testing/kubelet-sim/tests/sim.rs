//! End-to-end tests of the simulator against a tiny in-process fake device plugin.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use kubelet_sim::api::device_plugin_server::{DevicePlugin, DevicePluginServer};
use kubelet_sim::api::registration_client::RegistrationClient;
use kubelet_sim::api::{self, ListAndWatchResponse};
use kubelet_sim::{AdmissionError, Capacity, Container, Kubelet, KubeletVersion, Options, Pod};
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
    std::fs::write(dir.0.join("notes.txt"), "keep").unwrap();

    kubelet.restart().await.unwrap();

    assert!(!plugin.socket.exists(), "plugin socket must be deleted");
    assert!(dir.0.join("kubelet_internal_checkpoint").exists());
    assert!(dir.0.join("notes.txt").exists());
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
