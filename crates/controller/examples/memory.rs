//! The controller's memory at cluster scale (a benchmark, not a test):
//! 1,000 GPU nodes (8,000 GPUs: a third each p4d.24xlarge A100-40GB,
//! p5.48xlarge H100, p5e.48xlarge H200, every GPU in the balanced layout
//! with about 70 % of its instances held, as the core's decision benchmark)
//! and 10,000 pending pods (70 % 1g, 20 % 2g, 10 % 3g of the three models;
//! 1 % asking for two slices), fed as the watches deliver them: each object
//! as JSON text, decoded into k8s-openapi's Node or Pod, read into the
//! controller's stores, then dropped. Then one pass decides on it all.
//! Reports the resident set (VmRSS) after each step and its peak (VmHWM).
//!
//! Then the real thing: the release `gpu-slicer-controller` binary (built
//! first when missing) against the stub API server (testing/kube-stub)
//! serving the same 1,000 Nodes and 10,000 Pods, listed in pages and
//! watched as from an API server; once it has decided three times (and
//! written its targets), its VmRSS and VmHWM are read from /proc.
//!
//! ```sh
//! cargo run --release -p gpu-slicer-controller --example memory
//! ```
//!
//! The objects carry what real ones carry around the fields the controller
//! reads (a Node's images, conditions, capacity and many labels; a Pod's
//! managedFields, environment and labels), so the decoding costs what it
//! costs in a cluster; what is kept is the controller's own small entries.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gpu_slicer_controller::pass::{self, FirstSeen};
use gpu_slicer_controller::store::{self, PodRead, Store};
use gpu_slicer_core::gpu::catalog;
use gpu_slicer_core::mig_state::{self, GpuMigState, InstanceState};
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{Value, json};

const NODES: usize = 1_000;
const PODS: usize = 10_000;
const MODELS: [(&str, &str, [&str; 3]); 3] = [
    (
        "A100-40GB",
        "p4d.24xlarge",
        ["1g.5gb", "2g.10gb", "3g.20gb"],
    ),
    (
        "H100-80GB",
        "p5.48xlarge",
        ["1g.10gb", "2g.20gb", "3g.40gb"],
    ),
    ("H200", "p5e.48xlarge", ["1g.18gb", "2g.35gb", "3g.71gb"]),
];

/// A fixed-seed generator (xorshift64*): the same cluster every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn status_kib(field: &str) -> u64 {
    process_kib("self", field)
}

