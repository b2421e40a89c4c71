//! Simulated backend: builds an inventory from a catalog instance or a topology file.
//!
//! Everything is deterministic: the same instance or file always yields the same
//! UUIDs, PCI bus ids, NUMA nodes, NVLinks and MIG devices, so tests and demos
//! can name devices ahead of time.
//!
//! # From an instance preset
//!
//! [`from_instance`]`("p4d.24xlarge", Some("all-balanced"))` gives the 8 A100-40GB
//! GPUs of a p4d with 2 × 1g.5gb, 1 × 2g.10gb and 1 × 3g.20gb each. Layouts are the
//! mig-parted names of [`catalog::layout`] (`all-disabled`, `all-enabled`,
//! `all-<profile>`, `all-balanced`) or a custom `profile=count` list.
//!
//! # Topology file
//!
//! YAML with camelCase keys; unknown keys are errors. Either start from an
//! instance preset, or list GPUs (not both):
//!
//! ```yaml
//! # Either start from an instance preset...
//! instance: p4d.24xlarge
//! migLayout: all-balanced        # optional, applies to every GPU
//! nvlink: true                   # optional; default: the instance's (false for a gpus list)
//! uuidSeed: node-a               # optional; changes every UUID (default: instance name, or "topology")
//! ```
//!
//! ```yaml
//! # ...or list GPUs; GPU indices follow the list, entries expand by count.
//! migLayout: all-disabled        # optional default for entries that set no migLayout/migDevices/migEnabled
//! gpus:
//!   - model: A100-40GB           # catalog key or NVML product name
//!     count: 4                   # optional, default 1
//!     migLayout: all-1g.5gb      # optional per-entry layout
//!     numaNode: 0                # optional; default: first half of 8+ GPUs on 0, rest on 1
//!   - model: NVIDIA A100-SXM4-40GB
//!     uuid: GPU-0b5e1c2a-0000-4000-8000-000000000001   # optional (only with count 1)
//!     migDevices: [1g.5gb, 1g.5gb, 2g.10gb, 1c.3g.20gb] # optional explicit instances
//!   - model: A100-40GB
//!     migEnabled: true           # MIG on, no instances
//! ```
//!
//! `migDevices` takes catalog profiles (`+` may be written `.`), compute-instance
//! profiles smaller than their GPU instance (`1c.3g.20gb`, one GPU instance each)
//! and profiles the catalog does not know, as long as they parse as
//! `<G>g.<N>gb` or `<C>c.<G>g.<N>gb` (memory `N` GiB, placement derived from the
//! slice structure); all must fit on the GPU.
//!
//! MIG devices get GPU-instance ids as the driver numbers placements
//! ([`catalog::gpu_instance_id`]: 7 × 1g.5gb on an A100 are GI 7..13),
//! compute-instance id 0, and handle indices in GI-id order.

use serde::Deserialize;

use super::catalog::{self, CatalogError, GpuModel, MigGeometry, MigLayout, SliceShape};
use super::{
    ComputeCapability, Gpu, Inventory, MigAttributes, MigDevice, MigEngines, NodeFacts, NvLinkPeer,
    PcieLevel, PciePeer,
};

/// A topology file (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Topology {
    /// Instance preset (`p4d.24xlarge`); excludes `gpus`.
    pub instance: Option<String>,
    /// Layout for every GPU (the default for `gpus` entries without their own).
    pub mig_layout: Option<String>,
    /// GPUs, in index order; excludes `instance`.
    pub gpus: Option<Vec<TopologyGpu>>,
    /// All-to-all NVLink between the GPUs.
    pub nvlink: Option<bool>,
    /// Seed of the generated UUIDs.
    pub uuid_seed: Option<String>,
}

/// One `gpus` entry of a topology file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TopologyGpu {
    /// Catalog key (`A100-40GB`) or NVML product name.
    pub model: String,
    /// Number of identical GPUs (default 1).
    pub count: Option<u32>,
    pub mig_layout: Option<String>,
    pub numa_node: Option<i64>,
    /// `GPU-...`; only with `count` 1.
    pub uuid: Option<String>,
    /// Explicit MIG devices; excludes `migLayout`.
    pub mig_devices: Option<Vec<String>>,
    /// `true` without devices or layout: MIG on, no instances.
    pub mig_enabled: Option<bool>,
}

/// Why a simulated inventory could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SimulationError {
    #[error(
        "unknown instance type '{name}'; known instance types: {known}; or give a topology file (.yaml) listing the GPUs"
    )]
    UnknownInstance { name: String, known: String },
    #[error(
        "{file}: {key}: unknown GPU model '{model}'; known models (catalog key or NVML product name): {known}"
    )]
    UnknownModel {
        file: String,
        key: String,
        model: String,
        known: String,
    },
    #[error(
        "cannot read topology file {path}: {}",
        crate::messages::io_error(error)
    )]
    Read {
        path: String,
        #[source]
        error: std::io::Error,
    },
    /// The file is not YAML of the topology shape; `message` (from the YAML
    /// parser) has the line and column and, for unknown keys, the valid ones.
    #[error("{file}: invalid topology file: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: {key}: {message}")]
    Invalid {
        file: String,
        key: String,
        message: String,
    },
    /// A MIG layout that does not apply; the message names the GPU.
    #[error(transparent)]
    Layout(Box<CatalogError>),
}

impl From<CatalogError> for SimulationError {
    fn from(error: CatalogError) -> Self {
        SimulationError::Layout(Box::new(error))
    }
}

fn invalid(file: &str, key: impl Into<String>, message: impl Into<String>) -> SimulationError {
    SimulationError::Invalid {
        file: file.to_string(),
        key: key.into(),
        message: message.into(),
    }
}

fn known_instances() -> String {
    catalog::instances()
        .iter()
        .map(|i| i.name)
        .collect::<Vec<_>>()
        .join(", ")
}

fn unknown_instance(name: &str) -> SimulationError {
    SimulationError::UnknownInstance {
        name: name.to_string(),
        known: known_instances(),
    }
}

/// The GPUs of an instance preset, with `mig_layout` (a [`catalog::layout`]
/// name) on every GPU; `None` or `all-disabled` leaves MIG off.
pub fn from_instance(
    instance: &str,
    mig_layout: Option<&str>,
) -> Result<Inventory, SimulationError> {
    let topology = Topology {
        instance: Some(instance.to_string()),
        mig_layout: mig_layout.map(str::to_string),
        ..Topology::default()
    };
    build_inner(&topology, None)
}

