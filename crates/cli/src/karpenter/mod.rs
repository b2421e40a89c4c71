//! Karpenter on EKS: what gpu-slicer's planner knows, turned into the pieces
//! Karpenter lacks. Pure functions over parsed YAML (`serde_json::Value`).
//!
//! | | |
//! |---|---|
//! | [`overlays`] | `NodeOverlay` objects whose `capacity` is exactly what [`gpu_slicer_core::plan`] advertises |
//! | [`lint`] | checks NodePools, EC2NodeClasses, NodeOverlays, gpu-slicer ConfigMaps and workloads together |
//! | [`prices`] | a dated on-demand price table, overridable from a file |
//! | [`cost`] | cost per slice-hour, and instance/layout choices for a workload mix |
//!
//! Karpenter facts used here (replace-not-add overlay capacity, well-known
//! labels, the `NodeOverlay` feature gate) are documented in
//! `docs/karpenter.md`.

pub mod cost;
pub mod lint;
pub mod nodes;
pub mod overlays;
pub mod prices;
pub mod workload;

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::error::InputError;

use gpu_slicer_core::config::{self, Config};
use gpu_slicer_core::gpu::catalog::{self, InstanceType};
use gpu_slicer_core::messages::{io_error, yaml_error};

/// The label names, declared once in the core (the daemon follows the same
/// ones): the node label NVIDIA's config-manager (and gpu-slicer) read to
/// pick a named config out of a ConfigMap with several; the one the GPU
/// Operator's MIG Manager reads; the label (and overlay annotation) holding
/// the hash of what a node advertises.
pub use gpu_slicer_core::node_labels::{
    CONFIG_HASH as CONFIG_HASH_LABEL, DEVICE_PLUGIN_CONFIG as CONFIG_LABEL,
    MIG_CONFIG as MIG_CONFIG_LABEL,
};

/// One YAML document of a file.
#[derive(Debug, Clone)]
pub struct Document {
    /// The file it came from, as given.
    pub file: String,
    /// 0-based position among the file's documents (and, in Markdown, its
    /// `yaml` code blocks).
    pub index: usize,
    pub value: Value,
}

impl Document {
    pub fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }

    pub fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }
}

/// Parses every YAML document of `text` (`---` separated); empty documents
/// are skipped. `file` names the source in errors.
pub fn parse_documents(text: &str, file: &str) -> Result<Vec<Document>, InputError> {
    parse_documents_from(text, file, 0)
}

fn parse_documents_from(text: &str, file: &str, first: usize) -> Result<Vec<Document>, InputError> {
    let values: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| {
        crate::invalid!(
            file,
            "not valid YAML: {}; fix the YAML (or pass only Kubernetes manifests)",
            yaml_error(&e)
        )
    })?;
    Ok(values
        .into_iter()
        .filter(|v| !v.is_null())
        .enumerate()
        .map(|(i, value)| Document {
            file: file.to_string(),
            index: first + i,
            value,
        })
        .collect())
}

/// The fenced ```yaml blocks of a Markdown text, with the line each starts on.
pub fn markdown_yaml_blocks(text: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match &mut current {
            None => {
                let info = trimmed.strip_prefix("```").map(str::trim);
                if matches!(info, Some("yaml" | "yml")) {
                    current = Some((n + 2, String::new()));
                }
            }
            Some((_, body)) => {
                if trimmed.starts_with("```") {
                    if let Some(block) = current.take() {
                        blocks.push(block);
                    }
                } else {
                    body.push_str(line);
                    body.push('\n');
                }
            }
        }
    }
    blocks
}

/// Reads a manifest file: YAML (several documents allowed) or Markdown, whose
/// ```yaml blocks are read in order.
pub fn load_documents(path: &Path) -> Result<Vec<Document>, InputError> {
    if path == Path::new("-") {
        return parse_documents(&read_stdin()?, "(standard input)");
    }
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        let hint = if path.is_dir() {
            format!("give the files in it (e.g. {file}/*.yaml)")
        } else {
            "check the path and permissions".to_string()
        };
        InputError::Unreadable {
            what: file.clone(),
            reason: io_error(&e),
            hint: Some(hint),
        }
    })?;
    let is_markdown = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("md"));
    if !is_markdown {
        return parse_documents(&text, &file);
    }
    let mut docs = Vec::new();
    for (line, block) in markdown_yaml_blocks(&text) {
        let more = parse_documents_from(&block, &file, docs.len()).map_err(|e| {
            InputError::InMarkdownBlock {
                line,
                inner: Box::new(e),
            }
        })?;
        docs.extend(more);
    }
    Ok(docs)
}

