//! The validated configuration, in NVIDIA's `version: v1` schema.
//!
//! These types are what the rest of gpu-slicer reads. They are produced only
//! by [`super::load`] (file → checked → validated) plus command-line/env
//! overrides, so every value here has already been checked.

use std::fmt;

/// A value that is not one of an enum's spellings; the message is NVIDIA's
/// (`unknown MIG strategy: auto`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{prefix}{value}")]
pub struct UnknownValue {
    pub prefix: &'static str,
    pub value: String,
}

/// A value NVIDIA's plugin would refuse, with NVIDIA's message (the caller
/// adds where it was found: file, key or flag).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

impl From<&str> for InvalidValue {
    fn from(message: &str) -> Self {
        InvalidValue(message.to_string())
    }
}

impl From<String> for InvalidValue {
    fn from(message: String) -> Self {
        InvalidValue(message)
    }
}

impl From<InvalidValue> for String {
    fn from(value: InvalidValue) -> Self {
        value.0
    }
}

/// One declaration per enum: its variants with their spellings in NVIDIA's
/// config file and flags, and NVIDIA's message for anything else. `as_str`,
/// `Display` and `FromStr` all come from it.
macro_rules! spelled {
    ($ty:ident, unknown: $unknown:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value and its spelling.
            pub const ALL: &'static [($ty, &'static str)] = &[$(($ty::$variant, $name)),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl std::str::FromStr for $ty {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, UnknownValue> {
                Self::ALL
                    .iter()
                    .find(|(_, name)| *name == s)
                    .map(|(value, _)| *value)
                    .ok_or_else(|| UnknownValue {
                        prefix: $unknown,
                        value: s.to_string(),
                    })
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// How MIG devices are advertised (`flags.migStrategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MigStrategy {
    /// Whole GPUs only, as `nvidia.com/gpu`, even when MIG is enabled.
    #[default]
    None,
    /// Every MIG device as `nvidia.com/gpu` (one profile per node).
    Single,
    /// One resource per MIG profile: `nvidia.com/mig-<profile>`.
    Mixed,
}

spelled!(MigStrategy, unknown: "unknown MIG strategy: ", {
    None => "none",
    Single => "single",
    Mixed => "mixed",
});

/// How a container is told which devices it got (`flags.plugin.deviceListStrategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceListStrategy {
    Envvar,
    VolumeMounts,
    CdiAnnotations,
    CdiCri,
}

spelled!(DeviceListStrategy, unknown: "invalid strategy: ", {
    Envvar => "envvar",
    VolumeMounts => "volume-mounts",
    CdiAnnotations => "cdi-annotations",
    CdiCri => "cdi-cri",
});

impl DeviceListStrategy {
    pub fn is_cdi(self) -> bool {
        matches!(
            self,
            DeviceListStrategy::CdiAnnotations | DeviceListStrategy::CdiCri
        )
    }
}

/// Which id of a device the container receives (`flags.plugin.deviceIDStrategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceIdStrategy {
    #[default]
    Uuid,
    Index,
}

spelled!(DeviceIdStrategy, unknown: "invalid --device-id-strategy option: ", {
    Uuid => "uuid",
    Index => "index",
});

/// How shared devices (replicas, MIG devices) are preferred
/// (`flags.plugin.sharedDevicesAllocationPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AllocationPolicy {
    /// Spread over distinct physical GPUs (least used first).
    #[default]
    Distributed,
    /// Fill one physical GPU before the next (most used first).
    Packed,
}

spelled!(AllocationPolicy, unknown: "invalid --shared-devices-allocation-policy option: ", {
    Distributed => "distributed",
    Packed => "packed",
});

/// The whole effective configuration.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    pub flags: Flags,
    /// User-supplied `resources` patterns; `None` = NVIDIA's generated defaults.
    pub resources: Option<ResourcePatterns>,
    pub sharing: Sharing,
    /// gpu-slicer's extension: per-XID health policy (NVIDIA has none).
    pub health: crate::health::HealthConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Flags {
    pub mig_strategy: MigStrategy,
    pub fail_on_init_error: bool,
    pub nvidia_driver_root: String,
    /// `None` = same as `nvidia_driver_root`.
    pub nvidia_dev_root: Option<String>,
    pub mps_root: String,
    pub gdrcopy_enabled: bool,
    pub gds_enabled: bool,
    pub mofed_enabled: bool,
    pub device_discovery_strategy: String,
    pub plugin: PluginFlags,
}