/// Parses a topology file's text; `source` names it in errors.
pub fn from_topology_str(text: &str, source: &str) -> Result<Inventory, SimulationError> {
    build(&parse_topology(text, source)?, source)
}

/// Whether a `--simulate` argument names a topology file rather than an
/// instance preset, by its name alone: a YAML suffix or a path (no instance
/// type has a `/`). The shell also takes any existing file.
pub fn looks_like_topology_file(spec: &str) -> bool {
    let lower = spec.to_ascii_lowercase();
    lower.ends_with(".yaml") || lower.ends_with(".yml") || spec.contains('/')
}

/// Builds a topology file's text; `source` names it in errors.
/// `mig_layout` (the command line's MIG config) replaces every layout,
/// explicit device list and `migEnabled` of the file.
pub fn from_topology_str_with_layout(
    text: &str,
    source: &str,
    mig_layout: Option<&str>,
) -> Result<Inventory, SimulationError> {
    let mut topology = parse_topology(text, source)?;
    if let Some(layout) = mig_layout {
        topology.mig_layout = Some(layout.to_string());
        for gpu in topology.gpus.iter_mut().flatten() {
            gpu.mig_layout = Some(layout.to_string());
            gpu.mig_devices = None;
            gpu.mig_enabled = None;
        }
    }
    build(&topology, source)
}

/// GPUs a simulated node may have: checked before any is built, so a typo
/// (`count: 4294967295`) is an error, not an allocation failure.
pub const MAX_GPUS_PER_NODE: usize = 64;

/// Builds a parsed topology; `source` names it in errors.
pub fn build(topology: &Topology, source: &str) -> Result<Inventory, SimulationError> {
    build_inner(topology, Some(source))
}

fn parse_topology(text: &str, source: &str) -> Result<Topology, SimulationError> {
    serde_saphyr::from_str(text).map_err(|e| SimulationError::Parse {
        file: source.to_string(),
        message: crate::messages::yaml_error(&e),
    })
}

/// One GPU to build, after expanding instances and counts.
struct Slot<'t> {
    model: &'static GpuModel,
    layout: Option<&'t str>,
    devices: Option<&'t [String]>,
    enabled: Option<bool>,
    numa_node: Option<i64>,
    uuid: Option<&'t str>,
    /// Where the GPU is, for messages: `p4d.24xlarge`, `GPU 3 (gpus[1] in topo.yaml)`.
    context: String,
    /// Topology key of its settings: `migLayout`, `gpus[1]`.
    key: String,
}

fn build_inner(topology: &Topology, file: Option<&str>) -> Result<Inventory, SimulationError> {
    let src = file.unwrap_or("command line");
    let mut slots: Vec<Slot<'_>> = Vec::new();
    let (nvlink, seed, numa_nodes) = match (&topology.instance, &topology.gpus) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                src,
                "instance",
                "give either 'instance' or 'gpus', not both",
            ));
        }
        (None, None) => {
            return Err(invalid(
                src,
                "gpus",
                "the topology names no GPUs; add 'instance: <type>' (e.g. p4d.24xlarge) or a 'gpus:' list",
            ));
        }
        (Some(name), None) => {
            let inst = match (catalog::instance(name), file) {
                (Some(inst), _) => inst,
                (None, None) => return Err(unknown_instance(name)),
                (None, Some(f)) => {
                    return Err(invalid(f, "instance", unknown_instance(name).to_string()));
                }
            };
            let model = inst.gpu_model().ok_or_else(|| {
                invalid(
                    src,
                    "instance",
                    format!("{} names unknown GPU model {}", inst.name, inst.model),
                )
            })?;
            let context = match file {
                None => inst.name.to_string(),
                Some(f) => format!("{} (in {f})", inst.name),
            };
            for _ in 0..inst.gpus {
                slots.push(Slot {
                    model,
                    layout: topology.mig_layout.as_deref(),
                    devices: None,
                    enabled: None,
                    numa_node: None,
                    uuid: None,
                    context: context.clone(),
                    key: "migLayout".to_string(),
                });
            }
            let seed = topology.uuid_seed.as_deref().unwrap_or(inst.name);
            (
                topology.nvlink.unwrap_or(inst.nvlink),
                seed,
                inst.numa_nodes,
            )
        }
        (None, Some(gpus)) => {
            if gpus.is_empty() {
                return Err(invalid(
                    src,
                    "gpus",
                    "the list is empty; add at least one entry such as '- model: A100-40GB'",
                ));
            }
            for (e, entry) in gpus.iter().enumerate() {
                let key = format!("gpus[{e}]");
                let model =
                    catalog::model(&entry.model).ok_or_else(|| SimulationError::UnknownModel {
                        file: src.to_string(),
                        key: format!("{key}.model"),
                        model: entry.model.clone(),
                        known: catalog::models()
                            .iter()
                            .map(|m| m.key)
                            .collect::<Vec<_>>()
                            .join(", "),
                    })?;
                let count = entry.count.unwrap_or(1);
                if count == 0 {
                    return Err(invalid(
                        src,
                        format!("{key}.count"),
                        "count must be at least 1; remove the entry instead",
                    ));
                }
                if slots.len().saturating_add(count as usize) > MAX_GPUS_PER_NODE {
                    return Err(invalid(
                        src,
                        format!("{key}.count"),
                        format!(
                            "a simulated node holds at most {MAX_GPUS_PER_NODE} GPUs (the largest \
                             GPU instances have 16); this entry brings it to {}",
                            slots.len() as u64 + u64::from(count)
                        ),
                    ));
                }
                if entry.uuid.is_some() && count > 1 {
                    return Err(invalid(
                        src,
                        format!("{key}.uuid"),
                        format!(
                            "a uuid names one GPU but count is {count}; split the entry or drop the uuid"
                        ),
                    ));
                }
                for _ in 0..count {
                    slots.push(Slot {
                        model,
                        // The top-level layout is the default of entries
                        // that say nothing about MIG.
                        layout: match (&entry.mig_layout, &entry.mig_devices, entry.mig_enabled) {
                            (Some(own), _, _) => Some(own.as_str()),
                            (None, None, None) => topology.mig_layout.as_deref(),
                            _ => None,
                        },
                        devices: entry.mig_devices.as_deref(),
                        enabled: entry.mig_enabled,
                        numa_node: entry.numa_node,
                        uuid: entry.uuid.as_deref(),
                        context: format!("GPU {} ({key} in {src})", slots.len()),
                        key: key.clone(),
                    });
                }
            }
            let seed = topology.uuid_seed.as_deref().unwrap_or("topology");
            let n = slots.len();
            (
                topology.nvlink.unwrap_or(false),
                seed,
                if n >= 8 { 2 } else { 1 },
            )
        }
    };

    let n = slots.len() as u32;
    let mut gpus = Vec::with_capacity(slots.len());
    for (i, slot) in slots.iter().enumerate() {
        let index = i as u32;
        let uuid = match slot.uuid {
            Some(u) if u.starts_with("GPU-") => u.to_string(),
            Some(u) => {
                return Err(invalid(
                    src,
                    format!("{}.uuid", slot.key),
                    format!("'{u}' is not a GPU UUID; write it as GPU-<uuid>"),
                ));
            }
            None => format!("GPU-{}", stable_uuid(&format!("{seed}/gpu/{index}"))),
        };
        if let Some(other) = gpus.iter().find(|g: &&Gpu| g.uuid == uuid) {
            return Err(invalid(
                src,
                format!("{}.uuid", slot.key),
                format!(
                    "{uuid} is already GPU {}; UUIDs must be unique",
                    other.index
                ),
            ));
        }
        let instances = mig_instances(slot, src)?;
        let mig_devices = match &instances {
            Some(list) => place_devices(slot, list, &uuid, src)?,
            None => Vec::new(),
        };
        let numa_node = slot
            .numa_node
            .unwrap_or_else(|| i64::from(index * numa_nodes.max(1) / n.max(1)));
        gpus.push(Gpu {
            index,
            model: slot.model.product_name.to_string(),
            uuid,
            memory_mib: slot.model.memory_mib,
            pci_bus_id: pci_bus_id(index, n),
            pci_device_id: slot.model.pci_device_id,
            numa_node: Some(numa_node),
            minor: index,
            mig_capable: slot.model.mig_capable(),
            mig_enabled: instances.is_some(),
            mig_devices,
            nvlinks: Vec::new(),
            pcie: Vec::new(),
            compute_capability: catalog::compute_capability(slot.model.key)
                .map(|(major, minor)| ComputeCapability { major, minor }),
            // The catalog has no PCI class: gpu.mode is left out on simulated nodes.
            pci_class: None,
        });
    }
    if nvlink {
        connect_nvlinks(&mut gpus, &slots, src)?;
    }
    connect_pcie(&mut gpus);
    // A simulated node has no driver, so no driver or CUDA version. Its
    // machine type is known only for an instance preset: on EC2 (Nitro) the
    // DMI product name GFD reads is the instance type.
    let machine = topology
        .instance
        .as_deref()
        .and_then(catalog::instance)
        .map(|inst| inst.name.to_string());
    Ok(Inventory {
        gpus,
        node: NodeFacts {
            machine,
            ..NodeFacts::default()
        },
    })
}

