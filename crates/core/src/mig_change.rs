//! What changing a GPU's MIG layout takes, as NVML operations, decided from
//! what the GPU holds now and the layout wanted. Pure: `gpu-slicer mig
//! apply` runs the plan (`--dry-run` prints it); nothing here touches a GPU.
//!
//! Per GPU, as mig-parted does: a GPU already holding exactly the wanted
//! instances is left alone; otherwise its compute and GPU instances are
//! destroyed and the wanted ones created at the catalog's placements
//! (largest first, lowest free start), each with one compute instance over
//! the whole GPU instance. Turning MIG mode on or off is an operation of
//! its own, which may take effect at once or only after a GPU reset (on
//! some systems a reboot): the plan goes no further for that GPU, since
//! instances cannot be created before the mode is active; the executor
//! plans the GPU again once it is.

use std::fmt;

use crate::gpu::catalog::{self, CatalogError, GpuModel};
use crate::mig_parted::{GpuIdentity, LayoutError, MigLayouts};

/// One GPU as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuNow {
    pub index: u32,
    pub uuid: String,
    /// The product name NVML reports.
    pub model: String,
    /// PCI device id as `0xDDDDVVVV` (what mig-parted's `device-filter` matches).
    pub pci_device_id: u32,
    pub mig_current: bool,
    pub mig_pending: bool,
    /// Existing MIG devices: (profile name, GI id, CI id).
    pub devices: Vec<(String, u32, u32)>,
}

/// One NVML operation, in the order to run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    SetMigMode {
        enable: bool,
    },
    DestroyComputeInstance {
        gpu_instance: u32,
        compute_instance: u32,
    },
    DestroyGpuInstance {
        gpu_instance: u32,
    },
    CreateGpuInstance {
        profile: &'static str,
        profile_id: u32,
        start: u32,
        size: u32,
        gpu_instance: u32,
    },
    CreateComputeInstance {
        gpu_instance: u32,
        slices: u32,
    },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::SetMigMode { enable } => write!(
                f,
                "nvmlDeviceSetMigMode({})",
                if *enable {
                    "NVML_DEVICE_MIG_ENABLE"
                } else {
                    "NVML_DEVICE_MIG_DISABLE"
                }
            ),
            Op::DestroyComputeInstance {
                gpu_instance,
                compute_instance,
            } => write!(
                f,
                "nvmlComputeInstanceDestroy(GPU instance {gpu_instance}, compute instance {compute_instance})"
            ),
            Op::DestroyGpuInstance { gpu_instance } => {
                write!(f, "nvmlGpuInstanceDestroy(GPU instance {gpu_instance})")
            }
            Op::CreateGpuInstance {
                profile,
                profile_id,
                start,
                size,
                gpu_instance,
            } => write!(
                f,
                "nvmlDeviceCreateGpuInstanceWithPlacement(profile {profile_id} ({profile}), start {start}, size {size}) -> GPU instance {gpu_instance}"
            ),
            Op::CreateComputeInstance {
                gpu_instance,
                slices,
            } => write!(
                f,
                "nvmlGpuInstanceCreateComputeInstance(GPU instance {gpu_instance}, {slices}-slice profile: the whole instance)"
            ),
        }
    }
}

/// What one GPU needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuChange {
    pub index: u32,
    pub uuid: String,
    pub model: String,
    /// Why (or why nothing).
    pub reason: String,
    pub ops: Vec<Op>,
    /// The change stops at a MIG mode switch that needs a GPU reset.
    pub needs_reset: bool,
}

/// The operations that give every GPU of the node `layout` (a named layout
/// of `layouts`, such as `all-balanced`; with the built-in layouts also
/// `1g.5gb=2,3g.20gb=1`). GPUs without MIG are left as they are (so
/// `all-disabled` is a no-op for them), and so are GPUs no entry of a
/// mig-parted file selects.
pub fn plan(
    gpus: &[GpuNow],
    layouts: &MigLayouts,
    layout: &str,
) -> Result<Vec<GpuChange>, LayoutError> {
    gpus.iter()
        .map(|gpu| plan_gpu(gpu, layouts, layout))
        .collect()
}

