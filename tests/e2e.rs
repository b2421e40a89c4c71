//! End-to-end: the real `gpu-slicer` binary against the stand-in kubelet,
//! each test in its own temporary device-plugin directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kubelet_sim::{Capacity, Container, Kubelet, Options, Pod};

const BIN: &str = env!("CARGO_BIN_EXE_gpu-slicer");
/// Generous: CI machines are slow and shared; nothing here is a timing test.
const TIMEOUT: Duration = Duration::from_secs(60);

/// A running daemon, stopped with SIGTERM when dropped.
struct Daemon {
    child: Child,
}

impl Daemon {
    fn start(dir: &Path, args: &[&str]) -> Daemon {
        let child = Command::new(BIN)
            .arg("run")
            .arg("--device-plugin-path")
            .arg(dir)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start gpu-slicer");
        Daemon { child }
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().expect("wait for gpu-slicer")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn temp_dir() -> tempfile::TempDir {
    // Short paths: Unix socket paths are limited to 107 bytes.
    tempfile::Builder::new()
        .prefix("gs")
        .tempdir_in("/tmp")
        .expect("temp dir")
}

async fn kubelet(dir: &Path) -> Kubelet {
    Kubelet::start(Options::new(dir))
        .await
        .expect("stand-in kubelet")
}

fn counts(status: &BTreeMap<String, Capacity>) -> BTreeMap<String, usize> {
    status
        .iter()
        .filter(|(_, c)| c.capacity > 0)
        .map(|(k, c)| (k.clone(), c.allocatable))
        .collect()
}

fn expect(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Waits until the node advertises exactly `want` (all healthy).
async fn wait_for(kubelet: &Kubelet, want: &BTreeMap<String, usize>) {
    let target = want.clone();
    kubelet
        .wait_until(move |status| counts(status) == target, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("node never advertised {want:?}: {e}"));
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("config.yaml");
    std::fs::write(&path, text).expect("write config");
    path
}

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

/// Runs `gpu-slicer plan` and returns (exit success, stdout, stderr).
fn plan(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("plan")
        .args(args)
        .output()
        .expect("run plan");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `(resource, count)` pairs from `plan` output: name first, count second.
fn plan_counts(stdout: &str) -> Vec<(String, usize)> {
    stdout
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next()?.to_string();
            let count = words.next()?.parse().ok()?;
            Some((name, count))
        })
        .collect()
}

#[test]
fn plan_reproduces_the_worked_examples() {
    let mixed = ["--mig-strategy", "mixed"];
    let cases: Vec<(&str, &str, &[&str], Vec<(&str, usize)>)> = vec![
        (
            "p4d.24xlarge",
            "all-disabled",
            &mixed,
            vec![("nvidia.com/gpu", 8)],
        ),
        (
            "p4d.24xlarge",
            "all-1g.5gb",
            &mixed,
            vec![("nvidia.com/mig-1g.5gb", 56)],
        ),
        (
            "p4d.24xlarge",
            "all-2g.10gb",
            &mixed,
            vec![("nvidia.com/mig-2g.10gb", 24)],
        ),
        (
            "p4d.24xlarge",
            "all-3g.20gb",
            &mixed,
            vec![("nvidia.com/mig-3g.20gb", 16)],
        ),
        (
            "p4d.24xlarge",
            "all-4g.20gb",
            &mixed,
            vec![("nvidia.com/mig-4g.20gb", 8)],
        ),
        (
            "p4d.24xlarge",
            "all-7g.40gb",
            &mixed,
            vec![("nvidia.com/mig-7g.40gb", 8)],
        ),
        (
            "p4d.24xlarge",
            "all-balanced",
            &mixed,
            vec![
                ("nvidia.com/mig-1g.5gb", 16),
                ("nvidia.com/mig-2g.10gb", 8),
                ("nvidia.com/mig-3g.20gb", 8),
            ],
        ),
        (
            "p4d.24xlarge",
            "all-1g.10gb",
            &mixed,
            vec![("nvidia.com/mig-1g.10gb", 32)],
        ),
        (
            "p4d.24xlarge",
            "all-1g.5gb",
            &["--mig-strategy", "single"],
            vec![("nvidia.com/gpu", 56)],
        ),
        (
            "p4de.24xlarge",
            "all-1g.10gb",
            &mixed,
            vec![("nvidia.com/mig-1g.10gb", 56)],
        ),
        (
            "p4de.24xlarge",
            "all-balanced",
            &mixed,
            vec![
                ("nvidia.com/mig-1g.10gb", 16),
                ("nvidia.com/mig-2g.20gb", 8),
                ("nvidia.com/mig-3g.40gb", 8),
            ],
        ),
        (
            "p5.48xlarge",
            "all-1g.10gb",
            &mixed,
            vec![("nvidia.com/mig-1g.10gb", 56)],
        ),
        (
            "p5.48xlarge",
            "all-1g.20gb",
            &mixed,
            vec![("nvidia.com/mig-1g.20gb", 32)],
        ),
        (
            "p5.48xlarge",
            "all-balanced",
            &mixed,
            vec![
                ("nvidia.com/mig-1g.10gb", 16),
                ("nvidia.com/mig-2g.20gb", 8),
                ("nvidia.com/mig-3g.40gb", 8),
            ],
        ),
        (
            "p5e.48xlarge",
            "all-1g.18gb",
            &mixed,
            vec![("nvidia.com/mig-1g.18gb", 56)],
        ),
        (
            "p5en.48xlarge",
            "all-balanced",
            &mixed,
            vec![
                ("nvidia.com/mig-1g.18gb", 16),
                ("nvidia.com/mig-2g.35gb", 8),
                ("nvidia.com/mig-3g.71gb", 8),
            ],
        ),
        (
            "p6-b200.48xlarge",
            "all-1g.23gb",
            &mixed,
            vec![("nvidia.com/mig-1g.23gb", 56)],
        ),
        (
            "p6-b200.48xlarge",
            "all-balanced",
            &mixed,
            vec![
                ("nvidia.com/mig-1g.23gb", 16),
                ("nvidia.com/mig-2g.45gb", 8),
                ("nvidia.com/mig-3g.90gb", 8),
            ],
        ),
    ];
    for (instance, layout, flags, want) in cases {
        let mut args = vec!["--instance", instance, "--mig-config", layout];
        args.extend_from_slice(flags);
        let (ok, stdout, stderr) = plan(&args);
        assert!(ok, "{instance} {layout}: {stderr}");
        let want: Vec<(String, usize)> =
            want.into_iter().map(|(n, c)| (n.to_string(), c)).collect();
        assert_eq!(plan_counts(&stdout), want, "{instance} {layout}\n{stdout}");
    }
}

#[test]
fn plan_time_slicing_examples() {
    let dir = temp_dir();
    let cases = [
        (
            "g5.12xlarge",
            None,
            "replicas: 4",
            false,
            vec![("nvidia.com/gpu", 16)],
        ),
        (
            "g5.12xlarge",
            None,
            "replicas: 4",
            true,
            vec![("nvidia.com/gpu.shared", 16)],
        ),
        (
            "g5.48xlarge",
            None,
            "replicas: 4",
            false,
            vec![("nvidia.com/gpu", 32)],
        ),
        (
            "p4d.24xlarge",
            Some("all-1g.5gb"),
            "replicas: 4",
            false,
            vec![("nvidia.com/mig-1g.5gb", 224)],
        ),
    ];
    for (instance, layout, replicas, rename, want) in cases {
        let name = if layout.is_some() {
            "nvidia.com/mig-1g.5gb"
        } else {
            "nvidia.com/gpu"
        };
        let strategy = if layout.is_some() { "mixed" } else { "none" };
        let config = write_config(
            dir.path(),
            &format!(
                "version: v1\nflags:\n  migStrategy: {strategy}\nsharing:\n  timeSlicing:\n    renameByDefault: {rename}\n    resources:\n    - name: {name}\n      {replicas}\n"
            ),
        );
        let mut args = vec![
            "--instance",
            instance,
            "--config-file",
            config.to_str().expect("utf-8"),
        ];
        if let Some(layout) = layout {
            args.extend(["--mig-config", layout]);
        }
        let (ok, stdout, stderr) = plan(&args);
        assert!(ok, "{instance}: {stderr}");
        let want: Vec<(String, usize)> =
            want.into_iter().map(|(n, c)| (n.to_string(), c)).collect();
        assert_eq!(plan_counts(&stdout), want, "{instance}\n{stdout}");
    }
}

#[test]
fn bad_inputs_are_refused_with_a_clear_message() {
    let dir = temp_dir();
    // (config file content, what the user sees after "error: unable to load config: <file>: ")
    let cases: Vec<(&str, &str)> = vec![
        (
            "version: v1\nflags:\n  renameByDefault: true\n",
            "unknown key 'flags.renameByDefault': renameByDefault belongs under sharing.timeSlicing (or sharing.mps)",
        ),
        (
            "version: v1\nflags:\n  migstrategy: mixed\n",
            "unknown key 'flags.migstrategy': did you mean 'migStrategy'? valid keys under flags: migStrategy, failOnInitError, mpsRoot, nvidiaDriverRoot, nvidiaDevRoot, gdrcopyEnabled, gdsEnabled, mofedEnabled, useNodeFeatureAPI, deviceDiscoveryStrategy, plugin, gfd",
        ),
        (
            "version: v1\nsharing:\n  timeSlicing:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 1\n",
            "sharing.timeSlicing.resources[0].replicas: number of replicas must be >= 2",
        ),
        (
            "version: v1\nsharing:\n  timeSlicing:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 2\n      devices: none\n",
            "sharing.timeSlicing.resources[0].devices: devices set as 'none' but the only valid string input is 'all'",
        ),
        ("version: v2\n", "version: unknown version: v2"),
        (
            "version: v1\nflags:\n  migStrategy: auto\n",
            "flags.migStrategy: unknown MIG strategy: auto",
        ),
    ];
    for (text, message) in cases {
        let config = write_config(dir.path(), text);
        let path = config.to_str().expect("utf-8");
        let (ok, _, stderr) = plan(&["--instance", "g5.xlarge", "--config-file", path]);
        assert!(!ok, "accepted: {text}");
        assert_eq!(
            stderr.trim_end(),
            format!("error: unable to load config: {path}: {message}"),
            "for {text:?}"
        );
    }

    let (ok, _, stderr) = plan(&["--instance", "g5.xlarge", "--mig-strategy", "bogus"]);
    assert!(!ok);
    assert_eq!(
        stderr.trim_end(),
        "error: --mig-strategy: unknown MIG strategy: bogus"
    );

    let (ok, _, stderr) = plan(&["--instance", "g5.xlarge", "--mig-config", "all-balanced"]);
    assert!(!ok);
    assert_eq!(
        stderr.trim_end(),
        "error: MIG layout 'all-balanced' needs a MIG-capable GPU, but g5.xlarge has NVIDIA A10G (no MIG support); \
         use time-slicing (sharing.timeSlicing) or an instance with A100/A30/H100/H200/B200 GPUs"
    );

    let (ok, _, stderr) = plan(&["--instance", "p9.huge"]);
    assert!(!ok);
    assert!(
        stderr.starts_with(
            "error: unknown instance type 'p9.huge'; known instance types: p4d.24xlarge, "
        ),
        "{stderr}"
    );
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
