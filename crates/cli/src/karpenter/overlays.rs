//! `NodeOverlay` objects whose `capacity` is what gpu-slicer advertises.
//!
//! The counts come from [`gpu_slicer_core::plan::plan`] on the simulated preset
//! ([`gpu_slicer_core::gpu::simulated::from_instance`]): the daemon runs the same
//! planner, so overlay and node cannot disagree. Karpenter's code *replaces*
//! existing capacity keys with overlay values (its docs say "adds"), so when
//! the plan has no `nvidia.com/gpu` the overlay sets it to `"0"`; otherwise
//! Karpenter would still see the physical GPU count and route whole-GPU pods
//! to a node that never registers them.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use gpu_slicer_core::config::Config;
use gpu_slicer_core::gpu::catalog::{self, InstanceType};
use gpu_slicer_core::gpu::simulated;
use gpu_slicer_core::labels;
use gpu_slicer_core::plan::{Plan, plan};

use super::{CONFIG_HASH_LABEL, Requirement};

/// What a node of `instance` advertises under `layout` and `config`, as
/// overlay capacity (resource → count), plus the plan's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    pub counts: BTreeMap<String, u64>,
    pub config_hash: String,
}

/// The plan of a preset under a layout. `None`/`all-disabled`: MIG off.
pub fn plan_instance(
    instance: &str,
    layout: Option<&str>,
    config: &Config,
) -> Result<Plan, PlanInstanceError> {
    let inventory = simulated::from_instance(instance, layout)
        .map_err(|e| PlanInstanceError::Simulate(e.to_string()))?;
    let plan = plan(&inventory, config);
    if let Some(error) = plan.errors().next() {
        return Err(PlanInstanceError::Plan {
            instance: instance.to_string(),
            layout: layout.unwrap_or("all-disabled").to_string(),
            message: error.message.clone(),
        });
    }
    Ok(plan)
}

/// Why a preset has no plan.
#[derive(Debug, thiserror::Error)]
pub enum PlanInstanceError {
    /// The preset or the layout cannot be simulated.
    #[error("{0}")]
    Simulate(String),
    /// The plan has an error: the daemon would not advertise what the
    /// config asks for.
    #[error(
        "{instance} with MIG layout '{layout}': {message}; fix the config or pick another layout"
    )]
    Plan {
        instance: String,
        layout: String,
        message: String,
    },
}

/// The overlays cannot be written as YAML (a defect: every value is a
/// string, number or mapping).
#[derive(Debug, thiserror::Error)]
#[error("cannot render the overlays as YAML: {0}")]
pub struct RenderError(#[from] serde_saphyr::SerializeError);

/// Overlay capacity of a plan: every advertised resource with its count, and
/// `nvidia.com/gpu: 0` when whole GPUs are not advertised.
pub fn capacity_of(plan: &Plan) -> Capacity {
    let mut counts: BTreeMap<String, u64> = plan
        .counts()
        .into_iter()
        .map(|(name, n)| (name, n as u64))
        .collect();
    counts
        .entry(gpu_slicer_core::config::GPU_RESOURCE.to_string())
        .or_insert(0);
    Capacity {
        counts,
        config_hash: labels::config_hash(plan),
    }
}

/// [`capacity_of`] the plan of a preset.
pub fn capacity(
    instance: &str,
    layout: Option<&str>,
    config: &Config,
) -> Result<Capacity, PlanInstanceError> {
    plan_instance(instance, layout, config).map(|p| capacity_of(&p))
}

/// Whether a named layout exists for the preset's GPU (`all-disabled`
/// always does).
pub fn layout_fits(instance: &InstanceType, layout: &str) -> bool {
    layout == "all-disabled"
        || instance.gpu_model().is_some_and(|m| {
            catalog::layout_names(m).iter().any(|n| n == layout)
                || catalog::layout(m, layout).is_ok()
        })
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// NodePool names; one overlay per pool and instance type.
    pub nodepools: Vec<String>,
    /// Instance presets.
    pub instances: Vec<&'static InstanceType>,
    /// MIG layout (`all-balanced`, ...); `None`: MIG off.
    pub layout: Option<&'a str>,
    pub config: &'a Config,
    /// Name of the config (ConfigMap key), recorded in an annotation.
    pub config_name: Option<&'a str>,
}

/// Object name: `<pool>-<instance with dots as dashes>`.
pub fn overlay_name(nodepool: &str, instance: &str) -> String {
    format!("{nodepool}-{}", instance.replace('.', "-"))
}

/// The `NodeOverlay` objects, one per NodePool and instance type, sorted.
pub fn overlays(request: &Request<'_>) -> Result<Vec<Value>, PlanInstanceError> {
    let mut out = Vec::new();
    for pool in &request.nodepools {
        for instance in &request.instances {
            let cap = capacity(instance.name, request.layout, request.config)?;
            out.push(overlay(
                pool,
                instance.name,
                request.layout,
                request.config_name,
                &cap,
            ));
        }
    }
    Ok(out)
}

/// One overlay object.
pub fn overlay(
    nodepool: &str,
    instance: &str,
    layout: Option<&str>,
    config_name: Option<&str>,
    cap: &Capacity,
) -> Value {
    let capacity: serde_json::Map<String, Value> = cap
        .counts
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.to_string())))
        .collect();
    let mut annotations = serde_json::Map::new();
    annotations.insert(CONFIG_HASH_LABEL.into(), json!(cap.config_hash));
    annotations.insert(
        gpu_slicer_core::node_labels::OVERLAY_MIG_CONFIG.into(),
        json!(layout.unwrap_or("all-disabled")),
    );
    if let Some(name) = config_name {
        annotations.insert(
            gpu_slicer_core::node_labels::OVERLAY_CONFIG_NAME.into(),
            json!(name),
        );
    }
    json!({
        "apiVersion": "karpenter.sh/v1alpha1",
        "kind": "NodeOverlay",
        "metadata": {
            "name": overlay_name(nodepool, instance),
            "labels": {"app.kubernetes.io/managed-by": "gpu-slicer"},
            "annotations": annotations,
        },
        "spec": {
            "weight": 10,
            "requirements": [
                {"key": "karpenter.sh/nodepool", "operator": "In", "values": [nodepool]},
                {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": [instance]},
            ],
            "capacity": capacity,
        }
    })
}

