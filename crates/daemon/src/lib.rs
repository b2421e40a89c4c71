//! gpu-slicer's daemon: the thin shell around `gpu-slicer-core` that a GPU
//! node runs. It does the I/O the core decides on: gRPC servers for the
//! kubelet, registration and the life cycle, NVML discovery and XID events,
//! file and signal watching, the HTTP endpoints, and the Kubernetes client.
//!
//! The floor plan: the front door ([`run`], from [`args`]), the
//! orchestrator ([`daemon`]) that executes the core's decisions, and one
//! room per thing the daemon talks to. Arrows run downwards only (CI checks
//! that no modules import each other in a loop: `.ci/check-module-cycles`).
//!
//! | Module | talks to |
//! |---|---|
//! | [`run`], [`args`] | the front door: wires the daemon from its options |
//! | [`daemon`] | the shell of the life cycle: executes the core's `lifecycle::Machine` (start, reload, re-register, health, MIG withdrawal, stop) |
//! | [`kubelet`] | the kubelet: registration, the DevicePlugin servers, PodResources |
//! | [`gpus`] | the GPUs: NVML discovery and report, health (XID events), MIG layout changes, the simulated backend |
//! | [`cluster`] | the API server: the client, the one Node watcher, per-node config, start-up taint, MIG applier |
//! | [`host`] | the host: files, driver files, config file and environment, the file watcher, signals, MPS daemons, the process |
//! | [`metrics`] | Prometheus scrapers: metrics, `/healthz`, `/readyz` |
//! | [`deadline`] | absolute deadlines in `select!` loops |

pub mod args;
pub mod cluster;
pub mod daemon;
pub mod deadline;
pub mod gpus;
pub mod host;
pub mod kubelet;
pub mod metrics;
pub mod run;