impl Default for Flags {
    fn default() -> Self {
        Flags {
            mig_strategy: MigStrategy::None,
            fail_on_init_error: true,
            nvidia_driver_root: "/".into(),
            nvidia_dev_root: None,
            mps_root: String::new(),
            gdrcopy_enabled: false,
            gds_enabled: false,
            mofed_enabled: false,
            device_discovery_strategy: "auto".into(),
            plugin: PluginFlags::default(),
        }
    }
}

impl Flags {
    /// Host root of `/dev`, prefixed to `DeviceSpec.host_path`.
    pub fn dev_root(&self) -> &str {
        self.nvidia_dev_root
            .as_deref()
            .unwrap_or(&self.nvidia_driver_root)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PluginFlags {
    pub pass_device_specs: bool,
    /// Never empty; de-duplicated, in the order given.
    pub device_list_strategy: Vec<DeviceListStrategy>,
    pub device_id_strategy: DeviceIdStrategy,
    pub cdi_annotation_prefix: String,
    pub nvidia_ctk_path: String,
    pub container_driver_root: String,
    pub shared_devices_allocation_policy: AllocationPolicy,
}

impl Default for PluginFlags {
    fn default() -> Self {
        PluginFlags {
            pass_device_specs: false,
            device_list_strategy: vec![DeviceListStrategy::Envvar],
            device_id_strategy: DeviceIdStrategy::Uuid,
            cdi_annotation_prefix: "cdi.k8s.io/".into(),
            nvidia_ctk_path: "/usr/bin/nvidia-ctk".into(),
            container_driver_root: "/driver-root".into(),
            shared_devices_allocation_policy: AllocationPolicy::Distributed,
        }
    }
}

/// `resources.gpus[]` / `resources.mig[]`: which devices become which resource.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ResourcePatterns {
    pub gpus: Vec<ResourcePattern>,
    pub mig: Vec<ResourcePattern>,
}

/// A wildcard pattern (only `*` is special, anchored at both ends) and the
/// resource name devices matching it get.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourcePattern {
    pub pattern: String,
    pub name: ResourceName,
}

impl ResourcePattern {
    /// Does `value` (a GPU product name or a MIG profile) match this pattern?
    pub fn matches(&self, value: &str) -> bool {
        wildcard_match(&self.pattern, value)
    }
}

/// Anchored glob where only `*` is special.
pub fn wildcard_match(pattern: &str, value: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == value;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !value.starts_with(first) || value.len() < first.len() + last.len() {
        return false;
    }
    if !value[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &value[first.len()..value.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

/// `sharing`: at most one of time-slicing and MPS is active.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sharing {
    pub time_slicing: ReplicatedResources,
    pub mps: Option<ReplicatedResources>,
}

/// Which sharing mechanism is in effect, as NVIDIA decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharingStrategy {
    None,
    TimeSlicing,
    Mps,
}

impl SharingStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            SharingStrategy::None => "none",
            SharingStrategy::TimeSlicing => "time-slicing",
            SharingStrategy::Mps => "mps",
        }
    }
}

impl Sharing {
    /// `mps` if it has any replicas > 1, else `time-slicing` if it does, else none.
    pub fn strategy(&self) -> SharingStrategy {
        if let Some(mps) = &self.mps
            && mps.resources.iter().any(|r| r.replicas > 1)
        {
            return SharingStrategy::Mps;
        }
        if self.time_slicing.resources.iter().any(|r| r.replicas > 1) {
            return SharingStrategy::TimeSlicing;
        }
        SharingStrategy::None
    }

