//! The names of the Node labels (and NodeOverlay annotations) gpu-slicer
//! reads or writes, declared once: the daemon follows and patches them, the
//! people's commands (lint, Karpenter overlays) check and write them, and a
//! misspelt name in one place must not silently disagree with the other.
//!
//! The labels a GPU's facts produce (GPU Feature Discovery's names) are
//! built in [`crate::labels`]; this module holds the ones with a protocol
//! behind them: who sets them, who reads them, what their values mean.

use std::collections::{BTreeMap, BTreeSet};

/// NVIDIA's config-manager label: names the config, among the keys of a
/// ConfigMap mounted as `--config-dir`, this node uses.
pub const DEVICE_PLUGIN_CONFIG: &str = "nvidia.com/device-plugin.config";

/// The GPU Operator's MIG Manager label: the MIG layout (a key of
/// mig-parted's `mig-configs:`) the node's GPUs should hold.
pub const MIG_CONFIG: &str = "nvidia.com/mig.config";

/// MIG Manager's report on [`MIG_CONFIG`]: one of [`MigConfigState`]'s
/// values (`pending`, `rebooting`, `success`, `failed`).
pub const MIG_CONFIG_STATE: &str = "nvidia.com/mig.config.state";

/// The hash of what a node advertises (written as a node label through the
/// feature file, and as a NodeOverlay annotation), so a node can be
/// compared with the configuration meant for it.
pub const CONFIG_HASH: &str = "gpu-slicer.io/config-hash";

/// Node annotation: the node's per-GPU MIG state (MIG mode, the GPU
/// instances with their placements and devices, which of them pods hold),
/// written by the node daemon and read by `gpu-slicer simulate`; its format
/// is [`crate::mig_state`].
pub const MIG_STATE: &str = "gpu-slicer.io/mig-state";

/// NodeOverlay annotation: the MIG layout an overlay's capacity assumes.
pub const OVERLAY_MIG_CONFIG: &str = "gpu-slicer.io/mig-config";

/// NodeOverlay annotation: the named config an overlay's capacity assumes.
pub const OVERLAY_CONFIG_NAME: &str = "gpu-slicer.io/config-name";

/// Node annotation: the per-GPU MIG target (the GPU instances each named
/// GPU should hold, with their placements) that `--apply-mig-layouts`
/// applies by changing only free instances; its format and the plan are
/// [`crate::mig_target`]. Written by a controller (or a person), read by the
/// node daemon.
pub const MIG_TARGET: &str = "gpu-slicer.io/mig-target";

/// The values of [`MIG_CONFIG_STATE`], as MIG Manager writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigConfigState {
    /// A change is under way: nothing may be admitted onto the GPUs.
    Pending,
    /// The node reboots to finish a change (MIG mode needs a reset).
    Rebooting,
    /// The GPUs hold the layout [`MIG_CONFIG`] names.
    Success,
    /// The change did not complete; the GPUs hold whatever they hold.
    Failed,
}

impl MigConfigState {
    pub const ALL: [MigConfigState; 4] = [
        MigConfigState::Pending,
        MigConfigState::Rebooting,
        MigConfigState::Success,
        MigConfigState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MigConfigState::Pending => "pending",
            MigConfigState::Rebooting => "rebooting",
            MigConfigState::Success => "success",
            MigConfigState::Failed => "failed",
        }
    }

    /// The state a label value names; `None` for anything else.
    pub fn parse(value: &str) -> Option<MigConfigState> {
        Self::ALL.into_iter().find(|s| s.as_str() == value)
    }
}

/// Whether the devices of MIG-capable GPUs must be withdrawn (advertised
/// Unhealthy) under these label values: while a change is `pending` or
/// `rebooting`, and while a layout is asked for that nobody has reported on
/// yet (a node that scales up from zero must not admit pods onto whole GPUs
/// before its layout is applied). `success` and `failed` end it: the GPUs
/// then hold whatever discovery finds.
pub fn mig_withdrawn(state: Option<&str>, config: Option<&str>) -> bool {
    match state.and_then(MigConfigState::parse) {
        Some(MigConfigState::Pending | MigConfigState::Rebooting) => true,
        Some(MigConfigState::Success | MigConfigState::Failed) => false,
        None => config.is_some(),
    }
}

/// Which devices a MIG change under way withdraws (advertises Unhealthy).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum MigScope {
    /// Every MIG-capable GPU's devices: a change MIG Manager makes, or a
    /// named layout `--apply-mig-layouts` applies. Which GPUs change is not
    /// known from the labels (MIG Manager may re-cut any of them), so none
    /// may admit a pod meanwhile: NVIDIA's behaviour.
    #[default]
    Node,
    /// A per-GPU target ([`MIG_TARGET`]): per GPU being changed (by UUID),
    /// the GPU instances the change keeps (by GPU-instance id). Every
    /// device of such a GPU is withdrawn except those of the instances
    /// kept: the instances destroyed stop being offered (no pod is admitted
    /// onto one about to vanish), an instance that appears before the
    /// change ends is not offered until it is rediscovered, and the kept
    /// ones (held or free) stay Healthy. GPUs not named are not touched.
    /// A kept instance is never destroyed, so its id stays its own for the
    /// whole change.
    Gpus(BTreeMap<String, BTreeSet<u32>>),
}

/// The two MIG labels as last seen (`nvidia.com/mig.config` and
/// `nvidia.com/mig.config.state`), whether MIG Manager or
/// `--apply-mig-layouts` sets them, and what a change under way withdraws.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigLevels {
    /// `nvidia.com/mig.config`: the layout asked for.
    pub config: Option<String>,
    /// `nvidia.com/mig.config.state`: pending, rebooting, success, failed.
    pub state: Option<String>,
    /// Grows whenever the two labels may have changed (each change seen,
    /// each gap in watching them); equal revisions mean nothing changed.
    pub revision: u64,
    /// What is withdrawn while [`MigLevels::withdrawn`]: the whole node for
    /// MIG Manager's labels (the Node carries no more), the GPUs a target
    /// changes for the applier's.
    pub scope: MigScope,
}

impl MigLevels {
    /// Whether these levels withdraw the MIG-capable GPUs ([`mig_withdrawn`]).
    pub fn withdrawn(&self) -> bool {
        mig_withdrawn(self.state.as_deref(), self.config.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_decide_withdrawal() {
        for state in MigConfigState::ALL {
            assert_eq!(MigConfigState::parse(state.as_str()), Some(state));
        }
        assert_eq!(MigConfigState::parse("Success"), None);
        let cases = [
            (Some("pending"), None, true),
            (Some("rebooting"), Some("all-1g.5gb"), true),
            (Some("success"), Some("all-1g.5gb"), false),
            (Some("failed"), Some("all-1g.5gb"), false),
            (None, Some("all-1g.5gb"), true),
            (Some("unknown"), Some("all-1g.5gb"), true),
            (Some("unknown"), None, false),
            (None, None, false),
        ];
        for (state, config, want) in cases {
            assert_eq!(mig_withdrawn(state, config), want, "{state:?} {config:?}");
        }
    }
}
