//! Public data types: options, observations and pods.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::api;

/// The emulated kubelet version (only major.minor matter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KubeletVersion {
    /// Major version (1).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
}

impl KubeletVersion {
    /// A version `major.minor`.
    pub const fn new(major: u32, minor: u32) -> Self {
        KubeletVersion { major, minor }
    }

    /// Whether this version is `major.minor` or newer.
    pub fn at_least(self, major: u32, minor: u32) -> bool {
        self >= KubeletVersion::new(major, minor)
    }

    /// ≥1.25: synchronous Register that dials back and calls GetDevicePluginOptions.
    pub fn sync_register(self) -> bool {
        self.at_least(1, 25)
    }

    /// Whether `cdi_devices` reach the container with default feature gates (≥1.29).
    pub fn cdi_enabled(self) -> bool {
        self.at_least(1, 29)
    }

    /// 1.25–1.35: the registration server keys its clients by resource name only. A new
    /// registration leaves the previous connection and its ListAndWatch stream open, and an
    /// old stream that ends afterwards tears down the newest client of the resource
    /// (kubernetes/kubernetes#121994, #127803).
    pub fn re_registration_race(self) -> bool {
        self.sync_register() && !self.clients_keyed_by_socket()
    }

    /// ≈1.36 (kubernetes/kubernetes PR #135437): clients are keyed by (resource, socket path),
    /// so only a re-registration on the *same* socket path can still be torn down by the
    /// previous instance's stream ending.
    pub fn clients_keyed_by_socket(self) -> bool {
        self.at_least(1, 36)
    }
}

impl Default for KubeletVersion {
    /// 1.31.
    fn default() -> Self {
        KubeletVersion::new(1, 31)
    }
}

impl fmt::Display for KubeletVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// What the start-up clean-up of the device-plugin directory deletes. Both keep
/// `kubelet_internal_checkpoint` and subdirectories (which are not traversed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cleanup {
    /// Every non-directory top-level entry (`lstat`: a symlink is removed, not followed):
    /// stale `kubelet.sock`, plugin sockets, regular files. Observed with kubelet v1.32.
    #[default]
    NonDirectories,
    /// Only top-level sockets; regular files are kept (some later releases).
    Sockets,
}

/// Simulator configuration. Build with [`Options::new`] and adjust the public fields.
#[derive(Debug, Clone)]
pub struct Options {
    /// The device-plugin directory (`/var/lib/kubelet/device-plugins` on a node). Keep it
    /// short: socket paths inside it are limited to 107 bytes.
    pub dir: PathBuf,
    /// Emulated kubelet version (default 1.31).
    pub version: KubeletVersion,
    /// Call GetPreferredAllocation when the plugin's options ask for it (default true).
    pub preferred_allocation: bool,
    /// How long Register (≥1.25) or the background dial (≤1.24) waits for the plugin's
    /// socket to accept a connection (kubelet: 10 s).
    pub dial_timeout: Duration,
    /// Fault injection: every dial-back fails with `context deadline exceeded` at once.
    pub fail_dial: bool,
    /// Pause between the directory clean-up and binding a fresh `kubelet.sock` in
    /// [`Kubelet::restart`](crate::Kubelet::restart) (default 100 ms). Not applied by
    /// [`Kubelet::start`](crate::Kubelet::start) nor
    /// [`Kubelet::start_again`](crate::Kubelet::start_again).
    pub restart_delay: Duration,
    /// Pause between `bind()` of `kubelet.sock` (the file appears: a plugin's inotify
    /// CREATE) and `listen()` (connections are accepted). A connect in between fails
    /// with `ECONNREFUSED`, as it can against a real kubelet starting up. Default 0:
    /// `listen()` follows `bind()` at once, which still leaves the real, tiny gap.
    /// Applied at every start.
    pub listen_delay: Duration,
    /// What the clean-up at every start deletes (default [`Cleanup::NonDirectories`], as
    /// kubelet v1.32 does). Keep files a test needs in a subdirectory, or choose
    /// [`Cleanup::Sockets`].
    pub cleanup: Cleanup,
    /// Apply the kubelet's resource-fit admission check before the device manager
    /// (`OutOf<resource>` when a resource in node status cannot hold the pod's request).
    /// Default true. Turn off to reach device-manager errors such as
    /// `no healthy devices present; ...`, which real kubelets show while node status lags.
    pub fit_check: bool,
    /// Serve the PodResources API (`List`) on this socket, as the kubelet does on
    /// `/var/lib/kubelet/pod-resources/kubelet.sock`; `None` (the default): not served.
    /// Keep it outside [`dir`](Self::dir), whose clean-up would delete it.
    pub pod_resources_socket: Option<PathBuf>,
    /// Keep every ListAndWatch message received, per resource, for
    /// [`Kubelet::device_updates`](crate::Kubelet::device_updates): a test
    /// can then assert over every list the kubelet was sent, not only the
    /// last one it happened to look at. Default false (a long run would
    /// hold every message).
    pub record_updates: bool,
}