fn process_kib(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn report(step: &str) {
    println!(
        "{step:<44} VmRSS {:>7.1} MiB  VmHWM {:>7.1} MiB",
        status_kib("VmRSS:") as f64 / 1024.0,
        status_kib("VmHWM:") as f64 / 1024.0
    );
}

fn node_object(n: usize, rng: &mut Rng) -> Value {
    let (model_key, instance_type, _) = MODELS[n % 3];
    let model = catalog::model(model_key).expect("a catalog model");
    let Ok(catalog::MigLayout::Instances(profiles)) = catalog::layout(model, "all-balanced") else {
        panic!("the balanced layout has instances");
    };
    let placed = catalog::place(model, &profiles).expect("placed");
    let gpus: Vec<GpuMigState> = (0..8)
        .map(|g| GpuMigState {
            index: Some(g),
            mig: true,
            instances: placed
                .iter()
                .enumerate()
                .map(|(i, p)| InstanceState {
                    profile: p.profile.name.to_string(),
                    start: p.start,
                    devices: vec![format!(
                        "MIG-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                        n,
                        g,
                        i,
                        0,
                        rng.next() & 0xffff_ffff_ffff
                    )],
                    held: Some(rng.below(10) < 7),
                })
                .collect(),
        })
        .collect();
    let state = mig_state::render(&gpus).expect("a state within bounds");
    let mut labels = serde_json::Map::new();
    labels.insert(
        "node.kubernetes.io/instance-type".into(),
        instance_type.into(),
    );
    labels.insert("karpenter.sh/nodepool".into(), "gpu".into());
    labels.insert("karpenter.sh/initialized".into(), "true".into());
    labels.insert("nvidia.com/mig.config.state".into(), "success".into());
    for k in 0..40 {
        labels.insert(
            format!("example.com/label-{k}"),
            format!("value-{k}").into(),
        );
    }
    let images: Vec<Value> = (0..30)
        .map(|i| {
            json!({"names": [format!("registry.example.com/team/image-{i}@sha256:{:064x}", i),
                             format!("registry.example.com/team/image-{i}:v1.{i}")],
                   "sizeBytes": 100_000_000 + i})
        })
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": format!("ip-10-0-{}-{}.ec2.internal", n / 250, n % 250),
            "uid": format!("{:032x}", n),
            "resourceVersion": (1000 + n).to_string(),
            "creationTimestamp": "2026-12-07T00:00:00Z",
            "labels": labels,
            "annotations": {
                "gpu-slicer.io/mig-state": state,
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
        },
        "spec": {"providerID": format!("aws:///us-east-1a/i-{:017x}", n)},
        "status": {
            "capacity": {"cpu": "96", "memory": "1176933416Ki", "pods": "737",
                         "nvidia.com/mig-1g.5gb": "16", "nvidia.com/mig-2g.10gb": "8",
                         "nvidia.com/mig-3g.20gb": "8"},
            "allocatable": {"cpu": "95690m", "memory": "1167867432Ki", "pods": "737"},
            "conditions": [
                {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory"},
                {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure"},
                {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID"},
                {"type": "Ready", "status": "True", "reason": "KubeletReady"},
            ],
            "images": images,
            "nodeInfo": {"kubeletVersion": "v1.33.5-eks", "containerRuntimeVersion": "containerd://1.7.27",
                         "kernelVersion": "6.1.141", "osImage": "Amazon Linux 2023",
                         "architecture": "amd64", "operatingSystem": "linux",
                         "machineID": "m", "systemUUID": "s", "bootID": "b",
                         "kubeProxyVersion": ""},
        },
    })
}

fn pod_object(k: usize, rng: &mut Rng) -> Value {
    let profiles = MODELS[rng.below(3) as usize].2;
    let r = rng.below(100);
    let profile = profiles[if r < 70 {
        0
    } else if r < 90 {
        1
    } else {
        2
    }];
    let count = if rng.below(100) == 0 { 2 } else { 1 };
    let resource = format!("nvidia.com/mig-{profile}");
    let env: Vec<Value> = (0..20)
        .map(|e| json!({"name": format!("SETTING_{e}"), "value": format!("value-{e}-{k}")}))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("inference-{k}-{:05x}", rng.below(1 << 20)),
            "namespace": format!("team-{}", k % 20),
            "uid": format!("{:032x}", k),
            "resourceVersion": (100_000 + k).to_string(),
            "creationTimestamp": "2026-12-07T00:00:00Z",
            "labels": {"app": format!("inference-{}", k % 50), "pod-template-hash": "5d8f7c6b9",
                       "team": format!("team-{}", k % 20)},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                 "name": format!("inference-{}-5d8f7c6b9", k % 50),
                                 "uid": format!("{:032x}", k % 50), "controller": true}],
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
                               "apiVersion": "v1", "time": "2026-12-07T00:00:00Z",
                               "fieldsType": "FieldsV1",
                               "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                                            "f:spec": {"f:containers": {"k:{\"name\":\"main\"}": {".": {}, "f:env": {}}}}}}],
        },
        "spec": {
            "containers": [{
                "name": "main",
                "image": "registry.example.com/team/inference:v1.2.3",
                "args": ["--model", "/models/m", "--port", "8000"],
                "env": env,
                "resources": {"limits": {resource.clone(): count.to_string(), "memory": "16Gi"},
                              "requests": {resource: count.to_string(), "cpu": "2", "memory": "16Gi"}},
                "volumeMounts": [{"name": "models", "mountPath": "/models"}],
            }],
            "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": "models"}}],
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "schedulerName": "default-scheduler",
        },
        "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                   "reason": "Unschedulable",
                   "message": format!("0/1000 nodes are available: 1000 Insufficient {profile}.")}]},
    })
}

fn main() {
    in_process();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(real_binary());
}

/// The release controller binary beside this example (built when missing).
fn controller_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("this example's path");
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("the profile directory");
    let binary = profile.join("gpu-slicer-controller");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--quiet", "-p", "gpu-slicer-controller", "--bin"])
        .arg("gpu-slicer-controller")
        .arg("--target-dir")
        .arg(profile.parent().expect("target dir"));
    if profile.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    assert!(
        build.status().expect("run cargo").success(),
        "cargo build failed"
    );
    binary
}