/// The most `-` (standard input) may hold: far more than any set of
/// manifests, far less than what would exhaust memory.
pub const MAX_STDIN_BYTES: u64 = 16 * 1024 * 1024;

/// Standard input as text, at most [`MAX_STDIN_BYTES`].
fn read_stdin() -> Result<String, InputError> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    std::io::stdin()
        .take(MAX_STDIN_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| InputError::Unreadable {
            what: "standard input".to_string(),
            reason: io_error(&e),
            hint: None,
        })?;
    if bytes.len() as u64 > MAX_STDIN_BYTES {
        return Err(InputError::StdinTooLarge {
            limit_mib: MAX_STDIN_BYTES / (1024 * 1024),
        });
    }
    String::from_utf8(bytes).map_err(|_| InputError::StdinNotText)
}

/// The gpu-slicer configs held by a document: a ConfigMap whose data values
/// are NVIDIA `version: v1` configs (key → config), or a bare config.
/// `None` when the document is neither.
pub fn configs_of(doc: &Document) -> Option<Result<BTreeMap<String, Config>, InputError>> {
    if doc.kind() == "ConfigMap" {
        let data = doc.value["data"].as_object()?;
        let looks_like_config = data.values().any(|v| {
            v.as_str().is_some_and(|t| {
                serde_saphyr::from_str::<Value>(t)
                    .ok()
                    .is_some_and(|v| v["version"] == "v1")
            })
        });
        if !looks_like_config {
            return None;
        }
        let mut out = BTreeMap::new();
        for (key, text) in data {
            let Some(text) = text.as_str() else { continue };
            let source = format!("{} (ConfigMap {}, key {key})", doc.file, doc.name());
            match config::parse(text, &source) {
                Ok(c) => {
                    out.insert(key.clone(), c);
                }
                Err(e) => return Some(Err(e.into())),
            }
        }
        return Some(Ok(out));
    }
    if doc.value.get("kind").is_none() && doc.value["version"] == "v1" {
        let source = doc.file.clone();
        let text = serde_json::to_string(&doc.value).unwrap_or_default();
        return Some(
            config::parse(&text, &source)
                .map(|c| BTreeMap::from([("config.yaml".to_string(), c)]))
                .map_err(InputError::from),
        );
    }
    None
}

/// Picks one config out of several: `wanted` when given, else the only one,
/// else `config.yaml`, else `default` (NVIDIA config-manager's rule).
pub fn pick_config<'a>(
    configs: &'a BTreeMap<String, Config>,
    wanted: Option<&str>,
    source: &str,
) -> Result<(&'a str, &'a Config), InputError> {
    let names = || configs.keys().cloned().collect::<Vec<_>>().join(", ");
    if let Some(w) = wanted {
        return configs
            .get_key_value(w)
            .map(|(k, c)| (k.as_str(), c))
            .ok_or_else(|| InputError::NoSuchConfig {
                file: source.to_string(),
                wanted: w.to_string(),
                names: names(),
            });
    }
    if configs.len() == 1
        && let Some((k, c)) = configs.iter().next()
    {
        return Ok((k.as_str(), c));
    }
    for key in ["config.yaml", "default"] {
        if let Some((k, c)) = configs.get_key_value(key) {
            return Ok((k.as_str(), c));
        }
    }
    Err(InputError::SeveralConfigs {
        file: source.to_string(),
        names: names(),
        label: CONFIG_LABEL,
    })
}

/// NVIDIA's defaults, with the `mixed` strategy when a MIG layout is in use
/// (what `gpu-slicer plan --mig-config` assumes without a config file).
pub fn default_config(layout: Option<&str>) -> Config {
    let mut config = Config::default();
    if layout.is_some_and(|l| l != "all-disabled") {
        config.flags.mig_strategy = config::MigStrategy::Mixed;
    }
    config
}

// ---------------------------------------------------------------------------
// Instance types and Karpenter requirements

