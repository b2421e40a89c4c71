//! Failing closed, never a zombie: a GPU that cannot be read at start, a GPU
//! whose calls start failing at run time, and NVML failing the event set.
//! Each ends with exactly the affected devices unhealthy or unadvertised, the
//! others serving, a log line and a metric saying so, and recovery when the
//! GPU answers again. The fake NVML re-reads `FAKE_NVML_FAIL_FILE` on every
//! call, so a test can break and mend a GPU while the daemon runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kubelet_sim::Capacity;

use crate::common::{
    TIMEOUT, aside, expect, fake_nvml, free_port, kubelet, scrape, start_logged, temp_dir,
    wait_for, wait_for_log, wait_for_metric_line,
};
use gpu_slicer_core::gpu::{Inventory, simulated};

/// Eight A10G GPUs (g5.48xlarge), advertised whole.
struct Node {
    dir: tempfile::TempDir,
    inventory: Inventory,
    topology: PathBuf,
    events: PathBuf,
    failures: PathBuf,
    gpu_state: PathBuf,
    metrics: String,
}

impl Node {
    fn new() -> Node {
        let dir = temp_dir();
        let inventory = simulated::from_instance("g5.48xlarge", None).expect("simulated");
        let topology = aside(dir.path()).join("inventory.json");
        std::fs::write(&topology, serde_json::to_string(&inventory).expect("json")).expect("write");
        let events = aside(dir.path()).join("events");
        std::fs::write(&events, "").expect("events file");
        let failures = aside(dir.path()).join("failures");
        let gpu_state = aside(dir.path()).join("gpu-state");
        Node {
            dir,
            inventory,
            topology,
            events,
            failures,
            gpu_state,
            metrics: format!("127.0.0.1:{}", free_port()),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// What the fake NVML fails from now on (empty: nothing).
    fn fail(&self, spec: &str) {
        let staged = self.failures.with_extension("new");
        std::fs::write(&staged, spec).expect("write failures");
        std::fs::rename(&staged, &self.failures).expect("rename failures");
    }

    fn start(&self, failing: &str) -> (crate::common::Daemon, PathBuf) {
        self.start_probing(failing, 100)
    }

    /// [`Node::start`] with every GPU probed each `probe_ms`.
    fn start_probing(&self, failing: &str, probe_ms: u64) -> (crate::common::Daemon, PathBuf) {
        self.fail(failing);
        let lib = fake_nvml();
        let probe = format!("--health-probe-ms={probe_ms}");
        start_logged(
            self.path(),
            &[
                "--nvml-lib",
                lib.to_str().expect("utf-8"),
                &probe,
                "--metrics-address",
                &self.metrics,
            ],
            &[
                ("FAKE_NVML_TOPOLOGY", self.topology.to_str().expect("utf-8")),
                ("FAKE_NVML_EVENTS", self.events.to_str().expect("utf-8")),
                (
                    "FAKE_NVML_FAIL_FILE",
                    self.failures.to_str().expect("utf-8"),
                ),
                (
                    "FAKE_NVML_GPU_STATE_FILE",
                    self.gpu_state.to_str().expect("utf-8"),
                ),
            ],
        )
    }

    /// What the driver says the GPUs need (`<gpu> row-remap-pending` lines;
    /// empty: nothing), as after an ECC fault until the GPU is reset.
    fn driver_state(&self, text: &str) {
        let staged = self.gpu_state.with_extension("new");
        std::fs::write(&staged, text).expect("write GPU state");
        std::fs::rename(&staged, &self.gpu_state).expect("rename GPU state");
    }

    fn uuid(&self, gpu: usize) -> &str {
        &self.inventory.gpus[gpu].uuid
    }

    fn xid(&self, gpu: usize, xid: u64) {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.events)
            .expect("events file");
        writeln!(file, "{} {xid}", self.uuid(gpu)).expect("append event");
    }

    /// The value of a metric line (`name` with its labels), if present.
    fn metric(&self, name: &str) -> Option<f64> {
        scrape(&self.metrics)?.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
    }
}

/// `nvidia.com/gpu` has `capacity` devices of which `healthy` are Healthy.
fn gpus(
    capacity: usize,
    healthy: usize,
) -> impl Fn(&BTreeMap<String, Capacity>) -> bool + Send + 'static {
    move |s| {
        s.get("nvidia.com/gpu")
            .is_some_and(|c| c.capacity == capacity && c.allocatable == healthy)
    }
}

/// Sends XID `xid` for `gpu` until the node reaches `healthy` devices: an
/// XID that happens while the event set is being rebuilt is missed, as
/// with NVML, so one is sent every half second.
async fn xid_until(
    node: &Node,
    kubelet: &kubelet_sim::Kubelet,
    gpu: usize,
    xid: u64,
    healthy: usize,
) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        node.xid(gpu, xid);
        if kubelet
            .wait_until(gpus(8, healthy), Duration::from_millis(500))
            .await
            .is_ok()
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "XID {xid} on GPU {gpu} never reached the node"
        );
    }
}