/// PCIe paths as on AWS's multi-GPU instances: GPUs in pairs behind one PCIe
/// switch, then through the CPU within a NUMA node, then across nodes.
fn connect_pcie(gpus: &mut [Gpu]) {
    let places: Vec<(u32, Option<i64>)> = gpus.iter().map(|g| (g.index, g.numa_node)).collect();
    for gpu in gpus.iter_mut() {
        gpu.pcie = places
            .iter()
            .filter(|(index, _)| *index != gpu.index)
            .map(|&(peer_index, numa)| PciePeer {
                peer_index,
                level: if peer_index / 2 == gpu.index / 2 {
                    PcieLevel::SingleSwitch
                } else if numa == gpu.numa_node {
                    PcieLevel::Node
                } else {
                    PcieLevel::System
                },
            })
            .collect();
    }
}

/// One MIG device to place.
struct SimInstance {
    /// Profile as the MIG device reports it (`1g.5gb`, `1c.3g.20gb`).
    name: String,
    memory_mib: u64,
    starts: Vec<u32>,
    size: u32,
    compute: u32,
    /// Catalog GPU-instance profile and its maximum count, when known.
    limit: Option<(&'static str, u32)>,
}

impl SimInstance {
    fn from_catalog(p: &'static catalog::MigProfile, ci_slices: Option<u32>) -> Self {
        let name = match ci_slices {
            Some(c) if c < p.compute_slices => format!("{c}c.{}", p.name),
            _ => p.name.to_string(),
        };
        SimInstance {
            name,
            memory_mib: p.memory_mib,
            starts: p.placement_starts.to_vec(),
            size: p.placement_size,
            compute: p.compute_slices,
            limit: Some((p.name, p.max_count)),
        }
    }
}

/// `None`: MIG off; `Some(list)`: MIG on with these instances.
fn mig_instances(slot: &Slot<'_>, src: &str) -> Result<Option<Vec<SimInstance>>, SimulationError> {
    let model = slot.model;
    let no_mig = |what: &str| {
        invalid(
            src,
            format!("{}.{what}", slot.key),
            format!(
                "{} is {} (no MIG support), so it cannot have {what}; remove it or use a MIG-capable model ({} GPUs)",
                slot.context,
                model.product_name,
                catalog::mig_families()
            ),
        )
    };
    match (slot.devices, slot.layout) {
        (Some(_), Some(_)) => Err(invalid(
            src,
            &slot.key,
            "give either migLayout or migDevices, not both",
        )),
        (Some(devices), None) => {
            let Some(geo) = &model.mig else {
                return Err(no_mig("migDevices"));
            };
            if slot.enabled == Some(false) && !devices.is_empty() {
                return Err(invalid(
                    src,
                    format!("{}.migEnabled", slot.key),
                    "migEnabled: false contradicts migDevices; drop one of them",
                ));
            }
            devices
                .iter()
                .enumerate()
                .map(|(j, d)| {
                    resolve_profile(model, geo, d).map_err(|e| {
                        invalid(src, format!("{}.migDevices[{j}]", slot.key), e.to_string())
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some)
        }
        (None, Some(name)) => {
            let layout =
                catalog::layout(model, name).map_err(|e| e.in_context(slot.context.clone()))?;
            if let Some(enabled) = slot.enabled
                && enabled != layout.mig_enabled()
            {
                return Err(invalid(
                    src,
                    format!("{}.migEnabled", slot.key),
                    format!(
                        "migEnabled: {enabled} contradicts migLayout '{name}'; drop one of them"
                    ),
                ));
            }
            Ok(match layout {
                MigLayout::Disabled => None,
                MigLayout::EnabledEmpty => Some(Vec::new()),
                MigLayout::Instances(profiles) => Some(
                    profiles
                        .into_iter()
                        .map(|p| SimInstance::from_catalog(p, None))
                        .collect(),
                ),
            })
        }
        (None, None) => match slot.enabled {
            Some(true) if model.mig_capable() => Ok(Some(Vec::new())),
            Some(true) => Err(no_mig("migEnabled")),
            _ => Ok(None),
        },
    }
}

/// `(ci, gi, gb, suffix)` of `<G>g.<N>gb<suffix>` or `<C>c.<G>g.<N>gb<suffix>`.
fn parse_profile(name: &str) -> Option<(Option<u32>, u32, u64, &str)> {
    let split = name.find(['+', '-']).unwrap_or(name.len());
    let (base, suffix) = name.split_at(split);
    let parts: Vec<&str> = base.split('.').collect();
    let (ci, gi, gb) = match parts.as_slice() {
        [gi, gb] => (None, *gi, *gb),
        [ci, gi, gb] => (Some(ci.strip_suffix('c')?.parse().ok()?), *gi, *gb),
        _ => return None,
    };
    let gi: u32 = gi.strip_suffix('g')?.parse().ok()?;
    let gb: u64 = gb.strip_suffix("gb")?.parse().ok()?;
    Some((ci, gi, gb, suffix))
}

/// Why a `migDevices` entry of a topology file is not an instance its
/// GPU can hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum ProfileError {
    #[error(
        "'{name}' is not a MIG profile of {product} ({profiles}) and does not read as <G>g.<N>gb or <C>c.<G>g.<N>gb"
    )]
    Unreadable {
        name: String,
        product: &'static str,
        profiles: String,
    },
    #[error(
        "'{name}': a profile needs at least one slice and its compute instance (<C>c) no more slices than its GPU instance (<G>g)"
    )]
    NoSlices { name: String },
    #[error(
        "'{name}' needs more than the {compute_slices} compute / {memory_slices} memory slices of {product}"
    )]
    TooLarge {
        name: String,
        compute_slices: u32,
        memory_slices: u32,
        product: &'static str,
    },
}

