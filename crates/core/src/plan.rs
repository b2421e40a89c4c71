//! The planner: inventory + configuration → the resources a node advertises.
//!
//! This is a pure function. It implements NVIDIA's `migStrategy` and
//! time-slicing semantics exactly, and goes further where NVIDIA ignores the
//! configuration (`rename`, per-resource `devices`, custom `resources`
//! patterns). Where NVIDIA's plugin exits on a misconfiguration (mixed MIG
//! layouts under `single`, a MIG-enabled GPU without instances), the planner
//! advertises what is consistent and reports the rest as [`Diagnostic`]s.

use rustc_hash::FxHashMap;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use crate::config::{
    Config, DeviceRef, DeviceSelection, MigStrategy, ReplicatedResources, ResourceName,
    ResourcePattern, SharingStrategy,
};
use crate::gpu::{Gpu, Inventory, MigDevice, mig_resource_suffix};

/// Everything the node should advertise, plus what could not be advertised.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Resources with at least one device, sorted by name.
    pub resources: Vec<Resource>,
    pub diagnostics: Vec<Diagnostic>,
}

/// One extended resource (one gRPC server, one socket, one registration).
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub name: ResourceName,
    /// Devices in inventory order (GPU index, then MIG index, then replica).
    pub devices: Vec<Device>,
    /// Set when the devices are shared replicas.
    pub sharing: Option<SharingInfo>,
    /// Advertised id → position in `devices`: every Allocate and preferred
    /// allocation looks ids up here, so it uses a cheap hash (ids are not
    /// attacker-chosen: the kubelet only sends ids we advertised): rustc's
    /// Fx hash, far cheaper than SipHash for 40-odd-byte ids.
    index: FxHashMap<String, usize>,
    /// Devices per physical GPU (by GPU index), for placement.
    per_gpu: HashMap<u32, usize>,
    /// One past the highest GPU index behind this resource.
    gpu_slots: usize,
}

/// How a shared resource was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharingInfo {
    pub strategy: SharingStrategy,
    pub replicas: u32,
    pub fail_requests_greater_than_one: bool,
    /// Set for MPS: what each replica may use.
    pub mps: Option<MpsShare>,
}

/// One MPS replica's share of its GPU, as the control daemon enforces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MpsShare {
    /// Pinned device memory per replica, MiB; `None`: the GPU's memory /
    /// replicas, per GPU (NVIDIA's default).
    pub memory_per_replica_mib: Option<u64>,
    /// Default active thread percentage (`100 / replicas` unless set).
    pub active_thread_percentage: u32,
    /// The most replicas one container may hold, all on one GPU; it then
    /// gets that many shares (1: NVIDIA's behaviour).
    pub max_replicas_per_container: u32,
}

/// One advertised device id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// What ListAndWatch sends: a UUID, or `<UUID>::<n>` for a replica.
    pub id: String,
    /// Replica number when the device is a time-sliced/MPS replica.
    pub replica: Option<u32>,
    pub physical: Physical,
}

/// The physical device behind an advertised id: a full GPU or a MIG device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Physical {
    /// `GPU-…` or `MIG-…`.
    pub uuid: String,
    /// NVIDIA's internal index: `"3"` for a GPU, `"3:1"` for a MIG device.
    pub index: String,
    pub gpu_index: u32,
    pub gpu_uuid: String,
    pub gpu_minor: u32,
    pub numa_node: Option<i64>,
    /// GPU-instance and compute-instance ids for a MIG device.
    pub mig: Option<MigIds>,
    /// Device memory (the GPU's, or the MIG device's), MiB.
    pub memory_mib: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigIds {
    pub gpu_instance: u32,
    pub compute_instance: u32,
}

/// Something the user should know about the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Advertised, but probably not what was meant.
    Warning,
    /// Some devices are not advertised because of it.
    Error,
    /// The configuration cannot be applied on this node as written: the
    /// daemon refuses it (at start it exits, on a reload it keeps the
    /// running configuration).
    Refused,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Warning => "warning",
            Severity::Error | Severity::Refused => "error",
        };
        write!(f, "{level}: {}", self.message)
    }
}

impl Resource {
    pub fn new(name: ResourceName, devices: Vec<Device>, sharing: Option<SharingInfo>) -> Self {
        let index = devices
            .iter()
            .enumerate()
            .map(|(i, d)| (d.id.clone(), i))
            .collect();
        let mut per_gpu = HashMap::new();
        let mut gpu_slots = 0;
        for device in &devices {
            *per_gpu.entry(device.physical.gpu_index).or_insert(0) += 1;
            gpu_slots = gpu_slots.max(device.physical.gpu_index as usize + 1);
        }
        Resource {
            name,
            devices,
            sharing,
            index,
            per_gpu,
            gpu_slots,
        }
    }

    /// One past the highest GPU index behind this resource (0 when empty):
    /// the size of a vector indexed by GPU.
    pub fn gpu_slots(&self) -> usize {
        self.gpu_slots
    }

    /// Position of `id` in [`Self::devices`].
    pub fn position(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// How many of this resource's devices sit on GPU `gpu_index`.
    pub fn devices_on_gpu(&self, gpu_index: u32) -> usize {
        self.per_gpu.get(&gpu_index).copied().unwrap_or(0)
    }

    /// The device advertised under `id`, if any.
    pub fn device(&self, id: &str) -> Option<&Device> {
        self.index.get(id).map(|&i| &self.devices[i])
    }

    /// Number of distinct physical GPUs behind this resource.
    pub fn gpu_count(&self) -> usize {
        let mut gpus: Vec<u32> = self.devices.iter().map(|d| d.physical.gpu_index).collect();
        gpus.dedup();
        gpus.sort_unstable();
        gpus.dedup();
        gpus.len()
    }
}

impl Plan {
    pub fn resource(&self, name: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.name.as_str() == name)
    }