/// Families whose GPUs cannot do MIG (EKS MIG page; NVIDIA's MIG list),
/// including families the catalog has no preset for.
pub const NON_MIG_FAMILIES: &[&str] = &[
    "g4dn", "g4ad", "g5", "g5g", "g6", "g6e", "g6f", "gr6", "gr6f", "p3", "p3dn",
];
/// MIG-capable families on EKS.
pub const MIG_FAMILIES: &[&str] = &[
    "p4d", "p4de", "p5", "p5e", "p5en", "p6-b200", "p6-b300", "g7", "g7e",
];

/// `p4d` of `p4d.24xlarge`.
pub fn family(instance: &str) -> &str {
    instance.split_once('.').map_or(instance, |(f, _)| f)
}

/// `24xlarge` of `p4d.24xlarge`.
pub fn size(instance: &str) -> &str {
    instance.split_once('.').map_or("", |(_, s)| s)
}

/// Karpenter's `instance-category` and `instance-generation` of a family:
/// its leading letters and the digits after them (`g6e` → `g`, `6`).
fn category_and_generation(family: &str) -> (String, String) {
    let category = family
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect();
    let generation = family
        .chars()
        .skip_while(|c| c.is_ascii_alphabetic())
        .take_while(|c| c.is_ascii_digit())
        .collect();
    (category, generation)
}

/// The well-known Karpenter labels of an instance preset that gpu-slicer
/// can derive (AWS provider names).
pub fn instance_labels(instance: &InstanceType) -> BTreeMap<&'static str, String> {
    let fam = family(instance.name);
    let (category, generation) = category_and_generation(fam);
    let gpu_name = karpenter_gpu_name(instance.model);
    // EC2 reports a GPU count of 0 for a fractional GPU (g6f, gr6f), and
    // Karpenter's label follows it.
    let gpu_count = if instance.is_fractional() {
        0
    } else {
        instance.gpus
    };
    BTreeMap::from([
        (
            "node.kubernetes.io/instance-type",
            instance.name.to_string(),
        ),
        ("karpenter.k8s.aws/instance-family", fam.to_string()),
        (
            "karpenter.k8s.aws/instance-size",
            size(instance.name).to_string(),
        ),
        ("karpenter.k8s.aws/instance-category", category),
        ("karpenter.k8s.aws/instance-generation", generation),
        ("karpenter.k8s.aws/instance-gpu-name", gpu_name),
        (
            "karpenter.k8s.aws/instance-gpu-manufacturer",
            "nvidia".to_string(),
        ),
        (
            "karpenter.k8s.aws/instance-gpu-count",
            gpu_count.to_string(),
        ),
        ("kubernetes.io/arch", instance.arch.to_string()),
        ("kubernetes.io/os", "linux".to_string()),
    ])
}

/// Karpenter's `instance-gpu-name` of a catalog model: EC2's GPU name in
/// lower kebab case (`rtx-pro-server-6000` for the RTX PRO 6000 Blackwell
/// Server Edition, `rtx-pro-4500`; otherwise the key's first part, `h100`,
/// `a100`, `l4` for the fractional L4s).
pub fn karpenter_gpu_name(model_key: &str) -> String {
    match model_key {
        "RTX-PRO-6000" => "rtx-pro-server-6000".to_string(),
        "RTX-PRO-4500" => "rtx-pro-4500".to_string(),
        key => key.split('-').next().unwrap_or(key).to_ascii_lowercase(),
    }
}

/// What gpu-slicer can and cannot do on a fractional-GPU preset (g6f,
/// gr6f), for `plan` and lint: `None` for whole GPUs.
pub fn fractional_note(instance: &InstanceType) -> Option<String> {
    let denominator = instance.gpu_fraction?;
    let memory = instance
        .gpu_model()
        .map_or(String::new(), |m| format!(", {} MiB", m.memory_mib));
    Some(format!(
        "{} has a fractional GPU: 1/{denominator} of an NVIDIA L4 as one vGPU{memory} (EC2's figure). EC2 and Karpenter report instance-gpu-count 0 and no nvidia.com/gpu for it, so only an overlay (gpu-slicer karpenter overlays) lets Karpenter launch it for GPU pods. It cannot be sliced with MIG (an L4 has no MIG, and AWS does not partition the vGPU further); time-slicing shares the fraction and its memory",
        instance.name
    ))
}

