//! Node labels in NVIDIA GPU Feature Discovery's names, so nodeSelectors and
//! autoscalers written for GFD keep working, plus a hash of the effective
//! slicing so a node can be compared with the configuration meant for it.
//!
//! Pure: (inventory, config, plan) → labels. The daemon writes them as a
//! Node Feature Discovery "local" feature file (`key=value` lines), which
//! NFD turns into node labels.
//!
//! The rules are GFD v0.20's (`internal/lm` of NVIDIA's k8s-device-plugin),
//! label by label; docs/labels.md lists every label, its source and where
//! gpu-slicer differs. A fact the inventory does not know (a simulated node
//! has no driver version) leaves its labels out rather than inventing them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::config::{Config, MigStrategy, ReplicatedResources, SharingStrategy};
use crate::gpu::{Gpu, Inventory, MigAttributes, MigDevice};
use crate::plan::Plan;

type Labels = BTreeMap<String, String>;

pub fn labels(inventory: &Inventory, config: &Config, plan: &Plan) -> Labels {
    let mut out = Labels::new();
    if inventory.gpus.is_empty() {
        put(&mut out, "nvidia.com/gpu.present", "false");
        return out;
    }
    put(&mut out, "nvidia.com/gpu.present", "true");
    node_labels(&mut out, inventory, config);
    full_gpu_labels(&mut out, inventory, config);
    match config.flags.mig_strategy {
        MigStrategy::None => {}
        MigStrategy::Single => single_mig_labels(&mut out, inventory, config),
        MigStrategy::Mixed => mixed_mig_labels(&mut out, inventory, config),
    }
    put(&mut out, crate::node_labels::CONFIG_HASH, config_hash(plan));
    out
}

fn put(out: &mut Labels, key: &str, value: impl ToString) {
    out.insert(key.to_owned(), value.to_string());
}

/// Labels of the node as a whole: machine, driver and CUDA versions, MIG
/// and MPS capability, GPU mode, MIG strategy.
fn node_labels(out: &mut Labels, inventory: &Inventory, config: &Config) {
    let node = &inventory.node;
    if let Some(machine) = &node.machine {
        put(out, "nvidia.com/gpu.machine", sanitize(machine));
    }
    // GFD fails the whole labelling on a version that is not X.Y[.Z]; one
    // odd driver string should not take the other labels away, so only
    // these are left out.
    if let Some(version) = &node.driver_version {
        let parts: Vec<&str> = version.split('.').collect();
        if let [major, minor, rest @ ..] = parts.as_slice()
            && rest.len() <= 1
        {
            let revision = rest.first().copied().unwrap_or("");
            for (key, value) in [
                ("nvidia.com/cuda.driver.major", *major),
                ("nvidia.com/cuda.driver.minor", *minor),
                ("nvidia.com/cuda.driver.rev", revision),
                ("nvidia.com/cuda.driver-version.major", *major),
                ("nvidia.com/cuda.driver-version.minor", *minor),
                ("nvidia.com/cuda.driver-version.revision", revision),
                ("nvidia.com/cuda.driver-version.full", version.as_str()),
            ] {
                put(out, key, value);
            }
        }
    }
    if let Some(cuda) = node.cuda_driver_version {
        let (major, minor) = (cuda / 1000, cuda % 1000 / 10);
        put(out, "nvidia.com/cuda.runtime.major", major);
        put(out, "nvidia.com/cuda.runtime.minor", minor);
        put(out, "nvidia.com/cuda.runtime-version.major", major);
        put(out, "nvidia.com/cuda.runtime-version.minor", minor);
        put(
            out,
            "nvidia.com/cuda.runtime-version.full",
            format!("{major}.{minor}"),
        );
    }
    put(
        out,
        "nvidia.com/mig.capable",
        inventory.gpus.iter().any(|g| g.mig_capable),
    );
    // GFD: true only when MPS is the sharing strategy and no GPU has MIG on
    // (GFD itself fails then; false says the same without failing).
    let mps = config.sharing.strategy() == SharingStrategy::Mps
        && !inventory.gpus.iter().any(|g| g.mig_enabled);
    put(out, "nvidia.com/mps.capable", mps);
    if let Some(mode) = gpu_mode(&inventory.gpus) {
        put(out, "nvidia.com/gpu.mode", mode);
    }
    if config.flags.mig_strategy != MigStrategy::None {
        put(
            out,
            "nvidia.com/mig.strategy",
            config.flags.mig_strategy.as_str(),
        );
    }
}

