//! A node's per-GPU MIG target, and the fewest NVML operations that give a
//! GPU its target without touching an instance a pod holds.
//!
//! A named layout ([`crate::mig_change`]) re-cuts a whole GPU, as mig-parted
//! does: every instance is destroyed and the layout created, so every pod on
//! the GPU loses its device. A target names, per GPU, the GPU instances
//! wanted and where they sit (profile, first memory slice); the plan
//! ([`plan_gpu`]) keeps every instance that is in the target, destroys only
//! those that are not, and creates the missing ones at exactly their
//! placements, so the instances the target keeps run on undisturbed. An
//! instance something holds (a pod, per the kubelet's PodResources; a
//! process) is never destroyed: a target that does not keep one is refused
//! for its GPU, saying who holds what ([`Blocked`]).
//!
//! The target is the Node annotation [`MIG_TARGET`] (`gpu-slicer.io/mig-target`),
//! JSON, one entry per GPU to change; GPUs it does not name are left alone:
//!
//! ```json
//! [{"index": 0, "instances": [{"profile": "1g.5gb", "start": 0}, {"profile": "3g.20gb", "start": 4}]},
//!  {"uuid": "GPU-5c3a…", "instances": []}]
//! ```
//!
//! | Field | Meaning |
//! |---|---|
//! | `index` or `uuid` | the GPU: its NVML index, or its UUID (exactly one of the two) |
//! | `instances` | every GPU instance the GPU should hold; `[]`: none |
//! | `profile` | a GPU-instance profile of the GPU's model (`3g.20gb`, `1g.10gb+me`; `+` may be written `.`) |
//! | `start` | the memory slice its placement starts at (one of the profile's placements, as `nvidia-smi mig -lgipp` lists them) |
//!
//! Unknown fields are refused (a misspelt `instance` must not read as "no
//! instances", which would destroy every free one). Only GPUs in MIG mode
//! can be targeted: a mode change needs a GPU reset, which gpu-slicer never
//! does (a named layout asks for one, and reports it). Pure: the daemon
//! reads the GPUs and runs the operations.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::gpu::catalog::{self, GpuModel, MigProfile};
use crate::mig_change::Op;
use crate::mig_demand::{InstanceAt, LayoutInvalid, layout_valid};
pub use crate::node_labels::MIG_TARGET;

/// The largest annotation value read: an eighth of the 256 KiB the API
/// server allows for all of a Node's annotations together; sixteen GPUs of
/// seven instances take under 1 KiB.
pub const MAX_BYTES: usize = 32 * 1024;
/// Most GPU entries (no node has more than 16 GPUs).
pub const MAX_GPUS: usize = 16;
/// Most instances of one GPU entry (MIG allows at most 7 per GPU).
pub const MAX_INSTANCES: usize = 8;
/// Longest profile name or GPU UUID accepted.
const MAX_NAME: usize = 64;

/// One GPU's entry, as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    pub instances: Vec<TargetInstance>,
}

/// One wanted GPU instance, as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetInstance {
    pub profile: String,
    pub start: u32,
}

