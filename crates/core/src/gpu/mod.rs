//! What a node has: GPUs and their MIG devices, as plain data.
//!
//! Every backend (the simulated one here, NVML in production) produces an
//! [`Inventory`]; everything downstream (planner, Allocate, placement) reads
//! only this model, so backends can be swapped without touching decisions.

pub mod catalog;
pub mod simulated;

use serde::{Deserialize, Serialize};

/// All GPUs of one node, in NVML index order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Inventory {
    pub gpus: Vec<Gpu>,
    /// Node-wide facts only node labels read; unknown by default, so older
    /// topology and inventory files still parse.
    #[serde(default, skip_serializing_if = "NodeFacts::is_unknown")]
    pub node: NodeFacts,
}

/// Node-wide facts behind GPU Feature Discovery's `cuda.*` and `gpu.machine`
/// labels. `None`: not known (a simulated node has no driver), and the labels
/// that need it are left out rather than guessed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeFacts {
    /// `nvmlSystemGetDriverVersion`, e.g. `580.159.04`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_version: Option<String>,
    /// `nvmlSystemGetCudaDriverVersion_v2`: the CUDA version the driver
    /// supports, as `1000 × major + 10 × minor` (`13000` = CUDA 13.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda_driver_version: Option<u32>,
    /// The machine type: `/sys/class/dmi/id/product_name`, trimmed (on EC2
    /// the instance type, e.g. `p4d.24xlarge`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
}

impl NodeFacts {
    pub fn is_unknown(&self) -> bool {
        *self == NodeFacts::default()
    }
}

/// One physical GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    /// NVML index (`0`, `1`, ...): what `deviceIDStrategy: index` hands out.
    pub index: u32,
    /// Product name as NVML reports it, e.g. `NVIDIA A100-SXM4-40GB`.
    pub model: String,
    /// `GPU-<uuid>`.
    pub uuid: String,
    /// Total framebuffer memory in MiB (what MIG profile names derive from).
    pub memory_mib: u64,
    /// NVML form, `00000000:10:1C.0`.
    pub pci_bus_id: String,
    /// PCI device id as `0xDDDDVVVV` (mig-parted's `device-filter`).
    pub pci_device_id: u32,
    /// NUMA node the GPU is attached to; `None` when the platform has none.
    pub numa_node: Option<i64>,
    /// Device minor: `/dev/nvidia<minor>`, and the `gpu<minor>` of `mig-minors`.
    pub minor: u32,
    /// The GPU model supports MIG at all.
    pub mig_capable: bool,
    /// MIG mode is currently enabled (a reset may still be pending).
    pub mig_enabled: bool,
    /// Existing MIG devices, in MIG handle index order; empty unless MIG is enabled.
    pub mig_devices: Vec<MigDevice>,
    /// Number of NVLinks to each other GPU, by that GPU's index (empty: none known).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nvlinks: Vec<NvLinkPeer>,
    /// PCIe path to each other GPU (empty: not known).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pcie: Vec<PciePeer>,
    // Facts only node labels read (GFD's gpu.family, gpu.compute.*, gpu.mode);
    // `None`: unknown, the label is left out.
    /// CUDA compute capability (`nvmlDeviceGetCudaComputeCapability`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_capability: Option<ComputeCapability>,
    /// PCI class code as sysfs gives it (`0x030200`: 3D controller,
    /// `0x030000`: VGA controller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_class: Option<u32>,
}

/// A CUDA compute capability, `major.minor` (`8.0` for an A100).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeCapability {
    pub major: u32,
    pub minor: u32,
}

/// The closest common PCIe ancestor of two GPUs, nearest first (NVML's
/// topology levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PcieLevel {
    /// Same board (multi-GPU card).
    Board,
    /// Behind one PCIe switch.
    SingleSwitch,
    /// Behind several PCIe switches.
    MultipleSwitches,
    /// Same host bridge.
    HostBridge,
    /// Same NUMA node, through the CPU.
    Node,
    /// Across NUMA nodes.
    System,
}