fn plan_gpu(gpu: &GpuNow, layouts: &MigLayouts, layout: &str) -> Result<GpuChange, LayoutError> {
    let mut change = GpuChange {
        index: gpu.index,
        uuid: gpu.uuid.clone(),
        model: gpu.model.clone(),
        reason: String::new(),
        ops: Vec::new(),
        needs_reset: false,
    };
    let Some(model) = catalog::model(&gpu.model).filter(|m| m.mig_capable()) else {
        change.reason = "not MIG-capable (or not in the catalog): left as it is".into();
        return Ok(change);
    };
    let identity = GpuIdentity {
        index: gpu.index,
        pci_device_id: gpu.pci_device_id,
        model,
    };
    let wanted = match layouts.resolve(layout, identity) {
        Ok(Some(wanted)) => wanted,
        Ok(None) => {
            change.reason = format!("no entry of '{layout}' selects this GPU: left as it is");
            return Ok(change);
        }
        Err(LayoutError::Catalog(e)) => {
            return Err(e
                .in_context(format!("GPU {} ({})", gpu.index, gpu.uuid))
                .into());
        }
        Err(e) => return Err(e),
    };
    if !wanted.mig_enabled() {
        destroy_all(gpu, &mut change.ops);
        if gpu.mig_current || gpu.mig_pending {
            change.ops.push(Op::SetMigMode { enable: false });
            change.needs_reset = gpu.mig_current;
            change.reason = "MIG mode is on; turning it off may need a GPU reset (NVML tells when the mode is set)".into();
        } else {
            change.reason = "MIG mode is already off".into();
        }
        return Ok(change);
    }
    if !gpu.mig_current {
        change.ops.push(Op::SetMigMode { enable: true });
        change.needs_reset = true;
        change.reason = format!(
            "MIG mode is off{}; turning it on may need a GPU reset (NVML tells when the mode is set), and the instances of '{layout}' are created once it is on",
            if gpu.mig_pending {
                " (already pending on)"
            } else {
                ""
            }
        );
        return Ok(change);
    }
    let profiles = wanted.profiles().to_vec();
    if holds_exactly(gpu, &profiles) {
        change.reason = format!("already holds '{layout}'");
        return Ok(change);
    }
    destroy_all(gpu, &mut change.ops);
    create(model, &profiles, &mut change.ops)?;
    change.reason = if gpu.devices.is_empty() {
        format!("MIG mode is on with no instances; creating '{layout}'")
    } else {
        format!("holds other instances; replacing them with '{layout}'")
    };
    Ok(change)
}