/// Why a target cannot be applied at all; each names what to fix. Nothing
/// is changed on any GPU when one of these is found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error(
        "{bytes} bytes, more than the {MAX_BYTES} a MIG target may take (a Node's annotations together are limited to 256 KiB)"
    )]
    TooLarge { bytes: usize },
    #[error(
        "not the expected JSON, a list with one entry per GPU such as [{{\"index\": 0, \"instances\": [{{\"profile\": \"3g.20gb\", \"start\": 4}}]}}]: {0}"
    )]
    Json(String),
    #[error("{count} GPU entries, more than the {MAX_GPUS} a node has at most")]
    TooManyGpus { count: usize },
    #[error("GPU entry {position}: give the GPU's index or its uuid (exactly one)")]
    NoSingleGpu { position: usize },
    #[error(
        "GPU entry {position}: {count} instances, more than the {MAX_INSTANCES} a GPU holds at most"
    )]
    TooManyInstances { position: usize, count: usize },
    #[error("GPU entry {position}: {what} is longer than {MAX_NAME} characters")]
    TooLong { position: usize, what: &'static str },
    #[error("GPU entry {position}: this node has no GPU {gpu} (its GPUs: {known})")]
    UnknownGpu {
        position: usize,
        gpu: String,
        known: String,
    },
    #[error("GPU {gpu} is named by two entries ({first} and {second}); name each GPU once")]
    TwiceTheSameGpu {
        gpu: u32,
        first: usize,
        second: usize,
    },
    #[error(
        "GPU {gpu} ({product}) is not MIG-capable, or not in gpu-slicer's catalog: a target applies only to MIG GPUs"
    )]
    NotMigCapable { gpu: u32, product: String },
    #[error(
        "GPU {gpu} has MIG mode off: a target changes instances only on GPUs in MIG mode (turning it on needs a GPU reset, which gpu-slicer never does; name a layout in nvidia.com/mig.config to ask for it)"
    )]
    MigOff { gpu: u32 },
    #[error(
        "GPU {gpu} ({model}): {profile:?} is not a GPU-instance profile of this model; its profiles: {known}"
    )]
    UnknownProfile {
        gpu: u32,
        model: &'static str,
        profile: String,
        known: String,
    },
    #[error(
        "GPU {gpu} ({model}): {profile} cannot start at memory slice {start}; its placements start at {starts}"
    )]
    BadStart {
        gpu: u32,
        model: &'static str,
        profile: &'static str,
        start: u32,
        starts: String,
    },
    #[error(
        "GPU {gpu} ({model}): {profile} at memory slice {start} overlaps {other} at memory slice {other_start}"
    )]
    Overlap {
        gpu: u32,
        model: &'static str,
        profile: &'static str,
        start: u32,
        other: &'static str,
        other_start: u32,
    },
    #[error("GPU {gpu} ({model}): the instances are not a layout it allows: {reason}")]
    Invalid {
        gpu: u32,
        model: &'static str,
        reason: LayoutInvalid,
    },
}

/// Reads the annotation's text: bounded, strict, each entry naming one GPU
/// with at most [`MAX_INSTANCES`] instances. What the names mean is checked
/// against the node's GPUs by [`resolve`].
pub fn parse(text: &str) -> Result<Vec<GpuTarget>, TargetError> {
    if text.len() > MAX_BYTES {
        return Err(TargetError::TooLarge { bytes: text.len() });
    }
    let entries: Vec<GpuTarget> =
        serde_json::from_str(text).map_err(|e| TargetError::Json(e.to_string()))?;
    if entries.len() > MAX_GPUS {
        return Err(TargetError::TooManyGpus {
            count: entries.len(),
        });
    }
    for (position, entry) in entries.iter().enumerate() {
        if entry.index.is_some() == entry.uuid.is_some() {
            return Err(TargetError::NoSingleGpu { position });
        }
        if entry.uuid.as_ref().is_some_and(|u| u.len() > MAX_NAME) {
            return Err(TargetError::TooLong {
                position,
                what: "uuid",
            });
        }
        if entry.instances.len() > MAX_INSTANCES {
            return Err(TargetError::TooManyInstances {
                position,
                count: entry.instances.len(),
            });
        }
        if entry.instances.iter().any(|i| i.profile.len() > MAX_NAME) {
            return Err(TargetError::TooLong {
                position,
                what: "a profile name",
            });
        }
    }
    Ok(entries)
}

/// One GPU instance that exists now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceNow {
    /// Its GPU-instance id.
    pub gpu_instance: u32,
    pub profile: &'static MigProfile,
    /// First memory slice of its placement.
    pub start: u32,
    /// Its compute instances' ids (none: an empty GPU instance).
    pub compute_instances: Vec<u32>,
    /// Who holds it (`pod ns/name (resource)`, `process 4242`); empty: free.
    pub holders: Vec<String>,
}

impl InstanceNow {
    pub fn at(&self) -> InstanceAt {
        InstanceAt {
            profile: self.profile,
            start: self.start,
        }
    }
}