/// One `{key, operator, values}` entry.
#[derive(Debug, Clone)]
pub struct Requirement {
    pub key: String,
    pub operator: String,
    pub values: Vec<String>,
}

impl Requirement {
    pub fn from_value(v: &Value) -> Option<Requirement> {
        Some(Requirement {
            key: v["key"].as_str()?.to_string(),
            operator: v["operator"].as_str().unwrap_or("In").to_string(),
            values: strings(&v["values"]),
        })
    }

    /// Whether a label value (absent: `None`) satisfies the requirement.
    pub fn matches(&self, value: Option<&str>) -> bool {
        let number = |s: &str| s.parse::<i64>().ok();
        let bound = self.values.first().and_then(|b| number(b));
        let cmp = |f: fn(i64, i64) -> bool| match (value.and_then(number), bound) {
            (Some(v), Some(b)) => f(v, b),
            _ => false,
        };
        match self.operator.as_str() {
            "In" => value.is_some_and(|v| self.values.iter().any(|x| x == v)),
            "NotIn" => value.is_none_or(|v| !self.values.iter().any(|x| x == v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            "Gt" => cmp(|v, b| v > b),
            "Lt" => cmp(|v, b| v < b),
            "Gte" => cmp(|v, b| v >= b),
            "Lte" => cmp(|v, b| v <= b),
            _ => true,
        }
    }
}

/// The strings of a YAML sequence (numbers and booleans as text).
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| match x {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    Value::Bool(b) => Some(b.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a requirement key is one gpu-slicer can evaluate on a preset.
fn evaluable(key: &str) -> bool {
    key == "node.kubernetes.io/instance-type"
        || key == "kubernetes.io/arch"
        || key == "kubernetes.io/os"
        || (key.starts_with("karpenter.k8s.aws/instance-")
            && !key.starts_with("karpenter.k8s.aws/instance-gpu-memory")
            && !key.starts_with("karpenter.k8s.aws/instance-accelerator"))
}

/// The instance presets that satisfy `requirements`. Keys gpu-slicer cannot
/// evaluate (zones, capacity types, custom labels) do not filter; neither do
/// `instance-size` values with a dot (`g5.xlarge`), which [`lint`] reports:
/// the remaining checks then assume the full names were meant.
pub fn instances_matching(requirements: &[Requirement]) -> Vec<&'static InstanceType> {
    catalog::instances()
        .iter()
        .filter(|instance| {
            let labels = instance_labels(instance);
            requirements.iter().all(|r| {
                if !evaluable(&r.key) {
                    return true;
                }
                if r.key == "karpenter.k8s.aws/instance-size"
                    && r.values.iter().any(|v| v.contains('.'))
                {
                    let names: Vec<&str> = r.values.iter().map(|v| size(v)).collect();
                    return names.contains(&size(instance.name))
                        && r.values
                            .iter()
                            .any(|v| !v.contains('.') || family(v) == family(instance.name));
                }
                r.matches(labels.get(r.key.as_str()).map(String::as_str))
            })
        })
        .collect()
}

/// Every NVIDIA GPU instance type Karpenter's AWS provider knows, as its
/// generated instance-type reference lists it
/// (`website/content/en/preview/reference/instance-types.md` of
/// aws/karpenter-provider-aws at 1d92708, 2026-08-21):
/// `(name, instance-gpu-name, instance-gpu-count, instance-gpu-memory, arch)`.
/// Each has a preset (a test checks it); the list stays so that a type
/// Karpenter's data gains later, added here without a preset, is reported by
/// lint (`nodepool-type-without-preset`).
pub const KARPENTER_GPU_TYPES: &[(&str, &str, u32, u64, &str)] = &[
    ("g4dn.xlarge", "t4", 1, 16384, "amd64"),
    ("g4dn.2xlarge", "t4", 1, 16384, "amd64"),
    ("g4dn.4xlarge", "t4", 1, 16384, "amd64"),
    ("g4dn.8xlarge", "t4", 1, 16384, "amd64"),
    ("g4dn.12xlarge", "t4", 4, 16384, "amd64"),
    ("g4dn.16xlarge", "t4", 1, 16384, "amd64"),
    ("g4dn.metal", "t4", 8, 16384, "amd64"),
    ("g5.xlarge", "a10g", 1, 22888, "amd64"),
    ("g5.2xlarge", "a10g", 1, 22888, "amd64"),
    ("g5.4xlarge", "a10g", 1, 22888, "amd64"),
    ("g5.8xlarge", "a10g", 1, 22888, "amd64"),
    ("g5.12xlarge", "a10g", 4, 22888, "amd64"),
    ("g5.16xlarge", "a10g", 1, 22888, "amd64"),
    ("g5.24xlarge", "a10g", 4, 22888, "amd64"),
    ("g5.48xlarge", "a10g", 8, 22888, "amd64"),
    ("g5g.xlarge", "t4g", 1, 16384, "arm64"),
    ("g5g.2xlarge", "t4g", 1, 16384, "arm64"),
    ("g5g.4xlarge", "t4g", 1, 16384, "arm64"),
    ("g5g.8xlarge", "t4g", 1, 16384, "arm64"),
    ("g5g.16xlarge", "t4g", 2, 16384, "arm64"),
    ("g5g.metal", "t4g", 2, 16384, "arm64"),
    ("g6.xlarge", "l4", 1, 22888, "amd64"),
    ("g6.2xlarge", "l4", 1, 22888, "amd64"),
    ("g6.4xlarge", "l4", 1, 22888, "amd64"),
    ("g6.8xlarge", "l4", 1, 22888, "amd64"),
    ("g6.12xlarge", "l4", 4, 22888, "amd64"),
    ("g6.16xlarge", "l4", 1, 22888, "amd64"),
    ("g6.24xlarge", "l4", 4, 22888, "amd64"),
    ("g6.48xlarge", "l4", 8, 22888, "amd64"),
    ("g6e.xlarge", "l40s", 1, 45776, "amd64"),
    ("g6e.2xlarge", "l40s", 1, 45776, "amd64"),
    ("g6e.4xlarge", "l40s", 1, 45776, "amd64"),
    ("g6e.8xlarge", "l40s", 1, 45776, "amd64"),
    ("g6e.12xlarge", "l40s", 4, 45776, "amd64"),
    ("g6e.16xlarge", "l40s", 1, 45776, "amd64"),
    ("g6e.24xlarge", "l40s", 4, 45776, "amd64"),
    ("g6e.48xlarge", "l40s", 8, 45776, "amd64"),
    ("g6f.large", "l4", 0, 2861, "amd64"),
    ("g6f.xlarge", "l4", 0, 2861, "amd64"),
    ("g6f.2xlarge", "l4", 0, 5722, "amd64"),
    ("g6f.4xlarge", "l4", 0, 11444, "amd64"),
    ("g7.2xlarge", "rtx-pro-4500", 1, 32768, "amd64"),
    ("g7.4xlarge", "rtx-pro-4500", 1, 32768, "amd64"),
    ("g7.8xlarge", "rtx-pro-4500", 1, 32768, "amd64"),
    ("g7.12xlarge", "rtx-pro-4500", 2, 32768, "amd64"),
    ("g7.24xlarge", "rtx-pro-4500", 4, 32768, "amd64"),
    ("g7.48xlarge", "rtx-pro-4500", 8, 32768, "amd64"),
    ("g7e.2xlarge", "rtx-pro-server-6000", 1, 98304, "amd64"),
    ("g7e.4xlarge", "rtx-pro-server-6000", 1, 98304, "amd64"),
    ("g7e.8xlarge", "rtx-pro-server-6000", 1, 98304, "amd64"),
    ("g7e.12xlarge", "rtx-pro-server-6000", 2, 98304, "amd64"),
    ("g7e.24xlarge", "rtx-pro-server-6000", 4, 98304, "amd64"),
    ("g7e.48xlarge", "rtx-pro-server-6000", 8, 98304, "amd64"),
    ("gr6.4xlarge", "l4", 1, 22888, "amd64"),
    ("gr6.8xlarge", "l4", 1, 22888, "amd64"),
    ("gr6f.4xlarge", "l4", 0, 11444, "amd64"),
    ("p3dn.24xlarge", "v100", 8, 32768, "amd64"),
    ("p4d.24xlarge", "a100", 8, 40960, "amd64"),
    ("p4de.24xlarge", "a100", 8, 81920, "amd64"),
    ("p5.4xlarge", "h100", 1, 81920, "amd64"),
    ("p5.48xlarge", "h100", 8, 81920, "amd64"),
    ("p5e.48xlarge", "h200", 8, 144384, "amd64"),
    ("p5en.48xlarge", "h200", 8, 144384, "amd64"),
    ("p6-b200.48xlarge", "b200", 8, 183359, "amd64"),
    ("p6-b300.48xlarge", "b300", 8, 275040, "amd64"),
];

/// The GPU instance types of Karpenter's data that have no preset.
pub fn uncatalogued_gpu_types() -> Vec<&'static (&'static str, &'static str, u32, u64, &'static str)>
{
    KARPENTER_GPU_TYPES
        .iter()
        .filter(|(name, ..)| catalog::instance(name).is_none())
        .collect()
}

/// The uncatalogued GPU instance types a NodePool's requirements allow:
/// those of Karpenter's data without a preset, and instance types or
/// families the requirements name explicitly (`instance-type In`,
/// `instance-family In`) that look like NVIDIA GPU types (families of the
/// `g`, `gr` and `p` categories; the AMD `g4ad` aside) and that neither the
/// presets nor Karpenter's data know, e.g. a type newer than both.
pub fn uncatalogued_gpu_types_matching(requirements: &[Requirement]) -> Vec<String> {
    let mut out: Vec<String> = uncatalogued_gpu_types()
        .into_iter()
        .filter(|(name, gpu_name, gpus, _, arch)| {
            let fam = family(name);
            let (category, generation) = category_and_generation(fam);
            let labels = BTreeMap::from([
                ("node.kubernetes.io/instance-type", name.to_string()),
                ("karpenter.k8s.aws/instance-family", fam.to_string()),
                ("karpenter.k8s.aws/instance-size", size(name).to_string()),
                ("karpenter.k8s.aws/instance-category", category),
                ("karpenter.k8s.aws/instance-generation", generation),
                ("karpenter.k8s.aws/instance-gpu-name", gpu_name.to_string()),
                (
                    "karpenter.k8s.aws/instance-gpu-manufacturer",
                    "nvidia".to_string(),
                ),
                ("karpenter.k8s.aws/instance-gpu-count", gpus.to_string()),
                ("kubernetes.io/arch", arch.to_string()),
                ("kubernetes.io/os", "linux".to_string()),
            ]);
            requirements.iter().all(|r| {
                !evaluable(&r.key) || r.matches(labels.get(r.key.as_str()).map(String::as_str))
            })
        })
        .map(|(name, ..)| name.to_string())
        .collect();
    let known_family = |fam: &str| {
        catalog::instances().iter().any(|i| family(i.name) == fam)
            || KARPENTER_GPU_TYPES.iter().any(|(n, ..)| family(n) == fam)
    };
    for r in requirements.iter().filter(|r| r.operator == "In") {
        for value in &r.values {
            let unknown = match r.key.as_str() {
                "node.kubernetes.io/instance-type" => {
                    looks_like_nvidia_gpu_family(family(value))
                        && catalog::instance(value).is_none()
                        && !KARPENTER_GPU_TYPES.iter().any(|(n, ..)| n == value)
                }
                "karpenter.k8s.aws/instance-family" => {
                    looks_like_nvidia_gpu_family(value) && !known_family(value)
                }
                _ => false,
            };
            if unknown && !out.contains(value) {
                out.push(value.clone());
            }
        }
    }
    out
}

/// A family of Karpenter's `g`, `gr` or `p` categories (where EC2's NVIDIA
/// GPU families are), other than the AMD-GPU `g4ad`.
fn looks_like_nvidia_gpu_family(fam: &str) -> bool {
    let (category, generation) = category_and_generation(fam);
    matches!(category.as_str(), "g" | "gr" | "p") && !generation.is_empty() && fam != "g4ad"
}

/// A NodePool's requirements (`spec.template.spec.requirements`).
pub fn nodepool_requirements(pool: &Value) -> Vec<Requirement> {
    pool["spec"]["template"]["spec"]["requirements"]
        .as_array()
        .map(|a| a.iter().filter_map(Requirement::from_value).collect())
        .unwrap_or_default()
}

/// A NodePool template label.
pub fn nodepool_label<'a>(pool: &'a Value, key: &str) -> Option<&'a str> {
    pool["spec"]["template"]["metadata"]["labels"][key].as_str()
}

