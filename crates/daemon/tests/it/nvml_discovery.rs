//! NVML discovery against the fake NVML library (`tests/fake-nvml`).
//!
//! NVML state is process-wide (the backend keeps one initialised NVML per
//! library path, and the fake reads its environment at init), so every
//! scenario runs in a child process: this test executable re-run with
//! `--exact child_discover`, which calls `discover` and prints the result as
//! one JSON line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use gpu_slicer_core::allocate::NodeDeviceFiles;
use gpu_slicer_core::gpu::{Gpu, Inventory, MigDevice, NvLinkPeer};
use gpu_slicer_daemon::gpus::nvml::{NvmlOptions, discover};
use serde_json::{Value, json};

const CHILD: &str = "NVML_DISCOVERY_CHILD";
const MARK: &str = "@@DISCOVERY@@";

/// The child side, run by [`run`] in a child process (NVML is loaded once
/// per process, so each discovery needs its own). Ignored in a normal run,
/// so that it never reports a pass it did not earn.
#[test]
#[ignore = "helper: the discovery tests run it in a child process"]
fn child_discover() {
    assert!(
        std::env::var_os(CHILD).is_some(),
        "run by the discovery tests in a child process, with {CHILD} set"
    );
    let path = |key: &str| std::env::var_os(key).map(PathBuf::from);
    let opts = NvmlOptions {
        lib_path: path("NVML_TEST_LIB"),
        driver_root: path("NVML_TEST_DRIVER_ROOT").unwrap_or_else(|| PathBuf::from("/nonexistent")),
        sysfs_root: path("NVML_TEST_SYSFS").unwrap_or_else(|| PathBuf::from("/nonexistent")),
        dev_root: path("NVML_TEST_DEV").unwrap_or_else(|| PathBuf::from("/nonexistent")),
        mig_minors: path("NVML_TEST_MIG_MINORS").unwrap_or_else(|| PathBuf::from("/nonexistent")),
    };
    let runs: usize = std::env::var("NVML_TEST_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    let mut results = Vec::new();
    for _ in 0..runs {
        let result = match discover(&opts) {
            Ok(d) => {
                let mut caps: Vec<_> = d.files.mig_caps.iter().collect();
                caps.sort();
                json!({ "ok": {
                    "inventory": d.inventory,
                    "control": d.files.control,
                    "mig_caps": caps,
                    "library": d.library,
                    "driver_version": d.driver_version,
                }})
            }
            Err(e) => json!({ "err": e.to_string() }),
        };
        results.push(result);
    }
    println!("{MARK}{}", Value::Array(results));
}

/// The fake library, built fresh once per test process (see `common`).
fn fake_library() -> PathBuf {
    crate::common::fake_nvml()
}

/// A node's directories: sysfs, dev and mig-minors, under one temp dir.
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Self {
        Node {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn numa(&self, sysfs_bus_id: &str, value: &str) {
        let dev = self.path("sys/bus/pci/devices").join(sysfs_bus_id);
        std::fs::create_dir_all(&dev).expect("sysfs dir");
        std::fs::write(dev.join("numa_node"), value).expect("numa_node");
    }

    fn dev_nodes(&self, names: &[&str]) {
        std::fs::create_dir_all(self.path("dev")).expect("dev dir");
        for name in names {
            std::fs::write(self.path("dev").join(name), "").expect("dev node");
        }
    }

    /// A `mig-minors` file with the driver's pre-assigned minors.
    fn mig_minors(&self, gpus: u32) {
        let mut text = String::from("config 1\nmonitor 2\n");
        for g in 0..gpus {
            for i in 0..15 {
                let gi = 3 + 135 * g + 9 * i;
                text += &format!("gpu{g}/gi{i}/access {gi}\n");
                for c in 0..8 {
                    text += &format!("gpu{g}/gi{i}/ci{c}/access {}\n", gi + 1 + c);
                }
            }
        }
        std::fs::write(self.path("mig-minors"), text).expect("mig-minors");
    }

    fn topology(&self, inventory: &Inventory) -> PathBuf {
        let path = self.path("topology.yaml");
        let text = serde_json::to_string_pretty(inventory).expect("serialise inventory");
        std::fs::write(&path, text).expect("topology");
        path
    }
}

/// Runs `discover` in a child process; one JSON value per run.
fn run(
    lib: Option<&Path>,
    node: &Node,
    topology: Option<&Path>,
    env: &[(&str, &str)],
) -> Vec<Value> {
    let exe = std::env::current_exe().expect("test executable path");
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        "nvml_discovery::child_discover",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD, "1")
    .env("NVML_TEST_DRIVER_ROOT", node.path("driver-root"))
    .env("NVML_TEST_SYSFS", node.path("sys"))
    .env("NVML_TEST_DEV", node.path("dev"))
    .env("NVML_TEST_MIG_MINORS", node.path("mig-minors"))
    .env_remove("FAKE_NVML_FAIL")
    .env_remove("FAKE_NVML_INIT_ERROR")
    .env_remove("FAKE_NVML_TOPOLOGY");
    if let Some(lib) = lib {
        cmd.env("NVML_TEST_LIB", lib);
    }
    if let Some(t) = topology {
        cmd.env("FAKE_NVML_TOPOLOGY", t);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.find(MARK).map(|at| &l[at + MARK.len()..]))
        .unwrap_or_else(|| {
            panic!(
                "child printed no result\nstdout:\n{stdout}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    match serde_json::from_str(line).expect("child JSON") {
        Value::Array(v) => v,
        other => panic!("unexpected child output {other}"),
    }
}

fn ok(result: &Value) -> &Value {
    match result.get("ok") {
        Some(v) => v,
        None => panic!("discovery failed: {result}"),
    }
}

fn err(result: &Value) -> String {
    match result.get("err").and_then(Value::as_str) {
        Some(e) => e.to_string(),
        None => panic!("discovery succeeded, expected an error: {result}"),
    }
}

/// The discovered inventory without the facts only node labels read (the
/// driver's versions, machine type, compute capability, PCI class, MIG
/// attributes): the scenarios here compare the rest, and
/// [`label_facts_from_nvml_and_sysfs`] checks those.
fn inventory(result: &Value) -> Inventory {
    let mut inventory: Inventory =
        serde_json::from_value(ok(result)["inventory"].clone()).expect("inventory");
    inventory.node = Default::default();
    for gpu in &mut inventory.gpus {
        gpu.compute_capability = None;
        gpu.pci_class = None;
        for dev in &mut gpu.mig_devices {
            dev.attributes = None;
        }
    }
    inventory
}

fn gpu(index: u32, model: &str, memory_mib: u64) -> Gpu {
    Gpu {
        index,
        model: model.to_string(),
        uuid: format!("GPU-00000000-0000-4000-8000-{index:012x}"),
        memory_mib,
        pci_bus_id: format!("00000000:{:02X}:00.0", 0x0A + 0x10 * index),
        pci_device_id: 0x20B0_10DE,
        numa_node: None,
        minor: index,
        mig_capable: true,
        mig_enabled: false,
        mig_devices: Vec::new(),
        nvlinks: Vec::new(),
        pcie: Vec::new(),
        compute_capability: None,
        pci_class: None,
    }
}

/// The memory slice a GPU instance of an 8-slice GPU starts at, from its id
/// (the driver's numbering, see `catalog::gpu_instance_id`): what
/// `nvmlGpuInstanceGetInfo` reports and discovery records.
fn start_of(gi: u32) -> u32 {
    match gi {
        0 => 0,
        1..=2 => (gi - 1) * 4,
        3..=6 => (gi - 3) * 2,
        _ => gi - 7,
    }
}

fn mig(gpu: u32, index: u32, profile: &str, gi: u32, ci: u32, memory_mib: u64) -> MigDevice {
    MigDevice {
        index,
        profile: profile.to_string(),
        uuid: format!("MIG-00000000-0000-4000-8000-{gpu:06x}{index:06x}"),
        gpu_instance_id: gi,
        compute_instance_id: ci,
        memory_mib,
        attributes: None,
        placement_start: Some(start_of(gi)),
    }
}

/// `((gpu minor, GI, CI), (GI cap minor, CI cap minor))`.
type MigCap = ((u32, u32, u32), (u32, u32));

const A100: &str = "NVIDIA A100-SXM4-40GB";

/// The facts behind GFD's labels: versions from NVML, compute capability
/// from NVML (the fake: the catalog's A100, 8.0), PCI class and machine
/// type from sysfs, MIG attributes from `nvmlDeviceGetAttributes_v2`.
#[test]
fn label_facts_from_nvml_and_sysfs() {
    let node = Node::new();
    let mut g0 = gpu(0, A100, 40960);
    g0.mig_enabled = true;
    g0.mig_devices = vec![mig(0, 0, "3g.20gb", 2, 0, 19968)];
    let g1 = gpu(1, A100, 40960);
    let topology = node.topology(&Inventory {
        gpus: vec![g0, g1],
        ..Default::default()
    });
    let class = |bus: &str, text: &str| {
        let dev = node.path("sys/bus/pci/devices").join(bus);
        std::fs::create_dir_all(&dev).expect("sysfs dir");
        std::fs::write(dev.join("class"), text).expect("class");
    };
    class("0000:0a:00.0", "0x030200\n");
    class("0000:1a:00.0", "0x030200\n");
    let dmi = node.path("sys/class/dmi/id");
    std::fs::create_dir_all(&dmi).expect("dmi dir");
    std::fs::write(dmi.join("product_name"), "p4d.24xlarge\n").expect("product_name");
    node.mig_minors(2);

    let results = run(
        Some(&fake_library()),
        &node,
        Some(&topology),
        &[
            ("FAKE_NVML_DRIVER_VERSION", "550.107.02"),
            ("FAKE_NVML_CUDA_DRIVER_VERSION", "12040"),
        ],
    );
    let got: Inventory =
        serde_json::from_value(ok(&results[0])["inventory"].clone()).expect("inventory");
    assert_eq!(got.node.driver_version.as_deref(), Some("550.107.02"));
    assert_eq!(got.node.cuda_driver_version, Some(12040));
    assert_eq!(got.node.machine.as_deref(), Some("p4d.24xlarge"));
    for g in &got.gpus {
        let cc = g.compute_capability.expect("compute capability");
        assert_eq!((cc.major, cc.minor), (8, 0), "GPU {}", g.index);
        assert_eq!(g.pci_class, Some(0x03_0200), "GPU {}", g.index);
    }
    let attributes = got.gpus[0].mig_devices[0]
        .attributes
        .expect("MIG attributes");
    assert_eq!(
        (
            attributes.memory_mib,
            attributes.multiprocessors,
            attributes.gpu_instance_slices,
            attributes.compute_instance_slices,
        ),
        (19968, 42, 3, 3)
    );
    let engines = attributes.engines.expect("engines");
    assert_eq!(
        (
            engines.copy,
            engines.decoder,
            engines.encoder,
            engines.jpeg,
            engines.ofa
        ),
        (3, 1, 0, 0, 0)
    );

    // No DMI file: GFD's `unknown`; no class file: unknown, left out.
    let bare = Node::new();
    let topology = bare.topology(&Inventory {
        gpus: vec![gpu(0, A100, 40960)],
        ..Default::default()
    });
    let results = run(Some(&fake_library()), &bare, Some(&topology), &[]);
    let got: Inventory =
        serde_json::from_value(ok(&results[0])["inventory"].clone()).expect("inventory");
    assert_eq!(got.node.machine.as_deref(), Some("unknown"));
    assert_eq!(got.node.cuda_driver_version, Some(13000));
    assert_eq!(got.gpus[0].pci_class, None);
}

#[test]
fn eight_a100_all_balanced() {
    let node = Node::new();
    let mut gpus = Vec::new();
    for i in 0..8u32 {
        let mut g = gpu(i, A100, 40960);
        g.mig_enabled = true;
        g.numa_node = Some(i64::from(i / 4));
        node.numa(
            &format!("0000:{:02x}:00.0", 0x0A + 0x10 * i),
            &format!("{}\n", i / 4),
        );
        g.mig_devices = vec![
            mig(i, 0, "3g.20gb", 2, 0, 19968),
            mig(i, 1, "2g.10gb", 3, 0, 9856),
            mig(i, 2, "1g.5gb", 9, 0, 4864),
            mig(i, 3, "1g.5gb", 10, 0, 4864),
        ];
        g.nvlinks = (0..8)
            .filter(|&p| p != i)
            .map(|p| NvLinkPeer {
                peer_index: p,
                links: 2,
            })
            .collect();
        gpus.push(g);
    }
    let want = Inventory {
        gpus,
        ..Default::default()
    };
    node.dev_nodes(&["nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia0"]);
    node.mig_minors(8);
    let topology = node.topology(&want);
    let lib = fake_library();

    let results = run(Some(&lib), &node, Some(&topology), &[]);
    let got = inventory(&results[0]);
    assert_eq!(got, want);
    let migs: Vec<&MigDevice> = got.gpus.iter().flat_map(|g| &g.mig_devices).collect();
    assert_eq!(migs.len(), 32);
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    for m in &migs {
        *names.entry(m.profile.as_str()).or_default() += 1;
    }
    assert_eq!(
        names,
        BTreeMap::from([("1g.5gb", 16), ("2g.10gb", 8), ("3g.20gb", 8)])
    );

    let ok = ok(&results[0]);
    assert_eq!(
        ok["control"],
        json!(["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"])
    );
    let caps: Vec<MigCap> = serde_json::from_value(ok["mig_caps"].clone()).expect("mig caps");
    let mut want_caps: Vec<_> = NodeDeviceFiles::synthetic_mig_minors(8)
        .into_iter()
        .collect();
    want_caps.sort();
    assert_eq!(caps, want_caps);
    // GPU 3's 1g.5gb in GI 10 → GI minor 3 + 135·3 + 90, CI minor one more.
    assert!(caps.contains(&((3, 10, 0), (498, 499))));
    assert_eq!(ok["library"], json!(lib.display().to_string()));
    assert_eq!(ok["driver_version"], json!("580.159.04"));
}

#[test]
fn mixed_node_with_non_mig_gpus_and_a_display_adapter() {
    let node = Node::new();
    let mut g0 = gpu(0, A100, 40960);
    g0.mig_enabled = true;
    g0.mig_devices = vec![
        mig(0, 0, "1c.3g.20gb", 1, 0, 19968),
        mig(0, 1, "1c.3g.20gb", 1, 1, 19968),
        mig(0, 2, "1g.10gb", 3, 0, 9856),
        mig(0, 4, "1g.5gb+me", 13, 0, 4864),
    ];
    g0.numa_node = Some(1);
    node.numa("0000:0a:00.0", "1");
    let g1 = gpu(1, A100, 40960); // MIG capable, disabled
    node.numa("0000:1a:00.0", "-1"); // no NUMA
    let mut g2 = gpu(2, "Tesla T4", 15360);
    g2.mig_capable = false;
    let mut display = gpu(3, "DGX Display", 4096);
    display.mig_capable = false;
    let mut h100 = gpu(4, "NVIDIA H100 80GB HBM3", 81559);
    h100.mig_enabled = true;
    h100.mig_devices = vec![mig(4, 0, "7g.80gb", 0, 0, 81152)];
    let all = Inventory {
        gpus: vec![g0.clone(), g1.clone(), g2.clone(), display, h100.clone()],
        ..Default::default()
    };
    let topology = node.topology(&all);
    let results = run(Some(&fake_library()), &node, Some(&topology), &[]);
    let got = inventory(&results[0]);
    assert_eq!(
        got,
        Inventory {
            gpus: vec![g0, g1, g2, h100],
            ..Default::default()
        }
    );
    let ok = ok(&results[0]);
    assert_eq!(ok["control"], json!([]), "no dev nodes were created");
    assert_eq!(ok["mig_caps"], json!([]), "no mig-minors file");
}

#[test]
fn mig_enabled_gpu_without_instances() {
    let node = Node::new();
    let mut g = gpu(0, A100, 40960);
    g.mig_enabled = true;
    let want = Inventory {
        gpus: vec![g],
        ..Default::default()
    };
    let topology = node.topology(&want);
    let results = run(Some(&fake_library()), &node, Some(&topology), &[]);
    let got = inventory(&results[0]);
    assert_eq!(got, want);
    assert!(got.gpus[0].mig_enabled && got.gpus[0].mig_devices.is_empty());
}

#[test]
fn no_gpus_is_an_empty_inventory() {
    let node = Node::new();
    let results = run(Some(&fake_library()), &node, None, &[]);
    assert_eq!(inventory(&results[0]), Inventory::default());
}

#[test]
fn repeated_discovery_reuses_nvml() {
    let node = Node::new();
    let want = Inventory {
        gpus: vec![gpu(0, A100, 40960), gpu(1, A100, 40960)],
        ..Default::default()
    };
    let topology = node.topology(&want);
    let results = run(
        Some(&fake_library()),
        &node,
        Some(&topology),
        &[("NVML_TEST_RUNS", "3")],
    );
    assert_eq!(results.len(), 3);
    for r in &results {
        assert_eq!(inventory(r), want);
    }
}

#[test]
fn library_is_found_under_the_driver_root() {
    let node = Node::new();
    let dir = node.path("driver-root/usr/lib/x86_64-linux-gnu");
    std::fs::create_dir_all(&dir).expect("lib dir");
    let copy = dir.join("libnvidia-ml.so.1");
    std::fs::copy(fake_library(), &copy).expect("copy fake");
    let want = Inventory {
        gpus: vec![gpu(0, A100, 40960)],
        ..Default::default()
    };
    let topology = node.topology(&want);
    let results = run(None, &node, Some(&topology), &[]);
    assert_eq!(inventory(&results[0]), want);
    assert_eq!(
        ok(&results[0])["library"],
        json!(copy.display().to_string())
    );
}

#[test]
fn failing_call_is_named_in_the_error() {
    let node = Node::new();
    let mut g = gpu(0, A100, 40960);
    g.mig_enabled = true;
    g.mig_devices = vec![mig(0, 0, "7g.40gb", 0, 0, 40192)];
    let topology = node.topology(&Inventory {
        gpus: vec![g],
        ..Default::default()
    });
    let lib = fake_library();

    let results = run(
        Some(&lib),
        &node,
        Some(&topology),
        &[(
            "FAKE_NVML_FAIL",
            "nvmlDeviceGetMemoryInfo_v2:NVML_ERROR_UNKNOWN",
        )],
    );
    let e = err(&results[0]);
    assert_eq!(
        e,
        "NVML nvmlDeviceGetMemoryInfo_v2 for GPU 0 failed: an internal driver error occurred"
    );

    let results = run(
        Some(&lib),
        &node,
        Some(&topology),
        &[("FAKE_NVML_FAIL", "nvmlGpuInstanceGetInfo:GPU_IS_LOST")],
    );
    let e = err(&results[0]);
    assert!(
        e.starts_with("NVML nvmlGpuInstanceGetInfo for MIG device 0:0 (GPU instance 0) failed:"),
        "{e}"
    );

    let results = run(
        Some(&lib),
        &node,
        Some(&topology),
        &[("FAKE_NVML_FAIL", "nvmlDeviceGetUUID:NO_PERMISSION")],
    );
    let e = err(&results[0]);
    assert!(
        e.contains("nvmlDeviceGetUUID for GPU 0 failed: no permission"),
        "{e}"
    );
    assert!(e.contains("privileged"), "{e}");
}

#[test]
fn init_failure_says_the_driver_is_not_loaded() {
    let node = Node::new();
    let results = run(
        Some(&fake_library()),
        &node,
        None,
        &[("FAKE_NVML_INIT_ERROR", "DRIVER_NOT_LOADED")],
    );
    let e = err(&results[0]);
    assert!(e.contains("the NVIDIA kernel driver is not loaded"), "{e}");
    assert!(e.contains("nvidia-smi"), "{e}");

    let results = run(
        Some(&fake_library()),
        &node,
        None,
        &[("FAKE_NVML_INIT_ERROR", "LIB_RM_VERSION_MISMATCH")],
    );
    let e = err(&results[0]);
    assert!(e.contains("could not initialise"), "{e}");
}

#[test]
fn missing_library_lists_what_was_tried() {
    let node = Node::new();
    let results = run(
        Some(Path::new("/nonexistent/libnvidia-ml.so.1")),
        &node,
        None,
        &[],
    );
    let e = err(&results[0]);
    assert!(
        e.starts_with("cannot load the NVML library /nonexistent/libnvidia-ml.so.1:"),
        "{e}"
    );
    assert!(e.contains("--nvml-lib"), "{e}");
    assert!(e.contains("`nvidia` runtime"), "{e}");
}

const EVENTS_CHILD: &str = "NVML_EVENTS_CHILD";

/// The child side of [`xid_events_reach_the_registered_gpus`]; ignored in a
/// normal run, like [`child_discover`].
#[test]
#[ignore = "helper: the XID test runs it in a child process"]
fn child_events() {
    use nvml_wrapper::bitmasks::event::EventTypes;
    use nvml_wrapper::enums::event::XidError;
    use nvml_wrapper::error::NvmlError as Raw;

    let events = std::env::var_os(EVENTS_CHILD).unwrap_or_else(|| {
        panic!("run by the XID test in a child process, with {EVENTS_CHILD} set")
    });
    let append = |line: &str| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&events)
            .expect("events file");
        writeln!(f, "{line}").expect("append event");
    };
    let opts = NvmlOptions {
        lib_path: std::env::var_os("NVML_TEST_LIB").map(PathBuf::from),
        ..NvmlOptions::default()
    };
    let (nvml, _) = gpu_slicer_daemon::gpus::nvml::nvml(&opts).expect("nvml");
    let gpu0 = nvml.device_by_index(0).expect("gpu 0");
    let set = nvml.create_event_set().expect("event set");
    let supported = gpu0.supported_event_types().expect("supported");
    assert!(supported.contains(EventTypes::CRITICAL_XID_ERROR));
    let set = gpu0
        .register_events(EventTypes::CRITICAL_XID_ERROR, set)
        .expect("register");
    let timeout = matches!(set.wait(50), Err(Raw::Timeout));

    // GPU 1 is not registered: its event is skipped.
    append("GPU-00000000-0000-4000-8000-000000000001 48");
    append("GPU-00000000-0000-4000-8000-000000000000 79");
    let event = set.wait(1000).expect("first event");
    let first = json!({
        "uuid": event.device.uuid().expect("uuid"),
        "xid": match event.event_data { Some(XidError::Value(v)) => v, _ => 0 },
    });

    append("MIG-00000000-0000-4000-8000-000000000001 31");
    // The wrapper drops GI/CI; read them through the raw call.
    let wait = nvml.lib().nvmlEventSetWait_v2.as_ref().expect("symbol");
    // SAFETY: an all-zero nvmlEventData_t (pointer and integers) is valid.
    let mut data: nvml_wrapper_sys::bindings::nvmlEventData_t = unsafe { std::mem::zeroed() };
    // SAFETY: the set handle is live (owned by `set`) and `data` is writable.
    let ret = unsafe { wait(set.handle(), &mut data, 1000) };
    let second = json!({ "ret": ret, "xid": data.eventData, "gi": data.gpuInstanceId, "ci": data.computeInstanceId });
    println!(
        "{MARK}{}",
        json!([{ "timeout": timeout, "first": first, "second": second }])
    );
}

#[test]
fn xid_events_reach_the_registered_gpus() {
    let node = Node::new();
    let mut g0 = gpu(0, A100, 40960);
    g0.mig_enabled = true;
    g0.mig_devices = vec![
        mig(0, 0, "3g.20gb", 1, 0, 19968),
        mig(0, 1, "3g.20gb", 2, 0, 19968),
    ];
    let topology = node.topology(&Inventory {
        gpus: vec![g0, gpu(1, A100, 40960)],
        ..Default::default()
    });
    let events = node.path("events");
    std::fs::write(&events, "").expect("events file");
    let exe = std::env::current_exe().expect("test executable path");
    let out = Command::new(exe)
        .args([
            "--exact",
            "nvml_discovery::child_events",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(EVENTS_CHILD, &events)
        .env("FAKE_NVML_EVENTS", &events)
        .env("FAKE_NVML_TOPOLOGY", &topology)
        .env("NVML_TEST_LIB", fake_library())
        .env_remove("FAKE_NVML_FAIL")
        .env_remove("FAKE_NVML_INIT_ERROR")
        .output()
        .expect("run child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.find(MARK).map(|at| &l[at + MARK.len()..]))
        .unwrap_or_else(|| {
            panic!(
                "child printed no result\nstdout:\n{stdout}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let got: Value = serde_json::from_str(line).expect("child JSON");
    assert_eq!(
        got,
        json!([{
            "timeout": true,
            "first": { "uuid": "GPU-00000000-0000-4000-8000-000000000000", "xid": 79 },
            "second": { "ret": 0, "xid": 31, "gi": 2, "ci": 0 },
        }])
    );
}