fn metric(address: &str, name: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

async fn real_binary() {
    let binary = controller_binary();
    let mut rng = Rng(0x5EED_2024);
    let stub = kube_stub::KubeStub::start("unused-cpu-node", &[], json!([])).await;
    for n in 0..NODES {
        stub.create_node(node_object(n, &mut rng));
    }
    for k in 0..PODS {
        stub.create_pod(pod_object(k, &mut rng));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "stub", "cluster": {"server": stub.url}}],
        "users": [{"name": "bench", "user": {}}],
        "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "bench"}}],
        "current-context": "stub",
    });
    std::fs::write(&kubeconfig, config.to_string()).expect("kubeconfig");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let metrics = format!("127.0.0.1:{port}");
    let mut child = Command::new(&binary)
        .args(["--namespace", "bench", "--identity", "bench"])
        .args(["--batch-timeout-seconds", "0", "--batch-idle-seconds", "0"])
        .args(["--min-free-age-seconds", "0", "--metrics-address", &metrics])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the controller");
    let pid = child.id().to_string();
    let deadline = Instant::now() + Duration::from_secs(600);
    while metric(&metrics, "gpu_slicer_controller_decisions_total").unwrap_or(0.0) < 3.0 {
        assert!(
            Instant::now() < deadline,
            "the controller never decided three times"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let targets = stub
        .patches()
        .iter()
        .filter(|p| p.body["metadata"]["annotations"]["gpu-slicer.io/mig-target"].is_string())
        .count();
    println!(
        "{:<44} VmRSS {:>7.1} MiB  VmHWM {:>7.1} MiB",
        "gpu-slicer-controller, after 3 decisions",
        process_kib(&pid, "VmRSS:") as f64 / 1024.0,
        process_kib(&pid, "VmHWM:") as f64 / 1024.0
    );
    println!(
        "the binary wrote {targets} targets; reconfigurations_total {}",
        metric(&metrics, "gpu_slicer_controller_reconfigurations_total").unwrap_or(0.0)
    );
    let _ = Command::new("kill").arg("-TERM").arg(&pid).status();
    let _ = child.wait();
}

/// The controller's stores and one pass, in this process.
fn in_process() {
    report("start");
    let mut rng = Rng(0x5EED_2024);
    let mut nodes = Store::new(store::MAX_NODES);
    nodes.init();
    for n in 0..NODES {
        // As the watch delivers it: text, decoded, read, dropped.
        let text = node_object(n, &mut rng).to_string();
        let node: Node = serde_json::from_str(&text).expect("a Node");
        let name = node.metadata.name.clone().unwrap_or_default();
        nodes.init_apply(name, Some(store::read_node(&node)));
    }
    nodes.init_done();
    report("1,000 nodes in the store");
    let mut pods = Store::new(store::MAX_PENDING_PODS);
    let mut placements = store::Placements::default();
    pods.init();
    for k in 0..PODS {
        let text = pod_object(k, &mut rng).to_string();
        let pod: Pod = serde_json::from_str(&text).expect("a Pod");
        let PodRead::Pending(mut entry) = store::read_pod(&pod) else {
            panic!("every generated pod is pending and asks for MIG slices");
        };
        // As the pod watch does: one copy of each placement.
        entry.placement = placements.intern(entry.placement);
        pods.init_apply(store::pod_key(&pod), Some(entry));
    }
    pods.init_done();
    report("10,000 pending pods in the store");
    let started = Instant::now();
    let outcome = pass::run(
        nodes.items(),
        pods.items(),
        &BTreeMap::new(),
        &HashMap::new(),
        &mut FirstSeen::default(),
        1_796_601_600,
        0,
    );
    let took = started.elapsed();
    report("after one pass");
    println!(
        "pass: {} pending, {} fit now, {} unlocked, {} targets, {} nodes left out, in {:.0} ms",
        outcome.pending,
        outcome.fit_now,
        outcome.unlocked.len(),
        outcome.targets.len(),
        outcome.left_out.len(),
        took.as_secs_f64() * 1000.0
    );
    assert!(
        outcome.left_out.is_empty(),
        "every node is read: {:?}",
        outcome.left_out.first()
    );
}