impl Options {
    /// Defaults for a simulator using `dir` as device-plugin directory.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Options {
            dir: dir.into(),
            version: KubeletVersion::default(),
            preferred_allocation: true,
            dial_timeout: Duration::from_secs(10),
            fail_dial: false,
            restart_delay: Duration::from_millis(100),
            listen_delay: Duration::ZERO,
            cleanup: Cleanup::default(),
            fit_check: true,
            pod_resources_socket: None,
            record_updates: false,
        }
    }
}

/// Node status of one extended resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capacity {
    /// Healthy plus unhealthy devices.
    pub capacity: usize,
    /// Healthy devices (not reduced by devices in use).
    pub allocatable: usize,
}

/// A device as last reported by ListAndWatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceState {
    /// Device id.
    pub id: String,
    /// Whether `health` was exactly `"Healthy"` (and the stream is still alive).
    pub healthy: bool,
    /// The raw health string of the last message.
    pub health: String,
    /// NUMA nodes of `topology` (empty: no affinity).
    pub numa_nodes: Vec<i64>,
}

/// One Register call as the kubelet saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistrationRecord {
    /// `RegisterRequest.resource_name`.
    pub resource_name: String,
    /// `RegisterRequest.endpoint` as sent.
    pub endpoint: String,
    /// The path the kubelet dials: cleaned `join(dir, endpoint)`.
    pub endpoint_path: PathBuf,
    /// `RegisterRequest.version`.
    pub version: String,
    /// Whether Register returned OK.
    pub accepted: bool,
    /// Error text returned to the plugin (gRPC status `Unknown`); for ≤1.24 kubelets also a
    /// background dial failure that was only logged (then `accepted` stays true).
    pub error: Option<String>,
    /// `RegisterRequest.options`.
    pub request_options: Option<api::DevicePluginOptions>,
    /// The reply of GetDevicePluginOptions (≥1.25 only).
    pub plugin_options: Option<api::DevicePluginOptions>,
    /// Which kubelet instance took the call: 0 for [`Kubelet::start`](crate::Kubelet::start),
    /// then +1 per [`Kubelet::restart`](crate::Kubelet::restart) or
    /// [`Kubelet::start_again`](crate::Kubelet::start_again) (see
    /// [`Kubelet::generation`](crate::Kubelet::generation)). Count the registrations of a
    /// resource per kubelet instance with it.
    pub generation: u64,
    /// When the Register call reached the kubelet.
    pub received_at: Instant,
    /// When the kubelet answered it (≥1.25: after dialing back and GetDevicePluginOptions).
    pub answered_at: Instant,
}

/// The kubelet's current endpoint for a resource (the newest successful registration).
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointInfo {
    /// Socket path dialled.
    pub path: PathBuf,
    /// Options in effect (from GetDevicePluginOptions on ≥1.25, the request on ≤1.24).
    pub options: api::DevicePluginOptions,
    /// Whether the endpoint is stopped: its own stream ended, or (1.25–1.35) an older
    /// stream of the resource ended and the kubelet tore this one down. Calls on it fail
    /// with `endpoint <path> has been stopped`.
    pub stopped: bool,
    /// Why this endpoint's own ListAndWatch stream ended (`EOF` or the gRPC error as
    /// grpc-go prints it), when it did. When the kubelet closed the connection itself
    /// (tear-down) this is `rpc error: code = Canceled desc = grpc: the client connection
    /// is closing`. A stream can end without the endpoint stopping (1.25–1.35, when the
    /// kubelet no longer tracks its client).
    pub stream_error: Option<String>,
    /// Number of ListAndWatch messages received.
    pub updates: u64,
}

/// One (pod, container, resource) device assignment held by the kubelet.
#[derive(Debug, Clone, PartialEq)]
pub struct AllocationRecord {
    /// Pod name (used as pod UID).
    pub pod: String,
    /// Container name.
    pub container: String,
    /// Resource name.
    pub resource: String,
    /// Device ids, sorted.
    pub device_ids: Vec<String>,
}

