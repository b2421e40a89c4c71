//! Cooperating with NVIDIA's MIG Manager: gpu-slicer follows the node's
//! `nvidia.com/mig.config.state` (a stubbed API server), withdraws the
//! MIG-capable GPUs' devices while a layout change is `pending`, and on
//! `success` (or `failed`) rediscovers through NVML (the fake, whose
//! topology file the test rewrites as the repartition) without a restart.
//!
//! Following is level-triggered: a `pending` that is never seen (the API
//! server failing meanwhile, label steps arriving together) must not leave
//! vanished devices advertised, and after any sequence of labels the
//! daemon is idle.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::common::{
    Daemon, aside, expect, fake_nvml, free_port, kubelet, start_logged, temp_dir, wait_for,
    wait_for_log, wait_for_metric_line,
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
    let (daemon, log) = start_logged(
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
    // `failed` is acted on once: one rediscovery, then idle.
    assert_idle(&daemon).await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        text.matches("MIG Manager reports that the MIG layout change failed")
            .count(),
        1,
        "{text}"
    );
    kubelet.shutdown().await;
}

/// The CPU time (user + system) the process has used, in clock ticks
/// (`/proc/<pid>/stat` fields 14 and 15).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/<pid>/stat");
    // The command name (field 2) may hold spaces: count from after it.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// Asserts the daemon is idle: over a quiet window it used less than a
/// tenth of the window in CPU time. A count, and generous: an idle daemon
/// uses next to nothing (and a busy machine does not add to a process's
/// own CPU time), a loop that spins uses all it can get.
pub(crate) async fn assert_idle(daemon: &Daemon) {
    let ticks_per_second: u64 = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100);
    let window = Duration::from_secs(3);
    let pid = daemon.child.id();
    let before = cpu_ticks(pid);
    tokio::time::sleep(window).await;
    let used = cpu_ticks(pid) - before;
    let limit = window.as_secs() * ticks_per_second / 10;
    assert!(
        used < limit,
        "the daemon used {used} clock ticks of CPU time in {window:?} of quiet ({ticks_per_second} a second): it is not idle"
    );
}

/// The daemon of these tests: two A100s under `topology`, following the
/// stub's Node.
fn start_following(dir: &Path, topology: &Path, stub: &KubeStub) -> (Daemon, std::path::PathBuf) {
    let lib = fake_nvml();
    start_logged(
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
            "--follow-mig-manager",
        ],
        &[("FAKE_NVML_TOPOLOGY", topology.to_str().expect("utf-8"))],
    )
}

fn balanced() -> std::collections::BTreeMap<String, usize> {
    expect(&[
        ("nvidia.com/mig-1g.5gb", 4),
        ("nvidia.com/mig-2g.10gb", 2),
        ("nvidia.com/mig-3g.20gb", 2),
    ])
}

/// The API server answers 500 while MIG Manager goes pending, repartitions
/// and reports success: the daemon never sees `pending`, and the state
/// label reads `success` before and after. The gap in watching is what
/// says the layout may have changed: once the API server answers again the
/// GPUs are rediscovered, and the vanished devices are no longer offered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_missed_while_the_api_server_fails_leaves_no_vanished_device_healthy() {
    let dir = temp_dir();
    let topology = aside(dir.path()).join("inventory.json");
    write_topology(&topology, "all-balanced");
    let stub = KubeStub::start("n1", &[(STATE, "success")], json!([])).await;
    let kubelet = kubelet(dir.path()).await;
    let (daemon, log) = start_following(dir.path(), &topology, &stub);
    wait_for(&kubelet, &balanced()).await;
    let watches = || {
        stub.requests()
            .iter()
            .filter(|r| *r == "GET /api/v1/nodes")
            .count()
    };
    stub.wait_until(
        "a watch of the node",
        |_| watches() > 0,
        crate::common::TIMEOUT,
    )
    .await;

    stub.fail_requests(true);
    stub.set_label(STATE, Some("pending"));
    write_topology(&topology, "all-1g.5gb");
    stub.set_label(STATE, Some("success"));
    // The daemon's reads fail for a while (two answered 500, with a back-off
    // between them), then the API server answers again.
    stub.wait_until(
        "two failed requests",
        |s| s.failed_requests() >= 2,
        crate::common::TIMEOUT,
    )
    .await;
    stub.fail_requests(false);

    wait_for(&kubelet, &expect(&[("nvidia.com/mig-1g.5gb", 14)])).await;
    wait_for_log(&log, "were not watched for a while").await;
    assert_idle(&daemon).await;
    kubelet.shutdown().await;
}

/// `pending` and `success` arrive in one read of the watch (MIG Manager
/// was quick): the daemon may see only `success`, the value it had. The
/// labels changed all the same, so the GPUs are rediscovered, in every
/// round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_steps_that_arrive_together_are_acted_on() {
    let dir = temp_dir();
    let topology = aside(dir.path()).join("inventory.json");
    write_topology(&topology, "all-balanced");
    let stub = KubeStub::start("n1", &[(STATE, "success")], json!([])).await;
    let kubelet = kubelet(dir.path()).await;
    let (daemon, _log) = start_following(dir.path(), &topology, &stub);
    wait_for(&kubelet, &balanced()).await;
    // Each round is a change the daemon misses about half the time when it
    // follows transitions; six in a row are all but certain to show it.
    for round in 0..6 {
        let (layout, want) = if round % 2 == 0 {
            ("all-1g.5gb", expect(&[("nvidia.com/mig-1g.5gb", 14)]))
        } else {
            ("all-balanced", balanced())
        };
        write_topology(&topology, layout);
        stub.set_labels_at_once(&[(STATE, Some("pending")), (STATE, Some("success"))]);
        wait_for(&kubelet, &want).await;
    }
    assert_idle(&daemon).await;
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
    // (The published MIG state may be written meanwhile: only the taint counts.)
    assert!(
        stub.patches().iter().all(|p| p.body.get("spec").is_none()),
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
