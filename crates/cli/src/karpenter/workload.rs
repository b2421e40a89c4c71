//! The input of `plan --workload`: the pods, and what decides how many of
//! them a node holds (their CPU, memory and ephemeral-storage requests, the
//! EC2NodeClass's kubelet settings, DaemonSets, the NodePool's instance
//! types).
//!
//! Two forms. A list of entries (`{name, count, slice | sharedGpu, ...}`),
//! alone or under `pods:` next to `instanceTypes`, `renameByDefault`,
//! `kubelet`, `amiFamily` and `daemonSets`. Or Kubernetes objects as
//! `kubectl get -o yaml` prints them (several documents, or a `List`): Pods,
//! Deployments, StatefulSets, ReplicaSets and Jobs become pods with their
//! containers' `resources`; DaemonSets are overhead on every node; a NodePool
//! restricts the instance types; an EC2NodeClass gives the kubelet settings.

use crate::error::InputError;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use gpu_slicer_core::config;
use gpu_slicer_core::gpu::catalog;
use gpu_slicer_core::messages::{types_in_words, yaml_error};

use super::nodes::{self, CPU, EPHEMERAL_STORAGE, MEMORY, NodeSettings};

/// The most pods a workload file may hold: each is simulated one by one,
/// for every instance type and for many orders.
pub const MAX_PODS: u64 = 2_000;

/// The annotation that says how much GPU memory a time-shared pod needs
/// (Kubernetes objects have no field for it): `gpu-slicer.io/gpu-memory: 8Gi`.
pub const GPU_MEMORY_ANNOTATION: &str = "gpu-slicer.io/gpu-memory";

/// One line of a workload file: `count` pods, each asking for one MIG
/// `slice` (`1g.10gb`), or for `sharedGpu` time-shared replicas with
/// `memoryGiB` of GPU memory each, plus CPU, memory and ephemeral storage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadItem {
    pub name: String,
    #[serde(default = "one")]
    pub count: u32,
    #[serde(default)]
    pub slice: Option<String>,
    #[serde(default)]
    pub shared_gpu: Option<u32>,
    #[serde(default, rename = "memoryGiB")]
    pub memory_gib: Option<f64>,
    /// CPU architecture of the pods' images (`kubernetes.io/arch`):
    /// `amd64` (default) or `arm64`. Only instance types of that
    /// architecture are ranked (g5g is arm64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// Each pod's `cpu`, `memory` and `ephemeral-storage` requests
    /// (Kubernetes quantities).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, Value>,
    /// A container's `resources` as `kubectl get -o yaml` prints it
    /// (`requests`, `limits`; a limit without a request is the request, as
    /// the API server defaults it). Its GPU resource stands for `slice` or
    /// `sharedGpu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Value>,
    /// Seconds after the first pod's creation. Karpenter orders pods of equal
    /// CPU and memory by creation time, then by UID (random): pods created in
    /// the same second (all, by default) can go in any order.
    #[serde(default)]
    pub created: u64,
    /// CPU (millicores), memory and ephemeral storage (bytes) each pod
    /// requests, from `requests` or `resources`.
    #[serde(skip)]
    pub host: BTreeMap<String, u64>,
    /// MIG slices per pod (1 unless `resources` asks for more).
    #[serde(skip)]
    pub slices_per_pod: u32,
}

impl WorkloadItem {
    /// The architecture the pods' images need; `amd64` unless given.
    pub fn arch(&self) -> &str {
        self.arch.as_deref().unwrap_or("amd64")
    }
}

fn one() -> u32 {
    1
}

/// A DaemonSet's pod on every new node: what it requests.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DaemonSet {
    pub name: String,
    /// `cpu` (millicores), `memory`, `ephemeral-storage` (bytes).
    pub requests: BTreeMap<String, u64>,
}

/// A whole workload file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Workload {
    pub items: Vec<WorkloadItem>,
    /// The EC2NodeClass's AMI family and kubelet settings.
    pub node: NodeSettings,
    pub daemon_sets: Vec<DaemonSet>,
    /// DaemonSets whose pods do not tolerate the NodePool's taints: not on
    /// its nodes (Karpenter does not count them).
    pub daemon_sets_elsewhere: Vec<String>,
    /// The NodePool's instance types (`None`: every preset).
    pub instance_types: Option<Vec<String>>,
    /// Time-shared pods ask for `nvidia.com/gpu.shared` and the overlays set
    /// `nvidia.com/gpu: "0"` (gpu-slicer's `renameByDefault: true`).
    pub rename_by_default: bool,
}