/// A pod to admit. Pod names act as UIDs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pod {
    /// Pod name (unique among admitted pods).
    pub name: String,
    /// Init containers (treated as regular, non-restartable init containers).
    pub init_containers: Vec<Container>,
    /// App containers.
    pub containers: Vec<Container>,
}

impl Pod {
    /// A pod without containers.
    pub fn new(name: impl Into<String>) -> Self {
        Pod {
            name: name.into(),
            ..Pod::default()
        }
    }

    /// Adds an app container.
    pub fn container(mut self, c: Container) -> Self {
        self.containers.push(c);
        self
    }

    /// Adds an init container.
    pub fn init_container(mut self, c: Container) -> Self {
        self.init_containers.push(c);
        self
    }

    /// Effective request of `resource`: max(largest init container, sum of app containers).
    pub fn effective_request(&self, resource: &str) -> u64 {
        let get = |c: &Container| c.limits.get(resource).copied().unwrap_or(0);
        let init = self.init_containers.iter().map(get).max().unwrap_or(0);
        let app: u64 = self.containers.iter().map(get).sum();
        init.max(app)
    }
}

/// A container and its resource limits (extended resources: requests equal limits).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Container {
    /// Container name.
    pub name: String,
    /// Resource name → count.
    pub limits: BTreeMap<String, u64>,
}

impl Container {
    /// A container without limits.
    pub fn new(name: impl Into<String>) -> Self {
        Container {
            name: name.into(),
            limits: BTreeMap::new(),
        }
    }

    /// Sets a limit.
    pub fn limit(mut self, resource: impl Into<String>, count: u64) -> Self {
        self.limits.insert(resource.into(), count);
        self
    }
}

/// Result of a successful admission.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Admission {
    /// Init containers first, then app containers, in pod order.
    pub containers: Vec<ContainerAllocation>,
}

impl Admission {
    /// The allocation of the container called `name`.
    pub fn container(&self, name: &str) -> Option<&ContainerAllocation> {
        self.containers.iter().find(|c| c.name == name)
    }
}

/// Device assignments and merged runtime configuration of one container.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContainerAllocation {
    /// Container name.
    pub name: String,
    /// Whether it is an init container.
    pub init: bool,
    /// Device-plugin resources of the container.
    pub resources: BTreeMap<String, ResourceAllocation>,
    /// What the runtime would get (the kubelet merges every resource's responses).
    pub merged: MergedConfig,
}

/// One resource's devices and the plugin's answer for a container.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ResourceAllocation {
    /// Device ids, sorted (the Allocate RPC received them in random order).
    pub device_ids: Vec<String>,
    /// `AllocateResponse.container_responses[0]`.
    pub response: api::ContainerAllocateResponse,
}

/// The merge of all responses of a container: envs and annotations by key, mounts and
/// devices by container path, CDI devices by name; the first value wins (resources are
/// visited in name order). CDI devices only with kubelet ≥1.29 (feature gate default).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MergedConfig {
    /// Environment variables.
    pub envs: BTreeMap<String, String>,
    /// Bind mounts.
    pub mounts: Vec<api::Mount>,
    /// Device nodes.
    pub devices: Vec<api::DeviceSpec>,
    /// CRI annotations.
    pub annotations: BTreeMap<String, String>,
    /// Fully qualified CDI device names.
    pub cdi_devices: Vec<String>,
}

impl MergedConfig {
    pub(crate) fn merge(&mut self, r: &api::ContainerAllocateResponse, cdi: bool) {
        for (k, v) in &r.envs {
            self.envs.entry(k.clone()).or_insert_with(|| v.clone());
        }
        for (k, v) in &r.annotations {
            self.annotations
                .entry(k.clone())
                .or_insert_with(|| v.clone());
        }
        for m in &r.mounts {
            if !self
                .mounts
                .iter()
                .any(|x| x.container_path == m.container_path)
            {
                self.mounts.push(m.clone());
            }
        }
        for d in &r.devices {
            if !self
                .devices
                .iter()
                .any(|x| x.container_path == d.container_path)
            {
                self.devices.push(d.clone());
            }
        }
        if cdi {
            for c in &r.cdi_devices {
                if !self.cdi_devices.contains(&c.name) {
                    self.cdi_devices.push(c.name.clone());
                }
            }
        }
    }
}

pub(crate) fn socket_path_ok(path: &Path) -> Result<(), crate::SimError> {
    let len = path.as_os_str().len();
    if len > 107 {
        return Err(crate::SimError::PathTooLong {
            path: path.to_path_buf(),
            len,
        });
    }
    Ok(())
}