fn resolve_profile(
    model: &GpuModel,
    geo: &MigGeometry,
    name: &str,
) -> Result<SimInstance, ProfileError> {
    let name = name.trim();
    if let Some(p) = geo.profile(name) {
        return Ok(SimInstance::from_catalog(p, None));
    }
    let profiles = geo
        .profiles
        .iter()
        .map(|p| p.name)
        .collect::<Vec<_>>()
        .join(", ");
    let Some((ci, gi, gb, suffix)) = parse_profile(name) else {
        return Err(ProfileError::Unreadable {
            name: name.to_owned(),
            product: model.product_name,
            profiles,
        });
    };
    if gi == 0 || ci.is_some_and(|c| c == 0 || c > gi) {
        return Err(ProfileError::NoSlices {
            name: name.to_owned(),
        });
    }
    if let Some(p) = geo.profile(&format!("{gi}g.{gb}gb{suffix}")) {
        return Ok(SimInstance::from_catalog(p, ci));
    }
    // Not in the catalog: derive the footprint from the slice structure.
    let memory_mib = gb * 1024;
    let slice_mib = (model.memory_mib / u64::from(geo.memory_slices)).max(1);
    let by_memory = u32::try_from(memory_mib.div_ceil(slice_mib)).unwrap_or(u32::MAX);
    let size = gi
        .max(by_memory)
        .checked_next_power_of_two()
        .unwrap_or(u32::MAX);
    if gi > geo.compute_slices || size > geo.memory_slices {
        return Err(ProfileError::TooLarge {
            name: name.to_owned(),
            compute_slices: geo.compute_slices,
            memory_slices: geo.memory_slices,
            product: model.product_name,
        });
    }
    let starts = (0..geo.memory_slices)
        .step_by(size as usize)
        .filter(|s| s + gi <= geo.compute_slices)
        .collect();
    Ok(SimInstance {
        name: name.to_string(),
        memory_mib,
        starts,
        size,
        compute: gi,
        limit: None,
    })
}

