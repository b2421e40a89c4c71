//! End-to-end: the real `gpu-slicer` binary against the stand-in kubelet,
//! each test in its own temporary device-plugin directory.

use std::process::Command;
use std::time::Duration;

use crate::BIN;
use crate::common::{Daemon, expect, kubelet, temp_dir, wait_for, write_config};
use kubelet_sim::{Container, Pod};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p4d_all_1g_mixed_and_single() {
    for (strategy, want) in [
        ("mixed", expect(&[("nvidia.com/mig-1g.5gb", 56)])),
        ("single", expect(&[("nvidia.com/gpu", 56)])),
    ] {
        let dir = temp_dir();
        let kubelet = kubelet(dir.path()).await;
        let mut daemon = Daemon::start(
            dir.path(),
            &[
                "--simulate",
                "p4d.24xlarge",
                "--mig-config",
                "all-1g.5gb",
                "--mig-strategy",
                strategy,
            ],
        );
        wait_for(&kubelet, &want).await;
        assert!(daemon.terminate().success());
        kubelet.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p4d_all_balanced_admits_a_pod_per_resource() {
    let dir = temp_dir();
    let kubelet = kubelet(dir.path()).await;
    let _daemon = Daemon::start(
        dir.path(),
        &[
            "--simulate",
            "p4d.24xlarge",
            "--mig-config",
            "all-balanced",
            "--mig-strategy=mixed",
        ],
    );
    let want = expect(&[
        ("nvidia.com/mig-1g.5gb", 16),
        ("nvidia.com/mig-2g.10gb", 8),
        ("nvidia.com/mig-3g.20gb", 8),
    ]);
    wait_for(&kubelet, &want).await;

    for resource in want.keys() {
        let pod = Pod::new(format!("p-{}", resource.len()))
            .container(Container::new("main").limit(resource.clone(), 1));
        let admission = kubelet.admit(&pod).await.expect("admitted");
        let container = &admission.containers[0];
        let ids = &container.resources[resource].device_ids;
        assert_eq!(ids.len(), 1);
        assert!(ids[0].starts_with("MIG-"), "{ids:?}");
        assert_eq!(container.merged.envs["NVIDIA_VISIBLE_DEVICES"], ids[0]);
    }
    kubelet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_slicing_on_g5_12xlarge() {
    for (rename_by_default, name) in [(false, "nvidia.com/gpu"), (true, "nvidia.com/gpu.shared")] {
        let dir = temp_dir();
        let config = write_config(
            dir.path(),
            &format!(
                "version: v1\nsharing:\n  timeSlicing:\n    renameByDefault: {rename_by_default}\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 4\n"
            ),
        );
        let kubelet = kubelet(dir.path()).await;
        let _daemon = Daemon::start(
            dir.path(),
            &[
                "--simulate",
                "g5.12xlarge",
                "--config-file",
                config.to_str().expect("utf-8 path"),
            ],
        );
        wait_for(&kubelet, &expect(&[(name, 16)])).await;

        // Two replicas for one container land on two distinct GPUs.
        let pod = Pod::new("two").container(Container::new("main").limit(name, 2));
        let admission = kubelet.admit(&pod).await.expect("admitted");
        let visible = &admission.containers[0].merged.envs["NVIDIA_VISIBLE_DEVICES"];
        assert_eq!(visible.split(',').count(), 2, "{visible}");
        kubelet.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_one_shared_replica_is_refused_when_configured() {
    let dir = temp_dir();
    let config = write_config(
        dir.path(),
        "version: v1\nsharing:\n  timeSlicing:\n    failRequestsGreaterThanOne: true\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 2\n",
    );
    let kubelet = kubelet(dir.path()).await;
    let _daemon = Daemon::start(
        dir.path(),
        &[
            "--simulate",
            "g5.xlarge",
            "--config-file",
            config.to_str().expect("utf-8"),
        ],
    );
    wait_for(&kubelet, &expect(&[("nvidia.com/gpu", 2)])).await;
    let pod = Pod::new("greedy").container(Container::new("main").limit("nvidia.com/gpu", 2));
    let err = kubelet.admit(&pod).await.expect_err("refused");
    assert_eq!(
        err.to_string(),
        "Pod was rejected: Allocate failed due to rpc error: code = InvalidArgument desc = invalid allocation request for \"nvidia.com/gpu\": invalid request: maximum request size for shared resources is 1; found 2, which is unexpected"
    );
    kubelet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_restart_re_registers_every_resource() {
    let dir = temp_dir();
    let mut kubelet = kubelet(dir.path()).await;
    let _daemon = Daemon::start(
        dir.path(),
        &["--simulate", "p4d.24xlarge", "--mig-config", "all-balanced"],
    );
    let want = expect(&[
        ("nvidia.com/mig-1g.5gb", 16),
        ("nvidia.com/mig-2g.10gb", 8),
        ("nvidia.com/mig-3g.20gb", 8),
    ]);
    wait_for(&kubelet, &want).await;
    for round in 1..=3 {
        let before = kubelet.registrations().len();
        kubelet.restart().await.expect("restart");
        wait_for(&kubelet, &want).await;
        let accepted: Vec<String> = kubelet.registrations()[before..]
            .iter()
            .filter(|r| r.accepted)
            .map(|r| r.resource_name.clone())
            .collect();
        for name in want.keys() {
            assert!(
                accepted.contains(name),
                "round {round}: {name} not re-registered: {accepted:?}"
            );
        }
    }
    kubelet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_for_a_kubelet_that_starts_later_and_cleans_up_on_sigterm() {
    let dir = temp_dir();
    let mut daemon = Daemon::start(dir.path(), &["--simulate", "g6.xlarge"]);
    // The daemon is up before the kubelet: its socket appears first.
    let own = dir.path().join("nvidia-gpu.sock");
    for _ in 0..600 {
        if own.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let kubelet = kubelet(dir.path()).await;
    // Starting the kubelet cleaned the directory; the daemon serves again and registers.
    wait_for(&kubelet, &expect(&[("nvidia.com/gpu", 1)])).await;
    assert!(daemon.terminate().success());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("nvidia-"))
        .collect();
    assert!(leftovers.is_empty(), "sockets left behind: {leftovers:?}");
    kubelet.shutdown().await;
}

#[test]
fn run_refuses_a_bad_config_at_start() {
    let dir = temp_dir();
    let config = write_config(dir.path(), "version: v1\nflags:\n  migstrategy: mixed\n");
    let out = Command::new(BIN)
        .args(["run", "--simulate", "g5.xlarge", "--device-plugin-path"])
        .arg(dir.path())
        .arg("--config-file")
        .arg(&config)
        .output()
        .expect("run");
    assert!(!out.status.success());
    // The daemon logs to stderr too; the last line is the refusal.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!(
            "error: unable to load config: {}: unknown key 'flags.migstrategy': did you mean 'migStrategy'?",
            config.display()
        )),
        "{stderr}"
    );
}

/// g5.48xlarge with 10,000 replicas per GPU is an 80,000-id, 5.1 MB device
/// list: every kubelet refused it, the node showed 0, and the daemon
/// re-registered every 2 s for ever. Now it is refused at start, with the
/// size and what fits.
#[test]
fn a_device_list_no_kubelet_accepts_is_refused_at_start() {
    let dir = temp_dir();
    let config = write_config(
        dir.path(),
        "version: v1\nsharing:\n  timeSlicing:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 10000\n",
    );
    let out = Command::new(BIN)
        .args(["run", "--simulate", "g5.48xlarge", "--device-plugin-path"])
        .arg(dir.path())
        .arg("--config-file")
        .arg(&config)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(
            "error: the configuration cannot be applied on this node: resource 'nvidia.com/gpu': \
             its device list (80000 devices) encodes to "
        ) && last.contains("bytes, more than the 4194304 bytes a kubelet accepts in one ListAndWatch message; at most "),
        "{stderr}"
    );
}

/// `--device-plugin-path /nonexistent/dir` was created silently and the
/// daemon waited for ever logging at INFO; now it warns once, saying what to
/// check, and keeps waiting.
#[test]
fn a_missing_device_plugin_directory_is_warned_about() {
    let dir = temp_dir();
    let missing = dir.path().join("nonexistent/device-plugins");
    let mut child = Command::new(BIN)
        .args(["run", "--simulate", "g5.xlarge", "--device-plugin-path"])
        .arg(&missing)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start");
    // It keeps running, serving its socket while it waits.
    let deadline = std::time::Instant::now() + crate::common::TIMEOUT;
    while !missing.join("nvidia-gpu.sock").exists() {
        assert!(std::time::Instant::now() < deadline, "never served");
        assert!(child.try_wait().expect("wait").is_none(), "exited");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success());
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warning = stderr
        .lines()
        .find(|l| l.contains("WARN") && l.contains("does not exist, so no kubelet socket is there"))
        .unwrap_or_else(|| panic!("no warning in:\n{stderr}"));
    assert!(
        warning.contains(&missing.display().to_string()),
        "{warning}"
    );
    assert!(warning.contains("Check --device-plugin-path"), "{warning}");
}

/// Under umask 000 the plugin sockets used to be 0777; their mode is now
/// explicit (owner only), as are the files gpu-slicer writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_sockets_have_an_explicit_mode_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = temp_dir();
    let kubelet = kubelet(dir.path()).await;
    let _daemon =
        crate::common::start_under_shell(dir.path(), "umask 000", &["--simulate", "g5.xlarge"]);
    wait_for(&kubelet, &expect(&[("nvidia.com/gpu", 1)])).await;
    let mode = std::fs::metadata(dir.path().join("nvidia-gpu.sock"))
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
    kubelet.shutdown().await;
}
