//! A stand-in kubelet device manager for testing device plugins without a cluster.
//!
//! [`Kubelet`] serves `v1beta1.Registration` on `<dir>/kubelet.sock`, dials registered
//! plugins back, follows their `ListAndWatch` streams, computes node capacity/allocatable,
//! admits pods (device selection, `GetPreferredAllocation`, `Allocate`) and simulates kubelet
//! restarts and crashes. Behaviour and error strings follow the kubelet's device manager
//! (`pkg/kubelet/cm/devicemanager` in Kubernetes 1.25–1.35): registration, endpoint
//! life cycle, re-registration, health, admission and restart clean-up.
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
//! # Kubelet life cycle
//!
//! Every start ([`Kubelet::start`], [`Kubelet::restart`], [`Kubelet::start_again`]) runs the
//! kubelet's start sequence: create the directory (0750), clean it up (by default, as
//! kubelet v1.32: every top-level non-directory entry except `kubelet_internal_checkpoint`,
//! see [`Cleanup`]), create `kubelet_internal_checkpoint` if absent, `bind()`
//! `kubelet.sock` (the file appears: the inotify CREATE plugins watch for), wait
//! [`Options::listen_delay`] (connects are refused meanwhile), `listen()`. Both instants are
//! recorded ([`Kubelet::socket_bound_at`], [`Kubelet::socket_listening_at`]).
//!
//! [`Kubelet::restart`] and [`Kubelet::shutdown`] stop as the kubelet's registration server
//! does (plugin clients disconnected, then every connection closed, `kubelet.sock` removed);
//! [`Kubelet::crash`] drops every connection at once and leaves a stale `kubelet.sock` that
//! refuses connections until [`Kubelet::start_again`]. Each start is a new
//! [`generation`](Kubelet::generation), recorded in every [`RegistrationRecord`]. After a
//! restart, known resources read 0/0 until their plugin registers again; allocations are
//! kept.
//!
//! # Re-registration
//!
//! There is no "already registered" error: a newer registration for a resource replaces its
//! endpoint. What happens to the previous plugin connection depends on
//! [`Options::version`]:
//!
//! - ≤1.24: the previous endpoint is stopped and its connection closed; a stream only
//!   affects the endpoint it belongs to.
//! - 1.25–1.35 (the default, 1.31): clients are keyed by resource name only. The previous
//!   connection and its ListAndWatch stream stay open beside the new one
//!   ([`Kubelet::open_streams`] counts both) and both feed the resource: the last message
//!   wins, whichever stream it comes from, as the kubelet's device callback is keyed by
//!   resource only. When a stream ends, the kubelet disconnects whatever client its map
//!   holds for the resource: an *older* stream ending after a newer registration tears
//!   down the *new* client (connection closed, endpoint stopped, all devices unhealthy)
//!   until yet another registration. The client is entered in the map before the dial-back,
//!   so an old stream ending during a new registration's dial stops the old endpoint and
//!   leaves the new client untracked (its own stream ending later goes unnoticed).
//! - ≥1.36: clients are keyed by (resource, socket path); an old stream ending tears down
//!   only a client on the same socket path. Assumption: the endpoint is stopped only when
//!   it was created from that socket path.
//!
//! Messages larger than [`MAX_RECV_MESSAGE_SIZE`] end the stream with grpc-go's
//! `rpc error: code = ResourceExhausted desc = grpc: received message larger than max
//! (N vs. 4194304)`.
//!
//! Not modelled: topology-manager NUMA alignment, sidecar (restartable init) containers,
//! the plugin-watcher registration path, the checkpoint's content (the file is created
//! empty and kept, never rewritten or read back), the periodic (10 s) node-status lag,
//! automatic 5-minute expiry of stopped endpoints (see
//! [`Kubelet::expire_stopped_endpoints`]), the path-derived `:authority` of kubelets before
//! 1.26 (the simulator always sends `localhost`), grpc-go's wording for over-limit
//! *requests* to `kubelet.sock` and over-limit unary *responses* (tonic's text is
//! reported), and the stop of a kubelet that exits on SIGTERM without closing its
//! listener (use [`Kubelet::crash`] for a socket left behind).

/// The DevicePlugin API v1beta1 (messages, `Registration` server, `DevicePlugin` client and
/// server), generated once in `gpu-slicer-api` and shared with the plugin under test.
pub use gpu_slicer_api as api;

mod admission;
mod conn;
mod error;
mod kubelet;
mod pod_resources;
mod state;
mod types;
mod util;

pub use error::{AdmissionError, SimError, StartError};
pub use kubelet::Kubelet;
pub use types::{
    Admission, AllocationRecord, Capacity, Cleanup, Container, ContainerAllocation, DeviceState,
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
/// File kept by the start-up/restart cleanup (created empty at start when absent).
pub const CHECKPOINT_FILE: &str = "kubelet_internal_checkpoint";
/// grpc-go's default maximum receive size, used by the kubelet for every plugin message.
pub const MAX_RECV_MESSAGE_SIZE: usize = 4 * 1024 * 1024;
