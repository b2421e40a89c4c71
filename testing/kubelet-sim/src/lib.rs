//! A stand-in kubelet device manager for testing device plugins without a cluster.
//!
//! [`Kubelet`] serves `v1beta1.Registration` on `<dir>/kubelet.sock`, dials registered
//! plugins back, follows their `ListAndWatch` streams, computes node capacity/allocatable,
//! admits pods (device selection, `GetPreferredAllocation`, `Allocate`) and simulates kubelet
//! restarts. Behaviour and error strings follow the kubelet's device manager
//! (`pkg/kubelet/cm/devicemanager` in Kubernetes 1.25–1.35): registration, endpoint
//! life cycle, health, admission and restart clean-up.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use kubelet_sim::{Container, Kubelet, Options, Pod};
//!
//! let kubelet = Kubelet::start(Options::new("/tmp/dp")).await?;
//! // ... start the device plugin against /tmp/dp ...
//! kubelet
//!     .wait_until(|s| s.get("nvidia.com/gpu").is_some_and(|c| c.allocatable > 0), Duration::from_secs(30))
//!     .await?;
//! let pod = Pod::new("p1").container(Container::new("c").limit("nvidia.com/gpu", 1));
//! let admission = kubelet.admit(&pod).await?;
//! println!("{:?}", admission.containers[0].merged.envs);
//! kubelet.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! A newer registration for a resource replaces its endpoint and closes the previous
//! plugin connection (no "already registered" error); messages of the old stream are ignored.
//!
//! Not modelled: topology-manager NUMA alignment, sidecar (restartable init) containers,
//! the plugin-watcher registration path, checkpoint files, the 1.25–1.35 re-registration
//! race, the periodic (10 s) node-status lag, automatic 5-minute expiry of stopped endpoints
//! (see [`Kubelet::expire_stopped_endpoints`]), and the path-derived `:authority` of kubelets
//! before 1.26 (the simulator always sends `localhost`).

/// The DevicePlugin API v1beta1 (messages, `Registration` server, `DevicePlugin` client and
/// server), generated once in `gpu-slicer-api` and shared with the plugin under test.
pub use gpu_slicer_api as api;

mod admission;
mod error;
mod kubelet;
mod state;
mod types;
mod util;

pub use error::{AdmissionError, SimError, StartError};
pub use kubelet::Kubelet;
pub use types::{
    Admission, AllocationRecord, Capacity, Container, ContainerAllocation, DeviceState,
    EndpointInfo, KubeletVersion, MergedConfig, Options, Pod, RegistrationRecord,
    ResourceAllocation,
};
pub use util::{grpc_error_string, is_extended_resource_name};

/// Device health value counted as healthy (exact, case-sensitive comparison).
pub const HEALTHY: &str = "Healthy";
/// Device health value conventionally used for unhealthy devices.
pub const UNHEALTHY: &str = "Unhealthy";
/// The only API version the kubelet accepts.
pub const VERSION: &str = "v1beta1";
/// File name of the kubelet's registration socket inside the device-plugin directory.
pub const KUBELET_SOCKET: &str = "kubelet.sock";
/// File kept by the start-up/restart cleanup.
pub const CHECKPOINT_FILE: &str = "kubelet_internal_checkpoint";
/// grpc-go's default maximum receive size, used by the kubelet for every plugin message.
pub const MAX_RECV_MESSAGE_SIZE: usize = 4 * 1024 * 1024;
