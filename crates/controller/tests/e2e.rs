//! End to end: the real `gpu-slicer-controller` binary against the stub API
//! server (testing/kube-stub), with real node daemons (`gpu-slicer-daemon
//! --apply-mig-layouts`) on the fake NVML and stand-in kubelets. Outcomes
//! and counts are asserted, never timings; every wait is for an outcome,
//! bounded by a deadline far above what an idle machine needs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gpu_slicer_core::gpu::simulated;
use kube_stub::KubeStub;
use kubelet_sim::{Capacity, Container, Kubelet, Options, Pod};
use serde_json::{Value, json};

const CONTROLLER: &str = env!("CARGO_BIN_EXE_gpu-slicer-controller");
/// Generous: CI machines are slow and shared; nothing here is a timing test.
const TIMEOUT: Duration = Duration::from_secs(120);
const TARGET: &str = "gpu-slicer.io/mig-target";
const STATE_LABEL: &str = "nvidia.com/mig.config.state";
const MIG_STATE: &str = "gpu-slicer.io/mig-state";
const ONE_G: &str = "nvidia.com/mig-1g.5gb";
const THREE_G: &str = "nvidia.com/mig-3g.20gb";
const SEVEN_G: &str = "nvidia.com/mig-7g.40gb";
const NAMESPACE: &str = "gpu-slicer";

/// A child process, stopped with SIGTERM (then killed) when dropped.
struct Process(Child);

impl Process {
    fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        self.0.wait().expect("wait for the child")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.terminate();
        }
    }
}

fn temp_dir() -> tempfile::TempDir {
    // Short paths: Unix socket paths are limited to 107 bytes.
    tempfile::Builder::new()
        .prefix("gsc")
        .tempdir_in("/tmp")
        .expect("temp dir")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The node daemon's binary (another package's: cargo test builds only
/// this package's binaries).
fn daemon_binary() -> PathBuf {
    test_artifacts::built("gpu-slicer-daemon")
}

fn fake_nvml() -> PathBuf {
    test_artifacts::built("libfake_nvml.so")
}

fn logs() -> Stdio {
    // GPU_SLICER_TEST_LOGS=1 shows the processes' logs when debugging.
    if std::env::var_os("GPU_SLICER_TEST_LOGS").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    }
}

/// One GPU node: a stand-in kubelet and the node daemon on the fake NVML,
/// its GPUs those of a p4d.24xlarge cut `all-1g.5gb`.
struct GpuNode {
    dir: tempfile::TempDir,
    topology: PathBuf,
    pod_resources: PathBuf,
    kubelet: Kubelet,
    daemon: Option<Process>,
    name: String,
}

impl GpuNode {
    async fn start(stub: &KubeStub, name: &str) -> GpuNode {
        let dir = temp_dir();
        let files = dir.path().join("files");
        std::fs::create_dir_all(&files).expect("files dir");
        let topology = files.join("inventory.json");
        let inventory = simulated::from_instance("p4d.24xlarge", Some("all-1g.5gb")).expect("p4d");
        std::fs::write(&topology, serde_json::to_string(&inventory).expect("json"))
            .expect("write topology");
        let pod_resources = files.join("pod-resources").join("kubelet.sock");
        let kubelet = Kubelet::start(Options {
            pod_resources_socket: Some(pod_resources.clone()),
            ..Options::new(dir.path())
        })
        .await
        .expect("stand-in kubelet");
        let mut node = GpuNode {
            dir,
            topology,
            pod_resources,
            kubelet,
            daemon: None,
            name: name.to_string(),
        };
        node.start_daemon(stub);
        node.wait_for(&[(ONE_G, 56)]).await;
        node
    }

    fn start_daemon(&mut self, stub: &KubeStub) {
        let child = Command::new(daemon_binary())
            .arg("run")
            .arg("--device-plugin-path")
            .arg(self.dir.path())
            .args(["--nvml-lib", fake_nvml().to_str().expect("utf-8")])
            .args(["--mig-strategy", "mixed", "--node-name", &self.name])
            .args(["--kube-api-url", &stub.url, "--apply-mig-layouts"])
            .args(["--metrics-address", &format!("127.0.0.1:{}", free_port())])
            .args(["--mig-apply-retry-ms", "200"])
            .arg("--pod-resources-socket")
            .arg(&self.pod_resources)
            .env("FAKE_NVML_TOPOLOGY", &self.topology)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(logs())
            .spawn()
            .expect("start gpu-slicer-daemon");
        self.daemon = Some(Process(child));
    }