/// PCI class codes (sysfs `class`) GFD tells apart.
const PCI_CLASS_VGA: u32 = 0x03_0000;
const PCI_CLASS_3D: u32 = 0x03_0200;

/// GFD's `gpu.mode`: `compute` when every GPU is a 3D controller,
/// `graphics` when every one is a VGA controller, else `unknown`. `None`
/// (label left out) when no GPU's class is known: simulated nodes.
fn gpu_mode(gpus: &[Gpu]) -> Option<&'static str> {
    if gpus.iter().all(|g| g.pci_class.is_none()) {
        return None;
    }
    let first = gpus[0].pci_class;
    if gpus.iter().any(|g| g.pci_class != first) {
        return Some("unknown");
    }
    Some(match first {
        Some(PCI_CLASS_3D) => "compute",
        Some(PCI_CLASS_VGA) => "graphics",
        _ => "unknown",
    })
}

/// GFD's architecture family for a compute capability.
pub fn family(major: u32, minor: u32) -> &'static str {
    match (major, minor) {
        (1, _) => "tesla",
        (2, _) => "fermi",
        (3, _) => "kepler",
        (5, _) => "maxwell",
        (6, _) => "pascal",
        (7, m) if m < 5 => "volta",
        (7, _) => "turing",
        (8, m) if m < 9 => "ampere",
        (8, _) => "ada-lovelace",
        (9, _) => "hopper",
        (10 | 12, _) => "blackwell",
        (13, _) => "rubin",
        _ => "undefined",
    }
}

/// How GFD's resource labeler sees one resource name under the config.
struct Replication {
    /// `0` when sharing does not apply (GFD's MIG-enabled full GPUs).
    replicas: u32,
    strategy: SharingStrategy,
    /// `-SHARED` on the product: replicated under the same name.
    shared_suffix: bool,
}

/// GFD's `getReplicas` / `isShared` / `isRenamed` for `resource`: the
/// entry of that name in the MPS block if there is one, else in the
/// time-slicing block.
fn replication(config: &Config, resource: &str) -> Replication {
    let block: &ReplicatedResources = config
        .sharing
        .mps
        .as_ref()
        .unwrap_or(&config.sharing.time_slicing);
    let entry = block.resources.iter().find(|r| r.name.as_str() == resource);
    let replicas = entry.map_or(1, |r| r.replicas.max(1));
    let renamed = entry.is_some_and(|r| r.rename.is_some()) || block.rename_by_default;
    Replication {
        replicas,
        strategy: if replicas > 1 {
            config.sharing.strategy()
        } else {
            SharingStrategy::None
        },
        shared_suffix: replicas > 1 && !renamed,
    }
}

/// `product`, `count`, `replicas`, `sharing-strategy` of one resource.
fn base_labels(
    out: &mut Labels,
    prefix: &str,
    product_parts: &[&str],
    count: usize,
    replication: &Replication,
) {
    let mut product: Vec<String> = product_parts
        .iter()
        .map(|p| sanitize(p))
        .filter(|p| !p.is_empty())
        .collect();
    if replication.shared_suffix {
        product.push("SHARED".into());
    }
    put(out, &format!("{prefix}.product"), product.join("-"));
    put(out, &format!("{prefix}.count"), count);
    put(out, &format!("{prefix}.replicas"), replication.replicas);
    put(
        out,
        &format!("{prefix}.sharing-strategy"),
        replication.strategy.as_str(),
    );
}

/// `nvidia.com/gpu.*` for the full GPUs. As GFD: one model's labels (the
/// first GPU's here; GFD takes whichever its map yields), counted over the
/// GPUs of that model; when all of them have MIG on, sharing does not
/// apply (`replicas` 0).
fn full_gpu_labels(out: &mut Labels, inventory: &Inventory, config: &Config) {
    let first = &inventory.gpus[0];
    let same: Vec<&Gpu> = inventory
        .gpus
        .iter()
        .filter(|g| g.model == first.model)
        .collect();
    let full = same.iter().copied().find(|g| !g.mig_enabled);
    let replication = match full {
        Some(_) => replication(config, GPU_RESOURCE),
        None => Replication {
            replicas: 0,
            strategy: SharingStrategy::None,
            shared_suffix: false,
        },
    };
    let gpu = full.unwrap_or(first);
    base_labels(out, GPU_RESOURCE, &[&gpu.model], same.len(), &replication);
    if gpu.memory_mib != 0 {
        put(out, "nvidia.com/gpu.memory", gpu.memory_mib);
    }
    if let Some(cc) = gpu.compute_capability
        && cc.major != 0
    {
        put(out, "nvidia.com/gpu.family", family(cc.major, cc.minor));
        put(out, "nvidia.com/gpu.compute.major", cc.major);
        put(out, "nvidia.com/gpu.compute.minor", cc.minor);
    }
}

