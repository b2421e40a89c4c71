//! The daemon on "real" GPUs: the NVML backend against the fake NVML
//! library (tests/fake-nvml), which answers from an inventory file.

mod common;

use std::process::Command;

use common::{BIN, expect, fake_nvml, kubelet, start_with_env, temp_dir, wait_for};
use gpu_slicer::gpu::simulated;

/// Writes the inventory of a simulated instance where the fake reads it.
fn inventory_file(dir: &std::path::Path, instance: &str, layout: &str) -> std::path::PathBuf {
    let inventory = simulated::from_instance(instance, Some(layout)).expect("simulated");
    let path = dir.join("inventory.json");
    std::fs::write(&path, serde_json::to_string(&inventory).expect("json")).expect("write");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvml_backend_advertises_mig_devices() {
    let dir = temp_dir();
    let topology = inventory_file(dir.path(), "p4d.24xlarge", "all-balanced");
    let lib = fake_nvml();
    let kubelet = kubelet(dir.path()).await;
    let _daemon = start_with_env(
        dir.path(),
        &[
            "--nvml-lib",
            lib.to_str().expect("utf-8"),
            "--mig-strategy",
            "mixed",
        ],
        &[("FAKE_NVML_TOPOLOGY", topology.to_str().expect("utf-8"))],
    );
    wait_for(
        &kubelet,
        &expect(&[
            ("nvidia.com/mig-1g.5gb", 16),
            ("nvidia.com/mig-2g.10gb", 8),
            ("nvidia.com/mig-3g.20gb", 8),
        ]),
    )
    .await;
    kubelet.shutdown().await;
}

#[test]
fn driver_not_loaded_is_fatal_by_default() {
    let dir = temp_dir();
    let lib = fake_nvml();
    let out = Command::new(BIN)
        .args(["run", "--device-plugin-path"])
        .arg(dir.path())
        .arg("--nvml-lib")
        .arg(&lib)
        .env("FAKE_NVML_INIT_ERROR", "DRIVER_NOT_LOADED")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: Failed to initialize NVML: "),
        "{stderr}"
    );
    assert!(last.contains("If this is a GPU node"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_fail_on_init_error_a_late_driver_is_picked_up() {
    let dir = temp_dir();
    let lib = fake_nvml();
    // The fake fails to initialise while its inventory file is missing: the
    // "driver" arrives when the test writes it.
    let topology = dir.path().join("late.json");
    let kubelet = kubelet(dir.path()).await;
    let mut daemon = start_with_env(
        dir.path(),
        &[
            "--nvml-lib",
            lib.to_str().expect("utf-8"),
            "--fail-on-init-error=false",
        ],
        &[("FAKE_NVML_TOPOLOGY", topology.to_str().expect("utf-8"))],
    );
    // Alive, and nothing is registered while discovery fails.
    kubelet
        .wait_for_registrations(|_| false, std::time::Duration::from_millis(1500))
        .await
        .expect_err("nothing registers while NVML fails");
    assert!(
        daemon.child.try_wait().expect("status").is_none(),
        "the daemon exited"
    );

    let inventory = simulated::from_instance("g6.12xlarge", None).expect("simulated");
    std::fs::write(&topology, serde_json::to_string(&inventory).expect("json")).expect("write");
    wait_for(&kubelet, &expect(&[("nvidia.com/gpu", 4)])).await;
    assert!(daemon.terminate().success());
    kubelet.shutdown().await;
}
