//! The daemon on "real" GPUs: the NVML backend against the fake NVML
//! library (tests/fake-nvml), which answers from an inventory file.

use std::process::Command;

use crate::BIN;
use crate::common::{aside, expect, fake_nvml, kubelet, start_with_env, temp_dir, wait_for};
use gpu_slicer_core::gpu::simulated;

/// Writes the inventory of a simulated instance where the fake reads it.
fn inventory_file(dir: &std::path::Path, instance: &str, layout: &str) -> std::path::PathBuf {
    let inventory = simulated::from_instance(instance, Some(layout)).expect("simulated");
    let path = aside(dir).join("inventory.json");
    std::fs::write(&path, serde_json::to_string(&inventory).expect("json")).expect("write");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvml_backend_advertises_mig_devices() {
    let dir = temp_dir();
    let topology = inventory_file(dir.path(), "p4d.24xlarge", "all-balanced");
    let lib = fake_nvml();
    let kubelet = kubelet(dir.path()).await;
    let _daemon = start_with_env(
        dir.path(),
        &[
            "--nvml-lib",
            lib.to_str().expect("utf-8"),
            "--mig-strategy",
            "mixed",
        ],
        &[("FAKE_NVML_TOPOLOGY", topology.to_str().expect("utf-8"))],
    );
    wait_for(
        &kubelet,
        &expect(&[
            ("nvidia.com/mig-1g.5gb", 16),
            ("nvidia.com/mig-2g.10gb", 8),
            ("nvidia.com/mig-3g.20gb", 8),
        ]),
    )
    .await;
    kubelet.shutdown().await;
}

#[test]
fn driver_not_loaded_is_fatal_by_default() {
    let dir = temp_dir();
    let lib = fake_nvml();
    // The daemon's exit code and stderr when NVML's init fails with `error`.
    let start_with_init_error = |error: &str| {
        let out = Command::new(BIN)
            .args(["run", "--device-plugin-path"])
            .arg(dir.path())
            .arg("--nvml-lib")
            .arg(&lib)
            .env("FAKE_NVML_INIT_ERROR", error)
            .output()
            .expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = start_with_init_error("DRIVER_NOT_LOADED");
    assert_eq!(code, Some(1));
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: Failed to initialize NVML: "),
        "{stderr}"
    );
    // One piece of advice, the one for this error.
    assert!(
        last.contains("the NVIDIA kernel driver is not loaded. Check `nvidia-smi`"),
        "{stderr}"
    );
    assert!(!last.contains("If this is a GPU node"), "{stderr}");

    // An error that says nothing of what to check gets NVIDIA's advice.
    let (code, stderr) = start_with_init_error("UNKNOWN");
    assert_eq!(code, Some(1));
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: Failed to initialize NVML: ")
            && last.contains(". If this is a GPU node, did you set the default container runtime"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_fail_on_init_error_a_late_driver_is_picked_up() {
    let dir = temp_dir();
    let lib = fake_nvml();
    // The fake fails to initialise while its inventory file is missing: the
    // "driver" arrives when the test writes it.
    let topology = aside(dir.path()).join("late.json");
    let kubelet = kubelet(dir.path()).await;
    let mut daemon = start_with_env(
        dir.path(),
        &[
            "--nvml-lib",
            lib.to_str().expect("utf-8"),
            "--fail-on-init-error=false",
        ],
        &[("FAKE_NVML_TOPOLOGY", topology.to_str().expect("utf-8"))],
    );
    // Alive, and nothing is registered while discovery fails.
    kubelet
        .wait_for_registrations(|_| false, std::time::Duration::from_millis(1500))
        .await
        .expect_err("nothing registers while NVML fails");
    assert!(
        daemon.child.try_wait().expect("status").is_none(),
        "the daemon exited"
    );

    let inventory = simulated::from_instance("g6.12xlarge", None).expect("simulated");
    std::fs::write(&topology, serde_json::to_string(&inventory).expect("json")).expect("write");
    wait_for(&kubelet, &expect(&[("nvidia.com/gpu", 4)])).await;
    assert!(daemon.terminate().success());
    kubelet.shutdown().await;
}

fn append(path: &std::path::Path, line: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("events file");
    writeln!(file, "{line}").expect("append event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xid_events_mark_every_replica_and_recoverable_ones_come_back() {
    let dir = temp_dir();
    let inventory = simulated::from_instance("g5.12xlarge", None).expect("simulated");
    let topology = aside(dir.path()).join("inventory.json");
    std::fs::write(&topology, serde_json::to_string(&inventory).expect("json")).expect("write");
    let events = aside(dir.path()).join("events");
    std::fs::write(&events, "").expect("events file");
    let config = crate::common::write_config(
        dir.path(),
        "version: v1\nsharing:\n  timeSlicing:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 4\nhealth:\n  recoverAfter: 2s\n  xids:\n    \"94\": recover\n",
    );
    let lib = fake_nvml();
    let kubelet = kubelet(dir.path()).await;
    let _daemon = start_with_env(
        dir.path(),
        &[
            "--nvml-lib",
            lib.to_str().expect("utf-8"),
            "--config-file",
            config.to_str().expect("utf-8"),
        ],
        &[
            ("FAKE_NVML_TOPOLOGY", topology.to_str().expect("utf-8")),
            ("FAKE_NVML_EVENTS", events.to_str().expect("utf-8")),
        ],
    );
    let status = |allocatable: usize| {
        move |s: &std::collections::BTreeMap<String, kubelet_sim::Capacity>| {
            s.get("nvidia.com/gpu")
                .is_some_and(|c| c.capacity == 16 && c.allocatable == allocatable)
        }
    };
    let timeout = crate::common::TIMEOUT;
    kubelet
        .wait_until(status(16), timeout)
        .await
        .expect("16 healthy");

    // XID 79 (fallen off the bus) needs a reset: all four replicas of GPU 1 go.
    append(&events, &format!("{} 79", inventory.gpus[1].uuid));
    kubelet
        .wait_until(status(12), timeout)
        .await
        .expect("GPU 1 unhealthy");
    // An ignored XID (13) changes nothing; a recoverable one (94) takes GPU 2
    // away, then gives it back after the 2 s quiet period.
    append(&events, &format!("{} 13", inventory.gpus[0].uuid));
    append(&events, &format!("{} 94", inventory.gpus[2].uuid));
    kubelet
        .wait_until(status(8), timeout)
        .await
        .expect("GPU 2 unhealthy");
    kubelet
        .wait_until(status(12), timeout)
        .await
        .expect("GPU 2 recovered");
    let unhealthy: Vec<String> = kubelet
        .devices("nvidia.com/gpu")
        .into_iter()
        .filter(|d| !d.healthy)
        .map(|d| d.id)
        .collect();
    assert_eq!(unhealthy.len(), 4);
    assert!(
        unhealthy
            .iter()
            .all(|id| id.starts_with(&inventory.gpus[1].uuid))
    );
    kubelet.shutdown().await;
}

/// The XID watcher loads the NVML library discovery found. It used to build
/// its own options with the default driver root, so with the library only
/// under `--driver-root-ctr-path` discovery worked while the health checks
/// retried for ever and no XID ever reached a device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_use_the_library_found_under_the_driver_root() {
    let dir = temp_dir();
    let topology = inventory_file(dir.path(), "g5.xlarge", "all-disabled");
    let inventory = simulated::from_instance("g5.xlarge", Some("all-disabled")).expect("sim");
    let events = aside(dir.path()).join("events");
    std::fs::write(&events, "").expect("events file");
    let driver_root = aside(dir.path()).join("driver-root");
    let lib_dir = driver_root.join("usr/lib64");
    std::fs::create_dir_all(&lib_dir).expect("library dir");
    std::os::unix::fs::symlink(fake_nvml(), lib_dir.join("libnvidia-ml.so.1")).expect("link");
    let kubelet = kubelet(dir.path()).await;
    let _daemon = start_with_env(
        dir.path(),
        &[
            "--driver-root-ctr-path",
            driver_root.to_str().expect("utf-8"),
        ],
        &[
            ("FAKE_NVML_TOPOLOGY", topology.to_str().expect("utf-8")),
            ("FAKE_NVML_EVENTS", events.to_str().expect("utf-8")),
        ],
    );
    let allocatable = |n: usize| {
        move |s: &std::collections::BTreeMap<String, kubelet_sim::Capacity>| {
            s.get("nvidia.com/gpu")
                .is_some_and(|c| c.capacity == 1 && c.allocatable == n)
        }
    };
    let timeout = crate::common::TIMEOUT;
    kubelet
        .wait_until(allocatable(1), timeout)
        .await
        .expect("discovered through the driver root");
    append(&events, &format!("{} 79", inventory.gpus[0].uuid));
    kubelet
        .wait_until(allocatable(0), timeout)
        .await
        .expect("the XID reached the GPU: the watcher loaded the same library");
    kubelet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mig_xid_marks_only_its_instance() {
    let dir = temp_dir();
    let topology = inventory_file(dir.path(), "p4d.24xlarge", "all-balanced");
    let inventory = simulated::from_instance("p4d.24xlarge", Some("all-balanced")).expect("sim");
    let events = aside(dir.path()).join("events");
    std::fs::write(&events, "").expect("events file");
    let lib = fake_nvml();
    let kubelet = kubelet(dir.path()).await;
    let _daemon = start_with_env(
        dir.path(),
        &[
            "--nvml-lib",
            lib.to_str().expect("utf-8"),
            "--mig-strategy",
            "mixed",
        ],
        &[
            ("FAKE_NVML_TOPOLOGY", topology.to_str().expect("utf-8")),
            ("FAKE_NVML_EVENTS", events.to_str().expect("utf-8")),
        ],
    );
    wait_for(
        &kubelet,
        &expect(&[
            ("nvidia.com/mig-1g.5gb", 16),
            ("nvidia.com/mig-2g.10gb", 8),
            ("nvidia.com/mig-3g.20gb", 8),
        ]),
    )
    .await;
    let gpu = &inventory.gpus[3];
    let target = gpu
        .mig_devices
        .iter()
        .find(|m| m.profile == "1g.5gb")
        .expect("a 1g.5gb device");
    append(
        &events,
        &format!(
            "{} 48 {} {}",
            gpu.uuid, target.gpu_instance_id, target.compute_instance_id
        ),
    );
    kubelet
        .wait_until(
            |s| {
                s.get("nvidia.com/mig-1g.5gb")
                    .is_some_and(|c| c.allocatable == 15)
            },
            crate::common::TIMEOUT,
        )
        .await
        .expect("one 1g device unhealthy");
    let status = kubelet.node_status();
    assert_eq!(
        status["nvidia.com/mig-2g.10gb"].allocatable, 8,
        "other instances untouched"
    );
    assert_eq!(status["nvidia.com/mig-3g.20gb"].allocatable, 8);
    let sick: Vec<String> = kubelet
        .devices("nvidia.com/mig-1g.5gb")
        .into_iter()
        .filter(|d| !d.healthy)
        .map(|d| d.id)
        .collect();
    assert_eq!(sick, vec![target.uuid.clone()]);
    kubelet.shutdown().await;
}

/// The driver's pre-assigned capability minors (GI = 3 + 135·G + 9·I,
/// CI = GI + 1 + C), as `/proc/driver/nvidia-caps/mig-minors` lists them.
fn mig_minors(gpus: u32) -> String {
    let mut text = String::from("config 1\nmonitor 2\n");
    for g in 0..gpus {
        for i in 0..15 {
            let gi = 3 + 135 * g + 9 * i;
            text.push_str(&format!("gpu{g}/gi{i}/access {gi}\n"));
            for c in 0..8 {
                text.push_str(&format!("gpu{g}/gi{i}/ci{c}/access {}\n", gi + 1 + c));
            }
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_mig_device_gets_its_parent_and_capability_nodes() {
    let dir = temp_dir();
    let topology = inventory_file(dir.path(), "p4d.24xlarge", "all-balanced");
    let inventory = simulated::from_instance("p4d.24xlarge", Some("all-balanced")).expect("sim");
    let minors = aside(dir.path()).join("mig-minors");
    std::fs::write(&minors, mig_minors(8)).expect("mig-minors");
    let lib = fake_nvml();
    let kubelet = kubelet(dir.path()).await;
    let _daemon = start_with_env(
        dir.path(),
        &[
            "--nvml-lib",
            lib.to_str().expect("utf-8"),
            "--mig-strategy",
            "mixed",
            "--pass-device-specs",
            "--dev-root",
            "/host",
            "--mig-minors",
            minors.to_str().expect("utf-8"),
        ],
        &[("FAKE_NVML_TOPOLOGY", topology.to_str().expect("utf-8"))],
    );
    wait_for(
        &kubelet,
        &expect(&[
            ("nvidia.com/mig-1g.5gb", 16),
            ("nvidia.com/mig-2g.10gb", 8),
            ("nvidia.com/mig-3g.20gb", 8),
        ]),
    )
    .await;
    for resource in ["nvidia.com/mig-1g.5gb", "nvidia.com/mig-3g.20gb"] {
        let pod = kubelet_sim::Pod::new(format!("p-{}", resource.len()))
            .container(kubelet_sim::Container::new("main").limit(resource, 2));
        let admission = kubelet.admit(&pod).await.expect("admitted");
        let container = &admission.containers[0];
        let mut want: Vec<String> = Vec::new();
        for id in &container.resources[resource].device_ids {
            let (gpu, mig) = inventory
                .gpus
                .iter()
                .find_map(|g| g.mig_devices.iter().find(|m| &m.uuid == id).map(|m| (g, m)))
                .expect("a MIG device of the node");
            let gi = 3 + 135 * gpu.minor + 9 * mig.gpu_instance_id;
            let ci = gi + 1 + mig.compute_instance_id;
            want.push(format!("/host/dev/nvidia{}", gpu.minor));
            want.push(format!("/host/dev/nvidia-caps/nvidia-cap{gi}"));
            want.push(format!("/host/dev/nvidia-caps/nvidia-cap{ci}"));
        }
        let mut got: Vec<String> = container
            .merged
            .devices
            .iter()
            .map(|d| d.host_path.clone())
            .filter(|p| !p.ends_with("ctl") && !p.contains("uvm"))
            .collect();
        got.sort();
        want.sort();
        want.dedup();
        assert_eq!(got, want, "{resource}");
        assert!(
            container
                .merged
                .devices
                .iter()
                .all(|d| d.permissions == "rw")
        );
    }
    kubelet.shutdown().await;
}

/// With a CDI strategy the spec mounts the driver's files found under the
/// driver root (as this pod sees it), with the host's driver root in each
/// host path, and every CDI name Allocate returns is defined in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cdi_spec_carries_the_driver_files_found_under_the_driver_root() {
    let dir = temp_dir();
    let topology = inventory_file(dir.path(), "g5.xlarge", "all-disabled");
    let driver_root = aside(dir.path()).join("driver-root");
    let lib_dir = driver_root.join("usr/lib64");
    std::fs::create_dir_all(&lib_dir).expect("library dir");
    std::os::unix::fs::symlink(fake_nvml(), lib_dir.join("libnvidia-ml.so.1")).expect("link");
    // The fake answers driver 580.159.04.
    std::fs::write(lib_dir.join("libcuda.so.580.159.04"), b"elf").expect("libcuda");
    std::os::unix::fs::symlink("libcuda.so.580.159.04", lib_dir.join("libcuda.so.1"))
        .expect("soname link");
    std::fs::create_dir_all(driver_root.join("usr/bin")).expect("bin dir");
    std::fs::write(driver_root.join("usr/bin/nvidia-smi"), b"elf").expect("nvidia-smi");
    let cdi_dir = aside(dir.path()).join("cdi");
    let kubelet = kubelet(dir.path()).await;
    let _daemon = start_with_env(
        dir.path(),
        &[
            "--driver-root-ctr-path",
            driver_root.to_str().expect("utf-8"),
            "--driver-root",
            "/run/nvidia/driver",
            "--device-list-strategy",
            "cdi-cri",
            "--cdi-spec-dir",
            cdi_dir.to_str().expect("utf-8"),
        ],
        &[("FAKE_NVML_TOPOLOGY", topology.to_str().expect("utf-8"))],
    );
    wait_for(&kubelet, &expect(&[("nvidia.com/gpu", 1)])).await;
    let pod = kubelet_sim::Pod::new("cuda")
        .container(kubelet_sim::Container::new("main").limit("nvidia.com/gpu", 1));
    let admission = kubelet.admit(&pod).await.expect("admitted");
    let spec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(cdi_dir.join("k8s.device-plugin.nvidia.com-gpu.json"))
            .expect("spec written"),
    )
    .expect("JSON");
    for name in &admission.containers[0].merged.cdi_devices {
        let (_, id) = name.split_once('=').expect("kind=name");
        assert!(
            spec["devices"]
                .as_array()
                .expect("devices")
                .iter()
                .any(|d| d["name"] == id),
            "{name} is not defined in the spec"
        );
    }
    let mounts: Vec<(String, String)> = spec["containerEdits"]["mounts"]
        .as_array()
        .expect("driver mounts")
        .iter()
        .map(|m| {
            (
                m["containerPath"].as_str().expect("path").to_string(),
                m["hostPath"].as_str().expect("host path").to_string(),
            )
        })
        .collect();
    for (container, host) in [
        (
            "/usr/lib64/libcuda.so.1",
            "/run/nvidia/driver/usr/lib64/libcuda.so.580.159.04",
        ),
        (
            "/usr/local/nvidia/lib64/libcuda.so.1",
            "/run/nvidia/driver/usr/lib64/libcuda.so.580.159.04",
        ),
        (
            "/usr/bin/nvidia-smi",
            "/run/nvidia/driver/usr/bin/nvidia-smi",
        ),
    ] {
        assert!(
            mounts.contains(&(container.to_string(), host.to_string())),
            "{container} from {host} missing: {mounts:?}"
        );
    }
    // Each host path is the driver root's file, seen here under the mount.
    for (_, host) in &mounts {
        let here = driver_root.join(host.trim_start_matches("/run/nvidia/driver/"));
        assert!(here.exists(), "{host} does not exist under the driver root");
    }
    kubelet.shutdown().await;
}

/// The feature file NFD reads carries GFD v0.20's labels as NVML answers
/// them (the fake's: driver 580.159.04, CUDA 13.0, an A100's compute
/// capability 8.0 and its MIG devices' attributes). The PCI class and the
/// machine type come from this host's sysfs, so `gpu.mode` is not checked
/// and `gpu.machine` only for presence (GFD writes `unknown` without a DMI
/// product name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feature_file_has_gfd_labels_from_nvml() {
    let dir = temp_dir();
    let topology = inventory_file(dir.path(), "p4d.24xlarge", "all-balanced");
    let features = aside(dir.path()).join("features");
    let lib = fake_nvml();
    let kubelet = kubelet(dir.path()).await;
    let mut daemon = start_with_env(
        dir.path(),
        &[
            "--nvml-lib",
            lib.to_str().expect("utf-8"),
            "--mig-strategy",
            "mixed",
            "--feature-file",
            features.to_str().expect("utf-8"),
        ],
        &[("FAKE_NVML_TOPOLOGY", topology.to_str().expect("utf-8"))],
    );
    wait_for(
        &kubelet,
        &expect(&[
            ("nvidia.com/mig-1g.5gb", 16),
            ("nvidia.com/mig-2g.10gb", 8),
            ("nvidia.com/mig-3g.20gb", 8),
        ]),
    )
    .await;
    // Written before the resources are served, so present by now.
    let text = std::fs::read_to_string(&features).expect("feature file");
    let labels: std::collections::BTreeMap<&str, &str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .collect();
    for (key, value) in [
        ("nvidia.com/gpu.present", "true"),
        ("nvidia.com/gpu.product", "NVIDIA-A100-SXM4-40GB"),
        ("nvidia.com/gpu.count", "8"),
        ("nvidia.com/gpu.replicas", "0"),
        ("nvidia.com/gpu.memory", "40960"),
        ("nvidia.com/gpu.family", "ampere"),
        ("nvidia.com/gpu.compute.major", "8"),
        ("nvidia.com/gpu.compute.minor", "0"),
        ("nvidia.com/cuda.driver.major", "580"),
        ("nvidia.com/cuda.driver.minor", "159"),
        ("nvidia.com/cuda.driver.rev", "04"),
        ("nvidia.com/cuda.driver-version.full", "580.159.04"),
        ("nvidia.com/cuda.driver-version.revision", "04"),
        ("nvidia.com/cuda.runtime.major", "13"),
        ("nvidia.com/cuda.runtime-version.full", "13.0"),
        ("nvidia.com/mig.capable", "true"),
        ("nvidia.com/mig.strategy", "mixed"),
        ("nvidia.com/mps.capable", "false"),
        ("nvidia.com/mig-1g.5gb.count", "16"),
        (
            "nvidia.com/mig-1g.5gb.product",
            "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb",
        ),
        ("nvidia.com/mig-3g.20gb.memory", "20096"),
        ("nvidia.com/mig-3g.20gb.multiprocessors", "42"),
        ("nvidia.com/mig-3g.20gb.slices.gi", "3"),
        ("nvidia.com/mig-3g.20gb.slices.ci", "3"),
        ("nvidia.com/mig-3g.20gb.engines.copy", "3"),
        ("nvidia.com/mig-3g.20gb.engines.decoder", "1"),
        ("nvidia.com/mig-3g.20gb.engines.encoder", "0"),
        ("nvidia.com/mig-3g.20gb.engines.jpeg", "0"),
        ("nvidia.com/mig-3g.20gb.engines.ofa", "0"),
    ] {
        assert_eq!(labels.get(key).copied(), Some(value), "{key} in\n{text}");
    }
    assert!(
        labels.contains_key("nvidia.com/gpu.machine"),
        "gpu.machine in\n{text}"
    );
    assert!(daemon.terminate().success());
    kubelet.shutdown().await;
}