/// The top-level mapping of the list form.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WorkloadFile {
    pods: Value,
    #[serde(default)]
    instance_types: Option<Vec<String>>,
    #[serde(default)]
    rename_by_default: bool,
    #[serde(default)]
    kubelet: Value,
    #[serde(default)]
    ami_family: Option<String>,
    #[serde(default)]
    daemon_sets: Vec<DaemonSetEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DaemonSetEntry {
    name: String,
    #[serde(default)]
    requests: BTreeMap<String, Value>,
}

const HINT: &str = "expected a list of {name, count, slice: \"1g.10gb\"} or {name, count, sharedGpu: 1, memoryGiB: 8}";

/// A workload file's value, as a user wrote it: `the number 3`, `a mapping`.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "empty".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

/// Every MIG profile of the catalog's GPUs, once each, in catalog order.
fn mig_profile_names() -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for profile in catalog::models()
        .iter()
        .filter_map(|m| m.mig.as_ref())
        .flat_map(|g| g.profiles)
    {
        let name = profile.dotted_name();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// Parses a workload file: the list form (a YAML list, or `pods:` holding
/// one) or Kubernetes objects.
pub fn parse_workload(text: &str, source: &str) -> Result<Workload, InputError> {
    if let Ok(documents) = serde_saphyr::from_multiple::<Value>(text) {
        let documents: Vec<Value> = documents.into_iter().filter(|d| !d.is_null()).collect();
        // Kubernetes objects when any document has a kind; otherwise the
        // list form, whose parser says what is wrong with extra documents.
        if documents.iter().any(|d| !d["kind"].is_null()) {
            return parse_objects(&documents, source);
        }
    }
    let value: Value = serde_saphyr::from_str(text)
        .map_err(|e| crate::invalid!(source, "{}; {HINT}", yaml_error(&e)))?;
    let mut workload = Workload::default();
    let list = if value.get("pods").is_some() {
        let file: WorkloadFile = serde_json::from_value(value).map_err(|e| {
            crate::invalid!(
                source,
                "{}; the file's keys are pods, instanceTypes, renameByDefault, kubelet, \
                 amiFamily and daemonSets",
                types_in_words(&e.to_string())
            )
        })?;
        workload.instance_types = file.instance_types;
        workload.rename_by_default = file.rename_by_default;
        let class = serde_json::json!({"spec": {
            "amiFamily": file.ami_family,
            "kubelet": file.kubelet,
        }});
        workload.node = NodeSettings::from_node_class(&class, source)?;
        for (i, d) in file.daemon_sets.into_iter().enumerate() {
            let requests = host_requests(&d.requests, &format!("{source}: daemonSets[{i}]"))?;
            workload.daemon_sets.push(DaemonSet {
                name: d.name,
                requests,
            });
        }
        file.pods
    } else {
        value
    };
    let Value::Array(entries) = list else {
        return Err(crate::invalid!(
            source,
            "{} is not a list; {HINT}",
            describe(&list)
        ));
    };
    let mut items = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        if !entry.is_object() {
            return Err(crate::invalid!(
                source,
                "pods[{i}] is {}, not a pod; {HINT}",
                describe(&entry)
            ));
        }
        let item: WorkloadItem = serde_json::from_value(entry).map_err(|e| {
            crate::invalid!(
                source,
                "pods[{i}]: {}; {HINT}",
                types_in_words(&e.to_string())
            )
        })?;
        items.push(item);
    }
    if items.is_empty() {
        return Err(crate::invalid!(source, "no pods; {HINT}"));
    }
    workload.items = items;
    validate(&mut workload, source)?;
    Ok(workload)
}

