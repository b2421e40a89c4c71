//! `gpu-slicer lint`: NodePools, EC2NodeClasses, NodeOverlays, gpu-slicer
//! ConfigMaps and workloads, checked together.
//!
//! What a NodePool's nodes advertise is computed, not guessed: the instance
//! presets its requirements allow, the MIG layout of its template label
//! `nvidia.com/mig.config` (on MIG-capable GPUs only, as the GPU Operator's
//! MIG Manager does), and the gpu-slicer config its label
//! `nvidia.com/device-plugin.config` picks (without a ConfigMap: NVIDIA's
//! defaults, `mixed` under a MIG layout), run through [`gpu_slicer_core::plan`].
//!
//! Rules (each finding carries one):
//!
//! | Rule | Severity | What |
//! |---|---|---|
//! | `mig-on-non-mig-family` | error | MIG layout on a pool that can launch GPUs without MIG |
//! | `layout-profile-missing` | error | the layout's profiles do not exist on that GPU's memory size |
//! | `mig-config-none` | error | `nvidia.com/mig.config=none`: MIG Manager has no such layout (use `all-disabled`) |
//! | `mig-config-label` | warning | layout set at launch without a startup taint (scale-from-zero race, drift) |
//! | `resource-as-requirement-key` | error | `nvidia.com/gpu`, `nvidia.com/mig-*` ... used as a label key |
//! | `instance-size-with-dot` | error | `instance-size: g5.xlarge` matches nothing |
//! | `slice-not-produced` | error | a limit names a slice no instance type of the pool advertises |
//! | `slice-limit-without-overlay` | error | limits on slices Karpenter cannot see before launch |
//! | `slice-limit-below-node` | error/warning | limit below one node's slices, or not a multiple |
//! | `gpu-limit` | warning | `nvidia.com/gpu` limit that excludes types or measures nothing under MIG |
//! | `no-overlay` | warning | slices or shared replicas with no NodeOverlay for the pool |
//! | `overlay-coverage` | warning | instance types of the pool that no overlay covers |
//! | `gpu-pool-untainted` | warning | GPU pool without a taint |
//! | `nodepool-config-missing` | error | the pool's config label names no config |
//! | `custom-ami-without-user-data` | error | `amiFamily: Custom` without `userData` |
//! | `custom-ami-root-device` | warning | `/dev/xvda` assumed on a custom AMI |
//! | `bottlerocket-plugin-enabled` | error | Bottlerocket's own NVIDIA plugin left on |
//! | `overlay-unscoped` | warning | NodeOverlay without `karpenter.sh/nodepool` |
//! | `overlay-unknown-nodepool` | warning | NodeOverlay for a pool not in the files |
//! | `overlay-custom-key` | warning | requirement on a key the pool does not define: never matches |
//! | `overlay-price-and-adjustment` | error | `price` and `priceAdjustment` together |
//! | `overlay-capacity-mismatch` | error/warning | capacity differs from what gpu-slicer advertises |
//! | `selects-mig-config` | warning | workload selects `nvidia.com/mig.config` |
//! | `unadvertised-request` | error | workload requests a name no pool/config advertises |
//! | `request-greater-than-one` | error | request above 1 under `failRequestsGreaterThanOne` |
//! | `config-invalid` | error | a gpu-slicer ConfigMap does not parse |

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use gpu_slicer_core::config::Config;
use gpu_slicer_core::gpu::catalog::{self, InstanceType};
use gpu_slicer_core::plan::Plan;

use super::overlays::{self, layout_fits};
use super::{
    CONFIG_LABEL, Document, MIG_CONFIG_LABEL, NON_MIG_FAMILIES, Requirement, configs_of,
    default_config, family, instances_matching, is_resource_name, is_slice_resource,
    nodepool_label, nodepool_requirements, quantity, strings,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// One problem, where it is and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub file: String,
    /// 0-based document index in the file.
    pub document: usize,
    /// `NodePool/gpu-nodepool`.
    pub object: String,
    /// YAML path inside the object: `spec.template.spec.requirements[2].key`.
    pub path: String,
    pub severity: Severity,
    pub rule: &'static str,
    pub message: String,
}

/// Path segment for a map key: `.name` or `["nvidia.com/gpu"]`.
fn key_segment(key: &str) -> String {
    if key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        format!(".{key}")
    } else {
        format!("[\"{key}\"]")
    }
}

struct Sink<'a> {
    findings: Vec<Finding>,
    _docs: &'a [Document],
}

impl Sink<'_> {
    fn add(
        &mut self,
        doc: &Document,
        path: impl Into<String>,
        severity: Severity,
        rule: &'static str,
        message: impl Into<String>,
    ) {
        self.findings.push(Finding {
            file: doc.file.clone(),
            document: doc.index,
            object: format!("{}/{}", doc.kind(), doc.name()),
            path: path.into(),
            severity,
            rule,
            message: message.into(),
        });
    }
}

/// What a NodePool's nodes advertise, per instance preset.
struct Pool<'a> {
    doc: &'a Document,
    name: String,
    requirements: Vec<Requirement>,
    layout: Option<String>,
    config_name: Option<String>,
    config: Config,
    instances: Vec<&'static InstanceType>,
    /// `None`: the layout does not exist on that GPU.
    plans: Vec<(&'static InstanceType, Option<Plan>)>,
}

impl Pool<'_> {
    /// MIG layout in effect on a preset: only MIG-capable GPUs get one.
    fn layout_on(&self, instance: &InstanceType) -> Option<&str> {
        let mig = instance.gpu_model().is_some_and(|m| m.mig_capable());
        self.layout
            .as_deref()
            .filter(|l| mig && *l != "all-disabled")
    }

    /// Resource → (largest count per node, smallest nonzero count per node,
    /// fails requests > 1).
    fn advertised(&self) -> BTreeMap<String, (u64, u64, bool)> {
        let mut out: BTreeMap<String, (u64, u64, bool)> = BTreeMap::new();
        for (_, plan) in &self.plans {
            let Some(plan) = plan else { continue };
            for r in &plan.resources {
                let n = r.devices.len() as u64;
                if n == 0 {
                    continue;
                }
                let e = out
                    .entry(r.name.to_string())
                    .or_insert((0, u64::MAX, false));
                e.0 = e.0.max(n);
                e.1 = e.1.min(n);
                e.2 |= r.sharing.is_some_and(|s| s.fail_requests_greater_than_one);
            }
        }
        out
    }

    fn describe(&self) -> String {
        format!(
            "NodePool {} (MIG layout {}, config {})",
            self.name,
            self.layout.as_deref().unwrap_or("none"),
            self.config_name.as_deref().unwrap_or("gpu-slicer defaults")
        )
    }
}

/// Reads the files and lints them together.
pub fn lint_files(paths: &[impl AsRef<Path>]) -> Result<Vec<Finding>, String> {
    let mut docs = Vec::new();
    let mut empty_files = Vec::new();
    for path in paths {
        let loaded = super::load_documents(path.as_ref())?;
        if !loaded.iter().any(is_lintable) {
            empty_files.push(path.as_ref().display().to_string());
        }
        docs.extend(loaded);
    }
    let mut findings = lint(&docs);
    // Defect: `lint /etc/passwd` said "0 errors, 0 warnings", as if the
    // file had been checked. A file with nothing to check is an error.
    for file in empty_files {
        findings.push(Finding {
            file,
            document: 0,
            object: String::new(),
            path: String::new(),
            severity: Severity::Error,
            rule: "no-kubernetes-object",
            message: "holds no Kubernetes object (a mapping with apiVersion and kind) and no gpu-slicer config (version: v1), so nothing was checked; pass Kubernetes manifests or gpu-slicer configs".into(),
        });
    }
    Ok(findings)
}

