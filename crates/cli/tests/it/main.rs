//! Tests of the people's binary (`gpu-slicer`): `plan`, `lint`, `karpenter
//! overlays`, the deploy files, and `gpu-slicer run` (the same daemon library
//! the daemon binary runs) where a test compares overlays with what a running
//! daemon advertises. One test binary: one link step for all of them.

use std::path::PathBuf;

/// The binary under test; `common` starts the daemon as `BIN run ...`.
pub const BIN: &str = env!("CARGO_BIN_EXE_gpu-slicer");

/// The repository's root (deploy files, docs).
pub fn repo_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Runs the binary in the repository root: (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(BIN)
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("run gpu-slicer");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The daemon's test harness, shared rather than copied.
#[path = "../../../daemon/tests/it/common/mod.rs"]
mod common;

mod gpus;
mod karpenter;
mod manifests;
mod node_restriction;
mod plan;
mod simulate;
mod truth;
mod workload;