/// The GPU holds one full compute instance per wanted GPU instance, of the
/// wanted profiles (order aside).
fn holds_exactly(gpu: &GpuNow, profiles: &[&'static catalog::MigProfile]) -> bool {
    let mut have: Vec<&str> = gpu.devices.iter().map(|(p, _, _)| p.as_str()).collect();
    let mut want: Vec<&str> = profiles.iter().map(|p| p.name).collect();
    have.sort_unstable();
    want.sort_unstable();
    have == want
}

fn destroy_all(gpu: &GpuNow, ops: &mut Vec<Op>) {
    for (_, gi, ci) in &gpu.devices {
        ops.push(Op::DestroyComputeInstance {
            gpu_instance: *gi,
            compute_instance: *ci,
        });
    }
    let mut gis: Vec<u32> = gpu.devices.iter().map(|(_, gi, _)| *gi).collect();
    gis.sort_unstable();
    gis.dedup();
    for gi in gis {
        ops.push(Op::DestroyGpuInstance { gpu_instance: gi });
    }
}

fn create(
    model: &GpuModel,
    profiles: &[&'static catalog::MigProfile],
    ops: &mut Vec<Op>,
) -> Result<(), CatalogError> {
    let mut placements = catalog::place(model, profiles)?;
    // Largest first, as they were fitted.
    placements.sort_by(|a, b| {
        b.profile
            .placement_size
            .cmp(&a.profile.placement_size)
            .then(a.start.cmp(&b.start))
    });
    for p in placements {
        ops.push(Op::CreateGpuInstance {
            profile: p.profile.name,
            profile_id: p.profile.id,
            start: p.start,
            size: p.profile.placement_size,
            gpu_instance: p.gpu_instance_id,
        });
        ops.push(Op::CreateComputeInstance {
            gpu_instance: p.gpu_instance_id,
            slices: p.profile.compute_slices,
        });
    }
    Ok(())
}

/// The plan as a person reads it.
pub fn render(changes: &[GpuChange], layout: &str) -> String {
    let mut out = format!("MIG layout '{layout}' (dry run: nothing is changed)\n");
    for c in changes {
        out.push_str(&format!(
            "GPU {} ({}, {}): {}\n",
            c.index, c.model, c.uuid, c.reason
        ));
        for op in &c.ops {
            out.push_str(&format!("  {op}\n"));
        }
        if c.needs_reset {
            out.push_str(
                "  then: if the mode stays pending, a GPU reset or a reboot, which gpu-slicer never does itself (the apply reports it and is finished afterwards); if it is active at once, the GPU is planned again and its instances created\n",
            );
        }
    }
    out
}

/// What applying a layout did to one GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to do: it holds the layout, or the layout leaves it alone.
    Unchanged,
    /// Its operations ran and it now holds the layout.
    Applied,
    /// Refused: processes run on it (pids), or pods hold its devices.
    Busy { holders: Vec<String> },
    /// Refused: a per-GPU target does not keep instances something holds
    /// (one reason per held instance, from
    /// [`crate::mig_target::Blocked::reasons`]); nothing was changed.
    Blocked { reasons: Vec<String> },
    /// Its MIG mode change is pending: it takes effect after a GPU reset
    /// or a reboot, which gpu-slicer never does itself.
    ResetRequired { enable: bool },
    /// An NVML operation failed (what it left was cleaned up as far as
    /// possible; the next attempt starts from what the GPU holds).
    Failed { operation: String, error: String },
}

/// One GPU's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuOutcome {
    pub index: u32,
    pub uuid: String,
    pub outcome: Outcome,
}

/// `nvidia.com/mig.config.state` after an apply, as MIG Manager reports it
/// (declared once, with the label's name, in [`crate::node_labels`]).
pub use crate::node_labels::MigConfigState as ConfigState;

/// The state to report and, for `failed`, why (one clause per GPU that
/// did not get the layout): `success` only when every GPU holds it.
pub fn summarize(outcomes: &[GpuOutcome], layout: &str) -> (ConfigState, String) {
    summarize_change(outcomes, &format!("MIG layout '{layout}'"))
}

/// [`summarize`] for any change, named by `subject` (`MIG layout
/// 'all-balanced'`, `MIG target`): `<subject> applied (…)` or
/// `<subject> not applied: …`.
pub fn summarize_change(outcomes: &[GpuOutcome], subject: &str) -> (ConfigState, String) {
    let problems: Vec<String> = outcomes
        .iter()
        .filter_map(|g| {
            let why = match &g.outcome {
                Outcome::Unchanged | Outcome::Applied => return None,
                Outcome::Busy { holders } => format!(
                    "is in use ({}); stop that work, or apply with force",
                    holders.join(", ")
                ),
                Outcome::Blocked { reasons } => format!(
                    "cannot get its target: {}; stop that work, or keep those instances in the target",
                    reasons.join("; ")
                ),
                Outcome::ResetRequired { enable } => format!(
                    "has MIG mode {} pending: it takes effect after a GPU reset (`nvidia-smi -r -i {}`, with nothing running on it) or a reboot, which gpu-slicer never does itself; the layout is applied once the mode is active",
                    if *enable { "on" } else { "off" },
                    g.index
                ),
                Outcome::Failed { operation, error } => format!("{operation} failed: {error}"),
            };
            Some(format!("GPU {} ({}) {why}", g.index, g.uuid))
        })
        .collect();
    if problems.is_empty() {
        let changed = outcomes
            .iter()
            .filter(|g| g.outcome == Outcome::Applied)
            .count();
        (
            ConfigState::Success,
            format!("{subject} applied ({changed} GPU(s) changed)"),
        )
    } else {
        (
            ConfigState::Failed,
            format!("{subject} not applied: {}", problems.join("; ")),
        )
    }
}