/// A document lint can check: a Kubernetes object (apiVersion and kind) or a
/// bare gpu-slicer config (`version: v1`).
fn is_lintable(doc: &Document) -> bool {
    let value = &doc.value;
    (value["apiVersion"].is_string() && value["kind"].is_string()) || value["version"].is_string()
}

/// Lints documents together; findings sorted by file, document and path.
pub fn lint(docs: &[Document]) -> Vec<Finding> {
    let mut sink = Sink {
        findings: Vec::new(),
        _docs: docs,
    };
    // gpu-slicer configs: name → config, first ConfigMap wins.
    let mut configs: BTreeMap<String, Config> = BTreeMap::new();
    let mut any_configmap = false;
    for doc in docs {
        match configs_of(doc) {
            Some(Ok(map)) => {
                any_configmap = true;
                for (k, c) in map {
                    configs.entry(k).or_insert(c);
                }
            }
            Some(Err(e)) => sink.add(doc, "data", Severity::Error, "config-invalid", e),
            None => {}
        }
    }
    let overlays: Vec<&Document> = docs.iter().filter(|d| d.kind() == "NodeOverlay").collect();
    let mut pools = Vec::new();
    for doc in docs.iter().filter(|d| d.kind() == "NodePool") {
        pools.push(build_pool(doc, &configs, any_configmap, &mut sink));
    }
    for pool in &pools {
        lint_pool(pool, &overlays, &mut sink);
    }
    for doc in docs.iter().filter(|d| d.kind() == "EC2NodeClass") {
        lint_node_class(doc, &mut sink);
    }
    for doc in &overlays {
        lint_overlay(doc, &pools, &mut sink);
    }
    lint_overlay_conflicts(&overlays, &pools, &mut sink);
    for doc in docs {
        if let Some((prefix, spec)) = pod_spec(&doc.value) {
            lint_workload(doc, &prefix, spec, &pools, &configs, &mut sink);
        }
    }
    let mut findings = sink.findings;
    findings.sort_by(|a, b| {
        (&a.file, a.document, &a.path, a.rule).cmp(&(&b.file, b.document, &b.path, b.rule))
    });
    findings.dedup();
    findings
}

fn build_pool<'a>(
    doc: &'a Document,
    configs: &BTreeMap<String, Config>,
    any_configmap: bool,
    sink: &mut Sink<'_>,
) -> Pool<'a> {
    let requirements = nodepool_requirements(&doc.value);
    let layout = nodepool_label(&doc.value, MIG_CONFIG_LABEL).map(str::to_string);
    let label = nodepool_label(&doc.value, CONFIG_LABEL);
    let (config_name, config) = match label {
        Some(name) if configs.contains_key(name) => (Some(name.to_string()), configs[name].clone()),
        Some(name) if any_configmap => {
            sink.add(
                doc,
                format!("spec.template.metadata.labels{}", key_segment(CONFIG_LABEL)),
                Severity::Error,
                "nodepool-config-missing",
                format!(
                    "selects gpu-slicer config '{name}', but no gpu-slicer ConfigMap in these files has that key (they have: {}); \
                     the label is read by gpu-slicer's config manager, whose ConfigMap holds named configs \
                     (deploy/static/gpu-slicer-config-manager.yaml): lint the pool with that ConfigMap, add the key to it, \
                     or fix the label, or the config manager keeps the previous config",
                    configs.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            );
            (None, default_config(layout.as_deref()))
        }
        _ => match super::pick_config(configs, None, "the gpu-slicer ConfigMap") {
            Ok((n, c)) if any_configmap => (Some(n.to_string()), c.clone()),
            _ => (None, default_config(layout.as_deref())),
        },
    };
    let instances = instances_matching(&requirements);
    let mut pool = Pool {
        doc,
        name: doc.name().to_string(),
        requirements,
        layout,
        config_name,
        config,
        instances: instances.clone(),
        plans: Vec::new(),
    };
    for instance in instances {
        let layout = pool.layout_on(instance);
        let plan = match layout {
            Some(l) if !layout_fits(instance, l) => None,
            _ => overlays::plan_instance(instance.name, layout, &pool.config).ok(),
        };
        pool.plans.push((instance, plan));
    }
    pool
}

/// `NVIDIA A10G, Tesla V100-SXM2-16GB` for families `g5, p3`.
fn gpus_of(families: &[String]) -> String {
    let names: BTreeSet<&str> = catalog::instances()
        .iter()
        .filter(|i| families.iter().any(|f| f == family(i.name)))
        .filter_map(|i| i.gpu_model().map(|m| m.product_name))
        .collect();
    if names.is_empty() {
        "GPUs without MIG".to_string()
    } else {
        names.into_iter().collect::<Vec<_>>().join(", ")
    }
}

/// For families with a fractional GPU (g6f, gr6f): why no MIG and what
/// sharing remains.
fn fractional_families_note(families: &[String]) -> String {
    let fractional: BTreeSet<&str> = catalog::instances()
        .iter()
        .filter(|i| i.is_fractional() && families.iter().any(|f| f == family(i.name)))
        .map(|i| family(i.name))
        .collect();
    if fractional.is_empty() {
        return String::new();
    }
    format!(
        " {} have a fractional GPU (1/8 to 1/2 of an L4, one vGPU, gpu-count 0 in Karpenter): it cannot be sliced \
         with MIG; only time-slicing shares it.",
        fractional.into_iter().collect::<Vec<_>>().join(", ")
    )
}

fn requirement_path(i: usize) -> String {
    format!("spec.template.spec.requirements[{i}]")
}

