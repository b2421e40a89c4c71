//! `--apply-mig-layouts`: gpu-slicer applies the layout the node's
//! `nvidia.com/mig.config` names through NVML (the fake, whose driver state
//! changes as the real one's would), reports `nvidia.com/mig.config.state`
//! on the Node (a stubbed API server) and Events, and advertises the new
//! devices without a restart; failures say why, keep the GPUs withdrawn and
//! the start-up taint on, and are retried.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::common::{
    TIMEOUT, aside, expect, fake_nvml, free_port, start_logged, temp_dir, wait_for,
    wait_for_metric_line,
};
use crate::kube_stub::KubeStub;
use gpu_slicer_core::gpu::simulated;
use kubelet_sim::{Container, Kubelet, Options, Pod};

const CONFIG: &str = "nvidia.com/mig.config";
const STATE: &str = "nvidia.com/mig.config.state";
const TAINT: &str = "example.com/gpu-slicing-pending";

/// Two A100s of a p4d.24xlarge under `layout`, as the fake's driver state.
pub(crate) fn write_topology(path: &Path, layout: &str) {
    let mut inventory = simulated::from_instance("p4d.24xlarge", Some(layout)).expect("p4d");
    inventory.gpus.truncate(2);
    std::fs::write(path, serde_json::to_string(&inventory).expect("json")).expect("write");
}

/// Changes the fake driver's state as something outside gpu-slicer would
/// (a process starting, a reboot).
fn edit_driver(path: &Path, change: impl FnOnce(&mut Value)) {
    let mut node: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json");
    change(&mut node);
    let staged = path.with_extension("edit");
    std::fs::write(&staged, node.to_string()).expect("write");
    std::fs::rename(&staged, path).expect("rename");
}

/// The kubelet's PodResources socket, beside the device-plugin directory
/// (as `/var/lib/kubelet/pod-resources/kubelet.sock` is).
pub(crate) fn pod_resources_socket(dir: &Path) -> std::path::PathBuf {
    aside(dir).join("pod-resources").join("kubelet.sock")
}

/// A stand-in kubelet that also serves PodResources.
pub(crate) async fn kubelet(dir: &Path) -> Kubelet {
    Kubelet::start(Options {
        pod_resources_socket: Some(pod_resources_socket(dir)),
        ..Options::new(dir)
    })
    .await
    .expect("stand-in kubelet")
}

pub(crate) fn start(
    dir: &Path,
    topology: &Path,
    stub: &KubeStub,
    metrics: &str,
) -> crate::common::Daemon {
    start_with(dir, topology, stub, metrics, &[], &[])
}

pub(crate) fn start_with(
    dir: &Path,
    topology: &Path,
    stub: &KubeStub,
    metrics: &str,
    more: &[&str],
    env: &[(&str, &str)],
) -> crate::common::Daemon {
    let lib = fake_nvml();
    let pods = pod_resources_socket(dir);
    let (daemon, _log) = start_logged(
        dir,
        &[
            "--nvml-lib",
            lib.to_str().expect("utf-8"),
            "--mig-strategy",
            "mixed",
            "--node-name",
            "n1",
            "--kube-api-url",
            &stub.url,
            "--apply-mig-layouts",
            "--startup-taint",
            TAINT,
            "--metrics-address",
            metrics,
            "--mig-apply-retry-ms",
            "200",
            "--pod-resources-socket",
            pods.to_str().expect("utf-8"),
        ]
        .iter()
        .chain(more)
        .copied()
        .collect::<Vec<_>>(),
        &[("FAKE_NVML_TOPOLOGY", topology.to_str().expect("utf-8"))]
            .iter()
            .chain(env)
            .copied()
            .collect::<Vec<_>>(),
    );
    daemon
}

