//! Per-node configuration by node label and the start-up taint, against a
//! stubbed Kubernetes API (no cluster).

use std::sync::Arc;

use crate::common::{
    Daemon, TIMEOUT, expect, free_port, kubelet, temp_dir, wait_for, wait_for_metric_line,
};
use crate::kube_stub::KubeStub;
use serde_json::json;

const LABEL: &str = "nvidia.com/device-plugin.config";

fn time_slicing(replicas: u32) -> String {
    format!(
        "version: v1\nsharing:\n  timeSlicing:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: {replicas}\n"
    )
}

/// Writes a config the way a ConfigMap volume does: staged, then renamed.
fn put_config(dir: &std::path::Path, name: &str, text: &str) {
    let staged = dir.join(format!("..{name}.tmp"));
    std::fs::write(&staged, text).expect("stage config");
    std::fs::rename(&staged, dir.join(name)).expect("swap config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_label_selects_the_config_and_changes_are_followed() {
    let dir = temp_dir();
    let configs = temp_dir();
    put_config(configs.path(), "ts-2", &time_slicing(2));
    put_config(configs.path(), "ts-4", &time_slicing(4));
    let stub = KubeStub::start("n1", &[(LABEL, "ts-2")], json!([])).await;
    let kubelet = kubelet(dir.path()).await;
    let address = format!("127.0.0.1:{}", free_port());
    let _daemon = Daemon::start(
        dir.path(),
        &[
            "--simulate",
            "p4d.24xlarge",
            "--mig-config",
            "all-disabled",
            "--config-dir",
            configs.path().to_str().expect("utf-8"),
            "--node-name",
            "n1",
            "--kube-api-url",
            &stub.url,
            "--metrics-address",
            &address,
        ],
    );
    // The label's config from the first registration on: 8 GPUs × 2.
    wait_for(&kubelet, &expect(&[("nvidia.com/gpu", 16)])).await;
    assert_eq!(
        kubelet.registrations().len(),
        1,
        "registered more than once"
    );
    let requests = stub.requests();
    assert!(
        requests.iter().any(|r| r == "GET /api/v1/nodes/n1")
            && requests.iter().any(|r| r == "GET /api/v1/nodes"),
        "expected a get and a watch of the node, got {requests:?}"
    );

    // The label changes: the daemon follows, without a restart.
    stub.set_label(LABEL, Some("ts-4"));
    wait_for(&kubelet, &expect(&[("nvidia.com/gpu", 32)])).await;

    // The server ends the watch (its timeout): the daemon watches again.
    stub.end_watches();
    stub.set_label(LABEL, Some("ts-2"));
    wait_for(&kubelet, &expect(&[("nvidia.com/gpu", 16)])).await;
    // A change the watch cannot report (history compacted, 410 Gone): the
    // daemon gets the Node again and sees it.
    stub.set_label_unseen(LABEL, Some("ts-4"));
    wait_for(&kubelet, &expect(&[("nvidia.com/gpu", 32)])).await;
    let gets = stub
        .requests()
        .iter()
        .filter(|r| *r == "GET /api/v1/nodes/n1")
        .count();
    assert_eq!(gets, 2, "one get at start, one after 410 Gone");

    // A value that names no config is refused; the running config stays.
    stub.set_label(LABEL, Some("ts-8"));
    wait_for_metric_line(
        &address,
        "gpu_slicer_config_reloads_total{result=\"rejected\"} 1",
    )
    .await;
    assert_eq!(kubelet.node_status()["nvidia.com/gpu"].allocatable, 32);

    // No label, no DEFAULT_CONFIG, no `default` key, two keys: no config at all.
    stub.set_label(LABEL, None);
    wait_for(&kubelet, &expect(&[("nvidia.com/gpu", 8)])).await;

    // A `default` key appears in the ConfigMap: the directory watch picks it up.
    put_config(configs.path(), "default", &time_slicing(3));
    wait_for(&kubelet, &expect(&[("nvidia.com/gpu", 24)])).await;

    // And an edit of the selected config applies too.
    put_config(configs.path(), "default", &time_slicing(5));
    wait_for(&kubelet, &expect(&[("nvidia.com/gpu", 40)])).await;
    assert_eq!(
        kubelet.registrations().len(),
        1,
        "config changes must not re-register an unchanged resource name"
    );
    kubelet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_startup_taint_is_removed_only_after_every_resource_is_registered() {
    const TAINT: &str = "example.com/gpu-slicing-pending";
    let dir = temp_dir();
    let stub = KubeStub::start(
        "n1",
        &[],
        json!([
            { "key": TAINT, "effect": "NoSchedule" },
            { "key": "example.com/other", "value": "x", "effect": "NoExecute" },
        ]),
    )
    .await;
    let address = format!("127.0.0.1:{}", free_port());
    let mut daemon = Daemon::start(
        dir.path(),
        &[
            "--simulate",
            "p4d.24xlarge",
            "--mig-config",
            "all-balanced",
            "--node-name",
            "n1",
            "--startup-taint",
            TAINT,
            "--kube-api-url",
            &stub.url,
            "--metrics-address",
            &address,
        ],
    );
    // Up, serving, but no kubelet to register with: the taint stays.
    wait_for_metric_line(
        &address,
        "gpu_slicer_devices{resource=\"nvidia.com/mig-1g.5gb\"} 16",
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(stub.patches().is_empty(), "patched before registration");

    // A short dial timeout: the starting kubelet removes the daemon's sockets
    // (as a real one does), and a registration racing that removal waits
    // for the dial to time out before the daemon serves again.
    let mut options = kubelet_sim::Options::new(dir.path());
    options.dial_timeout = std::time::Duration::from_secs(1);
    let kubelet = Arc::new(kubelet_sim::Kubelet::start(options).await.expect("kubelet"));
    let seen_by_hook = kubelet.clone();
    stub.on_patch(Arc::new(move || {
        let mut names: Vec<String> = seen_by_hook
            .registrations()
            .into_iter()
            .filter(|r| r.accepted)
            .map(|r| r.resource_name)
            .collect();
        names.sort();
        names.join(",")
    }));
    stub.wait_until("the taint patch", |s| !s.patches().is_empty(), TIMEOUT)
        .await;
    let patches = stub.patches();
    assert_eq!(patches.len(), 1, "{patches:?}");
    assert_eq!(
        patches[0].seen, "nvidia.com/mig-1g.5gb,nvidia.com/mig-2g.10gb,nvidia.com/mig-3g.20gb",
        "the taint went before every resource was registered"
    );
    assert_eq!(patches[0].content_type, "application/merge-patch+json");
    // Only that taint went; the other stays.
    stub.wait_until(
        "the taint removed",
        |s| {
            s.node()["spec"]["taints"]
                == json!([{ "key": "example.com/other", "value": "x", "effect": "NoExecute" }])
        },
        TIMEOUT,
    )
    .await;
    wait_for(
        &kubelet,
        &expect(&[
            ("nvidia.com/mig-1g.5gb", 16),
            ("nvidia.com/mig-2g.10gb", 8),
            ("nvidia.com/mig-3g.20gb", 8),
        ]),
    )
    .await;
    assert!(daemon.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_taint_keeps_other_taints_and_retries_conflicts() {
    const TAINT: &str = "example.com/pending";
    let other = json!({ "key": "example.com/other", "effect": "NoExecute" });
    let stub = KubeStub::start(
        "n1",
        &[],
        json!([other, { "key": TAINT, "effect": "NoSchedule" }]),
    )
    .await;
    let client = gpu_slicer_daemon::cluster::node::client(Some(&stub.url)).expect("client");

    // Someone else changes the Node twice meanwhile: read again, retry.
    stub.conflict_next_patches(2);
    let removed = gpu_slicer_daemon::cluster::node::remove_taint(&client, "n1", TAINT).await;
    assert!(removed.expect("removed"));
    assert_eq!(stub.patches().len(), 3);
    assert_eq!(stub.node()["spec"]["taints"], json!([other]));

    // Not there (any more): nothing to do, no patch.
    let removed = gpu_slicer_daemon::cluster::node::remove_taint(&client, "n1", TAINT).await;
    assert!(!removed.expect("no error"));
    assert_eq!(stub.patches().len(), 3);

    // The last taint: the field goes away.
    assert!(
        gpu_slicer_daemon::cluster::node::remove_taint(&client, "n1", "example.com/other")
            .await
            .expect("removed")
    );
    assert_eq!(stub.node()["spec"].get("taints"), None);
}