/// PCIe connectivity from one GPU to a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciePeer {
    pub peer_index: u32,
    pub level: PcieLevel,
}

/// NVLink connectivity from one GPU to a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NvLinkPeer {
    pub peer_index: u32,
    pub links: u32,
}

/// One MIG device: a (GPU instance, compute instance) pair on a parent GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigDevice {
    /// MIG handle index on the parent: the `j` of the `i:j` index id.
    pub index: u32,
    /// Profile as NVIDIA's plugin names it: `1g.5gb`, `1g.10gb+me`, `1c.3g.20gb`.
    pub profile: String,
    /// `MIG-<uuid>`.
    pub uuid: String,
    pub gpu_instance_id: u32,
    pub compute_instance_id: u32,
    pub memory_mib: u64,
    /// What NVML says of the MIG device (`nvmlDeviceGetAttributes_v2`), for
    /// GFD's per-profile labels; `None`: unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<MigAttributes>,
    /// The memory slice its GPU instance's placement starts at
    /// (`nvmlGpuInstanceGetInfo`'s `placement.start`): where the instance
    /// sits, which a MIG change must know to plan around it. `None`:
    /// unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement_start: Option<u32>,
}

/// A MIG device's size and engines, as `nvmlDeviceGetAttributes_v2` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigAttributes {
    /// `memorySizeMB` (MiB, despite the name).
    pub memory_mib: u64,
    pub multiprocessors: u32,
    pub gpu_instance_slices: u32,
    pub compute_instance_slices: u32,
    /// Shared engines; `None` where unknown (simulated models whose catalog
    /// entry has no engine counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engines: Option<MigEngines>,
}

/// Engines a MIG device shares: copy (DMA), video decoders and encoders,
/// JPEG decoders, optical-flow accelerators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigEngines {
    pub copy: u32,
    pub decoder: u32,
    pub encoder: u32,
    pub jpeg: u32,
    pub ofa: u32,
}

impl Gpu {
    /// A MIG-enabled GPU hands its work to MIG devices; otherwise it is one device.
    pub fn is_partitioned(&self) -> bool {
        self.mig_enabled
    }
}

impl MigDevice {
    /// Compute slices of the profile (`3` for `3g.20gb` and for `1c.3g.20gb`).
    pub fn gpu_instance_slices(&self) -> Option<u32> {
        profile_gpu_slices(&self.profile)
    }
}

/// Number of GPU-instance slices a profile name denotes (`2g.10gb` → 2, `1c.3g.20gb` → 3).
pub fn profile_gpu_slices(profile: &str) -> Option<u32> {
    let base = profile.split(['+', '-']).next()?;
    let parts: Vec<&str> = base.split('.').collect();
    let gi = parts
        .iter()
        .find(|p| p.ends_with('g') && !p.ends_with("gb"))?;
    gi.trim_end_matches('g').parse().ok()
}

/// Kubernetes resource name suffix of a MIG profile: `+` becomes `.`
/// (`1g.10gb+me` → `mig-1g.10gb.me`), as NVIDIA's plugin names them.
pub fn mig_resource_suffix(profile: &str) -> String {
    format!("mig-{}", profile.replace('+', "."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_slices_parse_every_name_form() {
        for (profile, slices) in [
            ("1g.5gb", Some(1)),
            ("2g.10gb", Some(2)),
            ("1g.10gb+me", Some(1)),
            ("1c.3g.20gb", Some(3)),
            ("7g.141gb", Some(7)),
            ("1g.24gb-me", Some(1)),
            ("garbage", None),
        ] {
            assert_eq!(profile_gpu_slices(profile), slices, "{profile}");
        }
    }

    #[test]
    fn resource_suffix_replaces_plus_with_dot() {
        assert_eq!(mig_resource_suffix("1g.10gb+me"), "mig-1g.10gb.me");
        assert_eq!(mig_resource_suffix("1g.20gb+me.all"), "mig-1g.20gb.me.all");
        assert_eq!(mig_resource_suffix("3g.20gb"), "mig-3g.20gb");
    }
}