/// The values `nvidia.com/mig.config.state` was patched to, in order.
fn states_patched(stub: &KubeStub) -> Vec<String> {
    stub.patches()
        .iter()
        .filter_map(|p| {
            p.body["metadata"]["labels"][STATE]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

async fn wait_for_state(stub: &KubeStub, state: &str) {
    stub.wait_until(
        &format!("{STATE}={state}"),
        |s| s.label(STATE).as_deref() == Some(state),
        TIMEOUT,
    )
    .await;
}

fn events(stub: &KubeStub, reason: &str) -> Vec<String> {
    stub.created_events()
        .iter()
        .filter(|e| e["reason"] == reason)
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn tainted(stub: &KubeStub) -> bool {
    stub.node()["spec"]["taints"]
        .as_array()
        .is_some_and(|t| t.iter().any(|t| t["key"] == TAINT))
}

fn uuids(kubelet: &kubelet_sim::Kubelet, resource: &str) -> BTreeSet<String> {
    kubelet
        .devices(resource)
        .into_iter()
        .map(|d| d.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_labelled_layout_is_applied_reported_and_its_new_devices_advertised() {
    let dir = temp_dir();
    let topology = aside(dir.path()).join("inventory.json");
    write_topology(&topology, "all-balanced");
    let stub = KubeStub::start(
        "n1",
        &[(CONFIG, "all-balanced")],
        json!([{ "key": TAINT, "effect": "NoSchedule" }]),
    )
    .await;
    let kubelet = kubelet(dir.path()).await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let _daemon = start(dir.path(), &topology, &stub, &metrics);

    // The GPUs already hold the layout: checked, reported, advertised.
    wait_for(
        &kubelet,
        &expect(&[
            ("nvidia.com/mig-1g.5gb", 4),
            ("nvidia.com/mig-2g.10gb", 2),
            ("nvidia.com/mig-3g.20gb", 2),
        ]),
    )
    .await;
    wait_for_state(&stub, "success").await;
    stub.wait_until("the start-up taint removed", |s| !tainted(s), TIMEOUT)
        .await;
    assert_eq!(states_patched(&stub), ["pending", "success"]);
    assert_eq!(
        events(&stub, "MigLayoutApplied"),
        ["MIG layout 'all-balanced' applied (0 GPU(s) changed)"]
    );
    let before = uuids(&kubelet, "nvidia.com/mig-1g.5gb");

    // A pod holds a slice: a new layout is refused while it does (the
    // kubelet's PodResources says so), with the pod named.
    let pod =
        Pod::new("train").container(Container::new("main").limit("nvidia.com/mig-3g.20gb", 1));
    kubelet.admit(&pod).await.expect("admitted");
    stub.set_label(CONFIG, Some("all-1g.5gb"));
    stub.wait_until(
        "a MigLayoutFailed event",
        |s| !events(s, "MigLayoutFailed").is_empty(),
        TIMEOUT,
    )
    .await;
    let message = events(&stub, "MigLayoutFailed")[0].clone();
    assert!(
        message.contains(") is in use (pod default/train (nvidia.com/mig-3g.20gb)); stop that work, or apply with force"),
        "{message}"
    );
    assert_eq!(
        message.matches("is in use").count(),
        1,
        "only the pod's GPU: {message}"
    );

    // The pod is deleted: the retry applies the new layout, new devices.
    kubelet.release("train");
    wait_for(&kubelet, &expect(&[("nvidia.com/mig-1g.5gb", 14)])).await;
    wait_for_state(&stub, "success").await;
    let states = states_patched(&stub);
    assert_eq!(states[..3], ["pending", "success", "pending"], "{states:?}");
    assert_eq!(states.last().map(String::as_str), Some("success"));
    assert!(states.contains(&"failed".to_string()), "{states:?}");
    let after = uuids(&kubelet, "nvidia.com/mig-1g.5gb");
    assert_eq!(after.len(), 14);
    assert!(after.is_disjoint(&before), "{after:?} vs {before:?}");
    assert!(
        events(&stub, "MigLayoutApplied")
            // GPU 1 was changed by the refused attempt already.
            .contains(&"MIG layout 'all-1g.5gb' applied (1 GPU(s) changed)".to_string()),
        "{:?}",
        events(&stub, "MigLayoutApplied")
    );
    wait_for_metric_line(
        &metrics,
        "gpu_slicer_mig_applies_total{result=\"success\"} 2",
    )
    .await;
    kubelet.shutdown().await;
}

/// The state label is level-triggered: a PATCH the API server fails is
/// retried until the Node has the value, and a newer outcome supersedes an
/// older one still being retried. The Node ends with the last outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_write_that_fails_is_retried_and_the_node_ends_with_the_last_outcome() {
    let dir = temp_dir();
    let topology = aside(dir.path()).join("inventory.json");
    write_topology(&topology, "all-balanced");
    let stub = KubeStub::start("n1", &[(CONFIG, "all-balanced")], json!([])).await;
    let sets = |state: &'static str| -> crate::kube_stub::PatchFilter {
        Arc::new(move |patch: &Value| patch["metadata"]["labels"][STATE] == state)
    };
    // The write of `success` gets one 500.
    stub.fail_patches(1, sets("success"));
    let kubelet = kubelet(dir.path()).await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let daemon = start(dir.path(), &topology, &stub, &metrics);
    wait_for(
        &kubelet,
        &expect(&[
            ("nvidia.com/mig-1g.5gb", 4),
            ("nvidia.com/mig-2g.10gb", 2),
            ("nvidia.com/mig-3g.20gb", 2),
        ]),
    )
    .await;
    wait_for_state(&stub, "success").await;
    assert_eq!(states_patched(&stub), ["pending", "success", "success"]);

    // Every write of `pending` fails: the change goes on without it (after
    // a bounded wait), and its `success` supersedes the `pending` still
    // being retried; the Node, which says `success` already, keeps it.
    stub.fail_patches(usize::MAX, sets("pending"));
    stub.set_label(CONFIG, Some("all-1g.5gb"));
    wait_for(&kubelet, &expect(&[("nvidia.com/mig-1g.5gb", 14)])).await;
    stub.wait_until(
        "the new layout applied",
        |s| events(s, "MigLayoutApplied").len() == 2,
        TIMEOUT,
    )
    .await;
    assert_eq!(
        events(&stub, "MigLayoutApplied")[1],
        "MIG layout 'all-1g.5gb' applied (2 GPU(s) changed)"
    );
    crate::mig_manager::assert_idle(&daemon).await;
    let states = states_patched(&stub);
    assert!(
        states.len() > 3 && states[3..].iter().all(|s| s == "pending"),
        "only the failing pending writes after the first change: {states:?}"
    );
    assert_eq!(stub.label(STATE).as_deref(), Some("success"));
    kubelet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_say_why_keep_the_gpus_withdrawn_and_are_retried() {
    let dir = temp_dir();
    let topology = aside(dir.path()).join("inventory.json");
    write_topology(&topology, "all-balanced");
    // A process runs on GPU 0's first instance.
    edit_driver(&topology, |node| {
        let gi = node["gpus"][0]["mig_devices"][0]["gpu_instance_id"].clone();
        node["gpus"][0]["processes"] = json!([{ "pid": 4242, "gpu_instance_id": gi }]);
    });
    let stub = KubeStub::start(
        "n1",
        &[(CONFIG, "all-1g.5gb")],
        json!([{ "key": TAINT, "effect": "NoSchedule" }]),
    )
    .await;
    let kubelet = kubelet(dir.path()).await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let _daemon = start(dir.path(), &topology, &stub, &metrics);

    // Busy: failed, with the reason; nothing offered, the taint stays.
    wait_for_state(&stub, "failed").await;
    let failed = events(&stub, "MigLayoutFailed");
    assert!(
        failed[0].starts_with("MIG layout 'all-1g.5gb' not applied: GPU 0 (GPU-")
            && failed[0]
                .ends_with(") is in use (process 4242); stop that work, or apply with force"),
        "{failed:?}"
    );
    assert!(
        crate::common::counts(&kubelet.node_status())
            .values()
            .all(|&healthy| healthy == 0),
        "{:?}",
        kubelet.node_status()
    );
    assert!(tainted(&stub));
    wait_for_metric_line(&metrics, "gpu_slicer_mig_repartitioning 1").await;

    // The process ends: the retry applies the layout.
    edit_driver(&topology, |node| {
        node["gpus"][0]
            .as_object_mut()
            .expect("gpu")
            .remove("processes");
    });
    wait_for(&kubelet, &expect(&[("nvidia.com/mig-1g.5gb", 14)])).await;
    wait_for_state(&stub, "success").await;
    stub.wait_until("the start-up taint removed", |s| !tainted(s), TIMEOUT)
        .await;

    // A layout the GPUs do not have: failed, naming the valid ones.
    stub.set_label(CONFIG, Some("all-3g.40gb"));
    wait_for_state(&stub, "failed").await;
    stub.wait_until(
        "a second MigLayoutFailed event",
        |s| events(s, "MigLayoutFailed").len() >= 2,
        TIMEOUT,
    )
    .await;
    let message = events(&stub, "MigLayoutFailed")[1].clone();
    assert!(
        message.starts_with("MIG layout 'all-3g.40gb' not applied: ")
            && message.contains("valid layouts"),
        "{message}"
    );

    // MIG off on an A100 needs a reset: reported, never done; after the
    // reboot the retry finds the mode off and the node serves whole GPUs.
    stub.set_label(CONFIG, Some("all-disabled"));
    stub.wait_until(
        "the reset to be reported",
        |s| {
            events(s, "MigLayoutFailed")
                .iter()
                .any(|m| m.contains("has MIG mode off pending: it takes effect after a GPU reset"))
        },
        TIMEOUT,
    )
    .await;
    wait_for_state(&stub, "failed").await;
    edit_driver(&topology, |node| {
        for gpu in node["gpus"].as_array_mut().expect("gpus") {
            gpu["mig_enabled"] = json!(false);
            gpu.as_object_mut().expect("gpu").remove("mig_pending");
        }
    });
    wait_for(&kubelet, &expect(&[("nvidia.com/gpu", 2)])).await;
    wait_for_state(&stub, "success").await;
    wait_for_metric_line(&metrics, "gpu_slicer_mig_repartitioning 0").await;
    kubelet.shutdown().await;
}

/// Without the kubelet's PodResources, nobody can tell which pods hold
/// devices: the change is refused, saying what to mount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_is_refused_when_the_pods_devices_cannot_be_read() {
    let dir = temp_dir();
    let topology = aside(dir.path()).join("inventory.json");
    write_topology(&topology, "all-balanced");
    let stub = KubeStub::start("n1", &[(CONFIG, "all-1g.5gb")], json!([])).await;
    let kubelet = crate::common::kubelet(dir.path()).await; // no PodResources
    let metrics = format!("127.0.0.1:{}", free_port());
    let _daemon = start(dir.path(), &topology, &stub, &metrics);
    wait_for_state(&stub, "failed").await;
    let message = events(&stub, "MigLayoutFailed")[0].clone();
    assert!(
        message.starts_with("MIG layout 'all-1g.5gb' not applied: cannot reach the kubelet's PodResources API at ")
            && message.contains("mount the kubelet's pod-resources directory (/var/lib/kubelet/pod-resources), or force the change"),
        "{message}"
    );
    kubelet.shutdown().await;
}

/// Layouts from a mig-parted file (the GPU Operator's format): read at every
/// change, so an edited file applies without a restart; a layout that does
/// not fit the GPU fails with the catalog's reason and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layouts_come_from_a_mig_parted_file_read_at_every_change() {
    let dir = temp_dir();
    let topology = aside(dir.path()).join("inventory.json");
    write_topology(&topology, "all-balanced");
    let layouts = aside(dir.path()).join("config.yaml");
    std::fs::write(
        &layouts,
        "version: v1\nmig-configs:\n  too-big:\n    - devices: all\n      mig-enabled: true\n      mig-devices: {\"3g.20gb\": 2, \"2g.10gb\": 1}\n",
    )
    .expect("write");
    let stub = KubeStub::start("n1", &[(CONFIG, "too-big")], json!([])).await;
    let kubelet = kubelet(dir.path()).await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let _daemon = start_with(
        dir.path(),
        &topology,
        &stub,
        &metrics,
        &["--mig-parted-config", layouts.to_str().expect("utf-8")],
        &[],
    );
    wait_for_state(&stub, "failed").await;
    let message = events(&stub, "MigLayoutFailed")[0].clone();
    assert!(
        message.starts_with("MIG layout 'too-big' not applied: ")
            && message.contains("it needs 8 compute slices and the GPU has 7"),
        "{message}"
    );
    let untouched: Value =
        serde_json::from_str(&std::fs::read_to_string(&topology).expect("read")).expect("json");
    assert_eq!(
        untouched["gpus"][0]["mig_devices"].as_array().map(Vec::len),
        Some(4)
    );

    // The file is edited (a ConfigMap update): the next attempt reads it.
    std::fs::write(
        &layouts,
        "version: v1\nmig-configs:\n  too-big:\n    - devices: all\n      mig-enabled: true\n      mig-devices: {\"3g.20gb\": 2}\n",
    )
    .expect("write");
    wait_for(&kubelet, &expect(&[("nvidia.com/mig-3g.20gb", 4)])).await;
    wait_for_state(&stub, "success").await;
    kubelet.shutdown().await;
}

#[test]
fn applying_layouts_needs_the_node_name_a_readable_file_and_excludes_following() {
    let dir = temp_dir();
    // Exit 1: refused at start; 2: clap's usage error.
    let run = |code: i32, args: &[&str]| {
        let out = std::process::Command::new(crate::BIN)
            .args(["run", "--simulate", "p4d.24xlarge", "--device-plugin-path"])
            .arg(dir.path())
            .args(args)
            .env_remove("NODE_NAME")
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let stderr = run(1, &["--apply-mig-layouts"]);
    assert!(
        stderr.contains("--apply-mig-layouts needs --node-name (NODE_NAME from the downward API)"),
        "{stderr}"
    );
    let stderr = run(2, &["--apply-mig-layouts", "--follow-mig-manager"]);
    assert!(
        stderr.contains("'--apply-mig-layouts' cannot be used with '--follow-mig-manager'"),
        "{stderr}"
    );
    let missing = dir.path().join("absent.yaml");
    let stderr = run(
        1,
        &[
            "--apply-mig-layouts",
            "--node-name",
            "n1",
            "--mig-parted-config",
            missing.to_str().expect("utf-8"),
        ],
    );
    assert!(stderr.contains("--mig-parted-config: "), "{stderr}");
    assert!(stderr.contains("absent.yaml"), "{stderr}");
}

/// SIGTERM while NVML applies a layout (issue 23, design item 3): the
/// daemon lets the apply reach its safe point (each GPU done or undone),
/// writes the outcome on the Node, and exits 0. It used to drop the applier
/// task at SIGTERM: the Node kept `pending` after the GPUs had changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_an_apply_waits_for_its_safe_point_and_reports_it() {
    let dir = temp_dir();
    let topology = aside(dir.path()).join("inventory.json");
    write_topology(&topology, "all-balanced");
    let initial = std::fs::read_to_string(&topology).expect("read");
    let stub = KubeStub::start("n1", &[(CONFIG, "all-1g.5gb")], json!([])).await;
    let _kubelet = kubelet(dir.path()).await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut daemon = start_with(
        dir.path(),
        &topology,
        &stub,
        &metrics,
        &[],
        // 14 GPU instances to create: seconds of apply to interrupt.
        &[("FAKE_NVML_GPU_INSTANCE_CREATE_MS", "300")],
    );
    // The fake driver's state changes with the apply's first operation.
    let deadline = std::time::Instant::now() + TIMEOUT;
    while std::fs::read_to_string(&topology).is_ok_and(|t| t == initial) {
        assert!(
            std::time::Instant::now() < deadline,
            "the apply did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let status = daemon.terminate();
    assert!(status.success(), "{status:?}");
    assert_eq!(
        stub.node()["metadata"]["labels"][STATE].as_str(),
        Some("success"),
        "the outcome of the interrupted apply is on the Node"
    );
    let node: Value =
        serde_json::from_str(&std::fs::read_to_string(&topology).expect("read")).expect("json");
    let gpus = node["gpus"].as_array().expect("gpus");
    assert_eq!(gpus.len(), 2);
    for gpu in gpus {
        assert_eq!(
            gpu["mig_devices"].as_array().map(Vec::len),
            Some(7),
            "GPU {} holds all-1g.5gb whole: {gpu}",
            gpu["index"]
        );
    }
}