/// The compute-instance profile (`NVML_COMPUTE_INSTANCE_PROFILE_*`) of a
/// compute instance of `slices` slices.
pub fn compute_instance_profile(slices: u32) -> Option<u32> {
    match slices {
        1 => Some(0),
        2 => Some(1),
        3 => Some(2),
        4 => Some(3),
        7 => Some(4),
        8 => Some(5),
        6 => Some(6),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h200(mig: bool, devices: &[(&str, u32, u32)]) -> GpuNow {
        GpuNow {
            index: 0,
            uuid: "GPU-0".into(),
            model: "NVIDIA H200".into(),
            pci_device_id: 0x2335_10DE,
            mig_current: mig,
            mig_pending: mig,
            devices: devices
                .iter()
                .map(|(p, g, c)| (p.to_string(), *g, *c))
                .collect(),
        }
    }

    #[test]
    fn mig_off_needs_the_mode_and_a_reset_first() {
        let c = &plan(&[h200(false, &[])], &MigLayouts::Builtin, "all-balanced").expect("plan")[0];
        assert_eq!(c.ops, vec![Op::SetMigMode { enable: true }]);
        assert!(c.needs_reset);
        assert!(c.reason.contains("may need a GPU reset"), "{}", c.reason);
    }

    #[test]
    fn an_empty_mig_gpu_gets_the_layout_largest_first_at_the_catalogs_placements() {
        let c = &plan(&[h200(true, &[])], &MigLayouts::Builtin, "all-balanced").expect("plan")[0];
        let text: Vec<String> = c.ops.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            vec![
                "nvmlDeviceCreateGpuInstanceWithPlacement(profile 9 (3g.71gb), start 4, size 4) -> GPU instance 2",
                "nvmlGpuInstanceCreateComputeInstance(GPU instance 2, 3-slice profile: the whole instance)",
                "nvmlDeviceCreateGpuInstanceWithPlacement(profile 14 (2g.35gb), start 0, size 2) -> GPU instance 3",
                "nvmlGpuInstanceCreateComputeInstance(GPU instance 3, 2-slice profile: the whole instance)",
                "nvmlDeviceCreateGpuInstanceWithPlacement(profile 19 (1g.18gb), start 2, size 1) -> GPU instance 9",
                "nvmlGpuInstanceCreateComputeInstance(GPU instance 9, 1-slice profile: the whole instance)",
                "nvmlDeviceCreateGpuInstanceWithPlacement(profile 19 (1g.18gb), start 3, size 1) -> GPU instance 10",
                "nvmlGpuInstanceCreateComputeInstance(GPU instance 10, 1-slice profile: the whole instance)",
            ]
        );
        assert!(!c.needs_reset);
    }

    #[test]
    fn a_gpu_holding_the_layout_is_left_alone_and_another_is_replaced() {
        let held = [
            ("3g.71gb", 2, 0),
            ("2g.35gb", 3, 0),
            ("1g.18gb", 9, 0),
            ("1g.18gb", 10, 0),
        ];
        let c = &plan(&[h200(true, &held)], &MigLayouts::Builtin, "all-balanced").expect("plan")[0];
        assert!(c.ops.is_empty(), "{:?}", c.ops);
        assert_eq!(c.reason, "already holds 'all-balanced'");
        let c = &plan(&[h200(true, &held)], &MigLayouts::Builtin, "all-1g.18gb").expect("plan")[0];
        assert_eq!(
            c.ops[..6],
            [
                Op::DestroyComputeInstance {
                    gpu_instance: 2,
                    compute_instance: 0
                },
                Op::DestroyComputeInstance {
                    gpu_instance: 3,
                    compute_instance: 0
                },
                Op::DestroyComputeInstance {
                    gpu_instance: 9,
                    compute_instance: 0
                },
                Op::DestroyComputeInstance {
                    gpu_instance: 10,
                    compute_instance: 0
                },
                Op::DestroyGpuInstance { gpu_instance: 2 },
                Op::DestroyGpuInstance { gpu_instance: 3 },
            ]
        );
        let creates = c
            .ops
            .iter()
            .filter(|o| matches!(o, Op::CreateGpuInstance { .. }))
            .count();
        assert_eq!(creates, 7);
    }

    #[test]
    fn disabling_and_gpus_without_mig() {
        let c = &plan(
            &[h200(true, &[("7g.141gb", 0, 0)])],
            &MigLayouts::Builtin,
            "all-disabled",
        )
        .expect("plan")[0];
        assert_eq!(
            c.ops,
            vec![
                Op::DestroyComputeInstance {
                    gpu_instance: 0,
                    compute_instance: 0
                },
                Op::DestroyGpuInstance { gpu_instance: 0 },
                Op::SetMigMode { enable: false },
            ]
        );
        assert!(c.needs_reset);
        let a10g = GpuNow {
            model: "NVIDIA A10G".into(),
            ..h200(false, &[])
        };
        let c = &plan(&[a10g], &MigLayouts::Builtin, "all-balanced").expect("plan")[0];
        assert!(c.ops.is_empty());
        assert!(c.reason.starts_with("not MIG-capable"), "{}", c.reason);
    }

    #[test]
    fn a_mig_parted_file_decides_per_gpu_and_unselected_gpus_are_left_alone() {
        let text = "version: v1\nmig-configs:\n  half:\n    - devices: [1]\n      mig-enabled: true\n      mig-devices: {\"3g.71gb\": 2}\n";
        let layouts = MigLayouts::File {
            source_name: "mig.yaml".into(),
            config: crate::mig_parted::parse(text, "mig.yaml").expect("parses"),
        };
        let gpus = [
            h200(true, &[]),
            GpuNow {
                index: 1,
                ..h200(true, &[])
            },
        ];
        let changes = plan(&gpus, &layouts, "half").expect("plan");
        assert!(changes[0].ops.is_empty());
        assert_eq!(
            changes[0].reason,
            "no entry of 'half' selects this GPU: left as it is"
        );
        assert_eq!(changes[1].ops.len(), 4, "{:?}", changes[1].ops);
        let e = plan(&gpus, &layouts, "all-balanced").expect_err("not in the file");
        assert_eq!(
            e.to_string(),
            "MIG config 'all-balanced' is not in mig.yaml; its configs are: half"
        );
    }

    #[test]
    fn success_only_when_every_gpu_holds_the_layout_and_failures_say_why() {
        let gpu = |index: u32, outcome: Outcome| GpuOutcome {
            index,
            uuid: format!("GPU-{index}"),
            outcome,
        };
        let (state, message) = summarize(
            &[gpu(0, Outcome::Applied), gpu(1, Outcome::Unchanged)],
            "all-balanced",
        );
        assert_eq!(state, ConfigState::Success);
        assert_eq!(
            message,
            "MIG layout 'all-balanced' applied (1 GPU(s) changed)"
        );
        let (state, message) = summarize(
            &[
                gpu(0, Outcome::Applied),
                gpu(
                    1,
                    Outcome::Busy {
                        holders: vec!["process 4242".into()],
                    },
                ),
                gpu(2, Outcome::ResetRequired { enable: true }),
                gpu(
                    3,
                    Outcome::Failed {
                        operation: "nvmlGpuInstanceDestroy(GPU instance 7)".into(),
                        error: "In use by another client".into(),
                    },
                ),
            ],
            "all-1g.5gb",
        );
        assert_eq!(state, ConfigState::Failed);
        assert_eq!(
            message,
            "MIG layout 'all-1g.5gb' not applied: GPU 1 (GPU-1) is in use (process 4242); stop that work, or apply with force; \
             GPU 2 (GPU-2) has MIG mode on pending: it takes effect after a GPU reset (`nvidia-smi -r -i 2`, with nothing running on it) or a reboot, which gpu-slicer never does itself; the layout is applied once the mode is active; \
             GPU 3 (GPU-3) nvmlGpuInstanceDestroy(GPU instance 7) failed: In use by another client"
        );
    }

    #[test]
    fn a_layout_that_does_not_exist_is_the_catalogs_error() {
        let e = plan(&[h200(true, &[])], &MigLayouts::Builtin, "all-3g.40gb").expect_err("unknown");
        assert!(e.to_string().contains("valid layouts"), "{e}");
        assert!(e.to_string().contains("for GPU 0 (GPU-0)"), "{e}");
    }
}
