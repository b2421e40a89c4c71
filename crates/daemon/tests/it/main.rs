//! End-to-end tests of the daemon binary (`gpu-slicer-daemon`, the one the
//! DaemonSet runs) against the stand-in kubelet, the fake NVML and a stub
//! Kubernetes API server. One test binary: one link step for all of them.

use std::path::PathBuf;

/// The binary under test; `common` starts it as `BIN run ...`.
pub const BIN: &str = env!("CARGO_BIN_EXE_gpu-slicer-daemon");

/// The repository's root (deploy files, docs).
pub fn repo_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

mod common;
/// The stub API server (testing/kube-stub), shared with the controller's tests.
mod kube_stub {
    pub use ::kube_stub::*;
}

mod allocation;
mod e2e;
mod fail_closed;
mod lifecycle;
mod mig_apply;
mod mig_manager;
mod mig_state;
mod mig_target;
mod mps;
mod node_config;
mod node_watch;
mod nvml_discovery;
mod real_gpus;
mod restarts;