fn unhealthy(kubelet: &kubelet_sim::Kubelet) -> Vec<String> {
    kubelet
        .devices("nvidia.com/gpu")
        .into_iter()
        .filter(|d| !d.healthy)
        .map(|d| d.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_that_cannot_be_read_at_start_is_left_out_and_served_once_it_answers() {
    let node = Node::new();
    let kubelet = kubelet(node.path()).await;
    // GPU 3 of 8 has fallen off the bus: NVML counts it, every call fails.
    let (mut daemon, log) = node.start("*@3:GPU_IS_LOST");
    wait_for(&kubelet, &expect(&[("nvidia.com/gpu", 7)])).await;
    let line = wait_for_log(&log, "GPU 3 cannot be read and is not advertised").await;
    assert!(
        line.contains("nvmlDeviceGetHandleByIndex_v2 for GPU 3 failed: device fell off the bus"),
        "{line}"
    );
    assert!(line.contains("nvidia-smi -i 3"), "{line}");
    assert!(
        kubelet
            .devices("nvidia.com/gpu")
            .iter()
            .all(|d| d.healthy && !d.id.starts_with(node.uuid(3))),
        "the seven others serve, healthy"
    );
    wait_for_metric_line(&node.metrics, "gpu_slicer_gpus_undiscovered 1").await;
    assert!(
        daemon.child.try_wait().expect("status").is_none(),
        "the daemon exited"
    );

    // The GPU answers again: rediscovery (on its back-off) advertises it.
    node.fail("");
    wait_for(&kubelet, &expect(&[("nvidia.com/gpu", 8)])).await;
    wait_for_log(&log, "GPU 3 answers again; its devices are advertised").await;
    wait_for_metric_line(&node.metrics, "gpu_slicer_gpus_undiscovered 0").await;
    assert!(unhealthy(&kubelet).is_empty());
    assert!(daemon.terminate().success());
    kubelet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_that_stops_answering_turns_unhealthy_alone_and_recovers() {
    let node = Node::new();
    let kubelet = kubelet(node.path()).await;
    let (mut daemon, log) = node.start("");
    kubelet
        .wait_until(gpus(8, 8), TIMEOUT)
        .await
        .expect("8 healthy");

    // GPU 5 falls off the bus while it is registered for events: NVML fails
    // its calls and the event set's wait.
    node.fail("*@5:GPU_IS_LOST");
    kubelet
        .wait_until(gpus(8, 7), TIMEOUT)
        .await
        .expect("GPU 5 unhealthy");
    let bad = unhealthy(&kubelet);
    assert_eq!(bad.len(), 1);
    assert!(bad[0].starts_with(node.uuid(5)), "{bad:?}");
    let line = wait_for_log(&log, "GPU 5 (").await;
    assert!(
        line.contains("nvmlDeviceGetMemoryInfo_v2 failed: device fell off the bus")
            && line.ends_with("marking its devices Unhealthy"),
        "{line}"
    );
    wait_for_metric_line(&node.metrics, "gpu_slicer_gpus_unreachable 1").await;

    // The event set was rebuilt without GPU 5: XIDs of the others still arrive.
    xid_until(&node, &kubelet, 1, 79, 6).await;
    // The rebuild registered and checked the others before the old set went:
    // none of them was ever reported unwatched.
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let others: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("marking its devices Unhealthy") && !l.contains("GPU 5 ("))
        .collect();
    assert!(others.is_empty(), "{others:#?}");

    // GPU 5 answers again: healthy; GPU 1 keeps its reset-class XID.
    node.fail("");
    kubelet
        .wait_until(gpus(8, 7), TIMEOUT)
        .await
        .expect("GPU 5 healthy again");
    let bad = unhealthy(&kubelet);
    assert!(
        bad.len() == 1 && bad[0].starts_with(node.uuid(1)),
        "{bad:?}"
    );
    wait_for_log(&log, "GPU 5 (").await;
    wait_for_metric_line(&node.metrics, "gpu_slicer_gpus_unreachable 0").await;
    // Watched again: an XID on GPU 5 reaches it.
    xid_until(&node, &kubelet, 5, 79, 6).await;
    assert!(daemon.terminate().success());
    kubelet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_set_errors_mark_only_the_gpus_they_concern_and_never_spin() {
    let node = Node::new();
    let kubelet = kubelet(node.path()).await;
    // GPU 2's events cannot be registered: its faults would go unseen, so
    // it is not advertised healthy; the other seven are watched and serve.
    let (mut daemon, log) = node.start("nvmlDeviceRegisterEvents@2:UNKNOWN");
    kubelet
        .wait_until(gpus(8, 7), TIMEOUT)
        .await
        .expect("GPU 2 unhealthy");
    let bad = unhealthy(&kubelet);
    assert!(
        bad.len() == 1 && bad[0].starts_with(node.uuid(2)),
        "{bad:?}"
    );
    let line = wait_for_log(&log, "GPU 2 (").await;
    assert!(
        line.contains("its health cannot be watched: nvmlDeviceRegisterEvents failed"),
        "{line}"
    );
    node.fail("");
    kubelet
        .wait_until(gpus(8, 8), TIMEOUT)
        .await
        .expect("GPU 2 watched and healthy");
    // Watched: its XIDs arrive.
    xid_until(&node, &kubelet, 2, 79, 7).await;
    assert!(daemon.terminate().success());
    kubelet.shutdown().await;
}

/// The GPU's line in `gpu_slicer_gpu_healthy` (dcgm-exporter's labels:
/// `gpu` the NVML index, `UUID`).
fn gpu_healthy(node: &Node, gpu: usize) -> String {
    format!(
        "gpu_slicer_gpu_healthy{{gpu=\"{gpu}\",UUID=\"{}\"}}",
        node.uuid(gpu)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_that_answers_after_start_is_not_healthy_before_its_events_are_watched() {
    let node = Node::new();
    let kubelet = kubelet(node.path()).await;
    // GPU 3 cannot be read at start. Probes are far apart (10 minutes), so
    // the watcher does not register GPU 3 while this test runs: its XIDs
    // would be lost, so it must not be advertised Healthy.
    let (mut daemon, log) = node.start_probing("*@3:GPU_IS_LOST", 600_000);
    wait_for(&kubelet, &expect(&[("nvidia.com/gpu", 7)])).await;
    node.fail("");
    kubelet
        .wait_until(
            |s| s.get("nvidia.com/gpu").is_some_and(|c| c.capacity == 8),
            TIMEOUT,
        )
        .await
        .expect("GPU 3 advertised again");
    let bad = unhealthy(&kubelet);
    assert!(
        bad.len() == 1 && bad[0].starts_with(node.uuid(3)),
        "only GPU 3, whose events are not watched yet, is Unhealthy: {bad:?}"
    );
    // Counted once: advertised (not undiscovered), and unreachable.
    wait_for_metric_line(&node.metrics, "gpu_slicer_gpus_undiscovered 0").await;
    wait_for_metric_line(&node.metrics, "gpu_slicer_gpus_unreachable 1").await;
    wait_for_metric_line(&node.metrics, &format!("{} 0", gpu_healthy(&node, 3))).await;
    wait_for_metric_line(&node.metrics, &format!("{} 1", gpu_healthy(&node, 2))).await;
    assert!(unhealthy(&kubelet).len() == 1, "still not watched");
    assert!(
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("its XID events are not watched yet"),
        "the log says why"
    );
    assert!(daemon.terminate().success());
    kubelet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_event_waits_fail_every_gpu_is_unhealthy_and_each_is_checked_again_after() {
    let node = Node::new();
    let kubelet = kubelet(node.path()).await;
    let (mut daemon, log) = node.start("");
    kubelet
        .wait_until(gpus(8, 8), TIMEOUT)
        .await
        .expect("8 healthy");

    // Every wait fails while every GPU answers: no XID can be seen, so no
    // GPU is advertised Healthy.
    let before = node
        .metric("gpu_slicer_health_check_errors_total{call=\"nvmlEventSetWait_v2\"}")
        .unwrap_or(0.0);
    node.fail("nvmlEventSetWait_v2:UNKNOWN");
    kubelet
        .wait_until(gpus(8, 0), TIMEOUT)
        .await
        .expect("every GPU Unhealthy while its events cannot be read");
    wait_for_log(&log, "waiting for NVML events failed").await;
    wait_for_metric_line(&node.metrics, "gpu_slicer_gpus_unreachable 8").await;
    // Meanwhile GPU 1 takes an ECC fault: its XID is lost with the failed
    // set, as with NVML, but the driver keeps a row remapping pending until
    // the GPU is reset.
    node.xid(1, 48);
    node.driver_state("1 row-remap-pending\n");
    // A wait that keeps failing never spins: the set is rebuilt on a
    // back-off (100 ms doubling: a handful in two seconds; a spinning loop
    // makes thousands).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let failed_waits = node
        .metric("gpu_slicer_health_check_errors_total{call=\"nvmlEventSetWait_v2\"}")
        .expect("wait errors counted")
        - before;
    assert!(
        (1.0..=16.0).contains(&failed_waits),
        "{failed_waits} failed waits in 2 s"
    );

    // The waits work again: each GPU is checked again rather than assumed
    // healthy; GPU 1 stays Unhealthy, the others serve.
    node.fail("");
    kubelet
        .wait_until(gpus(8, 7), TIMEOUT)
        .await
        .expect("seven GPUs watched and healthy again");
    let bad = unhealthy(&kubelet);
    assert!(
        bad.len() == 1 && bad[0].starts_with(node.uuid(1)),
        "{bad:?}"
    );
    let line = wait_for_log(&log, "has a row remapping pending").await;
    assert!(
        line.contains(&format!("GPU 1 ({})", node.uuid(1))),
        "{line}"
    );
    // Watched again: a new XID on GPU 0 is acted on.
    xid_until(&node, &kubelet, 0, 79, 6).await;
    // GPU 1 is reset: the driver no longer holds the remapping pending.
    node.driver_state("");
    kubelet
        .wait_until(gpus(8, 7), TIMEOUT)
        .await
        .expect("GPU 1 healthy after its reset");
    let bad = unhealthy(&kubelet);
    assert!(
        bad.len() == 1 && bad[0].starts_with(node.uuid(0)),
        "{bad:?}"
    );
    assert!(daemon.terminate().success());
    kubelet.shutdown().await;
}

/// CPU time (user + system) the daemon's `nvml-health` thread has used.
fn health_thread_cpu(pid: u32) -> Duration {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the daemon's threads");
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != "nvml-health" {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).expect("thread stat");
        // After the command name in parentheses: state is field 3; utime
        // and stime are fields 14 and 15.
        let rest = stat.rsplit_once(')').expect("stat format").1;
        let fields: Vec<u64> = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|f| f.parse().expect("ticks"))
            .collect();
        // SAFETY: sysconf has no preconditions.
        let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let ticks_per_second = u64::try_from(ticks_per_second).expect("CLK_TCK");
        return Duration::from_millis((fields[0] + fields[1]) * 1000 / ticks_per_second);
    }
    panic!("no nvml-health thread in process {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_that_returns_at_once_does_not_spin_the_health_thread() {
    let node = Node::new();
    let kubelet = kubelet(node.path()).await;
    let (mut daemon, log) = node.start("");
    kubelet
        .wait_until(gpus(8, 8), TIMEOUT)
        .await
        .expect("8 healthy");
    // Every wait returns TIMEOUT at once, as NVML does when interrupted.
    node.fail("nvmlEventSetWait_v2:TIMEOUT");
    // The fake reads its failures on every call: the next wait returns at once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = daemon.child.id();
    let before = health_thread_cpu(pid);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = health_thread_cpu(pid) - before;
    // Paced, the thread makes about 30 waits in 3 s and uses next to no
    // CPU; spinning, it uses whatever share of a core it gets (well over a
    // second on an idle machine, hundreds of ms on a busy one).
    assert!(
        used <= Duration::from_millis(300),
        "the health thread used {used:?} of CPU in 3 s"
    );
    wait_for_log(&log, "before its deadline").await;
    // The set works (a timeout is not a failure): every GPU stays Healthy,
    // and events still arrive between the waits.
    assert!(unhealthy(&kubelet).is_empty());
    xid_until(&node, &kubelet, 4, 79, 7).await;
    assert!(daemon.terminate().success());
    kubelet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_lost_then_left_out_by_rediscovery_is_counted_once() {
    let node = Node::new();
    let kubelet = kubelet(node.path()).await;
    let (mut daemon, _log) = node.start("");
    kubelet
        .wait_until(gpus(8, 8), TIMEOUT)
        .await
        .expect("8 healthy");
    wait_for_metric_line(&node.metrics, &format!("{} 1", gpu_healthy(&node, 5))).await;
    node.fail("*@5:GPU_IS_LOST");
    kubelet
        .wait_until(gpus(8, 7), TIMEOUT)
        .await
        .expect("GPU 5 unhealthy");
    wait_for_metric_line(&node.metrics, "gpu_slicer_gpus_unreachable 1").await;
    wait_for_metric_line(&node.metrics, &format!("{} 0", gpu_healthy(&node, 5))).await;
    // A reload rediscovers the GPUs: GPU 5 cannot be read and is left out.
    // It is undiscovered now, and no longer unreachable: counted once.
    daemon.signal("HUP");
    wait_for(&kubelet, &expect(&[("nvidia.com/gpu", 7)])).await;
    wait_for_metric_line(&node.metrics, "gpu_slicer_gpus_undiscovered 1").await;
    wait_for_metric_line(&node.metrics, "gpu_slicer_gpus_unreachable 0").await;
    let body = scrape(&node.metrics).expect("metrics");
    assert!(
        !body.contains(&gpu_healthy(&node, 5)),
        "a GPU that is not advertised has no health line:\n{body}"
    );
    assert!(
        body.contains(&format!("{} 1", gpu_healthy(&node, 4))),
        "{body}"
    );
    assert!(daemon.terminate().success());
    kubelet.shutdown().await;
}
