//! gpu-slicer's daemon: the thin shell around `gpu-slicer-core` that a GPU
//! node runs. It does the I/O the core decides on: gRPC servers for the
//! kubelet, registration and the life cycle, NVML discovery and XID events,
//! file and signal watching, the HTTP endpoints, and the Kubernetes client.
//!
//! | Module | |
//! |---|---|
//! | [`run`] | wires the daemon from its options |
//! | [`daemon`] | the shell of the life cycle: executes the core's `lifecycle::Machine` (start, reload, re-register, health, stop) |
//! | [`deadline`] | absolute deadlines in `select!` loops |
//! | [`plugin`] | one DevicePlugin gRPC server per resource |
//! | [`kubelet`] | registration, socket-directory watch |
//! | [`nvml`], [`nvml_health`] | GPU discovery through NVML; health: XID events and GPUs that stop answering |
//! | [`driver_files`] | the driver's libraries, binaries, firmware and sockets, for the CDI spec |
//! | [`mps`] | the CUDA MPS control daemons of MPS-shared resources |
//! | [`metrics`] | Prometheus metrics, `/healthz`, `/readyz` |
//! | [`node`] | the one watcher of the own Node (its labels, for everything that follows one), per-node config by node label, start-up taint |
//! | [`kube_api`] | the Kubernetes API client (get, watch, patch the Node) |
//! | [`reload`] | signals and config-file changes |
//! | [`watch`] | the one directory watcher (device-plugin and config directories) |
//! | [`config_file`], [`simulate`], [`files`] | reading the config and topology files, writing files atomically |
//! | [`args`], [`process`] | the command line, logging and the runtime |

pub mod args;
pub mod config_file;
pub mod connection;
pub mod daemon;
pub mod deadline;
pub mod driver_files;
pub mod files;
pub mod kube_api;
pub mod kubelet;
pub mod metrics;
pub mod mig_applier;
pub mod mig_apply;
pub mod mps;
pub mod node;
pub mod nvml;
pub mod nvml_health;
pub mod nvml_report;
pub mod plugin;
pub mod pod_resources;
pub mod process;
pub mod reload;
pub mod run;
pub mod simulate;
pub mod watch;
pub mod wire;