    /// `(resource name, device count)` pairs, sorted by name.
    pub fn counts(&self) -> Vec<(String, usize)> {
        self.resources
            .iter()
            .map(|r| (r.name.to_string(), r.devices.len()))
            .collect()
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity >= Severity::Error)
    }

    /// Why the configuration cannot be applied on this node, if it cannot.
    pub fn refusal(&self) -> Option<String> {
        let reasons: Vec<&str> = self
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Refused)
            .map(|d| d.message.as_str())
            .collect();
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }
}

/// The kubelet's gRPC receive limit (grpc-go's default, 4 MiB): every
/// kubelet refuses a ListAndWatch message larger than this, and the node
/// then shows none of the resource's devices.
pub const KUBELET_MAX_MESSAGE: usize = 4 << 20;

/// Bytes of a protobuf varint.
fn varint_len(mut value: u64) -> usize {
    let mut len = 1;
    while value >= 0x80 {
        value >>= 7;
        len += 1;
    }
    len
}

/// Bytes of a length-delimited field (tag, length, payload).
fn field_len(payload: usize) -> usize {
    1 + varint_len(payload as u64) + payload
}

/// Encoded bytes of one `Device` entry of a `ListAndWatchResponse`
/// (`repeated Device devices = 1`), with the longer health string
/// (`Unhealthy`) so that a health change never crosses the limit.
pub fn device_entry_len(id_len: usize, numa_node: Option<i64>) -> usize {
    let mut device = field_len(id_len) + field_len("Unhealthy".len());
    if let Some(node) = numa_node {
        // TopologyInfo { repeated NUMANode nodes = 1 } with NUMANode { int64 ID = 1 }.
        let numa = 1 + varint_len(node as u64);
        device += field_len(field_len(numa));
    }
    field_len(device)
}

/// Encoded bytes of the resource's `ListAndWatchResponse`.
pub fn list_and_watch_len(resource: &Resource) -> usize {
    resource
        .devices
        .iter()
        .map(|d| device_entry_len(d.id.len(), d.physical.numa_node))
        .sum()
}

const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// Computes what the node advertises. Never fails: problems become diagnostics.
pub fn plan(inventory: &Inventory, config: &Config) -> Plan {
    let mut diagnostics = Vec::new();
    let base = base_devices(inventory, config, &mut diagnostics);
    let resources = apply_sharing(base, config, &mut diagnostics);
    for resource in &resources {
        check_message_size(resource, &mut diagnostics);
    }
    Plan {
        resources,
        diagnostics,
    }
}

/// Encoded bytes of `replicas` replica ids (`<uuid>::<n>`) of each of
/// `physical`, without building them: closed form over the number of
/// digits, so a count of a billion costs nothing to check.
fn replica_list_len(physical: &[&Physical], replicas: u32) -> usize {
    let replicas = u64::from(replicas);
    physical
        .iter()
        .map(|p| {
            (1..=10u32)
                .map(|digits| {
                    let low = if digits == 1 {
                        0
                    } else {
                        10u64.pow(digits - 1)
                    };
                    let high = 10u64.pow(digits).min(replicas);
                    let count = high.saturating_sub(low) as usize;
                    count.saturating_mul(device_entry_len(
                        p.uuid.len() + 2 + digits as usize,
                        p.numa_node,
                    ))
                })
                .fold(0usize, usize::saturating_add)
        })
        .fold(0, usize::saturating_add)
}

/// The largest replica count whose list fits the kubelet's limit, by
/// bisection (the size grows with the count).
fn largest_fitting(physical: &[&Physical], replicas: u32) -> u32 {
    let (mut low, mut high) = (0u32, replicas);
    while low < high {
        let mid = low + (high - low).div_ceil(2);
        if replica_list_len(physical, mid) <= KUBELET_MAX_MESSAGE {
            low = mid;
        } else {
            high = mid - 1;
        }
    }
    low
}

/// The refusal of a device list over the kubelet's limit.
fn oversized(name: &ResourceName, devices: usize, size: usize, fits: Option<u32>) -> Diagnostic {
    let hint = match fits {
        Some(n) if n >= 2 => format!("; at most {n} replicas per device fit"),
        Some(_) => {
            "; no replica count of 2 or more fits: share fewer devices under this name".into()
        }
        None => String::new(),
    };
    refused(format!(
        "resource '{name}': its device list ({devices} devices) encodes to {size} bytes, more than \
         the {KUBELET_MAX_MESSAGE} bytes a kubelet accepts in one ListAndWatch message{hint}"
    ))
}

/// Refuses a resource whose device list the kubelet would never accept,
/// saying how many replicas would fit.
fn check_message_size(resource: &Resource, diagnostics: &mut Vec<Diagnostic>) {
    let size = list_and_watch_len(resource);
    if size <= KUBELET_MAX_MESSAGE {
        return;
    }
    let fits = resource.sharing.map(|sharing| {
        // The physical devices behind the replicas, once each.
        let mut physical: Vec<&Physical> = Vec::new();
        for device in &resource.devices {
            if !physical.iter().any(|p| p.uuid == device.physical.uuid) {
                physical.push(&device.physical);
            }
        }
        largest_fitting(&physical, sharing.replicas)
    });
    diagnostics.push(oversized(
        &resource.name,
        resource.devices.len(),
        size,
        fits,
    ));
}

/// A physical device with the resource name it gets before sharing.
struct Named {
    name: ResourceName,
    physical: Physical,
}

