//! MPS sharing end to end, against the fake `nvidia-cuda-mps-control`
//! (testing/fake-mps): the control daemon is started and given its limits
//! before the replicas are advertised, a container reaches it through what
//! Allocate returns, its exit turns the devices Unhealthy until it is
//! restarted, and it is stopped on reload and on SIGTERM.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kubelet_sim::{Capacity, Container, Pod};

use crate::common::{
    Daemon, TIMEOUT, aside, fake_mps, free_port, kubelet, start_logged, temp_dir, wait_for_log,
    wait_for_metric_line, write_config,
};
use gpu_slicer_core::gpu::simulated;

const MPS_4: &str = "version: v1\nsharing:\n  mps:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 4\n";

struct Node {
    dir: tempfile::TempDir,
    root: PathBuf,
    metrics: String,
}

impl Node {
    fn new() -> Node {
        let dir = temp_dir();
        let root = aside(dir.path()).join("mps");
        Node {
            dir,
            root,
            metrics: format!("127.0.0.1:{}", free_port()),
        }
    }

    /// `fake_env`: variables for the fake control program (the daemon
    /// starts it with a clean environment, so they go through a wrapper).
    fn start(&self, config: &str, fake_env: &str) -> (Daemon, PathBuf) {
        let config = write_config(self.dir.path(), config);
        let bin = if fake_env.is_empty() {
            fake_mps()
        } else {
            use std::os::unix::fs::PermissionsExt as _;
            let wrapper = aside(self.dir.path()).join("mps-control-wrapper");
            std::fs::write(
                &wrapper,
                format!(
                    "#!/bin/sh\nexec env {fake_env} '{}' \"$@\"\n",
                    fake_mps().display()
                ),
            )
            .expect("wrapper");
            std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
            wrapper
        };
        let root = self.root.to_str().expect("utf-8");
        start_logged(
            self.dir.path(),
            &[
                "--simulate",
                "g5.12xlarge",
                "--config-file",
                config.to_str().expect("utf-8"),
                "--mps-root",
                root,
                "--mps-container-root",
                root,
                "--mps-control-bin",
                bin.to_str().expect("utf-8"),
                "--metrics-address",
                &self.metrics,
            ],
            &[],
        )
    }

    fn resource_dir(&self) -> PathBuf {
        self.root.join("nvidia.com/gpu")
    }

    fn daemon_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.resource_dir().join("pipe/nvidia-cuda-mps-control.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
    }
}

fn gpus(
    capacity: usize,
    healthy: usize,
) -> impl Fn(&std::collections::BTreeMap<String, Capacity>) -> bool {
    move |s| {
        s.get("nvidia.com/gpu")
            .is_some_and(|c| c.capacity == capacity && c.allocatable == healthy)
    }
}