    fn stop_daemon(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            daemon.terminate();
        }
    }

    /// Waits until the node advertises exactly `want`, all allocatable.
    async fn wait_for(&self, want: &[(&str, usize)]) {
        let want: BTreeMap<String, usize> = want.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let target = want.clone();
        self.kubelet
            .wait_until(
                move |status: &BTreeMap<String, Capacity>| {
                    status
                        .iter()
                        .filter(|(_, c)| c.capacity > 0)
                        .map(|(k, c)| (k.clone(), c.allocatable))
                        .collect::<BTreeMap<_, _>>()
                        == target
                },
                TIMEOUT,
            )
            .await
            .unwrap_or_else(|e| panic!("node never advertised {want:?}: {e}"));
    }

    /// Every MIG device of the fake driver: (GPU, GPU instance id, UUID).
    fn driver_instances(&self) -> BTreeSet<(usize, u64, String)> {
        let node: Value =
            serde_json::from_str(&std::fs::read_to_string(&self.topology).expect("read"))
                .expect("json");
        let mut all = BTreeSet::new();
        for (g, gpu) in node["gpus"].as_array().expect("GPUs").iter().enumerate() {
            for d in gpu["mig_devices"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[])
            {
                all.insert((
                    g,
                    d["gpu_instance_id"].as_u64().expect("GI id"),
                    d["uuid"].as_str().expect("uuid").to_string(),
                ));
            }
        }
        all
    }
}

/// The controller binary against the stub, deciding at once (no batch
/// window, no hysteresis: the tests check what is decided, not when).
fn start_controller(stub: &KubeStub, dir: &Path, identity: &str) -> (Process, String) {
    let kubeconfig = dir.join(format!("kubeconfig-{identity}"));
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "stub", "cluster": {"server": stub.url}}],
        "users": [{"name": "test", "user": {}}],
        "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "test"}}],
        "current-context": "stub",
    });
    std::fs::write(&kubeconfig, config.to_string()).expect("kubeconfig");
    let metrics = format!("127.0.0.1:{}", free_port());
    let child = Command::new(CONTROLLER)
        .args(["--namespace", NAMESPACE, "--identity", identity])
        .args(["--batch-timeout-seconds", "0", "--batch-idle-seconds", "0"])
        .args(["--min-free-age-seconds", "0", "--metrics-address", &metrics])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(Stdio::null())
        .stderr(logs())
        .spawn()
        .expect("start gpu-slicer-controller");
    (Process(child), metrics)
}

/// A metric's value from `/metrics` on `address`, when it answers.
fn metric(address: &str, name: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Scrapes until `name` reaches `at_least` (the controller is another
/// process: there is no event to wait on).
async fn wait_for_metric(address: &str, name: &str, at_least: f64) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    while std::time::Instant::now() < deadline {
        if metric(address, name).is_some_and(|v| v >= at_least) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name} never reached {at_least}");
}

fn pending_pod(name: &str, resource: &str, count: u32) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "ml"},
        "spec": {"containers": [{"name": "main", "resources": {
            "limits": {resource: count.to_string()}, "requests": {resource: count.to_string()}}}]},
        "status": {"phase": "Pending"},
    })
}

/// The MIG-target PATCHes the controller sent.
fn target_patches(stub: &KubeStub) -> Vec<(String, String)> {
    stub.patches()
        .iter()
        .filter_map(|p| {
            p.body["metadata"]["annotations"][TARGET]
                .as_str()
                .map(|t| (p.node.clone(), t.to_string()))
        })
        .collect()
}

async fn p4d_stub() -> KubeStub {
    KubeStub::start(
        "n1",
        &[("node.kubernetes.io/instance-type", "p4d.24xlarge")],
        json!([]),
    )
    .await
}