fn lint_pool(pool: &Pool<'_>, overlays: &[&Document], sink: &mut Sink<'_>) {
    let doc = pool.doc;
    let v = &doc.value;
    let raw_reqs = v["spec"]["template"]["spec"]["requirements"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let label_path = |key: &str| format!("spec.template.metadata.labels{}", key_segment(key));

    let uncatalogued = super::uncatalogued_gpu_types_matching(&pool.requirements);
    if !uncatalogued.is_empty() {
        // Under MIG an unknown type gets no overlay zeroing nvidia.com/gpu: a
        // whole-GPU pod can launch it and the NodeClaim never registers.
        let severity = if pool.layout.is_some() {
            Severity::Error
        } else {
            Severity::Warning
        };
        sink.add(doc, "spec.template.spec.requirements", severity, "nodepool-type-without-preset", format!(
            "allows GPU instance types gpu-slicer has no preset for ({}): it cannot compute what they advertise, so no overlay covers them{}. \
             Exclude them (e.g. {{key: node.kubernetes.io/instance-type, operator: NotIn, values: [...]}}) or list the instance types the pool may use",
            uncatalogued.join(", "),
            if pool.layout.is_some() {
                " and Karpenter keeps their physical nvidia.com/gpu count: a whole-GPU pod can launch one, MIG Manager partitions it, and the NodeClaim never registers"
            } else {
                ""
            }
        ));
    }

    // Requirement keys and values.
    for (i, r) in raw_reqs.iter().enumerate() {
        let key = r["key"].as_str().unwrap_or_default();
        if is_resource_name(key) {
            sink.add(
                doc,
                format!("{}.key", requirement_path(i)),
                Severity::Error,
                "resource-as-requirement-key",
                format!(
                    "'{key}' is a resource name, not a node label: as a requirement key it becomes a user-defined label \
                     (with Exists Karpenter labels nodes {key}=<random number>) and does not restrict the pool to GPU instances. \
                     Use karpenter.k8s.aws/instance-gpu-manufacturer In [nvidia] or karpenter.k8s.aws/instance-gpu-count Gt 0, \
                     and request the resource in the pod"
                ),
            );
        }
        if key == "karpenter.k8s.aws/instance-size" {
            let dotted: Vec<String> = strings(&r["values"])
                .into_iter()
                .filter(|s| s.contains('.'))
                .collect();
            if !dotted.is_empty() {
                sink.add(
                    doc,
                    format!("{}.values", requirement_path(i)),
                    Severity::Error,
                    "instance-size-with-dot",
                    format!(
                        "instance-size values are the part after the dot (xlarge, 2xlarge): {} match no instance type, so the pool \
                         launches nothing (NodePool event NoCompatibleInstanceTypes: \"NodePool requirements filtered out all compatible \
                         available instance types\"). List full names under node.kubernetes.io/instance-type instead",
                        dotted.join(", ")
                    ),
                );
            }
        }
    }

    // MIG intent. `none` is gpu-slicer's command-line alias for MIG off,
    // not a layout MIG Manager knows: on a node label it fails there.
    if pool.layout.as_deref().map(str::trim) == Some(catalog::MIG_OFF_ALIAS) {
        sink.add(
            doc,
            label_path(MIG_CONFIG_LABEL),
            Severity::Error,
            "mig-config-none",
            format!(
                "{MIG_CONFIG_LABEL}=none is not a layout of MIG Manager's config (`none` is only gpu-slicer's command-line \
                 alias): MIG Manager would set nvidia.com/mig.config.state=failed and leave the GPUs as they are. Write \
                 all-disabled for MIG off, or remove the label"
            ),
        );
    }
    let layout = pool
        .layout
        .as_deref()
        .map(catalog::canonical_layout_name)
        .filter(|l| *l != "all-disabled");
    if let Some(layout) = layout {
        let mut named: Vec<(usize, Vec<String>)> = Vec::new();
        for (i, r) in raw_reqs.iter().enumerate() {
            let key = r["key"].as_str().unwrap_or_default();
            if r["operator"].as_str().unwrap_or("In") != "In" {
                continue;
            }
            let fams: Vec<String> = match key {
                "karpenter.k8s.aws/instance-family" => strings(&r["values"]),
                "node.kubernetes.io/instance-type" => strings(&r["values"])
                    .iter()
                    .map(|t| family(t).to_string())
                    .collect(),
                _ => continue,
            };
            let bad: BTreeSet<String> = fams
                .into_iter()
                .filter(|f| {
                    NON_MIG_FAMILIES.contains(&f.as_str())
                        || catalog::instances().iter().any(|i| {
                            family(i.name) == f && !i.gpu_model().is_some_and(|m| m.mig_capable())
                        })
                })
                .collect();
            if !bad.is_empty() {
                named.push((i, bad.into_iter().collect()));
            }
        }
        let restricted = raw_reqs.iter().any(|r| {
            matches!(
                r["key"].as_str(),
                Some("karpenter.k8s.aws/instance-family" | "node.kubernetes.io/instance-type")
            )
        });
        for (i, bad) in &named {
            sink.add(
                doc,
                format!("{}.values", requirement_path(*i)),
                Severity::Error,
                "mig-on-non-mig-family",
                format!(
                    "MIG layout '{layout}' on a pool that can launch {} ({}): no MIG on those GPUs, MIG Manager does not run there \
                     and no nvidia.com/mig-* resource ever appears.{} Restrict MIG pools to {} and put \
                     time-slicing on the others in a separate pool",
                    bad.join(", "),
                    gpus_of(bad),
                    fractional_families_note(bad),
                    super::MIG_FAMILIES.join(", ")
                ),
            );
        }
        if !restricted {
            let bad: Vec<&str> = pool
                .instances
                .iter()
                .filter(|i| !i.gpu_model().is_some_and(|m| m.mig_capable()))
                .map(|i| family(i.name))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            if !bad.is_empty() {
                sink.add(
                    doc,
                    "spec.template.spec.requirements",
                    Severity::Error,
                    "mig-on-non-mig-family",
                    format!(
                        "MIG layout '{layout}' but no instance-family or instance-type requirement: the pool can launch {}, whose GPUs \
                         have no MIG. Add karpenter.k8s.aws/instance-family In [{}]",
                        bad.join(", "),
                        super::MIG_FAMILIES.join(", ")
                    ),
                );
            }
        }
        // Profiles that do not exist on a GPU's memory size.
        let mut by_model: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (instance, plan) in &pool.plans {
            if plan.is_none() {
                by_model
                    .entry(instance.model)
                    .or_default()
                    .push(instance.name);
            }
        }
        for (model, names) in by_model {
            let Some(m) = catalog::model(model) else {
                continue;
            };
            let reason = catalog::layout(m, layout)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            sink.add(
                doc,
                label_path(MIG_CONFIG_LABEL),
                Severity::Error,
                "layout-profile-missing",
                format!(
                    "MIG layout '{layout}' does not exist on {} ({}): {reason}. Layouts there: {}. Use a layout of that GPU or \
                     narrow the pool's instance types",
                    names.join(", "),
                    m.product_name,
                    catalog::layout_names(m).join(", ")
                ),
            );
        }
        let startup_tainted = v["spec"]["template"]["spec"]["startupTaints"]
            .as_array()
            .is_some_and(|a| !a.is_empty());
        if !startup_tainted {
            sink.add(
                doc,
                label_path(MIG_CONFIG_LABEL),
                Severity::Warning,
                "mig-config-label",
                format!(
                    "{MIG_CONFIG_LABEL}={layout} is read only by the GPU Operator's MIG Manager, and only on MIG-capable nodes. Set at launch, \
                     every new node reconfigures (and may reboot) before its slices appear, and pods can land first (NVIDIA/gpu-operator#2670); \
                     changing the value later drifts and replaces every node. Add a startup taint that gpu-slicer removes once its slices are \
                     registered (spec.template.spec.startupTaints, gpu-slicer run --startup-taint KEY)"
                ),
            );
        }
    }

    // Limits.
    let advertised = pool.advertised();
    let pool_overlays: Vec<&Document> = overlays
        .iter()
        .copied()
        .filter(|o| overlay_pools(o).is_none_or(|p| p.iter().any(|n| n == &pool.name)))
        .collect();
    let overlay_declares = |r: &str| {
        pool_overlays
            .iter()
            .any(|o| o.value["spec"]["capacity"].get(r).is_some())
    };
    let describe_advertised = || {
        let names: Vec<&str> = advertised.keys().map(String::as_str).collect();
        if names.is_empty() {
            "nothing".to_string()
        } else {
            names.join(", ")
        }
    };
    if let Some(limits) = v["spec"]["limits"].as_object() {
        for (key, value) in limits {
            let path = format!("spec.limits{}", key_segment(key));
            let limit = quantity(value);
            if is_slice_resource(key) {
                match advertised.get(key) {
                    None => sink.add(
                        doc,
                        &path,
                        Severity::Error,
                        "slice-not-produced",
                        format!(
                            "no instance type this pool can launch advertises {key} under {}: they advertise {}. The slice names depend on \
                             the GPU's memory (all-balanced: 1g.5gb/2g.10gb/3g.20gb on A100-40GB p4d, 1g.10gb/2g.20gb/3g.40gb on 80 GB p4de/p5)",
                            pool.describe(),
                            describe_advertised()
                        ),
                    ),
                    Some((max, min, _)) => {
                        if let Some(l) = limit.filter(|_| overlay_declares(key)) {
                                if l < *min {
                                    sink.add(doc, &path, Severity::Error, "slice-limit-below-node", format!(
                                        "limit {l} is below one node's {min} x {key}: every instance type is excluded \
                                         (\"all available instance types exceed limits for nodepool\"); use a multiple of {max}, or limits.nodes"));
                                } else if l % max != 0 && l % min != 0 {
                                    sink.add(doc, &path, Severity::Warning, "slice-limit-below-node", format!(
                                        "limit {l} is not a multiple of one node's {max} x {key}: the last node can only launch while usage \
                                         stays at or below the limit; prefer a multiple, or limits.nodes"));
                                }
                        }
                    }
                }
                if !overlay_declares(key) {
                    sink.add(
                        doc,
                        &path,
                        Severity::Error,
                        "slice-limit-without-overlay",
                        format!(
                            "a limit on {key} does not stop a launch: without a NodeOverlay declaring {key} Karpenter's capacity for it is 0, \
                             so no instance type is filtered before launch and only registered slices count. Cap the pool with limits.nodes, \
                             or apply the overlay from `gpu-slicer karpenter overlays --nodepool {}` and give the limit in slice units",
                            pool.name
                        ),
                    );
                }
            } else if key == "nvidia.com/gpu" {
                let max_gpus = pool.instances.iter().map(|i| i.gpus).max().unwrap_or(0);
                if layout.is_some() {
                    sink.add(doc, &path, Severity::Warning, "gpu-limit", format!(
                        "under MIG (layout {}) registered nodes report 0 nvidia.com/gpu, and before launch Karpenter counts what the instance \
                         type's capacity says: gpu-slicer's NodeOverlay sets nvidia.com/gpu to 0 under MIG, so with it the limit counts 0 per node \
                         and never stops a launch (without it, Karpenter's own count of physical GPUs is used{}). Cap the pool with limits.nodes",
                        layout.unwrap_or_default(),
                        limit.filter(|l| u64::from(max_gpus) > *l).map(|l| format!(
                            " and excludes every type with more than {l} GPUs ({})",
                            pool.instances.iter().filter(|i| u64::from(i.gpus) > l).map(|i| i.name).collect::<Vec<_>>().join(", ")
                        )).unwrap_or_default()
                    ));
                } else if let Some(l) = limit.filter(|l| u64::from(max_gpus) > *l) {
                    sink.add(doc, &path, Severity::Warning, "gpu-limit", format!(
                        "limit {l} excludes every instance type with more {} than that before launch ({}){}",
                        if advertised.get(key).is_some_and(|a| a.2 || a.0 > u64::from(max_gpus)) { "replicas" } else { "GPUs" },
                        pool.instances.iter().filter(|i| u64::from(i.gpus) > l).map(|i| i.name).collect::<Vec<_>>().join(", "),
                        if l <= 1 { "; once one node exists every GPU type is excluded" } else { "" }
                    ));
                }
            }
        }
    }

    // Overlays for slices and shared replicas.
    let sliced = advertised.iter().any(|(r, (max, _, _))| {
        is_slice_resource(r)
            || (r == "nvidia.com/gpu"
                && pool.plans.iter().any(|(i, p)| {
                    p.as_ref().is_some_and(|p| {
                        p.resource(r).is_some_and(|res| {
                            res.sharing.is_some() && res.devices.len() as u64 > u64::from(i.gpus)
                        })
                    })
                })
                && *max > 0)
    });
    let limits_slices = v["spec"]["limits"]
        .as_object()
        .is_some_and(|l| l.keys().any(|k| is_slice_resource(k)));
    if (sliced || layout.is_some() || limits_slices) && pool_overlays.is_empty() {
        sink.add(
            doc,
            "metadata.name",
            Severity::Warning,
            "no-overlay",
            format!(
                "no NodeOverlay for NodePool {0} in these files: Karpenter knows only nvidia.com/gpu (physical GPUs) per instance type, so a \
                 pending pod requesting nvidia.com/mig-* or nvidia.com/gpu.shared never causes a launch (\"no instance type has enough \
                 resources\"), and time-sliced nvidia.com/gpu is counted as whole GPUs. Generate overlays with `gpu-slicer karpenter overlays \
                 --nodepool {0} --nodepool-file FILE` and enable the NodeOverlay feature gate",
                pool.name
            ),
        );
    }

    // Instance types the pool can launch that no overlay covers.
    if !pool_overlays.is_empty() && (sliced || layout.is_some()) {
        let uncovered: Vec<&str> = pool
            .plans
            .iter()
            .filter(|(_, p)| p.is_some())
            .map(|(i, _)| i.name)
            .filter(|name| {
                !pool_overlays.iter().any(|o| {
                    let own: Vec<Requirement> = o.value["spec"]["requirements"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(Requirement::from_value)
                                .collect::<Vec<_>>()
                        })
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|r: &Requirement| r.key != "karpenter.sh/nodepool")
                        .collect();
                    instances_matching(&own).iter().any(|i| i.name == *name)
                })
            })
            .collect();
        if !uncovered.is_empty() {
            sink.add(
                doc,
                "spec.template.spec.requirements",
                Severity::Warning,
                "overlay-coverage",
                format!(
                    "no NodeOverlay covers {} of NodePool {}: Karpenter cannot launch those for slice requests. Generate the missing \
                     overlays with `gpu-slicer karpenter overlays --nodepool-file FILE`, or narrow the pool's instance types",
                    uncovered.join(", "),
                    pool.name
                ),
            );
        }
    }

    // Taint.
    let tainted = v["spec"]["template"]["spec"]["taints"]
        .as_array()
        .is_some_and(|a| !a.is_empty());
    let gpu_pool = layout.is_some()
        || pool.requirements.iter().any(|r| {
            r.key.starts_with("karpenter.k8s.aws/instance-gpu")
                || (r.key == "karpenter.k8s.aws/instance-family"
                    && r.values.iter().any(|f| {
                        NON_MIG_FAMILIES.contains(&f.as_str())
                            || super::MIG_FAMILIES.contains(&f.as_str())
                    }))
        });
    if gpu_pool && !tainted {
        sink.add(
            doc,
            "spec.template.spec.taints",
            Severity::Warning,
            "gpu-pool-untainted",
            "GPU pool without taints: any pod can be packed onto these expensive nodes, and pods' nvidia.com/gpu tolerations do nothing. \
             Add taints: [{key: nvidia.com/gpu, effect: NoSchedule}]",
        );
    }
}