fn place_devices(
    slot: &Slot<'_>,
    instances: &[SimInstance],
    gpu_uuid: &str,
    src: &str,
) -> Result<Vec<MigDevice>, SimulationError> {
    if instances.is_empty() {
        return Ok(Vec::new());
    }
    let Some(geo) = &slot.model.mig else {
        return Ok(Vec::new());
    };
    let key = format!("{}.migDevices", slot.key);
    let names = || {
        instances
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for inst in instances {
        if let Some((profile, max)) = inst.limit {
            let count = instances
                .iter()
                .filter(|i| i.limit.is_some_and(|(p, _)| p == profile))
                .count();
            if count > max as usize {
                return Err(invalid(
                    src,
                    key,
                    format!(
                        "{count} × {profile} on {} ({}), which supports at most {max}; lower the count",
                        slot.context, slot.model.product_name
                    ),
                ));
            }
        }
    }
    let shapes: Vec<SliceShape<'_>> = instances
        .iter()
        .map(|i| SliceShape {
            starts: &i.starts,
            size: i.size,
            compute: i.compute,
        })
        .collect();
    let starts = catalog::fit(geo.memory_slices, geo.compute_slices, &shapes).ok_or_else(|| {
        invalid(
            src,
            &key,
            format!(
                "MIG devices [{}] do not fit on {} ({}: {} compute / {} memory slices); remove or shrink some",
                names(),
                slot.context,
                slot.model.product_name,
                geo.compute_slices,
                geo.memory_slices
            ),
        )
    })?;
    let mut placed: Vec<(u32, u32, &SimInstance)> = instances
        .iter()
        .zip(starts)
        .map(|(inst, start)| {
            (
                catalog::gpu_instance_id(geo.memory_slices, start, inst.size),
                start,
                inst,
            )
        })
        .collect();
    placed.sort_by_key(|(gi, _, _)| *gi);
    Ok(placed
        .into_iter()
        .enumerate()
        .map(|(j, (gi, start, inst))| MigDevice {
            index: j as u32,
            profile: inst.name.clone(),
            uuid: format!("MIG-{}", stable_uuid(&format!("{gpu_uuid}/gi/{gi}/ci/0"))),
            gpu_instance_id: gi,
            compute_instance_id: 0,
            memory_mib: inst.memory_mib,
            attributes: catalog_attributes(slot.model, &inst.name),
            placement_start: Some(start),
        })
        .collect())
}

/// What NVML would report of a MIG device of a catalog profile (the
/// profile's memory, SMs and slices; engines where the catalog has them).
/// `None` for compute-instance profiles (`1c.3g.20gb`: the catalog has no
/// compute-instance SM counts) and profiles the catalog does not know.
fn catalog_attributes(model: &GpuModel, profile: &str) -> Option<MigAttributes> {
    let p = model.mig_profile(profile)?;
    Some(MigAttributes {
        memory_mib: p.memory_mib,
        multiprocessors: p.multiprocessors,
        gpu_instance_slices: p.compute_slices,
        compute_instance_slices: p.compute_slices,
        engines: catalog::mig_engines(model.key, p.name).map(
            |[copy, decoder, encoder, jpeg, ofa]| MigEngines {
                copy,
                decoder,
                encoder,
                jpeg,
                ofa,
            },
        ),
    })
}

/// NVLinks to each peer on NVSwitch systems (all-to-all), by model key.
fn nvlinks_per_peer(model: &GpuModel) -> Option<u32> {
    match model.key {
        "A100-40GB" | "A100-80GB" => Some(12),
        "H100-80GB" | "H200" | "B200" => Some(18),
        "B300" => Some(18),    // DER: NVLink 5, as B200
        "H100-NVL" => Some(6), // DER: NVL bridges
        "A30" => Some(4),      // DER: NVLink bridge
        "V100" | "V100-32GB" => Some(1),
        _ => None,
    }
}

/// DGX-1 / p3 hybrid cube mesh: NVLinks between V100s `i` and `j` (6 per GPU).
const V100_CUBE_MESH: [[u32; 8]; 8] = [
    [0, 1, 1, 2, 2, 0, 0, 0],
    [1, 0, 2, 1, 0, 2, 0, 0],
    [1, 2, 0, 2, 0, 0, 1, 0],
    [2, 1, 2, 0, 0, 0, 0, 1],
    [2, 0, 0, 0, 0, 1, 1, 2],
    [0, 2, 0, 0, 1, 0, 2, 1],
    [0, 0, 1, 0, 1, 2, 0, 2],
    [0, 0, 0, 1, 2, 1, 2, 0],
];

fn connect_nvlinks(gpus: &mut [Gpu], slots: &[Slot<'_>], src: &str) -> Result<(), SimulationError> {
    let mut per_peer = Vec::with_capacity(slots.len());
    for slot in slots {
        let links = nvlinks_per_peer(slot.model).ok_or_else(|| {
            invalid(
                src,
                "nvlink",
                format!(
                    "{} is {}, which has no NVLink; remove 'nvlink: true'",
                    slot.context, slot.model.product_name
                ),
            )
        })?;
        per_peer.push(links);
    }
    let v100 = |s: &Slot<'_>| s.model.key.starts_with("V100");
    let all_v100 = slots.iter().all(v100);
    for i in 0..gpus.len() {
        let mut peers = Vec::new();
        for j in 0..gpus.len() {
            if i == j {
                continue;
            }
            let links = if all_v100 {
                V100_CUBE_MESH
                    .get(i)
                    .and_then(|row| row.get(j))
                    .copied()
                    .unwrap_or(0)
            } else {
                per_peer[i].min(per_peer[j])
            };
            if links > 0 {
                peers.push(NvLinkPeer {
                    peer_index: j as u32,
                    links,
                });
            }
        }
        gpus[i].nvlinks = peers;
    }
    Ok(())
}

/// NVML-form PCI bus id of GPU `index` of `count`: like a g5.12xlarge
/// (`00000000:00:1B.0`..`1E.0`) up to 4 GPUs, like a p4d (`00000000:10:1C.0`,
/// `10:1D`, `20:1C`, ...) beyond.
fn pci_bus_id(index: u32, count: u32) -> String {
    if count <= 4 {
        return format!("00000000:00:{:02X}.0", 0x1E - (count - 1) + index);
    }
    const BUSES: [u32; 8] = [0x10, 0x20, 0x90, 0xA0, 0x30, 0x40, 0xB0, 0xC0];
    let domain = index / 16;
    let local = index % 16;
    let bus = BUSES[(local / 2) as usize];
    format!("{domain:08X}:{bus:02X}:{:02X}.0", 0x1C + local % 2)
}

/// 64-bit FNV-1a.
fn fnv1a(bytes: &[u8], basis: u64) -> u64 {
    bytes.iter().fold(basis, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// A UUID-shaped, stable rendering of `seed` (`8-4-4-4-12` lowercase hex).
fn stable_uuid(seed: &str) -> String {
    let hi = fnv1a(seed.as_bytes(), 0xcbf2_9ce4_8422_2325);
    let lo = fnv1a(seed.as_bytes(), hi ^ 0x9E37_79B9_7F4A_7C15);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xFFFF,
        hi & 0xFFFF,
        lo >> 48,
        lo & 0xFFFF_FFFF_FFFF
    )
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use super::*;

    fn profile_counts(gpu: &Gpu) -> BTreeMap<String, u32> {
        let mut counts = BTreeMap::new();
        for d in &gpu.mig_devices {
            *counts.entry(d.profile.clone()).or_insert(0) += 1;
        }
        counts
    }

    fn expect(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(p, n)| (p.to_string(), *n)).collect()
    }

    #[test]
    fn every_instance_preset_builds() {
        for inst in catalog::instances() {
            for layout in [None, Some("all-disabled")] {
                let inv = from_instance(inst.name, layout).unwrap();
                assert_eq!(inv.gpus.len() as u32, inst.gpus, "{}", inst.name);
                let model = inst.gpu_model().unwrap();
                for (i, g) in inv.gpus.iter().enumerate() {
                    assert_eq!(g.index, i as u32);
                    assert_eq!(g.minor, i as u32);
                    assert_eq!(g.model, model.product_name);
                    assert_eq!(g.memory_mib, model.memory_mib);
                    assert_eq!(g.pci_device_id, model.pci_device_id);
                    assert_eq!(g.mig_capable, model.mig_capable());
                    assert!(!g.mig_enabled && g.mig_devices.is_empty());
                    assert_eq!(g.nvlinks.is_empty(), !inst.nvlink, "{}", inst.name);
                }
            }
            let model = inst.gpu_model().unwrap();
            for name in catalog::layout_names(model) {
                let inv = from_instance(inst.name, Some(&name)).unwrap();
                assert!(
                    inv.gpus
                        .iter()
                        .all(|g| g.mig_enabled == (name != "all-disabled")),
                    "{} {name}",
                    inst.name
                );
            }
        }
    }

    #[test]
    fn layouts_on_instances() {
        type Case = (&'static str, &'static str, &'static [(&'static str, u32)]);
        let cases: &[Case] = &[
            ("p4d.24xlarge", "all-1g.5gb", &[("1g.5gb", 7)]),
            (
                "p4d.24xlarge",
                "all-balanced",
                &[("1g.5gb", 2), ("2g.10gb", 1), ("3g.20gb", 1)],
            ),
            ("p4d.24xlarge", "all-1g.10gb", &[("1g.10gb", 4)]),
            ("p4de.24xlarge", "all-1g.10gb", &[("1g.10gb", 7)]),
            (
                "p4de.24xlarge",
                "all-balanced",
                &[("1g.10gb", 2), ("2g.20gb", 1), ("3g.40gb", 1)],
            ),
            (
                "p5.48xlarge",
                "all-balanced",
                &[("1g.10gb", 2), ("2g.20gb", 1), ("3g.40gb", 1)],
            ),
            ("p5.48xlarge", "all-1g.20gb", &[("1g.20gb", 4)]),
            (
                "p5e.48xlarge",
                "all-balanced",
                &[("1g.18gb", 2), ("2g.35gb", 1), ("3g.71gb", 1)],
            ),
            (
                "p5en.48xlarge",
                "all-balanced",
                &[("1g.18gb", 2), ("2g.35gb", 1), ("3g.71gb", 1)],
            ),
            (
                "p6-b200.48xlarge",
                "all-balanced",
                &[("1g.23gb", 2), ("2g.45gb", 1), ("3g.90gb", 1)],
            ),
            ("p6-b200.48xlarge", "all-1g.23gb", &[("1g.23gb", 7)]),
            ("p4d.24xlarge", "all-1g.5gb.me", &[("1g.5gb+me", 1)]),
            ("p4d.24xlarge", "all-enabled", &[]),
            (
                "p4d.24xlarge",
                "3g.20gb=1,1g.5gb=3",
                &[("1g.5gb", 3), ("3g.20gb", 1)],
            ),
        ];
        for &(instance, layout, want) in cases {
            let inv = from_instance(instance, Some(layout)).unwrap();
            assert_eq!(inv.gpus.len(), 8, "{instance}");
            for g in &inv.gpus {
                assert!(g.mig_enabled, "{instance} {layout}");
                assert_eq!(profile_counts(g), expect(want), "{instance} {layout}");
            }
        }
    }

    #[test]
    fn p4d_all_1g_5gb_has_driver_like_ids() {
        let inv = from_instance("p4d.24xlarge", Some("all-1g.5gb")).unwrap();
        let total: usize = inv.gpus.iter().map(|g| g.mig_devices.len()).sum();
        assert_eq!(total, 56);
        for g in &inv.gpus {
            let gis: Vec<u32> = g.mig_devices.iter().map(|d| d.gpu_instance_id).collect();
            assert_eq!(gis, (7..14).collect::<Vec<_>>());
            let idx: Vec<u32> = g.mig_devices.iter().map(|d| d.index).collect();
            assert_eq!(idx, (0..7).collect::<Vec<_>>());
            assert!(g.mig_devices.iter().all(|d| d.compute_instance_id == 0
                && d.memory_mib == 4864
                && d.uuid.starts_with("MIG-")));
        }
        // Balanced: GI ids as NVIDIA's guide shows (3g at slice 4 = GI 2, ...).
        let inv = from_instance("p4d.24xlarge", Some("all-balanced")).unwrap();
        let devs: Vec<(&str, u32)> = inv.gpus[0]
            .mig_devices
            .iter()
            .map(|d| (d.profile.as_str(), d.gpu_instance_id))
            .collect();
        assert_eq!(
            devs,
            vec![
                ("3g.20gb", 2),
                ("2g.10gb", 3),
                ("1g.5gb", 9),
                ("1g.5gb", 10)
            ]
        );
    }

    #[test]
    fn identities_are_stable_and_distinct() {
        let a = from_instance("p4d.24xlarge", Some("all-1g.5gb")).unwrap();
        let b = from_instance("p4d.24xlarge", Some("all-1g.5gb")).unwrap();
        assert_eq!(a, b);
        let mut uuids = HashSet::new();
        for g in &a.gpus {
            assert!(uuids.insert(g.uuid.clone()));
            for d in &g.mig_devices {
                assert!(uuids.insert(d.uuid.clone()));
            }
            let hex = g.uuid.trim_start_matches("GPU-");
            let groups: Vec<usize> = hex.split('-').map(str::len).collect();
            assert_eq!(groups, vec![8, 4, 4, 4, 12], "{}", g.uuid);
            assert!(hex.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        }
        let other = from_instance("p4de.24xlarge", None).unwrap();
        assert_ne!(a.gpus[0].uuid, other.gpus[0].uuid);

        let buses: Vec<&str> = a.gpus.iter().map(|g| g.pci_bus_id.as_str()).collect();
        assert_eq!(
            buses,
            vec![
                "00000000:10:1C.0",
                "00000000:10:1D.0",
                "00000000:20:1C.0",
                "00000000:20:1D.0",
                "00000000:90:1C.0",
                "00000000:90:1D.0",
                "00000000:A0:1C.0",
                "00000000:A0:1D.0",
            ]
        );
        let numa: Vec<Option<i64>> = a.gpus.iter().map(|g| g.numa_node).collect();
        assert_eq!(numa, [0, 0, 0, 0, 1, 1, 1, 1].map(Some).to_vec());
        let g5 = from_instance("g5.xlarge", None).unwrap();
        assert_eq!(g5.gpus[0].pci_bus_id, "00000000:00:1E.0");
        assert_eq!(g5.gpus[0].numa_node, Some(0));
        let g5 = from_instance("g5.12xlarge", None).unwrap();
        let buses: Vec<&str> = g5.gpus.iter().map(|g| g.pci_bus_id.as_str()).collect();
        assert_eq!(
            buses,
            vec![
                "00000000:00:1B.0",
                "00000000:00:1C.0",
                "00000000:00:1D.0",
                "00000000:00:1E.0"
            ]
        );
    }

    #[test]
    fn nvlink_topologies() {
        for (instance, links) in [
            ("p4d.24xlarge", 12),
            ("p5.48xlarge", 18),
            ("p5e.48xlarge", 18),
            ("p6-b200.48xlarge", 18),
        ] {
            let inv = from_instance(instance, None).unwrap();
            for g in &inv.gpus {
                assert_eq!(g.nvlinks.len(), 7, "{instance}");
                assert!(
                    g.nvlinks
                        .iter()
                        .all(|p| p.links == links && p.peer_index != g.index)
                );
            }
        }
        let p3 = from_instance("p3.16xlarge", None).unwrap();
        for g in &p3.gpus {
            assert_eq!(g.nvlinks.iter().map(|p| p.links).sum::<u32>(), 6);
            for p in &g.nvlinks {
                let back = &p3.gpus[p.peer_index as usize].nvlinks;
                assert!(
                    back.iter()
                        .any(|q| q.peer_index == g.index && q.links == p.links)
                );
            }
        }
        assert!(
            from_instance("g5.48xlarge", None).unwrap().gpus[0]
                .nvlinks
                .is_empty()
        );
    }

    #[test]
    fn mig_layout_on_non_mig_instance_is_refused() {
        let err = from_instance("g5.xlarge", Some("all-balanced")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "MIG layout 'all-balanced' needs a MIG-capable GPU, but g5.xlarge has NVIDIA A10G (no MIG support); use time-slicing (sharing.timeSlicing) or an instance with A100/A30/H100/H200/B200/B300/RTX PRO GPUs"
        );
        assert!(from_instance("g4dn.xlarge", Some("all-enabled")).is_err());
        assert!(from_instance("g4dn.xlarge", Some("all-disabled")).is_ok());
    }

    #[test]
    fn instance_errors_name_what_to_do() {
        let err = from_instance("p9.mega", None).unwrap_err().to_string();
        assert!(
            err.starts_with("unknown instance type 'p9.mega'; known instance types: p4d.24xlarge, p4de.24xlarge, "),
            "{err}"
        );
        assert!(
            err.contains("g4dn.metal")
                && err.ends_with("or give a topology file (.yaml) listing the GPUs")
        );
        let err = from_instance("p4d.24xlarge", Some("all-2g.20gb")).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "unknown MIG layout 'all-2g.20gb' for p4d.24xlarge (NVIDIA A100-SXM4-40GB); valid layouts: all-disabled, all-enabled, all-1g.5gb,"
            ),
            "{err}"
        );
        let err = from_instance("p4d.24xlarge", Some("3g.20gb=3")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "MIG layout '3g.20gb=3' asks for 3 × 3g.20gb, but p4d.24xlarge (NVIDIA A100-SXM4-40GB) supports at most 2; lower the count"
        );
    }

    const TOPOLOGY: &str = r#"
