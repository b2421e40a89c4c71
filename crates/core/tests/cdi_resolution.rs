//! Every CDI name Allocate can return resolves in the specs the daemon
//! writes, checked the way a CDI runtime resolves them (the CDI
//! specification's rules, since no maintained Rust crate implements them):
//! a qualified name `vendor/class=device`, a spec of that kind with a
//! supported `cdiVersion`, the device defined there once, and no two specs
//! of one kind defining it. For every CDI strategy × id strategy × {MIG
//! device, replica, whole GPU} × {no class, gdrcopy, gds, mofed, all three}.

use std::collections::BTreeMap;

use gpu_slicer_core::allocate::allocate;
use gpu_slicer_core::cdi;
use gpu_slicer_core::config::{DeviceIdStrategy, DeviceListStrategy};
use gpu_slicer_core::device_nodes::{DeviceClass, NodeDeviceFiles};
use gpu_slicer_core::gpu::{Gpu, Inventory, MigDevice};
use serde_json::Value;

fn gpu(index: u32, mig: bool) -> Gpu {
    Gpu {
        index,
        model: "NVIDIA A100-SXM4-40GB".into(),
        uuid: format!("GPU-{index}aaa"),
        memory_mib: 40960,
        pci_bus_id: String::new(),
        pci_device_id: 0,
        numa_node: None,
        minor: index,
        mig_capable: true,
        mig_enabled: mig,
        mig_devices: if mig {
            vec![MigDevice {
                index: 0,
                profile: "3g.20gb".into(),
                uuid: format!("MIG-{index}bbb"),
                gpu_instance_id: 1,
                compute_instance_id: 0,
                memory_mib: 20000,
                attributes: None,
                placement_start: None,
            }]
        } else {
            vec![]
        },
        nvlinks: vec![],
        pcie: vec![],
        compute_capability: None,
        pci_class: None,
    }
}

/// The CDI specification's name rules (vendor: a domain-like name; class
/// and device: letters, digits and `_ . -`, devices also `:`, starting
/// with a letter or digit).
fn parse_qualified(name: &str) -> Option<(&str, &str, &str)> {
    let (kind, device) = name.split_once('=')?;
    let (vendor, class) = kind.split_once('/')?;
    let ok = |s: &str, extra: &[char]| {
        s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
    };
    (ok(vendor, &['.', '-', '_'])
        && vendor.contains('.')
        && ok(class, &['.', '-', '_'])
        && ok(device, &['.', '-', '_', ':']))
    .then_some((vendor, class, device))
}

/// kind → (device name → how many specs of that kind define it).
fn registry(specs: &[Value]) -> BTreeMap<String, BTreeMap<String, usize>> {
    let mut kinds: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for spec in specs {
        assert!(
            ["0.5.0", "0.6.0", "0.7.0", "0.8.0"]
                .contains(&spec["cdiVersion"].as_str().unwrap_or("")),
            "{spec}"
        );
        let kind = spec["kind"].as_str().expect("kind").to_string();
        let devices = kinds.entry(kind).or_default();
        for d in spec["devices"].as_array().expect("devices") {
            let edits = &d["containerEdits"];
            assert!(
                edits.get("deviceNodes").is_some() || edits.get("mounts").is_some(),
                "a device with no edits: {d}"
            );
            *devices
                .entry(d["name"].as_str().expect("name").to_string())
                .or_default() += 1;
        }
    }
    kinds
}

