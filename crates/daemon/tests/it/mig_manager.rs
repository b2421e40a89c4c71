//! Cooperating with NVIDIA's MIG Manager: gpu-slicer follows the node's
//! `nvidia.com/mig.config.state` (a stubbed API server), withdraws the
//! MIG-capable GPUs' devices while a layout change is `pending`, and on
//! `success` (or `failed`) rediscovers through NVML (the fake, whose
//! topology file the test rewrites as the repartition) without a restart.

use std::path::Path;

use serde_json::json;

use crate::common::{
    aside, expect, fake_nvml, free_port, kubelet, start_logged, temp_dir, wait_for, wait_for_log,
    wait_for_metric_line,
};
use crate::kube_stub::KubeStub;
use gpu_slicer_core::gpu::simulated;

const STATE: &str = "nvidia.com/mig.config.state";

/// Two A100s of a p4d.24xlarge under `layout`, written where the fake reads it.
fn write_topology(path: &Path, layout: &str) {
    let mut inventory = simulated::from_instance("p4d.24xlarge", Some(layout)).expect("p4d");
    inventory.gpus.truncate(2);
    let staged = path.with_extension("new");
    std::fs::write(&staged, serde_json::to_string(&inventory).expect("json")).expect("write");
    std::fs::rename(&staged, path).expect("rename");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_change_is_withdrawn_while_pending_and_rediscovered_on_success_or_failure() {
    let dir = temp_dir();
    let topology = aside(dir.path()).join("inventory.json");
    write_topology(&topology, "all-balanced");
    let stub = KubeStub::start("n1", &[(STATE, "success")], json!([])).await;
    let kubelet = kubelet(dir.path()).await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let lib = fake_nvml();
    let (_daemon, log) = start_logged(
        dir.path(),
        &[
            "--nvml-lib",
            lib.to_str().expect("utf-8"),
            "--mig-strategy",
            "mixed",
            "--node-name",
            "n1",
            "--kube-api-url",
            &stub.url,
            "--follow-mig-manager",
            "--metrics-address",
            &metrics,
        ],
        &[("FAKE_NVML_TOPOLOGY", topology.to_str().expect("utf-8"))],
    );
    let balanced = |healthy: usize| {
        expect(&[
            ("nvidia.com/mig-1g.5gb", 4 * healthy),
            ("nvidia.com/mig-2g.10gb", 2 * healthy),
            ("nvidia.com/mig-3g.20gb", 2 * healthy),
        ])
    };
    wait_for(&kubelet, &balanced(1)).await;

    // MIG Manager starts a change: nothing on those GPUs is admitted.
    stub.set_label(STATE, Some("pending"));
    wait_for(&kubelet, &balanced(0)).await;
    let line = wait_for_log(&log, "MIG Manager is changing the MIG layout").await;
    assert!(
        line.contains("2 MIG-capable GPU(s) are Unhealthy"),
        "{line}"
    );
    wait_for_metric_line(&metrics, "gpu_slicer_mig_repartitioning 1").await;

    // It repartitions and reports success: the new devices, no restart.
    write_topology(&topology, "all-1g.5gb");
    stub.set_label(STATE, Some("success"));
    wait_for(&kubelet, &expect(&[("nvidia.com/mig-1g.5gb", 14)])).await;
    wait_for_metric_line(&metrics, "gpu_slicer_mig_repartitioning 0").await;

    // A change that fails: withdrawn, then what the GPUs hold is served
    // again, with an error saying so.
    stub.set_label(STATE, Some("pending"));
    wait_for(&kubelet, &expect(&[("nvidia.com/mig-1g.5gb", 0)])).await;
    stub.set_label(STATE, Some("failed"));
    wait_for(&kubelet, &expect(&[("nvidia.com/mig-1g.5gb", 14)])).await;
    let line = wait_for_log(
        &log,
        "MIG Manager reports that the MIG layout change failed",
    )
    .await;
    assert!(line.contains("ERROR"), "{line}");
    kubelet.shutdown().await;
}

#[test]
fn following_mig_manager_needs_the_node_name() {
    let dir = temp_dir();
    let out = std::process::Command::new(crate::BIN)
        .args([
            "run",
            "--simulate",
            "p4d.24xlarge",
            "--follow-mig-manager",
            "--device-plugin-path",
        ])
        .arg(dir.path())
        .env_remove("NODE_NAME")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--follow-mig-manager needs --node-name (NODE_NAME from the downward API)"),
        "{stderr}"
    );
}

/// A node that scales up from zero with `nvidia.com/mig.config` set and no
/// state yet (MIG Manager has not run): its GPUs, still whole, are never
/// offered Healthy, and the Karpenter start-up taint stays, until MIG
/// Manager reports the layout applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_not_applied_yet_is_never_offered_whole_and_keeps_the_startup_taint() {
    const TAINT: &str = "example.com/gpu-slicing-pending";
    let dir = temp_dir();
    let topology = aside(dir.path()).join("inventory.json");
    write_topology(&topology, "all-disabled");
    let stub = KubeStub::start(
        "n1",
        &[("nvidia.com/mig.config", "all-1g.5gb")],
        json!([{ "key": TAINT, "effect": "NoSchedule" }]),
    )
    .await;
    let kubelet = kubelet(dir.path()).await;
    let lib = fake_nvml();
    let (_daemon, log) = start_logged(
        dir.path(),
        &[
            "--nvml-lib",
            lib.to_str().expect("utf-8"),
            "--mig-strategy",
            "mixed",
            "--node-name",
            "n1",
            "--kube-api-url",
            &stub.url,
            "--follow-mig-manager",
            "--startup-taint",
            TAINT,
        ],
        &[("FAKE_NVML_TOPOLOGY", topology.to_str().expect("utf-8"))],
    );
    // The two whole GPUs are advertised, none Healthy, from the start.
    wait_for(&kubelet, &expect(&[("nvidia.com/gpu", 0)])).await;
    assert!(
        kubelet
            .registrations()
            .iter()
            .all(|r| r.resource_name == "nvidia.com/gpu"),
        "only the whole GPUs"
    );
    wait_for_log(&log, "MIG Manager has not applied the MIG layout yet").await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        stub.patches().is_empty(),
        "the start-up taint went before the layout"
    );

    // MIG Manager runs: pending, repartitions, success.
    stub.set_label(STATE, Some("pending"));
    write_topology(&topology, "all-1g.5gb");
    stub.set_label(STATE, Some("success"));
    wait_for(&kubelet, &expect(&[("nvidia.com/mig-1g.5gb", 14)])).await;
    stub.wait_until(
        "the start-up taint removed",
        |s| {
            s.node()["spec"]["taints"]
                .as_array()
                .is_none_or(Vec::is_empty)
        },
        crate::common::TIMEOUT,
    )
    .await;
    kubelet.shutdown().await;
}