/// Runs the control client as a container would: with the env Allocate
/// gave, its pipe directory mapped to the host path of its mount.
fn ask_as_the_container(
    envs: &std::collections::BTreeMap<String, String>,
    mounts: &[kubelet_sim::api::Mount],
    command: &str,
) -> String {
    use std::io::Write;
    let pipe = &envs["CUDA_MPS_PIPE_DIRECTORY"];
    let host = mounts
        .iter()
        .find(|m| &m.container_path == pipe)
        .map(|m| PathBuf::from(&m.host_path))
        .unwrap_or_else(|| panic!("no mount for {pipe}: {mounts:?}"));
    let mut child = std::process::Command::new(fake_mps())
        .env("CUDA_MPS_PIPE_DIRECTORY", &host)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("control client");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{command}\n").as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("client output");
    assert!(out.status.success(), "client failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
        || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
}

async fn wait_gone(pid: u32) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !gone(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "MPS daemon {pid} still running"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mps_replicas_have_a_ready_daemon_behind_them_from_start_to_sigterm() {
    let node = Node::new();
    let kubelet = kubelet(node.dir.path()).await;
    let (mut daemon, log) = node.start(MPS_4, "");
    kubelet
        .wait_until(gpus(16, 16), TIMEOUT)
        .await
        .expect("16 healthy replicas");

    // Started before the replicas were advertised, with NVIDIA's limits:
    // memory / replicas per GPU, 100 / replicas percent of the SMs.
    let inventory = simulated::from_instance("g5.12xlarge", None).expect("g5");
    // The control daemon's log (its standard output) is in ours.
    let control = std::fs::read_to_string(&log).expect("log");
    for ordinal in 0..4 {
        let line = format!(
            "Cmd:set_default_device_pinned_mem_limit {ordinal} {}M",
            inventory.gpus[ordinal].memory_mib / 4
        );
        assert!(control.contains(&line), "{line} missing from:\n{control}");
    }
    assert!(
        control.contains("Cmd:set_default_active_thread_percentage 25"),
        "{control}"
    );
    let env = std::fs::read_to_string(node.resource_dir().join("log/fake-mps.env")).expect("env");
    let uuids: Vec<&str> = inventory.gpus.iter().map(|g| g.uuid.as_str()).collect();
    assert!(
        env.contains(&format!("CUDA_VISIBLE_DEVICES={}", uuids.join(","))),
        "{env}"
    );
    assert!(env.contains("CUDA_DEVICE_ORDER=PCI_BUS_ID"), "{env}");
    wait_for_metric_line(
        &node.metrics,
        "gpu_slicer_mps_daemon_ready{resource=\"nvidia.com/gpu\"} 1",
    )
    .await;

    // A container started from Allocate's answer reaches the daemon.
    let pod = Pod::new("mps").container(Container::new("main").limit("nvidia.com/gpu", 1));
    let admission = kubelet.admit(&pod).await.expect("admitted");
    let merged = &admission.containers[0].merged;
    assert_eq!(
        merged.envs["CUDA_MPS_PIPE_DIRECTORY"],
        "/mps/nvidia.com/gpu/pipe"
    );
    assert!(
        merged
            .mounts
            .iter()
            .any(|m| m.container_path == "/dev/shm"
                && Path::new(&m.host_path) == node.root.join("shm")),
        "{:?}",
        merged.mounts
    );
    let answer = ask_as_the_container(
        &merged.envs,
        &merged.mounts,
        "get_default_active_thread_percentage",
    );
    assert_eq!(answer.trim(), "25.0");

    // The daemon dies: every replica Unhealthy at once, then a restart
    // (1 s back-off) makes them Healthy again.
    let pid = node.daemon_pid().expect("pid file");
    assert!(
        std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .expect("kill")
            .success()
    );
    kubelet
        .wait_until(gpus(16, 0), TIMEOUT)
        .await
        .expect("unhealthy while the daemon is down");
    wait_for_log(&log, "the MPS control daemon of 'nvidia.com/gpu' exited").await;
    kubelet
        .wait_until(gpus(16, 16), TIMEOUT)
        .await
        .expect("healthy once restarted");
    wait_for_metric_line(
        &node.metrics,
        "gpu_slicer_mps_daemon_restarts_total{resource=\"nvidia.com/gpu\"} 1",
    )
    .await;
    let restarted = node.daemon_pid().expect("pid file");
    assert_ne!(restarted, pid);

    // SIGTERM: the daemon is told to quit, and is gone when we exit.
    assert!(daemon.terminate().success());
    wait_for_log(&log, "Cmd:quit").await;
    wait_gone(restarted).await;
    kubelet.shutdown().await;
}

/// Memory by count: a daemon per request size, each with that many shares;
/// a pod asking for 2 replicas gets both on one GPU and the 2-share
/// daemon's pipe; 3 is refused; any of the daemons dying turns the
/// resource Unhealthy until it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_by_count_get_the_daemon_of_their_size() {
    let node = Node::new();
    let kubelet = kubelet(node.dir.path()).await;
    let (mut daemon, log) = node.start(
        "version: v1\nsharing:\n  mps:\n    failRequestsGreaterThanOne: false\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 4\n      maxReplicasPerContainer: 2\n",
        "",
    );
    kubelet
        .wait_until(gpus(16, 16), TIMEOUT)
        .await
        .expect("16 healthy replicas");
    let inventory = simulated::from_instance("g5.12xlarge", None).expect("g5");
    let quarter = inventory.gpus[0].memory_mib / 4;
    let control = std::fs::read_to_string(&log).expect("log");
    for line in [
        format!("Cmd:set_default_device_pinned_mem_limit 3 {quarter}M"),
        format!("Cmd:set_default_device_pinned_mem_limit 3 {}M", quarter * 2),
        "Cmd:set_default_active_thread_percentage 25".to_string(),
        "Cmd:set_default_active_thread_percentage 50".to_string(),
    ] {
        assert!(control.contains(&line), "{line} missing from:\n{control}");
    }
    let pid_of = |dir: &str| {
        std::fs::read_to_string(
            node.resource_dir()
                .join(dir)
                .join("nvidia-cuda-mps-control.pid"),
        )
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
    };
    let two = pid_of("shares-2/pipe").expect("the 2-share daemon's pid file");
    assert_ne!(Some(two), node.daemon_pid(), "two daemons");

    let pod = Pod::new("double").container(Container::new("main").limit("nvidia.com/gpu", 2));
    let admission = kubelet.admit(&pod).await.expect("admitted");
    let merged = &admission.containers[0].merged;
    assert_eq!(
        merged.envs["CUDA_MPS_PIPE_DIRECTORY"],
        "/mps/nvidia.com/gpu/shares-2/pipe"
    );
    assert!(
        !merged.envs["NVIDIA_VISIBLE_DEVICES"].contains(','),
        "both replicas on one GPU: {:?}",
        merged.envs
    );
    let answer = ask_as_the_container(
        &merged.envs,
        &merged.mounts,
        "get_default_active_thread_percentage",
    );
    assert_eq!(answer.trim(), "50.0", "the 2-share daemon answers");

    let pod = Pod::new("triple").container(Container::new("main").limit("nvidia.com/gpu", 3));
    let err = kubelet.admit(&pod).await.expect_err("refused");
    assert_eq!(
        err.to_string(),
        "Pod was rejected: Allocate failed due to rpc error: code = InvalidArgument desc = invalid allocation request for \"nvidia.com/gpu\": invalid request: 3 MPS replicas requested; at most 2 per container (maxReplicasPerContainer), which is unexpected"
    );

    assert!(
        std::process::Command::new("kill")
            .args(["-KILL", &two.to_string()])
            .status()
            .expect("kill")
            .success()
    );
    kubelet
        .wait_until(gpus(16, 0), TIMEOUT)
        .await
        .expect("unhealthy while one of its daemons is down");
    wait_for_log(
        &log,
        "the MPS control daemon of 'nvidia.com/gpu (2 shares)' exited",
    )
    .await;
    kubelet
        .wait_until(gpus(16, 16), TIMEOUT)
        .await
        .expect("healthy once restarted");
    let restarted = pid_of("shares-2/pipe").expect("pid file");
    let one = node.daemon_pid().expect("pid file");
    assert!(daemon.terminate().success());
    wait_gone(restarted).await;
    wait_gone(one).await;
    kubelet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_away_from_mps_stops_the_daemon() {
    let node = Node::new();
    let kubelet = kubelet(node.dir.path()).await;
    let (daemon, log) = node.start(MPS_4, "");
    kubelet
        .wait_until(gpus(16, 16), TIMEOUT)
        .await
        .expect("16 healthy replicas");
    let pid = node.daemon_pid().expect("pid file");
    write_config(
        node.dir.path(),
        "version: v1\nsharing:\n  timeSlicing:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 2\n",
    );
    daemon.signal("HUP");
    kubelet
        .wait_until(gpus(8, 8), TIMEOUT)
        .await
        .expect("time-sliced now");
    wait_gone(pid).await;
    wait_for_log(&log, "Cmd:quit").await;
    wait_for_metric_line(
        &node.metrics,
        "gpu_slicer_mps_daemon_ready{resource=\"nvidia.com/gpu\"} 0",
    )
    .await;
    kubelet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_cannot_start_leaves_the_replicas_unhealthy_and_says_why() {
    let node = Node::new();
    let kubelet = kubelet(node.dir.path()).await;
    let (mut daemon, log) = node.start(
        MPS_4,
        "FAKE_MPS_START_FAIL='An MPS server is already running'",
    );
    kubelet
        .wait_until(gpus(16, 0), TIMEOUT)
        .await
        .expect("advertised, none healthy");
    let line = wait_for_log(
        &log,
        "the MPS control daemon of 'nvidia.com/gpu' exited at start",
    )
    .await;
    assert!(line.contains("its devices are Unhealthy"), "{line}");
    wait_for_log(&log, "An MPS server is already running").await;
    // The node machine starts it again on its back-off: a second failed
    // start doubles the wait.
    wait_for_log(
        &log,
        "the MPS control daemon of 'nvidia.com/gpu' is not ready; starting it again in 1s",
    )
    .await;
    wait_for_log(
        &log,
        "the MPS control daemon of 'nvidia.com/gpu' is not ready; starting it again in 2s",
    )
    .await;
    assert!(
        daemon.child.try_wait().expect("status").is_none(),
        "the daemon exited"
    );
    kubelet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_control_program_is_named_with_where_it_was_looked_for() {
    let dir = temp_dir();
    let kubelet = kubelet(dir.path()).await;
    let config = write_config(dir.path(), MPS_4);
    let root = aside(dir.path()).join("mps");
    let driver = aside(dir.path()).join("driver");
    std::fs::create_dir_all(&driver).expect("driver root");
    let (_daemon, log) = start_logged(
        dir.path(),
        &[
            "--simulate",
            "g5.12xlarge",
            "--config-file",
            config.to_str().expect("utf-8"),
            "--mps-root",
            root.to_str().expect("utf-8"),
            "--mps-container-root",
            root.to_str().expect("utf-8"),
            "--driver-root-ctr-path",
            driver.to_str().expect("utf-8"),
        ],
        &[("PATH", "/nonexistent")],
    );
    kubelet
        .wait_until(gpus(16, 0), TIMEOUT)
        .await
        .expect("advertised, none healthy");
    let line = wait_for_log(&log, "cannot find nvidia-cuda-mps-control").await;
    assert!(
        line.contains(&format!(
            "{}/usr/bin/nvidia-cuda-mps-control",
            driver.display()
        )),
        "{line}"
    );
    assert!(line.contains("--mps-control-bin"), "{line}");
    kubelet.shutdown().await;
}
