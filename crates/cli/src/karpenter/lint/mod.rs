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
//! | `nodepool-type-without-preset` | error/warning | the pool allows NVIDIA GPU types gpu-slicer has no preset for (error under MIG) |
//! | `custom-ami-without-user-data` | error | `amiFamily: Custom` without `userData` |
//! | `custom-ami-root-device` | warning | `/dev/xvda` assumed on a custom AMI |
//! | `bottlerocket-plugin-enabled` | error | Bottlerocket's own NVIDIA plugin left on |
//! | `overlay-unscoped` | warning | NodeOverlay without `karpenter.sh/nodepool` |
//! | `overlay-unknown-nodepool` | warning | NodeOverlay for a pool not in the files |
//! | `overlay-custom-key` | error/warning | a key the pool does not define: `NotIn`/`DoesNotExist` match every instance type (error), other operators never match (warning) |
//! | `overlay-restricted-key` | error | a key the NodeOverlay CRD rejects (`kubernetes.io/hostname`, most `karpenter.sh/*`, `karpenter.k8s.aws/*`) |
//! | `overlay-conflict` | error | overlays of equal weight setting the same capacity key or price for one pool and instance type: Karpenter applies neither |
//! | `overlay-same-name` | warning | two NodeOverlays of one name with different specs: applying both keeps the last |
//! | `overlay-price-and-adjustment` | error | `price` and `priceAdjustment` together |
//! | `overlay-capacity-mismatch` | error/warning | capacity differs from what gpu-slicer advertises |
//! | `selects-mig-config` | warning | workload selects `nvidia.com/mig.config` |
//! | `unadvertised-request` | error | workload requests a name no pool/config advertises |
//! | `request-greater-than-one` | error | request above 1 under `failRequestsGreaterThanOne` |
//! | `config-invalid` | error | a gpu-slicer ConfigMap does not parse |
//! | `config-refused` | error | the daemon refuses the pool's config on some of its instance types (a plan error) |
//! | `api-server-rejects` | error | the API server would refuse the NodePool: its name, disruption, expireAfter, nodeClassRef |
//! | `nodeclass-missing` | error | `nodeClassRef` names an EC2NodeClass that none of the files (which hold some) defines |
//! | `no-kubernetes-object` | error | a file holding no Kubernetes object or gpu-slicer config |
//!
//! One file per kind of object: `pool.rs`, `node_class.rs`, `overlay.rs`,
//! `workload.rs`.

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

pub mod api;
mod node_class;
mod overlay;
mod pool;
mod workload;

use node_class::lint_node_class;
use overlay::{lint_overlay, lint_overlay_conflicts, overlay_pools};
use pool::lint_pool;
use workload::{lint_workload, pod_spec};

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
pub fn lint_files(paths: &[impl AsRef<Path>]) -> Result<Vec<Finding>, crate::error::InputError> {
    let mut docs = Vec::new();
    let mut empty_files = Vec::new();
    for path in paths {
        let loaded = super::load_documents(path.as_ref())?;
        if !loaded.iter().any(is_lintable) {
            empty_files.push(match path.as_ref() {
                p if p == Path::new("-") => "(standard input)".to_string(),
                p => p.display().to_string(),
            });
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
            Some(Err(e)) => sink.add(
                doc,
                "data",
                Severity::Error,
                "config-invalid",
                e.to_string(),
            ),
            None => {}
        }
    }
    let overlays: Vec<&Document> = docs.iter().filter(|d| d.kind() == "NodeOverlay").collect();
    let mut pools = Vec::new();
    for doc in docs.iter().filter(|d| d.kind() == "NodePool") {
        pools.push(build_pool(doc, &configs, any_configmap, &mut sink));
    }
    let classes: Vec<&str> = docs
        .iter()
        .filter(|d| d.kind() == "EC2NodeClass")
        .map(Document::name)
        .collect();
    for pool in &pools {
        for (path, message) in api::nodepool_rejections(&pool.doc.value) {
            sink.add(
                pool.doc,
                path,
                Severity::Error,
                "api-server-rejects",
                message,
            );
        }
        let class = &pool.doc.value["spec"]["template"]["spec"]["nodeClassRef"];
        if let Some(name) = class["name"].as_str()
            && !classes.is_empty()
            && class["kind"].as_str().is_none_or(|k| k == "EC2NodeClass")
            && !classes.contains(&name)
        {
            sink.add(
                pool.doc,
                "spec.template.spec.nodeClassRef.name",
                Severity::Error,
                "nodeclass-missing",
                format!(
                    "EC2NodeClass '{name}' is not in these files (they define {}): Karpenter launches nothing for the pool \
                     (NodePool condition NodeClassReady=False). Fix the name, or lint the pool with its EC2NodeClass",
                    classes.join(", ")
                ),
            );
        }
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
    // Defect: plan errors were dropped (`.ok()`), so a config the daemon
    // refuses on every node (replicas: 1000000000, a resource named twice)
    // linted clean. Each distinct error is one finding naming its types.
    let mut refused: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for instance in instances {
        let layout = pool.layout_on(instance);
        let plan = match layout {
            Some(l) if !layout_fits(instance, l) => None,
            _ => match overlays::plan_instance(instance.name, layout, &pool.config) {
                Ok(plan) => Some(plan),
                Err(overlays::PlanInstanceError::Plan { message, .. }) => {
                    refused.entry(message).or_default().push(instance.name);
                    continue;
                }
                Err(overlays::PlanInstanceError::Simulate(message)) => {
                    refused.entry(message).or_default().push(instance.name);
                    continue;
                }
            },
        };
        pool.plans.push((instance, plan));
    }
    for (message, instances) in refused {
        let path = match label {
            Some(_) => format!("spec.template.metadata.labels{}", key_segment(CONFIG_LABEL)),
            None => "metadata.name".to_string(),
        };
        sink.add(
            doc,
            path,
            Severity::Error,
            "config-refused",
            format!(
                "on {} gpu-slicer refuses {}: {message}. The daemon exits at start (or keeps the running config on a reload) \
                 on every such node; fix the config, or narrow the pool's instance types",
                instances.join(", "),
                match &pool.config_name {
                    Some(name) => format!("config '{name}'"),
                    None => "the default config".to_string(),
                },
            ),
        );
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
