//! gpu-slicer: a Kubernetes device plugin that shares NVIDIA GPUs.
//!
//! A pure core (config, gpu model, plan, allocate, placement) inside a thin
//! shell (plugin server, kubelet client, daemon life cycle).

pub mod config;
pub mod gpu;

/// The kubelet DevicePlugin API v1beta1 (generated from `proto/`).
pub mod api {
    tonic::include_proto!("v1beta1");
}
pub mod allocate;
pub mod commands;
pub mod daemon;
pub mod kubelet;
pub mod placement;
pub mod plan;
pub mod plugin;