    /// The replicated-resources block of the active strategy, if any.
    pub fn active(&self) -> Option<&ReplicatedResources> {
        match self.strategy() {
            SharingStrategy::None => None,
            SharingStrategy::TimeSlicing => Some(&self.time_slicing),
            SharingStrategy::Mps => self.mps.as_ref(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReplicatedResources {
    pub rename_by_default: bool,
    /// Already resolved: time-slicing defaults to false, MPS to true.
    pub fail_requests_greater_than_one: bool,
    pub resources: Vec<ReplicatedResource>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReplicatedResource {
    pub name: ResourceName,
    pub rename: Option<ResourceName>,
    pub devices: DeviceSelection,
    pub replicas: u32,
    /// MPS only (gpu-slicer's extension): explicit per-replica limits.
    pub mps: MpsLimits,
}

/// Per-replica limits of an MPS resource that replace NVIDIA's defaults
/// (device memory / replicas, 100 / replicas percent of the SMs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MpsLimits {
    /// `memoryPerReplica`, in MiB.
    pub memory_per_replica_mib: Option<u64>,
    /// `activeThreadPercentage`, 1–100.
    pub active_thread_percentage: Option<u32>,
    /// `maxReplicasPerContainer`, resolved: 1 under
    /// `failRequestsGreaterThanOne` (NVIDIA's default), else `replicas`
    /// unless set. A container holding *k* replicas (all of one GPU) gets
    /// *k* shares; each *k* has its own control daemon.
    pub max_replicas_per_container: u32,
}

impl Default for MpsLimits {
    fn default() -> Self {
        MpsLimits {
            memory_per_replica_mib: None,
            active_thread_percentage: None,
            max_replicas_per_container: 1,
        }
    }
}

impl ReplicatedResource {
    /// Every device of `name`, `replicas` times, under the same name: the
    /// common case (`{name: nvidia.com/gpu, replicas: 4}`).
    pub fn every(name: &str, replicas: u32) -> Self {
        ReplicatedResource {
            name: ResourceName::new_unchecked(name),
            rename: None,
            devices: DeviceSelection::All,
            replicas,
            mps: MpsLimits::default(),
        }
    }
}

/// `resources[].devices`: which devices of the resource are replicated.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum DeviceSelection {
    #[default]
    All,
    /// The first N devices (in index order).
    Count(u32),
    List(Vec<DeviceRef>),
}

/// One entry of a `devices` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceRef {
    /// GPU index `0`.
    Index(u32),
    /// MIG device `i:j` (GPU index, MIG handle index).
    MigIndex(u32, u32),
    /// `GPU-<uuid>`, `MIG-<uuid>` or legacy `MIG-GPU-<uuid>/<gi>/<ci>`.
    Uuid(String),
}

/// A fully-qualified, validated extended resource name (`nvidia.com/gpu`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceName(String);

impl ResourceName {
    /// Wraps a name already known to be valid (used for generated names).
    pub fn new_unchecked(full: impl Into<String>) -> Self {
        ResourceName(full.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Part after the `/`: `gpu`, `mig-1g.5gb`.
    pub fn short(&self) -> &str {
        self.0.split_once('/').map(|(_, s)| s).unwrap_or(&self.0)
    }

    /// Socket file name NVIDIA's plugin uses: `nvidia-<short>.sock`.
    pub fn socket_file_name(&self) -> String {
        format!("nvidia-{}.sock", self.short())
    }
}

impl fmt::Display for ResourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_is_anchored_and_only_star_is_special() {
        for (pattern, value, expected) in [
            ("*", "anything", true),
            ("1g.24gb", "1g.24gb", true),
            ("1g.24gb", "1g.24gb-me", false),
            ("1g.*", "1g.5gb", true),
            ("*gb", "1g.5gb", true),
            ("*A100*", "NVIDIA A100-SXM4-40GB", true),
            ("*A100*", "NVIDIA H100 80GB HBM3", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "acb", false),
            ("1g.?gb", "1g.5gb", false),
        ] {
            assert_eq!(
                wildcard_match(pattern, value),
                expected,
                "{pattern} vs {value}"
            );
        }
    }

    #[test]
    fn sharing_strategy_follows_replicas() {
        let mut sharing = Sharing::default();
        assert_eq!(sharing.strategy(), SharingStrategy::None);
        sharing
            .time_slicing
            .resources
            .push(ReplicatedResource::every("nvidia.com/gpu", 4));
        assert_eq!(sharing.strategy(), SharingStrategy::TimeSlicing);
    }

    #[test]
    fn socket_names_follow_nvidia() {
        let name = ResourceName::new_unchecked("nvidia.com/mig-1g.10gb.me");
        assert_eq!(name.socket_file_name(), "nvidia-mig-1g.10gb.me.sock");
    }
}
