//! A per-GPU MIG target's plan, property-tested over random layouts of
//! A100, H100, H200 and A30 GPUs with random instances held: the rules
//! every plan keeps, checked by running its operations on a model of the
//! driver (which refuses what NVML refuses: overlapping placements, a GPU
//! instance destroyed while it has compute instances, a placement the
//! profile does not have).

use std::collections::{BTreeMap, BTreeSet};

use gpu_slicer_core::gpu::catalog::{self, GpuModel, MigProfile};
use gpu_slicer_core::mig_change::Op;
use gpu_slicer_core::mig_demand::{InstanceAt, layout_valid};
use gpu_slicer_core::mig_target::{GpuState, InstanceNow, plan_gpu};
use proptest::prelude::*;

const MODELS: &[&str] = &["A100-40GB", "H100-80GB", "H200", "A30"];

/// The driver's state of one GPU: GPU instance id → (profile, start,
/// compute instances).
type Driver = BTreeMap<u32, (&'static MigProfile, u32, BTreeSet<u32>)>;

fn driver_of(gpu: &GpuState) -> Driver {
    gpu.instances
        .iter()
        .map(|i| {
            (
                i.gpu_instance,
                (
                    i.profile,
                    i.start,
                    i.compute_instances.iter().copied().collect(),
                ),
            )
        })
        .collect()
}

/// Runs `ops` as the driver would; an operation it would refuse is an error.
fn run(model: &GpuModel, driver: &mut Driver, ops: &[Op]) -> Result<(), String> {
    let geo = model.mig.as_ref().ok_or("no MIG")?;
    for op in ops {
        match *op {
            Op::DestroyComputeInstance {
                gpu_instance,
                compute_instance,
            } => {
                let (_, _, cis) = driver
                    .get_mut(&gpu_instance)
                    .ok_or(format!("{op}: no such GPU instance"))?;
                if !cis.remove(&compute_instance) {
                    return Err(format!("{op}: no such compute instance"));
                }
            }
            Op::DestroyGpuInstance { gpu_instance } => {
                match driver.get(&gpu_instance) {
                    None => return Err(format!("{op}: no such GPU instance")),
                    Some((_, _, cis)) if !cis.is_empty() => {
                        return Err(format!("{op}: it still has compute instances"));
                    }
                    Some(_) => {}
                }
                driver.remove(&gpu_instance);
            }
            Op::CreateGpuInstance {
                profile_id,
                start,
                size,
                gpu_instance,
                ..
            } => {
                let profile = geo
                    .profiles
                    .iter()
                    .find(|p| p.id == profile_id)
                    .ok_or(format!("{op}: no such profile"))?;
                if size != profile.placement_size || !profile.placement_starts.contains(&start) {
                    return Err(format!("{op}: not a placement of {}", profile.name));
                }
                let overlapping = driver
                    .values()
                    .any(|(p, s, _)| *s < start + size && start < *s + p.placement_size);
                if overlapping || driver.contains_key(&gpu_instance) {
                    return Err(format!("{op}: insufficient resources"));
                }
                driver.insert(gpu_instance, (profile, start, BTreeSet::new()));
            }
            Op::CreateComputeInstance {
                gpu_instance,
                slices,
            } => {
                let (p, _, cis) = driver
                    .get_mut(&gpu_instance)
                    .ok_or(format!("{op}: no such GPU instance"))?;
                if slices != p.compute_slices || !cis.is_empty() {
                    return Err(format!("{op}: not the whole GPU instance"));
                }
                cis.insert(0);
            }
            Op::SetMigMode { .. } => return Err(format!("{op}: a target never changes MIG mode")),
        }
    }
    Ok(())
}

fn layout(driver: &Driver) -> BTreeSet<(&'static str, u32)> {
    driver.values().map(|(p, s, _)| (p.name, *s)).collect()
}

/// Instances picked in random order where they still fit.
fn fill(
    model: &'static GpuModel,
    base: Vec<InstanceAt>,
    picks: &[(usize, usize)],
) -> Vec<InstanceAt> {
    let geo = model.mig.as_ref().unwrap();
    let mut out = base;
    for &(p, s) in picks {
        let profile = &geo.profiles[p % geo.profiles.len()];
        let start = profile.placement_starts[s % profile.placement_starts.len()];
        out.push(InstanceAt { profile, start });
        if layout_valid(model, &out).is_err() {
            out.pop();
        }
    }
    out
}

prop_compose! {
    /// A GPU with a random valid layout (some instances held), and a random
    /// valid target: often a part of what it holds plus new instances where
    /// they fit, sometimes anything.
    fn arb_case()(
        m in 0..MODELS.len(),
        now in prop::collection::vec((0usize..8, 0usize..8, prop::bool::weighted(0.3)), 0..10),
        keep in prop::collection::vec(any::<bool>(), 10),
        fresh in prop::bool::weighted(0.2),
        add in prop::collection::vec((0usize..8, 0usize..8), 0..8),
    ) -> (&'static GpuModel, GpuState, Vec<InstanceAt>) {
        let model = catalog::model(MODELS[m]).unwrap();
        let geo = model.mig.as_ref().unwrap();
        let picks: Vec<(usize, usize)> = now.iter().map(|&(p, s, _)| (p, s)).collect();
        let placed = fill(model, Vec::new(), &picks);
        let instances: Vec<InstanceNow> = placed
            .iter()
            .zip(now.iter().map(|&(_, _, held)| held))
            .map(|(at, held)| InstanceNow {
                gpu_instance: catalog::gpu_instance_id(geo.memory_slices, at.start, at.profile.placement_size),
                profile: at.profile,
                start: at.start,
                compute_instances: vec![0],
                holders: if held { vec!["pod ns/p (nvidia.com/mig-x)".into()] } else { Vec::new() },
            })
            .collect();
        let base: Vec<InstanceAt> = if fresh {
            Vec::new()
        } else {
            placed.iter().zip(&keep).filter(|(_, k)| **k).map(|(at, _)| *at).collect()
        };
        let wanted = fill(model, base, &add);
        let gpu = GpuState {
            index: 0,
            uuid: "GPU-0".into(),
            product: model.product_name.into(),
            mig_current: true,
            instances,
        };
        (model, gpu, wanted)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Refused exactly when a held instance is not in the target; otherwise
    /// the operations run on the driver and leave exactly the target, every
    /// held instance under its own GPU-instance id, and no instance both
    /// destroyed and wanted where it was.
    #[test]
    fn a_plan_reaches_the_target_and_never_destroys_a_held_instance(case in arb_case()) {
        let (model, gpu, wanted) = case;
        let wanted_set: BTreeSet<(&str, u32)> = wanted.iter().map(|w| (w.profile.name, w.start)).collect();
        let held_not_wanted = gpu
            .instances
            .iter()
            .any(|i| !i.holders.is_empty() && !wanted_set.contains(&(i.profile.name, i.start)));
        match plan_gpu(model, &gpu, &wanted) {
            Err(blocked) => {
                prop_assert!(held_not_wanted, "refused although every held instance is kept: {:?}", blocked);
                for h in &blocked.held {
                    prop_assert!(!h.holders.is_empty());
                    prop_assert!(!wanted_set.contains(&(h.instance.profile.name, h.instance.start)));
                }
            }
            Ok(plan) => {
                prop_assert!(!held_not_wanted, "a held instance the target does not keep was planned away");
                let held: BTreeSet<u32> = gpu
                    .instances
                    .iter()
                    .filter(|i| !i.holders.is_empty())
                    .map(|i| i.gpu_instance)
                    .collect();
                for op in &plan.ops {
                    if let Op::DestroyGpuInstance { gpu_instance } | Op::DestroyComputeInstance { gpu_instance, .. } = op {
                        prop_assert!(!held.contains(gpu_instance), "{} destroys a held instance", op);
                    }
                }
                let mut driver = driver_of(&gpu);
                let before = driver.clone();
                run(model, &mut driver, &plan.ops).map_err(TestCaseError::fail)?;
                prop_assert_eq!(layout(&driver), wanted_set);
                for gi in &held {
                    prop_assert_eq!(driver.get(gi), before.get(gi));
                }
                // `keep` (what the node keeps serving during the change) is
                // exactly the instances no operation touches: every one is
                // still there as it was, and every other one is destroyed.
                let keep: BTreeSet<u32> = plan.keep.iter().copied().collect();
                prop_assert_eq!(keep.len(), plan.keep.len());
                for i in &gpu.instances {
                    let destroyed = plan.ops.iter().any(|op| {
                        matches!(op, Op::DestroyGpuInstance { gpu_instance } if *gpu_instance == i.gpu_instance)
                    });
                    prop_assert_eq!(keep.contains(&i.gpu_instance), !destroyed, "GI {}", i.gpu_instance);
                    if keep.contains(&i.gpu_instance) {
                        prop_assert_eq!(driver.get(&i.gpu_instance), before.get(&i.gpu_instance));
                    }
                }
                // Fewest operations: nothing kept is touched, nothing
                // destroyed is wanted where it was.
                for d in &plan.destroy {
                    prop_assert!(!wanted.contains(d), "{:?} destroyed and wanted", d);
                }
                prop_assert_eq!(plan.create.len() + gpu.instances.len() - plan.destroy.len(), wanted.len());
            }
        }
    }

    /// A target equal to what the GPU holds needs no operation, held or not.
    #[test]
    fn the_current_layout_as_target_is_zero_operations(case in arb_case()) {
        let (model, gpu, _) = case;
        let now: Vec<InstanceAt> = gpu.instances.iter().map(InstanceNow::at).collect();
        let plan = plan_gpu(model, &gpu, &now).expect("nothing held is destroyed");
        prop_assert!(plan.ops.is_empty(), "{:?}", plan.ops);
    }
}