fn lint_node_class(doc: &Document, sink: &mut Sink<'_>) {
    let spec = &doc.value["spec"];
    let user_data = spec["userData"].as_str().unwrap_or_default();
    if spec["amiFamily"] == "Custom" {
        if user_data.trim().is_empty() {
            sink.add(
                doc,
                "spec.amiFamily",
                Severity::Error,
                "custom-ami-without-user-data",
                "amiFamily Custom without userData: Karpenter generates no bootstrap, so nodes never join (or register without the \
                 karpenter.sh/unregistered:NoExecute taint: UnregisteredTaintMissing) and NodeClaims are deleted after 15 minutes. Use \
                 amiSelectorTerms: [{alias: al2023@<version>}] (Karpenter picks the NVIDIA variant) or bottlerocket@<version>",
            );
        }
        if let Some(devices) = spec["blockDeviceMappings"].as_array() {
            for (i, d) in devices.iter().enumerate() {
                if d["deviceName"] == "/dev/xvda" {
                    sink.add(
                        doc,
                        format!("spec.blockDeviceMappings[{i}].deviceName"),
                        Severity::Warning,
                        "custom-ami-root-device",
                        "/dev/xvda is the root device of AL2023 and Bottlerocket, not of every custom AMI (Ubuntu images use /dev/sda1): \
                         a mapping for another name adds a volume instead of growing the root disk. Check the AMI's root device name",
                    );
                }
            }
        }
    }
    let bottlerocket = spec["amiFamily"] == "Bottlerocket"
        || spec["amiSelectorTerms"].as_array().is_some_and(|t| {
            t.iter().any(|t| {
                t["alias"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("bottlerocket"))
            })
        });
    if bottlerocket {
        let disabled = user_data
            .split("[settings.kubelet-device-plugins.nvidia]")
            .nth(1)
            .and_then(|t| t.split("\n[").next())
            .is_some_and(|t| {
                t.lines()
                    .any(|l| l.replace([' ', '\t'], "") == "enabled=false")
            });
        if !disabled {
            sink.add(
                doc,
                "spec.userData",
                Severity::Error,
                "bottlerocket-plugin-enabled",
                "Bottlerocket's NVIDIA variants run their own device plugin: next to gpu-slicer the same GPU can be handed out twice. \
                 Disable it in userData (Bottlerocket >= 1.63.0): [settings.kubelet-device-plugins.nvidia] enabled = false",
            );
        }
    }
}