const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// The MIG devices of the node grouped by GFD's name (`+` written `.`), in
/// first-seen order: (name, parent, first device, count).
fn mig_groups(inventory: &Inventory) -> Vec<(String, &Gpu, &MigDevice, usize)> {
    let mut groups: Vec<(String, &Gpu, &MigDevice, usize)> = Vec::new();
    for gpu in inventory.gpus.iter().filter(|g| g.mig_enabled) {
        for dev in &gpu.mig_devices {
            let name = dev.profile.replace('+', ".");
            match groups.iter_mut().find(|(n, ..)| *n == name) {
                Some(group) => group.3 += 1,
                None => groups.push((name, gpu, dev, 1)),
            }
        }
    }
    groups
}

/// `memory`, `multiprocessors`, `slices.*`, `engines.*` of a MIG resource,
/// from one of its devices; what is not known is left out.
fn mig_attribute_labels(out: &mut Labels, prefix: &str, attributes: Option<&MigAttributes>) {
    let Some(a) = attributes else {
        return;
    };
    put(out, &format!("{prefix}.memory"), a.memory_mib);
    put(out, &format!("{prefix}.multiprocessors"), a.multiprocessors);
    put(out, &format!("{prefix}.slices.gi"), a.gpu_instance_slices);
    put(
        out,
        &format!("{prefix}.slices.ci"),
        a.compute_instance_slices,
    );
    if let Some(e) = a.engines {
        put(out, &format!("{prefix}.engines.copy"), e.copy);
        put(out, &format!("{prefix}.engines.decoder"), e.decoder);
        put(out, &format!("{prefix}.engines.encoder"), e.encoder);
        put(out, &format!("{prefix}.engines.jpeg"), e.jpeg);
        put(out, &format!("{prefix}.engines.ofa"), e.ofa);
    }
}

/// `single`: `nvidia.com/gpu.*` describe the MIG devices, or say
/// `<model>-MIG-INVALID` when the node is not one profile on MIG-enabled
/// GPUs only (GFD's three checks).
fn single_mig_labels(out: &mut Labels, inventory: &Inventory, config: &Config) {
    let Some(first_mig) = inventory.gpus.iter().find(|g| g.mig_enabled) else {
        return;
    };
    let groups = mig_groups(inventory);
    let valid = inventory
        .gpus
        .iter()
        .all(|g| g.mig_enabled && !g.mig_devices.is_empty())
        && groups.len() == 1;
    match groups.first() {
        Some((name, parent, dev, count)) if valid => {
            let replication = replication(config, GPU_RESOURCE);
            base_labels(
                out,
                GPU_RESOURCE,
                &[&parent.model, "MIG", name],
                *count,
                &replication,
            );
            mig_attribute_labels(out, GPU_RESOURCE, dev.attributes.as_ref());
        }
        _ => {
            let product = [sanitize(&first_mig.model), "MIG".into(), "INVALID".into()];
            put(out, "nvidia.com/gpu.product", product.join("-"));
            put(out, "nvidia.com/gpu.count", 0);
            put(out, "nvidia.com/gpu.replicas", 0);
            put(out, "nvidia.com/gpu.sharing-strategy", "");
            put(out, "nvidia.com/gpu.memory", 0);
        }
    }
}

/// `mixed`: `nvidia.com/mig-<profile>.*` per MIG profile present.
fn mixed_mig_labels(out: &mut Labels, inventory: &Inventory, config: &Config) {
    for (name, parent, dev, count) in mig_groups(inventory) {
        let prefix = format!("nvidia.com/mig-{name}");
        let replication = replication(config, &prefix);
        base_labels(
            out,
            &prefix,
            &[&parent.model, "MIG", &name],
            count,
            &replication,
        );
        mig_attribute_labels(out, &prefix, dev.attributes.as_ref());
    }
}

/// GFD's `sanitise`: characters other than letters, digits, `-`, `_`, `.`
/// and spaces are dropped, then runs of whitespace become one `-`
/// (`NVIDIA A100-SXM4-40GB` → `NVIDIA-A100-SXM4-40GB`).
fn sanitize(text: &str) -> String {
    let kept: String = text
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ' '))
        .collect();
    kept.split_whitespace().collect::<Vec<_>>().join("-")
}

