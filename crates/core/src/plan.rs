//! The planner: inventory + configuration → the resources a node advertises.
//!
//! This is a pure function. It implements NVIDIA's `migStrategy` and
//! time-slicing semantics exactly, and goes further where NVIDIA ignores the
//! configuration (`rename`, per-resource `devices`, custom `resources`
//! patterns). Where NVIDIA's plugin exits on a misconfiguration (mixed MIG
//! layouts under `single`, a MIG-enabled GPU without instances), the planner
//! advertises what is consistent and reports the rest as [`Diagnostic`]s.

use rustc_hash::FxHashMap;
use std::collections::{BTreeMap, HashMap};
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
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
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
            .filter(|d| d.severity == Severity::Error)
    }
}

const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// Computes what the node advertises. Never fails: problems become diagnostics.
pub fn plan(inventory: &Inventory, config: &Config) -> Plan {
    let mut diagnostics = Vec::new();
    let base = base_devices(inventory, config, &mut diagnostics);
    let resources = apply_sharing(base, config, &mut diagnostics);
    Plan {
        resources,
        diagnostics,
    }
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
                diagnostics.push(error(format!(
                    "{path}: sharing using MPS is not supported for MIG devices; '{}' is advertised without sharing",
                    entry.name
                )));
                continue;
            }
            let selected = select(&base, &members, &entry.devices, &path, diagnostics);
            if selected.is_empty() {
                continue;
            }
            let name = shared_name(entry.rename.as_ref(), &entry.name, shared);
            if selected.len() < members.len() && name == entry.name {
                diagnostics.push(warning(format!(
                    "{path}: only {} of the {} '{}' devices are shared, and replicas keep the same name, \
                     so one resource mixes whole devices and replicas; set 'rename' to keep them apart",
                    selected.len(),
                    members.len(),
                    entry.name
                )));
            }
            let info = SharingInfo {
                strategy,
                replicas: entry.replicas,
                fail_requests_greater_than_one: shared.fail_requests_greater_than_one,
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
                })
                .collect(),
            nvlinks: vec![],
            pcie: vec![],
        }
    }

    fn node(gpus: Vec<Gpu>) -> Inventory {
        Inventory { gpus }
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