/// The NodePools an overlay is scoped to (`None`: unscoped).
fn overlay_pools(doc: &Document) -> Option<Vec<String>> {
    let reqs = doc.value["spec"]["requirements"].as_array()?;
    let pools: Vec<String> = reqs
        .iter()
        .filter(|r| {
            r["key"] == "karpenter.sh/nodepool" && r["operator"].as_str().unwrap_or("In") == "In"
        })
        .flat_map(|r| strings(&r["values"]))
        .collect();
    (!pools.is_empty()).then_some(pools)
}

/// Karpenter's NodeOverlay conflict rule (kubernetes-sigs/karpenter,
/// `pkg/controllers/nodeoverlay`): overlays are taken by weight, highest
/// first, equal weights by name, later in the alphabet first. For each pool
/// and instance type an overlay matches, it conflicts when the overlay last
/// applied there has the same weight and sets one of the same capacity keys
/// (or both set a price). A conflicting overlay gets condition
/// `ValidationSucceeded=False` reason `Conflict` and is applied nowhere, in no
/// pool. Prices are compared per instance type here (Karpenter compares per
/// offering, which lint cannot see).
fn lint_overlay_conflicts(overlays: &[&Document], pools: &[Pool<'_>], sink: &mut Sink<'_>) {
    struct Applied {
        weight: i64,
        name: String,
        capacity: Vec<String>,
    }
    let weight = |d: &Document| d.value["spec"]["weight"].as_i64().unwrap_or(0);
    let mut ordered: Vec<&Document> = overlays.to_vec();
    ordered.sort_by(|a, b| {
        weight(b)
            .cmp(&weight(a))
            .then_with(|| b.name().cmp(a.name()))
    });
    // (pool, instance type) → the last overlay applied there (capacity; price).
    let mut capacity_applied: BTreeMap<(String, &str), Applied> = BTreeMap::new();
    let mut price_applied: BTreeMap<(String, &str), Applied> = BTreeMap::new();
    for doc in ordered {
        let spec = &doc.value["spec"];
        let w = weight(doc);
        let capacity: Vec<String> = spec["capacity"]
            .as_object()
            .map(|c| c.keys().cloned().collect())
            .unwrap_or_default();
        let priced = spec.get("price").is_some() || spec.get("priceAdjustment").is_some();
        let reqs: Vec<Requirement> = spec["requirements"]
            .as_array()
            .map(|a| a.iter().filter_map(Requirement::from_value).collect())
            .unwrap_or_default();
        let matched = overlay_instances(&reqs);
        let scoped = overlay_pools(doc);
        let mut targets: Vec<(String, &'static str)> = Vec::new();
        for pool in pools {
            if scoped
                .as_ref()
                .is_some_and(|names| !names.contains(&pool.name))
            {
                continue;
            }
            for instance in &pool.instances {
                if matched.iter().any(|m| m.name == instance.name) {
                    targets.push((pool.name.clone(), instance.name));
                }
            }
        }
        let conflict = targets.iter().find_map(|target| {
            let on_capacity = capacity_applied.get(target).and_then(|a| {
                let shared: Vec<&String> =
                    capacity.iter().filter(|k| a.capacity.contains(k)).collect();
                (a.weight == w && !shared.is_empty()).then(|| {
                    format!(
                        "sets {} like NodeOverlay {} with the same weight {w}",
                        shared
                            .iter()
                            .map(|k| k.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        a.name
                    )
                })
            });
            let on_price = price_applied
                .get(target)
                .filter(|a| priced && a.weight == w)
                .map(|a| {
                    format!(
                        "sets a price like NodeOverlay {} with the same weight {w}",
                        a.name
                    )
                });
            on_capacity
                .or(on_price)
                .map(|why| format!("{why} for NodePool {} and {}", target.0, target.1))
        });
        if let Some(why) = conflict {
            sink.add(doc, "spec.weight", Severity::Error, "overlay-conflict", format!(
                "{why}: Karpenter marks this overlay Conflict (ValidationSucceeded=False) and applies it nowhere, in every NodePool. \
                 Give one of them a different spec.weight (the higher wins), or merge them"));
            continue;
        }
        for target in targets {
            if !capacity.is_empty() {
                capacity_applied.insert(
                    target.clone(),
                    Applied {
                        weight: w,
                        name: doc.name().to_string(),
                        capacity: capacity.clone(),
                    },
                );
            }
            if priced {
                price_applied.insert(
                    target,
                    Applied {
                        weight: w,
                        name: doc.name().to_string(),
                        capacity: Vec::new(),
                    },
                );
            }
        }
    }
}

/// Label keys the NodeOverlay CRD's validation rules reject in
/// `spec.requirements` (Karpenter's `karpenter.sh_nodeoverlays.yaml` as the
/// AWS provider ships it), with the rule broken; `None` when allowed.
fn restricted_overlay_key(key: &str) -> Option<&'static str> {
    const KARPENTER_SH_ALLOWED: &[&str] = &["karpenter.sh/capacity-type", "karpenter.sh/nodepool"];
    const AWS_ALLOWED: &[&str] = &[
        "karpenter.k8s.aws/ec2nodeclass",
        "karpenter.k8s.aws/instance-encryption-in-transit-supported",
        "karpenter.k8s.aws/nitro-sandbox",
        "karpenter.k8s.aws/instance-category",
        "karpenter.k8s.aws/instance-hypervisor",
        "karpenter.k8s.aws/instance-family",
        "karpenter.k8s.aws/instance-generation",
        "karpenter.k8s.aws/instance-local-nvme",
        "karpenter.k8s.aws/instance-size",
        "karpenter.k8s.aws/instance-cpu",
        "karpenter.k8s.aws/instance-cpu-manufacturer",
        "karpenter.k8s.aws/instance-cpu-sustained-clock-speed-mhz",
        "karpenter.k8s.aws/instance-memory",
        "karpenter.k8s.aws/instance-ebs-bandwidth",
        "karpenter.k8s.aws/instance-network-bandwidth",
        "karpenter.k8s.aws/instance-gpu-name",
        "karpenter.k8s.aws/instance-gpu-manufacturer",
        "karpenter.k8s.aws/instance-gpu-count",
        "karpenter.k8s.aws/instance-gpu-memory",
        "karpenter.k8s.aws/instance-accelerator-name",
        "karpenter.k8s.aws/instance-accelerator-manufacturer",
        "karpenter.k8s.aws/instance-accelerator-count",
        "karpenter.k8s.aws/instance-capability-flex",
    ];
    let domain = key.split('/').next().unwrap_or(key);
    if key == "kubernetes.io/hostname" {
        Some("label kubernetes.io/hostname is restricted")
    } else if domain.ends_with("karpenter.sh") && !KARPENTER_SH_ALLOWED.contains(&key) {
        Some(
            "label domain karpenter.sh is restricted but for karpenter.sh/capacity-type and karpenter.sh/nodepool",
        )
    } else if domain.ends_with("karpenter.k8s.aws") && !AWS_ALLOWED.contains(&key) {
        Some(
            "label domain karpenter.k8s.aws is restricted but for the instance-type labels the AWS provider defines",
        )
    } else {
        None
    }
}

fn lint_overlay(doc: &Document, pools: &[Pool<'_>], sink: &mut Sink<'_>) {
    let spec = &doc.value["spec"];
    if spec.get("price").is_some() && spec.get("priceAdjustment").is_some() {
        sink.add(
            doc,
            "spec.price",
            Severity::Error,
            "overlay-price-and-adjustment",
            "cannot set both 'price' and 'priceAdjustment' (the CRD rejects it): keep one",
        );
    }
    let reqs: Vec<Requirement> = spec["requirements"]
        .as_array()
        .map(|a| a.iter().filter_map(Requirement::from_value).collect())
        .unwrap_or_default();
    let Some(pool_names) = overlay_pools(doc) else {
        sink.add(
            doc,
            "spec.requirements",
            Severity::Warning,
            "overlay-unscoped",
            "no karpenter.sh/nodepool requirement: the overlay changes Karpenter's view of the matching instance types in every NodePool, \
             including pools whose nodes are not sliced. Add {key: karpenter.sh/nodepool, operator: In, values: [<pool>]}",
        );
        return;
    };
    let Some(capacity) = spec["capacity"].as_object() else {
        return;
    };
    for name in pool_names {
        let Some(pool) = pools.iter().find(|p| p.name == name) else {
            sink.add(doc, "spec.requirements", Severity::Warning, "overlay-unknown-nodepool", format!(
                "NodePool {name} is not among the linted files: its capacity cannot be checked; lint the overlay with its NodePool"));
            continue;
        };
        let template_labels = pool.doc.value["spec"]["template"]["metadata"]["labels"].as_object();
        for (i, r) in reqs.iter().enumerate() {
            let path = format!("spec.requirements[{i}].key");
            if let Some(rule) = restricted_overlay_key(&r.key) {
                sink.add(doc, &path, Severity::Error, "overlay-restricted-key", format!(
                    "'{}' is restricted in NodeOverlay requirements ({rule}): the API server rejects the overlay. \
                     Use node.kubernetes.io/instance-type or an allowed karpenter.k8s.aws/instance-* key", r.key));
                continue;
            }
            let known = r.key.starts_with("karpenter.sh/")
                || r.key.starts_with("karpenter.k8s.aws/")
                || r.key.starts_with("node.kubernetes.io/")
                || r.key.starts_with("topology.kubernetes.io/")
                || r.key.starts_with("kubernetes.io/")
                || template_labels.is_some_and(|l| l.contains_key(&r.key));
            if known {
                continue;
            }
            // An undefined label matches NotIn and DoesNotExist (the overlay
            // then applies to every instance type of the pool) and nothing else.
            match r.operator.as_str() {
                "NotIn" | "DoesNotExist" => sink.add(doc, &path, Severity::Error, "overlay-custom-key", format!(
                    "'{}' is neither a well-known label nor a template label of NodePool {name}: Karpenter treats it as undefined, so \
                     {} matches every instance type of the pool and the overlay applies to all of them. Use node.kubernetes.io/instance-type \
                     or karpenter.k8s.aws/instance-gpu-*", r.key, r.operator)),
                _ => sink.add(doc, &path, Severity::Warning, "overlay-custom-key", format!(
                    "'{}' is neither a well-known label nor a template label of NodePool {name}: Karpenter treats it as undefined, so \
                     {} never matches and the overlay silently applies to nothing. Use node.kubernetes.io/instance-type or \
                     karpenter.k8s.aws/instance-gpu-*", r.key, r.operator)),
            }
        }
        let matched = overlay_instances(&reqs);
        for (instance, plan) in &pool.plans {
            if !matched.iter().any(|m| m.name == instance.name) {
                continue;
            }
            let Some(plan) = plan else { continue };
            let expected = overlays::capacity_of(plan).counts;
            let context = format!("{} on {}", pool.describe(), instance.name);
            for (key, want) in &expected {
                let path = format!("spec.capacity{}", key_segment(key));
                match capacity.get(key).and_then(quantity) {
                    Some(got) if got == *want => {}
                    Some(got) => sink.add(doc, path, Severity::Error, "overlay-capacity-mismatch", format!(
                        "declares {got} x {key}, but gpu-slicer advertises {want} under {context}: Karpenter would plan with the wrong count. \
                         Regenerate with `gpu-slicer karpenter overlays --nodepool {name} --instance-type {}`", instance.name)),
                    None if *want == 0 => sink.add(doc, "spec.capacity", Severity::Warning, "overlay-capacity-mismatch", format!(
                        "no {key}: \"0\": gpu-slicer advertises none under {context}, but Karpenter keeps its own count of physical GPUs \
                         (overlay keys replace, they do not add), so pods asking for {key} can be sent to a node that never registers it")),
                    None => sink.add(doc, "spec.capacity", Severity::Error, "overlay-capacity-mismatch", format!(
                        "missing {key}: \"{want}\" (gpu-slicer advertises it under {context}): pods requesting it cannot make Karpenter launch")),
                }
            }
            for (key, got) in capacity {
                if !expected.contains_key(key) && quantity(got) != Some(0) {
                    sink.add(doc, format!("spec.capacity{}", key_segment(key)), Severity::Error, "overlay-capacity-mismatch", format!(
                        "declares {key}, which gpu-slicer does not advertise under {context}: the NodeClaim would wait forever with \
                         \"Resource \\\"{key}\\\" was requested but not registered\""));
                }
            }
        }
    }
}

/// The pod spec of a workload and the path prefix to it.
fn pod_spec(v: &Value) -> Option<(String, &Value)> {
    match v["kind"].as_str()? {
        "Pod" => Some(("spec".into(), &v["spec"])),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => {
            Some(("spec.template.spec".into(), &v["spec"]["template"]["spec"]))
        }
        "CronJob" => Some((
            "spec.jobTemplate.spec.template.spec".into(),
            &v["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        )),
        _ => None,
    }
}

fn lint_workload(
    doc: &Document,
    prefix: &str,
    spec: &Value,
    pools: &[Pool<'_>],
    configs: &BTreeMap<String, Config>,
    sink: &mut Sink<'_>,
) {
    let selector = &spec["nodeSelector"];
    if let Some(value) = selector[MIG_CONFIG_LABEL].as_str() {
        sink.add(
            doc,
            format!("{prefix}.nodeSelector{}", key_segment(MIG_CONFIG_LABEL)),
            Severity::Warning,
            "selects-mig-config",
            format!(
                "selects the desired MIG config ({MIG_CONFIG_LABEL}={value}), not slices that exist (nvidia.com/mig.config.state may be \
                 pending or failed), and couples the pod to a config name. The resource request already places the pod; to pick a pool \
                 select karpenter.sh/nodepool"
            ),
        );
    }
    // Where the pod can go, and what is advertised there.
    let chosen_pool = selector["karpenter.sh/nodepool"].as_str();
    let mut advertised: BTreeMap<String, (u64, u64, bool)> = BTreeMap::new();
    let mut sources = Vec::new();
    let candidates: Vec<&Pool<'_>> = pools
        .iter()
        .filter(|p| chosen_pool.is_none_or(|c| c == p.name))
        .collect();
    if !candidates.is_empty() {
        for p in &candidates {
            for (k, v) in p.advertised() {
                let e = advertised.entry(k).or_insert((0, u64::MAX, false));
                e.0 = e.0.max(v.0);
                e.2 |= v.2;
            }
            sources.push(format!("NodePool {}", p.name));
        }
    } else if !configs.is_empty() && pools.is_empty() {
        for (name, config) in configs {
            for instance in catalog::instances() {
                let Some(model) = instance.gpu_model() else {
                    continue;
                };
                for layout in catalog::layout_names(model) {
                    let l = (layout != "all-disabled").then_some(layout.as_str());
                    if let Ok(plan) = overlays::plan_instance(instance.name, l, config) {
                        for r in &plan.resources {
                            let e = advertised.entry(r.name.to_string()).or_insert((
                                0,
                                u64::MAX,
                                false,
                            ));
                            e.2 |= r.sharing.is_some_and(|s| s.fail_requests_greater_than_one);
                        }
                    }
                }
            }
            sources.push(format!("config {name}"));
        }
    } else {
        return;
    }
    let containers = ["initContainers", "containers"];
    for list in containers {
        let Some(cs) = spec[list].as_array() else {
            continue;
        };
        for (ci, c) in cs.iter().enumerate() {
            let mut seen = BTreeSet::new();
            for part in ["limits", "requests"] {
                let Some(map) = c["resources"][part].as_object() else {
                    continue;
                };
                for (key, value) in map {
                    if !key.starts_with("nvidia.com/") || !seen.insert(key.clone()) {
                        continue;
                    }
                    let path =
                        format!("{prefix}.{list}[{ci}].resources.{part}{}", key_segment(key));
                    match advertised.get(key) {
                        None => {
                            let other = if let Some(base) = key.strip_suffix(".shared") {
                                advertised.contains_key(base).then(|| format!(
                                    "; {base} is advertised instead (renameByDefault is off): request {base}"))
                            } else {
                                let shared = format!("{key}.shared");
                                advertised.contains_key(&shared).then(|| format!(
                                    "; the config advertises {shared} (renameByDefault: true, Bottlerocket's default): request {shared}, \
                                     or turn renameByDefault off"))
                            };
                            let names: Vec<&str> = advertised.keys().map(String::as_str).collect();
                            sink.add(doc, path, Severity::Error, "unadvertised-request", format!(
                                "requests {key}, which the nodes of {} never advertise (they advertise {}){}. The pod stays Pending (Karpenter: \
                                 \"no instance type has enough resources\"; kube-scheduler: \"Insufficient {key}\")",
                                sources.join(", "),
                                if names.is_empty() { "nothing".to_string() } else { names.join(", ") },
                                other.unwrap_or_default()));
                        }
                        Some((_, _, fail_gt_one)) => {
                            if *fail_gt_one && quantity(value).is_some_and(|n| n > 1) {
                                sink.add(doc, path, Severity::Error, "request-greater-than-one", format!(
                                    "requests {} x {key}, but the config sets failRequestsGreaterThanOne: kubelet rejects the pod with \
                                     UnexpectedAdmissionError (\"request for '{key}: {}' too large: maximum request size for shared resources \
                                     is 1\"), and N replicas would not buy N times the compute anyway. Request 1",
                                    quantity(value).unwrap_or_default(), quantity(value).unwrap_or_default()));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Human-readable findings, then a summary line.
pub fn render(findings: &[Finding]) -> String {
    let mut out = String::new();
    for f in findings {
        if f.object.is_empty() {
            // A finding about the whole file (it holds nothing to check).
            let _ = writeln!(
                out,
                "{}\n  {}[{}]: {}",
                f.file,
                f.severity.as_str(),
                f.rule,
                f.message
            );
            continue;
        }
        let _ = writeln!(
            out,
            "{} (document {}) {} at {}\n  {}[{}]: {}",
            f.file,
            f.document + 1,
            f.object,
            f.path,
            f.severity.as_str(),
            f.rule,
            f.message
        );
    }
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let _ = writeln!(
        out,
        "{errors} error{}, {} warning{}",
        if errors == 1 { "" } else { "s" },
        findings.len() - errors,
        if findings.len() - errors == 1 {
            ""
        } else {
            "s"
        }
    );
    out
}

/// The presets an overlay's requirements match, its `karpenter.sh/nodepool`
/// scope aside (the pool is matched on its own).
fn overlay_instances(reqs: &[Requirement]) -> Vec<&'static InstanceType> {
    let own: Vec<Requirement> = reqs
        .iter()
        .filter(|r| r.key != "karpenter.sh/nodepool")
        .cloned()
        .collect();
    instances_matching(&own)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOL: &str = "apiVersion: karpenter.sh/v1\nkind: NodePool\nmetadata: {name: gpu}\nspec:\n  template:\n    spec:\n      requirements:\n      - {key: node.kubernetes.io/instance-type, operator: In, values: [g5.xlarge]}\n";

    fn overlay_with(requirement: &str) -> String {
        format!(
            "---\napiVersion: karpenter.sh/v1alpha1\nkind: NodeOverlay\nmetadata: {{name: o}}\nspec:\n  requirements:\n  - {{key: karpenter.sh/nodepool, operator: In, values: [gpu]}}\n  - {requirement}\n  capacity: {{nvidia.com/gpu: \"1\"}}\n"
        )
    }

    /// Defect: `overlay-custom-key` said an unknown key "never matches",
    /// but NotIn/DoesNotExist match everything; restricted keys are
    /// rejected by the API server.
    #[test]
    fn overlay_requirement_keys_by_operator_and_domain() {
        let cases: &[(&str, Option<(&str, Severity, &str)>)] = &[
            (
                "{key: example.com/team, operator: In, values: [a]}",
                Some(("overlay-custom-key", Severity::Warning, "In never matches")),
            ),
            (
                "{key: example.com/team, operator: Exists}",
                Some((
                    "overlay-custom-key",
                    Severity::Warning,
                    "Exists never matches",
                )),
            ),
            (
                "{key: example.com/team, operator: NotIn, values: [a]}",
                Some((
                    "overlay-custom-key",
                    Severity::Error,
                    "NotIn matches every instance type",
                )),
            ),
            (
                "{key: example.com/team, operator: DoesNotExist}",
                Some((
                    "overlay-custom-key",
                    Severity::Error,
                    "DoesNotExist matches every instance type",
                )),
            ),
            (
                "{key: karpenter.sh/registered, operator: Exists}",
                Some((
                    "overlay-restricted-key",
                    Severity::Error,
                    "label domain karpenter.sh is restricted",
                )),
            ),
            (
                "{key: kubernetes.io/hostname, operator: Exists}",
                Some((
                    "overlay-restricted-key",
                    Severity::Error,
                    "kubernetes.io/hostname is restricted",
                )),
            ),
            (
                "{key: karpenter.k8s.aws/instance-ami-id, operator: Exists}",
                Some((
                    "overlay-restricted-key",
                    Severity::Error,
                    "label domain karpenter.k8s.aws is restricted",
                )),
            ),
            (
                "{key: karpenter.k8s.aws/instance-gpu-name, operator: In, values: [a10g]}",
                None,
            ),
            (
                "{key: karpenter.sh/capacity-type, operator: In, values: [spot]}",
                None,
            ),
        ];
        for (requirement, want) in cases {
            let text = format!("{POOL}{}", overlay_with(requirement));
            let docs = super::super::parse_documents(&text, "f.yaml").expect("yaml");
            let findings: Vec<Finding> = lint(&docs)
                .into_iter()
                .filter(|f| {
                    f.rule.starts_with("overlay-custom-key") || f.rule == "overlay-restricted-key"
                })
                .collect();
            match want {
                None => assert!(findings.is_empty(), "{requirement}: {findings:?}"),
                Some((rule, severity, text)) => {
                    assert_eq!(findings.len(), 1, "{requirement}: {findings:?}");
                    assert_eq!(
                        (findings[0].rule, findings[0].severity),
                        (*rule, *severity),
                        "{requirement}"
                    );
                    assert!(
                        findings[0].message.contains(text),
                        "{requirement}: {}",
                        findings[0].message
                    );
                }
            }
        }
    }

    /// Defect: `gpu-limit` said Karpenter counts physical GPUs before launch;
    /// with gpu-slicer's overlay it counts the overlay's 0 under MIG.
    #[test]
    fn gpu_limit_under_mig_says_the_overlay_makes_it_count_zero() {
        let text = "apiVersion: karpenter.sh/v1\nkind: NodePool\nmetadata: {name: mig}\nspec:\n  limits: {nvidia.com/gpu: 4}\n  template:\n    metadata:\n      labels: {nvidia.com/mig.config: all-balanced}\n    spec:\n      requirements:\n      - {key: node.kubernetes.io/instance-type, operator: In, values: [p4d.24xlarge]}\n";
        let docs = super::super::parse_documents(text, "f.yaml").expect("yaml");
        let findings = lint(&docs);
        let gpu_limit = findings
            .iter()
            .find(|f| f.rule == "gpu-limit")
            .expect("gpu-limit finding");
        assert!(
            gpu_limit
                .message
                .contains("gpu-slicer's NodeOverlay sets nvidia.com/gpu to 0 under MIG, so with it the limit counts 0 per node"),
            "{}",
            gpu_limit.message
        );
    }

    /// Missing rule: two overlays of equal weight setting the same capacity
    /// key for the same pool and instance type make Karpenter drop one.
    #[test]
    fn overlay_conflict_follows_karpenters_rule() {
        let overlay = |name: &str, weight: Option<u32>, key: &str| {
            format!(
                "---\napiVersion: karpenter.sh/v1alpha1\nkind: NodeOverlay\nmetadata: {{name: {name}}}\nspec:\n{}  requirements:\n  - {{key: karpenter.sh/nodepool, operator: In, values: [gpu]}}\n  - {{key: node.kubernetes.io/instance-type, operator: In, values: [g5.xlarge]}}\n  capacity: {{{key}: \"1\"}}\n",
                weight
                    .map(|w| format!("  weight: {w}\n"))
                    .unwrap_or_default()
            )
        };
        let conflicts = |overlays: &[String]| -> Vec<(String, String)> {
            let text = format!("{POOL}{}", overlays.concat());
            let docs = super::super::parse_documents(&text, "f.yaml").expect("yaml");
            lint(&docs)
                .into_iter()
                .filter(|f| f.rule == "overlay-conflict")
                .map(|f| (f.object, f.message))
                .collect()
        };
        // Same weight, same key: the name earlier in the alphabet loses.
        let found = conflicts(&[
            overlay("a", Some(10), "nvidia.com/gpu"),
            overlay("b", Some(10), "nvidia.com/gpu"),
        ]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "NodeOverlay/a");
        assert!(
            found[0].1.starts_with("sets nvidia.com/gpu like NodeOverlay b with the same weight 10 for NodePool gpu and g5.xlarge"),
            "{}",
            found[0].1
        );
        // No weight is weight 0.
        assert_eq!(
            conflicts(&[
                overlay("a", None, "nvidia.com/gpu"),
                overlay("b", Some(0), "nvidia.com/gpu")
            ])
            .len(),
            1
        );
        // Different weights or different keys do not conflict.
        assert!(
            conflicts(&[
                overlay("a", Some(10), "nvidia.com/gpu"),
                overlay("b", Some(20), "nvidia.com/gpu")
            ])
            .is_empty()
        );
        assert!(
            conflicts(&[
                overlay("a", Some(10), "nvidia.com/gpu"),
                overlay("b", Some(10), "example.com/x")
            ])
            .is_empty()
        );
    }

    /// Missing rule: a pool that allows a GPU type without a preset (p5.4xlarge
    /// was one; then g5g, g6f, gr6f, g7, g7e, p6-b300) gets no overlay for it.
    #[test]
    fn nodepool_allowing_types_without_a_preset_is_flagged() {
        let pool = |labels: &str, requirement: &str| {
            format!(
                "apiVersion: karpenter.sh/v1\nkind: NodePool\nmetadata: {{name: p}}\nspec:\n  template:\n    metadata:\n      labels: {{{labels}}}\n    spec:\n      requirements:\n      - {requirement}\n"
            )
        };
        let found = |text: String| -> Vec<(Severity, String)> {
            let docs = super::super::parse_documents(&text, "f.yaml").expect("yaml");
            lint(&docs)
                .into_iter()
                .filter(|f| f.rule == "nodepool-type-without-preset")
                .map(|f| (f.severity, f.message))
                .collect()
        };
        // Every GPU type of Karpenter's data has a preset now (g5g, g6f,
        // gr6f, g7, g7e and p6-b300 were the last): a pool of those families
        // is not flagged.
        assert!(
            found(pool(
                "nvidia.com/mig.config: all-balanced",
                "{key: karpenter.k8s.aws/instance-family, operator: In, values: [p5, p6-b300, g7e]}",
            ))
            .is_empty()
        );
        assert!(
            found(pool(
                "team: a",
                "{key: karpenter.k8s.aws/instance-gpu-name, operator: In, values: [t4g, l4]}",
            ))
            .is_empty()
        );
        // A type newer than the presets and Karpenter's data (a synthetic
        // p7.48xlarge), named explicitly: an error in a MIG pool.
        let mig = found(pool(
            "nvidia.com/mig.config: all-balanced",
            "{key: node.kubernetes.io/instance-type, operator: In, values: [p5.48xlarge, p7.48xlarge, m7i.large]}",
        ));
        assert_eq!(mig.len(), 1, "{mig:?}");
        assert_eq!(mig[0].0, Severity::Error);
        assert!(
            mig[0].1.starts_with(
                "allows GPU instance types gpu-slicer has no preset for (p7.48xlarge)"
            ),
            "{}",
            mig[0].1
        );
        // An unknown GPU family: a warning without MIG. Known families, CPU
        // families and the AMD g4ad are not flagged.
        let shared = found(pool(
            "team: a",
            "{key: karpenter.k8s.aws/instance-family, operator: In, values: [g6, g8, m7i, g4ad]}",
        ));
        assert_eq!(shared.len(), 1, "{shared:?}");
        assert_eq!(shared[0].0, Severity::Warning);
        assert!(shared[0].1.contains("(g8)"), "{}", shared[0].1);
        assert!(
            found(pool(
                "team: a",
                "{key: node.kubernetes.io/instance-type, operator: In, values: [g5.xlarge]}"
            ))
            .is_empty()
        );
    }

    /// g6f/gr6f have a fractional L4: a MIG pool that allows them is told
    /// why no MIG, and what sharing remains; the MIG families listed include
    /// the new p6-b300, g7 and g7e.
    #[test]
    fn mig_pool_on_fractional_gpus_says_why() {
        let text = "apiVersion: karpenter.sh/v1\nkind: NodePool\nmetadata: {name: p}\nspec:\n  template:\n    metadata:\n      labels: {nvidia.com/mig.config: all-balanced}\n    spec:\n      requirements:\n      - {key: karpenter.k8s.aws/instance-family, operator: In, values: [g6f, g7e]}\n      taints: [{key: nvidia.com/gpu, effect: NoSchedule}]\n";
        let docs = super::super::parse_documents(text, "f.yaml").expect("yaml");
        let found: Vec<String> = lint(&docs)
            .into_iter()
            .filter(|f| f.rule == "mig-on-non-mig-family")
            .map(|f| f.message)
            .collect();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0]
                .starts_with("MIG layout 'all-balanced' on a pool that can launch g6f (NVIDIA L4)"),
            "{}",
            found[0]
        );
        assert!(found[0].contains("g6f have a fractional GPU (1/8 to 1/2 of an L4, one vGPU, gpu-count 0 in Karpenter): it cannot be sliced with MIG; only time-slicing shares it."), "{}", found[0]);
        assert!(
            found[0].contains("p6-b200, p6-b300, g7, g7e"),
            "{}",
            found[0]
        );
    }
}