fn base_devices(
    inventory: &Inventory,
    config: &Config,
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<Named> {
    let strategy = config.flags.mig_strategy;
    let mut named = Vec::new();
    // Under `single`, candidates are collected per device type first, because
    // only one type can be advertised as `nvidia.com/gpu`.
    let mut single_groups: BTreeMap<String, Vec<Named>> = BTreeMap::new();
    let mut single_order: Vec<String> = Vec::new();

    // NVIDIA says nothing when a MIG strategy meets GPUs without MIG; one
    // clear line saves an operator from wondering where the slices went.
    let without_mig: Vec<String> = inventory
        .gpus
        .iter()
        .filter(|g| !g.mig_capable)
        .map(|g| g.index.to_string())
        .collect();
    if strategy != MigStrategy::None && !without_mig.is_empty() {
        let models: std::collections::BTreeSet<&str> = inventory
            .gpus
            .iter()
            .filter(|g| !g.mig_capable)
            .map(|g| g.model.as_str())
            .collect();
        diagnostics.push(warning(format!(
            "migStrategy {strategy} has no effect on GPU{} {} ({}): {} no MIG support and {} advertised as whole GPUs",
            if without_mig.len() == 1 { "" } else { "s" },
            without_mig.join(", "),
            models.into_iter().collect::<Vec<_>>().join(", "),
            if without_mig.len() == 1 { "it has" } else { "they have" },
            if without_mig.len() == 1 { "is" } else { "are" },
        )));
    }

    for gpu in &inventory.gpus {
        let partitioned = gpu.mig_enabled && strategy != MigStrategy::None;
        if gpu.mig_enabled && strategy == MigStrategy::None {
            diagnostics.push(warning(format!(
                "GPU {} ({}) has MIG enabled but migStrategy is none: the whole GPU is advertised, \
                 and workloads cannot run on it until MIG is disabled or migStrategy is set to single or mixed",
                gpu.index, gpu.uuid
            )));
        }
        if !partitioned {
            let Some(name) = gpu_resource_name(gpu, config, diagnostics) else {
                continue;
            };
            let device = Named {
                name,
                physical: full_gpu(gpu),
            };
            if strategy == MigStrategy::Single {
                push_group(
                    &mut single_groups,
                    &mut single_order,
                    format!("full GPU ({})", gpu.model),
                    device,
                );
            } else {
                named.push(device);
            }
            continue;
        }
        if gpu.mig_devices.is_empty() {
            diagnostics.push(error(format!(
                "device {} has no MIG devices configured: GPU {} has MIG enabled but no MIG instances, \
                 so nothing is advertised for it; create instances (e.g. with mig-parted) or disable MIG",
                gpu.index, gpu.uuid
            )));
            continue;
        }
        for mig in &gpu.mig_devices {
            let Some(name) = mig_resource_name(gpu, mig, config, diagnostics) else {
                continue;
            };
            let device = Named {
                name,
                physical: mig_device(gpu, mig),
            };
            if strategy == MigStrategy::Single {
                push_group(
                    &mut single_groups,
                    &mut single_order,
                    format!("MIG {}", mig.profile),
                    device,
                );
            } else {
                named.push(device);
            }
        }
    }

    if strategy == MigStrategy::Single {
        named.extend(choose_single_group(
            single_groups,
            &single_order,
            diagnostics,
        ));
    }
    named
}

fn push_group(
    groups: &mut BTreeMap<String, Vec<Named>>,
    order: &mut Vec<String>,
    kind: String,
    device: Named,
) {
    if !groups.contains_key(&kind) {
        order.push(kind.clone());
    }
    groups.entry(kind).or_default().push(device);
}

/// `single` needs one device type per node. NVIDIA's plugin exits when the
/// node has several; we advertise the type with the most devices (ties go
/// to the type seen first in GPU order) and report the others.
fn choose_single_group(
    mut groups: BTreeMap<String, Vec<Named>>,
    order: &[String],
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<Named> {
    if groups.len() <= 1 {
        return groups.into_values().flatten().collect();
    }
    let mut winner = &order[0];
    for kind in order {
        if groups[kind].len() > groups[winner].len() {
            winner = kind;
        }
    }
    let winner = winner.clone();
    let left_out: Vec<String> = order
        .iter()
        .filter(|k| **k != winner)
        .map(|k| format!("{} × {k}", groups[k].len()))
        .collect();
    diagnostics.push(error(format!(
        "migStrategy single needs every GPU to have the same MIG configuration (NVIDIA's plugin exits here with \
         'more than one MIG device type present on node' / 'all devices on the node must be configured with the \
         same migEnabled value'); advertising the {} × {winner} devices as nvidia.com/gpu and leaving out {}; \
         use migStrategy mixed or apply one MIG layout to every GPU",
        groups[&winner].len(),
        left_out.join(", ")
    )));
    groups.remove(&winner).unwrap_or_default()
}

fn gpu_resource_name(
    gpu: &Gpu,
    config: &Config,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<ResourceName> {
    let patterns = config.resources.as_ref().map(|r| r.gpus.as_slice());
    match patterns {
        None | Some([]) => Some(ResourceName::new_unchecked(GPU_RESOURCE)),
        Some(patterns) => {
            let found = first_match(patterns, &gpu.model);
            if found.is_none() {
                diagnostics.push(error(format!(
                    "GPU {} ({}) matches no pattern in resources.gpus and is not advertised; \
                     add a pattern such as '*' to resources.gpus",
                    gpu.index, gpu.model
                )));
            }
            found
        }
    }
}

fn mig_resource_name(
    gpu: &Gpu,
    mig: &MigDevice,
    config: &Config,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<ResourceName> {
    if let Some(patterns) = config.resources.as_ref().map(|r| r.mig.as_slice())
        && !patterns.is_empty()
    {
        let found = first_match(patterns, &mig.profile);
        if found.is_none() {
            diagnostics.push(error(format!(
                "MIG profile '{}' does not match any resource patterns: MIG device {} on GPU {} is not advertised; \
                 add a pattern for it to resources.mig",
                mig.profile, mig.uuid, gpu.index
            )));
        }
        return found;
    }
    if config.flags.mig_strategy == MigStrategy::Single {
        return Some(ResourceName::new_unchecked(GPU_RESOURCE));
    }
    // NVIDIA generates patterns only for profiles whose compute instance spans
    // the whole GPU instance; `1c.3g.20gb` has none and must be named by the user.
    if mig.profile.contains("c.") {
        diagnostics.push(error(format!(
            "MIG profile '{}' does not match any resource patterns: MIG device {} on GPU {} has a compute instance \
             smaller than its GPU instance and is not advertised; add a resources.mig entry such as \
             {{pattern: \"{}\", name: nvidia.com/mig-{}}}",
            mig.profile,
            mig.uuid,
            gpu.index,
            mig.profile,
            mig.profile.replace('+', ".")
        )));
        return None;
    }
    Some(ResourceName::new_unchecked(format!(
        "nvidia.com/{}",
        mig_resource_suffix(&mig.profile)
    )))
}

fn first_match(patterns: &[ResourcePattern], value: &str) -> Option<ResourceName> {
    patterns
        .iter()
        .find(|p| p.matches(value))
        .map(|p| p.name.clone())
}

fn full_gpu(gpu: &Gpu) -> Physical {
    Physical {
        uuid: gpu.uuid.clone(),
        index: gpu.index.to_string(),
        gpu_index: gpu.index,
        gpu_uuid: gpu.uuid.clone(),
        gpu_minor: gpu.minor,
        numa_node: gpu.numa_node,
        mig: None,
        memory_mib: gpu.memory_mib,
    }
}

fn mig_device(gpu: &Gpu, mig: &MigDevice) -> Physical {
    Physical {
        uuid: mig.uuid.clone(),
        index: format!("{}:{}", gpu.index, mig.index),
        gpu_index: gpu.index,
        gpu_uuid: gpu.uuid.clone(),
        gpu_minor: gpu.minor,
        numa_node: gpu.numa_node,
        mig: Some(MigIds {
            gpu_instance: mig.gpu_instance_id,
            compute_instance: mig.compute_instance_id,
        }),
        memory_mib: mig.memory_mib,
    }
}

/// Replaces the devices selected by each sharing entry with replicas, under
/// the entry's `rename`, `<name>.shared` (renameByDefault) or the same name.
fn apply_sharing(
    base: Vec<Named>,
    config: &Config,
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<Resource> {
    let strategy = config.sharing.strategy();
    let shared = config.sharing.active();

    // Resource name → (devices, sharing info); BTreeMap keeps output sorted.
    let mut out: BTreeMap<ResourceName, (Vec<Device>, Option<SharingInfo>)> = BTreeMap::new();
    let mut replicated = vec![false; base.len()];
    // Where each shared name came from, to refuse two entries sharing into
    // one name (their replicas would be one resource of mixed hardware, or
    // the same ids twice).
    let mut targets: BTreeMap<ResourceName, String> = BTreeMap::new();
    let base_names: BTreeSet<&ResourceName> = base.iter().map(|d| &d.name).collect();

    if let Some(shared) = shared {
        for (entry_index, entry) in shared.resources.iter().enumerate() {
            let path = format!("sharing.{}.resources[{entry_index}]", section(strategy));
            let members: Vec<usize> = base
                .iter()
                .enumerate()
                .filter(|(_, d)| d.name == entry.name)
                .map(|(i, _)| i)
                .collect();
            if members.is_empty() {
                diagnostics.push(warning(format!(
                    "{path}: '{}' matches no resource this node advertises, so nothing is shared by this entry",
                    entry.name
                )));
                continue;
            }
            if strategy == SharingStrategy::Mps
                && members.iter().any(|&i| base[i].physical.mig.is_some())
            {
                diagnostics.push(refused(format!(
                    "{path}: sharing using MPS is not supported for MIG devices ('{}' is a MIG resource); \
                     share MIG devices with sharing.timeSlicing, or name a full-GPU resource",
                    entry.name
                )));
                continue;
            }
            let selected = select(&base, &members, &entry.devices, &path, diagnostics);
            if selected.is_empty() {
                continue;
            }
            let name = shared_name(entry.rename.as_ref(), &entry.name, shared);
            if let Some(other) = targets.get(&name) {
                diagnostics.push(refused(format!(
                    "{path} shares '{}' as '{name}', and so does {other}: one resource would mix \
                     their replicas (or list the same ids twice); give each entry its own name",
                    entry.name
                )));
                continue;
            }
            if name != entry.name && base_names.contains(&name) {
                diagnostics.push(refused(format!(
                    "{path}: '{name}' (the shared name of '{}') is already a resource of this node's \
                     other devices: a pod asking for '{name}' could be handed a replica of '{}'; \
                     choose another rename",
                    entry.name, entry.name
                )));
                continue;
            }
            if let Some(&i) = selected.iter().find(|&&i| replicated[i]) {
                diagnostics.push(refused(format!(
                    "{path}: device {} of '{}' is already shared by another entry; \
                     each device can be shared by one entry only",
                    base[i].physical.uuid, entry.name
                )));
                continue;
            }
            // Bounded before anything is built: a replica count of a
            // billion is refused here, not after allocating its ids.
            let physical: Vec<&Physical> = selected.iter().map(|&i| &base[i].physical).collect();
            let size = replica_list_len(&physical, entry.replicas);
            if size > KUBELET_MAX_MESSAGE {
                let devices = selected.len().saturating_mul(entry.replicas as usize);
                let fits = largest_fitting(&physical, entry.replicas);
                diagnostics.push(oversized(&name, devices, size, Some(fits)));
                continue;
            }
            targets.insert(name.clone(), path.clone());
            if selected.len() < members.len() && name == entry.name {
                diagnostics.push(warning(format!(
                    "{path}: only {} of the {} '{}' devices are shared, and replicas keep the same name, \
                     so one resource mixes whole devices and replicas; set 'rename' to keep them apart",
                    selected.len(),
                    members.len(),
                    entry.name
                )));
            }
            let mps = (strategy == SharingStrategy::Mps).then(|| MpsShare {
                memory_per_replica_mib: entry.mps.memory_per_replica_mib,
                active_thread_percentage: entry
                    .mps
                    .active_thread_percentage
                    .unwrap_or(100 / entry.replicas.max(1))
                    .max(1),
                max_replicas_per_container: entry.mps.max_replicas_per_container,
            });
            if let Some(per_replica) = entry.mps.memory_per_replica_mib
                && let Some(&i) = selected.iter().find(|&&i| {
                    per_replica.saturating_mul(u64::from(entry.replicas))
                        > base[i].physical.memory_mib
                })
            {
                let gpu = &base[i].physical;
                diagnostics.push(refused(format!(
                    "{path}: memoryPerReplica {per_replica}Mi × {} replicas = {}Mi does not fit GPU {} \
                     ({}Mi); at most {}Mi per replica fits there",
                    entry.replicas,
                    per_replica.saturating_mul(u64::from(entry.replicas)),
                    gpu.index,
                    gpu.memory_mib,
                    gpu.memory_mib / u64::from(entry.replicas.max(1)),
                )));
                continue;
            }
            let info = SharingInfo {
                strategy,
                replicas: entry.replicas,
                fail_requests_greater_than_one: shared.fail_requests_greater_than_one,
                mps,
            };
            let slot = out.entry(name).or_default();
            for &i in &selected {
                replicated[i] = true;
                for n in 0..entry.replicas {
                    slot.0.push(Device {
                        id: format!("{}::{n}", base[i].physical.uuid),
                        replica: Some(n),
                        physical: base[i].physical.clone(),
                    });
                }
            }
            slot.1 = Some(merge_sharing(slot.1, info));
        }
    }

    for (i, device) in base.into_iter().enumerate() {
        if replicated[i] {
            continue;
        }
        out.entry(device.name).or_default().0.push(Device {
            id: device.physical.uuid.clone(),
            replica: None,
            physical: device.physical,
        });
    }

    out.into_iter()
        .filter(|(_, (devices, _))| !devices.is_empty())
        .map(|(name, (mut devices, sharing))| {
            devices.sort_by(|a, b| {
                (a.physical.gpu_index, mig_order(a), a.replica).cmp(&(
                    b.physical.gpu_index,
                    mig_order(b),
                    b.replica,
                ))
            });
            Resource::new(name, devices, sharing)
        })
        .collect()
}

fn mig_order(device: &Device) -> Option<u32> {
    device
        .physical
        .index
        .split_once(':')
        .and_then(|(_, j)| j.parse().ok())
}

/// Two entries sharing into one name: the strictest request-size rule wins.
fn merge_sharing(existing: Option<SharingInfo>, new: SharingInfo) -> SharingInfo {
    match existing {
        None => new,
        Some(old) => SharingInfo {
            replicas: old.replicas.max(new.replicas),
            fail_requests_greater_than_one: old.fail_requests_greater_than_one
                || new.fail_requests_greater_than_one,
            ..new
        },
    }
}

fn section(strategy: SharingStrategy) -> &'static str {
    match strategy {
        SharingStrategy::Mps => "mps",
        _ => "timeSlicing",
    }
}

fn shared_name(
    rename: Option<&ResourceName>,
    name: &ResourceName,
    shared: &ReplicatedResources,
) -> ResourceName {
    match rename {
        Some(rename) => rename.clone(),
        None if shared.rename_by_default => {
            ResourceName::new_unchecked(format!("{}.shared", name.as_str()))
        }
        None => name.clone(),
    }
}

/// Indices (into `base`) of the members chosen by a `devices` selection.
fn select(
    base: &[Named],
    members: &[usize],
    selection: &DeviceSelection,
    path: &str,
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<usize> {
    match selection {
        DeviceSelection::All => members.to_vec(),
        DeviceSelection::Count(n) => {
            let n = *n as usize;
            if n > members.len() {
                diagnostics.push(warning(format!(
                    "{path}: devices asks for {n} devices but the node has {}; sharing all of them",
                    members.len()
                )));
            }
            members.iter().copied().take(n).collect()
        }
        DeviceSelection::List(refs) => {
            let mut chosen = Vec::new();
            for reference in refs {
                let hit = members
                    .iter()
                    .copied()
                    .find(|&i| matches_ref(&base[i].physical, reference));
                match hit {
                    Some(i) if !chosen.contains(&i) => chosen.push(i),
                    Some(_) => {}
                    None => diagnostics.push(warning(format!(
                        "{path}: device '{}' is not a device of this resource on this node; ignored",
                        describe_ref(reference)
                    ))),
                }
            }
            chosen.sort_unstable();
            chosen
        }
    }
}

fn matches_ref(physical: &Physical, reference: &DeviceRef) -> bool {
    match reference {
        DeviceRef::Index(i) => physical.mig.is_none() && physical.gpu_index == *i,
        DeviceRef::MigIndex(i, j) => physical.index == format!("{i}:{j}"),
        DeviceRef::Uuid(uuid) => {
            if physical.uuid == *uuid {
                return true;
            }
            // Legacy `MIG-GPU-<uuid>/<gi>/<ci>` names a MIG device by parent and ids.
            match (uuid.strip_prefix("MIG-"), physical.mig) {
                (Some(legacy), Some(ids)) => {
                    legacy
                        == format!(
                            "{}/{}/{}",
                            physical.gpu_uuid, ids.gpu_instance, ids.compute_instance
                        )
                }
                _ => false,
            }
        }
    }
}

fn describe_ref(reference: &DeviceRef) -> String {
    match reference {
        DeviceRef::Index(i) => i.to_string(),
        DeviceRef::MigIndex(i, j) => format!("{i}:{j}"),
        DeviceRef::Uuid(u) => u.clone(),
    }
}

fn warning(message: String) -> Diagnostic {
    Diagnostic {
        severity: Severity::Warning,
        message,
    }
}

fn refused(message: String) -> Diagnostic {
    Diagnostic {
        severity: Severity::Refused,
        message,
    }
}

fn error(message: String) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ReplicatedResource, ResourcePatterns};

    /// A GPU with the given MIG profiles (empty slice and `mig` false = MIG off).
    fn gpu(index: u32, mig_enabled: bool, profiles: &[&str]) -> Gpu {
        Gpu {
            index,
            model: "NVIDIA A100-SXM4-40GB".into(),
            uuid: format!("GPU-{index}"),
            memory_mib: 40960,
            pci_bus_id: format!("00000000:{index:02X}:00.0"),
            pci_device_id: 0x20B0_10DE,
            numa_node: Some(i64::from(index / 4)),
            minor: index,
            mig_capable: true,
            mig_enabled,
            mig_devices: profiles
                .iter()
                .enumerate()
                .map(|(j, p)| MigDevice {
                    index: j as u32,
                    profile: (*p).into(),
                    uuid: format!("MIG-{index}-{j}"),
                    gpu_instance_id: j as u32 + 1,
                    compute_instance_id: 0,
                    memory_mib: 4864,
                    attributes: None,
                    placement_start: None,
                })
                .collect(),
            nvlinks: vec![],
            pcie: vec![],
            compute_capability: None,
            pci_class: None,
        }
    }

    fn node(gpus: Vec<Gpu>) -> Inventory {
        Inventory {
            gpus,
            ..Default::default()
        }
    }

    fn with_strategy(strategy: MigStrategy) -> Config {
        let mut config = Config::default();
        config.flags.mig_strategy = strategy;
        config
    }

    fn time_sliced<'a>(
        config: &'a mut Config,
        name: &str,
        replicas: u32,
    ) -> &'a mut ReplicatedResource {
        config
            .sharing
            .time_slicing
            .resources
            .push(ReplicatedResource::every(name, replicas));
        config
            .sharing
            .time_slicing
            .resources
            .last_mut()
            .expect("just pushed")
    }

    fn counts(plan: &Plan) -> Vec<(&str, usize)> {
        plan.resources
            .iter()
            .map(|r| (r.name.as_str(), r.devices.len()))
            .collect()
    }

    const BALANCED: &[&str] = &["1g.5gb", "1g.5gb", "2g.10gb", "3g.20gb"];

    #[test]
    fn strategies_on_a_uniform_mig_node() {
        let all_1g: Vec<Gpu> = (0..8).map(|i| gpu(i, true, &["1g.5gb"; 7])).collect();
        let balanced: Vec<Gpu> = (0..8).map(|i| gpu(i, true, BALANCED)).collect();
        let disabled: Vec<Gpu> = (0..8).map(|i| gpu(i, false, &[])).collect();
        let cases: Vec<(&str, Vec<Gpu>, MigStrategy, Vec<(&str, usize)>)> = vec![
            (
                "all-1g mixed",
                all_1g.clone(),
                MigStrategy::Mixed,
                vec![("nvidia.com/mig-1g.5gb", 56)],
            ),
            (
                "all-1g single",
                all_1g.clone(),
                MigStrategy::Single,
                vec![("nvidia.com/gpu", 56)],
            ),
            (
                "all-1g none advertises parents",
                all_1g,
                MigStrategy::None,
                vec![("nvidia.com/gpu", 8)],
            ),
            (
                "balanced mixed",
                balanced,
                MigStrategy::Mixed,
                vec![
                    ("nvidia.com/mig-1g.5gb", 16),
                    ("nvidia.com/mig-2g.10gb", 8),
                    ("nvidia.com/mig-3g.20gb", 8),
                ],
            ),
            (
                "disabled mixed",
                disabled,
                MigStrategy::Mixed,
                vec![("nvidia.com/gpu", 8)],
            ),
        ];
        for (label, gpus, strategy, expected) in cases {
            let plan = plan(&node(gpus), &with_strategy(strategy));
            assert_eq!(counts(&plan), expected, "{label}");
            assert_eq!(plan.errors().count(), 0, "{label}: {:?}", plan.diagnostics);
        }
    }

    #[test]
    fn mig_strategy_on_gpus_without_mig_warns_once() {
        let mut gpus: Vec<Gpu> = (0..4).map(|i| gpu(i, false, &[])).collect();
        for g in &mut gpus {
            g.mig_capable = false;
            g.model = "NVIDIA A10G".into();
        }
        let plan = plan(&node(gpus), &with_strategy(MigStrategy::Mixed));
        assert_eq!(counts(&plan), vec![("nvidia.com/gpu", 4)]);
        assert_eq!(
            plan.diagnostics,
            vec![Diagnostic {
                severity: Severity::Warning,
                message: "migStrategy mixed has no effect on GPUs 0, 1, 2, 3 (NVIDIA A10G): they have no MIG \
                          support and are advertised as whole GPUs"
                    .into()
            }]
        );
    }

    #[test]
    fn none_with_mig_enabled_warns() {
        let plan = plan(
            &node(vec![gpu(0, true, &["1g.5gb"])]),
            &with_strategy(MigStrategy::None),
        );
        assert_eq!(plan.diagnostics.len(), 1);
        assert!(
            plan.diagnostics[0]
                .message
                .contains("has MIG enabled but migStrategy is none")
        );
    }

    #[test]
    fn single_with_mixed_layouts_keeps_the_largest_consistent_group() {
        let gpus = vec![
            gpu(0, true, &["1g.5gb"; 7]),
            gpu(1, true, &["1g.5gb"; 7]),
            gpu(2, true, BALANCED),
            gpu(3, false, &[]),
        ];
        let plan = plan(&node(gpus), &with_strategy(MigStrategy::Single));
        assert_eq!(counts(&plan), vec![("nvidia.com/gpu", 16)]);
        let errors: Vec<_> = plan.errors().collect();
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0]
                .message
                .contains("advertising the 16 × MIG 1g.5gb devices as nvidia.com/gpu and leaving out 1 × MIG 2g.10gb, 1 × MIG 3g.20gb, 1 × full GPU (NVIDIA A100-SXM4-40GB)"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn mig_enabled_gpu_without_instances_is_reported_not_fatal() {
        for strategy in [MigStrategy::Single, MigStrategy::Mixed] {
            let plan = plan(
                &node(vec![gpu(0, true, &[]), gpu(1, true, &["1g.5gb"; 7])]),
                &with_strategy(strategy),
            );
            assert_eq!(
                plan.resources
                    .iter()
                    .map(|r| r.devices.len())
                    .sum::<usize>(),
                7
            );
            let errors: Vec<_> = plan.errors().collect();
            assert_eq!(errors.len(), 1, "{strategy}");
            assert!(
                errors[0]
                    .message
                    .starts_with("device 0 has no MIG devices configured")
            );
        }
    }

    #[test]
    fn compute_instance_profiles_need_a_pattern() {
        let plan = plan(
            &node(vec![gpu(0, true, &["1c.3g.20gb", "3g.20gb"])]),
            &with_strategy(MigStrategy::Mixed),
        );
        assert_eq!(counts(&plan), vec![("nvidia.com/mig-3g.20gb", 1)]);
        assert!(plan.errors().next().is_some_and(|d| {
            d.message
                .starts_with("MIG profile '1c.3g.20gb' does not match any resource patterns")
        }));
    }

    #[test]
    fn custom_resource_patterns_are_honoured() {
        let mut config = with_strategy(MigStrategy::Mixed);
        config.resources = Some(ResourcePatterns {
            gpus: vec![],
            mig: vec![
                ResourcePattern {
                    pattern: "1g.*".into(),
                    name: ResourceName::new_unchecked("example.com/small"),
                },
                ResourcePattern {
                    pattern: "*".into(),
                    name: ResourceName::new_unchecked("example.com/large"),
                },
            ],
        });
        let plan = plan(&node(vec![gpu(0, true, BALANCED)]), &config);
        assert_eq!(
            counts(&plan),
            vec![("example.com/large", 2), ("example.com/small", 2)]
        );
    }

    #[test]
    fn time_slicing_replicates_every_device() {
        let gpus: Vec<Gpu> = (0..4).map(|i| gpu(i, false, &[])).collect();
        let mut config = Config::default();
        time_sliced(&mut config, "nvidia.com/gpu", 4);
        let plan = plan(&node(gpus.clone()), &config);
        assert_eq!(counts(&plan), vec![("nvidia.com/gpu", 16)]);
        let resource = &plan.resources[0];
        assert_eq!(resource.devices[0].id, "GPU-0::0");
        assert_eq!(resource.devices[5].id, "GPU-1::1");
        assert_eq!(resource.gpu_count(), 4);
        assert_eq!(
            resource.sharing.map(|s| s.replicas),
            Some(4),
            "sharing info is kept"
        );

        config.sharing.time_slicing.rename_by_default = true;
        let plan = super::plan(&node(gpus), &config);
        assert_eq!(counts(&plan), vec![("nvidia.com/gpu.shared", 16)]);
    }

    #[test]
    fn rename_and_devices_are_honoured() {
        let gpus: Vec<Gpu> = (0..4).map(|i| gpu(i, false, &[])).collect();
        let cases: Vec<(DeviceSelection, Vec<(&str, usize)>)> = vec![
            (
                DeviceSelection::Count(2),
                vec![("nvidia.com/gpu", 2), ("nvidia.com/shared-gpu", 8)],
            ),
            (
                DeviceSelection::List(vec![
                    DeviceRef::Index(3),
                    DeviceRef::Uuid("GPU-1".into()),
                    DeviceRef::Index(3),
                ]),
                vec![("nvidia.com/gpu", 2), ("nvidia.com/shared-gpu", 8)],
            ),
            (DeviceSelection::All, vec![("nvidia.com/shared-gpu", 16)]),
        ];
        for (devices, expected) in cases {
            let mut config = Config::default();
            let entry = time_sliced(&mut config, "nvidia.com/gpu", 4);
            entry.rename = Some(ResourceName::new_unchecked("nvidia.com/shared-gpu"));
            entry.devices = devices.clone();
            let plan = plan(&node(gpus.clone()), &config);
            assert_eq!(counts(&plan), expected, "{devices:?}");
        }
    }

    /// A rename onto a resource of other devices merged different hardware
    /// (a 10 GB request was handed a 5 GB slice), and two entries for one
    /// resource listed the same ids twice: both are refused, naming the
    /// entries.
    #[test]
    fn sharing_entries_that_collide_are_refused() {
        let balanced = node((0..8).map(|i| gpu(i, true, BALANCED)).collect());
        let mut config = with_strategy(MigStrategy::Mixed);
        time_sliced(&mut config, "nvidia.com/mig-1g.5gb", 4).rename =
            Some(ResourceName::new_unchecked("nvidia.com/mig-2g.10gb"));
        let refused = plan(&balanced, &config).refusal().expect("refused");
        assert_eq!(
            refused,
            "sharing.timeSlicing.resources[0]: 'nvidia.com/mig-2g.10gb' (the shared name of \
             'nvidia.com/mig-1g.5gb') is already a resource of this node's other devices: a pod \
             asking for 'nvidia.com/mig-2g.10gb' could be handed a replica of 'nvidia.com/mig-1g.5gb'; \
             choose another rename"
        );

        let mut config = Config::default();
        time_sliced(&mut config, "nvidia.com/gpu", 4);
        time_sliced(&mut config, "nvidia.com/gpu", 2);
        let plain = node((0..2).map(|i| gpu(i, false, &[])).collect());
        let plan_two = plan(&plain, &config);
        assert_eq!(
            plan_two.refusal().expect("refused"),
            "sharing.timeSlicing.resources[1] shares 'nvidia.com/gpu' as 'nvidia.com/gpu', and so \
             does sharing.timeSlicing.resources[0]: one resource would mix their replicas (or list \
             the same ids twice); give each entry its own name"
        );
        let ids: Vec<&str> = plan_two.resources[0]
            .devices
            .iter()
            .map(|d| d.id.as_str())
            .collect();
        let unique: BTreeSet<&&str> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "no id listed twice");

        // The same devices under two names: refused too.
        let mut config = Config::default();
        time_sliced(&mut config, "nvidia.com/gpu", 4).rename =
            Some(ResourceName::new_unchecked("nvidia.com/gpu-a"));
        time_sliced(&mut config, "nvidia.com/gpu", 2).rename =
            Some(ResourceName::new_unchecked("nvidia.com/gpu-b"));
        let refused = plan(&plain, &config).refusal().expect("refused");
        assert!(
            refused.contains("device GPU-0 of 'nvidia.com/gpu' is already shared"),
            "{refused}"
        );

        // Distinct renames of distinct devices stay fine.
        let mut config = Config::default();
        let a = time_sliced(&mut config, "nvidia.com/gpu", 4);
        a.rename = Some(ResourceName::new_unchecked("nvidia.com/gpu-a"));
        a.devices = DeviceSelection::List(vec![DeviceRef::Index(0)]);
        let b = time_sliced(&mut config, "nvidia.com/gpu", 2);
        b.rename = Some(ResourceName::new_unchecked("nvidia.com/gpu-b"));
        b.devices = DeviceSelection::List(vec![DeviceRef::Index(1)]);
        let fine = plan(&plain, &config);
        assert_eq!(fine.refusal(), None);
        assert_eq!(
            counts(&fine),
            vec![("nvidia.com/gpu-a", 4), ("nvidia.com/gpu-b", 2)]
        );
    }

    /// 80,000 replica ids (a 5.1 MB message) were advertised, and every
    /// kubelet refused each list: the plan refuses it, with the size and the
    /// largest replica count that fits, computed from the encoding.
    #[test]
    fn device_lists_beyond_the_kubelets_limit_are_refused() {
        // Real UUIDs: `GPU-` and 36 characters.
        let eight = node(
            (0..8)
                .map(|i| Gpu {
                    uuid: format!("GPU-{i:08x}-0000-4000-8000-{i:012x}"),
                    ..gpu(i, false, &[])
                })
                .collect(),
        );
        let mut config = Config::default();
        time_sliced(&mut config, "nvidia.com/gpu", 10_000);
        let refused = plan(&eight, &config).refusal().expect("refused");
        let fits: u32 = refused
            .rsplit_once("at most ")
            .and_then(|(_, rest)| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .expect("a count that fits");
        assert!(
            refused.starts_with(
                "resource 'nvidia.com/gpu': its device list (80000 devices) encodes to "
            ),
            "{refused}"
        );
        assert!(
            refused.contains("more than the 4194304 bytes a kubelet accepts"),
            "{refused}"
        );
        // The count is exact: it fits, one more does not.
        let mut config = Config::default();
        time_sliced(&mut config, "nvidia.com/gpu", fits);
        let at = plan(&eight, &config);
        assert_eq!(at.refusal(), None);
        assert!(list_and_watch_len(&at.resources[0]) <= KUBELET_MAX_MESSAGE);
        let mut config = Config::default();
        time_sliced(&mut config, "nvidia.com/gpu", fits + 1);
        assert!(plan(&eight, &config).refusal().is_some());
        // A billion replicas is refused before any id is built (it used to
        // grow by gigabytes and abort the daemon on a reload).
        let mut config = Config::default();
        time_sliced(&mut config, "nvidia.com/gpu", 1_000_000_000);
        let huge = plan(&eight, &config);
        // Nothing was built for the entry (its GPUs stay whole in the plan,
        // which is refused as a whole).
        assert_eq!(counts(&huge), vec![("nvidia.com/gpu", 8)]);
        let refused = huge.refusal().expect("refused");
        assert!(
            refused.contains("(8000000000 devices)")
                && refused.contains(&format!("at most {fits} replicas")),
            "{refused}"
        );
    }

    #[test]
    fn mig_devices_can_be_selected_by_index_and_legacy_uuid() {
        let mut config = with_strategy(MigStrategy::Mixed);
        let entry = time_sliced(&mut config, "nvidia.com/mig-1g.5gb", 2);
        entry.devices = DeviceSelection::List(vec![
            DeviceRef::MigIndex(0, 1),
            DeviceRef::Uuid("MIG-GPU-1/1/0".into()),
        ]);
        let plan = plan(
            &node(vec![gpu(0, true, BALANCED), gpu(1, true, BALANCED)]),
            &config,
        );
        let shared = plan.resource("nvidia.com/mig-1g.5gb").expect("resource");
        let ids: Vec<&str> = shared.devices.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(
            ids,
            vec![
                "MIG-0-0",
                "MIG-0-1::0",
                "MIG-0-1::1",
                "MIG-1-0::0",
                "MIG-1-0::1",
                "MIG-1-1"
            ]
        );
    }

    #[test]
    fn sharing_an_absent_resource_warns() {
        let mut config = Config::default();
        time_sliced(&mut config, "nvidia.com/mig-1g.5gb", 2);
        let plan = plan(&node(vec![gpu(0, false, &[])]), &config);
        assert_eq!(counts(&plan), vec![("nvidia.com/gpu", 1)]);
        assert_eq!(
            plan.diagnostics[0].message,
            "sharing.timeSlicing.resources[0]: 'nvidia.com/mig-1g.5gb' matches no resource this node advertises, so nothing is shared by this entry"
        );
    }

    #[test]
    fn mps_on_mig_is_refused_per_resource() {
        let mut config = with_strategy(MigStrategy::Mixed);
        config.sharing.mps = Some(ReplicatedResources {
            rename_by_default: false,
            fail_requests_greater_than_one: true,
            resources: vec![ReplicatedResource::every("nvidia.com/mig-1g.5gb", 2)],
        });
        let plan = plan(&node(vec![gpu(0, true, BALANCED)]), &config);
        assert_eq!(
            plan.resource("nvidia.com/mig-1g.5gb")
                .map(|r| r.devices.len()),
            Some(2)
        );
        assert!(plan.errors().any(|d| {
            d.message
                .contains("sharing using MPS is not supported for MIG devices")
        }));
    }

    #[test]
    fn device_lookup_by_id() {
        let mut config = Config::default();
        time_sliced(&mut config, "nvidia.com/gpu", 2);
        let plan = plan(&node(vec![gpu(0, false, &[])]), &config);
        let resource = &plan.resources[0];
        assert_eq!(
            resource.device("GPU-0::1").map(|d| d.replica),
            Some(Some(1))
        );
        assert!(resource.device("GPU-0").is_none());
    }
}
