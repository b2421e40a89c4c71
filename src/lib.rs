//! gpu-slicer: a Kubernetes device plugin that shares NVIDIA GPUs.
//!
//! A pure core decides; a thin shell does I/O.
//!
//! | Pure core | |
//! |---|---|
//! | [`config`] | NVIDIA's `version: v1` schema, strict loading, flags |
//! | [`gpu`] | the inventory model, the catalog, the simulated backend |
//! | [`plan`] | inventory + config → resources and device ids |
//! | [`allocate`] | what a container receives |
//! | [`placement`] | which devices to prefer |
//! | [`labels`] | node labels (GPU Feature Discovery names) |
//! | [`health`] | XID policy: which devices turn unhealthy, and when they recover |
//! | [`karpenter`] | NodeOverlays, the NodePool linter, prices and cost ranking |
//!
//! | Shell | |
//! |---|---|
//! | [`plugin`] | one DevicePlugin gRPC server per resource |
//! | [`cdi`] | CDI spec files (optional) |
//! | [`kubelet`] | registration, socket-directory watch |
//! | [`daemon`] | life cycle: start, reload, re-register, stop |
//! | [`metrics`] | Prometheus metrics, health and readiness |
//! | [`node`] | per-node config by node label, start-up taint (Kubernetes API) |
//! | [`reload`] | signals and config-file changes |
//! | [`commands`] | the `run`, `demo`, `plan`, `karpenter overlays` and `lint` subcommands |

pub mod allocate;
pub mod cdi;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod gpu;
pub mod health;
pub mod karpenter;
pub mod kubelet;
pub mod labels;
pub mod metrics;
pub mod node;
pub mod placement;
pub mod plan;
pub mod plugin;
pub mod reload;

/// The kubelet DevicePlugin API v1beta1 (generated from `proto/`).
pub mod api {
    tonic::include_proto!("v1beta1");
}