/// A Kubernetes quantity as a whole number (`2`, `"16"`), if it is one.
pub fn quantity(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Whether a name is a device-plugin (extended) resource name that users
/// confuse with labels.
pub fn is_resource_name(key: &str) -> bool {
    key == config::GPU_RESOURCE
        || key == config::SHARED_GPU_RESOURCE
        || config::mig_profile_of(key).is_some()
        || key == "amd.com/gpu"
        || key.starts_with("aws.amazon.com/neuron")
        || key == "habana.ai/gaudi"
        || key == "vpc.amazonaws.com/efa"
}

/// A slice resource: a MIG profile or shared replicas, unknown to Karpenter
/// without an overlay.
pub fn is_slice_resource(key: &str) -> bool {
    config::mig_profile_of(key).is_some()
        || (config::is_nvidia_resource(key) && key.ends_with(config::SHARED_SUFFIX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_labels_follow_the_aws_provider() {
        let p5 = catalog::instance("p5.48xlarge").unwrap();
        let l = instance_labels(p5);
        assert_eq!(l["karpenter.k8s.aws/instance-family"], "p5");
        assert_eq!(l["karpenter.k8s.aws/instance-size"], "48xlarge");
        assert_eq!(l["karpenter.k8s.aws/instance-gpu-name"], "h100");
        assert_eq!(l["karpenter.k8s.aws/instance-category"], "p");
        assert_eq!(l["karpenter.k8s.aws/instance-generation"], "5");
        let b = instance_labels(catalog::instance("p6-b200.48xlarge").unwrap());
        assert_eq!(b["karpenter.k8s.aws/instance-family"], "p6-b200");
        assert_eq!(b["karpenter.k8s.aws/instance-gpu-name"], "b200");
    }

    /// Every NVIDIA GPU type of Karpenter's data has a preset whose GPU
    /// count, GPU name, memory (EC2's figure, fractional L4s) and arch agree.
    #[test]
    fn every_karpenter_gpu_type_has_a_matching_preset() {
        assert!(uncatalogued_gpu_types().is_empty());
        for &(name, gpu_name, gpus, memory, arch) in KARPENTER_GPU_TYPES {
            let preset = catalog::instance(name).unwrap_or_else(|| panic!("{name}"));
            let l = instance_labels(preset);
            assert_eq!(l["karpenter.k8s.aws/instance-gpu-name"], gpu_name, "{name}");
            assert_eq!(
                l["karpenter.k8s.aws/instance-gpu-count"],
                gpus.to_string(),
                "{name}"
            );
            assert_eq!(l["kubernetes.io/arch"], arch, "{name}");
            if preset.is_fractional() {
                let model = preset.gpu_model().unwrap_or_else(|| panic!("{name}"));
                assert_eq!(model.memory_mib, memory, "{name}");
            }
        }
    }

    #[test]
    fn requirements_select_presets() {
        let reqs = vec![
            Requirement {
                key: "karpenter.k8s.aws/instance-family".into(),
                operator: "In".into(),
                values: vec!["g5".into()],
            },
            Requirement {
                key: "karpenter.k8s.aws/instance-gpu-count".into(),
                operator: "Gt".into(),
                values: vec!["1".into()],
            },
            Requirement {
                key: "topology.kubernetes.io/zone".into(),
                operator: "In".into(),
                values: vec!["eu-west-1a".into()],
            },
        ];
        let names: Vec<&str> = instances_matching(&reqs).iter().map(|i| i.name).collect();
        assert_eq!(names, ["g5.12xlarge", "g5.24xlarge", "g5.48xlarge"]);
    }

    #[test]
    fn markdown_blocks() {
        let md = "text\n```yaml\na: 1\n```\n```sh\nls\n```\n```yaml\nb: 2\n---\nc: 3\n```\n";
        let blocks = markdown_yaml_blocks(md);
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0], (3, "a: 1\n".to_string()));
        let docs = parse_documents(&blocks[1].1, "x").unwrap();
        assert_eq!(docs.len(), 2);
    }
}