#[test]
fn every_cdi_name_allocate_returns_is_defined_once_in_the_written_specs() {
    use DeviceListStrategy::*;
    let inventory = Inventory {
        gpus: vec![gpu(0, false), gpu(1, false), gpu(2, true)],
        ..Default::default()
    };
    let config_text = "version: v1\nflags:\n  migStrategy: mixed\nsharing:\n  timeSlicing:\n    resources:\n    - name: nvidia.com/gpu\n      rename: nvidia.com/gpu.shared\n      devices: [0]\n      replicas: 2\n";
    let mut files = NodeDeviceFiles {
        control: vec!["/dev/nvidiactl".into()],
        mig_caps: NodeDeviceFiles::synthetic_mig_minors(3),
        ..Default::default()
    };
    files.classes.gdrcopy = vec!["/dev/gdrdrv".into()];
    files.classes.gds = vec!["/dev/nvidia-fs0".into()];
    files.classes.mofed = vec!["/dev/infiniband/uverbs0".into()];
    let devices = [
        ("nvidia.com/mig-3g.20gb", "MIG-2bbb"),
        ("nvidia.com/gpu.shared", "GPU-0aaa::1"),
        ("nvidia.com/gpu", "GPU-1aaa"),
    ];
    let class_sets: [&[DeviceClass]; 5] = [
        &[],
        &[DeviceClass::Gdrcopy],
        &[DeviceClass::Gds],
        &[DeviceClass::Mofed],
        &DeviceClass::ALL,
    ];
    let mut checked = 0;
    for strategies in [
        vec![CdiAnnotations],
        vec![CdiCri],
        vec![CdiAnnotations, CdiCri],
    ] {
        for id_strategy in [DeviceIdStrategy::Uuid, DeviceIdStrategy::Index] {
            for classes in class_sets {
                let mut config =
                    gpu_slicer_core::config::parse(config_text, "config.yaml").expect("config");
                config.flags.plugin.device_list_strategy = strategies.clone();
                config.flags.plugin.device_id_strategy = id_strategy;
                config.flags.gdrcopy_enabled = classes.contains(&DeviceClass::Gdrcopy);
                config.flags.gds_enabled = classes.contains(&DeviceClass::Gds);
                config.flags.mofed_enabled = classes.contains(&DeviceClass::Mofed);
                let plan = gpu_slicer_core::plan::plan(&inventory, &config);
                // What the daemon writes: the GPU spec and one per enabled class.
                let mut specs = vec![cdi::spec(
                    &inventory,
                    &files,
                    "/",
                    "/",
                    &strategies,
                    &|_| None,
                )];
                for class in gpu_slicer_core::allocate::enabled_classes(&config.flags) {
                    specs.extend(cdi::class_spec(class, &files, "/"));
                }
                let kinds = registry(&specs);
                for (resource, id) in devices {
                    let resource = plan.resource(resource).expect("planned");
                    let response =
                        allocate(resource, &[id.to_string()], &config.flags, &files, "r")
                            .expect("allocated");
                    let mut names: Vec<String> = response
                        .cdi_devices
                        .iter()
                        .map(|d| d.name.clone())
                        .collect();
                    for value in response.annotations.values() {
                        names.extend(value.split(',').map(str::to_string));
                    }
                    assert!(!names.is_empty(), "{strategies:?}: no CDI name for {id}");
                    assert_eq!(
                        names
                            .iter()
                            .filter(|n| n.starts_with("k8s.device-plugin.nvidia.com/gpu="))
                            .count(),
                        if strategies.len() == 2 { 2 } else { 1 },
                        "{names:?}"
                    );
                    assert_eq!(
                        names.len(),
                        strategies.len() * (1 + classes.len()),
                        "one name per device and enabled class: {names:?}"
                    );
                    for name in &names {
                        let (vendor, class, device) = parse_qualified(name)
                            .unwrap_or_else(|| panic!("{name} is not a qualified CDI name"));
                        let defined = kinds
                            .get(&format!("{vendor}/{class}"))
                            .and_then(|d| d.get(device))
                            .copied();
                        assert_eq!(
                            defined,
                            Some(1),
                            "{name} ({strategies:?}, {id_strategy:?}, {classes:?}) must be defined exactly once"
                        );
                        checked += 1;
                    }
                }
            }
        }
    }
    // (1 + 1 + 2 strategies) × 2 id strategies × 3 devices × (1 + 2 + 2 + 2 + 4)
    // names for the class sets.
    assert_eq!(checked, 4 * 2 * 3 * 11);
}