/// One GPU as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuState {
    pub index: u32,
    pub uuid: String,
    /// The product name NVML reports.
    pub product: String,
    /// MIG mode is on now (current, not pending).
    pub mig_current: bool,
    pub instances: Vec<InstanceNow>,
}

/// A target entry checked against the node: the GPU (its index) and the
/// instances wanted there, each at one of its profile's placements,
/// overlapping nothing, within the model's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedTarget {
    pub index: u32,
    pub uuid: String,
    pub model: &'static GpuModel,
    pub wanted: Vec<InstanceAt>,
}

/// Checks every entry against the node's GPUs and their models' catalog
/// entries. All or nothing: one bad entry refuses the whole target, so a
/// half-understood target never changes a GPU.
pub fn resolve(
    entries: &[GpuTarget],
    gpus: &[GpuState],
) -> Result<Vec<ResolvedTarget>, TargetError> {
    let mut named: Vec<(u32, usize)> = Vec::new();
    let mut out = Vec::new();
    for (position, entry) in entries.iter().enumerate() {
        let found = gpus.iter().find(|g| match (&entry.index, &entry.uuid) {
            (Some(index), _) => g.index == *index,
            (None, Some(uuid)) => g.uuid == *uuid,
            (None, None) => false,
        });
        let Some(gpu) = found else {
            return Err(TargetError::UnknownGpu {
                position,
                gpu: entry
                    .index
                    .map_or_else(|| entry.uuid.clone().unwrap_or_default(), |i| i.to_string()),
                known: gpus
                    .iter()
                    .map(|g| format!("{} ({})", g.index, g.uuid))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        if let Some((_, first)) = named.iter().find(|(i, _)| *i == gpu.index) {
            return Err(TargetError::TwiceTheSameGpu {
                gpu: gpu.index,
                first: *first,
                second: position,
            });
        }
        named.push((gpu.index, position));
        out.push(resolve_gpu(entry, gpu)?);
    }
    Ok(out)
}

fn resolve_gpu(entry: &GpuTarget, gpu: &GpuState) -> Result<ResolvedTarget, TargetError> {
    let Some((model, geometry)) =
        catalog::model(&gpu.product).and_then(|m| m.mig.as_ref().map(|g| (m, g)))
    else {
        return Err(TargetError::NotMigCapable {
            gpu: gpu.index,
            product: gpu.product.clone(),
        });
    };
    if !gpu.mig_current {
        return Err(TargetError::MigOff { gpu: gpu.index });
    }
    let mut wanted: Vec<InstanceAt> = Vec::new();
    for instance in &entry.instances {
        let Some(profile) = geometry.profile(&instance.profile) else {
            return Err(TargetError::UnknownProfile {
                gpu: gpu.index,
                model: model.product_name,
                profile: instance.profile.clone(),
                known: geometry
                    .profiles
                    .iter()
                    .map(|p| p.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let start = instance.start;
        if !profile.placement_starts.contains(&start)
            || start + profile.placement_size > geometry.memory_slices
        {
            return Err(TargetError::BadStart {
                gpu: gpu.index,
                model: model.product_name,
                profile: profile.name,
                start,
                starts: profile
                    .placement_starts
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        if let Some(other) = wanted.iter().find(|w| overlaps(w, profile, start)) {
            return Err(TargetError::Overlap {
                gpu: gpu.index,
                model: model.product_name,
                profile: profile.name,
                start,
                other: other.profile.name,
                other_start: other.start,
            });
        }
        wanted.push(InstanceAt { profile, start });
    }
    // Counts and compute slices: the rule every MIG layout keeps.
    layout_valid(model, &wanted).map_err(|reason| TargetError::Invalid {
        gpu: gpu.index,
        model: model.product_name,
        reason,
    })?;
    Ok(ResolvedTarget {
        index: gpu.index,
        uuid: gpu.uuid.clone(),
        model,
        wanted,
    })
}

fn overlaps(a: &InstanceAt, profile: &MigProfile, start: u32) -> bool {
    a.start < start + profile.placement_size && start < a.start + a.profile.placement_size
}

/// Why a GPU cannot get its target now: instances something holds that the
/// target does not keep. Nothing is changed on that GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    pub held: Vec<HeldInTheWay>,
}

/// One held instance the target would need destroyed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldInTheWay {
    pub instance: InstanceAt,
    pub gpu_instance: u32,
    pub holders: Vec<String>,
    /// The target's instances that would sit on its memory slices.
    pub needed_by: Vec<InstanceAt>,
}

impl Blocked {
    /// One clause per held instance, for the Event and the state's reason:
    /// who holds what, and why the target needs it gone.
    pub fn reasons(&self) -> Vec<String> {
        self.held
            .iter()
            .map(|h| {
                let needed = if h.needed_by.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; {} need{} its memory slices",
                        h.needed_by
                            .iter()
                            .map(describe)
                            .collect::<Vec<_>>()
                            .join(" and "),
                        if h.needed_by.len() == 1 { "s" } else { "" }
                    )
                };
                format!(
                    "{} holds {} (GPU instance {}), which the target does not keep{needed}",
                    h.holders.join(" and "),
                    describe(&h.instance),
                    h.gpu_instance
                )
            })
            .collect()
    }
}

/// `3g.20gb at memory slice 4`.
pub fn describe(instance: &InstanceAt) -> String {
    format!(
        "{} at memory slice {}",
        instance.profile.name, instance.start
    )
}

/// What one GPU's plan does, for Events and the log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GpuPlan {
    pub destroy: Vec<InstanceAt>,
    pub create: Vec<InstanceAt>,
    /// The GPU instances kept, by id: what the node keeps serving while the
    /// change runs ([`crate::node_labels::MigScope::Gpus`]).
    pub keep: Vec<u32>,
    /// The NVML operations, in order: destroys first (compute instances,
    /// then their GPU instance), then creations, largest first.
    pub ops: Vec<Op>,
}

impl GpuPlan {
    /// The first GPU instance of `serving` (instances the node offers to
    /// pods while the change runs) that this plan would destroy; `None`
    /// when it destroys none of them. A plan made when a GPU's turn comes
    /// is checked with it against the instances its earlier check kept: a
    /// GPU that changed in between must not lose an instance a pod may be
    /// admitted onto at any moment.
    pub fn destroys_any_of(&self, serving: &BTreeSet<u32>) -> Option<u32> {
        self.ops.iter().find_map(|op| match op {
            Op::DestroyGpuInstance { gpu_instance } if serving.contains(gpu_instance) => {
                Some(*gpu_instance)
            }
            _ => None,
        })
    }

    /// `destroyed 1g.5gb at memory slice 4, …; created 3g.20gb at memory
    /// slice 4`, or `unchanged`.
    pub fn summary(&self) -> String {
        let list = |v: &[InstanceAt]| v.iter().map(describe).collect::<Vec<_>>().join(", ");
        match (self.destroy.is_empty(), self.create.is_empty()) {
            (true, true) => "unchanged".to_string(),
            (false, true) => format!("destroyed {}", list(&self.destroy)),
            (true, false) => format!("created {}", list(&self.create)),
            (false, false) => format!(
                "destroyed {}; created {}",
                list(&self.destroy),
                list(&self.create)
            ),
        }
    }
}

/// The fewest operations that give `gpu` exactly `wanted` (a resolved
/// target's instances): an instance at a wanted (profile, start) is kept,
/// whatever holds it; one not wanted is destroyed if free; each wanted one
/// missing is created at its start. Refused when a held instance is not
/// wanted. A GPU already holding the target needs no operation.
pub fn plan_gpu(
    model: &GpuModel,
    gpu: &GpuState,
    wanted: &[InstanceAt],
) -> Result<GpuPlan, Blocked> {
    let memory_slices = model.mig.as_ref().map_or(8, |g| g.memory_slices);
    let mut kept: BTreeSet<usize> = BTreeSet::new();
    let mut missing: Vec<InstanceAt> = Vec::new();
    for w in wanted {
        let existing = gpu
            .instances
            .iter()
            .enumerate()
            .find(|(i, n)| !kept.contains(i) && n.at() == *w);
        match existing {
            Some((i, _)) => {
                kept.insert(i);
            }
            None => missing.push(*w),
        }
    }
    let going: Vec<&InstanceNow> = gpu
        .instances
        .iter()
        .enumerate()
        .filter(|(i, _)| !kept.contains(i))
        .map(|(_, n)| n)
        .collect();
    let held: Vec<HeldInTheWay> = going
        .iter()
        .filter(|n| !n.holders.is_empty())
        .map(|n| HeldInTheWay {
            instance: n.at(),
            gpu_instance: n.gpu_instance,
            holders: n.holders.clone(),
            needed_by: missing
                .iter()
                .filter(|m| overlaps(m, n.profile, n.start))
                .copied()
                .collect(),
        })
        .collect();
    if !held.is_empty() {
        return Err(Blocked { held });
    }
    let mut plan = GpuPlan {
        keep: kept
            .iter()
            .map(|&i| gpu.instances[i].gpu_instance)
            .collect(),
        ..GpuPlan::default()
    };
    for n in &going {
        for &ci in &n.compute_instances {
            plan.ops.push(Op::DestroyComputeInstance {
                gpu_instance: n.gpu_instance,
                compute_instance: ci,
            });
        }
        plan.ops.push(Op::DestroyGpuInstance {
            gpu_instance: n.gpu_instance,
        });
        plan.destroy.push(n.at());
    }
    // Largest first, lowest start first: the order mig-parted creates in
    // (explicit placements make it matter less, but it costs nothing).
    missing.sort_by(|a, b| {
        b.profile
            .placement_size
            .cmp(&a.profile.placement_size)
            .then(a.start.cmp(&b.start))
    });
    for m in &missing {
        let gpu_instance =
            catalog::gpu_instance_id(memory_slices, m.start, m.profile.placement_size);
        plan.ops.push(Op::CreateGpuInstance {
            profile: m.profile.name,
            profile_id: m.profile.id,
            start: m.start,
            size: m.profile.placement_size,
            gpu_instance,
        });
        plan.ops.push(Op::CreateComputeInstance {
            gpu_instance,
            slices: m.profile.compute_slices,
        });
    }
    plan.create = missing;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A100: &str = "NVIDIA A100-SXM4-40GB";

    fn a100() -> &'static GpuModel {
        catalog::model(A100).expect("A100 in the catalog")
    }

    fn profile(name: &str) -> &'static MigProfile {
        a100().mig_profile(name).expect("profile")
    }

    /// Seven 1g.5gb, the one at `held_start` held by a pod.
    fn all_1g(held_start: Option<u32>) -> GpuState {
        GpuState {
            index: 0,
            uuid: "GPU-0".into(),
            product: A100.into(),
            mig_current: true,
            instances: (0..7)
                .map(|start| InstanceNow {
                    gpu_instance: 7 + start,
                    profile: profile("1g.5gb"),
                    start,
                    compute_instances: vec![0],
                    holders: if Some(start) == held_start {
                        vec!["pod ml/infer (nvidia.com/mig-1g.5gb)".into()]
                    } else {
                        Vec::new()
                    },
                })
                .collect(),
        }
    }

    fn target(text: &str, gpus: &[GpuState]) -> Result<Vec<ResolvedTarget>, TargetError> {
        resolve(&parse(text)?, gpus)
    }

    #[test]
    fn a_plan_keeps_what_it_does_not_destroy_and_says_which_served_instance_it_would_destroy() {
        let gpu = all_1g(Some(1));
        let t = target(
            r#"[{"index": 0, "instances": [{"profile": "1g.5gb", "start": 1}, {"profile": "1g.5gb", "start": 3}, {"profile": "3g.20gb", "start": 4}]}]"#,
            std::slice::from_ref(&gpu),
        )
        .expect("valid");
        let plan = plan_gpu(t[0].model, &gpu, &t[0].wanted).expect("not blocked");
        // Kept: the 1g at slices 1 and 3 (GPU instances 8 and 10).
        assert_eq!(
            plan.keep.iter().copied().collect::<BTreeSet<_>>(),
            BTreeSet::from([8, 10])
        );
        assert_eq!(plan.destroys_any_of(&BTreeSet::from([8, 10])), None);
        // The GPU changed since the check kept the 1g at slice 2 (GPU
        // instance 9): this plan would destroy it.
        assert_eq!(plan.destroys_any_of(&BTreeSet::from([8, 9, 10])), Some(9));
        assert_eq!(plan.destroys_any_of(&BTreeSet::new()), None);
    }

    #[test]
    fn free_1g_instances_make_room_for_a_3g_beside_the_held_one() {
        let gpu = all_1g(Some(1));
        let t = target(
            r#"[{"index": 0, "instances": [{"profile": "1g.5gb", "start": 1}, {"profile": "3g.20gb", "start": 4}]}]"#,
            std::slice::from_ref(&gpu),
        )
        .expect("valid");
        let plan = plan_gpu(t[0].model, &gpu, &t[0].wanted).expect("not blocked");
        assert_eq!(
            plan.summary(),
            "destroyed 1g.5gb at memory slice 0, 1g.5gb at memory slice 2, 1g.5gb at memory slice 3, \
             1g.5gb at memory slice 4, 1g.5gb at memory slice 5, 1g.5gb at memory slice 6; \
             created 3g.20gb at memory slice 4"
        );
        let text: Vec<String> = plan.ops.iter().map(ToString::to_string).collect();
        assert!(
            !text.iter().any(|t| t.contains("GPU instance 8)")),
            "{text:?}"
        );
        assert_eq!(
            text[text.len() - 2..],
            [
                "nvmlDeviceCreateGpuInstanceWithPlacement(profile 9 (3g.20gb), start 4, size 4) -> GPU instance 2",
                "nvmlGpuInstanceCreateComputeInstance(GPU instance 2, 3-slice profile: the whole instance)",
            ]
        );
    }

    #[test]
    fn a_target_that_does_not_keep_a_held_instance_is_refused_naming_the_pod() {
        let gpu = all_1g(Some(5));
        let t = target(
            r#"[{"index": 0, "instances": [{"profile": "3g.20gb", "start": 4}]}]"#,
            std::slice::from_ref(&gpu),
        )
        .expect("valid");
        let blocked = plan_gpu(t[0].model, &gpu, &t[0].wanted).expect_err("held");
        assert_eq!(
            blocked.reasons(),
            [
                "pod ml/infer (nvidia.com/mig-1g.5gb) holds 1g.5gb at memory slice 5 (GPU instance 12), \
              which the target does not keep; 3g.20gb at memory slice 4 needs its memory slices"
            ]
        );
    }

    #[test]
    fn the_current_layout_as_target_is_no_operation() {
        let gpu = all_1g(Some(0));
        let wanted: Vec<InstanceAt> = gpu.instances.iter().map(InstanceNow::at).collect();
        let plan = plan_gpu(a100(), &gpu, &wanted).expect("not blocked");
        assert!(plan.ops.is_empty());
        assert_eq!(plan.summary(), "unchanged");
    }

    #[test]
    fn bad_targets_say_what_to_fix() {
        let gpus = [all_1g(None)];
        let cases = [
            (
                "{}",
                "not the expected JSON, a list with one entry per GPU such as [{\"index\": 0, \"instances\": [{\"profile\": \"3g.20gb\", \"start\": 4}]}]: invalid type: map, expected a sequence at line 1 column 0",
            ),
            (
                r#"[{"index": 0, "instance": []}]"#,
                "not the expected JSON, a list with one entry per GPU such as [{\"index\": 0, \"instances\": [{\"profile\": \"3g.20gb\", \"start\": 4}]}]: unknown field `instance`, expected one of `index`, `uuid`, `instances` at line 1 column 24",
            ),
            (
                r#"[{"instances": []}]"#,
                "GPU entry 0: give the GPU's index or its uuid (exactly one)",
            ),
            (
                r#"[{"index": 3, "instances": []}]"#,
                "GPU entry 0: this node has no GPU 3 (its GPUs: 0 (GPU-0))",
            ),
            (
                r#"[{"index": 0, "instances": []}, {"uuid": "GPU-0", "instances": []}]"#,
                "GPU 0 is named by two entries (0 and 1); name each GPU once",
            ),
            (
                r#"[{"index": 0, "instances": [{"profile": "3g.40gb", "start": 0}]}]"#,
                "GPU 0 (NVIDIA A100-SXM4-40GB): \"3g.40gb\" is not a GPU-instance profile of this model; its profiles: 1g.5gb, 1g.5gb+me, 1g.10gb, 2g.10gb, 3g.20gb, 4g.20gb, 7g.40gb",
            ),
            (
                r#"[{"index": 0, "instances": [{"profile": "3g.20gb", "start": 2}]}]"#,
                "GPU 0 (NVIDIA A100-SXM4-40GB): 3g.20gb cannot start at memory slice 2; its placements start at 0, 4",
            ),
            (
                r#"[{"index": 0, "instances": [{"profile": "3g.20gb", "start": 4}, {"profile": "1g.5gb", "start": 5}]}]"#,
                "GPU 0 (NVIDIA A100-SXM4-40GB): 1g.5gb at memory slice 5 overlaps 3g.20gb at memory slice 4",
            ),
            (
                r#"[{"index": 0, "instances": [{"profile": "4g.20gb", "start": 0}, {"profile": "3g.20gb", "start": 4}, {"profile": "1g.5gb", "start": 6}]}]"#,
                "GPU 0 (NVIDIA A100-SXM4-40GB): 1g.5gb at memory slice 6 overlaps 3g.20gb at memory slice 4",
            ),
        ];
        for (text, want) in cases {
            let e = target(text, &gpus).expect_err(text);
            assert_eq!(e.to_string(), want, "{text}");
        }
        let mig_off = GpuState {
            mig_current: false,
            instances: Vec::new(),
            ..all_1g(None)
        };
        let e = target(r#"[{"index": 0, "instances": []}]"#, &[mig_off]).expect_err("off");
        assert!(e.to_string().starts_with("GPU 0 has MIG mode off: "), "{e}");
        let l4 = GpuState {
            product: "NVIDIA L4".into(),
            mig_current: false,
            instances: Vec::new(),
            ..all_1g(None)
        };
        let e = target(r#"[{"index": 0, "instances": []}]"#, &[l4]).expect_err("no MIG");
        assert_eq!(
            e.to_string(),
            "GPU 0 (NVIDIA L4) is not MIG-capable, or not in gpu-slicer's catalog: a target applies only to MIG GPUs"
        );
    }

    #[test]
    fn the_catalogs_limits_hold() {
        let gpus = [all_1g(None)];
        let e = target(
            r#"[{"index": 0, "instances": [{"profile": "1g.5gb+me", "start": 0}, {"profile": "1g.5gb.me", "start": 1}]}]"#,
            &gpus,
        )
        .expect_err("too many");
        assert_eq!(
            e.to_string(),
            "GPU 0 (NVIDIA A100-SXM4-40GB): the instances are not a layout it allows: 2 × 1g.5gb+me (at most 1)"
        );
    }

    #[test]
    fn sizes_are_bounded() {
        let big = format!("[{}]", vec!["{}"; MAX_BYTES / 2].join(","));
        assert_eq!(
            parse(&big).expect_err("large").to_string(),
            format!(
                "{} bytes, more than the 32768 a MIG target may take (a Node's annotations together are limited to 256 KiB)",
                big.len()
            )
        );
        let many = format!(
            "[{}]",
            vec![r#"{"index": 0, "instances": []}"#; MAX_GPUS + 1].join(",")
        );
        assert_eq!(
            parse(&many).expect_err("many").to_string(),
            "17 GPU entries, more than the 16 a node has at most"
        );
        let instances = [r#"{"profile": "1g.5gb", "start": 0}"#; MAX_INSTANCES + 1].join(",");
        let text = format!(r#"[{{"index": 0, "instances": [{instances}]}}]"#);
        assert_eq!(
            parse(&text).expect_err("instances").to_string(),
            "GPU entry 0: 9 instances, more than the 8 a GPU holds at most"
        );
    }
}