/// `cpu`, `memory`, `ephemeral-storage` of a `requests` mapping, in base
/// units; GPU and other resources are refused (they have their own fields).
fn host_requests(
    requests: &BTreeMap<String, Value>,
    at: &str,
) -> Result<BTreeMap<String, u64>, InputError> {
    let mut out = BTreeMap::new();
    for (resource, v) in requests {
        let amount = match resource.as_str() {
            CPU => nodes::millis(v, &format!("{at}: requests.cpu"))?,
            MEMORY | EPHEMERAL_STORAGE => nodes::bytes(v, &format!("{at}: requests.{resource}"))?,
            other => {
                return Err(crate::invalid!(
                    at,
                    "requests.{other}: requests takes cpu, memory and ephemeral-storage; \
                     ask for GPUs with slice or sharedGpu (or give the container's resources)"
                ));
            }
        };
        out.insert(resource.clone(), amount);
    }
    Ok(out)
}

/// What a container's `resources` requests: `requests`, and each limit
/// without a request (the API server makes a limit the request then).
fn effective_requests(resources: &Value) -> BTreeMap<String, Value> {
    let mut out: BTreeMap<String, Value> = BTreeMap::new();
    if let Some(limits) = resources["limits"].as_object() {
        out.extend(limits.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    if let Some(requests) = resources["requests"].as_object() {
        out.extend(requests.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    out
}

/// Applies a `resources` block to an entry: host requests, and the GPU
/// resource as `slice` or `sharedGpu`. For shared GPUs, says whether the
/// resource is `nvidia.com/gpu.shared`.
fn apply_resources(item: &mut WorkloadItem, at: &str) -> Result<Option<bool>, InputError> {
    let Some(resources) = &item.resources else {
        return Ok(None);
    };
    if !resources.is_object() {
        return Err(crate::invalid!(
            at,
            "resources is {}; expected a container's resources (requests, limits)",
            describe(resources)
        ));
    }
    let mut host = BTreeMap::new();
    let mut gpu: Vec<(String, u64)> = Vec::new();
    for (resource, v) in effective_requests(resources) {
        match resource.as_str() {
            CPU | MEMORY | EPHEMERAL_STORAGE => {
                host.insert(resource, v);
            }
            r if config::is_nvidia_resource(r) => {
                let n = super::quantity(&v).ok_or_else(|| {
                    crate::invalid!(at, "resources {r}: expected a whole number, not {v}")
                })?;
                if n > 0 {
                    gpu.push((resource, n));
                }
            }
            _ => {} // hugepages, other devices: no instance type here offers them
        }
    }
    item.host = host_requests(&host, at)?;
    if item.slice.is_some() || item.shared_gpu.is_some() {
        return Err(crate::invalid!(
            at,
            "give the GPU either in resources or as slice/sharedGpu, not both"
        ));
    }
    let mut renamed = None;
    match gpu.as_slice() {
        [(r, n)] if let Some(profile) = config::mig_profile_of(r) => {
            item.slice = Some(profile.to_string());
            item.slices_per_pod = u32::try_from(*n).unwrap_or(u32::MAX);
        }
        [(r, n)] if r == config::GPU_RESOURCE || r == config::SHARED_GPU_RESOURCE => {
            renamed = Some(r == config::SHARED_GPU_RESOURCE);
            item.shared_gpu = Some(u32::try_from(*n).unwrap_or(u32::MAX));
        }
        [] => {
            return Err(crate::invalid!(
                at,
                "resources ask for no NVIDIA GPU resource; plan --workload sizes GPU pools \
                 (nvidia.com/gpu, nvidia.com/gpu.shared, nvidia.com/mig-<profile>)"
            ));
        }
        [(r, _)] => {
            return Err(crate::invalid!(
                at,
                "resources ask for {r}, which gpu-slicer does not advertise; use \
                 nvidia.com/gpu, nvidia.com/gpu.shared or nvidia.com/mig-<profile>"
            ));
        }
        _ => {
            let names: Vec<&str> = gpu.iter().map(|(r, _)| r.as_str()).collect();
            return Err(crate::invalid!(
                at,
                "resources ask for {}: plan --workload places pods of one GPU resource each",
                names.join(" and ")
            ));
        }
    }
    Ok(renamed)
}

fn validate(workload: &mut Workload, source: &str) -> Result<(), InputError> {
    let mut renamed = Vec::new();
    for (i, item) in workload.items.iter_mut().enumerate() {
        let at = format!("{source}: pod '{}'", item.name);
        item.slices_per_pod = 1;
        if item.resources.is_some() {
            renamed.push(apply_resources(item, &at)?);
        } else {
            item.host = host_requests(&item.requests, &at)?;
        }
        if item.resources.is_some() && !item.requests.is_empty() {
            return Err(crate::invalid!(
                at,
                "give requests or resources, not both (pods[{i}])"
            ));
        }
        if let Some(slice) = &item.slice {
            let profile = slice.trim_start_matches("mig-");
            if !catalog::models()
                .iter()
                .any(|m| m.mig_profile(profile).is_some())
            {
                return Err(crate::invalid!(
                    source,
                    "pod '{}' asks for slice '{slice}', which is no MIG profile of any \
                     GPU; MIG profiles: {}",
                    item.name,
                    mig_profile_names().join(", ")
                ));
            }
        }
        if !matches!(item.arch(), "amd64" | "arm64") {
            return Err(crate::invalid!(
                source,
                "pod '{}' has arch '{}': write amd64 or arm64 (kubernetes.io/arch of its images)",
                item.name,
                item.arch()
            ));
        }
        match (&item.slice, item.shared_gpu) {
            (Some(_), None) => {}
            (None, Some(n)) if n >= 1 => {
                if item.memory_gib.is_none_or(|m| m.is_nan() || m <= 0.0) {
                    return Err(crate::invalid!(
                        source,
                        "pod '{}' shares GPUs but has no memoryGiB: say how much GPU memory each pod needs",
                        item.name
                    ));
                }
            }
            _ => {
                return Err(crate::invalid!(
                    source,
                    "pod '{}' needs exactly one of `slice` (a MIG profile such as 1g.10gb) or `sharedGpu` (replicas, at least 1)",
                    item.name
                ));
            }
        }
    }
    if renamed.contains(&Some(true)) && renamed.contains(&Some(false)) {
        return Err(crate::invalid!(
            source,
            "some pods ask for nvidia.com/gpu and others for nvidia.com/gpu.shared; one \
             gpu-slicer config advertises one of them (renameByDefault): size them in separate files"
        ));
    }
    if renamed.contains(&Some(true)) {
        workload.rename_by_default = true;
    }
    let total: u64 = workload.items.iter().map(|i| u64::from(i.count)).sum();
    if total > MAX_PODS {
        return Err(crate::invalid!(
            source,
            "{total} pods; plan --workload simulates at most {MAX_PODS} pods per file: split it \
             into separate files or scale the counts down"
        ));
    }
    if let Some(types) = &workload.instance_types {
        for t in types {
            if catalog::instance(t).is_none() {
                return Err(crate::invalid!(
                    source,
                    "instanceTypes: '{t}' is no GPU instance type gpu-slicer has a preset for"
                ));
            }
        }
    }
    Ok(())
}

/// Kubernetes objects, each document (or each item of a `List`).
fn parse_objects(documents: &[Value], source: &str) -> Result<Workload, InputError> {
    let mut objects: Vec<&Value> = Vec::new();
    for d in documents {
        if d["kind"].as_str() == Some("List") {
            objects.extend(d["items"].as_array().into_iter().flatten());
        } else {
            objects.push(d);
        }
    }
    let mut workload = Workload::default();
    let mut node_class_seen = false;
    let mut taints: Vec<Value> = Vec::new();
    let mut daemon_sets: Vec<(DaemonSet, Vec<Value>)> = Vec::new();
    // Pods that exist carry their creation time; pods of controllers do not
    // exist yet and are taken as created together with the first.
    let mut created_at: Vec<Option<u64>> = Vec::new();
    for object in objects {
        let kind = object["kind"].as_str().unwrap_or_default();
        let name = object["metadata"]["name"].as_str().unwrap_or("unnamed");
        let at = format!("{source}: {kind} {name}");
        let (count, template) = match kind {
            "Pod" => (1, object),
            "Deployment" | "StatefulSet" | "ReplicaSet" => (
                object["spec"]["replicas"].as_u64().unwrap_or(1),
                &object["spec"]["template"],
            ),
            "Job" => {
                let parallelism = object["spec"]["parallelism"].as_u64().unwrap_or(1);
                let completions = object["spec"]["completions"]
                    .as_u64()
                    .unwrap_or(parallelism);
                (parallelism.min(completions), &object["spec"]["template"])
            }
            "DaemonSet" => {
                let requests = pod_requests(&object["spec"]["template"]["spec"], &at)?;
                let host = requests
                    .into_iter()
                    .filter(|(r, _)| matches!(r.as_str(), CPU | MEMORY | EPHEMERAL_STORAGE))
                    .collect::<BTreeMap<_, _>>();
                let tolerations = object["spec"]["template"]["spec"]["tolerations"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                daemon_sets.push((
                    DaemonSet {
                        name: name.to_string(),
                        requests: host_requests(&host, &at)?,
                    },
                    tolerations,
                ));
                continue;
            }
            "NodePool" => {
                if workload.instance_types.is_some() {
                    return Err(crate::invalid!(
                        at,
                        "a second NodePool; plan --workload models one pool per file"
                    ));
                }
                taints = object["spec"]["template"]["spec"]["taints"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let requirements = super::nodepool_requirements(object);
                workload.instance_types = Some(
                    super::instances_matching(&requirements)
                        .iter()
                        .map(|i| i.name.to_string())
                        .collect(),
                );
                continue;
            }
            "EC2NodeClass" => {
                if node_class_seen {
                    return Err(crate::invalid!(
                        at,
                        "a second EC2NodeClass; plan --workload models one node class per file"
                    ));
                }
                node_class_seen = true;
                workload.node = NodeSettings::from_node_class(object, &at)?;
                continue;
            }
            "" => {
                return Err(crate::invalid!(
                    source,
                    "a document without kind; give Kubernetes objects (Pod, Deployment, \
                     StatefulSet, ReplicaSet, Job, DaemonSet, NodePool, EC2NodeClass) or the list form"
                ));
            }
            other => {
                return Err(crate::invalid!(
                    at,
                    "plan --workload does not read {other} objects; give Pods, Deployments, \
                     StatefulSets, ReplicaSets, Jobs, DaemonSets, a NodePool and an EC2NodeClass"
                ));
            }
        };
        if count == 0 {
            continue;
        }
        if let Some(node) = object["spec"]["nodeName"]
            .as_str()
            .filter(|_| kind == "Pod")
        {
            return Err(crate::invalid!(
                at,
                "already runs on node {node}; plan --workload sizes new nodes for pending \
                 pods (existing nodes are not modelled): leave it out"
            ));
        }
        if kind == "StatefulSet"
            && count > 1
            && object["spec"]["podManagementPolicy"].as_str() != Some("Parallel")
        {
            return Err(crate::invalid!(
                at,
                "creates its pods one at a time, each after the previous is Ready \
                 (podManagementPolicy OrderedReady, the default): Karpenter sees them in separate \
                 batches, which plan --workload does not model; set podManagementPolicy: Parallel \
                 in the file to size them pending together"
            ));
        }
        let spec = &template["spec"];
        let requests = pod_requests(spec, &at)?;
        let resources = serde_json::json!({"requests": requests});
        let arch = spec["nodeSelector"]["kubernetes.io/arch"]
            .as_str()
            .map(str::to_string);
        let memory_gib = match &template["metadata"]["annotations"][GPU_MEMORY_ANNOTATION] {
            Value::Null => None,
            v => Some(
                nodes::bytes(v, &format!("{at}: annotation {GPU_MEMORY_ANNOTATION}"))? as f64
                    / f64::from(1u32 << 30),
            ),
        };
        let shared = requests.contains_key(config::GPU_RESOURCE)
            || requests.contains_key(config::SHARED_GPU_RESOURCE);
        if shared && memory_gib.is_none() {
            return Err(crate::invalid!(
                at,
                "asks for a shared GPU; annotate its pod template with \
                 {GPU_MEMORY_ANNOTATION}: <the GPU memory each pod needs, e.g. 8Gi>"
            ));
        }
        let created = match (kind, object["metadata"]["creationTimestamp"].as_str()) {
            ("Pod", Some(stamp)) => Some(unix_seconds(stamp).ok_or_else(|| {
                crate::invalid!(
                    at,
                    "metadata.creationTimestamp '{stamp}' is not a time as Kubernetes writes \
                     it (2026-12-07T05:00:00Z)"
                )
            })?),
            _ => None,
        };
        created_at.push(created);
        workload.items.push(WorkloadItem {
            name: format!("{}/{name}", kind.to_ascii_lowercase()),
            count: u32::try_from(count).unwrap_or(u32::MAX),
            slice: None,
            shared_gpu: None,
            memory_gib,
            arch,
            requests: BTreeMap::new(),
            resources: Some(resources),
            created: 0,
            host: BTreeMap::new(),
            slices_per_pod: 1,
        });
    }
    let first = created_at.iter().flatten().min().copied().unwrap_or(0);
    for (item, created) in workload.items.iter_mut().zip(&created_at) {
        item.created = created.map_or(0, |c| c - first);
    }
    for (daemon_set, tolerations) in daemon_sets {
        if tolerates_all(&tolerations, &taints) {
            workload.daemon_sets.push(daemon_set);
        } else {
            workload.daemon_sets_elsewhere.push(daemon_set.name);
        }
    }
    if workload.items.is_empty() {
        return Err(crate::invalid!(
            source,
            "no pods (no Pod, Deployment, StatefulSet, ReplicaSet or Job with replicas)"
        ));
    }
    validate(&mut workload, source)?;
    Ok(workload)
}

/// Seconds since 1970 of an RFC 3339 UTC time as Kubernetes writes it
/// (`2026-12-07T05:00:00Z`; the 1-second resolution Karpenter's queue
/// compares).
fn unix_seconds(stamp: &str) -> Option<u64> {
    let b = stamp.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| stamp.get(r)?.parse::<u64>().ok();
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1970..=9999).contains(&year)
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm), March-based years.
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3_600 + minute * 60 + second)
}

/// Whether a DaemonSet's pods tolerate every taint of the NodePool, as
/// Karpenter decides whether they run there (`isDaemonPodCompatible`,
/// which also tolerates `PreferNoSchedule`; Kubernetes'
/// `Toleration.ToleratesTaint` for `Equal` and `Exists`).
fn tolerates_all(tolerations: &[Value], taints: &[Value]) -> bool {
    taints
        .iter()
        .filter(|t| t["effect"].as_str() != Some("PreferNoSchedule"))
        .all(|taint| {
            tolerations.iter().any(|t| {
                let effect = t["effect"].as_str().unwrap_or_default();
                let key = t["key"].as_str().unwrap_or_default();
                (effect.is_empty() || Some(effect) == taint["effect"].as_str())
                    && (key.is_empty() || Some(key) == taint["key"].as_str())
                    && match t["operator"].as_str().unwrap_or("Equal") {
                        "Exists" => true,
                        "Equal" => {
                            !key.is_empty()
                                && t["value"].as_str().unwrap_or_default()
                                    == taint["value"].as_str().unwrap_or_default()
                        }
                        _ => false,
                    }
            })
        })
}

/// A pod spec's requests as the scheduler counts them (Kubernetes'
/// `PodRequests`, which Karpenter calls): the containers' sum, at least each
/// init container's (plus the sidecars started before it), sidecars (init
/// containers with `restartPolicy: Always`) added to the sum, plus
/// `overhead`.
fn pod_requests(spec: &Value, at: &str) -> Result<BTreeMap<String, Value>, InputError> {
    // Amounts as exact integers: millicores for cpu, bytes or counts else.
    let amount = |resource: &str, v: &Value| -> Result<u64, InputError> {
        if resource == CPU {
            nodes::millis(v, &format!("{at}: {resource}"))
        } else {
            nodes::bytes(v, &format!("{at}: {resource}"))
        }
    };
    let container = |c: &Value| -> Result<BTreeMap<String, u64>, InputError> {
        effective_requests(&c["resources"])
            .iter()
            .map(|(r, v)| Ok((r.clone(), amount(r, v)?)))
            .collect()
    };
    let add = |into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>| {
        for (r, n) in from {
            let e = into.entry(r.clone()).or_insert(0);
            *e = (*e).saturating_add(*n);
        }
    };
    let mut sum = BTreeMap::new();
    for c in spec["containers"].as_array().into_iter().flatten() {
        add(&mut sum, &container(c)?);
    }
    let mut sidecars = BTreeMap::new();
    let mut init_max: BTreeMap<String, u64> = BTreeMap::new();
    for c in spec["initContainers"].as_array().into_iter().flatten() {
        let requests = container(c)?;
        if c["restartPolicy"].as_str() == Some("Always") {
            add(&mut sidecars, &requests);
            add(&mut sum, &requests);
            for (r, n) in &sidecars {
                let e = init_max.entry(r.clone()).or_insert(0);
                *e = (*e).max(*n);
            }
        } else {
            let mut with_sidecars = sidecars.clone();
            add(&mut with_sidecars, &requests);
            for (r, n) in with_sidecars {
                let e = init_max.entry(r).or_insert(0);
                *e = (*e).max(n);
            }
        }
    }
    for (r, n) in init_max {
        let e = sum.entry(r).or_insert(0);
        *e = (*e).max(n);
    }
    if let Some(overhead) = spec["overhead"].as_object() {
        for (r, v) in overhead {
            let e = sum.entry(r.clone()).or_insert(0);
            *e = (*e).saturating_add(amount(r, v)?);
        }
    }
    Ok(sum
        .into_iter()
        .map(|(r, n)| {
            let v = if r == CPU {
                Value::String(format!("{n}m"))
            } else {
                Value::from(n)
            };
            (r, v)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_errors_say_what_to_do() {
        assert!(
            parse_workload("- {name: a}", "w")
                .unwrap_err()
                .to_string()
                .contains("exactly one")
        );
        assert!(
            parse_workload("- {name: a, sharedGpu: 1}", "w")
                .unwrap_err()
                .to_string()
                .contains("memoryGiB")
        );
        let err = parse_workload(
            "- {name: a, sharedGpu: 1, memoryGiB: 4, requests: {cpu: lots}}",
            "w",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "w: pod 'a': requests.cpu: 'lots' is no CPU quantity; write cores (2, \"0.5\") or millicores (\"500m\")"
        );
        let err = parse_workload(
            "- {name: a, sharedGpu: 1, memoryGiB: 4, requests: {nvidia.com/gpu: 1}}",
            "w",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("requests takes cpu, memory and ephemeral-storage"),
            "{err}"
        );
        let err = parse_workload(
            "pods: [{name: a, slice: 1g.5gb}]\ninstanceTypes: [m5.large]\n",
            "w",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("'m5.large' is no GPU instance type"), "{err}");
        let err = parse_workload("- {name: a, count: 4000000000, slice: 1g.5gb}\n", "w")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "w: 4000000000 pods; plan --workload simulates at most 2000 pods per file: split it \
             into separate files or scale the counts down"
        );
        let err = parse_workload("pods: [{name: a, slice: 1g.5gb}]\nnodes: 3\n", "w")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `nodes`"), "{err}");
    }

    /// A Deployment as kubectl prints it: replicas, the containers' requests
    /// (a limit alone is the request), an init container, a sidecar.
    #[test]
    fn kubernetes_objects_become_pods() {
        let text = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: asr}
spec:
  replicas: 3
  template:
    metadata:
      annotations: {gpu-slicer.io/gpu-memory: 12Gi}
    spec:
      initContainers:
        - name: fetch
          resources: {requests: {cpu: "4", memory: 1Gi}}
        - name: proxy
          restartPolicy: Always
          resources: {requests: {cpu: 250m, memory: 256Mi}}
      containers:
        - name: asr
          resources:
            requests: {cpu: "1"}
            limits: {memory: 8Gi, nvidia.com/gpu.shared: 1}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: node-exporter}
spec:
  template:
    spec:
      containers:
        - name: e
          resources: {requests: {cpu: 100m, memory: 180Mi}}
---
apiVersion: batch/v1
kind: Job
metadata: {name: train}
spec:
  parallelism: 4
  completions: 2
  template:
    spec:
      containers:
        - name: t
          resources: {limits: {nvidia.com/mig-1g.10gb: 1, cpu: 2}}
---
apiVersion: karpenter.k8s.aws/v1
kind: EC2NodeClass
metadata: {name: gpu}
spec:
  amiSelectorTerms: [{alias: bottlerocket@latest}]
  kubelet: {maxPods: 50}
"#;
        let w = parse_workload(text, "w.yaml").unwrap();
        assert!(w.rename_by_default);
        assert_eq!(w.node.max_pods, Some(50));
        assert_eq!(w.node.ami_family, nodes::AmiFamily::Bottlerocket);
        let asr = &w.items[0];
        assert_eq!(
            (asr.name.as_str(), asr.count, asr.shared_gpu),
            ("deployment/asr", 3, Some(1))
        );
        assert_eq!(asr.memory_gib, Some(12.0));
        // cpu: max(1 + 0.25, 4 + 0) = 4; memory: max(8Gi + 256Mi, 1Gi).
        assert_eq!(asr.host[CPU], 4000);
        assert_eq!(asr.host[MEMORY], (8 << 30) + (256 << 20));
        let train = &w.items[1];
        assert_eq!((train.count, train.slice.as_deref()), (2, Some("1g.10gb")));
        assert_eq!(train.host[CPU], 2000);
        assert_eq!(w.daemon_sets[0].requests[CPU], 100);

        let err = parse_workload(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n    - resources: {limits: {nvidia.com/gpu: 1}}\n",
            "p.yaml",
        )
        .unwrap_err().to_string();
        assert!(
            err.contains("annotate its pod template with gpu-slicer.io/gpu-memory"),
            "{err}"
        );
        let err = parse_workload(
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n",
            "s.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("does not read Service objects"), "{err}");
    }

    /// Karpenter counts a DaemonSet on a NodePool's nodes only when its pods
    /// tolerate the pool's taints (`isDaemonPodCompatible`).
    #[test]
    fn daemon_sets_count_where_they_tolerate_the_taints() {
        let text = r#"
apiVersion: karpenter.sh/v1
kind: NodePool
metadata: {name: gpu}
spec:
  template:
    spec:
      taints:
        - {key: nvidia.com/gpu, effect: NoSchedule}
        - {key: team, value: ml, effect: PreferNoSchedule}
      requirements:
        - {key: node.kubernetes.io/instance-type, operator: In, values: [g6.xlarge]}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: gpu-slicer}
spec:
  template:
    spec:
      tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
      containers: [{name: d, resources: {requests: {cpu: 50m}}}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: everywhere}
spec:
  template:
    spec:
      tolerations: [{operator: Exists}]
      containers: [{name: d, resources: {requests: {cpu: 10m}}}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: wrong-value}
spec:
  template:
    spec:
      tolerations: [{key: nvidia.com/gpu, operator: Equal, value: "true", effect: NoSchedule}]
      containers: [{name: d, resources: {requests: {cpu: 10m}}}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: kube-proxy-like}
spec:
  template:
    spec:
      containers: [{name: d, resources: {requests: {cpu: 100m}}}]
---
apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  containers: [{name: c, resources: {limits: {nvidia.com/mig-1g.5gb: 1}}}]
"#;
        let w = parse_workload(text, "w.yaml").unwrap();
        let counted: Vec<&str> = w.daemon_sets.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(counted, ["gpu-slicer", "everywhere"]);
        assert_eq!(w.daemon_sets_elsewhere, ["wrong-value", "kube-proxy-like"]);
        assert_eq!(w.instance_types, Some(vec!["g6.xlarge".to_string()]));
    }

    /// Pending Pods as `kubectl get pods -o yaml` prints them: their
    /// creation times order them (1-second resolution), relative to the
    /// first.
    #[test]
    fn pods_keep_their_creation_time() {
        assert_eq!(unix_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(unix_seconds("2000-03-01T00:00:01Z"), Some(951_868_801));
        assert_eq!(unix_seconds("2026-12-07T05:00:00"), None);
        let pod = |name: &str, stamp: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, creationTimestamp: \"{stamp}\"}}\nspec:\n  containers: [{{name: c, resources: {{limits: {{nvidia.com/mig-1g.5gb: 1}}}}}}]\n"
            )
        };
        let text = format!(
            "apiVersion: v1\nkind: List\nitems: []\n---\n{}---\n{}",
            pod("late", "2026-12-07T05:00:02Z"),
            pod("early", "2026-12-06T23:59:59Z")
        );
        let w = parse_workload(&text, "pods.yaml").unwrap();
        let created: Vec<(&str, u64)> = w
            .items
            .iter()
            .map(|i| (i.name.as_str(), i.created))
            .collect();
        assert_eq!(created, [("pod/late", 5 * 3600 + 3), ("pod/early", 0)]);
        let bound =
            pod("p", "2026-12-07T05:00:00Z").replace("spec:\n", "spec:\n  nodeName: ip-10-0-0-1\n");
        let err = parse_workload(&bound, "p.yaml").unwrap_err().to_string();
        assert!(
            err.contains("Pod p: already runs on node ip-10-0-0-1"),
            "{err}"
        );
        let err = parse_workload(&pod("p", "yesterday"), "p.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("creationTimestamp 'yesterday' is not a time"),
            "{err}"
        );
    }
}