/// FNV-1a over the resource names and counts: equal plans give equal hashes
/// whatever the GPU UUIDs, so nodes of one NodePool compare equal.
pub fn config_hash(plan: &Plan) -> String {
    let mut text = String::new();
    for resource in &plan.resources {
        let replicas = resource.sharing.map_or(1, |s| s.replicas);
        let _ = writeln!(
            text,
            "{}={}x{replicas}",
            resource.name,
            resource.devices.len()
        );
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The labels as a Node Feature Discovery feature file (`key=value` lines);
/// the daemon writes it atomically so NFD never reads half a file.
pub fn feature_file_text(labels: &BTreeMap<String, String>) -> String {
    let mut text = String::from("# Written by gpu-slicer; read by Node Feature Discovery.\n");
    for (key, value) in labels {
        let _ = writeln!(text, "{key}={value}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ReplicatedResource;
    use crate::gpu::{MigEngines, NodeFacts, simulated};
    use crate::plan::plan;

    fn labels_for(
        instance: &str,
        layout: Option<&str>,
        config: &Config,
    ) -> BTreeMap<String, String> {
        let inventory = simulated::from_instance(instance, layout).expect("simulated");
        let planned = plan(&inventory, config);
        labels(&inventory, config, &planned)
    }

    #[test]
    fn mixed_mig_labels_per_profile() {
        let mut config = Config::default();
        config.flags.mig_strategy = MigStrategy::Mixed;
        let got = labels_for("p4d.24xlarge", Some("all-balanced"), &config);
        for (key, value) in [
            ("nvidia.com/gpu.present", "true"),
            ("nvidia.com/gpu.count", "8"),
            ("nvidia.com/mig.capable", "true"),
            ("nvidia.com/mig.strategy", "mixed"),
            ("nvidia.com/mig-1g.5gb.count", "16"),
            (
                "nvidia.com/mig-1g.5gb.product",
                "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb",
            ),
            ("nvidia.com/mig-3g.20gb.count", "8"),
            ("nvidia.com/mig-3g.20gb.replicas", "1"),
            ("nvidia.com/mig-3g.20gb.sharing-strategy", "none"),
        ] {
            assert_eq!(got.get(key).map(String::as_str), Some(value), "{key}");
        }
    }

    #[test]
    fn time_slicing_labels_and_shared_suffix() {
        let mut config = Config::default();
        config
            .sharing
            .time_slicing
            .resources
            .push(ReplicatedResource::every("nvidia.com/gpu", 4));
        let got = labels_for("g5.12xlarge", None, &config);
        assert_eq!(got["nvidia.com/gpu.product"], "NVIDIA-A10G-SHARED");
        assert_eq!(got["nvidia.com/gpu.replicas"], "4");
        assert_eq!(got["nvidia.com/gpu.sharing-strategy"], "time-slicing");
        assert_eq!(got["nvidia.com/mig.capable"], "false");
        assert!(!got.contains_key("nvidia.com/mig.strategy"));
    }

    #[test]
    fn config_hash_depends_on_the_plan_not_the_uuids() {
        let mut config = Config::default();
        config.flags.mig_strategy = MigStrategy::Mixed;
        let a = labels_for("p4d.24xlarge", Some("all-balanced"), &config);
        let b = labels_for("p4d.24xlarge", Some("all-1g.5gb"), &config);
        let inventory = simulated::from_topology_str(
            "instance: p4d.24xlarge\nmigLayout: all-balanced\nuuidSeed: another-node\n",
            "t.yaml",
        )
        .expect("topology");
        let c = labels(&inventory, &config, &plan(&inventory, &config));
        assert_ne!(
            a["gpu-slicer.io/config-hash"],
            b["gpu-slicer.io/config-hash"]
        );
        assert_eq!(
            a["gpu-slicer.io/config-hash"],
            c["gpu-slicer.io/config-hash"]
        );
    }

    fn parse_config(yaml: &str) -> Config {
        crate::config::parse(yaml, "test.yaml").expect("config")
    }

    fn topology(yaml: &str) -> Inventory {
        simulated::from_topology_str(yaml, "t.yaml").expect("topology")
    }

    /// Every `(key, value)` of `want` is in `got`; `None` means absent.
    fn assert_labels(got: &Labels, want: &[(&str, Option<&str>)], case: &str) {
        for (key, value) in want {
            assert_eq!(
                got.get(*key).map(String::as_str),
                *value,
                "{case}: {key} in {got:#?}"
            );
        }
    }

    /// GFD's README ("Verifying Everything Works"): one A100-SXM4-40GB on a
    /// DGX, driver 455.06, CUDA 11.1. The inputs are patched into a
    /// simulated GPU (the catalog's A100 is named as today's drivers name
    /// it, `NVIDIA A100-SXM4-40GB`, with 40960 MiB). Deliberate differences:
    /// no `gfd.timestamp` (gpu-slicer rewrites the file only when a label
    /// changes), and `gpu.machine` sanitised as GFD v0.20 does (the README
    /// predates that: a label value cannot hold a space).
    #[test]
    fn gfd_readme_full_gpu_example() {
        let mut inventory = topology("gpus:\n  - model: A100-40GB\n");
        inventory.gpus[0].model = "A100-SXM4-40GB".into();
        inventory.gpus[0].memory_mib = 39538;
        inventory.node = NodeFacts {
            driver_version: Some("455.06".into()),
            cuda_driver_version: Some(11010),
            machine: Some("NVIDIA DGX-2H".into()),
        };
        let config = Config::default();
        let got = labels(&inventory, &config, &plan(&inventory, &config));
        assert_labels(
            &got,
            &[
                ("nvidia.com/cuda.driver.major", Some("455")),
                ("nvidia.com/cuda.driver.minor", Some("06")),
                ("nvidia.com/cuda.driver.rev", Some("")),
                ("nvidia.com/cuda.runtime.major", Some("11")),
                ("nvidia.com/cuda.runtime.minor", Some("1")),
                ("nvidia.com/gpu.compute.major", Some("8")),
                ("nvidia.com/gpu.compute.minor", Some("0")),
                ("nvidia.com/gpu.count", Some("1")),
                ("nvidia.com/gpu.family", Some("ampere")),
                ("nvidia.com/gpu.machine", Some("NVIDIA-DGX-2H")),
                ("nvidia.com/gpu.memory", Some("39538")),
                ("nvidia.com/gpu.product", Some("A100-SXM4-40GB")),
                ("nvidia.com/gfd.timestamp", None),
            ],
            "README example",
        );
    }

    fn readme_attributes(memory_mib: u64) -> Option<MigAttributes> {
        Some(MigAttributes {
            memory_mib,
            multiprocessors: 14,
            gpu_instance_slices: 1,
            compute_instance_slices: 1,
            engines: Some(MigEngines {
                copy: 1,
                decoder: 1,
                encoder: 1,
                jpeg: 0,
                ofa: 0,
            }),
        })
    }

    /// GFD's README, "MIG 'single' strategy": 8 GPUs of 7 × 1g.5gb each. The
    /// README's example values (memory 5120, one encoder) are patched in;
    /// the catalog's own (4864 MiB, no engine counts) are checked below.
    #[test]
    fn gfd_readme_single_strategy_example() {
        let mut inventory = simulated::from_instance("p4d.24xlarge", Some("all-1g.5gb")).unwrap();
        for gpu in &mut inventory.gpus {
            gpu.model = "A100-SXM4-40GB".into();
            for dev in &mut gpu.mig_devices {
                dev.attributes = readme_attributes(5120);
            }
        }
        let config = parse_config("version: v1\nflags: {migStrategy: single}\n");
        let got = labels(&inventory, &config, &plan(&inventory, &config));
        assert_labels(
            &got,
            &[
                ("nvidia.com/mig.strategy", Some("single")),
                ("nvidia.com/gpu.product", Some("A100-SXM4-40GB-MIG-1g.5gb")),
                ("nvidia.com/gpu.count", Some("56")),
                ("nvidia.com/gpu.memory", Some("5120")),
                ("nvidia.com/gpu.multiprocessors", Some("14")),
                ("nvidia.com/gpu.slices.gi", Some("1")),
                ("nvidia.com/gpu.slices.ci", Some("1")),
                ("nvidia.com/gpu.engines.copy", Some("1")),
                ("nvidia.com/gpu.engines.decoder", Some("1")),
                ("nvidia.com/gpu.engines.encoder", Some("1")),
                ("nvidia.com/gpu.engines.jpeg", Some("0")),
                ("nvidia.com/gpu.engines.ofa", Some("0")),
            ],
            "README single example",
        );
    }

    /// GFD's README, "MIG 'mixed' strategy": a MIG type with 2 devices of
    /// 10240 MB, 14 SMs, one slice (the README's values, patched in).
    #[test]
    fn gfd_readme_mixed_strategy_example() {
        let mut inventory =
            topology("gpus:\n  - model: A100-80GB\n    migDevices: [1g.10gb, 1g.10gb]\n");
        for dev in &mut inventory.gpus[0].mig_devices {
            dev.attributes = readme_attributes(10240);
        }
        let config = parse_config("version: v1\nflags: {migStrategy: mixed}\n");
        let got = labels(&inventory, &config, &plan(&inventory, &config));
        let mig = "nvidia.com/mig-1g.10gb";
        let want: Vec<(String, Option<&str>)> = [
            ("count", "2"),
            ("memory", "10240"),
            ("multiprocessors", "14"),
            ("slices.ci", "1"),
            ("slices.gi", "1"),
            ("engines.copy", "1"),
            ("engines.decoder", "1"),
            ("engines.encoder", "1"),
            ("engines.jpeg", "0"),
            ("engines.ofa", "0"),
            ("product", "NVIDIA-A100-SXM4-80GB-MIG-1g.10gb"),
        ]
        .into_iter()
        .map(|(k, v)| (format!("{mig}.{k}"), Some(v)))
        .collect();
        let want: Vec<(&str, Option<&str>)> = want.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_labels(&got, &want, "README mixed example");
        assert_eq!(got["nvidia.com/mig.strategy"], "mixed");
    }

    /// What simulated nodes say from the catalog alone, and leave out.
    #[test]
    fn simulated_nodes_label_from_the_catalog() {
        let mixed = "version: v1\nflags: {migStrategy: mixed}\n";
        for (instance, layout, config, want) in [
            (
                "p5e.48xlarge",
                Some("all-1g.18gb"),
                mixed,
                &[
                    ("nvidia.com/gpu.machine", Some("p5e.48xlarge")),
                    ("nvidia.com/gpu.family", Some("hopper")),
                    ("nvidia.com/gpu.compute.major", Some("9")),
                    ("nvidia.com/gpu.compute.minor", Some("0")),
                    ("nvidia.com/gpu.product", Some("NVIDIA-H200")),
                    ("nvidia.com/gpu.count", Some("8")),
                    // Every GPU has MIG on: sharing does not apply to them.
                    ("nvidia.com/gpu.replicas", Some("0")),
                    ("nvidia.com/gpu.memory", Some("143771")),
                    ("nvidia.com/mig-1g.18gb.count", Some("56")),
                    ("nvidia.com/mig-1g.18gb.memory", Some("16384")),
                    ("nvidia.com/mig-1g.18gb.multiprocessors", Some("16")),
                    ("nvidia.com/mig-1g.18gb.engines.copy", Some("1")),
                    ("nvidia.com/mig-1g.18gb.engines.decoder", Some("1")),
                    ("nvidia.com/mig-1g.18gb.engines.encoder", Some("0")),
                    ("nvidia.com/mig-1g.18gb.engines.jpeg", Some("1")),
                    ("nvidia.com/mig-1g.18gb.engines.ofa", Some("0")),
                    // No driver on a simulated node, no PCI class in the catalog.
                    ("nvidia.com/cuda.driver-version.full", None),
                    ("nvidia.com/cuda.runtime-version.full", None),
                    ("nvidia.com/gpu.mode", None),
                    ("nvidia.com/mps.capable", Some("false")),
                ][..],
            ),
            (
                "p4d.24xlarge",
                Some("all-balanced"),
                mixed,
                &[
                    ("nvidia.com/gpu.family", Some("ampere")),
                    ("nvidia.com/mig-3g.20gb.memory", Some("20096")),
                    ("nvidia.com/mig-3g.20gb.multiprocessors", Some("42")),
                    ("nvidia.com/mig-3g.20gb.slices.gi", Some("3")),
                    ("nvidia.com/mig-3g.20gb.slices.ci", Some("3")),
                    // The catalog has no engine counts for the A100.
                    ("nvidia.com/mig-3g.20gb.engines.copy", None),
                ][..],
            ),
            (
                "g6.xlarge",
                None,
                "version: v1\n",
                &[
                    ("nvidia.com/gpu.family", Some("ada-lovelace")),
                    ("nvidia.com/gpu.compute.minor", Some("9")),
                    ("nvidia.com/gpu.replicas", Some("1")),
                    ("nvidia.com/gpu.sharing-strategy", Some("none")),
                    ("nvidia.com/mig.capable", Some("false")),
                    ("nvidia.com/mig.strategy", None),
                ][..],
            ),
        ] {
            let inventory = simulated::from_instance(instance, layout).unwrap();
            let config = parse_config(config);
            let got = labels(&inventory, &config, &plan(&inventory, &config));
            assert_labels(&got, want, instance);
        }
    }

    #[test]
    fn driver_and_cuda_versions() {
        for (driver, cuda, want) in [
            (
                Some("580.159.04"),
                Some(13000),
                &[
                    ("nvidia.com/cuda.driver.major", Some("580")),
                    ("nvidia.com/cuda.driver.minor", Some("159")),
                    ("nvidia.com/cuda.driver.rev", Some("04")),
                    ("nvidia.com/cuda.driver-version.major", Some("580")),
                    ("nvidia.com/cuda.driver-version.minor", Some("159")),
                    ("nvidia.com/cuda.driver-version.revision", Some("04")),
                    ("nvidia.com/cuda.driver-version.full", Some("580.159.04")),
                    ("nvidia.com/cuda.runtime.major", Some("13")),
                    ("nvidia.com/cuda.runtime.minor", Some("0")),
                    ("nvidia.com/cuda.runtime-version.major", Some("13")),
                    ("nvidia.com/cuda.runtime-version.minor", Some("0")),
                    ("nvidia.com/cuda.runtime-version.full", Some("13.0")),
                ][..],
            ),
            (
                Some("550.107"),
                Some(12050),
                &[
                    ("nvidia.com/cuda.driver-version.revision", Some("")),
                    ("nvidia.com/cuda.driver-version.full", Some("550.107")),
                    ("nvidia.com/cuda.runtime-version.full", Some("12.5")),
                ][..],
            ),
            // Not X.Y[.Z]: GFD fails; gpu-slicer leaves these labels out.
            (
                Some("580"),
                None,
                &[
                    ("nvidia.com/cuda.driver.major", None),
                    ("nvidia.com/cuda.driver-version.full", None),
                    ("nvidia.com/cuda.runtime.major", None),
                ][..],
            ),
            (
                Some("1.2.3.4"),
                None,
                &[("nvidia.com/cuda.driver-version.major", None)][..],
            ),
        ] {
            let mut inventory = topology("gpus:\n  - model: H200\n");
            inventory.node.driver_version = driver.map(str::to_string);
            inventory.node.cuda_driver_version = cuda;
            let config = Config::default();
            let got = labels(&inventory, &config, &plan(&inventory, &config));
            assert_labels(&got, want, &format!("{driver:?}"));
        }
    }

    #[test]
    fn gpu_mode_from_pci_classes() {
        for (classes, want) in [
            (&[Some(0x03_0200), Some(0x03_0200)][..], Some("compute")),
            (&[Some(0x03_0000)][..], Some("graphics")),
            (&[Some(0x03_0200), Some(0x03_0000)][..], Some("unknown")),
            (&[Some(0x03_0200), None][..], Some("unknown")),
            (&[Some(0x03_8000)][..], Some("unknown")),
            (&[None, None][..], None),
        ] {
            let mut inventory = topology("gpus:\n  - model: L4\n    count: 2\n");
            inventory.gpus.truncate(classes.len());
            for (gpu, class) in inventory.gpus.iter_mut().zip(classes) {
                gpu.pci_class = *class;
            }
            let config = Config::default();
            let got = labels(&inventory, &config, &plan(&inventory, &config));
            assert_eq!(
                got.get("nvidia.com/gpu.mode").map(String::as_str),
                want,
                "{classes:?}"
            );
        }
    }

    #[test]
    fn families_by_compute_capability() {
        for (major, minor, want) in [
            (7, 0, "volta"),
            (7, 5, "turing"),
            (8, 0, "ampere"),
            (8, 6, "ampere"),
            (8, 9, "ada-lovelace"),
            (9, 0, "hopper"),
            (10, 0, "blackwell"),
            (12, 0, "blackwell"),
            (13, 0, "rubin"),
            (4, 0, "undefined"),
        ] {
            assert_eq!(family(major, minor), want, "{major}.{minor}");
        }
    }

    #[test]
    fn sanitize_as_gfd() {
        for (input, want) in [
            ("NVIDIA A100-SXM4-40GB", "NVIDIA-A100-SXM4-40GB"),
            ("NVIDIA H100 80GB HBM3", "NVIDIA-H100-80GB-HBM3"),
            ("  NVIDIA  DGX-2H \n", "NVIDIA-DGX-2H"),
            (
                "Standard PC (Q35 + ICH9, 2009)",
                "Standard-PC-Q35-ICH9-2009",
            ),
            ("p4d.24xlarge", "p4d.24xlarge"),
        ] {
            assert_eq!(sanitize(input), want, "{input:?}");
        }
    }

    /// GFD's three checks of `single`, each giving `<model>-MIG-INVALID`.
    #[test]
    fn single_strategy_invalid_nodes() {
        let single = parse_config("version: v1\nflags: {migStrategy: single}\n");
        for (case, yaml) in [
            (
                "MIG on and off",
                "gpus:\n  - model: A100-40GB\n    migLayout: all-1g.5gb\n  - model: A100-40GB\n",
            ),
            (
                "two profiles",
                "gpus:\n  - model: A100-40GB\n    migLayout: all-balanced\n",
            ),
            (
                "MIG on, no devices",
                "gpus:\n  - model: A100-40GB\n    migEnabled: true\n",
            ),
        ] {
            let inventory = topology(yaml);
            let got = labels(&inventory, &single, &plan(&inventory, &single));
            assert_labels(
                &got,
                &[
                    (
                        "nvidia.com/gpu.product",
                        Some("NVIDIA-A100-SXM4-40GB-MIG-INVALID"),
                    ),
                    ("nvidia.com/gpu.count", Some("0")),
                    ("nvidia.com/gpu.replicas", Some("0")),
                    ("nvidia.com/gpu.sharing-strategy", Some("")),
                    ("nvidia.com/gpu.memory", Some("0")),
                    ("nvidia.com/gpu.family", Some("ampere")),
                ],
                case,
            );
        }
    }

    #[test]
    fn sharing_labels_per_resource() {
        let mixed_ts = |extra: &str| {
            format!(
                "version: v1\nflags: {{migStrategy: mixed}}\nsharing:\n  timeSlicing:\n{extra}    resources:\n    - {{name: nvidia.com/mig-1g.5gb, replicas: 4}}\n"
            )
        };
        for (case, topo, config, want) in [
            (
                "mixed, shared under the same name",
                "gpus:\n  - model: A100-40GB\n    migLayout: all-balanced\n",
                mixed_ts(""),
                &[
                    (
                        "nvidia.com/mig-1g.5gb.product",
                        Some("NVIDIA-A100-SXM4-40GB-MIG-1g.5gb-SHARED"),
                    ),
                    ("nvidia.com/mig-1g.5gb.replicas", Some("4")),
                    ("nvidia.com/mig-1g.5gb.count", Some("2")),
                    ("nvidia.com/mig-1g.5gb.sharing-strategy", Some("time-slicing")),
                    ("nvidia.com/mig-2g.10gb.replicas", Some("1")),
                    ("nvidia.com/mig-2g.10gb.sharing-strategy", Some("none")),
                ][..],
            ),
            (
                // GFD keeps the labels under the unrenamed name.
                "mixed, renamed by default",
                "gpus:\n  - model: A100-40GB\n    migLayout: all-balanced\n",
                mixed_ts("    renameByDefault: true\n"),
                &[
                    (
                        "nvidia.com/mig-1g.5gb.product",
                        Some("NVIDIA-A100-SXM4-40GB-MIG-1g.5gb"),
                    ),
                    ("nvidia.com/mig-1g.5gb.replicas", Some("4")),
                    ("nvidia.com/mig-1g.5gb.shared.product", None),
                ][..],
            ),
            (
                "MPS on full GPUs",
                "gpus:\n  - model: H200\n    count: 2\n",
                "version: v1\nsharing:\n  mps:\n    resources:\n    - {name: nvidia.com/gpu, replicas: 4}\n".to_string(),
                &[
                    ("nvidia.com/gpu.product", Some("NVIDIA-H200-SHARED")),
                    ("nvidia.com/gpu.replicas", Some("4")),
                    ("nvidia.com/gpu.sharing-strategy", Some("mps")),
                    ("nvidia.com/mps.capable", Some("true")),
                    ("nvidia.com/gpu.count", Some("2")),
                ][..],
            ),
        ] {
            let inventory = topology(topo);
            let config = parse_config(&config);
            let got = labels(&inventory, &config, &plan(&inventory, &config));
            assert_labels(&got, want, case);
        }
    }

    #[test]
    fn feature_file_has_one_line_per_label() {
        let mut labels = BTreeMap::new();
        labels.insert("nvidia.com/gpu.count".to_string(), "8".to_string());
        let text = feature_file_text(&labels);
        assert!(text.ends_with("\nnvidia.com/gpu.count=8\n"), "{text}");
    }
}