/// A pod holds one 1g.5gb on `node`; returns its device once the node's
/// published state shows it held.
async fn hold_one_1g(stub: &KubeStub, node: &GpuNode) -> String {
    let pod = Pod::new("infer").container(Container::new("main").limit(ONE_G, 1));
    node.kubelet.admit(&pod).await.expect("admitted");
    let held = node
        .kubelet
        .allocated(ONE_G)
        .into_iter()
        .next()
        .expect("one device held");
    stub.wait_until(
        "the held instance in the published state",
        |s| {
            s.annotation_on(&node.name, MIG_STATE)
                .is_some_and(|a| a.contains(&held) && a.contains("\"held\":true"))
        },
        TIMEOUT,
    )
    .await;
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_3g_pod_gets_a_3g_cut_from_free_1g_slices_and_a_layout_that_cannot_be_made_changes_nothing()
 {
    let stub = p4d_stub().await;
    stub.add_node(
        "n2",
        &[("node.kubernetes.io/instance-type", "p4d.24xlarge")],
        json!([]),
    );
    let nodes = [
        GpuNode::start(&stub, "n1").await,
        GpuNode::start(&stub, "n2").await,
    ];
    let held = hold_one_1g(&stub, &nodes[0]).await;
    let before: Vec<_> = nodes.iter().map(GpuNode::driver_instances).collect();
    let held_instance = before[0]
        .iter()
        .find(|(_, _, uuid)| *uuid == held)
        .cloned()
        .expect("the held device is a MIG device");

    stub.create_pod(pending_pod("train", THREE_G, 1));
    let dir = temp_dir();
    let (_controller, metrics) = start_controller(&stub, dir.path(), "a");

    // Three free 1g (memory slices 4-6) give way to a 3g at slice 4 on one
    // GPU of one node; its daemon applies it and advertises the 3g.
    stub.wait_until("a target", |s| !target_patches(s).is_empty(), TIMEOUT)
        .await;
    let patches = target_patches(&stub);
    assert_eq!(patches.len(), 1, "one target written: {patches:?}");
    let changed = nodes
        .iter()
        .position(|n| n.name == patches[0].0)
        .expect("a target for one of the nodes");
    let other = 1 - changed;
    nodes[changed].wait_for(&[(ONE_G, 53), (THREE_G, 1)]).await;
    stub.wait_until(
        "state success",
        |s| s.label_on(&nodes[changed].name, STATE_LABEL).as_deref() == Some("success"),
        TIMEOUT,
    )
    .await;
    let after: Vec<_> = nodes.iter().map(GpuNode::driver_instances).collect();
    assert!(
        after[0].contains(&held_instance),
        "the held instance is untouched"
    );
    let destroyed: Vec<_> = before[changed].difference(&after[changed]).collect();
    let created: Vec<_> = after[changed].difference(&before[changed]).collect();
    assert_eq!(destroyed.len(), 3, "three free 1g destroyed: {destroyed:?}");
    assert_eq!(created.len(), 1, "one 3g created: {created:?}");
    assert!(
        destroyed.iter().all(|(g, _, _)| *g == created[0].0),
        "only the GPU of the 3g changed"
    );
    assert_eq!(
        after[other]
            .symmetric_difference(&before[other])
            .collect::<Vec<_>>(),
        Vec::<&(usize, u64, String)>::new(),
        "the other node is untouched"
    );
    nodes[other].wait_for(&[(ONE_G, 56)]).await;

    // The scheduler binds the pod; the kubelet admits it onto the 3g.
    stub.bind_pod("ml", "train", &nodes[changed].name);
    let train = Pod::new("train").container(Container::new("main").limit(THREE_G, 1));
    nodes[changed]
        .kubelet
        .admit(&train)
        .await
        .expect("the 3g pod is admitted");
    wait_for_metric(&metrics, "gpu_slicer_controller_pods_unblocked_total", 1.0).await;
    assert_eq!(
        metric(&metrics, "gpu_slicer_controller_reconfigurations_total"),
        Some(1.0)
    );

    // Nine 7g on one node: no node has nine GPUs, so no plan serves it;
    // passes run, nothing is written or changed.
    let decided = metric(&metrics, "gpu_slicer_controller_decisions_total").expect("decisions");
    stub.create_pod(pending_pod("big", SEVEN_G, 9));
    wait_for_metric(
        &metrics,
        "gpu_slicer_controller_decisions_total",
        decided + 3.0,
    )
    .await;
    assert_eq!(
        target_patches(&stub).len(),
        1,
        "no target for what cannot be made"
    );
    let last: Vec<_> = nodes.iter().map(GpuNode::driver_instances).collect();
    assert_eq!(last, after, "nothing changed");
    nodes[changed].wait_for(&[(ONE_G, 53), (THREE_G, 1)]).await;
    nodes[other].wait_for(&[(ONE_G, 56)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_restarted_mid_change_converges_without_a_second_change() {
    let stub = p4d_stub().await;
    let mut node = GpuNode::start(&stub, "n1").await;
    hold_one_1g(&stub, &node).await;
    let before = node.driver_instances();
    // The node daemon is down: the target written stays unapplied.
    node.stop_daemon();

    stub.create_pod(pending_pod("train", THREE_G, 1));
    let dir = temp_dir();
    let (mut first, _) = start_controller(&stub, dir.path(), "first");
    stub.wait_until("a target", |s| !target_patches(s).is_empty(), TIMEOUT)
        .await;
    assert!(
        first.terminate().success(),
        "the controller exits cleanly on SIGTERM"
    );
    stub.wait_until(
        "the Lease given up",
        |s| {
            s.lease(NAMESPACE, "gpu-slicer-controller")
                .is_some_and(|l| l["spec"]["holderIdentity"].is_null())
        },
        TIMEOUT,
    )
    .await;

    // A new controller takes over while the change is not applied: the
    // node is frozen, nothing more is written.
    let (_second, metrics) = start_controller(&stub, dir.path(), "second");
    wait_for_metric(&metrics, "gpu_slicer_controller_decisions_total", 3.0).await;
    assert_eq!(
        target_patches(&stub).len(),
        1,
        "no second target while the first is pending"
    );
    assert_eq!(
        stub.lease(NAMESPACE, "gpu-slicer-controller")
            .expect("lease")["spec"]["holderIdentity"],
        "second"
    );
    // A third replica stays standby while the second renews the Lease.
    let (_third, standby) = start_controller(&stub, dir.path(), "third");
    wait_for_metric(&standby, "gpu_slicer_controller_leader", 0.0).await;
    let renewals = stub.lease_writes().len();
    stub.wait_until(
        "three renewals by the leader",
        |s| s.lease_writes().len() >= renewals + 3,
        TIMEOUT,
    )
    .await;
    assert!(
        stub.lease_writes()[renewals..]
            .iter()
            .all(|l| l["spec"]["holderIdentity"] == "second"),
        "only the leader writes the Lease"
    );
    assert_eq!(metric(&standby, "gpu_slicer_controller_leader"), Some(0.0));

    // The node daemon comes back and applies the one target.
    node.start_daemon(&stub);
    node.wait_for(&[(ONE_G, 53), (THREE_G, 1)]).await;
    stub.wait_until(
        "state success",
        |s| s.label(STATE_LABEL).as_deref() == Some("success"),
        TIMEOUT,
    )
    .await;
    let decided = metric(&metrics, "gpu_slicer_controller_decisions_total").expect("decisions");
    wait_for_metric(
        &metrics,
        "gpu_slicer_controller_decisions_total",
        decided + 3.0,
    )
    .await;
    let after = node.driver_instances();
    assert_eq!(
        before.difference(&after).count(),
        3,
        "one change: three 1g destroyed"
    );
    assert_eq!(
        after.difference(&before).count(),
        1,
        "one change: one 3g created"
    );
    assert_eq!(
        target_patches(&stub).len(),
        1,
        "converged on the first target"
    );
}

/// Karpenter is launching a node whose slices serve the pending pod (its
/// NodeClaim's overlaid capacity names 3g slices): the controller re-cuts
/// nothing for it, pass after pass, though free 1g could make a 3g. Once
/// the NodeClaim is gone (the launch given up), the next pass re-cuts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_karpenter_is_launching_a_node_for_drives_no_recut_until_the_launch_is_gone() {
    let stub = p4d_stub().await;
    stub.serve_nodeclaims();
    stub.put_nodeclaim(json!({
        "apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
        "metadata": {"name": "gpu-x7k2p"},
        "spec": {"resources": {"requests": {THREE_G: "1"}}},
        "status": {
            "capacity": {"cpu": "96", THREE_G: "16"},
            "conditions": [{"type": "Launched", "status": "True"}],
        },
    }));
    let node = GpuNode::start(&stub, "n1").await;
    stub.create_pod(pending_pod("train", THREE_G, 1));
    let dir = temp_dir();
    let (_controller, metrics) = start_controller(&stub, dir.path(), "a");
    wait_for_metric(&metrics, "gpu_slicer_controller_decisions_total", 3.0).await;
    assert_eq!(
        target_patches(&stub),
        Vec::<(String, String)>::new(),
        "no re-cut for a pod Karpenter is launching a node for"
    );
    stub.delete_nodeclaim("gpu-x7k2p");
    stub.wait_until("a target", |s| !target_patches(s).is_empty(), TIMEOUT)
        .await;
    node.wait_for(&[(ONE_G, 53), (THREE_G, 1)]).await;
    assert_eq!(target_patches(&stub).len(), 1);
}
