//! Node labels in NVIDIA GPU Feature Discovery's names, so nodeSelectors and
//! autoscalers written for GFD keep working, plus a hash of the effective
//! slicing so a node can be compared with the configuration meant for it.
//!
//! Pure: (inventory, config, plan) → labels. The daemon writes them as a
//! Node Feature Discovery "local" feature file (`key=value` lines), which
//! NFD turns into node labels.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::config::{Config, MigStrategy, SharingStrategy};
use crate::gpu::Inventory;
use crate::plan::Plan;

pub fn labels(inventory: &Inventory, config: &Config, plan: &Plan) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        out.insert(k.to_owned(), v);
    };
    let Some(first) = inventory.gpus.first() else {
        put("nvidia.com/gpu.present", "false".into());
        return out;
    };
    let product = sanitize(&first.model);
    put("nvidia.com/gpu.present", "true".into());
    put("nvidia.com/gpu.count", inventory.gpus.len().to_string());
    put("nvidia.com/gpu.memory", first.memory_mib.to_string());
    put(
        "nvidia.com/mig.capable",
        inventory.gpus.iter().any(|g| g.mig_capable).to_string(),
    );
    let strategy = config.sharing.strategy();
    if config.flags.mig_strategy != MigStrategy::None {
        put(
            "nvidia.com/mig.strategy",
            config.flags.mig_strategy.as_str().into(),
        );
    }

    // Per resource: nvidia.com/gpu.* for the GPU resource, and
    // nvidia.com/mig-<profile>.* for each MIG resource (mixed).
    for resource in &plan.resources {
        let short = resource.name.short();
        let (prefix, base_product) = if let Some(profile) = short.strip_prefix("mig-") {
            (
                format!("nvidia.com/{short}"),
                format!("{product}-MIG-{profile}"),
            )
        } else if short == "gpu" || short == "gpu.shared" {
            let single_mig = config.flags.mig_strategy == MigStrategy::Single
                && resource.devices.iter().any(|d| d.physical.mig.is_some());
            let name = match (single_mig, resource.devices.first()) {
                (true, Some(d)) => inventory
                    .gpus
                    .get(d.physical.gpu_index as usize)
                    .and_then(|g| g.mig_devices.iter().find(|m| m.uuid == d.physical.uuid))
                    .map(|m| format!("{product}-MIG-{}", m.profile))
                    .unwrap_or_else(|| product.clone()),
                _ => product.clone(),
            };
            ("nvidia.com/gpu".to_string(), name)
        } else {
            continue;
        };
        let replicas = resource.sharing.map_or(1, |s| s.replicas);
        let shared_same_name = resource.sharing.is_some() && !short.ends_with(".shared");
        let product_label = if shared_same_name {
            format!("{base_product}-SHARED")
        } else {
            base_product
        };
        let physical = resource.devices.len() / replicas.max(1) as usize;
        let sharing = if resource.sharing.is_some() {
            strategy
        } else {
            SharingStrategy::None
        };
        put(&format!("{prefix}.product"), product_label);
        put(&format!("{prefix}.replicas"), replicas.to_string());
        put(
            &format!("{prefix}.sharing-strategy"),
            sharing.as_str().into(),
        );
        if prefix != "nvidia.com/gpu" {
            put(&format!("{prefix}.count"), physical.to_string());
        }
    }
    put("gpu-slicer.io/config-hash", config_hash(plan));
    out
}

/// GFD's product form: spaces become dashes (`NVIDIA-A100-SXM4-40GB`).
fn sanitize(model: &str) -> String {
    model
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect()
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
    use crate::gpu::simulated;
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

    #[test]
    fn feature_file_has_one_line_per_label() {
        let mut labels = BTreeMap::new();
        labels.insert("nvidia.com/gpu.count".to_string(), "8".to_string());
        let text = feature_file_text(&labels);
        assert!(text.ends_with("\nnvidia.com/gpu.count=8\n"), "{text}");
    }
}