migLayout: all-disabled
gpus:
  - model: A100-40GB
    count: 2
    migLayout: all-balanced
    numaNode: 0
  - model: NVIDIA A100-SXM4-40GB
    uuid: GPU-00000000-0000-4000-8000-000000000002
    migDevices: [1g.5gb, 1g.5gb.me, 1c.3g.20gb, 2g.9gb]
  - model: a100-40gb
    migEnabled: true
  - model: Tesla T4
"#;

    #[test]
    fn topology_file_builds_every_kind_of_gpu() {
        let inv = from_topology_str(TOPOLOGY, "topo.yaml").unwrap();
        assert_eq!(inv.gpus.len(), 5);
        let [g0, g1, g2, g3, g4] = &inv.gpus[..] else {
            panic!("5 GPUs")
        };
        assert_eq!(profile_counts(g0), profile_counts(g1));
        assert_eq!(
            profile_counts(g0),
            expect(&[("1g.5gb", 2), ("2g.10gb", 1), ("3g.20gb", 1)])
        );
        assert_eq!(g0.numa_node, Some(0));
        assert_eq!(g2.uuid, "GPU-00000000-0000-4000-8000-000000000002");
        let devs: Vec<(&str, u32, u64)> = g2
            .mig_devices
            .iter()
            .map(|d| (d.profile.as_str(), d.gpu_instance_id, d.memory_mib))
            .collect();
        // 1c.3g.20gb takes a 3g.20gb GPU instance; 2g.9gb is not an A100
        // profile (9 GiB: 2 memory slices, placed like 2g.10gb). The 3g one
        // moves to slice 4 so that both 1-slice ones find room.
        assert_eq!(
            devs,
            vec![
                ("1c.3g.20gb", 2, 20096),
                ("2g.9gb", 3, 9 * 1024),
                ("1g.5gb", 9, 4864),
                ("1g.5gb+me", 10, 4864)
            ]
        );
        assert!(g3.mig_enabled && g3.mig_devices.is_empty());
        assert_eq!(g4.model, "Tesla T4");
        assert!(!g4.mig_capable && !g4.mig_enabled);
        assert!(inv.gpus.iter().all(|g| g.nvlinks.is_empty()));
        // The inventory itself survives serialization.
        let json = serde_json::to_string(&inv).unwrap();
        assert_eq!(serde_json::from_str::<Inventory>(&json).unwrap(), inv);
    }

    #[test]
    fn topology_text_with_a_layout_override() {
        let source = "node.yaml";
        let from_str = from_topology_str(TOPOLOGY, source).unwrap();
        assert_eq!(
            from_topology_str_with_layout(TOPOLOGY, source, None).unwrap(),
            from_str
        );
        // --mig-config replaces every layout and device list.
        let all = from_topology_str_with_layout(TOPOLOGY, source, Some("all-enabled")).unwrap_err();
        assert!(all.to_string().contains("GPU 4 (gpus[3] in"), "{all}");
        let text = TOPOLOGY.replace("  - model: Tesla T4\n", "");
        let inv = from_topology_str_with_layout(&text, source, Some("all-1g.5gb")).unwrap();
        assert!(
            inv.gpus
                .iter()
                .all(|g| profile_counts(g) == expect(&[("1g.5gb", 7)]))
        );
        // An instance topology equals the preset.
        let text = "instance: p5.48xlarge\nmigLayout: all-balanced\n";
        assert_eq!(
            from_topology_str_with_layout(text, source, None).unwrap(),
            from_instance("p5.48xlarge", Some("all-balanced")).unwrap()
        );
        assert_eq!(
            from_topology_str_with_layout(text, source, Some("all-disabled")).unwrap(),
            from_instance("p5.48xlarge", None).unwrap()
        );
        assert!(looks_like_topology_file("Node.YML"));
        assert!(looks_like_topology_file("topologies/node"));
        assert!(!looks_like_topology_file("p4d.24xlarge"));
        // Not a preset.
        assert!(matches!(
            from_instance("p4d.48xlarge", None),
            Err(SimulationError::UnknownInstance { .. })
        ));
        // A seed changes the UUIDs.
        let seeded = from_topology_str("instance: p5.48xlarge\nuuidSeed: node-b\n", "t").unwrap();
        assert_ne!(seeded, from_instance("p5.48xlarge", None).unwrap());
        assert_eq!(seeded.gpus.len(), 8);
    }

    #[test]
    fn topology_errors_name_file_key_and_fix() {
        let known_models = "A100-40GB, A100-80GB, A30, H100-80GB, H100-NVL, H200, B200, B300, RTX-PRO-6000, RTX-PRO-4500, A10G, L4, L40S, T4, T4G, L4-1/8, L4-1/4, L4-1/2, V100, V100-32GB";
        let cases: Vec<(&str, String)> = vec![
            (
                "gpus:\n  - model: RTX 4090\n",
                format!(
                    "t.yaml: gpus[0].model: unknown GPU model 'RTX 4090'; known models (catalog key or NVML product name): {known_models}"
                ),
            ),
            (
                "instance: p4d.24xlarge\ngpus: []\n",
                "t.yaml: instance: give either 'instance' or 'gpus', not both".to_string(),
            ),
            (
                "migLayout: all-balanced\n",
                "t.yaml: gpus: the topology names no GPUs; add 'instance: <type>' (e.g. p4d.24xlarge) or a 'gpus:' list".to_string(),
            ),
            (
                "gpus:\n  - model: A100-40GB\n    count: 2\n    uuid: GPU-1\n",
                "t.yaml: gpus[0].uuid: a uuid names one GPU but count is 2; split the entry or drop the uuid".to_string(),
            ),
            (
                "gpus:\n  - model: A100-40GB\n    count: 0\n",
                "t.yaml: gpus[0].count: count must be at least 1; remove the entry instead".to_string(),
            ),
            (
                "gpus:\n  - model: A100-40GB\n    count: 2\n  - model: T4\n    count: 4294967295\n",
                "t.yaml: gpus[1].count: a simulated node holds at most 64 GPUs (the largest GPU \
                 instances have 16); this entry brings it to 4294967297"
                    .to_string(),
            ),
            (
                "gpus:\n  - model: A100-40GB\n    migLayout: all-1g.5gb\n    migDevices: [1g.5gb]\n",
                "t.yaml: gpus[0]: give either migLayout or migDevices, not both".to_string(),
            ),
            (
                "gpus:\n  - model: L4\n    migDevices: [1g.5gb]\n",
                "t.yaml: gpus[0].migDevices: GPU 0 (gpus[0] in t.yaml) is NVIDIA L4 (no MIG support), so it cannot have migDevices; remove it or use a MIG-capable model (A100/A30/H100/H200/B200/B300/RTX PRO GPUs)".to_string(),
            ),
            (
                "gpus:\n  - model: A100-40GB\n  - model: L4\n    migLayout: all-balanced\n",
                "MIG layout 'all-balanced' needs a MIG-capable GPU, but GPU 1 (gpus[1] in t.yaml) has NVIDIA L4 (no MIG support); use time-slicing (sharing.timeSlicing) or an instance with A100/A30/H100/H200/B200/B300/RTX PRO GPUs".to_string(),
            ),
            (
                "gpus:\n  - model: A100-40GB\n    migDevices: [3g.20gb, 3g.20gb, 1g.5gb]\n",
                "t.yaml: gpus[0].migDevices: MIG devices [3g.20gb, 3g.20gb, 1g.5gb] do not fit on GPU 0 (gpus[0] in t.yaml) (NVIDIA A100-SXM4-40GB: 7 compute / 8 memory slices); remove or shrink some".to_string(),
            ),
            (
                "gpus:\n  - model: A100-40GB\n    migDevices: [1g.5gb, big]\n",
                "t.yaml: gpus[0].migDevices[1]: 'big' is not a MIG profile of NVIDIA A100-SXM4-40GB (1g.5gb, 1g.5gb+me, 1g.10gb, 2g.10gb, 3g.20gb, 4g.20gb, 7g.40gb) and does not read as <G>g.<N>gb or <C>c.<G>g.<N>gb".to_string(),
            ),
            (
                "gpus:\n  - model: A100-40GB\n    migDevices: [4c.3g.20gb]\n",
                "t.yaml: gpus[0].migDevices[0]: '4c.3g.20gb': a profile needs at least one slice and its compute instance (<C>c) no more slices than its GPU instance (<G>g)".to_string(),
            ),
            (
                "gpus:\n  - model: A100-40GB\n    migEnabled: false\n    migLayout: all-1g.5gb\n",
                "t.yaml: gpus[0].migEnabled: migEnabled: false contradicts migLayout 'all-1g.5gb'; drop one of them".to_string(),
            ),
            (
                "nvlink: true\ngpus:\n  - model: L4\n    count: 2\n",
                "t.yaml: nvlink: GPU 0 (gpus[0] in t.yaml) is NVIDIA L4, which has no NVLink; remove 'nvlink: true'".to_string(),
            ),
            (
                "gpus:\n  - model: A100-40GB\n    uuid: GPU-a\n  - model: A100-40GB\n    uuid: GPU-a\n",
                "t.yaml: gpus[1].uuid: GPU-a is already GPU 0; UUIDs must be unique".to_string(),
            ),
            (
                "instance: p9.mega\n",
                format!(
                    "t.yaml: instance: unknown instance type 'p9.mega'; known instance types: {}; or give a topology file (.yaml) listing the GPUs",
                    known_instances()
                ),
            ),
        ];
        for (text, want) in cases {
            let err = from_topology_str(text, "t.yaml").unwrap_err();
            assert_eq!(err.to_string(), want, "{text}");
        }
        // Strict parsing: unknown keys (top level and per GPU) are errors.
        for (text, key) in [
            (
                "instance: p4d.24xlarge\nmigConfig: all-balanced\n",
                "migConfig",
            ),
            ("gpus:\n  - model: A100-40GB\n    numa: 1\n", "numa"),
        ] {
            let err = from_topology_str(text, "t.yaml").unwrap_err();
            assert!(matches!(err, SimulationError::Parse { .. }), "{err}");
            let msg = err.to_string();
            assert!(msg.starts_with("t.yaml: invalid topology file: "), "{msg}");
            assert!(msg.contains("line "), "{msg}");
            assert!(msg.contains(key) && msg.contains("unknown field"), "{msg}");
        }
    }

    #[test]
    fn profile_names_parse() {
        assert_eq!(parse_profile("1g.5gb"), Some((None, 1, 5, "")));
        assert_eq!(parse_profile("1c.3g.20gb"), Some((Some(1), 3, 20, "")));
        assert_eq!(parse_profile("1g.10gb+me"), Some((None, 1, 10, "+me")));
        assert_eq!(parse_profile("1g.24gb-me"), Some((None, 1, 24, "-me")));
        assert_eq!(parse_profile("1g.5gb.me"), None);
        assert_eq!(parse_profile("g.5gb"), None);
        assert_eq!(parse_profile("big"), None);
    }
}