/// The presets a command line's defaults pick: those allowed by a NodePool's
/// requirements (when given) that have the layout, else every preset that
/// has the layout.
pub fn default_instances(
    requirements: Option<&[Requirement]>,
    layout: Option<&str>,
) -> Vec<&'static InstanceType> {
    let candidates: Vec<&'static InstanceType> = match requirements {
        Some(r) => super::instances_matching(r),
        None => catalog::instances().iter().collect(),
    };
    candidates
        .into_iter()
        .filter(|i| layout.is_none_or(|l| layout_fits(i, l)))
        .collect()
}

/// YAML for a list of objects, `---` separated, after a header comment.
pub fn to_yaml(objects: &[Value], header: &str) -> Result<String, RenderError> {
    let mut out = String::new();
    for line in header.lines() {
        out.push_str("# ");
        out.push_str(line);
        out.push('\n');
    }
    for (i, object) in objects.iter().enumerate() {
        if i > 0 || !header.is_empty() {
            out.push_str("---\n");
        }
        let text = serde_saphyr::to_string(object)?;
        out.push_str(&text);
        if !text.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

/// The header explaining what must be true for the overlays to work.
pub fn header(layout: Option<&str>, config_name: Option<&str>) -> String {
    format!(
        "Generated by gpu-slicer karpenter overlays (MIG layout {}, config {}).\n\
         NodeOverlay is alpha (karpenter.sh/v1alpha1, Karpenter >= 1.7): enable the feature gate\n\
         NodeOverlay=true (FEATURE_GATES on the controller; Helm settings.featureGates.nodeOverlay=true).\n\
         Karpenter replaces capacity keys with these values (its docs say it adds): pin the\n\
         Karpenter version and regenerate after changing the gpu-slicer config or the layout.",
        layout.unwrap_or("all-disabled"),
        config_name.unwrap_or("gpu-slicer defaults")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::karpenter::default_config;

    #[test]
    fn p5_all_balanced_overlay() {
        let config = default_config(Some("all-balanced"));
        let cap = capacity("p5.48xlarge", Some("all-balanced"), &config).unwrap();
        assert_eq!(cap.counts["nvidia.com/mig-1g.10gb"], 16);
        assert_eq!(cap.counts["nvidia.com/mig-2g.20gb"], 8);
        assert_eq!(cap.counts["nvidia.com/mig-3g.40gb"], 8);
        assert_eq!(cap.counts["nvidia.com/gpu"], 0);
        let o = overlay("gpu-mig", "p5.48xlarge", Some("all-balanced"), None, &cap);
        assert_eq!(o["metadata"]["name"], "gpu-mig-p5-48xlarge");
        assert_eq!(o["spec"]["capacity"]["nvidia.com/mig-1g.10gb"], "16");
        let yaml = to_yaml(&[o], "h").unwrap();
        let back = crate::karpenter::parse_documents(&yaml, "t").unwrap();
        assert_eq!(back[0].value["spec"]["capacity"]["nvidia.com/gpu"], "0");
    }

    #[test]
    fn layout_filter() {
        let names: Vec<&str> = default_instances(None, Some("all-1g.5gb"))
            .iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(names, ["p4d.24xlarge"]);
    }
}
